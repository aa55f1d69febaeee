"""``MROSampler``: Optuna sampler that proposes whole path masks from the Modal Relation Graph prior.

The relative search space is one ``{0, 1}`` categorical per path, named after the path
(``"text->audio"``, ...). Each trial gets a whole mask at once:

1. the first ``n_startup_trials`` masks are uniform over the masks not tried yet;
2. afterwards, masks come from per-path keep probabilities ``q = sigmoid(theta)`` (the family
   of the supernet's prior). ``theta`` starts at the prior learned in pretraining
   (``mro:prior_keep_probs``, written into the study from the checkpoint) and is refined on the
   completed trials with the study's rank loss: completed masks are ranked by non-domination
   (Optuna's fast non-dominated sort over accuracy and MFLOPs), ties by the first objective,
   and ``theta`` is fitted so that the prior's ranking of those masks agrees, with an L2 pull
   back towards the pretrained prior (Adam; the gradient of each rank loss is written out in
   numpy, equal to autograd's, so a refinement costs about a millisecond). The refined ``theta``
   proposes in one of two ways:

   - with probability ``local``, a one-path change (add or drop one path) of a member of the
     current Pareto front, the path drawn by how much the change raises the mask's refined
     prior score: good trials pull the proposals towards themselves (a local search along the
     front, which is where the front's missing points usually are);
   - otherwise a mask of a drawn size: the number of paths is uniform over the sizes that still
     have untried masks (the front needs masks of every cost, and cost grows with the number of
     paths), and the paths of that size follow ``q`` conditioned on the size (conditional
     Bernoulli sampling: probability proportional to the product of the paths' odds ``q/(1-q)``).

   With probability ``exploration`` a uniform untried mask is proposed instead;
3. a mask that is already complete, running or waiting (or was scored by a trial pruned because
   its metric is undefined for it) is never proposed, and when the untried masks fit in the
   remaining budget they are enumerated, best prior score first. When no untried mask is left
   (every mask is scored, or the rest are held by other trials), or a trial loses its claims
   ``_CLAIM_ROUNDS`` times in a row, the trial gets no mask rather than a repeat:
   ``no_mask_reason`` says why, and a path parameter asked of this sampler for that trial
   prunes it (``optuna.TrialPruned``). ``mask_space`` tells a worker whether any mask is left
   before it starts a trial.

No state lives only in one process: the prior and the budget are study system attributes; every
proposal is recomputed from the study's trials. Concurrent workers claim a mask by writing it
to their trial's system attribute ``mro:mask`` and then reading the claims back. Of two trials
claiming one mask, the lower trial number keeps it; the other claims a random untried mask
instead. A trial that sees only higher-numbered rivals waits briefly for them to move on, since
they may have checked (and kept the mask) before its own claim was written; so a mask is never
kept twice (see ``_keeps_claim``). Random numbers come from a
generator seeded with ``(seed, trial number)``, so different trials (and different workers) get
different draws and a rerun with the same seed repeats them.

It also works on a plain Optuna study whose parameters are path bits: give ``paths`` (or let it
infer them from the completed trials) and leave the prior out (uniform prior).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from optuna.distributions import CategoricalDistribution
from optuna.exceptions import TrialPruned
from optuna.samplers import BaseSampler, RandomSampler
from optuna.search_space import IntersectionSearchSpace
from optuna.study import StudyDirection
from optuna.study._multi_objective import _fast_non_domination_rank
from optuna.trial import TrialState

from search_service.trial_index import MASK_KEY, Mask, TrialIndex, trial_mask
from supernet.rank_loss import L0_EPSILON, RANK_LOSSES
from supernet.relation_graph import mask_log_prob

if TYPE_CHECKING:
    from optuna.distributions import BaseDistribution
    from optuna.study import Study
    from optuna.trial import FrozenTrial

# Study system attributes (written once, when the study is created) and trial system attributes.
PATHS_KEY = "mro:paths"
PRIOR_KEY = "mro:prior_keep_probs"
BUDGET_KEY = "mro:trials"
RANK_LOSS_KEY = "mro:rank_loss"
# Trial user attribute that the objective writes once it has scored a mask (``search.Objective``):
# a PRUNED trial that has it was pruned because its metric is undefined for the mask, which is
# therefore scored as surely as by a COMPLETE trial.
SCORES_ATTR = "metrics"

_MAX_ENUMERATED_PATHS = 20  # 2**20 masks: beyond this the space is never enumerated
_CLAIM_ROUNDS = 8
_DROP_SHARE = 0.7  # of a front member's moves: drops (the rest adds)
_SHRINK_SHARE = 0.8  # of the drops from a member of 3+ paths: several at once (``_shrink``)
_CLAIM_WAIT_S = 5.0  # how long a claim waits for higher-numbered rivals to move on (a rival
# that kept the mask writes its parameters at once: the wait is this long only when its worker
# stalls between its claim and its check, e.g. on a machine with more workers than cores)
_CLAIM_POLL_S = 0.02
_ATTRS_TTL_S = 5.0  # study system attributes are re-read after this many seconds


@dataclass(frozen=True)
class MaskSpace:
    """Where a study stands on its masks (the non-empty masks of its paths).

    A mask is *scored* when a COMPLETE trial holds it, or a trial pruned because its metric is
    undefined for the mask (``SCORES_ATTR``); it is *held* when it is not scored and a running
    or waiting trial holds it (or a trial the heartbeat failed a moment ago, whose retry takes
    it over). A held mask may still come free: its holder may die and the retry fail."""

    size: float  # 2**P - 1 (infinite beyond 62 paths: never exhausted)
    scored: int
    held: int

    @property
    def untried(self) -> float:
        return self.size - self.scored - self.held

    @property
    def exhausted(self) -> bool:
        """Every mask is scored: no trial can score a new one."""
        return self.scored >= self.size


class _MaskIndex(TrialIndex):
    """A ``TrialIndex`` that also keeps the masks of trials pruned after scoring (their metric is
    undefined): those masks are scored, and are never proposed again."""

    def __init__(self, paths: Sequence[str]) -> None:
        super().__init__(paths)
        self.undefined: set[Mask] = set()

    def _settle(self, t: FrozenTrial) -> None:
        super()._settle(t)
        if t.state == TrialState.PRUNED and SCORES_ATTR in t.user_attrs:
            mask = trial_mask(t, self.paths)
            if mask is not None:
                self.undefined.add(mask)

    def held_masks(self, number: int) -> set[Mask]:
        return super().held_masks(number) | self.undefined

    def space(self) -> MaskSpace:
        """The mask space as of the last ``update`` (every open trial's mask counts as held)."""
        # (counted without building the set of scored masks: this runs once per trial)
        undefined = sum(1 for m in self.undefined if not self.masks[m])
        held = sum(1 for m in self.open_masks(-1) if not self.masks[m] and m not in self.undefined)
        return MaskSpace(size=_space_size(len(self.paths)), scored=len(self.masks) + undefined, held=held)


class MROSampler(BaseSampler):
    """Propose path masks from the MRG prior, refined by rank regularization on finished trials.

    Args:
        paths: path names in mask order; read from the study (``mro:paths``) when omitted, or
            inferred from the completed trials' parameters.
        prior_keep_probs: each path's keep probability under the pretrained prior; read from
            the study (``mro:prior_keep_probs``) when omitted, uniform (0.5) when absent there.
        n_startup_trials: completed trials before the prior is used; uniform until then.
        rank_loss: ``"hinge"``, ``"l0"``, ``"l1"``, ``"l2"`` or ``"linf"``; the study's
            ``mro:rank_loss`` when omitted, else ``"l1"``.
        budget: the study's trial budget (for enumeration); ``mro:trials`` when omitted.
        refine_steps: Adam steps of the refinement per proposal.
        refine_trials: at most this many completed trials (the best ranked) enter the rank loss.
        anchor: weight of the L2 pull of ``theta`` towards the pretrained prior.
        exploration: probability of a uniform (untried) mask after the startup trials.
        local: probability (after the startup trials) of proposing a one-path change of a
            Pareto-front member rather than a mask of a drawn size from the refined prior.
        seed: base seed; each trial's generator is seeded with ``(seed, trial.number)``.
    """

    def __init__(
        self,
        *,
        paths: Sequence[str] | None = None,
        prior_keep_probs: Sequence[float] | None = None,
        n_startup_trials: int = 10,
        rank_loss: str | None = None,
        budget: int | None = None,
        refine_steps: int = 30,
        refine_trials: int = 64,
        anchor: float = 0.05,
        exploration: float = 0.1,
        local: float = 0.7,
        seed: int | None = None,
    ) -> None:
        if n_startup_trials < 0:
            raise ValueError(f"n_startup_trials must be >= 0, got {n_startup_trials}")
        if rank_loss is not None and rank_loss not in RANK_LOSSES:
            raise ValueError(f"rank_loss must be one of {RANK_LOSSES}, got {rank_loss!r}")
        if prior_keep_probs is not None and not all(0.0 < p < 1.0 for p in prior_keep_probs):
            raise ValueError(f"prior_keep_probs must lie strictly between 0 and 1, got {list(prior_keep_probs)}")
        if not 0.0 <= exploration <= 1.0:
            raise ValueError(f"exploration must be in [0, 1], got {exploration}")
        if not 0.0 <= local <= 1.0:
            raise ValueError(f"local must be in [0, 1], got {local}")
        self._paths = list(paths) if paths is not None else None
        self._prior = list(prior_keep_probs) if prior_keep_probs is not None else None
        self._n_startup_trials = n_startup_trials
        self._rank_loss = rank_loss
        self._budget = budget
        self._refine_steps = refine_steps
        self._refine_trials = refine_trials
        self._anchor = anchor
        self._exploration = exploration
        self._local = local
        self._seed = seed if seed is not None else int(np.random.SeedSequence().entropy % (2**31))
        self._intersection = IntersectionSearchSpace(include_pruned=True)
        self._fallback = RandomSampler(seed=seed)
        # derived and recomputable: the last refined theta, to warm-start the next refinement
        self._theta_cache: dict[tuple[str, ...], torch.Tensor] = {}
        self._refined_cache: dict[tuple, torch.Tensor] = {}
        self._attrs_cache: dict[tuple[int, int], tuple[float, dict[str, Any]]] = {}
        self._indexes: dict[tuple, _MaskIndex] = {}  # per (storage, study, paths): derived, per process
        self._seen: tuple[int, int, TrialIndex] | None = None  # (study id, trial number, index)
        self._no_mask: tuple[int, int, str] | None = None  # (study id, trial number, why) of a trial given no mask

    def index_seen(self, study: Study, trial_number: int) -> TrialIndex | None:
        """The study's trials as this sampler last read them while it proposed the mask of
        trial ``trial_number`` (after that trial's claim was written and kept), as a
        ``TrialIndex``. None when it did not read for that trial (an enqueued or retried mask).
        An objective can check the trial budget on it instead of reading the study once more
        (``search.Objective``)."""
        seen = self._seen
        if seen is None or seen[0] != study._study_id or seen[1] != trial_number:
            return None
        return seen[2]

    def space_seen(self, study: Study, trial_number: int) -> MaskSpace | None:
        """The mask space on the trials of ``index_seen`` (trial ``trial_number``'s own mask
        counts as held): a worker whose trial completes can tell whether any mask is left for
        another one without reading the study again."""
        index = self.index_seen(study, trial_number)
        return index.space() if isinstance(index, _MaskIndex) else None

    def mask_space(self, study: Study, trials: Sequence[FrozenTrial] | None = None) -> MaskSpace | None:
        """The study's mask space, on ``trials`` (the study's trials as just read, all of them;
        read now when omitted). None when the paths are not known yet (a plain study before its
        first complete trial)."""
        paths = self._study_paths(study) or self._inferred_paths(study)
        if not paths:
            return None
        index = self._index(study, paths)
        index.update(trials if trials is not None else study._storage.get_all_trials(study._study_id, deepcopy=False))
        return index.space()

    def no_mask_reason(self, study: Study, trial_number: int) -> str | None:
        """Why trial ``trial_number`` got no mask from this sampler (no untried mask was left,
        or it lost every claim), or None when it got one (or was not sampled here)."""
        none = self._no_mask
        if none is None or none[0] != study._study_id or none[1] != trial_number:
            return None
        return none[2]

    # --- Optuna's contract -------------------------------------------------------------------

    def reseed_rng(self) -> None:
        self._seed = int(np.random.SeedSequence().entropy % (2**31))
        self._fallback.reseed_rng()

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        paths = self._study_paths(study) or self._inferred_paths(study)
        return {name: CategoricalDistribution((0, 1)) for name in paths}

    def _inferred_paths(self, study: Study) -> list[str]:
        space = self._intersection.calculate(study)
        return sorted(n for n, d in space.items() if _is_bit(d))

    def sample_relative(self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        if not search_space:
            return {}
        paths = self._study_paths(study) or list(search_space)
        # an enqueued trial's fixed parameters, and the parameters a retried trial copied from
        # the one that failed (only some paths, when that one died between two suggestions)
        fixed = {**trial.system_attrs.get("fixed_params", {}), **trial.params}
        if all(name in fixed for name in paths):  # an enqueued or retried trial: its mask is given
            mask = tuple(int(fixed[name]) for name in paths)
            study._storage.set_trial_system_attr(trial._trial_id, MASK_KEY, _to_str(mask))
            return {}
        claimed = trial.system_attrs.get(MASK_KEY)  # a retry copies the failed trial's claim too
        if fixed and isinstance(claimed, str) and len(claimed) == len(paths) and all(
            int(fixed[name]) == int(bit) for name, bit in zip(paths, claimed) if name in fixed
        ):
            # finish the failed trial's mask: a fresh proposal would keep the copied bits and
            # take the others from another mask, which may be one already tried
            return {name: int(bit) for name, bit in zip(paths, claimed)}
        rng = np.random.default_rng([self._seed, trial.number])
        mask, why = self._propose_and_claim(study, trial, paths, rng)
        if mask is None:
            self._no_mask = (study._study_id, trial.number, why)
            return {}
        return dict(zip(paths, mask))

    def sample_independent(self, study: Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution) -> Any:
        why = self.no_mask_reason(study, trial.number)
        if why is not None and _is_bit(param_distribution):
            # a path of a trial that got no mask: a random bit here would make a repeat
            raise TrialPruned(f"no mask to score: {why}")
        return self._fallback.sample_independent(study, trial, param_name, param_distribution)

    # --- proposal --------------------------------------------------------------------------------

    def _propose_and_claim(self, study: Study, trial: FrozenTrial, paths: list[str], rng: np.random.Generator) -> tuple[Mask | None, str]:
        """The mask trial ``trial`` keeps (its claim written and checked), or None and why: no
        untried mask is left, or every claim was lost to other trials. Never a mask that another
        trial holds or that was scored."""
        storage = study._storage
        index = self._index(study, paths)
        excluded: set[Mask] = set()
        claimed = False
        for claim_round in range(_CLAIM_ROUNDS):
            index.update(storage.get_all_trials(study._study_id, deepcopy=False))
            held = index.held_masks(trial.number)
            mask: Mask | None = None
            if len(held) < _space_size(len(paths)):
                if claim_round == 0:
                    mask = self._propose(study, trial, index, held, paths, rng, excluded)
                if mask is None or mask in held:
                    # after a collision (or a proposal that found only taken masks), a uniformly
                    # random untried mask from this trial's own generator: two trials that
                    # collided in lock-step (the same enumerated mask at the same moment) would
                    # otherwise collide again on the next one
                    mask = _random_untried(held, excluded, len(paths), rng)
            if mask is None:
                why = _no_untried_reason(index.space())
                break
            storage.set_trial_system_attr(trial._trial_id, MASK_KEY, _to_str(mask))
            claimed = True
            if _keeps_claim(study, trial, index, mask):
                self._seen = (study._study_id, trial.number, index)
                return mask, ""
            excluded.add(mask)
        else:
            why = f"every mask it claimed ({_CLAIM_ROUNDS} tries) was taken by another trial"
        if claimed:  # withdraw the lost claim: other trials would wait for it or give way to it
            storage.set_trial_system_attr(trial._trial_id, MASK_KEY, "")
        return None, why

    def _index(self, study: Study, paths: list[str]) -> _MaskIndex:
        key = (id(study._storage), study._study_id, tuple(paths))
        index = self._indexes.get(key)
        if index is None:
            index = self._indexes[key] = _MaskIndex(paths)
        return index

    def _propose(self, study, trial, index: TrialIndex, held, paths, rng, excluded) -> tuple[int, ...]:
        P = len(paths)
        taken = held | excluded
        complete = index.complete
        running = index.running_others(trial.number)
        space = 2**P - 1
        untried = space - len(taken) if P <= 62 else math.inf
        theta0 = self._prior_logits(study, P)

        # 1. enumerate when the untried masks fit in the remaining budget
        budget = self._study_budget(study)
        if P <= _MAX_ENUMERATED_PATHS and untried > 0 and budget is not None:
            remaining = budget - len(complete) - running
            if untried <= remaining:
                theta = self._refined(study, index, paths, theta0) if len(complete) >= max(self._n_startup_trials, 2) else theta0
                return _best_untried(theta, taken, P)

        # 2. uniform during startup (and with probability `exploration` afterwards)
        if len(complete) < self._n_startup_trials or rng.random() < self._exploration:
            return _sample(np.zeros(P), taken, rng, untried)

        # 3. from the prior refined on the completed trials: a one-bit neighbour of a front
        #    member, or a mask of a drawn size from the refined keep probabilities
        losses = _performance_losses(study, index, self._refine_trials) if len(complete) >= 2 else np.zeros(len(complete))
        theta = self._refined(study, index, paths, theta0, losses).numpy()
        front = [index.complete_masks[i] for i in np.flatnonzero(losses < 1.0)]
        if rng.random() < self._local:
            mask = _front_neighbour(theta, front, taken, rng)
            if mask is not None:
                return mask
        # sizes up to one path more than the largest front member: a larger mask costs more
        # than the whole front and would have to beat its best accuracy
        max_size = max((sum(m) for m in front), default=P) + 1
        return _sample_by_size(theta, taken, rng, untried, index.size_counts(index.open_masks(trial.number) | index.undefined | excluded), max_size)

    # --- refinement ------------------------------------------------------------------------------

    def _refined(self, study: Study, index: TrialIndex, paths: list[str], theta0: torch.Tensor, losses: np.ndarray | None = None) -> torch.Tensor:
        """``theta`` fitted by the rank loss to the completed trials' ranking, with an L2 pull
        towards the pretrained prior (Adam, warm-started from this process's last fit)."""
        complete = index.complete
        if len(complete) < 2:
            return theta0
        # the completed trials only grow: their number and the last one name the set
        key = (tuple(paths), len(complete), complete[-1].number, complete[0].number)
        cached = self._refined_cache.get(key)
        if cached is not None:  # claim retries of one proposal see the same trials
            return cached
        if losses is None:
            losses = _performance_losses(study, index, self._refine_trials)
        order = np.argsort(losses, kind="stable")[: self._refine_trials]
        target = np.asarray(losses[order], dtype=np.float64)
        if float(target.max() - target.min()) == 0.0:
            return theta0
        masks = np.array([index.complete_masks[i] for i in order], dtype=np.float64)
        start = self._theta_cache.get(key[0])
        if start is None or start.shape != theta0.shape:
            start = theta0
        theta = _fit_theta(masks, target, theta0.numpy(), start.numpy(), self._study_rank_loss(study), self._refine_steps, self._anchor)
        refined = torch.as_tensor(theta, dtype=torch.float64)
        self._theta_cache[key[0]] = refined
        self._refined_cache = {key: refined}
        return refined

    # --- study attributes ------------------------------------------------------------------------

    def _study_attrs(self, study: Study) -> dict[str, Any]:
        """The study's system attributes, read at most every ``_ATTRS_TTL_S`` seconds: they are
        written once when the study is created (only the budget may change, on a resume), and
        reading them is a database round trip that every proposal would otherwise pay 4 times."""
        key = (id(study._storage), study._study_id)
        now = time.monotonic()
        cached = self._attrs_cache.get(key)
        if cached is None or now - cached[0] > _ATTRS_TTL_S:
            cached = (now, study._storage.get_study_system_attrs(study._study_id))
            self._attrs_cache = {key: cached}
        return cached[1]

    def _study_paths(self, study: Study) -> list[str] | None:
        if self._paths is not None:
            return self._paths
        paths = self._study_attrs(study).get(PATHS_KEY)
        return list(paths) if paths else None

    def _prior_logits(self, study: Study, P: int) -> torch.Tensor:
        probs = self._prior
        if probs is None:
            probs = self._study_attrs(study).get(PRIOR_KEY)
        if not probs or len(probs) != P:
            return torch.zeros(P, dtype=torch.float64)
        p = torch.tensor(probs, dtype=torch.float64).clamp(1e-4, 1 - 1e-4)
        return torch.log(p) - torch.log1p(-p)

    def _study_budget(self, study: Study) -> int | None:
        if self._budget is not None:
            return self._budget
        value = self._study_attrs(study).get(BUDGET_KEY)
        return int(value) if value is not None else None

    def _study_rank_loss(self, study: Study) -> str:
        if self._rank_loss is not None:
            return self._rank_loss
        kind = self._study_attrs(study).get(RANK_LOSS_KEY)
        return kind if kind in RANK_LOSSES else "l1"


# --- helpers ---------------------------------------------------------------------------------------


def _is_bit(distribution: BaseDistribution) -> bool:
    return isinstance(distribution, CategoricalDistribution) and set(distribution.choices) == {0, 1}


def _to_str(mask: Sequence[int]) -> str:
    return "".join(str(int(b)) for b in mask)


def _space_size(P: int) -> float:
    """The number of non-empty masks of ``P`` paths (infinite beyond 62: never exhausted)."""
    return 2**P - 1 if P <= 62 else math.inf


def _no_untried_reason(space: MaskSpace) -> str:
    if space.exhausted:
        return f"all {space.size} masks scored"
    return f"the {space.size - space.scored} masks not scored yet are held by running trials"


def _random_untried(held: set[Mask], excluded: set[Mask], P: int, rng: np.random.Generator) -> Mask | None:
    """A uniformly random non-empty mask outside ``held`` and ``excluded``; outside ``held``
    only when ``excluded`` covers the rest (the rivals may have moved on); None when every
    mask is held."""
    space = _space_size(P)
    taken = held | excluded
    if len(taken) >= space:
        taken = held
    if len(taken) >= space:
        return None
    mask = _sample(np.zeros(P), taken, rng, space - len(taken))
    return None if mask in taken else mask


def _keeps_claim(study: Study, trial: FrozenTrial, index: TrialIndex, mask: tuple[int, ...]) -> bool:
    """Whether ``trial`` keeps ``mask``, which it has just claimed (its claim is written);
    ``index`` is left updated with the study's trials as last read.

    Of two trials claiming one mask, the one whose claim was written later always sees the other
    claim here. The lower trial number wins: a trial that sees a rival with a lower number gives
    the mask up at once. A trial that sees only rivals with higher numbers cannot tell whether
    they checked (and kept the mask) before its own claim was written, or will see its claim and
    give the mask up; so it waits for them to claim something else, and gives the mask up as
    soon as one of them has its path parameters (it kept the mask), or if they do not move
    within ``_CLAIM_WAIT_S``. A mask is never kept twice, and two trials that claim
    one mask at the same moment settle it in one round (the lower number keeps it).
    """
    storage = study._storage
    deadline = time.monotonic() + _CLAIM_WAIT_S
    while True:
        index.update(storage.get_all_trials(study._study_id, deepcopy=False))
        completed, rivals = index.rivals(trial.number, mask)
        if completed:
            return False  # a complete trial has it
        if not rivals:
            return True
        if min(t.number for t in rivals) < trial.number or time.monotonic() >= deadline:
            return False
        if any(t.state == TrialState.COMPLETE or all(p in t.params for p in index.paths) for t in rivals):
            return False  # a rival has its parameters: it kept the mask (no need to wait)
        time.sleep(_CLAIM_POLL_S)


def _performance_losses(study: Study, index: TrialIndex, n_below: int | None = None) -> np.ndarray:
    """Lower is better, for ``index.complete``: non-domination rank, then the first objective
    as a tie-breaker in [0, 1).

    With ``n_below``, ranks are exact only for the best ``n_below`` trials (and the front);
    the rest rank behind them (Optuna's early-stopping sort: only those enter the rank loss)."""
    values, penalty = index.complete_arrays()
    signs = np.array([-1.0 if d == StudyDirection.MAXIMIZE else 1.0 for d in study.directions])
    loss_values = values * signs
    rank = _fast_non_domination_rank(loss_values, penalty=penalty, n_below=n_below).astype(float)
    first = loss_values[:, 0]
    spread = first.max() - first.min()
    tie = (first - first.min()) / spread * 0.99 if spread > 0 else np.zeros_like(first)
    return rank + tie


def _sample(theta: np.ndarray, taken: set[tuple[int, ...]], rng: np.random.Generator, untried: float) -> tuple[int, ...]:
    """A non-empty mask from independent keeps ``sigmoid(theta)``, avoiding ``taken`` while
    untried masks remain (rejection sampling, then a sweep of the untried masks)."""
    P = len(theta)
    q = 1.0 / (1.0 + np.exp(-theta))
    avoid = untried > 0
    best: tuple[int, ...] | None = None
    for _ in range(2000):
        bits = tuple(int(b) for b in (rng.random(P) < q))
        if not any(bits):
            continue
        if not avoid or bits not in taken:
            return bits
        best = best or bits
    if avoid and P <= _MAX_ENUMERATED_PATHS:
        return _best_untried(torch.as_tensor(theta), taken, P)
    if best is None:
        best = tuple(int(i == int(np.argmax(q))) for i in range(P))
    return best


def _best_untried(theta: torch.Tensor, taken: set[tuple[int, ...]], P: int, size: int | None = None) -> tuple[int, ...]:
    """The untried mask with the highest prior score (ties: fewer paths first); of ``size``
    paths when given."""
    from supernet.paths import all_masks

    masks = all_masks(P).to(torch.float64)
    if size is not None:
        masks = masks[masks.sum(dim=1) == size]
    scores = mask_log_prob(masks, theta.to(torch.float64)) - 1e-9 * masks.sum(dim=1)
    for index in torch.argsort(scores, descending=True).tolist():
        bits = tuple(int(b) for b in masks[index].tolist())
        if bits not in taken:
            return bits
    return tuple(int(b) for b in masks[int(torch.argmax(scores))].tolist())


def _log_sigmoid(x: np.ndarray) -> np.ndarray:
    return -np.logaddexp(0.0, -x)


def _mask_scores(masks: np.ndarray, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``mask_log_prob(masks, theta)`` (the prior score of each mask under independent keeps
    ``q = sigmoid(theta)`` given a non-empty mask) and ``d score / d theta`` per path, shared by
    all masks up to ``masks`` itself: ``d s_i / d theta_p = b_ip - q_p / (1 - prod(1 - q))``."""
    log_keep, log_drop = _log_sigmoid(theta), _log_sigmoid(-theta)
    log_empty = float(log_drop.sum())
    nonempty = -math.expm1(log_empty)
    scores = masks @ log_keep + (1.0 - masks) @ log_drop - math.log(nonempty)
    return scores, np.exp(log_keep) / nonempty


def _rank_loss_grad(scores: np.ndarray, target: np.ndarray, perf_ranks: np.ndarray, kind: str, temperature: float = 1.0) -> np.ndarray:
    """Gradient with respect to ``scores`` of ``supernet.rank_loss.rank_loss(scores, target,
    kind)`` (the same surrogates, written out so that a refinement step costs microseconds, not
    the milliseconds of an autograd step)."""
    n = len(scores)
    if kind == "hinge":
        i, j = np.triu_indices(n, 1)
        t = np.tanh((scores[i] - scores[j]) / temperature)
        coef = 0.5 * (target[i] - target[j]) * (1.0 - t * t) / temperature / len(i)
        grad = np.zeros(n)
        np.add.at(grad, i, coef)
        np.add.at(grad, j, -coef)
        return grad
    x = (scores[None, :] - scores[:, None]) / temperature  # [i, j] = s_j - s_i
    sig = 0.5 * (1.0 + np.tanh(0.5 * x))  # sigmoid, overflow-free
    d = 0.5 + sig.sum(axis=1) - perf_ranks  # soft rank (1 = highest score) - rank of the loss
    if kind == "l1":
        g = np.sign(d) / n
    elif kind == "l2":
        g = 2.0 * d / n
    elif kind == "l0":
        g = 2.0 * d * L0_EPSILON / (d * d + L0_EPSILON) ** 2 / n
    else:  # linf: the gradient is shared by the worst-ranked subnets
        a = np.abs(d)
        worst = a == a.max()
        g = np.sign(d) * worst / worst.sum()
    slope = sig * (1.0 - sig)
    np.fill_diagonal(slope, 0.0)
    return (slope.T @ g - g * slope.sum(axis=1)) / temperature


def _fit_theta(masks: np.ndarray, target: np.ndarray, theta0: np.ndarray, start: np.ndarray, kind: str, steps: int, anchor: float, lr: float = 0.1) -> np.ndarray:
    """Adam on ``rank_loss(mask_log_prob(masks, theta), target, kind) + anchor * |theta - theta0|^2``
    (torch's Adam defaults: betas 0.9, 0.999, eps 1e-8), from ``start``."""
    from scipy.stats import rankdata

    perf_ranks = rankdata(target, method="average")
    theta = np.array(start, dtype=np.float64)
    m = np.zeros_like(theta)
    v = np.zeros_like(theta)
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    for step in range(1, steps + 1):
        scores, shared = _mask_scores(masks, theta)
        g_s = _rank_loss_grad(scores, target, perf_ranks, kind)
        grad = masks.T @ g_s - shared * g_s.sum() + 2.0 * anchor * (theta - theta0)
        m = beta1 * m + (1.0 - beta1) * grad
        v = beta2 * v + (1.0 - beta2) * grad * grad
        denom = np.sqrt(v) / math.sqrt(1.0 - beta2**step) + eps
        theta = theta - lr / (1.0 - beta1**step) * m / denom
    return theta


def _front_neighbour(theta: np.ndarray, front: list[tuple[int, ...]], taken: set[tuple[int, ...]], rng: np.random.Generator) -> tuple[int, ...] | None:
    """An untried neighbour of a Pareto-front member (one path more or fewer, or several fewer),
    or None when they are all tried.

    The member is drawn uniformly (among those with untried neighbours); then whether to add or
    to drop, drops with probability ``_DROP_SHARE`` (with many paths, additions would otherwise
    crowd out the few drops, which are the cheaper masks the front needs); a drop from a member
    of 3 or more paths is, with probability ``_SHRINK_SHARE``, a drop of several (``_shrink``);
    otherwise the path, with probability ``softmax(score)``, where adding path p scores
    ``theta[p]`` and dropping it ``-theta[p]``: the change of the mask's refined prior score
    (log-odds). Tuned on ``benchmarks/bench_search.py`` (k = 4) and ``bench_planted.py``
    (k = 5: one-path drops from the large masks of the uniform start-up trials reached the
    planted two-path mask in 5 of 10 seeds within 60 trials, with shrinking in 9).
    """
    for index in rng.permutation(len(front)):
        member = front[index]
        moves: dict[int, tuple[list[tuple[int, ...]], list[float]]] = {0: ([], []), 1: ([], [])}  # 1: add, 0: drop
        for p in range(len(member)):
            bits = list(member)
            bits[p] ^= 1
            flipped = tuple(bits)
            if any(flipped) and flipped not in taken:
                moves[flipped[p]][0].append(flipped)
                moves[flipped[p]][1].append(theta[p] if flipped[p] else -theta[p])
        kinds = [kind for kind, (candidates, _) in moves.items() if candidates]
        if kinds:
            kind = (0 if rng.random() < _DROP_SHARE else 1) if len(kinds) > 1 else kinds[0]
            if kind == 0 and sum(member) >= 3 and rng.random() < _SHRINK_SHARE:
                shrunk = _shrink(theta, member, taken, rng)
                if shrunk is not None:
                    return shrunk
            candidates, scores = moves[kind]
            w = np.exp(np.asarray(scores) - max(scores))
            return candidates[int(rng.choice(len(candidates), p=w / w.sum()))]
    return None


def _shrink(theta: np.ndarray, member: tuple[int, ...], taken: set[tuple[int, ...]], rng: np.random.Generator) -> tuple[int, ...] | None:
    """An untried mask made of 1 to ``|member| - 2`` of ``member``'s paths (the number uniform),
    the kept paths drawn by their refined keep probabilities (conditional Bernoulli): a front
    member found by chance with many paths gets down to the few that matter in a few steps
    rather than one path at a time."""
    on = [p for p, b in enumerate(member) if b]
    for _ in range(8):
        size = int(rng.integers(1, len(on) - 1))
        kept = _conditional_bernoulli(theta[on], size, rng)
        bits = [0] * len(member)
        for p, keep in zip(on, kept):
            bits[p] = keep
        mask = tuple(bits)
        if mask not in taken:
            return mask
    return None


def _conditional_bernoulli(theta: np.ndarray, size: int, rng: np.random.Generator) -> tuple[int, ...]:
    """A mask with exactly ``size`` paths, drawn with probability proportional to
    ``prod(odds of its paths)``, odds ``exp(theta)``: independent keeps ``sigmoid(theta)``
    conditioned on the number of kept paths (exact, sequentially, via elementary symmetric
    polynomials in log space)."""
    P = len(theta)
    # log_e[r, i] = log e_r(odds[i:]), r = 0..size
    log_e = np.full((size + 1, P + 1), -np.inf)
    log_e[0, :] = 0.0
    for i in range(P - 1, -1, -1):
        log_e[1:, i] = np.logaddexp(log_e[1:, i + 1], theta[i] + log_e[:-1, i + 1])
    bits, r = [], size
    for i in range(P):
        if r == 0:
            bits.append(0)
            continue
        keep = math.exp(theta[i] + log_e[r - 1, i + 1] - log_e[r, i]) if np.isfinite(log_e[r, i]) else 1.0
        b = int(rng.random() < keep)
        bits.append(b)
        r -= b
    return tuple(bits)


def _sample_by_size(
    theta: np.ndarray, taken: set[tuple[int, ...]], rng: np.random.Generator, untried: float, per_size: np.ndarray | None = None, max_size: int | None = None
) -> tuple[int, ...]:
    """A mask whose number of paths is uniform over the sizes that still have untried masks, and
    whose paths, given the size, follow the refined keep probabilities (conditional Bernoulli).

    The Pareto front needs masks of every cost, and cost grows with the number of paths; sampling
    the size first spends the trials evenly over the front instead of around ``sum(q)`` paths.
    """
    P = len(theta)
    theta = np.clip(theta, -30.0, 30.0)
    avoid = untried > 0
    if P <= _MAX_ENUMERATED_PATHS:
        if per_size is None:  # how many masks of each size are taken
            per_size = np.zeros(P + 1, dtype=np.int64)
            for m in taken:
                per_size[sum(m)] += 1
        sizes = [c for c in range(1, P + 1) if not avoid or per_size[c] < math.comb(P, c)]
    else:
        sizes = list(range(1, P + 1))
    if max_size is not None and any(c <= max_size for c in sizes):
        sizes = [c for c in sizes if c <= max_size]
    draw: tuple[int, ...] | None = None
    while sizes:
        size = sizes[int(rng.integers(len(sizes)))]
        for _ in range(64):
            draw = _conditional_bernoulli(theta, size, rng)
            if not avoid or draw not in taken:
                return draw
        if P <= _MAX_ENUMERATED_PATHS:  # nearly exhausted size: its best untried mask
            return _best_untried(torch.as_tensor(theta, dtype=torch.float64), taken, P, size=size)
        sizes.remove(size)
    return draw if draw is not None else _sample(theta, taken, rng, untried)
