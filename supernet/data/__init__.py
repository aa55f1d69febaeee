"""Data sets: the in-memory form and :func:`load_data`, which reads any source of ``[data]``."""

from __future__ import annotations

from pathlib import Path

from supernet.config import DATA_SOURCES, DataConfig
from supernet.data.checks import require_file, validate
from supernet.data.dataset import SPLITS, ModalitySpec, MultimodalData, Split
from supernet.errors import ConfigError, DataError
from supernet.files import expand_home
from supernet.memory import gib, require_memory

__all__ = ["SPLITS", "ModalitySpec", "MultimodalData", "Split", "load_data"]

_WHAT = {
    "mmsa": "the MMSA feature pickle (aligned_50.pkl or unaligned_50.pkl)",
    "meld": "the MELD feature pickle",
    "npz": "the .npz data file",
}


def _resolve(path: str, base_dir: str | Path | None) -> Path:
    resolved = expand_home(path, what="data file")
    if not resolved.is_absolute() and base_dir is not None:
        resolved = Path(base_dir) / resolved
    return resolved


def load_data(config: DataConfig, *, base_dir: str | Path | None = None) -> MultimodalData:
    """Load the data set that ``config`` names and validate it.

    A relative ``config.path`` is taken relative to ``base_dir`` (the study file's folder).
    Raises :class:`DataError` (one line: file, key, problem, fix) for anything wrong with the data.
    """
    source = config.source
    if source == "synthetic":
        from supernet.data.synthetic import make_synthetic

        return validate(make_synthetic(config), 'synthetic data ([data] source = "synthetic")')
    if source not in DATA_SOURCES:
        raise ConfigError(f"[data] source = {source!r} is not one of {', '.join(DATA_SOURCES)}")
    if source == "mfeat":
        from supernet.data.mfeat import SHIPPED, load_mfeat

        path = _resolve(config.path, base_dir) if config.path else None
        data = load_mfeat(
            path,
            valid_fraction=config.valid_fraction,
            test_fraction=config.test_fraction,
            seed=config.seed,
        )
        return validate(data, str(path or SHIPPED))
    if not config.path:
        raise DataError(f"[data] path is empty; source {source!r} needs path = {_WHAT[source]}")
    path = require_file(_resolve(config.path, base_dir), _WHAT[source])
    if source in ("mmsa", "meld"):
        # a pickle's arrays take about the file's size once loaded, and their float32 copies
        # up to as much again (the npz loader checks its headers instead)
        require_memory(
            2 * path.stat().st_size,
            what=f"{path} ({gib(path.stat().st_size)} on disk)",
            fix="use a smaller data set or a machine with more memory",
        )
    if source == "mmsa":
        from supernet.data.mmsa import load_mmsa

        data = load_mmsa(path)
    elif source == "meld":
        from supernet.data.meld import load_meld

        data = load_meld(path, valid_fraction=config.valid_fraction, seed=config.seed)
    else:
        from supernet.data.npz import load_npz

        data = load_npz(path, valid_fraction=config.valid_fraction, seed=config.seed, classes=config.classes)
    return validate(data, str(path))
