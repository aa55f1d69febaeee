"""What the benchmark scripts share: the machine they ran on, the per-job result caches of
the long evidence runs, a study's cached supernet checkpoint, and running jobs in worker
processes."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import tomllib
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from multiprocessing import get_context
from pathlib import Path
from typing import Any


def machine_info(**extra: Any) -> dict:
    """Date, CPU model and count, Python, torch (version, threads), the load average at the
    start, and ``extra`` (e.g. other packages' versions)."""
    import torch

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu_model": cpu,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "loadavg_start": list(os.getloadavg()),
        **extra,
    }


def load_jsonl(path: Path, key: str) -> dict[str, dict]:
    """The rows of a JSON-lines cache by ``row[key]`` (a line cut short by an interrupted run
    is skipped)."""
    done: dict[str, dict] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            done[row[key]] = row
    return done


def cached_checkpoint(study: Any) -> Any | None:
    """The supernet last trained in ``study``'s run directory (``RUN_DIR/checkpoints``, found by
    ``supernet.checkpoint.latest_checkpoint``) when it was trained with exactly this study's
    configuration, training included (the checkpoint's ``config_sha256`` is ``study.sha256``);
    else None. A file that cannot be read, or that is another configuration's, is removed, so
    that the training that replaces it is written (``write_checkpoint`` keeps a file it finds).
    Only for the benchmarks' own cache directories (``runs/bench_*``)."""
    from supernet.checkpoint import latest_checkpoint, load_checkpoint
    from supernet.errors import CheckpointError

    path = latest_checkpoint(study.run_dir)
    if path is None:
        return None
    try:
        return load_checkpoint(path, expected_sha256=study.sha256)
    except CheckpointError:  # damaged or foreign: train again
        path.unlink(missing_ok=True)
        return None


def forget_checkpoint(study: Any) -> None:
    """Remove the latest checkpoint of ``study``'s run directory (``--fresh``: train again)."""
    from supernet.checkpoint import latest_checkpoint

    path = latest_checkpoint(study.run_dir)
    if path is not None:
        path.unlink(missing_ok=True)


def train_checkpoint(study: Any, data: Any) -> Any:
    """Train ``study``'s supernet on ``data`` and write it as ``RUN_DIR/checkpoints/<id>.pt``
    (``supernet.checkpoint.write_checkpoint``, as ``mro-search train`` does); returns the
    checkpoint, loaded back from the file."""
    from supernet.checkpoint import load_checkpoint, write_checkpoint
    from supernet.train import train_supernet

    result = train_supernet(data, study.model, study.train, progress=False)
    path, _ = write_checkpoint(study.run_dir, result.model, result.prior, study.supernet_config(), result.history)
    return load_checkpoint(path, expected_sha256=study.sha256)


def run_jobs(jobs: Iterable, run: Callable, record: Callable, *, workers: int, initializer: Callable | None = None) -> None:
    """``record(run(job))`` for every job: in this process, or in ``workers`` spawned processes
    (results recorded as they finish)."""
    if workers > 1:
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=initializer) as pool:
            pending = {pool.submit(run, job) for job in jobs}
            while pending:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    record(future.result())
    else:
        for job in jobs:
            record(run(job))


def write_result(out: Path, stem: str, report: dict, markdown: str) -> None:
    """``OUT/STEM.json`` (every number) and ``OUT/STEM.md`` (the tables) of an evidence run."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(report, indent=1, default=float) + "\n")
    (out / f"{stem}.md").write_text(markdown)


def publish(report: dict, markdown: str, *, out: str, stem: str, as_json: bool) -> None:
    """A benchmark's ending: the tables on stdout, ``write_result`` into ``out`` when given, and
    the report as one JSON object with ``--json``."""
    print(markdown)
    if out:
        write_result(Path(out), stem, report, markdown)
    if as_json:
        print(json.dumps(report, default=float))


def parse_overrides(items: list[str]) -> dict:
    """``["KEY=VALUE", ...]`` (TOML values) -> a dict, checked against [train]'s keys and types."""
    from supernet.config import TrainConfig, parse_section

    raw = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"error: --train {item!r} is not KEY=VALUE, e.g. --train distill=0.5")
        try:
            raw[key.strip()] = tomllib.loads(f"v = {value.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            raise SystemExit(f"error: --train {item!r}: {value!r} is not a TOML value (strings need quotes)") from None
    problems: list[str] = []
    parse_section(TrainConfig, raw, "train", problems)
    if problems:
        raise SystemExit(f"error: --train: {problems[0]}")
    return raw


def check_tag(tag: str) -> None:
    """``--tag``: a suffix of result file names, so letters, digits, - and _ only."""
    if tag and not tag.replace("-", "_").isidentifier():
        raise SystemExit(f"error: --tag {tag!r}: use letters, digits, - and _ only")
