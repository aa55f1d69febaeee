"""Paths and masks: the one place that defines their order, direction and spelling.

A *path* ``i->j`` is one cross-modal attention block in which information flows **from** source
modality ``i`` **into** target modality ``j``: ``j`` gives the queries, ``i`` the keys and values
(MulT's convention: its ``trans_l_with_a`` is the path ``audio->text``).

For ``k`` modalities ``m0 … m(k-1)`` there are ``k(k-1)`` paths, ordered row-major over
``(i, j)`` with ``i != j``. For ``[text, audio, vision]`` that is the paper's order::

    text->audio, text->vision, audio->text, audio->vision, vision->text, vision->audio

A *mask* has one bit per path in that order and is written as a string such as ``"011011"``.
The all-zero mask selects no path and is not an architecture.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence

import torch

from supernet.errors import ConfigError

ARROW = "->"


def path_pairs(k: int) -> list[tuple[int, int]]:
    """The ``(source, target)`` index pairs of all paths, in mask order."""
    if k < 2:
        raise ConfigError(f"a supernet needs at least 2 modalities, got {k}")
    return [(i, j) for i in range(k) for j in range(k) if i != j]


def path_names(modalities: Sequence[str]) -> list[str]:
    """Names of all paths in mask order, e.g. ``["text->audio", ...]``."""
    return [f"{modalities[i]}{ARROW}{modalities[j]}" for i, j in path_pairs(len(modalities))]


def num_paths(k: int) -> int:
    return k * (k - 1)


def num_masks(k: int) -> int:
    """Number of architectures: every non-empty subset of paths."""
    return 2 ** num_paths(k) - 1


def parse_mask(bits: str | Sequence[int] | torch.Tensor, n_paths: int) -> tuple[int, ...]:
    """Turn ``"011011"`` (or a 0/1 sequence) into a tuple of ints, checking length and content."""
    if isinstance(bits, torch.Tensor):
        bits = [int(b) for b in bits.tolist()]
    if isinstance(bits, str):
        text = bits.strip().replace(",", "").replace(" ", "").strip("[]")
        if any(c not in "01" for c in text):
            raise ConfigError(f"mask {bits!r} must contain only 0 and 1 (one bit per path), e.g. {'1' * n_paths!r}")
        values = tuple(int(c) for c in text)
    else:
        values = tuple(int(b) for b in bits)
        if any(b not in (0, 1) for b in values):
            raise ConfigError(f"mask {list(bits)!r} must contain only 0 and 1")
    if len(values) != n_paths:
        raise ConfigError(
            f"mask {format_mask(values)!r} has {len(values)} bits but this study has {n_paths} paths; "
            f"give one bit per path, e.g. {'1' * n_paths!r}"
        )
    if not any(values):
        raise ConfigError("the all-zero mask selects no path; set at least one bit to 1")
    return values


def format_mask(mask: Sequence[int] | torch.Tensor) -> str:
    if isinstance(mask, torch.Tensor):
        mask = mask.tolist()
    return "".join(str(int(b)) for b in mask)


def active_paths(mask: Sequence[int], modalities: Sequence[str]) -> list[str]:
    """Names of the paths a mask keeps."""
    return [name for name, bit in zip(path_names(modalities), mask) if bit]


def mask_from_paths(paths: Sequence[str], modalities: Sequence[str]) -> tuple[int, ...]:
    """The mask that keeps exactly the named paths."""
    names = path_names(modalities)
    unknown = [p for p in paths if p not in names]
    if unknown:
        raise ConfigError(f"unknown path(s) {unknown}; paths of this study are {names}")
    return tuple(int(name in paths) for name in names)


def all_masks(n_paths: int) -> torch.Tensor:
    """Every non-empty mask as a ``(2**n_paths - 1, n_paths)`` 0/1 tensor, in counting order."""
    if n_paths > 20:
        raise ConfigError(f"{n_paths} paths give 2**{n_paths} masks: too many to enumerate")
    codes = torch.arange(1, 2**n_paths)
    shifts = torch.arange(n_paths - 1, -1, -1)
    return ((codes[:, None] >> shifts) & 1).to(torch.float32)


def iter_masks(n_paths: int) -> Iterator[tuple[int, ...]]:
    """Every non-empty mask, lazily."""
    for bits in itertools.product((0, 1), repeat=n_paths):
        if any(bits):
            yield bits


def touched_modalities(mask: Sequence[int], k: int) -> list[int]:
    """Indices of the modalities that some active path reads or writes."""
    used: set[int] = set()
    for (i, j), bit in zip(path_pairs(k), mask):
        if bit:
            used.update((i, j))
    return sorted(used)
