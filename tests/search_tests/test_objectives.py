"""Objectives chosen in the study file (issue 21): latency, memory and parameters beside the
metric, limits as Optuna constraints, the per-device tables stored with the study, the front
measured exactly, and every objective shown with its unit."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import optuna
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from optuna.study import StudyDirection

from search_service.cli import main
from search_service.evaluator import Evaluator
from search_service.hardware import measured, noise_ties, study_tables
from search_service.objectives import (
    HARDWARE_KEY,
    LIMIT_TABLES_KEY,
    OBJECTIVES_KEY,
    TABLES_KEY,
    MaskFilter,
    Objectives,
)
from search_service.sampler import BUDGET_KEY
from search_service.search import Objective, SearchStudy, pareto_front
from search_service.study_file import load_study
from supernet.errors import ConfigError
from supernet.flops import FlopTable
from supernet.paths import path_names

BUDGET = 12
HW = ["accuracy", "latency_ms", "params"]


def _run(args: list[str]) -> int:
    return main(args)


@pytest.fixture(scope="module")
def hw_study(tiny, mro, tmp_path_factory):
    """A study of (accuracy, latency_ms, params), searched by ``mro-search run`` in this process."""
    directory = tmp_path_factory.mktemp("hw")
    file = tiny.variant(directory, "hw.toml", objectives=HW)
    url = f"sqlite:///{directory / 'study.db'}"
    assert _run(["run", "--study", str(file), "--storage", url, "--artifacts", str(directory / "artifacts"),
                 "--trials", str(BUDGET), "-q"]) == 0
    study = mro.open_study(url)
    return SimpleNamespace(file=file, url=url, study=study, directory=directory,
                           attrs=study._storage.get_study_system_attrs(study._study_id), evaluator=Evaluator(load_study(str(file))))


def test_names_directions_and_stored_tables(hw_study):
    study, attrs = hw_study.study, hw_study.attrs
    assert study.metric_names == HW
    assert study.directions == [StudyDirection.MAXIMIZE, StudyDirection.MINIMIZE, StudyDirection.MINIMIZE]
    assert attrs[OBJECTIVES_KEY] == {"names": HW, "limits": {}}
    assert set(attrs[TABLES_KEY]) == {"latency_ms"}  # only the measured costs the study uses
    table = study_tables(attrs)["latency_ms"]
    assert table.base >= 0 and all(v >= 0 for v in table.path) and len(table.path) == 6
    assert attrs[HARDWARE_KEY]["device"] == "cpu" and attrs[HARDWARE_KEY]["batch_size"] == 1
    assert LIMIT_TABLES_KEY in attrs and attrs[LIMIT_TABLES_KEY] == {}


def test_every_trial_is_priced_by_the_study_table(hw_study, mro):
    table = study_tables(hw_study.attrs)["latency_ms"]
    done = mro.complete(hw_study.study)
    assert len(done) == BUDGET
    for t in done:
        bits = [int(b) for b in t.user_attrs["mask"]]
        assert t.values[1] == pytest.approx(table.estimate(bits)) == t.user_attrs["latency_ms"]
        assert t.values[2] == hw_study.evaluator.model.num_parameters(bits) == t.user_attrs["params"]
        assert "constraints" not in t.system_attrs  # no limits


def test_front_is_measured_exactly_and_shown_with_units(hw_study, capsys):
    exact = measured(hw_study.study._storage.get_study_system_attrs(hw_study.study._study_id))
    capsys.readouterr()
    assert _run(["pareto", "--study", str(hw_study.file), "--storage", hw_study.url, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [o["name"] for o in out["objectives"]] == HW
    assert [o["unit"] for o in out["objectives"]] == ["", "ms", "parameters"]
    assert out["latency_device"]["noise"] >= 0
    front = out["pareto_front"]
    assert front and {row["mask"] for row in front} <= set(exact)  # every member measured when the run ended
    for row in front:
        lat = row["measured"]["latency_ms"]
        assert lat["median"] > 0 and lat["runs"] >= 1 and lat["iqr"] >= 0
        assert row["measured"]["device"].startswith("cpu")
        assert set(row["objectives"]) == set(HW) and row["units"]["latency_ms"] == "ms"
    assert _run(["pareto", "--study", str(hw_study.file), "--storage", hw_study.url]) == 0
    text = capsys.readouterr().out
    assert "latency_ms (ms)" in text and "params (parameters)" in text and "latency_ms measured" in text
    assert "device noise" in text


def test_report_and_export_show_every_objective(hw_study, tmp_path, capsys):
    report = tmp_path / "report.html"
    assert _run(["report", "--study", str(hw_study.file), "--storage", hw_study.url, "-o", str(report)]) == 0
    page = report.read_text(encoding="utf-8")
    assert "minimize latency_ms (ms), params (parameters)" in page
    assert "latency_ms (table)" in page and "latency_ms (measured)" in page and "device noise" in page
    front = json.loads(_pareto_json(hw_study, capsys))["pareto_front"]
    out = tmp_path / "export"
    assert _run(["export", "--study", str(hw_study.file), "--storage", hw_study.url, "--trial", str(front[0]["trial"]),
                 "-o", str(out), "-q"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    hw = metrics["hardware"]
    assert hw["latency_ms"]["median"] > 0 and hw["peak_memory_mb"] > 0 and hw["params"] == metrics["params"]
    config = json.loads((out / "config.json").read_text())
    assert list(config["objectives"]) == HW and config["objective_units"]["latency_ms"] == "ms"
    assert "forward latency" in (out / "README.md").read_text()


def _pareto_json(hw_study, capsys) -> str:
    capsys.readouterr()
    assert _run(["pareto", "--study", str(hw_study.file), "--storage", hw_study.url, "--json"]) == 0
    return capsys.readouterr().out


def test_other_objectives_for_the_same_study_are_refused(hw_study, tiny, tmp_path, capsys):
    other = tiny.variant(tmp_path, "other.toml", objectives=["accuracy", "mflops"])
    capsys.readouterr()
    assert _run(["run", "--study", str(other), "--storage", hw_study.url, "--trials", str(BUDGET), "--no-report", "-q"]) != 0
    err = capsys.readouterr().err
    assert "use another study name for other objectives or limits" in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("objectives", "needle"),
    [
        (["accuracy"], "must be the metric and one or two costs"),
        (["accuracy", "mflops", "params", "latency_ms"], "at most 3 allowed"),
        (["mflops", "accuracy"], "objectives[0] = 'mflops'"),
        (["accuracy", "watts"], "is not a cost"),
        (["accuracy", "params", "params"], "name a cost twice"),
        (["mae", "params"], "is minimized"),
    ],
)
def test_bad_objectives_are_refused_in_one_line(tiny, tmp_path, objectives, needle):
    bad = tiny.variant(tmp_path, "bad.toml", objectives=objectives)
    with pytest.raises(ConfigError) as info:
        load_study(str(bad))
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_flops_budget_is_read_as_max_mflops(tiny, tmp_path):
    study = load_study(str(tiny.variant(tmp_path, "old.toml", flops_budget=1.5)))
    assert study.search.max_mflops == 1.5
    with pytest.raises(ConfigError, match="old name of max_mflops"):
        load_study(str(tiny.variant(tmp_path, "both.toml", flops_budget=1.5, max_mflops=2.0)))


def test_a_limit_is_never_violated_by_the_front_and_optunas_samplers_see_it(tiny, mro, tmp_path):
    """``max_params`` cuts the masks in two: MROSampler proposes none over it; trials that
    Optuna's RandomSampler runs over it are recorded infeasible, and no front member is."""
    evaluator = Evaluator(load_study(str(tiny.file)))
    limit = evaluator.model.num_parameters((1, 1, 1, 0, 0, 0))
    file = tiny.variant(tmp_path, "limit.toml", objectives=["accuracy", "mflops"], max_params=limit)
    url = f"sqlite:///{tmp_path / 'limit.db'}"
    assert _run(["run", "--study", str(file), "--storage", url, "--trials", "10", "--no-report", "-q"]) == 0
    study = mro.open_study(url)
    done = mro.complete(study)
    assert len(done) == 10
    assert all(t.system_attrs["constraints"] == [pytest.approx(t.user_attrs["params"] - limit)] for t in done)
    assert all(t.user_attrs["params"] <= limit for t in done)  # MROSampler: nothing over the limit

    # the same limit, searched by Optuna's RandomSampler through the service's objective
    url2 = f"sqlite:///{tmp_path / 'random.db'}"
    search = mro.create(file, url2, trials=30)
    study2 = optuna.load_study(study_name=search.name, storage=search.optuna_study._storage, sampler=optuna.samplers.RandomSampler(seed=0))
    study2.optimize(Objective(SearchStudy(study2, url2), evaluator), n_trials=30, catch=())
    done2 = mro.complete(study2)
    over = [t for t in done2 if t.system_attrs["constraints"][0] > 0]
    assert over, "the random masks should cross the limit"
    best = study2.best_trials
    assert best and all(t.system_attrs["constraints"][0] <= 0 for t in best)
    front = {row["trial"] for row in pareto_front(SearchStudy(study2, url2))}
    assert front and not front & {t.number for t in over}


def test_a_latency_limit_holds_on_postgresql_with_a_remote_worker(tiny, mro, pg_url, tmp_path):
    """objectives = accuracy, latency_ms, params on PostgreSQL, with a latency limit: a worker
    started as its own process prices masks with the stored table, and no front member breaks
    the limit."""
    probe = Evaluator(load_study(str(tiny.file)))
    file0 = tiny.variant(tmp_path, "probe.toml", objectives=HW)
    # the limit: the study's own table's price of a middle mask (set after a first creation)
    url0 = f"sqlite:///{tmp_path / 'probe.db'}"
    search0 = mro.create(file0, url0, trials=4)
    table = study_tables(search0.attrs)["latency_ms"]
    limit = round(table.estimate((1, 1, 1, 0, 0, 0)), 6)
    file = tiny.variant(tmp_path, "pg.toml", objectives=HW, max_latency_ms=limit)
    store = tmp_path / "artifacts"
    assert _run(["run", "--study", str(file), "--storage", pg_url, "--artifacts", str(store), "--trials", "6", "--no-report", "-q"]) == 0
    first = mro.open_study(pg_url)
    first._storage.set_study_system_attr(first._study_id, BUDGET_KEY, 8)  # room for the other machine's worker
    result = mro.run(["worker", "--study", "tiny", "--storage", pg_url, "--artifacts", str(store), "--trials", "2"], cwd=tmp_path,
                     env=mro.env())
    assert result.returncode == 0, result.stderr
    study = mro.open_study(pg_url)
    attrs = study._storage.get_study_system_attrs(study._study_id)
    table = study_tables(attrs)["latency_ms"]
    done = mro.complete(study)
    assert len(done) == 8
    workers = {t.user_attrs["worker"] for t in done}
    assert len(workers) == 2  # this process, then the worker process
    for t in done:
        assert t.values[1] == pytest.approx(table.estimate([int(b) for b in t.user_attrs["mask"]]))
        assert t.values[2] == probe.model.num_parameters([int(b) for b in t.user_attrs["mask"]])
    for t in study.best_trials:
        assert t.values[1] <= limit * (1 + 1e-9)
        assert t.system_attrs["constraints"][0] <= 0


def test_noise_ties():
    o = Objectives("accuracy", ("latency_ms",))
    rows = [{"trial": 1, "values": [0.90, 1.00]}, {"trial": 2, "values": [0.80, 0.98]}, {"trial": 3, "values": [0.70, 0.50]}]
    assert noise_ties(rows, o, 0.05) == {2: 1}  # 2% faster and less accurate: not called better
    assert noise_ties(rows, o, 0.01) == {}
    assert noise_ties(rows, Objectives("accuracy", ("mflops",)), 0.05) == {}


@settings(max_examples=60, deadline=None)
@given(
    st.integers(2, 4).flatmap(lambda k: st.tuples(
        st.just(k),
        st.integers(0, 10**6), st.lists(st.integers(0, 10**6), min_size=k, max_size=k),
        st.lists(st.integers(0, 10**6), min_size=k * (k - 1), max_size=k * (k - 1)),
        st.lists(st.integers(0, 1), min_size=k * (k - 1), max_size=k * (k - 1)),
        st.floats(0, 6.0),
    ))
)
def test_mask_filter_prices_as_the_trial_would(case):
    """The filter's MFLOPs are the FLOPs table's ``mflops`` of the mask, and it calls a mask
    feasible exactly when the constraint its trial would record is at most 0."""
    k, base, modality, path, mask, limit = case
    names = tuple(f"m{i}" for i in range(k))
    table = FlopTable(base, tuple(modality), tuple(path), tuple(path_names(list(names))), names)
    attrs = {OBJECTIVES_KEY: {"names": ["accuracy", "mflops"], "limits": {"mflops": limit}},
             LIMIT_TABLES_KEY: {"mflops": {"base": base, "modality": modality, "path": path}}}
    f = MaskFilter.from_attrs(attrs)
    constraint = Objectives.from_attrs(attrs, "accuracy").constraints({"mflops": table.mflops(mask)})[0]
    assert f.feasible(mask) == (constraint <= 0)
    assert not MaskFilter.from_attrs({}) and MaskFilter({"params": 1.0}, {}).feasible(mask)


def test_objectives_of_an_old_study_read_as_metric_and_mflops():
    o = Objectives.from_attrs({"mro:flops_budget": 2.5}, "acc_7")
    assert o.names == ["acc_7", "mflops"] and dict(o.limits) == {"mflops": 2.5}
    assert o.directions == [StudyDirection.MAXIMIZE, StudyDirection.MINIMIZE]
    assert not math.isnan(o.constraints({"mflops": 3.0, "metrics": {}})[0])
