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
from typing import TYPE_CHECKING, Any

from search_service.limits import TRIALS_MAX
from search_service.objectives import objectives_problems
from search_service.proposal_prior import PRIOR_SOURCES
from supernet.config import (
    DATA_SOURCES,
    DEVICE_CHOICES,
    DEVICE_PATTERN,
    DataConfig,
    ModelConfig,
    TrainConfig,
    config_sha256,
    modality_names_problem,
    name_problem,
    parse_section,
    scoring_config,
)
from supernet.data.synthetic import required_dims, synthetic_problems
from supernet.errors import ConfigError
from supernet.metrics import METRICS
from supernet.paths import path_names

if TYPE_CHECKING:
    from supernet.data.npz import NpzLayout

REPO_ROOT = Path(__file__).resolve().parent.parent
TOP_LEVEL = ("name", "data", "model", "train", "search")
TASK_OF_SOURCE = {"mmsa": "regression", "meld": "classification", "mfeat": "classification"}
# [data] keys of the harder synthetic families (supernet.data.synthetic), newer than the rest
SYNTHETIC_FAMILY_KEYS = ("path_strengths", "interaction_paths", "interaction_strength", "shortcut_modality", "shortcut_strength")
_DATA_DEFAULTS = asdict(DataConfig())


@dataclass
class SearchConfig:
    # The accuracy metric (maximized). Empty: the task's default (acc_7 for regression,
    # accuracy for classification).
    metric: str = ""
    trials: int = field(default=60, metadata={"min": 1, "max": TRIALS_MAX})  # COMPLETE trials the study aims for
    n_startup_trials: int = field(default=10, metadata={"min": 0, "max": TRIALS_MAX})  # uniform masks first
    # The objectives (search_service.objectives): the metric ("accuracy": [search] metric, or
    # the task's default; or the metric's own name), then one or two costs to minimize, of
    # mflops (fvcore), params (counted), latency_ms and peak_memory_mb (measured on the
    # latency device; a trial is priced by the study's per-device cost table)
    objectives: list[str] = field(default_factory=lambda: ["accuracy", "mflops"], metadata={"max_items": 3})
    # Limits (0 = none): a trial over one is infeasible (Optuna's constraints); the front holds
    # only feasible trials, and MROSampler does not propose masks the tables place over a limit.
    # flops_budget is max_mflops's old name, still read.
    max_mflops: float = field(default=0.0, metadata={"min": 0.0, "max": 1e12})
    max_latency_ms: float = field(default=0.0, metadata={"min": 0.0, "max": 1e9})
    max_params: int = field(default=0, metadata={"min": 0, "max": 10**13})
    max_peak_memory_mb: float = field(default=0.0, metadata={"min": 0.0, "max": 1e9})
    # Where and how latency and peak memory are measured: the device (empty: [train] device;
    # `--device` overrides), the batch of one forward, and its precision
    latency_device: str = field(default="", metadata={"pattern": (f"|{DEVICE_PATTERN}", DEVICE_CHOICES)})
    latency_batch_size: int = field(default=1, metadata={"min": 1, "max": 4096})
    latency_precision: str = field(default="fp32", metadata={"choices": ("fp32", "fp16", "bf16")})
    split: str = field(default="valid", metadata={"choices": ("valid", "test")})  # scored split
    # The sampler's proposal prior (search_service.proposal_prior): "single_path", keep probabilities
    # from each path's single-path score with the supernet (measured best: docs/RESULTS.md, issue
    # 17); "mrg", the trained Modal Relation Graph prior's (the paper's); "flat", 0.5 for every path.
    prior: str = field(default="single_path", metadata={"choices": PRIOR_SOURCES})
    storage: str = field(default="", metadata={"secret": True})  # storage URL (may hold a password); empty: sqlite in the run directory
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
    # the task an npz file's labels declare (its headers, read by ``parse_study``); None elsewhere
    data_task: str | None = None

    def supernet_config(self) -> dict[str, Any]:
        """What the supernet checkpoint depends on (its SHA-256 ties a checkpoint to a study)."""
        data = asdict(self.data)
        if not data["classes"]:  # 0 (infer): left out, so studies written before the key keep their SHA-256
            del data["classes"]
        for key in SYNTHETIC_FAMILY_KEYS:  # likewise, at their defaults (the data are then the same)
            if data[key] == _DATA_DEFAULTS[key]:
                del data[key]
        return {"name": self.name, "data": data, "model": asdict(self.model), "train": asdict(self.train)}

    def as_dict(self) -> dict[str, Any]:
        return {**self.supernet_config(), "search": asdict(self.search)}

    @property
    def sha256(self) -> str:
        return config_sha256(self.supernet_config())

    @property
    def run_dir(self) -> Path:
        return Path(self.search.run_dir) if self.search.run_dir else Path("runs") / self.name

    @property
    def scoring_sha256(self) -> str:
        """What a checkpoint must have been trained for to score this study's masks
        (``supernet.checkpoint.scoring_config``: [data] but its path, and [model])."""
        return config_sha256(scoring_config(self.supernet_config()))

    @property
    def base_dir(self) -> Path:
        return self.path.parent


def check_study_name(name: str) -> str:
    """A study name given on the command line without a study file (the study is then known
    only from its storage): the rules of a study file's ``name``."""
    problem = study_name_problem(name)
    if problem:
        raise ConfigError(f"study name {name[:80]!r}: {problem}")
    return name


def study_name_problem(name: object) -> str | None:
    """Why ``name`` cannot name a study (it names folders and files too), or None: the rules of
    ``supernet.config.name_problem``, the one place that states them."""
    return name_problem(name, kind="study")


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
    return parse_study(raw, path)


def parse_study(raw: dict[str, Any], path: Path) -> Study:
    """Check a study's configuration (a study file's tables, or the configuration a study
    recorded in its storage) and build the ``Study``; ``path`` is the study file (relative data
    paths are taken from its folder), which need not exist."""
    problems: list[str] = []
    for key in raw:
        if key not in TOP_LEVEL:
            problems.append(f"unknown key {key!r} at top level; known: {', '.join(TOP_LEVEL)}")
    name = raw.get("name", path.stem)
    problem = name_problem(name, kind="study")
    if problem:
        given = "name" if "name" in raw else f"the file name {path.name!r} (the study's name when it gives no name)"
        problems.append(f"{given} = {str(name)[:60]!r} {problem}")
        name = "invalid"
    data = raw.get("data")
    if data is None:
        problems.append(f"[data] is missing: a study needs a [data] table with source = one of {', '.join(DATA_SOURCES)}")
    elif isinstance(data, dict) and "source" not in data:
        problems.append(f"[data] source is missing: say which data to train on, one of {', '.join(DATA_SOURCES)}")
    study = Study(
        name=name,
        path=path,
        data=parse_section(DataConfig, raw.get("data"), "data", problems),
        model=parse_section(ModelConfig, raw.get("model"), "model", problems),
        train=parse_section(TrainConfig, raw.get("train"), "train", problems),
        search=parse_section(SearchConfig, _renamed_search_keys(raw.get("search"), problems), "search", problems),
    )
    _check_semantics(study, raw, problems)
    if problems:
        head = f"{path}: {len(problems)} problem{'s' if len(problems) > 1 else ''}: "
        raise ConfigError(head + "; ".join(problems))
    return study


def _renamed_search_keys(raw: Any, problems: list[str]) -> Any:
    """``[search] flops_budget`` is ``max_mflops``'s old name: read as it (studies stored before
    the rename hold it in their configuration); both at once is a problem."""
    if not isinstance(raw, dict) or "flops_budget" not in raw:
        return raw
    raw = dict(raw)
    if "max_mflops" in raw:
        problems.append("[search] flops_budget is the old name of max_mflops: give only max_mflops")
        del raw["flops_budget"]
    else:
        raw["max_mflops"] = raw.pop("flops_budget")
    return raw


def task_of(study: Study) -> str | None:
    """classification or regression, as far as it is known without loading the data (an npz
    file's from its label's header; None when the file is not there yet)."""
    if study.data.source == "synthetic":
        return study.data.task
    if study.data.source == "npz":
        return study.data_task
    return TASK_OF_SOURCE.get(study.data.source)


def _check_semantics(study: Study, raw: dict[str, Any], problems: list[str]) -> None:
    d, m, t, s = study.data, study.model, study.train, study.search
    layout = None  # an npz file's headers
    if m.width % m.heads:
        problems.append(f"[model] width {m.width} must be divisible by heads {m.heads}")
    if t.warmup_epochs > t.epochs:
        problems.append(f"[train] warmup_epochs {t.warmup_epochs} is more than epochs {t.epochs}")
    if t.joint_rank and t.per_sample_masks:
        problems.append("[train] joint_rank ranks the subnets of a step: set per_sample_masks = false, or joint_rank = false")
    if t.joint_rank and t.masks_per_step < 2:
        problems.append(f"[train] joint_rank ranks the subnets of a step: masks_per_step must be at least 2 (is {t.masks_per_step})")
    if d.valid_fraction + d.test_fraction >= 0.9:
        problems.append("[data] valid_fraction + test_fraction must leave at least 10% for training")
    if d.classes and d.source != "npz":
        problems.append(f"[data] classes only applies to source = 'npz' (source {d.source!r} knows its classes); leave it out")
    if d.source == "synthetic":
        names_problem = modality_names_problem(d.modalities)
        if names_problem:
            problems.append(f"[data] modalities: {names_problem}")
        elif len(d.dims) != len(d.modalities):
            problems.append(f"[data] dims has {len(d.dims)} entries for {len(d.modalities)} modalities")
        else:
            known = path_names(d.modalities)
            bad = [p for p in d.planted_paths if p not in known]
            bad_pair = [p for p in d.interaction_paths if p not in known]
            if bad:
                problems.append(f"[data] planted_paths {bad} are not paths of {d.modalities}; paths are {known}")
            elif bad_pair:
                problems.append(f"[data] interaction_paths {bad_pair} are not paths of {d.modalities}; paths are {known}")
            elif synthetic_problems(d):
                problems.extend(synthetic_problems(d))
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
            elif d.source == "npz":
                layout = _check_npz(study, target, problems)
        synthetic_only = ("modalities", "dims", "length", "samples", "planted_paths", "task", "noise", *SYNTHETIC_FAMILY_KEYS)
        given = [k for k in synthetic_only if k in (raw.get("data") or {})]
        if given:
            problems.append(f"[data] {', '.join(given)} only apply to source = 'synthetic'")
    _check_size(study, layout, problems)
    task = task_of(study)
    if s.metric:
        info = METRICS.get(s.metric)
        if info is None:
            problems.append(f"[search] metric {s.metric!r} is unknown; known: {', '.join(METRICS)}")
        elif task is not None and info.task != task:
            if d.source == "npz":
                problems.append(
                    f"[search] metric {s.metric!r} is for {info.task}, but the labels of {d.path} are "
                    + ("floats (regression targets): store integer class ids (np.int64) for classification"
                       if task == "regression" else "integers (class ids): store floats for regression")
                    + ", or choose a metric for " + task
                )
            else:
                problems.append(f"[search] metric {s.metric!r} is for {info.task}, but this study's task is {task}")
        elif info.direction != "maximize":
            problems.append(f"[search] metric {s.metric!r} is minimized; the accuracy objective must be a metric to maximize")
    problems.extend(objectives_problems(s, task))
    if s.n_startup_trials > s.trials:
        study.notes.append(f"[search] n_startup_trials {s.n_startup_trials} > trials {s.trials}: every trial is uniform")
    # no mask is scored twice, so a budget above the masks of k modalities cannot be reached (k
    # as far as it is known without reading the data: an npz file's is not; MELD has 3 or 2)
    from supernet.paths import num_masks

    if d.source == "synthetic":
        k = len(d.modalities) if len(set(d.modalities)) == len(d.modalities) >= 2 else 0
    else:
        k = {"mfeat": 6, "mmsa": 3, "meld": 3}.get(d.source, 0)
    if k and s.trials > num_masks(k):
        study.notes.append(f"[search] trials {s.trials} > the {num_masks(k)} masks of {k} modalities: the search stops when every mask is scored")
    elif d.source == "meld" and s.trials > num_masks(2):
        study.notes.append(f"[search] trials {s.trials} > the {num_masks(2)} masks of a MELD file without visual features: such a search stops when every mask is scored")


def _check_npz(study: Study, target: Path, problems: list[str]) -> NpzLayout | None:
    """Read an npz file's headers (shapes and dtypes, no data): a corrupt header is a problem
    now, and the labels' dtype tells the task, so a metric of the other task is refused before
    any study is created."""
    from supernet.data.npz import read_layout
    from supernet.errors import DataError

    try:
        layout = read_layout(target)
    except DataError as exc:
        problems.append(f"[data] path: {exc}")
        return None
    study.data_task = layout.task
    return layout


def _check_size(study: Study, layout: NpzLayout | None, problems: list[str]) -> None:
    """Refuse what this machine could never hold, whatever else runs on it: the data set and
    one training step of the supernet, estimated from the configuration and the data's shapes
    (the synthetic generator's, an npz file's headers, the public releases' for the pickles).
    The loaders and training check again against the memory available when they start."""
    from supernet.data.dataset import ModalitySpec
    from supernet.data.mfeat import VIEWS
    from supernet.data.standard import STANDARD_SHAPES
    from supernet.errors import ResourceError
    from supernet.memory import gib, require_memory, split_bytes, training_bytes

    d = study.data
    samples: int | None = None
    data_bytes = 0
    if d.source == "synthetic":
        if modality_names_problem(d.modalities) or len(d.dims) != len(d.modalities) or len(d.samples) != 3:
            return  # reported above
        modalities = [ModalitySpec(n, dim, d.length) for n, dim in zip(d.modalities, d.dims)]
        output = 2 if d.task == "classification" else 1
        samples = d.samples[0]
        data_bytes = split_bytes(modalities, sum(d.samples))
    elif d.source == "npz":
        if layout is None:
            return
        modalities = layout.modalities()
        if len(modalities) < 2:
            return  # the loader says what is missing
        output = max(d.classes, 2) if layout.task == "classification" else 1
        samples = layout.samples("train") or None
        data_bytes = layout.loaded_bytes()
    elif d.source == "mfeat":
        modalities = [ModalitySpec(v, dim) for v, dim in VIEWS.items()]
        output = 10
    elif d.source in STANDARD_SHAPES:
        _, modalities, _, output = STANDARD_SHAPES[d.source]
    else:
        return
    need = data_bytes
    if not study.train.device.startswith(("cuda", "mps")):  # else the model lives on the accelerator
        need += training_bytes(modalities, output, study.model, study.train, train_samples=samples)
    try:
        require_memory(
            need,
            what=f"this study (data {gib(data_bytes)}, supernet and one training step {gib(need - data_bytes)})",
            fix="lower [model] width, layers_per_path or ffn_mult, [train] batch_size, or the data's size",
            now=False,
        )
    except ResourceError as exc:
        problems.append(str(exc))
