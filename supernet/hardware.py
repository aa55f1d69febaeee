"""What a subnet costs on real hardware: measured latency, peak memory and parameters, and
additive cost tables fitted from measured masks (issue 21).

FLOPs (``supernet.flops``) are a proxy: kernel launches, memory-bound layer norms and Python's
per-op overhead do not show in them. This module measures the masked subnet itself:

- :func:`measure_latency`: the forward pass of the mask's active paths (``Supernet.forward`` with
  the mask runs only those paths and the embeddings they touch: the ops of the exported subnet),
  in eval mode under ``torch.inference_mode``, timed by ``torch.utils.benchmark.Timer``'s
  ``adaptive_autorange`` (which synchronises CUDA) after a warm-up call, on the wall clock or
  (one CPU thread) the thread's CPU time. The median and the interquartile range of the per-run
  times are kept, so a caller knows how noisy the device was.
- :func:`peak_memory_mb`: the subnet's parameter bytes plus the peak of what one forward
  allocates: the CUDA allocator's peak on a GPU; on the CPU the peak of the bytes of tensor
  storages alive at once, tracked by a ``TorchDispatchMode`` (:class:`LiveStorageBytes`).
- :func:`count_params`: exact, ``Supernet.num_parameters``.

A search proposes far more masks than can be timed, so :class:`CostTable` holds an additive
model of one quantity on one device, the same structure as ``supernet.flops.FlopTable``: a base
cost, plus each modality's embedding when some active path touches it, plus each active path.
:func:`fit_cost_table` measures a design of masks and fits the parts by non-negative least squares
(:func:`fit_additive`, a pure function of masks and numbers); the table carries its own error on
the masks it was fitted on, and :func:`table_errors` measures it on any others.
"""

from __future__ import annotations

import copy
import math
import statistics
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from scipy.optimize import nnls
from torch.utils import benchmark
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from supernet.device import device_problem
from supernet.errors import ConfigError
from supernet.model import Supernet
from supernet.paths import num_paths, parse_mask, path_pairs, touched_modalities

PRECISIONS = ("fp32", "fp16", "bf16")
CLOCKS = ("wall", "cpu")  # wall-clock time (the latency), or the timing thread's CPU time
QUANTITIES = ("latency_ms", "peak_memory_mb")
MIB = 2**20


class HardwareError(ConfigError, ValueError):
    """A measurement setting, or a stored cost table, is wrong. A ``ValueError`` for callers of
    this module, and a ``ConfigError`` (one line, exit code 2) for the command line."""


# --- the measured subnet: device, precision, inputs ----------------------------------------------


def _device(device: torch.device | str) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise HardwareError(f"device {device!r} is not a torch device ({exc}); use e.g. 'cpu' or 'cuda:0'") from None
    problem = device_problem(dev)
    if problem:
        raise HardwareError(f"device {str(dev)!r} is not available: {problem}; use 'cpu'")
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev


def autocast_dtype(precision: str, device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype of ``precision`` on ``device``, or None for plain float32.

    ``fp16`` and ``bf16`` run under ``torch.autocast`` (the weights stay float32, matmuls and
    attention run in the lower precision, as in mixed-precision inference). The CPU takes
    ``bf16`` only: its float16 autocast covers few ops and says little about deployment."""
    dev = torch.device(device)
    if precision not in PRECISIONS:
        raise HardwareError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return None
    if precision == "fp16" and dev.type == "cpu":
        raise HardwareError("precision 'fp16' is not measured on the CPU; use 'bf16' or 'fp32' there, or a CUDA device")
    return torch.float16 if precision == "fp16" else torch.bfloat16


def describe_device(device: torch.device | str) -> str:
    """The device in words, torch's name first: ``cuda:0 (NVIDIA H100 80GB HBM3)``,
    ``cpu (Intel(R) Xeon(R) Processor, 1 thread)`` (latency on a CPU depends on torch's threads)."""
    dev = _device(device)
    if dev.type == "cuda":
        return f"{dev} ({torch.cuda.get_device_name(dev)})"
    if dev.type == "cpu":
        threads = torch.get_num_threads()
        return f"cpu ({_cpu_model()}, {threads} thread{'s' if threads != 1 else ''})"
    return str(dev)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown CPU"


def measurement_inputs(model: Supernet, *, batch_size: int = 1, device: torch.device | str = "cpu",
                       seed: int = 0) -> list[torch.Tensor]:
    """``batch_size`` samples of every modality at full length (standard normal, from a
    ``torch.Generator(seed)``), on ``device``: ``supernet.flops.example_inputs`` with more rows."""
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise HardwareError(f"batch_size {batch_size!r} must be a positive integer")
    g = torch.Generator().manual_seed(seed)
    shapes = [(batch_size, m.length, m.dim) if m.is_sequence else (batch_size, m.dim) for m in model.spec.modalities]
    return [torch.randn(shape, generator=g).to(_device(device)) for shape in shapes]


def model_on(model: Supernet, device: torch.device | str) -> Supernet:
    """``model`` itself when its weights are on ``device``, else a copy moved there (the caller's
    model is never moved). Move a model once to measure many masks without a copy each."""
    dev = _device(device)
    here = next(model.parameters()).device
    if here.type == dev.type and (dev.index is None or here.index == dev.index):
        return model
    return copy.deepcopy(model).to(dev)


@contextmanager
def _inference(model: Supernet, precision: str, device: torch.device) -> Iterator[None]:
    """Eval mode, ``torch.inference_mode`` and the precision's autocast; the model's mode is
    restored afterwards (grad mode is restored by ``inference_mode`` itself)."""
    dtype = autocast_dtype(precision, device)
    was_training = model.training
    model.eval()
    cast = nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)
    try:
        with torch.inference_mode(), cast:
            yield
    finally:
        model.train(was_training)


# --- latency --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Measurement:
    """One mask's measured forward latency."""

    median_ms: float
    iqr_ms: float  # interquartile range of the per-run times
    runs: int  # how many timed runs the median is over (each run: `calls / runs` forward calls)
    calls: int = 0  # forward calls timed in all
    clock: str = "wall"  # "wall": elapsed time; "cpu": the timing thread's CPU time (see measure_latency)

    @property
    def spread(self) -> float:
        """``iqr_ms / median_ms``: the relative spread of the runs."""
        return self.iqr_ms / self.median_ms if self.median_ms > 0 else math.inf


def measure_latency(model: Supernet, mask: Sequence[int], *, device: torch.device | str = "cpu",
                    batch_size: int = 1, precision: str = "fp32", threshold: float = 0.05,
                    min_run_time: float = 0.05, max_run_time: float = 1.0, clock: str = "wall") -> Measurement:
    """Forward latency of the subnet ``mask`` selects, in milliseconds.

    1. the model on ``device`` (a copy when it is elsewhere: see :func:`model_on`) and
       ``measurement_inputs`` of ``batch_size`` rows there;
    2. one warm-up call, then ``Timer.adaptive_autorange``: blocks of calls until the runs'
       interquartile range is below ``threshold`` of their median (at least 4 runs and
       ``min_run_time`` seconds), or ``max_run_time`` seconds have passed;
    3. eval mode, ``torch.inference_mode`` and the precision's autocast around it all (autocast
       keeps no cast weights under inference mode: each call casts the weights it uses, and that
       is timed); the model's training flag and the grad mode are left as they were.

    The Timer runs with torch's current number of threads (its own default is 1).

    ``clock="wall"`` times elapsed time: the latency a user waits for. On a shared machine it
    also counts the time the process waited for a core. ``clock="cpu"`` times the timing thread's
    CPU time (``time.thread_time``) instead: the latency on an idle machine when torch runs one
    thread, without the waiting, so it is offered only on the CPU with ``torch.get_num_threads()
    == 1``. Neither is free of a busy machine (caches, a VM's stolen time): on the 2-core
    development machine at load 4-6, two measurements of one mask differed by a median of 31-50 %
    on the wall clock and 20-24 % on the CPU clock (``benchmarks/bench_latency.py``'s retest)."""
    dev = _device(device)
    autocast_dtype(precision, dev)  # refuse a bad precision before any work
    timer_fn = _clock(clock, dev)
    bits = list(parse_mask(mask, model.num_paths))
    model = model_on(model, dev)
    features = measurement_inputs(model, batch_size=batch_size, device=dev)
    timer = benchmark.Timer(stmt="forward(features, bits)", globals={"forward": model, "features": features, "bits": bits},
                            num_threads=torch.get_num_threads(), timer=timer_fn)
    with _inference(model, precision, dev):
        model(features, bits)  # warm-up
        m = timer.adaptive_autorange(threshold=threshold, min_run_time=min_run_time, max_run_time=max_run_time)
    return Measurement(median_ms=m.median * 1e3, iqr_ms=m.iqr * 1e3, runs=len(m.times),
                       calls=len(m.times) * m.number_per_run, clock=clock)


def _clock(clock: str, device: torch.device) -> Callable[[], float]:
    """The Timer's clock: torch.utils.benchmark's own (which synchronises CUDA), or the thread's CPU time."""
    if clock not in CLOCKS:
        raise HardwareError(f"clock {clock!r} is not one of {', '.join(CLOCKS)}")
    if clock == "wall":
        return benchmark.timer
    if device.type != "cpu" or torch.get_num_threads() != 1:
        raise HardwareError(f"clock 'cpu' times one thread on the CPU, not {device} with {torch.get_num_threads()} "
                            "torch thread(s); call torch.set_num_threads(1) or use clock 'wall'")
    return time.thread_time


# --- memory ---------------------------------------------------------------------------------------


class LiveStorageBytes(TorchDispatchMode):
    """The bytes of the tensor storages that ops create and that are alive at once: ``current``
    now, ``peak`` the most since entering.

    Every aten op's output passes through ``__torch_dispatch__``; a storage is counted once when
    an output first shows it (views share their base's storage) and released when the last
    tensor seen on it is freed (``weakref.finalize``). Storages that exist before (``external``:
    the weights, the inputs) are never counted, also when an op returns a view of them. What a
    kernel allocates for itself and frees before returning (a scratch buffer) is not seen: the
    CPU flash-attention kernel's per-thread buffers, when the peak falls inside attention (on the
    tests' tiny model that is 288 bytes below ``torch.profiler``'s running sum of allocation
    events; where the peak falls elsewhere, as at the MOSEI shape, the two are equal)."""

    def __init__(self, external: Sequence[torch.Tensor] = ()) -> None:
        super().__init__()
        self.external = {t.untyped_storage()._cdata for t in external}
        self.current = 0
        self.peak = 0
        self._live: dict[int, list[int]] = {}  # storage -> [bytes, tensors seen on it still alive]

    def _release(self, key: int) -> None:
        entry = self._live[key]
        entry[1] -= 1
        if not entry[1]:
            self.current -= entry[0]
            del self._live[key]

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            key = storage._cdata
            if key in self.external:
                continue
            entry = self._live.get(key)
            if entry is None:
                entry = self._live[key] = [storage.nbytes(), 0]
                self.current += entry[0]
                self.peak = max(self.peak, self.current)
            entry[1] += 1
            weakref.finalize(t, self._release, key)
        return out


def peak_memory_mb(model: Supernet, mask: Sequence[int], *, device: torch.device | str = "cpu",
                   batch_size: int = 1, precision: str = "fp32") -> float:
    """Peak memory of one forward of the masked subnet, in MiB (2**20 bytes): the subnet's
    parameter bytes (``num_parameters(mask)`` times the weights' element size) plus the peak of
    the memory the forward allocates (the inputs excluded: they are the same for every mask).

    On CUDA, the allocator's ``max_memory_allocated`` after ``reset_peak_memory_stats``, less
    what was allocated before. On the CPU, :class:`LiveStorageBytes`: the peak of the bytes of
    tensors alive at once, repeatable to the byte. The CPU allocator keeps no statistics;
    ``torch.profiler``'s allocation events would also see kernels' scratch buffers (see
    :class:`LiveStorageBytes`), at the cost of a profiler run and its log lines per measurement.
    A warm-up forward runs first, so one-time caches (CUDA libraries' workspaces) are not counted.
    With ``fp16``/``bf16`` the weights stay float32 and autocast's low-precision copies of them
    count while they are alive (under inference mode autocast casts a weight for each op and
    frees the copy after it; the measured forward has an autocast context of its own, so a cache
    of casts, where torch keeps one, is counted too)."""
    dev = _device(device)
    autocast_dtype(precision, dev)
    if dev.type not in ("cpu", "cuda"):
        raise HardwareError(f"peak memory is measured on the CPU and on CUDA devices, not on {str(dev)!r}")
    bits = list(parse_mask(mask, model.num_paths))
    model = model_on(model, dev)
    features = measurement_inputs(model, batch_size=batch_size, device=dev)
    weights = list(model.parameters()) + list(model.buffers())
    parameter_bytes = model.num_parameters(bits) * weights[0].element_size()
    with _inference(model, precision, dev):
        model(features, bits)  # warm-up, in an autocast context of its own
    with _inference(model, precision, dev):
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
            torch.cuda.reset_peak_memory_stats(dev)
            before = torch.cuda.memory_allocated(dev)
            out = model(features, bits)
            torch.cuda.synchronize(dev)
            peak = torch.cuda.max_memory_allocated(dev) - before
            del out
        else:
            tracker = LiveStorageBytes(weights + features)
            with tracker:
                out = model(features, bits)
            del out
            peak = tracker.peak
    return (parameter_bytes + peak) / MIB


def count_params(model: Supernet, mask: Sequence[int]) -> int:
    """Parameters of the subnet ``mask`` selects, exactly (``Supernet.num_parameters``)."""
    return model.num_parameters(list(parse_mask(mask, model.num_paths)))


# --- additive cost tables -------------------------------------------------------------------------


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _is_count(x: Any, least: int) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= least


def _table_problems(d: dict) -> list[str]:
    """Every way ``d`` (a CostTable's fields) is malformed."""
    problems = []
    if d["quantity"] not in QUANTITIES:
        problems.append(f"quantity {d['quantity']!r} is not one of {', '.join(QUANTITIES)}")
    for key in ("base", "spread", "median_error", "max_error"):
        if not _is_number(d[key]) or not math.isfinite(d[key]) or d[key] < 0:
            problems.append(f"{key} {d[key]!r} is not a finite number >= 0")
    for key in ("modality", "path"):
        parts = d[key]
        if not isinstance(parts, list | tuple) or any(not _is_number(x) or not math.isfinite(x) or x < 0 for x in parts):
            problems.append(f"{key} {parts!r} is not a list of finite numbers >= 0")
    k = len(d["modality"]) if isinstance(d["modality"], list | tuple) else 0
    if k < 2:
        problems.append(f"modality has {k} part(s); a supernet has at least 2 modalities")
    elif isinstance(d["path"], list | tuple) and len(d["path"]) != num_paths(k):
        problems.append(f"path has {len(d['path'])} parts but {k} modalities have {num_paths(k)} paths")
    if not isinstance(d["device"], str) or not d["device"].strip():
        problems.append(f"device {d['device']!r} is not a device's description")
    if not _is_count(d["batch_size"], 1):
        problems.append(f"batch_size {d['batch_size']!r} is not a positive integer")
    if d["precision"] not in PRECISIONS:
        problems.append(f"precision {d['precision']!r} is not one of {', '.join(PRECISIONS)}")
    if not _is_count(d["fit_masks"], 1):
        problems.append(f"fit_masks {d['fit_masks']!r} is not a positive integer")
    if d.get("clock", "wall") not in CLOCKS:
        problems.append(f"clock {d['clock']!r} is not one of {', '.join(CLOCKS)}")
    if not problems and d["median_error"] > d["max_error"]:
        problems.append(f"median_error {d['median_error']} exceeds max_error {d['max_error']}")
    return problems


@dataclass(frozen=True)
class CostTable:
    """An additive cost model of one quantity on one device: base + each touched modality's
    embedding + each active path (the same structure as supernet.flops.FlopTable)."""

    quantity: str  # "latency_ms" or "peak_memory_mb"
    base: float
    modality: tuple[float, ...]
    path: tuple[float, ...]
    device: str  # torch's name, then the device in words: "cuda:0 (NVIDIA H100)", "cpu (..., 1 thread)"
    batch_size: int
    precision: str
    spread: float  # median relative spread (iqr/median) of the measurements it was fitted on
    fit_masks: int  # how many measured masks it was fitted on
    median_error: float  # relative error of the table against the fit measurements (median)
    max_error: float  # ... and max
    clock: str = "wall"  # latency's clock (measure_latency); "wall" for peak memory

    def __post_init__(self) -> None:
        object.__setattr__(self, "modality", tuple(self.modality))
        object.__setattr__(self, "path", tuple(self.path))
        problems = _table_problems(asdict(self))
        if problems:
            raise HardwareError(f"cost table: {'; '.join(problems)}")

    @property
    def k(self) -> int:
        return len(self.modality)

    def estimate(self, mask: Sequence[int]) -> float:
        bits = list(parse_mask(mask, len(self.path)))
        total = self.base + sum(c for c, b in zip(self.path, bits) if b)
        return total + sum(self.modality[m] for m in touched_modalities(bits, self.k))

    def estimate_many(self, masks: torch.Tensor) -> torch.Tensor:
        """Estimates of many masks ``(M, P)`` 0/1 at once -> ``(M,)`` float64."""
        masks = torch.as_tensor(masks).to(torch.float64)
        if masks.ndim != 2 or masks.shape[1] != len(self.path):
            raise HardwareError(f"masks of shape {tuple(masks.shape)} are not (M, {len(self.path)})")
        used = (masks @ _touch_matrix(self.k) > 0).to(torch.float64)  # (M, k)
        path = torch.tensor(self.path, dtype=torch.float64)
        return self.base + masks @ path + used @ torch.tensor(self.modality, dtype=torch.float64)

    def to_dict(self) -> dict:
        """JSON-safe: numbers, strings and lists."""
        d = asdict(self)
        d["modality"], d["path"] = list(self.modality), list(self.path)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> CostTable:
        """The table ``to_dict`` wrote; anything else is refused with one line naming every problem."""
        if not isinstance(d, dict):
            raise HardwareError(f"cost table: expected a dict, got {type(d).__name__}")
        names = [f.name for f in fields(cls)]
        missing = [n for n in names if n not in d and n != "clock"]  # tables before clocks were wall-clock
        unknown = sorted(str(n) for n in d if n not in names)
        problems = [f"missing key(s) {', '.join(missing)}"] if missing else []
        if unknown:
            problems.append(f"unknown key(s) {', '.join(unknown)}")
        if not problems:
            problems = _table_problems(d)
        if problems:
            raise HardwareError(f"cost table: {'; '.join(problems)}")
        return cls(**{**d, "modality": tuple(float(x) for x in d["modality"]), "path": tuple(float(x) for x in d["path"]),
                      "base": float(d["base"]), "spread": float(d["spread"]),
                      "median_error": float(d["median_error"]), "max_error": float(d["max_error"])})


def _touch_matrix(k: int) -> torch.Tensor:
    """``(P, k)``: 1 where path p reads or writes modality m."""
    touch = torch.zeros(num_paths(k), k, dtype=torch.float64)
    for p, (i, j) in enumerate(path_pairs(k)):
        touch[p, i] = touch[p, j] = 1.0
    return touch


def _mask_rows(masks: Sequence[Sequence[int]] | torch.Tensor, n_paths: int) -> list[list[int]]:
    if isinstance(masks, torch.Tensor):
        masks = masks.to(torch.int64).tolist()
    return [list(parse_mask(m, n_paths)) for m in masks]


def relative_errors(estimates: Sequence[float], measured: Sequence[float]) -> list[float]:
    """``|estimate - measured| / measured`` for each pair; measured values must be > 0."""
    if len(estimates) != len(measured):
        raise HardwareError(f"{len(estimates)} estimates but {len(measured)} measured values")
    bad = [v for v in measured if not _is_number(v) or not math.isfinite(v) or v <= 0]
    if bad:
        raise HardwareError(f"measured values must be finite and > 0, got {bad[0]!r}")
    return [abs(e - v) / v for e, v in zip(estimates, measured)]


def table_errors(table: CostTable, masks: Sequence[Sequence[int]] | torch.Tensor, measured: Sequence[float]) -> dict:
    """Relative errors of ``table`` against values measured on ``masks``:
    ``{"median": .., "max": .., "n": ..}``."""
    rows = _mask_rows(masks, len(table.path))
    errors = relative_errors([table.estimate(m) for m in rows], [float(v) for v in measured])
    if not errors:
        raise HardwareError("table_errors needs at least one measured mask")
    return {"median": statistics.median(errors), "max": max(errors), "n": len(errors)}


def fit_additive(masks: Sequence[Sequence[int]] | torch.Tensor, values: Sequence[float], k: int, quantity: str, *,
                 device: str = "unmeasured", batch_size: int = 1, precision: str = "fp32",
                 spread: float = 0.0, clock: str = "wall") -> CostTable:
    """The additive table that fits ``values`` measured on ``masks`` best, by non-negative least
    squares (``scipy.optimize.nnls``) on the features ``[1, touched-modality indicators, path
    bits]``, each row divided by its value: the fit minimises the squared *relative* errors, the
    measure the table is judged by, so small masks weigh as much as large ones.

    Where the masks do not separate the parts (with 2 modalities every mask touches both, so
    the base and the two embeddings are one sum), NNLS splits them somehow; the estimates of
    such masks are the same whatever the split."""
    n_paths = num_paths(k)
    rows = _mask_rows(masks, n_paths)
    y = [float(v) for v in values]
    relative_errors(y, y)  # refuses values <= 0 or non-finite, and a length mismatch
    if len(rows) != len(y) or not rows:
        raise HardwareError(f"fit_additive needs one value per mask and at least one mask, got {len(rows)} masks and {len(y)} values")
    design = torch.zeros(len(rows), 1 + k + n_paths, dtype=torch.float64)  # (M, 1 + k + P)
    design[:, 0] = 1.0
    for r, bits in enumerate(rows):
        design[r, [1 + m for m in touched_modalities(bits, k)]] = 1.0
        design[r, 1 + k:] = torch.tensor(bits, dtype=torch.float64)
    target = torch.tensor(y, dtype=torch.float64)
    parts, _ = nnls((design / target[:, None]).numpy(), torch.ones(len(y), dtype=torch.float64).numpy())
    parts = [max(0.0, float(x)) for x in parts]
    estimates = (design @ torch.tensor(parts, dtype=torch.float64)).tolist()
    errors = relative_errors(estimates, y)
    return CostTable(quantity=quantity, base=parts[0], modality=tuple(parts[1:1 + k]), path=tuple(parts[1 + k:]),
                     device=device, batch_size=batch_size, precision=precision, spread=float(spread),
                     fit_masks=len(rows), median_error=statistics.median(errors), max_error=max(errors), clock=clock)


def design_masks(n_paths: int, n_random: int | None = None, seed: int = 0) -> list[list[int]]:
    """The default fitting design: every single-path mask, the full mask, and ``n_random``
    (default ``2 * n_paths``) random non-empty masks, each bit 0 or 1 with probability 1/2,
    drawn with ``torch.Generator().manual_seed(seed)``."""
    n_random = 2 * n_paths if n_random is None else n_random
    if not _is_count(n_random, 0):
        raise HardwareError(f"n_random {n_random!r} must be an integer >= 0")
    masks = [[int(p == q) for q in range(n_paths)] for p in range(n_paths)] + [[1] * n_paths]
    return masks + random_masks(n_paths, n_random, seed)


def random_masks(n_paths: int, count: int, seed: int) -> list[list[int]]:
    """``count`` random non-empty masks (every bit 0 or 1 with probability 1/2; an all-zero draw
    is drawn again), from ``torch.Generator().manual_seed(seed)``."""
    g = torch.Generator().manual_seed(seed)
    out: list[list[int]] = []
    while len(out) < count:
        mask = torch.randint(0, 2, (n_paths,), generator=g).tolist()
        if any(mask):
            out.append(mask)
    return out


def measure(model: Supernet, quantity: str, masks: Sequence[Sequence[int]], *, device: torch.device | str = "cpu",
            batch_size: int = 1, precision: str = "fp32", clock: str = "wall", threshold: float = 0.05,
            min_run_time: float = 0.05, max_run_time: float = 1.0,
            progress: Callable[[int, int], None] | None = None) -> tuple[list[float], list[float]]:
    """``quantity`` of every mask (the model moved to ``device`` once), and the relative spread
    of each measurement (0 for peak memory, which is exact): ``(values, spreads)``. The timing
    settings are :func:`measure_latency`'s; ``progress(done, total)`` is called after each mask."""
    if quantity not in QUANTITIES:
        raise HardwareError(f"quantity {quantity!r} is not one of {', '.join(QUANTITIES)}")
    dev = _device(device)
    autocast_dtype(precision, dev)
    if quantity == "latency_ms":
        _clock(clock, dev)
    model = model_on(model, dev)
    values, spreads = [], []
    for n, mask in enumerate(masks):
        if quantity == "latency_ms":
            m = measure_latency(model, mask, device=dev, batch_size=batch_size, precision=precision, clock=clock,
                                threshold=threshold, min_run_time=min_run_time, max_run_time=max_run_time)
            values.append(m.median_ms)
            spreads.append(m.spread)
        else:
            values.append(peak_memory_mb(model, mask, device=dev, batch_size=batch_size, precision=precision))
            spreads.append(0.0)
        if progress:
            progress(n + 1, len(masks))
    return values, spreads


def fit_cost_table(model: Supernet, quantity: str, masks: Sequence[Sequence[int]] | None = None, *,
                   device: torch.device | str = "cpu", batch_size: int = 1, precision: str = "fp32",
                   n_random: int | None = None, seed: int = 0, clock: str = "wall", threshold: float = 0.05,
                   min_run_time: float = 0.05, max_run_time: float = 1.0) -> CostTable:
    """Measure ``masks`` (default :func:`design_masks`: every single-path mask, the full mask and
    ``n_random`` random masks, default ``2 * P``, from ``seed``) and fit the additive table
    (:func:`fit_additive`). Its ``spread`` is the median relative spread of the measurements,
    its errors are against the measurements it was fitted on. ``clock`` and the timing settings
    are latency's (:func:`measure_latency`); peak memory has none and its table records "wall"."""
    masks = design_masks(model.num_paths, n_random, seed) if masks is None else [list(m) for m in masks]
    values, spreads = measure(model, quantity, masks, device=device, batch_size=batch_size, precision=precision,
                              clock=clock, threshold=threshold, min_run_time=min_run_time, max_run_time=max_run_time)
    return fit_additive(masks, values, model.k, quantity, device=describe_device(device), batch_size=batch_size,
                        precision=precision, spread=statistics.median(spreads),
                        clock=clock if quantity == "latency_ms" else "wall")
