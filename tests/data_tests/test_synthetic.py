"""The synthetic generator's harder families (``supernet.data.synthetic``): graded path strengths,
a multiplicative pair, a shortcut modality that carries the label in the train split only, and
the one-line problems ``mro-search validate`` reports for them. Each signal is recomputed from
the features themselves (the pointer lookup), so the tests check the data, not the generator's
bookkeeping."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from search_service.study_file import load_study
from supernet.config import DataConfig
from supernet.data.synthetic import CODE_DIM, make_synthetic, required_dims
from supernet.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def _signal(split, source: str, s_off: int, target: str, t_off: int) -> torch.Tensor:
    """A path's signal read back from the features: every target step's pointer finds the source
    step whose key it matches and reads that step's value; the mean over the target's steps."""
    keys = split.features[source][:, :, s_off : s_off + CODE_DIM]  # (n, L, 8)
    values = split.features[source][:, :, s_off + CODE_DIM]  # (n, L)
    pointers = split.features[target][:, :, t_off : t_off + CODE_DIM]  # (n, L, 8)
    found = torch.einsum("ntc,nsc->nts", pointers, keys).argmax(dim=-1)  # (n, L) source step
    return torch.gather(values, 1, found).round().mean(dim=1)


def _config(**kw) -> DataConfig:
    base = dict(modalities=["a", "b", "c", "d"], dims=[20, 20, 20, 4], samples=[600, 400, 400], noise=0.05, seed=1)
    return DataConfig(**(base | kw))


def test_path_strengths_weight_each_planted_path_in_the_label() -> None:
    data = make_synthetic(_config(planted_paths=["a->b", "c->d"], path_strengths=[1.0, 0.0], dims=[20, 20, 20, 12]))
    for split in data.splits.values():
        s = _signal(split, "a", 0, "b", 0)
        decided = s != 0
        # weight 0: c->d says nothing, the label is a->b's sign alone
        assert torch.equal(split.labels[decided], (s[decided] > 0).long())


def test_an_interaction_pair_enters_the_label_only_as_a_product() -> None:
    data = make_synthetic(_config(planted_paths=[], interaction_paths=["a->b", "c->a"]))
    split = data.splits["train"]
    s1 = _signal(split, "a", 0, "b", 0)
    s2 = _signal(split, "c", 0, "a", CODE_DIM + 1)
    decided = s1 * s2 != 0
    assert torch.equal(split.labels[decided], (s1 * s2 > 0)[decided].long())
    # neither signal alone predicts the label: agreement with its sign near chance
    for s in (s1, s2):
        agree = float(((s[decided] > 0).long() == split.labels[decided]).float().mean())
        assert 0.4 < agree < 0.6
    assert data.informative_paths == ["a->b", "c->a"]


def test_the_shortcut_carries_the_label_in_the_train_split_only() -> None:
    config = _config(planted_paths=["a->b"], shortcut_modality="d", shortcut_strength=0.8)
    data = make_synthetic(config)
    assert required_dims(config) == [9, 8, 0, 1]
    agreement = {}
    for name, split in data.splits.items():
        feature = split.features["d"][:, :, 0].mean(dim=1)  # the shortcut feature, averaged over steps
        agreement[name] = float(((feature > 0).long() == split.labels).float().mean())
    # strength 0.8: 80% show their own label, the rest another sample's (half of those agree)
    assert 0.84 < agreement["train"] < 0.96
    assert 0.4 < agreement["valid"] < 0.6 and 0.4 < agreement["test"] < 0.6
    assert data.shortcut_paths == ["a->d", "b->d", "c->d", "d->a", "d->b", "d->c"]
    assert data.informative_paths == ["a->b"]


def test_without_the_new_options_nothing_changes() -> None:
    """The options default to off: the same seed gives the same data as a config without them."""
    a = make_synthetic(DataConfig(samples=[50, 20, 20], seed=4))
    b = make_synthetic(DataConfig(samples=[50, 20, 20], seed=4, path_strengths=[1.0, 1.0], shortcut_strength=0.3))
    for name in a.splits:
        assert torch.equal(a.splits[name].labels, b.splits[name].labels)
        for m in a.splits[name].features:
            assert torch.equal(a.splits[name].features[m], b.splits[name].features[m])
    assert a.shortcut_paths == []


def test_bad_family_options_are_refused_by_the_generator() -> None:
    with pytest.raises(ConfigError, match="shortcut_modality 'a' is touched by informative paths"):
        make_synthetic(_config(planted_paths=["a->b"], shortcut_modality="a"))


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        ('path_strengths = [1.0, 0.5]', "[data] path_strengths has 2 entries for 1 planted_paths"),
        ('interaction_paths = ["b->c"]', "[data] interaction_paths must name exactly two paths"),
        ('interaction_paths = ["b->c", "b->x"]', "[data] interaction_paths ['b->x'] are not paths of"),
        ('interaction_paths = ["a->b", "b->c"]', "are in both planted_paths and interaction_paths"),
        ('shortcut_modality = "x"', "[data] shortcut_modality 'x' is not one of the modalities"),
        ('shortcut_modality = "b"', "[data] shortcut_modality 'b' is touched by informative paths ['a->b']"),
        ('shortcut_strength = 1.5', "[data] shortcut_strength = 1.5 must be at most 1.0"),
    ],
)
def test_validate_reports_bad_family_options_in_one_line(tmp_path: Path, lines: str, expected: str) -> None:
    text = (
        'name = "x"\n[data]\nsource = "synthetic"\nmodalities = ["a", "b", "c"]\ndims = [20, 20, 20]\n'
        'planted_paths = ["a->b"]\n'
    )
    path = tmp_path / "x.toml"
    path.write_text(text + lines + "\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_study(str(path))
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_the_family_study_has_its_parts() -> None:
    study = load_study(str(REPO / "studies" / "family.toml"))
    assert len(study.data.modalities) == 6 and min(study.data.samples[1:]) >= 5000
    assert study.model.head == "mlp"  # the multiplicative pair needs it
    data = make_synthetic(DataConfig(**(vars(study.data) | {"samples": [200, 200, 200]})))
    assert data.informative_paths == ["a->b", "a->c", "d->e", "b->d", "e->c"]
    assert len(data.shortcut_paths) == 10 and not set(data.shortcut_paths) & set(data.informative_paths)
    # the shortcut is strong in train and absent in test
    for name, low, high in (("train", 0.9, 1.0), ("test", 0.4, 0.6)):
        split = data.splits[name]
        feature = split.features["f"][:, :, 0].mean(dim=1)
        assert low < float(((feature > 0).long() == split.labels).float().mean()) < high


def test_old_study_files_keep_their_sha256(tmp_path: Path) -> None:
    """The new keys at their defaults stay out of the configuration a checkpoint records."""
    study = load_study(str(REPO / "studies" / "demo.toml"))
    assert "shortcut_modality" not in study.supernet_config()["data"]
    assert "shortcut_modality" in load_study(str(REPO / "studies" / "shortcut.toml")).supernet_config()["data"]
