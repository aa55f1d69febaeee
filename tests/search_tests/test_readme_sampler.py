"""README.md's "Use MROSampler in your own Optuna script" runs as printed: the exact code blocks,
the first on an in-memory study and (its ``storage=None`` line swapped for the SQLite URL its
comment offers) on an SQLite file, the second (a mask with hyperparameters) as it stands."""

from __future__ import annotations

import re
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from search_service.keys import MASK_KEY

README = Path(__file__).resolve().parents[2] / "README.md"
HEADING = "### Use MROSampler in your own Optuna script"


def readme_scripts() -> list[str]:
    text = README.read_text()
    assert HEADING in text, f"README.md has no section {HEADING!r}"
    section = text.split(HEADING, 1)[1].split("\n#", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 2, "the section shows two Python scripts: masks alone, masks with hyperparameters"
    return blocks


def readme_script() -> str:
    return readme_scripts()[0]


def run_script(code: str, cwd: Path, monkeypatch) -> dict:
    monkeypatch.chdir(cwd)
    namespace: dict = {"__name__": "__main__"}
    exec(compile(code, str(README), "exec"), namespace)
    return namespace


def check_study(study: optuna.Study, paths: list[str], n_trials: int, out: str) -> None:
    trials = study.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * n_trials
    masks = ["".join(str(t.params[p]) for p in paths) for t in trials]
    assert len(set(masks)) == n_trials and "0" * len(paths) not in masks, "whole, distinct, non-empty masks"
    assert all(t.system_attrs[MASK_KEY] == m for t, m in zip(trials, masks)), "each mask claimed in the storage"
    printed = out.strip().splitlines()
    front = {"".join(str(t.params[p]) for p in paths) for t in study.best_trials}
    assert {line.split()[0] for line in printed} == front and len(printed) == len(front)


@pytest.mark.parametrize("storage", ["memory", "sqlite"])
def test_the_readme_script_runs(storage, tmp_path, monkeypatch, capsys):
    code = readme_script()
    n_trials = int(re.search(r"n_trials=(\d+)", code).group(1))
    assert n_trials <= 30, "a tiny budget: the README's script is also this test"
    if storage == "sqlite":
        assert code.count("storage=None,  # or \"sqlite:///paths.db\"") == 1
        code = code.replace("storage=None,", 'storage="sqlite:///paths.db",')
    namespace = run_script(code, tmp_path, monkeypatch)
    out = capsys.readouterr().out
    paths = namespace["PATHS"]
    check_study(namespace["study"], paths, n_trials, out)
    if storage == "sqlite":  # the file holds the study: load it as another script would
        study = optuna.load_study(study_name=None, storage=f"sqlite:///{tmp_path / 'paths.db'}")
        check_study(study, paths, n_trials, out)
    # the stand-in's best mask (the two signal paths alone) is on the front
    best = "".join("1" if p in ("audio->text", "text->vision") else "0" for p in paths)
    assert best in out.split()


def test_the_readme_mixed_script_runs(tmp_path, monkeypatch, capsys):
    code = readme_scripts()[1]
    n_trials = int(re.search(r"n_trials=(\d+)", code).group(1))
    assert n_trials <= 30, "a tiny budget: the README's script is also this test"
    namespace = run_script(code, tmp_path, monkeypatch)
    out = capsys.readouterr().out
    paths, study = namespace["PATHS"], namespace["study"]
    trials = study.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * n_trials, "more trials than masks, none pruned"
    masks = ["".join(str(t.params[p]) for p in paths) for t in trials]
    assert len(set(masks[: 2 ** len(paths) - 1])) == 2 ** len(paths) - 1, "every mask once before any repeats"
    assert len({tuple(sorted(t.params.items())) for t in trials}) == n_trials, "no trial repeats another"
    assert {"lr", "depth", "optimizer"} <= set(trials[-1].params)
    assert len(out.strip().splitlines()) == len(study.best_trials)
