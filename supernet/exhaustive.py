"""Every mask of a supernet scored exactly, streamed in blocks, and the exact Pareto front.

A mask is a number: path 0 is its highest bit, as in ``paths.all_masks`` (counting order), so
mask ``i`` has the bits of ``format(i, "0{P}b")`` and the lowest number is the lowest mask string.
All ``2**P - 1`` masks are enumerated as blocks: the last ``b`` paths are the *low* bits, the
others the *high* bits, ``i = high << b | low``.

**Linear head.** A mask's logits are ``W·mean(z_p) + bias = S/|m| + bias`` with
``S = Σ_{p∈m} H_p`` and ``H_p = W z_p`` the cache's ``projected`` rows (``scoring.py``). ``S``
splits as ``S_low + S_high``: the sums of all ``2**b`` low combinations are computed once, and each
high combination adds one precomputed row sum to all of them, a broadcast add. So a mask costs
``O(N·C)`` adds instead of the ``O(P·N·C)`` of a matmul per batch. For a classification metric
only the class ids count, and ``argmax(S/|m| + bias) = argmax(S + |m|·bias)`` (``|m| > 0``), so
the division is never made: ``|m|·bias`` is split the same way (``|m| = |low| + |high|``).
Regression metrics need the values, ``(S_low + S_high)/|m| + bias``.

**Exactness.** The sums are made in float64 from the float32 cache: a sum of at most P float32
numbers in float64 is exact to far below float32's own rounding, so the result does not depend on
the order of the additions. The class ids (or regression values) then go through the very function
the search scores with, ``metrics.batch_metric``: every metric of ``metrics.METRICS`` is supported
exactly (accuracies, F1 from per-mask confusion counts, MAE, correlation), none is refused.
``score_masks`` on a float64 cache gives the same numbers (``tests/test_exhaustive.py``); the
float32 cache the search uses can differ only for a sample whose two best logits (or whose value
and a rounding or sign boundary) are closer than float32 rounding. Other heads (``mlp``) are not
linear in the mean: they fall back to ``scoring.predict_masks`` on batches of enumerated masks,
``score_masks`` itself, exact by construction and about P times slower per mask.

**FLOPs** are not additive per path: a modality's embedding is paid once if any active path
touches it (``flops.FlopTable``). They split all the same: the path costs add, and the touched
modalities are the union (a bitwise or) of the low and high parts', priced from a ``2**k`` table;
integers throughout, so MFLOPs equal ``FlopTable.mflops_many`` exactly.

**The front** (``RunningFront``): maximize (or minimize) the metric, minimize FLOPs; a point is
kept unless another is at least as good in both and better in one, so of two masks with the same
FLOPs only the better metric stays. Masks with the same metric and the same FLOPs are one point:
its representative is the lowest mask, and ``equal`` says how many masks share it. Each batch is
first filtered on its device against the front so far (a ``searchsorted`` over the front's
FLOPs), and only the few survivors are merged on the host.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from supernet.flops import FlopTable
from supernet.metrics import METRICS, batch_metric
from supernet.model import Supernet
from supernet.paths import path_pairs
from supernet.scoring import PathCache, predict_masks

MAX_PATHS = 62  # mask numbers are int64; far beyond what can be enumerated anyway (k = 8 has 56)


@dataclass(frozen=True)
class FrontPoint:
    """One point of the exact front: its lowest mask, the metric, FLOPs (integer) and how many
    masks share exactly this metric and these FLOPs."""

    mask: int
    value: float
    flops: int
    equal: int

    def bits(self, n_paths: int) -> str:
        return format(self.mask, f"0{n_paths}b")

    @property
    def mflops(self) -> float:
        return self.flops / 1e6


class RunningFront:
    """The non-dominated set of all points seen so far, exact (see the module docstring)."""

    def __init__(self, *, maximize: bool = True) -> None:
        self.maximize = maximize
        # sorted by FLOPs ascending with the (higher-is-better) value strictly increasing
        self._flops = np.zeros(0, dtype=np.int64)
        self._gain = np.zeros(0, dtype=np.float64)  # the value, negated when minimized
        self._mask = np.zeros(0, dtype=np.int64)
        self._equal = np.zeros(0, dtype=np.int64)
        self._device_copy: tuple[torch.device, torch.Tensor, torch.Tensor] | None = None

    def __len__(self) -> int:
        return len(self._flops)

    def update(self, flops: torch.Tensor, values: torch.Tensor, masks: torch.Tensor) -> None:
        """Take in a batch: FLOPs (B,) int64, metric values (B,) float64 (NaN: undefined for that
        mask, skipped, as the search prunes such a trial), mask numbers (B,) int64."""
        gain = values if self.maximize else -values  # (B,)
        keep = ~torch.isnan(gain)
        if len(self):
            front_flops, front_gain = self._on(flops.device)
            idx = torch.searchsorted(front_flops, flops, right=True) - 1  # (B,) last front point with FLOPs <= f
            has = idx >= 0
            at = idx.clamp(min=0)
            best = torch.where(has, front_gain[at], torch.full_like(gain, -math.inf))
            same_flops = has & (front_flops[at] == flops)
            keep &= (gain > best) | ((gain == best) & same_flops)  # better, or equal to a front point
        if not bool(keep.any()):
            return
        self._merge(flops[keep].cpu().numpy(), gain[keep].cpu().numpy(), masks[keep].cpu().numpy(), np.ones(int(keep.sum()), dtype=np.int64))

    def _on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if self._device_copy is None or self._device_copy[0] != device:
            self._device_copy = (device, torch.from_numpy(self._flops).to(device), torch.from_numpy(self._gain).to(device))
        return self._device_copy[1], self._device_copy[2]

    def _merge(self, flops: np.ndarray, gain: np.ndarray, mask: np.ndarray, equal: np.ndarray) -> None:
        flops = np.concatenate([self._flops, flops])
        gain = np.concatenate([self._gain, gain])
        mask = np.concatenate([self._mask, mask])
        equal = np.concatenate([self._equal, equal])
        # 1. equal points become one: the lowest mask, the counts added
        order = np.lexsort((mask, -gain, flops))  # FLOPs up, then value down, then mask up
        flops, gain, mask, equal = flops[order], gain[order], mask[order], equal[order]
        first = np.ones(len(flops), dtype=bool)
        first[1:] = (flops[1:] != flops[:-1]) | (gain[1:] != gain[:-1])
        starts = np.flatnonzero(first)
        equal = np.add.reduceat(equal, starts)
        flops, gain, mask = flops[starts], gain[starts], mask[starts]
        # 2. in FLOPs order, a point stays if its value beats every point before it (those have
        #    fewer FLOPs, or the same FLOPs and a value at least as good)
        before = np.maximum.accumulate(np.concatenate([[-np.inf], gain[:-1]]))
        stay = gain > before
        self._flops, self._gain, self._mask, self._equal = flops[stay], gain[stay], mask[stay], equal[stay]
        self._device_copy = None

    def points(self) -> list[FrontPoint]:
        """The front, by FLOPs ascending."""
        sign = 1.0 if self.maximize else -1.0
        return [
            FrontPoint(mask=int(m), value=float(sign * g), flops=int(f), equal=int(e))
            for f, g, m, e in zip(self._flops, self._gain, self._mask, self._equal)
        ]


@dataclass
class Chunk:
    """Scores of one contiguous range of mask numbers ``[start, stop)`` (the all-zero mask, 0,
    has the value NaN)."""

    masks: torch.Tensor  # (B,) int64
    values: torch.Tensor  # (B,) float64
    flops: torch.Tensor  # (B,) int64


@dataclass
class ExhaustiveResult:
    """The exact front and how it was computed."""

    front: list[FrontPoint]
    n_paths: int
    masks: int  # how many masks were scored (2**P - 1)
    metric: str
    seconds: float
    method: str  # "linear-blocks" or "predict_masks"
    device: str
    dtype: str

    @property
    def rate(self) -> float:
        return self.masks / self.seconds if self.seconds > 0 else math.inf


@dataclass
class ExhaustiveScorer:
    """Scores every mask of a supernet from its cache, block by block (module docstring)."""

    model: Supernet
    cache: PathCache
    metric: str
    flop_table: FlopTable
    # masks per step (None: by device). On the CPU large enough that the per-step overhead of a
    # dozen tensor ops is small, small enough that the (masks, classes, samples) float64 block
    # stays in the caches: at the mfeat shape (9 margins x 300 samples) 256 masks are 5.5 MB and
    # ran 56-80k masks/s on one thread here, 2,048 masks (44 MB) 22k (bench_exhaustive.py). On a
    # GPU a step must fill the device and amortize its kernel launches: 65,536 masks (1.4 GB).
    batch_masks: int | None = None
    # bits enumerated inside a block: 2**low_bits low combinations precomputed once (None: 6 on
    # the CPU, where 6 to 8 ran alike and 5 paid more per-step overhead; 10 on a GPU)
    low_bits: int | None = None
    dtype: torch.dtype = torch.float64  # the sums; float64 makes them exact (module docstring)
    n_paths: int = field(init=False)
    method: str = field(init=False)

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"unknown metric {self.metric!r}: expected one of {', '.join(METRICS)}")
        if METRICS[self.metric].task != self.cache.task:
            raise ValueError(f"metric {self.metric!r} is a {METRICS[self.metric].task} metric, but the cache is of a {self.cache.task} task")
        self.n_paths = int(self.model.num_paths)
        on_cpu = self.cache.pooled.device.type == "cpu"
        if self.batch_masks is None:
            self.batch_masks = 256 if on_cpu else 65_536
        if self.low_bits is None:
            self.low_bits = 6 if on_cpu else 10
        if self.n_paths > MAX_PATHS:
            raise ValueError(f"{self.n_paths} paths: mask numbers would not fit in int64 (at most {MAX_PATHS} paths)")
        self.low_bits = max(0, min(self.low_bits, self.n_paths))
        self.method = "linear-blocks" if self.cache.projected is not None else "predict_masks"
        self.device = self.cache.pooled.device
        self.labels = self.cache.labels.to(self.device)
        self._prepare_flops()
        if self.method == "linear-blocks":
            self._prepare_linear()
        high = self.n_paths - self.low_bits
        per_step = max(1, self.batch_masks >> self.low_bits)
        self.highs_per_step = min(per_step, 2**high)

    @property
    def total(self) -> int:
        """How many non-empty masks there are: ``2**P - 1``."""
        return 2**self.n_paths - 1

    @property
    def maximize(self) -> bool:
        return METRICS[self.metric].direction == "maximize"

    # --- preparation ------------------------------------------------------------------------------

    def _bits(self, numbers: torch.Tensor, width: int) -> torch.Tensor:
        """Numbers (B,) -> their ``width`` bits, highest first: (B, width) int64."""
        shifts = torch.arange(width - 1, -1, -1, device=numbers.device)
        return (numbers[:, None] >> shifts) & 1

    def _prepare_flops(self) -> None:
        t = self.flop_table
        k = len(t.modality)
        pairs = path_pairs(k)
        dev = self.device
        path_cost = torch.tensor(t.path, dtype=torch.int64, device=dev)  # (P,)
        touch = torch.zeros(len(pairs), k, dtype=torch.float64, device=dev)  # (P, k) path p touches modality m
        for p, (i, j) in enumerate(pairs):
            touch[p, i] = touch[p, j] = 1.0
        self._pow2 = 2 ** torch.arange(k, device=dev)  # (k,) bit m = modality m
        subsets = torch.arange(2**k, device=dev)
        modality = torch.tensor(t.modality, dtype=torch.int64, device=dev)
        self._modality_cost = (self._bits(subsets, k).flip(1) * modality).sum(dim=1)  # (2**k,) bit m = modality m
        b = self.low_bits
        low_bits = self._bits(torch.arange(2**b, device=dev), b)  # (L, b)
        self._low_path_flops = (low_bits * path_cost[self.n_paths - b :]).sum(dim=1)  # (L,) (no integer matmul on CUDA)
        self._low_touch = self._touched(low_bits, touch[self.n_paths - b :])  # (L,)
        self._low_count = low_bits.sum(dim=1)  # (L,)
        self._high_path_cost = path_cost[: self.n_paths - b]
        self._high_touch = touch[: self.n_paths - b]
        self._shared = int(t.shared)

    def _touched(self, bits: torch.Tensor, touch: torch.Tensor) -> torch.Tensor:
        """The modalities some active path touches, as bits: (B, n) 0/1, (n, k) -> (B,) int64."""
        used = (bits.to(torch.float64) @ touch) > 0  # (B, k) (counts of small integers: exact)
        return (used.to(torch.int64) * self._pow2).sum(dim=1)

    def _prepare_linear(self) -> None:
        head = self.model.head
        proj = self.cache.projected.to(self.device, self.dtype)  # (N, P, out)
        n, p, out = proj.shape
        bias = head.bias.detach().to(self.device, self.dtype) if head.bias is not None else torch.zeros(out, dtype=self.dtype, device=self.device)
        self._kind = "regression" if self.cache.task == "regression" else ("accuracy" if self.metric == "accuracy" else "class_ids")
        if self._kind == "accuracy":
            # margins of the true class over each other class c: G_p = H_p[y] - H_p[c], so a
            # mask's sum is |m|·(logit_y - logit_c) (module docstring)
            y = self.labels.long()  # (N,)
            classes = torch.arange(out, device=self.device)
            others = classes[None, :].expand(n, out)[classes[None, :] != y[:, None]].view(n, out - 1)  # (N, C-1) c != y, ascending
            true_out = proj.gather(2, y[:, None, None].expand(n, p, 1))  # (N, P, 1)
            rows = (true_out - proj.gather(2, others[:, None, :].expand(n, p, out - 1))).permute(1, 2, 0)  # (P, C-1, N)
            bias_rows = (bias[y][None, :] - bias[others].T)  # (C-1, N)
            self._before_true = (others < y[:, None]).T.contiguous()  # (C-1, N) column c is a class before y
            width = out - 1
        else:
            rows = proj.permute(1, 2, 0)  # (P, out, N): path p's head outputs H_p, class-major
            bias_rows = bias[:, None].expand(out, n)  # (out, N)
            width = out
        rows = rows.reshape(p, width * n)
        self._bias_row = bias_rows.reshape(width * n)  # (width·N,)
        b = self.low_bits
        low_bits = self._bits(torch.arange(2**b, device=self.device), b).to(self.dtype)  # (L, b)
        self._high_rows = rows[: p - b]  # (P-b, width·N)
        self._low_sum = low_bits @ rows[p - b :]  # (L, width·N): S_low of every low combination
        self._fold_bias = self._kind != "regression"
        if self._fold_bias:
            # classes need only S + |m|·bias, and |m|·bias = |low|·bias + |high|·bias: each part
            # carries its share, so a mask costs one add
            self._low_sum += low_bits.sum(dim=1, keepdim=True) * self._bias_row  # (L, width·N)
            self._high_rows = self._high_rows + self._bias_row  # (P-b, width·N): each high path adds one bias
        self._n, self._width = n, width

    # --- scoring ----------------------------------------------------------------------------------

    def steps(self) -> Iterator[tuple[int, int]]:
        """The ranges of high parts, ``[h0, h1)``, one per step, in counting order."""
        highs = 2 ** (self.n_paths - self.low_bits)
        for h0 in range(0, highs, self.highs_per_step):
            yield h0, min(h0 + self.highs_per_step, highs)

    @property
    def n_steps(self) -> int:
        highs = 2 ** (self.n_paths - self.low_bits)
        return -(-highs // self.highs_per_step)

    @torch.no_grad()
    def score_step(self, h0: int, h1: int) -> Chunk:
        """Every mask whose high part is in ``[h0, h1)``: ``(h1 - h0) · 2**low_bits`` masks."""
        b = self.low_bits
        dev = self.device
        highs = torch.arange(h0, h1, device=dev)  # (H,)
        high_bits = self._bits(highs, self.n_paths - b)  # (H, P-b)
        masks = (highs[:, None] << b) | torch.arange(2**b, device=dev)  # (H, L)
        high_flops = (high_bits * self._high_path_cost).sum(dim=1)  # (H,)
        high_touch = self._touched(high_bits, self._high_touch)  # (H,)
        touched = high_touch[:, None] | self._low_touch  # (H, L)
        flops = self._shared + high_flops[:, None] + self._low_path_flops + self._modality_cost[touched]  # (H, L)
        counts = high_bits.sum(dim=1)[:, None] + self._low_count  # (H, L) |m|
        masks, flops, counts = masks.reshape(-1), flops.reshape(-1), counts.reshape(-1)
        if self.method == "linear-blocks":
            values = self._linear_values(high_bits, counts)
        else:
            values = self._general_values(masks)
        values = torch.where(counts > 0, values, torch.full_like(values, math.nan))  # the all-zero mask
        return Chunk(masks=masks, values=values, flops=flops)

    def _linear_values(self, high_bits: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        high_sum = high_bits.to(self.dtype) @ self._high_rows  # (H, width·N): S_high
        total = high_sum[:, None, :] + self._low_sum[None]  # (H, L, width·N): S of every mask
        total = total.view(-1, self._width, self._n)  # (M, width, N)
        if self._kind == "regression":
            safe = counts.clamp(min=1).to(self.dtype)  # (M,) |m|; the all-zero mask is dropped later
            predictions = total[:, 0, :] / safe[:, None] + self._bias_row[None, :]  # (M, N)
            return batch_metric(predictions, self.labels, self.metric)
        # (the bias is folded into the sums: total is S + |m|·bias)
        if self._kind == "accuracy":
            return self._accuracy(total)
        # class ids as argmax gives them (the first maximum), from one amax: ``torch.argmax``
        # over a small middle axis is many times slower on the CPU
        top = total.amax(dim=1, keepdim=True)  # (M, 1, N)
        rank = torch.arange(self._width, 0, -1, device=self.device, dtype=torch.int16)[None, :, None]  # C..1
        predictions = self._width - ((total == top) * rank).amax(dim=1).long()  # (M, N)
        return batch_metric(predictions, self.labels, self.metric)

    def _accuracy(self, margins: torch.Tensor) -> torch.Tensor:
        """Accuracy from the margins ``|m|·(logit_y - logit_c)`` (M, C-1, N): argmax picks y iff
        every margin is positive, but a zero margin to a class after y (the first maximum wins)."""
        low = margins.amin(dim=1)  # (M, N)
        correct = low > 0
        ties = (low == 0).nonzero()  # (T, 2) rare: an exact tie between y and another class
        if len(ties):
            m, n = ties[:, 0], ties[:, 1]
            zero_before = ((margins[m, :, n] == 0) & self._before_true[:, n].T).any(dim=1)  # (T,)
            correct[m, n] = ~zero_before
        # the same number as metrics.batch_metric's accuracy: the mean of the 0/1 hits
        return correct.to(torch.float64).mean(dim=1)

    def _general_values(self, masks: torch.Tensor) -> torch.Tensor:
        """``score_masks`` itself on the step's masks (the all-zero mask left out: NaN)."""
        real = masks != 0
        bits = self._bits(masks[real], self.n_paths).to(torch.float32)  # (M', P)
        predictions = predict_masks(self.model, self.cache, bits)  # (M', N, out)
        if self.cache.task == "regression":
            predictions = predictions.squeeze(-1)
        values = torch.full(masks.shape, math.nan, dtype=torch.float64, device=self.device)
        values[real] = batch_metric(predictions.to(self.device), self.labels, self.metric)
        return values

    # --- the whole space --------------------------------------------------------------------------

    def timed_sample(self, seconds: float = 2.0, max_steps: int = 20) -> tuple[float, list[Chunk]]:
        """Score the first steps for about ``seconds`` (at least one): the measured masks per
        second, and the chunks (so that their work is not lost)."""
        chunks: list[Chunk] = []
        start = time.perf_counter()
        scored = 0
        for h0, h1 in self.steps():
            chunk = self.score_step(h0, h1)
            _sync(self.device)
            chunks.append(chunk)
            scored += len(chunk.masks)
            elapsed = time.perf_counter() - start
            if elapsed >= seconds or len(chunks) >= max_steps:
                break
        elapsed = max(time.perf_counter() - start, 1e-9)
        return scored / elapsed, chunks

    def run(self, *, progress: Callable[[int], None] | None = None, done: list[Chunk] | None = None) -> ExhaustiveResult:
        """Score every mask and return the exact front. ``done``: chunks already scored (from
        ``timed_sample``), in order from the first step; ``progress(n)`` after each step."""
        front = RunningFront(maximize=self.maximize)
        start = time.perf_counter()
        skip = len(done or [])
        for chunk in done or []:
            front.update(chunk.flops, chunk.values, chunk.masks)
            if progress is not None:
                progress(len(chunk.masks))
        for i, (h0, h1) in enumerate(self.steps()):
            if i < skip:
                continue
            chunk = self.score_step(h0, h1)
            front.update(chunk.flops, chunk.values, chunk.masks)
            if progress is not None:
                progress(len(chunk.masks))
        _sync(self.device)
        return ExhaustiveResult(
            front=front.points(),
            n_paths=self.n_paths,
            masks=self.total,
            metric=self.metric,
            seconds=time.perf_counter() - start,
            method=self.method,
            device=str(self.device),
            dtype=str(self.dtype).removeprefix("torch.") if self.method == "linear-blocks" else "float32",
        )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def exhaustive_front(model: Supernet, cache: PathCache, metric: str, flop_table: FlopTable, **options) -> ExhaustiveResult:
    """The exact front over all ``2**P - 1`` masks (``ExhaustiveScorer`` with ``options``)."""
    return ExhaustiveScorer(model, cache, metric, flop_table, **options).run()
