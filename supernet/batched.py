"""All paths of a supernet as one batched operation.

``Supernet.pooled_paths`` runs the paths one after another: P small kernels per layer. Every path
has the same shape, so the P paths can run as one: their weights stacked along a leading path
axis, the target and source sequences gathered per path, and each linear layer one batched
matrix product (``einsum`` over the path axis), attention one ``scaled_dot_product_attention``
call with the paths folded into the batch. The result is the same ``(B, P, C)`` pooled outputs,
with gradients flowing back to each path's own parameters through the stacking.

Modalities with fewer steps than the longest are padded to it; the padded steps are masked out
of attention (as keys) and of pooling (as queries), exactly as a modality's own padding is. This
is what a GPU wants (few large kernels, static shapes: a per-sample mask is then a tensor input
and a whole training step can be captured in one CUDA graph); on a CPU it gains little.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from supernet.model import Supernet, pool


def _stack(modules: Sequence[torch.nn.Module], name: str) -> torch.Tensor:
    return torch.stack([m.get_parameter(name) for m in modules])


def _linear(x: torch.Tensor, paths, name: str) -> torch.Tensor:
    """``x`` (P, B, L, in) through each path's own ``name`` linear layer -> (P, B, L, out)."""
    w, b = _stack(paths, f"{name}.weight"), _stack(paths, f"{name}.bias")  # (P, out, in), (P, out)
    return torch.einsum("pbli,poi->pblo", x, w) + b[:, None, None, :]


def _layer_norm(x: torch.Tensor, paths, name: str) -> torch.Tensor:
    w, b = _stack(paths, f"{name}.weight"), _stack(paths, f"{name}.bias")  # (P, C)
    return F.layer_norm(x, x.shape[-1:]) * w[:, None, None, :] + b[:, None, None, :]


def batched_pooled_paths(
    model: Supernet,
    features: Sequence[torch.Tensor],
    lengths: Sequence[torch.Tensor | None] | None = None,
) -> torch.Tensor:
    """Pooled outputs ``(B, P, C)`` of every path, computed as one batched operation.

    The same values as ``model.pooled_paths(features, lengths)`` (up to float rounding), in train
    and eval mode alike (dropout draws differ, of course).
    """
    h, keep = model.embed(features, lengths or [None] * model.k, range(model.k))
    L = max(x.shape[1] for x in h.values())
    B, C, device = h[0].shape[0], model.cfg.width, h[0].device
    padded, kept = [], []
    for m in range(model.k):
        x, n = h[m], h[m].shape[1]
        k_m = keep[m] if keep[m] is not None else torch.ones(B, n, dtype=torch.bool, device=device)
        if n < L:
            x = F.pad(x, (0, 0, 0, L - n))
            k_m = F.pad(k_m, (0, L - n), value=False)
        padded.append(x)
        kept.append(k_m)
    # gathered per path by Python indexing: no index tensor to copy to the device (a host-to-device
    # copy cannot be captured in a CUDA graph)
    x = torch.stack([padded[j] for _, j in model.pairs])  # (P, B, L, C): each path's target
    src = torch.stack([padded[i] for i, _ in model.pairs])  # (P, B, L, C): each path's source
    keep_t = torch.stack([kept[j] for _, j in model.pairs])  # (P, B, L)
    keep_s = torch.stack([kept[i] for i, _ in model.pairs])
    # decided from shapes, never from values: no host sync (CUDA-graph capture, torch.compile)
    all_kept = all(keep[m] is None and h[m].shape[1] == L for m in range(model.k))
    P, heads = len(model.pairs), model.cfg.heads
    hd = C // heads
    paths = list(model.paths)
    p_drop = model.cfg.dropout if model.training else 0.0
    for b in range(model.cfg.layers_per_path):
        pre = f"blocks.{b}"
        q = _linear(_layer_norm(x, paths, f"{pre}.ln_query"), paths, f"{pre}.attn.query")
        kv = _linear(_layer_norm(src, paths, f"{pre}.ln_source"), paths, f"{pre}.attn.key_value")
        k, v = kv.split(C, dim=-1)

        def heads_first(t: torch.Tensor) -> torch.Tensor:  # (P, B, L, C) -> (P*B, H, L, hd)
            return t.reshape(P * B, L, heads, hd).transpose(1, 2)

        mask = None if all_kept else keep_s.reshape(P * B, 1, 1, L)
        y = F.scaled_dot_product_attention(heads_first(q), heads_first(k), heads_first(v),
                                           attn_mask=mask, dropout_p=p_drop)
        y = y.transpose(1, 2).reshape(P, B, L, C)
        y = _linear(y, paths, f"{pre}.attn.proj")
        x = x + F.dropout(y, p_drop, model.training)
        z = _linear(_layer_norm(x, paths, f"{pre}.ln_mlp"), paths, f"{pre}.mlp.fc")
        z = _linear(F.gelu(z), paths, f"{pre}.mlp.proj")
        x = x + F.dropout(z, p_drop, model.training)
    x = _layer_norm(x, paths, "ln_out")  # (P, B, L, C)
    pooled = pool(x.reshape(P * B, L, C), None if all_kept else keep_t.reshape(P * B, L), model.cfg.pooling)
    return pooled.view(P, B, C).transpose(0, 1)  # (B, P, C)
