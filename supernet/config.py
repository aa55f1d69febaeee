"""Configuration of the data, the supernet and its training, as plain dataclasses.

A study file (``studies/NAME.toml``) holds one table per dataclass here (``[data]``, ``[model]``,
``[train]``) plus the search settings that ``search_service`` owns. ``parse_section`` checks a
table against its dataclass and *collects* every problem instead of stopping at the first, so that
``mro-search validate`` can report them all at once.

Every field states its range in its metadata, and ``parse_section`` enforces all of it: type,
choices, range (every number has an upper bound a real machine can hold, every float must be
finite: ``nan`` and ``inf`` are valid TOML), list lengths and the range of each item, and text
without control characters. The naming rules of study and modality names live in
:func:`name_problem`, the one place that states them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any, TypeVar

DATA_SOURCES = ("synthetic", "mmsa", "meld", "mfeat", "npz")
TASKS = ("classification", "regression")
POOLINGS = ("mean", "max")
HEADS = ("linear", "mlp")
RANK_LOSSES = ("hinge", "l0", "l1", "l2", "linf")
DEVICE_PATTERN = r"auto|cpu|cuda(:\d{1,2})?|mps"  # [train] device and --device (supernet.device resolves it)
DEVICE_CHOICES = "cpu, cuda, cuda:N or mps, or auto (the default)"


SEED_MAX = 2**32 - 1  # numpy's and Optuna's seeds are unsigned 32-bit integers
TEXT_MAX = 4096  # characters of any text field (paths, URLs)
STUDY_NAME_MAX = 100  # characters: the name becomes folder and file names (runs/NAME/...)
MODALITY_NAME_MAX = 64
MODALITIES_MAX = 16  # k modalities make k(k-1) paths


def _choices(*values: str) -> dict[str, Any]:
    return {"choices": values}


def _at_least(low: float) -> dict[str, Any]:
    return {"min": low}


def _between(low: float, high: float) -> dict[str, Any]:
    return {"min": low, "max": high}


def _fraction() -> dict[str, Any]:
    return {"min": 0.0, "below": 1.0}


def _items(low: float, high: float, *, max_items: int) -> dict[str, Any]:
    """A list of numbers, each in ``[low, high]``, at most ``max_items`` of them."""
    return {"item_min": low, "item_max": high, "max_items": max_items}


_SEED = _between(0, SEED_MAX)


@dataclass
class DataConfig:
    source: str = field(default="synthetic", metadata=_choices(*DATA_SOURCES))
    # File or directory with the data (mmsa: the .pkl; meld: the .pkl; npz: the .npz;
    # mfeat: the folder of mfeat-*.csv, empty for the compressed copy shipped with mro-search).
    # A relative path is taken relative to the study file.
    path: str = ""
    # Classification only (npz): the number of classes; 0 = infer it from the labels (then the
    # class ids found must be exactly 0..C-1, without gaps). Other sources know their classes.
    classes: int = field(default=0, metadata=_between(0, 100_000))
    # --- synthetic data only -------------------------------------------------------------
    modalities: list[str] = field(
        default_factory=lambda: ["text", "audio", "vision"], metadata={"max_items": MODALITIES_MAX}
    )
    dims: list[int] = field(  # features per step
        default_factory=lambda: [32, 16, 8], metadata=_items(1, 65_536, max_items=MODALITIES_MAX)
    )
    length: int = field(default=8, metadata=_between(2, 4096))  # steps per sequence
    samples: list[int] = field(  # train, valid, test
        default_factory=lambda: [2000, 500, 500], metadata=_items(1, 10_000_000, max_items=3)
    )
    planted_paths: list[str] = field(
        default_factory=lambda: ["audio->text", "text->vision"],
        metadata={"max_items": MODALITIES_MAX * (MODALITIES_MAX - 1)},
    )
    task: str = field(default="classification", metadata=_choices(*TASKS))
    noise: float = field(default=0.1, metadata=_between(0.0, 1000.0))
    # Weight of each planted path's signal in the label, in planted_paths' order; empty: all 1.
    path_strengths: list[float] = field(
        default_factory=list, metadata=_items(0.0, 100.0, max_items=MODALITIES_MAX * (MODALITIES_MAX - 1))
    )
    # Two paths whose signals enter the label only as their product (neither alone says
    # anything): a "multiplicative pair", which a [model] head = "mlp" can represent, a linear
    # head on the averaged path outputs cannot. Empty: none.
    interaction_paths: list[str] = field(default_factory=list, metadata={"max_items": 2})
    interaction_strength: float = field(default=1.0, metadata=_between(0.0, 100.0))
    # A modality whose extra feature carries the label in the train split only (random in valid
    # and test): every path touching it can learn the shortcut. Empty: no shortcut.
    shortcut_modality: str = ""
    # Share of train samples whose shortcut feature is their label (the others: another sample's).
    shortcut_strength: float = field(default=0.9, metadata=_between(0.0, 1.0))
    # --- splits for sources that come without one (mfeat, meld's validation split) --------
    valid_fraction: float = field(default=0.15, metadata=_fraction())
    test_fraction: float = field(default=0.15, metadata=_fraction())
    seed: int = field(default=0, metadata=_SEED)


@dataclass
class ModelConfig:
    width: int = field(default=64, metadata=_between(1, 16_384))  # d: every modality is projected to d
    heads: int = field(default=4, metadata=_between(1, 1024))  # attention heads; must divide width
    layers_per_path: int = field(default=1, metadata=_between(1, 64))  # blocks in each path
    ffn_mult: int = field(default=4, metadata=_between(1, 64))  # feed-forward hidden = ffn_mult * width
    dropout: float = field(default=0.1, metadata=_fraction())  # 1 would drop everything
    pooling: str = field(default="mean", metadata=_choices(*POOLINGS))  # over the target's steps
    # "linear": one Linear on the averaged path outputs (cached scoring is then one matmul);
    # "mlp": LayerNorm, Linear, GELU, Linear.
    head: str = field(default="linear", metadata=_choices(*HEADS))
    # A modality given as one vector per sample is cut into this many tokens, so that attention
    # over it is not degenerate (softmax over a single key is always 1).
    vector_tokens: int = field(default=8, metadata=_between(2, 4096))


@dataclass
class TrainConfig:
    epochs: int = field(default=10, metadata=_between(1, 100_000))
    batch_size: int = field(default=64, metadata=_between(1, 1_000_000))
    # AdamW's learning rate; above 10 training can only diverge
    lr: float = field(default=1e-3, metadata=_between(0.0, 10.0))
    weight_decay: float = field(default=0.01, metadata=_between(0.0, 100.0))
    warmup_epochs: int = field(default=2, metadata=_between(0, 100_000))  # uniform masks before the prior
    masks_per_step: int = field(default=2, metadata=_between(1, 1024))  # subnets trained on each batch
    per_sample_masks: bool = False  # a mask per sample (all paths run once) instead of per batch
    distill: float = field(default=0.0, metadata=_between(0.0, 1.0))  # in-place distillation weight
    rank_loss: str = field(default="l1", metadata=_choices(*RANK_LOSSES))
    rank_every: int = field(default=10, metadata=_between(1, 1_000_000))  # steps between prior updates
    rank_masks: int = field(default=16, metadata=_between(2, 65_536))  # masks ranked per prior update
    prior_lr: float = field(default=0.02, metadata=_between(0.0, 10.0))
    seed: int = field(default=0, metadata=_SEED)
    # "auto": CUDA if torch sees one, else Apple MPS, else the CPU (supernet.device.resolve_device).
    # How a supernet is trained, never what it is: not part of a checkpoint's identity.
    device: str = field(default="auto", metadata={"pattern": (DEVICE_PATTERN, DEVICE_CHOICES)})
    # "auto": bf16 autocast on CUDA (tensor cores, no loss scaling needed), fp32 elsewhere (CPU
    # autocast is slower than fp32 here); "bf16" is honoured on any device when asked for.
    precision: str = field(default="auto", metadata=_choices("auto", "fp32", "bf16"))
    # per_sample_masks only: run every path as one batched operation (supernet.batched) instead of
    # path by path. "auto": on CUDA only (one launch per layer instead of one per path; on this
    # project's CPU it was slower: benchmarks/README.md, bench_training).
    batched_paths: str | bool = field(default="auto", metadata=_choices("auto"))
    # Capture the whole per-sample step (forward, backward, AdamW) in one CUDA graph and replay it:
    # needs CUDA, per_sample_masks, distill = 0 and a fixed batch size (a last, smaller batch runs
    # eagerly). Ignored with a logged note on other devices, so one study file serves every machine.
    cuda_graph: bool = False
    # Joint optimization (Table 1 of the paper): rank_weight * R is added to the task loss of the
    # masks_per_step subnets trained in each step, so R's gradient reaches the prior and the
    # supernet together (supernet.rank_loss, loss_gradient=True); every rank_every steps the
    # statistics are still measured, but the prior is no longer refitted from cached scores.
    # Needs per_sample_masks = false and masks_per_step >= 2 (R ranks the step's subnets).
    # Off by default: it measured no better (docs/RESULTS.md, joint optimization).
    joint_rank: bool = False
    rank_weight: float = field(default=0.1, metadata=_between(0.0, 100.0))  # λ of joint_rank
    # The prior's graph network (supernet.relation_graph.RelationGraphPrior): "gatv2" (a GATv2
    # layer and an edge MLP) or "gat" (Eq. 1 as written: GAT's own attention logit per edge).
    prior_gnn: str = field(default="gatv2", metadata=_choices("gatv2", "gat"))
    # How the prior's edge scores become keep probabilities (supernet.relation_graph):
    # "independent" (any path's keep probability reachable whatever its siblings', and a learned
    # global size) or "per_source" (the older x**tau / (1 + x**tau) of Eq. 1's per-source softmax,
    # in which a source's paths share a budget; what checkpoints written before it use).
    prior_keep: str = field(default="independent", metadata=_choices("independent", "per_source"))


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

    Unknown keys, wrong types, values outside their choices or range, non-finite floats, lists
    that are too long or hold an item out of range, and text with control characters are all
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
            problems.append(f"[{section}] unknown key {_short(key)}; known keys: {', '.join(fields)}")
            continue
        secret = fields[key].metadata.get("secret", False)  # a storage URL may hold a password: never quoted
        if not _type_ok(value, hints[key]):
            shown = "" if secret else f"{_short(value)} "
            problems.append(f"[{section}] {key} must be {_type_name(hints[key])}, got {shown}({type(value).__name__})")
            continue
        problem = _value_problem(value, fields[key].metadata)
        if problem:
            # a field that may hold a password (a storage URL) is never quoted, not even in part
            shown = "(value not shown)" if secret else _short(value)
            problems.append(f"[{section}] {key} = {shown} {problem}")
            continue
        kwargs[key] = float(value) if hints[key] is float else value
    return cls(**kwargs)


def _short(value: Any, limit: int = 60) -> str:
    """``repr`` of a value, cut to ``limit`` characters (a 10 MB string stays out of messages)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 5] + "...'" if isinstance(value, str) else text[: limit - 3] + "..."


def _value_problem(value: Any, meta: Any) -> str | None:
    """What is wrong with a value of the right type, judged by its field's metadata, or None."""
    if isinstance(value, list):
        if "max_items" in meta and len(value) > meta["max_items"]:
            return f"has {len(value)} items, at most {meta['max_items']} allowed"
        for i, item in enumerate(value):
            problem = _number_problem(item, {"min": meta.get("item_min"), "max": meta.get("item_max")})
            if problem is None and isinstance(item, str):
                problem = text_problem(item)
            if problem:
                return f"item {i} ({_short(item)}) {problem}"
        return None
    if isinstance(value, str):
        if "choices" in meta and value not in meta["choices"]:
            return f"is not one of {', '.join(meta['choices'])}"
        if "pattern" in meta and not re.fullmatch(meta["pattern"][0], value):
            return f"is not one of {meta['pattern'][1]}"
        return text_problem(value)
    return _number_problem(value, meta)


def _number_problem(value: Any, meta: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return "must be a finite number (nan and inf are not allowed)"
    low, high, below = meta.get("min"), meta.get("max"), meta.get("below")
    where = _range_text(low, high, below)
    if low is not None and value < low:
        return f"must be at least {low}" + where
    if high is not None and value > high:
        return f"must be at most {high}" + where
    if below is not None and value >= below:
        return f"must be less than {below}" + where
    return None


def _range_text(low: Any, high: Any, below: Any) -> str:
    if low is None or (high is None and below is None):
        return ""
    return f" (allowed: {low} to {high})" if high is not None else f" (allowed: {low} up to, not including, {below})"


def field_range(cls: type, name: str) -> tuple[float, float]:
    """The inclusive ``(min, max)`` of a numeric field: for command-line flags that override it."""
    meta = next(f.metadata for f in dataclasses.fields(cls) if f.name == name)
    return meta["min"], meta["max"]


def text_problem(text: str) -> str | None:
    """Text fields (paths, URLs, names) hold no control characters and at most ``TEXT_MAX``
    characters: a NUL byte in a path is a traceback deep inside ``open``, a newline forges log
    lines."""
    if len(text) > TEXT_MAX:
        return f"is {len(text)} characters long, at most {TEXT_MAX} allowed"
    bad = next((c for c in text if not c.isprintable()), None)
    if bad is not None:
        return f"holds the control character {bad!r}; remove it"
    return None


_STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
STUDY_NAME_RULE = (
    f"1 to {STUDY_NAME_MAX} characters: letters, digits, '.', '_' or '-', starting with a letter or digit, "
    "without '..'"
)
MODALITY_NAME_RULE = (
    f"1 to {MODALITY_NAME_MAX} printable characters, no leading or trailing space, without the path "
    "arrow '->'"
)


def name_problem(name: object, *, kind: str) -> str | None:
    """What is wrong with a study name (``kind="study"``) or a modality name (``"modality"``),
    as a phrase that states the rule (``"must have 1 to 100 characters: ..."``), or None.

    A study name becomes folder and file names (``runs/NAME/supernet.pt``) and a database key: no
    path separators, no ``..``, no leading dot or dash, no control characters, bounded length. A
    modality name becomes part of path names ``i->j``: one holding the arrow would make two paths
    share a name, so their bits would always be equal.
    """
    if kind == "study":
        ok = (
            isinstance(name, str)
            and len(name) <= STUDY_NAME_MAX
            and _STUDY_NAME.fullmatch(name) is not None
            and ".." not in name
        )
        rule = STUDY_NAME_RULE
    elif kind == "modality":
        ok = (
            isinstance(name, str)
            and 0 < len(name) <= MODALITY_NAME_MAX
            and name.isprintable()
            and name == name.strip()
            and "->" not in name
        )
        rule = MODALITY_NAME_RULE
    else:
        raise ValueError(f"unknown kind of name {kind!r}")
    if ok:
        return None
    got = f" (got {len(name)} characters)" if isinstance(name, str) and len(name) > 60 else ""
    return f"must have {rule}{got}"


def modality_names_problem(names: list[Any]) -> str | None:
    """The first problem of a list of modality names (each by :func:`name_problem`, at least 2,
    at most ``MODALITIES_MAX``, no repeats), or None."""
    for name in names:
        problem = name_problem(name, kind="modality")
        if problem:
            return f"modality name {_short(name)} {problem}"
    if len(names) < 2 or len(names) > MODALITIES_MAX:
        return f"{len(names)} modalities; give 2 to {MODALITIES_MAX}"
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        return f"modality names repeat ({', '.join(map(repr, repeated))}); give each modality its own name"
    return None


def config_to_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)


def config_sha256(config: dict[str, Any]) -> str:
    """SHA-256 of a configuration, over its canonical JSON (sorted keys, no spaces)."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def scoring_config(config: dict[str, Any]) -> dict[str, Any]:
    """The parts of a study configuration that give masks and scores their meaning: ``[data]``
    (except ``path``, which says where the data lies, not what it is) and ``[model]``."""
    data = {k: v for k, v in (config.get("data") or {}).items() if k != "path"}
    return {"data": data, "model": dict(config.get("model") or {})}
