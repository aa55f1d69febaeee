"""Checkpoints: exact round trip, safe loading, and one-line errors for every broken file."""

from __future__ import annotations

import errno
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from supernet.checkpoint import FORMAT, file_sha256, load_checkpoint, save_checkpoint
from supernet.config import config_sha256
from supernet.data.dataset import ModalitySpec
from supernet.errors import CheckpointError, OutputError
from supernet.model import Supernet
from supernet.relation_graph import RelationGraphPrior, path_keep_logits

pytestmark = pytest.mark.usefixtures("single_thread")

MakeModel = Callable[..., Supernet]
MakeInputs = Callable[..., Any]
ModalitySets = dict[int, tuple[ModalitySpec, ...]]

CONFIG: dict[str, Any] = {
    "name": "tiny",
    "data": {"source": "synthetic", "dims": [3, 4]},
    "model": {"width": 16},
}


def _prior(k: int) -> RelationGraphPrior:
    prior = RelationGraphPrior(k, seed=3)
    p = prior.n_paths
    everywhere = torch.ones(p, dtype=torch.bool)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        prior.statistics.update_cosine(torch.rand(p, generator=g), everywhere)
        prior.statistics.update_grad(torch.rand(p, generator=g), everywhere)
        prior.statistics.update_attention(torch.rand(p, generator=g), everywhere)
    with torch.no_grad():
        prior.alpha.add_(0.5)
    return prior


@pytest.fixture
def saved(
    tmp_path: Path, make_model: MakeModel, modality_sets: ModalitySets
) -> tuple[Path, Supernet, RelationGraphPrior]:
    model = make_model(
        modality_sets[3],
        task="regression",
        head="mlp",
        pooling="max",
        dropout=0.2,
        layers_per_path=2,
    )
    with torch.no_grad():  # weights away from their init, so a fresh model would differ
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    prior = _prior(3)
    history = [{"epoch": 1, "spearman": 0.25, "edge_probs": [0.5] * 6, "phase": "warmup"}]
    path = save_checkpoint(tmp_path / "run" / "supernet.pt", model, prior, CONFIG, history)
    return path, model, prior


def test_round_trip_gives_identical_outputs(
    saved: tuple[Path, Supernet, RelationGraphPrior], make_inputs: MakeInputs
) -> None:
    path, model, prior = saved
    ckpt = load_checkpoint(path)
    loaded = ckpt.model
    assert not loaded.training
    assert loaded.spec == model.spec and loaded.cfg == model.cfg
    model.eval()
    features, lengths = make_inputs(model.spec.modalities, batch=4, variable=True)
    for mask in ([1] * 6, [0, 1, 1, 0, 1, 1], [0, 0, 0, 0, 0, 1]):
        with torch.no_grad():
            assert torch.equal(loaded(features, mask, lengths), model(features, mask, lengths))
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    # the prior: parameters and statistics
    for key, value in prior.state_dict().items():
        assert torch.equal(ckpt.prior.state_dict()[key], value), key
    assert torch.equal(ckpt.prior.edge_probs(), prior.edge_probs())
    assert torch.isfinite(ckpt.prior.statistics.raw_features()).all()
    assert ckpt.config == CONFIG
    assert ckpt.config_sha256 == config_sha256(CONFIG)
    assert ckpt.history[0]["spearman"] == 0.25
    assert ckpt.file_sha256 == file_sha256(path)


def test_the_file_loads_with_weights_only(saved: tuple[Path, Supernet, RelationGraphPrior]) -> None:
    path, _, _ = saved
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == FORMAT
    assert set(payload["model"]) == set(saved[1].state_dict())


def test_load_checkpoint_uses_weights_only(
    saved: tuple[Path, Supernet, RelationGraphPrior], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _, _ = saved
    seen: list[dict[str, Any]] = []
    original = torch.load

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    load_checkpoint(path)
    assert seen and all(kw.get("weights_only") is True for kw in seen)


def test_a_pickle_with_code_is_refused(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self) -> tuple[Any, tuple[str]]:
            return (print, ("this must never run",))

    path = tmp_path / "evil.pt"
    torch.save({"format": FORMAT, "payload": Evil()}, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value)


def test_expected_sha256_mismatch_names_both(
    saved: tuple[Path, Supernet, RelationGraphPrior],
) -> None:
    path, _, _ = saved
    good = config_sha256(CONFIG)
    assert load_checkpoint(path, expected_sha256=good).config_sha256 == good
    other = config_sha256({**CONFIG, "name": "other"})
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, expected_sha256=other)
    message = str(info.value)
    assert good[:12] in message and other[:12] in message
    assert str(path) in message and "\n" not in message


def test_truncated_file_is_a_one_line_error(
    saved: tuple[Path, Supernet, RelationGraphPrior],
) -> None:
    path, _, _ = saved
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message and "truncated or corrupt" in message


@pytest.mark.parametrize("content", [b"", b"hello, I am not a checkpoint\n", b"PK\x03\x04garbage"])
def test_non_checkpoint_bytes_are_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "x.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "payload", [{"weights": torch.zeros(3)}, [1, 2, 3], {"format": "something/else"}]
)
def test_other_torch_files_are_refused(tmp_path: Path, payload: Any) -> None:
    path = tmp_path / "other.pt"
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="not an mro-search supernet checkpoint"):
        load_checkpoint(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no supernet checkpoint"):
        load_checkpoint(tmp_path / "nothing.pt")


def test_weights_that_do_not_fit_are_refused(
    saved: tuple[Path, Supernet, RelationGraphPrior],
) -> None:
    path, _, _ = saved
    payload = torch.load(path, weights_only=True)
    payload["model_config"]["width"] = 32  # the stored weights are for width 16
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="do not fit") as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value)


def test_save_leaves_only_the_complete_file(
    saved: tuple[Path, Supernet, RelationGraphPrior],
) -> None:
    path, model, prior = saved
    assert sorted(p.name for p in path.parent.iterdir()) == ["supernet.pt"]
    before = file_sha256(path)
    save_checkpoint(path, model, prior, CONFIG)  # overwrite in place
    assert sorted(p.name for p in path.parent.iterdir()) == ["supernet.pt"]
    assert load_checkpoint(path).history == []
    assert file_sha256(path) != before  # history changed


def test_a_failed_save_leaves_no_temp_file_and_keeps_the_old_one(
    saved: tuple[Path, Supernet, RelationGraphPrior], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, model, prior = saved
    before = file_sha256(path)

    def broken_save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        f.write(b"half a checkpo")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OutputError, match="cannot write the checkpoint to .*supernet.pt: no space left on the disk"):
        save_checkpoint(path, model, prior, CONFIG)
    assert sorted(p.name for p in path.parent.iterdir()) == ["supernet.pt"]
    assert file_sha256(path) == before


def test_the_prior_keep_mapping_is_recorded_and_restored(
    saved: tuple[Path, Supernet, RelationGraphPrior],
) -> None:
    path, _, prior = saved
    assert prior.keep == "independent"
    assert torch.load(path, weights_only=True)["prior_keep"] == "independent"
    ckpt = load_checkpoint(path)
    assert ckpt.prior.keep == "independent"
    torch.testing.assert_close(ckpt.prior.path_probs(), prior.path_probs(), rtol=0, atol=0)


def test_a_checkpoint_without_a_keep_mapping_loads_with_the_per_source_one(
    tmp_path: Path, make_model: MakeModel, modality_sets: ModalitySets
) -> None:
    """Checkpoints written before the mapping was a choice hold no ``prior_keep`` and a prior
    without ``size_bias``: they load with the per-source mapping they were trained with."""
    model = make_model(modality_sets[3], task="regression")
    old = RelationGraphPrior(3, seed=3, keep="per_source")
    path = save_checkpoint(tmp_path / "old.pt", model, old, CONFIG)
    payload = torch.load(path, weights_only=True)
    del payload["prior_keep"]  # exactly what the earlier code wrote
    assert "size_bias" not in payload["prior"]
    torch.save(payload, path)
    ckpt = load_checkpoint(path)
    assert ckpt.prior.keep == "per_source"
    with torch.no_grad():
        expected = torch.sigmoid(path_keep_logits(old.log_edge_probs(), 3, old.tau))
    torch.testing.assert_close(ckpt.prior.path_probs(), expected, rtol=0, atol=0)


def test_an_unknown_keep_mapping_is_refused_in_one_line(
    saved: tuple[Path, Supernet, RelationGraphPrior],
) -> None:
    path, _, _ = saved
    payload = torch.load(path, weights_only=True)
    payload["prior_keep"] = "from_the_future"
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="keep mapping 'from_the_future'.*train again") as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value)
