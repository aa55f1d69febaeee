"""The ``mro-search`` command line.

One entry point, kebab-case subcommands, common flags from a parent parser. Results go to stdout
(one JSON object with ``--json``), logs and progress to stderr. A problem the user can fix is one
line on stderr and exit code 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from search_service.limits import PORT_MAX, TRIAL_NUMBER_MAX, TRIALS_MAX, WORKERS_MAX
from supernet.config import DEVICE_PATTERN, SEED_MAX, TrainConfig, field_range
from supernet.errors import ConfigError, MROError

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
INTERRUPTED = "mro-search: interrupted"  # the one line a stopped command prints
_RELAY_LOCK = threading.Lock()
log = logging.getLogger("mro_search")


class _Parser(argparse.ArgumentParser):
    def _get_values(self, action: argparse.Action, arg_strings: list[str]) -> Any:
        """``--study=--`` gives the value ``--`` (Python 3.11's argparse drops it as the
        end-of-options marker and hands the command an empty list)."""
        if action.nargs is None and action.option_strings and arg_strings == ["--"]:
            value = self._get_value(action, "--")
            self._check_value(action, value)
            return value
        return super()._get_values(action, arg_strings)

    def error(self, message: str) -> None:
        """A usage error: exactly one line, ``mro-search: error: <message>``, exit code 2, as every
        other error (scripts read one line; the usage is one ``--help`` away)."""
        from search_service.redaction import scrub

        self.exit(EXIT_USAGE, f"mro-search: error: {_one_line(scrub(message))} (see: {self.prog} --help)\n")


def _int_in(low: int, high: int) -> Any:
    """An argparse ``type``: an integer in ``[low, high]``, refused before any command runs."""

    def parse(text: str) -> int:
        try:
            value = int(text, 10)
        except ValueError:
            value = None
        if value is None or not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be an integer from {low} to {high}, got {text[:40]!r}")
        return value

    parse.__name__ = "integer"  # argparse names the type in some messages
    return parse


_SEED = _int_in(0, SEED_MAX)
_RUN_SEED = _int_in(0, SEED_MAX - WORKERS_MAX + 1)  # worker w gets seed + w: every one in range
_TRIALS = _int_in(1, TRIALS_MAX)
_WORKERS = _int_in(1, WORKERS_MAX)
_EPOCHS = _int_in(*field_range(TrainConfig, "epochs"))


def _common() -> argparse.ArgumentParser:
    # SUPPRESS: a flag given before the subcommand is not reset by the subcommand's default
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks and debug logs")
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="no progress bars or logs")
    return common


def _study_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--study", required=True, metavar="NAME", help="study name (studies/NAME.toml) or a path to a .toml file")


def _storage_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--storage", metavar="URL", help="storage URL (default: $MRO_STORAGE, else the study file, else sqlite in runs/NAME)")


def _artifacts_arg(p: argparse.ArgumentParser, *, creating: bool = False) -> None:
    if creating:
        text = "artifact store of a new study: a directory or s3://bucket/prefix (default: $MRO_ARTIFACTS, else the study file, else runs/NAME/artifacts)"
    else:
        text = "where this machine sees the study's artifact store, if not where the study records it (default: $MRO_ARTIFACTS)"
    p.add_argument("--artifacts", type=_artifacts_location, metavar="LOCATION", help=text)


def _artifacts_location(text: str) -> str:
    """An argparse ``type``: a store location whose ``~user`` names a user (checked before the
    command searches for minutes and then cannot store its report)."""
    from supernet.files import expand_home

    if "://" not in text:
        try:
            expand_home(text, what="artifact store")
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from exc
    return text


def _checkpoint_arg(p: argparse.ArgumentParser, text: str) -> None:
    p.add_argument("--checkpoint", metavar="FILE", help=text)


def _device_setting(text: str) -> str:
    """An argparse ``type``: a device setting (``supernet.device`` resolves it on this machine)."""
    import re

    if not re.fullmatch(DEVICE_PATTERN, text):
        raise argparse.ArgumentTypeError(f"must be auto, cpu, cuda, cuda:N or mps, got {text[:40]!r}")
    return text


def _device_arg(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--device", type=_device_setting, metavar="DEVICE",
                   help=f"{what}: auto, cpu, cuda, cuda:N or mps (default: [train] device; auto = CUDA, else MPS, else CPU)")


def _positive_minutes(text: str) -> float:
    """An argparse ``type``: a number of minutes above 0 (``--max-minutes``)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a number of minutes above 0, got {text[:40]!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    parser = _Parser(prog="mro-search", description="Search the cross-modal fusion paths of a multimodal transformer with Optuna.", parents=[common])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser("train", parents=[common], help="train the study's supernet and its relation-graph prior")
    _study_arg(p)
    p.add_argument("--epochs", type=_EPOCHS, help="override [train] epochs")
    p.add_argument("--seed", type=_SEED, help="override [train] seed")
    _device_arg(p, "train on this device")
    _storage_arg(p)  # only to say whether the study there uses this checkpoint
    p.add_argument("--json", action="store_true", help="print the training summary as one JSON object")
    p.set_defaults(handler=cmd_train)

    p = sub.add_parser("flops", parents=[common], help="per-path FLOPs table (fvcore) and a mask's MFLOPs")
    _study_arg(p)
    p.add_argument("--mask", metavar="BITS", help="one bit per path, e.g. 011011 (default: all paths)")
    p.add_argument("--json", action="store_true", help="print the FLOPs table as one JSON object")
    p.set_defaults(handler=cmd_flops)

    p = sub.add_parser("evaluate", parents=[common], help="all metrics of one mask with the trained supernet")
    _study_arg(p)
    p.add_argument("--mask", required=True, metavar="BITS", help="one bit per path, e.g. 011011")
    p.add_argument("--split", choices=("valid", "test"), default="valid")
    p.add_argument("--direct", action="store_true", help="run the masked forward pass instead of the cache")
    _device_arg(p, "build the cache and score on this device")
    _checkpoint_arg(p, "supernet checkpoint file (default: the latest training in runs/NAME/checkpoints, else the study's own)")
    p.add_argument("--json", action="store_true", help="print the mask's metrics as one JSON object")
    p.set_defaults(handler=cmd_evaluate)

    p = sub.add_parser("run", parents=[common], help="create the study (training the supernet first if needed) and search")
    _study_arg(p)
    _storage_arg(p)
    p.add_argument("--trials", type=_TRIALS, help="trial budget (default: [search] trials)")
    p.add_argument("--workers", type=_WORKERS, default=1, help=f"local worker processes, 1 to {WORKERS_MAX} (default 1)")
    p.add_argument("--seed", type=_RUN_SEED, default=0, help="base seed of the workers' samplers (worker w gets seed + w)")
    p.add_argument("--no-report", action="store_true", help="do not write runs/NAME/report.html, nor the figures and note of the study's dashboard page")
    p.add_argument("--json", action="store_true", help="print the Pareto front as one JSON object")
    p.add_argument("--exhaustive", action="store_true", help="score every mask exactly and record the exact Pareto front as trials (no sampling)")
    p.add_argument("--max-minutes", type=_positive_minutes, default=None, metavar="M",
                   help="with --exhaustive: refuse when all masks would take longer (default 60; estimated from a timed sample)")
    _device_arg(p, "train (if needed) and score on this device")
    _artifacts_arg(p, creating=True)
    _checkpoint_arg(p, "supernet checkpoint for a new study (default: the latest training in runs/NAME/checkpoints, else train one)")
    p.set_defaults(handler=cmd_run)

    p = sub.add_parser("worker", parents=[common], help="join an existing study from any machine")
    _study_arg(p)
    _storage_arg(p)
    p.add_argument("--trials", type=_TRIALS, help="at most this many trials from this worker")
    p.add_argument("--seed", type=_SEED, help="seed of this worker's sampler (default: random)")
    _device_arg(p, "build the cache and score on this device")
    _artifacts_arg(p)
    p.set_defaults(handler=cmd_worker)

    p = sub.add_parser("resume", parents=[common], help="continue a stopped study to its budget")
    _study_arg(p)
    _storage_arg(p)
    p.add_argument("--trials", type=_TRIALS, help="new trial budget (default: the study's)")
    p.add_argument("--workers", type=_WORKERS, default=1, help=f"local worker processes, 1 to {WORKERS_MAX} (default 1)")
    p.add_argument("--seed", type=_RUN_SEED, help="base seed of the workers' samplers (worker w gets seed + w; default: random)")
    p.add_argument("--no-report", action="store_true", help="do not write runs/NAME/report.html, nor the figures and note of the study's dashboard page")
    p.add_argument("--json", action="store_true", help="print the Pareto front as one JSON object")
    _artifacts_arg(p)
    p.set_defaults(handler=cmd_resume)

    p = sub.add_parser("pareto", parents=[common], help="the Pareto front of a study")
    _study_arg(p)
    _storage_arg(p)
    p.add_argument("--json", action="store_true", help="print the Pareto front as one JSON object")
    p.set_defaults(handler=cmd_pareto)

    p = sub.add_parser("report", parents=[common], help="write the study's HTML report (front, relation graph, hypervolume, Spearman rho)")
    _study_arg(p)
    _storage_arg(p)
    p.add_argument("-o", "--output", metavar="FILE.html", help="where to write it (default: runs/NAME/report.html)")
    p.add_argument("--json", action="store_true", help="print a summary of the report as one JSON object")
    _artifacts_arg(p)
    p.set_defaults(handler=cmd_report)

    p = sub.add_parser("dashboard", parents=[common], help="serve the study with optuna-dashboard (127.0.0.1 by default)")
    _study_arg(p)
    _storage_arg(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; others expose it without authentication)")
    p.add_argument("--port", type=_int_in(0, PORT_MAX), default=8080, help="port (default 8080; 0: any free port)")
    p.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                   help="also answer requests whose Host is NAME (repeatable); by default only the bound address and loopback names")
    p.add_argument("--read-only", action="store_true", help="refuse every change through the dashboard (any method but GET, HEAD, OPTIONS)")
    _artifacts_arg(p)
    p.set_defaults(handler=cmd_dashboard)

    p = sub.add_parser("export", parents=[common], help="export one trial's subnet as a standalone PyTorch model")
    _study_arg(p)
    _storage_arg(p)
    p.add_argument("--trial", type=_int_in(0, TRIAL_NUMBER_MAX), required=True, metavar="N", help="number of a COMPLETE trial (see `mro-search pareto`)")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="folder for model.py, weights.pt, config.json, metrics.json, README.md")
    p.add_argument("--finetune-epochs", type=_int_in(0, field_range(TrainConfig, "epochs")[1]), default=0, metavar="E", help="fine-tune the subnet alone for E epochs on the train split (default 0)")
    p.add_argument("--force", action="store_true", help="overwrite an earlier export in DIR")
    _device_arg(p, "fine-tune (--finetune-epochs) on this device")
    p.add_argument("--json", action="store_true", help="print the export's metrics as one JSON object")
    _artifacts_arg(p)
    p.set_defaults(handler=cmd_export)

    p = sub.add_parser("delete", parents=[common], help="delete a study, its artifacts and its files (asks first on a terminal)")
    _study_arg(p)
    _storage_arg(p)
    p.add_argument("-y", "--yes", action="store_true", help="do not ask (needed when not on a terminal)")
    p.add_argument("--json", action="store_true", help="print what was removed as one JSON object")
    _artifacts_arg(p)
    p.set_defaults(handler=cmd_delete)

    p = sub.add_parser("validate", parents=[common], help="check a study file and report every problem")
    p.add_argument("file", metavar="FILE", help="a study .toml file or a study name")
    p.add_argument("--json", action="store_true", help="print the verdict and the notes as one JSON object")
    p.set_defaults(handler=cmd_validate)
    return parser


# --- commands ------------------------------------------------------------------------------------


def cmd_validate(args: argparse.Namespace) -> int:
    from search_service.study_file import load_study

    study = load_study(args.file)
    if args.json:
        _print_json({"file": str(study.path), "name": study.name, "ok": True, "notes": study.notes, "sha256": study.sha256})
    else:
        print(f"{study.path}: ok (study {study.name!r}, {study.data.source} data)")
        for note in study.notes:
            print(f"  note: {note}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from search_service.study_file import load_study

    study = load_study(args.study)  # first: a bad study file is refused before torch's modules load

    from search_service.evaluator import train_study
    from search_service.lifecycle import existing_search
    from search_service.storage import mask_password, resolve_url
    from supernet.distributed import from_environment

    if args.device:  # before the data loads: a device this machine lacks is named as the flag
        from supernet.device import resolve_device

        resolve_device(args.device, where="--device")
    logger = None if args.quiet else (lambda msg: log.info(msg))
    # under torchrun: one rank of a data-parallel training (supernet.distributed); rank 0 writes
    # the checkpoint and prints the summary, the others return once it is written
    dist = from_environment(args.device or study.train.device)
    try:
        trained = train_study(study, epochs=args.epochs, seed=args.seed, progress=not args.quiet and not args.json, log=logger,
                              device=args.device, dist=dist if dist.active else None)
    finally:
        dist.close()
    if trained is None:
        return 0
    result, checkpoint, new = trained
    last = result.history[-1]
    # a study made from this file keeps its own checkpoint: say how to search with the new one
    url = resolve_url(study, args.storage)
    try:
        search = existing_search(study.name, url)
    except MROError as exc:
        log.debug(f"study {study.name} not looked up: {exc}")
        search = None
    study_identity = search.checkpoint_record.get("identity") if search is not None else None
    if search is None:
        advice = f"search with it: mro-search run --study {study.name}"
    elif study_identity == checkpoint.identity:
        advice = f"study {study.name!r} in {mask_password(url)} was created with this checkpoint"
    else:
        advice = (f"study {study.name!r} in {mask_password(url)} keeps its own checkpoint {str(study_identity)[:16]}; to search with "
                  f"this one, start over (mro-search delete --study {study.name} --yes, then mro-search run --study {study.name}) or "
                  f"create a study under another name with --checkpoint {checkpoint.path}")
    summary = {
        "study": study.name,
        "checkpoint": str(checkpoint.path),
        "identity": checkpoint.identity,
        "new": new,
        "config_sha256": checkpoint.config_sha256,
        "epochs": len(result.history),
        "train_loss": last["train_loss"],
        "valid_loss_full": last["valid_loss_full"],
        "spearman": last["spearman"],
        "edge_probs": dict(zip(result.model.path_names, last["edge_probs"])),
        "keep_probs": dict(zip(result.model.path_names, last["keep_probs"])),
        "history": result.history,
        "next": advice,
    }
    if args.json:
        _print_json(summary)
    else:
        print(f"trained {study.name}: {summary['epochs']} epoch{'s' if summary['epochs'] != 1 else ''}, train loss {summary['train_loss']:.4f}, "
              f"Spearman rho {summary['spearman']:.3f}")
        state = "new" if new else "already there: same weights, prior and configuration"
        print(f"checkpoint {checkpoint.short_id}: {checkpoint.path} ({state})")
        print("relation graph p(i->j): " + ", ".join(f"{k} {v:.3f}" for k, v in summary["edge_probs"].items()))
        print("prior keep probability q: " + ", ".join(f"{k} {v:.3f}" for k, v in summary["keep_probs"].items()))
        print(advice)
    return 0


def cmd_flops(args: argparse.Namespace) -> int:
    from search_service.study_file import load_study
    from supernet.data import load_data
    from supernet.data.standard import STANDARD_SHAPES
    from supernet.flops import flop_table
    from supernet.model import Supernet, SupernetSpec
    from supernet.paths import format_mask, parse_mask
    from supernet.train import model_spec

    study = load_study(args.study)
    # FLOPs depend on the shapes only: an untrained supernet of the study's shape is enough
    data_path = Path(study.data.path) if study.data.path else None
    if data_path is not None and not data_path.is_absolute():
        data_path = study.base_dir / data_path
    shapes_from = "data"
    if study.data.source in STANDARD_SHAPES and data_path is not None and not data_path.exists():
        release, modalities, task, out = STANDARD_SHAPES[study.data.source]
        spec = SupernetSpec(tuple(modalities), task, out)
        shapes_from = f"standard shapes of {release} ({data_path} not found)"
        log.info(f"{data_path} not found: using the standard shapes of {release}")
    else:
        spec = model_spec(load_data(study.data, base_dir=study.base_dir))
    model = Supernet(spec, study.model)
    table = flop_table(model)
    mask = parse_mask(args.mask, model.num_paths) if args.mask is not None else (1,) * model.num_paths
    result = {
        "study": study.name,
        "mask": format_mask(mask),
        "mflops": table.mflops(mask),
        "shapes_from": shapes_from,
        "shared_mflops": table.shared / 1e6,
        "modality_mflops": {k: v / 1e6 for k, v in zip(table.modality_names, table.modality)},
        "path_mflops": {k: v / 1e6 for k, v in zip(table.path_names, table.path)},
    }
    if args.json:
        _print_json(result)
        return 0
    print(f"{'part':<28}{'MFLOPs':>12}")
    print(f"{'shared (head)':<28}{result['shared_mflops']:>12.4f}")
    for name, value in result["modality_mflops"].items():
        print(f"{'embedding ' + name:<28}{value:>12.4f}")
    for name, value in result["path_mflops"].items():
        print(f"{'path ' + name:<28}{value:>12.4f}")
    print(f"mask {result['mask']}: {result['mflops']:.4f} MFLOPs")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from search_service.study_file import load_study

    study = load_study(args.study)  # first: a bad study file is refused before torch's modules load

    from search_service.evaluator import Evaluator
    from search_service.lifecycle import (
        check_matches,
        existing_search,
        local_checkpoint,
        study_checkpoint,
    )
    from search_service.storage import resolve_url
    from supernet.checkpoint import latest_checkpoint

    search = None
    if not args.checkpoint and latest_checkpoint(study.run_dir) is None:  # nothing trained here
        search = existing_search(study.name, resolve_url(study, None))
    if search is None:
        checkpoint = local_checkpoint(study, args.checkpoint)  # says how to train one if there is none
        source = str(checkpoint.path)
    else:  # the study's own checkpoint
        check_matches(search, study)
        checkpoint = study_checkpoint(search, study.run_dir)
        source = f"study {study.name}'s"
    log.debug(f"checkpoint {checkpoint.short_id} ({source})")
    device, said = _scoring_device(args, study)
    evaluator = Evaluator(study, checkpoint, device=device)
    mask = evaluator.parse(args.mask)
    log.info(said)  # once the mask is known to be good: an error stays the only line
    result = evaluator.evaluate(mask, args.split, direct=args.direct)
    result["checkpoint"] = checkpoint.identity
    if args.json:
        _print_json(result)
        return 0
    print(f"study {result['study']}, mask {result['mask']} ({', '.join(result['active_paths'])}), "
          f"{result['split']} split, {result['method']}, checkpoint {checkpoint.short_id}")
    for name, value in result["metrics"].items():
        print(f"  {name:<12}{value:.4f}")
    print(f"  {'MFLOPs':<12}{result['mflops']:.4f}")
    print(f"  {'params':<12}{result['params']}")
    return 0


def _joined_evaluator(joined, artifacts: str | None, device: Any = "cpu"):
    """The evaluator of a study in storage, with the study's own checkpoint, on ``device``."""
    from search_service.evaluator import Evaluator
    from search_service.lifecycle import study_checkpoint

    checkpoint = study_checkpoint(joined.search, joined.study.run_dir, artifacts_override=artifacts)
    return Evaluator(joined.study, checkpoint, device=device)


def _scoring_device(args: argparse.Namespace, study) -> tuple[Any, str]:
    """Where the evaluator builds its path cache and scores, and the line that says so (the
    command logs it once its setup has succeeded: an error stays the only line): ``--device``
    (an error if this machine lacks it), else the study's ``[train] device`` (the CPU, with a
    note, when this machine lacks it: a study trained on a GPU machine is searched anywhere)."""
    from supernet.device import describe, resolve_device

    if getattr(args, "device", None):
        device, why = resolve_device(args.device, where="--device")
    else:
        try:
            device, why = resolve_device(study.train.device)
        except ConfigError as exc:
            import torch

            device, why = torch.device("cpu"), f"{exc}; using the CPU"
    return device, describe(device, why)


def _say_where(search, checkpoint=None, artifacts: str | None = None, *, log_it: bool = True) -> dict[str, Any]:
    """Where a study, its checkpoint and its artifacts are: logged (commands that run for a
    while say it as they start; the others print it with their results), and returned."""
    from search_service.lifecycle import artifacts_location
    from search_service.storage import mask_password

    record = search.checkpoint_record
    where = {
        "storage": mask_password(search.url),
        "checkpoint": checkpoint.identity if checkpoint is not None else record.get("identity"),
        "checkpoint_artifact": record.get("artifact_id"),
        "artifacts": None,
    }
    try:
        where["artifacts"] = artifacts_location(search, artifacts)
    except MROError:
        pass
    if log_it:
        log.info(f"study {search.name} in {where['storage']}; checkpoint {str(where['checkpoint'])[:16]} "
                 f"(artifact {where['checkpoint_artifact']}); artifacts in {where['artifacts']}")
    return where


def _run_workers(study, url: str, search, evaluator, *, workers: int, seed: int | None, quiet: bool, from_file: bool = True,
                 artifacts: str | None = None, device: str | None = None) -> None:
    import os
    import subprocess

    from search_service.search import run_worker
    from search_service.storage import ENV_VAR

    _check_workers(workers)
    if workers == 1:
        run_worker(search, evaluator, seed=seed, progress=not quiet)
        return
    env = dict(os.environ)
    env[ENV_VAR] = url  # not on the command line, where `ps` would show a password
    if artifacts:
        from search_service.artifacts import ENV_VAR as ARTIFACTS_VAR

        env[ARTIFACTS_VAR] = artifacts
    # W processes x all cores each would oversubscribe the CPU: share the cores out
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))
    procs = []
    for w in range(workers):
        target = str(study.path.resolve()) if from_file else study.name  # no file: the worker joins by name
        cmd = [sys.executable, "-m", "search_service.cli", "worker", "--study", target, "-q"]
        if seed is not None:
            cmd += ["--seed", str(seed + w)]
        if device:
            cmd += ["--device", device]
        # same process group (Ctrl-C and `kill -- -PGID` reach every worker); stderr relayed
        procs.append(subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True, errors="replace"))
    said: set[str] = set()
    relays = [threading.Thread(target=_relay_stderr, args=(p.stderr, said), daemon=True) for p in procs]
    for relay in relays:
        relay.start()
    try:
        try:
            codes = [p.wait() for p in procs]
        except KeyboardInterrupt:
            _stop_workers(procs)
            raise
    finally:
        for relay in relays:
            relay.join(timeout=5)
    failed = [c for c in codes if c != 0]
    if failed:
        raise MROError(f"{len(failed)} of {workers} workers failed (exit codes {failed}); run `mro-search resume --study {study.name}` to finish")


def _check_server(url: str) -> None:
    """A storage URL that does not parse, or a database server that does not answer (or refuses
    the credentials), fails here, before a supernet is trained for a study it cannot hold.
    Nothing is created: tables and an embedded SQLite file only with the study."""
    from search_service.storage import check_reachable

    check_reachable(url)


def _check_workers(workers: int) -> None:
    if workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}")


def _relay_stderr(stream, said: set[str]) -> None:
    """Copy a local worker's stderr to ours. On Ctrl-C every worker stops with it: its
    "interrupted" line is dropped (this process says it once for all), and a notice that each
    worker prints the same ("stopping after the running trial ...", "all N masks scored ...")
    is shown once."""
    for line in stream:
        text = line.strip()
        if text == INTERRUPTED:
            continue
        if text.startswith(("mro-search: stopping", "mro-search: all ")):
            with _RELAY_LOCK:
                if text in said:
                    continue
                said.add(text)
        sys.stderr.write(line)
        sys.stderr.flush()


def _stop_workers(procs, grace: float = 5.0) -> None:
    """After Ctrl-C: the workers got it too (one process group) and finish their trial's
    bookkeeping (the trial is marked failed, for ``resume``). Any still running after ``grace``
    seconds (this process alone was interrupted) gets SIGINT, and is killed if that fails too;
    a killed worker's trial is failed and retried by the heartbeat."""
    import subprocess
    import time

    deadline = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
    for p in procs:
        try:
            p.wait(timeout=3 * grace)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _print_front(search, as_json: bool, extra: dict | None = None) -> None:
    from search_service.exhaustive import exact_front_note
    from search_service.hardware import device_spread, study_tables
    from search_service.objectives import HARDWARE_KEY, UNITS, Objectives
    from search_service.search import METRIC_KEY, over_budget_note, pareto_front
    from search_service.storage import mask_password

    front = pareto_front(search)
    counts = search.counts()
    attrs = search.attrs
    objectives = Objectives.from_attrs(attrs, str(attrs.get(METRIC_KEY, "")))
    spread = device_spread(study_tables(attrs))
    hardware = attrs.get(HARDWARE_KEY) or {}
    exact = exact_front_note(search)  # the study holds the front of run --exhaustive
    over = over_budget_note(search.optuna_study.get_trials(deepcopy=False))  # why trials were pruned at the budget, when some were
    if as_json:
        about = {"objectives": [{"name": n, "direction": d.name.lower(), "unit": objectives.unit(n)}
                                for n, d in zip(objectives.names, objectives.directions)],
                 "limits": {q: {"max": v, "unit": UNITS[q]} for q, v in objectives.limits.items()}}
        if hardware:
            about["latency_device"] = {"device": hardware.get("label", hardware.get("device")), "batch_size": hardware.get("batch_size"),
                                       "precision": hardware.get("precision"), "noise": spread}
        _print_json({"study": search.optuna_study.study_name, "storage": mask_password(search.url), "budget": search.budget, "counts": counts,
                     **about, "pareto_front": front, "exact_front": exact, "over_budget": over, **(extra or {})})
        return
    print(f"study {search.optuna_study.study_name}: {counts['complete']}/{search.budget} trials complete "
          f"({counts['fail']} failed, {counts['pruned']} pruned); Pareto front ({len(front)}{', exact' if exact else ''}):")
    heads = [objectives.metric] + [UNITS[c] if c == "mflops" else objectives.label(c) for c in objectives.costs]
    measured_heads = [f"{c} measured" for c in objectives.costs if c in ("latency_ms", "peak_memory_mb")]
    widths = [max(10, len(h)) for h in heads + measured_heads]
    print(f"{'trial':>6}  {'mask':<12} " + " ".join(f"{h:>{w}}" for h, w in zip(heads + measured_heads, widths)) + "  active paths")
    for row in front:
        cells = [_num(v) for v in row["values"]]
        for c in objectives.costs:
            if c in ("latency_ms", "peak_memory_mb"):
                got = (row.get("measured") or {}).get(c)
                cells.append(_num(got["median"] if isinstance(got, dict) else got) if got is not None else "-")
        tie = f"  (within the device's noise of trial {row['noise_tie']})" if row.get("noise_tie") is not None else ""
        print(f"{row['trial']:>6}  {row['mask']:<12} " + " ".join(f"{c:>{w}}" for c, w in zip(cells, widths))
              + f"  {', '.join(row['active_paths'] or [])}{tie}")
    if objectives.limits:
        print("limits: " + ", ".join(f"{q} <= {v:g} {UNITS[q]}" for q, v in objectives.limits.items()) + " (the front holds only trials within them)")
    if hardware:
        print(f"latency and memory: tables measured on {hardware.get('label', hardware.get('device'))}, batch {hardware.get('batch_size')}, "
              f"{hardware.get('precision')}; device noise ±{100 * spread:.1f} % (IQR/median of repeated runs)")
    if exact:
        print(f"front: {exact}")
    if over:
        print(f"pruned: {over}")
    for key, value in (extra or {}).items():
        print(f"{key}: {_exhaustive_line(value) if key == 'exhaustive' else value}")


def _num(value: Any) -> str:
    """A number for the front's columns: counts whole, the rest to four decimals."""
    if value is None:
        return "-"
    value = float(value)
    return f"{value:.0f}" if abs(value) >= 1000 and value == int(value) else f"{value:.4f}"


def _exhaustive_line(entry: dict[str, Any]) -> str:
    """``run --exhaustive``'s summary in words (``--json`` keeps the object)."""
    rate = f"{entry['masks_per_s']:,.0f} masks/s" if entry.get("masks_per_s") else "rate not measured"
    return (f"{entry['masks']:,} masks scored in {entry['seconds']:.2f} s ({rate}, {entry['method']} on {entry['device']}); "
            f"{entry['added']} front trial{'s' if entry['added'] != 1 else ''} added")


def cmd_run(args: argparse.Namespace) -> int:
    from search_service.study_file import load_study

    study = load_study(args.study)  # first: a bad study file is refused before torch's modules load

    from search_service.creation import create_search
    from search_service.evaluator import Evaluator, train_study
    from search_service.lifecycle import (
        check_matches,
        existing_search,
        local_checkpoint,
        report_path,
        study_checkpoint,
    )
    from search_service.search import check_checkpoint
    from search_service.storage import mask_password, resolve_url
    from supernet.checkpoint import latest_checkpoint
    from supernet.files import check_output_directory

    url = resolve_url(study, args.storage)
    if args.trials is not None and args.trials < 1:
        raise ConfigError(f"--trials must be at least 1, got {args.trials}")
    _check_workers(args.workers)  # before training or creating anything
    if args.device:
        from supernet.device import resolve_device

        resolve_device(args.device, where="--device")
    _check_exhaustive(args)
    _check_server(url)
    check_output_directory(study.run_dir, what="the study's files")  # before training or creating anything
    search = existing_search(study.name, url)  # refuses a study of that name that is not ours
    if search is not None:  # continue it, with its own checkpoint
        check_matches(search, study)
        checkpoint = study_checkpoint(search, study.run_dir, artifacts_override=args.artifacts)
        if args.checkpoint:
            check_checkpoint(search, local_checkpoint(study, args.checkpoint))
    elif args.checkpoint or latest_checkpoint(study.run_dir) is not None:
        checkpoint = local_checkpoint(study, args.checkpoint)
    else:
        _exhaustive_precheck(args, study)  # --exhaustive: a space too large is refused before training
        log.info(f"no supernet checkpoint in {study.run_dir / 'checkpoints'}: training it first")
        _, checkpoint, _ = train_study(study, progress=not args.quiet, log=None if args.quiet else log.info, device=args.device)
    device, said = _scoring_device(args, study)
    evaluator = Evaluator(study, checkpoint, device=device)
    plan = _exhaustive_estimate(args, study, evaluator)  # --exhaustive: refused here if too long, before the study is touched
    created = search is None
    search = create_search(study, url, evaluator, trials=args.trials, artifacts_at=args.artifacts, latency_device=args.device)
    if created and not args.no_report:
        from search_service.dashboard_plots import publish

        publish(search, evaluator)  # the dashboard shows the new study's note and prior at once
    where = _say_where(search, checkpoint, args.artifacts)
    log.info(said)
    if plan is not None:
        return _run_exhaustive(args, study, search, evaluator, plan, where)
    log.info(f"study {study.name} in {mask_password(url)}: budget {search.budget} trials, {args.workers} worker(s)")
    _warn_mask_space(evaluator, search)
    _run_workers(study, url, search, evaluator, workers=args.workers, seed=args.seed, quiet=args.quiet, artifacts=args.artifacts,
                 device=args.device)
    if _deleted_meanwhile(search):
        return 0
    extra = {"artifacts": where["artifacts"], "checkpoint": checkpoint.identity}
    _measure_front(search, evaluator)
    if not args.no_report:
        extra["report"] = str(_write_run_report(search, evaluator, report_path(study, url), args.artifacts))
    _print_front(search, args.json, extra)
    return 0


def _check_exhaustive(args: argparse.Namespace) -> None:
    if args.max_minutes is not None and not args.exhaustive:
        raise ConfigError("--max-minutes applies to --exhaustive only; add --exhaustive, or leave --max-minutes out")
    if args.exhaustive and args.workers != 1:
        raise ConfigError(f"--exhaustive scores every mask in this one process; leave out --workers {args.workers}")


def _exhaustive_estimate(args: argparse.Namespace, study, evaluator):
    """``run --exhaustive``: a timed sample of the scoring, and the refusal when all masks would
    take longer than ``--max-minutes`` (``search_service.exhaustive``); None without the flag."""
    if not args.exhaustive:
        return None
    from search_service import exhaustive

    scorer = exhaustive.scorer_for(evaluator)
    est = exhaustive.estimate(scorer)
    max_minutes = args.max_minutes if args.max_minutes is not None else exhaustive.DEFAULT_MAX_MINUTES
    exhaustive.check_time(est, max_minutes, study.name, str(scorer.device))
    return scorer, est


def _exhaustive_precheck(args: argparse.Namespace, study) -> None:
    """``run --exhaustive`` of a study with no checkpoint yet: the estimate on its supernet as
    initialized (the speed does not depend on the weights), refused before training it."""
    if not args.exhaustive:
        return
    from search_service import exhaustive

    device, _ = _scoring_device(args, study)
    scorer = exhaustive.untrained_scorer(study, device)
    max_minutes = args.max_minutes if args.max_minutes is not None else exhaustive.DEFAULT_MAX_MINUTES
    exhaustive.check_time(exhaustive.estimate(scorer), max_minutes, study.name, str(scorer.device))


def _run_exhaustive(args: argparse.Namespace, study, search, evaluator, plan, where: dict[str, Any]) -> int:
    from search_service.exhaustive import run_exhaustive

    scorer, est = plan
    entry = run_exhaustive(search, evaluator, scorer, est, progress=not args.quiet)
    extra: dict[str, Any] = {"artifacts": where["artifacts"], "checkpoint": evaluator.checkpoint.identity,
                             "exhaustive": {k: entry[k] for k in ("masks", "added", "seconds", "masks_per_s", "method", "device")}}
    _measure_front(search, evaluator)
    if not args.no_report:
        from search_service.lifecycle import report_path

        extra["report"] = str(_write_run_report(search, evaluator, report_path(study, search.url), args.artifacts))
    _print_front(search, args.json, extra)
    return 0


def _deleted_meanwhile(search) -> bool:
    """Whether the study was deleted (or is being deleted) while this command searched it: its
    workers said so in one line and stopped; nothing more to report."""
    from search_service.search import deletion_notice_now

    return deletion_notice_now(search) is not None


def _warn_mask_space(evaluator, search) -> None:
    from search_service.search import mask_space_warning

    warning = mask_space_warning(paths=evaluator.path_names, budget=search.budget)
    if warning:
        log.warning(warning)


def _measure_front(search, evaluator) -> None:
    """A study with measured costs (latency, peak memory): its front's members measured exactly
    on this machine, once each (``search_service.hardware``); said in one line."""
    from search_service.hardware import measure_front
    from search_service.objectives import Objectives
    from search_service.search import METRIC_KEY, pareto_front

    attrs = search.attrs
    objectives = Objectives.from_attrs(attrs, str(attrs.get(METRIC_KEY, "")))
    if not objectives.measured:
        return
    count = measure_front(search, evaluator.model, pareto_front(search), objectives)
    if count:
        log.info(f"measured {', '.join(objectives.measured)} of {count} front member{'s' if count != 1 else ''} exactly")


def _write_run_report(search, evaluator, path: Path, artifacts: str | None) -> Path:
    """The report of ``run``/``resume``: the study's figures and note on its dashboard page, a
    local file, and one copy in the study's artifact store (replacing the last one)."""
    from search_service.dashboard_plots import publish, replace_report
    from search_service.report import build_report

    report = build_report(search, evaluator)
    publish(search, evaluator, report)
    path = report.write(path)
    replace_report(search, path, artifacts)
    return path


def cmd_worker(args: argparse.Namespace) -> int:
    from search_service.lifecycle import join_search
    from search_service.search import run_worker

    joined = join_search(args.study, args.storage)
    full = _budget_taken(joined.search)
    if full is not None:  # before the checkpoint download and the cache, which would serve nothing
        log.info(full)
        return 0
    device, said = _scoring_device(args, joined.study)
    evaluator = _joined_evaluator(joined, args.artifacts, device)
    _say_where(joined.search, evaluator.checkpoint, args.artifacts)
    log.info(said)
    done = run_worker(joined.search, evaluator, max_trials=args.trials, seed=args.seed, progress=not args.quiet)
    log.info(f"worker finished: {done} trials completed here")
    return 0


def _budget_taken(search) -> str | None:
    """The line a worker says when the study already has its budget of complete trials, else
    None (the worker's own loop checks again: this is only to say it before any work)."""
    from search_service.search import budget_reached_notice

    counts, budget = search.counts(), search.budget
    return budget_reached_notice(search.name, budget) if counts["complete"] >= budget else None


def cmd_resume(args: argparse.Namespace) -> int:
    from search_service.lifecycle import join_search
    from search_service.search import BUDGET_KEY

    _check_workers(args.workers)  # before the study is touched
    if args.trials is not None and args.trials < 1:
        raise ConfigError(f"--trials must be at least 1, got {args.trials}")
    joined = join_search(args.study, args.storage)
    search, study = joined.search, joined.study
    device, said = _scoring_device(args, study)
    evaluator = _joined_evaluator(joined, args.artifacts, device)  # the study's own checkpoint, before the study is touched
    where = _say_where(search, evaluator.checkpoint, args.artifacts)
    log.info(said)
    before = search.budget
    if args.trials is not None:
        search.optuna_study._storage.set_study_system_attr(search.optuna_study._study_id, BUDGET_KEY, int(args.trials))
    budget = f"budget {before} -> {args.trials} trials" if args.trials is not None and args.trials != before else f"budget {before} trials"
    log.info(f"study {study.name} in {where['storage']}: {budget}, {search.counts()['complete']} complete, {args.workers} worker(s)")
    _warn_mask_space(evaluator, search)
    _run_workers(study, search.url, search, evaluator, workers=args.workers, seed=args.seed, quiet=args.quiet,
                 from_file=joined.from_file, artifacts=args.artifacts)
    if _deleted_meanwhile(search):
        return 0
    extra = {"artifacts": where["artifacts"], "checkpoint": evaluator.checkpoint.identity}
    _measure_front(search, evaluator)
    if not args.no_report:
        from search_service.lifecycle import report_path

        extra["report"] = str(_write_run_report(search, evaluator, report_path(study, search.url), args.artifacts))
    _print_front(search, args.json, extra)
    return 0


def cmd_pareto(args: argparse.Namespace) -> int:
    from search_service.lifecycle import join_search

    joined = join_search(args.study, args.storage)
    where = _say_where(joined.search, log_it=False)
    _print_front(joined.search, args.json, {"storage": where["storage"], "checkpoint": where["checkpoint"], "artifacts": where["artifacts"]})
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from search_service.lifecycle import join_search, report_path
    from search_service.report import build_report

    joined = join_search(args.study, args.storage)
    evaluator = _joined_evaluator(joined, args.artifacts)
    where = _say_where(joined.search, evaluator.checkpoint, args.artifacts, log_it=False)
    report = build_report(joined.search, evaluator)
    path = report.write(Path(args.output) if args.output else report_path(joined.study, joined.search.url))
    summary = {**report.summary(), "report": str(path), "storage": where["storage"], "checkpoint": where["checkpoint"], "artifacts": where["artifacts"]}
    if args.json:
        _print_json(summary)
    else:
        print(f"report: {path} ({summary['complete_trials']} completed trials, Pareto front of "
              f"{len(summary['pareto_front'])}{' (exact)' if summary.get('exact_front') else ''}, hypervolume {summary['hypervolume']:.5g})")
        log.info(f"study {joined.search.name} in {where['storage']}; checkpoint {where['checkpoint'][:16]}; artifacts in {where['artifacts']}")
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    from search_service import artifacts
    from search_service.dashboard import serve
    from search_service.lifecycle import artifacts_location, join_search

    joined = join_search(args.study, args.storage)
    _say_where(joined.search, None, args.artifacts)  # the dashboard logs its address the same way
    store = None
    try:
        location = artifacts_location(joined.search, args.artifacts)
        if location.startswith("s3://") or Path(location).is_dir():
            store = artifacts.open_store(location)
    except MROError as exc:
        log.warning(f"mro-search: the dashboard will not show artifacts ({exc})")
    return serve(joined.search.url, joined.search.name, host=args.host, port=args.port, artifact_store=store,
                 allowed_hosts=args.allowed_host, read_only=args.read_only)


def cmd_export(args: argparse.Namespace) -> int:
    from search_service.export import export_trial
    from search_service.lifecycle import join_search

    joined = join_search(args.study, args.storage)
    evaluator = _joined_evaluator(joined, args.artifacts)
    where = _say_where(joined.search, evaluator.checkpoint, args.artifacts, log_it=False)
    result = export_trial(joined.search, evaluator, args.trial, args.output, finetune_epochs=args.finetune_epochs,
                          force=args.force, log=None if args.quiet else log.info, device=args.device)
    if args.json:
        _print_json(result)
        return 0
    print(f"exported trial {result['trial']} (mask {result['mask']}: {', '.join(result['active_paths'])}) to {result['directory']}")
    print(f"  from study {joined.search.name} in {where['storage']}, checkpoint {where['checkpoint'][:16]}")
    print(f"  {result['mflops']:.4f} MFLOPs, {result['params']} parameters; load it with "
          f"`import model; m = model.load({str(result['directory'])!r})` (sys.path set to the folder)")
    if result.get("before_finetune"):
        for name, value in result["before_finetune"].items():
            print(f"  test {name:<12}{value:.4f} -> {result['after_finetune'][name]:.4f} after {result['finetune_epochs']} epoch(s) of fine-tuning")
    else:
        for name, value in result["metrics"].items():
            print(f"  test {name:<12}{value:.4f}")
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    from search_service.deletion import delete_search, finish_cut_off
    from search_service.lifecycle import join_search
    from search_service.ownership import CREATING, DELETING
    from search_service.storage import mask_password

    try:
        joined = join_search(args.study, args.storage, allow=(CREATING, DELETING))  # a half-made study, a deletion cut off
    except ConfigError:
        finished = finish_cut_off(args.study, args.storage, artifacts_override=args.artifacts)  # the study is gone, what a killed delete left is not
        if finished is None:
            raise
        return _print_deleted(finished, args.json)
    search = joined.search
    n = len(search.optuna_study.get_trials(deepcopy=False))
    what = f"study {search.name!r} ({n} trials) in {mask_password(search.url)} with its artifacts"
    if not args.yes:
        if not sys.stdin.isatty():
            raise ConfigError(f"not deleting {what}: not on a terminal to ask; add --yes to delete it")
        print(f"delete {what}? [y/N] ", end="", file=sys.stderr, flush=True)
        if sys.stdin.readline().strip().lower() not in ("y", "yes"):
            print("mro-search: nothing deleted", file=sys.stderr)
            return 1
    return _print_deleted(delete_search(joined, artifacts_override=args.artifacts), args.json)


def _print_deleted(removed: dict[str, Any], as_json: bool) -> int:
    """What ``delete`` removed, in one line (or one JSON object)."""
    if as_json:
        _print_json(removed)
        return 0
    files = f": {', '.join(removed['files'])}" if removed["files"] else ""
    what = f"{removed['artifacts']} artifact(s), {len(removed['files'])} file(s){files}"
    if removed.get("cut_off"):
        print(f"finished deleting study {removed['study']} from {removed['storage']} (an earlier delete was cut off after "
              f"removing the study): {what}")
    else:
        print(f"deleted study {removed['study']} from {removed['storage']}, {what}")
    return 0


# --- plumbing -------------------------------------------------------------------------------------


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, default=_json_default))


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


def _configure_logging(args: argparse.Namespace) -> None:
    level = logging.DEBUG if args.debug else logging.WARNING if args.quiet else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False
    if not args.debug:
        # SQLAlchemy logs what it tidies up after a dropped connection or a Ctrl-C ("Error
        # closing cursor", "Exception during reset") with tracebacks through Python's last-resort
        # handler; the errors that matter reach us as exceptions. --debug shows them.
        sqla = logging.getLogger("sqlalchemy")
        if not sqla.handlers:
            sqla.addHandler(logging.NullHandler())


def _remember_argv(argv: Sequence[str]) -> None:
    """Learn the secrets of any storage URL on the command line before argparse may quote it in
    a usage error (``unrecognized arguments: --storage postgresql://user:SECRET@...``)."""
    from search_service.redaction import remember

    for arg in argv:
        arg = str(arg)
        if arg.startswith("-") and "=" in arg:
            arg = arg.split("=", 1)[1]
        if "://" in arg or "=" in arg:
            remember(arg)


_INTERRUPTS: list[int] = []  # Ctrl-C received during this main()


def _noting_interrupts() -> Any:
    """Install a SIGINT handler that raises KeyboardInterrupt, as Python's own does, and notes
    the interrupt (``_INTERRUPTS``): Ctrl-C inside an import (numpy's, scipy's, loaded lazily by a
    command) can leave the module half-made and surface as another exception (a RecursionError
    seen in the interruption fuzz), which ``main`` then reports as the interrupt it was. Only in
    the main thread and over Python's default handler (an ignored SIGINT stays ignored). Returns
    the handler to restore, or None."""
    _INTERRUPTS.clear()
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        return None

    def interrupted(signum: int, frame: Any) -> None:
        _INTERRUPTS.append(signum)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupted)
    return signal.default_int_handler


def main(argv: Sequence[str] | None = None) -> int:
    _remember_argv(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    args.debug = getattr(args, "debug", False)
    args.quiet = getattr(args, "quiet", False)
    _configure_logging(args)
    from search_service.redaction import scrub

    previous = _noting_interrupts()
    try:
        return _main(args, scrub)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def _main(args: argparse.Namespace, scrub: Any) -> int:
    try:
        _guard_secrets(args)  # in the try: Ctrl-C while it loads the study file's modules is one line too
        if args.handler in (cmd_train, cmd_run, cmd_worker, cmd_resume, cmd_evaluate, cmd_export, cmd_report):
            _default_threads()
        return int(args.handler(args) or 0)
    except MROError as exc:
        if args.debug:
            return _print_traceback(exc)
        print(f"mro-search: error: {_one_line(scrub(str(exc)))}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as exc:
        if args.debug:
            _print_traceback(exc)
            return EXIT_INTERRUPTED
        print(INTERRUPTED, file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `mro-search pareto | head`: the reader has what it wanted
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:
        if _INTERRUPTS and not args.debug:  # what a Ctrl-C left behind (see _noting_interrupts): still the interrupt
            print(INTERRUPTED, file=sys.stderr)
            return EXIT_INTERRUPTED
        if not args.debug and isinstance(exc, OSError) and exc.filename is not None:
            # a path the user named or implied that the file system refuses (a name too long, a
            # part of it a file, no permission...): one line naming it, as for every other mistake
            print(f"mro-search: error: {_one_line(scrub(path_problem(exc)))}", file=sys.stderr)
            return EXIT_USAGE
        # the database went away between two steps (a restart, the network): one line, not
        # Optuna's and SQLAlchemy's tracebacks; the study is safe and the command can be rerun
        from search_service.ownership import gone_meanwhile
        from search_service.storage import is_storage_outage

        gone = gone_meanwhile(exc, getattr(args, "study", None))
        if gone and not args.debug:  # `delete` removed the study while this command was using it
            print(f"mro-search: error: {gone}", file=sys.stderr)
            return EXIT_USAGE
        if args.debug or not is_storage_outage(exc):
            return _print_traceback(exc)
        print(f"mro-search: error: {_outage_message(exc, args)}", file=sys.stderr)
        return EXIT_USAGE


EXIT_TRACEBACK = 1  # what Python exits with after an uncaught exception's traceback


def _print_traceback(exc: BaseException) -> int:
    """Print ``exc``'s traceback as Python would, but with every storage secret scrubbed (error
    messages of drivers and of SQLAlchemy can quote a URL or a connection string)."""
    import traceback

    from search_service.redaction import scrub

    sys.stderr.write(scrub("".join(traceback.format_exception(exc))))
    sys.stderr.flush()
    return EXIT_TRACEBACK


def _guard_secrets(args: argparse.Namespace) -> None:
    """Before anything runs: learn the secrets of every storage URL this command may use
    (``--storage``, ``$MRO_STORAGE``, the study file's ``[search] storage``), so that they are
    scrubbed from any text, and scrub log records (``redaction.SecretFilter``)."""
    import os
    import tomllib

    from search_service.redaction import install_secret_filter, remember

    for url in (getattr(args, "storage", None), os.environ.get("MRO_STORAGE")):
        remember(url)
    study = getattr(args, "study", None) or getattr(args, "file", None)
    if isinstance(study, str):
        try:
            from search_service.study_file import find_study_file

            raw = tomllib.loads(find_study_file(study).read_text(encoding="utf-8"))
            remember(str((raw.get("search") or {}).get("storage") or ""))
        except Exception:  # an unreadable study file is the command's own error to report
            pass
    install_secret_filter()


def _default_threads() -> None:
    """Torch's intra-op threads: ``OMP_NUM_THREADS`` when set, else half the logical CPUs.

    Torch takes every logical CPU by default. On a machine that other jobs share, or with
    hyper-threads, its threads then wait for each other at every op: training the demo study
    took 4 to 15 minutes with 2 threads on this project's shared 2-core machine, and under a
    minute with one (``benchmarks/README.md``, bench_main_job)."""
    import os

    if os.environ.get("OMP_NUM_THREADS"):
        return
    import torch

    torch.set_num_threads(default_threads())


def default_threads() -> int:
    """The number of torch threads the CLI uses: ``OMP_NUM_THREADS``, else half the logical
    CPUs (at least 1)."""
    import os

    value = os.environ.get("OMP_NUM_THREADS", "")
    return max(1, int(value)) if value.isdigit() else max(1, (os.cpu_count() or 1) // 2)


def _outage_message(exc: BaseException, args: argparse.Namespace) -> str:
    import os

    from search_service.storage import ENV_VAR, mask_password, outage_reason, scrub

    urls = [u for u in (getattr(args, "storage", None), os.environ.get(ENV_VAR)) if u]
    reason = outage_reason(exc, "")
    for url in urls:
        reason = scrub(reason, url)
    reason = scrub(reason)  # the secrets of any URL seen, and whatever looks like one
    where = f" {mask_password(urls[0])}" if urls else ""
    return f"storage{where} unreachable ({reason}); nothing was lost: run the command again when the database is back"


_PATH_HINTS = {  # errno name -> what is wrong and what to do, for path_problem
    "ENAMETOOLONG": "a name in it is too long for the file system; choose a shorter name",
    "ENOTDIR": "a part of it is a file, not a folder; choose another path",
    "EISDIR": "it is a folder; give a file name",
    "ENOENT": "no such file or folder; check the path",
    "EACCES": "permission denied; choose a path you can use",
    "EPERM": "operation not permitted; choose a path you can use",
    "EROFS": "it is on a read-only file system; choose a path on a writable disk",
    "ENOSPC": "no space left on the disk; free some space or choose another disk",
    "EDQUOT": "the disk quota is used up; free some space or choose another disk",
    "ELOOP": "too many symbolic links; choose another path",
    "EEXIST": "it already exists; choose another path",
}


def path_problem(exc: OSError) -> str:
    """The one line for an ``OSError`` about a path (``exc.filename``): the path (shortened
    when very long) and what the file system said, with what to do."""
    import errno

    name = str(exc.filename)
    if len(name) > 160:
        name = f"{name[:80]}...{name[-40:]} ({len(name)} characters)"
    hint = _PATH_HINTS.get(errno.errorcode.get(exc.errno or -1, ""), f"{exc.strerror or exc}; check the path")
    return f"{name}: {hint}"


def _one_line(text: str) -> str:
    return " ".join(text.split())


if __name__ == "__main__":
    sys.exit(main())
