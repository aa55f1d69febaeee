"""Commands started in pairs, one of them cut off by a signal at any moment (issue 19).

Each example starts from a folder holding the tiny study file and its trained supernet, with or
without a study of 3 trials in SQLite, and starts two ``mro-search`` processes at once, drawn
from ``run``, ``delete``, ``train``, ``worker``, ``resume`` and ``export``. One of them gets a
signal (SIGKILL, SIGTERM, SIGINT, or none) at a drawn moment: one it produces itself (it stops
itself, SIGSTOP, in its checkpoint upload or before its Kth trial, and gets the signal there) or
a drawn delay after its start.

The property, once both have ended and what the one-line errors tell a user to do was done (a
half-made study whose creator is gone: ``run``; a deletion cut off: ``delete``):

- no traceback; every exit is 0, 1 (a ``run``/``resume`` whose workers were stopped), 2, 130
  (interrupted) or by the signal sent;
- the study is whole (``resume`` loads and verifies its checkpoint and leaves its Pareto front as
  it was) or gone;
- nothing outside what the user named (the study's run folder ``runs/fz``, the export folder
  ``out``) was created, changed or removed. (A killed export's temporary folder ``.out.PID.*.tmp``
  beside ``out`` stays until the next export there sweeps it: it is left out of the comparison.)

``MRO_FUZZ_EXAMPLES`` sets the examples (an eighth of it: 3 by default, 10 to 30 s each on this
2-core machine under load; ``MRO_FUZZ_EXAMPLES=2500`` is the long run of 300).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import event, example, given
from hypothesis import strategies as st

from .conftest import EXAMPLES, fuzz_settings, listing, prepare
from .strategies import TINY_STUDY, render_toml

FILE = "fz.toml"
COMMANDS = {
    "run": ["run", "--study", FILE, "--trials", "5", "-q"],
    "delete": ["delete", "--study", FILE, "--yes"],
    "train": ["train", "--study", FILE, "-q"],
    "worker": ["worker", "--study", FILE, "--trials", "3", "-q"],
    "resume": ["resume", "--study", FILE, "--trials", "6", "-q"],
    "export": ["export", "--study", FILE, "--trial", "0", "-o", "out", "-q"],
}
SIGNALS = {"SIGKILL": signal.SIGKILL, "SIGTERM": signal.SIGTERM, "SIGINT": signal.SIGINT, "none": None}

# ``mro-search ARGS`` that stops itself (SIGSTOP) at the moment MRO_TEST_STOP names: "upload" (the
# first byte copied into the study's artifact store) or "trial=K" (before its Kth trial).
FAULTY_CLI = r"""
import os, shutil, signal, sys
stop = os.environ.get("MRO_TEST_STOP", "")
if stop == "upload":
    store, copy, stopped = os.path.realpath("runs/fz") + os.sep, shutil.copyfileobj, []
    def stopping_copy(src, dst, *args, **kwargs):
        name = getattr(dst, "name", "")
        name = os.readlink(f"/proc/self/fd/{name}") if isinstance(name, int) else os.path.realpath(str(name))
        if not stopped and name.startswith(store) and "artifacts" in name:
            stopped.append(name)  # once: a later upload (the report) must not stop it again
            os.kill(os.getpid(), signal.SIGSTOP)
        return copy(src, dst, *args, **kwargs)
    shutil.copyfileobj = stopping_copy
elif stop.startswith("trial="):
    import optuna
    number, calls, optimize = int(stop.split("=", 1)[1]), [], optuna.Study.optimize
    def stopping_optimize(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == number:
            os.kill(os.getpid(), signal.SIGSTOP)
        return optimize(self, *args, **kwargs)
    optuna.Study.optimize = stopping_optimize
from search_service.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The study file and its trained supernet (no study yet)."""
    root = tmp_path_factory.mktemp("pairs-template")
    (root / FILE).write_text(render_toml(TINY_STUDY), encoding="utf-8")
    prepare(root, ["train", "--study", FILE, "-q"])
    return root


EXAMPLES_HERE = max(2, round(EXAMPLES * 0.12))
pytestmark = pytest.mark.timeout(max(600, 90 * EXAMPLES_HERE))  # up to about a minute per example on a loaded machine

moments = st.one_of(st.just("upload"), st.integers(1, 4).map(lambda k: f"trial={k}"),
                    st.floats(0.5, 4.0).map(lambda s: f"delay={s:.2f}"))  # from 0.5 s: a signal in the interpreter's own start-up is Python's


@fuzz_settings(share=0.12)
# a run stopped at its checkpoint upload and let go on uploads its report too: it once stopped there
# again with nobody to wake it (a hang of 240 s that failed a CI run)
@example(pair=("run", "delete"), existing=False, target=0, sig="none", moment="upload")
@given(pair=st.tuples(st.sampled_from(sorted(COMMANDS)), st.sampled_from(sorted(COMMANDS))), existing=st.booleans(),
       target=st.sampled_from([0, 1]), sig=st.sampled_from(sorted(SIGNALS)), moment=moments)
def test_commands_in_pairs_cut_off_by_signals(cli, scratch, template: Path, pair, existing: bool, target: int, sig: str, moment: str) -> None:
    root = scratch()
    shutil.copytree(template, root, dirs_exist_ok=True)
    if existing:
        prepare(root, ["run", "--study", FILE, "--trials", "3", "--no-report", "-q"])
    before = _outside(listing(root))
    event(f"pair {pair[0]}+{pair[1]}, {sig} to {pair[target]} at {moment.split('=')[0]}")

    procs, errs = [], []
    for i, name in enumerate(pair):
        env = _env(MRO_TEST_STOP=moment if i == target and not moment.startswith("delay=") else "")
        err = root / f".stderr{i}"
        errs.append(err)
        procs.append(subprocess.Popen([sys.executable, "-c", FAULTY_CLI, *COMMANDS[name]], cwd=root, env=env, stdin=subprocess.DEVNULL,
                                      stdout=subprocess.DEVNULL, stderr=err.open("w"), start_new_session=True))
    try:
        _signal_at(procs[target], moment, SIGNALS[sig])
        codes = [p.wait(timeout=240) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    texts = [e.read_text(errors="replace") for e in errs]
    for e in errs:
        e.unlink()
    for i, (code, text) in enumerate(zip(codes, texts)):
        allowed = {0, 1, 2, 130} | ({-SIGNALS[sig]} if i == target and SIGNALS[sig] else set())
        assert "Traceback" not in text, f"{pair[i]} (exit {code}):\n{text[-3000:]}"
        assert code in allowed, f"{pair[i]} exit {code}:\n{text[-3000:]}"

    state = _recover(cli, root)
    event(f"study afterwards: {state}")
    assert _outside(listing(root)) == before, f"files outside runs/fz and out changed: {pair}, {sig} at {moment}"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MRO_STORAGE", "MRO_ARTIFACTS")}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **extra)
    return env


def _stopped(proc: subprocess.Popen) -> bool:
    try:
        return Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("T", "t")
    except OSError:
        return False


def _signal_at(proc: subprocess.Popen, moment: str, sig: int | None) -> None:
    """Send ``sig`` to ``proc`` at ``moment``: when it has stopped itself there (if it gets
    there), or after the delay."""
    if moment.startswith("delay="):
        time.sleep(float(moment.split("=", 1)[1]))
        if sig is not None and proc.poll() is None:
            os.kill(proc.pid, sig)
        return
    deadline = time.monotonic() + 240
    while proc.poll() is None and not _stopped(proc):
        assert time.monotonic() < deadline, "the process neither stopped nor ended"
        time.sleep(0.05)
    if proc.poll() is None:
        if sig is not None:
            os.kill(proc.pid, sig)
        os.kill(proc.pid, signal.SIGCONT)


def _recover(cli, root: Path) -> str:
    """Do what mro-search's one-line errors say, then check the study is whole or gone."""
    from search_service.keys import CREATING_KEY, DELETING_KEY
    from search_service.search import FORMAT_KEY

    attrs = _study_attrs(root)
    if attrs is not None and DELETING_KEY in attrs:
        done = cli.invoke(["delete", "--study", FILE, "--yes"], root)
        assert done.code == 0, str(done)
    elif attrs is not None and CREATING_KEY in attrs and FORMAT_KEY not in attrs:
        done = cli.invoke(["run", "--study", FILE, "--trials", "3", "--no-report", "-q"], root)
        assert done.code == 0, str(done)
    attrs = _study_attrs(root)
    if attrs is None:
        return "gone"
    assert attrs.get(FORMAT_KEY), f"the study is neither whole nor gone: {sorted(attrs)}"
    front = cli.invoke(["pareto", "--study", FILE, "--json"], root)
    assert front.code == 0, str(front)
    before = json.loads(front.out)
    complete = before["counts"]["complete"]
    resumed = cli.invoke(["resume", "--study", FILE, "--trials", str(max(complete, 1)), "--no-report", "--json", "-q"], root)
    assert resumed.code == 0, str(resumed)
    if complete:
        assert json.loads(resumed.out)["pareto_front"] == before["pareto_front"], "resume changed the front"
    return "whole"


def _study_attrs(root: Path) -> dict | None:
    from search_service.lifecycle import find_study
    from search_service.storage import NoDatabase, open_storage
    from supernet.errors import ConfigError

    url = f"sqlite:///{(root / 'runs' / 'fz' / 'study.db').resolve()}"
    try:
        storage = open_storage(url, heartbeat=False, create=False)
    except (NoDatabase, ConfigError):  # no file, or a file a killed run made before Optuna's tables
        return None
    try:
        summary = find_study(storage, "fz")
        return None if summary is None else storage.get_study_system_attrs(summary._study_id)
    finally:
        storage.engine.dispose()


def _outside(files: dict) -> dict:
    """The listing less what the user named: the run folder, the export folder and a killed
    export's temporary folder beside it."""
    return {k: v for k, v in files.items()
            if not (k == "runs" or k.startswith(("runs/fz", "out", ".out.")) or k.startswith(".stderr"))}
