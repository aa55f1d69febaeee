"""One-shot supernet training on tiny synthetic data: history, rank losses, seeding, the prior."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

import supernet.train as train_module
from supernet.config import RANK_LOSSES, DataConfig, ModelConfig, TrainConfig
from supernet.data import load_data
from supernet.data.dataset import MultimodalData
from supernet.relation_graph import RelationGraphPrior
from supernet.train import TrainResult, train_supernet

pytestmark = pytest.mark.usefixtures("single_thread")


def _data(task: str = "classification", modalities: list[str] | None = None) -> MultimodalData:
    if modalities is None:
        cfg = DataConfig(dims=[17, 9, 8], length=4, samples=[64, 32, 32], task=task, seed=0)
    else:  # no planted paths: any small dims do
        cfg = DataConfig(
            modalities=modalities,
            dims=[3] * len(modalities),
            length=3,
            samples=[32, 16, 16],
            planted_paths=[],
            task=task,
        )
    return load_data(cfg)


def _model_cfg(**kw: Any) -> ModelConfig:
    settings: dict[str, Any] = {"width": 16, "heads": 2, "ffn_mult": 1, "dropout": 0.1}
    settings.update(kw)
    return ModelConfig(**settings)


def _train_cfg(**kw: Any) -> TrainConfig:
    settings: dict[str, Any] = {
        "epochs": 2,
        "warmup_epochs": 1,
        "batch_size": 16,
        "masks_per_step": 2,
        "rank_every": 1,
        "rank_masks": 6,
        "seed": 0,
    }
    settings.update(kw)
    return TrainConfig(**settings)


@pytest.fixture(scope="module")
def data() -> MultimodalData:
    return _data()


@pytest.fixture(scope="module")
def trained(data: MultimodalData) -> TrainResult:
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # as the single_thread fixture does, which is per test
    try:
        return train_supernet(data, _model_cfg(), _train_cfg(), progress=False)
    finally:
        torch.set_num_threads(before)


def test_history_has_one_record_per_epoch(trained: TrainResult) -> None:
    history = trained.history
    assert [r["epoch"] for r in history] == [1, 2]
    assert [r["phase"] for r in history] == ["warmup", "prior"]
    for record in history:
        assert math.isfinite(record["spearman"]) and -1.0 <= record["spearman"] <= 1.0
        assert math.isfinite(record["valid_loss_full"]) and record["valid_loss_full"] > 0
        assert math.isfinite(record["train_loss"]) and math.isfinite(record["rank_loss"])
        assert len(record["edge_probs"]) == 6
        assert len(record["keep_probs"]) == 6 and all(0.0 < q < 1.0 for q in record["keep_probs"])
    assert not trained.model.training  # handed back in eval mode


def test_training_logs_its_device_then_a_line_per_epoch(data: MultimodalData) -> None:
    lines: list[str] = []
    train_supernet(
        data, _model_cfg(), _train_cfg(epochs=1, warmup_epochs=1), progress=False, log=lines.append
    )
    assert len(lines) == 2 and all("\n" not in line for line in lines)
    assert lines[0] == (  # no GPU on this machine
        "device: cpu (auto: no CUDA or MPS device); precision fp32; "
        "the prior learns from the validation split (32 samples; rank_data = valid)"
    )
    assert "epoch 1/1" in lines[1]


@pytest.mark.parametrize("kind", RANK_LOSSES)
def test_every_rank_loss_runs(kind: str, data: MultimodalData) -> None:
    result = train_supernet(
        data, _model_cfg(), _train_cfg(rank_loss=kind, rank_masks=4), progress=False
    )
    assert len(result.history) == 2
    assert all(math.isfinite(r["rank_loss"]) for r in result.history)
    assert all(math.isfinite(r["spearman"]) for r in result.history)


@pytest.mark.parametrize(
    ("task", "modalities"),
    [("regression", None), ("classification", ["a", "b"]), ("regression", ["a", "b", "c", "d"])],
)
def test_other_tasks_and_k(task: str, modalities: list[str] | None) -> None:
    data = _data(task, modalities)
    result = train_supernet(data, _model_cfg(head="mlp"), _train_cfg(rank_masks=4), progress=False)
    k = len(data.modalities)
    assert result.model.num_paths == k * (k - 1)
    assert all(math.isfinite(r["valid_loss_full"]) for r in result.history)


def _state(result: TrainResult) -> dict[str, torch.Tensor]:
    out = {f"model.{k}": v for k, v in result.model.state_dict().items()}
    out.update({f"prior.{k}": v for k, v in result.prior.state_dict().items()})
    return out


def test_same_seed_same_weights_other_seed_other_weights(
    data: MultimodalData, trained: TrainResult
) -> None:
    again = train_supernet(data, _model_cfg(), _train_cfg(), progress=False)
    a, b = _state(trained), _state(again)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert [r["valid_loss_full"] for r in trained.history] == [
        r["valid_loss_full"] for r in again.history
    ]
    other = _state(train_supernet(data, _model_cfg(), _train_cfg(seed=1), progress=False))
    assert any(not torch.equal(a[key], other[key]) for key in a if key.startswith("model."))


def test_warmup_is_uniform_then_masks_come_from_the_prior(
    data: MultimodalData, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[tuple[str, int]] = []
    original_sample = RelationGraphPrior.sample
    original_uniform = train_module.uniform_masks
    original_evaluate = train_module._evaluate_epoch

    def sample(
        self: RelationGraphPrior, n: int, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        events.append(("prior", n))
        return original_sample(self, n, generator)

    def uniform(n: int, n_paths: int, generator: torch.Generator) -> torch.Tensor:
        events.append(("uniform", n))
        return original_uniform(n, n_paths, generator)

    def evaluate(*args: Any, **kwargs: Any) -> dict[str, Any]:
        events.append(("epoch_end", 0))
        return original_evaluate(*args, **kwargs)

    monkeypatch.setattr(RelationGraphPrior, "sample", sample)
    monkeypatch.setattr(train_module, "uniform_masks", uniform)
    monkeypatch.setattr(train_module, "_evaluate_epoch", evaluate)
    # 64 samples / 16 = 4 steps per epoch; rank_every large: the prior is refined at step 0 only
    # keep_floor = 0: the masks come from prior.sample itself (a floor draws with clamped probabilities)
    cfg = _train_cfg(epochs=3, warmup_epochs=2, masks_per_step=3, rank_every=1000, rank_masks=6, keep_floor=0.0)
    train_supernet(data, _model_cfg(), cfg, progress=False)
    ends = [i for i, e in enumerate(events) if e[0] == "epoch_end"]
    assert len(ends) == 3
    epochs = [events[: ends[0]], events[ends[0] + 1 : ends[1]], events[ends[1] + 1 : ends[2]]]
    for warm in epochs[:2]:
        assert not [e for e in warm if e[0] == "prior" and e[1] > 0]  # nothing drawn from the prior
        assert [e for e in warm if e == ("uniform", 3)] == [("uniform", 3)] * 4  # one per step
    # the rank-loss refinement at step 0 (warm-up) ranks uniform masks only
    assert ("uniform", 6) in epochs[0]
    after = epochs[2]
    assert [e for e in after if e[0] == "prior"] == [("prior", 3)] * 4  # one draw per step
    assert not [e for e in after if e[0] == "uniform"]


def test_refinement_after_warmup_mixes_prior_and_uniform(
    data: MultimodalData, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    original_sample = RelationGraphPrior.sample

    def sample(
        self: RelationGraphPrior, n: int, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        calls.append(n)
        return original_sample(self, n, generator)

    monkeypatch.setattr(RelationGraphPrior, "sample", sample)
    cfg = _train_cfg(epochs=1, warmup_epochs=0, masks_per_step=2, rank_every=1, rank_masks=6, keep_floor=0.0)
    train_supernet(data, _model_cfg(), cfg, progress=False)
    # every one of the 4 steps: 2 masks for training, then 6 // 2 = 3 for the rank loss
    assert calls == [2, 3] * 4


def test_the_prior_learns_and_its_statistics_fill(
    data: MultimodalData, trained: TrainResult
) -> None:
    fresh = RelationGraphPrior(3)
    learned = trained.prior
    changed = {
        name
        for name, p in learned.named_parameters()
        if not torch.equal(p.detach(), dict(fresh.named_parameters())[name])
    }
    assert changed & {"alpha", "beta", "gamma"}, changed
    assert any(name.startswith("gat.") for name in changed), changed
    assert "node_embeddings" in changed
    raw = learned.statistics.raw_features()
    assert raw.shape == (6, 3)
    assert torch.isfinite(raw).all(), raw
    assert bool((learned.statistics.grad_count >= 2).all())
    assert bool((learned.statistics.cosine_count > 0).all())
    # the prior is still a proper distribution over masks
    from supernet.paths import all_masks

    total = learned.log_prob(all_masks(6)).exp().sum()
    assert float(total) == pytest.approx(1.0, abs=1e-5)


def test_trained_model_matches_its_spec(data: MultimodalData, trained: TrainResult) -> None:
    assert [m.name for m in trained.model.spec.modalities] == data.modality_names
    assert trained.model.spec.output_dim == 2
    assert trained.prior.k == 3


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: (p.grad.clone() if p.grad is not None else torch.zeros_like(p)) for k, p in model.named_parameters()}


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_per_sample_masks_give_each_sample_its_own_subnet(task: str) -> None:
    """A per-sample step equals, sample by sample, the subnet step of that sample's mask: the
    gradient of a batch whose samples carry two masks is the size-weighted sum of the gradients of
    the two halves trained as whole-batch subnets."""
    data = _data(task)
    model = train_module.Supernet(train_module.model_spec(data), _model_cfg(dropout=0.0))
    features, lengths, labels = next(iter(train_module.batches(data.splits["train"], data.modality_names, 16)))
    a, b = torch.tensor([1.0, 0, 1, 0, 0, 1]), torch.tensor([0.0, 1, 1, 0, 1, 0])
    masks = torch.stack([a] * 10 + [b] * 6)
    per_sample = _train_cfg(per_sample_masks=True)
    model.zero_grad()
    loss = train_module._subnet_step(model, features, lengths, labels, masks, task, per_sample)
    got = _grads(model)

    expected: dict[str, torch.Tensor] = {}
    total = 0.0
    for mask, rows in ((a, slice(0, 10)), (b, slice(10, 16))):
        model.zero_grad()
        part = train_module._subnet_step(
            model, [f[rows] for f in features], [None if n is None else n[rows] for n in lengths],
            labels[rows], mask[None], task, _train_cfg(masks_per_step=1),
        )
        n = rows.stop - rows.start
        total += part * n / 16
        for k, g in _grads(model).items():
            expected[k] = expected.get(k, 0) + g * n / 16
    assert loss == pytest.approx(total, rel=1e-5)
    for k in got:
        assert torch.allclose(got[k], expected[k], atol=1e-6), k
    # a path no sample uses gets no gradient
    assert all(torch.count_nonzero(g) == 0 for k, g in got.items() if k.startswith("paths.3."))


def test_distillation_trains_the_full_supernet_and_pulls_subnets_towards_it() -> None:
    data = _data()
    model = train_module.Supernet(train_module.model_spec(data), _model_cfg(dropout=0.0))
    features, lengths, labels = next(iter(train_module.batches(data.splits["train"], data.modality_names, 16)))
    full_mask = torch.ones(1, model.num_paths)
    for per_sample in (False, True):
        masks = full_mask.expand(16 if per_sample else 1, -1)
        # the full mask distilled from itself: the KL term is zero, so distill only reweights the
        # label loss: 0.5 * CE + 0.5 * 0 + CE (the full supernet's own label loss) = 1.5 * CE
        model.zero_grad()
        train_module._subnet_step(model, features, lengths, labels, masks, "classification",
                                  _train_cfg(per_sample_masks=per_sample, distill=0.5))
        with_distill = _grads(model)
        model.zero_grad()
        train_module._subnet_step(model, features, lengths, labels, full_mask, "classification",
                                  _train_cfg(masks_per_step=1))
        plain = _grads(model)
        for k in plain:
            assert torch.allclose(with_distill[k], 1.5 * plain[k], atol=1e-6), (per_sample, k)
    # a small subnet with distill = 1 (no label loss for it): the gradient is the full supernet's
    # label loss plus the KL term, which flows into the subnet's path only (the target is detached)
    small = torch.tensor([[1.0, 0, 0, 0, 0, 0]])
    model.zero_grad()
    train_module._subnet_step(model, features, lengths, labels, small, "classification", _train_cfg(distill=1.0))
    kl_part = {k: g - 1.0 * plain[k] for k, g in _grads(model).items()}
    assert any(torch.count_nonzero(g) for k, g in kl_part.items() if k.startswith("paths.0."))
    assert all(torch.allclose(g, torch.zeros_like(g), atol=1e-6) for k, g in kl_part.items() if k.startswith(("paths.1.", "paths.5.")))


def test_training_with_per_sample_masks_and_distillation_runs_and_is_seeded(data: MultimodalData) -> None:
    cfg = _train_cfg(per_sample_masks=True, distill=0.5)
    one = train_supernet(data, _model_cfg(), cfg, progress=False)
    two = train_supernet(data, _model_cfg(), cfg, progress=False)
    assert len(one.history) == 2 and all(math.isfinite(r["train_loss"]) for r in one.history)
    a, b = _state(one), _state(two)
    assert all(torch.equal(a[k], b[k]) for k in a)


# --- training never hands on a broken model -------------------------------------------------------


def _scaled(data: MultimodalData, factor: float) -> MultimodalData:
    """``data`` with every feature of every split multiplied by ``factor``."""
    from dataclasses import replace

    from supernet.data.dataset import Split

    splits = {
        name: Split(features={m: x * factor for m, x in s.features.items()}, labels=s.labels, lengths=s.lengths)
        for name, s in data.splits.items()
    }
    return replace(data, splits=splits)


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_a_learning_rate_far_too_high_stops_training_with_the_epoch_and_the_cause(task: str) -> None:
    from supernet.errors import TrainingError

    data = _data(task)
    with pytest.raises(TrainingError) as info:
        train_supernet(data, _model_cfg(), _train_cfg(lr=1e30), progress=False)
    message = str(info.value)
    assert "training diverged at epoch 1/2" in message
    assert "[train] lr = 1e+30 too high" in message
    assert "features too large" not in message
    assert "nothing was saved" in message and "\n" not in message


def test_features_of_1e30_stop_training_naming_the_features() -> None:
    from supernet.errors import TrainingError

    data = _scaled(_data(), 1e30)
    with pytest.raises(TrainingError) as info:
        train_supernet(data, _model_cfg(), _train_cfg(), progress=False)
    message = str(info.value)
    assert "training diverged at epoch 1/2" in message
    assert "features too large (|value| up to" in message and "e+30 in the train split" in message
    assert "normalize them" in message and "lr =" not in message  # the learning rate is fine


def test_features_of_1e30_in_the_valid_split_only_stop_training_at_the_validation_loss() -> None:
    from supernet.errors import TrainingError

    data = _data()
    huge = _scaled(data, 1e30)
    data.splits = {**data.splits, "valid": huge.splits["valid"]}
    with pytest.raises(TrainingError, match=r"epoch 1/2: the validation loss \(nan\) is not finite"):
        train_supernet(data, _model_cfg(), _train_cfg(rank_data="holdout"), progress=False)
    # rank_data = "valid": the prior's rank loss reads the validation split first, and says so
    with pytest.raises(TrainingError, match=r"epoch 1/2: the prior's rank loss \(nan\) is not finite; likely cause: "
                                            r"features too large \(\|value\| up to [0-9.]+e\+30 in the valid split\)"):
        train_supernet(data, _model_cfg(), _train_cfg(rank_data="valid"), progress=False)


def test_a_stand_alone_subnet_stops_on_a_non_finite_loss_too() -> None:
    from supernet.errors import TrainingError
    from supernet.train import train_subnet

    with pytest.raises(TrainingError, match="training diverged at epoch 1/2"):
        train_subnet(_scaled(_data(), 1e30), _model_cfg(), _train_cfg(), [1, 0, 0, 0, 0, 1])


def test_training_refuses_a_model_the_machine_cannot_hold_before_building_it(data: MultimodalData) -> None:
    from supernet.errors import ResourceError

    # 16384 wide, 64 blocks per path, ffn x64: about 2e14 bytes of weights, never allocated
    cfg = _model_cfg(width=16_384, heads=16, layers_per_path=64, ffn_mult=64)
    with pytest.raises(ResourceError, match=r"training this supernet .* needs about .* TiB of memory but this machine has"):
        train_supernet(data, cfg, _train_cfg(), progress=False)


def test_path_gradient_norms_in_one_sync_are_the_loops() -> None:
    """The accelerators' one-sync gradient norms (``one_sync=True``) equal the CPU's loop."""
    data = _data()
    model = train_module.Supernet(train_module.model_spec(data), _model_cfg(dropout=0.0))
    features, lengths, labels = next(iter(train_module.batches(data.splits["train"], data.modality_names, 16)))
    mask = torch.tensor([1.0, 0, 1, 1, 0, 1])
    train_module.task_loss(model(features, mask, lengths), labels, "classification").backward()
    active = mask.bool()
    loop = train_module.path_grad_norms(model, active)
    one = train_module.path_grad_norms(model, active, one_sync=True)
    assert bool((loop[active] > 0).all()) and bool((loop[~active] == 0).all())
    torch.testing.assert_close(one, loop, rtol=1e-6, atol=0)
