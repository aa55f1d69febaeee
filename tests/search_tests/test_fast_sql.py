"""The guard on the service's trial SQL (``trial_reads``, ``trial_writes``).

A storage uses that SQL only with the Optuna release, recorded schema version, alembic revision
and dialect it was checked with; otherwise (or with ``MRO_FAST_SQL=0``) every override uses
Optuna's own calls, with the same trials read and the same rows written, and says why once at
debug level. A failure of the SQL is a warning and a fallback, never silence; an unreachable
database still raises. A worker process with the SQL turned off completes its trials.
"""

from __future__ import annotations

import logging
import sqlite3

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.storages import RDBStorage
from optuna.trial import TrialState
from sqlalchemy import create_engine, text

from search_service import storage as storage_module
from search_service import trial_reads
from search_service.storage import (
    FaultTolerantRDBStorage,
    is_storage_outage,
    open_storage,
    set_trial_attrs,
)

BIT = CategoricalDistribution((0, 1))
FALLBACK_SAID = "trials are read and written with Optuna's storage calls"


@pytest.fixture(params=["sqlite", "postgres"])
def url(request, tmp_path) -> str:
    """An Optuna database (tables created by Optuna itself) on either backend."""
    found = f"sqlite:///{tmp_path / 'study.db'}" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    RDBStorage(found).engine.dispose()
    return found


@pytest.fixture(autouse=True)
def _fresh(monkeypatch, caplog):
    """No forced fallback from outside, nothing said yet by this process, mro_search's debug on."""
    monkeypatch.delenv("MRO_FAST_SQL", raising=False)
    monkeypatch.setattr(storage_module, "_FALLBACK_SAID", set())
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    caplog.set_level(logging.DEBUG, logger="mro_search")


def _no_fast_sql(monkeypatch) -> None:
    """Any use of the service's SQL fails the test."""
    for name in ("read_trials", "write_rows", "finish", "trial_state", "create_trial"):
        monkeypatch.setattr(storage_module, name, lambda *a, _n=name, **k: pytest.fail(f"{_n} used while fast_sql is off"))


def _said(caplog, words: str, level: int) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "mro_search" and r.levelno == level and words in r.getMessage()]


def _run_trials(storage, name: str) -> list[optuna.trial.FrozenTrial]:
    """Trials through every override: creation, batched and single writes, every kind of end."""
    study = optuna.create_study(storage=storage, directions=["maximize", "minimize"], study_name=name)
    for i, state in enumerate((TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)):
        trial = study.ask()
        study._storage.set_trial_system_attr(trial._trial_id, "mro:mask", f"10{i}")
        set_trial_attrs(study._storage, trial._trial_id, {"mask": f"10{i}", "metrics": {"accuracy": 0.5}}, {"s": i}, params={"a->b": (1.0, BIT), "b->a": (0.0, BIT)})
        trial.set_user_attr("worker", "host:1")
        if state == TrialState.COMPLETE:
            study.tell(trial, (0.5, 1.25))
        else:
            study.tell(trial, state=state)
    return study.get_trials()


def _same(mine: list, theirs: list) -> None:
    assert len(mine) == len(theirs) == 3
    for a, b in zip(mine, theirs, strict=True):
        assert (a.number, a.state, a.values, a.params, a.distributions, a.user_attrs, a.system_attrs) == (
            b.number, b.state, b.values, b.params, b.distributions, b.user_attrs, b.system_attrs
        )


def _scratch_copy(url: str, tmp_path) -> str:
    """A copy of the database to spoil: another SQLite file, or the test's own PostgreSQL
    database (created for this test alone)."""
    if not url.startswith("sqlite"):
        return url
    source, copy = sqlite3.connect(url.removeprefix("sqlite:///")), sqlite3.connect(tmp_path / "copy.db")
    with copy:
        source.backup(copy)
    source.close()
    copy.close()
    return f"sqlite:///{tmp_path / 'copy.db'}"


def _set_schema_version(url: str, version: int) -> None:
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE version_info SET schema_version = :v"), {"v": version})
    engine.dispose()


def test_the_sql_is_used_where_it_was_checked(url):
    """This Optuna and both backends are what the SQL was written for: the fast path is on (else
    the other tests here and the parametrized ones would compare the fallback with itself)."""
    storage = open_storage(url, heartbeat=False)
    assert storage.fast_sql and storage.fast_sql_reason is None
    assert optuna.__version__.startswith(trial_reads.OPTUNA_RELEASES)
    assert storage.get_current_version() in trial_reads.ALEMBIC_REVISIONS


def test_a_recorded_schema_version_it_was_not_checked_with_means_optunas_calls(url, tmp_path, monkeypatch, caplog):
    # what the service's SQL writes and reads on the database as it is...
    fast = _run_trials(open_storage(url, heartbeat=True), "fast")
    # ...and on a copy whose recorded schema version it was not checked with
    spoiled = _scratch_copy(url, tmp_path)
    _set_schema_version(spoiled, 13)
    storages = [open_storage(spoiled, heartbeat=True), open_storage(spoiled, heartbeat=False), FaultTolerantRDBStorage(spoiled)]
    for storage in storages:
        assert not storage.fast_sql
        assert "schema version 13" in storage.fast_sql_reason and "12" in storage.fast_sql_reason
    with monkeypatch.context() as m:
        _no_fast_sql(m)
        fallback = _run_trials(storages[0], "fallback")
    _same(fallback, fast)
    _same(optuna.load_study(study_name="fallback", storage=RDBStorage(spoiled)).get_trials(), fast)  # as Optuna reads them
    _same(optuna.load_study(study_name="fast", storage=storages[1]).get_trials(), fast)
    # every trial had its first heartbeat (written right after its creation, not with it)
    engine = create_engine(spoiled)
    with engine.connect() as conn:
        beats = conn.execute(text("SELECT COUNT(*) FROM trial_heartbeats h JOIN trials t USING (trial_id) JOIN studies s USING (study_id) WHERE s.study_name = 'fallback'")).scalar()
    engine.dispose()
    assert beats == 3
    said = _said(caplog, FALLBACK_SAID, logging.DEBUG)
    assert len(said) == 1, [r.getMessage() for r in said]  # three storages opened, said once
    assert "schema version 13" in said[0].getMessage()
    assert not _said(caplog, "", logging.WARNING)
    # the check reads the database each time: put back, the SQL is used again
    _set_schema_version(spoiled, 12)
    assert open_storage(spoiled, heartbeat=False).fast_sql


@pytest.mark.parametrize(
    "constant, value, reason",
    [
        ("OPTUNA_RELEASES", ("4.9",), f"Optuna {optuna.__version__} is installed"),
        ("SCHEMA_VERSIONS", (11,), "schema version 12"),
        ("ALEMBIC_REVISIONS", ("v3.0.0.d",), "alembic revision v3.2.0.a"),
        ("DIALECTS", ("mysql",), "the database is sqlite"),
    ],
)
def test_a_release_schema_or_dialect_it_was_not_checked_with_means_optunas_calls(tmp_path, monkeypatch, caplog, constant, value, reason):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    RDBStorage(url).engine.dispose()
    monkeypatch.setattr(trial_reads, constant, value)
    storage = open_storage(url, heartbeat=False)
    assert not storage.fast_sql and reason in storage.fast_sql_reason
    assert [reason in r.getMessage() for r in _said(caplog, FALLBACK_SAID, logging.DEBUG)] == [True]
    _no_fast_sql(monkeypatch)
    assert [t.state for t in _run_trials(storage, "s")] == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL]


def test_an_optuna_release_it_was_not_checked_with_means_optunas_calls(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    RDBStorage(url).engine.dispose()
    monkeypatch.setattr(optuna, "__version__", "5.2.0")
    storage = FaultTolerantRDBStorage(url)
    assert not storage.fast_sql and "Optuna 5.2.0 is installed" in storage.fast_sql_reason


@pytest.mark.parametrize("value, fast", [("0", False), ("off", False), ("false", False), ("1", True), ("", True)])
def test_mro_fast_sql_0_forces_optunas_calls(tmp_path, monkeypatch, value, fast):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    RDBStorage(url).engine.dispose()
    monkeypatch.setenv("MRO_FAST_SQL", value)
    storage = open_storage(url, heartbeat=False)
    assert storage.fast_sql == fast
    assert storage.fast_sql_reason == (None if fast else f"MRO_FAST_SQL={value}")


def _broken_write(conn, *args, **kwargs):
    conn.exec_driver_sql("UPDATE trials SET no_such_column = 1")  # a real error from the database


def test_a_failing_fast_write_is_a_warning_and_a_fallback_not_silence(url, monkeypatch, caplog):
    storage = open_storage(url, heartbeat=False)
    calls = []
    monkeypatch.setattr(storage_module, "write_rows", lambda *a: calls.append(1) or _broken_write(*a))
    study = optuna.create_study(storage=storage, directions=["maximize", "minimize"])
    trial = study.ask()
    set_trial_attrs(storage, trial._trial_id, {"mask": "10"}, {"mro:mask": "10"}, params={"a->b": (1.0, BIT)})
    warned = _said(caplog, "trial SQL failed while writing a trial's parameters and attributes", logging.WARNING)
    assert len(warned) == 1 and "no_such_column" in warned[0].getMessage()
    assert not storage.fast_sql and "no_such_column" in storage.fast_sql_reason
    got = storage.get_trial(trial._trial_id)  # written all the same, by Optuna's calls
    assert (got.user_attrs, got.system_attrs, got.params) == ({"mask": "10"}, {"mro:mask": "10"}, {"a->b": 1})
    set_trial_attrs(storage, trial._trial_id, {"more": 1})
    study.tell(trial, (0.5, 1.0))
    assert calls == [1]  # Optuna's calls from then on; warned once
    assert len(_said(caplog, "trial SQL failed", logging.WARNING)) == 1
    assert study.get_trials()[0].user_attrs == {"mask": "10", "more": 1}


@pytest.mark.parametrize("where", ["read", "end"])
def test_a_failing_fast_read_or_end_is_a_warning_and_a_fallback(tmp_path, monkeypatch, caplog, where):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    RDBStorage(url).engine.dispose()
    storage = open_storage(url, heartbeat=False)
    study = optuna.create_study(storage=storage, directions=["maximize", "minimize"])
    trial = study.ask()

    def broken(conn, *args, **kwargs):
        raise ValueError("an unexpected row")

    monkeypatch.setattr(storage_module, "read_trials" if where == "read" else "finish", broken)
    if where == "read":
        assert storage.get_trial(trial._trial_id).number == 0
        assert [t.number for t in storage.get_all_trials(study._study_id)] == [0]
    else:
        study.tell(trial, (0.5, 1.0))
        assert storage.get_trial(trial._trial_id).values == [0.5, 1.0]
    (warned,) = _said(caplog, "trial SQL failed while", logging.WARNING)
    assert "ValueError: an unexpected row" in warned.getMessage()
    assert not storage.fast_sql


@pytest.mark.parametrize("where", ["write_rows", "finish", "read_trials"])
def test_an_unreachable_database_in_the_fast_path_still_raises(tmp_path, monkeypatch, caplog, where):
    """Workers ride out an outage (``is_storage_outage``): the fast path neither hides it nor
    falls back over it; and an update of a finished trial raises as Optuna's call does."""
    from sqlalchemy.exc import OperationalError

    url = f"sqlite:///{tmp_path / 'study.db'}"
    RDBStorage(url).engine.dispose()
    storage = open_storage(url, heartbeat=False)
    study = optuna.create_study(storage=storage, directions=["maximize", "minimize"])
    trial = study.ask()

    def unreachable(*args, **kwargs):
        raise OperationalError("SELECT 1", None, ConnectionError("server closed the connection unexpectedly"))

    monkeypatch.setattr(storage_module, where, unreachable)
    with pytest.raises(Exception) as raised:
        if where == "write_rows":
            set_trial_attrs(storage, trial._trial_id, {"mask": "10"})
        elif where == "finish":
            storage.set_trial_state_values(trial._trial_id, TrialState.COMPLETE, [0.5, 1.0])
        else:
            storage.get_trial(trial._trial_id)
    assert is_storage_outage(raised.value)
    assert storage.fast_sql and not _said(caplog, "", logging.WARNING)
    monkeypatch.undo()
    study.tell(trial, (0.5, 1.0))
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        set_trial_attrs(storage, trial._trial_id, {"late": 1})
    assert storage.fast_sql


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_worker_with_optunas_calls_forced_completes_its_trials(tiny, mro, tmp_path, request, backend):
    url = f"sqlite:///{tmp_path / 'study.db'}" if backend == "sqlite" else request.getfixturevalue("pg_url")
    budget = 12
    mro.create(tiny.file, url, trials=budget)
    result = mro.run(
        ["worker", "--study", str(tiny.file), "--storage", url, "--seed", "1", "--debug"], cwd=tmp_path, env=mro.env(MRO_FAST_SQL="0")
    )
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr.count(f"{FALLBACK_SAID} (slower than mro-search's SQL): MRO_FAST_SQL=0") == 1, result.stderr
    study = mro.open_study(url)
    done = mro.complete(study)
    assert len(done) == budget
    assert len({mro.mask(t) for t in done}) == budget
    assert all(t.user_attrs["mask"] == mro.mask(t) for t in done)
    assert len({t.user_attrs["worker"] for t in done}) == 1  # the worker's stamp, on every trial
    assert all(t.system_attrs.get("mro:mask") == mro.mask(t) for t in done)
    assert not study.get_trials(deepcopy=False, states=(TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING))


def _created(storage, name: str, n: int) -> tuple[list[optuna.trial.FrozenTrial], list[optuna.trial.FrozenTrial], list[tuple]]:
    """``n`` trials asked of a new study: the trials ``ask`` returned, as read back, and each
    trial's heartbeat rows (its id aside)."""
    study = optuna.create_study(storage=storage, directions=["maximize", "minimize"], study_name=name)
    asked = [study._storage._backend._create_new_trial(study._study_id) for _ in range(n)]
    engine = storage.engine
    with engine.connect() as conn:
        beats = [tuple(r) for r in conn.execute(text("SELECT COUNT(*) FROM trial_heartbeats h JOIN trials t ON t.trial_id = h.trial_id WHERE t.study_id = :s GROUP BY h.trial_id ORDER BY h.trial_id"), {"s": study._study_id})]
    return asked, study.get_trials(), beats


def test_a_new_trial_is_created_as_optuna_creates_it(url, monkeypatch):
    """``ask``'s trial in plain SQL (``trial_writes.create_trial``): the same rows as Optuna's
    creation (number, state, start, the first heartbeat, the stamp), the same FrozenTrial."""
    fast = open_storage(url, heartbeat=True, create=False)
    fast.stamp_trials({"worker": "host:1"})
    assert fast.fast_sql
    asked, read, beats = _created(fast, "fast", 3)
    monkeypatch.setenv("MRO_FAST_SQL", "0")
    slow = open_storage(url, heartbeat=True, create=False)
    slow.stamp_trials({"worker": "host:1"})
    _no_fast_sql(monkeypatch)
    assert not slow.fast_sql
    asked_slow, read_slow, beats_slow = _created(slow, "optuna", 3)
    assert beats == beats_slow == [(1,)] * 3
    for mine, theirs in ((asked, asked_slow), (read, read_slow)):
        for a, b in zip(mine, theirs, strict=True):
            assert (a.number, a.state, a.values, a.params, a.user_attrs, a.system_attrs, a.datetime_complete) == (
                b.number, b.state, b.values, b.params, b.user_attrs, b.system_attrs, b.datetime_complete
            )
    assert [t.number for t in read] == [0, 1, 2] and all(t.user_attrs == {"worker": "host:1"} for t in read)
    # the start as asked is the start as read back (stored naive UTC, read as local time)
    assert [t.datetime_start for t in asked] == [t.datetime_start for t in read]
    assert all(abs((t.datetime_start - s.datetime_start).total_seconds()) < 60 for t, s in zip(read, read_slow))


def test_trials_created_at_once_get_distinct_numbers(url):
    """Threads creating trials in one study at the same moment (each its own connection): the
    numbers are 0..n-1, each once, in trial id order, as Optuna numbers them."""
    import threading

    storage = open_storage(url, heartbeat=False, create=False)
    assert storage.fast_sql
    study = optuna.create_study(storage=storage, directions=["maximize", "minimize"])
    barrier = threading.Barrier(4)

    def make() -> None:
        barrier.wait()
        for _ in range(5):
            storage._create_new_trial(study._study_id)

    threads = [threading.Thread(target=make) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    trials = sorted(study.get_trials(), key=lambda t: t._trial_id)
    assert [t.number for t in trials] == list(range(20))


def _fields(t: optuna.trial.FrozenTrial) -> tuple:
    return (t._trial_id, t.number, t.state, t.values, t.datetime_start, t.datetime_complete, t.params,
            t.distributions, t.user_attrs, t.system_attrs, t.intermediate_values)


def test_asks_new_trial_is_not_read_back_and_is_what_a_read_returns(url, monkeypatch):
    """``ask`` creates a trial and reads it straight back (``optuna.Trial``): that read is served
    from the creation, once, field for field what the database holds (the stamp included); any
    later ``get_trial``, or one after a write to the trial, or after ``CREATED_FRESH_S``, reads."""
    storage = open_storage(url, heartbeat=True, create=False)
    storage.stamp_trials({"worker": "host:7"})
    assert storage.fast_sql
    study = optuna.create_study(storage=storage, directions=["maximize", "minimize"])
    reads: list[int] = []
    real_read = storage_module.read_trials
    monkeypatch.setattr(storage_module, "read_trials", lambda *a, **k: reads.append(1) or real_read(*a, **k))
    waiting_read = len(reads)
    trial = study.ask()
    # ask read the WAITING trials (one read), then its new trial came from the creation
    assert len(reads) == waiting_read + 1
    served = trial._cached_frozen_trial
    backend = study._storage._backend
    fresh = backend.get_trial(trial._trial_id)  # the memo is spent: this one reads
    assert len(reads) == waiting_read + 2
    assert _fields(served) == _fields(fresh)
    assert served.user_attrs == {"worker": "host:7"} and served.state == TrialState.RUNNING

    # a write to the new trial before the read: the read sees it
    created = backend._create_new_trial(study._study_id)
    backend.set_trial_user_attr(created._trial_id, "note", "written")
    assert backend.get_trial(created._trial_id).user_attrs == {"worker": "host:7", "note": "written"}
    created = backend._create_new_trial(study._study_id)
    backend._set_trial_param(created._trial_id, "a->b", 1.0, BIT, None)
    assert backend.get_trial(created._trial_id).params == {"a->b": 1}
    # another trial's read, or a read after the memo went stale, reads
    first = backend._create_new_trial(study._study_id)
    second = backend._create_new_trial(study._study_id)
    before = len(reads)
    assert backend.get_trial(first._trial_id).number == first.number
    assert len(reads) == before + 1
    monkeypatch.setattr(storage_module, "CREATED_FRESH_S", 0.0)
    third = backend._create_new_trial(study._study_id)
    before = len(reads)
    assert _fields(backend.get_trial(third._trial_id))[:2] == (third._trial_id, third.number)
    assert len(reads) == before + 1
    assert second.number == first.number + 1


def test_a_worker_learns_its_trials_state_from_the_tell_without_reading_it(tmp_path):
    """``MROSampler.last_told``: the state ``tell`` wrote for the last trial, COMPLETE or PRUNED,
    as the study holds it."""
    from search_service.sampler import MROSampler

    storage = open_storage(f"sqlite:///{tmp_path / 'told.db'}", heartbeat=False)
    sampler = MROSampler(paths=["a->b", "b->a"], n_startup_trials=4, seed=0)
    study = optuna.create_study(storage=storage, directions=["maximize", "minimize"], sampler=sampler)
    assert sampler.last_told(study) is None

    def objective(trial):
        bits = [trial.suggest_categorical(p, (0, 1)) for p in ("a->b", "b->a")]
        if trial.number == 1:
            raise optuna.TrialPruned()
        return float(sum(bits)), 1.0

    for number, state in ((0, TrialState.COMPLETE), (1, TrialState.PRUNED), (2, TrialState.COMPLETE)):
        study.optimize(objective, n_trials=1)
        assert sampler.last_told(study) == (number, state) == (number, study.trials[number].state)
    other = optuna.create_study(storage=storage, directions=["maximize", "minimize"])
    assert sampler.last_told(other) is None
