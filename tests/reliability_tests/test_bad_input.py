"""Bad input through the real command line: each case is a file in its real format (or a study
file, a mask, a storage URL, a checkpoint) given to ``mro-search`` as a subprocess.

Every case must end with one line on stderr, ``mro-search: error: ...``, that names the
problem; exit code 2; no traceback; and nothing written: no checkpoint, no study database, no
new trial, no changed study attribute. ``tests/data_tests`` checks the loaders' messages in
detail; here the whole command is checked, from the study file to the storage.
"""

from __future__ import annotations

import builtins
import os
import pickle
import subprocess
from pathlib import Path

import numpy as np
import pytest

from .conftest import study_snapshot, tree_snapshot

SECRET = "Wr0ngPassw0rd"


# --- helpers ----------------------------------------------------------------------------------


def assert_one_line_error(result: subprocess.CompletedProcess, *needles: str) -> str:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("mro-search: error: "), lines[0]
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def study_file(folder: Path, source: str, data: Path | str, *, extra: str = "") -> Path:
    """A tiny study on ``data`` (source ``npz`` or ``mmsa``), its run folder ``folder/run``."""
    path = folder / "bad.toml"
    path.write_text(
        f"""name = "bad"
{extra}
[data]
source = "{source}"
path = "{Path(data).as_posix()}"

[model]
width = 8
heads = 2
ffn_mult = 1
dropout = 0.0

[train]
epochs = 1
warmup_epochs = 1
batch_size = 16

[search]
trials = 3
n_startup_trials = 1
run_dir = "{(folder / 'run').as_posix()}"
""",
        encoding="utf-8",
    )
    return path


def run_fails(mro, folder: Path, study: Path, *needles: str, command: str = "run", extra: tuple[str, ...] = ()) -> str:
    """``mro-search COMMAND --study STUDY`` fails as it should, and writes nothing at all under
    ``folder`` (no checkpoint, no study database): run with the default SQLite storage."""
    before = tree_snapshot(folder)
    args = [command, "--study", str(study), *extra, "-q"]
    if command == "run":
        args.append("--no-report")
    line = assert_one_line_error(mro.run(args, cwd=folder, timeout=120), *needles)
    assert tree_snapshot(folder) == before, "the failed command wrote files"
    assert not (folder / "run" / "supernet.pt").exists() and not (folder / "run" / "study.db").exists()
    return line


# --- data files in their real formats ------------------------------------------------------------


SIZES = {"train": 20, "valid": 6, "test": 8}


def npz_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    """Two modalities: ``a`` sequences (N, 4, 3), ``b`` vectors (N, 5); labels 0/1."""
    rng = np.random.default_rng(seed)
    arrays: dict[str, np.ndarray] = {"modalities": np.array(["a", "b"])}
    for split, n in SIZES.items():
        arrays[f"{split}/a"] = rng.normal(size=(n, 4, 3)).astype(np.float32)
        arrays[f"{split}/b"] = rng.normal(size=(n, 5)).astype(np.float32)
        arrays[f"{split}/label"] = np.arange(n) % 2
    return arrays


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    np.savez(path, **arrays)
    return path


def mmsa_data(seed: int = 0) -> dict[str, dict[str, object]]:
    """An MMSA feature pickle's dict, as ``aligned_50.pkl`` holds it, but small."""
    rng = np.random.default_rng(seed)
    data = {}
    for split, n in SIZES.items():
        data[split] = {
            "raw_text": np.array([f"utterance {i}" for i in range(n)], dtype=object),
            "id": np.array([f"vid{i}$_$0" for i in range(n)], dtype=object),
            "text": rng.normal(size=(n, 4, 8)).astype(np.float32),
            "text_bert": rng.integers(0, 30000, size=(n, 3, 4)).astype(np.float64),
            "audio": rng.normal(size=(n, 4, 5)).astype(np.float32),
            "vision": rng.normal(size=(n, 4, 3)).astype(np.float32),
            "regression_labels": rng.uniform(-3, 3, size=n).astype(np.float32),
            "classification_labels": rng.integers(0, 2, size=n).astype(np.float64),
        }
    return data


def write_pickle(path: Path, obj: object) -> Path:
    path.write_bytes(pickle.dumps(obj, protocol=4))
    return path


def test_mmsa_corrupt_pickle(mro, tmp_path):
    data = tmp_path / "aligned_50.pkl"
    data.write_bytes(b"\x80\x04\x95" + bytes(range(256)) * 8)
    run_fails(mro, tmp_path, study_file(tmp_path, "mmsa", data), str(data), "not a readable pickle")


def test_mmsa_truncated_pickle(mro, tmp_path):
    data = write_pickle(tmp_path / "aligned_50.pkl", mmsa_data())
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    run_fails(mro, tmp_path, study_file(tmp_path, "mmsa", data), str(data), "truncated or corrupt")


class _Gadget:
    """Pickles as a call of ``func(*args)``: what a crafted data file does."""

    def __init__(self, func, *args) -> None:
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


@pytest.mark.parametrize(
    ("gadget", "global_name"),
    [
        (lambda marker: _Gadget(os.system, f"touch {marker}"), "posix.system"),
        (lambda marker: _Gadget(builtins.exec, f"open({str(marker)!r}, 'w').close()"), "builtins.exec"),
        (lambda marker: _Gadget(subprocess.call, ["touch", str(marker)]), "subprocess.call"),
    ],
    ids=["os.system", "exec", "subprocess"],
)
def test_mmsa_pickle_that_runs_code_is_refused_and_runs_nothing(mro, tmp_path, gadget, global_name):
    marker = tmp_path / "pwned"
    data = mmsa_data()
    data["train"]["text"] = gadget(marker)  # deep inside a valid-looking file
    path = write_pickle(tmp_path / "aligned_50.pkl", data)
    assert global_name.split(".")[-1] in path.read_bytes().decode("latin1")
    run_fails(mro, tmp_path, study_file(tmp_path, "mmsa", path), "refuses to load global", global_name)
    assert not marker.exists(), "the pickle ran code"


def test_mmsa_pickle_of_another_structure(mro, tmp_path):
    path = write_pickle(tmp_path / "aligned_50.pkl", [np.zeros((3, 4, 8))])
    run_fails(mro, tmp_path, study_file(tmp_path, "mmsa", path), "holds a list", "MMSA dict of splits")


def test_mmsa_nan_features(mro, tmp_path):
    data = mmsa_data()
    data["valid"]["text"][2, 1, 3] = np.nan
    path = write_pickle(tmp_path / "aligned_50.pkl", data)
    run_fails(mro, tmp_path, study_file(tmp_path, "mmsa", path), "valid/text", "NaN or Inf")


def test_mmsa_labels_of_the_wrong_type(mro, tmp_path):
    data = mmsa_data()
    data["test"]["regression_labels"] = np.array(["positive", "negative"] * 4)
    path = write_pickle(tmp_path / "aligned_50.pkl", data)
    run_fails(mro, tmp_path, study_file(tmp_path, "mmsa", path), "test/regression_labels", "are not numbers")


def test_npz_with_object_arrays(mro, tmp_path):
    arrays = npz_arrays()
    arrays["train/b"] = np.array([np.zeros(5), "five floats"] * 10, dtype=object)
    path = write_npz(tmp_path / "data.npz", arrays)
    run_fails(mro, tmp_path, study_file(tmp_path, "npz", path), "train/b holds Python objects")


def test_npz_pickle_renamed_to_npz(mro, tmp_path):
    path = tmp_path / "data.npz"
    path.write_bytes(pickle.dumps(npz_arrays()))
    run_fails(mro, tmp_path, study_file(tmp_path, "npz", path), "holds a pickle, not an .npz")


def test_npz_mismatched_sample_counts_across_modalities(mro, tmp_path):
    arrays = npz_arrays()
    arrays["train/b"] = arrays["train/b"][:-3]
    path = write_npz(tmp_path / "data.npz", arrays)
    run_fails(mro, tmp_path, study_file(tmp_path, "npz", path), "train/b", "17 samples but 20 labels")


def test_npz_inf_features(mro, tmp_path):
    arrays = npz_arrays()
    arrays["test/a"][1, 2, 0] = np.inf
    path = write_npz(tmp_path / "data.npz", arrays)
    run_fails(mro, tmp_path, study_file(tmp_path, "npz", path), "test/a", "NaN or Inf")


def test_npz_empty_split(mro, tmp_path):
    arrays = npz_arrays()
    for key in [k for k in arrays if k.startswith("valid/")]:
        arrays[key] = arrays[key][:0]
    path = write_npz(tmp_path / "data.npz", arrays)
    run_fails(mro, tmp_path, study_file(tmp_path, "npz", path), "valid split is empty")


def test_npz_single_class(mro, tmp_path):
    arrays = npz_arrays()
    arrays["train/label"] = np.ones(SIZES["train"], dtype=np.int64)
    path = write_npz(tmp_path / "data.npz", arrays)
    run_fails(mro, tmp_path, study_file(tmp_path, "npz", path), "train/label", "single class")


def test_npz_labels_of_the_wrong_type(mro, tmp_path):
    arrays = npz_arrays()
    arrays["train/label"] = np.array(["cat", "dog"] * (SIZES["train"] // 2))
    path = write_npz(tmp_path / "data.npz", arrays)
    run_fails(mro, tmp_path, study_file(tmp_path, "npz", path), "train/label", "dtype <U3")


def test_missing_data_path(mro, tmp_path):
    missing = tmp_path / "nowhere" / "data.npz"
    run_fails(mro, tmp_path, study_file(tmp_path, "npz", missing), str(missing), "no such file", command="train")


def test_data_path_is_a_folder(mro, tmp_path):
    folder = tmp_path / "features"
    folder.mkdir()
    run_fails(mro, tmp_path, study_file(tmp_path, "mmsa", folder), str(folder), "is a folder")


# --- study files --------------------------------------------------------------------------------


def test_study_file_with_unknown_keys(mro, tmp_path):
    study = study_file(tmp_path, "npz", "data.npz", extra='colour = "blue"\n[searc]\ntrials = 5\n')
    study.write_text(study.read_text().replace("[model]\n", "[model]\nwidht = 8\n"), encoding="utf-8")
    line = run_fails(mro, tmp_path, study, "3 problems", "unknown key 'colour'", "unknown key 'searc'", "[model] unknown key 'widht'")
    assert line == assert_one_line_error(mro.run(["validate", str(study)], cwd=tmp_path))


def test_study_file_with_wrong_types(mro, tmp_path):
    study = study_file(tmp_path, "npz", "data.npz")
    text = study.read_text().replace("width = 8", 'width = "wide"').replace("trials = 3", "trials = 2.5").replace("dropout = 0.0", "dropout = [0.1]")
    study.write_text(text, encoding="utf-8")
    run_fails(mro, tmp_path, study, "3 problems", "[model] width must be", "'wide'", "[search] trials must be", "[model] dropout must be")


def test_study_file_with_an_unknown_data_source(mro, tmp_path):
    run_fails(mro, tmp_path, study_file(tmp_path, "csv", "data.csv"), "[data] source = 'csv' is not one of")


# --- arguments --------------------------------------------------------------------------------------


def test_zero_workers_is_refused_before_anything_is_done(mro, tmp_path):
    """``--workers 0`` was checked only after training the supernet and creating the study."""
    arrays = npz_arrays()
    path = write_npz(tmp_path / "data.npz", arrays)
    run_fails(mro, tmp_path, study_file(tmp_path, "npz", path), "--workers must be at least 1, got 0", extra=("--workers", "0"))


def test_zero_trials_is_refused_before_anything_is_done(mro, tmp_path):
    path = write_npz(tmp_path / "data.npz", npz_arrays())
    run_fails(mro, tmp_path, study_file(tmp_path, "npz", path), "--trials must be at least 1, got 0", extra=("--trials", "0"))


# --- masks, on a study that exists ----------------------------------------------------------------


@pytest.fixture(scope="module")
def searched(tiny, mro, tmp_path_factory):
    """The tiny study with 3 trials in a SQLite file: the study that failed commands must not touch."""
    from search_service.evaluator import Evaluator
    from search_service.search import run_worker
    from search_service.study_file import load_study

    url = f"sqlite:///{tmp_path_factory.mktemp('searched') / 'study.db'}"
    search = mro.create(tiny.file, url, trials=3)
    run_worker(search, Evaluator(load_study(str(tiny.file))), seed=0)
    assert len(mro.complete(search.optuna_study)) == 3
    return url


@pytest.mark.parametrize(
    ("command", "mask", "needles"),
    [
        ("evaluate", "0110", ("mask 0110 has 4 bits but this study has 6 paths",)),
        ("evaluate", "000000", ("all-zero mask",)),
        ("flops", "1111111", ("has 7 bits but this study has 6 paths",)),
    ],
    ids=["wrong-length", "all-zero", "flops-wrong-length"],
)
def test_bad_mask(mro, tiny, searched, tmp_path, command, mask, needles):
    before = (study_snapshot(searched), tree_snapshot(tiny.run_dir))
    result = mro.run([command, "--study", str(tiny.file), "--mask", mask, "-q"], cwd=tmp_path)
    assert_one_line_error(result, *needles)
    assert (study_snapshot(searched), tree_snapshot(tiny.run_dir)) == before


# --- storages ----------------------------------------------------------------------------------------


def test_unreachable_storage_fails_before_training(mro, tmp_path):
    """No server on port 1: ``run`` says so at once, instead of training the supernet first."""
    path = write_npz(tmp_path / "data.npz", npz_arrays())
    url = f"postgresql+psycopg://postgres:{SECRET}@127.0.0.1:1/mro"
    line = run_fails(mro, tmp_path, study_file(tmp_path, "npz", path), "cannot open storage", "postgres:***@127.0.0.1:1/mro", extra=("--storage", url))
    assert SECRET not in line


def test_storage_url_that_is_not_a_url(mro, tiny, tmp_path):
    result = mro.run(["worker", "--study", str(tiny.file), "--storage", "postgres//db.example/mro", "-q"], cwd=tmp_path)
    assert_one_line_error(result, "is not a valid database URL")


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("template", "needle"),
    [
        ("postgresql+psycopg://nosuchuser:{pw}@127.0.0.1:5432/test", 'role "nosuchuser" does not exist'),
        ("postgresql+psycopg://postgres:{pw}@127.0.0.1:5432/mro_no_such_database", 'database "mro_no_such_database" does not exist'),
    ],
    ids=["unknown-user", "unknown-database"],
)
def test_wrong_credentials(mro, pg_server, tiny, searched, tmp_path, template, needle):
    before = study_snapshot(searched)
    for command in ("worker", "pareto"):
        result = mro.run([command, "--study", str(tiny.file), "--storage", template.format(pw=SECRET), "-q"], cwd=tmp_path)
        line = assert_one_line_error(result, "cannot open storage", needle, ":***@127.0.0.1:5432")
        assert SECRET not in result.stdout + result.stderr, line
    assert study_snapshot(searched) == before


@pytest.mark.postgres
def test_wrong_password(mro, pg_server, tiny, tmp_path):
    from sqlalchemy import create_engine, text

    url = f"postgresql+psycopg://postgres:{SECRET}@127.0.0.1:5432/test"
    engine = create_engine(url, connect_args={"connect_timeout": 5})
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        pytest.skip("the PostgreSQL server here uses trust authentication for 127.0.0.1: any password is accepted, so no wrong-password case can fail")
    except Exception:
        pass  # password authentication: the case below is real
    finally:
        engine.dispose()
    result = mro.run(["pareto", "--study", str(tiny.file), "--storage", url, "-q"], cwd=tmp_path)
    line = assert_one_line_error(result, "cannot open storage", "password authentication failed")
    assert SECRET not in result.stdout + result.stderr, line


# --- checkpoints ---------------------------------------------------------------------------------------


def _copy_study(tiny, folder: Path, checkpoint: bytes) -> Path:
    """The tiny study file with its own run folder holding ``checkpoint``."""
    run_dir = folder / "run"
    run_dir.mkdir(parents=True)
    (run_dir / "supernet.pt").write_bytes(checkpoint)
    return tiny.variant(folder, "tiny.toml", run_dir=run_dir)


def test_checkpoint_from_another_study(mro, tiny, searched, tmp_path):
    """A checkpoint of the same configuration but other weights (SHA-256 differs from the one the
    study recorded): ``report`` refuses it, writes no report and leaves the study alone."""
    import torch

    from supernet.checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(tiny.checkpoint)
    with torch.no_grad():
        for p in ckpt.model.parameters():
            p.add_(0.01)
    other = tmp_path / "other.pt"
    save_checkpoint(other, ckpt.model, ckpt.prior, ckpt.config, ckpt.history)
    study = _copy_study(tiny, tmp_path / "copy", other.read_bytes())
    before = study_snapshot(searched)
    report = tmp_path / "report.html"
    result = mro.run(["report", "--study", str(study), "--storage", searched, "-o", str(report), "-q"], cwd=tmp_path)
    assert_one_line_error(result, "SHA-256", "differs from the one study 'tiny' was created with")
    assert not report.exists()
    assert study_snapshot(searched) == before


def test_truncated_checkpoint(mro, tiny, searched, tmp_path):
    data = tiny.checkpoint.read_bytes()
    study = _copy_study(tiny, tmp_path / "copy", data[: len(data) // 3])
    before = study_snapshot(searched)
    result = mro.run(["worker", "--study", str(study), "--storage", searched, "-q"], cwd=tmp_path)
    assert_one_line_error(result, "supernet.pt", "not a readable checkpoint", "truncated or corrupt")
    assert study_snapshot(searched) == before
