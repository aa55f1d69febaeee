"""Checks every loader's output must pass, and the small conversions the loaders share.

Each failure is a :class:`DataError` of one line: the source, the split/key, the problem, the fix.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from supernet.config import modality_names_problem
from supernet.data.dataset import SPLITS, MultimodalData, Split
from supernet.errors import DataError

TASKS = ("classification", "regression")
_CHUNK = 4096  # samples per NaN/Inf check, to bound the memory of the boolean mask


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (messages of DataError are one line)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def require_file(path: Path, what: str) -> Path:
    """``path`` if it is an existing file, else a DataError that says what to point at."""
    if path.is_dir():
        raise DataError(f"{path}: is a folder, expected {what}; set [data] path to the file itself")
    if not path.is_file():
        raise DataError(
            f"{path}: no such file; set [data] path to {what} "
            "(a relative path is taken relative to the study file)"
        )
    return path


def features_to_tensor(
    values: object, where: str, *, neg_inf_to_zero: bool = False
) -> torch.Tensor:
    """Numeric array → float32 tensor; strings or Python objects are an error.

    ``where`` is ``"FILE: split/key"``. With ``neg_inf_to_zero`` every ``-inf`` becomes 0 (MMSA
    audio holds ``-inf`` for silent frames); other non-finite values are left for :func:`validate`.
    """
    try:
        array = np.asarray(values)
    except (ValueError, TypeError) as exc:  # ragged lists
        raise DataError(
            f"{where}: not a rectangular numeric array ({one_line(exc)}); store one equal-shaped array"
        ) from None
    if array.dtype.kind not in "biuf":
        raise DataError(
            f"{where}: features of dtype {array.dtype} are not numbers; store float arrays"
        )
    array = array.astype(np.float32, copy=False)
    if neg_inf_to_zero:  # in place when ``values`` is already float32: pass an array you own
        if not array.flags.writeable:
            array = array.copy()
        array[np.isneginf(array)] = 0.0
    return torch.from_numpy(np.ascontiguousarray(array))


def labels_to_tensor(values: object, task: str, where: str) -> torch.Tensor:
    """Labels → int64 class ids (classification) or float32 values (regression), shape ``(N,)``.

    Accepts ``(N,)`` or ``(N, 1)``. Strings, non-integral floats for classification and negative
    class ids are errors.
    """
    try:
        array = np.asarray(values)
    except (ValueError, TypeError) as exc:
        raise DataError(
            f"{where}: labels are not a flat array ({one_line(exc)}); store one number per sample"
        ) from None
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1:
        raise DataError(
            f"{where}: labels have shape {tuple(array.shape)}, expected (N,); store one label per sample"
        )
    if array.dtype.kind not in "biuf":
        raise DataError(
            f"{where}: labels of dtype {array.dtype} are not numbers; store "
            + ("integer class ids 0..C-1" if task == "classification" else "float values")
        )
    if task == "regression":
        return torch.from_numpy(array.astype(np.float32))
    if array.dtype.kind == "f":
        if not np.isfinite(array).all():
            raise DataError(f"{where}: labels hold NaN or Inf; store integer class ids 0..C-1")
        if not np.array_equal(array, np.round(array)):
            bad = array[array != np.round(array)][0]
            raise DataError(
                f"{where}: classification labels must be integer class ids, found {bad!r}; "
                "store integers 0..C-1 (or set the task to regression)"
            )
    array = array.astype(np.int64)
    if array.size and array.min() < 0:
        raise DataError(
            f"{where}: negative class id {int(array.min())}; class ids must be 0..C-1, renumber the labels"
        )
    return torch.from_numpy(array)


def class_count(labels: dict[str, torch.Tensor], declared: int, source: str) -> int:
    """The number of classes of integer ``labels`` (one tensor per split).

    ``declared`` > 0 (``[data] classes``): every id must be below it. ``declared`` = 0: the ids
    found must be exactly 0..C-1. A gap (ids 0, 1, 2, 99) is refused rather than turned into a
    100-class model whose 96 classes no sample has (and a label of 10^12 into a head of 10^12
    outputs).
    """
    found = torch.unique(torch.cat([y.reshape(-1) for y in labels.values()]))  # sorted
    if found.numel() == 0:
        return declared
    shown = ", ".join(str(int(v)) for v in found[:5]) + (", ..." if found.numel() > 5 else "")
    if declared:
        beyond = found[found >= declared]
        if beyond.numel():
            raise DataError(
                f"{source}: label: class id {int(beyond[0])} is outside 0..{declared - 1} ([data] classes = {declared}); "
                "renumber the labels or raise [data] classes"
            )
        return declared
    top = int(found[-1])
    if top + 1 != found.numel():
        first_gap = int((found != torch.arange(found.numel())).nonzero()[0])
        raise DataError(
            f"{source}: label: class ids ({shown}; largest {top}) leave gaps (no sample of class {first_gap}); "
            "renumber the classes 0..C-1, or declare the number of classes with [data] classes = C"
        )
    return top + 1


def _where(source: str, split: str, key: str) -> str:
    return f"{source}: {split}/{key}"


def _all_finite(tensor: torch.Tensor) -> bool:
    return all(bool(torch.isfinite(chunk).all()) for chunk in tensor.split(_CHUNK))


def check_counts(split: Split, source: str, split_name: str) -> None:
    """Every modality (and its lengths) of ``split`` has one row per label."""
    n = len(split)
    for key, x in [
        *split.features.items(),
        *((f"{k}_lengths", v) for k, v in split.lengths.items()),
    ]:
        rows = int(x.shape[0]) if x.ndim else 0
        if x.ndim == 0 or rows != n:
            raise DataError(
                f"{_where(source, split_name, key)}: {rows} samples but {n} labels; every modality and the "
                "labels of a split need one row per sample, in the same order"
            )


def _check_modality(
    data: MultimodalData, source: str, name: str, split_name: str, split: Split
) -> None:
    spec = next(m for m in data.modalities if m.name == name)
    where = _where(source, split_name, name)
    x = split.features[name]
    n = len(split)
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise DataError(
            f"{where}: features must be a float tensor, got {getattr(x, 'dtype', type(x))}; store float arrays"
        )
    want_ndim = 3 if spec.is_sequence else 2
    shape_text = "(N, L, d)" if spec.is_sequence else "(N, d)"
    if x.ndim != want_ndim:
        raise DataError(
            f"{where}: features have shape {tuple(x.shape)} ({x.ndim}-d), expected {shape_text} as in the other "
            f"splits; store every split of {name!r} with the same number of axes"
        )
    if x.shape[-1] != spec.dim:
        raise DataError(
            f"{where}: {x.shape[-1]} features per step, but {name!r} has {spec.dim} in the other splits; "
            "use the same feature extractor for every split"
        )
    if spec.is_sequence and x.shape[1] != spec.length:
        raise DataError(
            f"{where}: sequences of length {x.shape[1]}, but {name!r} has length {spec.length} in the other "
            "splits; pad every split to the same length and give the real lengths in *_lengths"
        )
    if not _all_finite(x):
        bad = int((~torch.isfinite(x)).sum())
        raise DataError(
            f"{where}: {bad} NaN or Inf value(s) in the features; clean or impute them before loading"
        )
    if name in split.lengths:
        lengths = split.lengths[name]
        lwhere = _where(source, split_name, f"{name}_lengths")
        if not spec.is_sequence:
            raise DataError(
                f"{lwhere}: lengths given for a vector modality; drop them or store (N, L, d) sequences"
            )
        if lengths.dtype != torch.int64 or lengths.shape != (n,):
            raise DataError(
                f"{lwhere}: lengths must be int64 of shape ({n},), got {lengths.dtype} {tuple(lengths.shape)}; "
                "store one integer length per sample"
            )
        if n and (int(lengths.min()) < 1 or int(lengths.max()) > int(spec.length or 0)):
            raise DataError(
                f"{lwhere}: lengths must lie in 1..{spec.length}, found {int(lengths.min())}..{int(lengths.max())}; "
                "fix the lengths or the padding"
            )


def _check_labels(data: MultimodalData, source: str, split_name: str, split: Split) -> None:
    where = _where(source, split_name, "label")
    y = split.labels
    if not isinstance(y, torch.Tensor) or y.ndim != 1:
        raise DataError(
            f"{where}: labels must be a 1-d tensor, got shape {tuple(getattr(y, 'shape', ()))}; store one label per sample"
        )
    if data.task == "classification":
        if y.dtype != torch.int64:
            raise DataError(
                f"{where}: classification labels must be int64 class ids, got {y.dtype}; store integers 0..C-1"
            )
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= int(data.num_classes or 0)):
            raise DataError(
                f"{where}: class ids {int(y.min())}..{int(y.max())} outside 0..{int(data.num_classes or 0) - 1}; "
                "renumber the classes from 0"
            )
    else:
        if not y.is_floating_point():
            raise DataError(
                f"{where}: regression labels must be floats, got {y.dtype}; store float values"
            )
        if not _all_finite(y):
            raise DataError(
                f"{where}: labels hold NaN or Inf; drop those samples or fix their labels"
            )


def validate(data: MultimodalData, source: str) -> MultimodalData:
    """Check a loaded data set; returns it unchanged, or raises a one-line :class:`DataError`.

    ``source`` names where the data came from (the file), for the messages.
    """
    if data.task not in TASKS:
        raise DataError(f"{source}: task {data.task!r} is not one of {', '.join(TASKS)}")
    if not data.modalities:
        raise DataError(f"{source}: no modalities; store at least two")
    names = data.modality_names
    problem = modality_names_problem(names)
    if problem:
        raise DataError(f"{source}: {problem}")
    for spec in data.modalities:
        if spec.dim < 1 or (spec.length is not None and spec.length < 1):
            raise DataError(
                f"{source}: modality {spec.name!r} has dim {spec.dim} and length {spec.length}; both must be at least 1"
            )
    if data.task == "classification" and (data.num_classes is None or data.num_classes < 2):
        raise DataError(
            f"{source}: classification needs at least 2 classes, got {data.num_classes}"
        )
    missing = [s for s in SPLITS if s not in data.splits]
    if missing:
        raise DataError(
            f"{source}: split(s) {', '.join(missing)} missing; every data set needs {', '.join(SPLITS)}"
        )
    for split_name in SPLITS:
        split = data.splits[split_name]
        if len(split) == 0:
            raise DataError(
                f"{source}: {split_name} split is empty; add samples to it or raise the fraction that carves it"
            )
        have = set(split.features)
        if have != set(names):
            extra, lack = sorted(have - set(names)), sorted(set(names) - have)
            raise DataError(
                f"{source}: {split_name} split has modalities {sorted(have)} but the data set declares {names}"
                + (f" (missing {lack})" if lack else "")
                + (f" (unexpected {extra})" if extra else "")
                + "; store every modality in every split"
            )
        unknown = sorted(set(split.lengths) - set(names))
        if unknown:
            raise DataError(
                f"{source}: {split_name} split has lengths for unknown modalities {unknown}; drop them"
            )
        _check_labels(data, source, split_name, split)
        check_counts(split, source, split_name)
        for name in names:
            _check_modality(data, source, name, split_name, split)
    if data.task == "classification":
        classes = torch.unique(data.splits["train"].labels)
        if len(classes) < 2:
            raise DataError(
                f"{source}: train/label: the train split holds a single class ({int(classes[0])}); "
                "a classifier needs at least two classes in training, check the labels or the split"
            )
    return data
