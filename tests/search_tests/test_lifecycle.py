"""A study's life as users live it: commands in any order, training again, a second machine that
has only the storage URL, another application's database, deleting and starting over.

Everything is real: ``mro-search`` subprocesses (or ``cli.main`` in this process where only the
outcome matters), SQLite files, a PostgreSQL database per test, and the artifact store in a
directory (S3 has its own module, ``test_artifacts_s3.py``).
"""

from __future__ import annotations

import hashlib
import json
import os
import pty
import sqlite3
import subprocess
import time
from pathlib import Path

import optuna
import pytest

from search_service.cli import main
from search_service.search import ARTIFACTS_KEY, CHECKPOINT_KEY, FORMAT_KEY
from search_tests.conftest import one_error

pytestmark = pytest.mark.slow


@pytest.fixture
def cli(capfd, monkeypatch):
    """``cli(args, cwd, env)``: ``mro-search ARGS`` run in this process (the start-up of a
    subprocess costs seconds; where only the outcome matters this is the same command), as a
    ``CompletedProcess``; no storage or artifact store comes from this process's environment."""
    monkeypatch.delenv("MRO_STORAGE", raising=False)
    monkeypatch.delenv("MRO_ARTIFACTS", raising=False)

    def invoke(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        capfd.readouterr()
        with monkeypatch.context() as mp:
            mp.chdir(cwd)
            for key, value in (env or {}).items():
                mp.setenv(key, value)
            try:
                code = main([str(a) for a in args])
            except SystemExit as exc:  # argparse
                code = exc.code
        out, err = capfd.readouterr()
        return subprocess.CompletedProcess(args, code, out, err)

    return invoke


def fresh_run(tiny, directory: Path, **search: object) -> tuple[Path, Path]:
    """A study file of the tiny study with its own run directory, holding a copy of the trained
    checkpoint as its latest training (so that a test may train again without touching the
    session's run directory). Returns (study file, run directory)."""
    run_dir = directory / "run"
    checkpoints = run_dir / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / tiny.checkpoint.name).write_bytes(tiny.checkpoint.read_bytes())
    (checkpoints / "latest").write_text(tiny.checkpoint.name + "\n")
    file = tiny.variant(directory, "tiny.toml", run_dir=run_dir, **search)
    return file, run_dir


def tree(directory: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``directory``: (size, mtime in ns)."""
    return {str(p.relative_to(directory)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(directory.rglob("*")) if p.is_file()}


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_training_again_never_breaks_a_study(tiny, mro, cli, tmp_path):
    """The newcomer's path through the README: run, then train (twice, with other epochs), then
    every command again. The study keeps scoring with its own checkpoint, which stays as it was;
    training writes new checkpoint files and says how to search with them."""
    file, run_dir = fresh_run(tiny, tmp_path)
    url = f"sqlite:///{run_dir / 'study.db'}"
    ran = cli(["run", "--study", str(file), "--trials", "4", "--no-report", "-q"], cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    own = run_dir / "checkpoints" / tiny.checkpoint.name
    before = sha(own)

    again = cli(["train", "--study", str(file), "--epochs", "2", "-q"], cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    new = sorted(p.name for p in (run_dir / "checkpoints").glob("*.pt"))
    assert len(new) == 2 and tiny.checkpoint.name in new
    assert "keeps its own checkpoint" in again.stdout and "mro-search delete --study tiny --yes" in again.stdout
    assert sha(own) == before

    # the same training again: the same identity, the same file, nothing new
    twice = cli(["train", "--study", str(file), "--epochs", "2", "--json", "-q"], cwd=tmp_path)
    assert twice.returncode == 0, twice.stderr
    summary = json.loads(twice.stdout)
    assert summary["new"] is False and Path(summary["checkpoint"]).name in new
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("*.pt")) == new

    # every command still works on the study, with the study's checkpoint
    for args in (["pareto"], ["report", "-o", str(tmp_path / "r.html")], ["resume", "--trials", "6", "--no-report"],
                 ["worker", "--trials", "1"], ["export", "--trial", "0", "-o", str(tmp_path / "subnet")]):
        result = cli([args[0], "--study", str(file), *args[1:], "-q"], cwd=tmp_path)
        assert result.returncode == 0, f"{args}: {result.stderr}"
    exported = json.loads((tmp_path / "subnet" / "config.json").read_text())
    assert exported["supernet_checkpoint"].startswith(Path(tiny.checkpoint).stem)
    # ... and evaluate scores with the newest training (a checkpoint of other epochs fits the study)
    evaluated = cli(["evaluate", "--study", str(file), "--mask", "011000", "--json"], cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads(evaluated.stdout)["checkpoint"] == summary["identity"]
    assert len(mro.complete(mro.open_study(url))) == 6
    assert sha(own) == before


def test_delete_then_run_starts_over_with_the_latest_training(tiny, mro, cli, tmp_path):
    file, run_dir = fresh_run(tiny, tmp_path)
    artifacts = tmp_path / "store"
    assert main(["run", "--study", str(file), "--trials", "3", "--artifacts", str(artifacts), "-q"]) == 0
    assert (run_dir / "study.db").is_file() and (run_dir / "report.html").is_file()
    stored = sorted(p.name for p in artifacts.iterdir())
    assert len(stored) == 2  # the checkpoint and the report

    # not on a terminal and no --yes: nothing is deleted
    refused = cli(["delete", "--study", str(file)], cwd=tmp_path)
    one_error(refused, "--yes")
    assert sorted(p.name for p in artifacts.iterdir()) == stored

    deleted = cli(["delete", "--study", str(file), "--yes", "--json"], cwd=tmp_path)
    assert deleted.returncode == 0, deleted.stderr
    removed = json.loads(deleted.stdout)
    assert removed["study"] == "tiny" and removed["artifacts"] == 2
    assert not (run_dir / "study.db").exists() and not (run_dir / "report.html").exists()
    assert not artifacts.exists()  # emptied, then removed
    assert (run_dir / "checkpoints" / tiny.checkpoint.name).is_file()  # trainings stay

    gone = cli(["pareto", "--study", str(file)], cwd=tmp_path)
    one_error(gone, "no study named 'tiny'")
    assert not (run_dir / "study.db").exists()

    again = cli(["run", "--study", str(file), "--trials", "2", "--no-report", "-q"], cwd=tmp_path)
    assert again.returncode == 0, again.stderr


def _answer_on_a_terminal(args: list[str], answer: str, cwd: Path, mro) -> tuple[int, str]:
    """Run ``mro-search ARGS`` with a pseudo-terminal as stdin, type ``answer`` at the prompt."""
    main_fd, child_fd = pty.openpty()
    proc = subprocess.Popen([*mro.command(), *args], cwd=cwd, env=mro.env(), stdin=child_fd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    os.close(child_fd)
    try:
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
            if proc.poll() is None:
                os.write(main_fd, answer.encode())
                break
        out, err = proc.communicate(timeout=120)
    finally:
        os.close(main_fd)
    return proc.returncode, out + err


def test_delete_asks_on_a_terminal(tiny, mro, tmp_path):
    file, run_dir = fresh_run(tiny, tmp_path)
    assert main(["run", "--study", str(file), "--trials", "2", "--no-report", "-q"]) == 0
    code, text = _answer_on_a_terminal(["delete", "--study", str(file)], "n\n", tmp_path, mro)
    assert code == 1 and "nothing deleted" in text and "delete study 'tiny' (2 trials)" in text
    assert (run_dir / "study.db").is_file()
    code, text = _answer_on_a_terminal(["delete", "--study", str(file)], "y\n", tmp_path, mro)
    assert code == 0, text
    assert not (run_dir / "study.db").exists()


def test_a_study_mro_search_did_not_create_is_left_alone(tiny, mro, cli, tmp_path):
    """`optuna create-study` first, then `mro-search run`: refused in one line, nothing written."""
    file, run_dir = fresh_run(tiny, tmp_path)
    url = f"sqlite:///{run_dir / 'study.db'}"
    optuna.create_study(study_name="tiny", storage=url, directions=["minimize", "minimize"])
    before = tree(tmp_path)
    study = mro.open_study(url)
    attrs = study._storage.get_study_system_attrs(study._study_id)
    for args in (["run", "--trials", "4"], ["pareto"], ["resume"], ["worker"], ["report"], ["delete", "--yes"]):
        result = cli([args[0], "--study", str(file), *args[1:]], cwd=tmp_path)
        one_error(result, "not created by mro-search")
    study = mro.open_study(url)
    assert study.trials == [] and study._storage.get_study_system_attrs(study._study_id) == attrs
    assert tree(tmp_path) == before
    assert not (run_dir / "artifacts").exists()


def test_a_study_with_other_settings_is_refused(tiny, mro, cli, tmp_path):
    file, run_dir = fresh_run(tiny, tmp_path)
    assert main(["run", "--study", str(file), "--trials", "2", "--no-report", "-q"]) == 0
    other_metric = tiny.variant(tmp_path, "f1.toml", run_dir=run_dir, metric="f1_macro")
    one_error(cli(["run", "--study", str(other_metric), "--trials", "3"], cwd=tmp_path), "maximizes 'accuracy'", "f1_macro")
    wider = tmp_path / "wider.toml"
    wider.write_text(file.read_text().replace("width = 16", "width = 32"))
    one_error(cli(["pareto", "--study", str(wider)], cwd=tmp_path), "other [data] or [model]")
    assert len(mro.complete(mro.open_study(f"sqlite:///{run_dir / 'study.db'}"))) == 2


def test_reading_commands_create_nothing(tiny, mro, cli, tmp_path):
    """pareto, report, export, dashboard, resume, worker and delete on a study that does not
    exist, or on another application's database: one line, and not a file, table or byte
    written."""
    file, _ = fresh_run(tiny, tmp_path)
    other_app = tmp_path / "app.db"
    with sqlite3.connect(other_app) as conn:
        conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
        conn.execute("INSERT INTO customers (name) VALUES ('Ada')")
    before = tree(tmp_path)
    commands = [["pareto"], ["report"], ["export", "--trial", "0", "-o", "out"], ["dashboard", "--port", "0"], ["resume"], ["worker"], ["delete", "--yes"]]
    for args in commands:
        for storage in ([], ["--storage", f"sqlite:///{other_app}"]):
            result = cli([args[0], "--study", str(file), *storage, *args[1:]], cwd=tmp_path)
            one_error(result, "no study named 'tiny'" if not storage else "not an Optuna database")
        by_name = cli([args[0], "--study", "nothing-here", *args[1:]], cwd=tmp_path)
        one_error(by_name, "no study named 'nothing-here'")
    assert tree(tmp_path) == before
    with sqlite3.connect(other_app) as conn:
        assert [r[0] for r in conn.execute("SELECT name FROM sqlite_master")] == ["customers"]


def test_a_second_machine_needs_only_the_storage_url(tiny, mro, tmp_path, pg_url):
    """Machine A creates the study in PostgreSQL with its artifacts in a shared directory;
    machine B, an empty directory with no study file and no checkpoint, joins with the storage
    URL alone: the configuration comes from the study, the checkpoint from the artifact store.
    Neither machine writes into the other's directory."""
    machine_a, machine_b, shared = tmp_path / "a", tmp_path / "b", tmp_path / "shared-volume"
    machine_a.mkdir()
    machine_b.mkdir()
    file, _ = fresh_run(tiny, machine_a)
    env = mro.env(MRO_STORAGE=pg_url, MRO_ARTIFACTS=str(shared))
    created = mro.run(["run", "--study", str(file), "--trials", "3", "--no-report"], cwd=machine_a, env=env)
    assert created.returncode == 0, created.stderr
    assert str(shared) in created.stderr  # it says where the artifacts are

    env_b = mro.env(MRO_STORAGE=pg_url)  # B knows only the URL
    before_a = tree(machine_a)
    joined = mro.run(["worker", "--study", "tiny", "--trials", "2"], cwd=machine_b, env=env_b)
    assert joined.returncode == 0, joined.stderr
    # at its budget: said first, before the checkpoint is fetched (the resume below fetches it)
    assert joined.stderr.strip() == "study tiny has its budget of 3 complete trials; to search on, raise it: mro-search resume --study tiny --trials 13"
    resumed = mro.run(["resume", "--study", "tiny", "--trials", "7", "--workers", "2", "--no-report", "--json", "-q"], cwd=machine_b, env=env_b)
    assert resumed.returncode == 0, resumed.stderr
    front = json.loads(resumed.stdout)
    assert front["counts"]["complete"] == 7 and front["artifacts"] == str(shared.resolve())
    assert tree(machine_b) == {}  # nothing written on B
    assert tree(machine_a) == before_a
    masks = [mro.mask(t) for t in mro.complete(mro.open_study(pg_url))]
    assert len(masks) == len(set(masks)) == 7


def test_the_checkpoint_artifact_is_verified(tiny, mro, tmp_path, sqlite_url):
    """A store whose checkpoint was replaced, or that is somewhere else on this machine."""
    file, run_dir = fresh_run(tiny, tmp_path / "a")
    store = tmp_path / "store"
    assert main(["run", "--study", str(file), "--storage", sqlite_url, "--artifacts", str(store), "--trials", "2", "--no-report", "-q"]) == 0
    study = mro.open_study(sqlite_url)
    record = study._storage.get_study_system_attrs(study._study_id)[CHECKPOINT_KEY]
    empty = tmp_path / "b"
    empty.mkdir()
    # the study file's run directory is absolute: on this machine the local copy would be used
    # (and is, when intact); another machine has only the artifact store
    (run_dir / "checkpoints").rename(tmp_path / "a" / "elsewhere")

    moved = tmp_path / "mounted-elsewhere"
    store.rename(moved)
    # (resume: a worker would say first that the study has its budget, and fetch nothing)
    one_error(mro.run(["resume", "--study", "tiny", "--storage", sqlite_url, "--trials", "3"], cwd=empty), "not in artifact store", "--artifacts")
    ok = mro.run(["resume", "--study", "tiny", "--storage", sqlite_url, "--trials", "3", "--artifacts", str(moved), "--no-report", "-q"], cwd=empty)
    assert ok.returncode == 0, ok.stderr

    artifact = moved / record["artifact_id"]
    data = bytearray(artifact.read_bytes())
    data[-100] ^= 0xFF
    artifact.write_bytes(bytes(data))
    tampered = mro.run(["resume", "--study", "tiny", "--storage", sqlite_url, "--trials", "4", "--artifacts", str(moved), "--no-report"], cwd=empty)
    one_error(tampered, "is not the one study 'tiny' recorded")
    assert tree(empty) == {}
    assert len(mro.complete(mro.open_study(sqlite_url))) == 3


def test_a_half_made_study_is_not_left_behind(tiny, mro, tmp_path, sqlite_url):
    """An artifact store that cannot be written: the study is not created at all."""
    file, _ = fresh_run(tiny, tmp_path)
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the store should be")
    result = mro.run(["run", "--study", str(file), "--storage", sqlite_url, "--artifacts", str(blocker / "store"), "--trials", "2"], cwd=tmp_path)
    one_error(result, "artifact store")
    storage = optuna.storages.RDBStorage(sqlite_url) if Path(sqlite_url[len("sqlite:///"):]).exists() else None
    assert storage is None or [s.study_name for s in storage.get_all_studies()] == []


def test_the_dashboard_shows_the_studys_artifacts(tiny, mro, tmp_path, sqlite_url):
    import re
    import urllib.request

    file, _ = fresh_run(tiny, tmp_path)
    store = tmp_path / "store"
    assert main(["run", "--study", str(file), "--storage", sqlite_url, "--artifacts", str(store), "--trials", "2", "-q"]) == 0
    study = mro.open_study(sqlite_url)
    attrs = study._storage.get_study_system_attrs(study._study_id)
    assert attrs[FORMAT_KEY] and attrs[ARTIFACTS_KEY] == str(store.resolve())
    log = tmp_path / "dashboard.err"
    with open(log, "w") as err:
        proc = subprocess.Popen([*mro.command(), "dashboard", "--study", "tiny", "--storage", sqlite_url, "--port", "0"],
                                cwd=tmp_path, env=mro.env(), stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline, base = time.monotonic() + 90, None
        while base is None and time.monotonic() < deadline:
            found = re.search(r"http://127\.0\.0\.1:\d+", log.read_text())
            base = found.group(0) if found else None
            assert proc.poll() is None, log.read_text()
            time.sleep(0.2)
        assert base, log.read_text()
        detail = None
        while detail is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{base}/api/studies/{study._study_id}", timeout=10) as response:
                    detail = json.loads(response.read())
            except OSError:
                time.sleep(0.3)
        listed = {a["artifact_id"]: a["filename"] for a in detail["artifacts"]}
        record = attrs[CHECKPOINT_KEY]
        assert listed[record["artifact_id"]] == record["file"]
        assert "report.html" in listed.values()
        with urllib.request.urlopen(f"{base}/artifacts/{study._study_id}/{record['artifact_id']}", timeout=10) as response:
            assert hashlib.sha256(response.read()).hexdigest() == record["sha256"]
    finally:
        proc.kill()
        proc.wait(timeout=10)
