"""A study scores every trial with its own checkpoint, whatever else a machine has trained since.

The study records which artifact is its checkpoint and that checkpoint's identity (weights,
prior, scoring configuration). A worker whose run directory holds another training (the same
study file trained again, with other weights) still scores with the study's own checkpoint;
``run --checkpoint`` of another identity on an existing study is refused with one line, exit 2,
and nothing written to the study."""

from __future__ import annotations

import pytest
import torch

from search_service.cli import main
from search_service.search import CHECKPOINT_KEY
from supernet.checkpoint import latest_checkpoint, load_checkpoint, write_checkpoint


def _retrain(tiny, directory):
    """The same study (name and configuration) with another trained supernet in its own run
    directory: what a machine has after training on its own."""
    run_dir = directory / "other_run"
    file = tiny.variant(directory, "other.toml", run_dir=run_dir)
    ckpt = load_checkpoint(tiny.checkpoint)
    with torch.no_grad():
        for p in ckpt.model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    path, new = write_checkpoint(run_dir, ckpt.model, ckpt.prior, ckpt.config, ckpt.history)
    assert new and latest_checkpoint(run_dir) == path
    return file, load_checkpoint(path)


def _system_attrs(study) -> dict:
    return study._storage.get_study_system_attrs(study._study_id)


def _snapshot(study):
    trials = study.get_trials(deepcopy=False)
    return len(trials), study._storage.get_study_system_attrs(study._study_id)


@pytest.mark.slow
def test_a_worker_with_another_training_scores_with_the_studys_checkpoint(tiny, mro, sqlite_url, tmp_path):
    mro.create(tiny.file, sqlite_url, trials=10)
    own = load_checkpoint(tiny.checkpoint)
    recorded = _system_attrs(mro.open_study(sqlite_url))[CHECKPOINT_KEY]
    assert recorded["identity"] == own.identity

    other_file, other = _retrain(tiny, tmp_path)
    assert other.identity != own.identity

    result = mro.run(["worker", "--study", str(other_file), "--storage", sqlite_url, "--trials", "2"], cwd=tmp_path)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr
    assert own.short_id in result.stderr, result.stderr  # the worker says which checkpoint it scores with
    study = mro.open_study(sqlite_url)
    assert len(mro.complete(study)) == 2
    assert _system_attrs(study)[CHECKPOINT_KEY] == recorded  # the study still names its own
    # the other training is still there, untouched: the worker only read the study's checkpoint
    assert latest_checkpoint(tmp_path / "other_run") == other.path
    assert load_checkpoint(other.path).identity == other.identity


@pytest.mark.parametrize("command", [["run", "--trials", "12", "--no-report"], ["run"]], ids=["run-trials", "run"])
def test_run_with_another_checkpoint_on_an_existing_study_is_refused(tiny, mro, sqlite_url, tmp_path, capfd, command):
    """``run --checkpoint`` names the checkpoint of a new study; an existing study keeps its
    own, and the command writes nothing to it before refusing."""
    mro.create(tiny.file, sqlite_url, trials=10)
    before = _snapshot(mro.open_study(sqlite_url))
    other_file, other = _retrain(tiny, tmp_path)
    capfd.readouterr()
    code = main([command[0], "--study", str(other_file), "--storage", sqlite_url, "--checkpoint", str(other.path), *command[1:], "-q"])
    out, err = capfd.readouterr()
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mro-search: error:"), err
    assert other.short_id in lines[0] and "leave out --checkpoint" in lines[0], lines[0]
    assert _snapshot(mro.open_study(sqlite_url)) == before, "run wrote to the study"


def test_a_checkpoint_of_another_configuration_is_refused_for_a_new_study(tiny, mro, sqlite_url, tmp_path, capfd):
    """A checkpoint trained for other data or another model cannot score this study's masks."""
    file = tmp_path / "wider.toml"
    file.write_text(mro.study_toml("wider", tmp_path / "run").replace("width = 16", "width = 32"), encoding="utf-8")
    capfd.readouterr()
    code = main(["run", "--study", str(file), "--storage", sqlite_url, "--checkpoint", str(tiny.checkpoint), "--trials", "2", "-q"])
    out, err = capfd.readouterr()
    assert code == 2, (out, err)
    assert len(err.strip().splitlines()) == 1 and "mro-search: error:" in err, err
    assert not (tmp_path / "study.db").exists() or "wider" not in _study_names(sqlite_url)


def _study_names(url: str) -> list[str]:
    import optuna

    from search_service.storage import open_storage

    return [s.study_name for s in optuna.get_all_study_summaries(open_storage(url, heartbeat=False, create=False))]
