"""Configuration of the data, the supernet and its training, as plain dataclasses.

A study file (``studies/NAME.toml``) holds one table per dataclass here (``[data]``, ``[model]``,
``[train]``) plus the search settings that ``search_service`` owns. ``parse_section`` checks a
table against its dataclass and *collects* every problem instead of stopping at the first, so that
``mro-search validate`` can report them all at once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any, TypeVar

DATA_SOURCES = ("synthetic", "mmsa", "meld", "mfeat", "npz")
TASKS = ("classification", "regression")
POOLINGS = ("mean", "max")
HEADS = ("linear", "mlp")
RANK_LOSSES = ("hinge", "l0", "l1", "l2", "linf")


def _choices(*values: str) -> dict[str, Any]:
    return {"choices": values}


def _at_least(low: float) -> dict[str, Any]:
    return {"min": low}


def _between(low: float, high: float) -> dict[str, Any]:
    return {"min": low, "max": high}


@dataclass
class DataConfig:
    source: str = field(default="synthetic", metadata=_choices(*DATA_SOURCES))
    # File or directory with the data (mmsa: the .pkl; meld: the .pkl; npz: the .npz;
    # mfeat: the folder of mfeat-*.csv, empty for the compressed copy shipped with mro-search).
    # A relative path is taken relative to the study file.
    path: str = ""
    # --- synthetic data only -------------------------------------------------------------
    modalities: list[str] = field(default_factory=lambda: ["text", "audio", "vision"])
    dims: list[int] = field(default_factory=lambda: [32, 16, 8])  # features per step
    length: int = field(default=8, metadata=_at_least(2))  # steps per sequence
    samples: list[int] = field(default_factory=lambda: [2000, 500, 500])  # train, valid, test
    planted_paths: list[str] = field(default_factory=lambda: ["audio->text", "text->vision"])
    task: str = field(default="classification", metadata=_choices(*TASKS))
    noise: float = field(default=0.1, metadata=_at_least(0.0))
    # --- splits for sources that come without one (mfeat, meld's validation split) --------
    valid_fraction: float = field(default=0.15, metadata=_at_least(0.0))
    test_fraction: float = field(default=0.15, metadata=_at_least(0.0))
    seed: int = 0


@dataclass
class ModelConfig:
    width: int = field(default=64, metadata=_at_least(1))  # d: every modality is projected to d
    heads: int = field(default=4, metadata=_at_least(1))  # attention heads; must divide width
    layers_per_path: int = field(default=1, metadata=_at_least(1))  # blocks in each path
    ffn_mult: int = field(default=4, metadata=_at_least(1))  # feed-forward hidden = ffn_mult * width
    dropout: float = field(default=0.1, metadata=_at_least(0.0))
    pooling: str = field(default="mean", metadata=_choices(*POOLINGS))  # over the target's steps
    # "linear": one Linear on the averaged path outputs (cached scoring is then one matmul);
    # "mlp": LayerNorm, Linear, GELU, Linear.
    head: str = field(default="linear", metadata=_choices(*HEADS))
    # A modality given as one vector per sample is cut into this many tokens, so that attention
    # over it is not degenerate (softmax over a single key is always 1).
    vector_tokens: int = field(default=8, metadata=_at_least(2))


@dataclass
class TrainConfig:
    epochs: int = field(default=10, metadata=_at_least(1))
    batch_size: int = field(default=64, metadata=_at_least(1))
    lr: float = field(default=1e-3, metadata=_at_least(0.0))
    weight_decay: float = field(default=0.01, metadata=_at_least(0.0))
    warmup_epochs: int = field(default=2, metadata=_at_least(0))  # uniform masks before the prior
    masks_per_step: int = field(default=2, metadata=_at_least(1))  # subnets trained on each batch
    per_sample_masks: bool = False  # a mask per sample (all paths run once) instead of per batch
    distill: float = field(default=0.0, metadata=_between(0.0, 1.0))  # in-place distillation weight
    rank_loss: str = field(default="l1", metadata=_choices(*RANK_LOSSES))
    rank_every: int = field(default=10, metadata=_at_least(1))  # steps between prior updates
    rank_masks: int = field(default=16, metadata=_at_least(2))  # masks ranked per prior update
    prior_lr: float = field(default=0.02, metadata=_at_least(0.0))
    seed: int = 0
    device: str = "cpu"


T = TypeVar("T")


def _type_ok(value: Any, annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation in (str, bool):
        return isinstance(value, annotation)
    if origin is list:
        (inner,) = typing.get_args(annotation)
        return isinstance(value, list) and all(_type_ok(v, inner) for v in value)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    return True


def _type_name(annotation: Any) -> str:
    if typing.get_origin(annotation) is not None:  # list[int]: its __name__ is just "list"
        return str(annotation).replace("typing.", "")
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def parse_section(cls: type[T], raw: Any, section: str, problems: list[str]) -> T:
    """Build ``cls`` from a TOML table, appending every problem found to ``problems``.

    Unknown keys, wrong types, values outside their choices or range are all
    reported; the defaults stand in for bad values so that later checks can still run.
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        problems.append(f"[{section}] must be a table, got {type(raw).__name__}")
        return cls()
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in fields:
            problems.append(f"[{section}] unknown key {key!r}; known keys: {', '.join(fields)}")
            continue
        meta = fields[key].metadata
        if not _type_ok(value, hints[key]):
            problems.append(
                f"[{section}] {key} must be {_type_name(hints[key])}, got {value!r} ({type(value).__name__})"
            )
            continue
        if "choices" in meta and value not in meta["choices"]:
            problems.append(f"[{section}] {key} = {value!r} is not one of {', '.join(meta['choices'])}")
            continue
        if "min" in meta and value < meta["min"]:
            problems.append(f"[{section}] {key} = {value!r} must be at least {meta['min']}")
            continue
        if "max" in meta and value > meta["max"]:
            problems.append(f"[{section}] {key} = {value!r} must be at most {meta['max']}")
            continue
        kwargs[key] = float(value) if hints[key] is float else value
    return cls(**kwargs)


def config_to_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)


def config_sha256(config: dict[str, Any]) -> str:
    """SHA-256 of a configuration, over its canonical JSON (sorted keys, no spaces)."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()
