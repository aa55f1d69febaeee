"""``trial_reads``: the storage's Core reads return exactly the trials Optuna's ORM reads do,
on SQLite and PostgreSQL, for every kind of parameter, value, attribute and state; and so does
the storage with its SQL turned off (``MRO_FAST_SQL=0``: Optuna's own reads, never ``trial_reads``)."""

from __future__ import annotations

import math
import time

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.storages import RDBStorage
from optuna.trial import TrialState, create_trial

from search_service.storage import FaultTolerantRDBStorage


def _fill(storage) -> optuna.Study:
    """A study with float (log, step), int and categorical (None, bool, str, float) parameters,
    finite and infinite values, NaN and infinite intermediate values, nested attributes, and
    trials in every state."""
    study = optuna.create_study(storage=storage, directions=["maximize", "minimize"], study_name="reads")
    dists = {
        "x": FloatDistribution(1e-3, 1.0, log=True),
        "y": FloatDistribution(-1.0, 1.0, step=0.25),
        "n": IntDistribution(1, 9, step=2),
        "c": CategoricalDistribution([None, True, "a", 2.5]),
    }
    for i, (values, state) in enumerate(
        [([0.5, 3.0], TrialState.COMPLETE), ([float("inf"), float("-inf")], TrialState.COMPLETE), (None, TrialState.FAIL), (None, TrialState.PRUNED)]
    ):
        trial = create_trial(
            state=state,
            values=values,
            params={"x": 0.01 * (i + 1), "y": -0.5, "n": 1 + 2 * i, "c": [None, True, "a", 2.5][i]},
            distributions=dists,
            user_attrs={"mask": "0101", "metrics": {"f1": 0.25, "list": [1, 2, None]}},
            system_attrs={"mro:mask": "0101", "retry_history": [i]},
            intermediate_values={0: 1.0, 1: float("nan"), 2: float("inf"), 3: float("-inf")} if i == 3 else {},
        )
        study.add_trial(trial)
    running = study.ask()  # RUNNING, with one parameter and attributes
    running.suggest_int("n", 1, 9, step=2)
    running.set_user_attr("worker", "host:1")
    study._storage.set_trial_system_attr(running._trial_id, "mro:mask", "1100")
    study.enqueue_trial({"x": 0.5, "c": "a"})  # WAITING with some parameters
    return study


def _same(a: optuna.trial.FrozenTrial, b: optuna.trial.FrozenTrial) -> None:
    da, db = dict(a.__dict__), dict(b.__dict__)
    ia, ib = da.pop("intermediate_values"), db.pop("intermediate_values")
    assert da == db
    assert ia.keys() == ib.keys()
    for step in ia:
        assert ia[step] == ib[step] or (math.isnan(ia[step]) and math.isnan(ib[step]))


@pytest.fixture(autouse=True)
def _not_utc(monkeypatch):
    """Stored datetimes are naive UTC, read back as naive local time: test off UTC."""
    monkeypatch.setenv("TZ", "Asia/Kolkata")  # UTC+05:30
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.fixture(params=["fast", "fallback"])
def mode(request, monkeypatch) -> str:
    """The storage's SQL (checked to be in use), or Optuna's calls forced (checked never to
    reach ``trial_reads``)."""
    from search_service import storage as storage_module

    if request.param == "fallback":
        monkeypatch.setenv("MRO_FAST_SQL", "0")
        monkeypatch.setattr(storage_module, "read_trials", lambda *a, **k: pytest.fail("read with trial_reads despite MRO_FAST_SQL=0"))
    else:
        monkeypatch.delenv("MRO_FAST_SQL", raising=False)
    return request.param


def _opened(url: str, mode: str) -> FaultTolerantRDBStorage:
    storage = FaultTolerantRDBStorage(url)
    assert storage.fast_sql == (mode == "fast"), storage.fast_sql_reason
    return storage


@pytest.fixture(params=["sqlite", "postgres"])
def url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'reads.db'}"
    url = request.getfixturevalue("pg_url")
    from sqlalchemy import create_engine, text

    # a server whose DateStyle is not ISO: timestamps must still read back right
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f"ALTER DATABASE \"{url.rsplit('/', 1)[1]}\" SET DateStyle = 'SQL, DMY'"))
    engine.dispose()
    return url


def test_core_reads_equal_optunas_orm_reads(url, mode):
    orm = RDBStorage(url)
    study = _fill(orm)
    core = _opened(url, mode)
    sid = study._study_id
    everything = orm.get_all_trials(sid, deepcopy=False)
    assert len(everything) == 6 and {t.state for t in everything} == set(TrialState)
    ids = [t._trial_id for t in everything]
    cases = [
        (None, set(), -1),
        ((TrialState.COMPLETE,), set(), -1),
        ((TrialState.RUNNING, TrialState.WAITING), set(), -1),
        (None, set(), ids[2]),  # the trials after the third (what _CachedStorage fetches)
        (None, {ids[0], ids[3]}, ids[3]),  # ...plus unfinished ones it already knew
        (None, {ids[5]}, ids[2]),  # an included id above the bound is ignored, as in Optuna
    ]
    for states, included, greater in cases:
        expected = RDBStorage._get_trials(orm, sid, states, included, greater)
        got = core._get_trials(sid, states, included, greater)
        assert [t.number for t in got] == [t.number for t in expected], (states, included, greater)
        for a, b in zip(got, expected):
            _same(a, b)
    for trial_id in ids:
        _same(core.get_trial(trial_id), orm.get_trial(trial_id))
    with pytest.raises(KeyError):
        core.get_trial(max(ids) + 100)
    with pytest.raises(KeyError):
        core._get_trials(sid + 100, None, set(), -1)


def test_a_study_on_the_core_reads_behaves_as_on_optunas(tmp_path, mode):
    """Through ``_CachedStorage`` (what a study uses): values, params and best trials agree."""
    url = f"sqlite:///{tmp_path / 'cached.db'}"
    study = _fill(RDBStorage(url))
    mine = optuna.load_study(study_name="reads", storage=_opened(url, mode))
    for a, b in zip(mine.get_trials(), study.get_trials()):
        _same(a, b)
    assert [t.number for t in mine.best_trials] == [t.number for t in study.best_trials]
    trial = mine.ask()
    trial.suggest_float("x", 1e-3, 1.0, log=True)
    mine.tell(trial, [0.9, 0.1])
    again = study.get_trials()[-1]
    _same(mine.get_trials()[-1], again)
