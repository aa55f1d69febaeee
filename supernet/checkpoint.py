"""Supernet checkpoints: weights, the learned prior, and the study configuration they came from.

A checkpoint is a plain dict of tensors, strings and numbers written with ``torch.save`` and read
with ``torch.load(weights_only=True)``, so loading one can never run code. It is written to a
temporary file and renamed, so a crash never leaves half a checkpoint behind.

Identity. A checkpoint is identified by what it is: ``identity`` is the SHA-256 of its weights,
its prior's parameters and statistics, and the *scoring configuration* — the parts of the study
configuration that give masks and scores their meaning (``[data]`` except where the data lies,
and ``[model]``). How it was trained (``[train]``: epochs, seed, learning rate, ...) and the
training history (which holds timings) are provenance: recorded, not part of the identity (the
device it trained on too: tensors are saved as CPU copies and load on any device). So
the same training twice gives the same identity, and a checkpoint trained with ``--epochs 2``
scores masks for its study as well as one trained with the study's own epochs.

Checkpoints are immutable: ``write_checkpoint`` names the file after the identity
(``RUN_DIR/checkpoints/<identity[:16]>.pt``) and never replaces an existing file; the newest
training is recorded in ``RUN_DIR/checkpoints/latest``.

The prior's keep mapping (``supernet.relation_graph.KEEP_MAPPINGS``) is recorded as
``prior_keep``; a checkpoint without it was written before the mapping was a choice and loads with
the mapping it was trained with, ``"per_source"``. One that names a mapping this version does not
know is refused in one line.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from supernet.config import ModelConfig, config_sha256, parse_section, scoring_config  # noqa: F401 (scoring_config: re-exported)
from supernet.data.dataset import ModalitySpec
from supernet.errors import CheckpointError
from supernet.files import write_file
from supernet.model import Supernet, SupernetSpec
from supernet.relation_graph import KEEP_MAPPINGS, PRIOR_GNNS, RelationGraphPrior

FORMAT = "mro-search-supernet/2"
FORMATS = ("mro-search-supernet/1", FORMAT)  # /1: no stored identity (it is computed on load)
OLD_KEEP = "per_source"  # the prior keep mapping of checkpoints that do not record one
CHECKPOINT_DIR = "checkpoints"  # under a study's run directory
LATEST = "latest"  # file in CHECKPOINT_DIR naming the newest training's checkpoint file
SHORT_ID = 16  # hex digits of the identity in file names and messages


@dataclass
class Checkpoint:
    model: Supernet
    prior: RelationGraphPrior
    config: dict[str, Any]  # the study configuration the supernet was trained with
    config_sha256: str
    history: list[dict[str, Any]] = field(default_factory=list)
    path: Path | None = None
    identity: str = ""  # SHA-256 of weights, prior and scoring configuration (module docstring)

    @property
    def scoring_sha256(self) -> str:
        return config_sha256(scoring_config(self.config))

    @property
    def short_id(self) -> str:
        return self.identity[:SHORT_ID]

    @property
    def file_sha256(self) -> str:
        return file_sha256(self.path) if self.path else ""


def checkpoint_identity(model_state: dict[str, torch.Tensor], prior_state: dict[str, torch.Tensor], config: dict[str, Any]) -> str:
    """SHA-256 of the tensors (name, dtype, shape and bytes, in name order) of the model and the
    prior, and of the scoring configuration of ``config``."""
    h = hashlib.sha256()
    h.update(config_sha256(scoring_config(config)).encode())
    for part, state in (("model", model_state), ("prior", prior_state)):
        for key in sorted(state):
            t = state[key].detach().cpu().contiguous().reshape(-1)
            h.update(f"\n{part}.{key}:{t.dtype}:{tuple(state[key].shape)}\n".encode())
            h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


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
    model_state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    prior_state = {k: v.detach().cpu() for k, v in prior.state_dict().items()}
    payload = {
        "format": FORMAT,
        "identity": checkpoint_identity(model_state, prior_state, config),
        "config": config,
        "config_sha256": config_sha256(config),
        "spec": _spec_to_dict(model.spec),
        "model_config": {k: getattr(model.cfg, k) for k in model.cfg.__dataclass_fields__},
        "model": model_state,
        "prior": prior_state,
        "prior_keep": prior.keep,
        "history": history or [],
    }
    write_file(path, lambda f: torch.save(payload, f), what="the checkpoint")
    return path


def load_checkpoint(
    path: str | Path | bytes,
    *,
    expected_sha256: str | None = None,
    expected_scoring: str | None = None,
    expected_identity: str | None = None,
    map_location: str | torch.device = "cpu",
    source: str | None = None,
) -> Checkpoint:
    """Load a checkpoint safely (a file, or its bytes as read from an artifact store).

    The supernet comes back on ``map_location`` (any device: checkpoints hold CPU tensors,
    whatever device trained them); the prior stays on the CPU, where training keeps it.

    Refuse one whose stored identity does not match its content (tampered or damaged), and:
    with ``expected_scoring`` (a study's ``scoring_sha256``) one trained for another data or
    model configuration; with ``expected_identity`` any other checkpoint; with
    ``expected_sha256`` one whose whole configuration (training included) differs.
    ``source`` names the checkpoint in messages (default: the path)."""
    raw = path if isinstance(path, bytes) else None
    path = None if raw is not None else Path(path)
    where = source or str(path)
    if path is not None and not path.is_file():
        raise CheckpointError(f"{where}: no supernet checkpoint there; train one with `mro-search train --study NAME`")
    try:
        payload = torch.load(io.BytesIO(raw) if raw is not None else path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged file
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{where}: not a readable checkpoint (truncated or corrupt: {reason}); delete it and train again"
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") not in FORMATS:
        raise CheckpointError(f"{where}: not an mro-search supernet checkpoint (format {FORMAT!r} expected)")
    missing = [k for k in ("config", "config_sha256", "spec", "model_config", "model", "prior") if k not in payload]
    if missing or not isinstance(payload.get("config"), dict) or not isinstance(payload.get("model"), dict) or not isinstance(payload.get("prior"), dict):
        raise CheckpointError(f"{where}: incomplete checkpoint (missing or malformed: {', '.join(missing) or 'config/model/prior'}); delete it and train again")
    config = payload["config"]
    sha = str(payload["config_sha256"])
    try:
        identity = checkpoint_identity(payload["model"], payload["prior"], config)
    except Exception as exc:  # a non-tensor where tensors belong
        raise CheckpointError(f"{where}: weights are not tensors ({type(exc).__name__}); delete it and train again") from exc
    stored = payload.get("identity")
    if stored is not None and stored != identity:
        raise CheckpointError(f"{where}: content does not match its identity {str(stored)[:SHORT_ID]} (changed or damaged); delete it and train again")
    if expected_identity is not None and identity != expected_identity:
        raise CheckpointError(f"{where}: checkpoint {identity[:SHORT_ID]} is not the expected {expected_identity[:SHORT_ID]}")
    scoring = config_sha256(scoring_config(config))
    if expected_scoring is not None and scoring != expected_scoring:
        raise CheckpointError(
            f"{where}: trained for another data or model configuration (scoring SHA-256 {scoring[:12]}…, this study's is "
            f"{expected_scoring[:12]}…); train one for this study with `mro-search train`"
        )
    if expected_sha256 is not None and sha != expected_sha256:
        raise CheckpointError(
            f"{where}: trained for another study configuration (SHA-256 {sha[:12]}…, this study is "
            f"{expected_sha256[:12]}…); train again with `mro-search train` or point to the right checkpoint"
        )
    keep = payload.get("prior_keep", OLD_KEEP)
    if keep not in KEEP_MAPPINGS:
        raise CheckpointError(
            f"{where}: its prior uses the keep mapping {str(keep)[:40]!r}, unknown to this version "
            f"(one of {', '.join(KEEP_MAPPINGS)}); upgrade mro-search or train again with `mro-search train`"
        )
    problems: list[str] = []
    model_cfg = parse_section(ModelConfig, payload["model_config"], "model", problems)
    if problems:
        raise CheckpointError(f"{where}: bad model configuration inside: {problems[0]}")
    try:
        model = Supernet(_spec_from_dict(payload["spec"]), model_cfg)
        model.load_state_dict(payload["model"])
        gnn = (config.get("train") or {}).get("prior_gnn", "gatv2")  # earlier checkpoints: the only one then
        prior = RelationGraphPrior(model.k, gnn=gnn if gnn in PRIOR_GNNS else "gatv2", keep=keep)
        prior.load_state_dict(payload["prior"])
    except (RuntimeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"{where}: weights do not fit the model they describe ({str(exc).splitlines()[0][:160]})") from exc
    model.to(map_location).eval()
    return Checkpoint(model, prior, config, sha, payload.get("history", []), path, identity)


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR


def checkpoint_file(run_dir: str | Path, identity: str) -> Path:
    """Where the checkpoint of ``identity`` lives in a run directory."""
    return checkpoint_dir(run_dir) / f"{identity[:SHORT_ID]}.pt"


def write_checkpoint(
    run_dir: str | Path,
    model: Supernet,
    prior: RelationGraphPrior,
    config: dict[str, Any],
    history: list[dict[str, Any]] | None = None,
) -> tuple[Path, bool]:
    """Write a trained supernet as ``RUN_DIR/checkpoints/<identity>.pt`` and record it as the
    latest training; returns the file and whether it is new. A checkpoint of the same identity
    that is already there is kept as it is (same weights, prior and scoring configuration)."""
    model_state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    prior_state = {k: v.detach().cpu() for k, v in prior.state_dict().items()}
    identity = checkpoint_identity(model_state, prior_state, config)
    path = checkpoint_file(run_dir, identity)
    new = not path.exists()
    if new:
        save_checkpoint(path, model, prior, config, history)
    _write_text_atomic(checkpoint_dir(run_dir) / LATEST, path.name + "\n")
    return path, new


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint file of the newest training in ``run_dir``, if there is one."""
    pointer = checkpoint_dir(run_dir) / LATEST
    try:
        name = pointer.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    if not name or "/" in name or "\\" in name or name.startswith("."):
        return None
    path = pointer.parent / name
    return path if path.is_file() else None


def _write_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
