"""Export one trial's subnet as a standalone PyTorch model (``mro-search export``).

``export_trial`` reads the trial's mask from the study and writes a folder that needs torch and
nothing else:

- ``model.py``: the building blocks of ``supernet.model`` for one subnet (``Subnet``, ``load``);
- ``weights.pt``: a state_dict with only the active paths, the embeddings of the modalities they
  touch and the head (a subset of the supernet's state_dict, same names), loadable with
  ``torch.load(weights_only=True)``;
- ``config.json``: modalities and shapes, mask, active paths, model settings, task, the trial's
  values; ``metrics.json``: test-split metrics (``compute_metrics``), MFLOPs, parameters, and
  after ``--finetune-epochs E`` the metrics before and after fine-tuning;
- ``README.md``: how to load and call it.

Before anything is written, the standalone model is checked against the supernet's masked
forward pass on test samples; an export that disagrees is refused. Fine-tuning trains the
standalone subnet alone on the train split: AdamW with the study's learning rate and weight
decay, the study's batch size and seed, the task loss of pretraining.
"""

from __future__ import annotations

import contextlib
import glob
import json
import math
import os
import re
import shutil
import sys
import tempfile
import types
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from optuna.trial import TrialState

from search_service._subnet_template import MODEL_PY
from search_service.hardware import measure_mask
from search_service.objectives import MEASURED, Objectives
from search_service.sampler import MASK_KEY
from search_service.storage import mask_password
from supernet.device import describe, device_problem, resolve_device
from supernet.errors import ConfigError, MROError, OutputError
from supernet.files import check_output_directory, check_output_file, make_directory, write_file
from supernet.metrics import compute_metrics
from supernet.paths import active_paths, format_mask, parse_mask, path_pairs
from supernet.scoring import batches
from supernet.train import task_loss

if TYPE_CHECKING:
    from search_service.evaluator import Evaluator
    from search_service.search import SearchStudy
    from supernet.model import Supernet

FORMAT = "mro-search-subnet/1"
FILES = ("model.py", "weights.pt", "config.json", "metrics.json", "README.md")
CHECK_SAMPLES = 64  # test samples on which the export must reproduce the supernet
TOLERANCE = 1e-5
EVAL_BATCH = 256


# 1. what a trial selects ---------------------------------------------------------------------------


def trial_mask(search: SearchStudy, number: int, path_names: list[str]) -> tuple[tuple[int, ...], Any]:
    """The mask of COMPLETE trial ``number`` and the trial itself."""
    study = search.optuna_study
    trials = study.get_trials(deepcopy=False)
    found = [t for t in trials if t.number == number]
    if not found:
        span = f"0 to {trials[-1].number}" if trials else "none yet"
        raise ConfigError(f"study {study.study_name!r} has no trial {number} (trials: {span}); see `mro-search pareto --study {study.study_name}`")
    trial = found[0]
    if trial.state != TrialState.COMPLETE:
        raise ConfigError(f"trial {number} of study {study.study_name!r} is {trial.state.name}, not COMPLETE; export a completed trial (see `mro-search pareto`)")
    bits = trial.user_attrs.get("mask") or trial.system_attrs.get(MASK_KEY)
    if bits is None:
        bits = [int(trial.params.get(name, 0)) for name in path_names]
    return parse_mask(bits, len(path_names)), trial


def subnet_state_dict(model: Supernet, mask: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """The supernet's parameters that the subnet uses: active paths, touched embeddings, head."""
    keep = [f"paths.{p}." for p, bit in enumerate(mask) if bit]
    keep += [f"embeddings.{m}." for m in model.modalities_of(mask)]
    keep.append("head.")
    return {k: v.detach().clone().cpu() for k, v in model.state_dict().items() if k.startswith(tuple(keep))}


def architecture_config(model: Supernet, mask: tuple[int, ...]) -> dict[str, Any]:
    """What ``model.py`` needs to rebuild the subnet: modalities, active paths, settings, output."""
    cfg = model.cfg
    used = set(model.modalities_of(mask))
    modalities = []
    for m, (spec, embed) in enumerate(zip(model.spec.modalities, model.embeddings)):
        shape = ["B", spec.length, spec.dim] if spec.is_sequence else ["B", spec.dim]
        modalities.append(
            {"index": m, "name": spec.name, "dim": spec.dim, "length": spec.length, "shape": shape,
             "tokens": embed.tokens, "chunk": embed.chunk, "used": m in used}
        )
    names = [m.name for m in model.spec.modalities]
    paths = [
        {"index": p, "name": model.path_names[p], "source": i, "target": j}
        for p, (i, j) in enumerate(path_pairs(model.k)) if mask[p]
    ]
    return {
        "format": FORMAT,
        "mask": format_mask(mask),
        "active_paths": active_paths(mask, names),
        "all_paths": list(model.path_names),
        "path_convention": "i->j: information flows from source i into target j (j gives the queries, i the keys and values)",
        "modalities": modalities,
        "paths": paths,
        "task": model.spec.task,
        "output_dim": model.spec.output_dim,
        "model": {k: getattr(cfg, k) for k in ("width", "heads", "layers_per_path", "ffn_mult", "dropout", "pooling", "head", "vector_tokens")},
        "params": model.num_parameters(mask),
    }


def subnet_config(evaluator: Evaluator, mask: tuple[int, ...], trial, search: SearchStudy) -> dict[str, Any]:
    """``architecture_config`` plus where the subnet comes from and how it scored."""
    from search_service.search import METRIC_KEY

    attrs = search.attrs
    objectives = Objectives.from_attrs(attrs, str(attrs.get(METRIC_KEY, evaluator.metric)))
    names = objectives.names if len(objectives.names) == len(trial.values) else search.optuna_study.metric_names or [evaluator.metric]
    return {
        "format": FORMAT,
        "study": search.optuna_study.study_name,
        "trial": trial.number,
        **architecture_config(evaluator.model, mask),
        "objectives": dict(zip(names, trial.values)),
        "objective_units": {n: objectives.unit(n) for n in names},
        "search_split": evaluator.study.search.split,
        "search_metrics": trial.user_attrs.get("metrics"),
        "mflops": evaluator.flops.mflops(mask),
        "supernet_checkpoint": evaluator.checkpoint.identity,
        "study_config_sha256": evaluator.study.sha256,
        "storage": mask_password(search.url),
    }


# 2. the standalone module --------------------------------------------------------------------------


def load_module(source: str = MODEL_PY, name: str = "mro_exported_subnet", filename: str = "model.py") -> types.ModuleType:
    """``model.py`` as a module, without touching ``sys.path`` or writing ``__pycache__``."""
    module = types.ModuleType(name)
    module.__file__ = filename
    sys.modules[name] = module  # dataclasses and pickling look modules up here
    try:
        exec(compile(source, filename, "exec"), module.__dict__)
    finally:
        sys.modules.pop(name, None)
    return module


def build_subnet(config: dict[str, Any], state: dict[str, torch.Tensor]) -> torch.nn.Module:
    module = load_module()
    subnet = module.Subnet(config)
    subnet.load_state_dict(state)
    return subnet.eval()


@torch.no_grad()
def max_difference(subnet: torch.nn.Module, model: Supernet, mask: tuple[int, ...], split, names: list[str]) -> float:
    """Largest |subnet - supernet masked forward| on the first ``CHECK_SAMPLES`` samples."""
    index = torch.arange(min(len(split), CHECK_SAMPLES))
    features, lengths, _ = next(batches(split, names, CHECK_SAMPLES, index))
    was_training = model.training
    model.eval()
    expected = model(features, mask, lengths)
    model.train(was_training)
    got = subnet(features, lengths)
    return float((got - expected).abs().max())


@torch.no_grad()
def split_metrics(subnet: torch.nn.Module, split, names: list[str], task: str, device: torch.device) -> dict[str, float]:
    subnet.eval()
    outputs, labels = [], []
    for features, lengths, y in batches(split, names, EVAL_BATCH):
        features = [f.to(device) for f in features]
        lengths = [None if n is None else n.to(device) for n in lengths]
        outputs.append(subnet(features, lengths).float().cpu())
        labels.append(y)
    out = torch.cat(outputs)
    if task == "regression":
        out = out.squeeze(-1)
    return compute_metrics(out, torch.cat(labels), task)


def finetune(subnet: torch.nn.Module, data, train_cfg, epochs: int, device: torch.device, log: Callable[[str], None] | None = None) -> list[dict[str, float]]:
    """Train the subnet alone on the train split; returns the per-epoch train loss."""
    torch.manual_seed(train_cfg.seed)
    g = torch.Generator().manual_seed(train_cfg.seed)
    optimizer = torch.optim.AdamW(subnet.parameters(), lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)
    train = data.splits["train"]
    names = data.modality_names
    history = []
    for epoch in range(epochs):
        subnet.train()
        total, seen = 0.0, 0
        for features, lengths, labels in batches(train, names, train_cfg.batch_size, torch.randperm(len(train), generator=g)):
            features = [f.to(device) for f in features]
            lengths = [None if n is None else n.to(device) for n in lengths]
            labels = labels.to(device)
            optimizer.zero_grad(set_to_none=True)
            loss = task_loss(subnet(features, lengths), labels, data.task)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(labels)
            seen += len(labels)
        history.append({"epoch": epoch + 1, "train_loss": total / max(seen, 1)})
        if log:
            log(f"fine-tuning epoch {epoch + 1}/{epochs}: train loss {history[-1]['train_loss']:.4f}")
    subnet.eval()
    return history


# 3. the export -------------------------------------------------------------------------------------


def export_trial(
    search: SearchStudy,
    evaluator: Evaluator,
    number: int,
    directory: str | Path,
    *,
    finetune_epochs: int = 0,
    force: bool = False,
    log: Callable[[str], None] | None = None,
    device: str | None = None,
) -> dict[str, Any]:
    """Write trial ``number``'s subnet to ``directory``; returns what metrics.json holds and more."""
    if finetune_epochs < 0:
        raise ConfigError(f"--finetune-epochs must be 0 or more, got {finetune_epochs}")
    directory = Path(directory)
    _check_directory(directory, force)
    from search_service.search import check_checkpoint

    check_checkpoint(search, evaluator.checkpoint)
    model = evaluator.model
    mask, trial = trial_mask(search, number, evaluator.path_names)
    config = subnet_config(evaluator, mask, trial, search)
    state = subnet_state_dict(model, mask)
    subnet = build_subnet(config, state)

    data = evaluator.data
    names = data.modality_names
    test = data.splits["test"]
    diff = max_difference(subnet, model, mask, test, names)
    if not diff <= TOLERANCE:
        raise MROError(f"the exported subnet does not reproduce the supernet (max |difference| {diff:.3g} > {TOLERANCE:g} on test samples); nothing written")
    device = _device(device, evaluator.study.train.device, log)
    subnet.to(device)
    before = split_metrics(subnet, test, names, data.task, device)
    metrics: dict[str, Any] = {
        "study": config["study"],
        "trial": number,
        "mask": config["mask"],
        "split": "test",
        "metrics": before,
        "mflops": config["mflops"],
        "params": config["params"],
        "max_abs_difference_vs_supernet": diff,
        "finetune_epochs": finetune_epochs,
        # measured here, on the export device: the subnet's forward (the supernet's masked forward
        # runs exactly the subnet's modules), at the study's latency batch size and precision
        "hardware": {"params": config["params"],
                     **measure_mask(model, mask, MEASURED, _export_setting(evaluator.study, device))},
    }
    if finetune_epochs:
        history = finetune(subnet, data, evaluator.study.train, finetune_epochs, device, log)
        after = split_metrics(subnet, test, names, data.task, device)
        state = {k: v.detach().clone().cpu() for k, v in subnet.state_dict().items()}
        metrics.update(metrics=after, before_finetune=before, after_finetune=after, finetune_history=history,
                       finetune={"optimizer": "AdamW", "lr": evaluator.study.train.lr, "weight_decay": evaluator.study.train.weight_decay,
                                 "batch_size": evaluator.study.train.batch_size, "seed": evaluator.study.train.seed})
    config["finetune_epochs"] = finetune_epochs

    write_export(directory, config, metrics, state)
    return {**metrics, "directory": str(directory), "files": [str(directory / f) for f in FILES], "active_paths": config["active_paths"]}


def write_export(directory: Path, config: dict[str, Any], metrics: dict[str, Any], state: dict[str, torch.Tensor]) -> None:
    """The export's files (``FILES``), all or none: each written whole (``supernet.files.write_file``)
    into a temporary folder beside ``directory``, then moved into place (renames need no space:
    a new folder appears whole at once); on any failure (a full disk, an exception) the temporary
    folder goes, and ``directory`` is as it was, so a retry needs no ``--force``."""
    directory = Path(directory)
    parent = Path(os.path.abspath(directory)).parent
    made = [p for p in (parent, *parent.parents) if not p.exists()]
    make_directory(parent, what="the export")
    contents: dict[str, Any] = {
        "model.py": MODEL_PY,
        "weights.pt": lambda f: torch.save(state, f),
        "config.json": json.dumps(config, indent=2, default=_json_default) + "\n",
        "metrics.json": json.dumps(metrics, indent=2, default=_json_default) + "\n",
        "README.md": _readme(config, metrics, directory),
    }
    stage: Path | None = None
    try:
        try:
            _sweep_stages(parent, directory.name)
            stage = Path(tempfile.mkdtemp(dir=parent, prefix=f".{directory.name[:200]}.{os.getpid()}.", suffix=".tmp"))
        except OSError as exc:
            raise OutputError(f"cannot write the export in {parent}: {exc.strerror or exc}; give -o a writable folder") from exc
        for name in FILES:
            try:
                write_file(stage / name, contents[name], what=f"the export's {name}")
            except OutputError as exc:  # named as the user named it, not by the temporary folder
                raise OutputError(str(exc).replace(str(stage), str(directory))) from exc
        if not directory.exists():
            os.rename(stage, directory)
            stage = None
        else:  # an empty folder, or an earlier export with --force: file by file
            for name in FILES:
                os.replace(stage / name, directory / name)
    except OSError as exc:
        raise OutputError(f"cannot write the export to {directory}: {exc.strerror or exc}; check the folder") from exc
    finally:
        if stage is not None:
            shutil.rmtree(stage, ignore_errors=True)
        if not directory.exists():
            for folder in made:  # innermost first; only if empty
                with contextlib.suppress(OSError):
                    folder.rmdir()


def _sweep_stages(parent: Path, name: str) -> None:
    """Remove the temporary folders of exports to ``name`` whose process is gone (a killed export
    leaves its ``.NAME.PID.*.tmp`` folder; a running one's stays)."""
    for stage in parent.glob(f".{glob.escape(name[:200])}.*.tmp"):
        pid = stage.name[len(name[:200]) + 2:].split(".", 1)[0]
        if pid.isdigit() and not _running(int(pid)) and stage.is_dir() and not stage.is_symlink():
            shutil.rmtree(stage, ignore_errors=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _check_directory(directory: Path, force: bool) -> None:
    """Refuse, before any work, a target where the export cannot go (``supernet.files``): an
    existing non-folder, a pseudo or read-only file system, a folder holding special files under
    the export's names; and an earlier export unless ``force``."""
    check_output_directory(directory, what="the export")
    if directory.is_dir():
        for name in FILES:
            if (directory / name).exists() or (directory / name).is_symlink():
                check_output_file(directory / name, what=f"the export's {name}")
    if directory.is_dir() and not force:
        clashes = [f for f in FILES if (directory / f).exists()]
        if clashes:
            raise ConfigError(f"{directory} already holds an export ({', '.join(clashes)}); pass --force to overwrite it or choose another -o")


def _export_setting(study, device: torch.device) -> dict[str, Any]:
    precision = study.search.latency_precision
    if precision == "fp16" and device.type == "cpu":
        precision = "fp32"  # fp16 is not measured on the CPU
    return {"device": str(device), "batch_size": study.search.latency_batch_size, "precision": precision}


def _device(flag: str | None, name: str, log) -> torch.device:
    """Where the subnet is measured and fine-tuned: ``--device`` (an error if this machine lacks
    it), else ``[train] device`` (``auto`` resolved; the CPU, with a note, if it is not here)."""
    if flag:
        device, why = resolve_device(flag, where="--device")
    elif name == "auto":
        device, why = resolve_device(name)
    else:
        device, why = torch.device(name), f"[train] device = {name}"
        problem = device_problem(device)
        if problem:
            device, why = torch.device("cpu"), f"[train] device {name} is not available here ({problem}): using the CPU"
    if log:
        log(describe(device, why))
    return device


def _json_default(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


def md_code(text: Any) -> str:
    """``text`` as a Markdown code span that shows it literally, whatever it holds: a name that is
    not plain (letters, digits, ``_.+-``, a path arrow) is shown as its JSON string (control
    characters escaped, so no line break can end the span or start a block), fenced by more
    backticks than it contains. HTML inside a code span is text, not markup."""
    text = str(text)
    shown = text if re.fullmatch(r"[\w.+-]+(->[\w.+-]+)?", text, re.ASCII) else json.dumps(text, ensure_ascii=False)
    runs = re.findall(r"`+", shown)
    fence = "`" * (max(map(len, runs)) + 1 if runs else 1)
    pad = " " if shown.startswith("`") or shown.endswith("`") else ""
    return f"{fence}{pad}{shown}{pad}{fence}"


def md_cell(text: Any) -> str:
    """``md_code`` for a table cell: a ``|`` would end the cell even inside a code span."""
    return md_code(text).replace("|", "\\|")


def readme_example(config: dict[str, Any], directory: Path) -> str:
    """The README's Python example: it runs as it is (random inputs of the right shapes). Every
    name and path is a Python literal (``repr``), so no name can become code."""
    inputs = []
    for m in config["modalities"]:
        if m["used"]:
            shape = ", ".join(str(int(d)) for d in [2, *m["shape"][1:]])
            inputs.append(f"{str(m['name'])!r}: torch.randn({shape})")
    output = "class logits (B, C); m.predict(inputs) gives class ids" if config["task"] == "classification" else "regression values (B, 1); m.predict(inputs) gives (B,)"
    return "\n".join([
        "import sys",
        "import torch",
        f"sys.path.insert(0, {str(directory)!r})",
        "import model",
        f"m = model.load({str(directory)!r})          # eval mode, CPU; model.load(DIR, map_location=\"cuda\")",
        f"inputs = {{{', '.join(inputs)}}}   # your features: float32, (B, L, d) or (B, d)",
        f"out = m(inputs)   # {output}",
    ])


def _hardware_line(metrics: dict[str, Any]) -> str:
    hw = metrics.get("hardware") or {}
    lat = hw.get("latency_ms")
    if not isinstance(lat, dict):
        return ""
    return (f"\nMeasured on {md_code(hw.get('device'))} (batch {hw.get('batch_size')}, {hw.get('precision')}): forward latency "
            f"{lat['median']:.3f} ms (median of {lat['runs']} runs, IQR {lat['iqr']:.3f} ms), peak memory "
            f"{hw.get('peak_memory_mb', float('nan')):.2f} MiB.")


def _readme(config: dict[str, Any], metrics: dict[str, Any], directory: Path) -> str:
    rows = []
    for m in config["modalities"]:
        shape = "(" + ", ".join(str(s) for s in m["shape"]) + ")"
        rows.append(f"| {md_cell(m['name'])} | {shape} | {'yes' if m['used'] else 'no (may be left out)'} |")
    metric_rows = "\n".join(f"| {md_cell(k)} | {v:.4f} |" for k, v in metrics["metrics"].items() if isinstance(v, (int, float)))
    tuned = ""
    if metrics.get("finetune_epochs"):
        before = metrics["before_finetune"]
        tuned = (
            f"\nFine-tuned for {metrics['finetune_epochs']} epoch(s) on the train split (AdamW, lr "
            f"{metrics['finetune']['lr']:g}); the weights are the fine-tuned ones. Before fine-tuning: "
            + ", ".join(f"{md_code(k)} {v:.4f}" for k, v in before.items() if isinstance(v, (int, float))) + ".\n"
        )
    return f"""# Subnet {md_code(config['mask'])} of study {md_code(config['study'])} (trial {int(config['trial'])})

Exported by `mro-search export`. Active paths (`i->j`: modality i informs modality j):
{', '.join(md_code(p) for p in config['active_paths'])}. {config['mflops']:.4f} MFLOPs per sample
(fvcore, one multiply-add = one FLOP), {int(config['params'])} parameters.{_hardware_line(metrics)}

Only torch is needed:

```python
{readme_example(config, directory)}
```

Inputs (float32; a sequence modality may also get `lengths`, int64 `(B,)`, for padded steps):

| modality | shape | read by this subnet |
|---|---|---|
{chr(10).join(rows)}

Files: `model.py` (the module), `weights.pt` (state_dict, `torch.load(weights_only=True)`),
`config.json` (shapes, mask, settings), `metrics.json` (metrics on the test split).

Test-split metrics:

| metric | value |
|---|---|
{metric_rows}
{tuned}"""
