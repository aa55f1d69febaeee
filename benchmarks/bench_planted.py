"""Benchmark: does the search find the planted structure? (k = 3, 4, 5; 10 seeds each)

Usage: python benchmarks/bench_planted.py [--k 3,4,5] [--seeds 0-9] [--trials 60] [--workers 2]
                                          [--quick] [--fresh] [--json] [--out docs/results]

Issue: "on synthetic data whose informative paths are known, for k = 3, 4 and 5, the planted mask
(or the cheapest mask containing the planted paths) is on the found Pareto front in at least 9 of
10 seeds."

For every k and seed (one job each, run in ``--workers`` spawned processes with one torch thread):

1. **Planted paths.** Two distinct paths, drawn with ``random.Random(1000 * k + seed)``: the first
   uniformly from the k(k-1) paths, the second uniformly from the rest minus the first one's
   reverse (``j->i`` would see the same pair of modalities). Recorded per seed.
2. **Data.** ``supernet.data.synthetic`` with that seed: modalities ``m0 … m(k-1)``, length 4,
   ``dims`` = what the planted roles need (``required_dims``) plus 4 noise features each,
   samples 4000/1000/1000, noise 0.1, binary classification. Length 4 (not the demo's 8) keeps the
   pointer look-up learnable in a few epochs: at length 8 a k = 5 supernet of this size learnt
   nothing in 6 epochs of 3000 samples (every mask ~0.5 accuracy), at length 4 it does.
3. **Supernet.** ``train_supernet``, width 32, 4 heads, 1 layer per path, no dropout, linear
   head; 8 epochs (3 warm-up), batch 128, lr 4e-3, 2 masks per step, rank loss l1, seed = the
   seed. Cached as ``runs/bench_planted/k{k}-seed{seed}-<config sha>.pt`` (the SHA-256 of the
   data, model and train configuration), so reruns skip training; ``--fresh`` retrains.
4. **Search.** The real service path: ``search_service.lifecycle.create_search`` on a fresh
   SQLite file in a temporary directory (its artifact store there too), then ``run_worker``
   (``MROSampler`` seeded with the seed, 10 uniform start-up trials as in ``studies/demo.toml``,
   the real ``Objective`` and ``Evaluator``) until ``--trials`` trials are COMPLETE. Objectives: validation accuracy
   (maximized) and MFLOPs (minimized).
5. **Found front.** ``search_service.search.pareto_front``: Optuna's ``study.best_trials`` (the
   non-dominated COMPLETE trials over (accuracy, MFLOPs)).

**Hit (what "the planted mask is on the found front" means here).** The planted mask is the mask
that keeps exactly the two planted paths. A seed is a hit when a trial of the found front has
exactly that mask: the sampler proposed it, it was scored, and no other scored mask has at least
its accuracy at no more MFLOPs with one of the two strictly better. A front member that merely
*contains* the planted paths (a superset) does not count; it is reported separately
(``superset_on_front``), as a near miss.

"Or the cheapest mask containing the planted paths": MFLOPs are additive over paths
(``FlopTable``: shared + the touched modalities' projections + each active path), and every
path costs more than zero, so every mask that contains the planted paths and anything else
costs strictly more than the planted mask. The cheapest mask containing the planted paths is
therefore the planted mask itself; the two readings of the issue are the same check. The script
verifies the premise (every path's cost > 0) per run instead of assuming it.

Diagnostics per seed (from exact cached scoring, ``build_cache`` + ``score_masks`` on the same
validation split the search scores):

* ``planted_on_true_front``: no mask at all dominates the planted mask. Only masks with at most
  its MFLOPs can, so those are enumerated exactly (by size, while the cheapest mask of that size
  can still cost no more than the planted mask). This is the check that the supernet learnt the
  planted structure at these settings. A hit needs both this and the search having scored the
  mask, and the two together decide the hit, so a miss is either the supernet's or the search's
  (``consistent`` is false if trial values and exact cached scores ever disagree on that).
* ``found_at``: the number of COMPLETE trials up to and including the one that scored the
  planted mask (None: never proposed): how much budget the search needed.
* ``hit_within``: whether the planted mask was on the front of the first n COMPLETE trials, for
  n in 10, 20, 40, 60, 100, 200, 400 below the budget (and at the budget: the hit). MROSampler's
  proposals depend on the budget only through enumeration (it enumerates once the untried masks
  fit in the remaining budget, which never happens at k >= 4 with these budgets), and its random
  numbers are seeded by (seed, trial number), so for k >= 4 this is the hit a run with budget n
  would have had: one run with ``--trials 200`` also answers 60 and 100.
* the planted mask's accuracy against ``best_without``: the best accuracy over all masks that
  keep *neither* planted path (2^(P-2) - 1 masks, enumerated exactly: 262,143 at k = 5) and the
  accuracy of each planted path alone; also the pretrained prior's keep probability of the
  planted paths and their rank among all paths.

Budget: ``--trials`` (default 60, the demo's and ``SearchConfig``'s default, i.e. what
``mro-search run`` does unless told otherwise) COMPLETE trials per run, for every k: the claim is
about the search as shipped, not one tuned per k. For k = 3 that is 60 of the 63 masks, so the
budget barely constrains the search there (``found_at`` and ``hit_within`` show how soon it got
there); k = 4 has 4,095 masks and k = 5 1,048,575, where 60 trials are a real search.
``--trials 3=20,4=60,5=200`` sets a budget per k.

Target: the planted mask on the found front in at least 9 of 10 seeds, for each k. With another
number of seeds the line reads "at least ceil(0.9 n) of n"; ``--quick`` (seeds 0-1 unless
``--seeds`` is given, the same problems, so its checkpoints are reused by the full run) is a
smoke run and gives no verdict.

Writes ``DIR/bench_planted.json`` (every run: planted paths, front, diagnostics, timings) and
``DIR/bench_planted.md`` (a Markdown table fragment); ``--quick`` writes ``bench_planted_quick.*``
and never overwrites a real result. The cached checkpoints are keyed by configuration, not by
the training code: after a change to ``supernet/`` run with ``--fresh``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import random
import statistics
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402
import bench_search  # noqa: E402
import optuna  # noqa: E402
import torch  # noqa: E402

from search_service.creation import create_search  # noqa: E402
from search_service.evaluator import Evaluator  # noqa: E402
from search_service.search import pareto_front, run_worker  # noqa: E402
from search_service.storage import optuna_quiet  # noqa: E402
from search_service.study_file import SearchConfig, Study  # noqa: E402
from supernet.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from supernet.config import DataConfig, ModelConfig, TrainConfig, config_sha256  # noqa: E402
from supernet.data import load_data  # noqa: E402
from supernet.data.synthetic import required_dims  # noqa: E402
from supernet.flops import flop_table  # noqa: E402
from supernet.paths import ARROW, format_mask, mask_from_paths, path_pairs  # noqa: E402
from supernet.scoring import build_cache, score_masks  # noqa: E402
from supernet.train import train_supernet  # noqa: E402

CACHE_DIR = ROOT / "runs" / "bench_planted"
DEFAULT_TRIALS = 60  # studies/demo.toml and SearchConfig.trials
N_STARTUP_TRIALS = 10  # studies/demo.toml
LENGTH = 4
NOISE_FEATURES = 4
SAMPLES = [4000, 1000, 1000]
TARGET_FRACTION = 0.9  # 9 of 10 seeds
QUICK_SEEDS = "0-1"
CURVE = (10, 20, 40, 60, 100, 200, 400)  # prefixes of each run at which the hit is also recorded
SCORE_CHUNK = 2048  # masks per score_masks call when enumerating (bigger chunks were slower)


# --- the problem -------------------------------------------------------------------------------


def planted_paths(k: int, seed: int) -> list[str]:
    """Two distinct planted paths for (k, seed), deterministic; never a path and its reverse."""
    rng = random.Random(1000 * k + seed)
    pairs = path_pairs(k)
    first = rng.choice(pairs)
    second = rng.choice([p for p in pairs if p != first and p != (first[1], first[0])])
    return [f"m{i}{ARROW}m{j}" for i, j in (first, second)]


def problem(k: int, seed: int) -> tuple[DataConfig, ModelConfig, TrainConfig]:
    data = DataConfig(
        source="synthetic",
        modalities=[f"m{i}" for i in range(k)],
        dims=[0] * k,
        length=LENGTH,
        samples=list(SAMPLES),
        planted_paths=planted_paths(k, seed),
        task="classification",
        noise=0.1,
        seed=seed,
    )
    data.dims = [need + NOISE_FEATURES for need in required_dims(data)]
    model = ModelConfig(width=32, heads=4, layers_per_path=1, dropout=0.0, head="linear")
    train = TrainConfig(epochs=8, warmup_epochs=3, batch_size=128, lr=4e-3, masks_per_step=2, rank_loss="l1", seed=seed)
    return data, model, train


def problem_config(k: int, seed: int) -> dict:
    data, model, train = problem(k, seed)
    return {"bench": "bench_planted", "data": asdict(data), "model": asdict(model), "train": asdict(train)}


def checkpoint_path(k: int, seed: int) -> Path:
    return CACHE_DIR / f"k{k}-seed{seed}-{config_sha256(problem_config(k, seed))[:12]}.pt"


# --- one run: train (or load), exact diagnostics, the real search --------------------------------


def _trained(k: int, seed: int, fresh: bool):
    data_cfg, model_cfg, train_cfg = problem(k, seed)
    config = problem_config(k, seed)
    sha = config_sha256(config)
    path = checkpoint_path(k, seed)
    data = load_data(data_cfg)
    if fresh:
        path.unlink(missing_ok=True)
    train_s, cached = None, path.is_file()
    if not cached:
        started = time.perf_counter()
        result = train_supernet(data, model_cfg, train_cfg, progress=False)
        train_s = time.perf_counter() - started
        save_checkpoint(path, result.model, result.prior, config, result.history)
    return load_checkpoint(path, expected_sha256=sha), data, train_s, cached


def _scores(model, cache, masks) -> torch.Tensor:
    """Validation accuracy of many masks (a list of 0/1 tuples or an ``(M, P)`` tensor), exact."""
    masks = torch.as_tensor(masks, dtype=torch.float32).reshape(-1, model.num_paths)
    out = [score_masks(model, cache, masks[start : start + SCORE_CHUNK], "accuracy") for start in range(0, len(masks), SCORE_CHUNK)]
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def _masks_within(flops, n_paths: int, limit: float) -> list[tuple[int, ...]]:
    """Every non-empty mask with MFLOPs <= limit (sizes enumerated while the cheapest possible
    mask of that size, the shared cost plus its cheapest paths, is still within the limit)."""
    costs = sorted(flops.path)
    found = []
    for size in range(1, n_paths + 1):
        if (flops.shared + sum(costs[:size])) / 1e6 > limit:
            break
        for active in itertools.combinations(range(n_paths), size):
            mask = tuple(int(p in active) for p in range(n_paths))
            if flops.mflops(mask) <= limit:
                found.append(mask)
    return found


def ground_truth(model, cache, flops, names: list[str], planted: list[str]) -> dict:
    """Exact facts about the planted mask, from cached scoring (see the module docstring)."""
    paths = list(model.path_names)
    P = len(paths)
    target = mask_from_paths(planted, names)
    acc_p = float(_scores(model, cache, [target])[0])
    f_p = flops.mflops(target)
    # masks that could dominate the planted mask: the ones at most as expensive
    rivals = [m for m in _masks_within(flops, P, f_p) if m != target]
    rival_acc = _scores(model, cache, rivals).tolist()
    dominators = [
        (a, flops.mflops(m), m)
        for m, a in zip(rivals, rival_acc)
        if a >= acc_p and flops.mflops(m) <= f_p and (a > acc_p or flops.mflops(m) < f_p)
    ]
    dominators.sort(key=lambda d: (-d[0], d[1]))
    # the best mask that keeps neither planted path: every non-empty mask of the other P - 2 paths
    started = time.perf_counter()
    others = [p for p in range(P) if not target[p]]
    codes = torch.arange(1, 2 ** len(others))
    shifts = torch.arange(len(others) - 1, -1, -1)
    without = torch.zeros(len(codes), P)
    without[:, others] = ((codes[:, None] >> shifts) & 1).to(torch.float32)
    without_acc = _scores(model, cache, without)
    without_mflops = flops.mflops_many(without)
    best = without_acc == without_acc.max()
    best_i = int(torch.nonzero(best).flatten()[torch.argmin(without_mflops[best])])  # ties: the cheapest
    best_mask = tuple(int(b) for b in without[best_i])
    single = {paths[p]: float(_scores(model, cache, [tuple(int(q == p) for q in range(P))])[0]) for p in range(P) if target[p]}
    return {
        "planted_mask": format_mask(target),
        "planted_accuracy": acc_p,
        "planted_mflops": f_p,
        "every_path_costs_more_than_zero": all(c > 0 for c in flops.path),
        "masks_at_most_as_expensive": len(rivals),
        "planted_on_true_front": not dominators,
        "dominated_by": [
            {"mask": format_mask(m), "active_paths": [paths[p] for p in range(P) if m[p]], "accuracy": a, "mflops": f}
            for a, f, m in dominators[:3]
        ],
        "best_without": {
            "mask": format_mask(best_mask),
            "active_paths": [paths[p] for p in range(P) if best_mask[p]],
            "accuracy": float(without_acc[best_i]),
            "mflops": flops.mflops(best_mask),
            "masks_enumerated": len(without),
            "seconds": time.perf_counter() - started,
        },
        "planted_path_alone_accuracy": single,
    }


def _study(k: int, seed: int, trials: int, run_dir: Path) -> Study:
    data, model, train = problem(k, seed)
    search = SearchConfig(metric="accuracy", trials=trials, n_startup_trials=N_STARTUP_TRIALS, run_dir=str(run_dir))
    return Study(f"bench_planted_k{k}_seed{seed}", ROOT / "studies" / "bench_planted.toml", data, model, train, search)


def run_one(k: int, seed: int, trials: int, fresh: bool = False) -> dict:
    torch.set_num_threads(1)
    optuna_quiet()
    started = time.perf_counter()
    checkpoint, data, train_s, cached = _trained(k, seed, fresh)
    planted = list(data.informative_paths)
    model = checkpoint.model.eval()
    names = [m.name for m in model.spec.modalities]
    paths = list(model.path_names)
    flops = flop_table(model)
    cache = build_cache(model, data.splits["valid"])
    truth = ground_truth(model, cache, flops, names, planted)
    prior = [float(q) for q in checkpoint.prior.path_probs().detach()]
    order = sorted(range(len(paths)), key=lambda p: -prior[p])
    history = checkpoint.history[-1] if checkpoint.history else {}

    search_started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mro-bench-planted-") as tmp:
        study = _study(k, seed, trials, Path(tmp))
        evaluator = Evaluator(study, checkpoint=checkpoint, data=data)
        search = create_search(study, f"sqlite:///{Path(tmp) / 'planted.db'}", evaluator, trials=trials)
        run_worker(search, evaluator, seed=seed)
        front = pareto_front(search)
        complete = [t for t in search.optuna_study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
        counts = search.counts()
    search_s = time.perf_counter() - search_started

    complete.sort(key=lambda t: t.number)
    masks = [t.user_attrs["mask"] for t in complete]
    target = truth["planted_mask"]
    found_at = next((i + 1 for i, m in enumerate(masks) if m == target), None)
    planted_trial = next((t for t in complete if t.user_attrs["mask"] == target), None)
    front_masks = [r["mask"] for r in front]
    hit = target in front_masks
    values = [tuple(t.values) for t in complete]
    within = {n: _on_prefix_front(masks, values, target, n) for n in CURVE if n < len(complete)}
    within[len(complete)] = hit
    superset = [r["mask"] for r in front if r["mask"] != target and all(b == "1" for b, t in zip(r["mask"], target) if t == "1")]
    no_planted = [t for t in complete if all(b == "0" for b, t_ in zip(t.user_attrs["mask"], target) if t_ == "1")]
    return {
        "k": k,
        "seed": seed,
        "paths": len(paths),
        "masks_in_space": 2 ** len(paths) - 1,
        "planted_paths": planted,
        "planted_mask": target,
        "trials": trials,
        "complete": len(complete),
        "distinct_masks": len(set(masks)),
        "states": counts,
        "hit": hit,
        "found_at": found_at,
        "hit_within": within,
        "consistent": hit == (truth["planted_on_true_front"] and found_at is not None),
        "superset_on_front": superset,
        "planted_trial_accuracy": planted_trial.values[0] if planted_trial is not None else None,
        "best_trial_without_planted_paths": max((t.values[0] for t in no_planted), default=None),
        "front": [{"mask": r["mask"], "active_paths": r["active_paths"], "accuracy": r["values"][0], "mflops": r["mflops"]} for r in front],
        "truth": truth,
        "prior_keep_probs": dict(zip(paths, prior)),
        "prior_rank_of_planted": {paths[p]: order.index(p) + 1 for p in range(len(paths)) if paths[p] in planted},
        "last_epoch": {key: history.get(key) for key in ("spearman", "valid_loss_full", "valid_loss_best", "train_loss")},
        "checkpoint": str(checkpoint_path(k, seed).relative_to(ROOT)),
        "cached": cached,
        "train_s": train_s,
        "search_s": search_s,
        "seconds": time.perf_counter() - started,
    }


def _on_prefix_front(masks: list[str], values: list[tuple[float, float]], target: str, n: int) -> bool:
    """Whether ``target`` was scored in the first ``n`` COMPLETE trials and no trial among them
    dominates it (maximize accuracy, minimize MFLOPs): the hit, had the run stopped at ``n``."""
    if target not in masks[:n]:
        return False
    a, f = values[masks.index(target)]
    return not any(b >= a and g <= f and (b > a or g < f) for b, g in values[:n])


def _run(job: tuple) -> dict:
    return run_one(*job)


def _init_worker() -> None:
    torch.set_num_threads(1)


# --- reporting ---------------------------------------------------------------------------------


def parse_ints(text: str) -> list[int]:
    """``"0-9"``, ``"0,2,5"`` or ``"3"`` -> a list of ints."""
    out: list[int] = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        if "-" in part[1:]:
            lo, hi = part.split("-", 1)
            out.extend(range(int(lo), int(hi) + 1))
        else:
            out.append(int(part))
    return out


def parse_trials(text: str, ks: list[int]) -> dict[int, int]:
    """``"60"`` (every k) or ``"3=20,4=60,5=60"`` (per k; a k not named gets the default)."""
    if "=" not in text:
        return {k: int(text) for k in ks}
    given = {int(a): int(b) for a, b in (p.split("=", 1) for p in text.split(",") if p.strip())}
    return {k: given.get(k, DEFAULT_TRIALS) for k in ks}


def needed(n_seeds: int) -> int:
    return math.ceil(TARGET_FRACTION * n_seeds - 1e-9)


def summarize(rows: list[dict], ks: list[int], quick: bool) -> dict:
    out = {}
    for k in ks:
        rs = sorted((r for r in rows if r["k"] == k), key=lambda r: r["seed"])
        if not rs:
            continue
        hits = sum(r["hit"] for r in rs)
        found = [r["found_at"] for r in rs if r["found_at"] is not None]
        need = needed(len(rs))
        out[k] = {
            "seeds": len(rs),
            "hits": hits,
            "needed": need,
            "verdict": None if quick else ("MET" if hits >= need else "NOT MET"),
            "planted_on_true_front": sum(r["truth"]["planted_on_true_front"] for r in rs),
            "planted_scored": len(found),
            "found_at_median": statistics.median(found) if found else None,
            "found_at_max": max(found) if found else None,
            "hits_within": {n: sum(r["hit_within"].get(n, False) for r in rs) for n in sorted({n for r in rs for n in r["hit_within"]})},
            "inconsistent": [r["seed"] for r in rs if not r["consistent"]],
            "superset_only": sum(1 for r in rs if not r["hit"] and r["superset_on_front"]),
            "planted_accuracy_median": statistics.median(r["truth"]["planted_accuracy"] for r in rs),
            "best_without_accuracy_median": statistics.median(r["truth"]["best_without"]["accuracy"] for r in rs),
            "trials": rs[0]["trials"],
            "paths": rs[0]["paths"],
            "masks_in_space": rs[0]["masks_in_space"],
            "train_s_median": statistics.median(r["train_s"] for r in rs if r["train_s"] is not None) if any(r["train_s"] is not None for r in rs) else None,
            "search_s_median": statistics.median(r["search_s"] for r in rs),
        }
    return out


def _fmt(x, spec: str = "", none: str = "–") -> str:
    return none if x is None else format(x, spec)


def markdown(report: dict) -> str:
    info, s = report["machine"], report["settings"]
    lines = [
        f"**bench_planted** ({info['date']}, {info['cpu_model']} x{info['cpu_count']}, load {info['loadavg_start'][0]:.1f} → "
        f"{info['loadavg_end'][0]:.1f}; seeds {s['seeds'][0]}–{s['seeds'][-1]}, {s['workers']} worker(s), 1 torch thread each"
        f"{', QUICK smoke run' if s['quick'] else ''}; wall time {report['wall_s']:.0f} s)",
        "",
        "| k | paths | masks | trials | planted mask on found front | target | planted on true front | planted mask scored "
        "| trials to find it (median / max) | planted acc. (median) | best acc. without planted paths (median) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for k, r in report["summary"].items():
        target = f"≥ {r['needed']}/{r['seeds']}: **{r['verdict']}**" if r["verdict"] else "(smoke run)"
        lines.append(
            f"| {k} | {r['paths']} | {r['masks_in_space']:,} | {r['trials']} | **{r['hits']}/{r['seeds']}** | {target} | "
            f"{r['planted_on_true_front']}/{r['seeds']} | {r['planted_scored']}/{r['seeds']} | "
            f"{_fmt(r['found_at_median'], 'g')} / {_fmt(r['found_at_max'])} | {r['planted_accuracy_median']:.3f} | "
            f"{r['best_without_accuracy_median']:.3f} |"
        )
    lines.append("")
    for k, r in report["summary"].items():
        curve = ", ".join(f"{n}: {h}/{r['seeds']}" for n, h in r["hits_within"].items())
        lines.append(f"k = {k}: planted mask on the front of the first n trials (n: seeds): {curve}.  ")
    lines += [
        "",
        "| k | seed | planted paths | hit | found at trial | on true front | planted acc. | best acc. without (mask) | alone | front size | prior rank of planted |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["runs"]:
        t = r["truth"]
        alone = ", ".join(f"{a:.3f}" for a in t["planted_path_alone_accuracy"].values())
        ranks = ", ".join(str(v) for v in r["prior_rank_of_planted"].values())
        near = " (superset on front)" if not r["hit"] and r["superset_on_front"] else ""
        lines.append(
            f"| {r['k']} | {r['seed']} | {', '.join(r['planted_paths'])} | {'yes' if r['hit'] else 'no' + near} | "
            f"{_fmt(r['found_at'])} | {'yes' if t['planted_on_true_front'] else 'no'} | {t['planted_accuracy']:.3f} | "
            f"{t['best_without']['accuracy']:.3f} ({', '.join(t['best_without']['active_paths'])}) | {alone} | "
            f"{len(r['front'])} | {ranks} of {r['paths']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", default="3,4,5", help="numbers of modalities (default 3,4,5)")
    parser.add_argument("--seeds", default=None, help="seeds, e.g. 0-9 or 0,3,7 (default 0-9; quick: 0-1)")
    parser.add_argument("--trials", default=str(DEFAULT_TRIALS),
                        help=f"COMPLETE trials per search: one number, or per k as 3=20,4=60,5=60 (default {DEFAULT_TRIALS})")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="processes, one torch thread each")
    parser.add_argument("--quick", action="store_true", help=f"smoke run: seeds {QUICK_SEEDS}, no verdict, writes bench_planted_quick.*")
    parser.add_argument("--fresh", action="store_true", help="retrain the supernets even if cached")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the text summary")
    parser.add_argument("--out", default=str(ROOT / "docs" / "results"), help="folder for the JSON and Markdown files")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    optuna_quiet()
    ks = parse_ints(args.k)
    seeds = parse_ints(args.seeds or (QUICK_SEEDS if args.quick else "0-9"))
    trials = parse_trials(args.trials, ks)
    say = (lambda m: print(m, file=sys.stderr, flush=True)) if args.json else (lambda m: print(m, flush=True))

    info = bench_search.machine_info()
    info["loadavg_start"] = list(os.getloadavg())
    say(f"# bench_planted  {info['date']}  {info['cpu_model']} x{info['cpu_count']}  torch {info['torch']}  "
        f"optuna {info['optuna']}  load {info['loadavg_start'][0]:.2f}")
    _, model_cfg, train_cfg = problem(ks[0], seeds[0])
    say(f"k {ks}, seeds {seeds[0]}..{seeds[-1]} ({len(seeds)}), trials {trials}; synthetic length {LENGTH}, samples {SAMPLES}, "
        f"2 planted paths per seed; supernet width {model_cfg.width}, {train_cfg.epochs} epochs ({train_cfg.warmup_epochs} warm-up), "
        f"batch {train_cfg.batch_size}, lr {train_cfg.lr}; {args.workers} worker(s)")

    started = time.perf_counter()
    jobs = [(k, seed, trials[k], args.fresh) for k in sorted(ks, reverse=True) for seed in seeds]  # largest k first
    rows: list[dict] = []

    def record(r: dict) -> None:
        rows.append(r)
        t = r["truth"]
        trained = "cached" if r["cached"] else f"trained {r['train_s']:.0f} s"
        near = " (superset on front)" if not r["hit"] and r["superset_on_front"] else ""
        say(f"  k={r['k']} seed={r['seed']} planted {', '.join(r['planted_paths'])}: {'HIT' if r['hit'] else 'miss' + near}; "
            f"found at trial {_fmt(r['found_at'])}/{r['trials']}; on true front {'yes' if t['planted_on_true_front'] else 'NO'}; "
            f"acc planted {t['planted_accuracy']:.3f} vs best without {t['best_without']['accuracy']:.3f}; "
            f"{trained}, search {r['search_s']:.1f} s  ({time.perf_counter() - started:.0f} s elapsed)")

    _common.run_jobs(jobs, _run, record, workers=args.workers, initializer=_init_worker)
    rows.sort(key=lambda r: (r["k"], r["seed"]))
    wall_s = time.perf_counter() - started
    info["loadavg_end"] = list(os.getloadavg())
    summary = summarize(rows, sorted(ks), args.quick)
    report = {
        "benchmark": "bench_planted",
        "settings": {"k": sorted(ks), "seeds": seeds, "trials": trials, "n_startup_trials": N_STARTUP_TRIALS,
                     "workers": args.workers, "quick": args.quick, "fresh": args.fresh},
        "problem": {str(k): problem_config(k, seeds[0]) | {"note": "data.seed, data.planted_paths and train.seed vary per seed"} for k in sorted(ks)},
        "machine": info,
        "target": f"planted mask on the found Pareto front in at least {TARGET_FRACTION:.0%} of seeds (9 of 10), each k",
        "summary": summary,
        "runs": rows,
        "wall_s": wall_s,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "bench_planted_quick" if args.quick else "bench_planted"
    _common.write_result(out, stem, report, markdown(report))

    if args.json:
        print(json.dumps(report, default=float))
        return 0
    print()
    print(f"{'k':>2} {'paths':>5} {'masks':>9} {'trials':>6} {'hits':>6} {'true front':>10} {'scored':>6} "
          f"{'found at (med/max)':>18} {'acc planted':>11} {'best without':>12}  target")
    for k, r in summary.items():
        verdict = f">= {r['needed']}/{r['seeds']}: {r['verdict']}" if r["verdict"] else "(quick: no verdict)"
        print(f"{k:>2} {r['paths']:>5} {r['masks_in_space']:>9,} {r['trials']:>6} {r['hits']:>3}/{r['seeds']:<2} "
              f"{r['planted_on_true_front']:>7}/{r['seeds']:<2} {r['planted_scored']:>3}/{r['seeds']:<2} "
              f"{_fmt(r['found_at_median'], 'g'):>11} / {_fmt(r['found_at_max']):<4} {r['planted_accuracy_median']:>11.3f} "
              f"{r['best_without_accuracy_median']:>12.3f}  {verdict}")
    for k, r in summary.items():
        curve = ", ".join(f"{n}: {h}/{r['seeds']}" for n, h in r["hits_within"].items())
        print(f"k={k}: planted mask on the front of the first n trials (n: seeds) {curve}")
        if r["inconsistent"]:
            print(f"k={k}: WARNING seeds {r['inconsistent']}: the hit disagrees with 'on the true front and scored' "
                  f"(trial values and exact cached scores differ)")
    print(f"wall time {wall_s:.0f} s; wrote {out / stem}.json and .md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
