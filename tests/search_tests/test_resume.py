"""Stop a search partway (Ctrl-C to its process group) and resume it: the study reaches exactly
its budget without scoring a mask twice; ``resume --trials`` raises the budget."""

from __future__ import annotations

import signal
from collections import Counter

import pytest
from optuna.trial import TrialState

from search_service.search import BUDGET_KEY
from search_tests.conftest import start_faulty, stopped


def _check(mro, study, expected: int) -> None:
    done = mro.complete(study)
    masks = [mro.mask(t) for t in done]
    assert len(done) == expected, Counter(t.state.name for t in study.get_trials(deepcopy=False))
    assert len(set(masks)) == expected, f"masks scored twice: {[m for m, n in Counter(masks).items() if n > 1]}"
    assert not study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING))


@pytest.mark.slow
def test_interrupted_run_resumes_to_its_budget(tiny, mro, sqlite_url, tmp_path):
    # the moment is produced, not waited for (30 tiny trials can all finish between two looks): the
    # run stops itself (SIGSTOP) before its 6th trial, and Ctrl-C reaches it there
    errors = tmp_path / "run.err"
    proc = start_faulty(mro, ["run", "--study", str(tiny.file), "--storage", sqlite_url, "--trials", "30", "--no-report", "-q"],
                        tmp_path, "stop-before-trial=6", errors)
    try:
        mro.wait_for(lambda: stopped(proc) or proc.poll() is not None, timeout=240, what="the run stopped before its 6th trial")
        assert proc.poll() is None, errors.read_text()
        study = _study_if_exists(mro, sqlite_url)
        out, _ = mro.stop(proc, signal.SIGINT)  # to the process group (Ctrl-C in a terminal), then SIGCONT
    finally:
        mro.stop(proc)
    err = errors.read_text()
    assert proc.returncode == 130, f"exit {proc.returncode}\n{out}\n{err}"
    assert "Traceback" not in err
    assert "interrupted" in err
    done = len(mro.complete(study))
    assert done in (5, 6)  # five before the stop; Ctrl-C lands as the 6th starts, and the trial under way is finished
    _check(mro, study, done)  # nothing left running: the trial under way was finished
    assert not study.get_trials(deepcopy=False, states=(TrialState.FAIL,))

    result = mro.run(["resume", "--study", str(tiny.file), "--storage", sqlite_url, "-q"], cwd=tmp_path)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    assert "30/30 trials complete" in result.stdout
    _check(mro, study, 30)

    result = mro.run(["resume", "--study", str(tiny.file), "--storage", sqlite_url, "--trials", "45", "-q"], cwd=tmp_path)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    assert "45/45 trials complete" in result.stdout
    _check(mro, study, 45)
    assert study._storage.get_study_system_attrs(study._study_id)[BUDGET_KEY] == 45


@pytest.mark.slow
def test_killed_workers_trials_are_failed_and_retried(tiny, mro, sqlite_url, tmp_path):
    """SIGKILL to a search (a crash, a lost machine) while a trial runs leaves it RUNNING.
    ``resume`` waits for its heartbeat to go stale, fails it, retries it and still ends at exactly
    the budget. The moment is produced, not waited for (a freeze looking for a running trial raced
    40 tiny trials and could find none): the run stops itself inside its 4th trial, mask claimed."""
    from search_service.sampler import MASK_KEY
    from search_service.storage import GRACE_PERIOD

    budget = 40
    errors = tmp_path / "run.err"
    proc = start_faulty(mro, ["run", "--study", str(tiny.file), "--storage", sqlite_url, "--trials", str(budget), "--no-report", "-q"],
                        tmp_path, "stop-in-trial=4", errors)
    try:
        mro.wait_for(lambda: stopped(proc) or proc.poll() is not None, timeout=240, what="the run stopped inside its 4th trial")
        assert proc.poll() is None, errors.read_text()
        study = _study_if_exists(mro, sqlite_url)
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        assert len(running) == 1 and MASK_KEY in running[0].system_attrs
        assert len(mro.complete(study)) == 3
        mro.stop(proc, signal.SIGKILL)
    finally:
        mro.stop(proc)
    orphans = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    assert orphans, "no trial was left running"
    assert len(mro.complete(study)) < budget

    result = mro.run(["resume", "--study", str(tiny.file), "--storage", sqlite_url, "-q"], cwd=tmp_path, timeout=GRACE_PERIOD + 240)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    _check(mro, study, budget)
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    for orphan in orphans:
        assert trials[orphan.number].state == TrialState.FAIL
        retries = [t for t in trials.values() if t.system_attrs.get("failed_trial") == orphan.number]
        assert retries, f"trial {orphan.number} was not retried"
        if len(orphan.params) == len(mro.paths):  # a retry runs the very same mask
            assert any(t.state == TrialState.COMPLETE and t.params == orphan.params for t in retries)


def _study_if_exists(mro, url: str):
    try:
        study = mro.open_study(url)
    except Exception:  # not created yet (no tables, or no study of that name)
        return None
    attrs = study._storage.get_study_system_attrs(study._study_id)
    return study if BUDGET_KEY in attrs else None


def test_a_signal_ignored_on_entry_stays_ignored():
    """A worker started as a shell's background job inherits SIGINT ignored (as the ``run`` process
    that started it does): it keeps ignoring it, and still stops between trials on SIGTERM."""
    from search_service.search import _StopBetweenTrials

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        stop = _StopBetweenTrials()
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) == stop._handle
        stop.restore()
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) == before[signal.SIGTERM]
        signal.signal(signal.SIGINT, signal.default_int_handler)
        stop = _StopBetweenTrials()
        assert signal.getsignal(signal.SIGINT) == stop._handle
        stop.restore()
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)
