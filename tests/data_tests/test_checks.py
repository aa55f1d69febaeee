"""Common validation on in-memory data, and load_data's dispatch (synthetic, unknown source)."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

import supernet.data as data_pkg
from supernet.config import DataConfig
from supernet.data import SPLITS, ModalitySpec, MultimodalData, Split, load_data
from supernet.data.checks import features_to_tensor, labels_to_tensor, validate
from supernet.errors import ConfigError, DataError


def _data(task: str = "classification") -> MultimodalData:
    g = torch.Generator().manual_seed(0)
    splits = {}
    for name, n in zip(SPLITS, (12, 4, 4)):
        labels = torch.arange(n) % 3 if task == "classification" else torch.randn(n, generator=g)
        splits[name] = Split(
            features={"a": torch.randn(n, 5, 4, generator=g), "b": torch.randn(n, 6, generator=g)},
            labels=labels,
            lengths={"a": torch.full((n,), 5, dtype=torch.int64)},
        )
    return MultimodalData(
        modalities=[ModalitySpec("a", 4, 5), ModalitySpec("b", 6)],
        task=task,
        splits=splits,
        num_classes=3 if task == "classification" else None,
    )


def _error(data: MultimodalData, *words: str) -> str:
    with pytest.raises(DataError) as info:
        validate(data, "src.npz")
    message = str(info.value)
    assert "\n" not in message and message.startswith("src.npz"), message
    for word in words:
        assert word in message, message
    return message


def test_public_names() -> None:
    assert set(data_pkg.__all__) == {
        "ModalitySpec",
        "Split",
        "MultimodalData",
        "SPLITS",
        "load_data",
    }
    for name in data_pkg.__all__:
        assert hasattr(data_pkg, name)


def test_valid_data_passes() -> None:
    for task in ("classification", "regression"):
        data = _data(task)
        assert validate(data, "src.npz") is data


def test_float_labels_for_classification() -> None:
    data = _data()
    data.splits["valid"].labels = data.splits["valid"].labels.float()
    _error(data, "valid/label", "int64 class ids")


def test_class_id_beyond_num_classes() -> None:
    data = _data()
    data.splits["test"].labels[0] = 3
    _error(data, "test/label", "outside 0..2")


def test_integer_labels_for_regression() -> None:
    data = _data("regression")
    data.splits["train"].labels = torch.zeros(12, dtype=torch.int64)
    _error(data, "train/label", "must be floats")


def test_missing_modality_and_split() -> None:
    data = _data()
    del data.splits["test"].features["b"]
    _error(data, "test split", "missing ['b']")
    data = _data()
    del data.splits["valid"]
    _error(data, "valid", "missing")


def test_lengths_problems() -> None:
    data = _data()
    data.splits["train"].lengths["b"] = torch.ones(12, dtype=torch.int64)
    _error(data, "train/b_lengths", "vector modality")
    data = _data()
    data.splits["valid"].lengths["a"] = torch.full((4,), 6, dtype=torch.int64)
    _error(data, "valid/a_lengths", "1..5")
    data = _data()
    data.splits["valid"].lengths["a"] = torch.full((4,), 2, dtype=torch.int32)
    _error(data, "valid/a_lengths", "int64")


def test_repeated_modality_names() -> None:
    data = _data()
    data.modalities = [ModalitySpec("a", 4, 5), ModalitySpec("a", 6)]
    _error(data, "repeat")


def test_single_class_needs_two_classes() -> None:
    data = _data()
    data.num_classes = 1
    _error(data, "at least 2 classes")


def test_conversions() -> None:
    with pytest.raises(DataError, match=r"f.pkl: train/x: not a rectangular"):
        features_to_tensor([[1.0, 2.0], [3.0]], "f.pkl: train/x")
    with pytest.raises(DataError, match=r"dtype <U1 are not numbers"):
        features_to_tensor(np.array(["a", "b"]), "f.pkl: train/x")
    x = features_to_tensor(np.array([[-np.inf, 1.0, np.nan]]), "w", neg_inf_to_zero=True)
    assert x.dtype == torch.float32 and x[0, 0] == 0 and torch.isnan(x[0, 2])
    assert labels_to_tensor(np.array([[1.0], [2.0]]), "classification", "w").tolist() == [1, 2]
    with pytest.raises(DataError, match=r"w: labels have shape \(2, 2\)"):
        labels_to_tensor(np.zeros((2, 2)), "regression", "w")
    with pytest.raises(DataError, match=r"w: labels hold NaN"):
        labels_to_tensor(np.array([1.0, np.nan]), "classification", "w")


def test_unknown_source_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"source = 'csv' is not one of"):
        load_data(DataConfig(source="csv", path="x.csv"))


def test_synthetic_dispatch_is_lazy_and_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = types.ModuleType("supernet.data.synthetic")
    seen: list[DataConfig] = []

    def make_synthetic(config: DataConfig) -> MultimodalData:
        seen.append(config)
        return _data()

    fake.make_synthetic = make_synthetic  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "supernet.data.synthetic", fake)
    config = DataConfig(source="synthetic")
    assert load_data(config).num_classes == 3
    assert seen == [config]

    def broken(config: DataConfig) -> MultimodalData:
        data = _data()
        data.splits["test"].features["b"][0, 0] = float("nan")
        return data

    fake.make_synthetic = broken  # type: ignore[attr-defined]
    with pytest.raises(DataError, match=r"synthetic data.*test/b.*NaN or Inf"):
        load_data(config)


def test_real_synthetic_source_passes_the_checks(tmp_path: Path) -> None:
    pytest.importorskip("supernet.data.synthetic")
    config = DataConfig(source="synthetic", samples=[40, 10, 10])
    data = load_data(config, base_dir=tmp_path)
    assert [len(data.splits[s]) for s in SPLITS] == [40, 10, 10]


def test_modality_names_follow_the_naming_rules_for_every_loader() -> None:
    data = _data()
    data.modalities = [ModalitySpec("a->b", 4, 5), ModalitySpec("b", 6)]
    _error(data, "modality name 'a->b'", "without the path arrow '->'")


def test_class_count_infers_without_gaps_or_checks_the_declared_number() -> None:
    from supernet.data.checks import class_count

    labels = {"train": torch.tensor([0, 1, 2, 2]), "test": torch.tensor([1, 3])}
    assert class_count(labels, 0, "f.npz") == 4
    assert class_count(labels, 10, "f.npz") == 10
    with pytest.raises(DataError, match=r"f.npz: label: class ids \(0, 1, 3; largest 3\) leave gaps \(no sample of class 2\)"):
        class_count({"train": torch.tensor([0, 1, 3])}, 0, "f.npz")
    with pytest.raises(DataError, match=r"class id 3 is outside 0..2 \(\[data\] classes = 3\)"):
        class_count(labels, 3, "f.npz")


def test_synthetic_data_larger_than_the_memory_available_is_refused_before_generating(monkeypatch: pytest.MonkeyPatch) -> None:
    import supernet.memory
    from supernet.errors import ResourceError

    monkeypatch.setattr(supernet.memory, "available_bytes", lambda: 2**20)  # a machine of 1 MiB
    with pytest.raises(ResourceError, match=r"synthetic data \(3000 samples of 56 features x 8 steps\) needs about .* 1.0 MiB available now"):
        load_data(DataConfig(source="synthetic"))


def test_a_pickle_larger_than_the_memory_available_is_refused_before_reading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import supernet.memory
    from supernet.errors import ResourceError

    path = tmp_path / "aligned_50.pkl"
    path.write_bytes(b"\x80\x04" + b"\x00" * 4096)
    monkeypatch.setattr(supernet.memory, "available_bytes", lambda: 1024)
    with pytest.raises(ResourceError, match=r"aligned_50.pkl \(4 KiB on disk\) needs about 8 KiB"):
        load_data(DataConfig(source="mmsa", path=str(path)))
