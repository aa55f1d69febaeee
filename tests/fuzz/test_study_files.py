"""Fuzzed study files: ``validate`` on anything a study file could hold, ``train`` and ``run``
on cheap ones (tiny sizes, every other value drawn wild: NaN, inf, out of range, odd text)."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from .conftest import check, fuzz_settings, listing
from .strategies import (
    CHEAP_VALUES,
    STUDY_NAME,
    TINY_STUDY,
    WILD_VALUES,
    StudyDoc,
    raw_study_files,
    render_toml,
    study_docs,
)

FILE = "fz.toml"


def _flags(draw_quiet: bool, draw_json: bool) -> list[str]:
    return (["-q"] if draw_quiet else []) + (["--json"] if draw_json else [])


@fuzz_settings(share=2.0)
@given(doc=st.one_of(study_docs(values=WILD_VALUES, max_changes=6), raw_study_files()), as_json=st.booleans())
def test_validate_any_study_file(cli, scratch, doc: StudyDoc, as_json: bool) -> None:
    """``validate`` says ok or gives one error line, and writes nothing either way."""
    root = scratch()
    doc.write(root / FILE)
    before = listing(root)
    outcome = cli.invoke(["validate", FILE, *(["--json"] if as_json else [])], root)
    check(outcome, root, before)
    assert listing(root) == before, f"validate wrote files\n{outcome}"
    if outcome.code == 0 and as_json:
        assert json.loads(outcome.out)["ok"] is True


@fuzz_settings(share=1.0)
@given(doc=study_docs(values=CHEAP_VALUES), command=st.sampled_from(["train", "train", "run"]),
       quiet=st.booleans(), as_json=st.booleans())
def test_train_or_run_cheap_study(cli, scratch, doc: StudyDoc, command: str, quiet: bool, as_json: bool) -> None:
    """A study that validates trains to a finite checkpoint or stops with one error line and no
    checkpoint; a trained supernet then scores the full mask."""
    root = scratch()
    doc.write(root / FILE)
    before = listing(root)
    argv = [command, "--study", FILE, *_flags(quiet, as_json)]
    if command == "run":
        argv += ["--no-report", "--trials", "2"]
    outcome = cli.invoke(argv, root)
    check(outcome, root, before)
    if outcome.code != 0:
        return
    checkpoints = list(root.glob("runs/*/checkpoints/*.pt"))
    assert checkpoints, f"exit 0 but no checkpoint\n{outcome}"
    # the trained supernet scores the full mask (its length from the checkpoint)
    import torch

    payload = torch.load(checkpoints[0], weights_only=True)
    paths = len(payload["spec"]["modalities"]) * (len(payload["spec"]["modalities"]) - 1)
    before = listing(root)
    outcome = cli.invoke(["evaluate", "--study", FILE, "--mask", "1" * paths, "-q"], root)
    check(outcome, root, before)
    assert outcome.code == 0, str(outcome)


@fuzz_settings(share=1.0)
@given(name=STUDY_NAME)
def test_study_names(cli, scratch, name: str) -> None:
    """A study name of any script trains into ``runs/NAME/`` (one folder of exactly that name);
    one that is unsafe as a file name (separators, '..', control characters, a leading '-' or '.',
    another normal form, too long) is one error line, and nothing is written."""
    from supernet.config import name_problem

    root = scratch()
    (root / FILE).write_text(render_toml({**TINY_STUDY, "name": name}), encoding="utf-8", errors="surrogatepass")
    before = listing(root)
    outcome = cli.invoke(["train", "--study", FILE, "-q"], root)
    check(outcome, root, before)
    accepted = name_problem(name, kind="study") is None
    assert (outcome.code == 0) == accepted, f"name {name!r}: accepted {accepted}\n{outcome}"
    if accepted:
        assert [p.name for p in (root / "runs").iterdir()] == [name]
        assert list((root / "runs" / name / "checkpoints").glob("*.pt"))
    else:
        assert "name" in outcome.error_lines[0], str(outcome)
