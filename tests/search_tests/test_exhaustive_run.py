"""``mro-search run --exhaustive``: the exact front, recorded as trials, on real studies.

The tiny k = 3 study (63 masks) and a planted k = 4 study (4,095 masks) trained here: the front
the command records equals the front of ``score_masks`` on every mask, computed by definition;
the trials carry what a sampled trial carries and ``mro:exhaustive``; ``pareto`` says the front is
exact; a second run adds nothing; a study with sampled trials gets only the masks it misses; a
space that would take longer than ``--max-minutes`` is refused before the study is created. A
study with other objectives (parameters, latency, three objectives) and limits gets the front of
its feasible masks, priced mask by mask as the study prices them.
"""

from __future__ import annotations

import json
import math
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from search_service.cli import main
from search_service.exhaustive import EQUAL_ATTR, EXHAUSTIVE_ATTR, EXHAUSTIVE_KEY
from search_service.hardware import study_tables
from search_service.objectives import Objectives, costs_of
from search_tests.conftest import one_error
from supernet.paths import all_masks, format_mask
from supernet.scoring import PathCache, score_masks

K4_STUDY = """\
name = "planted4"

[data]
source = "synthetic"
modalities = ["m0", "m1", "m2", "m3"]
dims = [8, 9, 9, 8]
length = 3
samples = [192, 96, 96]
planted_paths = ["m1->m0", "m2->m3"]
task = "classification"
noise = 0.1
seed = 1

[model]
width = 8
heads = 2
ffn_mult = 2
dropout = 0.0

[train]
epochs = 1
warmup_epochs = 1
batch_size = 64
seed = 0

[search]
metric = "accuracy"
trials = 30
n_startup_trials = 5
run_dir = "{run_dir}"
"""


@pytest.fixture
def cli(capfd, monkeypatch):
    """``cli(args, cwd)``: ``mro-search ARGS`` in this process, as a ``CompletedProcess``."""
    monkeypatch.delenv("MRO_STORAGE", raising=False)
    monkeypatch.delenv("MRO_ARTIFACTS", raising=False)

    def invoke(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
        capfd.readouterr()
        with monkeypatch.context() as mp:
            mp.chdir(cwd)
            try:
                code = main(args)
            except SystemExit as exc:  # argparse refuses a value before any command runs
                code = int(exc.code or 0)
        out, err = capfd.readouterr()
        return subprocess.CompletedProcess(args, code, out, err)

    return invoke


def brute_force_front(file: Path) -> list[str]:
    """The front by definition over every mask: ``score_masks`` (float64 cache) and
    ``FlopTable``; of equal points the lowest mask string. Mask strings by MFLOPs."""
    from search_service.evaluator import Evaluator
    from search_service.study_file import load_study

    evaluator = Evaluator(load_study(str(file)))
    cache = evaluator.cache("valid")
    cache64 = PathCache(pooled=cache.pooled.double(), labels=cache.labels, task=cache.task, projected=cache.projected.double())
    masks = all_masks(evaluator.model.num_paths)  # counting order: lowest mask string first
    values = score_masks(evaluator.model, cache64, masks, evaluator.metric).numpy()  # (M,)
    flops = np.array([evaluator.flops.flops(m.long().tolist()) for m in masks])  # (M,)
    v, f = values[None, :], flops[None, :]  # row: the point, column: another point
    dominated = ((v >= values[:, None]) & (f <= flops[:, None]) & ((v > values[:, None]) | (f < flops[:, None]))).any(axis=1)
    front: dict[tuple[float, int], str] = {}
    for i in np.flatnonzero(~dominated):
        front.setdefault((values[i], int(flops[i])), format_mask(masks[i]))
    return [front[key] for key in sorted(front, key=lambda p: p[1])]


def exhaustive_trials(mro, url: str, name: str) -> list:
    return [t for t in mro.complete(mro.open_study(url, name)) if t.user_attrs.get(EXHAUSTIVE_ATTR)]


def test_k3_front_recorded_exactly_once_and_shown_as_exact(tiny, mro, cli, tmp_path: Path) -> None:
    run_dir = tiny.seed_run_dir(tmp_path / "run")
    file = tiny.variant(tmp_path, run_dir=run_dir)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    result = cli(["run", "--study", str(file), "--storage", url, "--exhaustive", "--no-report", "--json", "-q"], tmp_path)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    expected = brute_force_front(file)
    assert [row["mask"] for row in out["pareto_front"]] == expected
    assert out["exact_front"] and "63 masks" in out["exact_front"]
    assert out["exhaustive"]["masks"] == 63 and out["exhaustive"]["added"] == len(expected)
    trials = exhaustive_trials(mro, url, tiny.name)
    assert sorted(t.user_attrs["mask"] for t in trials) == sorted(expected)
    for t in trials:  # what a sampled trial carries, and the mark
        assert t.user_attrs["mask"] == mro.mask(t) and t.system_attrs["mro:mask"] == mro.mask(t)
        assert {"active_paths", "metrics", "accuracy", "mflops", "params", "worker"} <= set(t.user_attrs)
        assert t.values == [t.user_attrs["accuracy"], t.user_attrs["mflops"]]
        assert t.user_attrs[EQUAL_ATTR] >= 1
    study = mro.open_study(url, tiny.name)
    record = study._storage.get_study_system_attrs(study._study_id)[EXHAUSTIVE_KEY]
    assert record["front"] == expected and record["masks"] == 63
    # pareto says so
    shown = cli(["pareto", "--study", str(file), "--storage", url], tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert f"Pareto front ({len(expected)}, exact)" in shown.stdout and "front: exact: every one of the 63 masks" in shown.stdout
    reported = cli(["report", "--study", str(file), "--storage", url, "-o", str(tmp_path / "report.html")], tmp_path)
    assert reported.returncode == 0, reported.stderr
    assert f"Pareto front of {len(expected)} (exact)" in reported.stdout
    assert "every one of the 63 masks was scored" in (tmp_path / "report.html").read_text()
    # a second run adds nothing
    again = cli(["run", "--study", str(file), "--storage", url, "--exhaustive", "--no-report", "--json", "-q"], tmp_path)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["exhaustive"]["added"] == 0
    assert len(exhaustive_trials(mro, url, tiny.name)) == len(expected)
    masks = [mro.mask(t) for t in mro.complete(mro.open_study(url, tiny.name))]
    assert len(masks) == len(set(masks))


def test_a_sampled_study_gets_only_the_missing_front_masks(tiny, mro, cli, tmp_path: Path) -> None:
    run_dir = tiny.seed_run_dir(tmp_path / "run")
    file = tiny.variant(tmp_path, run_dir=run_dir, trials=12)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    sampled = cli(["run", "--study", str(file), "--storage", url, "--no-report", "-q"], tmp_path)
    assert sampled.returncode == 0, sampled.stderr
    before = {mro.mask(t) for t in mro.complete(mro.open_study(url, tiny.name))}
    assert len(before) == 12
    shown = cli(["pareto", "--study", str(file), "--storage", url, "--json"], tmp_path)
    assert json.loads(shown.stdout)["exact_front"] is None  # a sampled front is not called exact
    result = cli(["run", "--study", str(file), "--storage", url, "--exhaustive", "--no-report", "--json", "-q"], tmp_path)
    assert result.returncode == 0, result.stderr
    expected = brute_force_front(file)
    added = {t.user_attrs["mask"] for t in exhaustive_trials(mro, url, tiny.name)}
    assert added == set(expected) - before  # only what the study missed
    assert json.loads(result.stdout)["exhaustive"]["added"] == len(added)
    masks = [mro.mask(t) for t in mro.complete(mro.open_study(url, tiny.name))]
    assert len(masks) == len(set(masks)) == len(before | added)
    # the study's front is the exact front (sampled trials on it count as its members)
    assert {row["mask"] for row in json.loads(result.stdout)["pareto_front"]} >= set(expected)
    assert json.loads(result.stdout)["exact_front"]


def test_a_space_too_long_is_refused_before_the_study_exists(tiny, cli, tmp_path: Path) -> None:
    run_dir = tiny.seed_run_dir(tmp_path / "run")
    file = tiny.variant(tmp_path, run_dir=run_dir)
    db = tmp_path / "study.db"
    result = cli(["run", "--study", str(file), "--storage", f"sqlite:///{db}", "--exhaustive", "--max-minutes", "0.000001", "-q"], tmp_path)
    one_error(result, "scoring all 63 masks of study tiny would take about", " ms (", "masks/s measured on cpu",
              "over --max-minutes 1e-06", "give --max-minutes", "without --exhaustive")
    assert not db.exists()  # nothing created
    # no checkpoint yet: refused before a supernet is trained (estimated on it as initialized)
    fresh = tiny.variant(tmp_path, "fresh.toml", run_dir=tmp_path / "fresh")
    result = cli(["run", "--study", str(fresh), "--storage", f"sqlite:///{db}", "--exhaustive", "--max-minutes", "0.000001", "-q"], tmp_path)
    one_error(result, "scoring all 63 masks of study tiny would take about", "give --max-minutes")
    assert not (tmp_path / "fresh").exists() and not db.exists()
    one_error(cli(["run", "--study", str(file), "--max-minutes", "5"], tmp_path), "--max-minutes applies to --exhaustive only")
    one_error(cli(["run", "--study", str(file), "--exhaustive", "--workers", "2"], tmp_path), "--exhaustive scores every mask in this one process")
    one_error(cli(["run", "--study", str(file), "--exhaustive", "--max-minutes", "0"], tmp_path), "--max-minutes", "above 0")


def test_planted_k4_front_equals_brute_force(mro, cli, tmp_path: Path) -> None:
    file = tmp_path / "planted4.toml"
    file.write_text(K4_STUDY.format(run_dir=(tmp_path / "run").as_posix()), encoding="utf-8")
    url = f"sqlite:///{tmp_path / 'study.db'}"
    trained = cli(["train", "--study", str(file), "-q"], tmp_path)
    assert trained.returncode == 0, trained.stderr
    torch.set_num_threads(1)
    result = cli(["run", "--study", str(file), "--storage", url, "--exhaustive", "--no-report", "--json", "-q"], tmp_path)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    expected = brute_force_front(file)
    assert out["exhaustive"]["masks"] == 4095
    assert [row["mask"] for row in out["pareto_front"]] == expected
    assert sorted(t.user_attrs["mask"] for t in exhaustive_trials(mro, url, "planted4")) == sorted(expected)


# --- other objectives and limits ------------------------------------------------------------------


@dataclass(frozen=True)
class Priced:
    """One mask as the study records it: ``values`` in the objectives' order (the metric from
    ``score_masks`` on a float64 cache, each cost from ``costs_of`` mask by mask, with the
    study's tables), every cost it can price, and whether it is within every limit."""

    mask: str
    values: tuple[float, ...]
    costs: dict[str, float]
    feasible: bool


def priced_masks(file: Path, objectives: Objectives, tables: dict[str, Any]) -> list[Priced]:
    """Every mask of the tiny study, in counting order (lowest mask string first)."""
    from search_service.evaluator import Evaluator
    from search_service.study_file import load_study

    evaluator = Evaluator(load_study(str(file)))
    cache = evaluator.cache("valid")
    cache64 = PathCache(pooled=cache.pooled.double(), labels=cache.labels, task=cache.task, projected=cache.projected.double())
    masks = all_masks(evaluator.model.num_paths)
    values = score_masks(evaluator.model, cache64, masks, objectives.metric).tolist()
    out = []
    for m, v in zip(masks, values):
        bits = m.long().tolist()
        costs = costs_of({"mflops": evaluator.flops.mflops(bits), "params": evaluator.model.num_parameters(bits)}, bits, tables)
        scored = {**costs, "metrics": {objectives.metric: v}}
        out.append(Priced(format_mask(m), tuple(objectives.values(scored)), costs, not objectives.violations(scored) and not math.isnan(v)))
    return out


def brute_force_front_of(priced: list[Priced]) -> list[str]:
    """The front by definition (the metric up, the costs down) of the feasible masks; of equal
    points the lowest mask string. Sorted mask strings."""
    points: dict[tuple[float, ...], str] = {}
    for p in priced:
        if p.feasible:
            points.setdefault(p.values, p.mask)  # counting order: the lowest mask first

    def at_least(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
        return a[0] >= b[0] and all(x <= y for x, y in zip(a[1:], b[1:]))

    return sorted(m for p, m in points.items() if not any(q != p and at_least(q, p) for q in points))


def run_exhaustive_json(cli, file: Path, url: str, cwd: Path) -> dict[str, Any]:
    result = cli(["run", "--study", str(file), "--storage", url, "--exhaustive", "--no-report", "--json", "-q"], cwd)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def check_front_trials(mro, url: str, name: str, objectives: Objectives, expected: list[str], tables: dict[str, Any]) -> None:
    """The recorded trials: the expected masks, values in the objectives' order, the constraints
    of a study with limits (all feasible), the user attributes of a sampled trial."""
    trials = exhaustive_trials(mro, url, name)
    assert sorted(t.user_attrs["mask"] for t in trials) == expected
    for t in trials:
        assert t.values == [t.user_attrs[objectives.metric], *(float(t.user_attrs[c]) for c in objectives.costs)]
        assert {"active_paths", "metrics", "mflops", "params", "worker", *tables} <= set(t.user_attrs)
        if objectives.limits:
            assert len(t.system_attrs["constraints"]) == len(objectives.limits)
            assert all(c <= 0 for c in t.system_attrs["constraints"])
        else:
            assert "constraints" not in t.system_attrs


def test_params_objective_with_an_mflops_limit(tiny, mro, cli, tmp_path: Path) -> None:
    """``objectives = ["accuracy", "params"]`` and ``max_mflops`` (a cost only a limit uses): the
    recorded front is the brute-force front of the masks within the limit, every one feasible."""
    run_dir = tiny.seed_run_dir(tmp_path / "run")
    free = priced_masks(tiny.variant(tmp_path, "free.toml", run_dir=run_dir), Objectives("accuracy", ("params",)), {})
    front_free = brute_force_front_of(free)
    mflops = sorted({p.costs["mflops"] for p in free if p.mask in front_free})
    limit = (mflops[-1] + mflops[-2]) / 2  # leaves the front's largest member out
    file = tiny.variant(tmp_path, run_dir=run_dir, objectives=["accuracy", "params"], max_mflops=limit)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    out = run_exhaustive_json(cli, file, url, tmp_path)
    objectives = Objectives("accuracy", ("params",), {"mflops": limit})
    priced = priced_masks(file, objectives, {})
    expected = brute_force_front_of(priced)
    assert expected != front_free
    assert sorted(row["mask"] for row in out["pareto_front"]) == expected
    assert out["exact_front"]
    check_front_trials(mro, url, tiny.name, objectives, expected, {})
    for t in exhaustive_trials(mro, url, tiny.name):
        assert t.user_attrs["mflops"] <= limit
    study = mro.open_study(url, tiny.name)
    record = study._storage.get_study_system_attrs(study._study_id)[EXHAUSTIVE_KEY]
    assert record["objectives"] == ["accuracy", "params"] and record["limits"] == {"mflops": limit}
    assert record["feasible"] == sum(p.feasible for p in priced) < 63
    # the scorer left the masks over the limit out (none was dropped when recording)
    assert sorted(record["front"]) == expected and record["not_recorded"] == []


@pytest.mark.slow
def test_three_objectives_and_a_latency_limit_under_the_study_tables(tiny, mro, cli, tmp_path: Path) -> None:
    """``["accuracy", "latency_ms", "params"]`` with ``max_params``: the exact front over three
    objectives, latency priced by the table the study measured when it was created; then a study
    with ``max_latency_ms`` (a limit priced by its own table) gets only masks within it."""
    run_dir = tiny.seed_run_dir(tmp_path / "run")
    free = priced_masks(tiny.variant(tmp_path, "free.toml", run_dir=run_dir), Objectives("accuracy", ("params",)), {})
    params = sorted({p.costs["params"] for p in free})
    max_params = int(params[len(params) // 2])
    file = tiny.variant(tmp_path, "three.toml", run_dir=run_dir, objectives=["accuracy", "latency_ms", "params"], max_params=max_params)
    url = f"sqlite:///{tmp_path / 'three.db'}"
    out = run_exhaustive_json(cli, file, url, tmp_path)
    study = mro.open_study(url, tiny.name)
    tables = study_tables(study._storage.get_study_system_attrs(study._study_id))
    assert set(tables) == {"latency_ms"}
    objectives = Objectives("accuracy", ("latency_ms", "params"), {"params": float(max_params)})
    priced = priced_masks(file, objectives, tables)
    expected = brute_force_front_of(priced)
    assert len(expected) >= 2 and 0 < sum(p.feasible for p in priced) < 63
    assert sorted(row["mask"] for row in out["pareto_front"]) == expected
    check_front_trials(mro, url, tiny.name, objectives, expected, tables)
    record = study._storage.get_study_system_attrs(study._study_id)[EXHAUSTIVE_KEY]
    assert record["feasible"] == sum(p.feasible for p in priced) and record["not_recorded"] == []
    # a latency limit between the two middle latencies of all masks under that table (the next
    # study measures its own table: about half of the masks are within it)
    latency = sorted(p.costs["latency_ms"] for p in priced)
    max_latency = (latency[31] + latency[32]) / 2
    file = tiny.variant(tmp_path, "latency.toml", run_dir=run_dir, objectives=["accuracy", "mflops"], max_latency_ms=max_latency)
    url = f"sqlite:///{tmp_path / 'latency.db'}"
    out = run_exhaustive_json(cli, file, url, tmp_path)
    study = mro.open_study(url, tiny.name)
    tables = study_tables(study._storage.get_study_system_attrs(study._study_id))
    objectives = Objectives("accuracy", ("mflops",), {"latency_ms": max_latency})
    priced = priced_masks(file, objectives, tables)
    expected = brute_force_front_of(priced)
    assert 0 < sum(p.feasible for p in priced) < 63
    assert sorted(row["mask"] for row in out["pareto_front"]) == expected
    check_front_trials(mro, url, tiny.name, objectives, expected, tables)
    for t in exhaustive_trials(mro, url, tiny.name):
        assert t.user_attrs["latency_ms"] <= max_latency
    record = study._storage.get_study_system_attrs(study._study_id)[EXHAUSTIVE_KEY]
    assert record["feasible"] == sum(p.feasible for p in priced) and record["not_recorded"] == []
