"""``MROSampler``: Optuna sampler that proposes whole path masks from the Modal Relation Graph prior.

The relative search space is one ``{0, 1}`` categorical per path, named after the path
(``"text->audio"``, ...). Each trial gets a whole mask at once:

1. the first ``n_startup_trials`` masks are uniform over the masks not tried yet;
2. afterwards, masks come from independent per-path keep probabilities ``q = sigmoid(theta)``
   (conditioned on a non-empty mask, the same family as the supernet's prior). ``theta`` starts
   at the prior learned in pretraining (``mro:prior_keep_probs``, written into the study from
   the checkpoint) and is refined on the completed trials with the study's rank loss: completed
   masks are ranked by non-domination (Optuna's fast non-dominated sort over accuracy and
   MFLOPs), ties by the first objective, and ``theta`` is fitted so that the prior's ranking of
   those masks agrees, with an L2 pull back towards the pretrained prior;
3. a mask that is already complete, running or waiting is never proposed while untried masks
   remain, and when the untried masks fit in the remaining budget they are enumerated, best
   prior score first.

No state lives only in one process: the prior and the budget are study system attributes; every
proposal is recomputed from the study's trials. Concurrent workers claim a mask by writing it
to their trial's system attribute ``mro:mask`` and then reading the claims back; a trial that
finds another live trial holding its mask gives it up and proposes again (the later of two
claims always sees the earlier one, so a mask is never kept twice). Random numbers come from a
generator seeded with ``(seed, trial number)``, so different trials (and different workers) get
different draws and a rerun with the same seed repeats them.

It also works on a plain Optuna study whose parameters are path bits: give ``paths`` (or let it
infer them from the completed trials) and leave the prior out (uniform prior).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from optuna.distributions import CategoricalDistribution
from optuna.samplers import BaseSampler, RandomSampler
from optuna.search_space import IntersectionSearchSpace
from optuna.study import StudyDirection
from optuna.study._multi_objective import _fast_non_domination_rank
from optuna.trial import TrialState

from supernet.rank_loss import RANK_LOSSES, rank_loss
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
MASK_KEY = "mro:mask"  # trial system attribute: the mask this trial claimed

_MAX_ENUMERATED_PATHS = 20  # 2**20 masks: beyond this the space is never enumerated
_CLAIM_ROUNDS = 8


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
        self._paths = list(paths) if paths is not None else None
        self._prior = list(prior_keep_probs) if prior_keep_probs is not None else None
        self._n_startup_trials = n_startup_trials
        self._rank_loss = rank_loss
        self._budget = budget
        self._refine_steps = refine_steps
        self._refine_trials = refine_trials
        self._anchor = anchor
        self._exploration = exploration
        self._seed = seed if seed is not None else int(np.random.SeedSequence().entropy % (2**31))
        self._intersection = IntersectionSearchSpace(include_pruned=True)
        self._fallback = RandomSampler(seed=seed)
        # derived and recomputable: the last refined theta, to warm-start the next refinement
        self._theta_cache: dict[tuple[str, ...], torch.Tensor] = {}

    # --- Optuna's contract -------------------------------------------------------------------

    def reseed_rng(self) -> None:
        self._seed = int(np.random.SeedSequence().entropy % (2**31))
        self._fallback.reseed_rng()

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        paths = self._study_paths(study)
        if paths is None:
            space = self._intersection.calculate(study)
            paths = sorted(n for n, d in space.items() if _is_bit(d))
        return {name: CategoricalDistribution((0, 1)) for name in paths}

    def sample_relative(self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        if not search_space:
            return {}
        paths = self._study_paths(study) or list(search_space)
        fixed = trial.system_attrs.get("fixed_params", {})
        if all(name in fixed for name in paths):  # an enqueued or retried trial: its mask is given
            mask = tuple(int(fixed[name]) for name in paths)
            study._storage.set_trial_system_attr(trial._trial_id, MASK_KEY, _to_str(mask))
            return {}
        rng = np.random.default_rng([self._seed, trial.number])
        mask = self._propose_and_claim(study, trial, paths, rng)
        return dict(zip(paths, mask))

    def sample_independent(self, study: Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution) -> Any:
        return self._fallback.sample_independent(study, trial, param_name, param_distribution)

    # --- proposal --------------------------------------------------------------------------------

    def _propose_and_claim(self, study: Study, trial: FrozenTrial, paths: list[str], rng: np.random.Generator) -> tuple[int, ...]:
        storage = study._storage
        live = (TrialState.RUNNING, TrialState.WAITING, TrialState.COMPLETE)
        excluded: set[tuple[int, ...]] = set()
        mask: tuple[int, ...] = ()
        for _ in range(_CLAIM_ROUNDS):
            trials = storage.get_all_trials(study._study_id, deepcopy=False)
            mask = self._propose(study, trial, trials, paths, rng, excluded)
            storage.set_trial_system_attr(trial._trial_id, MASK_KEY, _to_str(mask))
            if any(t.number != trial.number and t.state in live and _trial_mask(t, paths) == mask for t in trials):
                return mask  # no untried mask was left: this repeat is deliberate
            # Any other live trial holding the same mask is a rival, whatever its number. Of two
            # claims, the one written later always sees the earlier one here; the earlier one
            # may have been checked, and kept, before the later one was written, so "the lower
            # number wins" would let both keep the mask. Whoever sees a rival gives the mask up
            # (at worst both do, and both propose again).
            rival = any(
                t.number != trial.number and _trial_mask(t, paths) == mask
                for t in storage.get_all_trials(study._study_id, deepcopy=False, states=live)
            )
            if not rival:
                return mask
            excluded.add(mask)
        return mask

    def _propose(self, study, trial, trials, paths, rng, excluded) -> tuple[int, ...]:
        P = len(paths)
        taken = set(excluded)
        complete: list[FrozenTrial] = []
        running = 0
        for t in trials:
            if t.number == trial.number:
                continue
            if t.state in (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING):
                m = _trial_mask(t, paths)
                if m is not None:
                    taken.add(m)
            if t.state == TrialState.COMPLETE and t.values is not None and _trial_mask(t, paths) is not None:
                complete.append(t)
            elif t.state in (TrialState.RUNNING, TrialState.WAITING):
                running += 1
        space = 2**P - 1
        untried = space - len(taken) if P <= 62 else math.inf
        theta0 = self._prior_logits(study, P)

        # 1. enumerate when the untried masks fit in the remaining budget
        budget = self._study_budget(study)
        if P <= _MAX_ENUMERATED_PATHS and untried > 0 and budget is not None:
            remaining = budget - len(complete) - running
            if untried <= remaining:
                theta = self._refined(study, complete, paths, theta0) if len(complete) >= max(self._n_startup_trials, 2) else theta0
                return _best_untried(theta, taken, P)

        # 2. uniform during startup (and with probability `exploration` afterwards)
        if len(complete) < self._n_startup_trials or rng.random() < self._exploration:
            return _sample(np.zeros(P), taken, rng, untried)

        # 3. from the prior refined on the completed trials
        theta = self._refined(study, complete, paths, theta0)
        return _sample(theta.numpy(), taken, rng, untried)

    # --- refinement ------------------------------------------------------------------------------

    def _refined(self, study: Study, complete: list[FrozenTrial], paths: list[str], theta0: torch.Tensor) -> torch.Tensor:
        if len(complete) < 2:
            return theta0
        losses = _performance_losses(study, complete)
        order = np.argsort(losses, kind="stable")[: self._refine_trials]
        masks = torch.tensor([_trial_mask(complete[i], paths) for i in order], dtype=torch.float64)
        target = torch.as_tensor(losses[order], dtype=torch.float64)
        if float(target.max() - target.min()) == 0.0:
            return theta0
        key = tuple(paths)
        start = self._theta_cache.get(key, theta0)
        theta = start.clone().requires_grad_(True)
        optimizer = torch.optim.Adam([theta], lr=0.1)
        kind = self._study_rank_loss(study)
        for _ in range(self._refine_steps):
            optimizer.zero_grad()
            loss = rank_loss(mask_log_prob(masks, theta), target, kind) + self._anchor * (theta - theta0).pow(2).sum()
            loss.backward()
            optimizer.step()
        theta = theta.detach()
        self._theta_cache[key] = theta
        return theta

    # --- study attributes ------------------------------------------------------------------------

    def _study_paths(self, study: Study) -> list[str] | None:
        if self._paths is not None:
            return self._paths
        paths = study._storage.get_study_system_attrs(study._study_id).get(PATHS_KEY)
        return list(paths) if paths else None

    def _prior_logits(self, study: Study, P: int) -> torch.Tensor:
        probs = self._prior
        if probs is None:
            probs = study._storage.get_study_system_attrs(study._study_id).get(PRIOR_KEY)
        if not probs or len(probs) != P:
            return torch.zeros(P, dtype=torch.float64)
        p = torch.tensor(probs, dtype=torch.float64).clamp(1e-4, 1 - 1e-4)
        return torch.log(p) - torch.log1p(-p)

    def _study_budget(self, study: Study) -> int | None:
        if self._budget is not None:
            return self._budget
        value = study._storage.get_study_system_attrs(study._study_id).get(BUDGET_KEY)
        return int(value) if value is not None else None

    def _study_rank_loss(self, study: Study) -> str:
        if self._rank_loss is not None:
            return self._rank_loss
        kind = study._storage.get_study_system_attrs(study._study_id).get(RANK_LOSS_KEY)
        return kind if kind in RANK_LOSSES else "l1"


# --- helpers ---------------------------------------------------------------------------------------


def _is_bit(distribution: BaseDistribution) -> bool:
    return isinstance(distribution, CategoricalDistribution) and set(distribution.choices) == {0, 1}


def _to_str(mask: Sequence[int]) -> str:
    return "".join(str(int(b)) for b in mask)


def _trial_mask(trial: FrozenTrial, paths: list[str]) -> tuple[int, ...] | None:
    if all(name in trial.params for name in paths):
        return tuple(int(trial.params[name]) for name in paths)
    claimed = trial.system_attrs.get(MASK_KEY)
    if isinstance(claimed, str) and len(claimed) == len(paths):
        return tuple(int(c) for c in claimed)
    return None


def _performance_losses(study: Study, trials: list[FrozenTrial]) -> np.ndarray:
    """Lower is better: non-domination rank, then the first objective as a tie-breaker in [0, 1)."""
    values = np.array([t.values for t in trials], dtype=float)  # (N, n_objectives)
    signs = np.array([-1.0 if d == StudyDirection.MAXIMIZE else 1.0 for d in study.directions])
    loss_values = values * signs
    penalty = None
    constraints = [t.system_attrs.get("constraints") for t in trials]
    if any(c is not None for c in constraints):
        penalty = np.array([sum(max(0.0, float(x)) for x in (c or [])) for c in constraints])
    rank = _fast_non_domination_rank(loss_values, penalty=penalty).astype(float)
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


def _best_untried(theta: torch.Tensor, taken: set[tuple[int, ...]], P: int) -> tuple[int, ...]:
    """The untried mask with the highest prior score (ties: fewer paths first)."""
    from supernet.paths import all_masks

    masks = all_masks(P).to(torch.float64)
    scores = mask_log_prob(masks, theta.to(torch.float64)) - 1e-9 * masks.sum(dim=1)
    for index in torch.argsort(scores, descending=True).tolist():
        bits = tuple(int(b) for b in masks[index].tolist())
        if bits not in taken:
            return bits
    return tuple(int(b) for b in masks[int(torch.argmax(scores))].tolist())
