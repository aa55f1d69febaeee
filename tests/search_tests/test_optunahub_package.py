"""The OptunaHub package (``hub/package/samplers/mro_sampler/``, laid out as in
optuna/optunahub-registry's ``package/``): its files and README front matter, loaded offline with
``optunahub.load_local_module`` as the registry's own example does, and its ``example.py`` run as a script."""

from __future__ import annotations

import runpy
from pathlib import Path

import optunahub
import yaml

from search_service.sampler import MROSampler

REPO = Path(__file__).resolve().parents[2]
REGISTRY_ROOT = REPO / "hub" / "package"
PACKAGE = "samplers/mro_sampler"


def test_the_package_has_the_registry_layout_and_front_matter():
    folder = REGISTRY_ROOT / PACKAGE
    for name in ("__init__.py", "README.md", "example.py", "LICENSE"):
        assert (folder / name).is_file(), f"{PACKAGE}/{name} is missing"
    text = (folder / "README.md").read_text()
    assert text.startswith("---\n")
    front = yaml.safe_load(text.split("---\n")[1])
    assert set(front) == {"author", "title", "description", "tags", "optuna_versions", "license"}
    assert all(isinstance(front[k], str) and front[k] for k in ("author", "title", "description", "license"))
    assert "sampler" in front["tags"], "a package under samplers/ carries the tag 'sampler'"
    assert front["optuna_versions"] and "MIT" in (folder / "LICENSE").read_text()


def test_load_local_module_gives_the_projects_sampler_not_a_copy():
    module = optunahub.load_local_module(package=PACKAGE, registry_root=str(REGISTRY_ROOT))
    assert module.MROSampler is MROSampler
    assert module.__all__ == ["MROSampler"]


def test_the_example_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # it finds its registry root from its own path, not the cwd
    namespace = runpy.run_path(str(REGISTRY_ROOT / PACKAGE / "example.py"), run_name="__main__")
    study = namespace["study"]
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * len(study.trials) and len(study.trials) == 20
    assert isinstance(study.sampler, MROSampler)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == len(study.best_trials) > 0, "the example prints the Pareto front"
    assert all(len(line.split()[0]) == 3 and set(line.split()[0]) <= {"0", "1"} for line in lines)
