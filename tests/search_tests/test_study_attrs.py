"""What a study records: objectives and their names for optuna-dashboard, per-trial user
attributes, the study's system attributes (checkpoint SHA-256, configuration, budget, paths,
prior), and the FLOPs constraint that Optuna's Pareto front respects."""

from __future__ import annotations

import hashlib
import json
import math
import os
import socket
from types import SimpleNamespace

import optuna
import pytest
import torch
from optuna.study import StudyDirection

from search_service.cli import main
from search_service.evaluator import Evaluator
from search_service.keys import PRIOR_SOURCE_KEY
from search_service.proposal_prior import scaled
from search_service.sampler import BUDGET_KEY, PATHS_KEY, PRIOR_KEY, RANK_LOSS_KEY
from search_service.search import (
    ARTIFACTS_KEY,
    CHECKPOINT_KEY,
    CONFIG_KEY,
    FLOPS_BUDGET_KEY,
    FORMAT_KEY,
    METRIC_KEY,
    SCORING_KEY,
    STUDY_FORMAT,
)
from search_service.study_file import load_study
from supernet.metrics import metric_names

BUDGET = 16


@pytest.fixture(scope="module")
def searched(tiny, mro, tmp_path_factory):
    """One search of 16 trials (``mro-search run``, in this process) with a FLOPs budget that
    the dearer masks exceed."""
    directory = tmp_path_factory.mktemp("attrs")
    evaluator = Evaluator(load_study(str(tiny.file)))
    flops_budget = round(evaluator.flops.mflops((1, 1, 1, 0, 0, 0)), 6)  # three paths' worth
    file = tiny.variant(directory, "flops.toml", flops_budget=flops_budget)
    url = f"sqlite:///{directory / 'study.db'}"
    artifacts = directory / "artifacts"
    assert main(["run", "--study", str(file), "--storage", url, "--artifacts", str(artifacts), "--trials", str(BUDGET), "--no-report", "-q"]) == 0
    study = mro.open_study(url)
    return SimpleNamespace(file=file, url=url, study=study, evaluator=evaluator, flops_budget=flops_budget, directory=directory,
                           attrs=study._storage.get_study_system_attrs(study._study_id))


def test_objectives_and_their_names(searched):
    assert searched.study.directions == [StudyDirection.MAXIMIZE, StudyDirection.MINIMIZE]
    assert searched.study.metric_names == ["accuracy", "mflops"]


def test_every_trial_records_its_architecture_and_metrics(searched, mro):
    evaluator = searched.evaluator
    done = mro.complete(searched.study)
    assert len(done) == BUDGET
    task_metrics = set(metric_names("classification"))
    for t in done:
        attrs = t.user_attrs
        mask = mro.mask(t)
        assert attrs["mask"] == mask
        assert attrs["active_paths"] == [p for p, bit in zip(mro.paths, mask) if bit == "1"]
        assert set(attrs["metrics"]) == task_metrics
        for name in task_metrics:
            assert attrs[name] == attrs["metrics"][name]
        assert t.values[0] == pytest.approx(attrs["metrics"]["accuracy"])
        bits = tuple(int(b) for b in mask)
        assert attrs["mflops"] == pytest.approx(evaluator.flops.mflops(bits)) == t.values[1]
        assert attrs["params"] == evaluator.model.num_parameters(bits) and isinstance(attrs["params"], int)
        assert attrs["worker"] == f"{socket.gethostname()}:{os.getpid()}"  # run --workers 1: this process


def test_study_records_checkpoint_configuration_budget_paths_and_prior(searched, tiny):
    attrs, study_file = searched.attrs, load_study(str(searched.file))
    record = attrs[CHECKPOINT_KEY]
    assert record["sha256"] == hashlib.sha256(tiny.checkpoint.read_bytes()).hexdigest()
    assert record["identity"] == searched.evaluator.checkpoint.identity and tiny.checkpoint.name == record["file"]
    stored = searched.directory / "artifacts" / record["artifact_id"]  # the study's artifact store (--artifacts)
    assert attrs[ARTIFACTS_KEY] == str(stored.parent.resolve())
    assert stored.read_bytes() == tiny.checkpoint.read_bytes()
    assert json.loads(attrs[f"artifacts:{record['artifact_id']}"])["filename"] == tiny.checkpoint.name  # Optuna's record
    assert attrs[SCORING_KEY] == study_file.scoring_sha256
    assert attrs[FORMAT_KEY] == STUDY_FORMAT
    assert json.loads(attrs[CONFIG_KEY]) == json.loads(json.dumps(study_file.as_dict()))
    assert attrs[BUDGET_KEY] == BUDGET
    assert attrs[PATHS_KEY] == searched.evaluator.path_names == [
        "text->audio", "text->vision", "audio->text", "audio->vision", "vision->text", "vision->audio"
    ]
    # the default proposal prior: each path's single-path score with the supernet, scaled into [0.1, 0.9]
    single = [float(x) for x in searched.evaluator.score(torch.eye(6))]
    assert attrs[PRIOR_SOURCE_KEY] == "single_path"
    assert attrs[PRIOR_KEY] == pytest.approx(scaled(single))
    assert all(0.1 - 1e-9 <= q <= 0.9 + 1e-9 for q in attrs[PRIOR_KEY])
    assert attrs[METRIC_KEY] == "accuracy"
    assert attrs[RANK_LOSS_KEY] == study_file.train.rank_loss
    assert attrs[FLOPS_BUDGET_KEY] == pytest.approx(searched.flops_budget)


def test_flops_budget_is_a_constraint_of_the_pareto_front(searched, mro, capsys):
    """``flops_budget`` (``max_mflops``'s old name) still works: each trial's constraint is recorded."""
    done = mro.complete(searched.study)
    feasible = []
    for t in done:
        constraints = t.system_attrs["constraints"]
        assert isinstance(constraints, list) and len(constraints) == 1
        assert constraints[0] == pytest.approx(t.user_attrs["mflops"] - searched.flops_budget)
        if constraints[0] <= 0:
            feasible.append(t)
    # MROSampler does not propose a mask over the limit (search_service.objectives.MaskFilter);
    # trials over it, from Optuna's own samplers: tests/search_tests/test_objectives.py
    assert len(feasible) == len(done)

    def dominates(a, b) -> bool:
        return a.values[0] >= b.values[0] and a.values[1] <= b.values[1] and tuple(a.values) != tuple(b.values)

    expected = {t.number for t in feasible if not any(dominates(o, t) for o in feasible)}
    best = {t.number for t in searched.study.best_trials}
    assert best == expected
    # the unconstrained front would differ if an infeasible trial were on it
    unconstrained = {t.number for t in done if not any(dominates(o, t) for o in done)}
    assert best <= {t.number for t in feasible}
    if unconstrained - best:
        assert all(t.system_attrs["constraints"][0] > 0 for t in done if t.number in unconstrained - best)

    capsys.readouterr()
    assert main(["pareto", "--study", str(searched.file), "--storage", searched.url, "--json"]) == 0
    front = json.loads(capsys.readouterr().out)["pareto_front"]
    assert {row["trial"] for row in front} == best
    assert all(row["mflops"] <= searched.flops_budget + 1e-9 for row in front)
    assert all(not math.isnan(row["values"][0]) for row in front)


def test_no_flops_budget_no_constraints(tiny, mro, tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    assert main(["run", "--study", str(tiny.file), "--storage", url, "--trials", "3", "--no-report", "-q"]) == 0
    study = mro.open_study(url)
    assert all("constraints" not in t.system_attrs for t in study.get_trials(deepcopy=False))
    assert not optuna.study._constrained_optimization._is_constrained_optimization(study.get_trials(deepcopy=False))
