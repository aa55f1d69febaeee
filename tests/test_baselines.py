"""Concat + MLP and EmbraceNet: shapes, padding, the embracement, a training step, fvcore FLOPs."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from supernet.baselines import BASELINES, ConcatMLP, EmbraceNet, count_flops, make_baseline
from supernet.config import ModelConfig
from supernet.data.dataset import ModalitySpec
from supernet.model import SupernetSpec

pytestmark = pytest.mark.usefixtures("single_thread")

MakeInputs = Callable[..., tuple[list[torch.Tensor], list[torch.Tensor | None]]]
ModalitySets = dict[int, tuple[ModalitySpec, ...]]

CFG = ModelConfig(width=16, heads=2, ffn_mult=2, dropout=0.0)


def _spec(modalities: tuple[ModalitySpec, ...], task: str) -> SupernetSpec:
    return SupernetSpec(modalities, task, 3 if task == "classification" else 1)


@pytest.mark.parametrize("name", BASELINES)
@pytest.mark.parametrize("task", ["classification", "regression"])
def test_output_shapes(name: str, task: str, make_inputs: MakeInputs, modality_sets: ModalitySets) -> None:
    modalities = modality_sets[3]  # two sequences and a vector
    torch.manual_seed(0)
    model = make_baseline(name, _spec(modalities, task), CFG)
    features, lengths = make_inputs(modalities, 5, variable=True)
    for mode in (True, False):
        model.train(mode)
        out = model(features, lengths)
        assert out.shape == (5, 3 if task == "classification" else 1)
        assert torch.isfinite(out).all()
    assert model(features).shape == out.shape  # lengths may be left out


@pytest.mark.parametrize("name", BASELINES)
def test_padding_is_ignored(name: str, make_inputs: MakeInputs, modality_sets: ModalitySets) -> None:
    modalities = modality_sets[3]
    torch.manual_seed(0)
    model = make_baseline(name, _spec(modalities, "classification"), CFG).eval()
    features, lengths = make_inputs(modalities, 4, variable=True)
    before = model(features, lengths)
    changed = [f.clone() for f in features]
    for m, n in enumerate(lengths):
        if n is not None:
            steps = torch.arange(changed[m].shape[1])[None, :] >= n[:, None]  # padded steps
            changed[m][steps] = 1e3
    assert any(n is not None and bool((n < features[m].shape[1]).any()) for m, n in enumerate(lengths))
    torch.testing.assert_close(model(changed, lengths), before)


def test_embracenet_draws_one_modality_per_dimension_and_averages_in_eval() -> None:
    modalities = (ModalitySpec("a", 4), ModalitySpec("b", 5), ModalitySpec("c", 6))
    torch.manual_seed(0)
    model = EmbraceNet(_spec(modalities, "classification"), CFG, probabilities=[0.2, 0.3, 0.5])
    features = [torch.randn(64, m.dim) for m in modalities]
    docked = model.docked(features)  # (B, k, c)
    model.train()
    embraced = model.embrace(docked)
    # every (sample, dimension) equals the docked value of exactly one of the modalities ...
    matches = (embraced[:, None, :] == docked).any(dim=1)
    assert bool(matches.all())
    # ... drawn with the given probabilities (64 samples x 16 dims: loose bounds)
    chosen = torch.stack([(embraced == docked[:, m]) & (docked[:, m] != 0) for m in range(3)])
    share = chosen.float().sum(dim=(1, 2)) / chosen.any(dim=0).float().sum()
    assert share[0] < share[1] < share[2]
    model.eval()
    expected = (torch.tensor([0.2, 0.3, 0.5])[None, :, None] * docked).sum(dim=1)
    torch.testing.assert_close(model.embrace(docked), expected)
    torch.testing.assert_close(model(features), model(features))  # eval is deterministic


@pytest.mark.parametrize("name", BASELINES)
def test_training_steps_reduce_the_loss(name: str, make_inputs: MakeInputs, modality_sets: ModalitySets) -> None:
    modalities = modality_sets[4]
    torch.manual_seed(1)
    model = make_baseline(name, _spec(modalities, "classification"), CFG)
    features, lengths = make_inputs(modalities, 16, variable=True, seed=2)
    labels = torch.randint(0, 3, (16,), generator=torch.Generator().manual_seed(3))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.eval()  # the expectation: the same function before and after, no sampling noise
    with torch.no_grad():
        before = float(F.cross_entropy(model(features, lengths), labels))
    model.train()
    for _ in range(40):
        optimizer.zero_grad()
        F.cross_entropy(model(features, lengths), labels).backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        after = float(F.cross_entropy(model(features, lengths), labels))
    assert after < 0.8 * before, (before, after)
    assert all(p.grad is not None for p in model.parameters())


def test_flops_are_counted_by_fvcore_and_match_a_hand_count() -> None:
    # fvcore counts a Linear(i, o) on one sample as i * o and an einsum "k,bkc->bc" as k * c;
    # pooling and activations are not counted (as for the supernet)
    modalities = (ModalitySpec("s", 6, 5), ModalitySpec("v", 10), ModalitySpec("t", 3, 4))
    spec = _spec(modalities, "classification")
    h, out, D = CFG.width, 3, 6 + 10 + 3
    concat = ConcatMLP(spec, CFG)
    assert count_flops(concat) == D * h + h * h + h * out
    embrace = EmbraceNet(spec, CFG)
    docking = (6 + 10 + 3) * h
    assert count_flops(embrace) == docking + 3 * h + h * h + h * h + h * out
    assert count_flops(ConcatMLP(spec, CFG, hidden=32)) > count_flops(concat) > 0
    concat.train()
    count_flops(concat)
    assert concat.training  # counting left the mode alone


def test_bad_arguments() -> None:
    spec = _spec((ModalitySpec("a", 4), ModalitySpec("b", 5)), "classification")
    with pytest.raises(ValueError, match="probabilities"):
        EmbraceNet(spec, CFG, probabilities=[1.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="unknown baseline"):
        make_baseline("mlp", spec, CFG)
    with pytest.raises(ValueError, match="modalities"):
        ConcatMLP(spec, CFG)([torch.zeros(2, 4)])
