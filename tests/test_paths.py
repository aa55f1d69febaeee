"""Path order, direction and mask spelling (supernet.paths)."""

from __future__ import annotations

import pytest
import torch

from supernet.errors import ConfigError
from supernet.paths import (
    active_paths,
    all_masks,
    format_mask,
    iter_masks,
    mask_from_paths,
    num_masks,
    num_paths,
    parse_mask,
    path_names,
    path_pairs,
    touched_modalities,
)

TAV = ["T", "A", "V"]


def test_tav_order_is_the_papers() -> None:
    assert path_names(TAV) == ["T->A", "T->V", "A->T", "A->V", "V->T", "V->A"]
    # (source, target): information flows from the first index into the second
    assert path_pairs(3) == [(0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1)]


@pytest.mark.parametrize("k", [2, 3, 4, 5, 6])
def test_k_modalities_give_k_k_minus_1_paths(k: int) -> None:
    pairs = path_pairs(k)
    assert len(pairs) == num_paths(k) == k * (k - 1)
    assert len(set(pairs)) == len(pairs)
    assert all(i != j for i, j in pairs)
    assert pairs == sorted(pairs)  # row-major over (source, target)
    assert num_masks(k) == 2 ** (k * (k - 1)) - 1
    names = path_names([f"m{i}" for i in range(k)])
    assert names[0] == "m0->m1" and names[-1] == f"m{k - 1}->m{k - 2}"


def test_fewer_than_two_modalities_is_an_error() -> None:
    with pytest.raises(ConfigError, match="at least 2"):
        path_pairs(1)


def test_parse_mask_accepts_strings_sequences_and_tensors() -> None:
    assert parse_mask("011011", 6) == (0, 1, 1, 0, 1, 1)
    assert parse_mask(" 0,1,1,0,1,1 ", 6) == (0, 1, 1, 0, 1, 1)
    assert parse_mask([1, 0], 2) == (1, 0)
    assert parse_mask(torch.tensor([0.0, 1.0]), 2) == (0, 1)
    assert format_mask(parse_mask("100001", 6)) == "100001"


@pytest.mark.parametrize(
    ("bits", "needle"),
    [
        ("01101", "5 bits"),  # too short
        ("0110111", "7 bits"),  # too long
        ([1, 0, 1], "3 bits"),
        ("000000", "all-zero"),
        ([0, 0, 0, 0, 0, 0], "all-zero"),
        ("01a011", "only 0 and 1"),
        ("012011", "only 0 and 1"),
        ([0, 2, 1, 0, 1, 1], "only 0 and 1"),
    ],
)
def test_parse_mask_errors_name_the_problem(bits: str | list[int], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle) as info:
        parse_mask(bits, 6)
    assert "\n" not in str(info.value)


def test_length_error_says_how_many_paths() -> None:
    with pytest.raises(ConfigError, match="6 paths"):
        parse_mask("01", 6)


@pytest.mark.parametrize("n_paths", [2, 6, 12])
def test_all_masks_enumerates_every_non_empty_mask(n_paths: int) -> None:
    masks = all_masks(n_paths)
    assert masks.shape == (2**n_paths - 1, n_paths)
    assert bool(((masks == 0) | (masks == 1)).all())
    assert bool((masks.sum(dim=1) > 0).all())
    assert len({tuple(r) for r in masks.int().tolist()}) == 2**n_paths - 1
    if n_paths <= 6:
        assert [tuple(int(b) for b in r) for r in masks.tolist()] == list(iter_masks(n_paths))


def test_all_masks_refuses_huge_enumerations() -> None:
    with pytest.raises(ConfigError):
        all_masks(30)


def test_touched_modalities() -> None:
    # T->A only touches T and A
    assert touched_modalities((1, 0, 0, 0, 0, 0), 3) == [0, 1]
    # V->A: source 2, target 1
    assert touched_modalities((0, 0, 0, 0, 0, 1), 3) == [1, 2]
    assert touched_modalities((0, 1, 0, 0, 1, 0), 3) == [0, 2]  # T->V, V->T
    assert touched_modalities((1,) * 6, 3) == [0, 1, 2]
    # k = 4: path m3->m2 is the last one
    assert touched_modalities((0,) * 11 + (1,), 4) == [2, 3]


def test_active_paths_and_mask_from_paths_round_trip() -> None:
    mask = parse_mask("011011", 6)
    names = active_paths(mask, TAV)
    assert names == ["T->V", "A->T", "V->T", "V->A"]
    assert mask_from_paths(names, TAV) == mask
    with pytest.raises(ConfigError, match="unknown path"):
        mask_from_paths(["T->T"], TAV)
