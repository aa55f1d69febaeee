"""``MROSampler``: the sampler class. It wires the strategies (``_strategies``), the refinement
(``_refinement``) and the claim protocol (``search_service.claims``) together and holds the seed;
the package docstring (``search_service/sampler/__init__.py``) describes the whole."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from optuna.distributions import CategoricalDistribution
from optuna.exceptions import TrialPruned
from optuna.samplers import BaseSampler, RandomSampler, TPESampler
from optuna.search_space import IntersectionSearchSpace

from search_service.claims import CLAIM_ROUNDS, claim, mask_text
from search_service.keys import BUDGET_KEY, MASK_KEY, PATHS_KEY, PRIOR_KEY, RANK_LOSS_KEY
from search_service.objectives import MaskFilter
from search_service.sampler._mixed import Repeats, ReusedMask, has_other_params, is_bit
from search_service.sampler._refinement import PriorRefinement
from search_service.sampler._strategies import (
    Enumeration,
    LocalMove,
    PriorDraw,
    Shares,
    UniformDraw,
    random_untried,
)
from search_service.trial_index import Mask, MaskIndex, MaskSpace, TrialIndex, space_size
from supernet.rank_loss import RANK_LOSSES

if TYPE_CHECKING:
    from optuna.distributions import BaseDistribution
    from optuna.study import Study
    from optuna.trial import FrozenTrial, TrialState

_ATTRS_TTL_S = 5.0  # study system attributes are re-read after this many seconds
_FEASIBLE_TRIES = 64  # proposals over a limit set aside before one is kept anyway (``_propose``)


class MROSampler(BaseSampler):
    """Propose path masks from the MRG prior, refined by rank regularization on finished trials.

    A plain ``optuna.samplers.BaseSampler``: ``optuna.create_study(sampler=MROSampler(...))``
    and ``study.optimize`` on an objective that suggests one ``{0, 1}`` categorical per path.

    Args:
        paths: path names in mask order; read from the study (``mro:paths``) when omitted, or
            inferred from the completed trials' parameters.
        prior_keep_probs: each path's keep probability under the proposal prior; read from
            the study (``mro:prior_keep_probs``, from ``[search] prior``) when omitted, uniform
            (0.5) when absent there.
        n_startup_trials: completed trials before the prior is used; uniform until then.
        rank_loss: ``"hinge"``, ``"l0"``, ``"l1"``, ``"l2"`` or ``"linf"``; the study's
            ``mro:rank_loss`` when omitted, else ``"l1"``.
        budget: the study's trial budget (for enumeration); ``mro:trials`` when omitted.
        refine_steps: Adam steps of the refinement per proposal.
        refine_trials: at most this many completed trials (the best ranked) enter the rank loss.
        anchor: weight of the L2 pull of ``theta`` towards the pretrained prior.
        exploration: ``Shares.exploration``: probability of a uniform (untried) mask after the
            start-up trials.
        local: ``Shares.local``: probability (after the start-up trials, when not exploring) of
            a move around the Pareto front rather than a mask of a drawn size from the refined
            prior.
        independent_sampler: the sampler of every parameter that is not a path bit (a mixed
            search space: ``_mixed.py``); ``TPESampler(seed=seed)`` when omitted.
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
        independent_sampler: BaseSampler | None = None,
        seed: int | None = None,
    ) -> None:
        if n_startup_trials < 0:
            raise ValueError(f"n_startup_trials must be >= 0, got {n_startup_trials}")
        if rank_loss is not None and rank_loss not in RANK_LOSSES:
            raise ValueError(f"rank_loss must be one of {RANK_LOSSES}, got {rank_loss!r}")
        if prior_keep_probs is not None and not all(0.0 < p < 1.0 for p in prior_keep_probs):
            raise ValueError(f"prior_keep_probs must lie strictly between 0 and 1, got {list(prior_keep_probs)}")
        self._shares = Shares(exploration=exploration, local=local)
        self._paths = list(paths) if paths is not None else None
        self._prior = list(prior_keep_probs) if prior_keep_probs is not None else None
        self._n_startup_trials = n_startup_trials
        self._rank_loss = rank_loss
        self._budget = budget
        self._seed = seed if seed is not None else int(np.random.SeedSequence().entropy % (2**31))
        self._intersection = IntersectionSearchSpace(include_pruned=True)
        self._fallback = RandomSampler(seed=seed)  # path bits before the paths are known; redraws
        self._independent_sampler = independent_sampler or TPESampler(seed=seed)
        self._reused = ReusedMask()
        self._repeats = Repeats()
        # the parts (``_strategies``, ``_refinement``); all they keep is derived and recomputable
        self._enumeration = Enumeration()
        self._uniform = UniformDraw()
        self._local = LocalMove(self._shares)
        self._prior_draw = PriorDraw()
        self._refinement = PriorRefinement(steps=refine_steps, trials=refine_trials, anchor=anchor)
        self._attrs_cache: dict[tuple[int, int], tuple[float, dict[str, Any]]] = {}
        self._indexes: dict[tuple, MaskIndex] = {}  # per (storage, study, paths): derived, per process
        self._seen: tuple[int, int, TrialIndex] | None = None  # (study id, trial number, index)
        self._no_mask: tuple[int, int, str] | None = None  # (study id, trial number, why) of a trial given no mask
        self._told: tuple[int, int, TrialState] | None = None  # (study id, trial number, state) of the last trial told

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
        return index.space() if isinstance(index, MaskIndex) else None

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

    def last_told(self, study: Study) -> tuple[int, TrialState] | None:
        """The number and state of the last trial of ``study`` that was told through this sampler
        (``after_trial``: the state ``tell`` is about to write), or None. A worker running one
        trial at a time learns its trial's outcome here without reading it back."""
        told = self._told
        if told is None or told[0] != study._study_id:
            return None
        return told[1], told[2]

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
        self._independent_sampler.reseed_rng()

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        paths = self._study_paths(study) or self._inferred_paths(study)
        return {name: CategoricalDistribution((0, 1)) for name in paths}

    def _inferred_paths(self, study: Study) -> list[str]:
        space = self._intersection.calculate(study)
        return sorted(n for n, d in space.items() if is_bit(d))

    def sample_relative(self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        if not search_space:
            return {}
        paths = self._study_paths(study) or [n for n, d in search_space.items() if is_bit(d)]
        mask = self._sample_mask(study, trial, paths) if paths else {}
        # parameters that are not path bits (a search space given by the caller): the
        # independent sampler's, one by one
        others = {name: self.sample_independent(study, trial, name, d) for name, d in search_space.items() if name not in paths}
        return {**mask, **others}

    def _sample_mask(self, study: Study, trial: FrozenTrial, paths: list[str]) -> dict[str, int]:
        """The path parameters of ``trial``: its mask, given (enqueued, retried) or proposed and
        claimed; none when it gets no mask (``no_mask_reason`` says why)."""
        # an enqueued trial's fixed parameters, and the parameters a retried trial copied from
        # the one that failed (only some paths, when that one died between two suggestions)
        fixed = {**trial.system_attrs.get("fixed_params", {}), **trial.params}
        if all(name in fixed for name in paths):  # an enqueued or retried trial: its mask is given
            mask = tuple(int(fixed[name]) for name in paths)
            study._storage.set_trial_system_attr(trial._trial_id, MASK_KEY, mask_text(mask))
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

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        self._independent_sampler.before_trial(study, trial)

    def after_trial(self, study: Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None) -> None:
        self._told = (study._study_id, trial.number, state)
        self._repeats.forget(study._study_id, trial.number)
        self._independent_sampler.after_trial(study, trial, state, values)

    def sample_independent(self, study: Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution) -> Any:
        paths = self._study_paths(study)
        if param_name in (paths or ()) or (paths is None and is_bit(param_distribution)):
            why = self.no_mask_reason(study, trial.number)
            if why is not None:
                # a path of a trial that got no mask: a random bit here would make a repeat
                raise TrialPruned(f"no mask to score: {why}")
            return self._fallback.sample_independent(study, trial, param_name, param_distribution)

        def draws() -> Iterator[Any]:  # the independent sampler's, then (to leave a repeat) uniform
            yield self._independent_sampler.sample_independent(study, trial, param_name, param_distribution)
            while True:
                yield self._fallback.sample_independent(study, trial, param_name, param_distribution)

        return self._repeats.draw(study._study_id, trial, param_name, draws())

    # --- proposal --------------------------------------------------------------------------------

    def _propose_and_claim(self, study: Study, trial: FrozenTrial, paths: list[str], rng: np.random.Generator) -> tuple[Mask | None, str]:
        """The mask trial ``trial`` keeps (its claim written and checked: ``claims.claim``), or
        None and why: no untried mask is left, or every claim was lost to other trials. Never a
        mask that another trial holds or that was scored."""
        index = self._index(study, paths)
        P = len(paths)

        def choose(claim_round: int, lost: set[Mask]) -> Mask | None:
            held = index.held_masks(trial.number)
            if len(held) >= space_size(P):
                return None
            mask = self._propose(study, trial, index, held, P, rng, lost) if claim_round == 0 else None
            if mask is None or mask in held:
                # after a collision (or a proposal that found only taken masks), a uniformly
                # random untried mask from this trial's own generator: two trials that
                # collided in lock-step (the same enumerated mask at the same moment) would
                # otherwise collide again on the next one
                mask = random_untried(held, lost, P, rng)
            return mask

        mask, every_round_lost = claim(study, trial, index, choose)
        if mask is not None:
            self._seen = (study._study_id, trial.number, index)
            return mask, ""
        if has_other_params(index.complete, paths) or has_other_params(index.open, paths):
            # a mixed study: a scored mask, which the trial's other parameters make new
            mask = self._reuse(study, trial, index, paths, rng)
            if mask is not None:
                return mask, ""
        if every_round_lost:
            return None, f"every mask it claimed ({CLAIM_ROUNDS} tries) was taken by another trial"
        return None, index.space().no_untried_reason()

    def _reuse(self, study: Study, trial: FrozenTrial, index: MaskIndex, paths: list[str], rng: np.random.Generator) -> Mask | None:
        """A scored mask for a trial of a mixed study that found no untried one (``ReusedMask``:
        by the refined prior after the start-up trials; uniform during them and with probability
        ``Shares.exploration``), or None when no mask is scored yet."""
        theta = torch.zeros(len(paths), dtype=torch.float64)
        if len(index.complete) >= max(self._n_startup_trials, 2) and rng.random() >= self._shares.exploration:
            theta = self._refined(study, index, self._prior_logits(study, len(paths)))
        mask = self._reused.propose(theta.numpy(), {m for m, n in index.masks.items() if n}, rng)
        if mask is not None:
            self._repeats.reuse(study._study_id, trial.number, dict(zip(paths, mask)), index.complete, index.complete_masks)
            # the trial's mask even if it does not suggest every path (``trial_index.trial_mask``)
            study._storage.set_trial_system_attr(trial._trial_id, MASK_KEY, mask_text(mask))
        return mask

    def _index(self, study: Study, paths: list[str]) -> MaskIndex:
        key = (id(study._storage), study._study_id, tuple(paths))
        index = self._indexes.get(key)
        if index is None:
            index = self._indexes[key] = MaskIndex(paths)
        return index

    def _propose(self, study: Study, trial: FrozenTrial, index: MaskIndex, held: set[Mask], P: int, rng: np.random.Generator, excluded: set[Mask]) -> Mask:
        """This trial's mask, within the study's limits as its tables price them
        (``objectives.MaskFilter``): a proposal over a limit is set aside and the strategy asked
        again, up to ``_FEASIBLE_TRIES`` times; if every one is over a limit (the limits leave
        few masks), the last is kept, and its trial is recorded as infeasible."""
        mask_filter = MaskFilter.from_attrs(self._study_attrs(study))
        if not mask_filter:
            return self._propose_once(study, trial, index, held, P, rng, excluded)
        over = set(excluded)
        mask = None
        for _ in range(_FEASIBLE_TRIES):
            mask = self._propose_once(study, trial, index, held, P, rng, over)
            if mask is None or mask in held or mask_filter.feasible(mask):
                return mask
            over.add(mask)
            if len(held | over) >= space_size(P):
                break
        return mask

    def _propose_once(self, study: Study, trial: FrozenTrial, index: MaskIndex, held: set[Mask], P: int, rng: np.random.Generator, excluded: set[Mask]) -> Mask:
        """Which strategy proposes this trial's mask (the package docstring says when each runs;
        ``Shares`` how often)."""
        taken = held | excluded
        complete = index.complete
        untried = space_size(P) - len(taken)
        theta0 = self._prior_logits(study, P)

        # 1. enumeration, when the untried masks fit in the remaining budget
        budget = self._study_budget(study)
        if budget is not None and self._enumeration.applies(P, untried, budget - len(complete) - index.running_others(trial.number)):
            theta = self._refined(study, index, theta0) if len(complete) >= max(self._n_startup_trials, 2) else theta0
            return self._enumeration.propose(theta, taken, P)

        # 2. a uniform draw during the start-up trials, and with probability ``exploration`` after
        if len(complete) < self._n_startup_trials or rng.random() < self._shares.exploration:
            return self._uniform.propose(P, taken, untried, rng)

        # 3. from the prior refined on the completed trials: with probability ``local`` a move
        #    around the front, else (or when the front has no untried neighbour) a prior draw
        losses = self._refinement.losses(study.directions, index)
        theta = self._refined(study, index, theta0, losses).numpy()
        front = [index.complete_masks[i] for i in np.flatnonzero(losses < 1.0)]
        if rng.random() < self._shares.local:
            mask = self._local.propose(theta, front, taken, rng)
            if mask is not None:
                return mask
        # sizes up to one path more than the largest front member: a larger mask costs more
        # than the whole front and would have to beat its best accuracy
        max_size = max((sum(m) for m in front), default=P) + 1
        per_size = index.size_counts(index.open_masks(trial.number) | index.undefined | excluded)
        return self._prior_draw.propose(theta, taken, rng, untried, per_size, max_size)

    def _refined(self, study: Study, index: TrialIndex, theta0: torch.Tensor, losses: np.ndarray | None = None) -> torch.Tensor:
        """``theta`` refined on the completed trials (``PriorRefinement.refine``)."""
        return self._refinement.refine(study.directions, index, theta0, self._study_rank_loss(study), losses)

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

