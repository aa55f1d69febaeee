"""A study's objectives: its accuracy metric, then one or two costs, each with a unit and a limit.

``[search] objectives`` names them (``["accuracy", "mflops"]`` by default: the study's metric up,
fvcore MFLOPs down). The costs:

===================  ===========  ===============================================================
cost                 unit         how a trial's mask is priced
===================  ===========  ===============================================================
``mflops``           MFLOPs       fvcore's count, from the FLOPs table (exact: costs are additive)
``params``           parameters   counted exactly (``Supernet.num_parameters``)
``latency_ms``       ms           the study's latency table (``supernet.hardware.CostTable``)
``peak_memory_mb``   MiB          the study's peak-memory table
===================  ===========  ===============================================================

Latency and peak memory are measured, not guessed, but a trial is priced by a table: when the
study is created, the masks of a design (each single path, the full mask and random masks) are
measured on the study's latency device, and an additive model (a base, each touched modality's
embedding, each active path) is fitted to them by non-negative least squares. The tables are
stored in the study (``mro:cost_tables``, written with the study in its first transaction, so a
study never has half of them), so every worker, on any machine, prices a mask the same way: a
latency measured by each worker on its own machine would make the front compare machines. When a
run ends, the front's members are measured exactly on the machine that ran it
(``search_service.hardware.measure_front``), and ``pareto``, the report and ``export`` show both.

Limits (``[search] max_mflops``, ``max_params``, ``max_latency_ms``, ``max_peak_memory_mb``; 0 is
none) become Optuna's constraints: each trial records ``value - limit`` per limit in the trial
system attribute ``constraints``, which NSGA-II, TPE, GP and ``Study.best_trials`` read (a trial is
feasible when every value is ≤ 0), and MROSampler does not propose a mask the tables place over a
limit (``MaskFilter``).

A study made before objectives could be chosen has no ``mro:objectives``: it reads as
``[metric, "mflops"]`` with ``mro:flops_budget`` as its MFLOPs limit, as it was searched.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from optuna.study import StudyDirection

from supernet.metrics import METRICS

# costs, in the order their limits become constraints, with their units
UNITS = {"mflops": "MFLOPs", "params": "parameters", "latency_ms": "ms", "peak_memory_mb": "MiB"}
MEASURED = ("latency_ms", "peak_memory_mb")  # priced by a per-device table measured at creation
LIMIT_FIELDS = {"mflops": "max_mflops", "params": "max_params", "latency_ms": "max_latency_ms", "peak_memory_mb": "max_peak_memory_mb"}
METRIC_ALIAS = "accuracy"  # the first objective: [search] metric, or the task's default

# study system attributes, written when the study is created
OBJECTIVES_KEY = "mro:objectives"  # {"names": [metric, cost, ...], "limits": {cost: limit}}
TABLES_KEY = "mro:cost_tables"  # {quantity: CostTable.to_dict()} for the measured costs the study uses
HARDWARE_KEY = "mro:hardware"  # {"device", "batch_size", "precision", "host"}: where the tables were measured
LEGACY_FLOPS_LIMIT_KEY = "mro:flops_budget"  # the MFLOPs limit of studies made before mro:objectives


def objectives_problems(search: Any, task: str | None) -> list[str]:
    """What is wrong with ``[search] objectives`` (and the limits beside it), for ``validate``."""
    names = list(search.objectives)
    problems = []
    example = 'e.g. objectives = ["accuracy", "mflops"] or ["accuracy", "latency_ms", "params"]'
    if not 2 <= len(names) <= 3:
        return [f"[search] objectives must be the metric and one or two costs ({example}), got {names!r}"]
    first, costs = names[0], names[1:]
    if first != METRIC_ALIAS:
        info = METRICS.get(first)
        if info is None or first in UNITS:
            problems.append(f"[search] objectives[0] = {first!r} must be {METRIC_ALIAS!r} (the study's metric) or a metric's name ({example})")
        elif info.direction != "maximize":
            problems.append(f"[search] objectives[0] = {first!r} is minimized; the accuracy objective must be a metric to maximize")
        elif task is not None and info.task != task:
            problems.append(f"[search] objectives[0] = {first!r} is for {info.task}, but this study's task is {task}")
        elif search.metric and search.metric != first:
            problems.append(f"[search] objectives[0] = {first!r} but metric = {search.metric!r}: name one metric (or write {METRIC_ALIAS!r})")
    for i, cost in enumerate(costs, start=1):
        if cost not in UNITS:
            problems.append(f"[search] objectives[{i}] = {cost!r} is not a cost; costs are {', '.join(UNITS)}")
    if len(set(costs)) != len(costs):
        problems.append(f"[search] objectives {names!r} name a cost twice")
    return problems


@dataclass(frozen=True)
class Objectives:
    """The metric (maximized), the costs (minimized) and the limits of one study."""

    metric: str
    costs: tuple[str, ...] = ("mflops",)
    limits: Mapping[str, float] = field(default_factory=dict)  # cost -> limit; only limits that are set

    @classmethod
    def from_config(cls, search: Any, metric: str) -> Objectives:
        limits = {q: float(getattr(search, f)) for q, f in LIMIT_FIELDS.items() if getattr(search, f)}
        return cls(metric, tuple(search.objectives[1:]), limits)

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any], metric: str) -> Objectives:
        """A study's objectives, as it recorded them (a study older than ``mro:objectives``:
        the metric and MFLOPs, its ``mro:flops_budget`` as the MFLOPs limit)."""
        stored = attrs.get(OBJECTIVES_KEY)
        if isinstance(stored, dict) and isinstance(stored.get("names"), list) and len(stored["names"]) >= 2:
            limits = stored.get("limits") if isinstance(stored.get("limits"), dict) else {}
            return cls(str(stored["names"][0]), tuple(str(n) for n in stored["names"][1:]),
                       {q: float(v) for q, v in limits.items() if q in UNITS})
        legacy = float(attrs.get(LEGACY_FLOPS_LIMIT_KEY, 0.0) or 0.0)
        return cls(metric, ("mflops",), {"mflops": legacy} if legacy > 0 else {})

    def to_attr(self) -> dict[str, Any]:
        return {"names": self.names, "limits": dict(self.limits)}

    @property
    def names(self) -> list[str]:
        """Optuna's metric names, in the order of the trial's values."""
        return [self.metric, *self.costs]

    @property
    def directions(self) -> list[StudyDirection]:
        return [StudyDirection.MAXIMIZE] + [StudyDirection.MINIMIZE] * len(self.costs)

    @property
    def measured(self) -> tuple[str, ...]:
        """The measured costs this study needs a table for (as an objective or a limit)."""
        return tuple(q for q in MEASURED if q in self.costs or q in self.limits)

    def unit(self, name: str) -> str:
        return UNITS.get(name, "")

    def label(self, name: str) -> str:
        """``latency_ms (ms)``: a cost with its unit; the metric as it is."""
        unit = UNITS.get(name)
        return f"{name} ({unit})" if unit else name

    def values(self, scored: Mapping[str, Any]) -> list[float]:
        """A scored mask's objective values, in Optuna's order (``scored``: the metrics under
        ``"metrics"`` and every cost under its name)."""
        return [float(scored["metrics"][self.metric]), *(float(scored[c]) for c in self.costs)]

    def constraints(self, scored: Mapping[str, Any]) -> list[float]:
        """``value - limit`` per limit, in ``UNITS`` order: Optuna's constraints (≤ 0 is feasible)."""
        return [float(scored[q]) - float(self.limits[q]) for q in UNITS if q in self.limits]

    def violations(self, scored: Mapping[str, Any]) -> list[str]:
        """Which limits a mask's costs break, said plainly: ``latency_ms 3.1 > 2.5 ms``."""
        out = []
        for q in UNITS:
            if q in self.limits and float(scored[q]) > float(self.limits[q]):
                out.append(f"{q} {_fmt(scored[q])} > {_fmt(self.limits[q])} {UNITS[q]}")
        return out


def _fmt(x: Any) -> str:
    x = float(x)
    return f"{x:.0f}" if x == int(x) and abs(x) >= 1000 else f"{x:.4g}"


def finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def costs_of(scored: Mapping[str, Any], mask: Sequence[int], tables: Mapping[str, Any]) -> dict[str, float]:
    """Every cost of a mask that the study can price: MFLOPs and parameters from the evaluator's
    result, latency and peak memory from the study's tables (``supernet.hardware.CostTable``)."""
    out = {"mflops": float(scored["mflops"]), "params": float(scored["params"])}
    for quantity, table in tables.items():
        out[quantity] = float(table.estimate(mask))
    return out


LIMIT_TABLES_KEY = "mro:limit_tables"  # {"mflops" | "params": {"base", "modality", "path"}} in integer FLOPs / parameters


class MaskFilter:
    """Whether a mask is within the study's limits, priced exactly as its trials are: MFLOPs as
    the integer FLOPs of the FLOPs table over 1e6 and parameters as integers (both from
    ``mro:limit_tables``: a base, each touched modality, each active path), latency and peak
    memory by the study's own tables (``mro:cost_tables``). A mask is feasible when every
    ``value - limit`` is at most 0, Optuna's rule for the constraints its trial would record.
    MROSampler does not propose a mask this places over a limit."""

    def __init__(self, limits: Mapping[str, float], prices: Mapping[str, Any]) -> None:
        # prices: cost -> a function of the mask's bits
        self.parts = [(float(limit), prices[q]) for q, limit in limits.items() if q in prices]

    def __bool__(self) -> bool:
        return bool(self.parts)

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> MaskFilter:
        stored = attrs.get(OBJECTIVES_KEY)
        limits = stored.get("limits") if isinstance(stored, dict) and isinstance(stored.get("limits"), dict) else {}
        if not limits:
            return cls({}, {})
        prices: dict[str, Any] = {}
        integer = attrs.get(LIMIT_TABLES_KEY) if isinstance(attrs.get(LIMIT_TABLES_KEY), dict) else {}
        for q, scale in (("mflops", 1e6), ("params", 1)):
            if isinstance(integer.get(q), Mapping):
                prices[q] = _integer_price(integer[q], scale)
        measured = attrs.get(TABLES_KEY) if isinstance(attrs.get(TABLES_KEY), dict) else {}
        if any(q in measured for q in limits if q in MEASURED):
            from supernet.hardware import CostTable  # torch: only for a study with measured limits

            for q in MEASURED:
                if q in limits and q in measured:
                    prices[q] = CostTable.from_dict(measured[q]).estimate
        return cls(limits, prices)

    def feasible(self, mask: Sequence[int]) -> bool:
        bits = [int(b) for b in mask]
        return all(float(price(bits)) - limit <= 0 for limit, price in self.parts)


def _integer_price(table: Mapping[str, Any], scale: float) -> Any:
    """An integer additive table's price of a mask (``FlopTable.flops`` then ``/ 1e6`` for MFLOPs,
    ``Supernet.num_parameters`` for parameters): the same integer sum, so the same value."""
    from supernet.paths import touched_modalities

    base, modality, path = int(table["base"]), [int(v) for v in table["modality"]], [int(v) for v in table["path"]]

    def price(bits: Sequence[int]) -> float:
        total = base + sum(c for c, b in zip(path, bits) if b) + sum(modality[m] for m in touched_modalities(bits, len(modality)))
        return total / scale if scale != 1 else total

    return price
