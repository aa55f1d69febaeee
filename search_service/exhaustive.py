"""``mro-search run --exhaustive``: every mask scored, the exact Pareto front recorded as trials.

Where the mask space is small enough, a sampled search is not needed: ``supernet.exhaustive``
scores all ``2**P - 1`` masks from the cache, exactly, and keeps the non-dominated set over the
study's objectives (``search_service.objectives``: the metric up, one or two costs down; of masks
with the same values the lowest mask string stands for all). Every cost is additive over a mask's
parts and priced as the study prices it (``study_costs``): MFLOPs from the FLOPs table, parameters
counted, latency and peak memory from the study's own tables (``mro:cost_tables``). A mask over
one of the study's limits is infeasible and never on the front. Here that becomes a study's
result:

1. **Estimate first.** A few steps are scored and timed (``estimate``); when all masks would take
   longer than ``--max-minutes`` (default ``DEFAULT_MAX_MINUTES``) the command refuses in one line
   with the estimate and the two ways on (a larger ``--max-minutes``, or a sampled search), before
   the study is created or changed. The timed steps are not scored again. A study with no
   checkpoint yet is estimated on its supernet as initialized (``untrained_scorer``), before it
   is trained.
2. **Score** every mask with a progress bar and an ETA (tqdm on stderr; none with ``--quiet``).
3. **Record** each front mask that no COMPLETE trial of the study holds yet as a COMPLETE trial,
   through Optuna's public ``Study.add_trial``: the same path parameters, values (in the
   objectives' order), user attributes (mask, active paths, every metric, MFLOPs, parameters,
   each table's estimate, worker), claim attribute (``mro:mask``) and, in a study with limits,
   ``constraints`` as a trial the sampler ran, from the same ``Evaluator.evaluate`` and
   ``objectives.costs_of``, plus ``mro:exhaustive = true`` and ``mro:exhaustive_equal`` (how many
   masks share the point). So
   ``pareto``, ``report``, ``export``, the dashboard and the sampler's trial index treat them as
   ordinary trials; like any COMPLETE trial they count towards the study's trial budget. Masks
   already scored are not added again, so a second run adds nothing, and a study with sampled
   trials gets only the front masks it misses.
4. The study records the run (study system attribute ``mro:exhaustive``: the front's masks, how
   many masks were scored, the metric, the checkpoint, time and speed); ``pareto`` and ``report``
   say that the front is exact while every one of those masks is a COMPLETE trial.

The recorded values are ``Evaluator.evaluate``'s (float32 cache, scikit-learn) and the tables'
own estimates, as for every trial; the front was chosen with float64 sums and float costs summed
exactly on a grid (``supernet/exhaustive.py``). The metrics differ only for a sample whose decision
is closer than float32 rounding, a table's cost only by float64 rounding; a front mask whose
recorded metric differs from its exhaustive score is counted and logged, and one whose recorded
costs put it over a limit (a cost within rounding of the limit) is logged and not recorded, so
that the study's front holds feasible trials only.
"""

from __future__ import annotations

import datetime
import logging
import math
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial
from tqdm import tqdm

from search_service.evaluator import Evaluator, load_study_data, objective_metric
from search_service.hardware import study_tables
from search_service.objectives import MEASURED, Objectives, costs_of
from search_service.search import (
    METRIC_KEY,
    MFLOPS,
    WORKER_ATTR,
    SearchStudy,
    check_checkpoint,
    worker_id,
)
from search_service.study_file import Study
from search_service.trial_index import MASK_KEY, trial_mask
from supernet.errors import ConfigError
from supernet.exhaustive import (
    AdditiveCost,
    Chunk,
    ExhaustiveResult,
    ExhaustiveScorer,
    Limit,
    params_cost,
)
from supernet.flops import FlopTable, flop_table
from supernet.model import Supernet, SupernetSpec
from supernet.scoring import PathCache, build_cache

log = logging.getLogger("mro_search")

EXHAUSTIVE_KEY = "mro:exhaustive"  # study system attribute: the last exhaustive run (``record``)
EXHAUSTIVE_ATTR = "mro:exhaustive"  # trial user attribute: True on a trial recorded from the exact front
EQUAL_ATTR = "mro:exhaustive_equal"  # trial user attribute: masks with exactly this metric and FLOPs
DEFAULT_MAX_MINUTES = 60.0  # an hour: k <= 5 fits on one CPU thread; k = 6 (2**30 masks) needs a GPU
SAMPLE_SECONDS = 2.0  # the timed sample behind the estimate


@dataclass
class Estimate:
    """How long all masks would take, from a timed sample (whose chunks are kept)."""

    masks: int
    rate: float  # masks per second in the sample
    chunks: list[Chunk]

    @property
    def seconds(self) -> float:
        return self.masks / self.rate if self.rate > 0 else math.inf


def study_costs(objectives: Objectives, model: Supernet, flops: FlopTable, tables: Mapping[str, Any], *,
                stand_in: bool = False) -> tuple[list[AdditiveCost], list[Limit]]:
    """A study's costs (in its objectives' order) and limits as ``supernet.exhaustive`` prices
    them: MFLOPs as integer FLOPs (ranked alike; a limit in MFLOPs compared as ``flops / 1e6``,
    as the evaluator computes it), parameters counted, latency and peak memory from the study's
    tables. ``stand_in``: a measured cost without a table is priced by the FLOPs table, and its
    limit left out (the estimate of a study not created yet: its speed, not its front)."""
    flops_cost = AdditiveCost.from_flops(flops)
    priced = {MFLOPS: flops_cost, "params": params_cost(model)}
    for quantity, table in tables.items():
        priced[quantity] = AdditiveCost.from_table(table, quantity)
    stand_ins = [q for q in MEASURED if q not in priced] if stand_in else []
    for quantity in stand_ins:
        priced[quantity] = AdditiveCost.from_table(flops, quantity)
    missing = [q for q in (*objectives.costs, *objectives.limits) if q not in priced]
    if missing:
        raise ConfigError(f"the study has no cost table for {', '.join(missing)} (mro:cost_tables): "
                          f"it cannot be priced exhaustively; recreate the study")
    costs = [priced[q] for q in objectives.costs]
    limits = [Limit.mflops(flops_cost, limit) if q == MFLOPS else Limit(priced[q], limit)
              for q, limit in objectives.limits.items() if q not in stand_ins]
    return costs, limits


def study_objectives(search: SearchStudy, evaluator: Evaluator) -> Objectives:
    """The objectives a study recorded (as ``search.Objective`` reads them)."""
    attrs = search.attrs
    return Objectives.from_attrs(attrs, str(attrs.get(METRIC_KEY, evaluator.metric)))


def scorer_for(evaluator: Evaluator, split: str = "valid", search: SearchStudy | None = None) -> ExhaustiveScorer:
    """The exhaustive scorer of a study's checkpoint, on its cache's device, with the study's
    objectives, limits and cost tables; before the study exists (``search`` None: the estimate),
    with the study file's objectives and limits, a measured cost priced by a stand-in."""
    if search is not None:
        objectives = study_objectives(search, evaluator)
        costs, limits = study_costs(objectives, evaluator.model, evaluator.flops, study_tables(search.attrs))
    else:
        objectives = Objectives.from_config(evaluator.study.search, evaluator.metric)
        costs, limits = study_costs(objectives, evaluator.model, evaluator.flops, {}, stand_in=True)
    return ExhaustiveScorer(evaluator.model, evaluator.cache(split), objectives.metric, costs, limits=limits)


def untrained_scorer(study: Study, device: Any = "cpu") -> ExhaustiveScorer:
    """A scorer of the study's supernet as initialized, on its validation split: the work per
    mask does not depend on the weights, so its speed is the trained supernet's and a space too
    large is refused before a supernet is trained for nothing."""
    import torch

    data = load_study_data(study)
    model = Supernet(SupernetSpec(tuple(data.modalities), data.task, data.output_dim), study.model).eval()
    cache = build_cache(model, data.splits["valid"])
    device = torch.device(device)
    projected = None if cache.projected is None else cache.projected.to(device)
    cache = PathCache(pooled=cache.pooled.to(device), labels=cache.labels.to(device), task=cache.task, projected=projected)
    metric = objective_metric(study)
    objectives = Objectives.from_config(study.search, metric)
    costs, limits = study_costs(objectives, model, flop_table(model), {}, stand_in=True)
    return ExhaustiveScorer(model.to(device), cache, metric, costs, limits=limits)


def estimate(scorer: ExhaustiveScorer, seconds: float = SAMPLE_SECONDS) -> Estimate:
    rate, chunks = scorer.timed_sample(seconds=seconds)
    return Estimate(masks=scorer.total, rate=rate, chunks=chunks)


def duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def check_time(est: Estimate, max_minutes: float, study_name: str, device: str) -> None:
    """Refuse, in one line, a space that would take longer than ``max_minutes``."""
    if est.seconds <= max_minutes * 60:
        return
    need = math.ceil(est.seconds / 60 * 1.2)  # with a margin: the sample is short
    raise ConfigError(
        f"scoring all {est.masks:,} masks of study {study_name} would take about {duration(est.seconds)} "
        f"({est.rate:,.0f} masks/s measured on {device}), over --max-minutes {max_minutes:g}; "
        f"give --max-minutes {need} or more, or run a sampled search (`mro-search run --study {study_name}` without --exhaustive)"
    )


def score_all(scorer: ExhaustiveScorer, est: Estimate, *, progress: bool = True) -> ExhaustiveResult:
    """Every mask, with a progress bar and ETA on stderr (a terminal only, as the workers')."""
    bar = tqdm(total=scorer.total + 1, desc="masks", unit="mask", unit_scale=True, smoothing=0.05,
               disable=not progress or not sys.stderr.isatty(), file=sys.stderr)
    try:
        result = scorer.run(progress=bar.update, done=est.chunks)
    finally:
        bar.close()
    return result


def scored_masks(search: SearchStudy, paths: list[str]) -> set[tuple[int, ...]]:
    """The masks COMPLETE trials of the study hold."""
    out = set()
    for t in search.optuna_study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        mask = trial_mask(t, paths)
        if mask is not None:
            out.add(mask)
    return out


def record(search: SearchStudy, evaluator: Evaluator, result: ExhaustiveResult, *, split: str = "valid") -> dict[str, Any]:
    """Add the front masks the study does not hold yet as COMPLETE trials (module docstring, 3)
    and record the run on the study (4). Returns the study attribute's record."""
    check_checkpoint(search, evaluator.checkpoint)
    study = search.optuna_study
    paths = evaluator.path_names
    objectives = study_objectives(search, evaluator)
    tables = study_tables(search.attrs)  # every trial is priced with the study's tables
    have = scored_masks(search, paths)
    bit = CategoricalDistribution((0, 1))
    added, differ, over = [], 0, {}  # over: mask -> the limits the study's prices say it breaks
    for point in result.front:
        mask = tuple(int(c) for c in point.bits(result.n_paths))
        if mask in have:
            continue
        evaluated = evaluator.evaluate(mask, split)
        costs = costs_of(evaluated, mask, tables)
        scored = {**costs, "metrics": evaluated["metrics"]}
        if objectives.violations(scored):  # within rounding of a limit: said below, not recorded
            over[evaluated["mask"]] = "; ".join(objectives.violations(scored))
            continue
        values = objectives.values(scored)
        if values[0] != point.value:
            differ += 1
        system_attrs: dict[str, Any] = {MASK_KEY: evaluated["mask"]}
        if objectives.limits:  # the legacy list form, as search.Objective writes it
            system_attrs["constraints"] = objectives.constraints(scored)
        user_attrs: dict[str, Any] = {"mask": evaluated["mask"], "active_paths": evaluated["active_paths"], "metrics": evaluated["metrics"]}
        user_attrs.update(evaluated["metrics"])
        user_attrs[MFLOPS] = evaluated["mflops"]
        user_attrs["params"] = evaluated["params"]
        for quantity in tables:  # priced by the study's table (measured exactly on the front)
            user_attrs[quantity] = costs[quantity]
        user_attrs[WORKER_ATTR] = worker_id()
        user_attrs[EXHAUSTIVE_ATTR] = True
        user_attrs[EQUAL_ATTR] = point.equal
        trial = create_trial(
            state=TrialState.COMPLETE,
            values=values,
            params={name: b for name, b in zip(paths, mask)},
            distributions={name: bit for name in paths},
            user_attrs=user_attrs,
            system_attrs=system_attrs,
        )
        study.add_trial(trial)
        added.append(evaluated["mask"])
    if over:
        log.warning(f"mro-search: {len(over)} front mask(s) not recorded: the study's own prices put them over a limit "
                    f"(within float64 rounding of it): {', '.join(f'{m} ({why})' for m, why in over.items())}")
    if differ:
        log.warning(f"mro-search: {differ} front mask(s) score differently in float32 (the recorded value) than in the exhaustive float64 sums: a float32 rounding tie")
    front = [p for p in result.front if p.bits(result.n_paths) not in over]
    entry = {
        "masks": result.masks,
        "metric": result.metric,
        "objectives": objectives.names,
        "limits": dict(objectives.limits),
        "feasible": result.feasible,  # masks within every limit (None: the study has none)
        "front": [p.bits(result.n_paths) for p in front],
        "equal": [p.equal for p in front],
        "not_recorded": sorted(over),  # front masks the study's own prices put over a limit
        "added": len(added),
        "checkpoint": evaluator.checkpoint.identity,
        "split": split,
        "method": result.method,
        "device": result.device,
        "dtype": result.dtype,
        "seconds": round(result.seconds, 3),
        "masks_per_s": round(result.rate, 1) if math.isfinite(result.rate) else None,
        "finished": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    study._storage.set_study_system_attr(study._study_id, EXHAUSTIVE_KEY, entry)
    return entry


def run_exhaustive(search: SearchStudy, evaluator: Evaluator, scorer: ExhaustiveScorer, est: Estimate, *,
                   progress: bool = True, split: str = "valid") -> dict[str, Any]:
    """Score every mask and record the exact front (the estimate was checked by the caller). The
    masks are priced as the study prices them (``scorer_for`` with the study): where that is not
    how the estimate's scorer priced them (a cost table the study made after the estimate), the
    estimate's steps are scored again."""
    start = time.perf_counter()
    own = scorer_for(evaluator, split, search)
    if (own.metric, own.priced, own.limits) != (scorer.metric, scorer.priced, scorer.limits):
        scorer, est = own, Estimate(masks=est.masks, rate=est.rate, chunks=[])
    log.info(f"scoring all {scorer.total:,} masks exactly ({scorer.method}, {scorer.device}; "
             f"about {duration(est.seconds)} at {est.rate:,.0f} masks/s)")
    result = score_all(scorer, est, progress=progress)
    entry = record(search, evaluator, result, split=split)
    log.info(f"exact front of {len(result.front)} masks from all {result.masks:,} in {duration(time.perf_counter() - start)}; "
             f"{entry['added']} new trial(s) recorded")
    return entry


def exact_front_note(search: SearchStudy) -> str | None:
    """One line saying the front is exact, when the study holds a whole exhaustive result (every
    front mask of the last ``run --exhaustive`` is a COMPLETE trial, with the study's checkpoint);
    else None."""
    entry = search.attrs.get(EXHAUSTIVE_KEY)
    if not isinstance(entry, dict) or not entry.get("front"):
        return None
    if entry.get("checkpoint") != search.checkpoint_record.get("identity"):
        return None
    paths = [str(p) for p in search.attrs.get("mro:paths") or []]
    have = scored_masks(search, paths) if paths else set()
    if not all(tuple(int(c) for c in bits) in have for bits in entry["front"]):
        return None
    return (f"exact: every one of the {int(entry['masks']):,} masks was scored (mro-search run --exhaustive, "
            f"{entry.get('finished', '')}); the front's {len(entry['front'])} masks are trials of this study")


def _unused() -> None:  # pragma: no cover - keeps optuna imported for type readers
    _ = optuna
