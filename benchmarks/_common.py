"""What the benchmark scripts share: the machine they ran on, the per-job result caches of
the long evidence runs, and running jobs in worker processes."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
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
