"""FLOPs: the additive table against fvcore on the masked model, a hand count, the MOSEI anchor."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from supernet.config import ModelConfig
from supernet.data.dataset import ModalitySpec
from supernet.flops import _analysis, count_flops, flop_table, sdpa_flop_jit
from supernet.model import Supernet, SupernetSpec
from supernet.paths import path_pairs, touched_modalities

pytestmark = pytest.mark.usefixtures("single_thread")

MakeModel = Callable[..., Supernet]
ModalitySets = dict[int, tuple[ModalitySpec, ...]]

LN = 5  # fvcore's aten::layer_norm: 5 flops per element with an affine transform


def _random_masks(n_paths: int, count: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    out: list[list[int]] = [[1] * n_paths, [0] * (n_paths - 1) + [1]]
    while len(out) < count:
        mask = torch.randint(0, 2, (n_paths,), generator=g).tolist()
        if any(mask):
            out.append(mask)
    return out


@pytest.mark.parametrize(("k", "head"), [(3, "linear"), (4, "mlp")])
def test_table_equals_fvcore_on_the_masked_model(
    k: int, head: str, make_model: MakeModel, modality_sets: ModalitySets
) -> None:
    model = make_model(
        modality_sets[k], head=head, layers_per_path=1
    )  # k=3, 4 hold a vector modality
    assert any(not m.is_sequence for m in model.spec.modalities)
    table = flop_table(model)
    assert all(c > 0 for c in table.path) and all(c > 0 for c in table.modality)
    assert table.shared > 0
    masks = _random_masks(model.num_paths, 10, seed=k)
    for mask in masks:
        assert table.flops(mask) == count_flops(model, mask), mask
    assert model.training  # counting left the mode alone


def _seq_path_flops(lq: int, lk: int, c: int, heads: int, mult: int, layers: int) -> int:
    per_block = (
        LN * lq * c  # ln_query
        + LN * lk * c  # ln_source
        + lq * c * c  # query
        + lk * c * 2 * c  # key_value
        + heads * lq * lk * (c // heads + c // heads)  # SDPA: Q·Kᵀ and softmax·V
        + lq * c * c  # attention output projection
        + LN * lq * c  # ln_mlp
        + lq * c * mult * c  # fc
        + lq * mult * c * c  # proj
    )
    return layers * per_block + LN * lq * c  # + ln_out


@pytest.mark.parametrize("head", ["linear", "mlp"])
def test_hand_count(head: str) -> None:
    a, b, v = ModalitySpec("a", 3, 5), ModalitySpec("b", 4, 7), ModalitySpec("v", 10, None)
    c, heads, mult, layers, out = 16, 2, 2, 2, 3
    cfg = ModelConfig(
        width=c, heads=heads, ffn_mult=mult, layers_per_path=layers, head=head, vector_tokens=4
    )
    model = Supernet(SupernetSpec((a, b, v), "classification", out), cfg)
    tokens = [5, 7, 4]  # v: 10 features -> 4 tokens of 3
    chunk = [3, 4, 3]
    table = flop_table(model)
    expected_paths = tuple(
        _seq_path_flops(tokens[j], tokens[i], c, heads, mult, layers) for i, j in path_pairs(3)
    )
    assert table.path == expected_paths
    assert table.modality == tuple(t * d * c for t, d in zip(tokens, chunk))
    shared = c * out if head == "linear" else LN * c + c * c + c * out
    assert table.shared == shared
    assert count_flops(model, [1] * 6) == shared + sum(expected_paths) + sum(table.modality)
    # a single path a->b: embeddings of a and b, the path, the head
    single = [1, 0, 0, 0, 0, 0]
    assert (
        count_flops(model, single)
        == shared + expected_paths[0] + tokens[0] * 3 * c + tokens[1] * 4 * c
    )


def test_sdpa_handle_is_used() -> None:
    a, b = ModalitySpec("a", 3, 5), ModalitySpec("b", 4, 7)
    model = Supernet(
        SupernetSpec((a, b), "regression", 1), ModelConfig(width=16, heads=4, ffn_mult=1)
    )
    ops = _analysis(model, [1, 0]).by_operator()
    # path a->b: 4 heads, Lq = 7 (b), Lk = 5 (a), E = Ev = 4
    assert ops["scaled_dot_product_attention"] == 4 * 7 * 5 * (4 + 4)
    # the handle itself, on made-up shapes
    assert sdpa_flop_jit_shapes((2, 3, 7, 5), (2, 3, 9, 5), (2, 3, 9, 6)) == 2 * 3 * 7 * 9 * (5 + 6)


def sdpa_flop_jit_shapes(q: tuple[int, ...], k: tuple[int, ...], v: tuple[int, ...]) -> int:
    """Call the fvcore handle on a traced SDPA node with the given shapes."""
    captured: list[int] = []

    def handle(inputs: list, outputs: list) -> int:
        captured.append(sdpa_flop_jit(inputs, outputs))
        return captured[-1]

    from fvcore.nn import FlopCountAnalysis

    class M(torch.nn.Module):
        def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.scaled_dot_product_attention(q, k, v)

    analysis = FlopCountAnalysis(M(), (torch.zeros(q), torch.zeros(k), torch.zeros(v)))
    analysis.set_op_handle("aten::scaled_dot_product_attention", handle)
    analysis.unsupported_ops_warnings(False)
    total = int(analysis.total())
    assert captured == [total]
    return total


def test_mosei_full_model_matches_the_paper() -> None:
    spec = SupernetSpec(
        (
            ModalitySpec("text", 768, 50),
            ModalitySpec("audio", 74, 50),
            ModalitySpec("vision", 35, 50),
        ),
        "regression",
        1,
    )
    model = Supernet(spec, ModelConfig(width=256, heads=8, head="linear"))
    table = flop_table(model)
    full = table.mflops([1] * 6)
    assert abs(full - 254.94) / 254.94 < 0.01, full
    assert table.shared == 256  # the regression head
    assert table.modality == (50 * 768 * 256, 50 * 74 * 256, 50 * 35 * 256)


@pytest.mark.parametrize("k", [3, 4])
def test_mflops_many_equals_mflops(
    k: int, make_model: MakeModel, modality_sets: ModalitySets
) -> None:
    model = make_model(modality_sets[k])
    table = flop_table(model)
    g = torch.Generator().manual_seed(k)
    masks = torch.randint(0, 2, (300, model.num_paths), generator=g).float()
    masks[masks.sum(dim=1) == 0, 0] = 1.0
    many = table.mflops_many(masks)
    assert many.shape == (300,) and many.dtype == torch.float64
    for mask, value in zip(masks.int().tolist(), many.tolist()):
        assert value == pytest.approx(table.mflops(mask), rel=1e-12)
        # and the additive rule itself
        direct = table.shared + sum(c for c, b in zip(table.path, mask) if b)
        direct += sum(table.modality[m] for m in touched_modalities(mask, k))
        assert table.flops(mask) == direct


def test_as_dict_names_every_part(make_model: MakeModel) -> None:
    model = make_model()
    d = flop_table(model).as_dict()
    assert list(d["paths"]) == model.path_names
    assert list(d["modalities"]) == [m.name for m in model.spec.modalities]
