"""Paths the file system refuses are one-line errors with exit 2, whatever command meets them
(``cli.main`` maps an ``OSError`` about a path to one line naming it): names too long for the
file system, a folder that is a regular file, a ``~user`` that names nobody."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from search_service.cli import main

LONG = "a" * 300  # above the 255 bytes a file name may have on Linux file systems


@pytest.fixture
def mro(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch):
    """``mro(*argv, cwd=...)``: the command in this process; (exit code, stdout, stderr)."""

    def run(*args: str, cwd: Path) -> tuple[int, str, str]:
        monkeypatch.chdir(cwd)
        try:
            code = main(list(args))
        except SystemExit as exc:  # argparse's usage errors
            code = exc.code
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


def assert_one_line_error(out: tuple[int, str, str], *needles: str) -> None:
    code, _, err = out
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("mro-search: error: "), (code, err[-2000:])
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def _files(folder: Path) -> set[Path]:
    """The files under ``folder``, but SQLite's own journal files (``-wal``/``-shm`` stay while any
    process, this one included, holds the database open: not written by the command)."""
    return {p for p in folder.rglob("*") if not p.name.endswith(("-wal", "-shm", "-journal"))}


@pytest.mark.parametrize("command", ["pareto", "report", "delete"])
def test_a_study_name_too_long_for_the_file_system(command: str, tmp_path: Path, mro) -> None:
    assert_one_line_error(mro(command, "--study", LONG, cwd=tmp_path), "too long")
    assert not any(tmp_path.iterdir())


def test_report_and_export_to_a_name_too_long(tiny_search: Any, tmp_path: Path, mro) -> None:
    before = _files(tiny_search.path.parent)
    where = ("--study", str(tiny_search.path), "--storage", tiny_search.url)
    assert_one_line_error(mro("report", *where, "-o", str(tmp_path / f"{LONG}.html"), cwd=tmp_path), "too long", "characters)")
    assert_one_line_error(mro("export", *where, "--trial", "0", "-o", str(tmp_path / LONG), cwd=tmp_path), "too long")
    assert not any(tmp_path.iterdir()) and _files(tiny_search.path.parent) == before


def test_a_run_dir_under_a_regular_file_is_refused_before_training(tmp_path: Path, mro) -> None:
    (tmp_path / "afile").write_text("")
    study = tmp_path / "s.toml"
    study.write_text(f'name = "s"\n[data]\nsource = "synthetic"\n[search]\nrun_dir = "{tmp_path / "afile" / "run"}"\n')
    for command in ("run", "train"):
        out = mro(command, "--study", str(study), cwd=tmp_path)
        assert_one_line_error(out, str(tmp_path / "afile"), "not a folder")  # the only line: nothing trained first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "s.toml"]


@pytest.mark.parametrize("command", ["run", "resume", "report", "dashboard", "export", "delete", "worker"])
def test_artifacts_under_an_unknown_users_home(command: str, tmp_path: Path, mro) -> None:
    extra = ["--trial", "0", "-o", "x"] if command == "export" else []
    out = mro(command, "--study", "demo", "--artifacts", "~nosuchuser_mro/x", *extra, cwd=tmp_path)
    assert_one_line_error(out, "--artifacts", "'~nosuchuser_mro' names no user")
    assert not any(tmp_path.iterdir())
