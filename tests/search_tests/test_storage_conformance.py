"""Optuna's storage conformance suite (``optuna.testing.pytest_storages.StorageTestCase``) run
against the project's storage as the service opens it (``storage.open_storage``: a
``FaultTolerantRDBStorage`` with heartbeats and retries of stale trials), on a fresh SQLite file
and on a fresh PostgreSQL database per test (``conftest.pg_url``). Every case, on both backends,
none skipped. The PostgreSQL half is the slow one (creating and dropping a database per case):
about 2 minutes on a loaded 2-core machine (load 14), 4 at load 30."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from optuna.storages import BaseStorage
from optuna.testing.pytest_storages import StorageTestCase

from search_service.storage import FaultTolerantRDBStorage, open_storage


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=[pytest.mark.postgres, pytest.mark.slow])])
def storage(request: pytest.FixtureRequest) -> Iterator[BaseStorage]:
    url = request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")
    opened = open_storage(url)
    assert isinstance(opened, FaultTolerantRDBStorage)
    try:
        yield opened
    finally:
        opened.engine.dispose()


class TestProjectStorage(StorageTestCase):
    pass
