"""Benchmark: ranking fidelity within equal-size groups, corrected for stand-alone noise.

Usage: python benchmarks/bench_within.py --dataset family|mfeat [--seed 0] [--sizes 3,6]
                                         [--per-size 10] [--epochs E] [--workers 1] [--quick]
                                         [--out DIR] [--json]

Issue 17, item 5. Across sizes, ranking by the number of paths alone orders most pairs of masks
(bench_fidelity: 89.6 % of mfeat's reliable pairs); what a search needs is the order *within* a
size. For one seed and each size in ``--sizes``, ``--per-size`` distinct masks of that many paths
(uniform, deterministic from the seed) are

1. scored by the supernet with inherited weights (``bench_fidelity.supernet_scores``: the study's
   metric and the task loss on the validation split, exact, from the path cache);
2. trained stand-alone twice (``bench_fidelity.job_subnet``: ``train_subnet`` with the seed and
   with seed + 1000) and scored on the same split; the reference is the mean of the two runs;
3. ranked by two trivial predictors: the **number of paths** (constant within a size: it carries
   no information there, tau undefined, and is reported on the pooled masks) and the **additive
   single-path predictor**: the sum over the mask's paths of each path's single-path supernet
   score's gain over the worst single path (the one-path masks scored the same way; within a size
   the same order as the plain sum).

Per size group: Kendall tau-b (``scipy.stats.kendalltau``) of each predictor against the mean of
the two stand-alone runs; the split-half reliability ``r`` = tau between the two runs, stepped up
to the reliability of their mean by Spearman-Brown, ``r2 = 2r / (1 + r)``; and the **corrected
tau** = tau / sqrt(r2) (Spearman's correction for attenuation, the supernet's own scores taken as
noise-free since they are exact; the correction is derived for Pearson correlations, applied here
to tau as an approximation, and undefined when ``r <= 0``). Accuracy and loss are both reported:
on mfeat's 300 validation samples accuracy ties often.

Datasets: ``family`` is the study ``studies/family.toml`` (issue 17's synthetic family, data seed 0)
and ``mfeat`` the study ``studies/mfeat.toml``, each trained as the service trains it; ``--epochs`` sets the epochs
of the supernet and of every stand-alone training (cost: the output says what was cut). Stand-alone
results are cached as bench_fidelity caches them (``runs/bench_fidelity/...standalone.jsonl``).
Target (issue 17): corrected tau >= 0.6 and at least 0.1 above the additive predictor's.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402
import bench_fidelity  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy.stats import kendalltau  # noqa: E402

from search_service.evaluator import objective_metric  # noqa: E402
from search_service.study_file import Study  # noqa: E402
from supernet.paths import format_mask  # noqa: E402

TARGET_TAU, TARGET_MARGIN = 0.6, 0.1
QUICK = {"per_size": 4, "epochs": 1, "sizes": "2,3"}


def masks_of_size(P: int, size: int, n: int, seed: int) -> list[tuple[int, ...]]:
    """``n`` distinct masks of ``size`` paths, uniform, deterministic from the seed."""
    rng = random.Random(f"bench_within:{P}:{size}:{n}:{seed}")
    chosen: set[tuple[int, ...]] = set()
    while len(chosen) < min(n, math.comb(P, size)):
        on = set(rng.sample(range(P), size))
        chosen.add(tuple(int(p in on) for p in range(P)))
    return sorted(chosen, reverse=True)


def tau(x, y) -> float:
    """Kendall tau-b; NaN when either side is constant (or fewer than 2 items)."""
    return bench_fidelity._corr(kendalltau, x, y)


def spearman_brown(r: float, k: int = 2) -> float:
    """Reliability of the mean of ``k`` parallel measurements from the reliability ``r`` of one."""
    return k * r / (1 + (k - 1) * r)


def corrected(t: float, r_half: float) -> float:
    """``t / sqrt(spearman_brown(r_half))``: t against the two-run mean, corrected for the mean's
    unreliability (attenuation); NaN when the runs do not agree at all (``r_half <= 0``)."""
    if not (r_half > 0) or math.isnan(t):
        return float("nan")
    return t / math.sqrt(spearman_brown(r_half))


def group(sup: list[float], additive: list[float], first: list[float], second: list[float], higher_better: bool) -> dict:
    """One size group's figures. ``sup``, ``first`` and ``second`` are raw scores (``higher_better``
    False for a loss, whose order is reversed); ``additive`` is oriented already, higher = better."""
    sign = 1.0 if higher_better else -1.0
    mean = [sign * (a + b) / 2 for a, b in zip(first, second)]
    r = tau(first, second)
    t_sup = tau([sign * s for s in sup], mean)
    t_add = tau(additive, mean)
    return {"masks": len(sup), "reliability_half": r, "reliability_mean": spearman_brown(r) if r > -1 else float("nan"),
            "tau_supernet": t_sup, "tau_additive": t_add,
            "tau_supernet_corrected": corrected(t_sup, r), "tau_additive_corrected": corrected(t_add, r)}


def study_for(dataset: str, seed: int, epochs: int | None, quick: bool, train_samples: int = 0) -> Study:
    """The study ``studies/DATASET.toml`` with the training seed (and epochs, and for synthetic
    data the number of training samples), cached under runs/bench_fidelity/
    (``bench_fidelity.prepare_study``)."""
    study = bench_fidelity.prepare_study(dataset, seed, epochs, quick)
    if train_samples and study.data.source == "synthetic":
        study.data.samples = [train_samples, *study.data.samples[1:]]
        study.search.run_dir = str(bench_fidelity.CACHE_DIR / f"{study.name}-seed{seed}-{study.sha256[:12]}")
    return study


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=("family", "mfeat"), required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sizes", default="3,6")
    parser.add_argument("--per-size", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=None, help="supernet and stand-alone epochs (default: the study's)")
    parser.add_argument("--train-samples", type=int, default=0, help="synthetic data: training samples (0: the study's)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default="")
    parser.add_argument("--report-only", action="store_true", help="train no mask: report the masks whose two stand-alone runs are done")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.per_size, args.epochs, args.sizes = QUICK["per_size"], QUICK["epochs"], QUICK["sizes"]
    try:
        sizes = [int(s) for s in args.sizes.split(",")]
    except ValueError:
        parser.error(f"--sizes {args.sizes!r}: use e.g. 3,6")
    torch.set_num_threads(1)
    info = _common.machine_info()
    started = time.perf_counter()
    study = study_for(args.dataset, args.seed, args.epochs, args.quick, args.train_samples)
    metric = objective_metric(study)
    data = bench_fidelity._study_data(study)
    P = len(data.modalities) * (len(data.modalities) - 1)
    if any(not 1 <= s <= P for s in sizes):
        parser.error(f"--sizes must lie in 1..{P}")
    masks = {s: masks_of_size(P, s, args.per_size, args.seed) for s in sizes}
    singles = [tuple(int(q == p) for q in range(P)) for p in range(P)]
    every = [m for s in sizes for m in masks[s]]
    runs = {args.seed: study, args.seed + bench_fidelity.CEILING_SEED_OFFSET: bench_fidelity.reseeded(study, args.seed + bench_fidelity.CEILING_SEED_OFFSET)}
    standalone = {t: bench_fidelity.load_standalone(bench_fidelity.standalone_log(s)) for t, s in runs.items()}
    # interleaved, so that a run cut short has both stand-alone runs of as many masks as possible
    order = [m for pair in zip(*(masks[s] for s in sizes)) for m in pair] + [m for s in sizes for m in masks[s][min(map(len, masks.values())):]]
    jobs = [("supernet", study)] + [("subnet", s, m, metric) for m in order for t, s in runs.items()
                                    if format_mask(m) not in standalone[t]]
    if args.report_only:
        jobs = [("supernet", study)]
    print(f"# bench_within {args.dataset} seed {args.seed}: {P} paths, sizes {sizes} x {args.per_size} masks, "
          f"epochs {study.train.epochs}, {len(jobs) - 1} stand-alone trainings to run; load {info['loadavg_start'][0]:.2f}", flush=True)

    def record(row: dict) -> None:
        if row["kind"] != "subnet":
            return
        standalone[row["seed"]][row["mask"]] = row
        log = bench_fidelity.standalone_log(runs[row["seed"]])
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"  seed {row['seed']} {row['paths']} paths: {row['score']:.4f} in {row['seconds']:.0f} s "
              f"({time.perf_counter() - started:.0f} s)", flush=True)

    _common.run_jobs(jobs, bench_fidelity._run, record, workers=args.workers, initializer=bench_fidelity._init_worker)
    sup = bench_fidelity.supernet_scores(study, every + singles, metric)
    score = dict(zip(map(format_mask, every + singles), zip(sup["scores"], sup["losses"])))
    single_score = [score[format_mask(m)][0] for m in singles]
    single_loss = [score[format_mask(m)][1] for m in singles]
    first, second = (standalone[t] for t in runs)
    both = {format_mask(m) for m in every if format_mask(m) in first and format_mask(m) in second}
    if len(both) < len(every):  # --report-only or a run cut short: the masks with both runs
        masks = {s: [m for m in masks[s] if format_mask(m) in both] for s in sizes}
        every = [m for s in sizes for m in masks[s]]
    result = {"dataset": args.dataset, "seed": args.seed, "masks_per_size": {str(s): len(masks[s]) for s in sizes}, "epochs": study.train.epochs, "train_samples": len(data.splits["train"]), "metric": metric, "paths": P,
              "valid_samples": len(data.splits["valid"]), "per_size": args.per_size, "groups": {}, "machine": info}
    for s in [*sizes, "pooled"]:
        group_masks = masks[s] if s != "pooled" else every
        keys = list(map(format_mask, group_masks))
        entry = {}
        for kind, i, col, higher in (("metric", 0, "score", True), ("loss", 1, "loss", False)):
            sup_s = [score[k][i] for k in keys]
            table = single_score if i == 0 else single_loss
            gain = [(x - min(table)) if higher else (max(table) - x) for x in table]  # over the worst single path
            additive = [sum(gain[p] for p in range(P) if m[p]) for m in group_masks]
            entry[kind] = group(sup_s, additive, [first[k][col] for k in keys], [second[k][col] for k in keys], higher)
            mean = [(first[k][col] + second[k][col]) / 2 * (1 if higher else -1) for k in keys]
            entry[kind]["tau_paths"] = tau([sum(m) for m in group_masks], mean)
        result["groups"][str(s)] = entry
    result["standalone_seconds_mean"] = float(np.mean([first[k]["seconds"] for k in map(format_mask, every)]))
    result["wall_s"] = time.perf_counter() - started
    info["loadavg_end"] = list(os.getloadavg())
    md = markdown(result)
    print(md)
    if args.out:
        _common.write_result(Path(args.out), f"bench_within_{args.dataset}" + ("_quick" if args.quick else ""), result, md)
    if args.json:
        print(json.dumps(result, default=float))
    return 0


def _f(x: float) -> str:
    return "–" if x is None or math.isnan(x) else f"{x:.3f}"


def markdown(r: dict) -> str:
    m = r["machine"]
    lines = [f"**bench_within, {r['dataset']}** (seed {r['seed']}, {r['epochs']} epochs on {r['train_samples']} training samples, {r['per_size']} masks per size asked, "
             f"{', '.join(f'{n} of {s} paths' for s, n in r['masks_per_size'].items())} with both stand-alone runs done, "
             f"validation {r['valid_samples']} samples; {m['date']}, load {m['loadavg_start'][0]:.1f} → {m['loadavg_end'][0]:.1f}; "
             f"stand-alone {r['standalone_seconds_mean']:.0f} s per training; {r['wall_s'] / 60:.0f} min)", "",
             "| group | on | split-half tau | reliability of the mean (S-B) | tau supernet | corrected | tau additive | corrected | tau #paths | target |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, entry in r["groups"].items():
        for kind, g in entry.items():
            met = "–"
            if name != "pooled":
                c, a = g["tau_supernet_corrected"], g["tau_additive_corrected"]
                ok = not math.isnan(c) and c >= TARGET_TAU and (math.isnan(a) or c >= a + TARGET_MARGIN)
                met = "**MET**" if ok else "**NOT MET**"
            on = r["metric"] if kind == "metric" else "loss"
            label = f"{name} paths" if name != "pooled" else "pooled"
            lines.append(f"| {label} | {on} | {_f(g['reliability_half'])} | {_f(g['reliability_mean'])} | {_f(g['tau_supernet'])} | "
                         f"{_f(g['tau_supernet_corrected'])} | {_f(g['tau_additive'])} | {_f(g['tau_additive_corrected'])} | "
                         f"{_f(g['tau_paths'])} | {met} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
