"""Hardware costs (supernet/hardware.py): what the latency timer runs, peak memory against hand
counts and torch.profiler, and the additive cost tables on planted numbers. No timing thresholds:
speed targets live in benchmarks/bench_latency.py."""

from __future__ import annotations

import json
import math
from collections.abc import Callable

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from supernet.config import ModelConfig
from supernet.data.dataset import ModalitySpec
from supernet.errors import ConfigError
from supernet.hardware import (
    CostTable,
    LiveStorageBytes,
    Measurement,
    count_params,
    design_masks,
    fit_additive,
    fit_cost_table,
    measure_latency,
    measurement_inputs,
    peak_memory_mb,
    random_masks,
    table_errors,
)
from supernet.model import Supernet, SupernetSpec
from supernet.paths import all_masks, num_paths, path_pairs, touched_modalities

pytestmark = pytest.mark.usefixtures("single_thread")

MakeModel = Callable[..., Supernet]
FAST = {"min_run_time": 0.001, "max_run_time": 0.01}  # a few timed runs: these tests check structure, not speed


# --- latency: what is timed -----------------------------------------------------------------------


def _record_calls(model: Supernet) -> tuple[dict[str, int], list[tuple[bool, bool, bool]]]:
    """Hooks counting the calls of every path and embedding, and recording (training,
    inference mode, CPU autocast) at every path call."""
    calls: dict[str, int] = {}
    states: list[tuple[bool, bool, bool]] = []

    def hook(name: str):
        def count(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
            calls[name] = calls.get(name, 0) + 1
            if name.startswith("path"):
                states.append((module.training, torch.is_inference_mode_enabled(), torch.is_autocast_enabled("cpu")))

        return count

    for p, path in enumerate(model.paths):
        path.register_forward_hook(hook(f"path{p}"))
    for m, embedding in enumerate(model.embeddings):
        embedding.register_forward_hook(hook(f"embedding{m}"))
    return calls, states


@pytest.mark.parametrize("mask", [[0, 1, 0, 0, 0, 0], [1, 0, 0, 1, 0, 1], [1] * 6])
def test_latency_times_only_the_active_paths(mask: list[int], make_model: MakeModel) -> None:
    model = make_model()
    calls, states = _record_calls(model)
    m = measure_latency(model, mask, **FAST)
    assert isinstance(m, Measurement) and m.median_ms > 0 and m.runs >= 1 and m.calls >= m.runs
    assert m.iqr_ms >= 0 and m.spread >= 0 and m.clock == "wall"
    active = [p for p, b in enumerate(mask) if b]
    counts = {calls.get(f"path{p}", 0) for p in active}
    assert len(counts) == 1 and counts.pop() >= m.calls + 1  # every active path in every call (+ warm-up)
    assert all(f"path{p}" not in calls for p in range(6) if p not in active)
    touched = touched_modalities(mask, 3)
    assert all(calls.get(f"embedding{i}", 0) == calls[f"path{active[0]}"] for i in touched)
    assert all(f"embedding{i}" not in calls for i in range(3) if i not in touched)
    assert set(states) == {(False, True, False)}  # eval mode, inference mode, no autocast at fp32


def test_latency_leaves_training_flag_and_grad_mode_as_they_were(make_model: MakeModel) -> None:
    model = make_model()
    assert model.training and torch.is_grad_enabled()
    measure_latency(model, [1, 0, 0, 0, 0, 0], **FAST)
    assert model.training and torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
    model.eval()
    with torch.no_grad():
        measure_latency(model, [1, 0, 0, 0, 0, 0], **FAST)
        assert not torch.is_grad_enabled()
    assert not model.training
    peak_memory_mb(model.train(), [1, 0, 0, 0, 0, 0])
    assert model.training and torch.is_grad_enabled()


def test_bf16_runs_under_cpu_autocast_and_fp16_is_refused_in_one_line(make_model: MakeModel) -> None:
    model = make_model()
    _, states = _record_calls(model)
    assert measure_latency(model, [1, 1, 0, 0, 0, 0], precision="bf16", **FAST).median_ms > 0
    assert set(states) == {(False, True, True)}
    assert peak_memory_mb(model, [1, 1, 0, 0, 0, 0], precision="bf16") > 0
    for call in (measure_latency, peak_memory_mb):
        with pytest.raises(ValueError, match="'fp16' is not measured on the CPU; use 'bf16' or 'fp32'") as info:
            call(model, [1, 0, 0, 0, 0, 0], precision="fp16")
        assert "\n" not in str(info.value)
        with pytest.raises(ValueError, match="precision 'int8' is not one of fp32, fp16, bf16"):
            call(model, [1, 0, 0, 0, 0, 0], precision="int8")
    with pytest.raises(ConfigError, match="all-zero mask"):
        measure_latency(model, [0] * 6)
    with pytest.raises(ConfigError, match="has 3 bits but this study has 6 paths"):
        peak_memory_mb(model, [1, 0, 1])
    with pytest.raises(ValueError, match="batch_size 0 must be a positive integer"):
        peak_memory_mb(model, [1, 0, 0, 0, 0, 0], batch_size=0)


def test_cpu_clock_needs_one_thread(make_model: MakeModel) -> None:
    model = make_model()
    m = measure_latency(model, [0, 0, 1, 0, 0, 0], clock="cpu", **FAST)
    assert m.clock == "cpu" and m.median_ms > 0
    torch.set_num_threads(2)  # the single_thread fixture restores the setting
    with pytest.raises(ValueError, match="clock 'cpu' times one thread on the CPU"):
        measure_latency(model, [0, 0, 1, 0, 0, 0], clock="cpu")
    with pytest.raises(ValueError, match="clock 'gpu' is not one of wall, cpu"):
        measure_latency(model, [0, 0, 1, 0, 0, 0], clock="gpu")


def test_inputs_have_full_length_and_batch_rows(make_model: MakeModel) -> None:
    model = make_model()
    shapes = [tuple(x.shape) for x in measurement_inputs(model, batch_size=5)]
    assert shapes == [(5, 5, 6), (5, 7, 4), (5, 10)]  # conftest: text 6-d x 5, audio 4-d x 7, view 10-d
    assert torch.equal(measurement_inputs(model)[0], measurement_inputs(model)[0])  # fixed seed


# --- peak memory ----------------------------------------------------------------------------------


def test_live_storage_bytes_by_hand() -> None:
    x = torch.randn(1000, 25)  # 100,000 bytes
    with torch.inference_mode():
        tracker = LiveStorageBytes([x])
        with tracker:
            y = (x * 2) + 1  # the temporary x*2 and the result are alive at once
            view = y[3:].t()  # a view: no new storage
            alias = x[0]  # a view of an external tensor: not counted
        assert tracker.peak == 2 * x.nbytes and tracker.current == x.nbytes
        del y, view, alias
        assert tracker.current == 0
        seq = nn.Sequential(nn.Linear(10, 300), nn.GELU(), nn.Linear(300, 500))
        inputs = torch.randn(7, 10)
        tracker = LiveStorageBytes([*seq.parameters(), inputs])
        with tracker:
            out = seq(inputs)
        # GELU's output beside the first Linear's (7 x 300 each), then beside the last one's (7 x 500)
        assert tracker.peak == 4 * max(2 * 7 * 300, 7 * 300 + 7 * 500)
        assert tracker.current == out.nbytes


def _mlp_heavy_model() -> Supernet:
    """A supernet whose feed-forward layer dwarfs every other activation (ffn_mult 256), so that
    the peak is the moment GELU's output is written beside the first Linear's."""
    spec = SupernetSpec((ModalitySpec("a", 5, 6), ModalitySpec("b", 7, 4), ModalitySpec("v", 10, None)), "classification", 3)
    torch.manual_seed(0)
    return Supernet(spec, ModelConfig(width=8, heads=2, ffn_mult=256, dropout=0.0, vector_tokens=4))


@pytest.mark.parametrize("batch_size", [1, 3])
def test_peak_memory_of_single_paths_by_hand(batch_size: int) -> None:
    model = _mlp_heavy_model()
    C, mult = 8, 256
    tokens = [6, 4, 4]  # a: 6 steps, b: 4 steps, v: 10 features cut into 4 tokens
    for p, (i, j) in enumerate(path_pairs(3)):
        mask = [int(q == p) for q in range(6)]
        # alive at the peak, in floats per sample: the source's and the target's embeddings, the
        # block's residual stream x and LayerNorm(x) (target length x C each), and the MLP's first
        # Linear and GELU outputs (target length x mult*C each)
        floats = tokens[i] * C + 3 * tokens[j] * C + 2 * tokens[j] * mult * C
        expected = (4 * count_params(model, mask) + 4 * batch_size * floats) / 2**20
        assert peak_memory_mb(model, mask, batch_size=batch_size) == expected, model.path_names[p]


def test_peak_memory_in_bf16_counts_the_cast_weights() -> None:
    model = _mlp_heavy_model()
    for p, (_, j) in enumerate(path_pairs(3)):
        mask = [int(q == p) for q in range(6)]
        params = 4 * count_params(model, mask)
        bf16 = peak_memory_mb(model, mask, precision="bf16") * 2**20 - params
        fp32 = peak_memory_mb(model, mask) * 2**20 - params
        assert bf16 == peak_memory_mb(model, mask, precision="bf16") * 2**20 - params  # to the byte
        # the first Linear's bf16 weight (8 x 2048) beside its bf16 output (target length x 2048)
        assert bf16 >= 2 * 8 * 2048 + 2 * (6 if j == 0 else 4) * 2048
        assert bf16 < fp32  # the large activations are half as large


def test_peak_memory_agrees_with_the_profilers_allocation_events(make_model: MakeModel) -> None:
    """torch.profiler's running sum of allocation events also sees kernels' scratch buffers: equal
    where the peak is outside attention, never below what LiveStorageBytes counts elsewhere."""
    from torch.profiler import ProfilerActivity, profile

    def profiled(model: Supernet, mask: list[int]) -> int:
        features = measurement_inputs(model)
        model.eval()
        with torch.inference_mode():
            model(features, mask)
            with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
                out = model(features, mask)
                del out
        events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
        running = peak = 0
        for _, nbytes in events:
            running += nbytes
            peak = max(peak, running)
        return peak

    for model, exact in ((_mlp_heavy_model(), True), (make_model(), False)):
        for mask in ([1, 0, 0, 0, 0, 0], [0, 1, 1, 0, 0, 1], [1] * 6):
            ours = peak_memory_mb(model, mask) * 2**20 - 4 * count_params(model, mask)
            theirs = profiled(model, mask)
            assert ours == theirs if exact else 0.9 * theirs <= ours <= theirs, (mask, ours, theirs)


def test_parameter_part_grows_with_the_mask(make_model: MakeModel) -> None:
    model = make_model()
    for mask in ([1, 0, 0, 0, 0, 0], [0, 1, 1, 0, 0, 1], [1] * 6):
        assert peak_memory_mb(model, mask) * 2**20 > 4 * count_params(model, mask)
    for mask in all_masks(6).int().tolist():
        params = count_params(model, mask)
        assert params == model.num_parameters(mask)
        for p in range(6):
            if not mask[p]:
                assert count_params(model, [*mask[:p], 1, *mask[p + 1:]]) > params


# --- cost tables ----------------------------------------------------------------------------------


def _planted(k: int, seed: int) -> CostTable:
    g = torch.Generator().manual_seed(seed)
    parts = (torch.rand(1 + k + num_paths(k), generator=g, dtype=torch.float64) * 3 + 0.1).tolist()
    return CostTable(quantity="latency_ms", base=parts[0], modality=tuple(parts[1:1 + k]), path=tuple(parts[1 + k:]),
                     device="planted", batch_size=1, precision="fp32", spread=0.0, fit_masks=1, median_error=0.0,
                     max_error=0.0)


@pytest.mark.parametrize("k", [3, 4])
def test_fit_additive_recovers_a_planted_table(k: int) -> None:
    planted = _planted(k, seed=k)
    masks = design_masks(num_paths(k), seed=0)  # every single path, the full mask, 2P random masks
    assert len(masks) == 3 * num_paths(k) + 1
    values = [planted.estimate(m) for m in masks]
    table = fit_additive(masks, values, k, "latency_ms", device="cpu (test)", spread=0.03)
    assert table.base == pytest.approx(planted.base, rel=1e-9)
    assert table.modality == pytest.approx(planted.modality, rel=1e-9)
    assert table.path == pytest.approx(planted.path, rel=1e-9)
    assert table.fit_masks == len(masks) and table.max_error < 1e-9 and table.spread == 0.03
    held_out = random_masks(num_paths(k), 50, seed=1)
    errors = table_errors(table, held_out, [planted.estimate(m) for m in held_out])
    assert errors["n"] == 50 and errors["max"] < 1e-9


def test_table_errors_are_relative_to_the_measured_value() -> None:
    table = _planted(3, seed=0)
    masks = random_masks(6, 4, seed=2)
    measured = [table.estimate(m) * f for m, f in zip(masks, (1.25, 1.25, 0.8, 1.0))]
    errors = table_errors(table, masks, measured)
    assert errors == {"median": pytest.approx(0.2), "max": pytest.approx(0.25), "n": 4}
    with pytest.raises(ValueError, match="measured values must be finite and > 0"):
        table_errors(table, masks, [1.0, 0.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="4 estimates but 3 measured values"):
        table_errors(table, masks, [1.0, 1.0, 1.0])


def test_estimate_many_equals_estimate() -> None:
    table = _planted(4, seed=3)
    masks = all_masks(12)[::7]
    many = table.estimate_many(masks)
    assert many.shape == (len(masks),) and many.dtype == torch.float64
    for mask, value in zip(masks.int().tolist(), many.tolist()):
        assert value == pytest.approx(table.estimate(mask), rel=1e-12)
    with pytest.raises(ValueError, match=r"are not \(M, 12\)"):
        table.estimate_many(torch.ones(3, 6))


def test_round_trip_and_malformed_dicts() -> None:
    table = _planted(3, seed=4)
    d = json.loads(json.dumps(table.to_dict()))
    assert CostTable.from_dict(d) == table
    del d["clock"]  # tables written before clocks were wall-clock
    assert CostTable.from_dict(d) == table
    good = table.to_dict()
    bad = {
        "missing key": ({k: v for k, v in good.items() if k != "base"}, r"missing key\(s\) base"),
        "unknown key": ({**good, "colour": 1}, r"unknown key\(s\) colour"),
        "path length": ({**good, "path": good["path"][:5]}, "path has 5 parts but 3 modalities have 6 paths"),
        "one modality": ({**good, "modality": [1.0]}, r"modality has 1 part\(s\)"),
        "nan": ({**good, "base": math.nan}, "base nan is not a finite number >= 0"),
        "inf in path": ({**good, "path": [math.inf] + good["path"][1:]}, "path .* is not a list of finite numbers >= 0"),
        "negative": ({**good, "modality": [-1.0, 0.0, 0.0]}, "modality .* is not a list of finite numbers >= 0"),
        "bool": ({**good, "batch_size": True}, "batch_size True is not a positive integer"),
        "string number": ({**good, "spread": "0.1"}, "spread '0.1' is not a finite number"),
        "quantity": ({**good, "quantity": "joules"}, "quantity 'joules' is not one of latency_ms, peak_memory_mb"),
        "precision": ({**good, "precision": "fp8"}, "precision 'fp8' is not one of"),
        "errors order": ({**good, "median_error": 0.5, "max_error": 0.1}, "median_error 0.5 exceeds max_error 0.1"),
        "not a dict": ([good], "expected a dict, got list"),
    }
    for why, (d, message) in bad.items():
        with pytest.raises(ValueError, match=message) as info:
            CostTable.from_dict(d)
        assert "\n" not in str(info.value), why
    with pytest.raises(ValueError, match="base nan.*; device '' is not"):  # every problem at once
        CostTable.from_dict({**good, "base": math.nan, "device": ""})


finite = st.floats(min_value=0.0, max_value=1e6, allow_nan=False, allow_infinity=False)


@settings(max_examples=60, deadline=None)
@given(k=st.integers(2, 4), data=st.data())
def test_round_trip_of_any_table(k: int, data: st.DataObject) -> None:
    errors = sorted(data.draw(st.lists(finite, min_size=2, max_size=2)))
    table = CostTable(
        quantity=data.draw(st.sampled_from(["latency_ms", "peak_memory_mb"])),
        base=data.draw(finite),
        modality=tuple(data.draw(st.lists(finite, min_size=k, max_size=k))),
        path=tuple(data.draw(st.lists(finite, min_size=num_paths(k), max_size=num_paths(k)))),
        device=data.draw(st.text(min_size=1).filter(str.strip)),
        batch_size=data.draw(st.integers(1, 4096)),
        precision=data.draw(st.sampled_from(["fp32", "fp16", "bf16"])),
        spread=data.draw(finite),
        fit_masks=data.draw(st.integers(1, 10**6)),
        median_error=errors[0],
        max_error=errors[1],
        clock=data.draw(st.sampled_from(["wall", "cpu"])),
    )
    assert CostTable.from_dict(json.loads(json.dumps(table.to_dict()))) == table


@settings(max_examples=40, deadline=None)
@given(k=st.integers(2, 4), data=st.data())
def test_fitted_parts_are_never_negative(k: int, data: st.DataObject) -> None:
    p = num_paths(k)
    n = data.draw(st.integers(1, 3 * p))
    masks = [data.draw(st.lists(st.integers(0, 1), min_size=p, max_size=p).filter(any)) for _ in range(n)]
    values = data.draw(st.lists(st.floats(1e-3, 1e4), min_size=n, max_size=n))
    table = fit_additive(masks, values, k, "peak_memory_mb")
    parts = [table.base, *table.modality, *table.path]
    assert all(math.isfinite(x) and x >= 0 for x in parts)
    assert 0 <= table.median_error <= table.max_error and table.fit_masks == n
    assert CostTable.from_dict(json.loads(json.dumps(table.to_dict()))) == table


def test_fit_additive_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match="measured values must be finite and > 0"):
        fit_additive([[1, 0, 0, 0, 0, 0]], [math.nan], 3, "latency_ms")
    with pytest.raises(ValueError, match="one value per mask"):
        fit_additive([[1, 0, 0, 0, 0, 0]], [], 3, "latency_ms")
    with pytest.raises(ValueError, match="quantity 'flops' is not one of"):
        fit_additive([[1, 0, 0, 0, 0, 0]], [1.0], 3, "flops")


# --- fitting on measurements ----------------------------------------------------------------------


def test_fit_cost_table_on_measured_memory_and_latency(make_model: MakeModel) -> None:
    model = make_model()
    memory = fit_cost_table(model, "peak_memory_mb")
    assert memory.quantity == "peak_memory_mb" and memory.fit_masks == 19 and memory.spread == 0.0
    assert memory.device.startswith("cpu (") and memory.device.endswith(", 1 thread)")
    design = design_masks(6, seed=0)
    measured = [peak_memory_mb(model, m) for m in design]
    errors = table_errors(memory, design, measured)
    assert errors["median"] == pytest.approx(memory.median_error) and errors["max"] == pytest.approx(memory.max_error)
    masks = [[1, 0, 0, 0, 0, 0], [0, 0, 0, 0, 1, 1], [1] * 6]
    latency = fit_cost_table(model, "latency_ms", masks, clock="cpu", **FAST)
    assert latency.fit_masks == 3 and latency.clock == "cpu" and latency.spread >= 0
    assert all(x >= 0 for x in (latency.base, *latency.modality, *latency.path))
    assert CostTable.from_dict(latency.to_dict()) == latency
