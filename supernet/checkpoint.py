"""Supernet checkpoints: weights, the learned prior, and the study configuration they came from.

A checkpoint is a plain dict of tensors, strings and numbers written with ``torch.save`` and read
with ``torch.load(weights_only=True)``, so loading one can never run code. It is written to a
temporary file and renamed, so a crash never leaves half a checkpoint behind.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from supernet.config import ModelConfig, config_sha256, parse_section
from supernet.data.dataset import ModalitySpec
from supernet.errors import CheckpointError
from supernet.model import Supernet, SupernetSpec
from supernet.relation_graph import RelationGraphPrior

FORMAT = "mro-search-supernet/1"


@dataclass
class Checkpoint:
    model: Supernet
    prior: RelationGraphPrior
    config: dict[str, Any]  # the study configuration the supernet was trained with
    config_sha256: str
    history: list[dict[str, Any]] = field(default_factory=list)
    path: Path | None = None

    @property
    def file_sha256(self) -> str:
        return file_sha256(self.path) if self.path else ""


def _spec_to_dict(spec: SupernetSpec) -> dict[str, Any]:
    return {
        "modalities": [
            {"name": m.name, "dim": m.dim, "length": -1 if m.length is None else m.length}
            for m in spec.modalities
        ],
        "task": spec.task,
        "output_dim": spec.output_dim,
    }


def _spec_from_dict(raw: dict[str, Any]) -> SupernetSpec:
    modalities = tuple(
        ModalitySpec(m["name"], int(m["dim"]), None if int(m["length"]) < 0 else int(m["length"]))
        for m in raw["modalities"]
    )
    return SupernetSpec(modalities, raw["task"], int(raw["output_dim"]))


def save_checkpoint(
    path: str | Path,
    model: Supernet,
    prior: RelationGraphPrior,
    config: dict[str, Any],
    history: list[dict[str, Any]] | None = None,
) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "config": config,
        "config_sha256": config_sha256(config),
        "spec": _spec_to_dict(model.spec),
        "model_config": {k: getattr(model.cfg, k) for k in model.cfg.__dataclass_fields__},
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "prior": {k: v.detach().cpu() for k, v in prior.state_dict().items()},
        "history": history or [],
    }
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load_checkpoint(
    path: str | Path, *, expected_sha256: str | None = None, map_location: str = "cpu"
) -> Checkpoint:
    """Load a checkpoint safely; with ``expected_sha256``, refuse one trained for another study."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no supernet checkpoint there; train one with `mro-search train --study NAME`")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged file
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path}: not a readable checkpoint (truncated or corrupt: {reason}); delete it and train again"
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an mro-search supernet checkpoint (format {FORMAT!r} expected)")
    sha = payload["config_sha256"]
    if expected_sha256 is not None and sha != expected_sha256:
        raise CheckpointError(
            f"{path}: trained for another study configuration (SHA-256 {sha[:12]}…, this study is "
            f"{expected_sha256[:12]}…); train again with `mro-search train` or point to the right checkpoint"
        )
    problems: list[str] = []
    model_cfg = parse_section(ModelConfig, payload["model_config"], "model", problems)
    if problems:
        raise CheckpointError(f"{path}: bad model configuration inside: {problems[0]}")
    try:
        model = Supernet(_spec_from_dict(payload["spec"]), model_cfg)
        model.load_state_dict(payload["model"])
        prior = RelationGraphPrior(model.k)
        prior.load_state_dict(payload["prior"])
    except (RuntimeError, KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: weights do not fit the model they describe ({str(exc).splitlines()[0][:160]})") from exc
    model.eval()
    return Checkpoint(model, prior, payload["config"], sha, payload.get("history", []), path)


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
