"""``set_trial_attrs``: parameters and attributes in one transaction per trial instead of one per value,
with exactly what Optuna's own one-by-one writes store (SQLite, PostgreSQL, in-memory fallback); the
same with the service's SQL turned off (``MRO_FAST_SQL=0``: Optuna's calls, never ``trial_writes``)."""

from __future__ import annotations

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from search_service.storage import open_storage, set_trial_attrs

BIT = CategoricalDistribution((0, 1))
PARAMS = {"a->b": 1, "a->c": 0, "b->a": 1}
USER = {"mask": "101", "active_paths": ["a->b", "b->a"], "metrics": {"accuracy": 0.75, "f1": 0.5}, "accuracy": 0.75, "mflops": 1.25, "params": 1234}
SYSTEM = {"mro:mask": "101", "constraints": [-0.5]}


@pytest.fixture(params=["fast", "fallback"])
def mode(request, monkeypatch) -> str:
    """The storage's SQL, or Optuna's calls forced (checked never to reach ``trial_writes``)."""
    from search_service import storage as storage_module

    if request.param == "fallback":
        monkeypatch.setenv("MRO_FAST_SQL", "0")
        for name in ("write_rows", "finish", "trial_state"):
            monkeypatch.setattr(storage_module, name, lambda *a, _n=name, **k: pytest.fail(f"{_n} used despite MRO_FAST_SQL=0"))
    else:
        monkeypatch.delenv("MRO_FAST_SQL", raising=False)
    return request.param


def _opened(url: str, mode: str):
    from optuna.storages import RDBStorage

    RDBStorage(url).engine.dispose()  # Optuna's tables (``open_storage`` creates none unless asked)
    storage = open_storage(url, heartbeat=False)
    assert storage.fast_sql == (mode == "fast"), storage.fast_sql_reason
    return storage


def _study(storage) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(storage=storage, directions=["maximize", "minimize"])


def _written(study: optuna.Study, batched: bool) -> optuna.trial.FrozenTrial:
    trial = study.ask()
    storage, tid = study._storage, trial._trial_id
    if batched:
        set_trial_attrs(storage, tid, USER, SYSTEM, params={n: (BIT.to_internal_repr(v), BIT) for n, v in PARAMS.items()})
    else:
        for n, v in PARAMS.items():
            storage.set_trial_param(tid, n, BIT.to_internal_repr(v), BIT)
        for k, v in USER.items():
            storage.set_trial_user_attr(tid, k, v)
        for k, v in SYSTEM.items():
            storage.set_trial_system_attr(tid, k, v)
    study.tell(trial, (0.75, 1.25))
    return study._storage.get_trial(tid)


def _check_same(url: str, mode: str) -> None:
    study = _study(_opened(url, mode))
    batched, plain = _written(study, True), _written(study, False)
    reread = optuna.load_study(study_name=study.study_name, storage=open_storage(url, heartbeat=False))
    a, b = (t for t in reread.get_trials() if t.number in (batched.number, plain.number))
    assert a.params == b.params == PARAMS
    assert a.distributions == b.distributions
    assert a.user_attrs == b.user_attrs == USER
    assert a.system_attrs == b.system_attrs
    assert a.values == b.values


def _check_edge_cases(url: str, mode: str) -> None:
    study = _study(_opened(url, mode))
    trial = study.ask()
    storage, tid = study._storage, trial._trial_id
    set_trial_attrs(storage, tid, {"x": 1}, {"s": "a"})
    set_trial_attrs(storage, tid, {"x": 2, "y": [1, 2]}, {"s": "b"})  # upsert: the last value wins
    storage.set_trial_param(tid, "a->b", 1.0, BIT)
    # a parameter the trial already has: the batch falls back to Optuna's one-by-one writes
    set_trial_attrs(storage, tid, {"z": 3}, params={"a->c": (0.0, BIT), "a->b": (1.0, BIT)})
    got = storage.get_trial(tid)
    assert got.user_attrs == {"x": 2, "y": [1, 2], "z": 3}
    assert got.system_attrs["s"] == "b"
    assert got.params == {"a->b": 1, "a->c": 0}
    study.tell(trial, (0.5, 1.0))
    with pytest.raises(UpdateFinishedTrialError):
        set_trial_attrs(storage, tid, {"late": 1})


def test_sqlite_batched_writes_store_what_optuna_stores(tmp_path, mode):
    _check_same(f"sqlite:///{tmp_path / 'a.db'}", mode)
    _check_edge_cases(f"sqlite:///{tmp_path / 'b.db'}", mode)


@pytest.mark.postgres
def test_postgres_batched_writes_store_what_optuna_stores(pg_url, mode):
    from sqlalchemy import text

    _check_same(pg_url, mode)
    _check_edge_cases(pg_url, mode)
    with open_storage(pg_url, heartbeat=False).engine.connect() as conn:
        assert conn.execute(text("SHOW synchronous_commit")).scalar() == "off"


def test_in_memory_storage_falls_back_to_one_by_one_writes():
    study = _study(None)
    trial = study.ask()
    set_trial_attrs(study._storage, trial._trial_id, USER, SYSTEM, params={"a->b": (1.0, BIT)})
    got = study._storage.get_trial(trial._trial_id)
    assert got.user_attrs == USER and got.params == {"a->b": 1}
    assert all(got.system_attrs[k] == v for k, v in SYSTEM.items())


def test_sqlite_storage_commits_to_a_write_ahead_log(tmp_path):
    from sqlalchemy import text

    storage = open_storage(f"sqlite:///{tmp_path / 'w.db'}", heartbeat=False, create=True)
    with storage.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA synchronous")).scalar() == 1  # NORMAL


def _finish_all(storage, name: str) -> list[optuna.trial.FrozenTrial]:
    """Trials ended every way ``tell`` ends them, plus single attribute writes."""
    study = optuna.create_study(storage=storage, directions=["maximize", "minimize"], study_name=name)
    for values, state in (([0.5, 1.25], TrialState.COMPLETE), ([float("inf"), float("-inf")], TrialState.COMPLETE), (None, TrialState.PRUNED), (None, TrialState.FAIL)):
        trial = study.ask()
        study._storage.set_trial_system_attr(trial._trial_id, "mro:mask", "101")
        study._storage.set_trial_user_attr(trial._trial_id, "worker", "host:1")
        study._storage.set_trial_user_attr(trial._trial_id, "worker", "host:2")  # the last one wins
        if state == TrialState.COMPLETE:
            study.tell(trial, values)
        else:
            study.tell(trial, state=state)
        with pytest.raises(UpdateFinishedTrialError):
            study._storage.set_trial_state_values(trial._trial_id, TrialState.COMPLETE, [1.0, 1.0])
        with pytest.raises(UpdateFinishedTrialError):
            study._storage.set_trial_system_attr(trial._trial_id, "late", 1)
    return study.get_trials()


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_trial_ends_and_single_attributes_store_what_optuna_stores(tmp_path, request, backend, monkeypatch, mode):
    from optuna.storages import RDBStorage

    url = f"sqlite:///{tmp_path / 'ends.db'}" if backend == "sqlite" else request.getfixturevalue("pg_url")
    with monkeypatch.context() as m:  # the service's own writes, not a fallback to Optuna's
        if mode == "fast":
            for name in ("set_trial_state_values", "set_trial_system_attr", "set_trial_user_attr"):
                m.setattr(RDBStorage, name, lambda *a, _n=name, **k: pytest.fail(f"fell back to RDBStorage.{_n}"))
        mine = _finish_all(_opened(url, mode), "mine")
    theirs = _finish_all(RDBStorage(url), "optuna")
    for a, b in zip(mine, theirs, strict=True):
        assert (a.state, a.values, a.params, a.user_attrs, a.system_attrs) == (b.state, b.values, b.params, b.user_attrs, b.system_attrs)
        assert a.datetime_complete is not None and abs((a.datetime_complete - b.datetime_complete).total_seconds()) < 60
        assert a.datetime_complete >= a.datetime_start
