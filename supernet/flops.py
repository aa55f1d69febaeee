"""FLOPs of subnets, counted by fvcore on the masked model for one sample.

fvcore counts one multiply-add as one FLOP and gives ``aten::scaled_dot_product_attention`` no
cost unless a handle is registered: ``sdpa_flop_jit`` counts ``Lq·Lk·(E + Ev)`` per batch and head
(the ``Q·Kᵀ`` and ``softmax·V`` matmuls). The model computes attention with SDPA only (never
``nn.MultiheadAttention``, whose eval-mode fused path fvcore would also miss).

Costs are additive: a mask costs ``shared`` (the head) + the embedding of every modality some
active path touches + each active path. ``FlopTable`` holds those numbers, measured once on the
full model with fvcore's per-module counts, and prices any mask at once;
``tests/test_flops.py`` checks the table against fvcore on the masked model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from fvcore.nn import FlopCountAnalysis
from fvcore.nn.jit_handles import get_shape
from torch import nn

from supernet.model import Supernet
from supernet.paths import path_pairs, touched_modalities


def sdpa_flop_jit(inputs: list, outputs: list) -> int:
    """fvcore handle for ``aten::scaled_dot_product_attention``: ``B·H·Lq·Lk·(E + Ev)``."""
    q, k, v = (get_shape(x) for x in inputs[:3])
    *batch, lq, e = q
    lk, ev = k[-2], v[-1]
    n = 1
    for b in batch:
        n *= b
    return n * lq * lk * (e + ev)


class _MaskedForward(nn.Module):
    """Traceable wrapper: tensors in, the masked subnet's output out."""

    def __init__(self, model: Supernet, mask: Sequence[int]) -> None:
        super().__init__()
        self.model = model
        self.mask = list(mask)

    def forward(self, *features: torch.Tensor) -> torch.Tensor:
        return self.model(list(features), self.mask)


def example_inputs(model: Supernet) -> tuple[torch.Tensor, ...]:
    """One sample of every modality at full length."""
    device = next(model.parameters()).device
    return tuple(
        torch.zeros((1, m.length, m.dim) if m.is_sequence else (1, m.dim), device=device)
        for m in model.spec.modalities
    )


def _analysis(model: Supernet, mask: Sequence[int]) -> FlopCountAnalysis:
    was_training = model.training
    model.eval()
    analysis = FlopCountAnalysis(_MaskedForward(model, mask), example_inputs(model))
    analysis.set_op_handle("aten::scaled_dot_product_attention", sdpa_flop_jit)
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    analysis.total()  # run the trace now, in eval mode
    model.train(was_training)
    return analysis


def count_flops(model: Supernet, mask: Sequence[int]) -> int:
    """FLOPs (multiply-adds) of the masked subnet on one sample, straight from fvcore."""
    return int(_analysis(model, mask).total())


@dataclass(frozen=True)
class FlopTable:
    """Per-part FLOPs of one sample. ``path[p]`` is path p's blocks, ``modality[m]`` the embedding
    of modality m (paid once if any active path touches m), ``shared`` the rest (the head)."""

    shared: int
    modality: tuple[int, ...]
    path: tuple[int, ...]
    path_names: tuple[str, ...]
    modality_names: tuple[str, ...]

    def flops(self, mask: Sequence[int]) -> int:
        bits = [int(b) for b in mask]
        k = len(self.modality)
        total = self.shared + sum(c for c, b in zip(self.path, bits) if b)
        return total + sum(self.modality[m] for m in touched_modalities(bits, k))

    def mflops(self, mask: Sequence[int]) -> float:
        return self.flops(mask) / 1e6

    def mflops_many(self, masks: torch.Tensor) -> torch.Tensor:
        """MFLOPs of many masks ``(M, P)`` at once -> ``(M,)`` float64."""
        masks = masks.to(torch.float64)
        path = torch.tensor(self.path, dtype=torch.float64)
        total = self.shared + masks @ path
        k = len(self.modality)
        touch = torch.zeros(masks.shape[1], k, dtype=torch.float64)  # (P, k) path touches modality
        for p, (i, j) in enumerate(path_pairs(k)):
            touch[p, i] = touch[p, j] = 1.0
        used = ((masks @ touch) > 0).to(torch.float64)  # (M, k)
        return (total + used @ torch.tensor(self.modality, dtype=torch.float64)) / 1e6

    def as_dict(self) -> dict:
        return {
            "shared": self.shared,
            "modalities": dict(zip(self.modality_names, self.modality)),
            "paths": dict(zip(self.path_names, self.path)),
        }


def flop_table(model: Supernet) -> FlopTable:
    """Measure the table once, with fvcore's per-module counts on the full model."""
    full = [1] * model.num_paths
    analysis = _analysis(model, full)
    by_module = analysis.by_module()
    path = tuple(int(by_module.get(f"model.paths.{p}", 0)) for p in range(model.num_paths))
    modality = tuple(int(by_module.get(f"model.embeddings.{m}", 0)) for m in range(model.k))
    shared = int(analysis.total()) - sum(path) - sum(modality)
    return FlopTable(
        shared=shared,
        modality=modality,
        path=path,
        path_names=tuple(model.path_names),
        modality_names=tuple(m.name for m in model.spec.modalities),
    )
