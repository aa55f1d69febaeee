"""Exhaustive scoring is exact: every mask's metric equals ``score_masks``, its FLOPs equal
``FlopTable``, and the running front equals the front of all points computed by brute force."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from supernet.data.dataset import ModalitySpec, Split
from supernet.exhaustive import ExhaustiveScorer, FrontPoint, RunningFront, exhaustive_front
from supernet.flops import flop_table
from supernet.metrics import METRICS, metric_names
from supernet.model import Supernet
from supernet.paths import all_masks
from supernet.scoring import PathCache, build_cache, predict_masks, score_masks

pytestmark = pytest.mark.usefixtures("single_thread")

MakeModel = Callable[..., Supernet]
MakeSplit = Callable[..., Split]
ModalitySets = dict[int, tuple[ModalitySpec, ...]]
CONTINUOUS = {"mae", "corr"}  # real-valued: equal to float64 rounding, not bit for bit


def _float64(cache: PathCache) -> PathCache:
    """The same cache in float64: ``score_masks`` on it is the reference the exhaustive sums
    (made in float64) must equal."""
    projected = None if cache.projected is None else cache.projected.double()
    return PathCache(pooled=cache.pooled.double(), labels=cache.labels, task=cache.task, projected=projected)


def _all_scores(scorer: ExhaustiveScorer) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(masks, values, flops) of every mask in counting order, the all-zero mask included."""
    chunks = [scorer.score_step(h0, h1) for h0, h1 in scorer.steps()]
    return (torch.cat([c.masks for c in chunks]), torch.cat([c.values for c in chunks]), torch.cat([c.flops for c in chunks]))


def _brute_front(values: list[float], flops: list[int], maximize: bool = True) -> list[tuple[int, float, int, int]]:
    """The front by definition: (lowest mask, value, flops, how many masks share the point) of
    every point no other point dominates; index i is mask i + 1."""
    points: dict[tuple[float, int], list[int]] = {}
    for i, (v, f) in enumerate(zip(values, flops)):
        if not math.isnan(v):
            points.setdefault((v, f), []).append(i + 1)

    def better(a: float, b: float) -> bool:
        return a > b if maximize else a < b

    front = []
    for (v, f), masks in points.items():
        dominated = any((better(v2, v) or v2 == v) and f2 <= f and (better(v2, v) or f2 < f) for v2, f2 in points)
        if not dominated:
            front.append((min(masks), v, f, len(masks)))
    return sorted(front, key=lambda p: p[2])


# the fixtures are factories without state: nothing to reset between examples
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    task=st.sampled_from(["classification", "regression"]),
    head=st.sampled_from(["linear", "mlp"]),
    k=st.sampled_from([3, 4]),
    seed=st.integers(0, 2**16),
    low_bits=st.integers(0, 12),
    batch_masks=st.sampled_from([16, 300, 5000]),
)
def test_scores_equal_score_masks_on_every_mask(
    task: str, head: str, k: int, seed: int, low_bits: int, batch_masks: int,
    make_model: MakeModel, make_split: MakeSplit, modality_sets: ModalitySets,
) -> None:
    modalities = modality_sets[k]
    model = make_model(modalities, task=task, head=head, output_dim=4 if task == "classification" else None, seed=seed).eval()
    split = make_split(modalities, 23, task=task, classes=4, seed=seed)
    cache = build_cache(model, split)
    table = flop_table(model)
    masks = all_masks(model.num_paths)  # (2**P - 1, P), counting order
    reference_cache = _float64(cache) if head == "linear" else cache  # mlp falls back to score_masks itself
    for metric in metric_names(task):
        scorer = ExhaustiveScorer(model, cache, metric, table, low_bits=low_bits, batch_masks=batch_masks)
        assert scorer.method == ("linear-blocks" if head == "linear" else "predict_masks")
        numbers, values, flops = _all_scores(scorer)
        assert torch.equal(numbers, torch.arange(2**model.num_paths))
        assert math.isnan(values[0])  # the all-zero mask is no architecture
        if head == "linear":
            expected = score_masks(model, reference_cache, masks, metric)
        else:  # score_masks on the same batches: float32 matmuls round differently per batch shape
            b = scorer.low_bits
            expected = torch.cat([score_masks(model, cache, masks[max(h0 << b, 1) - 1 : (h1 << b) - 1], metric) for h0, h1 in scorer.steps()])
        if metric in CONTINUOUS:
            torch.testing.assert_close(values[1:], expected, rtol=0, atol=1e-12)
        else:
            assert torch.equal(values[1:].nan_to_num(-1.0), expected.nan_to_num(-1.0)), metric
        # the float32 cache the search uses agrees too, but for a float32-rounding tie
        same = (values[1:] - score_masks(model, cache, masks, metric)).abs() <= 1e-5
        assert same.float().mean() >= 0.97, metric
    # FLOPs: the integer split equals the table on every mask
    assert torch.equal(flops[1:].double() / 1e6, table.mflops_many(masks))
    for i in (1, 5, 2**model.num_paths - 1):
        assert int(flops[i]) == table.flops(masks[i - 1].long().tolist())


def test_accuracy_breaks_ties_as_argmax(make_model: MakeModel, make_split: MakeSplit, modality_sets: ModalitySets) -> None:
    """Two classes with the same head row tie exactly on every sample: argmax picks the first,
    so a sample of the first is right and a sample of the second wrong, as in ``score_masks``."""
    modalities = modality_sets[3]
    model = make_model(modalities, output_dim=4, head="linear", seed=3).eval()
    with torch.no_grad():
        model.head.weight[2] = model.head.weight[1]
        model.head.bias[2] = model.head.bias[1]
    split = make_split(modalities, 40, classes=4, seed=3)
    cache = build_cache(model, split)
    masks = all_masks(model.num_paths)
    logits = _float64(cache).projected.sum(dim=1)  # any mask: the two tied classes stay tied
    assert torch.equal(logits[:, 1], logits[:, 2])
    _, values, _ = _all_scores(ExhaustiveScorer(model, cache, "accuracy", flop_table(model), low_bits=3))
    assert torch.equal(values[1:], score_masks(model, _float64(cache), masks, "accuracy"))
    # and the tie decides something: some masks predict class 1 (or 2) for some sample
    ids = predict_masks(model, _float64(cache), masks).argmax(dim=2)  # (M, N)
    assert bool((ids == 1).any())
    assert not bool((ids == 2).any())  # the second of the tied classes is never chosen


@settings(max_examples=60, deadline=None)
@given(
    data=st.lists(st.tuples(st.integers(0, 6), st.integers(0, 9)), min_size=1, max_size=120),
    cuts=st.lists(st.integers(1, 119), max_size=6),
    maximize=st.booleans(),
    nan_every=st.integers(0, 7),
)
def test_running_front_equals_the_front_of_all_points(data: list[tuple[int, int]], cuts: list[int], maximize: bool, nan_every: int) -> None:
    """Few distinct values and FLOPs, so ties in FLOPs, in value and in both are common."""
    values = [v / 6 for v, _ in data]
    if nan_every:
        values = [math.nan if i % (nan_every + 1) == nan_every else v for i, v in enumerate(values)]
    flops = [f * 1000 for _, f in data]
    front = RunningFront(maximize=maximize)
    bounds = [0, *sorted(c for c in cuts if c < len(data)), len(data)]
    for a, b in zip(bounds, bounds[1:]):  # batches of any size, in counting order
        front.update(
            torch.tensor(flops[a:b], dtype=torch.int64),
            torch.tensor(values[a:b], dtype=torch.float64),
            torch.arange(a + 1, b + 1),
        )
    got = [(p.mask, p.value, p.flops, p.equal) for p in front.points()]
    assert got == _brute_front(values, flops, maximize)


@pytest.mark.parametrize("k", [3, 4])
def test_exact_front_equals_brute_force(k: int, make_model: MakeModel, make_split: MakeSplit, modality_sets: ModalitySets) -> None:
    """k = 3 (63 masks) and k = 4 (4,095): the streamed front is the front of ``score_masks`` on
    every mask with ``FlopTable``'s MFLOPs (a float64 cache: the same numbers)."""
    modalities = modality_sets[k]
    model = make_model(modalities, output_dim=5, head="linear", seed=k).eval()
    cache = build_cache(model, make_split(modalities, 60, classes=5, seed=k))
    table = flop_table(model)
    masks = all_masks(model.num_paths)
    values = score_masks(model, _float64(cache), masks, "accuracy").tolist()
    flops = [table.flops(m.long().tolist()) for m in masks]
    result = exhaustive_front(model, cache, "accuracy", table, low_bits=4, batch_masks=64)
    expected = [FrontPoint(mask=m, value=v, flops=f, equal=e) for m, v, f, e in _brute_front(values, flops)]
    assert result.front == expected
    assert result.masks == 2**model.num_paths - 1 and result.method == "linear-blocks"
    assert len(expected) >= 2  # a real trade-off, not a single point


def test_refuses_a_metric_of_another_task(make_model: MakeModel, make_split: MakeSplit, modality_sets: ModalitySets) -> None:
    modalities = modality_sets[2]
    model = make_model(modalities, head="linear").eval()
    cache = build_cache(model, make_split(modalities, 5))
    with pytest.raises(ValueError, match="acc_7.*regression metric.*classification"):
        ExhaustiveScorer(model, cache, "acc_7", flop_table(model))
    assert METRICS["accuracy"].direction == "maximize"
    assert np.isfinite(ExhaustiveScorer(model, cache, "accuracy", flop_table(model)).run().front[0].value)
