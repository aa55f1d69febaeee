"""The MMSA (CMU-MOSEI / MOSI) loader, on small pickles written in exactly MMSA's format."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from supernet.config import DataConfig
from supernet.data import load_data
from supernet.data.mmsa import load_mmsa
from supernet.errors import DataError

SIZES = {"train": 7, "valid": 3, "test": 4}


def _split(
    n: int, rng: np.random.Generator, *, aligned: bool, audio_dim: int = 74, vision_dim: int = 35
) -> dict[str, object]:
    text_len, audio_len, vision_len = (6, 6, 6) if aligned else (6, 12, 10)
    audio = rng.normal(size=(n, audio_len, audio_dim)).astype(np.float32)
    audio[0, 0, :3] = -np.inf  # COVAREP writes -inf for silent frames
    audio[n - 1, -1, audio_dim - 1] = -np.inf
    split: dict[str, object] = {
        "raw_text": np.array([f"utterance {i}" for i in range(n)], dtype=object),
        "audio": audio,
        "vision": rng.normal(size=(n, vision_len, vision_dim)).astype(np.float32),
        "id": np.array([f"vid{i}$_${i % 3}" for i in range(n)], dtype=object),
        "text": rng.normal(size=(n, text_len, 768)).astype(np.float32),
        "text_bert": rng.integers(0, 30000, size=(n, 3, text_len)).astype(np.float64),
        "annotations": np.array(["Positive"] * n, dtype=object),
        "classification_labels": rng.integers(0, 2, size=n).astype(np.float64),
        "regression_labels": rng.uniform(-3, 3, size=n).astype(np.float32),
    }
    if not aligned:
        audio_lengths = [int(v) for v in rng.integers(1, audio_len + 1, size=n)]
        audio_lengths[1] = 0  # MOSEI has a few empty audio streams
        vision_lengths = [int(v) for v in rng.integers(1, vision_len + 1, size=n)]
        vision_lengths[2] = vision_len + 5  # longer than the padded length: clipped
        split["audio_lengths"] = audio_lengths
        split["vision_lengths"] = vision_lengths
    return split


def _write(
    path: Path, *, aligned: bool = True, seed: int = 0, **kwargs: int
) -> dict[str, dict[str, object]]:
    rng = np.random.default_rng(seed)
    data = {name: _split(n, rng, aligned=aligned, **kwargs) for name, n in SIZES.items()}
    path.write_bytes(pickle.dumps(data, protocol=4))
    return data


def _error(call: object, path: Path, *words: str) -> str:
    with pytest.raises(DataError) as info:
        call()  # type: ignore[operator]
    message = str(info.value)
    assert "\n" not in message and str(path) in message, message
    for word in words:
        assert word in message, message
    return message


def test_aligned_pickle(tmp_path: Path) -> None:
    path = tmp_path / "aligned_50.pkl"
    raw = _write(path)
    data = load_data(DataConfig(source="mmsa", path=str(path)))
    assert data.task == "regression" and data.output_dim == 1 and data.num_classes is None
    assert data.modality_names == ["text", "audio", "vision"]
    assert [(m.dim, m.length) for m in data.modalities] == [(768, 6), (74, 6), (35, 6)]
    for name, n in SIZES.items():
        split = data.splits[name]
        assert len(split) == n
        assert split.lengths == {}
        assert split.labels.dtype == torch.float32
        np.testing.assert_allclose(split.labels.numpy(), raw[name]["regression_labels"])
        for m in data.modality_names:
            assert split.features[m].dtype == torch.float32
            assert torch.isfinite(split.features[m]).all()
        audio = np.asarray(raw[name]["audio"])
        expected = np.where(np.isneginf(audio), 0.0, audio)
        np.testing.assert_array_equal(split.features["audio"].numpy(), expected)
        np.testing.assert_array_equal(split.features["text"].numpy(), raw[name]["text"])
    assert float(data.splits["train"].features["audio"][0, 0, 0]) == 0.0


def test_unaligned_pickle_has_clipped_lengths(tmp_path: Path) -> None:
    path = tmp_path / "unaligned_50.pkl"
    raw = _write(path, aligned=False)
    data = load_mmsa(path)
    assert [(m.dim, m.length) for m in data.modalities] == [(768, 6), (74, 12), (35, 10)]
    for name in SIZES:
        split = data.splits[name]
        assert set(split.lengths) == {"audio", "vision"}  # text has no *_lengths key
        for m, steps in (("audio", 12), ("vision", 10)):
            lengths = split.lengths[m]
            assert lengths.dtype == torch.int64
            expected = np.clip(np.array(raw[name][f"{m}_lengths"]), 1, steps)
            np.testing.assert_array_equal(lengths.numpy(), expected)
        assert int(split.lengths["audio"][1]) == 1
        assert int(split.lengths["vision"][2]) == 10


def test_mosi_dimensions_and_column_labels(tmp_path: Path) -> None:
    """MOSI: 5-d audio, 20-d vision; labels stored as (N, 1) also load."""
    path = tmp_path / "mosi.pkl"
    rng = np.random.default_rng(1)
    raw = {
        name: _split(n, rng, aligned=True, audio_dim=5, vision_dim=20) for name, n in SIZES.items()
    }
    for split in raw.values():
        split["regression_labels"] = np.asarray(split["regression_labels"]).reshape(-1, 1)
    path.write_bytes(pickle.dumps(raw))
    data = load_mmsa(path)
    assert [m.dim for m in data.modalities] == [768, 5, 20]
    assert data.splits["test"].labels.shape == (4,)


def test_relative_path_resolves_against_study_folder(tmp_path: Path) -> None:
    (tmp_path / "features").mkdir()
    _write(tmp_path / "features" / "aligned_50.pkl")
    data = load_data(DataConfig(source="mmsa", path="features/aligned_50.pkl"), base_dir=tmp_path)
    assert len(data.splits["train"]) == SIZES["train"]


def test_nan_after_neg_inf_cleanup_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "aligned_50.pkl"
    rng = np.random.default_rng(0)
    raw = {name: _split(n, rng, aligned=True) for name, n in SIZES.items()}
    raw["valid"]["vision"][1, 2, 3] = np.nan  # type: ignore[index]
    path.write_bytes(pickle.dumps(raw))
    _error(
        lambda: load_data(DataConfig(source="mmsa", path=str(path))),
        path,
        "valid/vision",
        "NaN or Inf",
    )


def test_positive_inf_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "aligned_50.pkl"
    rng = np.random.default_rng(0)
    raw = {name: _split(n, rng, aligned=True) for name, n in SIZES.items()}
    raw["train"]["audio"][0, 1, 1] = np.inf  # type: ignore[index]
    path.write_bytes(pickle.dumps(raw))
    _error(
        lambda: load_data(DataConfig(source="mmsa", path=str(path))),
        path,
        "train/audio",
        "NaN or Inf",
    )


def test_missing_split(tmp_path: Path) -> None:
    path = tmp_path / "aligned_50.pkl"
    rng = np.random.default_rng(0)
    path.write_bytes(
        pickle.dumps({"train": _split(4, rng, aligned=True), "test": _split(3, rng, aligned=True)})
    )
    _error(lambda: load_mmsa(path), path, "valid", "missing")


def test_missing_key(tmp_path: Path) -> None:
    path = tmp_path / "aligned_50.pkl"
    rng = np.random.default_rng(0)
    raw = {name: _split(n, rng, aligned=True) for name, n in SIZES.items()}
    del raw["test"]["vision"]
    path.write_bytes(pickle.dumps(raw))
    _error(lambda: load_mmsa(path), path, "test lacks key(s) vision")


def test_mismatched_counts(tmp_path: Path) -> None:
    path = tmp_path / "aligned_50.pkl"
    rng = np.random.default_rng(0)
    raw = {name: _split(n, rng, aligned=True) for name, n in SIZES.items()}
    raw["train"]["regression_labels"] = np.zeros(SIZES["train"] + 2, np.float32)
    path.write_bytes(pickle.dumps(raw))
    _error(
        lambda: load_data(DataConfig(source="mmsa", path=str(path))), path, "samples but 9 labels"
    )


def test_feature_dims_differ_between_splits(tmp_path: Path) -> None:
    path = tmp_path / "aligned_50.pkl"
    rng = np.random.default_rng(0)
    raw = {name: _split(n, rng, aligned=True) for name, n in SIZES.items()}
    raw["test"]["audio"] = np.zeros((SIZES["test"], 6, 70), np.float32)
    path.write_bytes(pickle.dumps(raw))
    _error(
        lambda: load_data(DataConfig(source="mmsa", path=str(path))),
        path,
        "test/audio",
        "70 features",
        "74",
    )


def test_string_labels(tmp_path: Path) -> None:
    path = tmp_path / "aligned_50.pkl"
    rng = np.random.default_rng(0)
    raw = {name: _split(n, rng, aligned=True) for name, n in SIZES.items()}
    raw["valid"]["regression_labels"] = np.array(["pos", "neg", "pos"])
    path.write_bytes(pickle.dumps(raw))
    _error(lambda: load_mmsa(path), path, "valid/regression_labels", "not numbers")


def test_not_a_dict(tmp_path: Path) -> None:
    path = tmp_path / "meld.pkl"
    path.write_bytes(pickle.dumps(({}, {}, {})))
    _error(lambda: load_mmsa(path), path, "expected the MMSA dict")


def test_crafted_pickle_is_refused_without_side_effect(tmp_path: Path) -> None:
    marker = tmp_path / "marker"

    class Payload:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return os.system, (f"echo pwned > {marker}",)

    path = tmp_path / "aligned_50.pkl"
    rng = np.random.default_rng(0)
    raw = {name: _split(n, rng, aligned=True) for name, n in SIZES.items()}
    raw["train"]["id"] = [Payload()]
    path.write_bytes(pickle.dumps(raw))
    _error(
        lambda: load_data(DataConfig(source="mmsa", path=str(path))),
        path,
        "refuses to load global",
        "system",
    )
    assert not marker.exists()


def test_empty_path_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"\[data\] path is empty.*mmsa"):
        load_data(DataConfig(source="mmsa"))
    path = tmp_path / "aligned_50.pkl"
    _error(lambda: load_data(DataConfig(source="mmsa", path=str(path))), path, "no such file")
