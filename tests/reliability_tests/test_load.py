"""Load, scaled down: ``benchmarks/bench_load.py`` with 4 workers and 120 trials on one PostgreSQL
study (k=4, 4,095 masks, scored from the cache). The full run is 8 workers and 1,000 trials:
``python benchmarks/bench_load.py``. Invariants: no error, no FAIL trial, no mask completed
twice, COMPLETE == the budget, nothing left RUNNING or WAITING; storage latency is measured."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from optuna.trial import TrialState

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_load.py"
WORKERS, TRIALS = 4, 120


@pytest.mark.postgres
@pytest.mark.slow
def test_four_workers_120_trials_on_one_postgres_study(mro, pg_url, tmp_path):
    result = subprocess.run(
        [sys.executable, str(BENCH), "--workers", str(WORKERS), "--trials", str(TRIALS), "--storage", pg_url, "--workdir", str(tmp_path), "--json"],
        capture_output=True, text=True, timeout=500, env=mro.env(),
    )
    assert result.returncode == 0, f"{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    report = json.loads(result.stdout)
    assert report["errors"] == []
    assert report["exit_codes"] == [0] * WORKERS
    assert report["complete"] == TRIALS and report["distinct_masks"] == TRIALS
    assert "fail" not in report["states"] and "running" not in report["states"] and "waiting" not in report["states"]
    assert sum(report["completed_per_worker"]) == TRIALS
    assert sum(1 for n in report["completed_per_worker"] if n > 0) >= 2, "the load was not shared"
    per_trial, per_call = report["storage_per_trial_ms"], report["storage_per_call_ms"]
    assert per_trial["n"] >= TRIALS and 0 < per_trial["p50"] <= per_trial["p95"]
    assert per_call["n"] > per_trial["n"] and 0 < per_call["p95"]
    assert report["trials_per_s"] > 0

    # the study as any Optuna client sees it
    study = mro.open_study(pg_url, "load")
    trials = study.get_trials(deepcopy=False)
    states = Counter(t.state for t in trials)
    assert states[TrialState.COMPLETE] == TRIALS and states[TrialState.FAIL] == 0, states
    assert not states[TrialState.RUNNING] and not states[TrialState.WAITING], states
    masks = [t.user_attrs["mask"] for t in trials if t.state == TrialState.COMPLETE]
    assert len(set(masks)) == TRIALS
    paths = study._storage.get_study_system_attrs(study._study_id)["mro:paths"]
    assert len(paths) == 12
    assert all("".join(str(int(t.params[p])) for p in paths) == t.user_attrs["mask"] for t in trials if t.state == TrialState.COMPLETE)
