"""Joint optimization of the prior and the supernet (``[train] joint_rank``, Table 1 of the paper)
and the paper's GAT (``[train] prior_gnn = "gat"``): R's gradient reaches both, training runs
end to end, and the checkpoint rebuilds the prior it was trained with."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from search_service.study_file import parse_study
from supernet.checkpoint import load_checkpoint, save_checkpoint
from supernet.config import DataConfig, ModelConfig, TrainConfig
from supernet.data import load_data
from supernet.errors import ConfigError
from supernet.model import Supernet
from supernet.relation_graph import RelationGraphPrior
from supernet.scoring import batches
from supernet.train import _joint_step, model_spec, train_supernet

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def data():
    return load_data(DataConfig(dims=[17, 9, 8], length=4, samples=[64, 32, 32], seed=0))


def _cfgs(**train):
    model = ModelConfig(width=16, heads=2, ffn_mult=1, dropout=0.0)
    settings = {"epochs": 2, "warmup_epochs": 1, "batch_size": 16, "masks_per_step": 3, "rank_every": 1,
                "rank_masks": 6, "seed": 0, "device": "cpu", "joint_rank": True}
    return model, TrainConfig(**(settings | train))


def _grads(data, rank_weight: float):
    model_cfg, train_cfg = _cfgs(rank_weight=rank_weight)
    torch.manual_seed(0)
    model = Supernet(model_spec(data), model_cfg)
    prior = RelationGraphPrior(model.k, seed=0)
    features, lengths, labels = next(batches(data.splits["train"], data.modality_names, 16))
    masks = torch.tensor([[1, 1, 0, 0, 1, 0], [0, 1, 1, 1, 1, 1], [1, 0, 0, 0, 0, 0]], dtype=torch.float32)
    loss, rank = _joint_step(model, prior, features, lengths, labels, masks, data.task, train_cfg)
    return ({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None},
            {n: (torch.zeros_like(p) if p.grad is None else p.grad.clone()) for n, p in prior.named_parameters()},
            float(loss), rank)


def test_r_reaches_the_supernet_and_the_prior(data) -> None:
    model0, prior0, loss0, rank0 = _grads(data, 0.0)
    model1, prior1, loss1, rank1 = _grads(data, 1.0)
    assert loss0 == pytest.approx(loss1) and rank0 == pytest.approx(rank1) and rank1 > 0
    # without R's weight the prior learns nothing; with it, every part of the prior does
    assert all(float(g.abs().sum()) == 0.0 for g in prior0.values())
    # (a fresh prior has measured no statistics yet: the edge features are 0, so the weights that
    # multiply them, alpha/beta/gamma and the GAT's edge projection, get no gradient yet)
    on_features = ("alpha", "beta", "gamma", "gat.lin_edge.weight")
    assert all(float(g.abs().sum()) > 0.0 for n, g in prior1.items() if n not in on_features), prior1
    # and the supernet's gradient changes by R's part
    changed = [n for n in model1 if not torch.allclose(model1[n], model0[n])]
    assert changed, "R's gradient did not reach the supernet"


@pytest.mark.parametrize("gnn", ["gatv2", "gat"])
def test_joint_training_runs_and_the_checkpoint_rebuilds_its_prior(data, tmp_path: Path, gnn: str) -> None:
    model_cfg, train_cfg = _cfgs(prior_gnn=gnn)
    result = train_supernet(data, model_cfg, train_cfg, progress=False)
    assert all(r["rank_loss"] == r["rank_loss"] for r in result.history)  # finite: R logged every epoch
    assert result.prior.gnn == gnn
    config = {"data": asdict(data.config) if hasattr(data, "config") else {}, "model": asdict(model_cfg),
              "train": asdict(train_cfg)}
    path = save_checkpoint(tmp_path / "supernet.pt", result.model, result.prior, config)
    loaded = load_checkpoint(path)
    assert loaded.prior.gnn == gnn
    torch.testing.assert_close(loaded.prior.path_probs(), result.prior.path_probs())


def test_joint_training_moves_the_prior_without_the_cached_refit(data) -> None:
    """With joint_rank the prior learns only from R of the trained subnets: with rank_weight 0 it
    keeps its initial weights (the statistics still move), with rank_weight > 0 it changes."""
    model_cfg, still = _cfgs(rank_weight=0.0)
    frozen = train_supernet(data, model_cfg, still, progress=False).prior
    fresh = RelationGraphPrior(frozen.k, seed=0)
    for (name, a), b in zip(frozen.named_parameters(), fresh.parameters()):
        torch.testing.assert_close(a, b, msg=name)
    model_cfg, moving = _cfgs(rank_weight=1.0)
    learned = train_supernet(data, model_cfg, moving, progress=False).prior
    assert any(not torch.allclose(a, b) for a, b in zip(learned.parameters(), fresh.parameters()))


@pytest.mark.parametrize(("train", "needle"), [
    ({"joint_rank": True, "per_sample_masks": True}, "set per_sample_masks = false"),
    ({"joint_rank": True, "masks_per_step": 1}, "masks_per_step must be at least 2"),
    ({"prior_gnn": "gcn"}, "prior_gnn"),
])
def test_study_files_refuse_what_joint_rank_cannot_do(tmp_path: Path, train: dict, needle: str) -> None:
    raw = {"name": "joint", "data": {"source": "synthetic"}, "train": train}
    with pytest.raises(ConfigError, match=needle):
        parse_study(raw, tmp_path / "joint.toml")
