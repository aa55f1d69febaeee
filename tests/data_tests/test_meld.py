"""The MELD loader, on small DialogueRNN/MMGCN-style feature pickles (9 and 10 items)."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from supernet.config import DataConfig
from supernet.data import load_data
from supernet.data.meld import load_meld
from supernet.errors import DataError

TRAIN = list(range(12))
TEST = [1001, 1002, 1003]


def _tables(*, visual: bool, seed: int = 0) -> dict[str, Any]:
    """The dicts of a MELD feature pickle; text[d][u][0] holds the dialogue id, to trace samples."""
    rng = np.random.default_rng(seed)
    tables: dict[str, Any] = {
        k: {}
        for k in ("ids", "speakers", "labels", "text", "audio", "visual", "sentence", "sentiment")
    }
    for d in TRAIN + TEST:
        n = int(rng.integers(1, 5))
        tables["ids"][d] = [f"dia{d}_utt{u}" for u in range(n)]
        tables["speakers"][d] = [list(np.eye(9)[rng.integers(0, 9)]) for _ in range(n)]
        tables["labels"][d] = [int(v) for v in rng.integers(0, 7, size=n)]
        text = [rng.normal(size=600).astype(np.float32) for _ in range(n)]
        for vector in text:
            vector[0] = d
        tables["text"][d] = text
        tables["audio"][d] = rng.normal(size=(n, 300)).astype(
            np.float32
        )  # some releases store arrays
        tables["visual"][d] = [rng.normal(size=342) for _ in range(n)]
        tables["sentence"][d] = [f"utterance {u} of dialogue {d}" for u in range(n)]
        tables["sentiment"][d] = [int(v) for v in rng.integers(0, 3, size=n)]
    tables["labels"][0] = list(range(7))  # every emotion shows up in training
    for key in ("ids", "speakers", "sentence", "sentiment"):
        tables[key][0] = [tables[key][0][0]] * 7
    tables["text"][0] = [np.full(600, 0.0, np.float32) for _ in range(7)]
    tables["audio"][0] = np.zeros((7, 300), np.float32)
    tables["visual"][0] = [np.zeros(342) for _ in range(7)]
    return tables


def _tuple(
    t: dict[str, Any], *, visual: bool, train: Any = None, test: Any = None
) -> tuple[Any, ...]:
    train = set(TRAIN) if train is None else train
    test = set(TEST) if test is None else test
    middle = (t["visual"], t["sentence"]) if visual else (t["sentence"],)
    return (
        t["ids"],
        t["speakers"],
        t["labels"],
        t["text"],
        t["audio"],
        *middle,
        train,
        test,
        t["sentiment"],
    )


def _write(path: Path, content: Any, protocol: int = pickle.DEFAULT_PROTOCOL) -> Path:
    path.write_bytes(pickle.dumps(content, protocol=protocol))
    return path


def _error(call: Any, path: Path, *words: str) -> str:
    with pytest.raises(DataError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message and str(path) in message, message
    for word in words:
        assert word in message, message
    return message


def _utterances(t: dict[str, Any], dialogues: list[int]) -> int:
    return sum(len(t["labels"][d]) for d in dialogues)


def _dialogues_of(split: Any) -> set[int]:
    return {int(v) for v in split.features["text"][:, 0].tolist()}


def test_ten_items_with_visual(tmp_path: Path) -> None:
    t = _tables(visual=True)
    path = _write(tmp_path / "meld_multimodal_features.pkl", _tuple(t, visual=True))
    data = load_data(DataConfig(source="meld", path=str(path), valid_fraction=0.25, seed=3))
    assert data.task == "classification" and data.num_classes == 7
    assert data.modality_names == ["text", "audio", "visual"]
    assert [(m.dim, m.length) for m in data.modalities] == [(600, None), (300, None), (342, None)]
    train, valid, test = (data.splits[s] for s in ("train", "valid", "test"))
    assert len(test) == _utterances(t, TEST)
    assert len(train) + len(valid) == _utterances(t, TRAIN)
    # the validation split is whole dialogues carved from train: 3 of 12
    assert len(_dialogues_of(valid)) == 3
    assert _dialogues_of(train).isdisjoint(_dialogues_of(valid))
    assert _dialogues_of(train) | _dialogues_of(valid) == set(TRAIN)
    assert _dialogues_of(test) == set(TEST)
    assert test.labels.dtype == torch.int64
    expected = [label for d in TEST for label in t["labels"][d]]
    assert test.labels.tolist() == expected
    for split in data.splits.values():
        for m in data.modality_names:
            assert split.features[m].dtype == torch.float32 and split.features[m].ndim == 2
        assert split.lengths == {}


def test_nine_items_without_visual(tmp_path: Path) -> None:
    t = _tables(visual=False)
    path = _write(tmp_path / "MELD_features_raw.pkl", _tuple(t, visual=False))
    data = load_meld(path)
    assert data.modality_names == ["text", "audio"]
    assert sum(len(s) for s in data.splits.values()) == _utterances(t, TRAIN + TEST)


def test_empty_dialogue_adds_no_samples(tmp_path: Path) -> None:
    t = _tables(visual=False)
    for key in ("ids", "speakers", "labels", "text", "audio", "sentence", "sentiment"):
        t[key][2000] = []
    path = _write(tmp_path / "meld.pkl", _tuple(t, visual=False, test=set(TEST) | {2000}))
    assert len(load_meld(path).splits["test"]) == _utterances(t, TEST)


def test_validation_carve_follows_the_seed(tmp_path: Path) -> None:
    path = _write(tmp_path / "meld.pkl", _tuple(_tables(visual=False), visual=False))
    carve = [
        _dialogues_of(load_meld(path, valid_fraction=0.3, seed=s).splits["valid"])
        for s in (0, 0, 1, 2)
    ]
    assert carve[0] == carve[1]
    assert len({frozenset(c) for c in carve}) > 1


def test_python2_style_protocol_and_list_ids(tmp_path: Path) -> None:
    """Protocol 2 with __builtin__ names (as Python 2 wrote them); ids as a set, array or list."""
    t = _tables(visual=True)
    content = _tuple(t, visual=True, train=set(TRAIN), test=np.array(TEST))
    path = _write(tmp_path / "meld.pkl", content, protocol=2)
    assert b"__builtin__\nset" in path.read_bytes()
    data = load_meld(path)
    assert len(data.splits["test"]) == _utterances(t, TEST)
    listed = _write(
        tmp_path / "listed.pkl", _tuple(t, visual=True, train=list(reversed(TRAIN)), test=TEST)
    )
    same = load_meld(listed)
    for name, split in data.splits.items():
        assert torch.equal(split.labels, same.splits[name].labels)


def test_visual_and_sentence_in_either_order(tmp_path: Path) -> None:
    t = _tables(visual=True)
    items = list(_tuple(t, visual=True))
    items[5], items[6] = items[6], items[5]
    data = load_meld(_write(tmp_path / "meld.pkl", tuple(items)))
    assert [m.dim for m in data.modalities] == [600, 300, 342]


@pytest.mark.parametrize("length", [8, 11])
def test_tuple_of_another_length(tmp_path: Path, length: int) -> None:
    items = list(_tuple(_tables(visual=True), visual=True))
    items = items[:length] if length < 10 else items + [{}]
    path = _write(tmp_path / "meld.pkl", tuple(items))
    _error(lambda: load_meld(path), path, f"{length} items", "expected 9", "10")


def test_not_a_tuple(tmp_path: Path) -> None:
    path = _write(tmp_path / "meld.pkl", {"train": {}})
    _error(lambda: load_meld(path), path, "expected the MELD feature tuple")


def test_utterance_counts_disagree(tmp_path: Path) -> None:
    t = _tables(visual=True)
    t["audio"][1001] = t["audio"][1001][:-1]
    path = _write(tmp_path / "meld.pkl", _tuple(t, visual=True))
    _error(lambda: load_meld(path), path, "videoAudio[1001]", "utterances but videoLabels[1001]")


def test_dialogue_missing_from_features(tmp_path: Path) -> None:
    t = _tables(visual=False)
    del t["text"][5]
    path = _write(tmp_path / "meld.pkl", _tuple(t, visual=False))
    _error(lambda: load_meld(path), path, "videoText[5]", "missing")


def test_label_out_of_range(tmp_path: Path) -> None:
    t = _tables(visual=False)
    t["labels"][1002] = [7] * len(t["labels"][1002])
    path = _write(tmp_path / "meld.pkl", _tuple(t, visual=False))
    _error(
        lambda: load_data(DataConfig(source="meld", path=str(path))),
        path,
        "test/label",
        "outside 0..6",
    )


def test_non_integral_label(tmp_path: Path) -> None:
    t = _tables(visual=False)
    t["labels"][1002] = [2.5] * len(t["labels"][1002])
    path = _write(tmp_path / "meld.pkl", _tuple(t, visual=False))
    _error(lambda: load_meld(path), path, "test/label", "integer class ids", "2.5")


def test_single_class_in_train(tmp_path: Path) -> None:
    t = _tables(visual=False)
    for d in TRAIN:
        t["labels"][d] = [3] * len(t["labels"][d])
    path = _write(tmp_path / "meld.pkl", _tuple(t, visual=False))
    _error(
        lambda: load_data(DataConfig(source="meld", path=str(path))),
        path,
        "train/label",
        "single class",
    )


def test_overlapping_split_ids(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "meld.pkl", _tuple(_tables(visual=False), visual=False, test={1001, 4})
    )
    _error(lambda: load_meld(path), path, "both trainVid and testVid")


def test_zero_valid_fraction(tmp_path: Path) -> None:
    path = _write(tmp_path / "meld.pkl", _tuple(_tables(visual=False), visual=False))
    _error(lambda: load_meld(path, valid_fraction=0.0), path, "valid_fraction", "above 0")


def test_nan_in_features(tmp_path: Path) -> None:
    t = _tables(visual=True)
    t["visual"][3][0][7] = np.nan
    path = _write(tmp_path / "meld.pkl", _tuple(t, visual=True))
    message = _error(
        lambda: load_data(DataConfig(source="meld", path=str(path), seed=0)), path, "NaN or Inf"
    )
    assert "/visual" in message
