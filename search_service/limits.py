"""Ranges of the numbers a user gives the search service, in a module that imports nothing heavy:
the command line checks its flags against them before any command (or torch) is loaded, and
``[search]`` of a study file uses the same bounds. The supernet's own ranges (epochs, seeds) are
the metadata of ``supernet.config``.
"""

from __future__ import annotations

TRIALS_MAX = 1_000_000  # a study's budget, a worker's share, start-up trials
WORKERS_MAX = 256  # local worker processes of one `run` or `resume`
TRIAL_NUMBER_MAX = 2**31 - 1  # Optuna's trial numbers are database integers
PORT_MAX = 65_535
