"""Benchmark: ranking fidelity of the supernet -- inherited scores versus stand-alone training.

Usage: python benchmarks/bench_fidelity.py --study demo|mfeat [--seeds 0,1,2] [--masks N]
                                           [--epochs E] [--train KEY=VALUE ...] [--tag NAME]
                                           [--ceiling SEEDS] [--workers W] [--quick] [--json]
                                           [--out DIR]

A weight-sharing supernet is only useful for search if the order it gives the subnets (their
scores with the *inherited* shared weights) is the order they would have if each were trained on
its own. For one study (``studies/NAME.toml``) and each seed:

1. the supernet is trained with that seed (``search_service.evaluator.train_study``: the study's
   [data], [model] and [train], seed replaced; written as ``runs/bench_fidelity/NAME-seedS-<config
   sha>/checkpoints/<identity>.pt``, the run directory's latest training, so reruns skip it);
2. the masks are scored with the supernet's inherited weights on the validation split
   (``build_cache`` + ``score_masks``: exact, the study's metric, accuracy for demo and mfeat);
3. every mask is trained stand-alone from scratch (``supernet.train.train_subnet``: the same model
   class and initialisation, the same epochs, batch size, learning rate, weight decay, data and
   seed; every step trains that one subnet) and scored on the same split with a masked forward
   pass (results appended to ``runs/bench_fidelity/NAME-seedS-standalone-<sha>/standalone.jsonl``,
   keyed by what stand-alone training depends on: [data], [model] and the [train] epochs, batch
   size, lr, weight decay and seed; an interrupted run resumes where it stopped, and a run that
   changes only the supernet's training (``--train``) reuses them);
4. Kendall's tau (tau-b, ties handled) and Spearman's rho (``scipy.stats``) between the two lists of
   scores. Also reported: tau on the validation loss (fewer ties than accuracy), tau of the
   trivial predictor "number of active paths" against stand-alone accuracy (what a ranking that
   only knows the size would get), and the top-1 regret (best stand-alone accuracy minus the
   stand-alone accuracy of the supernet's top mask).

Masks: demo (k = 3, 6 paths): all 63. mfeat (k = 6, 30 paths): ``--masks`` (default 30) masks
stratified by the number of active paths (sizes spread evenly over 1..30, distinct masks drawn
uniformly within a size), deterministic from the seed, so each seed ranks its own sample.

**Noise ceiling** (``--ceiling 0``): the masks of the given seeds are trained stand-alone a second
time with another seed (seed + 1000) and tau between the two stand-alone rankings is reported: how
well stand-alone training agrees with itself. Where the masks' scores differ by a few validation
samples, this ceiling is low. Also reported: tau of the supernet against the second run and
against the mean of both runs (cross-seed, like the ceiling: the supernet and the first run share
their seed, hence their initial weights and batch order), and the share of the pairs both runs
order alike (strictly) that the supernet orders that way too.

**Supernet training variants** (``--train KEY=VALUE``, repeatable, TOML values): override the
study's [train] for the supernet only, e.g. ``--train per_sample_masks=true --train distill=0.5``;
``--tag NAME`` names the result files ``bench_fidelity_NAME_TAG``, so a variant sits beside the
baseline ("before and after") with the same stand-alone results.

**Reusing stand-alone results** (``--standalone-from FILE.json``): the per-mask stand-alone scores
of an earlier report (``bench_fidelity_NAME*.json``, its ceiling runs included) are copied into the
stand-alone caches when they were trained exactly as this run would train them (same [data],
[model] and stand-alone budget). Before copying, the cheapest imported mask of every seed is
trained again here and must reproduce the recorded score and loss (to 1e-6), or nothing is
copied: a supernet variant is then measured against the same stand-alone results for the price of
its supernet trainings alone. Imported rows carry ``imported_from``.

Target: Kendall tau >= 0.6 (mean over seeds). For reference, uniform weight sharing gave tau ~ 0.2
in Yu et al., "Evaluating the search phase of neural architecture search" (ICLR 2020).

Stand-alone trainings run in ``--workers`` processes (spawned, one torch thread each); the
supernets are trained in the same pool. Writes ``DIR/bench_fidelity_NAME[_TAG].json`` (every per-mask
score) and ``DIR/bench_fidelity_NAME[_TAG].md`` (a Markdown table fragment); ``--quick`` writes
``..._quick`` files instead and never overwrites a real result.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402
import numpy as np  # noqa: E402
import scipy  # noqa: E402
import torch  # noqa: E402
from _common import check_tag, parse_overrides  # noqa: E402
from scipy.stats import kendalltau, spearmanr  # noqa: E402

from search_service.evaluator import load_study_data, objective_metric, train_study  # noqa: E402
from search_service.study_file import Study, load_study  # noqa: E402
from supernet.config import config_sha256  # noqa: E402
from supernet.metrics import batch_metric  # noqa: E402
from supernet.paths import all_masks, format_mask, num_paths  # noqa: E402
from supernet.scoring import batches, build_cache, predict_masks, score_masks  # noqa: E402
from supernet.train import task_loss, train_subnet  # noqa: E402

CACHE_DIR = ROOT / "runs" / "bench_fidelity"
TARGET_TAU = 0.6
REFERENCE_TAU = 0.2  # uniform weight sharing, Yu et al. (ICLR 2020)
DEFAULT_MASKS = 30  # mfeat: at least 30, stratified by size
CEILING_SEED_OFFSET = 1000  # the noise ceiling's second stand-alone training uses seed + this
# what stand-alone training (train_subnet) depends on, besides [data] and [model]
STANDALONE_TRAIN_KEYS = ("epochs", "batch_size", "lr", "weight_decay", "seed")
# --quick: a smoke run; synthetic data shrinks to ``samples``, a split data set (mfeat) trains on
# about a third of its samples (``test_fraction`` raised: the test split is never used here)
QUICK = {"seeds": "0,1", "epochs": 1, "masks": 6, "samples": [1000, 300, 300], "test_fraction": 0.5}


# ----------------------------------------------------------------------------- setup


def machine_info() -> dict:
    return _common.machine_info(scipy=scipy.__version__)


def prepare_study(name: str, seed: int, epochs: int | None, quick: bool, overrides: dict | None = None) -> Study:
    """The study with the benchmark's seed (and epochs, and [train] overrides for the supernet) and
    its own cache directory."""
    study = load_study(name)
    if overrides:
        study.train = replace(study.train, **overrides)
    if quick and study.data.source == "synthetic":
        study.data.samples = list(QUICK["samples"])
    elif quick:
        study.data.test_fraction = max(study.data.test_fraction, QUICK["test_fraction"])
    if epochs is not None:
        study.train.epochs = epochs
        study.train.warmup_epochs = min(study.train.warmup_epochs, epochs)
    study.train.seed = seed
    study.train.device = "cpu"
    # the search settings are not part of the supernet's configuration (nor of its SHA-256)
    study.search.run_dir = str(CACHE_DIR / f"{study.name}-seed{seed}-{study.sha256[:12]}")
    return study


def standalone_log(study: Study) -> Path:
    """Where the stand-alone results for this study's data, model and training budget are kept."""
    key = {"data": asdict(study.data), "model": asdict(study.model),
           "train": {k: getattr(study.train, k) for k in STANDALONE_TRAIN_KEYS}}
    sha = config_sha256(key)[:12]
    return CACHE_DIR / f"{study.name}-seed{study.train.seed}-standalone-{sha}" / "standalone.jsonl"


def import_standalone(path: Path, trainings: dict[int, Study], metric: str, say) -> int:
    """Copy the stand-alone results of an earlier report into the caches of ``trainings`` (by
    training seed) after re-training one mask per seed here (see the module docstring); returns
    the number of rows copied. Exits with a one-line error when the report does not fit."""
    try:
        report = json.loads(Path(path).read_text())
        config, rows = report["study_config"], report["per_seed"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SystemExit(f"error: --standalone-from {path}: not a bench_fidelity report ({exc})") from None
    first = next(iter(trainings.values()))

    def recorded(section: str, current) -> str:  # a field added since that report had its default
        defaults = asdict(type(current)())
        return config_sha256(defaults | {k: v for k, v in config.get(section, {}).items() if k in defaults})

    same = (recorded("data", first.data) == config_sha256(asdict(first.data))
            and recorded("model", first.model) == config_sha256(asdict(first.model))
            and all(config.get("train", {}).get(k) == getattr(first.train, k) for k in STANDALONE_TRAIN_KEYS if k != "seed"))
    if not same:
        raise SystemExit(f"error: --standalone-from {path}: trained with other [data], [model] or stand-alone budget "
                         "than this run; run without it")
    found: dict[int, dict[str, dict]] = {}
    for row in rows:
        for entry in row.get("per_mask", []):
            for tseed, score, loss in ((row["seed"], "standalone", "standalone_loss"),
                                       (row["seed"] + CEILING_SEED_OFFSET, "standalone_again", "standalone_again_loss")):
                if tseed in trainings and score in entry:
                    found.setdefault(tseed, {})[entry["mask"]] = {
                        "kind": "subnet", "seed": tseed, "mask": entry["mask"], "paths": entry["paths"],
                        "score": entry[score], "loss": entry[loss], "seconds": entry.get("standalone_seconds", 0.0),
                        "imported_from": _rel(Path(path))}
    for tseed, by_mask in found.items():  # reproduce the cheapest mask of each training seed here
        check = min(by_mask.values(), key=lambda r: (r["paths"], r["mask"]))
        mask = tuple(int(c) for c in check["mask"])
        again = job_subnet(trainings[tseed], mask, metric)
        if abs(again["score"] - check["score"]) > 1e-6 or abs(again["loss"] - check["loss"]) > 1e-6:
            raise SystemExit(f"error: --standalone-from {path}: seed {tseed} mask {check['mask']} trains to "
                             f"{again['score']:.6f} (loss {again['loss']:.6f}) here, {check['score']:.6f} "
                             f"({check['loss']:.6f}) there; the results do not transfer, run without it")
        say(f"  --standalone-from: seed {tseed} mask {check['mask']} reproduced here "
            f"({metric} {again['score']:.6f}, loss {again['loss']:.6f})")
    copied = 0
    for tseed, by_mask in found.items():
        log_path = standalone_log(trainings[tseed])
        have = load_standalone(log_path)
        new = [r for m, r in by_mask.items() if m not in have]
        if new:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            with log_path.open("a") as f:
                f.writelines(json.dumps(r) + "\n" for r in new)
        copied += len(new)
    return copied


def _rel(path: Path) -> str:
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def reseeded(study: Study, seed: int) -> Study:
    """The study with another training seed (for the noise ceiling's second stand-alone run)."""
    return replace(study, train=replace(study.train, seed=seed))


def sample_masks(n_paths: int, n: int, seed: int) -> list[tuple[int, ...]]:
    """``n`` distinct masks stratified by the number of active paths, deterministic from ``seed``;
    every mask when ``n`` reaches their number. Sorted by size, then bits."""
    total = 2**n_paths - 1
    if n >= total:
        return [tuple(int(b) for b in m) for m in all_masks(n_paths).tolist()]
    sizes = range(1, n_paths + 1)
    capacity = {k: math.comb(n_paths, k) for k in sizes}
    count = dict.fromkeys(sizes, 0)
    for i in range(n):  # spread evenly over the sizes 1..P
        count[1 + (i * n_paths) // n] += 1
    spare = n
    for k in sizes:
        count[k] = min(count[k], capacity[k])
        spare -= count[k]
    middle_first = sorted(sizes, key=lambda k: (abs(k - (n_paths + 1) / 2), k))
    while spare:  # sizes with too few masks hand their share to the fuller middle sizes
        for k in middle_first:
            if spare and count[k] < capacity[k]:
                count[k] += 1
                spare -= 1
    rng = random.Random(f"bench_fidelity:{n_paths}:{n}:{seed}")
    masks: list[tuple[int, ...]] = []
    for k in sizes:
        chosen: set[tuple[int, ...]] = set()
        while len(chosen) < count[k]:
            on = set(rng.sample(range(n_paths), k))
            chosen.add(tuple(int(p in on) for p in range(n_paths)))
        masks.extend(sorted(chosen, reverse=True))
    return masks


# ----------------------------------------------------------------------------- jobs (any process)

_DATA: dict[str, object] = {}


def _init_worker() -> None:
    torch.set_num_threads(1)


def _study_data(study: Study):
    key = config_sha256(asdict(study.data))
    if key not in _DATA:
        _DATA.clear()
        _DATA[key] = load_study_data(study)
    return _DATA[key]


def job_supernet(study: Study) -> dict:
    """Train the study's supernet (unless a checkpoint for exactly this configuration exists)."""
    started = time.perf_counter()
    if _common.cached_checkpoint(study) is not None:
        return {"kind": "supernet", "seed": study.train.seed, "cached": True, "seconds": 0.0}
    train_study(study, progress=False)  # -> RUN_DIR/checkpoints/<identity>.pt, the latest training
    return {"kind": "supernet", "seed": study.train.seed, "cached": False,
            "seconds": time.perf_counter() - started}


def job_subnet(study: Study, mask: tuple[int, ...], metric: str) -> dict:
    """Train one mask stand-alone and score it on the validation split."""
    data = _study_data(study)
    started = time.perf_counter()
    result = train_subnet(data, study.model, study.train, mask)
    train_s = time.perf_counter() - started
    model = result.model
    valid = data.splits["valid"]
    outputs = []
    with torch.no_grad():
        for features, lengths, _ in batches(valid, data.modality_names, 256):
            outputs.append(model(features, mask, lengths))
    out = torch.cat(outputs)
    loss = float(task_loss(out, valid.labels, data.task))
    pred = out.squeeze(-1) if data.task == "regression" else out
    score = float(batch_metric(pred[None], valid.labels, metric)[0])
    return {"kind": "subnet", "seed": study.train.seed, "mask": format_mask(mask), "paths": sum(mask),
            "score": score, "loss": loss, "seconds": train_s,
            "final_train_loss": result.history[-1]["train_loss"]}


def _run(job: tuple) -> dict:
    kind, *args = job
    return job_supernet(*args) if kind == "supernet" else job_subnet(*args)


# ----------------------------------------------------------------------------- analysis


def _corr(fn, x, y) -> float:
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 2 or np.all(x == x[0]) or np.all(y == y[0]):
        return float("nan")
    return float(fn(x, y).statistic)


def supernet_scores(study: Study, masks: list[tuple[int, ...]], metric: str) -> dict:
    ckpt = _common.cached_checkpoint(study)
    if ckpt is None:
        raise SystemExit(f"error: no supernet checkpoint for seed {study.train.seed} in {study.run_dir / 'checkpoints'}")
    model = ckpt.model.eval()
    data = _study_data(study)
    started = time.perf_counter()
    cache = build_cache(model, data.splits["valid"])
    m = torch.tensor(masks, dtype=torch.float32)
    scores = score_masks(model, cache, m, metric).tolist()
    losses = task_loss(predict_masks(model, cache, m), cache.labels, data.task).tolist()
    history = ckpt.history
    return {
        "scores": scores,
        "losses": losses,
        "score_s": time.perf_counter() - started,
        "train_s_recorded": float(sum(r.get("seconds", 0.0) for r in history)),
        "final_spearman_prior": history[-1].get("spearman") if history else None,
        "checkpoint": str(ckpt.path.relative_to(ROOT)) if ckpt.path.is_relative_to(ROOT) else str(ckpt.path),
        "checkpoint_identity": ckpt.identity,
    }


def reliable_pairs(supernet: list[float], first: list[float], second: list[float]) -> tuple[int, int, float]:
    """Pairs of masks that two stand-alone trainings (different seeds) order the same way, strictly:
    ``(their number, all pairs, the share of them the supernet orders that way too)`` (a supernet
    tie counts half). Where the two trainings disagree the order is noise and no ranking can be
    judged on it."""
    n = len(first)
    agree, reliable = 0.0, 0
    for i in range(n):
        for j in range(i + 1, n):
            d1, d2 = first[i] - first[j], second[i] - second[j]
            if d1 * d2 > 0:
                reliable += 1
                ds = supernet[i] - supernet[j]
                agree += 1.0 if ds * d1 > 0 else (0.5 if ds == 0 else 0.0)
    return reliable, n * (n - 1) // 2, (agree / reliable if reliable else float("nan"))


def analyse(seed: int, masks, sup: dict, standalone: dict) -> dict:
    keys = [format_mask(m) for m in masks]
    sa = [standalone[k]["score"] for k in keys]
    sa_loss = [standalone[k]["loss"] for k in keys]
    sizes = [sum(m) for m in masks]
    top = int(np.argmax(sup["scores"]))
    return {
        "seed": seed,
        "masks": len(keys),
        "kendall_tau": _corr(kendalltau, sup["scores"], sa),
        "spearman_rho": _corr(spearmanr, sup["scores"], sa),
        "kendall_tau_loss": _corr(kendalltau, sup["losses"], sa_loss),
        "kendall_tau_size_baseline": _corr(kendalltau, sizes, sa),
        "top1_regret": max(sa) - sa[top],
        "supernet_top_mask": keys[top],
        "standalone_best_mask": keys[int(np.argmax(sa))],
        "supernet_score_range": [min(sup["scores"]), max(sup["scores"])],
        "standalone_score_range": [min(sa), max(sa)],
        "mean_gap_standalone_minus_supernet": float(np.mean(np.array(sa) - np.array(sup["scores"]))),
        "standalone_seconds_mean": statistics.mean(standalone[k]["seconds"] for k in keys),
        "standalone_seconds_total": sum(standalone[k]["seconds"] for k in keys),
        "per_mask": [
            {"mask": k, "paths": sizes[i], "supernet": sup["scores"][i], "standalone": sa[i],
             "supernet_loss": sup["losses"][i], "standalone_loss": sa_loss[i],
             "standalone_seconds": standalone[k]["seconds"]}
            for i, k in enumerate(keys)
        ],
    }


def mean_std(xs: list[float]) -> tuple[float, float]:
    xs = [x for x in xs if not math.isnan(x)]
    if not xs:
        return float("nan"), float("nan")
    return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else float("nan"))


def fmt_ms(pair: tuple[float, float], digits: int = 3) -> str:
    m, s = pair
    return f"{m:.{digits}f}" + ("" if math.isnan(s) else f" ± {s:.{digits}f}")


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def markdown(report: dict) -> str:
    s, info = report["settings"], report["machine"]
    lines = [
        f"**bench_fidelity, study `{s['study']}`** ({info['date']}, {info['cpu_model']} x{info['cpu_count']}, "
        f"load {info['loadavg_start'][0]:.1f} → {info['loadavg_end'][0]:.1f}; {_n(s['epochs'], 'epoch')}, "
        f"{report['masks_per_seed']} masks per seed, metric {report['metric']} on the validation split "
        f"({report['valid_samples']} samples), {_n(s['workers'], 'worker')}{', QUICK settings' if s['quick'] else ''}"
        + (f"; supernet [train] overrides: {', '.join(f'{k} = {json.dumps(v)}' for k, v in s['train_overrides'].items())}"
           if s.get("train_overrides") else "")
        + f"; wall time {report['wall_s']:.0f} s"
        + ("" if report.get("standalone_trainings_run", 1) or not all(r["supernet_cached"] for r in report["per_seed"])
           else ": every supernet and stand-alone result cached from earlier runs of the same configuration")
        + ")",
        "",
        "| seed | masks | Kendall τ | Spearman ρ | τ on loss | τ of #paths (baseline) | top-1 regret | "
        "supernet range | stand-alone range | supernet train s | stand-alone s/mask |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["per_seed"]:
        lines.append(
            f"| {r['seed']} | {r['masks']} | {r['kendall_tau']:.3f} | {r['spearman_rho']:.3f} | "
            f"{r['kendall_tau_loss']:.3f} | {r['kendall_tau_size_baseline']:.3f} | {r['top1_regret']:.4f} | "
            f"{r['supernet_score_range'][0]:.3f}–{r['supernet_score_range'][1]:.3f} | "
            f"{r['standalone_score_range'][0]:.3f}–{r['standalone_score_range'][1]:.3f} | "
            f"{r['supernet_train_s']:.0f}{' (cached)' if r['supernet_cached'] else ''} | "
            f"{r['standalone_seconds_mean']:.1f} |"
        )
    a = report["summary"]
    lines.append(
        f"| **mean ± std** | | **{fmt_ms(a['kendall_tau'])}** | {fmt_ms(a['spearman_rho'])} | "
        f"{fmt_ms(a['kendall_tau_loss'])} | {fmt_ms(a['kendall_tau_size_baseline'])} | "
        f"{fmt_ms(a['top1_regret'], 4)} | | | | |"
    )
    ceiling_rows = [r for r in report["per_seed"] if "ceiling_tau" in r]
    if ceiling_rows:
        lines += ["", "Noise ceiling: the same masks trained stand-alone a second time with another seed; "
                  "Kendall τ between the two stand-alone rankings (how far stand-alone training agrees with "
                  "itself; the supernet and the first stand-alone run share their seed, the second run does not):", ""]
        lines += [f"- seed {r['seed']} vs seed {r['ceiling_seed']}: τ {r['ceiling_tau']:.3f} on {report['metric']}, "
                  f"τ {r['ceiling_tau_loss']:.3f} on loss; the supernet against the seed-{r['ceiling_seed']} run: "
                  f"τ {r['kendall_tau_vs_again']:.3f}, against the mean of the two runs: τ {r['kendall_tau_vs_mean']:.3f}. "
                  f"The two stand-alone trainings order "
                  f"{r['reliable_pairs']} of the {r['pairs']} pairs of masks the same way (strictly); the "
                  f"supernet orders **{100 * r['reliable_pairs_agreement']:.1f} %** of those pairs that way too."
                  for r in ceiling_rows]
    lines += [
        "",
        f"Target Kendall τ ≥ {TARGET_TAU} (mean over seeds): **{report['verdict']}** "
        f"(uniform weight sharing: τ ≈ {REFERENCE_TAU}, Yu et al., ICLR 2020).",
        "",
    ]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main


def load_standalone(path: Path) -> dict[str, dict]:
    return _common.load_jsonl(path, "mask")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", default="demo", help="study name (studies/NAME.toml) or path; demo or mfeat")
    parser.add_argument("--seeds", default=None, help="comma-separated seeds (default 0,1,2; quick: 0,1)")
    parser.add_argument("--masks", type=int, default=None,
                        help=f"masks per seed, stratified by size (default: all when there are at most 63, "
                             f"else {DEFAULT_MASKS}; quick: {QUICK['masks']})")
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs of supernet AND stand-alone training (default: the study's [train] epochs)")
    parser.add_argument("--workers", type=int, default=1, help="processes for the trainings (1 torch thread each)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the main process (default 1)")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run: seeds {QUICK['seeds']}, {QUICK['epochs']} epoch, {QUICK['masks']} masks, "
                             f"synthetic samples {QUICK['samples']}, other data test_fraction {QUICK['test_fraction']}")
    parser.add_argument("--train", action="append", default=[], metavar="KEY=VALUE",
                        help="override the study's [train] for the supernet (TOML value; repeatable), "
                             "e.g. --train per_sample_masks=true --train distill=0.5")
    parser.add_argument("--tag", default="", help="suffix of the result files: bench_fidelity_NAME_TAG")
    parser.add_argument("--ceiling", default="", metavar="SEEDS",
                        help="noise ceiling: train these seeds' masks stand-alone again with seed + "
                             f"{CEILING_SEED_OFFSET} and report tau between the two stand-alone rankings")
    parser.add_argument("--fresh", action="store_true", help="ignore cached checkpoints and stand-alone results")
    parser.add_argument("--standalone-from", metavar="FILE.json", default=None,
                        help="reuse the stand-alone results of an earlier report trained the same way (one mask "
                             "per seed is re-trained here and must match)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the text summary")
    parser.add_argument("--out", default=str(ROOT / "docs" / "results"), help="folder for the JSON and Markdown files")
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds = args.seeds or QUICK["seeds"]
        args.epochs = args.epochs or QUICK["epochs"]
        args.masks = args.masks or QUICK["masks"]
    seeds = [int(s) for s in (args.seeds or "0,1,2").split(",") if s.strip()]
    ceiling = [int(s) for s in args.ceiling.split(",") if s.strip()]
    if not set(ceiling) <= set(seeds):
        raise SystemExit(f"error: --ceiling {args.ceiling}: every ceiling seed must be one of --seeds {seeds}")
    overrides = parse_overrides(args.train)
    check_tag(args.tag)
    torch.set_num_threads(args.threads)
    say = (lambda msg: print(msg, file=sys.stderr, flush=True)) if args.json else (lambda msg: print(msg, flush=True))

    info = machine_info()
    started = time.perf_counter()
    studies = {seed: prepare_study(args.study, seed, args.epochs, args.quick, overrides) for seed in seeds}
    # stand-alone trainings by training seed: each seed's own, and the ceiling's reseeded copies
    trainings = {seed: studies[seed] for seed in seeds}
    trainings.update({seed + CEILING_SEED_OFFSET: reseeded(studies[seed], seed + CEILING_SEED_OFFSET) for seed in ceiling})
    first = studies[seeds[0]]
    metric = objective_metric(first)
    epochs = first.train.epochs
    data = _study_data(first)
    P = num_paths(len(data.modalities))
    n_masks = args.masks if args.masks is not None else (2**P - 1 if 2**P - 1 <= 63 else DEFAULT_MASKS)
    masks = {seed: sample_masks(P, n_masks, seed) for seed in seeds}
    say(f"# bench_fidelity  {info['date']}  {info['cpu_model']} x{info['cpu_count']}  torch {info['torch']}  "
        f"load {info['loadavg_start'][0]:.2f}")
    say(f"study {first.name}: {len(data.modalities)} modalities, {P} paths; train/valid "
        f"{len(data.splits['train'])}/{len(data.splits['valid'])} samples; {_n(epochs, 'epoch')} "
        f"({first.train.warmup_epochs} warm-up), batch {first.train.batch_size}, lr {first.train.lr}; "
        f"metric {metric}; seeds {seeds}; {len(masks[seeds[0]])} masks per seed; {_n(args.workers, 'worker')}"
        + (f"; supernet [train] overrides {overrides}" if overrides else "")
        + (f"; noise ceiling for seeds {ceiling}" if ceiling else ""))

    if args.standalone_from:
        copied = import_standalone(Path(args.standalone_from), trainings, metric, say)
        say(f"--standalone-from {args.standalone_from}: {copied} stand-alone results copied")

    # what is already done
    standalone: dict[int, dict[str, dict]] = {}
    jobs: list[tuple] = []
    for seed in seeds:
        if args.fresh:
            _common.forget_checkpoint(studies[seed])
        jobs.append(("supernet", studies[seed]))
    for tseed, study in trainings.items():
        if args.fresh:
            standalone_log(study).unlink(missing_ok=True)
        standalone[tseed] = load_standalone(standalone_log(study))
        seed_masks = masks[tseed % CEILING_SEED_OFFSET]  # a ceiling run trains its seed's masks
        todo = [m for m in seed_masks if format_mask(m) not in standalone[tseed]]
        cached = len(seed_masks) - len(todo)
        if cached:
            say(f"training seed {tseed}: {cached} stand-alone results cached")
        jobs.extend(("subnet", study, m, metric) for m in todo)
    # the longest stand-alone trainings (most paths) first
    jobs[len(seeds):] = sorted(jobs[len(seeds):], key=lambda j: -sum(j[2]))
    n_sub = len(jobs) - len(seeds)

    supernet_runs: dict[int, dict] = {}
    done_sub = 0

    def record(result: dict) -> None:
        nonlocal done_sub
        seed = result["seed"]
        if result["kind"] == "supernet":
            supernet_runs[seed] = result
            say(f"  supernet seed {seed}: " + ("cached checkpoint" if result["cached"] else f"trained in {result['seconds']:.1f} s"))
            return
        standalone[seed][result["mask"]] = result
        log_path = standalone_log(trainings[seed])
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("a") as f:
            f.write(json.dumps(result) + "\n")
        done_sub += 1
        elapsed = time.perf_counter() - started
        say(f"  [{done_sub}/{n_sub}] seed {seed} {result['mask']} ({result['paths']} paths): stand-alone "
            f"{metric} {result['score']:.4f} in {result['seconds']:.1f} s  ({elapsed:.0f} s elapsed)")

    _common.run_jobs(jobs, _run, record, workers=args.workers, initializer=_init_worker)

    per_seed = []
    for seed in seeds:
        sup = supernet_scores(studies[seed], masks[seed], metric)
        row = analyse(seed, masks[seed], sup, standalone[seed])
        cached = supernet_runs[seed]["cached"]
        row.update(
            supernet_cached=cached,
            supernet_train_s=sup["train_s_recorded"] if cached else supernet_runs[seed]["seconds"],
            supernet_score_s=sup["score_s"],
            supernet_prior_spearman_last_epoch=sup["final_spearman_prior"],
            checkpoint=sup["checkpoint"],
        )
        if seed in ceiling:
            keys = [format_mask(m) for m in masks[seed]]
            run1 = [standalone[seed][k] for k in keys]
            run2 = [standalone[seed + CEILING_SEED_OFFSET][k] for k in keys]
            score1, score2 = [r["score"] for r in run1], [r["score"] for r in run2]
            row["ceiling_tau"] = _corr(kendalltau, score1, score2)
            row["ceiling_tau_loss"] = _corr(kendalltau, [r["loss"] for r in run1], [r["loss"] for r in run2])
            # the supernet against the other seed's stand-alone run (cross-seed, like the ceiling), and
            # against the mean of the two runs (less noisy than either)
            row["kendall_tau_vs_again"] = _corr(kendalltau, sup["scores"], score2)
            row["kendall_tau_vs_mean"] = _corr(kendalltau, sup["scores"], [(a + b) / 2 for a, b in zip(score1, score2)])
            row["ceiling_seed"] = seed + CEILING_SEED_OFFSET
            row["reliable_pairs"], row["pairs"], row["reliable_pairs_agreement"] = reliable_pairs(
                sup["scores"], score1, score2)
            for entry, r in zip(row["per_mask"], run2):
                entry["standalone_again"], entry["standalone_again_loss"] = r["score"], r["loss"]
        per_seed.append(row)
    wall_s = time.perf_counter() - started
    info["loadavg_end"] = list(os.getloadavg())
    keys = ("kendall_tau", "spearman_rho", "kendall_tau_loss", "kendall_tau_size_baseline", "top1_regret")
    summary = {k: mean_std([r[k] for r in per_seed]) for k in keys}
    if ceiling:
        summary["ceiling_tau"] = mean_std([r["ceiling_tau"] for r in per_seed if "ceiling_tau" in r])
        summary["ceiling_tau_loss"] = mean_std([r["ceiling_tau_loss"] for r in per_seed if "ceiling_tau_loss" in r])
        for key in ("kendall_tau_vs_again", "kendall_tau_vs_mean"):
            summary[key] = mean_std([r[key] for r in per_seed if key in r])
        summary["reliable_pairs_agreement"] = mean_std(
            [r["reliable_pairs_agreement"] for r in per_seed if "reliable_pairs_agreement" in r])
    tau = summary["kendall_tau"][0]
    verdict = "MET" if not math.isnan(tau) and tau >= TARGET_TAU else "NOT MET"
    settings = {"study": first.name, "seeds": seeds, "masks": n_masks, "epochs": epochs, "workers": args.workers,
                "threads": args.threads, "quick": args.quick, "fresh": args.fresh,
                "train_overrides": overrides, "tag": args.tag, "ceiling_seeds": ceiling}
    report = {
        "benchmark": "bench_fidelity",
        "settings": settings,
        "machine": info,
        "study_config": first.supernet_config() | {"train": asdict(first.train) | {"seed": "per seed"}},
        "metric": metric,
        "valid_samples": len(data.splits["valid"]),
        "masks_per_seed": len(masks[seeds[0]]),
        "per_seed": per_seed,
        "summary": {k: {"mean": m, "std": s} for k, (m, s) in summary.items()},
        "target": {"kendall_tau_min": TARGET_TAU, "reference_uniform_weight_sharing": REFERENCE_TAU},
        "verdict": verdict,
        "wall_s": wall_s,
        "standalone_trainings_run": n_sub,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"bench_fidelity_{first.name}{'_' + args.tag if args.tag else ''}{'_quick' if args.quick else ''}"
    report_md = markdown({**report, "summary": summary})
    _common.write_result(out, stem, report, report_md)

    if args.json:
        print(json.dumps(report, default=float))
        return 0
    print()
    print(f"{'seed':>4} {'masks':>5} {'tau':>7} {'rho':>7} {'tau(loss)':>9} {'tau(#paths)':>11} "
          f"{'regret':>7} {'supernet s':>10} {'s/mask':>7}")
    for r in per_seed:
        print(f"{r['seed']:>4} {r['masks']:>5} {r['kendall_tau']:>7.3f} {r['spearman_rho']:>7.3f} "
              f"{r['kendall_tau_loss']:>9.3f} {r['kendall_tau_size_baseline']:>11.3f} {r['top1_regret']:>7.4f} "
              f"{r['supernet_train_s']:>9.0f}{'c' if r['supernet_cached'] else ' '} {r['standalone_seconds_mean']:>7.1f}")
    print(f"mean ± std: Kendall tau {fmt_ms(summary['kendall_tau'])}, Spearman rho {fmt_ms(summary['spearman_rho'])}, "
          f"tau on loss {fmt_ms(summary['kendall_tau_loss'])}, #paths baseline tau "
          f"{fmt_ms(summary['kendall_tau_size_baseline'])}")
    if ceiling:
        print(f"noise ceiling (stand-alone vs stand-alone, seeds {ceiling}): tau {fmt_ms(summary['ceiling_tau'])}, "
              f"tau on loss {fmt_ms(summary['ceiling_tau_loss'])}; supernet agrees on "
              f"{fmt_ms(summary['reliable_pairs_agreement'])} of the pairs both stand-alone runs order alike; "
              f"supernet vs the other seed's stand-alone: tau {fmt_ms(summary['kendall_tau_vs_again'])}, "
              f"vs the mean of both: tau {fmt_ms(summary['kendall_tau_vs_mean'])}")
    print(f"target Kendall tau >= {TARGET_TAU} (mean over {len(seeds)} seeds): {tau:.3f} -> {verdict}"
          f"   (uniform weight sharing, Yu et al. 2020: tau ~ {REFERENCE_TAU})")
    print(f"wall time {wall_s:.0f} s ({n_sub} stand-alone trainings run, {_n(args.workers, 'worker')}); "
          f"wrote {out / stem}.json and .md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
