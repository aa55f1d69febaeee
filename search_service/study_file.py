"""Study files: one TOML file per study in ``studies/``, checked all at once.

A study file has the tables ``[data]``, ``[model]``, ``[train]`` (``supernet.config``),
``[search]`` (below) and an optional top-level ``name`` (the file's stem by default).
``load_study`` collects *every* problem and raises one ``ConfigError`` listing them, so
``mro-search validate FILE`` shows everything that needs fixing in one go.
"""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from supernet.config import (
    DataConfig,
    ModelConfig,
    TrainConfig,
    config_sha256,
    parse_section,
)
from supernet.data.synthetic import required_dims
from supernet.errors import ConfigError
from supernet.metrics import METRICS
from supernet.paths import path_names

REPO_ROOT = Path(__file__).resolve().parent.parent
TOP_LEVEL = ("name", "data", "model", "train", "search")
TASK_OF_SOURCE = {"mmsa": "regression", "meld": "classification", "mfeat": "classification"}


@dataclass
class SearchConfig:
    # Accuracy objective (maximized); MFLOPs is always the second objective (minimized).
    # Empty: the task's default (acc_7 for regression, accuracy for classification).
    metric: str = ""
    trials: int = field(default=60, metadata={"min": 1})  # COMPLETE trials the study aims for
    n_startup_trials: int = field(default=10, metadata={"min": 0})  # uniform masks first
    flops_budget: float = field(default=0.0, metadata={"min": 0.0})  # MFLOPs; 0 = no constraint
    split: str = field(default="valid", metadata={"choices": ("valid", "test")})  # scored split
    storage: str = ""  # storage URL; empty: sqlite in the run directory
    run_dir: str = ""  # where checkpoints and database go; empty: runs/NAME (relative to cwd)
    # Artifact store for the study's checkpoint and report: a directory, or s3://bucket/prefix
    # (AWS_* environment variables, AWS_ENDPOINT_URL included). Empty: $MRO_ARTIFACTS, else
    # runs/NAME/artifacts. Read when the study is created; the study records it.
    artifacts: str = ""


@dataclass
class Study:
    """A loaded, checked study file."""

    name: str
    path: Path
    data: DataConfig
    model: ModelConfig
    train: TrainConfig
    search: SearchConfig
    notes: list[str] = field(default_factory=list)  # things worth knowing that are not errors

    def supernet_config(self) -> dict[str, Any]:
        """What the supernet checkpoint depends on (its SHA-256 ties a checkpoint to a study)."""
        return {"name": self.name, "data": asdict(self.data), "model": asdict(self.model), "train": asdict(self.train)}

    def as_dict(self) -> dict[str, Any]:
        return {**self.supernet_config(), "search": asdict(self.search)}

    @property
    def sha256(self) -> str:
        return config_sha256(self.supernet_config())

    @property
    def run_dir(self) -> Path:
        return Path(self.search.run_dir) if self.search.run_dir else Path("runs") / self.name

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / "supernet.pt"

    @property
    def base_dir(self) -> Path:
        return self.path.parent


def find_study_file(name_or_path: str) -> Path:
    """``demo`` -> ``studies/demo.toml`` (in the working directory, then beside mro-search);
    a path to a ``.toml`` file is taken as it is."""
    candidate = Path(name_or_path)
    if candidate.suffix == ".toml" or candidate.parent != Path("."):
        if not candidate.is_file():
            raise ConfigError(f"study file {candidate} does not exist; give a path to a .toml file or a study name")
        return candidate
    for folder in (Path.cwd() / "studies", REPO_ROOT / "studies"):
        path = folder / f"{name_or_path}.toml"
        if path.is_file():
            return path
    known = sorted({p.stem for folder in (Path.cwd() / "studies", REPO_ROOT / "studies") if folder.is_dir() for p in folder.glob("*.toml")})
    raise ConfigError(f"no study named {name_or_path!r}; known studies: {', '.join(known) or 'none'} (or give a path to a .toml file)")


def load_study(name_or_path: str) -> Study:
    path = find_study_file(name_or_path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read it ({exc})") from exc
    problems: list[str] = []
    for key in raw:
        if key not in TOP_LEVEL:
            problems.append(f"unknown key {key!r} at top level; known: {', '.join(TOP_LEVEL)}")
    name = raw.get("name", path.stem)
    if not isinstance(name, str) or not name or any(c in name for c in "/\\ "):
        problems.append(f"name must be a non-empty string without spaces or slashes, got {name!r}")
        name = path.stem
    study = Study(
        name=name,
        path=path,
        data=parse_section(DataConfig, raw.get("data"), "data", problems),
        model=parse_section(ModelConfig, raw.get("model"), "model", problems),
        train=parse_section(TrainConfig, raw.get("train"), "train", problems),
        search=parse_section(SearchConfig, raw.get("search"), "search", problems),
    )
    _check_semantics(study, raw, problems)
    if problems:
        head = f"{path}: {len(problems)} problem{'s' if len(problems) > 1 else ''}: "
        raise ConfigError(head + "; ".join(problems))
    return study


def task_of(study: Study) -> str | None:
    if study.data.source == "synthetic":
        return study.data.task
    return TASK_OF_SOURCE.get(study.data.source)


def _check_semantics(study: Study, raw: dict[str, Any], problems: list[str]) -> None:
    d, m, t, s = study.data, study.model, study.train, study.search
    if m.width % m.heads:
        problems.append(f"[model] width {m.width} must be divisible by heads {m.heads}")
    if t.warmup_epochs > t.epochs:
        problems.append(f"[train] warmup_epochs {t.warmup_epochs} is more than epochs {t.epochs}")
    if d.valid_fraction + d.test_fraction >= 0.9:
        problems.append("[data] valid_fraction + test_fraction must leave at least 10% for training")
    if d.source == "synthetic":
        if len(set(d.modalities)) != len(d.modalities) or len(d.modalities) < 2:
            problems.append(f"[data] modalities must be at least 2 distinct names, got {d.modalities}")
        elif len(d.dims) != len(d.modalities):
            problems.append(f"[data] dims has {len(d.dims)} entries for {len(d.modalities)} modalities")
        else:
            known = path_names(d.modalities)
            bad = [p for p in d.planted_paths if p not in known]
            if bad:
                problems.append(f"[data] planted_paths {bad} are not paths of {d.modalities}; paths are {known}")
            else:
                for i, (have, need) in enumerate(zip(d.dims, required_dims(d))):
                    if have < need:
                        problems.append(f"[data] dims[{i}] = {have} is too small for {d.modalities[i]!r}: its planted roles need {need}")
        if len(d.samples) != 3 or any(n < 1 for n in d.samples):
            problems.append(f"[data] samples must be three positive counts [train, valid, test], got {d.samples}")
        if d.length > 8:
            problems.append(f"[data] length {d.length} is more than 8, the number of distinct planted codes")
    else:
        if not d.path and d.source != "mfeat":
            problems.append(f"[data] path is empty: set it to your {d.source} file")
        elif d.path:
            target = Path(d.path) if Path(d.path).is_absolute() else study.base_dir / d.path
            if not target.exists():
                study.notes.append(f"[data] path {target} does not exist yet: put the data there before training")
        synthetic_only = ("modalities", "dims", "length", "samples", "planted_paths", "task", "noise")
        given = [k for k in synthetic_only if k in (raw.get("data") or {})]
        if given:
            problems.append(f"[data] {', '.join(given)} only apply to source = 'synthetic'")
    task = task_of(study)
    if s.metric:
        info = METRICS.get(s.metric)
        if info is None:
            problems.append(f"[search] metric {s.metric!r} is unknown; known: {', '.join(METRICS)}")
        elif task is not None and info.task != task:
            problems.append(f"[search] metric {s.metric!r} is for {info.task}, but this study's task is {task}")
        elif info.direction != "maximize":
            problems.append(f"[search] metric {s.metric!r} is minimized; the accuracy objective must be a metric to maximize")
    if s.n_startup_trials > s.trials:
        study.notes.append(f"[search] n_startup_trials {s.n_startup_trials} > trials {s.trials}: every trial is uniform")
