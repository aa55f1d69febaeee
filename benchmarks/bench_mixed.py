"""Benchmark: a mask searched together with ordinary hyperparameters (a mixed search space).

Usage: OMP_NUM_THREADS=1 python benchmarks/bench_mixed.py [--seeds 10] [--trials 80] [--json]

The script a user would write: one ``{0, 1}`` categorical per path of a k = 3 mask (7 masks) and
three hyperparameters, a log-uniform learning rate ``lr`` in [1e-5, 1], an int ``depth`` in
[1, 8] and a string ``optimizer`` in {adam, rmsprop, sgd}; two objectives, maximize ``accuracy``
and minimize ``cost``. The toy objective (``toy``) was written before any run and is not tuned:

    accuracy = 0.5 + 0.15 [audio->text] + 0.08 [text->vision] + 0.02 [text->audio]
               - 0.08 (log10 lr + 2.5)^2                  (best lr about 3e-3; up to -0.5)
               + 0.12 (1 - exp(-(depth - 1) / 2))         (deeper is better, less and less)
               + {adam: 0.05, rmsprop: 0.02, sgd: 0}
               + noise (sd 0.01, fixed per configuration), clipped to [0, 1]
    cost     = depth * (1 + number of kept paths)

so the hyperparameters matter as much as the mask, and depth and paths trade accuracy for cost.
Samplers: ``MROSampler(paths, independent_sampler=TPESampler(seed), seed)`` (the default
settings otherwise: 10 start-up trials), Optuna's ``RandomSampler(seed)``, and Optuna's
``TPESampler(seed)`` over every parameter (a baseline that could beat MROSampler). Each study
runs ``--trials`` trials in memory; the figure is the hypervolume of the completed trials'
front, Optuna's ``compute_hypervolume`` on the loss vectors ``(-accuracy, cost)`` with the
reference point ``(0, 1.1 * 32)`` (accuracy 0, 1.1 x the largest cost). Paired Wilcoxon
signed-rank tests (SciPy) compare MROSampler with each baseline over the seeds.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import zlib

import numpy as np
import optuna
from optuna._hypervolume import compute_hypervolume
from optuna.study._multi_objective import _is_pareto_front
from optuna.trial import TrialState
from scipy.stats import wilcoxon

from search_service.sampler import MROSampler

PATHS = ["text->audio", "text->vision", "audio->text"]
REFERENCE = np.array([0.0, 1.1 * 8 * (1 + len(PATHS))])  # loss vectors (-accuracy, cost)
PATH_GAIN = {"audio->text": 0.15, "text->vision": 0.08, "text->audio": 0.02}
OPTIMIZER_GAIN = {"adam": 0.05, "rmsprop": 0.02, "sgd": 0.0}


def toy(trial: optuna.Trial) -> tuple[float, float]:
    mask = {p: trial.suggest_categorical(p, [0, 1]) for p in PATHS}
    lr = trial.suggest_float("lr", 1e-5, 1.0, log=True)
    depth = trial.suggest_int("depth", 1, 8)
    optimizer = trial.suggest_categorical("optimizer", ["adam", "rmsprop", "sgd"])
    key = f"{''.join(str(b) for b in mask.values())}|{lr:.6g}|{depth}|{optimizer}"
    noise = float(np.random.default_rng(zlib.crc32(key.encode())).normal(0.0, 0.01))
    accuracy = (
        0.5
        + sum(PATH_GAIN[p] * b for p, b in mask.items())
        - 0.08 * (math.log10(lr) + 2.5) ** 2
        + 0.12 * (1.0 - math.exp(-(depth - 1) / 2.0))
        + OPTIMIZER_GAIN[optimizer]
        + noise
    )
    return min(max(accuracy, 0.0), 1.0), float(depth * (1 + sum(mask.values())))


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    if name == "mro":
        return MROSampler(paths=PATHS, independent_sampler=optuna.samplers.TPESampler(seed=seed), seed=seed)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)


def hypervolume(study: optuna.Study) -> float:
    losses = np.array([[-t.values[0], t.values[1]] for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))])
    front = losses[_is_pareto_front(losses, assume_unique_lexsorted=False)]
    front = front[np.all(front < REFERENCE, axis=1)]
    return float(compute_hypervolume(front, REFERENCE)) if len(front) else 0.0


def run(name: str, seed: int, n_trials: int) -> dict:
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=make_sampler(name, seed))
    start = time.perf_counter()
    study.optimize(toy, n_trials=n_trials)
    seconds = time.perf_counter() - start
    states = [t.state for t in study.get_trials(deepcopy=False)]
    return {"sampler": name, "seed": seed, "hypervolume": hypervolume(study), "complete": states.count(TrialState.COMPLETE), "seconds": seconds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--trials", type=int, default=80)
    parser.add_argument("--samplers", default="mro,random,tpe")
    parser.add_argument("--json", action="store_true", help="print the runs as JSON too")
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    names = args.samplers.split(",")
    load = os.getloadavg()
    runs = [run(name, seed, args.trials) for seed in range(args.seeds) for name in names]
    hv = {name: np.array([r["hypervolume"] for r in runs if r["sampler"] == name]) for name in names}
    print(f"{args.trials} trials, seeds 0..{args.seeds - 1}, load average at start {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    for name in names:
        mine = [r for r in runs if r["sampler"] == name]
        complete = [r["complete"] for r in mine]
        print(
            f"{name:7s} hypervolume mean {hv[name].mean():.4f} sd {hv[name].std(ddof=1):.4f} median {np.median(hv[name]):.4f}"
            f"  (first 5 seeds mean {hv[name][:5].mean():.4f})  COMPLETE per run min {min(complete)} max {max(complete)}"
            f"  {np.mean([r['seconds'] for r in mine]):.1f} s per run"
        )
    if "mro" in names:
        for name in names:
            if name != "mro" and len(hv[name]) >= 2 and np.any(hv["mro"] != hv[name]):
                wins = int(np.sum(hv["mro"] > hv[name]))
                p = wilcoxon(hv["mro"], hv[name]).pvalue
                print(f"mro vs {name}: mro higher in {wins} of {len(hv[name])} seeds, Wilcoxon signed-rank p = {p:.4g}")
    if args.json:
        print(json.dumps(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
