"""Exhaustive scoring is exact: every mask's metric equals ``score_masks``, its FLOPs equal
``FlopTable``, its parameters ``Supernet.num_parameters``, any additive cost table is priced the
same in blocks as mask by mask, and the running front (over the metric and one or two costs,
within limits) equals the front of all points computed by brute force."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import cache
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from supernet.data.dataset import ModalitySpec, Split
from supernet.exhaustive import (
    AdditiveCost,
    ExhaustiveScorer,
    FrontPoint,
    Limit,
    RunningFront,
    RunningFront3,
    exhaustive_front,
    params_cost,
)
from supernet.flops import flop_table
from supernet.metrics import METRICS, metric_names
from supernet.model import Supernet
from supernet.paths import all_masks, touched_modalities
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
    return (torch.cat([c.masks for c in chunks]), torch.cat([c.values for c in chunks]), torch.cat([c.costs[:, 0] for c in chunks]))


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
    got = [(p.mask, p.value, p.costs[0], p.equal) for p in front.points()]
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
    expected = [FrontPoint(mask=m, value=v, costs=(f,), equal=e) for m, v, f, e in _brute_front(values, flops)]
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


# --- costs other than FLOPs, two costs, limits ----------------------------------------------------


def _brute_front_nd(values: Sequence[float], costs: Sequence[tuple], maximize: bool = True,
                    feasible: Sequence[bool] | None = None) -> list[tuple[int, float, tuple, int]]:
    """The front by definition over (value, cost_1, ...): (lowest mask, value, costs, how many
    masks share the point) of every feasible point no other feasible point dominates; index i is
    mask i + 1. Sorted by costs."""
    points: dict[tuple, list[int]] = {}
    for i, (v, c) in enumerate(zip(values, costs)):
        if not math.isnan(v) and (feasible is None or feasible[i]):
            points.setdefault((v, *c), []).append(i + 1)

    def at_least(a: tuple, b: tuple) -> bool:  # a is at least as good as b everywhere
        return (a[0] >= b[0] if maximize else a[0] <= b[0]) and all(x <= y for x, y in zip(a[1:], b[1:]))

    front = [(min(masks), p[0], p[1:], len(masks)) for p, masks in points.items() if not any(q != p and at_least(q, p) for q in points)]
    return sorted(front, key=lambda p: p[2])


def _table_price(table: SimpleNamespace, mask: Sequence[int]) -> float:
    """A cost table's price of one mask, as a table prices it: base + touched modalities + active paths."""
    k = len(table.modality)
    return table.base + sum(table.modality[m] for m in touched_modalities(mask, k)) + sum(c for c, b in zip(table.path, mask) if b)


def _planted_table(k: int, seed: int, *, ties: bool) -> SimpleNamespace:
    """A latency-like table (a base, an embedding per modality, a cost per path, in ms): with
    ``ties``, multiples of 1/8 (so different masks often cost the same, exactly); else random floats."""
    g = np.random.default_rng(seed)
    p = k * (k - 1)
    if ties:
        return SimpleNamespace(base=0.375, modality=tuple(g.integers(0, 4, k) / 8), path=tuple(g.integers(1, 5, p) / 8))
    return SimpleNamespace(base=float(g.uniform(0.1, 1)), modality=tuple(g.uniform(0, 0.3, k)), path=tuple(g.uniform(0.01, 0.5, p)))


Tiny = tuple[Supernet, PathCache, list[float], torch.Tensor]


@cache
def _tiny_model(make_model: MakeModel, make_split: MakeSplit, modalities: tuple[ModalitySpec, ...]) -> Tiny:
    """k = 3 (6 paths, 63 masks): model, cache, every mask's accuracy (float64 reference), the
    masks; made once (the factories are the conftest's functions, the same in every test)."""
    model = make_model(modalities, output_dim=5, head="linear", seed=3).eval()
    c = build_cache(model, make_split(modalities, 60, classes=5, seed=3))
    masks = all_masks(model.num_paths)
    return model, c, score_masks(model, _float64(c), masks, "accuracy").tolist(), masks


@pytest.fixture
def tiny(make_model: MakeModel, make_split: MakeSplit, modality_sets: ModalitySets) -> Tiny:
    return _tiny_model(make_model, make_split, modality_sets[3])


def _as_points(front: list[FrontPoint]) -> list[tuple[int, float, tuple, int]]:
    return [(p.mask, p.value, p.costs, p.equal) for p in front]


def test_params_cost_equals_num_parameters_on_every_mask(make_model: MakeModel, modality_sets: ModalitySets) -> None:
    for k in (3, 4):
        model = make_model(modality_sets[k], output_dim=3, head="mlp", seed=k)
        cost = params_cost(model)
        assert cost.exact_int and cost.quantum == 1.0
        for mask in all_masks(model.num_paths).long().tolist():
            assert cost.price(mask) == model.num_parameters(mask)
        assert cost.price([1] * model.num_paths) == model.num_parameters()  # everything is head, embeddings or paths


def test_front_under_params_equals_brute_force(tiny: Tiny) -> None:
    model, c, values, masks = tiny
    cost = params_cost(model)
    result = exhaustive_front(model, c, "accuracy", [cost], low_bits=2, batch_masks=8)
    params = [(model.num_parameters(m),) for m in masks.long().tolist()]
    assert _as_points(result.front) == _brute_front_nd(values, params)
    assert result.costs == ("params",) and len(result.front) >= 2
    assert all(isinstance(p.costs[0], int) for p in result.front)


@pytest.mark.parametrize("ties", [True, False])
def test_front_under_a_latency_table_equals_brute_force(ties: bool, tiny: Tiny) -> None:
    """The table's own prices, mask by mask: with ties (multiples of 1/8, exact in any order) the
    fronts are equal number for number; with random floats the same masks, values and counts,
    the costs equal to float64 rounding (and exactly ``AdditiveCost.price``)."""
    model, c, values, masks = tiny
    table = _planted_table(3, seed=5, ties=ties)
    cost = AdditiveCost.from_table(table, "latency_ms")
    result = exhaustive_front(model, c, "accuracy", [cost], low_bits=3, batch_masks=16)
    bits = masks.long().tolist()
    expected = _brute_front_nd(values, [(_table_price(table, m),) for m in bits])
    got = _as_points(result.front)
    assert [(m, v, e) for m, v, _, e in got] == [(m, v, e) for m, v, _, e in expected]
    for (mask, _, costs, _), (_, _, want, _) in zip(got, expected):
        assert costs[0] == cost.price(bits[mask - 1])
        assert costs[0] == (want[0] if ties else pytest.approx(want[0], rel=1e-14))
    if ties:
        assert len({_table_price(table, m) for m in bits}) < len(bits) // 2  # masks often cost the same


@pytest.mark.parametrize("low_bits", [0, 3, 6])
def test_front_over_three_objectives_equals_brute_force(low_bits: int, tiny: Tiny) -> None:
    model, c, values, masks = tiny
    table = _planted_table(3, seed=7, ties=True)
    costs = [AdditiveCost.from_table(table, "latency_ms"), params_cost(model)]
    result = exhaustive_front(model, c, "accuracy", costs, low_bits=low_bits, batch_masks=8)
    bits = masks.long().tolist()
    priced = [(_table_price(table, m), model.num_parameters(m)) for m in bits]
    assert _as_points(result.front) == _brute_front_nd(values, priced)
    assert result.costs == ("latency_ms", "params")
    # and with FLOPs and parameters (both integers)
    flops = flop_table(model)
    result = exhaustive_front(model, c, "accuracy", [AdditiveCost.from_flops(flops), params_cost(model)], low_bits=low_bits)
    priced = [(flops.flops(m), model.num_parameters(m)) for m in bits]
    assert _as_points(result.front) == _brute_front_nd(values, priced)
    assert len(result.front) >= 3


def test_limits_leave_only_feasible_masks_and_all_of_them(tiny: Tiny) -> None:
    """Limits on an objective and on a cost only a limit uses: no front mask is over a limit,
    every feasible non-dominated mask is on the front, and the infeasible ones are counted out."""
    model, c, values, masks = tiny
    bits = masks.long().tolist()
    table = _planted_table(3, seed=5, ties=False)
    latency, params = AdditiveCost.from_table(table, "latency_ms"), params_cost(model)
    lat = [_table_price(table, m) for m in bits]
    par = [model.num_parameters(m) for m in bits]
    # limits that cut the fronts (checked below), not within rounding of any mask's latency: a
    # float table's price of a mask exactly at a limit is its own sum to float64 rounding
    max_latency, max_params = 1.5, 6000
    assert min(abs(x - max_latency) for x in lat) > 1e-9
    for objectives, limits in [
        ([params], [Limit(latency, max_latency)]),  # a cost only the limit uses
        ([params], [Limit(params, max_params)]),  # a limit on the objective
        ([latency, params], [Limit(latency, max_latency), Limit(params, max_params)]),
    ]:
        result = exhaustive_front(model, c, "accuracy", objectives, limits=limits, low_bits=2, batch_masks=8)
        feasible = [all(lim.allows(m) for lim in limits) for m in bits]
        ok = [(la <= max_latency or all(lim.cost is not latency for lim in limits)) and (p <= max_params or all(lim.cost is not params for lim in limits))
              for la, p in zip(lat, par)]
        assert feasible == ok  # the limits in units say what the plain numbers say
        assert 0 < sum(feasible) < len(bits) and result.feasible == sum(feasible)
        priced = [tuple(cost.price(m) for cost in objectives) for m in bits]
        expected = _brute_front_nd(values, priced, feasible=feasible)
        assert _as_points(result.front) == expected
        for p in result.front:
            m = bits[p.mask - 1]
            assert _table_price(table, m) <= max_latency or limits[0].cost is params
            assert model.num_parameters(m) <= max_params or all(lim.cost is not params for lim in limits)
        # the unconstrained front has a mask over a limit: the limits did something
        free = exhaustive_front(model, c, "accuracy", objectives, low_bits=2)
        assert any(not feasible[p.mask - 1] for p in free.front)
        assert result.limits == {lim.cost.name: float(lim.at_most) for lim in limits}


def test_a_limit_no_mask_meets_leaves_an_empty_front(tiny: Tiny) -> None:
    model, c, _, _ = tiny
    cost = params_cost(model)
    result = exhaustive_front(model, c, "accuracy", [cost], limits=[Limit(cost, cost.base)])
    assert result.front == [] and result.feasible == 0


def test_mflops_limit_is_the_mflops_comparison() -> None:
    """``Limit.mflops``: integer FLOPs F are within the limit exactly when ``F / 1e6 <= max_mflops``."""
    cost = AdditiveCost("flops", 0, (0, 0), (1, 1), exact_int=True)
    for max_mflops in (0.1, 0.3, 1.0, 2.5, 1234.567891, 7e-7, 0.0):
        at = Limit.mflops(cost, max_mflops).max_units
        assert at / 1e6 <= max_mflops < (at + 1) / 1e6


def test_costs_are_checked(tiny: Tiny) -> None:
    model, c, _, _ = tiny
    cost = params_cost(model)
    with pytest.raises(ValueError, match="one or two costs, got 3"):
        ExhaustiveScorer(model, c, "accuracy", [cost, AdditiveCost.from_flops(flop_table(model)), AdditiveCost.from_table(cost, "x")])
    with pytest.raises(ValueError, match="name a cost twice"):
        ExhaustiveScorer(model, c, "accuracy", [cost, cost])
    with pytest.raises(ValueError, match="3 modality parts need 6 path parts, got 2"):
        AdditiveCost("latency_ms", 0.0, (1.0, 2.0, 3.0), (1.0, 2.0))
    with pytest.raises(ValueError, match="finite number, got nan"):
        AdditiveCost("latency_ms", math.nan, (1.0, 2.0), (1.0, 2.0))
    with pytest.raises(ValueError, match="exact_int, but a part is not an integer: 0.5"):
        AdditiveCost("params", 0.5, (1, 2), (1, 2), exact_int=True)
    with pytest.raises(ValueError, match="cost 'small' has 2 path parts, the supernet 6 paths"):
        ExhaustiveScorer(model, c, "accuracy", [AdditiveCost("small", 0, (1, 2), (1, 2), exact_int=True)])


@settings(max_examples=80, deadline=None)
@given(
    parts=st.lists(st.floats(0.0, 10.0, allow_subnormal=False), min_size=9, max_size=9),
    scale=st.sampled_from([1e-6, 1e-3, 1.0, 1e3, 1e9]),
    mask=st.lists(st.integers(0, 1), min_size=6, max_size=6),
)
def test_float_costs_are_exact_sums_on_their_grid(parts: list[float], scale: float, mask: list[int]) -> None:
    """A float cost's parts on the grid of ``quantum``: any order of addition gives the same
    total, and it is the plain total to within half a quantum per part."""
    parts = [x * scale for x in parts]
    cost = AdditiveCost("latency_ms", parts[0], tuple(parts[1:4]), tuple(parts[3:9]))
    base, modality, path = cost.units
    assert max(abs(base) + sum(map(abs, modality)) + sum(map(abs, path)), 0) < 2**53
    q = cost.quantum
    assert math.frexp(q)[0] == 0.5  # a power of two
    grid = [base * q] + [modality[m] * q for m in touched_modalities(mask, 3)] + [c * q for c, b in zip(path, mask) if b]
    price = cost.price(mask)
    assert price == sum(grid) == sum(reversed(grid)) == math.fsum(grid)
    plain = [cost.base] + [cost.modality[m] for m in touched_modalities(mask, 3)] + [c for c, b in zip(cost.path, mask) if b]
    assert abs(price - math.fsum(plain)) <= len(plain) * q / 2


@settings(max_examples=60, deadline=None)
@given(
    data=st.lists(st.tuples(st.integers(0, 5), st.integers(0, 6), st.integers(0, 6)), min_size=1, max_size=120),
    cuts=st.lists(st.integers(1, 119), max_size=6),
    maximize=st.booleans(),
    nan_every=st.integers(0, 7),
    block=st.sampled_from([1, 3, 1024]),
)
def test_running_front3_equals_the_front_of_all_points(data: list[tuple[int, int, int]], cuts: list[int], maximize: bool,
                                                       nan_every: int, block: int) -> None:
    """Few distinct values and costs, so ties in any objective, and in all three, are common; the
    merge in blocks of 1 and 3 points as well as whole."""
    values = [v / 5 for v, _, _ in data]
    if nan_every:
        values = [math.nan if i % (nan_every + 1) == nan_every else v for i, v in enumerate(values)]
    costs = [(a * 1000, b) for _, a, b in data]
    front = RunningFront3(maximize=maximize)
    front.block = block
    bounds = [0, *sorted(c for c in cuts if c < len(data)), len(data)]
    for a, b in zip(bounds, bounds[1:]):  # batches of any size, in counting order
        front.update(torch.tensor(costs[a:b], dtype=torch.int64).reshape(-1, 2), torch.tensor(values[a:b], dtype=torch.float64),
                     torch.arange(a + 1, b + 1))
    got = [(p.mask, p.value, p.costs, p.equal) for p in front.points()]
    assert got == _brute_front_nd(values, costs, maximize)


# the fixture is made once and never changed: nothing to reset between examples
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seed=st.integers(0, 2**16),
    n_costs=st.integers(1, 2),
    integer=st.lists(st.booleans(), min_size=2, max_size=2),
    limit_quantiles=st.lists(st.one_of(st.none(), st.floats(0.05, 1.0)), min_size=2, max_size=2),
    low_bits=st.integers(0, 6),
    maximize_metric=st.sampled_from(["accuracy", "f1_macro"]),
)
def test_random_additive_tables_give_the_brute_force_front(seed: int, n_costs: int, integer: list[bool], limit_quantiles: list[float | None],
                                                           low_bits: int, maximize_metric: str, tiny: Tiny) -> None:
    """Random tables (small integers: many ties; or floats), one or two of them as objectives,
    limits on any: the exhaustive front is the brute-force front of the feasible masks."""
    model, c, _, masks = tiny
    bits = masks.long().tolist()
    values = score_masks(model, _float64(c), masks, maximize_metric).tolist()
    g = np.random.default_rng(seed)
    tables = []
    for i, exact in enumerate(integer):
        if exact:
            tables.append(AdditiveCost(f"cost{i}", int(g.integers(0, 3)), tuple(int(x) for x in g.integers(0, 3, 3)),
                                       tuple(int(x) for x in g.integers(0, 4, 6)), exact_int=True))
        else:
            tables.append(AdditiveCost(f"cost{i}", float(g.uniform(0, 1)), tuple(g.uniform(0, 1, 3)), tuple(g.uniform(0, 1, 6))))
    limits = []
    for table, q in zip(tables, limit_quantiles):
        if q is not None:
            limits.append(Limit(table, float(np.quantile([table.price(m) for m in bits], q))))
    objectives = tables[:n_costs]
    result = exhaustive_front(model, c, maximize_metric, objectives, limits=limits, low_bits=low_bits, batch_masks=8)
    feasible = [all(table.price(m) <= lim.at_most for lim, table in ((lim, lim.cost) for lim in limits)) for m in bits]
    priced = [tuple(t.price(m) for t in objectives) for m in bits]
    assert _as_points(result.front) == _brute_front_nd(values, priced, feasible=feasible)
