"""Mixed search spaces: a study whose trials suggest other parameters beside the path bits.

The path bits are ``MROSampler``'s own (a whole mask per trial, never one already tried while
untried masks are left); every other parameter goes to the user's ``independent_sampler`` (TPE by
default), as Optuna's GP and CMA-ES samplers hand over what they do not model.

A trial is a *repeat* only when its mask and every other parameter equal a complete trial's. So in
a mixed study a trial that finds no untried mask is not pruned: it takes a mask already scored
(``ReusedMask``), and its other parameters make it new. Its other parameters are drawn so that
the trial as a whole is not a repeat (``Repeats``); only when no draw avoids one (every value
of a small discrete space already scored with this mask) is it pruned as a repeat.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.exceptions import TrialPruned
from optuna.trial import FrozenTrial

from search_service.trial_index import Mask
from supernet.relation_graph import mask_log_prob

REDRAWS = 32  # draws of one parameter before a trial whose every draw is a repeat is pruned


def is_bit(distribution: BaseDistribution) -> bool:
    """A path bit: a categorical of exactly the ints 0 and 1 (not ``(True, False)``, which
    compare equal to them)."""
    return (
        isinstance(distribution, CategoricalDistribution)
        and len(distribution.choices) == 2
        and all(type(c) is int for c in distribution.choices)
        and set(distribution.choices) == {0, 1}
    )


def has_other_params(trials: Sequence[FrozenTrial], paths: Sequence[str]) -> bool:
    """Whether any of ``trials`` has a parameter that is not one of ``paths``."""
    names = set(paths)
    return any(not names.issuperset(t.params) for t in trials)


class ReusedMask:
    """A mask already scored, for a trial of a mixed study that found no untried mask: drawn
    among the scored masks with probability proportional to the (refined) prior's probability of
    the mask, so that masks whose trials ranked well get the new hyperparameters most often."""

    def propose(self, theta: np.ndarray, scored: set[Mask], rng: np.random.Generator) -> Mask | None:
        if not scored:
            return None
        masks = sorted(scored)
        scores = mask_log_prob(torch.tensor(masks, dtype=torch.float64), torch.as_tensor(theta, dtype=torch.float64)).numpy()  # (n,)
        w = np.exp(scores - scores.max())
        return masks[int(rng.choice(len(masks), p=w / w.sum()))]


class Repeats:
    """The complete trials whose mask a trial reuses, per trial of this process (dropped when the
    trial is told): what ``sample_independent`` checks a drawn value against."""

    def __init__(self) -> None:
        # (study id, trial number) -> (the trial's path parameters, the parameters of the
        # complete trials with the same mask)
        self._by_trial: dict[tuple[int, int], tuple[dict[str, int], list[dict[str, Any]]]] = {}

    def reuse(self, study_id: int, number: int, mask_params: dict[str, int], complete: Sequence[FrozenTrial], masks: Sequence[Mask]) -> None:
        """Trial ``number`` reuses the mask ``mask_params`` (its path parameters); ``complete``
        and ``masks``: the study's complete trials and their masks."""
        mask = tuple(mask_params.values())
        same = [{**t.params, **mask_params} for t, m in zip(complete, masks) if m == mask]
        self._by_trial[(study_id, number)] = (mask_params, same)

    def forget(self, study_id: int, number: int) -> None:
        self._by_trial.pop((study_id, number), None)

    def repeats(self, study_id: int, trial: FrozenTrial, name: str, value: Any) -> bool:
        """Whether ``trial`` with ``name = value`` (and its mask) has exactly the parameters of a
        complete trial."""
        entry = self._by_trial.get((study_id, trial.number))
        if entry is None:
            return False
        mask_params, same = entry
        params = {**trial.params, **mask_params, name: value}
        return any(p == params for p in same)

    def draw(self, study_id: int, trial: FrozenTrial, name: str, draws: Iterator[Any]) -> Any:
        """The first of ``draws`` that does not make ``trial`` a repeat; ``TrialPruned`` when
        ``REDRAWS`` draws all do."""
        for _ in range(REDRAWS):
            value = next(draws)
            if not self.repeats(study_id, trial, name, value):
                return value
        raise TrialPruned(f"a repeat: its mask and every other parameter were scored ({REDRAWS} draws of {name!r} all repeat)")
