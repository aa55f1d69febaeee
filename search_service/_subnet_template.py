"""The source of ``model.py`` in an exported subnet (``mro-search export``).

A standalone copy of the supernet's building blocks (``supernet.model``) that imports nothing
but torch and the standard library, holding only the paths a mask keeps, the embeddings of the
modalities they touch and the head. Parameter names match the supernet's (``paths.3.…`` is
path 3 in mask order), so the exported ``weights.pt`` is a subset of the supernet's state_dict.
``tests/test_export.py`` checks that its outputs equal the supernet's masked forward pass.
"""

MODEL_PY = r'''"""A subnet found by mro-search, standalone: it needs torch and nothing else.

    import sys
    sys.path.insert(0, "DIR")   # the folder holding this file, config.json and weights.pt
    import model
    m = model.load("DIR")       # eval mode, on the CPU (model.load(DIR, map_location="cuda"))
    out = m({"text": x_text, "audio": x_audio})   # only the modalities the subnet uses

A path ``i->j`` is one cross-modal attention stack in which information flows from source
modality i into target modality j (j gives the queries, i the keys and values). Each path's
output is pooled over j's steps, the pooled outputs are averaged and a shared head gives
class logits (B, C) or one regression value (B, 1). Inputs: a sequence modality is float
(B, L, d), a vector modality (B, d); optional ``lengths`` (int64 (B,), per sequence modality)
mark padded steps. config.json lists every modality's shape.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path as _FilePath

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Subnet", "load"]


class CrossAttention(nn.Module):
    """Multi-head attention of a target sequence (queries) over a source sequence (keys, values)."""

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(width, width)
        self.key_value = nn.Linear(width, 2 * width)
        self.proj = nn.Linear(width, width)
        self.dropout = dropout

    def forward(self, x, source, source_keep):
        B, Lq, C = x.shape
        Lk = source.shape[1]
        hd = C // self.heads
        q = self.query(x).view(B, Lq, self.heads, hd).transpose(1, 2)  # (B, H, Lq, hd)
        k, v = self.key_value(source).split(C, dim=2)
        k = k.view(B, Lk, self.heads, hd).transpose(1, 2)  # (B, H, Lk, hd)
        v = v.view(B, Lk, self.heads, hd).transpose(1, 2)  # (B, H, Lk, hd)
        attn_mask = None if source_keep is None else source_keep[:, None, None, :]  # (B, 1, 1, Lk)
        dropout_p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p)
        return self.proj(y.transpose(1, 2).reshape(B, Lq, C))  # (B, Lq, C)


class MLP(nn.Module):
    def __init__(self, width: int, mult: int, dropout: float) -> None:
        super().__init__()
        self.fc = nn.Linear(width, mult * width)
        self.proj = nn.Linear(mult * width, width)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        return self.dropout(self.proj(F.gelu(self.fc(x))))


class CrossModalBlock(nn.Module):
    """Pre-LayerNorm transformer block: cross-attention, then feed-forward, each residual."""

    def __init__(self, width: int, heads: int, ffn_mult: int, dropout: float) -> None:
        super().__init__()
        self.ln_query = nn.LayerNorm(width)
        self.ln_source = nn.LayerNorm(width)
        self.attn = CrossAttention(width, heads, dropout)
        self.ln_mlp = nn.LayerNorm(width)
        self.mlp = MLP(width, ffn_mult, dropout)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, source, source_keep):
        x = x + self.dropout(self.attn(self.ln_query(x), self.ln_source(source), source_keep))
        return x + self.mlp(self.ln_mlp(x))


def pool(x, keep, how: str):
    """Pool (B, L, C) over L, ignoring padded steps."""
    if how == "max":
        if keep is not None:
            x = x.masked_fill(~keep[:, :, None], float("-inf"))
        return x.amax(dim=1)
    if keep is None:
        return x.mean(dim=1)
    w = keep.to(x.dtype)[:, :, None]  # (B, L, 1)
    return (x * w).sum(dim=1) / w.sum(dim=1).clamp_min(1.0)


class Path(nn.Module):
    """Path i->j: target j reads source i through a stack of blocks, then is pooled over time."""

    def __init__(self, layers: int, width: int, heads: int, ffn_mult: int, dropout: float, pooling: str) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(CrossModalBlock(width, heads, ffn_mult, dropout) for _ in range(layers))
        self.ln_out = nn.LayerNorm(width)
        self.pooling = pooling

    def forward(self, target, source, target_keep, source_keep):
        x = target
        for block in self.blocks:
            x = block(x, source, source_keep)
        return pool(self.ln_out(x), target_keep, self.pooling)  # (B, C)


class ModalityEmbedding(nn.Module):
    """Project one modality to the model width and add learned positions; a vector (B, d) is
    zero-padded to tokens * chunk features and cut into ``tokens`` tokens of ``chunk`` features."""

    def __init__(self, sequence: bool, tokens: int, chunk: int, width: int, dropout: float) -> None:
        super().__init__()
        self.sequence, self.tokens, self.chunk = sequence, tokens, chunk
        self.proj = nn.Linear(chunk, width)
        self.position = nn.Parameter(torch.zeros(tokens, width))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        if not self.sequence:  # (B, d) -> (B, T, chunk)
            pad = self.tokens * self.chunk - x.shape[1]
            if pad:
                x = F.pad(x, (0, pad))
            x = x.view(x.shape[0], self.tokens, self.chunk)
        L = x.shape[1]
        return self.dropout(self.proj(x) + self.position[:L])  # (B, L, C)


class Subnet(nn.Module):
    """The exported subnet, built from config.json."""

    def __init__(self, config: dict) -> None:
        super().__init__()
        cfg = config["model"]
        width, dropout = cfg["width"], cfg["dropout"]
        self.config = config
        self.task = config["task"]
        self.modality_names = [m["name"] for m in config["modalities"]]  # study order, all of them
        self._index = {name: i for i, name in enumerate(self.modality_names)}
        self.embeddings = nn.ModuleDict(
            {str(m["index"]): ModalityEmbedding(m["length"] is not None, m["tokens"], m["chunk"], width, dropout)
             for m in config["modalities"] if m["used"]}
        )
        self.pairs = [(p["index"], p["source"], p["target"]) for p in config["paths"]]  # mask order
        self.paths = nn.ModuleDict(
            {str(p): Path(cfg["layers_per_path"], width, cfg["heads"], cfg["ffn_mult"], dropout, cfg["pooling"])
             for p, _, _ in self.pairs}
        )
        out = config["output_dim"]
        if cfg["head"] == "linear":
            self.head = nn.Linear(width, out)
        else:
            self.head = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.GELU(), nn.Dropout(dropout), nn.Linear(width, out))

    @property
    def input_names(self) -> list[str]:
        """The modalities this subnet reads (the others may be left out of the inputs)."""
        return [self.modality_names[int(m)] for m in self.embeddings]

    def _by_index(self, values, what: str) -> dict:
        if values is None:
            return {}
        if isinstance(values, Mapping):
            unknown = [name for name in values if name not in self._index]
            if unknown:
                raise KeyError(f"unknown modality {unknown[0]!r} in {what}; modalities are {self.modality_names}")
            return {self._index[name]: v for name, v in values.items() if v is not None}
        if isinstance(values, Sequence) and not isinstance(values, torch.Tensor):
            if len(values) != len(self.modality_names):
                raise ValueError(f"{what} as a sequence needs one entry per modality {self.modality_names} (None where unused)")
            return {i: v for i, v in enumerate(values) if v is not None}
        raise TypeError(f"{what} must be a dict name -> tensor or a list in the order {self.modality_names}")

    def forward(self, features, lengths=None):
        """Logits (B, C) or regression values (B, 1) of a batch.

        ``features``: dict modality name -> tensor (the modalities in ``input_names`` suffice),
        or a list of all modalities' tensors in study order. ``lengths``: the same form, int64
        (B,) per variable-length sequence modality, or None.
        """
        x, n = self._by_index(features, "features"), self._by_index(lengths, "lengths")
        h, keep = {}, {}
        for key, embed in self.embeddings.items():
            m = int(key)
            if m not in x:
                raise KeyError(f"missing input for modality {self.modality_names[m]!r}; this subnet reads {self.input_names}")
            h[m] = embed(x[m])  # (B, L_m, C)
            steps = n.get(m)
            keep[m] = None if steps is None else torch.arange(h[m].shape[1], device=steps.device) < steps[:, None]
        pooled = [self.paths[str(p)](h[j], h[i], keep[j], keep[i]) for p, i, j in self.pairs]  # i informs j
        return self.head(torch.stack(pooled, dim=1).mean(dim=1))  # mean over the active paths

    @torch.no_grad()
    def predict(self, features, lengths=None):
        """Class ids (B,) for classification, values (B,) for regression."""
        out = self(features, lengths)
        return out.argmax(dim=-1) if self.task == "classification" else out.squeeze(-1)


def load(directory=None, map_location: str | torch.device = "cpu") -> Subnet:
    """The subnet in ``directory`` (default: this file's folder), weights loaded, in eval mode."""
    folder = _FilePath(directory) if directory is not None else _FilePath(__file__).resolve().parent
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    model = Subnet(config)
    state = torch.load(folder / "weights.pt", map_location=map_location, weights_only=True)
    model.load_state_dict(state)  # strict: every parameter present, nothing else
    return model.to(map_location).eval()

'''
