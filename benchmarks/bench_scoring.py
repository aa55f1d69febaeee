"""Benchmark: cached scoring of all 63 masks versus direct masked forward passes (mosei shape).

Usage: python benchmarks/bench_scoring.py [--samples 1871] [--repeats 30] [--head both] [--json]

Builds a CMU-MOSEI-shaped supernet (text 50 x 768, audio 50 x 74, vision 50 x 35; width 256,
8 heads, regression) and a validation split of random data of that shape (features
``torch.randn``, labels uniform in [-3, 3]), then measures, for each head type:

(a) ``build_cache`` once (every path over every sample, eval mode), reported separately;
(b) cached scoring: ``score_masks(model, cache, all_masks(6), "acc_7")`` repeated, masks/s
    (median over ``--repeats``; target >= 1,000 masks/s);
(c) direct scoring: ``model(features, mask, lengths)`` in batches of 256 (eval, no_grad) over the
    same samples, then the same metric (``batch_metric``), for one random mask of each size 1..6
    (``--direct-sizes``); the per-mask time over all 63 masks is the average of those times
    weighted by C(6, k) (the number of masks with k active paths). The ratio cached/direct is printed (target >= 10,000x);
(d) the full metric dict per mask (``mask_metrics``: cache -> ``compute_metrics``) over all 63
    masks, and the direct equivalent (forward pass + ``compute_metrics``).

Cached and direct outputs of the measured masks are compared as a sanity check (max |diff|).
Everything is measured in the same run on the same machine; nothing is compared to stored figures.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402
import torch  # noqa: E402

from supernet.config import ModelConfig  # noqa: E402
from supernet.data.dataset import ModalitySpec, Split  # noqa: E402
from supernet.metrics import batch_metric, compute_metrics  # noqa: E402
from supernet.model import Supernet, SupernetSpec  # noqa: E402
from supernet.paths import all_masks, format_mask  # noqa: E402
from supernet.scoring import batches, build_cache, mask_metrics, predict_masks, score_masks  # noqa: E402

MOSEI = (
    ModalitySpec("text", 768, 50),
    ModalitySpec("audio", 74, 50),
    ModalitySpec("vision", 35, 50),
)
METRIC = "acc_7"
TARGET_MASKS_PER_S = 1_000
TARGET_RATIO = 10_000


def machine_info() -> dict:
    return _common.machine_info()


def make_split(n: int, seed: int) -> Split:
    g = torch.Generator().manual_seed(seed)
    features = {m.name: torch.randn(n, m.length, m.dim, generator=g) for m in MOSEI}
    labels = torch.rand(n, generator=g) * 6.0 - 3.0  # uniform in [-3, 3]
    return Split(features=features, labels=labels)


def make_model(head: str, seed: int) -> Supernet:
    torch.manual_seed(seed)
    cfg = ModelConfig(width=256, heads=8, dropout=0.4, head=head)
    return Supernet(SupernetSpec(MOSEI, "regression", 1), cfg).eval()


def timed(fn, *args) -> float:
    return timed_value(fn, *args)[1]


def timed_value(fn, *args):
    """``(fn(*args), seconds)``."""
    start = time.perf_counter()
    value = fn(*args)
    return value, time.perf_counter() - start


@torch.no_grad()
def direct_predictions(
    model: Supernet, split: Split, mask: torch.Tensor, batch_size: int
) -> torch.Tensor:
    """Masked forward passes over the whole split: (N,) regression outputs."""
    model.eval()
    names = [m.name for m in model.spec.modalities]
    out = [
        model(features, mask, lengths).squeeze(-1)
        for features, lengths, _ in batches(split, names, batch_size)
    ]
    return torch.cat(out)


def pick_direct_masks(n_paths: int, sizes_wanted: list[int], seed: int) -> list[torch.Tensor]:
    """One random mask of each wanted size (seeded)."""
    g = torch.Generator().manual_seed(seed)
    masks = all_masks(n_paths)
    sizes = masks.sum(dim=1)
    picked = []
    for k in sizes_wanted:
        rows = (sizes == k).nonzero().flatten()
        picked.append(masks[rows[torch.randint(len(rows), (1,), generator=g)]][0])
    return picked


def weighted_per_mask(direct: list[dict], key: str, n_paths: int) -> float:
    """Mean time per mask over all 2**P - 1 masks: the time of size k weighted by C(P, k), with
    sizes not measured interpolated (or extrapolated) linearly from the measured ones."""
    xs = [d["paths"] for d in direct]
    ys = [d[key] for d in direct]

    def at(k: int) -> float:
        if k in xs:
            return ys[xs.index(k)]
        if len(xs) == 1:
            return ys[0] * k / xs[0]
        lo = max([x for x in xs if x < k], default=None)
        hi = min([x for x in xs if x > k], default=None)
        if lo is None:
            lo, hi = xs[0], xs[1]
        elif hi is None:
            lo, hi = xs[-2], xs[-1]
        y_lo, y_hi = ys[xs.index(lo)], ys[xs.index(hi)]
        return max(y_lo + (y_hi - y_lo) * (k - lo) / (hi - lo), 0.0)

    weights = {k: math.comb(n_paths, k) for k in range(1, n_paths + 1)}
    return sum(w * at(k) for k, w in weights.items()) / sum(weights.values())


def bench_head(head: str, split: Split, args) -> dict:
    model = make_model(head, args.seed)
    masks = all_masks(model.num_paths)
    n_masks = masks.shape[0]

    # (a) the cache, once
    cache, build_s = timed_value(lambda: build_cache(model, split, batch_size=args.batch_size))

    # (b) cached scoring of all masks, repeated
    for _ in range(args.warmup):
        score_masks(model, cache, masks, METRIC)
    cached_times = [
        timed(lambda: score_masks(model, cache, masks, METRIC)) for _ in range(args.repeats)
    ]
    cached_s = statistics.median(cached_times)
    cached_rate = n_masks / cached_s
    cached_scores = score_masks(model, cache, masks, METRIC)
    # the same with one intra-op thread: on a loaded machine, tiny parallel ops wait for a
    # descheduled worker thread, and one thread is then faster and far steadier
    threads = torch.get_num_threads()
    one_thread_s = None
    if threads > 1:
        torch.set_num_threads(1)
        try:
            score_masks(model, cache, masks, METRIC)
            one_thread_s = statistics.median(
                timed(score_masks, model, cache, masks, METRIC) for _ in range(args.repeats)
            )
        finally:
            torch.set_num_threads(threads)

    # (d) full metric dict per mask from the cache (scikit-learn / SciPy reference metrics)
    mask_list = [tuple(int(b) for b in m.tolist()) for m in masks]
    full_times = [
        timed(lambda: [mask_metrics(model, cache, m) for m in mask_list])
        for _ in range(args.full_repeats)
    ]
    full_cached_s = statistics.median(full_times)
    full_cached_rate = n_masks / full_cached_s

    # (c) direct scoring: one mask of each size, weighted by how many masks have that size
    direct = []
    max_diff = 0.0
    metric_mismatch = 0.0
    labels = split.labels
    sizes_wanted = sorted({int(k) for k in args.direct_sizes.split(",") if k.strip()})
    for mask in pick_direct_masks(model.num_paths, sizes_wanted, args.seed):
        direct_predictions(
            model, split.subset(torch.arange(min(8, len(split)))), mask, args.batch_size
        )  # warm-up
        pred, fwd_s = timed_value(direct_predictions, model, split, mask, args.batch_size)
        score, metric_s = timed_value(batch_metric, pred[None], labels, METRIC)
        _, full_s = timed_value(compute_metrics, pred, labels, "regression")
        # sanity: the cache reproduces the direct pass
        row = int((masks == mask).all(dim=1).nonzero()[0, 0])
        cached_pred = predict_masks(model, cache, mask[None]).squeeze(-1)[0]
        max_diff = max(max_diff, float((cached_pred - pred).abs().max()))
        metric_mismatch = max(metric_mismatch, abs(float(score[0]) - float(cached_scores[row])))
        direct.append(
            {
                "mask": format_mask(mask),
                "paths": int(mask.sum()),
                "forward_s": fwd_s,
                "metric_s": metric_s,
                "seconds": fwd_s + metric_s,
                "full_metrics_s": fwd_s + full_s,
            }
        )
    direct_per_mask_s = weighted_per_mask(direct, "seconds", model.num_paths)
    direct_full_per_mask_s = weighted_per_mask(direct, "full_metrics_s", model.num_paths)
    direct_rate = 1.0 / direct_per_mask_s
    direct_full_rate = 1.0 / direct_full_per_mask_s
    return {
        "head": head,
        "masks": n_masks,
        "build_cache_s": build_s,
        "build_cache_samples_per_s": len(split) / build_s,
        "cached_seconds_per_call_median": cached_s,
        "cached_seconds_per_call_min": min(cached_times),
        "cached_seconds_per_call_max": max(cached_times),
        "cached_masks_per_s": cached_rate,
        "cached_masks_per_s_1_thread": None if one_thread_s is None else n_masks / one_thread_s,
        "direct": direct,
        "direct_seconds_per_mask_weighted": direct_per_mask_s,
        "direct_masks_per_s": direct_rate,
        "ratio_cached_over_direct": cached_rate / direct_rate,
        "full_metrics_cached_masks_per_s": full_cached_rate,
        "full_metrics_direct_masks_per_s": direct_full_rate,
        "full_metrics_ratio": full_cached_rate / direct_full_rate,
        "max_abs_diff_cached_vs_direct": max_diff,
        "max_metric_diff_cached_vs_direct": metric_mismatch,
        "cache_plus_all_masks_s": build_s + cached_s,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--samples", type=int, default=1871, help="validation samples (default 1871, MOSEI valid)"
    )
    parser.add_argument(
        "--repeats", type=int, default=30, help="timed repetitions of cached scoring (median)"
    )
    parser.add_argument("--warmup", type=int, default=3, help="untimed cached-scoring calls first")
    parser.add_argument(
        "--full-repeats", type=int, default=3, help="repetitions of the full-metric-dict pass"
    )
    parser.add_argument(
        "--batch-size", type=int, default=256, help="batch size of the forward passes"
    )
    parser.add_argument("--head", choices=("linear", "mlp", "both"), default="both")
    parser.add_argument(
        "--direct-sizes",
        default="1,2,3,4,5,6",
        help="mask sizes (active paths) timed directly, one random mask each; the per-mask "
        "time of unmeasured sizes is interpolated linearly in the size",
    )
    parser.add_argument(
        "--threads", type=int, default=0, help="torch.set_num_threads (0: the CLI's default, search_service.cli.default_threads)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    args = parser.parse_args(argv)
    from search_service.cli import default_threads

    torch.set_num_threads(args.threads or default_threads())

    info = machine_info()
    split = make_split(args.samples, args.seed)
    heads = ("linear", "mlp") if args.head == "both" else (args.head,)
    results = [bench_head(h, split, args) for h in heads]
    info["loadavg_end"] = list(os.getloadavg())
    report = {
        "benchmark": "bench_scoring",
        "shape": {
            "modalities": [[m.name, m.length, m.dim] for m in MOSEI],
            "width": 256,
            "heads": 8,
            "task": "regression",
            "samples": args.samples,
            "metric": METRIC,
        },
        "settings": vars(args),
        "machine": info,
        "results": results,
        "targets": {
            "cached_masks_per_s_min": TARGET_MASKS_PER_S,
            "ratio_min": TARGET_RATIO,
            "linear_cached_met": any(
                r["head"] == "linear" and r["cached_masks_per_s"] >= TARGET_MASKS_PER_S
                for r in results
            ),
            "linear_ratio_met": any(
                r["head"] == "linear" and r["ratio_cached_over_direct"] >= TARGET_RATIO
                for r in results
            ),
        },
    }
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"bench_scoring  {info['date']}")
    print(
        f"  cpu {info['cpu_model']} ({info['cpu_count']} cpus), torch {info['torch']}, "
        f"{info['torch_threads']} threads, python {info['python']}"
    )
    print(f"  load average start {info['loadavg_start'][0]:.2f}, end {info['loadavg_end'][0]:.2f}")
    print(
        f"  mosei shape: text 50x768, audio 50x74, vision 50x35; width 256, 8 heads; "
        f"{args.samples} samples; metric {METRIC}"
    )
    for r in results:
        print(f"\n  head = {r['head']}")
        print(
            f"    build_cache (once, {args.samples} samples, all 6 paths): {r['build_cache_s']:.2f} s "
            f"({r['build_cache_samples_per_s']:.0f} samples/s)"
        )
        print(
            f"    cached score_masks, all {r['masks']} masks: median {r['cached_seconds_per_call_median'] * 1e3:.2f} ms "
            f"(min {r['cached_seconds_per_call_min'] * 1e3:.2f}, max {r['cached_seconds_per_call_max'] * 1e3:.2f}, "
            f"{args.repeats} repeats) -> {r['cached_masks_per_s']:,.0f} masks/s "
            f"[target >= {TARGET_MASKS_PER_S:,}: {'met' if r['cached_masks_per_s'] >= TARGET_MASKS_PER_S else 'NOT met'}]"
        )
        if r["cached_masks_per_s_1_thread"] is not None:
            print(
                f"    cached score_masks with 1 thread: {r['cached_masks_per_s_1_thread']:,.0f} masks/s (median)"
            )
        for d in r["direct"]:
            print(
                f"    direct mask {d['mask']} ({d['paths']} paths): forward {d['forward_s']:.2f} s + "
                f"metric {d['metric_s'] * 1e3:.2f} ms"
            )
        print(
            f"    direct, weighted over all 63 masks: {r['direct_seconds_per_mask_weighted']:.2f} s/mask "
            f"-> {r['direct_masks_per_s']:.3f} masks/s"
        )
        print(
            f"    ratio cached/direct: {r['ratio_cached_over_direct']:,.0f}x "
            f"[target >= {TARGET_RATIO:,}x: {'met' if r['ratio_cached_over_direct'] >= TARGET_RATIO else 'NOT met'}]"
        )
        print(
            f"    full metric dict (mask_metrics -> compute_metrics): cached {r['full_metrics_cached_masks_per_s']:,.0f} "
            f"masks/s, direct {r['full_metrics_direct_masks_per_s']:.3f} masks/s, ratio {r['full_metrics_ratio']:,.0f}x"
        )
        print(
            f"    cache + all masks: {r['cache_plus_all_masks_s']:.2f} s vs direct all masks "
            f"{r['masks'] * r['direct_seconds_per_mask_weighted']:.0f} s"
        )
        print(
            f"    sanity: max |cached - direct| output {r['max_abs_diff_cached_vs_direct']:.2e}, "
            f"metric {r['max_metric_diff_cached_vs_direct']:.2e}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
