"""Pieces of ``benchmarks/bench_fidelity.py`` that decide what its figures mean: the noise-ceiling
pair count, the [train] overrides and the stand-alone cache key."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_fidelity  # noqa: E402


def test_reliable_pairs_judge_the_supernet_only_where_stand_alone_agrees_with_itself():
    first = [0.90, 0.95, 0.95, 0.99]
    second = [0.91, 0.96, 0.94, 0.98]
    # pairs ordered alike by both runs (strictly): (0,1) (0,2) (0,3) (1,3) (2,3); (1,2) is a tie/flip
    supernet = [0.80, 0.97, 0.85, 0.90]  # agrees on (0,1) (0,2) (0,3) (2,3); wrong on (1,3)
    assert bench_fidelity.reliable_pairs(supernet, first, second) == (5, 6, pytest.approx(4 / 5))
    tie = [0.80, 0.90, 0.85, 0.90]  # (1,3) now a supernet tie: half a pair
    assert bench_fidelity.reliable_pairs(tie, first, second)[2] == pytest.approx(4.5 / 5)
    reliable, pairs, share = bench_fidelity.reliable_pairs([1, 2], [0.5, 0.5], [0.4, 0.6])
    assert (reliable, pairs) == (0, 1) and share != share  # nothing reliable: NaN


def test_train_overrides_are_checked_like_the_study_file():
    assert bench_fidelity.parse_overrides(["per_sample_masks=true", "distill = 0.5"]) == {
        "per_sample_masks": True,
        "distill": 0.5,
    }
    for bad, needle in (
        (["distill=2"], "must be at most 1.0"),
        (["nope=1"], "unknown key 'nope'"),
        (["distill"], "is not KEY=VALUE"),
        (["rank_loss=l1"], "is not a TOML value"),
    ):
        with pytest.raises(SystemExit, match=needle):
            bench_fidelity.parse_overrides(bad)


def test_stand_alone_results_are_shared_by_supernet_variants_but_not_by_budgets():
    base = bench_fidelity.prepare_study("demo", 0, None, False)
    variant = bench_fidelity.prepare_study("demo", 0, None, False, {"per_sample_masks": True, "distill": 0.5})
    longer = bench_fidelity.prepare_study("demo", 0, 3, False)
    assert variant.sha256 != base.sha256  # another supernet checkpoint
    assert bench_fidelity.standalone_log(variant) == bench_fidelity.standalone_log(base)
    assert bench_fidelity.standalone_log(longer) != bench_fidelity.standalone_log(base)
    other_seed = bench_fidelity.reseeded(base, 1000)
    assert bench_fidelity.standalone_log(other_seed) != bench_fidelity.standalone_log(base)
    assert base.train.seed == 0  # reseeding copies


def test_standalone_results_are_imported_only_when_they_reproduce_here(tmp_path, monkeypatch):
    import json

    monkeypatch.setattr(bench_fidelity, "CACHE_DIR", tmp_path / "cache")
    study = bench_fidelity.prepare_study("demo", 0, 1, True)
    trainings = {0: study}
    metric = "accuracy"
    mask = (1, 0, 0, 0, 0, 0)
    real = bench_fidelity.job_subnet(study, mask, metric)  # what training this mask gives here

    def report(score: float, **model) -> Path:
        config = study.supernet_config() | {"train": {"epochs": 1, "batch_size": study.train.batch_size,
                                                      "lr": study.train.lr, "weight_decay": study.train.weight_decay}}
        config["model"] = config["model"] | model
        config["data"] = {k: v for k, v in config["data"].items() if k != "classes"}  # an older report's fields
        entry = {"mask": "100000", "paths": 1, "standalone": score, "standalone_loss": real["loss"]}
        path = tmp_path / f"report{len(list(tmp_path.glob('report*')))}.json"
        path.write_text(json.dumps({"study_config": config, "per_seed": [{"seed": 0, "per_mask": [entry]}]}))
        return path

    said: list[str] = []
    with pytest.raises(SystemExit, match="do not transfer"):
        bench_fidelity.import_standalone(report(real["score"] + 0.01), trainings, metric, said.append)
    assert not bench_fidelity.standalone_log(study).exists()  # nothing copied
    with pytest.raises(SystemExit, match="other \\[data\\], \\[model\\]"):
        bench_fidelity.import_standalone(report(real["score"], width=study.model.width * 2), trainings, metric, said.append)
    assert bench_fidelity.import_standalone(report(real["score"]), trainings, metric, said.append) == 1
    cached = bench_fidelity.load_standalone(bench_fidelity.standalone_log(study))
    assert cached["100000"]["score"] == real["score"] and "imported_from" in cached["100000"]
    assert bench_fidelity.import_standalone(report(real["score"]), trainings, metric, said.append) == 0  # once
