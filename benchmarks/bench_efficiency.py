"""Benchmark: search efficiency where the space is large (mfeat k = 6, planted k = 5 and 6).

Usage: python benchmarks/bench_efficiency.py [--landscapes mfeat,planted5,planted6] [--seeds 5]
                                             [--trials 500] [--samplers mro,mro-uniform,tpe,nsga2,gp,random]
                                             [--long 3000] [--gp-cap 50] [--gp-landscapes mfeat]
                                             [--jobs 1] [--out DIR] [--json]

Issue 12, item 5: bench_search.py measures the samplers on a k = 4 problem (4,095 masks) whose
front is known exactly; here the spaces are 2^20 - 1 and 2^30 - 1 masks, where a sampler has to
search. Landscapes (``--landscapes``):

- ``mfeat``: the real study ``studies/mfeat.toml`` (6 views, 30 paths, 1,073,741,823 masks), its
  supernet trained once with its own settings (``train_supernet`` through
  ``_common.train_checkpoint``, 1 torch thread) and cached as
  ``runs/bench_efficiency/mfeat-<config sha>/checkpoints/<id>.pt`` (keyed by the study's
  configuration SHA-256, found again by ``_common.cached_checkpoint``).
- ``planted5``, ``planted6``: synthetic data with two planted paths, k = 5 (20 paths,
  1,048,575 masks) and k = 6 (30 paths): exactly bench_planted.py's problem for seed 0
  (``bench_planted.problem``: length 4, width 32, 8 epochs) and its cached checkpoint
  (``runs/bench_planted/k{k}-seed0-<config sha>.pt``), trained here if missing.

Scoring: a proposed mask's validation accuracy comes from the path cache (``build_cache`` +
``score_masks``, metric ``accuracy``: exactly what a search of the study would record) and its
MFLOPs from ``FlopTable.mflops_many``; both are computed lazily, per proposed mask, and memoised
in a dict (one per process), since 2^30 masks cannot be tabulated. Params: one
``suggest_categorical(path, [0, 1])`` per path, in mask order. An all-zero mask (Optuna's samplers
can propose it; MROSampler never does) counts as a trial with the worst values
``(0 accuracy, MFLOPs of the full mask)``, outside the reference box below.

Samplers (``--samplers``): ``mro`` (MROSampler with the paths, the trained prior's keep
probabilities ``prior.path_probs()``, budget = trials, seed, default settings otherwise),
``mro-uniform`` (the same without the prior: an ablation), and Optuna's ``tpe``
(TPESampler), ``nsga2`` (NSGAIISampler), ``gp`` (GPSampler: multi-objective in Optuna >= 4.4;
skipped with a note where this Optuna lacks it) and ``random`` (RandomSampler), each with
Optuna's defaults and the seed. GPSampler's cost grows with the cube of the trials and with
30 params it is slow: it runs ``min(trials, --gp-cap)`` trials (default 50) and its cells
beyond the cap are left empty (the output says so); ``--gp-landscapes`` runs it on some
landscapes only (the output names the others). Seeds 0 .. ``--seeds``-1; in-memory storage.

Long runs (``--long N``, default 3000, 0 for none): one ``mro`` and one ``random`` study of N
trials (seed 1000) per landscape, only to widen the reference front.

Reference front and hypervolume: the reference front is the Pareto front of the union of every
mask scored by every study of the landscape (the runs and the long runs) and, for spaces of at
most ``--exact-max`` masks (default 2^20, so planted5), of *every* mask, scored exhaustively by
``supernet.exhaustive.exhaustive_front``: then the reference front is the true front. For mfeat and planted6 it is the union
(the best front found by all samplers together), not the true front; the output says which.
Every mask of at most ``--small`` paths (default 4: 31,930 masks at k = 6) is scored and
added too; a mask of more paths costs at least the shared part plus its cheapest paths, so the
reference front is exact below that many MFLOPs (printed). The hypervolume is Optuna's own
(``optuna._hypervolume.compute_hypervolume``, via ``bench_search.hypervolume``) on the loss
vectors ``(-accuracy, MFLOPs)`` with the fixed reference point

    r = (-(a_min - 0.01 * (a_max - a_min)),  f_max + 0.01 * (f_max - f_min))

where ``a_min, a_max`` are the lowest and highest accuracy over the union above plus the full
mask and the 2k(k-1)/2 one-path masks (scored for this), ``f_max`` the MFLOPs of the full mask
(the most expensive mask: every path costs > 0, which is checked) and ``f_min`` the cheapest
one-path mask (the cheapest mask). Every non-empty mask therefore lies inside the box and adds
volume, the empty mask lies outside. Each study's hypervolume after n trials is divided by the
reference front's: a fraction in [0, 1], non-decreasing in n.

Report per landscape: median (min-max) over seeds of that fraction after 50, 100, 200 and 500
trials, and the target check. Target (issue 12): MROSampler reaches the best hypervolume of
the others' 500 trials within 100 trials, read here as: the first n at which ``mro``'s median
fraction (over seeds, at n trials) reaches the highest 500-trial median among ``tpe``,
``nsga2``, ``gp`` (at its cap) and ``random``; met if n <= 100. ``mro-uniform`` is the
ablation, not an "other".

Each finished study is appended to ``runs/bench_efficiency/jobs.jsonl`` (``--jobs-file``:
another name for an invocation running beside it; every ``jobs*.jsonl`` there is read), keyed
by landscape and its checkpoint, sampler, seed and trials, so an interrupted or extended run
reuses what is done. ``--out DIR`` writes ``DIR/bench_efficiency.json`` (every number) and
``DIR/bench_efficiency.md`` (the tables); ``benchmarks/figures.py`` draws
``docs/figures/efficiency_LANDSCAPE.svg`` from the JSON.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402
import bench_planted  # noqa: E402
import bench_search  # noqa: E402
import numpy as np  # noqa: E402
import optuna  # noqa: E402
import torch  # noqa: E402
from optuna.study._multi_objective import _is_pareto_front  # noqa: E402

from search_service.evaluator import load_study_data  # noqa: E402
from search_service.study_file import load_study  # noqa: E402
from supernet.data import load_data  # noqa: E402
from supernet.flops import flop_table  # noqa: E402
from supernet.scoring import build_cache, score_masks  # noqa: E402

CACHE_DIR = ROOT / "runs" / "bench_efficiency"
JOBS_FILE = CACHE_DIR / "jobs.jsonl"
LANDSCAPES = ("mfeat", "planted5", "planted6")
SAMPLERS = ("mro", "mro-uniform", "tpe", "nsga2", "gp", "random")
OTHERS = ("tpe", "nsga2", "gp", "random")  # the target's "others" (mro-uniform is the ablation)
CHECKPOINTS = (50, 100, 200, 500)
TARGET_TRIALS = 100
LONG_SAMPLERS = ("mro", "random")
LONG_SEED = 1000
EXACT_MAX = 2**20  # spaces up to this many masks get an exact (exhaustive) reference front
SCORE_CHUNK = 4096  # masks per score_masks call
COST_ORDER = ("gp", "long", "tpe", "mro", "mro-uniform", "nsga2", "random")  # slowest first (measured here)


# --- landscapes -------------------------------------------------------------------------------


class Landscape:
    """One trained supernet's mask landscape: validation accuracy and MFLOPs of any mask,
    computed on demand and memoised."""

    def __init__(self, name: str, model, cache, prior: list[float], identity: str, note: str) -> None:
        self.name = name
        self.model = model.eval()
        self.cache = cache
        self.flops = flop_table(self.model)
        self.paths = list(self.model.path_names)
        self.prior = prior
        self.identity = identity  # the checkpoint's identity: results are keyed by it
        self.note = note
        self.memo: dict[tuple[int, ...], tuple[float, float]] = {}
        self.full_mflops = self.flops.mflops([1] * len(self.paths))
        assert all(c > 0 for c in self.flops.path), "every path must cost more than zero (the full mask is then the most expensive)"

    @property
    def space(self) -> int:
        return 2 ** len(self.paths) - 1

    def score_many(self, masks: list[tuple[int, ...]]) -> list[tuple[float, float]]:
        """(accuracy, MFLOPs) of each mask; the all-zero mask gets the worst values."""
        new = [m for m in dict.fromkeys(masks) if m not in self.memo and any(m)]
        for start in range(0, len(new), SCORE_CHUNK):
            chunk = new[start : start + SCORE_CHUNK]
            t = torch.tensor(chunk, dtype=torch.float32)  # (M, P)
            with torch.no_grad():
                acc = score_masks(self.model, self.cache, t, "accuracy").tolist()
            mflops = self.flops.mflops_many(t).tolist()
            self.memo.update(zip(chunk, zip(acc, mflops)))
        return [self.memo[m] if any(m) else (0.0, self.full_mflops) for m in masks]

    def score(self, mask: tuple[int, ...]) -> tuple[float, float]:
        return self.score_many([mask])[0]

    def corners(self) -> list[tuple[int, ...]]:
        """The full mask and every one-path mask (they fix the reference box)."""
        P = len(self.paths)
        return [tuple([1] * P)] + [tuple(int(q == p) for q in range(P)) for p in range(P)]

    def exact_front(self) -> np.ndarray:
        """The true front's loss vectors over every mask (``supernet.exhaustive``: all 2^P - 1
        masks, streamed in blocks; 2^20 masks take about a minute here)."""
        from supernet.exhaustive import exhaustive_front

        with torch.no_grad():
            result = exhaustive_front(self.model, self.cache, "accuracy", self.flops)
        return np.array([[-p.value, p.costs[0] / 1e6] for p in result.front])  # FLOPs -> MFLOPs


PINNED = CACHE_DIR / "pinned.json"  # landscape name -> the checkpoint file its studies used


def pinned_checkpoint(name: str, log=print):
    """The checkpoint a landscape's cached studies were run with (``runs/bench_efficiency/
    pinned.json``), loaded by path, or None. A supernet configuration that gains a key (a new
    ``[train]`` option with its default) changes the configuration's SHA-256, and the cache
    lookup by SHA would train a new supernet in the middle of a benchmark whose studies are
    half done; the pin keeps every study of one landscape on one supernet. ``--fresh`` drops it."""
    from supernet.checkpoint import load_checkpoint

    pins = json.loads(PINNED.read_text()) if PINNED.is_file() else {}
    path = ROOT / pins[name] if name in pins else None
    if path is None or not path.is_file():
        return None
    log(f"{name}: pinned checkpoint {pins[name]}")
    return load_checkpoint(path)


def pin(name: str, path: Path) -> None:
    pins = json.loads(PINNED.read_text()) if PINNED.is_file() else {}
    pins[name] = str(Path(path).resolve().relative_to(ROOT))
    PINNED.parent.mkdir(parents=True, exist_ok=True)
    PINNED.write_text(json.dumps(pins, indent=1) + "\n")


def mfeat_landscape(log=print) -> Landscape:
    study = load_study("mfeat")
    study.train.device = "cpu"
    study.search.run_dir = str(CACHE_DIR / f"mfeat-{study.sha256[:12]}")
    data = load_study_data(study)
    ckpt = pinned_checkpoint("mfeat", log) or _common.cached_checkpoint(study)
    if ckpt is None:
        started = time.perf_counter()
        log(f"mfeat: training the supernet ({study.train.epochs} epochs, 1 thread) ...")
        ckpt = _common.train_checkpoint(study, data)
        log(f"mfeat: trained in {time.perf_counter() - started:.0f} s -> {ckpt.path.relative_to(ROOT)}")
    pin("mfeat", ckpt.path)
    prior = [float(q) for q in ckpt.prior.path_probs().detach()]
    cache = build_cache(ckpt.model.eval(), data.splits["valid"])
    return Landscape("mfeat", ckpt.model, cache, prior, ckpt.identity,
                     f"studies/mfeat.toml, {study.train.epochs} epochs, validation {len(data.splits['valid'].labels)} samples")


def planted_landscape(k: int, log=print) -> Landscape:
    ckpt = pinned_checkpoint(f"planted{k}", log)
    if ckpt is not None:
        data = load_data(bench_planted.problem(k, 0)[0])
    else:
        ckpt, data, train_s, cached = bench_planted._trained(k, 0, False)
        if not cached:
            log(f"planted{k}: trained in {train_s:.0f} s")
        pin(f"planted{k}", ckpt.path)
    prior = [float(q) for q in ckpt.prior.path_probs().detach()]
    cache = build_cache(ckpt.model.eval(), data.splits["valid"])
    planted = ", ".join(data.informative_paths)
    return Landscape(f"planted{k}", ckpt.model, cache, prior, ckpt.path.stem,
                     f"bench_planted.problem({k}, seed 0): planted {planted}")


def landscape(name: str, log=print) -> Landscape:
    if name == "mfeat":
        return mfeat_landscape(log)
    if name.startswith("planted") and name[7:] in ("5", "6"):
        return planted_landscape(int(name[7:]), log)
    raise ValueError(name)


_LOADED: dict[str, Landscape] = {}


def loaded(name: str) -> Landscape:
    """The landscape, built once per process (workers build their own)."""
    if name not in _LOADED:
        _LOADED[name] = landscape(name, log=lambda m: None)
    return _LOADED[name]


# --- one study --------------------------------------------------------------------------------


def gp_supported() -> str | None:
    """None if this Optuna's GPSampler runs a two-objective study, else why not."""
    if not hasattr(optuna.samplers, "GPSampler"):
        return f"Optuna {optuna.__version__} has no GPSampler"
    try:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.GPSampler(seed=0))
        study.optimize(lambda t: (t.suggest_float("x", 0, 1), t.suggest_float("y", 0, 1)), n_trials=12)
    except Exception as exc:  # noqa: BLE001 - any refusal means: not supported here
        return f"Optuna {optuna.__version__}'s GPSampler refuses two objectives ({type(exc).__name__}: {exc})"
    return None


def make_sampler(name: str, seed: int, land: Landscape, trials: int):
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    return bench_search.make_sampler(name, seed, {"paths": land.paths, "prior": land.prior}, trials)


def run_study(land: Landscape, name: str, seed: int, trials: int) -> dict:
    """One study; returns every trial's mask and values (the hypervolume is computed later, once
    the reference point is known)."""
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    paths = land.paths

    def objective(trial: optuna.Trial) -> tuple[float, float]:
        return land.score(tuple(int(trial.suggest_categorical(p, [0, 1])) for p in paths))

    study = optuna.create_study(directions=["maximize", "minimize"], sampler=make_sampler(name, seed, land, trials))
    started = time.perf_counter()
    study.optimize(objective, n_trials=trials)
    elapsed = time.perf_counter() - started
    masks = ["".join(str(int(t.params[p])) for p in paths) for t in study.trials]
    return {
        "sampler": name,
        "seed": seed,
        "trials": trials,
        "masks": masks,
        "values": [list(t.values) for t in study.trials],
        "distinct_masks": len(set(masks)),
        "empty_masks": sum(1 for m in masks if "1" not in m),
        "seconds": elapsed,
    }


def job_key(land: Landscape, name: str, seed: int, trials: int) -> str:
    return f"{land.name}|{land.identity}|{name}|{seed}|{trials}"


def _run(job: tuple) -> dict:
    land_name, name, seed, trials = job
    land = loaded(land_name)
    row = run_study(land, name, seed, trials)
    row["key"] = job_key(land, name, seed, trials)
    return row


def _init_worker() -> None:
    torch.set_num_threads(1)


# --- analysis ---------------------------------------------------------------------------------


def small_masks(n_paths: int, size: int) -> list[tuple[int, ...]]:
    """Every mask with 1 .. ``size`` active paths."""
    return [tuple(int(p in active) for p in range(n_paths))
            for k in range(1, size + 1) for active in itertools.combinations(range(n_paths), k)]


def reference(land: Landscape, rows: list[dict], exact: bool, small: int = 0) -> dict:
    """The reference point and front (see the module docstring) from every study's trials (and
    every mask of at most ``small`` paths)."""
    masks = [tuple(int(c) for c in m) for r in rows for m in r["masks"]] + land.corners()
    masks += small_masks(len(land.paths), small) if small and not exact else []
    values = np.array(land.score_many(masks))
    keep = np.array([any(m) for m in masks])
    acc, mflops = values[keep, 0], values[keep, 1]
    a_lo, a_hi = float(acc.min()), float(acc.max())
    loss = np.stack([-acc, mflops], axis=1)
    front = np.unique(loss[_is_pareto_front(loss, assume_unique_lexsorted=False)], axis=0)  # distinct points
    kind = "union of every study's trials"
    exact_below = None
    if small and not exact and small < len(land.paths):
        # a mask of more than `small` paths costs at least the shared part and its cheapest paths
        exact_below = (land.flops.shared + sum(sorted(land.flops.path)[: small + 1])) / 1e6
        kind += f" and every mask of at most {small} paths (so exact below {exact_below:.3f} MFLOPs)"
    if exact:  # with the union: the float64 sums there and the float32 cache here may differ by a hair
        both = np.concatenate([front, land.exact_front()])
        front = np.unique(both[_is_pareto_front(both, assume_unique_lexsorted=False)], axis=0)
        a_hi = max(a_hi, float(-front[:, 0].min()))
        kind = f"exact: all {land.space:,} masks scored (supernet.exhaustive)"
    f_min = min(land.flops.mflops(m) for m in land.corners()[1:])
    f_max = land.full_mflops
    ref = np.array([-(a_lo - 0.01 * (a_hi - a_lo)), f_max + 0.01 * (f_max - f_min)])
    return {"ref": ref, "front": front, "hv": bench_search.hypervolume(front, ref), "kind": kind, "exact_below": exact_below,
            "accuracy_range": [a_lo, a_hi], "mflops_range": [f_min, f_max]}


def curve(values: list[list[float]], ref: np.ndarray, hv: float) -> list[float]:
    """The fraction of the reference hypervolume reached after n = 1 .. len(values) trials."""
    v = np.array(values, dtype=float)
    loss = np.stack([-v[:, 0], v[:, 1]], axis=1)
    return [bench_search.hypervolume(loss[:n], ref) / hv for n in range(1, len(loss) + 1)]


def summarise(rows: list[dict], samplers: list[str], points: list[int]) -> dict:
    """Per sampler: median, min and max fraction at each checkpoint, the median curve, and the
    target check for ``mro``."""
    out: dict = {}
    for s in samplers:
        runs = [r for r in rows if r["sampler"] == s]
        if not runs:
            continue
        length = min(len(r["curve"]) for r in runs)
        med_curve = [statistics.median(r["curve"][n] for r in runs) for n in range(length)]
        cells = {}
        for n in points:
            if n <= length:
                xs = [r["curve"][n - 1] for r in runs]
                cells[str(n)] = {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}
        out[s] = {"seeds": len(runs), "trials": length, "cells": cells, "median_curve": med_curve,
                  "seconds_median": statistics.median(r["seconds"] for r in runs),
                  "distinct_median": statistics.median(r["distinct_masks"] for r in runs),
                  "empty_median": statistics.median(r["empty_masks"] for r in runs)}
    best_other = max(((out[s]["median_curve"][-1], s, out[s]["trials"]) for s in OTHERS if s in out), default=None)
    target = None
    if best_other is not None and "mro" in out:
        level, who, at = best_other
        reached = next((n + 1 for n, x in enumerate(out["mro"]["median_curve"]) if x >= level), None)
        target = {"best_other": who, "best_other_trials": at, "best_other_median": level,
                  "mro_reaches_at": reached, "mro_trials": out["mro"]["trials"],
                  "met": reached is not None and reached <= TARGET_TRIALS}
    return {"samplers": out, "target": target}


def analyse(land: Landscape, rows: list[dict], long_rows: list[dict], samplers: list[str], trials: int,
            exact: bool, small: int = 0) -> dict:
    ref = reference(land, rows + long_rows, exact, small)
    for r in rows + long_rows:
        r["curve"] = curve(r["values"], ref["ref"], ref["hv"])
    points = [n for n in CHECKPOINTS if n <= trials]
    summary = summarise(rows, samplers, points)
    return {
        "landscape": land.name, "note": land.note, "paths": len(land.paths), "space": land.space,
        "checkpoint": land.identity, "prior": dict(zip(land.paths, land.prior)),
        "reference": {"kind": ref["kind"], "exact_below_mflops": ref["exact_below"], "point": ref["ref"].tolist(), "hypervolume": ref["hv"],
                      "front_size": len(ref["front"]), "front": ref["front"].tolist(),
                      "accuracy_range": ref["accuracy_range"], "mflops_range": ref["mflops_range"]},
        "masks_scored": len(land.memo), "points": points, **summary,
        "long": [{"sampler": r["sampler"], "trials": r["trials"], "final": r["curve"][-1],
                  "at": {str(n): r["curve"][n - 1] for n in (100, 500, 1000, 2000, 3000) if n <= r["trials"]},
                  "seconds": r["seconds"]} for r in long_rows],
        "per_seed": [{k: v for k, v in r.items() if k not in ("masks", "values", "curve")}
                     | {"at": {str(n): r["curve"][n - 1] for n in points if n <= len(r["curve"])}} for r in rows],
    }


LABELS = {"mro": "**MROSampler**", "mro-uniform": "MROSampler, no prior", "tpe": "TPE", "nsga2": "NSGA-II",
          "gp": "GP", "random": "Random"}


def markdown(result: dict) -> str:
    m, st = result["machine"], result["settings"]
    lines = [f"**bench_efficiency** ({m['date']}, {m['cpu_model']} x{m['cpu_count']}, load {m['loadavg_start'][0]:.1f} → "
             f"{m.get('loadavg_end', [float('nan')])[0]:.1f}; Optuna {m['optuna']}, torch {m['torch']}; seeds 0–{st['seeds'] - 1}, "
             f"{st['trials']} trials, long runs {st['long']}; {st['jobs']} process(es), 1 torch thread each; "
             f"{result['studies']} studies taking {result['study_s'] / 60:.0f} min in all, "
             f"{result['wall_s']:.0f} s of them run by this invocation, the rest from its cache)", ""]
    lines += [f"- {note}" for note in result["notes"]] + ([""] if result["notes"] else [])
    for land in result["landscapes"]:
        ref = land["reference"]
        lines += [f"**{land['landscape']}** ({land['note']}; {land['paths']} paths, {land['space']:,} masks; "
                  f"reference front: {ref['kind']}, {ref['front_size']} distinct points, hypervolume {ref['hypervolume']:.6f} "
                  f"at r = ({ref['point'][0]:.4f}, {ref['point'][1]:.4f}); {land['masks_scored']:,} distinct masks scored)", ""]
        points = land["points"]
        lines.append("| sampler | " + " | ".join(str(n) for n in points) + " | s / study |")
        lines.append("|---|" + "---|" * (len(points) + 1))
        for s, row in land["samplers"].items():
            cells = []
            for n in points:
                c = row["cells"].get(str(n))
                cells.append("–" if c is None else f"{100 * c['median']:.1f} % ({100 * c['min']:.1f}–{100 * c['max']:.1f})")
            label = LABELS.get(s, s) + (f" (capped at {row['trials']} trials)" if row["trials"] < max(points) else "")
            label += f" ({row['seeds']} seeds only)" if row["seeds"] < st["seeds"] else ""
            lines.append(f"| {label} | " + " | ".join(cells) + f" | {row['seconds_median']:.1f} |")
        for r in land["long"]:
            lines.append(f"\nLong run: {r['sampler']}, {r['trials']} trials: " + ", ".join(
                f"{n}: {100 * x:.1f} %" for n, x in r["at"].items()) + f" ({r['seconds']:.0f} s).")
        t = land["target"]
        if t is not None:
            verdict = "**MET**" if t["met"] else "**NOT MET**"
            reach = f"reaches it at {t['mro_reaches_at']} trials" if t["mro_reaches_at"] else f"does not reach it within {t['mro_trials']}"
            lines.append(f"\nTarget (MROSampler's median reaches the best of the others' medians at their last trial, "
                         f"{t['best_other']} {100 * t['best_other_median']:.1f} % at {t['best_other_trials']}, within "
                         f"{TARGET_TRIALS} trials): MROSampler {reach} -> {verdict}.")
        lines.append("")
    return "\n".join(lines) + "\n"


# --- main -------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--landscapes", default=",".join(LANDSCAPES))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--trials", type=int, default=500)
    parser.add_argument("--samplers", default=",".join(SAMPLERS))
    parser.add_argument("--long", type=int, default=3000, help="trials of the long mro and random runs (0: none)")
    parser.add_argument("--gp-cap", type=int, default=50, help="GPSampler's trials at most (it is slow)")
    parser.add_argument("--gp-landscapes", default="", help="run gp only on these landscapes (default: all)")
    parser.add_argument("--small", type=int, default=4, help="add every mask of at most this many paths to the reference front")
    parser.add_argument("--exact-max", type=int, default=EXACT_MAX, help="score every mask of spaces up to this size")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument("--jobs-file", default=JOBS_FILE.name,
                        help="append finished studies to runs/bench_efficiency/NAME (one per parallel invocation)")
    parser.add_argument("--fresh", action="store_true", help="forget the pinned checkpoints (runs/bench_efficiency/pinned.json)")
    parser.add_argument("--report-only", action="store_true", help="run nothing: report the cached studies (and name the rest)")
    parser.add_argument("--out", default="", help="write DIR/bench_efficiency.json and .md")
    parser.add_argument("--json", action="store_true", help="print one JSON object at the end")
    args = parser.parse_args(argv)
    names = [s.strip() for s in args.landscapes.split(",") if s.strip()]
    samplers = [s.strip() for s in args.samplers.split(",") if s.strip()]
    bad = [n for n in names if n not in LANDSCAPES] + [s for s in samplers if s not in SAMPLERS]
    if bad:
        parser.error(f"unknown landscape or sampler {bad[0]!r}; choose from {', '.join(LANDSCAPES + SAMPLERS)}")
    if args.seeds < 1 or args.trials < 1 or args.jobs < 1 or args.long < 0 or args.gp_cap < 1:
        parser.error("--seeds, --trials, --jobs and --gp-cap must be >= 1 and --long >= 0")
    torch.set_num_threads(1)
    info = _common.machine_info(optuna=optuna.__version__)
    print(f"# bench_efficiency  {info['date']}  {info['cpu_model']} x{info['cpu_count']}  torch {info['torch']}  "
          f"optuna {info['optuna']}  load {' '.join(f'{x:.2f}' for x in info['loadavg_start'])}")
    notes = []
    if "gp" in samplers:
        why = gp_supported()
        if why:
            samplers.remove("gp")
            notes.append(f"gp skipped: {why}")
        elif args.gp_cap < args.trials:
            notes.append(f"gp capped at {args.gp_cap} trials (GPSampler is slow with 30 params)")
    gp_lands = [s.strip() for s in args.gp_landscapes.split(",") if s.strip()] or names
    if "gp" in samplers and set(names) - set(gp_lands):
        notes.append(f"gp not run on {', '.join(n for n in names if n not in gp_lands)} (--gp-landscapes)")
    for n in notes:
        print(n)

    if args.fresh:
        PINNED.unlink(missing_ok=True)
    done: dict[str, dict] = {}
    for path in sorted(CACHE_DIR.glob("jobs*.jsonl")):  # this run's file and any a parallel run wrote
        done.update(_common.load_jsonl(path, "key"))
    jobs_file = CACHE_DIR / args.jobs_file
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    lands = {n: landscape(n) for n in names}
    _LOADED.update(lands)
    jobs, keys = [], {}
    for n, land in lands.items():
        plan = [(s, seed, min(args.trials, args.gp_cap) if s == "gp" else args.trials)
                for s in samplers for seed in range(args.seeds) if s != "gp" or n in gp_lands]
        plan += [(s, LONG_SEED, args.long) for s in LONG_SAMPLERS if args.long]
        for s, seed, trials in plan:
            key = job_key(land, s, seed, trials)
            keys.setdefault(n, []).append(key)
            if key not in done:
                jobs.append((n, s, seed, trials))
    jobs.sort(key=lambda j: COST_ORDER.index(j[1]) if j[2] != LONG_SEED else 1)  # the longest first
    print(f"{sum(len(v) for v in keys.values())} studies, {len(jobs)} to run ({args.jobs} process(es))", flush=True)

    started = time.perf_counter()

    def record(row: dict) -> None:
        done[row["key"]] = row
        with jobs_file.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"  {row['key'].split('|')[0]} {row['sampler']:<11} seed {row['seed']:<4} {row['trials']} trials "
              f"{row['seconds']:7.1f} s  ({time.perf_counter() - started:.0f} s)", flush=True)

    if args.report_only and jobs:
        notes.append(f"--report-only: {len(jobs)} planned studies not run and left out: "
                     + ", ".join(sorted({f'{n} {s}' for n, s, _, _ in jobs})))
        print(notes[-1])
        jobs = []
    _common.run_jobs(jobs, _run, record, workers=args.jobs, initializer=_init_worker)
    wall = time.perf_counter() - started

    result = {"machine": info, "settings": {"landscapes": names, "seeds": args.seeds, "trials": args.trials,
                                            "samplers": samplers, "long": args.long, "gp_cap": args.gp_cap,
                                            "jobs": args.jobs},
              "notes": notes, "wall_s": wall, "landscapes": []}
    for n, land in lands.items():
        rows = [done[k] for k in keys[n] if k in done]
        long_rows = [r for r in rows if r["seed"] == LONG_SEED]
        rows = [r for r in rows if r["seed"] != LONG_SEED]
        exact = land.space <= args.exact_max
        result["landscapes"].append(analyse(land, rows, long_rows, samplers, args.trials, exact, args.small))
    every = [done[k] for n in lands for k in keys[n] if k in done]
    result["studies"], result["study_s"] = len(every), sum(r["seconds"] for r in every)
    result["machine"]["loadavg_end"] = list(os.getloadavg())
    md = markdown(result)
    print()
    print(md)
    print(f"{wall:.0f} s for the studies; load at the end {' '.join(f'{x:.2f}' for x in result['machine']['loadavg_end'])}")
    if args.out:
        _common.write_result(Path(args.out), "bench_efficiency", result, md)
    if args.json:
        print(json.dumps(result, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
