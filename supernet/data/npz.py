"""Any data set as one ``.npz``, loaded with ``allow_pickle=False``.

Keys: ``modalities`` (array of names); ``{split}/{modality}`` float arrays ``(N, L, d)`` (sequence)
or ``(N, d)`` (vector); optional ``{split}/{modality}_lengths``; ``{split}/label`` (integers: class
ids, floats: regression targets). Splits ``train`` and ``test`` are required; ``valid`` is carved
from train with ``valid_fraction`` when absent.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from supernet.data.checks import (
    check_counts,
    features_to_tensor,
    labels_to_tensor,
    one_line,
    require_file,
)
from supernet.data.dataset import SPLITS, ModalitySpec, MultimodalData, Split
from supernet.errors import DataError


def _get(npz: Any, key: str, path: Path) -> np.ndarray:
    try:
        return npz[key]
    except ValueError as exc:
        if "allow_pickle" in str(exc) or "Object arrays" in str(exc):
            raise DataError(
                f"{path}: key {key} holds Python objects; save plain numeric arrays (allow_pickle is off for safety)"
            ) from None
        raise DataError(
            f"{path}: key {key} is unreadable ({one_line(exc)}); save it again with np.savez"
        ) from None
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise DataError(
            f"{path}: key {key} is unreadable (truncated or corrupt: {one_line(exc)}); save the file again"
        ) from None


def carve_valid(train: Split, fraction: float, seed: int, path: Path) -> tuple[Split, Split]:
    """Split ``train`` into (train, valid) at random, ``fraction`` of the samples to valid."""
    if fraction <= 0:
        raise DataError(
            f"{path}: no valid split (keys valid/...) and [data] valid_fraction is {fraction}; "
            "store valid/* arrays or set valid_fraction above 0 (e.g. 0.15)"
        )
    n = len(train)
    n_valid = max(1, round(n * fraction))
    if n_valid >= n:
        raise DataError(
            f"{path}: valid_fraction {fraction} of {n} train samples leaves none to train on; "
            "lower [data] valid_fraction or store valid/* arrays"
        )
    order = torch.from_numpy(np.random.default_rng(seed).permutation(n))
    return train.subset(order[n_valid:].sort().values), train.subset(order[:n_valid].sort().values)


def load_npz(path: str | Path, *, valid_fraction: float = 0.15, seed: int = 0) -> MultimodalData:
    """Load one ``.npz`` in the generic layout above."""
    path = require_file(Path(path), "the .npz data file")
    try:
        npz = np.load(path, allow_pickle=False)
    except ValueError as exc:
        if "pickled" in str(exc):
            raise DataError(
                f"{path}: holds a pickle, not an .npz; save the arrays with np.savez (allow_pickle is off for safety)"
            ) from None
        raise DataError(
            f"{path}: not a readable .npz ({one_line(exc)}); save the arrays with np.savez"
        ) from None
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise DataError(
            f"{path}: not a readable .npz (truncated or corrupt: {one_line(exc)}); save the arrays again with np.savez"
        ) from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise DataError(
            f"{path}: holds a single array, not an .npz archive; save the named arrays with np.savez"
        )
    with npz:
        return _build(npz, path, valid_fraction, seed)


def _build(npz: Any, path: Path, valid_fraction: float, seed: int) -> MultimodalData:
    keys = set(npz.files)
    if "modalities" not in keys:
        raise DataError(
            f"{path}: key modalities missing; store modalities=np.array(['text', 'audio', ...])"
        )
    names_raw = _get(npz, "modalities", path)
    if names_raw.dtype.kind not in "US" or names_raw.ndim != 1 or len(names_raw) == 0:
        raise DataError(
            f"{path}: key modalities must be a 1-d array of names, got {names_raw.dtype} of shape "
            f"{names_raw.shape}; store modalities=np.array(['text', 'audio', ...])"
        )
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in names_raw.tolist()]
    if len(set(names)) != len(names):
        raise DataError(
            f"{path}: key modalities repeats a name ({names}); give each modality its own name"
        )
    present = [s for s in SPLITS if any(k.startswith(f"{s}/") for k in keys)]
    for split in ("train", "test"):
        if split not in present:
            raise DataError(
                f"{path}: split {split} missing (no {split}/... keys); store {split}/<modality> and {split}/label"
            )
    splits: dict[str, Split] = {}
    task: str | None = None
    for split in present:
        needed = [f"{split}/{m}" for m in names] + [f"{split}/label"]
        missing = [k for k in needed if k not in keys]
        if missing:
            raise DataError(
                f"{path}: key(s) {', '.join(missing)} missing; every split needs each modality and its labels"
            )
        label = _get(npz, f"{split}/label", path)
        if label.dtype.kind in "biu":
            kind = "classification"
        elif label.dtype.kind == "f":
            kind = "regression"
        else:
            raise DataError(
                f"{path}: {split}/label has dtype {label.dtype}; store integer class ids (classification) "
                "or floats (regression)"
            )
        if task is not None and kind != task:
            raise DataError(
                f"{path}: {split}/label is {label.dtype} ({kind}) but train/label is {task}; "
                "store every split's labels with the same type"
            )
        task = kind
        features = {
            m: features_to_tensor(_get(npz, f"{split}/{m}", path), f"{path}: {split}/{m}")
            for m in names
        }
        lengths: dict[str, torch.Tensor] = {}
        for m in names:
            key = f"{split}/{m}_lengths"
            if key in keys:
                values = _get(npz, key, path)
                if values.dtype.kind not in "iu" or values.ndim != 1:
                    raise DataError(
                        f"{path}: {key} must be a 1-d integer array (one length per sample), got {values.dtype} {values.shape}"
                    )
                lengths[m] = torch.from_numpy(values.astype(np.int64))
        splits[split] = Split(
            features=features,
            labels=labels_to_tensor(label, kind, f"{path}: {split}/label"),
            lengths=lengths,
        )
        check_counts(splits[split], str(path), split)
    assert task is not None
    if "valid" not in splits:
        splits["train"], splits["valid"] = carve_valid(splits["train"], valid_fraction, seed, path)
    splits = {s: splits[s] for s in SPLITS}
    train = splits["train"]
    modalities = []
    for m in names:
        x = train.features[m]
        if x.ndim not in (2, 3):
            raise DataError(
                f"{path}: train/{m} has shape {tuple(x.shape)}; store (N, L, d) sequences or (N, d) vectors"
            )
        modalities.append(
            ModalitySpec(m, dim=int(x.shape[-1]), length=int(x.shape[1]) if x.ndim == 3 else None)
        )
    # A modality with lengths in some splits gets full lengths in the others.
    for spec in modalities:
        if any(spec.name in s.lengths for s in splits.values()):
            for s in splits.values():
                if spec.name not in s.lengths and spec.length is not None:
                    s.lengths[spec.name] = torch.full((len(s),), spec.length, dtype=torch.int64)
    num_classes = None
    if task == "classification":
        num_classes = max(int(s.labels.max()) for s in splits.values() if len(s)) + 1
    sizes = "/".join(str(len(s)) for s in splits.values())
    return MultimodalData(
        modalities=modalities,
        task=task,
        splits=splits,
        num_classes=num_classes,
        description=f"{path.name}: {len(names)} modalities, {task}, {sizes} samples",
    )
