"""Cached scoring is exact: the same numbers as a masked forward pass, for every head type."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch

from supernet.data.dataset import ModalitySpec, Split
from supernet.errors import ConfigError
from supernet.metrics import compute_metrics, metric_names
from supernet.model import Supernet
from supernet.paths import all_masks
from supernet.scoring import build_cache, mask_metrics, predict_masks, score_masks

pytestmark = pytest.mark.usefixtures("single_thread")

MakeModel = Callable[..., Supernet]
MakeSplit = Callable[..., Split]
ModalitySets = dict[int, tuple[ModalitySpec, ...]]

HEADS = [
    ("classification", "linear"),
    ("classification", "mlp"),
    ("regression", "linear"),
    ("regression", "mlp"),
]


def _random_masks(n_paths: int, count: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    masks = torch.randint(0, 2, (count, n_paths), generator=g).float()
    masks[masks.sum(dim=1) == 0, 0] = 1.0
    masks[0] = 1.0  # the full mask
    masks[1] = 0.0
    masks[1, -1] = 1.0  # a single path
    return masks


def _direct(model: Supernet, split: Split, mask: torch.Tensor) -> torch.Tensor:
    names = [m.name for m in model.spec.modalities]
    features = [split.features[n] for n in names]
    lengths = [split.lengths.get(n) for n in names]
    with torch.no_grad():
        return model(features, mask, lengths)


@pytest.mark.parametrize(("task", "head"), HEADS)
@pytest.mark.parametrize("k", [3, 4])
@pytest.mark.parametrize("variable", [False, True])
def test_cached_scores_equal_direct_forward(
    task: str,
    head: str,
    k: int,
    variable: bool,
    make_model: MakeModel,
    make_split: MakeSplit,
    modality_sets: ModalitySets,
) -> None:
    modalities = modality_sets[k]  # sequences and a vector modality
    model = make_model(modalities, task=task, head=head, dropout=0.3, seed=k).eval()
    split = make_split(modalities, 13, task=task, variable=variable, seed=k)
    if variable:
        assert split.lengths
    cache = build_cache(model, split, batch_size=5)  # several batches, the last one short
    assert cache.pooled.shape == (13, model.num_paths, 16)
    assert (cache.projected is not None) == (head == "linear")
    masks = _random_masks(model.num_paths, 12, seed=k)
    cached = predict_masks(model, cache, masks)
    out = model.spec.output_dim
    assert cached.shape == (12, 13, out)
    for m, mask in enumerate(masks):
        torch.testing.assert_close(cached[m], _direct(model, split, mask), rtol=1e-5, atol=1e-5)
    # one mask as a 1-D tensor
    torch.testing.assert_close(predict_masks(model, cache, masks[2])[0], cached[2])


def test_every_mask_of_k3_is_exact(
    make_model: MakeModel, make_split: MakeSplit, modality_sets: ModalitySets
) -> None:
    modalities = modality_sets[3]
    model = make_model(modalities, task="classification", head="mlp").eval()
    split = make_split(modalities, 6, variable=True)
    cache = build_cache(model, split)
    masks = all_masks(model.num_paths)
    cached = predict_masks(model, cache, masks)
    for m, mask in enumerate(masks):
        torch.testing.assert_close(cached[m], _direct(model, split, mask), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("head", ["linear", "mlp"])
def test_build_cache_and_predict_keep_the_mode(
    training: bool,
    head: str,
    make_model: MakeModel,
    make_split: MakeSplit,
    modality_sets: ModalitySets,
) -> None:
    modalities = modality_sets[3]
    model = make_model(modalities, head=head, dropout=0.5)
    model.train(training)
    split = make_split(modalities, 8)
    cache = build_cache(model, split)
    assert model.training is training
    assert all(m.training is training for m in model.modules())
    predictions = predict_masks(model, cache, _random_masks(model.num_paths, 4, seed=1))
    assert model.training is training
    # the cache was built in eval mode even from a model in train mode: dropout off, exact
    model.eval()
    torch.testing.assert_close(
        predictions[0], _direct(model, split, torch.ones(model.num_paths)), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("head", ["linear", "mlp"])
def test_all_zero_mask_is_rejected(
    head: str, make_model: MakeModel, make_split: MakeSplit, modality_sets: ModalitySets
) -> None:
    modalities = modality_sets[2]
    model = make_model(modalities, head=head)
    cache = build_cache(model, make_split(modalities, 4))
    masks = torch.ones(3, model.num_paths)
    masks[1] = 0.0
    with pytest.raises((ValueError, ConfigError), match="all-zero"):
        predict_masks(model, cache, masks)
    with pytest.raises((ValueError, ConfigError), match="all-zero"):
        score_masks(model, cache, torch.zeros(1, model.num_paths), "accuracy")


@pytest.mark.parametrize(("task", "head"), HEADS)
def test_score_masks_agrees_with_compute_metrics(
    task: str, head: str, make_model: MakeModel, make_split: MakeSplit, modality_sets: ModalitySets
) -> None:
    modalities = modality_sets[3]
    model = make_model(modalities, task=task, head=head).eval()
    split = make_split(modalities, 24, task=task, variable=True, seed=5)
    cache = build_cache(model, split)
    masks = _random_masks(model.num_paths, 6, seed=7)
    predictions = predict_masks(model, cache, masks)
    for metric in metric_names(task):
        scores = score_masks(model, cache, masks, metric)
        assert scores.shape == (6,)
        for m in range(len(masks)):
            pred: Any = predictions[m].squeeze(-1) if task == "regression" else predictions[m]
            expected = compute_metrics(pred, split.labels, task)[metric]
            got = float(scores[m])
            if math.isnan(expected):
                assert math.isnan(got)
            else:
                assert got == pytest.approx(expected, abs=1e-9), metric
    # mask_metrics: all metrics of one mask, the same as compute_metrics on its predictions
    for mask in masks:
        single = predict_masks(model, cache, mask[None])[0]
        single = single.squeeze(-1) if task == "regression" else single
        expected_all = compute_metrics(single, split.labels, task)
        got_all = mask_metrics(model, cache, mask.int().tolist())
        assert got_all.keys() == expected_all.keys()
        for name, value in expected_all.items():
            assert got_all[name] == pytest.approx(value, abs=1e-9, nan_ok=True), name
