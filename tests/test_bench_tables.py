"""Pieces of ``benchmarks/bench_tables.py`` that decide what Table 5's ablation rows mean: each arm
changes only what it ablates, and every arm's prior follows the seed (issue 17, item 3)."""

from __future__ import annotations

import sys
from argparse import Namespace
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_tables  # noqa: E402

from supernet.relation_graph import RelationGraphPrior  # noqa: E402
from supernet.train import train_supernet  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")

ARGS = Namespace(quick=False, epochs=None, trials=None, overrides={})


def _study(training: str, seed: int = 0):
    return bench_tables.prepare_study("planted", seed, None, ARGS, training)


def test_the_lambda0_arm_differs_from_the_full_arm_only_in_lambda() -> None:
    full, no_rank = _study("full"), _study("no_rank")
    assert asdict(full.data) == asdict(no_rank.data) and asdict(full.model) == asdict(no_rank.model)
    a, b = asdict(full.train), asdict(no_rank.train)
    assert {key for key in a if a[key] != b[key]} <= {"prior_lr", "rank_weight"}
    assert b["prior_lr"] == 0.0 and b["rank_weight"] == 0.0 and a["prior_lr"] > 0.0
    # the searches: the samplers' options and the parts they build
    P = 6
    options_full = bench_tables.sampler_options("full", full, P)
    options_no_rank = bench_tables.sampler_options("no_rank", no_rank, P)
    assert {**options_full, "refine_steps": 0} == options_no_rank
    s_full = bench_tables.make_sampler("full", full, P, seed=3)
    s_no_rank = bench_tables.make_sampler("no_rank", no_rank, P, seed=3)
    assert s_no_rank._shares == s_full._shares  # local moves and exploration alike
    assert s_no_rank._refinement.steps == 0 < s_full._refinement.steps
    assert (s_no_rank._refinement.trials, s_no_rank._refinement.anchor) == (s_full._refinement.trials, s_full._refinement.anchor)
    for name in ("_prior", "_n_startup_trials", "_rank_loss", "_budget", "_seed"):
        assert getattr(s_no_rank, name) == getattr(s_full, name), name


def test_the_lambda0_arms_prior_follows_the_seed() -> None:
    """λ = 0 freezes the prior at its initialisation, which must then differ between seeds."""
    priors = []
    for seed in (0, 1):
        study = _study("no_rank", seed)
        study.data.samples = [64, 32, 32]  # small: the training path is the arm's, its length is not
        study.train.epochs, study.train.warmup_epochs, study.train.batch_size = 1, 1, 64
        data = bench_tables.study_data(study)
        prior = train_supernet(data, study.model, study.train, progress=False).prior
        init = RelationGraphPrior(prior.k, seed=seed)
        for name, value in init.named_parameters():  # frozen: the seed's initial weights exactly
            assert torch.equal(dict(prior.named_parameters())[name], value), name
        priors.append(prior)
    differ = [name for name, value in priors[0].named_parameters()
              if not torch.equal(value, dict(priors[1].named_parameters())[name])]
    assert "node_embeddings" in differ
