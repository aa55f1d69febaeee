"""The generic .npz loader and the common checks, on small .npz files."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from supernet.config import DataConfig
from supernet.data import load_data
from supernet.errors import DataError

SIZES = {"train": 20, "valid": 6, "test": 8}


def _arrays(*, task: str = "classification", valid: bool = True, seed: int = 0) -> dict[str, Any]:
    """text: sequence (N, 5, 4) with lengths; audio: sequence (N, 7, 3); image: vector (N, 10)."""
    rng = np.random.default_rng(seed)
    arrays: dict[str, Any] = {"modalities": np.array(["text", "audio", "image"])}
    for split, n in SIZES.items():
        if split == "valid" and not valid:
            continue
        arrays[f"{split}/text"] = rng.normal(size=(n, 5, 4)).astype(np.float32)
        arrays[f"{split}/text_lengths"] = rng.integers(1, 6, size=n)
        arrays[f"{split}/audio"] = rng.normal(size=(n, 7, 3))  # float64 is converted
        arrays[f"{split}/image"] = rng.normal(size=(n, 10)).astype(np.float32)
        if task == "classification":
            arrays[f"{split}/label"] = np.arange(n) % 3
        else:
            arrays[f"{split}/label"] = rng.uniform(-3, 3, size=n)
    return arrays


def _save(path: Path, arrays: dict[str, Any], *, compressed: bool = False) -> Path:
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    return path


def _load(path: Path, **config: Any) -> Any:
    return load_data(DataConfig(source="npz", path=str(path), **config))


def _error(path: Path, *words: str, arrays: dict[str, Any] | None = None, **config: Any) -> str:
    if arrays is not None:
        _save(path, arrays)
    with pytest.raises(DataError) as info:
        _load(path, **config)
    message = str(info.value)
    assert "\n" not in message and str(path) in message, message
    for word in words:
        assert word in message, message
    return message


def test_classification_with_sequences_vectors_and_lengths(tmp_path: Path) -> None:
    arrays = _arrays()
    data = _load(_save(tmp_path / "d.npz", arrays, compressed=True))
    assert data.modality_names == ["text", "audio", "image"]
    assert [(m.dim, m.length) for m in data.modalities] == [(4, 5), (3, 7), (10, None)]
    assert data.task == "classification" and data.num_classes == 3
    for split, n in SIZES.items():
        s = data.splits[split]
        assert len(s) == n
        assert s.labels.dtype == torch.int64
        assert s.features["audio"].dtype == torch.float32
        np.testing.assert_array_equal(s.features["image"].numpy(), arrays[f"{split}/image"])
        assert set(s.lengths) == {"text"}
        np.testing.assert_array_equal(s.lengths["text"].numpy(), arrays[f"{split}/text_lengths"])


def test_regression_and_carved_validation(tmp_path: Path) -> None:
    arrays = _arrays(task="regression", valid=False)
    path = _save(tmp_path / "r.npz", arrays)
    data = _load(path, valid_fraction=0.25, seed=5)
    assert data.task == "regression" and data.num_classes is None
    assert (len(data.splits["train"]), len(data.splits["valid"])) == (15, 5)
    assert data.splits["valid"].labels.dtype == torch.float32
    together = torch.cat([data.splits["train"].labels, data.splits["valid"].labels]).sort().values
    expected = torch.from_numpy(np.sort(arrays["train/label"]).astype(np.float32))
    assert torch.equal(together, expected)
    again = _load(path, valid_fraction=0.25, seed=5)
    assert torch.equal(again.splits["valid"].labels, data.splits["valid"].labels)
    assert set(data.splits["valid"].lengths) == {"text"}
    assert len(data.splits["valid"].lengths["text"]) == 5


def test_lengths_given_for_some_splits_only(tmp_path: Path) -> None:
    arrays = _arrays()
    del arrays["test/text_lengths"]
    data = _load(_save(tmp_path / "d.npz", arrays))
    assert torch.equal(data.splits["test"].lengths["text"], torch.full((8,), 5, dtype=torch.int64))


def test_missing_file_and_empty_path(tmp_path: Path) -> None:
    _error(tmp_path / "missing.npz", "no such file", "[data] path")
    with pytest.raises(DataError, match=r"\[data\] path is empty"):
        load_data(DataConfig(source="npz"))


def test_object_array_is_refused(tmp_path: Path) -> None:
    arrays = _arrays()
    arrays["train/image"] = np.array([np.zeros(10), "text"] * 10, dtype=object)
    _error(
        tmp_path / "o.npz",
        "key train/image holds Python objects",
        "allow_pickle is off",
        arrays=arrays,
    )


def test_object_modalities_are_refused(tmp_path: Path) -> None:
    arrays = _arrays()
    arrays["modalities"] = np.array(["text", "audio", "image"], dtype=object)
    _error(tmp_path / "o.npz", "key modalities holds Python objects", arrays=arrays)


def test_pickle_instead_of_npz(tmp_path: Path) -> None:
    path = tmp_path / "p.npz"
    path.write_bytes(pickle.dumps({"train/text": np.zeros(3)}))
    _error(path, "holds a pickle, not an .npz")


def test_single_npy_array(tmp_path: Path) -> None:
    path = tmp_path / "a.npz"
    with path.open("wb") as f:
        np.save(f, np.zeros(3))
    _error(path, "single array")


def test_truncated_npz(tmp_path: Path) -> None:
    path = _save(tmp_path / "t.npz", _arrays(), compressed=True)
    path.write_bytes(path.read_bytes()[:300])
    _error(path, "truncated or corrupt")


def test_missing_keys(tmp_path: Path) -> None:
    arrays = _arrays()
    del arrays["modalities"]
    _error(tmp_path / "a.npz", "key modalities missing", arrays=arrays)
    arrays = _arrays()
    del arrays["valid/audio"]
    _error(tmp_path / "b.npz", "valid/audio", "missing", arrays=arrays)
    arrays = {k: v for k, v in _arrays().items() if not k.startswith("test/")}
    _error(tmp_path / "c.npz", "split test missing", arrays=arrays)


def test_mismatched_counts(tmp_path: Path) -> None:
    arrays = _arrays()
    arrays["train/audio"] = arrays["train/audio"][:-2]
    _error(tmp_path / "m.npz", "train/audio", "18 samples but 20 labels", arrays=arrays)
    arrays = _arrays()
    arrays["valid/text_lengths"] = arrays["valid/text_lengths"][:-1]
    _error(tmp_path / "l.npz", "valid/text_lengths", "5 samples but 6 labels", arrays=arrays)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_features(tmp_path: Path, value: float) -> None:
    arrays = _arrays()
    arrays["test/image"][3, 2] = value
    _error(tmp_path / "n.npz", "test/image", "NaN or Inf", "clean", arrays=arrays)


def test_non_finite_regression_labels(tmp_path: Path) -> None:
    arrays = _arrays(task="regression")
    arrays["valid/label"][0] = np.nan
    _error(tmp_path / "n.npz", "valid/label", "NaN or Inf", arrays=arrays)


def test_empty_split(tmp_path: Path) -> None:
    arrays = _arrays()
    for key in [k for k in arrays if k.startswith("valid/")]:
        arrays[key] = arrays[key][:0]
    _error(tmp_path / "e.npz", "valid split is empty", arrays=arrays)


def test_single_class_in_train(tmp_path: Path) -> None:
    arrays = _arrays()
    arrays["train/label"] = np.zeros(SIZES["train"], np.int64)
    _error(tmp_path / "s.npz", "train/label", "single class", arrays=arrays)


def test_string_labels(tmp_path: Path) -> None:
    arrays = _arrays()
    arrays["train/label"] = np.array(["cat", "dog"] * 10)
    _error(tmp_path / "s.npz", "train/label", "dtype <U3", arrays=arrays)


def test_label_types_differ_between_splits(tmp_path: Path) -> None:
    arrays = _arrays()
    arrays["test/label"] = arrays["test/label"].astype(np.float64) + 0.5
    _error(tmp_path / "t.npz", "test/label", "regression", "same type", arrays=arrays)


def test_negative_class_ids(tmp_path: Path) -> None:
    arrays = _arrays()
    arrays["valid/label"] = arrays["valid/label"] - 1
    _error(tmp_path / "n.npz", "valid/label", "negative class id -1", arrays=arrays)


def test_dims_differ_between_splits(tmp_path: Path) -> None:
    arrays = _arrays()
    arrays["test/image"] = arrays["test/image"][:, :8]
    _error(
        tmp_path / "d.npz",
        "test/image",
        "8 features per step",
        "10 in the other splits",
        arrays=arrays,
    )
    arrays = _arrays()
    arrays["valid/audio"] = arrays["valid/audio"][:, :4]
    _error(tmp_path / "l.npz", "valid/audio", "length 4", "length 7", arrays=arrays)


def test_wrong_ndim(tmp_path: Path) -> None:
    arrays = _arrays()
    arrays["valid/image"] = arrays["valid/image"][:, :, None]
    _error(tmp_path / "w.npz", "valid/image", "3-d", "expected (N, d)", arrays=arrays)
    arrays = _arrays()
    arrays["train/audio"] = arrays["train/audio"][..., None]
    _error(
        tmp_path / "x.npz", "train/audio", "(N, L, d) sequences or (N, d) vectors", arrays=arrays
    )


def test_lengths_out_of_range(tmp_path: Path) -> None:
    arrays = _arrays()
    arrays["train/text_lengths"][4] = 0
    _error(tmp_path / "l.npz", "train/text_lengths", "1..5", arrays=arrays)


# --- headers first, labels against the classes, names ---------------------------------------------


def _save_with_forged_header(path: Path, arrays: dict[str, Any], key: str, shape: tuple[int, ...]) -> Path:
    """An .npz whose member ``key`` declares ``shape`` in its header but holds the original data."""
    import io
    import zipfile

    with zipfile.ZipFile(path, "w") as archive:
        for name, value in arrays.items():
            value = np.asarray(value)
            buffer = io.BytesIO()
            if name == key:
                header = {"descr": np.lib.format.dtype_to_descr(value.dtype), "fortran_order": False, "shape": shape}
                np.lib.format.write_array_header_1_0(buffer, header)
                buffer.write(value.tobytes())
            else:
                np.save(buffer, value)
            archive.writestr(f"{name}.npy", buffer.getvalue())
    return path


def test_a_header_declaring_10_to_the_12_rows_is_refused_before_reading(tmp_path: Path) -> None:
    path = _save_with_forged_header(tmp_path / "forged.npz", _arrays(), "train/image", (10**12, 10))
    _error(path, "key train/image declares shape (1000000000000, 10)", "corrupt")


def test_arrays_that_do_not_fit_in_the_available_memory_are_refused_before_reading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import supernet.memory
    from supernet.errors import ResourceError

    path = _save(tmp_path / "data.npz", _arrays())
    monkeypatch.setattr(supernet.memory, "available_bytes", lambda: 4096)  # a machine of 4 KiB
    with pytest.raises(ResourceError, match=r"data.npz \(\d+ arrays\) needs about .* of memory but this machine has 4 KiB available now"):
        _load(path)


def test_read_layout_gives_shapes_task_and_sizes_without_reading_data(tmp_path: Path) -> None:
    from supernet.data.npz import read_layout

    layout = read_layout(_save(tmp_path / "data.npz", _arrays(), compressed=True))
    assert layout.arrays["train/text"] == ((20, 5, 4), np.dtype(np.float32))
    assert layout.task == "classification" and layout.samples("test") == 8
    assert {(m.name, m.dim, m.length) for m in layout.modalities()} == {("text", 4, 5), ("audio", 3, 7), ("image", 10, None)}
    # features as float32 (audio is float64 on disk), the largest array once more in its own dtype
    assert layout.loaded_bytes() > 34 * (20 + 21 + 10) * 4
    assert read_layout(_save(tmp_path / "reg.npz", _arrays(task="regression"))).task == "regression"
    (tmp_path / "not.npz").write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(DataError, match="not a readable .npz"):
        read_layout(tmp_path / "not.npz")


def test_class_ids_with_a_gap_are_refused_unless_classes_are_declared(tmp_path: Path) -> None:
    arrays = _arrays()
    arrays["train/label"] = np.array([0, 1, 2, 99] * 5)
    _error(tmp_path / "gap.npz", "class ids (0, 1, 2, 99; largest 99) leave gaps (no sample of class 3)", "[data] classes", arrays=arrays)
    data = _load(tmp_path / "gap.npz", classes=100)
    assert data.num_classes == 100 and data.output_dim == 100
    _error(tmp_path / "gap.npz", "class id 99 is outside 0..3 ([data] classes = 4)", classes=4)


def test_a_label_of_10_to_the_12_is_a_gap_not_a_huge_model(tmp_path: Path) -> None:
    arrays = _arrays()
    arrays["test/label"] = np.array([0, 1, 2, 10**12, 0, 1, 2, 0])
    _error(tmp_path / "huge.npz", "largest 1000000000000", "leave gaps", arrays=arrays)


def test_declared_classes_cover_ids_absent_from_the_data(tmp_path: Path) -> None:
    data = _load(_save(tmp_path / "data.npz", _arrays()), classes=5)  # ids 0..2 present, 3 and 4 not
    assert data.num_classes == 5


def test_declared_classes_with_float_labels_are_refused(tmp_path: Path) -> None:
    _error(tmp_path / "reg.npz", "[data] classes = 3 but the labels are floats", arrays=_arrays(task="regression"), classes=3)


@pytest.mark.parametrize(
    ("names", "words"),
    [
        (["text", "audio->image", "image"], ("'audio->image'", "path arrow")),
        (["text", "", "image"], ("modality name ''", "1 to 64 printable characters")),
        (["text", "au\ndio", "image"], ("printable",)),
        (["text", "text", "image"], ("repeat",)),
    ],
)
def test_modality_names_follow_the_naming_rules(tmp_path: Path, names: list[str], words: tuple[str, ...]) -> None:
    arrays = _arrays()
    arrays["modalities"] = np.array(names)
    for split in SIZES:  # keys named after the modalities
        for old, new in zip(["text", "audio", "image"], names):
            if old != new and f"{split}/{new}" not in arrays:
                arrays[f"{split}/{new}"] = arrays[f"{split}/{old}"]
    _error(tmp_path / "names.npz", "key modalities", *words, arrays=arrays)
