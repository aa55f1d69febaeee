"""The first commands of the CLI, run as a user runs them: real subprocesses, real files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
STUDIES = sorted((REPO / "studies").glob("*.toml"))

TINY_STUDY = """\
# mro-search train --study {path}
name = "tiny"

[data]
source = "synthetic"
modalities = ["text", "audio", "vision"]
dims = [17, 9, 8]
length = 4
samples = [128, 64, 64]
planted_paths = ["audio->text", "text->vision"]
seed = 0

[model]
width = 16
heads = 2
dropout = 0.0

[train]
epochs = 2
warmup_epochs = 1
batch_size = 32
seed = 0

[search]
run_dir = "{run_dir}"
"""


def mro(*args: str, cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "search_service.cli", *args],
        capture_output=True, text=True, timeout=timeout, cwd=cwd or REPO,
    )


def assert_one_line_error(out: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert out.returncode == 2, (out.returncode, out.stderr)
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("mro-search: error: ")
    assert "Traceback" not in out.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny")
    path = folder / "tiny.toml"
    path.write_text(TINY_STUDY.format(path=path, run_dir=folder / "run"))
    out = mro("train", "--study", str(path), "--json", "-q")
    assert out.returncode == 0, out.stderr
    return path


@pytest.mark.parametrize("study", STUDIES, ids=[p.stem for p in STUDIES])
def test_every_shipped_study_validates(study: Path) -> None:
    out = mro("validate", str(study), "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["ok"] and result["name"] == study.stem
    assert study.read_text().startswith(f"# mro-search run --study {study.stem}")


def test_validate_reports_every_problem_at_once(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('colour = 1\n[data]\nsource = "synthetic"\n[model]\nwidth = "wide"\nheads = 0\n[train]\nrank_loss = "l3"\n')
    out = mro("validate", str(bad))
    assert_one_line_error(out, "4 problems", "colour", "width", "heads", "rank_loss")


def test_unknown_study_and_bad_toml(tmp_path: Path) -> None:
    assert_one_line_error(mro("train", "--study", "no-such-study"), "no study named 'no-such-study'")
    broken = tmp_path / "broken.toml"
    broken.write_text("[data\n")
    assert_one_line_error(mro("validate", str(broken)), "not valid TOML")


def test_debug_shows_the_traceback() -> None:
    out = mro("--debug", "train", "--study", "no-such-study")
    assert out.returncode != 0
    assert "Traceback" in out.stderr and "ConfigError" in out.stderr


def test_flops_of_the_mosei_study_is_within_one_percent_of_the_paper() -> None:
    out = mro("flops", "--study", "mosei", "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["mask"] == "111111"
    assert abs(result["mflops"] - 254.94) / 254.94 < 0.01
    assert len(result["path_mflops"]) == 6
    partial = json.loads(mro("flops", "--study", "mosei", "--mask", "011011", "--json").stdout)
    # four paths and all three embeddings: the table is additive
    expected = result["shared_mflops"] + sum(result["modality_mflops"].values()) + 4 * result["path_mflops"]["text->audio"]
    assert partial["mflops"] == pytest.approx(expected)


def test_train_then_evaluate_by_cache_and_direct(tiny: Path) -> None:
    cached = mro("evaluate", "--study", str(tiny), "--mask", "011000", "--json")
    assert cached.returncode == 0, cached.stderr
    direct = mro("evaluate", "--study", str(tiny), "--mask", "011000", "--direct", "--json")
    assert direct.returncode == 0, direct.stderr
    a, b = json.loads(cached.stdout), json.loads(direct.stdout)
    assert a["method"] == "cache" and b["method"] == "direct"
    assert a["active_paths"] == ["text->vision", "audio->text"]
    assert set(a["metrics"]) == {"accuracy", "f1_weighted", "f1_macro"}
    for name in a["metrics"]:
        assert a["metrics"][name] == pytest.approx(b["metrics"][name], abs=1e-6)
    assert a["mflops"] > 0 and a["params"] > 0
    test = json.loads(mro("evaluate", "--study", str(tiny), "--mask", "111111", "--split", "test", "--json").stdout)
    assert test["split"] == "test"


def test_human_output_of_evaluate(tiny: Path) -> None:
    out = mro("evaluate", "--study", str(tiny), "--mask", "100000")
    assert out.returncode == 0, out.stderr
    assert "text->audio" in out.stdout and "accuracy" in out.stdout and "MFLOPs" in out.stdout


@pytest.mark.parametrize(
    ("mask", "needle"),
    [("0110", "has 4 bits but this study has 6 paths"), ("000000", "all-zero mask"), ("01a011", "only 0 and 1")],
)
def test_bad_masks_are_one_line_errors(tiny: Path, mask: str, needle: str) -> None:
    assert_one_line_error(mro("evaluate", "--study", str(tiny), "--mask", mask), needle)


def test_evaluate_without_a_checkpoint_says_how_to_make_one(tmp_path: Path) -> None:
    path = tmp_path / "untrained.toml"
    path.write_text(TINY_STUDY.format(path=path, run_dir=tmp_path / "run"))
    assert_one_line_error(mro("evaluate", "--study", str(path), "--mask", "111111"), "mro-search train")


def test_checkpoint_of_another_model_or_data_is_refused(tiny: Path, tmp_path: Path) -> None:
    other = tmp_path / "tiny.toml"
    other.write_text(tiny.read_text().replace("width = 16", "width = 32"))
    checkpoint = next((tiny.parent / "run" / "checkpoints").glob("*.pt"))
    out = mro("evaluate", "--study", str(other), "--mask", "111111", "--checkpoint", str(checkpoint))
    assert_one_line_error(out, "another data or model configuration", "mro-search train")


def test_a_checkpoint_trained_otherwise_scores_the_same_study(tiny: Path, tmp_path: Path) -> None:
    """How a supernet is trained (epochs, seed) is provenance: such a checkpoint serves the
    study as it is (the scoring configuration is [data] and [model])."""
    other = tmp_path / "tiny.toml"
    other.write_text(tiny.read_text().replace("epochs = 2", "epochs = 3"))
    checkpoint = next((tiny.parent / "run" / "checkpoints").glob("*.pt"))
    out = mro("evaluate", "--study", str(other), "--mask", "111111", "--checkpoint", str(checkpoint), "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["checkpoint"].startswith(checkpoint.stem)


def test_truncated_checkpoint_is_a_one_line_error(tiny: Path, tmp_path: Path) -> None:
    source = next((tiny.parent / "run" / "checkpoints").glob("*.pt"))
    broken = tmp_path / source.name
    broken.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    out = mro("evaluate", "--study", str(tiny), "--mask", "111111", "--checkpoint", str(broken))
    assert_one_line_error(out, "truncated or corrupt")


def test_help_of_every_command() -> None:
    for command in ("train", "flops", "evaluate", "validate", "run", "worker", "resume", "pareto"):
        out = mro(command, "--help")
        assert out.returncode == 0 and "usage: mro-search" in out.stdout, command


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["delete", "--study=--"], "study name '--'"),
        (["pareto", "--study=demo", "--storage=--"], "storage URL"),
        (["run", "--study=demo", "--trials=--"], "argument --trials: must be an integer"),
    ],
)
def test_double_dash_as_an_option_value_is_that_value(argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    """``--study=--`` (found by tests/fuzz/test_cli_args.py): Python 3.11's argparse turned the
    value into an empty list, and the command died with a traceback."""
    from search_service.cli import main

    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("mro-search: error:") and needle in err, err


def test_an_interrupt_that_surfaces_as_another_exception_is_still_one_line(monkeypatch, capsys):
    """Ctrl-C inside a lazy import (numpy's, scipy's) can leave the module half-made and surface as
    another exception: the interruption fuzz saw a RecursionError traceback from ``resume`` hit
    by SIGINT 0.5 s after its start. ``main`` reports it as the interrupt it was."""
    import os
    import signal
    import time

    import search_service.cli as cli

    def interrupted_in_an_import(args):
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
        except KeyboardInterrupt:
            raise RecursionError("maximum recursion depth exceeded") from None  # what the half-made module raised
        return 0

    monkeypatch.setattr(cli, "cmd_flops", interrupted_in_an_import)
    assert cli.main(["flops", "--study", "demo"]) == cli.EXIT_INTERRUPTED
    assert capsys.readouterr().err == cli.INTERRUPTED + "\n"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
    # an error that no interrupt caused is still reported as before
    monkeypatch.setattr(cli, "cmd_flops", lambda args: (_ for _ in ()).throw(RecursionError("deep")))
    assert cli.main(["flops", "--study", "demo"]) == cli.EXIT_TRACEBACK
    assert "RecursionError: deep" in capsys.readouterr().err
