"""Several worker processes on one study: they share the budget, never score a mask twice, and
stop at exactly the budget. The study is created once, then two ``mro-search worker`` processes
join it as two machines would (PostgreSQL, and SQLite on one machine); and
``mro-search run --workers 2``."""

from __future__ import annotations

import json
import socket
from collections import Counter

import pytest
from optuna.trial import TrialState

N_MASKS = 63


def _assert_shared_fairly(mro, study, budget: int) -> dict[str, list[int]]:
    """Exactly ``budget`` COMPLETE trials with distinct masks, none failed; the trial numbers
    each worker ran."""
    done = mro.complete(study)
    assert len(done) == budget, Counter(t.state.name for t in study.get_trials(deepcopy=False))
    assert budget <= N_MASKS
    masks = [mro.mask(t) for t in done]
    assert len(set(masks)) == budget, f"masks scored twice: {[m for m, n in Counter(masks).items() if n > 1]}"
    assert all(m == t.user_attrs["mask"] for m, t in zip(masks, done))
    assert not study.get_trials(deepcopy=False, states=(TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING))
    by_worker: dict[str, list[int]] = {}
    for t in done:
        by_worker.setdefault(t.user_attrs["worker"], []).append(t.number)
    return by_worker


def _interleaved(a: list[int], b: list[int]) -> bool:
    """Neither worker ran all its trials before the other one's first."""
    return min(a) < max(b) and min(b) < max(a)


@pytest.mark.postgres
@pytest.mark.slow
def test_two_worker_processes_on_a_postgres_study(tiny, mro, pg_url, tmp_path):
    budget = 40
    mro.create(tiny.file, pg_url, trials=budget)
    # two "machines": one gets the URL on its command line, the other from MRO_STORAGE; each
    # takes at most 25 trials, so both must work for the study to reach its budget
    args = ["worker", "--study", str(tiny.file), "--trials", "25", "-q"]
    procs = [
        mro.start([*args, "--storage", pg_url, "--seed", "1"], cwd=tmp_path),
        mro.start([*args, "--seed", "2"], cwd=tmp_path, env=mro.env(MRO_STORAGE=pg_url)),
    ]
    try:
        # the first worker up waits (stopped) until the other has completed a trial too
        mro.hold_leader_until_others_work(mro.open_study(pg_url), procs)
        outputs = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            mro.stop(p)
    mro.assert_clean_exits(procs, outputs)

    study = mro.open_study(pg_url)
    by_worker = _assert_shared_fairly(mro, study, budget)
    host = socket.gethostname()
    assert set(by_worker) == {f"{host}:{p.pid}" for p in procs}, by_worker.keys()
    a, b = by_worker.values()
    assert len(a) >= budget - 25 and len(b) >= budget - 25
    assert _interleaved(a, b), f"the workers ran one after the other: {sorted(a)} / {sorted(b)}"


@pytest.mark.slow
def test_two_worker_processes_on_an_sqlite_study(tiny, mro, sqlite_url, tmp_path):
    """Two workers on one SQLite file (write-ahead log): each takes at most 16 of the 30
    trials, so both must work for the study to reach its budget."""
    budget = 30
    mro.create(tiny.file, sqlite_url, trials=budget)
    args = ["worker", "--study", str(tiny.file), "--storage", sqlite_url, "--trials", "16", "-q"]
    procs = [mro.start([*args, "--seed", str(seed)], cwd=tmp_path) for seed in (1, 2)]
    try:
        outputs = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            mro.stop(p)
    mro.assert_clean_exits(procs, outputs)
    by_worker = _assert_shared_fairly(mro, mro.open_study(sqlite_url), budget)
    host = socket.gethostname()
    assert set(by_worker) == {f"{host}:{p.pid}" for p in procs}, by_worker.keys()
    assert all(len(numbers) >= budget - 16 for numbers in by_worker.values())


@pytest.mark.slow
def test_run_with_two_workers_on_sqlite(tiny, mro, sqlite_url, tmp_path):
    """``run --workers 2``: the study reaches its budget exactly, no mask twice, and the front
    printed is the study's (which worker ran what depends on which started first)."""
    budget = 30
    result = mro.run(
        ["run", "--study", str(tiny.file), "--storage", sqlite_url, "--trials", str(budget), "--workers", "2", "--seed", "7", "--no-report", "--json", "-q"],
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    summary = json.loads(result.stdout)
    assert summary["budget"] == budget
    assert summary["counts"]["complete"] == budget
    assert summary["pareto_front"], "an empty Pareto front"

    study = mro.open_study(sqlite_url)
    _assert_shared_fairly(mro, study, budget)
    front = {row["mask"] for row in summary["pareto_front"]}
    assert front == {t.user_attrs["mask"] for t in study.best_trials}
