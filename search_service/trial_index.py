"""What the sampler and the budget check need to know about a study's trials, kept up to date
per process without looking at every trial on every proposal.

Each proposal asked, for every trial of the study: does it hold a mask (running, waiting,
complete, or failed by the heartbeat a moment ago), which one, is it complete, where is its
place in the budget order. At 1,000 trials those passes over the whole list were the part of
the per-trial overhead that grew with the study (``benchmarks/bench_overhead.py``).

A trial whose answers can no longer change is *settled*: COMPLETE (it holds its mask for good),
PRUNED, or FAIL (a heartbeat-failed one once its retry's grace ``PENDING_RETRY_S`` is over). A
``TrialIndex`` folds settled trials into running summaries once, and on each ``update`` looks
only at the trials that were not settled last time and at the new ones. Optuna's caching storage
returns one list per study, position = trial number, in which a finished trial is the same
object from read to read; ``update`` checks that (a settled trial is still at its place), and
starts over when it does not hold (another kind of storage, another list): correct always,
incremental where the storage allows.
"""

from __future__ import annotations

import bisect
import datetime
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from optuna.trial import FrozenTrial, TrialState

from search_service.keys import MASK_KEY, SCORES_ATTR, STALE_KEY

# The heartbeat's retry rules, which ``storage`` applies (``RetryStaleTrialCallback``) and this
# index reads back: a trial failed by the heartbeat is retried at most MAX_RETRY times, and keeps
# its mask and its place in the budget for PENDING_RETRY_S while its retry is being queued.
MAX_RETRY = 3
PENDING_RETRY_S = 60.0
_LIVE = (TrialState.RUNNING, TrialState.WAITING, TrialState.COMPLETE)

Mask = tuple[int, ...]


def trial_mask(trial: FrozenTrial, paths: Sequence[str]) -> Mask | None:
    """A trial's mask: its path parameters, else the mask its sampler claimed (``MASK_KEY``)."""
    params = trial.params
    try:
        return tuple(int(params[name]) for name in paths)
    except KeyError:
        claimed = trial.system_attrs.get(MASK_KEY)
        return tuple(int(c) for c in claimed) if isinstance(claimed, str) and len(claimed) == len(paths) else None


def holds_mask(t: FrozenTrial, now: datetime.datetime | None = None) -> bool:
    """A running, waiting or complete trial holds its mask; so does a trial that the heartbeat
    failed a moment ago (its worker died): its retry, queued right after with the same mask,
    takes over (``storage.STALE_KEY``), and until then no other trial may take the mask."""
    if t.state in _LIVE:
        return True
    return _pending_retry(t, now or datetime.datetime.now())


def _pending_retry(t: FrozenTrial, now: datetime.datetime) -> bool:
    if t.state != TrialState.FAIL or not t.system_attrs.get(STALE_KEY) or t.datetime_complete is None:
        return False
    return (now - t.datetime_complete).total_seconds() < PENDING_RETRY_S


def budget_place(t: FrozenTrial) -> tuple[int, int]:
    """A trial's place in the budget order: a retry takes the place of the trial it retries."""
    return int(t.system_attrs.get("failed_trial", t.number)), t.number


def _settled(t: FrozenTrial, now: datetime.datetime) -> bool:
    if t.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return t.state == TrialState.FAIL and not _pending_retry(t, now)


class TrialIndex:
    """Summaries of the settled trials of one study (for one list of path names)."""

    def __init__(self, paths: Sequence[str]) -> None:
        self.paths = tuple(paths)
        self._seen = 0  # positions below this were looked at
        self._pending: list[int] = []  # positions below ``_seen`` not settled then
        self._anchor: tuple[int, FrozenTrial] | None = None  # a settled trial and its position
        self.complete: list[FrozenTrial] = []  # settled COMPLETE trials with a mask and values
        self.complete_masks: list[Mask] = []  # their masks, in the same order
        self._values: list[tuple[float, ...]] = []  # their values, in the same order
        self._penalties: list[float | None] = []  # their constraint penalty (None: no constraints)
        self._arrays: tuple[int, np.ndarray, np.ndarray | None] | None = None
        self.masks: Counter[Mask] = Counter()  # masks held by settled trials (the COMPLETE ones)
        self._sizes = np.zeros(len(self.paths) + 1, dtype=np.int64)  # distinct ``masks`` by number of paths
        self._settled_complete: dict[int, tuple[Mask | None, tuple[int, int]]] = {}  # number -> mask, place
        self.counts: Counter[str] = Counter()  # states of the settled trials
        self.retried: set[int] = set()  # trial numbers that settled trials retried
        self.places: list[tuple[int, int]] = []  # budget places of settled COMPLETE trials, sorted
        self.open: list[FrozenTrial] = []  # the trials not settled at the last update

    def update(self, trials: Sequence[FrozenTrial]) -> TrialIndex:
        """Take in the study's trials as just read (all of them, in number order)."""
        anchor = self._anchor
        if len(trials) < self._seen or (anchor is not None and (anchor[0] >= len(trials) or trials[anchor[0]] is not anchor[1])):
            self.__init__(self.paths)  # another list than last time: start over
        now = datetime.datetime.now()
        look = self._pending + list(range(self._seen, len(trials)))
        self._seen = len(trials)
        pending, still_open = [], []
        for i in look:
            t = trials[i]
            if _settled(t, now):
                self._settle(t)
                self._anchor = (i, t)
            else:
                pending.append(i)
                still_open.append(t)
        self._pending = pending
        self.open = still_open
        return self

    def _settle(self, t: FrozenTrial) -> None:
        self.counts[t.state.name.lower()] += 1
        self.retried.update(t.system_attrs.get("retry_history", ()))
        if t.state != TrialState.COMPLETE:
            return
        mask = trial_mask(t, self.paths)
        if mask is not None:
            if not self.masks[mask]:
                self._sizes[sum(mask)] += 1
            self.masks[mask] += 1
            if t.values is not None:
                self.complete.append(t)
                self.complete_masks.append(mask)
                self._values.append(tuple(t.values))
                constraints = t.system_attrs.get("constraints")
                self._penalties.append(None if constraints is None else sum(max(0.0, float(x)) for x in constraints))
        place = budget_place(t)
        bisect.insort(self.places, place)
        self._settled_complete[t.number] = (mask, place)

    def _settled_masks(self, number: int) -> set[Mask]:
        """The masks of the settled complete trials other than ``number``."""
        own = self._settled_complete.get(number)
        if own is None or own[0] is None or self.masks[own[0]] > 1:
            return set(self.masks)
        return set(self.masks) - {own[0]}

    def complete_arrays(self) -> tuple[np.ndarray, np.ndarray | None]:
        """The values of ``complete`` (n, objectives) and their constraint penalties (None when
        no trial has constraints), as arrays (rebuilt only when trials were added)."""
        n = len(self._values)
        if self._arrays is None or self._arrays[0] != n:
            values = np.array(self._values, dtype=float).reshape(n, -1)
            penalty = None
            if any(p is not None for p in self._penalties):
                penalty = np.array([p or 0.0 for p in self._penalties])
            self._arrays = (n, values, penalty)
        return self._arrays[1], self._arrays[2]

    # --- questions about the study as of the last update ----------------------------------------

    def held_masks(self, number: int) -> set[Mask]:
        """The masks held by trials other than trial ``number``."""
        return self._settled_masks(number) | self.open_masks(number)

    def running_others(self, number: int) -> int:
        """How many trials other than ``number`` hold a mask without being complete."""
        now = datetime.datetime.now()
        return sum(1 for t in self.open if t.number != number and holds_mask(t, now))

    def rivals(self, number: int, mask: Mask) -> tuple[bool, list[FrozenTrial]]:
        """For trial ``number`` claiming ``mask``: whether a settled (complete) trial holds it,
        and the trials not settled (other than ``number``) that hold it."""
        now = datetime.datetime.now()
        own = self._settled_complete.get(number)
        settled = self.masks[mask] > (1 if own is not None and own[0] == mask else 0)
        return settled, [t for t in self.open if t.number != number and holds_mask(t, now) and trial_mask(t, self.paths) == mask]

    def open_masks(self, number: int) -> set[Mask]:
        """The masks held by trials not settled, other than ``number``."""
        now = datetime.datetime.now()
        return {m for t in self.open if t.number != number and holds_mask(t, now) and (m := trial_mask(t, self.paths)) is not None}

    def size_counts(self, extra: set[Mask]) -> np.ndarray:
        """How many distinct masks of each number of paths the settled masks and ``extra``
        hold together: from counts kept as trials settle, plus ``extra``'s masks that are not
        settled ones (not mask by mask over the whole study)."""
        counts = self._sizes.copy()
        for mask in extra:
            if not self.masks[mask]:
                counts[sum(mask)] += 1
        return counts

    def state_counts(self) -> dict[str, int]:
        out = {state.name.lower(): 0 for state in TrialState}
        out.update(self.counts)
        for t in self.open:
            out[t.state.name.lower()] += 1
        return out

    def places_before(self, place: tuple[int, int], number: int) -> int:
        """How many places before ``place`` are held (by trials other than ``number``): by a
        running, waiting or complete trial, or by a trial failed by the heartbeat whose retry is
        still to come."""
        held = bisect.bisect_left(self.places, place)
        own = self._settled_complete.get(number)
        if own is not None and own[1] < place:
            held -= 1  # trial ``number`` itself does not count
        retried = set(self.retried)
        for t in self.open:
            retried.update(t.system_attrs.get("retry_history", ()))
        # a retry is queued right after the failure; if that never happened (the database went
        # away in between), the place is given up after a while rather than held for ever
        now = datetime.datetime.now()
        for t in self.open:
            if t.number == number or budget_place(t) >= place:
                continue
            if t.state in _LIVE:
                held += 1
            elif _pending_retry(t, now) and t.number not in retried and len(t.system_attrs.get("retry_history", ())) < MAX_RETRY:
                held += 1  # failed by the heartbeat a moment ago: its retry is being queued
        return held

    def find(self, number: int) -> FrozenTrial | None:
        """Trial ``number`` if it is not settled (a trial looks itself up while it runs)."""
        return next((t for t in self.open if t.number == number), None)


def space_size(P: int) -> float:
    """The number of non-empty masks of ``P`` paths (infinite beyond 62: never exhausted)."""
    return 2**P - 1 if P <= 62 else math.inf


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

    def no_untried_reason(self) -> str:
        """Why no untried mask is left."""
        if self.exhausted:
            return f"all {self.size} masks scored"
        return f"the {self.size - self.scored} masks not scored yet are held by running trials"


class MaskIndex(TrialIndex):
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
        return MaskSpace(size=space_size(len(self.paths)), scored=len(self.masks) + undefined, held=held)
