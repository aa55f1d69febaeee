"""Fuzzed masks given to ``evaluate --mask`` and ``flops --mask`` of a trained tiny study (3
modalities, 6 paths): a mask is accepted exactly when its 0/1 digits are one bit per path and
not all zero; both commands write nothing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from .conftest import check, fuzz_settings, listing, prepare
from .strategies import TINY_STUDY, masks, render_toml

FILE = "fz.toml"
PATHS = 6


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A folder with the tiny study file and its trained supernet (runs/fz/checkpoints)."""
    root = tmp_path_factory.mktemp("masks")
    (root / FILE).write_text(render_toml(TINY_STUDY), encoding="utf-8")
    prepare(root, ["train", "--study", FILE, "-q"])
    yield root


def _accepted(mask: str) -> str | None:
    """The bits a mask stands for, if it is one the CLI must accept: 0 and 1 only, apart from
    surrounding whitespace, commas, spaces and brackets, one per path, not all zero."""
    text = mask.strip().replace(",", "").replace(" ", "").strip("[]")
    if len(text) == PATHS and set(text) <= {"0", "1"} and "1" in text:
        return text
    return None


@fuzz_settings(share=2.0)
@given(mask=masks(PATHS), command=st.sampled_from(["evaluate", "flops"]), split=st.sampled_from([None, "valid", "test"]),
       direct=st.booleans(), as_json=st.booleans())
def test_mask(cli, trained: Path, mask: str, command: str, split: str | None, direct: bool, as_json: bool) -> None:
    before = listing(trained)
    argv = [command, "--study", FILE, f"--mask={mask}", "-q"]
    if command == "evaluate":
        argv += (["--split", split] if split else []) + (["--direct"] if direct else [])
    if as_json:
        argv.append("--json")
    outcome = cli.invoke(argv, trained)
    check(outcome, trained, before)
    assert listing(trained) == before, f"{command} wrote files\n{outcome}"
    expected = _accepted(mask)
    if expected is None:
        assert outcome.code == 2, f"mask {mask!r} accepted\n{outcome}"
        assert "mask" in outcome.error_lines[0], str(outcome)
    else:
        assert outcome.code == 0, f"mask {mask!r} refused\n{outcome}"
        if as_json:
            assert json.loads(outcome.out)["mask"] == expected
