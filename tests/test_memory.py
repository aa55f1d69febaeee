"""Memory estimates made before anything is allocated, and what the machine has."""

from __future__ import annotations

import pytest

from supernet.config import ModelConfig, TrainConfig
from supernet.data.dataset import ModalitySpec
from supernet.errors import ResourceError
from supernet.memory import (
    available_bytes,
    gib,
    parameter_count,
    require_memory,
    split_bytes,
    total_bytes,
    training_bytes,
)
from supernet.model import Supernet, SupernetSpec

MODALITIES = (ModalitySpec("text", 7, 5), ModalitySpec("audio", 9), ModalitySpec("flag", 1), ModalitySpec("vision", 20))


@pytest.mark.parametrize(
    ("k", "output", "cfg"),
    [
        (2, 1, ModelConfig(width=8, heads=2, ffn_mult=1)),
        (3, 7, ModelConfig(width=16, heads=4, layers_per_path=2, ffn_mult=3, head="mlp")),
        (4, 2, ModelConfig(width=12, heads=3, vector_tokens=3)),
    ],
)
def test_parameter_count_is_the_real_models(k: int, output: int, cfg: ModelConfig) -> None:
    modalities = MODALITIES[:k]
    model = Supernet(SupernetSpec(modalities, "classification", output), cfg)
    assert parameter_count(modalities, output, cfg) == model.num_parameters()


def test_training_bytes_hold_weights_optimizer_state_and_grow_with_the_batch() -> None:
    cfg = ModelConfig(width=16, heads=2)
    params = parameter_count(MODALITIES, 3, cfg)
    small = training_bytes(MODALITIES, 3, cfg, TrainConfig(batch_size=8))
    large = training_bytes(MODALITIES, 3, cfg, TrainConfig(batch_size=512))
    assert params * 16 < small < large
    # a batch larger than the train split is the split
    assert training_bytes(MODALITIES, 3, cfg, TrainConfig(batch_size=512), train_samples=8) == small
    # in-place distillation keeps every subnet of the step alive at once
    assert training_bytes(MODALITIES, 3, cfg, TrainConfig(batch_size=8, distill=0.5, masks_per_step=4)) > small


def test_split_bytes() -> None:
    assert split_bytes([ModalitySpec("a", 3, 4), ModalitySpec("b", 5)], 10) == 10 * ((12 + 5) * 4 + 8)


def test_the_machine_reports_its_memory() -> None:
    total, available = total_bytes(), available_bytes()
    assert total is not None and available is not None  # Linux: /proc/meminfo
    assert 0 < available <= total


def test_require_memory_refuses_in_one_line_with_the_fix() -> None:
    require_memory(100, what="x", fix="y", limit=100)
    with pytest.raises(ResourceError) as info:
        require_memory(3 * 2**40, what="this thing", fix="make it smaller", limit=2**30)
    assert str(info.value) == "this thing needs about 3.0 TiB of memory but this machine has 1.0 GiB available now; make it smaller"
    with pytest.raises(ResourceError, match="in total"):
        require_memory(2**70, what="it", fix="no", now=False)


def test_gib() -> None:
    assert gib(1536 * 2**20) == "1.5 GiB" and gib(300 * 2**20) == "300.0 MiB" and gib(2048) == "2 KiB"
    assert gib(2**40 * 10**6) == "1.0e+06 TiB"
