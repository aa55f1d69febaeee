"""Every mask of a supernet scored exactly, streamed in blocks, and the exact Pareto front.

A mask is a number: path 0 is its highest bit, as in ``paths.all_masks`` (counting order), so
mask ``i`` has the bits of ``format(i, "0{P}b")`` and the lowest number is the lowest mask string.
All ``2**P - 1`` masks are enumerated as blocks: the last ``b`` paths are the *low* bits, the
others the *high* bits, ``i = high << b | low``.

**Linear head.** A mask's logits are ``W·mean(z_p) + bias = S/|m| + bias`` with
``S = Σ_{p∈m} H_p`` and ``H_p = W z_p`` the cache's ``projected`` rows (``scoring.py``). ``S``
splits as ``S_low + S_high``: the sums of all ``2**b`` low combinations are computed once, and each
high combination adds one precomputed row sum to all of them, a broadcast add. So a mask costs
``O(N·C)`` adds instead of the ``O(P·N·C)`` of a matmul per batch. For a classification metric
only the class ids count, and ``argmax(S/|m| + bias) = argmax(S + |m|·bias)`` (``|m| > 0``), so
the division is never made: ``|m|·bias`` is split the same way (``|m| = |low| + |high|``).
Regression metrics need the values, ``(S_low + S_high)/|m| + bias``.

**Exactness.** The sums are made in float64 from the float32 cache: a sum of at most P float32
numbers in float64 is exact to far below float32's own rounding, so the result does not depend on
the order of the additions. The class ids (or regression values) then go through the very function
the search scores with, ``metrics.batch_metric``: every metric of ``metrics.METRICS`` is supported
exactly (accuracies, F1 from per-mask confusion counts, MAE, correlation), none is refused.
``score_masks`` on a float64 cache gives the same numbers (``tests/test_exhaustive.py``); the
float32 cache the search uses can differ only for a sample whose two best logits (or whose value
and a rounding or sign boundary) are closer than float32 rounding. Other heads (``mlp``) are not
linear in the mean: they fall back to ``scoring.predict_masks`` on batches of enumerated masks,
``score_masks`` itself, exact by construction and about P times slower per mask.

**Costs** (``AdditiveCost``): FLOPs, parameters, and the latency and peak-memory tables of
``supernet.hardware`` all have one shape: a base (the head), each modality's embedding (paid once
if any active path touches it) and each active path. They split like the sums: the path costs
add, and the touched modalities are the union (a bitwise or) of the low and high parts', priced
from a ``2**k`` table. Every cost is summed in int64 *units*: FLOPs and parameters are integers,
so a unit is one FLOP or parameter and the totals equal ``FlopTable.flops`` and
``Supernet.num_parameters`` exactly; a float cost (a fitted table) is first put on a grid of one
power of two, ``quantum``, fine enough that any mask's total stays below ``2**53`` units (each
part moves by at most half a quantum, about ``2**-53`` of the largest total: float64's own
rounding). On that grid every partial sum is exact, so a mask's cost is the same number in any
order of addition (``AdditiveCost.price`` mask by mask, the blocks here, any float64 sum of the
grid values), and equal costs are equal, not equal up to rounding.

**Limits** (``Limit``): a mask whose cost is over a limit is infeasible and never reaches the
front (nor its ``equal`` counts); the limit is a threshold on the integer units, exact too.

**The front**, over the metric (maximized or minimized) and one or two costs (minimized): a point
is kept unless another is at least as good in every objective and better in one. Masks with the
same metric and the same costs are one point: its representative is the lowest mask, and
``equal`` says how many masks share it. Each batch is first filtered on its device against the
front so far, and only the few survivors are merged on the host. With one cost
(``RunningFront``) the filter is a ``searchsorted`` over the front's costs; with two
(``RunningFront3``) it is a dominance check of the batch against every front point, and the
merge takes the survivors in blocks.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import torch

from supernet.flops import FlopTable
from supernet.metrics import METRICS, batch_metric
from supernet.model import Supernet
from supernet.paths import path_pairs, touched_modalities
from supernet.scoring import PathCache, predict_masks

MAX_PATHS = 62  # mask numbers are int64; far beyond what can be enumerated anyway (k = 8 has 56)
UNIT_BITS = 52  # a float cost's largest total is below 2**52 quanta: with rounding, sums stay below 2**53
MAX_UNITS = 2**62  # an integer cost's parts must add up to less: int64 sums never overflow
MAX_COSTS = 2  # objectives besides the metric


# --- costs --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AdditiveCost:
    """A cost that adds up over a mask's parts: ``base`` + ``modality[m]`` for every modality some
    active path touches + ``path[p]`` for every active path (module docstring). ``exact_int``:
    the parts are integers (FLOPs, parameters) and so is every total; else float parts, summed on
    the grid of ``quantum``."""

    name: str
    base: float
    modality: tuple[float, ...]
    path: tuple[float, ...]
    exact_int: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "modality", tuple(self.modality))
        object.__setattr__(self, "path", tuple(self.path))
        k = len(self.modality)
        if k < 2 or len(self.path) != k * (k - 1):
            raise ValueError(f"cost {self.name!r}: {k} modality parts need {k * (k - 1)} path parts, got {len(self.path)}")
        parts = (self.base, *self.modality, *self.path)
        bad = [x for x in parts if not isinstance(x, (int, float, np.integer, np.floating)) or isinstance(x, bool) or not math.isfinite(x)]
        if bad:
            raise ValueError(f"cost {self.name!r}: every part must be a finite number, got {bad[0]!r}")
        if self.exact_int:
            if any(float(x) != int(x) for x in parts):
                raise ValueError(f"cost {self.name!r} is exact_int, but a part is not an integer: {next(x for x in parts if float(x) != int(x))!r}")
            if sum(abs(int(x)) for x in parts) >= MAX_UNITS:
                raise ValueError(f"cost {self.name!r}: its parts add up to 2**62 or more; int64 sums could overflow")

    # --- constructors ---

    @classmethod
    def from_flops(cls, table: FlopTable, name: str = "flops") -> AdditiveCost:
        """FLOPs, exact integers (``FlopTable``: ``shared`` is the base)."""
        return cls(name, int(table.shared), tuple(int(x) for x in table.modality), tuple(int(x) for x in table.path), exact_int=True)

    @classmethod
    def from_table(cls, table: Any, name: str, *, exact_int: bool = False) -> AdditiveCost:
        """Any additive table with ``modality`` and ``path`` parts and a ``base`` (or ``shared``):
        ``supernet.hardware.CostTable``'s latency or peak memory, a ``FlopTable``."""
        base = table.base if hasattr(table, "base") else table.shared
        cast = int if exact_int else float
        return cls(name, cast(base), tuple(cast(x) for x in table.modality), tuple(cast(x) for x in table.path), exact_int=exact_int)

    # --- units ---

    @cached_property
    def quantum(self) -> float:
        """The value of one unit: 1 for an integer cost; for a float cost the power of two that
        puts the largest possible total below ``2**UNIT_BITS`` units."""
        if self.exact_int:
            return 1.0
        bound = math.fsum(abs(float(x)) for x in (self.base, *self.modality, *self.path))
        if bound == 0.0:
            return 1.0
        return math.ldexp(1.0, math.frexp(bound)[1] - UNIT_BITS)

    def to_units(self, x: float) -> int:
        return int(x) if self.exact_int else round(float(x) / self.quantum)

    @cached_property
    def units(self) -> tuple[int, tuple[int, ...], tuple[int, ...]]:
        """``(base, modality, path)`` in units (integers)."""
        return self.to_units(self.base), tuple(self.to_units(x) for x in self.modality), tuple(self.to_units(x) for x in self.path)

    def value(self, units: int) -> int | float:
        """A total in units as the cost's value: an int for an integer cost (exact), else a float
        (exact: below ``2**53`` units times a power of two)."""
        return int(units) if self.exact_int else float(units) * self.quantum

    def price_units(self, mask: Sequence[int]) -> int:
        bits = [int(b) for b in mask]
        base, modality, path = self.units
        return base + sum(modality[m] for m in touched_modalities(bits, len(modality))) + sum(c for c, b in zip(path, bits) if b)

    def price(self, mask: Sequence[int]) -> int | float:
        """One mask's cost, exactly as the exhaustive scorer prices it."""
        return self.value(self.price_units(mask))


def params_cost(model: Supernet, name: str = "params") -> AdditiveCost:
    """Parameters as an additive cost: the head, each touched modality's embedding, each active
    path (``Supernet.num_parameters``, which it equals on every mask)."""

    def count(module: torch.nn.Module) -> int:
        return sum(p.numel() for p in module.parameters())

    return AdditiveCost(name, count(model.head), tuple(count(e) for e in model.embeddings), tuple(count(p) for p in model.paths), exact_int=True)


@dataclass(frozen=True)
class Limit:
    """A mask whose ``cost`` is over ``at_most`` (in the cost's own values) is infeasible."""

    cost: AdditiveCost
    at_most: float

    def __post_init__(self) -> None:
        if isinstance(self.at_most, bool) or not isinstance(self.at_most, (int, float)) or math.isnan(self.at_most):
            raise ValueError(f"limit on {self.cost.name!r}: at_most must be a number, got {self.at_most!r}")

    @classmethod
    def mflops(cls, cost: AdditiveCost, max_mflops: float) -> Limit:
        """A limit in MFLOPs on a FLOPs cost, as ``FlopTable.mflops`` (``flops / 1e6``) compares:
        the largest integer F with ``F / 1e6 <= max_mflops`` in float64."""
        if not cost.exact_int:
            raise ValueError(f"an MFLOPs limit needs an integer FLOPs cost, got {cost.name!r}")
        if math.isinf(max_mflops):
            return cls(cost, max_mflops)
        f = math.floor(max_mflops * 1e6)
        while f / 1e6 > max_mflops:
            f -= 1
        while (f + 1) / 1e6 <= max_mflops:
            f += 1
        return cls(cost, f)

    @property
    def max_units(self) -> int:
        """The largest total in units that is within the limit (exact: the quantum is a power of two)."""
        if math.isinf(self.at_most):
            return MAX_UNITS if self.at_most > 0 else -MAX_UNITS
        threshold = math.floor(self.at_most if self.cost.exact_int else self.at_most / self.cost.quantum)
        return max(-MAX_UNITS, min(MAX_UNITS, int(threshold)))

    def allows(self, mask: Sequence[int]) -> bool:
        return self.cost.price_units(mask) <= self.max_units


def as_costs(costs: FlopTable | AdditiveCost | Sequence[AdditiveCost]) -> tuple[AdditiveCost, ...]:
    """A ``FlopTable`` is the FLOPs cost (today's default), one cost is a list of one."""
    if isinstance(costs, FlopTable):
        return (AdditiveCost.from_flops(costs),)
    if isinstance(costs, AdditiveCost):
        return (costs,)
    out = tuple(costs)
    bad = [c for c in out if not isinstance(c, AdditiveCost)]
    if bad:
        raise TypeError(f"costs must be AdditiveCost (or one FlopTable), got {type(bad[0]).__name__}")
    return out


# --- the front ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class FrontPoint:
    """One point of the exact front: its lowest mask, the metric, its costs (in the scorer's order;
    an integer cost as an int) and how many masks share exactly this metric and these costs."""

    mask: int
    value: float
    costs: tuple[int | float, ...]
    equal: int

    def bits(self, n_paths: int) -> str:
        return format(self.mask, f"0{n_paths}b")


class RunningFront:
    """The non-dominated set over (metric, one cost in integer units) of all points seen so far,
    exact (module docstring)."""

    n_costs = 1

    def __init__(self, *, maximize: bool = True) -> None:
        self.maximize = maximize
        # sorted by cost ascending with the (higher-is-better) value strictly increasing
        self._cost = np.zeros(0, dtype=np.int64)
        self._gain = np.zeros(0, dtype=np.float64)  # the value, negated when minimized
        self._mask = np.zeros(0, dtype=np.int64)
        self._equal = np.zeros(0, dtype=np.int64)
        self._device_copy: tuple[torch.device, torch.Tensor, torch.Tensor] | None = None

    def __len__(self) -> int:
        return len(self._cost)

    def update(self, costs: torch.Tensor, values: torch.Tensor, masks: torch.Tensor) -> None:
        """Take in a batch: costs (B,) or (B, 1) int64, metric values (B,) float64 (NaN: undefined
        for that mask, or infeasible: skipped, as the search prunes such a trial), mask numbers (B,) int64."""
        cost = costs.reshape(-1)
        gain = values if self.maximize else -values  # (B,)
        keep = ~torch.isnan(gain)
        if len(self):
            front_cost, front_gain = self._on(cost.device)
            idx = torch.searchsorted(front_cost, cost, right=True) - 1  # (B,) last front point with cost <= c
            has = idx >= 0
            at = idx.clamp(min=0)
            best = torch.where(has, front_gain[at], torch.full_like(gain, -math.inf))
            same_cost = has & (front_cost[at] == cost)
            keep &= (gain > best) | ((gain == best) & same_cost)  # better, or equal to a front point
        if not bool(keep.any()):
            return
        self._merge(cost[keep].cpu().numpy(), gain[keep].cpu().numpy(), masks[keep].cpu().numpy(), np.ones(int(keep.sum()), dtype=np.int64))

    def _on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if self._device_copy is None or self._device_copy[0] != device:
            self._device_copy = (device, torch.from_numpy(self._cost).to(device), torch.from_numpy(self._gain).to(device))
        return self._device_copy[1], self._device_copy[2]

    def _merge(self, cost: np.ndarray, gain: np.ndarray, mask: np.ndarray, equal: np.ndarray) -> None:
        cost = np.concatenate([self._cost, cost])
        gain = np.concatenate([self._gain, gain])
        mask = np.concatenate([self._mask, mask])
        equal = np.concatenate([self._equal, equal])
        # 1. equal points become one: the lowest mask, the counts added
        order = np.lexsort((mask, -gain, cost))  # cost up, then value down, then mask up
        cost, gain, mask, equal = cost[order], gain[order], mask[order], equal[order]
        first = np.ones(len(cost), dtype=bool)
        first[1:] = (cost[1:] != cost[:-1]) | (gain[1:] != gain[:-1])
        starts = np.flatnonzero(first)
        equal = np.add.reduceat(equal, starts)
        cost, gain, mask = cost[starts], gain[starts], mask[starts]
        # 2. in cost order, a point stays if its value beats every point before it (those cost
        #    less, or the same and have a value at least as good)
        before = np.maximum.accumulate(np.concatenate([[-np.inf], gain[:-1]]))
        stay = gain > before
        self._cost, self._gain, self._mask, self._equal = cost[stay], gain[stay], mask[stay], equal[stay]
        self._device_copy = None

    def points(self) -> list[FrontPoint]:
        """The front, by cost ascending; costs in units."""
        sign = 1.0 if self.maximize else -1.0
        return [
            FrontPoint(mask=int(m), value=float(sign * g), costs=(int(c),), equal=int(e))
            for c, g, m, e in zip(self._cost, self._gain, self._mask, self._equal)
        ]


def _dominated(front_gain: torch.Tensor, front_cost: torch.Tensor, gain: torch.Tensor, cost: torch.Tensor) -> torch.Tensor:
    """Which points (B,) (higher gain better, costs (B, 2) lower better) some front point (F,)
    (F, 2) strictly dominates. The front's points are distinct, so at most one of them equals a
    point: a point is dominated when two front points are at least as good in every objective, or
    one that is not equal to it. Made in slices of at most ``2**22`` comparisons."""
    out = torch.zeros(len(gain), dtype=torch.bool, device=gain.device)
    if not len(front_gain):
        return out
    step = max(1, 2**22 // len(front_gain))
    for a in range(0, len(gain), step):
        g, c = gain[a : a + step, None], cost[a : a + step]  # (b, 1), (b, 2)
        ge = (front_gain[None, :] >= g) & (front_cost[None, :, 0] <= c[:, 0:1]) & (front_cost[None, :, 1] <= c[:, 1:2])  # (b, F)
        n = ge.sum(dim=1)  # (b,)
        one = ge.to(torch.uint8).argmax(dim=1)  # (b,) the one, where there is exactly one
        equal = (front_gain[one] == g[:, 0]) & (front_cost[one] == c).all(dim=1)
        out[a : a + step] = (n >= 2) | ((n == 1) & ~equal)
    return out


class RunningFront3:
    """The non-dominated set over (metric, two costs in integer units) of all points seen so far,
    exact: each batch is filtered against the front on its device (``_dominated``), and the
    survivors are merged in blocks of ``block`` points, each filtered again against the front
    the blocks before it made."""

    n_costs = 2
    block = 1024

    def __init__(self, *, maximize: bool = True) -> None:
        self.maximize = maximize
        self._cost = np.zeros((0, 2), dtype=np.int64)
        self._gain = np.zeros(0, dtype=np.float64)  # the value, negated when minimized
        self._mask = np.zeros(0, dtype=np.int64)
        self._equal = np.zeros(0, dtype=np.int64)
        self._device_copy: tuple[torch.device, torch.Tensor, torch.Tensor] | None = None

    def __len__(self) -> int:
        return len(self._gain)

    def _on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if self._device_copy is None or self._device_copy[0] != device:
            self._device_copy = (device, torch.from_numpy(self._gain).to(device), torch.from_numpy(self._cost).to(device))
        return self._device_copy[1], self._device_copy[2]

    def update(self, costs: torch.Tensor, values: torch.Tensor, masks: torch.Tensor) -> None:
        """Take in a batch: costs (B, 2) int64, metric values (B,) float64 (NaN: skipped), mask numbers (B,) int64."""
        gain = values if self.maximize else -values  # (B,)
        keep = ~torch.isnan(gain)
        if len(self):
            front_gain, front_cost = self._on(gain.device)
            keep &= ~_dominated(front_gain, front_cost, gain, costs)
        if not bool(keep.any()):
            return
        cost, gain, mask = costs[keep].cpu(), gain[keep].cpu(), masks[keep].cpu()
        for a in range(0, len(gain), self.block):
            c, g, m = cost[a : a + self.block], gain[a : a + self.block], mask[a : a + self.block]
            if a and len(self):  # the front has changed since the batch was filtered
                front_gain, front_cost = self._on(torch.device("cpu"))
                stay = ~_dominated(front_gain, front_cost, g, c)
                c, g, m = c[stay], g[stay], m[stay]
            if len(g):
                self._merge(c.numpy(), g.numpy(), m.numpy())

    def _merge(self, cost: np.ndarray, gain: np.ndarray, mask: np.ndarray) -> None:
        """Merge points none of which the front strictly dominates."""
        new = np.concatenate([np.zeros(len(self), dtype=bool), np.ones(len(gain), dtype=bool)])
        cost = np.concatenate([self._cost, cost])
        gain = np.concatenate([self._gain, gain])
        mask = np.concatenate([self._mask, mask])
        equal = np.concatenate([self._equal, np.ones(len(mask) - len(self), dtype=np.int64)])
        # 1. equal points become one: the lowest mask, the counts added
        order = np.lexsort((mask, -gain, cost[:, 1], cost[:, 0]))  # first cost up, second up, value down, mask up
        cost, gain, mask, equal, new = cost[order], gain[order], mask[order], equal[order], new[order]
        first = np.ones(len(gain), dtype=bool)
        first[1:] = (cost[1:, 0] != cost[:-1, 0]) | (cost[1:, 1] != cost[:-1, 1]) | (gain[1:] != gain[:-1])
        starts = np.flatnonzero(first)
        equal = np.add.reduceat(equal, starts)
        new = np.logical_or.reduceat(new, starts)
        cost, gain, mask = cost[starts], gain[starts], mask[starts]
        # 2. only a point with a new mask can dominate: the old front's points do not dominate one
        #    another nor (filtered) the new ones. The points are distinct, so "at least as good
        #    everywhere", other than itself, is strict dominance.
        by = np.flatnonzero(new)  # (S,)
        ge = (gain[by][None, :] >= gain[:, None]) & (cost[by, 0][None, :] <= cost[:, 0:1]) & (cost[by, 1][None, :] <= cost[:, 1:2])  # (U, S)
        dominated = ge.sum(axis=1) > new  # a new point is at least as good as itself
        stay = ~dominated
        self._cost, self._gain, self._mask, self._equal = cost[stay], gain[stay], mask[stay], equal[stay]
        self._device_copy = None

    def points(self) -> list[FrontPoint]:
        """The front, by the first cost ascending, then the second; costs in units."""
        sign = 1.0 if self.maximize else -1.0
        return [
            FrontPoint(mask=int(m), value=float(sign * g), costs=(int(c[0]), int(c[1])), equal=int(e))
            for c, g, m, e in zip(self._cost, self._gain, self._mask, self._equal)
        ]


def running_front(n_costs: int, *, maximize: bool = True) -> RunningFront | RunningFront3:
    """The running front over the metric and ``n_costs`` costs (1 or 2)."""
    if n_costs == 1:
        return RunningFront(maximize=maximize)
    if n_costs == 2:
        return RunningFront3(maximize=maximize)
    raise ValueError(f"the front is over the metric and one or two costs, got {n_costs} costs")


# --- scoring ------------------------------------------------------------------------------------


@dataclass
class Chunk:
    """Scores of one contiguous range of mask numbers ``[start, stop)`` (the all-zero mask, 0,
    has the value NaN)."""

    masks: torch.Tensor  # (B,) int64
    values: torch.Tensor  # (B,) float64
    costs: torch.Tensor  # (B, C) int64: the scorer's ``priced`` costs in units (its objectives first)
    feasible: torch.Tensor | None = None  # (B,) bool: within every limit (None: the scorer has none)


@dataclass
class ExhaustiveResult:
    """The exact front and how it was computed."""

    front: list[FrontPoint]
    n_paths: int
    masks: int  # how many masks were scored (2**P - 1)
    metric: str
    seconds: float
    method: str  # "linear-blocks" or "predict_masks"
    device: str
    dtype: str
    costs: tuple[str, ...] = ("flops",)  # the names of the front points' costs, in order
    limits: dict[str, float] = field(default_factory=dict)  # cost name -> at most
    feasible: int | None = None  # how many masks are within every limit (None: no limits)

    @property
    def rate(self) -> float:
        return self.masks / self.seconds if self.seconds > 0 else math.inf


@dataclass
class ExhaustiveScorer:
    """Scores and prices every mask of a supernet from its cache, block by block (module docstring)."""

    model: Supernet
    cache: PathCache
    metric: str
    # the costs beside the metric, minimized: one or two ``AdditiveCost`` (a ``FlopTable``: FLOPs)
    costs: FlopTable | AdditiveCost | Sequence[AdditiveCost]
    limits: Sequence[Limit] = ()  # masks over any of them are infeasible: not on the front
    # masks per step (None: by device). On the CPU large enough that the per-step overhead of a
    # dozen tensor ops is small, small enough that the (masks, classes, samples) float64 block
    # stays in the caches: at the mfeat shape (9 margins x 300 samples) 256 masks are 5.5 MB and
    # ran 56-80k masks/s on one thread here, 2,048 masks (44 MB) 22k (bench_exhaustive.py). On a
    # GPU a step must fill the device and amortize its kernel launches: 65,536 masks (1.4 GB).
    batch_masks: int | None = None
    # bits enumerated inside a block: 2**low_bits low combinations precomputed once (None: 6 on
    # the CPU, where 6 to 8 ran alike and 5 paid more per-step overhead; 10 on a GPU)
    low_bits: int | None = None
    dtype: torch.dtype = torch.float64  # the sums; float64 makes them exact (module docstring)
    n_paths: int = field(init=False)
    method: str = field(init=False)

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"unknown metric {self.metric!r}: expected one of {', '.join(METRICS)}")
        if METRICS[self.metric].task != self.cache.task:
            raise ValueError(f"metric {self.metric!r} is a {METRICS[self.metric].task} metric, but the cache is of a {self.cache.task} task")
        self.n_paths = int(self.model.num_paths)
        self.objectives: tuple[AdditiveCost, ...] = as_costs(self.costs)
        self.limits = tuple(self.limits)
        self._check_costs()
        # every cost priced: the objectives, then those only a limit uses
        self.priced: tuple[AdditiveCost, ...] = self.objectives + tuple(dict.fromkeys(lim.cost for lim in self.limits if lim.cost not in self.objectives))
        on_cpu = self.cache.pooled.device.type == "cpu"
        if self.batch_masks is None:
            self.batch_masks = 256 if on_cpu else 65_536
        if self.low_bits is None:
            self.low_bits = 6 if on_cpu else 10
        if self.n_paths > MAX_PATHS:
            raise ValueError(f"{self.n_paths} paths: mask numbers would not fit in int64 (at most {MAX_PATHS} paths)")
        self.low_bits = max(0, min(self.low_bits, self.n_paths))
        self.method = "linear-blocks" if self.cache.projected is not None else "predict_masks"
        self.device = self.cache.pooled.device
        self.labels = self.cache.labels.to(self.device)
        self._prepare_costs()
        if self.method == "linear-blocks":
            self._prepare_linear()
        high = self.n_paths - self.low_bits
        per_step = max(1, self.batch_masks >> self.low_bits)
        self.highs_per_step = min(per_step, 2**high)

    def _check_costs(self) -> None:
        problems = []
        if not 1 <= len(self.objectives) <= MAX_COSTS:
            problems.append(f"the front is over the metric and one or two costs, got {len(self.objectives)} costs")
        names = [c.name for c in self.objectives]
        if len(set(names)) != len(names):
            problems.append(f"costs {names!r} name a cost twice")
        for lim in self.limits:
            if not isinstance(lim, Limit):
                problems.append(f"limits must be Limit, got {type(lim).__name__}")
        for c in self.objectives + tuple(lim.cost for lim in self.limits if isinstance(lim, Limit)):
            if len(c.path) != self.n_paths:
                problems.append(f"cost {c.name!r} has {len(c.path)} path parts, the supernet {self.n_paths} paths")
        if problems:
            raise ValueError("; ".join(dict.fromkeys(problems)))

    @property
    def total(self) -> int:
        """How many non-empty masks there are: ``2**P - 1``."""
        return 2**self.n_paths - 1

    @property
    def maximize(self) -> bool:
        return METRICS[self.metric].direction == "maximize"

    # --- preparation ------------------------------------------------------------------------------

    def _bits(self, numbers: torch.Tensor, width: int) -> torch.Tensor:
        """Numbers (B,) -> their ``width`` bits, highest first: (B, width) int64."""
        shifts = torch.arange(width - 1, -1, -1, device=numbers.device)
        return (numbers[:, None] >> shifts) & 1

    def _prepare_costs(self) -> None:
        """Every priced cost's parts in units, split into low and high parts (module docstring)."""
        k = int(self.model.k)
        pairs = path_pairs(k)
        dev = self.device
        units = [c.units for c in self.priced]
        path_cost = torch.tensor([u[2] for u in units], dtype=torch.int64, device=dev)  # (C, P)
        modality = torch.tensor([u[1] for u in units], dtype=torch.int64, device=dev)  # (C, k)
        touch = torch.zeros(len(pairs), k, dtype=torch.float64, device=dev)  # (P, k) path p touches modality m
        for p, (i, j) in enumerate(pairs):
            touch[p, i] = touch[p, j] = 1.0
        self._pow2 = 2 ** torch.arange(k, device=dev)  # (k,) bit m = modality m
        subsets = self._bits(torch.arange(2**k, device=dev), k).flip(1)  # (2**k, k) bit m = modality m
        self._modality_cost = (subsets[None] * modality[:, None, :]).sum(dim=2)  # (C, 2**k)
        b = self.low_bits
        low_bits = self._bits(torch.arange(2**b, device=dev), b)  # (L, b)
        self._low_path_cost = (low_bits[None] * path_cost[:, None, self.n_paths - b :]).sum(dim=2)  # (C, L) (no integer matmul on CUDA)
        self._low_touch = self._touched(low_bits, touch[self.n_paths - b :])  # (L,)
        self._low_count = low_bits.sum(dim=1)  # (L,)
        self._high_path_cost = path_cost[:, : self.n_paths - b]  # (C, P-b)
        self._high_touch = touch[: self.n_paths - b]
        self._shared = torch.tensor([u[0] for u in units], dtype=torch.int64, device=dev)  # (C,)
        self._limit_at = torch.tensor([self.priced.index(lim.cost) for lim in self.limits], dtype=torch.int64, device=dev)  # (Q,)
        self._limit_units = torch.tensor([lim.max_units for lim in self.limits], dtype=torch.int64, device=dev)  # (Q,)

    def _touched(self, bits: torch.Tensor, touch: torch.Tensor) -> torch.Tensor:
        """The modalities some active path touches, as bits: (B, n) 0/1, (n, k) -> (B,) int64."""
        used = (bits.to(torch.float64) @ touch) > 0  # (B, k) (counts of small integers: exact)
        return (used.to(torch.int64) * self._pow2).sum(dim=1)

    def _prepare_linear(self) -> None:
        head = self.model.head
        proj = self.cache.projected.to(self.device, self.dtype)  # (N, P, out)
        n, p, out = proj.shape
        bias = head.bias.detach().to(self.device, self.dtype) if head.bias is not None else torch.zeros(out, dtype=self.dtype, device=self.device)
        self._kind = "regression" if self.cache.task == "regression" else ("accuracy" if self.metric == "accuracy" else "class_ids")
        if self._kind == "accuracy":
            # margins of the true class over each other class c: G_p = H_p[y] - H_p[c], so a
            # mask's sum is |m|·(logit_y - logit_c) (module docstring)
            y = self.labels.long()  # (N,)
            classes = torch.arange(out, device=self.device)
            others = classes[None, :].expand(n, out)[classes[None, :] != y[:, None]].view(n, out - 1)  # (N, C-1) c != y, ascending
            true_out = proj.gather(2, y[:, None, None].expand(n, p, 1))  # (N, P, 1)
            rows = (true_out - proj.gather(2, others[:, None, :].expand(n, p, out - 1))).permute(1, 2, 0)  # (P, C-1, N)
            bias_rows = (bias[y][None, :] - bias[others].T)  # (C-1, N)
            self._before_true = (others < y[:, None]).T.contiguous()  # (C-1, N) column c is a class before y
            width = out - 1
        else:
            rows = proj.permute(1, 2, 0)  # (P, out, N): path p's head outputs H_p, class-major
            bias_rows = bias[:, None].expand(out, n)  # (out, N)
            width = out
        rows = rows.reshape(p, width * n)
        self._bias_row = bias_rows.reshape(width * n)  # (width·N,)
        b = self.low_bits
        low_bits = self._bits(torch.arange(2**b, device=self.device), b).to(self.dtype)  # (L, b)
        self._high_rows = rows[: p - b]  # (P-b, width·N)
        self._low_sum = low_bits @ rows[p - b :]  # (L, width·N): S_low of every low combination
        self._fold_bias = self._kind != "regression"
        if self._fold_bias:
            # classes need only S + |m|·bias, and |m|·bias = |low|·bias + |high|·bias: each part
            # carries its share, so a mask costs one add
            self._low_sum += low_bits.sum(dim=1, keepdim=True) * self._bias_row  # (L, width·N)
            self._high_rows = self._high_rows + self._bias_row  # (P-b, width·N): each high path adds one bias
        self._n, self._width = n, width

    # --- scoring ----------------------------------------------------------------------------------

    def steps(self) -> Iterator[tuple[int, int]]:
        """The ranges of high parts, ``[h0, h1)``, one per step, in counting order."""
        highs = 2 ** (self.n_paths - self.low_bits)
        for h0 in range(0, highs, self.highs_per_step):
            yield h0, min(h0 + self.highs_per_step, highs)

    @property
    def n_steps(self) -> int:
        highs = 2 ** (self.n_paths - self.low_bits)
        return -(-highs // self.highs_per_step)

    @torch.no_grad()
    def score_step(self, h0: int, h1: int) -> Chunk:
        """Every mask whose high part is in ``[h0, h1)``: ``(h1 - h0) · 2**low_bits`` masks."""
        b = self.low_bits
        dev = self.device
        highs = torch.arange(h0, h1, device=dev)  # (H,)
        high_bits = self._bits(highs, self.n_paths - b)  # (H, P-b)
        masks = (highs[:, None] << b) | torch.arange(2**b, device=dev)  # (H, L)
        high_cost = (high_bits[None] * self._high_path_cost[:, None, :]).sum(dim=2)  # (C, H)
        high_touch = self._touched(high_bits, self._high_touch)  # (H,)
        touched = high_touch[:, None] | self._low_touch  # (H, L)
        costs = self._shared[:, None, None] + high_cost[:, :, None] + self._low_path_cost[:, None, :] + self._modality_cost[:, touched]  # (C, H, L)
        counts = high_bits.sum(dim=1)[:, None] + self._low_count  # (H, L) |m|
        masks, counts = masks.reshape(-1), counts.reshape(-1)
        costs = costs.reshape(len(self.priced), -1).T  # (M, C)
        feasible = None
        if self.limits:
            feasible = (costs[:, self._limit_at] <= self._limit_units).all(dim=1)  # (M,)
        if self.method == "linear-blocks":
            values = self._linear_values(high_bits, counts)
        else:
            values = self._general_values(masks)
        values = torch.where(counts > 0, values, torch.full_like(values, math.nan))  # the all-zero mask
        return Chunk(masks=masks, values=values, costs=costs, feasible=feasible)

    def _linear_values(self, high_bits: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        high_sum = high_bits.to(self.dtype) @ self._high_rows  # (H, width·N): S_high
        total = high_sum[:, None, :] + self._low_sum[None]  # (H, L, width·N): S of every mask
        total = total.view(-1, self._width, self._n)  # (M, width, N)
        if self._kind == "regression":
            safe = counts.clamp(min=1).to(self.dtype)  # (M,) |m|; the all-zero mask is dropped later
            predictions = total[:, 0, :] / safe[:, None] + self._bias_row[None, :]  # (M, N)
            return batch_metric(predictions, self.labels, self.metric)
        # (the bias is folded into the sums: total is S + |m|·bias)
        if self._kind == "accuracy":
            return self._accuracy(total)
        # class ids as argmax gives them (the first maximum), from one amax: ``torch.argmax``
        # over a small middle axis is many times slower on the CPU
        top = total.amax(dim=1, keepdim=True)  # (M, 1, N)
        rank = torch.arange(self._width, 0, -1, device=self.device, dtype=torch.int16)[None, :, None]  # C..1
        predictions = self._width - ((total == top) * rank).amax(dim=1).long()  # (M, N)
        return batch_metric(predictions, self.labels, self.metric)

    def _accuracy(self, margins: torch.Tensor) -> torch.Tensor:
        """Accuracy from the margins ``|m|·(logit_y - logit_c)`` (M, C-1, N): argmax picks y iff
        every margin is positive, but a zero margin to a class after y (the first maximum wins)."""
        low = margins.amin(dim=1)  # (M, N)
        correct = low > 0
        ties = (low == 0).nonzero()  # (T, 2) rare: an exact tie between y and another class
        if len(ties):
            m, n = ties[:, 0], ties[:, 1]
            zero_before = ((margins[m, :, n] == 0) & self._before_true[:, n].T).any(dim=1)  # (T,)
            correct[m, n] = ~zero_before
        # the same number as metrics.batch_metric's accuracy: the mean of the 0/1 hits
        return correct.to(torch.float64).mean(dim=1)

    def _general_values(self, masks: torch.Tensor) -> torch.Tensor:
        """``score_masks`` itself on the step's masks (the all-zero mask left out: NaN)."""
        real = masks != 0
        bits = self._bits(masks[real], self.n_paths).to(torch.float32)  # (M', P)
        predictions = predict_masks(self.model, self.cache, bits)  # (M', N, out)
        if self.cache.task == "regression":
            predictions = predictions.squeeze(-1)
        values = torch.full(masks.shape, math.nan, dtype=torch.float64, device=self.device)
        values[real] = batch_metric(predictions.to(self.device), self.labels, self.metric)
        return values

    # --- the whole space --------------------------------------------------------------------------

    def timed_sample(self, seconds: float = 2.0, max_steps: int = 20) -> tuple[float, list[Chunk]]:
        """Score the first steps for about ``seconds`` (at least one): the measured masks per
        second, and the chunks (so that their work is not lost)."""
        chunks: list[Chunk] = []
        start = time.perf_counter()
        scored = 0
        for h0, h1 in self.steps():
            chunk = self.score_step(h0, h1)
            _sync(self.device)
            chunks.append(chunk)
            scored += len(chunk.masks)
            elapsed = time.perf_counter() - start
            if elapsed >= seconds or len(chunks) >= max_steps:
                break
        elapsed = max(time.perf_counter() - start, 1e-9)
        return scored / elapsed, chunks

    def run(self, *, progress: Callable[[int], None] | None = None, done: list[Chunk] | None = None) -> ExhaustiveResult:
        """Score every mask and return the exact front. ``done``: chunks already scored (from
        ``timed_sample``), in order from the first step; ``progress(n)`` after each step."""
        front = running_front(len(self.objectives), maximize=self.maximize)
        n = len(self.objectives)
        feasible = torch.zeros((), dtype=torch.int64, device=self.device)
        start = time.perf_counter()
        skip = len(done or [])

        def take(chunk: Chunk) -> None:
            nonlocal feasible
            values = chunk.values
            if chunk.feasible is not None:  # over a limit: dropped before the front, as undefined values are
                values = values.masked_fill(~chunk.feasible, math.nan)
                feasible = feasible + (chunk.feasible & (chunk.masks != 0)).sum()
            front.update(chunk.costs[:, 0] if n == 1 else chunk.costs[:, :n], values, chunk.masks)
            if progress is not None:
                progress(len(chunk.masks))

        for chunk in done or []:
            take(chunk)
        for i, (h0, h1) in enumerate(self.steps()):
            if i < skip:
                continue
            take(self.score_step(h0, h1))
        _sync(self.device)
        front_points = [
            FrontPoint(mask=p.mask, value=p.value, costs=tuple(c.value(u) for c, u in zip(self.objectives, p.costs)), equal=p.equal)
            for p in front.points()
        ]
        return ExhaustiveResult(
            front=front_points,
            n_paths=self.n_paths,
            masks=self.total,
            metric=self.metric,
            seconds=time.perf_counter() - start,
            method=self.method,
            device=str(self.device),
            dtype=str(self.dtype).removeprefix("torch.") if self.method == "linear-blocks" else "float32",
            costs=tuple(c.name for c in self.objectives),
            limits={lim.cost.name: float(lim.at_most) for lim in self.limits},
            feasible=int(feasible) if self.limits else None,
        )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def exhaustive_front(model: Supernet, cache: PathCache, metric: str, costs: FlopTable | AdditiveCost | Sequence[AdditiveCost],
                     **options: Any) -> ExhaustiveResult:
    """The exact front over all ``2**P - 1`` masks (``ExhaustiveScorer`` with ``options``: ``limits``,
    ``batch_masks``, ``low_bits``, ``dtype``)."""
    return ExhaustiveScorer(model, cache, metric, costs, **options).run()
