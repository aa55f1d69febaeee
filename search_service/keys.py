"""The names under which mro-search stores its own entries in an Optuna study.

Every key carries the ``mro:`` namespace (as Optuna's samplers write ``"tpe:…"``), so that a
study's own attributes and those of other tools never collide. This module imports nothing: the
storage layer, the trial index, the claim protocol and the sampler all read these names, and a
leaf module keeps the import graph of ``search_service`` free of cycles
(``tests/search_tests/test_imports.py``).
"""

from __future__ import annotations

# Study system attributes, written once when the study is created (``creation.create_search``;
# only the budget may change later, on a resume).
PATHS_KEY = "mro:paths"  # path names in mask order
PRIOR_KEY = "mro:prior_keep_probs"  # each path's keep probability under the proposal prior
PRIOR_SOURCE_KEY = "mro:prior_source"  # where they came from: [search] prior (absent: "mrg", older studies)
BUDGET_KEY = "mro:trials"  # the trial budget
RANK_LOSS_KEY = "mro:rank_loss"  # the rank loss the prior was trained with

# Trial system attributes.
MASK_KEY = "mro:mask"  # the mask a trial's sampler claimed for it (``claims``)
STALE_KEY = "mro:stale"  # failed by the heartbeat (set just before): its retry keeps its place

# Trial user attribute that the objective writes once it has scored a mask (``search.Objective``):
# a PRUNED trial that has it was pruned because its metric is undefined for the mask, which is
# therefore scored as surely as by a COMPLETE trial.
SCORES_ATTR = "metrics"

# A study's life (``ownership``): written with the study in its first transaction, before anything
# else, so that a study whose creation was cut off (a signal, a crash) is known as mro-search's own
# and half-made until ``mro:format`` says it is whole; and written first by ``delete``, so that
# workers stop and nothing joins a study that is going away.
CREATING_KEY = "mro:creating"  # {"host", "pid", "since"}: who creates the study
DELETING_KEY = "mro:deleting"  # {"host", "pid", "since"}: who deletes it
FILES_KEY = "mro:files"  # {"dir": the study's own folder, "made": folders its creation made}
