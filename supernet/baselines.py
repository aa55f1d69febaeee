"""Fusion baselines of the paper's Table 5: Concat + MLP and EmbraceNet.

Both take the batch format of ``supernet.model.Supernet``: ``features`` is one tensor per
modality in study order, ``(B, L, d)`` for a sequence or ``(B, d)`` for a vector modality, and
``lengths`` one ``(B,)`` int tensor or ``None`` per modality (``None`` for vectors and for
fixed-length sequences; steps past a sample's length are padding). They return logits
``(B, C)`` for classification or one value ``(B, 1)`` for regression, like the supernet's head.

Each modality is first **pooled** over its steps (``supernet.model.pool``: mean or max, padding
ignored; a vector modality is used as it is), so neither baseline models time or cross-modal
interactions: they are the cheap end of the accuracy-FLOPs trade-off.

- ``ConcatMLP``: concatenate the pooled modalities ``(B, sum d)`` and apply an MLP
  (Linear, GELU, dropout, Linear, GELU, dropout, Linear), hidden size ``hidden``
  (default: the model width).
- ``EmbraceNet`` (Choi and Lee, "EmbraceNet: A robust deep learning architecture for multimodal
  classification", Information Fusion 2019): a **docking** layer per modality (Linear to a
  common size ``c``, ReLU), then the **embracement**: for every sample and every one of the
  ``c`` dimensions, one modality is drawn from a multinomial with probabilities ``p`` (uniform
  by default) and that modality's docked value is taken, ``e_i = sum_m r_m,i d_m,i`` with
  ``r_:,i`` one-hot. In training the draw is random (the regularization that makes EmbraceNet
  robust to missing modalities); in eval mode it is replaced by its expectation,
  ``e = sum_m p_m d_m``, so evaluation is deterministic. A small MLP head follows.

FLOPs are counted by fvcore on one sample in eval mode, as ``supernet.flops`` does for subnets
(one multiply-add = one FLOP; elementwise ops are not counted by fvcore's defaults).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from fvcore.nn import FlopCountAnalysis
from torch import nn

from supernet.config import ModelConfig
from supernet.model import SupernetSpec, pool

BASELINES = ("concat_mlp", "embracenet")


def _pooled(
    spec: SupernetSpec,
    features: Sequence[torch.Tensor],
    lengths: Sequence[torch.Tensor | None] | None,
    how: str,
) -> list[torch.Tensor]:
    """One ``(B, d_m)`` tensor per modality: sequences pooled over their real steps."""
    if len(features) != len(spec.modalities):
        raise ValueError(f"expected {len(spec.modalities)} modalities, got {len(features)} feature tensors")
    out = []
    for m, (modality, x) in enumerate(zip(spec.modalities, features)):
        if not modality.is_sequence:
            out.append(x)
            continue
        n = lengths[m] if lengths else None
        keep = None if n is None else torch.arange(x.shape[1], device=x.device) < n[:, None]
        out.append(pool(x, keep, how))
    return out


def _mlp(d_in: int, hidden: int, d_out: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(d_in, hidden),
        nn.GELU(),
        nn.Dropout(dropout),
        nn.Linear(hidden, hidden),
        nn.GELU(),
        nn.Dropout(dropout),
        nn.Linear(hidden, d_out),
    )


class ConcatMLP(nn.Module):
    """Pool each modality, concatenate, MLP."""

    name = "Concat+MLP"

    def __init__(self, spec: SupernetSpec, cfg: ModelConfig, *, hidden: int | None = None) -> None:
        super().__init__()
        self.spec, self.cfg = spec, cfg
        self.pooling = cfg.pooling
        self.hidden = hidden or cfg.width
        self.mlp = _mlp(sum(m.dim for m in spec.modalities), self.hidden, spec.output_dim, cfg.dropout)

    def forward(
        self, features: Sequence[torch.Tensor], lengths: Sequence[torch.Tensor | None] | None = None
    ) -> torch.Tensor:
        x = torch.cat(_pooled(self.spec, features, lengths, self.pooling), dim=1)  # (B, sum d)
        return self.mlp(x)


class EmbraceNet(nn.Module):
    """Docking layers to a common size, multinomial modality selection per dimension, MLP head.

    ``probabilities``: the selection probability of each modality (default uniform); they are
    normalised to sum to 1.
    """

    name = "EmbraceNet"

    def __init__(
        self,
        spec: SupernetSpec,
        cfg: ModelConfig,
        *,
        embrace_size: int | None = None,
        probabilities: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.spec, self.cfg = spec, cfg
        self.pooling = cfg.pooling
        k = len(spec.modalities)
        self.size = embrace_size or cfg.width
        self.docking = nn.ModuleList(nn.Linear(m.dim, self.size) for m in spec.modalities)
        p = torch.full((k,), 1.0 / k) if probabilities is None else torch.as_tensor(probabilities, dtype=torch.float32)
        if p.shape != (k,) or bool((p < 0).any()) or float(p.sum()) <= 0:
            raise ValueError(f"probabilities must be {k} non-negative numbers with a positive sum, got {probabilities}")
        self.register_buffer("probabilities", p / p.sum())
        self.head = _mlp(self.size, self.size, spec.output_dim, cfg.dropout)

    def docked(
        self, features: Sequence[torch.Tensor], lengths: Sequence[torch.Tensor | None] | None = None
    ) -> torch.Tensor:
        """The docked modalities ``(B, k, c)``."""
        pooled = _pooled(self.spec, features, lengths, self.pooling)
        return torch.stack([F.relu(dock(x)) for dock, x in zip(self.docking, pooled)], dim=1)

    def embrace(self, docked: torch.Tensor) -> torch.Tensor:
        """``(B, k, c) -> (B, c)``: a drawn modality per dimension (training) or the expectation."""
        if not self.training:
            return torch.einsum("k,bkc->bc", self.probabilities.to(docked.dtype), docked)
        B, k, c = docked.shape
        choice = torch.multinomial(self.probabilities, B * c, replacement=True).view(B, c)
        selected = F.one_hot(choice, k).permute(0, 2, 1).to(docked.dtype)  # (B, k, c), one-hot over k
        return (selected * docked).sum(dim=1)

    def forward(
        self, features: Sequence[torch.Tensor], lengths: Sequence[torch.Tensor | None] | None = None
    ) -> torch.Tensor:
        return self.head(self.embrace(self.docked(features, lengths)))


def make_baseline(name: str, spec: SupernetSpec, cfg: ModelConfig) -> nn.Module:
    """``"concat_mlp"`` or ``"embracenet"`` with default sizes."""
    if name == "concat_mlp":
        return ConcatMLP(spec, cfg)
    if name == "embracenet":
        return EmbraceNet(spec, cfg)
    raise ValueError(f"unknown baseline {name!r}; known: {', '.join(BASELINES)}")


class _Traced(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *features: torch.Tensor) -> torch.Tensor:
        return self.model(list(features))


def example_inputs(model: nn.Module) -> tuple[torch.Tensor, ...]:
    """One sample of every modality at full length (the model needs a ``spec``)."""
    device = next(model.parameters()).device
    return tuple(
        torch.zeros((1, m.length, m.dim) if m.is_sequence else (1, m.dim), device=device)
        for m in model.spec.modalities
    )


def count_flops(model: nn.Module) -> int:
    """FLOPs (multiply-adds) of one sample in eval mode, counted by fvcore."""
    was_training = model.training
    model.eval()
    try:
        analysis = FlopCountAnalysis(_Traced(model), example_inputs(model))
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        return int(analysis.total())
    finally:
        model.train(was_training)


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
