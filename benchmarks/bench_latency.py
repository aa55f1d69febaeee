"""Benchmark: how well additive cost tables (``supernet/hardware.py``) predict measured latency and
peak memory of subnets they were not fitted on, and how well FLOPs rank them (issue 21).

Usage:
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_latency.py --threads 1 --out docs/results
    .venv/bin/python benchmarks/bench_latency.py --shapes mosei --device cuda --batch-size 32 --clocks wall

Issue 21's CPU target: "On the CPU, mosei and mfeat shapes: the latency table's median relative
error <= 10 % against measured latency on 100 random masks; Spearman rho between MFLOPs and
measured latency over those masks reported (showing where FLOPs mislead)."

**Shapes** (``--shapes``), each a supernet at its initialization (latency and memory do not depend
on the weights), seed 0, in eval mode:

- ``mosei``: text 768-d x 50 steps, audio 74 x 50, vision 35 x 50; width 256, 8 heads, a linear
  regression head (``tests/test_flops.py::test_mosei_full_model_matches_the_paper``): k = 3, 6 paths,
  63 masks.
- ``mfeat``: the six UCI mfeat views as vectors (fou 76, fac 216, kar 64, pix 240, zer 47, mor 6
  features), 10 classes, ``studies/mfeat.toml``'s [model] (width 64, 4 heads, 8 tokens per view):
  k = 6, 30 paths.
- ``tiny``: three small modalities at width 16 (for the test of this script).

**Per shape**:

1. For each clock (``--clocks``): ``fit_cost_table(model, "latency_ms", clock=...)`` on its
   default design (every single-path mask, the full mask, 2P random masks; seed ``--fit-seed``).
   ``wall`` is elapsed time, the latency itself; ``cpu`` is the timing thread's CPU time, which a
   shared machine's load barely disturbs (one torch thread on the CPU only; see
   ``measure_latency``). ``fit_cost_table(model, "peak_memory_mb")`` on the same design.
2. Held-out masks: ``--masks`` random masks (each bit 1 with probability 1/2) drawn with
   ``--test-seed``, distinct and none of the fit design's; where the space has fewer such masks
   (mosei: 63 masks in all), every mask outside the design.
3. Each held-out mask is measured: latency with every clock (the clocks one after the other on
   the same mask, so they see the same load) and peak memory; MFLOPs from
   ``supernet.flops.flop_table`` and parameters from ``count_params``. Then (unless
   ``--no-retest``) every held-out mask's latency is measured a second time, in a second pass:
   how far two measurements of one mask lie apart is the noise floor of the table's error.
4. Reported per quantity (and clock): the table's median and max relative error against the
   held-out measurements (and on its fit masks), Spearman rho (``scipy.stats.spearmanr``) of
   MFLOPs and of the table against the measurements, the median relative spread (IQR / median)
   of the held-out latency measurements, the retest's error (the second pass read as an estimate
   of the first) and rho, and whether the median error meets the 10 % target.

Writes ``OUT/bench_latency.json`` (every measurement) and ``OUT/bench_latency.md``; the machine's
load average at the start (``machine_info``) and at the end is recorded: latency on a shared
machine is noisy, and the wall clock's figures depend on it.
"""

from __future__ import annotations

import argparse
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
import torch  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

from supernet.config import ModelConfig  # noqa: E402
from supernet.data.dataset import ModalitySpec  # noqa: E402
from supernet.flops import flop_table  # noqa: E402
from supernet.hardware import (  # noqa: E402
    CostTable,
    count_params,
    describe_device,
    design_masks,
    fit_cost_table,
    measure_latency,
    model_on,
    peak_memory_mb,
    relative_errors,
    table_errors,
)
from supernet.model import Supernet, SupernetSpec  # noqa: E402
from supernet.paths import format_mask  # noqa: E402

TARGET_MEDIAN_ERROR = 0.10
SHAPES = ("mosei", "mfeat", "tiny")
MFEAT_VIEWS = {"fou": 76, "fac": 216, "kar": 64, "pix": 240, "zer": 47, "mor": 6}  # the shipped copy's views


def shape_model(name: str) -> Supernet:
    """The supernet of one shape, at its initialization (seed 0)."""
    torch.manual_seed(0)
    if name == "mosei":
        spec = SupernetSpec((ModalitySpec("text", 768, 50), ModalitySpec("audio", 74, 50), ModalitySpec("vision", 35, 50)),
                            "regression", 1)
        return Supernet(spec, ModelConfig(width=256, heads=8, head="linear"))
    if name == "mfeat":
        from search_service.study_file import load_study

        spec = SupernetSpec(tuple(ModalitySpec(v, d) for v, d in MFEAT_VIEWS.items()), "classification", 10)
        return Supernet(spec, load_study("mfeat").model)
    if name == "tiny":
        spec = SupernetSpec((ModalitySpec("a", 6, 5), ModalitySpec("b", 4, 7), ModalitySpec("v", 10, None)), "classification", 3)
        return Supernet(spec, ModelConfig(width=16, heads=2, ffn_mult=2, vector_tokens=4))
    raise SystemExit(f"error: --shapes: unknown shape {name!r}; use {', '.join(SHAPES)}")


def held_out_masks(n_paths: int, count: int, seed: int, exclude: list[list[int]]) -> list[list[int]]:
    """``count`` distinct random masks outside ``exclude`` (each bit 1 with probability 1/2, from
    ``torch.Generator(seed)``), or every mask outside it when the space holds fewer."""
    taken = {tuple(m) for m in exclude}
    if 2**n_paths - 1 - len(taken) <= count:
        codes = range(1, 2**n_paths)
        return [m for m in ([int(b) for b in format(c, f"0{n_paths}b")] for c in codes) if tuple(m) not in taken]
    g = torch.Generator().manual_seed(seed)
    out: list[list[int]] = []
    while len(out) < count:
        mask = torch.randint(0, 2, (n_paths,), generator=g).tolist()
        if any(mask) and tuple(mask) not in taken:
            taken.add(tuple(mask))
            out.append(mask)
    return out


def _rho(a: list[float], b: list[float]) -> float:
    return float(spearmanr(a, b).statistic) if len(a) > 1 else float("nan")


def summarize(q: dict, masks: list[list[int]], mflops: list[float], measured: list[float]) -> None:
    """Add the table's figures to ``q`` (one quantity's raw record: ``table``, the measurements,
    ``retest_ms`` where measured twice), in place."""
    table = CostTable.from_dict(q["table"])
    errors = table_errors(table, masks, measured)
    # a table's estimates are sums of floats: masks the measurement ties (peak memory) differ in the
    # last digits, which Spearman would rank apart; far below any measurement's resolution
    estimates = [round(table.estimate(m), 9) for m in masks]
    q.update(fit_median_error=table.median_error, fit_max_error=table.max_error, median_error=errors["median"],
             max_error=errors["max"], n=errors["n"], rho_mflops=_rho(mflops, measured),
             rho_table=_rho(estimates, measured), target_met=errors["median"] <= TARGET_MEDIAN_ERROR)
    if q.get("retest_ms"):
        again = relative_errors(q["retest_ms"], measured)
        q.update(retest_median_error=statistics.median(again), retest_max_error=max(again),
                 rho_retest=_rho(q["retest_ms"], measured))


def summarize_shape(r: dict) -> dict:
    """Every figure of one shape's record, computed from its raw measurements and tables."""
    masks = [[int(b) for b in m] for m in r["masks"]]
    summarize(r["memory"], masks, r["mflops"], r["memory"]["measured_mb"])
    for q in r["latency"].values():
        summarize(q, masks, r["mflops"], q["measured_ms"])
        q["median_spread"] = statistics.median(q["spread"])
    return r


def run_shape(name: str, args: argparse.Namespace) -> dict:
    """Fit the tables and measure the held-out masks of one shape: the raw record."""
    started = time.perf_counter()
    model = model_on(shape_model(name), args.device)
    model.eval()
    timing = {"min_run_time": args.min_run_time, "max_run_time": args.max_run_time, "threshold": args.threshold}
    common = {"device": args.device, "batch_size": args.batch_size, "precision": args.precision}
    fit = design_masks(model.num_paths, seed=args.fit_seed)
    tables = {clock: fit_cost_table(model, "latency_ms", device=args.device, batch_size=args.batch_size,
                                    precision=args.precision, seed=args.fit_seed, clock=clock, **timing)
              for clock in args.clocks}
    memory_table = fit_cost_table(model, "peak_memory_mb", seed=args.fit_seed, **common)
    masks = held_out_masks(model.num_paths, args.masks, args.test_seed, fit)
    flops = flop_table(model)
    passes = 2 if args.retest else 1
    latency: dict[str, list] = {clock: [] for clock in args.clocks}
    retest: dict[str, list] = {clock: [] for clock in args.clocks}
    for p in range(passes):
        for n, mask in enumerate(masks):
            for clock in args.clocks:
                (retest if p else latency)[clock].append(measure_latency(model, mask, clock=clock, **common, **timing))
            print(f"{name}: pass {p + 1}/{passes}, {n + 1}/{len(masks)} held-out masks", end="\r", file=sys.stderr, flush=True)
        print(file=sys.stderr)
    return {
        "paths": model.num_paths,
        "device": describe_device(args.device),
        "fit_masks": len(fit),
        "masks": [format_mask(m) for m in masks],
        "mflops": [flops.mflops(m) for m in masks],
        "params": [count_params(model, m) for m in masks],
        "latency": {
            clock: {
                "table": tables[clock].to_dict(),
                "fit_spread": tables[clock].spread,
                "measured_ms": [m.median_ms for m in latency[clock]],
                "spread": [m.spread for m in latency[clock]],
                "runs": [m.runs for m in latency[clock]],
                "retest_ms": [m.median_ms for m in retest[clock]],
            }
            for clock in args.clocks
        },
        "memory": {"table": memory_table.to_dict(), "measured_mb": [peak_memory_mb(model, m, **common) for m in masks]},
        "seconds": time.perf_counter() - started,
    }


def markdown(report: dict) -> str:
    s = report["settings"]
    m = report["machine"]
    lines = [
        "**bench_latency**: additive cost tables against measured subnets (issue 21)",
        "",
        f"`{report['command']}`; {m['date']}, {m['cpu_model']} ({m['cpu_count']} CPUs), torch {m['torch']}, "
        f"{s['threads']} torch thread(s), batch {s['batch_size']}, {s['precision']}; load average "
        f"{' '.join(f'{x:.2f}' for x in m['loadavg_start'])} at the start, "
        f"{' '.join(f'{x:.2f}' for x in report['loadavg_end'])} at the end.",
        "",
        "| shape | quantity | clock | fit masks | fit err (median / max) | held-out masks | table err (median / max) "
        "| target median <= 10 % | retest err (median / max) | rho(MFLOPs, measured) | rho(table, measured) "
        "| rho(retest, measured) | median spread |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in report["shapes"].items():
        rows = [("latency_ms", clock, q) for clock, q in r["latency"].items()] + [("peak_memory_mb", "-", r["memory"])]
        for quantity, clock, q in rows:
            spread = f"{q['median_spread']:.1%}" if "median_spread" in q else "0 (exact)"
            again = (f"{q['retest_median_error']:.1%} / {q['retest_max_error']:.1%}", f"{q['rho_retest']:.3f}") \
                if "retest_median_error" in q else ("–", "–")
            lines.append(
                f"| {name} | {quantity} | {clock} | {r['fit_masks']} | {q['fit_median_error']:.1%} / {q['fit_max_error']:.1%} "
                f"| {q['n']} | {q['median_error']:.1%} / {q['max_error']:.1%} | {'met' if q['target_met'] else 'NOT met'} "
                f"| {again[0]} | {q['rho_mflops']:.3f} | {q['rho_table']:.3f} | {again[1]} | {spread} |"
            )
    if "summarized_again" in report:
        lines += ["", f"Figures computed again from the run's JSON on {report['summarized_again']} (`--from-json`)."]
    lines += ["", "Retest: every held-out mask measured a second time after the first pass, read as an estimate of "
              "the first: the noise floor a table's error is to be judged against (memory is exact and is not "
              "measured twice). Errors are relative to the first pass.", ""]
    for name, r in report["shapes"].items():
        lines.append(f"- {name}: {r['paths']} paths on {r['device']}, {r['seconds']:.0f} s.")
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    """The options (``bench_gpu --latency-masks`` parses its latency run with them too)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", default="mosei,mfeat", help=f"comma-separated, of {', '.join(SHAPES)}")
    parser.add_argument("--masks", type=int, default=100, help="held-out random masks per shape")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "bf16"))
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: keep torch's setting)")
    parser.add_argument("--clocks", default="", help="wall,cpu (default: both with 1 thread on the CPU, else wall)")
    parser.add_argument("--fit-seed", type=int, default=0)
    parser.add_argument("--test-seed", type=int, default=1)
    parser.add_argument("--threshold", type=float, default=0.05, help="adaptive_autorange's IQR/median stop")
    parser.add_argument("--min-run-time", type=float, default=0.05)
    parser.add_argument("--max-run-time", type=float, default=1.0)
    parser.add_argument("--no-retest", dest="retest", action="store_false",
                        help="measure the held-out masks once (default: a second pass, the noise floor)")
    parser.add_argument("--out", default="", help="write bench_latency.json and .md into this folder")
    parser.add_argument("--stem", default="bench_latency")
    parser.add_argument("--from-json", help="summarize an earlier run's JSON again instead of measuring")
    parser.add_argument("--json", action="store_true")
    return parser


def resolve_clocks(args: argparse.Namespace) -> None:
    """``--clocks`` as a list: by default both clocks with one thread on the CPU, else the wall clock."""
    single = torch.device(args.device).type == "cpu" and torch.get_num_threads() == 1
    args.clocks = [c for c in args.clocks.split(",") if c] or (["wall", "cpu"] if single else ["wall"])


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.from_json:
        report = json.loads(Path(args.from_json).read_text())
        for r in report["shapes"].values():
            summarize_shape(r)
        report["summarized_again"] = _common.machine_info()["date"]
        _common.publish(report, markdown(report), out=args.out, stem=args.stem, as_json=args.json)
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    shapes = [s for s in args.shapes.split(",") if s]
    resolve_clocks(args)
    if args.masks < 1:
        raise SystemExit("error: --masks must be at least 1")
    _common.check_tag(args.stem)
    report = {
        "command": "OMP_NUM_THREADS=" + os.environ.get("OMP_NUM_THREADS", "(unset)") + " python benchmarks/bench_latency.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "settings": {"shapes": shapes, "masks": args.masks, "batch_size": args.batch_size, "device": args.device,
                     "precision": args.precision, "threads": torch.get_num_threads(), "clocks": args.clocks,
                     "fit_seed": args.fit_seed, "test_seed": args.test_seed, "threshold": args.threshold,
                     "min_run_time": args.min_run_time, "max_run_time": args.max_run_time, "retest": args.retest,
                     "target_median_error": TARGET_MEDIAN_ERROR},
        "machine": _common.machine_info(),
        "shapes": {},
    }
    for name in shapes:
        shape_model(name)  # an unknown shape fails before any measurement
    for name in shapes:
        report["shapes"][name] = summarize_shape(run_shape(name, args))
    report["loadavg_end"] = list(os.getloadavg())
    _common.publish(report, markdown(report), out=args.out, stem=args.stem, as_json=args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
