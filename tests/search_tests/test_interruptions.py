"""Operations cut off or racing one another leave nothing half-done (issue 19, items 1 to 4).

Every moment a test acts on is produced, never waited for by speed: a process that must be cut
off in the middle of an upload stops itself there (``stop_in_upload``: SIGSTOP, a real signal, at
the first byte copied into the artifact store) and the test then sends it the signal it wants; a
worker that must be caught between two trials is frozen while the database shows no open
transaction of it (``freeze_when``). A full disk is ``RLIMIT_FSIZE`` in the child process: writes
past it fail with EFBIG, a real failure of the operating system.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import optuna
import pytest

from search_service.cli import main
from search_service.search import CHECKPOINT_KEY, FORMAT_KEY
from search_tests.conftest import one_error, run_faulty, start_faulty, stopped  # noqa: F401

pytestmark = pytest.mark.slow

CREATING_KEY, DELETING_KEY = "mro:creating", "mro:deleting"  # search_service.keys (spelt out: this file also runs on older code)

def fresh_run(tiny, directory: Path, **search: object) -> tuple[Path, Path]:
    """A study file of the tiny study with its own run directory holding the trained checkpoint."""
    run_dir = tiny.seed_run_dir(directory / "run")
    return tiny.variant(directory, "tiny.toml", run_dir=run_dir, **search), run_dir


def files_under(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file()) if directory.exists() else []


def study_names(url: str) -> list[str]:
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).exists():
        return []
    storage = optuna.storages.RDBStorage(url)
    try:
        return [s.study_name for s in storage.get_all_studies()]
    finally:
        storage.engine.dispose()


def system_attrs(mro, url: str) -> dict:
    study = mro.open_study(url)
    return study._storage.get_study_system_attrs(study._study_id)


# --- 1. creation ------------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_a_creation_cut_off_in_its_upload_is_finished_by_run_and_removed_by_delete(tiny, mro, tmp_path, sig):
    file, _ = fresh_run(tiny, tmp_path)
    store, url = tmp_path / "store", f"sqlite:///{tmp_path / 'study.db'}"
    common = ["--study", str(file), "--storage", url]
    creator = start_faulty(mro, ["run", *common, "--artifacts", str(store), "--trials", "3", "-q"], tmp_path, "stop-in-upload",
                           tmp_path / "creator.err", MRO_TEST_STORE=str(store))
    mro.wait_for(lambda: stopped(creator) or creator.poll() is not None, timeout=180, what="the creator stopped in its upload")
    assert creator.poll() is None, (tmp_path / "creator.err").read_text()
    attrs = system_attrs(mro, url)
    assert CREATING_KEY in attrs and FORMAT_KEY not in attrs  # mro-search's, half-made
    os.kill(creator.pid, sig)
    os.kill(creator.pid, signal.SIGCONT)
    creator.wait(timeout=60)
    artifact_id = attrs[CHECKPOINT_KEY]["artifact_id"]
    assert not (store / artifact_id).exists()  # no object, not even in part, under the artifact's name

    half = mro.run(["pareto", *common], cwd=tmp_path)
    one_error(half, "is half-made", "mro-search run --study tiny", "mro-search delete --study tiny --yes")

    if sig == signal.SIGKILL:  # run makes it again
        again = mro.run(["run", *common, "--artifacts", str(store), "--trials", "3", "--no-report", "--json"], cwd=tmp_path)
        assert again.returncode == 0, again.stderr
        assert "was left half-made by" in again.stderr and "no longer running" in again.stderr
        assert "Traceback" not in again.stderr
        assert json.loads(again.stdout)["counts"]["complete"] == 3
        attrs = system_attrs(mro, url)
        assert attrs[FORMAT_KEY] and files_under(store) == [attrs[CHECKPOINT_KEY]["artifact_id"]]  # the killed writer's temporary file went
    else:  # delete removes it
        deleted = mro.run(["delete", *common, "--yes"], cwd=tmp_path)
        assert deleted.returncode == 0, deleted.stderr
        assert study_names(url) == [] and files_under(store) == []


def test_two_runs_of_one_new_study_one_makes_it_the_other_joins(tiny, mro, tmp_path):
    """The first ``run`` is held in its checkpoint upload; the second, started then, waits for it
    (it says so), and joins the study once it is whole."""
    file, run_dir = fresh_run(tiny, tmp_path)
    store = run_dir / "artifacts"  # the default store of the default database
    first = start_faulty(mro, ["run", "--study", str(file), "--trials", "4", "--no-report", "-q"], tmp_path, "stop-in-upload",
                         tmp_path / "first.err", MRO_TEST_STORE=str(store))
    mro.wait_for(lambda: stopped(first) or first.poll() is not None, timeout=180, what="the first run stopped in its upload")
    assert first.poll() is None, (tmp_path / "first.err").read_text()
    second_err = tmp_path / "second.err"
    second = subprocess.Popen([*mro.command(), "run", "--study", str(file), "--trials", "4", "--no-report", "--json"], cwd=tmp_path,
                              env=mro.env(), stdout=subprocess.PIPE, stderr=second_err.open("w"), text=True, start_new_session=True)
    try:
        mro.wait_for(lambda: "waiting to join it" in second_err.read_text() or second.poll() is not None, timeout=180,
                     what="the second run waiting")
        assert second.poll() is None, second_err.read_text()
        os.kill(first.pid, signal.SIGCONT)
        out, _ = second.communicate(timeout=240)
        assert first.wait(timeout=240) == 0, (tmp_path / "first.err").read_text()
    finally:
        mro.stop(first)
        mro.stop(second)
    err = second_err.read_text()
    assert second.returncode == 0, err
    assert "is being created by" in err and "joining study tiny, created meanwhile by" in err
    assert "not created by mro-search" not in err and "Traceback" not in err
    assert json.loads(out)["counts"]["complete"] == 4
    assert len(files_under(store)) == 1  # one checkpoint artifact


# --- 2. deletion ------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_delete_stops_the_workers_of_a_live_study(tiny, mro, tmp_path, backend, request):
    """A worker stopped between two trials (it stops itself before its 5th) while ``delete``
    runs: delete says the study is gone (and it is); the worker, let go, stops at its next trial
    with one line, exit 0, no traceback (on SQLite: no ``KeyError: 'Record does not exist.'``)."""
    file, run_dir = fresh_run(tiny, tmp_path)
    url = request.getfixturevalue("pg_url") if backend == "postgresql" else f"sqlite:///{run_dir / 'study.db'}"
    store = tmp_path / "store"
    common = ["--study", str(file), "--storage", url]
    assert main(["run", *common, "--artifacts", str(store), "--trials", "2", "--no-report", "-q"]) == 0
    worker = start_faulty(mro, ["resume", *common, "--trials", "60", "--no-report"], tmp_path, "stop-before-trial=5", tmp_path / "worker.err")
    try:
        mro.wait_for(lambda: stopped(worker) or worker.poll() is not None, timeout=240, what="the worker stopped before a trial")
        assert worker.poll() is None, (tmp_path / "worker.err").read_text()
        deleted = mro.run(["delete", *common, "--yes", "--json"], cwd=tmp_path, timeout=120)
    finally:
        os.kill(worker.pid, signal.SIGCONT)
        mro.stop(worker, sig=signal.SIGCONT, timeout=120)
    err = (tmp_path / "worker.err").read_text()
    assert deleted.returncode == 0, deleted.stderr
    assert json.loads(deleted.stdout)["artifacts"] == 1
    assert "tiny" not in study_names(url) and files_under(store) == []
    assert worker.returncode == 0, err
    assert "Traceback" not in err and "Record does not exist" not in err, err
    assert "mro-search: stopping: study tiny " in err, err


@pytest.mark.parametrize("then", ["delete", "run"])
def test_a_delete_killed_between_the_study_and_its_checkpoint_is_finished_by_delete_again(tiny, mro, tmp_path, then):
    """``delete`` stops itself once the study is removed, before its checkpoint artifact, and is
    killed there: the artifact is still in the store and the pending deletion record names it.
    ``delete`` run again finds no study but the record: it removes the artifact, the study's
    files and the record and says so in one line, exit 0 (a third ``delete``: no such study).
    Or ``run`` makes the study again first, undisturbed, and its ``delete`` removes both
    checkpoint artifacts."""
    file, run_dir = fresh_run(tiny, tmp_path)
    training_only = files_under(run_dir)  # what the run directory holds before the study: the training
    store, url = tmp_path / "store", f"sqlite:///{run_dir / 'study.db'}"
    common = ["--study", str(file), "--storage", url]
    # in a process of its own: a connection this process kept would not see what the killed delete committed
    assert mro.run(["run", *common, "--artifacts", str(store), "--trials", "2", "-q"], cwd=tmp_path).returncode == 0
    checkpoint = system_attrs(mro, url)[CHECKPOINT_KEY]["artifact_id"]
    assert (run_dir / "report.html").is_file()
    deleter = start_faulty(mro, ["delete", *common, "--yes"], tmp_path, "stop-after-study-delete", tmp_path / "delete.err")
    mro.wait_for(lambda: stopped(deleter) or deleter.poll() is not None, timeout=120, what="delete stopped after removing the study")
    assert deleter.poll() is None, (tmp_path / "delete.err").read_text()
    os.kill(deleter.pid, signal.SIGKILL)
    deleter.wait(timeout=60)
    assert study_names(url) == [] and files_under(store) == [checkpoint]  # the study gone, its checkpoint artifact not yet
    (pending,) = run_dir.glob(".mro-deleting-tiny-*.json")
    assert json.loads(pending.read_text())["checkpoint"] == checkpoint

    if then == "run":  # a new study of the name: the record is not in its way
        again = mro.run(["run", *common, "--artifacts", str(store), "--trials", "2", "--no-report", "-q"], cwd=tmp_path)
        assert again.returncode == 0 and "Traceback" not in again.stderr, again.stderr
        new = system_attrs(mro, url)[CHECKPOINT_KEY]["artifact_id"]
        assert new != checkpoint and files_under(store) == sorted([checkpoint, new])
        deleted = mro.run(["delete", *common, "--yes", "--json"], cwd=tmp_path)
        assert deleted.returncode == 0, deleted.stderr
        assert json.loads(deleted.stdout)["artifacts"] == 2  # the new study's checkpoint and the earlier one
    else:
        finished = mro.run(["delete", *common, "--yes"], cwd=tmp_path)
        assert finished.returncode == 0 and finished.stderr == "", finished.stderr
        (line,) = finished.stdout.splitlines()
        assert line.startswith("finished deleting study tiny from ") and "1 artifact(s)" in line and "report.html" in line, line
        one_error(mro.run(["delete", *common, "--yes"], cwd=tmp_path), "no study named 'tiny'")
    assert files_under(store) == [] and not pending.exists() and not (run_dir / "report.html").exists()
    assert not (run_dir / "study.db").exists() and files_under(run_dir) == training_only  # as before the study
    # (not compared with the session's tiny.run_dir: other tests leave their studies' folders there)


def test_a_delete_that_the_storage_refuses_is_an_error_and_keeps_the_checkpoint(tiny, mro, tmp_path, pg_url):
    """Optuna's delete fails (here a trigger refuses it, as a concurrent insert can): delete
    tries again, sees the study is still there and says so (exit 2); the study keeps its
    checkpoint artifact, is refused by other commands as being deleted, and a second delete,
    once the storage lets it, finishes."""
    from sqlalchemy import create_engine, text

    file, _ = fresh_run(tiny, tmp_path)
    store = tmp_path / "store"
    common = ["--study", str(file), "--storage", pg_url]
    assert main(["run", *common, "--artifacts", str(store), "--trials", "2", "--no-report", "-q"]) == 0
    engine = create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text("CREATE FUNCTION refuse() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'refused'; END $$ LANGUAGE plpgsql"))
        conn.execute(text("CREATE TRIGGER refuse BEFORE DELETE ON studies FOR EACH ROW EXECUTE FUNCTION refuse()"))
    refused = mro.run(["delete", *common, "--yes"], cwd=tmp_path)
    one_error(refused, "was not deleted", "run `mro-search delete --study tiny --yes` again")
    assert "tiny" in study_names(pg_url)
    attrs = system_attrs(mro, pg_url)
    assert DELETING_KEY in attrs and files_under(store) == [attrs[CHECKPOINT_KEY]["artifact_id"]]
    one_error(mro.run(["resume", *common], cwd=tmp_path), "is being deleted")
    with engine.connect() as conn:
        conn.execute(text("DROP TRIGGER refuse ON studies"))
    engine.dispose()
    finished = mro.run(["delete", *common, "--yes"], cwd=tmp_path)
    assert finished.returncode == 0, finished.stderr
    assert study_names(pg_url) == [] and files_under(store) == []


# --- 3. files belong to one study -------------------------------------------------------------


def test_two_studies_of_one_name_on_two_storages_keep_their_own_files(tiny, mro, tmp_path, pg_url):
    """``demo`` on the default SQLite file and ``demo`` on PostgreSQL, from one directory: each has
    its own report and artifact store; deleting one leaves the other whole; a store that
    ``$MRO_ARTIFACTS`` names (made by the user) is never removed."""
    file, run_dir = fresh_run(tiny, tmp_path)
    assert main(["run", "--study", str(file), "--trials", "2", "-q"]) == 0
    sqlite_report, sqlite_store = run_dir / "report.html", run_dir / "artifacts"
    assert sqlite_report.is_file() and len(files_under(sqlite_store)) == 2
    before = {p: p.read_bytes() for p in (sqlite_report, *sqlite_store.iterdir())}

    on_pg = mro.run(["run", "--study", str(file), "--storage", pg_url, "--trials", "2", "--json", "-q"], cwd=tmp_path)
    assert on_pg.returncode == 0, on_pg.stderr
    pg_report = Path(json.loads(on_pg.stdout)["report"])
    assert pg_report != sqlite_report and pg_report.is_file() and pg_report.parent.parent == run_dir
    assert {p: p.read_bytes() for p in (sqlite_report, *sqlite_store.iterdir())} == before

    deleted = mro.run(["delete", "--study", str(file), "--storage", pg_url, "--yes"], cwd=tmp_path)
    assert deleted.returncode == 0, deleted.stderr
    assert not pg_report.parent.exists()  # the PostgreSQL study's own folder, made by it
    assert {p: p.read_bytes() for p in (sqlite_report, *sqlite_store.iterdir())} == before
    assert len(mro.complete(mro.open_study(f"sqlite:///{run_dir / 'study.db'}"))) == 2

    named = tmp_path / "named-store"
    named.mkdir()
    env = mro.env(MRO_ARTIFACTS=str(named))
    assert mro.run(["run", "--study", str(file), "--storage", pg_url, "--trials", "1", "--no-report", "-q"], cwd=tmp_path, env=env).returncode == 0
    assert mro.run(["delete", "--study", str(file), "--storage", pg_url, "--yes"], cwd=tmp_path, env=env).returncode == 0
    assert named.is_dir() and files_under(named) == []  # emptied, not removed: the user made it


# --- 4. all-or-nothing writes -----------------------------------------------------------------


def test_a_full_disk_in_the_checkpoint_upload_leaves_nothing(tiny, mro, tmp_path, pg_url):
    file, _ = fresh_run(tiny, tmp_path)
    store = tmp_path / "store"
    store.mkdir()
    args = ["run", "--study", str(file), "--storage", pg_url, "--artifacts", str(store), "--trials", "2", "--no-report"]
    full = run_faulty(mro, args, tmp_path, f"fsize={tiny.checkpoint.stat().st_size // 2}")
    one_error(full, "artifact store")
    assert os.listdir(store) == []  # no partial object, no temporary file
    assert study_names(pg_url) == []
    again = mro.run([*args, "-q"], cwd=tmp_path)
    assert again.returncode == 0, again.stderr


def test_a_full_disk_in_an_export_leaves_nothing_and_a_retry_needs_no_force(tiny, mro, tmp_path, pg_url):
    file, _ = fresh_run(tiny, tmp_path)
    assert main(["run", "--study", str(file), "--storage", pg_url, "--trials", "2", "--no-report", "-q"]) == 0
    trial = mro.complete(mro.open_study(pg_url))[0].number
    args = ["export", "--study", str(file), "--storage", pg_url, "--trial", str(trial), "-o", "out/subnet", "-q"]
    before = files_under(tmp_path)
    full = run_faulty(mro, args, tmp_path, "fsize=4096")  # model.py is larger
    one_error(full, "export")
    assert files_under(tmp_path) == before and not (tmp_path / "out").exists()
    again = mro.run(args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert sorted(p.name for p in (tmp_path / "out" / "subnet").iterdir()) == sorted(
        ["model.py", "weights.pt", "config.json", "metrics.json", "README.md"])


def test_a_full_disk_in_a_report_leaves_nothing(tiny, mro, tmp_path, pg_url):
    file, _ = fresh_run(tiny, tmp_path)
    assert main(["run", "--study", str(file), "--storage", pg_url, "--trials", "2", "--no-report", "-q"]) == 0
    before = files_under(tmp_path)
    full = run_faulty(mro, ["report", "--study", str(file), "--storage", pg_url, "-o", "r.html"], tmp_path, "fsize=65536")
    one_error(full, "report")
    assert files_under(tmp_path) == before


def test_a_read_only_sqlite_file_is_read_without_leaving_files(tiny, mro, tmp_path):
    """An immutable file (``chattr +i``: read-only even for root) in a writable folder."""
    file, run_dir = fresh_run(tiny, tmp_path)
    made = mro.run(["run", "--study", str(file), "--trials", "2", "--no-report", "-q"], cwd=tmp_path)  # a process that has ended
    assert made.returncode == 0, made.stderr
    db = run_dir / "study.db"
    made = subprocess.run(["chattr", "+i", str(db)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"chattr +i is not possible here: {made.stderr.strip()[:100]}")
    try:
        before = sorted(os.listdir(run_dir))
        front = mro.run(["pareto", "--study", str(file), "--json"], cwd=tmp_path)
        assert front.returncode == 0, front.stderr
        assert json.loads(front.stdout)["counts"]["complete"] == 2
        assert sorted(os.listdir(run_dir)) == before  # no -wal, no -shm
    finally:
        subprocess.run(["chattr", "-i", str(db)], check=False)
