"""Fixtures of the reliability tests: the search tests' tiny trained study, storages and
process helpers (``tests/search_tests/conftest.py``, reused as they are), and a few more.

Everything is real: studies in SQLite files or in a fresh PostgreSQL database per test, workers
are ``mro-search`` processes, bad inputs are files in their real formats.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

# The search tests' fixtures, registered here too (pytest finds fixtures by name in a conftest).
from search_tests.conftest import (  # noqa: F401
    PG_ADMIN_URL,
    _no_inherited_storage,
    _one_torch_thread,
    _pg_unreachable,
    mro,
    pg_database,
    pg_url,
    sqlite_url,
    tiny,
)


def tree_snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``root``: relative path -> (size, mtime in ns). Empty folders do not
    count: ``nothing written`` means no file created or changed."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*")) if p.is_file()}


def study_snapshot(url: str, name: str = "tiny") -> tuple | None:
    """What a study holds that a failed command must not change: its trials (number, state,
    params, attributes) and its system attributes; None when there is no such study."""
    import optuna

    from search_service.storage import open_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(url, heartbeat=False)
    try:
        names = [s.study_name for s in storage.get_all_studies()]
        if name not in names:
            return None
        study = optuna.load_study(study_name=name, storage=storage)
        trials = [(t.number, t.state.name, sorted(t.params.items()), sorted(t.user_attrs), t.values) for t in study.get_trials(deepcopy=False)]
        return trials, sorted(study._storage.get_study_system_attrs(study._study_id).items(), key=lambda kv: kv[0])
    finally:
        storage.engine.dispose()


@pytest.fixture
def pg_server() -> None:
    """Skips the test when the PostgreSQL server on 127.0.0.1:5432 does not answer."""
    reason = _pg_unreachable()
    if reason:
        pytest.skip(reason)


@pytest.fixture
def own_pg_database() -> Iterator[str]:
    """A fresh PostgreSQL database whose admin engine survives a server restart (pre-ping):
    for the test that restarts the server (``pg_database``'s engine would fail to drop it)."""
    reason = _pg_unreachable()
    if reason:
        pytest.skip(reason)
    from sqlalchemy import create_engine, text

    name = f"mro_test_{uuid.uuid4().hex[:12]}"
    engine = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT", pool_pre_ping=True, connect_args={"connect_timeout": 10})
    with engine.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield name
    finally:
        engine.dispose()  # connections from before a restart are gone
        with engine.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        engine.dispose()
