"""Shapes of the common public releases, for pricing a study before its data is on disk.

FLOPs depend on shapes only, so ``mro-search flops --study mosei`` can answer from these when the
user has not downloaded the features yet (and says so).
"""

from __future__ import annotations

from supernet.data.dataset import ModalitySpec

STANDARD_SHAPES: dict[str, tuple[str, list[ModalitySpec], str, int]] = {
    # source: (release, modalities, task, output_dim)
    "mmsa": (
        "CMU-MOSEI aligned_50 (BERT 768-d, COVAREP 74-d, Facet 35-d, 50 steps)",
        [ModalitySpec("text", 768, 50), ModalitySpec("audio", 74, 50), ModalitySpec("vision", 35, 50)],
        "regression",
        1,
    ),
    "meld": (
        "MELD features (text 600-d, audio 300-d, visual 342-d per utterance)",
        [ModalitySpec("text", 600), ModalitySpec("audio", 300), ModalitySpec("visual", 342)],
        "classification",
        7,
    ),
}
