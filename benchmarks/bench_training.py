"""Benchmark: supernet training throughput at the CMU-MOSEI shape on the CPU.

Usage: python benchmarks/bench_training.py [--steps 30] [--batch-size 32] [--repeats 3] [--json]
       python benchmarks/bench_training.py --loop-only --baseline-tree DIR [--threads 1] [--loop-repeats 3]

Model: text 50 x 768, audio 50 x 74, vision 50 x 35; width 256, 8 heads, dropout 0.4, linear
regression head, L1 task loss, AdamW. Data: random features of that shape (``torch.randn``),
labels uniform in [-3, 3], sliced into batches with ``supernet.scoring.batches`` as training does.

Measured in one run, each over ``--steps`` timed steps after ``--warmup`` untimed steps:

- ``supernet step``: the step of ``supernet.train.train_supernet`` with ``masks_per_step = 1``:
  one uniform mask (``uniform_masks``), zero_grad, forward of the subnet, L1 loss, backward,
  the per-step gradient-norm statistics (``_Statistics.gradients``), AdamW step. Target
  >= 85 samples/s. A time breakdown (forward / backward / statistics / optimizer) is printed.
- the same step without the gradient-norm statistics (its overhead is the difference);
- baselines: a plain fixed full-mask step (all 6 paths) and a fixed single-path step;
- the supernet step with random masks of exactly k active paths, k = 1..6 (a uniform mask has
  3.05 active paths on average over the 63 masks);
- the real loop: ``train_supernet`` on a synthetic split of ``--loop-samples`` samples, one epoch
  (uniform warm-up masks, ``masks_per_step = 1``, the prior refined every 10 steps); its history
  reports ``samples_per_s`` (training steps only, not the per-epoch evaluation).

The supernet-step variants are interleaved over ``--repeats`` rounds and the median is reported,
because the machine is shared. ``--baseline-tree DIR`` (a checkout of another commit, e.g.
``git archive HEAD~3 | tar -x -C DIR``) runs the ``train_supernet`` measurement of both trees in
fresh processes, alternating, and reports the ratio: a before/after comparison under the same
load; ``--loop-only`` skips the step measurements. Memory: peak resident set size from
``resource.getrusage(RUSAGE_SELF).ru_maxrss`` (KiB on Linux) after each phase, plus the current
RSS from psutil when it is installed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
if "--tree" in sys.argv[:-1]:  # a --baseline-tree measurement: supernet from that checkout
    sys.path.insert(0, str(Path(sys.argv[sys.argv.index("--tree") + 1]).resolve()))

import _common  # noqa: E402
import torch  # noqa: E402

from supernet.config import ModelConfig, TrainConfig  # noqa: E402
from supernet.data.dataset import ModalitySpec, MultimodalData, Split  # noqa: E402
from supernet.model import Supernet, SupernetSpec  # noqa: E402
from supernet.paths import all_masks  # noqa: E402
from supernet.relation_graph import RelationGraphPrior  # noqa: E402
from supernet.scoring import batches  # noqa: E402
from supernet.train import _Statistics, task_loss, train_supernet, uniform_masks  # noqa: E402

try:
    import psutil
except ImportError:  # pragma: no cover
    psutil = None

MOSEI = [
    ModalitySpec("text", 768, 50),
    ModalitySpec("audio", 74, 50),
    ModalitySpec("vision", 35, 50),
]
NAMES = [m.name for m in MOSEI]
TARGET_SAMPLES_PER_S = 85


def machine_info() -> dict:
    return _common.machine_info()


def memory() -> dict:
    out = {"ru_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if psutil is not None:
        out["psutil_rss_mib"] = psutil.Process().memory_info().rss / 2**20
    return out


def make_split(n: int, g: torch.Generator) -> Split:
    features = {m.name: torch.randn(n, m.length, m.dim, generator=g) for m in MOSEI}
    return Split(features=features, labels=torch.rand(n, generator=g) * 6.0 - 3.0)


def model_cfg(args) -> ModelConfig:
    return ModelConfig(width=args.width, heads=8, dropout=args.dropout, head="linear")


class Trainer:
    """One supernet and its optimizer, stepped exactly as ``train_supernet`` steps them."""

    def __init__(self, args, split: Split) -> None:
        torch.manual_seed(args.seed)
        self.model = Supernet(SupernetSpec(tuple(MOSEI), "regression", 1), model_cfg(args)).train()
        self.prior = RelationGraphPrior(self.model.k)
        self.stats = _Statistics(self.model, self.prior)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-3, weight_decay=0.01)
        self.split, self.batch_size = split, args.batch_size
        self.order_g = torch.Generator().manual_seed(args.seed)
        self._batches = iter(())
        self.recording = False
        self.breakdown = {
            "data": 0.0,
            "forward": 0.0,
            "backward": 0.0,
            "statistics": 0.0,
            "optimizer": 0.0,
        }

    def next_batch(self):
        try:
            return next(self._batches)
        except StopIteration:
            order = torch.randperm(len(self.split), generator=self.order_g)
            self._batches = batches(self.split, NAMES, self.batch_size, order)
            return next(self._batches)

    def step(self, masks: torch.Tensor, *, statistics_on: bool = True) -> int:
        """One training step on the next batch for ``masks`` (M, P); returns the batch size."""
        t0 = time.perf_counter()
        features, lengths, labels = self.next_batch()
        t1 = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        fwd = bwd = 0.0
        loss_sum = 0.0
        for mask in masks:
            a = time.perf_counter()
            loss = task_loss(self.model(features, mask, lengths), labels, "regression") / len(masks)
            b = time.perf_counter()
            loss.backward()
            loss_sum += float(loss.detach()) * len(labels)
            fwd, bwd = fwd + b - a, bwd + time.perf_counter() - b
        t2 = time.perf_counter()
        if statistics_on:
            self.stats.gradients(masks.amax(dim=0).bool())
        t3 = time.perf_counter()
        self.optimizer.step()
        t4 = time.perf_counter()
        if self.recording:
            bd = self.breakdown
            bd["data"] += t1 - t0
            bd["forward"] += fwd
            bd["backward"] += bwd
            bd["statistics"] += t3 - t2
            bd["optimizer"] += t4 - t3
        return len(labels)


def run_steps(
    trainer: Trainer,
    mask_fn,
    steps: int,
    warmup: int,
    *,
    statistics_on: bool = True,
    record: bool = False,
) -> dict:
    """``steps`` timed steps after ``warmup`` untimed ones: samples/s over the whole window, the
    median step time (robust to bursts of load from other processes) and samples per CPU-second
    of this process (all its threads; with ``--threads 1`` it estimates the uncontended
    single-thread rate even on a loaded machine). ``record`` adds the timed steps' phases to
    ``trainer.breakdown``."""
    for _ in range(warmup):
        trainer.step(mask_fn(), statistics_on=statistics_on)
    seen, times = 0, []
    trainer.recording = record
    cpu_start = time.process_time()
    for _ in range(steps):
        mask = mask_fn()
        start = time.perf_counter()
        seen += trainer.step(mask, statistics_on=statistics_on)
        times.append(time.perf_counter() - start)
    cpu = time.process_time() - cpu_start
    trainer.recording = False
    return {
        "samples_per_s": seen / sum(times),
        "median_step_s": statistics.median(times),
        "median_step_samples_per_s": trainer.batch_size / statistics.median(times),
        "samples_per_cpu_s": seen / cpu,
    }


def uniform_fn(seed: int, n_paths: int):
    g = torch.Generator().manual_seed(seed)
    return lambda: uniform_masks(1, n_paths, g)


def size_fn(k: int, seed: int, n_paths: int):
    """A random mask with exactly k active paths on every call."""
    masks = all_masks(n_paths)
    rows = masks[masks.sum(dim=1) == k]
    g = torch.Generator().manual_seed(seed + k)
    return lambda: rows[torch.randint(len(rows), (1,), generator=g)]


def run_loop(args, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    splits = {
        "train": make_split(args.loop_samples, g),
        "valid": make_split(256, g),
        "test": make_split(32, g),
    }
    data = MultimodalData(modalities=list(MOSEI), task="regression", splits=splits)
    cfg = TrainConfig(epochs=1, batch_size=args.batch_size, masks_per_step=1, seed=seed)
    start, cpu = time.perf_counter(), time.process_time()
    result = train_supernet(data, model_cfg(args), cfg, progress=False)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    h = result.history[0]
    return {
        "samples_per_s": h["samples_per_s"],
        "train_seconds": h["seconds"],
        "wall_seconds": wall,
        # the whole call (the epoch's evaluation included) per CPU-second of this process: with
        # one thread, an estimate of the uncontended rate on a loaded machine
        "samples_per_cpu_s": args.loop_samples / cpu,
        "tree": str(Path(train_supernet.__code__.co_filename).resolve().parents[1]),  # whose train_supernet ran
    }


def compare_trees(args) -> dict:
    """``train_supernet`` of this tree and of ``--baseline-tree``, each in a fresh process,
    alternating (ABBA...) over ``--loop-repeats`` rounds; medians and their ratios."""
    import subprocess

    here = Path(__file__).resolve().parents[1]
    runs: dict[str, list[dict]] = {"this": [], "baseline": []}
    for r in range(args.loop_repeats):
        for which in (("this", "baseline") if r % 2 == 0 else ("baseline", "this")):
            tree = here if which == "this" else Path(args.baseline_tree).resolve()
            cmd = [sys.executable, __file__, "--loop-only", "--json", "--loop-repeats", "1", "--tree", str(tree),
                   "--threads", str(args.threads or 0), "--batch-size", str(args.batch_size),
                   "--loop-samples", str(args.loop_samples), "--width", str(args.width), "--dropout", str(args.dropout),
                   "--seed", str(args.seed + r)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True)
            run = json.loads(out.stdout)["train_supernet_runs"][0]
            assert run["tree"] == str(tree), (run["tree"], tree)  # the checkout asked for, not the installed one
            run["loadavg"] = list(os.getloadavg())
            runs[which].append(run)
    med = {w: {k: statistics.median(x[k] for x in rs) for k in ("samples_per_s", "samples_per_cpu_s")} for w, rs in runs.items()}
    return {"baseline_tree": str(args.baseline_tree), "runs": runs, "medians": med,
            "ratio_samples_per_s": med["this"]["samples_per_s"] / med["baseline"]["samples_per_s"],
            "ratio_samples_per_cpu_s": med["this"]["samples_per_cpu_s"] / med["baseline"]["samples_per_cpu_s"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="timed steps per measurement")
    parser.add_argument(
        "--warmup", type=int, default=3, help="untimed steps before each measurement"
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--repeats", type=int, default=3, help="rounds of the supernet-step measurements (median)"
    )
    parser.add_argument("--size-steps", type=int, default=10, help="timed steps per mask size 1..6")
    parser.add_argument(
        "--loop-samples", type=int, default=640, help="train samples of the train_supernet run"
    )
    parser.add_argument("--loop-repeats", type=int, default=2, help="train_supernet runs (median)")
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--dropout", type=float, default=0.4)
    parser.add_argument(
        "--threads", type=int, default=0, help="torch.set_num_threads (0: the CLI's default, search_service.cli.default_threads)"
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also print a torch.profiler table of the supernet step",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.add_argument("--loop-only", action="store_true", help="only the train_supernet measurement")
    parser.add_argument("--baseline-tree", metavar="DIR", help="also time train_supernet of this checkout, alternating")
    parser.add_argument("--tree", metavar="DIR", help=argparse.SUPPRESS)  # set by --baseline-tree's runs
    args = parser.parse_args(argv)
    from search_service.cli import default_threads

    torch.set_num_threads(args.threads or default_threads())
    if args.baseline_tree:
        report = {"benchmark": "bench_training", "settings": vars(args), "machine": machine_info(),
                  "compare": compare_trees(args)}
        report["machine"]["loadavg_end"] = list(os.getloadavg())
        if args.json:
            print(json.dumps(report))
            return 0
        c, info = report["compare"], report["machine"]
        print(f"bench_training --baseline-tree {args.baseline_tree}  {info['date']}, {info['torch_threads']} thread(s), "
              f"load {info['loadavg_start'][0]:.2f} -> {info['loadavg_end'][0]:.2f}")
        for which in ("this", "baseline"):
            rates = ", ".join(f"{x['samples_per_s']:.1f}" for x in c["runs"][which])
            cpu = ", ".join(f"{x['samples_per_cpu_s']:.1f}" for x in c["runs"][which])
            print(f"  train_supernet {which:8s}: median {c['medians'][which]['samples_per_s']:.1f} samples/s [{rates}]; "
                  f"per CPU-s {c['medians'][which]['samples_per_cpu_s']:.1f} [{cpu}]")
        print(f"  ratio this / baseline: {c['ratio_samples_per_s']:.3f} (samples/s), {c['ratio_samples_per_cpu_s']:.3f} (per CPU-s)")
        return 0
    if args.loop_only:
        loops = [run_loop(args, args.seed + r) for r in range(args.loop_repeats)]
        report = {"benchmark": "bench_training", "settings": vars(args), "train_supernet_runs": loops,
                  "train_supernet_samples_per_s": statistics.median(x["samples_per_s"] for x in loops)}
        print(json.dumps(report) if args.json else f"train_supernet: {report['train_supernet_samples_per_s']:.1f} samples/s")
        return 0

    info = machine_info()
    mem = {"start": memory()}
    g = torch.Generator().manual_seed(args.seed)
    split = make_split(max(args.loop_samples, args.batch_size * 4), g)
    trainer = Trainer(args, split)
    P = trainer.model.num_paths
    mem["after_setup"] = memory()

    # the supernet step with and without statistics, interleaved so that both see the same noise
    with_stats, without_stats = [], []
    for r in range(args.repeats):
        order = (True, False) if r % 2 == 0 else (False, True)
        for on in order:
            res = run_steps(
                trainer,
                uniform_fn(args.seed + r, P),
                args.steps,
                args.warmup,
                statistics_on=on,
                record=on,
            )
            (with_stats if on else without_stats).append(res)
    mem["after_supernet_steps"] = memory()
    breakdown_ms = {k: 1e3 * v / (args.repeats * args.steps) for k, v in trainer.breakdown.items()}

    # baselines: fixed masks, the plain step (no statistics)
    full = torch.ones(1, P)
    single = torch.zeros(1, P)
    single[0, 0] = 1.0
    full_res = run_steps(trainer, lambda: full, args.steps, args.warmup, statistics_on=False)
    single_res = run_steps(trainer, lambda: single, args.steps, args.warmup, statistics_on=False)
    mem["after_fixed_masks"] = memory()

    # per mask size, the supernet step with statistics
    sizes = {
        k: run_steps(trainer, size_fn(k, args.seed, P), args.size_steps, 1) for k in range(1, P + 1)
    }
    weights = {k: math.comb(P, k) for k in sizes}
    # a uniform mask's expected step time is the C(P,k)-weighted mean of the per-size step times
    expected_step_s = sum(w * sizes[k]["median_step_s"] for k, w in weights.items()) / sum(
        weights.values()
    )
    expected_rate = args.batch_size / expected_step_s

    profile_table = None
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        fn = uniform_fn(args.seed, P)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(10):
                trainer.step(fn())
        profile_table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)

    # the real loop
    loops = [run_loop(args, args.seed + r) for r in range(args.loop_repeats)]
    mem["after_train_supernet"] = memory()
    info["loadavg_end"] = list(os.getloadavg())

    rates_with = [x["samples_per_s"] for x in with_stats]
    rates_without = [x["samples_per_s"] for x in without_stats]
    median_with, median_without = statistics.median(rates_with), statistics.median(rates_without)
    loop_rates = [x["samples_per_s"] for x in loops]
    loop_rate = statistics.median(loop_rates)
    report = {
        "benchmark": "bench_training",
        "settings": vars(args),
        "machine": info,
        "supernet_step_samples_per_s": median_with,
        "supernet_step_samples_per_s_rounds": rates_with,
        "supernet_step_no_statistics_samples_per_s": median_without,
        "supernet_step_no_statistics_samples_per_s_rounds": rates_without,
        "supernet_step_samples_per_cpu_s": statistics.median(
            x["samples_per_cpu_s"] for x in with_stats
        ),
        "statistics_overhead_fraction": 1.0 - median_with / median_without,
        "step_breakdown_ms": breakdown_ms,
        "full_mask": full_res,
        "single_path": single_res,
        "per_size": sizes,
        "uniform_expected_from_size_medians_samples_per_s": expected_rate,
        "train_supernet_samples_per_s": loop_rate,
        "train_supernet_runs": loops,
        "memory": mem,
        "memory_source": "ru_maxrss_mib = resource.getrusage(RUSAGE_SELF).ru_maxrss / 1024 (peak RSS of the process "
        "so far); "
        + (
            "psutil_rss_mib = psutil.Process().memory_info().rss (current RSS)"
            if psutil
            else "psutil not installed"
        ),
        "target_samples_per_s": TARGET_SAMPLES_PER_S,
        "target_met_supernet_step": median_with >= TARGET_SAMPLES_PER_S,
        "target_met_train_supernet": loop_rate >= TARGET_SAMPLES_PER_S,
    }
    if args.json:
        print(json.dumps(report))
        return 0
    ok = lambda x: "met" if x >= TARGET_SAMPLES_PER_S else "NOT met"  # noqa: E731
    fmt = lambda xs: ", ".join(f"{x:.1f}" for x in xs)  # noqa: E731
    print(f"bench_training  {info['date']}")
    print(
        f"  cpu {info['cpu_model']} ({info['cpu_count']} cpus), torch {info['torch']}, "
        f"{info['torch_threads']} threads, python {info['python']}"
    )
    print(f"  load average start {info['loadavg_start'][0]:.2f}, end {info['loadavg_end'][0]:.2f}")
    print(
        f"  mosei shape, width {args.width}, 8 heads, dropout {args.dropout}, batch {args.batch_size}; "
        f"{args.steps} timed steps after {args.warmup} warm-up, {args.repeats} rounds (median; rounds in [])"
    )
    print(
        f"  supernet step (uniform mask, as train_supernet, with grad-norm statistics): "
        f"{median_with:.1f} samples/s [{fmt(rates_with)}]  target >= {TARGET_SAMPLES_PER_S}: {ok(median_with)}"
    )
    print(
        f"  same step without the grad-norm statistics: {median_without:.1f} samples/s [{fmt(rates_without)}]  "
        f"(statistics overhead {100 * report['statistics_overhead_fraction']:.1f}%)"
    )
    print(
        f"  supernet step per CPU-second of this process: {report['supernet_step_samples_per_cpu_s']:.1f} "
        "samples/CPU-s (median of rounds)"
    )
    print(
        "  step breakdown, ms/step of the supernet step: "
        + ", ".join(f"{k} {v:.1f}" for k, v in breakdown_ms.items())
    )
    print(
        f"  baseline fixed full mask (6 paths, plain step): {full_res['samples_per_s']:.1f} samples/s "
        f"(median step: {full_res['median_step_samples_per_s']:.1f}; "
        f"per CPU-s: {full_res['samples_per_cpu_s']:.1f})"
    )
    print(
        f"  baseline fixed single path (text->audio, plain step): {single_res['samples_per_s']:.1f} samples/s "
        f"(median step: {single_res['median_step_samples_per_s']:.1f}; "
        f"per CPU-s: {single_res['samples_per_cpu_s']:.1f})"
    )
    print(
        f"  per mask size k (random k-path masks, supernet step, {args.size_steps} steps each), "
        "samples/s (median step):"
    )
    print(
        "    "
        + ", ".join(
            f"k={k}: {v['samples_per_s']:.1f} ({v['median_step_samples_per_s']:.1f})"
            for k, v in sizes.items()
        )
    )
    print(
        f"  uniform mask expected from the per-size median step times (C(6,k)-weighted): "
        f"{expected_rate:.1f} samples/s  target >= {TARGET_SAMPLES_PER_S}: {ok(expected_rate)}"
    )
    print(
        f"  train_supernet() ({args.loop_samples} samples, 1 epoch, history samples_per_s): "
        f"{loop_rate:.1f} samples/s [{fmt(loop_rates)}]  target >= {TARGET_SAMPLES_PER_S}: {ok(loop_rate)}"
    )
    print(f"  memory ({report['memory_source']}):")
    for phase, m in mem.items():
        print(
            f"    {phase:22s} ru_maxrss {m['ru_maxrss_mib']:.0f} MiB"
            + (f", psutil rss {m['psutil_rss_mib']:.0f} MiB" if "psutil_rss_mib" in m else "")
        )
    if profile_table:
        print("\n  torch.profiler, 10 supernet steps, by self CPU time:\n" + profile_table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
