"""``benchmarks/bench_latency.py`` end to end on the tiny shape (5 held-out masks, a few timed
runs per mask): the report's fields exist and are finite. No speed or accuracy thresholds."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_latency  # noqa: E402


def test_held_out_masks_avoid_the_fit_design() -> None:
    fit = [[1, 0, 0], [0, 1, 0], [1, 1, 1]]
    every = bench_latency.held_out_masks(3, 100, seed=1, exclude=fit)  # 7 masks, 3 in the design
    assert sorted(every) == sorted([[0, 0, 1], [0, 1, 1], [1, 0, 1], [1, 1, 0]])
    six = bench_latency.held_out_masks(6, 100, seed=1, exclude=[[1] * 6])  # the mosei shape's 63 masks
    assert len(six) == 62 and [1] * 6 not in six
    some = bench_latency.held_out_masks(8, 20, seed=1, exclude=fit + [[1] * 8])
    assert len(some) == 20 and len({tuple(m) for m in some}) == 20 and all(any(m) for m in some)
    assert [1] * 8 not in some


def test_tiny_run_reports_finite_figures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    threads = torch.get_num_threads()
    try:
        code = bench_latency.main(["--shapes", "tiny", "--masks", "5", "--threads", "1", "--min-run-time", "0.001",
                                   "--max-run-time", "0.01", "--out", str(tmp_path)])
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    printed = capsys.readouterr().out
    assert "| tiny | latency_ms | wall |" in printed and "| tiny | peak_memory_mb |" in printed
    assert (tmp_path / "bench_latency.md").read_text().startswith("**bench_latency**")
    report = json.loads((tmp_path / "bench_latency.json").read_text())
    assert report["settings"]["clocks"] == ["wall", "cpu"] and report["settings"]["threads"] == 1
    assert len(report["machine"]["loadavg_start"]) == 3 and len(report["loadavg_end"]) == 3
    shape = report["shapes"]["tiny"]
    assert shape["fit_masks"] == 19 and len(shape["masks"]) == 5 and len(shape["mflops"]) == 5
    for q in [*shape["latency"].values(), shape["memory"]]:
        for key in ("fit_median_error", "fit_max_error", "median_error", "max_error"):
            assert math.isfinite(q[key]) and q[key] >= 0, key
        assert -1 <= q["rho_mflops"] <= 1 and -1 <= q["rho_table"] <= 1
        assert q["n"] == 5 and isinstance(q["target_met"], bool)
    for clock in ("wall", "cpu"):
        latency = shape["latency"][clock]
        assert latency["table"]["clock"] == clock and latency["median_spread"] >= 0
        assert len(latency["measured_ms"]) == 5 and all(v > 0 and math.isfinite(v) for v in latency["measured_ms"])
        assert len(latency["retest_ms"]) == 5 and math.isfinite(latency["retest_median_error"])
        assert latency["retest_max_error"] >= latency["retest_median_error"] >= 0 and -1 <= latency["rho_retest"] <= 1
    assert all(v > 0 and math.isfinite(v) for v in shape["memory"]["measured_mb"])
    # the figures come from the raw measurements: summarizing the JSON again gives them back
    assert bench_latency.main(["--from-json", str(tmp_path / "bench_latency.json"), "--out", str(tmp_path / "again")]) == 0
    again = json.loads((tmp_path / "again" / "bench_latency.json").read_text())
    assert again.pop("summarized_again") and again == report
