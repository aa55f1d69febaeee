"""Any data set as one ``.npz``, loaded with ``allow_pickle=False``.

Keys: ``modalities`` (array of names); ``{split}/{modality}`` float arrays ``(N, L, d)`` (sequence)
or ``(N, d)`` (vector); optional ``{split}/{modality}_lengths``; ``{split}/label`` (integers: class
ids, floats: regression targets). Splits ``train`` and ``test`` are required; ``valid`` is carved
from train with ``valid_fraction`` when absent.

Every array's header is read first (:func:`read_layout`: shapes and dtypes, no data): a header
that declares more data than its member holds is a corrupt file, and arrays that would not fit in
the memory available are refused before a byte of them is read. ``load_study`` reads the same
headers to learn the task (integer labels: classification) and the shapes, without loading.
"""

from __future__ import annotations

import math
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from supernet.config import modality_names_problem
from supernet.data.checks import (
    check_counts,
    class_count,
    features_to_tensor,
    labels_to_tensor,
    one_line,
    require_file,
)
from supernet.data.dataset import SPLITS, ModalitySpec, MultimodalData, Split
from supernet.errors import DataError
from supernet.memory import FLOAT_BYTES, gib, require_memory


@dataclass
class NpzLayout:
    """What the headers of an ``.npz`` declare: ``arrays[key] = (shape, dtype)``, read without
    reading any data."""

    path: Path
    arrays: dict[str, tuple[tuple[int, ...], np.dtype]]

    @property
    def task(self) -> str | None:
        """classification (integer train labels), regression (float), or None (no or odd labels)."""
        label = self.arrays.get("train/label")
        if label is None:
            return None
        return {"b": "classification", "i": "classification", "u": "classification", "f": "regression"}.get(label[1].kind)

    def modalities(self) -> list[ModalitySpec]:
        """The train split's modalities as their shapes declare them (names from the keys)."""
        specs = []
        for key, (shape, _) in self.arrays.items():
            split, _, name = key.partition("/")
            if split == "train" and name != "label" and not name.endswith("_lengths") and len(shape) in (2, 3):
                specs.append(ModalitySpec(name, dim=shape[-1], length=shape[1] if len(shape) == 3 else None))
        return specs

    def samples(self, split: str) -> int:
        shape = self.arrays.get(f"{split}/label", ((0,), np.dtype(np.int64)))[0]
        return shape[0] if shape else 0

    def loaded_bytes(self) -> int:
        """Memory the loaded data set takes at its peak: every array as loaded (features as
        float32, the rest as stored) plus the largest array in its stored dtype (read, then
        converted)."""
        total, largest = 0, 0
        for key, (shape, dtype) in self.arrays.items():
            n = math.prod(shape)
            stored = n * dtype.itemsize
            is_features = "/" in key and not key.endswith("/label") and not key.endswith("_lengths")
            total += n * FLOAT_BYTES if is_features and dtype.kind in "biuf" else stored
            largest = max(largest, stored)
        return total + largest


def read_layout(path: str | Path) -> NpzLayout:
    """Shapes and dtypes of every array of an ``.npz`` from the headers of its members; a
    header that declares more bytes than its member holds is a :class:`DataError` (corrupt)."""
    path = Path(path)
    arrays: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                key = info.filename[: -len(".npy")]
                with archive.open(info) as member:
                    version = np.lib.format.read_magic(member)
                    if version == (1, 0):
                        shape, fortran, dtype = np.lib.format.read_array_header_1_0(member)
                    elif version in ((2, 0), (3, 0)):
                        shape, fortran, dtype = np.lib.format.read_array_header_2_0(member)
                    else:
                        raise ValueError(f"unknown .npy format version {version}")
                    offset = member.tell()
                declared = math.prod(shape) * dtype.itemsize
                if not dtype.hasobject and declared > info.file_size - offset:
                    raise DataError(
                        f"{path}: key {key} declares shape {shape} of {dtype} ({gib(declared)}) but holds "
                        f"{gib(max(0, info.file_size - offset))}; the file is corrupt, save the arrays again with np.savez"
                    )
                arrays[key] = (tuple(int(n) for n in shape), dtype)
    except DataError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, KeyError) as exc:
        raise DataError(
            f"{path}: not a readable .npz ({one_line(exc)}); save the arrays with np.savez"
        ) from None
    return NpzLayout(path, arrays)


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


def load_npz(
    path: str | Path, *, valid_fraction: float = 0.15, seed: int = 0, classes: int = 0
) -> MultimodalData:
    """Load one ``.npz`` in the generic layout above.

    ``classes`` (classification): the number of classes; 0 infers it from the labels, which must
    then hold every id 0..C-1 (a gap is refused, not turned into classes no sample has).
    """
    path = require_file(Path(path), "the .npz data file")
    if zipfile.is_zipfile(path):  # headers first: nothing is read that would not fit
        layout = read_layout(path)
        require_memory(
            layout.loaded_bytes(),
            what=f"{path} ({len(layout.arrays)} arrays)",
            fix="use a smaller data set or a machine with more memory",
        )
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
        return _build(npz, path, valid_fraction, seed, classes)


def _build(npz: Any, path: Path, valid_fraction: float, seed: int, classes: int) -> MultimodalData:
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
    try:
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in names_raw.tolist()]
    except UnicodeDecodeError:
        raise DataError(f"{path}: key modalities holds bytes that are not UTF-8; store the names as str") from None
    problem = modality_names_problem(names)
    if problem:
        raise DataError(f"{path}: key modalities: {problem}")
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
        num_classes = class_count({name: s.labels for name, s in splits.items()}, classes, str(path))
    elif classes:
        raise DataError(
            f"{path}: [data] classes = {classes} but the labels are floats (regression); store integer class "
            "ids for classification, or leave classes out"
        )
    sizes = "/".join(str(len(s)) for s in splits.values())
    return MultimodalData(
        modalities=modalities,
        task=task,
        splits=splits,
        num_classes=num_classes,
        description=f"{path.name}: {len(names)} modalities, {task}, {sizes} samples",
    )
