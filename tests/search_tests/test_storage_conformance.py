"""Optuna's storage conformance suite (``optuna.testing.pytest_storages.StorageTestCase``) run
against the project's storage as the service opens it (``storage.open_storage``: a
``FaultTolerantRDBStorage`` with heartbeats and retries of stale trials), on a fresh SQLite file
and on a fresh PostgreSQL database per test. Every case, on both backends, none skipped."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from optuna.storages import BaseStorage
from optuna.testing.pytest_storages import StorageTestCase

from search_service.storage import FaultTolerantRDBStorage, open_storage


@pytest.fixture(params=["sqlite", "postgresql"])
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
