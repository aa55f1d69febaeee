"""The narrow interface between the search service and the supernet.

``Evaluator`` loads a study's checkpoint and data once, then scores masks from the path cache
(exact and fast), prices them with the FLOPs table, and, when asked, runs the masked model
directly. Nothing else in ``search_service`` reaches into ``supernet``'s internals.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from typing import Any

import torch

from search_service.objectives import METRIC_ALIAS
from search_service.study_file import Study, task_of
from supernet.checkpoint import Checkpoint, latest_checkpoint, load_checkpoint, write_checkpoint
from supernet.data import MultimodalData, load_data
from supernet.errors import CheckpointError
from supernet.files import check_output_directory
from supernet.flops import FlopTable, flop_table
from supernet.metrics import compute_metrics, default_metric
from supernet.paths import active_paths, format_mask, parse_mask
from supernet.scoring import PathCache, batches, build_cache, mask_metrics, score_masks
from supernet.train import TrainResult, train_supernet


def load_study_data(study: Study) -> MultimodalData:
    return load_data(study.data, base_dir=study.base_dir)


def objective_metric(study: Study) -> str:
    """The study's accuracy objective: ``[search] objectives[0]`` when it names a metric, else
    ``[search] metric``, else the task's default."""
    first = study.search.objectives[0] if study.search.objectives else METRIC_ALIAS
    if first != METRIC_ALIAS:
        return first
    return study.search.metric or default_metric(task_of(study) or "classification")


def train_study(study: Study, *, epochs: int | None = None, seed: int | None = None, progress: bool = True, log=None,
                device: str | None = None, dist=None) -> tuple[TrainResult, Checkpoint, bool] | None:
    """Train the study's supernet and write its checkpoint, ``RUN_DIR/checkpoints/<identity>.pt``
    (never replacing one: ``supernet.checkpoint``); returns the training, the checkpoint and
    whether the file is new. ``epochs``, ``seed`` and ``device`` change how it is trained
    (provenance), not what its scores mean. Under torchrun (``dist``, ``supernet.distributed``)
    rank 0 writes the checkpoint while the others wait, and the others return None."""
    if device is not None:
        study.train.device = device
    if epochs is not None:
        study.train.epochs = epochs
        study.train.warmup_epochs = min(study.train.warmup_epochs, epochs)
    if seed is not None:
        study.train.seed = seed
    check_output_directory(study.run_dir, what="the study's files")  # before training, not after it
    data = load_study_data(study)
    result = train_supernet(data, study.model, study.train, progress=progress, log=log, dist=dist)
    if dist is not None and not dist.is_main:
        dist.barrier()  # rank 0 is writing the checkpoint
        return None
    path, new = write_checkpoint(study.run_dir, result.model, result.prior, study.supernet_config(), result.history)
    if dist is not None:
        dist.barrier()
    return result, load_checkpoint(path, expected_scoring=study.scoring_sha256), new


class Evaluator:
    """Scores a study's masks with one checkpoint (by default the latest training in the
    study's run directory; a study in storage passes its own, ``lifecycle.study_checkpoint``)."""

    def __init__(self, study: Study, checkpoint: Checkpoint | None = None, data: MultimodalData | None = None,
                 device: torch.device | str = "cpu") -> None:
        self.study = study
        self.device = torch.device(device)  # the cache is built and direct forwards run here
        if checkpoint is None:
            path = latest_checkpoint(study.run_dir)
            if path is None:
                raise CheckpointError(f"no supernet checkpoint in {study.run_dir / 'checkpoints'}; train one with `mro-search train --study {study.name}`")
            checkpoint = load_checkpoint(path, expected_scoring=study.scoring_sha256)
        self.checkpoint = checkpoint
        self.model = self.checkpoint.model.to(self.device).eval()
        self._data = data
        self._caches: dict[str, PathCache] = {}
        self.metric = objective_metric(study)

    @property
    def data(self) -> MultimodalData:
        if self._data is None:
            self._data = load_study_data(self.study)
        return self._data

    @cached_property
    def flops(self) -> FlopTable:
        return flop_table(self.model)

    @property
    def modality_names(self) -> list[str]:
        return [m.name for m in self.model.spec.modalities]

    @property
    def path_names(self) -> list[str]:
        return list(self.model.path_names)

    def parse(self, bits: str | Sequence[int]) -> tuple[int, ...]:
        return parse_mask(bits, self.model.num_paths)

    def cache(self, split: str = "valid") -> PathCache:
        if split not in self._caches:
            self._caches[split] = build_cache(self.model, self.data.splits[split])
        return self._caches[split]

    def score(self, masks: torch.Tensor, split: str = "valid") -> torch.Tensor:
        """The objective metric of many masks ``(M, P)`` -> ``(M,)``."""
        return score_masks(self.model, self.cache(split), masks, self.metric)

    def evaluate(self, mask: Sequence[int], split: str = "valid", *, direct: bool = False) -> dict[str, Any]:
        """Everything known about one mask: metrics, MFLOPs, parameters, active paths."""
        mask = tuple(int(b) for b in mask)
        if direct:
            metrics = self.direct_metrics(mask, split)
        else:
            metrics = mask_metrics(self.model, self.cache(split), mask)
        return {
            "study": self.study.name,
            "mask": format_mask(mask),
            "active_paths": active_paths(mask, self.modality_names),
            "split": split,
            "method": "direct" if direct else "cache",
            "metric": self.metric,
            "metrics": metrics,
            "mflops": self.flops.mflops(mask),
            "params": self.model.num_parameters(mask),
        }

    @torch.no_grad()
    def direct_metrics(self, mask: Sequence[int], split: str = "valid") -> dict[str, float]:
        """Metrics of one mask from a masked forward pass over the split (no cache)."""
        outputs, labels = [], []
        for features, lengths, y in batches(self.data.splits[split], self.modality_names, 256):
            features = [f.to(self.device) for f in features]
            lengths = [None if n is None else n.to(self.device) for n in lengths]
            outputs.append(self.model(features, mask, lengths).float().cpu())
            labels.append(y)
        out = torch.cat(outputs)
        if self.model.spec.task == "regression":
            out = out.squeeze(-1)
        return compute_metrics(out, torch.cat(labels), self.model.spec.task)
