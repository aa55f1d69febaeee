"""Benchmark: search efficiency of MROSampler against Optuna's own samplers on a known front.

Usage: python benchmarks/bench_search.py [--seeds 5] [--trials 400] [--samplers mro,tpe,nsga2,random]
                                         [--jobs 2] [--json]

The problem (4 modalities ``a b c d``, 12 paths, 4,095 masks) is synthetic data with planted
structure (``supernet.data.synthetic``: planted paths ``a->b`` and ``c->d``; 8 steps;
samples [6000, 1000, 1000]; binary classification). A small supernet (width 64, 15 epochs, 3 of
them warm-up) is trained on it with ``train_supernet`` and cached in ``runs/bench_search/`` (keyed
by the configuration's SHA-256, so reruns skip training). Torch runs with ``--threads`` threads
(default 1): on a shared 2-core machine more threads oversubscribe the cores and training runs
up to 6x slower.

Ground truth: ALL 4,095 masks are scored on the validation split from the path cache
(``build_cache`` + ``score_masks``, metric ``accuracy``) and priced with ``FlopTable.mflops_many``.
The true Pareto front (maximize accuracy, minimize MFLOPs) and its hypervolume follow. The
hypervolume is Optuna's own (``optuna._hypervolume.compute_hypervolume``) on the loss vectors
``(-accuracy, mflops)`` with the fixed reference point

    r = (-(a_min - 0.01 * (a_max - a_min)),  f_max + 0.01 * (f_max - f_min))

where ``a_min, a_max`` and ``f_min, f_max`` are the extreme accuracy and MFLOPs over all 4,095
masks: just beyond the worst values, so every mask, the extremes included, adds volume.

Each study's objective looks the proposed mask up in that table. Params: one
``suggest_categorical(path, [0, 1])`` per path, in mask order. An all-zero mask (which Optuna's
samplers can propose; MROSampler never does) counts as a trial and returns the worst values
``(0 accuracy, max MFLOPs)``: it lies outside the reference box, adds no volume, and the trial
counts against the sampler's budget. Samplers: MROSampler (given the paths and the trained
prior's keep probabilities ``prior.path_probs()``, default settings otherwise, budget = the
number of trials), ``mro-uniform`` (the same without the pretrained prior: an ablation), and
Optuna's TPESampler, NSGAIISampler and RandomSampler with their defaults;
5 seeds each, in-memory storage. After 20, 40, 60, 100, 200 and 400 trials the fraction of the
true hypervolume reached by the trials so far is recorded; the median over seeds (and min/max)
is printed. Target: MROSampler >= 99 % of the true hypervolume within 60 trials (median of 5).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402
import numpy as np  # noqa: E402
import optuna  # noqa: E402
import torch  # noqa: E402
from optuna._hypervolume import compute_hypervolume  # noqa: E402
from optuna.study._multi_objective import _is_pareto_front  # noqa: E402

from search_service.sampler import MROSampler  # noqa: E402
from supernet.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from supernet.config import DataConfig, ModelConfig, TrainConfig, config_sha256  # noqa: E402
from supernet.data import load_data  # noqa: E402
from supernet.flops import flop_table  # noqa: E402
from supernet.paths import all_masks  # noqa: E402
from supernet.scoring import build_cache, score_masks  # noqa: E402
from supernet.train import train_supernet  # noqa: E402

CACHE_DIR = ROOT / "runs" / "bench_search"
CHECKPOINTS = (20, 40, 60, 100, 200, 400)
SAMPLERS = ("mro", "mro-uniform", "tpe", "nsga2", "random")
TARGET_FRACTION = 0.99
TARGET_TRIALS = 60


def problem() -> tuple[DataConfig, ModelConfig, TrainConfig]:
    data = DataConfig(
        source="synthetic",
        modalities=["a", "b", "c", "d"],
        dims=[16, 24, 24, 16],  # required_dims: [9, 8, 9, 8]; the rest is noise
        length=8,
        samples=[6000, 1000, 1000],
        planted_paths=["a->b", "c->d"],
        task="classification",
        noise=0.1,
        seed=0,
    )
    model = ModelConfig(width=64, heads=4, layers_per_path=1, dropout=0.0, head="linear")
    train = TrainConfig(epochs=15, warmup_epochs=3, batch_size=64, lr=2e-3, masks_per_step=2, rank_loss="l1", seed=0)
    return data, model, train


def machine_info() -> dict:
    return _common.machine_info(optuna=optuna.__version__)


def problem_config() -> dict:
    data_cfg, model_cfg, train_cfg = problem()
    return {"bench": "bench_search", "data": asdict(data_cfg), "model": asdict(model_cfg), "train": asdict(train_cfg)}


def checkpoint_path() -> Path:
    """Where the problem's trained supernet is cached (named by its configuration's SHA-256)."""
    return CACHE_DIR / f"supernet-{config_sha256(problem_config())[:12]}.pt"


def trained_problem(log=print) -> dict:
    """Train (or load the cached) supernet; score every mask. Returns the lookup table."""
    data_cfg, model_cfg, train_cfg = problem()
    config = problem_config()
    sha = config_sha256(config)
    path = checkpoint_path()
    data = load_data(data_cfg)
    train_s = 0.0
    if path.is_file():
        ckpt = load_checkpoint(path, expected_sha256=sha)
        log(f"supernet: cached checkpoint {path.relative_to(ROOT)}")
    else:
        started = time.perf_counter()
        result = train_supernet(data, model_cfg, train_cfg, progress=False, log=lambda m: log("  " + m))
        train_s = time.perf_counter() - started
        save_checkpoint(path, result.model, result.prior, config, result.history)
        ckpt = load_checkpoint(path, expected_sha256=sha)
        log(f"supernet: trained in {train_s:.1f} s -> {path.relative_to(ROOT)}")
    model = ckpt.model.eval()
    started = time.perf_counter()
    cache = build_cache(model, data.splits["valid"])
    masks = all_masks(model.num_paths)
    accuracy = score_masks(model, cache, masks, "accuracy").numpy()
    mflops = flop_table(model).mflops_many(masks).numpy()
    score_s = time.perf_counter() - started
    return {
        "paths": list(model.path_names),
        "planted": list(data.informative_paths),
        "prior": [float(q) for q in ckpt.prior.path_probs().detach()],
        "masks": masks.numpy().astype(np.int8),
        "accuracy": accuracy,
        "mflops": mflops,
        "train_s": train_s,
        "score_all_s": score_s,
    }


def reference_point(acc: np.ndarray, mflops: np.ndarray) -> np.ndarray:
    da, df = acc.max() - acc.min(), mflops.max() - mflops.min()
    return np.array([-(acc.min() - 0.01 * da), mflops.max() + 0.01 * df])


def hypervolume(loss: np.ndarray, ref: np.ndarray) -> float:
    """Optuna's hypervolume of the loss vectors ``(-accuracy, mflops)`` dominating ``ref``."""
    if len(loss) == 0:
        return 0.0
    inside = loss[(loss < ref).all(axis=1)]
    if len(inside) == 0:
        return 0.0
    front = inside[_is_pareto_front(inside, assume_unique_lexsorted=False)]
    return float(compute_hypervolume(front, ref, assume_pareto=True))


def make_sampler(name: str, seed: int, table: dict, trials: int):
    if name == "mro":
        return MROSampler(paths=table["paths"], prior_keep_probs=table["prior"], budget=trials, seed=seed)
    if name == "mro-uniform":  # ablation: no pretrained prior (uniform keep probabilities)
        return MROSampler(paths=table["paths"], budget=trials, seed=seed)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ValueError(name)


def run_study(name: str, seed: int, table: dict, trials: int) -> dict:
    """One study; returns the hypervolume fraction at every checkpoint and the time taken."""
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    paths = table["paths"]
    lookup = {tuple(int(b) for b in m): (float(a), float(f)) for m, a, f in zip(table["masks"], table["accuracy"], table["mflops"])}
    worst = (0.0, float(table["mflops"].max()))
    ref, true_hv = table["ref"], table["true_hv"]

    def objective(trial: optuna.Trial) -> tuple[float, float]:
        mask = tuple(int(trial.suggest_categorical(p, [0, 1])) for p in paths)
        return lookup.get(mask, worst)

    study = optuna.create_study(directions=["maximize", "minimize"], sampler=make_sampler(name, seed, table, trials))
    started = time.perf_counter()
    study.optimize(objective, n_trials=trials)
    elapsed = time.perf_counter() - started
    values = np.array([t.values for t in study.trials], dtype=float)
    loss = np.stack([-values[:, 0], values[:, 1]], axis=1)
    fractions = {n: hypervolume(loss[:n], ref) / true_hv for n in CHECKPOINTS if n <= trials}
    masks = [tuple(int(t.params[p]) for p in paths) for t in study.trials]
    first99 = next((n for n in range(1, trials + 1) if hypervolume(loss[:n], ref) / true_hv >= TARGET_FRACTION), None)
    return {
        "sampler": name,
        "seed": seed,
        "fractions": fractions,
        "first_99": first99,
        "distinct_masks": len(set(masks)),
        "empty_masks": sum(1 for m in masks if not any(m)),
        "seconds": elapsed,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--trials", type=int, default=400)
    parser.add_argument("--samplers", default=",".join(SAMPLERS))
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--json", action="store_true", help="print one JSON object at the end")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    samplers = [s.strip() for s in args.samplers.split(",") if s.strip()]
    info = machine_info()
    print(f"# bench_search  {info['date']}  {info['cpu_model']} x{info['cpu_count']}  torch {info['torch']}  optuna {info['optuna']}")

    table = trained_problem()
    acc, mflops = table["accuracy"], table["mflops"]
    loss_all = np.stack([-acc, mflops], axis=1)
    ref = reference_point(acc, mflops)
    true_hv = hypervolume(loss_all, ref)
    table["ref"], table["true_hv"] = ref, true_hv
    front = _is_pareto_front(loss_all, assume_unique_lexsorted=False)
    paths = table["paths"]
    print(f"scored all {len(acc)} masks in {table['score_all_s']:.2f} s; accuracy {acc.min():.4f}..{acc.max():.4f}, "
          f"MFLOPs {mflops.min():.3f}..{mflops.max():.3f}")
    print(f"planted paths: {', '.join(table['planted'])}")
    print("prior keep probabilities: " + ", ".join(f"{p} {q:.2f}" for p, q in zip(paths, table["prior"])))
    print(f"true Pareto front: {int(front.sum())} masks; reference point (-acc, MFLOPs) = ({ref[0]:.4f}, {ref[1]:.4f}); "
          f"true hypervolume {true_hv:.6f}")
    for i in np.flatnonzero(front)[np.argsort(mflops[front])]:
        active = [p for p, b in zip(paths, table["masks"][i]) if b]
        print(f"  {''.join(map(str, table['masks'][i]))}  acc {acc[i]:.4f}  {mflops[i]:7.3f} MFLOPs  {', '.join(active)}")

    jobs = [(s, seed) for s in samplers for seed in range(args.seeds)]
    results: list[dict] = []
    started = time.perf_counter()
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs) as pool:
            futures = [pool.submit(run_study, s, seed, table, args.trials) for s, seed in jobs]
            results = [f.result() for f in futures]
    else:
        results = [run_study(s, seed, table, args.trials) for s, seed in jobs]
    total_s = time.perf_counter() - started

    points = [n for n in CHECKPOINTS if n <= args.trials]
    print(f"\nfraction of the true hypervolume reached (median over {args.seeds} seeds [min, max]); {total_s:.0f} s in all")
    header = f"{'sampler':<12}" + "".join(f"{n:>22}" for n in points) + f"{'first >=99%':>14}{'s/study':>9}"
    print(header)
    summary = {}
    for s in samplers:
        rows = [r for r in results if r["sampler"] == s]
        cells, med = [], {}
        for n in points:
            xs = [r["fractions"][n] for r in rows]
            med[n] = statistics.median(xs)
            cells.append(f"{100 * med[n]:7.2f}% [{100 * min(xs):5.1f},{100 * max(xs):5.1f}]")
        firsts = [r["first_99"] if r["first_99"] is not None else float("inf") for r in rows]
        first = statistics.median(firsts)
        secs = statistics.median(r["seconds"] for r in rows)
        print(f"{s:<12}" + "".join(f"{c:>22}" for c in cells) + f"{('>' + str(args.trials)) if first == float('inf') else int(first):>14}{secs:9.1f}")
        summary[s] = {"median": {str(n): med[n] for n in points}, "first_99_median": None if first == float("inf") else first,
                      "per_seed": rows}
    if "mro" in summary and TARGET_TRIALS in points:
        got = summary["mro"]["median"][str(TARGET_TRIALS)]
        verdict = "MET" if got >= TARGET_FRACTION else "NOT MET"
        print(f"\ntarget: MROSampler >= {100 * TARGET_FRACTION:.0f}% of the true hypervolume within {TARGET_TRIALS} trials "
              f"(median of {args.seeds}): {100 * got:.2f}% -> {verdict}")
        for s in samplers:
            if s != "mro" and s in summary:
                ratio = got / summary[s]["median"][str(TARGET_TRIALS)]
                print(f"  MRO / {s} at {TARGET_TRIALS} trials: {ratio:.3f}")
    if args.json:
        print(json.dumps({"machine": info, "true_hv": true_hv, "reference_point": ref.tolist(), "front_size": int(front.sum()),
                          "summary": summary}, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
