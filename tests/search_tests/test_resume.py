"""Stop a search partway (Ctrl-C to its process group) and resume it: the study reaches exactly
its budget without scoring a mask twice; ``resume --trials`` raises the budget."""

from __future__ import annotations

import signal
from collections import Counter

import pytest
from optuna.trial import TrialState

from search_service.search import BUDGET_KEY


def _check(mro, study, expected: int) -> None:
    done = mro.complete(study)
    masks = [mro.mask(t) for t in done]
    assert len(done) == expected, Counter(t.state.name for t in study.get_trials(deepcopy=False))
    assert len(set(masks)) == expected, f"masks scored twice: {[m for m, n in Counter(masks).items() if n > 1]}"
    assert not study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING))


@pytest.mark.slow
def test_interrupted_run_resumes_to_its_budget(tiny, mro, sqlite_url, tmp_path):
    proc = mro.start(["run", "--study", str(tiny.file), "--storage", sqlite_url, "--trials", "30", "--no-report", "-q"], cwd=tmp_path)
    try:
        study = mro.wait_for(lambda: _study_if_exists(mro, sqlite_url), timeout=180, what="the study to be created")
        mro.wait_for(lambda: len(mro.complete(study)) >= 5 or proc.poll() is not None, timeout=180, what="5 complete trials")
        assert proc.poll() is None, "the run finished before it could be interrupted"
        out, err = mro.stop(proc, signal.SIGINT)  # to the process group: Ctrl-C in a terminal
    finally:
        mro.stop(proc)
    assert proc.returncode == 130, f"exit {proc.returncode}\n{out}\n{err}"
    assert "Traceback" not in err
    stopped = len(mro.complete(study))
    assert 5 <= stopped < 30
    _check(mro, study, stopped)  # the interrupted trial is marked failed, not left running

    result = mro.run(["resume", "--study", str(tiny.file), "--storage", sqlite_url, "-q"], cwd=tmp_path)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    assert "30/30 trials complete" in result.stdout
    _check(mro, study, 30)

    result = mro.run(["resume", "--study", str(tiny.file), "--storage", sqlite_url, "--trials", "45", "-q"], cwd=tmp_path)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    assert "45/45 trials complete" in result.stdout
    _check(mro, study, 45)
    assert study._storage.get_study_system_attrs(study._study_id)[BUDGET_KEY] == 45


def _study_if_exists(mro, url: str):
    try:
        study = mro.open_study(url)
    except Exception:  # not created yet (no tables, or no study of that name)
        return None
    attrs = study._storage.get_study_system_attrs(study._study_id)
    return study if BUDGET_KEY in attrs else None
