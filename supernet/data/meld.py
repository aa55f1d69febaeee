"""MELD from the dialogue-level feature pickle of DialogueRNN/MMGCN-style code.

The pickle is a tuple ``(videoIDs, videoSpeakers, videoLabels, videoText, videoAudio,
[videoVisual,] videoSentence, trainVid, testVid, videoLabelsSentiment)``: 9 items without the
visual features, 10 with. Each dict is keyed by dialogue id and holds one entry per utterance.
Utterances become samples (the dialogue context is dropped); the target is the emotion (7 classes);
the validation split is carved from the train dialogues, by dialogue.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from supernet.data.checks import features_to_tensor, labels_to_tensor, one_line
from supernet.data.dataset import ModalitySpec, MultimodalData, Split
from supernet.data.safe_pickle import load_pickle
from supernet.errors import DataError

EMOTIONS = ("neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger")
LAYOUT = (
    "videoIDs, videoSpeakers, videoLabels, videoText, videoAudio, [videoVisual,] videoSentence, "
    "trainVid, testVid, videoLabelsSentiment"
)


def _first_entry(table: dict[Any, Any]) -> Any:
    """The first utterance entry of the first non-empty dialogue, or None."""
    for value in table.values():
        if isinstance(value, (str, bytes)):
            return value
        try:
            if len(value):
                return value[0]
        except TypeError:
            return value
    return None


def _holds_text(table: Any) -> bool:
    return isinstance(table, dict) and isinstance(_first_entry(table), (str, bytes))


def _as_ids(value: Any, path: Path, name: str) -> list[Any]:
    if isinstance(value, (str, bytes, dict)) or not isinstance(value, Iterable):
        raise DataError(
            f"{path}: {name} is a {type(value).__name__}, expected a collection of dialogue ids; "
            f"is this a MELD feature pickle ({LAYOUT})?"
        )
    ids = [v.item() if isinstance(v, np.generic) else v for v in value]
    try:
        return sorted(set(ids))
    except TypeError:
        return sorted(set(ids), key=repr)


def _dialogue_array(
    table: dict[Any, Any], dialogue: Any, n_utt: int, path: Path, name: str
) -> np.ndarray:
    where = f"{path}: {name}[{dialogue!r}]"
    if dialogue not in table:
        raise DataError(
            f"{where}: dialogue missing (it is in trainVid/testVid and videoLabels); the pickle is incomplete"
        )
    try:
        array = np.asarray(table[dialogue])
    except ValueError as exc:
        raise DataError(
            f"{where}: utterance vectors of different sizes ({one_line(exc)}); every utterance needs the same dimension"
        ) from None
    if array.ndim == 1 and n_utt == 1 and array.dtype.kind in "biuf":
        array = array[None, :]
    if array.dtype.kind not in "biuf" or array.ndim != 2:
        raise DataError(
            f"{where}: expected one numeric vector per utterance, got {array.dtype} of shape {array.shape}; "
            "store a list (or array) of equal-length vectors"
        )
    if array.shape[0] != n_utt:
        raise DataError(
            f"{where}: {array.shape[0]} utterances but videoLabels[{dialogue!r}] has {n_utt}; "
            "features and labels must list the same utterances"
        )
    return array


def _gather(
    dialogues: Sequence[Any],
    labels: dict[Any, Any],
    tables: dict[str, tuple[str, dict[Any, Any]]],
    path: Path,
    split: str,
) -> Split:
    per_modality: dict[str, list[np.ndarray]] = {m: [] for m in tables}
    ys: list[np.ndarray] = []
    for dialogue in dialogues:
        if dialogue not in labels:
            raise DataError(
                f"{path}: videoLabels has no dialogue {dialogue!r} listed in the {split} ids; the pickle is incomplete"
            )
        y = np.asarray(labels[dialogue]).reshape(-1)
        if len(y) == 0:  # a dialogue without utterances adds no samples
            continue
        ys.append(y)
        for modality, (key, table) in tables.items():
            per_modality[modality].append(_dialogue_array(table, dialogue, len(y), path, key))
    features: dict[str, torch.Tensor] = {}
    for modality, (key, _) in tables.items():
        arrays = per_modality[modality]
        dims = {a.shape[1] for a in arrays}
        if len(dims) > 1:
            raise DataError(
                f"{path}: {key} holds utterance vectors of sizes {sorted(dims)}; every utterance needs the same dimension"
            )
        stacked = np.concatenate(arrays) if arrays else np.zeros((0, 1), np.float32)
        features[modality] = features_to_tensor(stacked, f"{path}: {split}/{modality} ({key})")
    flat = np.concatenate(ys) if ys else np.zeros(0, np.int64)
    return Split(
        features=features,
        labels=labels_to_tensor(flat, "classification", f"{path}: {split}/label (videoLabels)"),
    )


def carve_dialogues(
    train: list[Any], fraction: float, seed: int, path: Path
) -> tuple[list[Any], list[Any]]:
    """Split the train dialogue ids into (train, valid), ``fraction`` of the dialogues to valid."""
    if fraction <= 0:
        raise DataError(
            f"{path}: MELD has no validation split and [data] valid_fraction is {fraction}; "
            "set valid_fraction above 0 (e.g. 0.1) to carve one from the train dialogues"
        )
    n_valid = max(1, round(len(train) * fraction))
    if n_valid >= len(train):
        raise DataError(
            f"{path}: valid_fraction {fraction} of {len(train)} train dialogues leaves none to train on; "
            "lower [data] valid_fraction"
        )
    order = np.random.default_rng(seed).permutation(len(train))
    valid_index = set(order[:n_valid].tolist())
    return (
        [d for i, d in enumerate(train) if i not in valid_index],
        [d for i, d in enumerate(train) if i in valid_index],
    )


def load_meld(path: str | Path, *, valid_fraction: float = 0.15, seed: int = 0) -> MultimodalData:
    """Load the MELD feature pickle: utterance-level emotion classification (7 classes)."""
    path = Path(path)
    raw = load_pickle(path)
    if not isinstance(raw, (tuple, list)):
        raise DataError(
            f"{path}: holds a {type(raw).__name__}, expected the MELD feature tuple ({LAYOUT}); "
            'for an MMSA pickle set [data] source = "mmsa"'
        )
    if len(raw) not in (9, 10):
        raise DataError(
            f"{path}: the tuple has {len(raw)} items, expected 9 (without visual) or 10 (with videoVisual): "
            f"({LAYOUT}); re-export the features in that layout"
        )
    labels, text, audio = raw[2], raw[3], raw[4]
    middle = list(raw[5:-3])  # [videoSentence] or [videoVisual, videoSentence]
    train_ids, test_ids = raw[-3], raw[-2]
    visual = None
    if len(middle) == 2:
        texts = [_holds_text(m) for m in middle]
        if texts.count(True) != 1:
            raise DataError(
                f"{path}: items 6 and 7 of the 10-item tuple should be videoVisual (vectors) and "
                f"videoSentence (strings), found neither or both holding text; layout: ({LAYOUT})"
            )
        visual = middle[texts.index(False)]
    for name, table in (
        ("videoLabels", labels),
        ("videoText", text),
        ("videoAudio", audio),
        ("videoVisual", visual),
    ):
        if table is not None and not isinstance(table, dict):
            raise DataError(
                f"{path}: {name} is a {type(table).__name__}, expected a dict keyed by dialogue id; "
                f"layout: ({LAYOUT})"
            )
    tables: dict[str, tuple[str, dict[Any, Any]]] = {
        "text": ("videoText", text),
        "audio": ("videoAudio", audio),
    }
    if visual is not None:
        tables["visual"] = ("videoVisual", visual)
    train = _as_ids(train_ids, path, "trainVid")
    test = _as_ids(test_ids, path, "testVid")
    both = set(train) & set(test)
    if both:
        raise DataError(
            f"{path}: {len(both)} dialogue(s) are in both trainVid and testVid (e.g. {sorted(both, key=repr)[0]!r}); "
            "the splits must not overlap"
        )
    train, valid = carve_dialogues(train, valid_fraction, seed, path)
    splits = {
        name: _gather(ids, labels, tables, path, name)
        for name, ids in (("train", train), ("valid", valid), ("test", test))
    }
    modalities = [ModalitySpec(m, dim=int(splits["train"].features[m].shape[1])) for m in tables]
    sizes = "/".join(str(len(s)) for s in splits.values())
    return MultimodalData(
        modalities=modalities,
        task="classification",
        splits=splits,
        num_classes=len(EMOTIONS),
        description=f"MELD feature pickle {path.name}: utterance emotions, {sizes} utterances",
    )
