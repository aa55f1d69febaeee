"""Exact scoring of many masks from cached per-path outputs.

A path's pooled output depends on the inputs, not on the mask. So the pooled outputs of *all*
paths are computed once per split (``build_cache``); the subnet a mask selects then outputs
``head(mean of the selected rows)``, which ``predict_masks`` evaluates for many masks in one
batched tensor operation. With a linear head it is one matmul: the head commutes with the mean,
``W·mean(x_p) + b = mean(W·x_p) + b``, so the cache keeps ``W·x_p`` per path.

The scores are exact (the same numbers as a masked forward pass, up to float rounding): this is
what makes the search fast, and ``tests/test_scoring.py`` checks it for every head type.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from supernet.data.dataset import Split
from supernet.metrics import batch_metric, compute_metrics
from supernet.model import Supernet


@dataclass
class PathCache:
    """Per-path pooled outputs of one split: ``pooled`` is ``(N, P, C)``; with a linear head,
    ``projected`` is ``(N, P, out)`` (the head's weight applied to every path, without bias)."""

    pooled: torch.Tensor
    labels: torch.Tensor
    task: str
    projected: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def batches(split: Split, names: list[str], batch_size: int, index: torch.Tensor | None = None):
    """Yield ``(features, lengths, labels)`` mini-batches of a split, modalities in study order."""
    order = torch.arange(len(split)) if index is None else index
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        features = [split.features[m][idx] for m in names]
        lengths = [split.lengths[m][idx] if m in split.lengths else None for m in names]
        yield features, lengths, split.labels[idx]


@torch.no_grad()
def build_cache(model: Supernet, split: Split, *, batch_size: int = 256) -> PathCache:
    """Run every path once over a split (eval mode) and keep the pooled outputs."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    names = [m.name for m in model.spec.modalities]
    chunks = []
    for features, lengths, _ in batches(split, names, batch_size):
        features = [f.to(device) for f in features]
        lengths = [None if n is None else n.to(device) for n in lengths]
        chunks.append(model.pooled_paths(features, lengths).float().cpu())
    model.train(was_training)
    pooled = torch.cat(chunks)  # (N, P, C)
    projected = None
    if isinstance(model.head, torch.nn.Linear):
        projected = pooled @ model.head.weight.detach().float().cpu().T  # (N, P, out)
    return PathCache(pooled=pooled, labels=split.labels, task=model.spec.task, projected=projected)


@torch.no_grad()
def predict_masks(model: Supernet, cache: PathCache, masks: torch.Tensor) -> torch.Tensor:
    """Outputs of many subnets at once: masks ``(M, P)`` 0/1 -> ``(M, N, out)``. With a linear
    head the arithmetic is in the cache's dtype (float32 from ``build_cache``; a float64 copy of
    the cache gives the reference that ``exhaustive.py`` is checked against)."""
    dtype = cache.projected.dtype if cache.projected is not None else torch.float32
    masks = masks.to(dtype)
    if masks.dim() == 1:
        masks = masks[None]
    counts = masks.sum(dim=1, keepdim=True)
    if (counts == 0).any():
        raise ValueError("the all-zero mask selects no path and cannot be scored")
    if cache.projected is not None:
        weights = masks / counts  # (M, P): the average over the active paths
        head = model.head
        bias = head.bias.detach().to(dtype).cpu() if head.bias is not None else 0.0
        return torch.einsum("mp,npo->mno", weights, cache.projected) + bias  # (M, N, out)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = model.forward_from_pooled(cache.pooled.to(device), masks.to(device)).cpu()
    model.train(was_training)
    return out


def score_masks(model: Supernet, cache: PathCache, masks: torch.Tensor, metric: str) -> torch.Tensor:
    """One metric for many masks: ``(M, P)`` -> ``(M,)`` float64."""
    return batch_metric(_squeeze(predict_masks(model, cache, masks), cache.task), cache.labels, metric)


def mask_metrics(model: Supernet, cache: PathCache, mask) -> dict[str, float]:
    """All metrics of one mask, from the cache."""
    masks = torch.as_tensor([list(mask)], dtype=torch.float32)
    predictions = _squeeze(predict_masks(model, cache, masks), cache.task)[0]
    return compute_metrics(predictions, cache.labels, cache.task)


def _squeeze(predictions: torch.Tensor, task: str) -> torch.Tensor:
    return predictions.squeeze(-1) if task == "regression" else predictions
