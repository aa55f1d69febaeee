"""Fuzzed command lines, in the order and with the values a careless or hostile user types them.

Every command but ``dashboard`` (it serves until stopped; ``tests/test_dashboard.py``), with any
subset of its options (read from the parser itself, so new options are fuzzed as they appear) in
any order, each given a plausible value or a wild one (``ARG_VALUES``: signs, huge numbers,
``1e3``, ``0x10``, Unicode digits, paths such as ``/``, ``..`` and ``runs``), and sometimes a
stray token. Each example runs in a fresh copy of a folder that holds the tiny study file, its
trained supernet and a study of 3 trials in SQLite, so commands run in any order against
state that exists.

The property is the fuzz suite's (``conftest.check``): exit 0, or exit 2 with one error line and
nothing created, changed or removed; also, ``pareto``, ``flops``, ``evaluate`` and ``validate``
write nothing even when they succeed.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import pytest
from hypothesis import assume, event, given
from hypothesis import strategies as st

from .conftest import check, fuzz_settings, listing, prepare
from .strategies import ARG_VALUES, TINY_STUDY, masks, render_toml

FILE = "fz.toml"
READ_ONLY = {"pareto", "flops", "evaluate", "validate"}
SKIPPED_COMMANDS = {"dashboard"}
SKIPPED_OPTIONS = {"--debug", "--help"}  # --debug prints tracebacks on purpose
# numbers that make a command slow when valid: at most this much per example
CAPS = {"--epochs": 2, "--trials": 6, "--workers": 1, "--finetune-epochs": 1}

PLAUSIBLE: dict[str, st.SearchStrategy[str]] = {
    "--study": st.sampled_from(["fz", FILE, "./fz.toml", "nope", "fz.toml.bak", "runs/fz"]),
    "file": st.sampled_from([FILE, "nope.toml", "runs"]),
    "--storage": st.sampled_from(["sqlite:///runs/fz/study.db", "sqlite:///other.db", "sqlite:///runs/fz/nope/x.db", "sqlite://",
                                  "postgresql+psycopg://postgres@127.0.0.1:1/x", "nosuch://x"]),
    "--mask": masks(6),
    "--split": st.sampled_from(["valid", "test", "train"]),
    "--trials": st.integers(1, CAPS["--trials"]).map(str),
    "--trial": st.sampled_from(["0", "1", "2", "3", "99"]),
    "--epochs": st.integers(1, CAPS["--epochs"]).map(str),
    "--finetune-epochs": st.sampled_from(["0", "1"]),
    "--workers": st.just("1"),
    "--seed": st.sampled_from(["0", "1", "7"]),
    "--checkpoint": st.sampled_from(["CHECKPOINT", "runs/fz/checkpoints/latest", FILE, "nope.pt", "runs/fz/checkpoints"]),
    "--artifacts": st.sampled_from(["runs/fz/artifacts", "store", "s3://bucket/prefix", "s3://", "file:///x", FILE]),
    "-o": st.sampled_from(["out", "r.html", "runs/fz/r.html", "ex", "runs/fz/artifacts", FILE, "runs/fz/checkpoints"]),
}


def _commands() -> dict[str, list[argparse.Action]]:
    from search_service.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {name: [a for a in p._actions if a.dest != "help" and not set(a.option_strings) & SKIPPED_OPTIONS]
            for name, p in sub.choices.items() if name not in SKIPPED_COMMANDS}


COMMANDS = _commands()


@st.composite
def command_lines(draw: st.DrawFn) -> list[str]:
    command = draw(st.sampled_from(sorted(COMMANDS)))
    actions = COMMANDS[command]
    chosen = [actions[i] for i in draw(st.lists(st.sampled_from(range(len(actions))), unique=True))]
    # what the command requires is given most of the time, so that the other options get looked at
    required = [a for a in actions if a.required]
    if draw(st.integers(0, 9)) > 0:
        chosen += [a for a in required if a not in chosen]
    chosen = draw(st.permutations(chosen))
    argv = [command]
    for action in chosen:
        name = action.option_strings[0] if action.option_strings else action.dest
        if action.option_strings:
            spelling = draw(st.sampled_from(action.option_strings))
        if action.nargs == 0:
            argv.append(spelling)
            continue
        wild = name not in PLAUSIBLE or draw(st.integers(0, 5)) == 0  # a wild value one time in six
        value = draw(ARG_VALUES if wild else PLAUSIBLE[name])
        if not action.option_strings:
            argv.append(value)
        elif draw(st.booleans()) and spelling.startswith("--"):
            argv.append(f"{spelling}={value}")
        else:
            argv += [spelling, value]
    if draw(st.integers(0, 19)) == 0:  # a stray token
        argv.insert(draw(st.integers(1, len(argv))), draw(ARG_VALUES))
    return argv


def _too_costly(argv: list[str]) -> bool:
    """A valid number above ``CAPS`` (a long training or search): not this suite's job."""
    for i, arg in enumerate(argv):
        name, _, inline = arg.partition("=")
        if name in CAPS:
            value = inline if inline else (argv[i + 1] if i + 1 < len(argv) else "")
            try:
                if int(value.strip(), 10) > CAPS[name]:
                    return True
            except ValueError:
                pass
    return False


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder every example starts from: study file, trained supernet, 3 trials in SQLite."""
    root = tmp_path_factory.mktemp("cli-template")
    (root / FILE).write_text(render_toml(TINY_STUDY), encoding="utf-8")
    prepare(root, ["run", "--study", FILE, "--trials", "3", "--no-report", "-q"])
    return root


@fuzz_settings(share=2.0)
@given(argv=command_lines())
def test_any_command_line(cli, scratch, template: Path, argv: list[str]) -> None:
    assume(not _too_costly(argv))
    root = scratch()
    shutil.copytree(template, root, dirs_exist_ok=True)
    checkpoint = next((root / "runs" / "fz" / "checkpoints").glob("*.pt"))
    argv = [str(checkpoint.relative_to(root)) if a == "CHECKPOINT" else a.replace("=CHECKPOINT", f"={checkpoint.relative_to(root)}")
            for a in argv]
    env = {"AWS_ENDPOINT_URL": "http://127.0.0.1:1", "AWS_ACCESS_KEY_ID": "fuzz", "AWS_SECRET_ACCESS_KEY": "fuzz",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_MAX_ATTEMPTS": "1"}  # an S3 store that refuses at once
    before = listing(root)
    outcome = cli.invoke(argv, root, env)
    event(f"{argv[0]}: exit {outcome.code}")
    check(outcome, root, before)
    if outcome.code == 0 and argv[0] in READ_ONLY and not {"-h", "--help"} & set(argv):
        assert listing(root) == before, f"{argv[0]} wrote files\n{outcome}"
