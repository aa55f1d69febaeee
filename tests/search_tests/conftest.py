"""Fixtures for the search-service tests: a tiny study trained once, and real storages.

Everything here is real: the supernet is trained by ``mro-search train`` in a subprocess, the
studies live in SQLite files or in a fresh PostgreSQL database per test, and workers are
``mro-search`` processes. Helpers reach test modules through the ``mro`` fixture, so test
modules import nothing from here.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
PATHS_K3 = ["text->audio", "text->vision", "audio->text", "audio->vision", "vision->text", "vision->audio"]


def study_toml(name: str, run_dir: Path | None, **search: object) -> str:
    """A tiny synthetic study: 3 modalities, 6 paths, 63 non-empty masks, a 1-epoch supernet.

    ``search`` adds keys to ``[search]``; everything the checkpoint depends on ([data], [model],
    [train]) is the same for every call, so all variants share one trained supernet."""
    lines = [
        f'name = "{name}"',
        "",
        "[data]",
        'source = "synthetic"',
        'modalities = ["text", "audio", "vision"]',
        "dims = [17, 9, 8]  # text: source of audio->text (9) + target of text->vision (8)",
        "length = 4",
        "samples = [256, 128, 128]",
        'planted_paths = ["audio->text", "text->vision"]',
        'task = "classification"',
        "noise = 0.1",
        "seed = 0",
        "",
        "[model]",
        "width = 16",
        "heads = 2",
        "ffn_mult = 2",
        "dropout = 0.0",
        "",
        "[train]",
        "epochs = 1",
        "warmup_epochs = 1",
        "batch_size = 64",
        "seed = 0",
        "",
        "[search]",
    ]
    search = {"metric": "accuracy", "trials": 20, "n_startup_trials": 5, **search}  # given keys replace these
    if run_dir is not None:  # else: runs/NAME under the working directory
        search = {"run_dir": run_dir.as_posix(), **search}
    for key, value in search.items():
        lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def _toml_value(value: object) -> str:
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


@dataclass
class TinyStudy:
    """The trained tiny study: its file, name, run directory and checkpoint."""

    file: Path
    name: str
    run_dir: Path
    root: Path  # a scratch directory of the session (working directory of the subprocesses)

    @property
    def checkpoint(self) -> Path:
        """The checkpoint ``mro-search train`` wrote (``RUN_DIR/checkpoints/<identity>.pt``)."""
        from supernet.checkpoint import latest_checkpoint

        path = latest_checkpoint(self.run_dir)
        assert path is not None, f"no checkpoint in {self.run_dir}"
        return path

    def seed_run_dir(self, run_dir: Path, data: bytes | None = None) -> Path:
        """A run directory of its own holding a copy of the trained checkpoint (or ``data``, the
        bytes of another file) as its latest training, so that no command trains again."""
        from supernet.checkpoint import LATEST, checkpoint_dir

        folder = checkpoint_dir(run_dir)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / self.checkpoint.name).write_bytes(self.checkpoint.read_bytes() if data is None else data)
        (folder / LATEST).write_text(self.checkpoint.name + "\n", encoding="utf-8")
        return run_dir

    def variant(self, directory: Path, filename: str = "variant.toml", *, run_dir: Path | None = None, **search: object) -> Path:
        """Another study file for the same supernet (same name), with other [search] keys."""
        path = directory / filename
        path.write_text(study_toml(self.name, run_dir or self.run_dir, **search), encoding="utf-8")
        return path


def one_error(result: subprocess.CompletedProcess, *needles: str) -> str:
    """The one ``mro-search: error:`` line of a command that exited 2, holding every needle."""
    assert result.returncode == 2, f"{result.returncode}\n{result.stdout}\n{result.stderr}"
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("mro-search: error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def mro_command() -> list[str]:
    """The ``mro-search`` console script of this interpreter's environment (else ``-m``)."""
    script = Path(sys.executable).parent / "mro-search"
    if script.is_file():
        return [str(script)]
    found = shutil.which("mro-search")
    return [found] if found else [sys.executable, "-m", "search_service.cli"]


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a worker subprocess: no inherited MRO_STORAGE, one torch thread each
    (several workers share this machine's cores; torch's thread pool would oversubscribe them)."""
    env = {k: v for k, v in os.environ.items() if k != "MRO_STORAGE"}
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def run_cli(args: Sequence[str], *, cwd: Path, env: dict[str, str] | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([*mro_command(), *args], cwd=cwd, env=env or child_env(), capture_output=True, text=True, timeout=timeout)


def start_cli(args: Sequence[str], *, cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start ``mro-search ARGS`` in its own process group (so a test can signal all of it)."""
    return subprocess.Popen(
        [*mro_command(), *args], cwd=cwd, env=env or child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )


def stop_group(proc: subprocess.Popen, sig: int = signal.SIGKILL, timeout: float = 60) -> tuple[str, str]:
    """Signal a process group started by ``start_cli`` (if it still runs, stopped or not), reap it, and return
    what it wrote (stdout, stderr) that nobody read yet."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
            os.killpg(proc.pid, signal.SIGCONT)  # a group frozen by ``freeze_when`` gets it now
        except ProcessLookupError:
            pass
    if proc.stdout is None or proc.stdout.closed:
        proc.wait()
        return "", ""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
    return out or "", err or ""


def assert_clean_exits(procs: Sequence[subprocess.Popen], outputs: Sequence[tuple[str, str]]) -> None:
    """Every worker process exited 0, without a traceback on stderr."""
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, f"worker exit {proc.returncode}:\n{out}\n{err}"
        assert "Traceback" not in err, err


def wait_for(predicate, *, timeout: float, interval: float = 0.2, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def freeze_when(procs: Sequence[subprocess.Popen], predicate, *, timeout: float, interval: float = 0.02, what: str = "condition"):
    """Stop (SIGSTOP) the process groups of ``procs`` and test ``predicate`` while nothing moves;
    if it holds, return its value with the groups still stopped (``thaw`` them, or kill them),
    else let them go on (SIGCONT) and look again ``interval`` later.

    Trials of the tiny study take milliseconds: a test that waits for "a trial is running" or
    "5 trials are done, the run is not over" by polling alone races the workers. Looking only at
    a frozen study makes the moment the test acts on the one it saw."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in procs:
            assert proc.poll() is None, f"a process exited (code {proc.returncode}) before {what}"
        _signal_groups(procs, signal.SIGSTOP)
        try:
            value = predicate()
        except BaseException:
            _signal_groups(procs, signal.SIGCONT)
            raise
        if value:
            return value
        _signal_groups(procs, signal.SIGCONT)
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def thaw(procs: Sequence[subprocess.Popen]) -> None:
    """Let process groups stopped by ``freeze_when`` go on."""
    _signal_groups(procs, signal.SIGCONT)


def hold_leader_until_others_work(study, procs: Sequence[subprocess.Popen], *, timeout: float = 180.0) -> None:
    """Make the worker processes in the groups of ``procs`` take turns: when the first trial
    completes, stop (SIGSTOP) the worker that ran it until a trial of another worker completes,
    then let it go on. Tiny trials take milliseconds and a worker seconds to start: left alone,
    the first worker up may run the whole budget before the next one has loaded its supernet.
    (PostgreSQL only: a worker stopped inside an SQLite write transaction would hold the file's
    write lock.)"""
    from optuna.trial import TrialState

    def completed():
        return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))

    first = freeze_when(procs, lambda: completed(), timeout=timeout, what="a first complete trial")[0]
    leader = int(str(first.user_attrs["worker"]).rsplit(":", 1)[1])
    try:
        for pid in _group_members(procs):
            if pid != leader:
                os.kill(pid, signal.SIGCONT)
        wait_for(lambda: any(t.user_attrs.get("worker") != first.user_attrs["worker"] for t in completed()), timeout=timeout, what="a trial of another worker")
    finally:
        thaw(procs)


def line_up(study, procs: Sequence[subprocess.Popen], *, timeout: float = 180.0) -> None:
    """Hold each worker process (its own process group, ``start_cli``) stopped from the moment
    it has started a trial until every one has, then let them all go on: trials take
    milliseconds and a worker seconds to start, so the first one up could otherwise run the
    whole budget alone."""
    host = socket.gethostname()
    waiting = {f"{host}:{p.pid}": p for p in procs}
    deadline = time.monotonic() + timeout
    try:
        while waiting:
            assert time.monotonic() < deadline, f"timed out after {timeout:.0f}s: {sorted(waiting)} never started a trial"
            for proc in waiting.values():
                assert proc.poll() is None, f"a worker exited (code {proc.returncode}) before all had started"
            started = {t.user_attrs.get("worker") for t in study.get_trials(deepcopy=False)}
            for worker in [w for w in waiting if w in started]:
                _signal_groups([waiting.pop(worker)], signal.SIGSTOP)
            time.sleep(0.02)
    finally:
        thaw(procs)


def _group_members(procs: Sequence[subprocess.Popen]) -> list[int]:
    """The processes of the process groups of ``procs`` (Linux ``/proc``)."""
    groups = {p.pid for p in procs}
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[2]) in groups:  # pgrp
                members.append(int(entry))
    return members


def _signal_groups(procs: Sequence[subprocess.Popen], sig: int) -> None:
    for proc in procs:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass


# --- the trained tiny study ---------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyStudy:
    """The tiny study file, its supernet trained once per session by ``mro-search train``."""
    root = tmp_path_factory.mktemp("tiny")
    run_dir = root / "run"
    file = root / "tiny.toml"
    file.write_text(study_toml("tiny", run_dir), encoding="utf-8")
    result = run_cli(["train", "--study", str(file), "-q"], cwd=root, timeout=300)
    assert result.returncode == 0, f"mro-search train failed:\n{result.stdout}\n{result.stderr}"
    assert len(list((run_dir / "checkpoints").glob("*.pt"))) == 1
    return TinyStudy(file=file, name="tiny", run_dir=run_dir, root=root)


@pytest.fixture(scope="package", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """In-process sampler and evaluator work is tiny: one torch thread is much faster on a
    shared machine than a pool that spins on busy cores (restored after this package)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _no_inherited_storage(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's MRO_STORAGE must not redirect the tests' studies."""
    monkeypatch.delenv("MRO_STORAGE", raising=False)


# --- storages -----------------------------------------------------------------------------------


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{(tmp_path / 'study.db').resolve()}"


def _pg_admin_engine():
    from sqlalchemy import create_engine

    return create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT", pool_pre_ping=True, connect_args={"connect_timeout": 5})


_PG_STATUS: dict[str, str | None] = {}


def _pg_unreachable() -> str | None:
    """None when the PostgreSQL server answers, else why not (checked once per session)."""
    if "reason" not in _PG_STATUS:
        from sqlalchemy import text

        try:
            engine = _pg_admin_engine()
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            engine.dispose()
            _PG_STATUS["reason"] = None
        except Exception as exc:  # any failure to connect means: no server for these tests
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            _PG_STATUS["reason"] = f"PostgreSQL at 127.0.0.1:5432 (database test) is unreachable: {first[:200]}"
    return _PG_STATUS["reason"]


@pytest.fixture
def pg_database() -> Iterator[str]:
    """A fresh PostgreSQL database for one test (dropped WITH (FORCE) afterwards); its name."""
    reason = _pg_unreachable()
    if reason:
        pytest.skip(reason)
    from sqlalchemy import text

    name = f"mro_test_{uuid.uuid4().hex[:12]}"
    engine = _pg_admin_engine()
    with engine.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield name
    finally:
        with engine.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        engine.dispose()


@pytest.fixture
def pg_url(pg_database: str) -> str:
    return f"postgresql+psycopg://postgres@127.0.0.1:5432/{pg_database}"


# --- reading studies back -----------------------------------------------------------------------


def open_study(url: str, name: str = "tiny"):
    """The study as a plain Optuna client sees it (no heartbeat: a reader, not a worker)."""
    import optuna

    from search_service.storage import open_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(url, heartbeat=False)
    return optuna.load_study(study_name=name, storage=storage)


def complete_trials(study) -> list:
    from optuna.trial import TrialState

    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def trial_mask(trial, paths: Sequence[str] = PATHS_K3) -> str:
    return "".join(str(int(trial.params[p])) for p in paths)


def create_tiny_search(file: Path, url: str, *, trials: int):
    """Create the study in storage as ``mro-search run`` does, without running trials."""
    from search_service.creation import create_search
    from search_service.evaluator import Evaluator
    from search_service.study_file import load_study

    study = load_study(str(file))
    return create_search(study, url, Evaluator(study), trials=trials)


class MroHelpers:
    """What the tests need from here, as one fixture (``mro``)."""

    paths = PATHS_K3
    study_toml = staticmethod(study_toml)
    command = staticmethod(mro_command)
    env = staticmethod(child_env)
    run = staticmethod(run_cli)
    start = staticmethod(start_cli)
    stop = staticmethod(stop_group)
    wait_for = staticmethod(wait_for)
    assert_clean_exits = staticmethod(assert_clean_exits)
    freeze_when = staticmethod(freeze_when)
    hold_leader_until_others_work = staticmethod(hold_leader_until_others_work)
    line_up = staticmethod(line_up)
    thaw = staticmethod(thaw)
    open_study = staticmethod(open_study)
    complete = staticmethod(complete_trials)
    mask = staticmethod(trial_mask)
    create = staticmethod(create_tiny_search)


@pytest.fixture(scope="session")
def mro() -> type[MroHelpers]:
    return MroHelpers


# --- processes that stop themselves at a named moment -------------------------------------------

# Runs ``mro-search ARGS`` as ``python -c`` does, but with the fault the test names in
# MRO_TEST_FAULT: "stop-in-upload" (the process stops itself at the first byte copied into the
# artifact store directory MRO_TEST_STORE), "stop-before-trial=N", "stop-in-trial=N",
# "stop-after-study-delete" (``delete`` stops itself once the study is removed, before its
# checkpoint artifact) or "fsize=N" (files may grow to N bytes).
FAULTY_CLI = r"""
import os, resource, shutil, signal, sys
fault = os.environ.get("MRO_TEST_FAULT", "")
if fault.startswith("fsize="):
    limit = int(fault.split("=", 1)[1])
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
if fault.startswith("stop-before-trial="):  # the process stops itself before its Nth trial (no transaction open)
    import optuna
    number, calls, optimize = int(fault.split("=", 1)[1]), [], optuna.Study.optimize
    def stopping_optimize(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == number:
            os.kill(os.getpid(), signal.SIGSTOP)
        return optimize(self, *args, **kwargs)
    optuna.Study.optimize = stopping_optimize
if fault.startswith("stop-in-trial="):  # stops itself inside its Nth trial: RUNNING, its mask claimed
    from search_service import search
    number, calls, admitted = int(fault.split("=", 1)[1]), [], search.Objective._admitted
    def stopping_admitted(self, trial):  # called once the trial's mask is suggested and claimed
        calls.append(1)
        if len(calls) == number:
            os.kill(os.getpid(), signal.SIGSTOP)
        return admitted(self, trial)
    search.Objective._admitted = stopping_admitted
if fault == "stop-after-study-delete":  # stops itself once delete removed the study, before the checkpoint artifact
    from search_service import ownership
    delete_by_id = ownership.delete_by_id
    def stopping_delete(*args, **kwargs):
        delete_by_id(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGSTOP)
    ownership.delete_by_id = stopping_delete
if fault == "stop-in-upload":
    store, copy, stopped = os.path.realpath(os.environ["MRO_TEST_STORE"]), shutil.copyfileobj, []
    def stopping_copy(src, dst, *args, **kwargs):
        name = getattr(dst, "name", "")
        name = os.readlink(f"/proc/self/fd/{name}") if isinstance(name, int) else os.path.realpath(str(name))
        if not stopped and name.startswith(store + os.sep):
            stopped.append(name)  # the first upload only: a test that lets it go on must not find it stopped again
            os.kill(os.getpid(), signal.SIGSTOP)
        return copy(src, dst, *args, **kwargs)
    shutil.copyfileobj = stopping_copy
from search_service.cli import main
sys.exit(main(sys.argv[1:]))
"""


def start_faulty(mro, args: list[str], cwd: Path, fault: str, stderr: Path, **env: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", FAULTY_CLI, *args], cwd=cwd, env=mro.env(MRO_TEST_FAULT=fault, **env),
                            stdout=subprocess.PIPE, stderr=stderr.open("w"), text=True, start_new_session=True)


def run_faulty(mro, args: list[str], cwd: Path, fault: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", FAULTY_CLI, *args], cwd=cwd, env=mro.env(MRO_TEST_FAULT=fault, **env),
                          capture_output=True, text=True, timeout=240)


def stopped(proc: subprocess.Popen) -> bool:
    """Whether ``proc`` is stopped by a signal (``/proc/PID/stat`` state T)."""
    try:
        return Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("T", "t")
    except OSError:
        return False
