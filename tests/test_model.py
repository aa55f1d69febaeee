"""The supernet: shapes, inactive paths never run, vector tokens, padding, parameter counts."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

from supernet.config import ModelConfig
from supernet.data.dataset import ModalitySpec
from supernet.errors import ConfigError
from supernet.model import Path, Supernet, SupernetSpec
from supernet.paths import num_paths, path_pairs, touched_modalities

pytestmark = pytest.mark.usefixtures("single_thread")

MakeModel = Callable[..., Supernet]
MakeInputs = Callable[..., Any]
ModalitySets = dict[int, tuple[ModalitySpec, ...]]


def _random_masks(n_paths: int, count: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    out = []
    while len(out) < count:
        mask = [rng.randint(0, 1) for _ in range(n_paths)]
        if any(mask):
            out.append(mask)
    return out


@pytest.mark.parametrize("k", [2, 3, 4])
@pytest.mark.parametrize(
    ("task", "head", "out"),
    [
        ("classification", "linear", 3),
        ("classification", "mlp", 5),
        ("regression", "linear", 1),
        ("regression", "mlp", 1),
    ],
)
def test_output_shapes(
    k: int,
    task: str,
    head: str,
    out: int,
    make_model: MakeModel,
    make_inputs: MakeInputs,
    modality_sets: ModalitySets,
) -> None:
    model = make_model(modality_sets[k], task=task, output_dim=out, head=head).eval()
    assert model.num_paths == num_paths(k)
    features, lengths = make_inputs(model.spec.modalities, batch=3, variable=True)
    for mask in _random_masks(model.num_paths, 3, seed=k) + [[1] * model.num_paths]:
        y = model(features, mask, lengths)
        assert y.shape == (3, out)
        assert torch.isfinite(y).all()
    pooled = model.pooled_paths(features, lengths)
    assert pooled.shape == (3, model.num_paths, 16)


def test_all_zero_mask_is_refused(make_model: MakeModel, make_inputs: MakeInputs) -> None:
    model = make_model()
    features, _ = make_inputs(model.spec.modalities)
    with pytest.raises(ConfigError, match="all-zero"):
        model(features, [0] * model.num_paths)


def test_width_not_divisible_by_heads_is_a_config_error(modality_sets: ModalitySets) -> None:
    spec = SupernetSpec(modality_sets[2], "classification", 2)
    with pytest.raises(ConfigError, match="divisible by heads"):
        Supernet(spec, ModelConfig(width=18, heads=4))


def _hook_calls(model: Supernet) -> tuple[list[int], list[int]]:
    paths_called: list[int] = []
    embeddings_called: list[int] = []
    for p, path in enumerate(model.paths):
        path.register_forward_hook(lambda _m, _i, _o, p=p: paths_called.append(p))
    for m, emb in enumerate(model.embeddings):
        emb.register_forward_hook(lambda _m, _i, _o, m=m: embeddings_called.append(m))
    return paths_called, embeddings_called


@pytest.mark.parametrize("k", [2, 3, 4])
def test_inactive_paths_and_unused_embeddings_never_run(
    k: int, make_model: MakeModel, make_inputs: MakeInputs, modality_sets: ModalitySets
) -> None:
    model = make_model(modality_sets[k])
    paths_called, embeddings_called = _hook_calls(model)
    features, lengths = make_inputs(model.spec.modalities, variable=True)
    masks = _random_masks(model.num_paths, 6, seed=10 + k)
    masks.append([1] + [0] * (model.num_paths - 1))  # a single path: other modalities unused
    for mask in masks:
        paths_called.clear()
        embeddings_called.clear()
        model(features, mask, lengths)
        active = [p for p, b in enumerate(mask) if b]
        assert paths_called == active
        assert sorted(embeddings_called) == touched_modalities(mask, k)
        assert len(embeddings_called) == len(set(embeddings_called))  # each embedded once


@pytest.mark.parametrize("k", [3, 4])
def test_inactive_paths_get_no_gradient(
    k: int, make_model: MakeModel, make_inputs: MakeInputs, modality_sets: ModalitySets
) -> None:
    model = make_model(modality_sets[k], dropout=0.1).train()
    features, lengths = make_inputs(model.spec.modalities, variable=True)
    mask = _random_masks(model.num_paths, 1, seed=k)[0]
    mask[0], mask[-1] = 1, 0
    model(features, mask, lengths).sum().backward()
    touched = touched_modalities(mask, k)
    for p, bit in enumerate(mask):
        grads = [q.grad for q in model.paths[p].parameters()]
        if bit:
            assert all(g is not None for g in grads)
            assert any(float(g.abs().sum()) > 0 for g in grads if g is not None)
        else:
            assert all(g is None for g in grads), f"inactive path {p} got a gradient"
    for m, emb in enumerate(model.embeddings):
        grads = [q.grad for q in emb.parameters()]
        if m in touched:
            assert all(g is not None for g in grads)
        else:
            assert all(g is None for g in grads)
    assert all(q.grad is not None for q in model.head.parameters())


def test_path_direction_target_gives_queries_source_gives_keys(
    make_model: MakeModel, make_inputs: MakeInputs, modality_sets: ModalitySets
) -> None:
    # Modalities of different lengths: path i->j pools over j's steps and attends over i's steps.
    model = make_model(modality_sets[3]).eval()
    features, _ = make_inputs(model.spec.modalities, batch=2)
    h, keep = model.embed(features, [None] * 3, range(3))
    lengths = [h[m].shape[1] for m in range(3)]
    for p, (i, j) in enumerate(path_pairs(3)):
        w = model.paths[p].attention_weights(h[j], h[i], keep[i])
        assert w.shape == (2, 2, lengths[j], lengths[i])
    calls: list[tuple[int, int]] = []
    block = model.paths[0].blocks[
        0
    ]  # path text->audio: queries from audio (7 steps), keys from text (5)
    block.attn.register_forward_hook(
        lambda _m, inp, _o: calls.append((inp[0].shape[1], inp[1].shape[1]))
    )
    model(features, [1, 0, 0, 0, 0, 0])
    assert calls == [(7, 5)]


def test_vector_modality_is_cut_into_tokens(make_model: MakeModel) -> None:
    vec = ModalitySpec("view", 10, None)
    model = make_model((ModalitySpec("seq", 4, 6), vec), vector_tokens=4).eval()
    emb = model.embeddings[1]
    x = torch.randn(5, 10)
    out = emb(x)
    assert out.shape == (5, 4, 16)  # (B, T, C): 10 features -> 4 tokens of 3 (zero-padded to 12)
    # Attention into the sequence reads over the vector's 4 tokens, not a single key.
    h, keep = model.embed([torch.randn(5, 6, 4), x], [None, None], [0, 1])
    w = model.paths[path_pairs(2).index((1, 0))].attention_weights(h[0], h[1], keep[1])
    assert w.shape == (5, 2, 6, 4)
    assert float(w.max()) < 1.0  # softmax over one key would be identically 1
    # The chunks are the consecutive features: the first token depends only on features 0..2.
    x2 = x.clone()
    x2[:, 5] += 1.0
    out2 = emb(x2)
    assert torch.equal(out2[:, 0], out[:, 0])
    assert not torch.equal(out2[:, 1], out[:, 1])


def test_vector_tokens_never_exceed_features(make_model: MakeModel) -> None:
    model = make_model((ModalitySpec("a", 3, None), ModalitySpec("b", 20, None)), vector_tokens=8)
    assert model.embeddings[0](torch.randn(2, 3)).shape == (2, 3, 16)
    assert model.embeddings[1](torch.randn(2, 20)).shape == (2, 8, 16)


@pytest.mark.parametrize("pooling", ["mean", "max"])
@pytest.mark.parametrize("k", [2, 3, 4])
def test_padded_steps_do_not_change_the_output(
    k: int,
    pooling: str,
    make_model: MakeModel,
    make_inputs: MakeInputs,
    modality_sets: ModalitySets,
) -> None:
    model = make_model(modality_sets[k], pooling=pooling, dropout=0.2).eval()
    features, lengths = make_inputs(model.spec.modalities, batch=4, variable=True, seed=3)
    full = [1] * model.num_paths
    reference = model(features, full, lengths)
    pooled_ref = model.pooled_paths(features, lengths)
    changed = [f.clone() for f in features]
    n_padded = 0
    for m, n in enumerate(lengths):
        if n is None:
            continue
        for b in range(changed[m].shape[0]):
            pad = changed[m][b, int(n[b]) :]
            n_padded += pad.shape[0]
            changed[m][b, int(n[b]) :] = 100.0 * torch.randn_like(pad)
    assert n_padded > 0
    torch.testing.assert_close(model(changed, full, lengths), reference, rtol=1e-5, atol=1e-5)
    # every path alone, both as a source and as a target of padded sequences
    torch.testing.assert_close(
        model.pooled_paths(changed, lengths), pooled_ref, rtol=1e-5, atol=1e-5
    )
    # without lengths the padded values do matter (the test would catch ignoring lengths)
    assert not torch.allclose(model.pooled_paths(changed, None), model.pooled_paths(features, None))


def test_lengths_match_truncated_inputs_with_mean_pooling(make_model: MakeModel) -> None:
    a, b = ModalitySpec("a", 3, 6), ModalitySpec("b", 2, 5)
    model = make_model((a, b), pooling="mean").eval()
    g = torch.Generator().manual_seed(0)
    xa, xb = torch.randn(1, 6, 3, generator=g), torch.randn(1, 5, 2, generator=g)
    padded = model.pooled_paths([xa, xb], [torch.tensor([4]), torch.tensor([3])])
    # the same sample cut to its real length, no padding at all
    short = model.pooled_paths([xa[:, :4], xb[:, :3]], None)
    torch.testing.assert_close(padded, short, rtol=1e-5, atol=1e-5)


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("head", ["linear", "mlp"])
@pytest.mark.parametrize("k", [2, 3, 4])
def test_num_parameters(
    k: int, head: str, make_model: MakeModel, modality_sets: ModalitySets
) -> None:
    model = make_model(modality_sets[k], head=head, layers_per_path=2)
    assert model.num_parameters() == sum(p.numel() for p in model.parameters())
    for mask in _random_masks(model.num_paths, 5, seed=k):
        expected = _count(model.head)
        expected += sum(_count(model.embeddings[m]) for m in touched_modalities(mask, k))
        expected += sum(_count(model.paths[p]) for p, b in enumerate(mask) if b)
        assert model.num_parameters(mask) == expected
        # and it is exactly the parameters that receive a gradient
        model.zero_grad(set_to_none=True)
        features = [
            torch.randn(2, m.length, m.dim) if m.is_sequence else torch.randn(2, m.dim)
            for m in model.spec.modalities
        ]
        model(features, mask).sum().backward()
        assert sum(p.numel() for p in model.parameters() if p.grad is not None) == expected
    assert model.num_parameters([1] * model.num_paths) == model.num_parameters()


def test_path_modules_are_independent(make_model: MakeModel) -> None:
    model = make_model()
    assert all(isinstance(p, Path) for p in model.paths)
    ids = [{id(q) for q in p.parameters()} for p in model.paths]
    for a in range(len(ids)):
        for b in range(a + 1, len(ids)):
            assert not ids[a] & ids[b]


def test_layers_per_path(make_model: MakeModel) -> None:
    model = make_model(layers_per_path=3)
    assert all(len(p.blocks) == 3 for p in model.paths)
