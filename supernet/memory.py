"""How much memory a study needs, estimated before anything is allocated, and what the machine has.

A width of a billion, a label of 10^12 or an ``.npz`` header that declares 10^12 rows would
otherwise end in a ``MemoryError`` traceback (or the kernel's OOM killer) after trying to allocate
terabytes. The estimates here are arithmetic on shapes, never allocations: the parameter count is
exact (a test checks it against the real model), the training activations a rough upper bound of
what one step keeps for its backward pass.

Two limits: :func:`total_bytes` (what the machine could ever hold: ``validate`` refuses a study
above it, whatever else runs) and :func:`available_bytes` (what it can hold now: the loaders and
training refuse to start above it). Both read ``/proc/meminfo`` and the cgroup's limit (a
container's ``memory.max``), else ``os.sysconf``; no dependency.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from supernet.errors import ResourceError

if TYPE_CHECKING:  # no imports at run time: the data loaders import this module
    from supernet.config import ModelConfig, TrainConfig
    from supernet.data.dataset import ModalitySpec

FLOAT_BYTES = 4  # float32 features, weights and activations
ADAMW_BYTES_PER_PARAMETER = 4 * FLOAT_BYTES  # weight, gradient, two moments
_CGROUP = Path("/sys/fs/cgroup")


def _meminfo(key: str) -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            name, _, value = line.partition(":")
            if name == key:
                return int(value.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_limit() -> tuple[int | None, int]:
    """(limit, usage) of this process's cgroup (v2), or (None, 0) without one."""
    try:
        limit = (_CGROUP / "memory.max").read_text().strip()
        if limit == "max":
            return None, 0
        usage = int((_CGROUP / "memory.current").read_text().strip())
        return int(limit), usage
    except (OSError, ValueError):
        return None, 0


def total_bytes() -> int | None:
    """Memory the machine (or its container) could ever give this process; None if unknown."""
    total = _meminfo("MemTotal")
    if total is None:
        try:
            total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, AttributeError):
            total = None
    limit, _ = _cgroup_limit()
    candidates = [v for v in (total, limit) if v]
    return min(candidates) if candidates else None


def available_bytes() -> int | None:
    """Memory this process can allocate now without swapping; None if unknown."""
    available = _meminfo("MemAvailable")
    if available is None:
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, AttributeError):
            available = None
    limit, usage = _cgroup_limit()
    candidates = [v for v in (available, None if limit is None else max(0, limit - usage)) if v is not None]
    return min(candidates) if candidates else None


def gib(n: float) -> str:
    """``n`` bytes in words: ``1.5 GiB``, ``300 MiB``, ``4.0e+03 TiB``."""
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20)):
        if n >= size:
            value = n / size
            return f"{value:.1f} {unit}" if value < 10_000 else f"{value:.1e} {unit}"
    return f"{n / 2**10:.0f} KiB"


def require_memory(need: int, *, what: str, fix: str, limit: int | None = None, now: bool = True) -> None:
    """Raise :class:`ResourceError` when ``need`` bytes exceed ``limit`` (default: what the
    machine has available now, or in total with ``now=False``). Unknown limits let it pass."""
    if limit is None:
        limit = available_bytes() if now else total_bytes()
    if limit is not None and need > limit:
        have = "available now" if now else "in total"
        raise ResourceError(f"{what} needs about {gib(need)} of memory but this machine has {gib(limit)} {have}; {fix}")


# --- the supernet ------------------------------------------------------------------------------------


def tokens(spec: ModalitySpec, cfg: ModelConfig) -> tuple[int, int]:
    """(tokens, features per token) of a modality once embedded (``supernet.model.ModalityEmbedding``)."""
    if spec.is_sequence:
        return int(spec.length or 0), spec.dim
    n = min(cfg.vector_tokens, spec.dim) if spec.dim > 1 else 1
    return n, math.ceil(spec.dim / n)


def parameter_count(modalities: Sequence[ModalitySpec], output_dim: int, cfg: ModelConfig) -> int:
    """Parameters of the whole supernet (``Supernet.num_parameters()``), without building it."""
    C, f = cfg.width, cfg.ffn_mult
    k = len(modalities)
    block = (4 + 2 * f) * C * C + (11 + f) * C  # 3 LayerNorms, attention (q, kv, proj), MLP
    path = cfg.layers_per_path * block + 2 * C  # blocks and the output LayerNorm
    embeddings = 0
    for spec in modalities:
        n, chunk = tokens(spec, cfg)
        embeddings += chunk * C + C + n * C  # projection and positions
    head = C * output_dim + output_dim
    if cfg.head == "mlp":
        head += 2 * C + C * C + C
    return embeddings + k * (k - 1) * path + head


def training_bytes(
    modalities: Sequence[ModalitySpec],
    output_dim: int,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    *,
    train_samples: int | None = None,
) -> int:
    """Memory one training step needs: weights, gradients and AdamW's moments, plus a rough
    upper bound of the activations kept for the backward pass (every path active, the attention
    probabilities materialized)."""
    params = parameter_count(modalities, output_dim, model_cfg)
    B = train_cfg.batch_size if train_samples is None else max(1, min(train_cfg.batch_size, train_samples))
    C, f, H = model_cfg.width, model_cfg.ffn_mult, model_cfg.heads
    steps = [tokens(m, model_cfg)[0] for m in modalities]
    floats = sum(2 * B * n * C for n in steps)  # embeddings
    for i, source in enumerate(steps):
        for j, target in enumerate(steps):
            if i != j:  # path i->j: queries from j, keys and values from i
                floats += model_cfg.layers_per_path * B * (target * C * (7 + 2 * f) + 3 * source * C + 2 * H * target * source)
    live = train_cfg.masks_per_step + 1 if train_cfg.distill > 0 and not train_cfg.per_sample_masks else 1
    return params * ADAMW_BYTES_PER_PARAMETER + live * floats * FLOAT_BYTES


def split_bytes(modalities: Sequence[ModalitySpec], samples: int) -> int:
    """float32 features and int64 labels of ``samples`` samples."""
    per_sample = sum(spec.dim * (spec.length or 1) for spec in modalities) * FLOAT_BYTES + 8
    return samples * per_sample
