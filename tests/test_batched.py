"""``supernet.batched.batched_pooled_paths``: all paths as one batched operation give the same
pooled outputs and the same gradients as ``Supernet.pooled_paths`` running them one by one."""

from __future__ import annotations

import pytest
import torch

from supernet.batched import batched_pooled_paths

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.mark.parametrize("k", [2, 3, 4])
@pytest.mark.parametrize(
    "settings",
    [{}, {"pooling": "max"}, {"layers_per_path": 2}, {"layers_per_path": 2, "pooling": "max", "ffn_mult": 1}],
)
@pytest.mark.parametrize("variable", [False, True])
def test_same_outputs_as_path_by_path(make_model, make_inputs, modality_sets, k, settings, variable):
    """Modalities of different lengths (padded to the longest), padding inside a modality, a
    vector modality cut into tokens, deeper paths, max pooling."""
    model = make_model(modality_sets[k], **settings).eval()
    features, lengths = make_inputs(modality_sets[k], 5, variable=variable)
    with torch.no_grad():
        expected = model.pooled_paths(features, lengths)
        got = batched_pooled_paths(model, features, lengths)
    assert got.shape == expected.shape == (5, model.num_paths, 16)
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-4)


def test_same_gradients_as_path_by_path(make_model, make_inputs, modality_sets):
    model = make_model(modality_sets[3], layers_per_path=2)
    features, lengths = make_inputs(modality_sets[3], 4, variable=True)
    masks = torch.tensor([[1.0, 0, 1, 0, 0, 1], [0, 1, 1, 0, 1, 0], [1, 1, 1, 1, 1, 1], [0, 0, 0, 1, 0, 0]])
    grads = []
    for pooled_fn in (model.pooled_paths, lambda f, n: batched_pooled_paths(model, f, n)):
        model.zero_grad()
        pooled = pooled_fn(features, lengths)
        out = model.forward_per_sample(pooled, masks)
        out.square().sum().backward()
        grads.append({name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-5, rtol=1e-4, msg=name)
    # every path is used by some sample here, so every path has a gradient
    assert all(grads[1][f"paths.{p}.ln_out.weight"].abs().sum() > 0 for p in range(6))


def test_dropout_in_training_mode_only(make_model, make_inputs, modality_sets):
    model = make_model(modality_sets[3], dropout=0.5)
    features, lengths = make_inputs(modality_sets[3], 4)
    model.train()
    a, b = batched_pooled_paths(model, features, lengths), batched_pooled_paths(model, features, lengths)
    assert not torch.allclose(a, b)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(batched_pooled_paths(model, features, lengths), model.pooled_paths(features, lengths),
                                   atol=2e-5, rtol=1e-4)
