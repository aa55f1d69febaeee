"""``benchmarks/bench_rank_data.py``: the paired comparison and its rule on known inputs, and a
``--quick`` run end to end (tiny demo data, 2 epochs, 1 seed, 8 trials) into a temporary folder."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_rank_data  # noqa: E402


def _rows(batch: list[float], valid: list[float]) -> list[dict]:
    return [{"seed": i, "arms": {"batch": {"m": b}, "valid": {"m": v}}} for i, (b, v) in enumerate(zip(batch, valid))]


def test_compare_flags_a_consistently_worse_arm_and_passes_noise():
    worse = bench_rank_data.compare(_rows([0.8, 0.7, 0.9, 0.85, 0.75], [0.5, 0.4, 0.6, 0.55, 0.45]), "m")
    assert worse["n"] == 5 and worse["diff_mean"] == pytest.approx(-0.3)
    assert worse["p_wilcoxon"] == pytest.approx(1 / 32) and worse["p_ttest"] < 0.05 and worse["verdict"] == "WORSE"
    same = bench_rank_data.compare(_rows([0.8, 0.7, 0.9], [0.8, 0.7, 0.9]), "m")
    assert same["p_wilcoxon"] is None and same["verdict"] == "no worse"
    assert bench_rank_data.compare(_rows([1.0] * 5, [1.0] * 5), "m")["verdict"] == "no worse"  # ties, SD 0
    noisy = bench_rank_data.compare(_rows([0.8, 0.7, 0.9, 0.6, 0.75], [0.82, 0.69, 0.88, 0.63, 0.74]), "m")
    assert noisy["verdict"] == "no worse" and noisy["p_wilcoxon"] >= 0.05
    # not significant (3 seeds) but the mean drop exceeds the batch arm's spread: WORSE
    drop = bench_rank_data.compare(_rows([0.80, 0.81, 0.82], [0.70, 0.71, 0.83]), "m")
    assert drop["p_wilcoxon"] >= 0.05 and drop["verdict"] == "WORSE"
    # a seed without the measure (None, nan) is left out of the pairing
    rows = _rows([0.8, 0.7, 0.9], [0.8, 0.7, 0.9])
    rows[1]["arms"]["valid"]["m"] = float("nan")
    assert bench_rank_data.compare(rows, "m")["seeds"] == [0, 2]
    assert bench_rank_data.compare(_rows([0.8], [0.7]), "m")["verdict"] is None


def test_quick_run_writes_finite_measures(tmp_path, monkeypatch):
    monkeypatch.setattr(bench_rank_data, "CACHE_DIR", tmp_path / "cache")
    threads = torch.get_num_threads()
    try:
        assert bench_rank_data.main(["--quick", "--out", str(tmp_path)]) == 0
    finally:
        torch.set_num_threads(threads)
    report = json.loads((tmp_path / "bench_rank_data_quick.json").read_text())
    assert (tmp_path / "bench_rank_data_quick.md").read_text().startswith("**bench_rank_data**")
    assert report["settings"]["quick"] and report["settings"]["datasets"] == ["demo"]
    (row,) = report["seeds"]
    assert row["dataset"] == "demo" and row["seed"] == 0 and row["space"] == 63
    trials = report["settings"]["trials"]
    for arm in bench_rank_data.ARMS:
        r = row["arms"][arm]
        assert len(r["masks"]) == trials and len(r["hv_own_curve"]) == trials
        assert r["fidelity"]["masks"] == 63  # bench_fidelity's stored seed-0 masks
        for key in ("tau_acc", "tau_loss", "prior_rho"):
            assert math.isfinite(r[key]) and -1.0 <= r[key] <= 1.0
        for key in ("hv_own@early", "hv_own@trials", "hv_common@early", "hv_common@trials", "hv_standalone@trials"):
            assert math.isfinite(r[key]) and 0.0 < r[key] <= 1.0 + 1e-9
        assert r["hv_own@trials"] >= r["hv_own@early"] - 1e-12
    summary = report["summary"]["demo"]
    assert set(bench_rank_data.VERDICT) <= set(summary["measures"])
    assert summary["verdict"].startswith("no verdict")  # one seed
