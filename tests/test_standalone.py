"""Stand-alone training of one fixed subnet (``train_subnet``): the baseline of bench_fidelity."""

from __future__ import annotations

import math

import pytest
import torch

from supernet.config import DataConfig, ModelConfig, TrainConfig
from supernet.data import load_data
from supernet.data.dataset import MultimodalData
from supernet.model import Supernet
from supernet.train import model_spec, train_subnet

pytestmark = pytest.mark.usefixtures("single_thread")

MASK = (0, 0, 1, 0, 0, 1)  # audio->text, vision->audio


@pytest.fixture(scope="module")
def data() -> MultimodalData:
    return load_data(DataConfig(dims=[17, 9, 8], length=4, samples=[48, 16, 16], seed=0))


def _cfgs(**train):
    model = ModelConfig(width=16, heads=2, ffn_mult=1, dropout=0.1)
    settings = {"epochs": 2, "warmup_epochs": 1, "batch_size": 16, "lr": 1e-2, "seed": 3}
    settings.update(train)
    return model, TrainConfig(**settings)


def test_trains_only_the_masks_paths_and_is_seeded(data: MultimodalData) -> None:
    model_cfg, train_cfg = _cfgs()
    result = train_subnet(data, model_cfg, train_cfg, MASK)
    assert result.mask == MASK
    assert [r["epoch"] for r in result.history] == [1, 2]
    for record in result.history:
        assert math.isfinite(record["train_loss"]) and math.isfinite(record["valid_loss"])
    assert not result.model.training
    # same class, same initialisation as the supernet with this seed
    torch.manual_seed(train_cfg.seed)
    initial = Supernet(model_spec(data), model_cfg)
    for p, bit in enumerate(MASK):
        moved = any(
            not torch.equal(a, b)
            for a, b in zip(result.model.paths[p].parameters(), initial.paths[p].parameters())
        )
        assert moved == bool(bit), f"path {p}: trained {moved}, active {bit}"
    # the vision embedding is used by vision->audio; every modality is touched here
    assert not torch.equal(result.model.head.weight, initial.head.weight)
    again = train_subnet(data, model_cfg, train_cfg, "".join(map(str, MASK)))
    for a, b in zip(result.model.state_dict().values(), again.model.state_dict().values()):
        assert torch.equal(a, b)


def test_rejects_a_mask_of_the_wrong_length(data: MultimodalData) -> None:
    model_cfg, train_cfg = _cfgs(epochs=1)
    with pytest.raises(ValueError, match="6 paths"):
        train_subnet(data, model_cfg, train_cfg, (1, 0, 1))
