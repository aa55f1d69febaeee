"""The MRO supernet, whole in this one file.

A cross-modal transformer that holds one attention path for every ordered pair of modalities
(see ``supernet.paths`` for the order and direction convention). A mask picks the active paths;
only those run. Reading order: attention -> MLP -> block -> path -> embedding -> config -> model.

    inputs (one tensor per modality)
      └─ ModalityEmbedding  project to width d, add position; vectors are cut into tokens
          └─ Path i->j      layers_per_path x CrossModalBlock(queries from j, keys/values from i)
              └─ pool over j's steps                      -> (B, d) per active path
                  └─ average over the active paths -> head -> logits (B, C) or value (B, 1)

Because a path's pooled output depends only on the inputs, never on the mask, the pooled outputs
of all paths can be computed once and any mask scored from them exactly (``supernet.scoring``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from supernet.config import ModelConfig
from supernet.data.dataset import ModalitySpec
from supernet.errors import ConfigError
from supernet.paths import path_names, path_pairs, touched_modalities


class CrossAttention(nn.Module):
    """Multi-head attention of a target sequence (queries) over a source sequence (keys, values)."""

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(width, width)
        self.key_value = nn.Linear(width, 2 * width)
        self.proj = nn.Linear(width, width)
        self.dropout = dropout

    def _qkv(self, x: torch.Tensor, source: torch.Tensor):
        B, Lq, C = x.shape
        Lk = source.shape[1]
        hd = C // self.heads
        q = self.query(x).view(B, Lq, self.heads, hd).transpose(1, 2)  # (B, H, Lq, hd)
        k, v = self.key_value(source).split(C, dim=2)
        k = k.view(B, Lk, self.heads, hd).transpose(1, 2)  # (B, H, Lk, hd)
        v = v.view(B, Lk, self.heads, hd).transpose(1, 2)  # (B, H, Lk, hd)
        return q, k, v

    def forward(
        self, x: torch.Tensor, source: torch.Tensor, source_keep: torch.Tensor | None
    ) -> torch.Tensor:
        B, Lq, C = x.shape
        q, k, v = self._qkv(x, source)
        attn_mask = None if source_keep is None else source_keep[:, None, None, :]  # (B, 1, 1, Lk)
        dropout_p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p)
        return self.proj(y.transpose(1, 2).reshape(B, Lq, C))  # (B, Lq, C)

    @torch.no_grad()
    def weights(
        self, x: torch.Tensor, source: torch.Tensor, source_keep: torch.Tensor | None
    ) -> torch.Tensor:
        """The attention probabilities ``(B, H, Lq, Lk)``, for the relation-graph statistics."""
        q, k, _ = self._qkv(x, source)
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
        if source_keep is not None:
            scores = scores.masked_fill(~source_keep[:, None, None, :], float("-inf"))
        return scores.softmax(dim=-1)


class MLP(nn.Module):
    def __init__(self, width: int, mult: int, dropout: float) -> None:
        super().__init__()
        self.fc = nn.Linear(width, mult * width)
        self.proj = nn.Linear(mult * width, width)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(F.gelu(self.fc(x))))


class CrossModalBlock(nn.Module):
    """Pre-LayerNorm transformer block: cross-attention, then feed-forward, each residual."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.ln_query = nn.LayerNorm(cfg.width)
        self.ln_source = nn.LayerNorm(cfg.width)
        self.attn = CrossAttention(cfg.width, cfg.heads, cfg.dropout)
        self.ln_mlp = nn.LayerNorm(cfg.width)
        self.mlp = MLP(cfg.width, cfg.ffn_mult, cfg.dropout)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, source: torch.Tensor, source_keep: torch.Tensor | None):
        x = x + self.dropout(self.attn(self.ln_query(x), self.ln_source(source), source_keep))
        return x + self.mlp(self.ln_mlp(x))


class Path(nn.Module):
    """Path i->j: target j reads source i through a stack of blocks, then is pooled over time."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(CrossModalBlock(cfg) for _ in range(cfg.layers_per_path))
        self.ln_out = nn.LayerNorm(cfg.width)
        self.pooling = cfg.pooling

    def forward(
        self,
        target: torch.Tensor,  # (B, Lj, C)
        source: torch.Tensor,  # (B, Li, C)
        target_keep: torch.Tensor | None,  # (B, Lj) True on real steps
        source_keep: torch.Tensor | None,  # (B, Li)
    ) -> torch.Tensor:
        x = target
        for block in self.blocks:
            x = block(x, source, source_keep)
        x = self.ln_out(x)  # (B, Lj, C)
        return pool(x, target_keep, self.pooling)  # (B, C)

    def attention_weights(self, target, source, source_keep) -> torch.Tensor:
        """Attention probabilities of the first block, ``(B, H, Lj, Li)``."""
        block = self.blocks[0]
        return block.attn.weights(block.ln_query(target), block.ln_source(source), source_keep)


def pool(x: torch.Tensor, keep: torch.Tensor | None, how: str) -> torch.Tensor:
    """Pool ``(B, L, C)`` over L, ignoring padded steps."""
    if how == "max":
        if keep is not None:
            x = x.masked_fill(~keep[:, :, None], float("-inf"))
        return x.amax(dim=1)
    if keep is None:
        return x.mean(dim=1)
    w = keep.to(x.dtype)[:, :, None]  # (B, L, 1)
    return (x * w).sum(dim=1) / w.sum(dim=1).clamp_min(1.0)


class ModalityEmbedding(nn.Module):
    """Project one modality to the model width and add learned positions.

    A vector modality ``(B, d)`` is zero-padded to ``T * ceil(d / T)`` features and cut into
    ``T = vector_tokens`` tokens of ``ceil(d / T)`` features each, so that attention over it has
    T keys instead of one (softmax over a single key is always 1).
    """

    def __init__(self, spec: ModalitySpec, cfg: ModelConfig) -> None:
        super().__init__()
        self.spec = spec
        if spec.is_sequence:
            self.tokens, self.chunk = spec.length, spec.dim
        else:
            self.tokens = min(cfg.vector_tokens, spec.dim) if spec.dim > 1 else 1
            self.chunk = math.ceil(spec.dim / self.tokens)
        self.proj = nn.Linear(self.chunk, cfg.width)
        self.position = nn.Parameter(torch.zeros(self.tokens, cfg.width))
        nn.init.normal_(self.position, std=0.02)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.spec.is_sequence:  # (B, d) -> (B, T, chunk)
            pad = self.tokens * self.chunk - x.shape[1]
            if pad:
                x = F.pad(x, (0, pad))
            x = x.view(x.shape[0], self.tokens, self.chunk)
        L = x.shape[1]
        return self.dropout(self.proj(x) + self.position[:L])  # (B, L, C)


@dataclass(frozen=True)
class SupernetSpec:
    """What the supernet needs to know of the data: modalities in study order and the output."""

    modalities: tuple[ModalitySpec, ...]
    task: str  # "classification" | "regression"
    output_dim: int  # classes, or 1 for regression


class Supernet(nn.Module):
    def __init__(self, spec: SupernetSpec, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.width % cfg.heads:
            raise ConfigError(f"[model] width {cfg.width} must be divisible by heads {cfg.heads}")
        self.spec, self.cfg = spec, cfg
        self.k = len(spec.modalities)
        self.pairs = path_pairs(self.k)
        self.path_names = path_names([m.name for m in spec.modalities])
        self.embeddings = nn.ModuleList(ModalityEmbedding(m, cfg) for m in spec.modalities)
        self.paths = nn.ModuleList(Path(cfg) for _ in self.pairs)
        if cfg.head == "linear":
            self.head: nn.Module = nn.Linear(cfg.width, spec.output_dim)
        else:
            self.head = nn.Sequential(
                nn.LayerNorm(cfg.width),
                nn.Linear(cfg.width, cfg.width),
                nn.GELU(),
                nn.Dropout(cfg.dropout),
                nn.Linear(cfg.width, spec.output_dim),
            )

    @property
    def num_paths(self) -> int:
        return len(self.pairs)

    # 1. embed the modalities an active path touches
    def embed(
        self,
        features: Sequence[torch.Tensor],
        lengths: Sequence[torch.Tensor | None],
        modalities: Sequence[int],
    ) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor | None]]:
        h, keep = {}, {}
        for m in modalities:
            h[m] = self.embeddings[m](features[m])  # (B, L_m, C)
            n = lengths[m] if lengths else None
            keep[m] = None if n is None else torch.arange(h[m].shape[1], device=n.device) < n[:, None]
        return h, keep

    # 2. run the selected paths and pool each over its target's steps
    def pooled_paths(
        self,
        features: Sequence[torch.Tensor],
        lengths: Sequence[torch.Tensor | None] | None = None,
        paths: Sequence[int] | None = None,
    ) -> torch.Tensor:
        """Pooled outputs ``(B, len(paths), C)`` of the given paths (all paths by default)."""
        paths = list(range(self.num_paths)) if paths is None else list(paths)
        used = sorted({m for p in paths for m in self.pairs[p]})
        h, keep = self.embed(features, lengths or [None] * self.k, used)
        out = []
        for p in paths:
            i, j = self.pairs[p]  # information flows from source i into target j
            out.append(self.paths[p](h[j], h[i], keep[j], keep[i]))
        return torch.stack(out, dim=1)

    # 3. average the active paths and apply the head
    def forward(
        self,
        features: Sequence[torch.Tensor],
        mask: Sequence[int] | torch.Tensor,
        lengths: Sequence[torch.Tensor | None] | None = None,
    ) -> torch.Tensor:
        """Output of the subnet a mask selects: logits ``(B, C)`` or regression values ``(B, 1)``.

        Inactive paths are never called, so they cost nothing and get no gradient.
        """
        active = [p for p, bit in enumerate(_bits(mask)) if bit]
        if not active:
            raise ConfigError("the all-zero mask selects no path; set at least one bit to 1")
        pooled = self.pooled_paths(features, lengths, active)  # (B, A, C)
        return self.head(pooled.mean(dim=1))

    def forward_from_pooled(self, pooled: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Outputs of many subnets from pooled path outputs: ``(B, P, C)``, ``(M, P)`` -> ``(M, B, out)``.

        Exactly what ``forward`` computes for each mask, since a path's pooled output does not
        depend on which other paths are active.
        """
        masks = masks.to(pooled.dtype)
        weights = masks / masks.sum(dim=1, keepdim=True)  # (M, P): mean over the active paths
        averaged = torch.einsum("mp,bpc->mbc", weights, pooled)  # (M, B, C)
        return self.head(averaged)

    def forward_per_sample(self, pooled: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """One subnet per sample: pooled path outputs ``(B, P, C)``, masks ``(B, P)`` -> ``(B, out)``,
        row ``b`` exactly what ``forward`` computes for sample ``b`` with mask ``b``."""
        weights = masks / masks.sum(dim=1, keepdim=True)  # (B, P): mean over each sample's paths
        return self.head(torch.einsum("bp,bpc->bc", weights.to(pooled.dtype), pooled))

    def modalities_of(self, mask: Sequence[int]) -> list[int]:
        return touched_modalities(_bits(mask), self.k)

    def num_parameters(self, mask: Sequence[int] | None = None) -> int:
        """Parameters of the subnet a mask selects (of the whole supernet when no mask is given)."""
        if mask is None:
            return sum(p.numel() for p in self.parameters())
        bits = _bits(mask)
        count = sum(p.numel() for p in self.head.parameters())
        for m in touched_modalities(bits, self.k):
            count += sum(p.numel() for p in self.embeddings[m].parameters())
        for p, bit in enumerate(bits):
            if bit:
                count += sum(q.numel() for q in self.paths[p].parameters())
        return count


def _bits(mask: Sequence[int] | torch.Tensor) -> list[int]:
    if isinstance(mask, torch.Tensor):
        return [int(b) for b in mask.tolist()]
    return [int(b) for b in mask]
