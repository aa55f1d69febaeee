"""The fuzz suite's harness: the command run in-process, the property checked after every run.

``mro-search`` is called through ``search_service.cli.main(argv)`` in this process (a subprocess
costs seconds of torch import per example), in a fresh working directory per example, with its
file descriptors captured (``capfd``: what Python, C libraries and loggers write to 1 and 2).

The property (``check``), for every example:

- the command exits 0, or 2 with exactly one line ``mro-search: error: ...`` on stderr (the last
  one), and no traceback (``SystemExit`` from argparse counts as the exit code);
- every checkpoint-like file written (``*.pt``) loads with ``torch.load(weights_only=True)`` and
  holds only finite tensors;
- the example's secret (a generated password) appears in no output and in no file written
  (SQLite databases, reports and checkpoints included), in any spelling: each secret carries an
  alphanumeric core that survives every encoding;
- on failure (exit 2) nothing was created, changed or removed in the working directory (files
  and folders), and a SQLite file a storage URL named was not created.

``MRO_FUZZ_EXAMPLES`` sets the examples of each test (default 25; a test that costs more per
example takes a share of it); ``MRO_FUZZ_EXAMPLES=500`` is a long run.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, event, settings
from hypothesis.database import DirectoryBasedExampleDatabase

EXAMPLES = int(os.environ.get("MRO_FUZZ_EXAMPLES", "25"))
ERROR_PREFIX = "mro-search: error:"
# failing examples are kept outside the repository, to replay them on the next run
_DATABASE = DirectoryBasedExampleDatabase(str(Path(tempfile.gettempdir()) / "mro-search-fuzz-examples"))


def fuzz_settings(share: float = 1.0, **overrides: Any) -> settings:
    """Hypothesis settings of one fuzz test: ``share`` of ``MRO_FUZZ_EXAMPLES`` examples (at
    least 2), no deadline (a training takes a second on a busy machine), the function-scoped
    fixtures shared by the examples (each example makes its own directory)."""
    return settings(
        max_examples=max(2, round(EXAMPLES * share)),
        deadline=None,
        database=_DATABASE,
        print_blob=True,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large,
                               HealthCheck.filter_too_much, HealthCheck.large_base_example],
        **overrides,
    )


@dataclass
class Outcome:
    argv: list[str]
    code: int
    out: str
    err: str

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.startswith(ERROR_PREFIX)]

    def __str__(self) -> str:
        return f"mro-search {self.argv!r} -> exit {self.code}\n--- stdout\n{self.out[-3000:]}\n--- stderr\n{self.err[-3000:]}"


@contextlib.contextmanager
def working_directory(path: Path) -> Iterator[None]:
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def prepare(root: Path, argv: Sequence[str]) -> None:
    """Run ``mro-search ARGV`` in ``root`` in-process with one torch thread, as a module
    fixture's setup (training the tiny study, searching it): it must succeed."""
    from search_service.cli import main

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with working_directory(root):
            assert main(list(argv)) == 0, f"setup command failed: mro-search {' '.join(argv)}"
    finally:
        torch.set_num_threads(threads)


class Cli:
    """Runs ``mro-search`` in-process: ``invoke(argv, cwd)`` -> ``Outcome``."""

    def __init__(self, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
        self.capfd = capfd
        self.monkeypatch = monkeypatch

    def invoke(self, argv: Sequence[str], cwd: Path, env: dict[str, str] | None = None) -> Outcome:
        from search_service.cli import main

        argv = [str(a) for a in argv]
        self.capfd.readouterr()  # drop what came before
        with self.monkeypatch.context() as mp, working_directory(cwd):
            for key, value in (env or {}).items():
                mp.setenv(key, value)
            try:
                code = main(argv)
            except SystemExit as exc:  # argparse: --help (0) and usage errors (2)
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            except BaseException as exc:  # escaped main(): a real process would print a traceback
                import traceback

                code = 1
                print("".join(traceback.format_exception(exc)), file=__import__("sys").stderr)
        captured = self.capfd.readouterr()
        return Outcome(argv, int(code), captured.out, captured.err)


@pytest.fixture
def cli(capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Cli:
    """The in-process command, with no storage or artifact store inherited from the environment
    and one torch thread (the CLI would take half the CPUs)."""
    monkeypatch.delenv("MRO_STORAGE", raising=False)
    monkeypatch.delenv("MRO_ARTIFACTS", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield Cli(capfd, monkeypatch)
    torch.set_num_threads(before)


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[Any]:
    """``scratch()``: a fresh empty directory for one example (removed after the test)."""
    counter = iter(range(10**9))

    def make() -> Path:
        path = tmp_path / f"ex{next(counter)}"
        path.mkdir()
        return path

    yield make
    shutil.rmtree(tmp_path, ignore_errors=True)


# --- the property -------------------------------------------------------------------------------


SQLITE_MAGIC = b"SQLite format 3\x00"


def _sqlite_content(path: Path) -> str | None:
    """A digest of what a SQLite database holds (its SQL dump), or None for any other file.
    Reading a database in WAL mode touches its files (a reader maps ``-shm``; the last
    connection to close folds ``-wal`` into the database), so databases compare by content."""
    import hashlib
    import sqlite3

    try:
        with path.open("rb") as f:
            if f.read(16) != SQLITE_MAGIC:
                return None
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            return hashlib.sha256("\n".join(conn.iterdump()).encode("utf-8", "surrogatepass")).hexdigest()
        finally:
            conn.close()
    except (OSError, sqlite3.Error):
        return None


def listing(root: Path) -> dict[str, tuple[str, int, int] | tuple[str, str]]:
    """Every file and folder under ``root``: relative path -> (kind, size, mtime in ns); a
    SQLite database -> ("sqlite", digest of its content), its ``-wal`` and ``-shm`` files left out."""
    out: dict[str, tuple[str, int, int] | tuple[str, str]] = {}
    for path in sorted(root.rglob("*")):
        if path.name.endswith(("-wal", "-shm")) and path.with_name(path.name[:-4]).is_file():
            continue
        st = path.lstat()
        kind = "dir" if path.is_dir() and not path.is_symlink() else "file"
        content = _sqlite_content(path) if kind == "file" and not path.is_symlink() else None
        out[str(path.relative_to(root))] = ("sqlite", content) if content else (
            kind, st.st_size if kind == "file" else 0, st.st_mtime_ns if kind == "file" else 0)
    return out


def _tensors(obj: Any) -> Iterator[tuple[str, torch.Tensor]]:
    stack: list[tuple[str, Any]] = [("", obj)]
    while stack:
        where, value = stack.pop()
        if isinstance(value, torch.Tensor):
            yield where, value
        elif isinstance(value, dict):
            stack.extend((f"{where}.{k}", v) for k, v in value.items())
        elif isinstance(value, (list, tuple)):
            stack.extend((f"{where}[{i}]", v) for i, v in enumerate(value))


def check_finite_checkpoints(root: Path, before: dict[str, Any]) -> int:
    """Every ``*.pt`` written or changed under ``root`` loads safely and is finite; returns how
    many were checked."""
    checked = 0
    after = listing(root)
    for rel, meta in after.items():
        if meta[0] != "file" or not rel.endswith(".pt") or before.get(rel) == meta:
            continue
        payload = torch.load(root / rel, weights_only=True, map_location="cpu")
        for where, tensor in _tensors(payload):
            if tensor.is_floating_point() or tensor.is_complex():
                assert bool(torch.isfinite(tensor).all()), f"{rel}: tensor {where} is not finite"
        checked += 1
    return checked


def check_no_secret(outcome: Outcome, root: Path, secrets: Sequence[str], *, inputs: Sequence[Path] = ()) -> None:
    """No secret in stdout, stderr or any file under ``root`` (searched as bytes) but the
    ``inputs`` that hold it (a study file that gives the storage URL)."""
    skip = {Path(p).resolve() for p in inputs}
    for secret in secrets:
        if not secret:
            continue
        assert secret not in outcome.out, f"secret {secret!r} on stdout\n{outcome}"
        assert secret not in outcome.err, f"secret {secret!r} on stderr\n{outcome}"
        needle = secret.encode("utf-8")
        for path in root.rglob("*"):
            if path.is_file() and not path.is_symlink() and path.resolve() not in skip:
                assert needle not in path.read_bytes(), f"secret {secret!r} in {path}\n{outcome}"


def check(outcome: Outcome, root: Path, before: dict[str, Any], *, secrets: Sequence[str] = (), inputs: Sequence[Path] = (),
          absent: Sequence[str | Path] = (), ok_codes: Sequence[int] = (0, 2)) -> None:
    """The fuzz property (module docstring) for one run of ``mro-search`` in ``root``."""
    event(f"{outcome.argv[0] if outcome.argv else '-'}: exit {outcome.code}")
    assert "Traceback" not in outcome.err, str(outcome)
    assert outcome.code in ok_codes, str(outcome)
    errors = outcome.error_lines
    if outcome.code == 2:
        assert len(errors) == 1, f"{len(errors)} error lines\n{outcome}"
        last = [line for line in outcome.err.splitlines() if line.strip()][-1]
        assert last.startswith(ERROR_PREFIX), f"the error is not the last line\n{outcome}"
    else:
        assert not errors, str(outcome)
    check_no_secret(outcome, root, secrets, inputs=inputs)
    check_finite_checkpoints(root, before)
    if outcome.code != 0:
        after = listing(root)
        created = sorted(set(after) - set(before))
        removed = sorted(set(before) - set(after))
        changed = sorted(k for k in set(after) & set(before) if after[k] != before[k])
        assert not (created or removed or changed), f"failed, but created {created}, removed {removed}, changed {changed}\n{outcome}"
        for path in absent:
            assert not Path(path).exists(), f"failed, but {path} exists\n{outcome}"
