"""``MROSampler``: an Optuna sampler that proposes whole path masks from the Modal Relation Graph prior.

The relative search space is one ``{0, 1}`` categorical per path, named after the path
(``"text->audio"``, ...). Each trial gets a whole mask at once, from one of four strategies
(``_strategies.py``, one small class each); ``MROSampler._propose`` (``_sampler.py``) picks one:

1. **Enumeration** (``Enumeration``): when the untried masks fit in the remaining budget (and
   there are at most 2**20 masks), they will all be scored: the best untried mask under the
   prior comes first (the refined prior once the start-up trials are complete).
2. **Start-up** (``UniformDraw``): the first ``n_startup_trials`` completed trials are uniform over
   the masks not tried yet.
3. **Exploration** (``UniformDraw``): after the start-up, with probability ``Shares.exploration``
   a uniform untried mask still, so that every part of the space stays reachable.
4. Otherwise from the refined prior: with probability ``Shares.local`` a **local move**
   (``LocalMove``) around the current Pareto front (a member's path added or dropped, or several
   dropped, the path drawn by the change of the refined prior score); else, or when the front
   has no untried neighbour, a **prior draw** (``PriorDraw``): a number of paths uniform over the
   sizes that still have untried masks, the paths of that size drawn from the refined keep
   probabilities ``q = sigmoid(theta)`` conditioned on the size.

**The shares** live in one place, ``Shares`` (``_strategies.py``), each with the measurement
behind its value: ``exploration`` 0.1, ``local`` 0.7, and within local moves ``drop`` 0.7 and
``shrink`` 0.8. ``MROSampler(exploration=..., local=...)`` sets the first two.

**The refinement** (``_refinement.py``, ``PriorRefinement``): ``theta`` starts at the study's
proposal prior (``mro:prior_keep_probs``, written when the study is created from ``[search] prior``:
by default each path's single-path score with the supernet, or the MRG prior learned in
pretraining, ``search_service/proposal_prior.py``; uniform when absent) and is fitted to the completed trials by the study's rank loss (Adam in NumPy, its
gradient equal to autograd's through ``supernet.rank_loss``), with an L2 pull back towards the
pretrained prior; it is recomputed when the set of completed trials changed.

**The claim protocol** lives in the storage layer, ``search_service/claims.py``: the sampler
chooses a mask, ``claims.claim`` writes it to the trial's ``mro:mask`` and reads the claims back;
of two trials claiming one mask the lower trial number keeps it, and the other claims again
(the sampler then chooses a uniform untried mask from the trial's own generator). A mask that
is already complete, running or waiting (or was scored by a trial pruned because its metric is
undefined for it) is never proposed. When no untried mask is left, or a trial loses its claims
``CLAIM_ROUNDS`` times, the trial gets no mask rather than a repeat: ``no_mask_reason`` says why,
and a path parameter asked of this sampler for that trial prunes it (``optuna.TrialPruned``).
``mask_space`` tells a worker whether any mask is left before it starts a trial.

No state lives only in one process: the prior and the budget are study system attributes
(``search_service.keys``); every proposal is recomputed from the study's trials. Random numbers
come from a generator seeded with ``(seed, trial number)``, so different trials (and workers)
get different draws and a rerun with the same seed repeats them.

It works on a plain Optuna study whose parameters are path bits, from a user's own script:
give ``paths`` (or let it infer them from the completed trials) and leave the prior out
(uniform prior); README.md, "Use MROSampler in your own Optuna script", shows one.

**Mixed search spaces** (``_mixed.py``): every parameter that is not a path bit (a categorical of
exactly the ints 0 and 1) goes to ``independent_sampler`` (``TPESampler`` by default; its
``before_trial``/``after_trial`` hooks and ``reseed_rng`` are forwarded), and so does a
non-bit parameter of a search space given to ``sample_relative`` directly. In a study whose
trials have such parameters, a trial that finds no untried mask reuses a scored one
(``ReusedMask``) instead of getting none: it is a repeat, and pruned, only when its mask and
every other parameter repeat a complete trial. A study of path bits alone (the service's)
behaves as described above. The sampler passes Optuna's conformance suites
(``optuna.testing.pytest_samplers``: ``tests/search_tests/test_sampler_conformance.py``).
"""

from __future__ import annotations

from search_service.keys import (
    BUDGET_KEY,
    MASK_KEY,
    PATHS_KEY,
    PRIOR_KEY,
    RANK_LOSS_KEY,
    SCORES_ATTR,
)
from search_service.sampler._mixed import ReusedMask
from search_service.sampler._refinement import (  # noqa: F401 (tests)
    PriorRefinement,
    _fit_theta,
    _mask_scores,
    _rank_loss_grad,
)
from search_service.sampler._sampler import MROSampler
from search_service.sampler._strategies import (  # noqa: F401 (tests)
    Enumeration,
    LocalMove,
    PriorDraw,
    Shares,
    UniformDraw,
    _shrink,
)
from search_service.trial_index import MaskSpace

__all__ = [
    "BUDGET_KEY",
    "MASK_KEY",
    "PATHS_KEY",
    "PRIOR_KEY",
    "RANK_LOSS_KEY",
    "SCORES_ATTR",
    "Enumeration",
    "LocalMove",
    "MROSampler",
    "MaskSpace",
    "PriorDraw",
    "PriorRefinement",
    "ReusedMask",
    "Shares",
    "UniformDraw",
]
