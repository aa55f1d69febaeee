"""The in-memory form every loader returns: named modalities, splits of tensors, a task."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class ModalitySpec:
    """One input stream. ``length`` is the number of steps of a sequence modality, ``None`` for a
    modality given as one vector per sample (the model cuts such a vector into tokens)."""

    name: str
    dim: int
    length: int | None = None

    @property
    def is_sequence(self) -> bool:
        return self.length is not None


@dataclass
class Split:
    """One split. ``features[name]`` is float32 ``(N, L, d)`` for a sequence modality or ``(N, d)``
    for a vector modality; ``lengths[name]`` (int64 ``(N,)``, 1 ≤ length ≤ L) is present only for
    variable-length sequences (steps past a sample's length are padding). ``labels`` is int64
    ``(N,)`` class ids for classification, float32 ``(N,)`` for regression."""

    features: dict[str, torch.Tensor]
    labels: torch.Tensor
    lengths: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, index: torch.Tensor) -> Split:
        return Split(
            features={k: v[index] for k, v in self.features.items()},
            labels=self.labels[index],
            lengths={k: v[index] for k, v in self.lengths.items()},
        )


@dataclass
class MultimodalData:
    """A whole data set: modalities in study order, the task and the three splits.

    ``informative_paths`` is set by the synthetic generator only: the paths whose cross-modal
    attention carries the planted signal, and ``shortcut_paths`` the paths that can read a
    feature that carries the label in the train split only (see ``supernet.data.synthetic``).
    """

    modalities: list[ModalitySpec]
    task: str  # "classification" | "regression"
    splits: dict[str, Split]
    num_classes: int | None = None  # classification only
    informative_paths: list[str] | None = None
    shortcut_paths: list[str] | None = None
    description: str = ""

    @property
    def modality_names(self) -> list[str]:
        return [m.name for m in self.modalities]

    @property
    def output_dim(self) -> int:
        return self.num_classes if self.task == "classification" else 1  # type: ignore[return-value]
