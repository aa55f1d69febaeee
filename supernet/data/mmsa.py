"""CMU-MOSEI / CMU-MOSI from the MMSA feature pickle (``aligned_50.pkl``, ``unaligned_50.pkl``).

The pickle is a dict of splits ``train``/``valid``/``test``; each split a dict with ``text`` (BERT
features, N×L×768), ``text_bert`` (token ids, ignored), ``audio`` (N×L×74; MOSI 5), ``vision``
(N×L×35; MOSI 20), ``audio_lengths``/``vision_lengths`` (unaligned only), ``regression_labels``
in [-3, 3], ``classification_labels``, ``id`` and ``raw_text``. ``-inf`` (silent audio frames) is
set to 0 on load.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from supernet.data.checks import features_to_tensor, labels_to_tensor
from supernet.data.dataset import SPLITS, ModalitySpec, MultimodalData, Split
from supernet.data.safe_pickle import load_pickle
from supernet.errors import DataError

MODALITIES = ("text", "audio", "vision")
LABEL_KEY = "regression_labels"


def _split(raw: object, path: Path, split_name: str) -> Split:
    if not isinstance(raw, dict):
        raise DataError(
            f"{path}: {split_name} is a {type(raw).__name__}, expected a dict of arrays "
            "(text, audio, vision, regression_labels, ...); is this an MMSA feature pickle?"
        )
    missing = [k for k in (*MODALITIES, LABEL_KEY) if k not in raw]
    if missing:
        raise DataError(
            f"{path}: {split_name} lacks key(s) {', '.join(missing)} (has {', '.join(map(str, raw))}); "
            "use the MMSA aligned_50.pkl or unaligned_50.pkl"
        )
    features: dict[str, torch.Tensor] = {}
    lengths: dict[str, torch.Tensor] = {}
    for name in MODALITIES:
        where = f"{path}: {split_name}/{name}"
        x = features_to_tensor(raw[name], where, neg_inf_to_zero=True)
        if x.ndim != 3:
            raise DataError(
                f"{where}: shape {tuple(x.shape)}, expected (N, L, d) sequences; use the MMSA feature pickle"
            )
        features[name] = x
        key = f"{name}_lengths"
        if key in raw and raw[key] is not None:
            lw = f"{path}: {split_name}/{key}"
            values = np.asarray(raw[key])
            if values.ndim == 2 and values.shape[1] == 1:
                values = values[:, 0]
            if values.dtype.kind not in "biuf" or values.ndim != 1:
                raise DataError(
                    f"{lw}: expected one integer length per sample, got {values.dtype} {values.shape}"
                )
            steps = int(x.shape[1])
            lengths[name] = torch.from_numpy(np.clip(values.astype(np.int64), 1, max(steps, 1)))
    labels = labels_to_tensor(raw[LABEL_KEY], "regression", f"{path}: {split_name}/{LABEL_KEY}")
    return Split(features=features, labels=labels, lengths=lengths)


def load_mmsa(path: str | Path) -> MultimodalData:
    """Load an MMSA pickle as a regression data set with sequence modalities text, audio, vision."""
    path = Path(path)
    raw = load_pickle(path)
    if not isinstance(raw, dict):
        raise DataError(
            f"{path}: holds a {type(raw).__name__}, expected the MMSA dict of splits train/valid/test; "
            'for MELD set [data] source = "meld"'
        )
    missing = [s for s in SPLITS if s not in raw]
    if missing:
        raise DataError(
            f"{path}: split(s) {', '.join(missing)} missing (keys: {', '.join(map(str, raw))}); "
            "use the MMSA aligned_50.pkl or unaligned_50.pkl, which hold train, valid and test"
        )
    splits = {s: _split(raw[s], path, s) for s in SPLITS}
    train = splits["train"].features
    modalities = [
        ModalitySpec(n, dim=int(train[n].shape[2]), length=int(train[n].shape[1]))
        for n in MODALITIES
    ]
    sizes = "/".join(str(len(splits[s])) for s in SPLITS)
    return MultimodalData(
        modalities=modalities,
        task="regression",
        splits=splits,
        description=f"MMSA pickle {path.name} (CMU-MOSEI/MOSI), {sizes} samples",
    )
