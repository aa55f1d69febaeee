"""``benchmarks/bench_gpu.py`` is prepared for a lent GPU machine; here it runs its smoke settings on
the CPU, so that the one script a 15-minute lease allows does not fail on something a CPU could
have caught. (The CUDA-graph mode needs CUDA and reports itself skipped.)"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_gpu  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")


def test_quick_run_on_the_cpu(tmp_path, capsys):
    assert bench_gpu.main(["--device", "cpu", "--quick", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "bench_gpu_quick.json").read_text())
    rows = {r["mode"]: r for r in report["training"]}
    assert set(rows) == set(bench_gpu.MODES)
    for mode in ("graph_bf16", "train_graph_bf16"):
        assert rows[mode]["skipped"] == "CUDA graphs need a CUDA device"
    for mode in set(bench_gpu.MODES) - {"graph_bf16", "train_graph_bf16"}:
        assert rows[mode]["samples_per_s"] > 0 and rows[mode]["batch_size"] == 8
    # mro-search train's own step, as its [train] settings configure it on the CPU
    assert not rows["train_per_sample_bf16"]["graph"] and rows["train_per_sample_bf16"]["batched"]
    assert not rows["train_fp32"]["batched"]
    assert report["scoring"]["paths"] == 30
    assert report["scoring"]["max_abs_diff_vs_score_masks"] == 0.0  # the device path scores as score_masks does
    assert "| graph_bf16 | 8 | – | – | skipped" in (tmp_path / "bench_gpu_quick.md").read_text()
    assert report["targets"] == {}  # no batch 32 or 256 in a quick run: no verdict claimed


def test_per_sample_masks_drawn_on_the_device_are_never_empty():
    bench = bench_gpu.Bench(bench_gpu.argparse.Namespace(**bench_gpu.QUICK, seed=0), 8, bench_gpu.torch.device("cpu"))
    bench_gpu.torch.manual_seed(0)
    masks = bench.per_sample_masks(20000)
    assert masks.shape == (20000, 6) and bool((masks.sum(dim=1) >= 1).all())
    assert abs(float(masks.mean()) - 0.5) < 0.02


def test_latency_tables_on_the_device(tmp_path):
    """``--latency-masks``: bench_latency's tables fitted and checked on the device (issue 21; on a
    lent GPU with ``--device cuda``; here the tiny shape on the CPU)."""
    assert bench_gpu.main(["--device", "cpu", "--quick", "--modes", "fp32", "--latency-masks", "2", "--latency-shapes", "tiny",
                           "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "bench_gpu_quick.json").read_text())
    wall = report["latency"]["tiny"]["latency"]["wall"]
    assert wall["n"] == 2 and wall["median_error"] >= 0 and report["latency"]["tiny"]["memory"]["median_error"] >= 0
    assert "latency table, tiny shape on cpu" in (tmp_path / "bench_gpu_quick.md").read_text()
