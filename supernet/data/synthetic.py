"""Synthetic k-modal data with planted cross-modal structure, so the right answer is known.

Every planted path ``i->j`` is a *pointer lookup* that one attention hop along ``i->j`` solves:

* each step ``p`` of the **source** i carries a key code ``K[c_p]`` (a random permutation of a
  code book, so every step has its own code) and a value ``v_p`` in {-1, +1}, half of the steps each (so the source alone says
  nothing about the signal);
* each step ``t`` of the **target** j carries a pointer code ``K[c_{a_t}]`` naming a random
  source step ``a_t``;
* the path's signal is ``s = mean_t v_{a_t}``: every target step must find the source step whose
  key matches its pointer and read its value.

Along ``i->j`` the target's steps are the queries and the source's steps the keys, so one
attention hop retrieves ``v_{a_t}`` at every target step and mean pooling sums them. The reverse
path ``j->i`` sees the same two modalities but can only *partly* recover ``s``: a source step can
find out that some target step points at it, not how many do. Paths between other pairs see no
signal at all: values and pointers are independent noise on their own.

The label combines the planted paths' signals ``S = Σ s``: class ``1[S > 0]`` (ties broken by a
coin) for classification, ``3·tanh(2·S)`` for regression. Every feature also gets Gaussian noise
of standard deviation ``noise``, and dimensions no role uses are pure noise.

``MultimodalData.informative_paths`` returns the planted paths; the *planted mask* keeps exactly
them.
"""

from __future__ import annotations

import torch

from supernet.config import DataConfig
from supernet.data.dataset import SPLITS, ModalitySpec, MultimodalData, Split
from supernet.errors import ConfigError
from supernet.memory import require_memory, split_bytes
from supernet.paths import ARROW

CODE_DIM = 8  # size of a key / pointer code; codes are orthogonal, so length <= CODE_DIM


def _planted(config: DataConfig) -> list[tuple[int, int]]:
    names = config.modalities
    pairs = []
    for path in config.planted_paths:
        source, _, target = path.partition(ARROW)
        if source not in names or target not in names or source == target:
            raise ConfigError(
                f"[data] planted path {path!r} must be 'source->target' with two different "
                f"modalities of {names}"
            )
        pairs.append((names.index(source), names.index(target)))
    return pairs


def required_dims(config: DataConfig) -> list[int]:
    """Features each modality needs for its planted roles (source: code + value; target: code)."""
    need = [0] * len(config.modalities)
    for i, j in _planted(config):
        need[i] += CODE_DIM + 1
        need[j] += CODE_DIM
    return need


def make_synthetic(config: DataConfig) -> MultimodalData:
    names, dims, L = config.modalities, config.dims, config.length
    if len(names) < 2:
        raise ConfigError(f"[data] synthetic data needs at least 2 modalities, got {names}")
    if len(dims) != len(names):
        raise ConfigError(f"[data] dims has {len(dims)} entries but there are {len(names)} modalities")
    if len(config.samples) != 3 or min(config.samples) < 1:
        raise ConfigError("[data] samples must be three positive counts: [train, valid, test]")
    planted = _planted(config)
    for m, (have, need) in enumerate(zip(dims, required_dims(config))):
        if have < need:
            raise ConfigError(
                f"[data] dims[{m}] = {have} is too small for modality {names[m]!r}: its planted "
                f"roles need at least {need} features"
            )
    modalities = [ModalitySpec(name, d, L) for name, d in zip(names, dims)]
    require_memory(  # the features, and the noise drawn for the largest modality at a time
        split_bytes(modalities, sum(config.samples)) + split_bytes(modalities[:1], max(config.samples)) * max(dims) // dims[0],
        what=f"synthetic data ({sum(config.samples)} samples of {sum(dims)} features x {L} steps)",
        fix="lower [data] samples, dims or length",
    )
    g = torch.Generator().manual_seed(config.seed)
    # orthogonal codes of norm 2: a pointer matches exactly one key
    codebooks = [
        torch.linalg.qr(torch.randn(CODE_DIM, CODE_DIM, generator=g))[0][:L] * 2.0 for _ in planted
    ]
    splits = {
        name: _make_split(n, config, planted, codebooks, g)
        for name, n in zip(SPLITS, config.samples)
    }
    return MultimodalData(
        modalities=modalities,
        task=config.task,
        splits=splits,
        num_classes=2 if config.task == "classification" else None,
        informative_paths=list(config.planted_paths),
        description=f"synthetic, k={len(names)}, planted {', '.join(config.planted_paths) or 'nothing'}",
    )


def _make_split(n, config: DataConfig, planted, codebooks, g: torch.Generator) -> Split:
    L, dims = config.length, config.dims
    features = [torch.zeros(n, L, d) for d in dims]
    offset = [0] * len(dims)
    signal = torch.zeros(n)
    for (i, j), codes in zip(planted, codebooks):
        perm = torch.argsort(torch.rand(n, L, generator=g), dim=1)  # (n, L) source step -> code
        # balanced values (half +1, half -1) so no modality alone says anything about s
        balanced = (torch.arange(L) < L // 2).float() * 2 - 1  # (L,)
        values = balanced[torch.argsort(torch.rand(n, L, generator=g), dim=1)]  # (n, L)
        pointers = torch.randint(0, L, (n, L), generator=g)  # (n, L) target step -> source step
        o = offset[i]
        features[i][:, :, o : o + CODE_DIM] = codes[perm]
        features[i][:, :, o + CODE_DIM] = values
        offset[i] += CODE_DIM + 1
        o = offset[j]
        features[j][:, :, o : o + CODE_DIM] = codes[torch.gather(perm, 1, pointers)]
        offset[j] += CODE_DIM
        signal += torch.gather(values, 1, pointers).mean(dim=1)
    for m, d in enumerate(dims):
        free = d - offset[m]
        if free:
            features[m][:, :, offset[m] :] = torch.randn(n, L, free, generator=g)
        features[m] += config.noise * torch.randn(n, L, d, generator=g)
    if config.task == "classification":
        coin = torch.rand(n, generator=g) < 0.5
        labels = torch.where(signal == 0, coin, signal > 0).long()
    else:
        labels = 3 * torch.tanh(2 * signal)
    return Split(features={name: f for name, f in zip(config.modalities, features)}, labels=labels)
