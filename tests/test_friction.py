"""What a new user meets (issue 19, item 8): output that explains itself, on the stream it
belongs to. A copy of the shared tiny study (10 of 10 trials) is used wherever a command
changes a study."""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from search_service.cli import build_parser, main

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def study_copy(tiny_search: Any, tmp_path: Path) -> str:
    """A copy of the tiny study's database (SQLite's backup API), which a test may change."""
    copy = tmp_path / "copy.db"
    with sqlite3.connect(tiny_search.url.removeprefix("sqlite:///")) as src, sqlite3.connect(copy) as dst:
        src.backup(dst)
    return f"sqlite:///{copy}"


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def test_every_json_flag_says_what_it_prints() -> None:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    missing = [name for name, p in sub.choices.items() for a in p._actions if "--json" in a.option_strings and not a.help]
    assert missing == []


def test_report_prints_its_result_on_stdout_and_where_on_stderr(tiny_search: Any, tmp_path: Path, capsys) -> None:
    code = main(["report", "--study", str(tiny_search.path), "--storage", tiny_search.url, "-o", str(tmp_path / "r.html")])
    out = capsys.readouterr()
    assert code == 0 and len(_lines(out.out)) == 1 and _lines(out.out)[0].startswith("report: ")
    assert any(line.startswith("study tinysearch in sqlite:") for line in _lines(out.err))
    main(["report", "--study", str(tiny_search.path), "--storage", tiny_search.url, "-o", str(tmp_path / "r.html"), "-q"])
    assert capsys.readouterr().err == ""


def test_a_worker_joining_a_study_at_its_budget_says_so_before_any_work(tiny_search: Any, study_copy: str, tmp_path: Path, capsys) -> None:
    code = main(["worker", "--study", "tinysearch", "--storage", study_copy, "--artifacts", str(tmp_path / "nowhere")])
    err = _lines(capsys.readouterr().err)
    # the only line: no checkpoint fetched, no device chosen, no cache built first
    assert code == 0 and err == ["study tinysearch has its budget of 10 complete trials; to search on, raise it: "
                                 "mro-search resume --study tinysearch --trials 20"]
    assert not (tmp_path / "nowhere").exists()


def test_resume_says_its_device_and_the_budget_change(tiny_search: Any, study_copy: str, capsys) -> None:
    code = main(["resume", "--study", "tinysearch", "--storage", study_copy, "--trials", "11", "--no-report"])
    out = capsys.readouterr()
    assert code == 0, out.err
    err = _lines(out.err)
    assert any(line.startswith("device: cpu") for line in err), err
    assert any("budget 10 -> 11 trials, 10 complete, 1 worker(s)" in line for line in err), err
    assert "11/11 trials complete" in out.out


def test_trials_pruned_at_the_budget_are_explained(tiny_search: Any, study_copy: str, capsys) -> None:
    """Two workers after the last place: the second one's trial is pruned before scoring; the
    output says why instead of leaving a PRUNED trial unexplained."""
    import optuna

    from search_service.lifecycle import join_search
    from search_service.search import OVER_BUDGET_KEY, Objective

    search = join_search("tinysearch", study_copy).search
    search.optuna_study._storage.set_study_system_attr(search.optuna_study._study_id, "mro:trials", 11)
    holder = search.optuna_study.ask()  # another worker's trial, running in the last place
    late = search.optuna_study.ask()
    with pytest.raises(optuna.TrialPruned):
        Objective(search, tiny_search.evaluator)(late)
    search.optuna_study.tell(late, state=optuna.trial.TrialState.PRUNED)
    search.optuna_study.tell(holder, [0.5, 1.0])
    assert search.optuna_study.trials[late.number].system_attrs[OVER_BUDGET_KEY] is True

    assert main(["pareto", "--study", "tinysearch", "--storage", study_copy]) == 0
    out = capsys.readouterr().out
    assert "(0 failed, 1 pruned)" in out
    assert "pruned: 1 trial pruned at the budget: started by workers while the last places were being taken" in out
    assert main(["pareto", "--study", "tinysearch", "--storage", study_copy, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["over_budget"].startswith("1 trial pruned at the budget")


def test_run_exhaustive_prints_its_summary_in_words(tiny_search: Any, study_copy: str, capsys) -> None:
    code = main(["run", "--study", str(tiny_search.path), "--storage", study_copy, "--exhaustive", "--no-report", "-q"])
    out = capsys.readouterr().out
    assert code == 0
    (line,) = [line for line in _lines(out) if line.startswith("exhaustive: ")]
    assert "{" not in line and "63 masks scored in" in line and "masks/s" in line and "added" in line, line


def test_epoch_lines_do_not_land_on_the_progress_bar_and_one_epoch_is_singular(tiny_search: Any, tmp_path: Path) -> None:
    """On a terminal (a pseudo-terminal here, 120 columns) the bar is cleared before each epoch
    line, so the line starts at the left edge instead of after the bar."""
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 120, 0, 0))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "search_service.cli", "train", "--study", str(tiny_search.path), "--epochs", "1"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave, cwd=tmp_path, env=env, text=True)
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    stdout = proc.stdout.read()
    assert proc.wait(timeout=120) == 0
    terminal = b"".join(chunks).decode("utf-8", "replace")
    assert "supernet:" in terminal  # the bar was drawn
    epoch_lines = [line for line in terminal.split("\n") if "epoch 1/1" in line]
    assert epoch_lines and all(line[: line.index("epoch 1/1")].rsplit("\r", 1)[-1] == "" for line in epoch_lines), epoch_lines
    assert "trained tinysearch: 1 epoch, train loss" in stdout
