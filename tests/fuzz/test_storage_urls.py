"""Fuzzed storage URLs with a password in them (userinfo, ``?password=``, ``sslpassword``, a
percent-encoded parameter name; raw, percent- or plus-encoded; around it any characters), given
by ``--storage``, ``$MRO_STORAGE`` or the study file's ``[search] storage``: SQLite files (new,
or an existing file that is no database), PostgreSQL on this machine (trust authentication, so
the study is really created, in a database of this test's own), a database that does not exist,
a closed port, other schemes and garbage.

``run`` creates the study or fails with one line, creating no file, no SQLite database and no
study; after a successful ``run`` one more command (``pareto``, ``report``, ``export``,
``worker``, ``resume``, ``train`` or ``delete``) runs on it. The password appears in no output,
no file (the SQLite database, the report, the export) and no table of the PostgreSQL database.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from itertools import count
from pathlib import Path

import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from .conftest import check, fuzz_settings, listing, prepare
from .strategies import TINY_STUDY, StorageCase, render_toml, storage_cases

PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
FOLLOW_UPS = ["pareto", "report", "export", "worker", "resume", "train", "delete"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trained tiny study's checkpoint folder (copied into each example's run folder)."""
    root = tmp_path_factory.mktemp("storage-template")
    (root / "fz.toml").write_text(render_toml(TINY_STUDY), encoding="utf-8")
    prepare(root, ["train", "--study", "fz.toml", "-q"])
    return root / "runs" / "fz" / "checkpoints"


def _engine(url: str):
    from sqlalchemy import create_engine

    return create_engine(url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 5})


@pytest.fixture(scope="module")
def pg_database() -> Iterator[str | None]:
    """A fresh PostgreSQL database for this module (None when the server does not answer: the
    PostgreSQL cases then use a closed port)."""
    from sqlalchemy import text

    name = f"mro_fuzz_{uuid.uuid4().hex[:12]}"
    try:
        engine = _engine(PG_ADMIN_URL)
        with engine.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception:
        yield None
        return
    try:
        yield name
    finally:
        with engine.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        engine.dispose()


def pg_contents(database: str) -> tuple[list[str], str]:
    """The studies in ``database`` and the text of every row of every table."""
    from sqlalchemy import inspect, text

    engine = _engine(f"postgresql+psycopg://postgres@127.0.0.1:5432/{database}")
    try:
        tables = inspect(engine).get_table_names()
        rows: list[str] = []
        studies: list[str] = []
        with engine.connect() as conn:
            for table in tables:
                rows.extend(str(tuple(r)) for r in conn.execute(text(f'SELECT * FROM "{table}"')))
            if "studies" in tables:
                studies = sorted(r[0] for r in conn.execute(text("SELECT study_name FROM studies")))
        return studies, "\n".join(rows)
    finally:
        engine.dispose()


_names = count()


@fuzz_settings(share=1.0)
@given(data=st.data(), via=st.sampled_from(["flag", "flag", "env", "file"]), existing=st.sampled_from([None, None, None, b"", b"not a database"]),
       follow_up=st.sampled_from(FOLLOW_UPS), quiet=st.booleans())
def test_storage_url(cli, scratch, checkpoints: Path, pg_database: str | None, data, via: str, existing: bytes | None,
                     follow_up: str, quiet: bool) -> None:
    root = scratch()
    case: StorageCase = data.draw(storage_cases(folder=str(root), pg_database=pg_database), label="storage")
    name = f"fz{next(_names)}_{os.getpid()}"
    doc = {**TINY_STUDY, "name": name, "search": dict(TINY_STUDY["search"])}
    if via == "file":
        doc["search"]["storage"] = case.url
    study_file = root / f"{name}.toml"
    study_file.write_text(render_toml(doc), encoding="utf-8")
    shutil.copytree(checkpoints, root / "runs" / name / "checkpoints")
    if existing is not None and case.sqlite_file:
        Path(case.sqlite_file).parent.mkdir(parents=True, exist_ok=True)
        Path(case.sqlite_file).write_bytes(existing)
    storage = ["--storage", case.url] if via == "flag" else []
    env = {"MRO_STORAGE": case.url} if via == "env" else {}
    q = ["-q"] if quiet else []
    secrets = [case.marker, case.secret if len(case.secret) >= 8 else ""]
    pg_before = pg_contents(pg_database)[0] if pg_database and case.kind == "postgres-ok" else None

    before = listing(root)
    absent = [case.sqlite_file] if case.sqlite_file and existing is None else []
    outcome = cli.invoke(["run", "--study", study_file.name, *storage, "--trials", "2", "--no-report", *q], root, env)
    event(f"{case.kind} via {via}: run exit {outcome.code}")
    check(outcome, root, before, secrets=secrets, inputs=[study_file], absent=absent)
    if pg_before is not None:
        studies, rows = pg_contents(pg_database)
        assert case.marker not in rows, f"secret stored in the database\n{outcome}"
        if outcome.code != 0:
            assert studies == pg_before, f"failed, but left studies {sorted(set(studies) - set(pg_before))}\n{outcome}"
    if outcome.code != 0:
        return
    argv = [follow_up, "--study", study_file.name, *storage, *q]
    argv += {"report": ["-o", "r.html", "--json"], "export": ["--trial", "0", "-o", "ex", "--json"], "pareto": ["--json"],
             "worker": ["--trials", "1"], "resume": ["--trials", "3", "--no-report"], "delete": ["--yes", "--json"]}.get(follow_up, [])
    before = listing(root)
    outcome = cli.invoke(argv, root, env)
    check(outcome, root, before, secrets=secrets, inputs=[study_file])
    assert outcome.code == 0, str(outcome)
    if pg_before is not None:
        assert case.marker not in pg_contents(pg_database)[1], f"secret stored in the database\n{outcome}"
