"""Workers under faults, with nothing lost: a worker killed in the middle of a trial, trials
abandoned before their first heartbeat, a PostgreSQL restart during a run, and Ctrl-C on a run
with several workers. Real PostgreSQL, real ``mro-search`` worker processes.

After every fault the study ends with exactly its budget of COMPLETE trials, no mask scored
twice, no trial left RUNNING or WAITING, and the mask of every interrupted trial completed by
its retry (Optuna's heartbeat fails the trial, ``storage.RetryStaleTrialCallback`` queues it
again with its mask).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections import Counter

import pytest
from optuna.trial import TrialState

from search_service import storage as storage_module
from search_service.sampler import BUDGET_KEY, MASK_KEY
from search_service.storage import GRACE_PERIOD, HEARTBEAT_INTERVAL, STALE_KEY

POLL_SECONDS = 2.0  # run_worker's poll while others hold the rest of the budget


# --- helpers ----------------------------------------------------------------------------------


def _mask(mro, trial) -> str | None:
    """A trial's mask: its path parameters, else the mask its sampler claimed."""
    if all(p in trial.params for p in mro.paths):
        return mro.mask(trial)
    claimed = trial.system_attrs.get(MASK_KEY)
    return claimed if isinstance(claimed, str) and len(claimed) == len(mro.paths) else None


def _assert_whole(mro, study, budget: int) -> list:
    """Exactly ``budget`` COMPLETE trials, each mask once, nothing RUNNING or WAITING; every
    failed trial was retried. Returns the trials."""
    trials = study.get_trials(deepcopy=False)
    states = Counter(t.state.name for t in trials)
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(done) == budget, states
    masks = [mro.mask(t) for t in done]
    assert len(set(masks)) == budget, f"masks scored twice: {[m for m, n in Counter(masks).items() if n > 1]}"
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)], states
    for failed in (t for t in trials if t.state == TrialState.FAIL):
        retried = [t for t in trials if failed.number in t.system_attrs.get("retry_history", [])]
        assert retried, f"trial {failed.number} failed and was never retried"
        mask = _mask(mro, failed)
        if mask is not None:
            assert mask in masks, f"the mask {mask} of failed trial {failed.number} was lost: " + "; ".join(
                f"{t.number} {t.state.name} {_mask(mro, t)} {t.params} {t.system_attrs}" for t in [failed, *retried]
            )
    return trials


def _study_if_exists(mro, url: str):
    try:
        study = mro.open_study(url)
    except Exception:  # not created yet (no tables, or no study of that name)
        return None
    return study if BUDGET_KEY in study._storage.get_study_system_attrs(study._study_id) else None


def _workers_seen(study) -> int:
    return len({t.user_attrs.get("worker") for t in study.get_trials(deepcopy=False)} - {None})


def _worker_args(tiny, url: str) -> list[str]:
    return ["worker", "--study", str(tiny.file), "--storage", url, "-q"]


def _kill_mid_trial(mro, study, victim: subprocess.Popen, others: list[subprocess.Popen], timeout: float = 180.0):
    """SIGKILL ``victim`` while it runs a trial whose mask is decided (its sampler's claim is
    written), looking only while every worker is stopped (``mro.freeze_when``): the others do
    not use up the budget while the test looks. Returns the trial as it was when it died."""
    worker = f"{socket.gethostname()}:{victim.pid}"

    def held():
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        return [t for t in running if t.user_attrs.get("worker") == worker and _mask(mro, t) is not None]

    (trial, *_) = mro.freeze_when([victim, *others], held, timeout=timeout, what=f"worker {worker} to hold a running trial")
    mro.stop(victim, signal.SIGKILL)
    mro.thaw(others)
    return trial


# --- a worker killed mid-trial --------------------------------------------------------------------


@pytest.mark.postgres
@pytest.mark.slow
def test_worker_killed_mid_trial_is_failed_within_grace_and_retried_with_its_mask(tiny, mro, pg_url, tmp_path):
    budget = 30
    mro.create(tiny.file, pg_url, trials=budget)
    study = mro.open_study(pg_url)
    procs = [mro.start([*_worker_args(tiny, pg_url), "--seed", str(i)], cwd=tmp_path) for i in range(3)]
    victim = procs[0]
    try:
        mro.line_up(study, procs)
        killed = _kill_mid_trial(mro, study, victim, procs[1:])
        killed_at = time.monotonic()
        mro.wait_for(
            lambda: study._storage.get_trial(killed._trial_id).state != TrialState.RUNNING,
            timeout=GRACE_PERIOD + 60, interval=0.25, what="the killed worker's trial to be failed",
        )
        failed_after = time.monotonic() - killed_at
        outputs = [p.communicate(timeout=300) for p in procs[1:]]
    finally:
        for p in procs:
            mro.stop(p)
    assert victim.returncode == -signal.SIGKILL
    mro.assert_clean_exits(procs[1:], outputs)

    # failed by the heartbeat: not before its last beat went stale, and within the grace period
    # (plus one poll of the surviving workers and the slack of a busy machine)
    assert study._storage.get_trial(killed._trial_id).state == TrialState.FAIL
    assert GRACE_PERIOD - HEARTBEAT_INTERVAL - 1 <= failed_after <= GRACE_PERIOD + POLL_SECONDS + 10, failed_after

    trials = _assert_whole(mro, study, budget)
    assert [t.number for t in trials if t.state == TrialState.FAIL] == [killed.number]
    killed_mask = _mask(mro, killed)
    (retry,) = [t for t in trials if t.system_attrs.get("failed_trial") == killed.number]
    assert retry.state == TrialState.COMPLETE and retry.number > killed.number
    # the retry completes the killed trial's mask; only if the worker died while its claim was
    # still contested (another trial had kept that mask) does the retry take another one
    holders = [t.number for t in trials if t.state == TrialState.COMPLETE and mro.mask(t) == killed_mask]
    assert len(holders) == 1 and holders[0] > killed.number, f"mask {killed_mask} of killed trial {killed.number} completed by {holders}"
    if all(p in killed.params for p in mro.paths):  # its mask was decided: the retry has it
        assert holders == [retry.number]


# --- trials abandoned before they had a heartbeat or parameters --------------------------------------


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_abandoned_trials_without_heartbeat_or_parameters_are_failed_and_retried(tiny, mro, sqlite_url, monkeypatch):
    """A worker that dies right after creating its trial (Optuna writes the first heartbeat only
    when the objective starts: such a trial used to stay RUNNING forever, and the study never
    reached its budget), and one that dies after its sampler claimed a mask but before the path
    parameters were written (Optuna's retry copies the parameters only: the mask was lost).
    Short heartbeat settings keep this test fast; the mechanism is the one the workers use."""
    from optuna.storages import fail_stale_trials

    from search_service.evaluator import Evaluator
    from search_service.search import run_worker
    from search_service.study_file import load_study

    monkeypatch.setattr(storage_module, "HEARTBEAT_INTERVAL", 1)
    monkeypatch.setattr(storage_module, "GRACE_PERIOD", 2)
    budget = 6
    search = mro.create(tiny.file, sqlite_url, trials=budget)
    study = search.optuna_study
    died_in_ask = study.ask()
    died_after_claim = study.ask()
    study._storage.set_trial_system_attr(died_after_claim._trial_id, MASK_KEY, "011000")
    time.sleep(2 + 2)  # grace period, plus SQLite's one-second clock

    fail_stale_trials(study)
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    assert trials[died_in_ask.number].state == TrialState.FAIL
    assert trials[died_after_claim.number].state == TrialState.FAIL
    retries = {t.system_attrs["failed_trial"]: t for t in trials.values() if "failed_trial" in t.system_attrs}
    assert set(retries) == {died_in_ask.number, died_after_claim.number}
    assert all(t.state == TrialState.WAITING for t in retries.values())
    assert mro.mask(retries[died_after_claim.number]) == "011000"  # the claim became its parameters
    assert not retries[died_in_ask.number].params and MASK_KEY not in retries[died_in_ask.number].system_attrs

    assert all(trials[t.number].system_attrs.get(STALE_KEY) for t in (died_in_ask, died_after_claim))
    assert not any(STALE_KEY in t.system_attrs for t in retries.values())

    assert run_worker(search, Evaluator(load_study(str(tiny.file))), seed=5) == budget
    trials = _assert_whole(mro, mro.open_study(sqlite_url), budget)
    (redone,) = [t for t in trials if t.system_attrs.get("failed_trial") == died_after_claim.number]
    assert redone.state == TrialState.COMPLETE and mro.mask(redone) == "011000"


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_a_new_trial_cannot_take_the_budget_place_of_a_retry_being_queued(tiny, mro, sqlite_url, monkeypatch):
    """The race behind a lost mask: a worker fails a dead worker's trial and queues its retry;
    between the two, another worker starts a new trial. The retry, numbered after the newcomer,
    used to be pruned for the budget, and the dead worker's mask was never scored."""
    from search_service.evaluator import Evaluator
    from search_service.search import Objective, run_worker
    from search_service.study_file import load_study

    monkeypatch.setattr(storage_module, "HEARTBEAT_INTERVAL", 1)
    monkeypatch.setattr(storage_module, "GRACE_PERIOD", 2)
    budget = 3
    search = mro.create(tiny.file, sqlite_url, trials=budget)
    evaluator = Evaluator(load_study(str(tiny.file)))
    assert run_worker(search, evaluator, max_trials=budget - 1, seed=1) == budget - 1
    study = search.optuna_study
    done = {mro.mask(t) for t in mro.complete(study)}
    mask = next(m for m in ("100000", "010000", "001000") if m not in done)
    dead = study.ask()  # its worker dies after claiming a mask
    study._storage.set_trial_system_attr(dead._trial_id, MASK_KEY, mask)
    time.sleep(2 + 2)

    storage = study._storage
    assert storage._get_stale_trial_ids(study._study_id) == [dead._trial_id]  # marks it stale
    assert storage.set_trial_state_values(dead._trial_id, TrialState.FAIL)  # failed; retry not queued yet
    newcomer = study.ask()  # another worker starts a trial in that moment
    objective = Objective(search, evaluator)
    assert not objective._admitted(newcomer), "the newcomer took the place of the retry"
    study.tell(newcomer, state=TrialState.PRUNED)
    storage.get_heartbeat_stale_trial_callback()(study, storage.get_trial(dead._trial_id))  # the retry

    assert run_worker(search, evaluator, seed=2) == 1
    trials = _assert_whole(mro, mro.open_study(sqlite_url), budget)
    (retry,) = [t for t in trials if t.system_attrs.get("failed_trial") == dead.number]
    assert retry.state == TrialState.COMPLETE and mro.mask(retry) == mask


# --- PostgreSQL restarted during a run ----------------------------------------------------------


def _other_sessions(admin, mine: str) -> list[tuple[str, int]]:
    from sqlalchemy import text

    with admin.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT datname, count(*) FROM pg_stat_activity WHERE (datname LIKE 'mro\\_test\\_%' "
                "OR datname LIKE 'mro\\_bench\\_%') AND datname <> :mine AND pid <> pg_backend_pid() GROUP BY datname"
            ),
            {"mine": mine},
        ).fetchall()
    return [(r[0], int(r[1])) for r in rows]


def _cluster_to_restart() -> str:
    """The version of the local PostgreSQL cluster (``pg_ctlcluster VERSION main``), or skip."""
    versions = sorted(os.listdir("/etc/postgresql")) if os.path.isdir("/etc/postgresql") else []
    if not versions or not _which("pg_ctlcluster"):
        pytest.skip("no local PostgreSQL cluster to restart (pg_ctlcluster, /etc/postgresql)")
    if os.geteuid() != 0 and _owner(f"/etc/postgresql/{versions[-1]}/main") != os.geteuid():
        pytest.skip("restarting the PostgreSQL cluster needs root or its owner")
    return versions[-1]


def _wait_for_quiet(mine: str, wait: float = 120.0) -> None:
    """Wait (up to ``wait`` seconds) until no other test or benchmark database has a session:
    a restart cuts everyone's connections."""
    from sqlalchemy import create_engine

    admin = create_engine("postgresql+psycopg://postgres@127.0.0.1:5432/test", isolation_level="AUTOCOMMIT", pool_pre_ping=True)
    try:
        deadline = time.monotonic() + wait
        while _other_sessions(admin, mine) and time.monotonic() < deadline:
            time.sleep(1.0)
    finally:
        admin.dispose()


def _pg_ctl(version: str, action: str) -> None:
    result = subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", action], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"pg_ctlcluster {action} failed: {result.stdout}\n{result.stderr}"


def _owner(path: str) -> int | None:
    try:
        return os.stat(path).st_uid
    except OSError:
        return None


def _which(program: str) -> bool:
    import shutil

    return shutil.which(program) is not None


@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.disruptive
def test_workers_ride_out_a_postgres_restart(tiny, mro, own_pg_database, tmp_path):
    version = _cluster_to_restart()
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{own_pg_database}"
    budget = 50
    mro.create(tiny.file, url, trials=budget)
    study = mro.open_study(url)  # pool_pre_ping: it reconnects after the restart too
    _wait_for_quiet(own_pg_database)  # before the workers start: they must still be busy at the restart
    procs = [mro.start([*_worker_args(tiny, url), "--seed", str(i)], cwd=tmp_path) for i in range(3)]
    try:
        # every worker past its start-up (a worker that cannot reach the database when it starts
        # fails at once, in one line): each has run a trial
        # (looked at with the workers stopped, so that they cannot finish the budget meanwhile)
        mro.line_up(study, procs, timeout=240)
        mro.freeze_when(procs, lambda: _workers_seen(study) >= 3, timeout=240, what="3 workers running trials")
        try:
            _pg_ctl(version, "stop")
            mro.thaw(procs)
            time.sleep(3 * HEARTBEAT_INTERVAL)  # down for a while: every worker runs into it
        finally:
            mro.thaw(procs)
            _pg_ctl(version, "start")
        outputs = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            mro.stop(p)
    mro.assert_clean_exits(procs, outputs)
    for _, err in outputs:
        for line in err.splitlines():  # each outage turn is one line, password-free
            assert line.startswith("mro-search: storage ") and " unreachable (" in line, line
    assert any("unreachable" in err for _, err in outputs), "no worker noticed the restart"
    _assert_whole(mro, study, budget)


# --- Ctrl-C on a run with several workers -----------------------------------------------------------


@pytest.mark.postgres
@pytest.mark.slow
def test_ctrl_c_on_a_run_with_workers_is_one_line_and_resume_reaches_the_budget(tiny, mro, pg_url, tmp_path):
    """``tests/search_tests/test_resume.py`` stops a one-process run on SQLite; here the run has
    two worker processes (which get Ctrl-C too) on PostgreSQL, and stderr must be one line."""
    budget = 30
    proc = mro.start(["run", "--study", str(tiny.file), "--storage", pg_url, "--trials", str(budget), "--workers", "2", "--no-report", "-q"], cwd=tmp_path)
    try:
        study = mro.wait_for(lambda: _study_if_exists(mro, pg_url), timeout=180, what="the study to be created")
        mro.freeze_when([proc], lambda: len(mro.complete(study)) >= 5, timeout=180, what="5 complete trials")
        out, err = mro.stop(proc, signal.SIGINT)  # to the process group: Ctrl-C in a terminal
    finally:
        mro.stop(proc)
    assert proc.returncode == 130, f"exit {proc.returncode}\n{out}\n{err}"
    # one line that says it stopped; before it, at most the one notice that the workers finish
    # their running trial first (each worker prints it, the run shows it once)
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1] == "mro-search: interrupted", err
    assert len(lines) <= 2 and all(line.startswith("mro-search: stopping after the running trial") for line in lines[:-1]), err
    assert out == ""
    stopped = len(mro.complete(study))
    assert 5 <= stopped < budget

    result = mro.run(["resume", "--study", str(tiny.file), "--storage", pg_url, "--workers", "2", "--json", "-q"], cwd=tmp_path)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr
    summary = json.loads(result.stdout)
    assert summary["counts"]["complete"] == budget
    _assert_whole(mro, mro.open_study(pg_url), budget)

