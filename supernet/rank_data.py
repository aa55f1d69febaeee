"""The data the prior's rank regularization learns from (``[train] rank_data``), kept apart from
the data the supernet trains on.

Table 1's rank loss makes the prior's ranking of sampled subnets agree with the ranking of their
losses. Ranked by their losses on the *training* batch (``rank_data = "batch"``, the only choice
before), anything that lowers training loss without generalizing looks good to the prior: on a
data set whose modality ``d`` carries the label in the train split only (``studies/shortcut.toml``)
the trained prior ranked the paths into ``d`` first. So the losses come from elsewhere:

- ``"valid"`` (the default): the validation split, the data the search itself scores masks on
  (``[search] split``, "valid" by default): the prior learns the ranking the search will see,
  and the supernet keeps every training sample. Never the test split. The per-epoch ``spearman``
  of the training history is then measured on the data the prior learned from;
  ``spearman_train`` is logged beside it.
- ``"holdout"``: a held-out slice of the train split, ``rank_holdout`` of it, drawn once from the
  train seed (:func:`split_train`). The supernet never trains on it, so a subnet that memorizes
  the training samples gains nothing there (``spearman_holdout`` is logged). But a shortcut that
  holds in the *whole* train split (a shift between the splits, as in ``studies/shortcut.toml``)
  holds in the slice as well: on that family the prior ranked the shortcut paths first with a
  holdout as with the training batch (docs/RESULTS.md, "Rank data"). Only data from the other
  side of the shift can reveal it, hence the default.
- ``"batch"``: the training batch, as before.

The losses are those of the subnets on a batch of the rank data, from one pass over the paths the
masks use (a path's pooled output does not depend on the mask, ``supernet.scoring``), in eval
mode, without gradient into the supernet. Under ``torchrun`` every rank draws the same rank batch
and scores its share; the losses are averaged over the ranks (weighted by share).

**Eq. 1's statistics.** The cosine similarity of the modalities' pooled embeddings and the
variance of each path's attention weights are measured on the rank batch too. Neither reads a
label, so a shortcut (a feature that predicts the label) cannot inflate them through the labels;
it changes them only as any feature does. The gradient variance is read from the training
step's gradients, which do follow the training labels: a path that fits a shortcut has large
gradients while it learns it, just as a path that learns a real signal does. It is harmless in
one sense only: it enters the prior through α, β, γ and the graph network, whose weights learn
from the held-out rank loss alone, so the prior learns how far to trust it; a held-out gradient
variance would need a backward pass per refinement on data the supernet must not train on.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from supernet.config import TrainConfig
from supernet.data.dataset import MultimodalData, Split
from supernet.scoring import batches

HOLDOUT_SEED = 0x5EED  # added to [train] seed: the slice's draw leaves the training order's stream alone


def split_train(data: MultimodalData, cfg: TrainConfig) -> tuple[Split, Split | None]:
    """``(the samples the supernet trains on, the samples the rank loss scores subnets on)``;
    the second is None for ``rank_data = "batch"``."""
    train = data.splits["train"]
    if cfg.rank_data == "batch":
        return train, None
    if cfg.rank_data == "valid":
        return train, data.splits["valid"]
    n = len(train)
    held = min(max(1, round(n * cfg.rank_holdout)), n - 1)
    if held < 1:
        raise ValueError(f"[train] rank_holdout needs at least 2 train samples, the split has {n}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed + HOLDOUT_SEED))
    return train.subset(order[held:].sort().values), train.subset(order[:held].sort().values)


def describe(cfg: TrainConfig, rank_split: Split | None) -> str:
    """What the prior learned from, in words (training history, ``mro-search report``)."""
    if cfg.rank_data == "batch":
        return "training batches (rank_data = batch)"
    if cfg.rank_data == "valid":
        return f"the validation split ({len(rank_split)} samples; rank_data = valid)"
    return f"a held-out {cfg.rank_holdout:g} of the train split ({len(rank_split)} samples; rank_data = holdout)"


class RankBatches:
    """Endless shuffled batches of the rank data, the same on every rank (own seeded stream)."""

    def __init__(self, split: Split, names: list[str], batch_size: int, seed: int) -> None:
        self.split, self.names, self.batch_size = split, names, batch_size
        self.g = torch.Generator().manual_seed(seed + HOLDOUT_SEED + 1)
        self._it: Iterator = iter(())

    def next(self):
        """The next ``(features, lengths, labels)`` batch (a new shuffle after each pass)."""
        for _ in range(2):
            try:
                return next(self._it)
            except StopIteration:
                order = torch.randperm(len(self.split), generator=self.g)
                self._it = batches(self.split, self.names, self.batch_size, order)
        raise RuntimeError("the rank data split is empty")
