"""Fuzzed ``.npz`` data sets (shapes, dtypes, NaN/inf and huge values, object arrays, odd names,
lengths and labels, headers declaring 10^12 rows, files that are no npz): ``validate`` writes
nothing, ``train`` gives a finite checkpoint or one error line and nothing written."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from .conftest import check, fuzz_settings, listing
from .strategies import NpzCase, npz_cases, render_toml

FILE = "fz.toml"


def study(classes: int, valid_fraction: float, metric: str) -> str:
    doc = {
        "name": "fz",
        "data": {"source": "npz", "path": "data.npz", "classes": classes, "valid_fraction": valid_fraction},
        "model": {"width": 4, "heads": 1, "ffn_mult": 1, "dropout": 0.0, "vector_tokens": 2},
        "train": {"epochs": 1, "warmup_epochs": 1, "batch_size": 16, "rank_every": 1, "rank_masks": 2},
        "search": {"trials": 2, "n_startup_trials": 1, "metric": metric},
    }
    return render_toml(doc)


@fuzz_settings(share=1.0)
@given(case=npz_cases(), classes=st.sampled_from([0] * 6 + [2, 3, 5]), valid_fraction=st.sampled_from([0.15] * 6 + [0.0, 0.5, 0.96]),
       metric=st.sampled_from([""] * 6 + ["accuracy", "f1_macro", "acc_7", "corr"]), quiet=st.booleans())
def test_npz_data(cli, scratch, case: NpzCase, classes: int, valid_fraction: float, metric: str, quiet: bool) -> None:
    root = scratch()
    case.write(root / "data.npz")
    (root / FILE).write_text(study(classes, valid_fraction, metric), encoding="utf-8")
    before = listing(root)
    outcome = cli.invoke(["validate", FILE], root)
    check(outcome, root, before)
    assert listing(root) == before, f"validate wrote files\n{outcome}"
    outcome = cli.invoke(["train", "--study", FILE, *(["-q"] if quiet else [])], root)
    check(outcome, root, before)
    if outcome.code == 0:
        checkpoints = list(root.glob("runs/fz/checkpoints/*.pt"))
        assert checkpoints, f"exit 0 but no checkpoint\n{outcome}"
        before = listing(root)
        outcome = cli.invoke(["evaluate", "--study", FILE, "--mask", "11", "-q", "--split", "test"], root)
        check(outcome, root, before)
        assert outcome.code == 0, str(outcome)
