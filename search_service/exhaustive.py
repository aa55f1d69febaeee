"""``mro-search run --exhaustive``: every mask scored, the exact Pareto front recorded as trials.

Where the mask space is small enough, a sampled search is not needed: ``supernet.exhaustive``
scores all ``2**P - 1`` masks from the cache, exactly, and keeps the non-dominated set (the
metric up, MFLOPs down; of two masks with the same metric and FLOPs the lower mask string stands
for both). Here that becomes a study's result:

1. **Estimate first.** A few steps are scored and timed (``estimate``); when all masks would take
   longer than ``--max-minutes`` (default ``DEFAULT_MAX_MINUTES``) the command refuses in one line
   with the estimate and the two ways on (a larger ``--max-minutes``, or a sampled search), before
   the study is created or changed. The timed steps are not scored again. A study with no
   checkpoint yet is estimated on its supernet as initialized (``untrained_scorer``), before it
   is trained.
2. **Score** every mask with a progress bar and an ETA (tqdm on stderr; none with ``--quiet``).
3. **Record** each front mask that no COMPLETE trial of the study holds yet as a COMPLETE trial,
   through Optuna's public ``Study.add_trial``: the same path parameters, values, user attributes
   (mask, active paths, every metric, MFLOPs, parameters, worker) and claim attribute
   (``mro:mask``) as a trial the sampler ran, from the same ``Evaluator.evaluate``, plus
   ``mro:exhaustive = true`` and ``mro:exhaustive_equal`` (how many masks share the point). So
   ``pareto``, ``report``, ``export``, the dashboard and the sampler's trial index treat them as
   ordinary trials; like any COMPLETE trial they count towards the study's trial budget. Masks
   already scored are not added again, so a second run adds nothing, and a study with sampled
   trials gets only the front masks it misses.
4. The study records the run (study system attribute ``mro:exhaustive``: the front's masks, how
   many masks were scored, the metric, the checkpoint, time and speed); ``pareto`` and ``report``
   say that the front is exact while every one of those masks is a COMPLETE trial.

The recorded values are ``Evaluator.evaluate``'s (float32 cache, scikit-learn), as for every
trial; the front was chosen with float64 sums (``supernet/exhaustive.py``). The two differ only
for a sample whose decision is closer than float32 rounding; a front mask whose recorded metric
differs from its exhaustive score is counted and logged.
"""

from __future__ import annotations

import datetime
import logging
import math
import sys
import time
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial
from tqdm import tqdm

from search_service.evaluator import Evaluator, load_study_data, objective_metric
from search_service.search import (
    FLOPS_BUDGET_KEY,
    MFLOPS,
    WORKER_ATTR,
    SearchStudy,
    check_checkpoint,
    worker_id,
)
from search_service.study_file import Study
from search_service.trial_index import MASK_KEY, trial_mask
from supernet.errors import ConfigError
from supernet.exhaustive import Chunk, ExhaustiveResult, ExhaustiveScorer
from supernet.flops import flop_table
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


def scorer_for(evaluator: Evaluator, split: str = "valid") -> ExhaustiveScorer:
    """The exhaustive scorer of a study's checkpoint, on its cache's device."""
    return ExhaustiveScorer(evaluator.model, evaluator.cache(split), evaluator.metric, evaluator.flops)


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
    return ExhaustiveScorer(model.to(device), cache, objective_metric(study), flop_table(model))


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
    flops_budget = float(search.attrs.get(FLOPS_BUDGET_KEY, 0.0) or 0.0)
    have = scored_masks(search, paths)
    bit = CategoricalDistribution((0, 1))
    added, differ = [], 0
    for point in result.front:
        mask = tuple(int(c) for c in point.bits(result.n_paths))
        if mask in have:
            continue
        scored = evaluator.evaluate(mask, split)
        value = scored["metrics"][result.metric]
        if value != point.value:
            differ += 1
        system_attrs: dict[str, Any] = {MASK_KEY: scored["mask"]}
        if flops_budget > 0:
            system_attrs["constraints"] = [scored["mflops"] - flops_budget]
        user_attrs: dict[str, Any] = {"mask": scored["mask"], "active_paths": scored["active_paths"], "metrics": scored["metrics"]}
        user_attrs.update(scored["metrics"])
        user_attrs[MFLOPS] = scored["mflops"]
        user_attrs["params"] = scored["params"]
        user_attrs[WORKER_ATTR] = worker_id()
        user_attrs[EXHAUSTIVE_ATTR] = True
        user_attrs[EQUAL_ATTR] = point.equal
        trial = create_trial(
            state=TrialState.COMPLETE,
            values=[float(value), float(scored["mflops"])],
            params={name: b for name, b in zip(paths, mask)},
            distributions={name: bit for name in paths},
            user_attrs=user_attrs,
            system_attrs=system_attrs,
        )
        study.add_trial(trial)
        added.append(scored["mask"])
    if differ:
        log.warning(f"mro-search: {differ} front mask(s) score differently in float32 (the recorded value) than in the exhaustive float64 sums: a float32 rounding tie")
    entry = {
        "masks": result.masks,
        "metric": result.metric,
        "front": [p.bits(result.n_paths) for p in result.front],
        "equal": [p.equal for p in result.front],
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
    """Score every mask and record the exact front (the estimate was checked by the caller)."""
    start = time.perf_counter()
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
