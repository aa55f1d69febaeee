"""A worker whose supernet checkpoint is not the one the study was created with refuses to run:
exit code 2, one line on stderr about the SHA-256 mismatch, nothing written to the study."""

from __future__ import annotations

import hashlib

import pytest
import torch

from search_service.cli import main
from search_service.search import CHECKPOINT_SHA_KEY
from supernet.checkpoint import load_checkpoint, save_checkpoint


def _other_checkpoint(tiny, directory):
    """The same study (name and configuration) with a different supernet checkpoint: what a
    machine has after training on its own, or with a stale copy."""
    run_dir = directory / "other_run"
    file = tiny.variant(directory, "other.toml", run_dir=run_dir)
    ckpt = load_checkpoint(tiny.checkpoint)
    with torch.no_grad():
        for p in ckpt.model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    save_checkpoint(run_dir / "supernet.pt", ckpt.model, ckpt.prior, ckpt.config, ckpt.history)
    return file, run_dir / "supernet.pt"


def _snapshot(study):
    trials = study.get_trials(deepcopy=False)
    return len(trials), study._storage.get_study_system_attrs(study._study_id)


@pytest.mark.slow
def test_worker_with_another_checkpoint_refuses_to_start(tiny, mro, sqlite_url, tmp_path):
    mro.create(tiny.file, sqlite_url, trials=10)
    study = mro.open_study(sqlite_url)
    before = _snapshot(study)
    recorded = before[1][CHECKPOINT_SHA_KEY]
    assert recorded == hashlib.sha256(tiny.checkpoint.read_bytes()).hexdigest()

    other_file, other_ckpt = _other_checkpoint(tiny, tmp_path)
    other_sha = hashlib.sha256(other_ckpt.read_bytes()).hexdigest()
    assert other_sha != recorded

    result = mro.run(["worker", "--study", str(other_file), "--storage", sqlite_url], cwd=tmp_path)
    assert result.returncode == 2, f"{result.stdout}\n{result.stderr}"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "SHA-256" in lines[0] and "differs" in lines[0], lines[0]
    assert other_sha[:12] in lines[0] and recorded[:12] in lines[0], lines[0]
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    assert _snapshot(mro.open_study(sqlite_url)) == before

    # the real checkpoint still works: one trial from a well-equipped worker
    ok = mro.run(["worker", "--study", str(tiny.file), "--storage", sqlite_url, "--trials", "1", "-q"], cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert len(mro.complete(mro.open_study(sqlite_url))) == 1


@pytest.mark.parametrize(
    "command",
    [
        ["run", "--trials", "12", "--no-report"],
        ["resume"],
        ["resume", "--trials", "12"],
    ],
    ids=["run", "resume", "resume-trials"],
)
def test_run_and_resume_with_another_checkpoint_refuse_too(tiny, mro, sqlite_url, tmp_path, capfd, command):
    """``run`` on an existing study and ``resume`` check the checkpoint as ``worker`` does, and
    write nothing to the study before they do."""
    mro.create(tiny.file, sqlite_url, trials=10)
    before = _snapshot(mro.open_study(sqlite_url))
    other_file, _ = _other_checkpoint(tiny, tmp_path)
    capfd.readouterr()
    code = main([command[0], "--study", str(other_file), "--storage", sqlite_url, *command[1:], "-q"])
    out, err = capfd.readouterr()
    assert code == 2, (out, err)
    assert len(err.strip().splitlines()) == 1 and "SHA-256" in err, err
    assert _snapshot(mro.open_study(sqlite_url)) == before, f"{command[0]} wrote to the study"
