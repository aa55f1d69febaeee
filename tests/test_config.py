"""Configuration sections and study files: every problem reported at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from search_service.study_file import SearchConfig, load_study
from supernet.config import (
    DataConfig,
    ModelConfig,
    TrainConfig,
    config_sha256,
    config_to_dict,
    parse_section,
)
from supernet.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
SHIPPED = sorted((REPO / "studies").glob("*.toml"))


def test_parse_section_collects_every_problem() -> None:
    problems: list[str] = []
    raw = {
        "widht": 32,  # unknown key
        "heads": "4",  # wrong type
        "pooling": "median",  # bad choice
        "layers_per_path": 0,  # below min
        "dropout": 0.25,  # fine
        "ffn_mult": True,  # a bool is not an int
    }
    cfg = parse_section(ModelConfig, raw, "model", problems)
    assert len(problems) == 5, problems
    text = "\n".join(problems)
    assert "unknown key 'widht'" in text
    assert "heads must be int" in text
    assert "pooling = 'median' is not one of mean, max" in text
    assert "layers_per_path = 0 must be at least 1" in text
    assert "ffn_mult must be int" in text
    assert all(p.startswith("[model]") for p in problems)
    # defaults stand in for the bad values; good values are kept
    assert cfg.heads == ModelConfig().heads and cfg.pooling == "mean" and cfg.layers_per_path == 1
    assert cfg.dropout == 0.25


def test_parse_section_accepts_good_tables_and_converts_ints_to_float() -> None:
    problems: list[str] = []
    train = parse_section(
        TrainConfig, {"lr": 1, "epochs": 3, "rank_loss": "linf"}, "train", problems
    )
    assert problems == []
    assert train.lr == 1.0 and isinstance(train.lr, float)
    assert train.epochs == 3 and train.rank_loss == "linf"
    data = parse_section(DataConfig, {"dims": [1, 2], "modalities": ["a", "b"]}, "data", problems)
    assert problems == [] and data.dims == [1, 2]
    parse_section(DataConfig, {"dims": [1, "2"]}, "data", problems)
    assert len(problems) == 1 and "dims must be list[int]" in problems[0]
    assert parse_section(ModelConfig, None, "model", problems) == ModelConfig()


def test_parse_section_refuses_a_non_table() -> None:
    problems: list[str] = []
    assert parse_section(TrainConfig, 3, "train", problems) == TrainConfig()
    assert problems == ["[train] must be a table, got int"]


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "broken.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_load_study_reports_three_problems_at_once(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """
[data]
source = "synthetic"
samples = [10, 5, 5]

[model]
width = 30
heads = 4            # 1. width not divisible by heads
colour = "blue"      # 2. unknown key

[train]
rank_loss = "l3"     # 3. bad choice
""",
    )
    with pytest.raises(ConfigError) as info:
        load_study(str(path))
    message = str(info.value)
    assert "3 problems" in message
    assert "width 30 must be divisible by heads 4" in message
    assert "unknown key 'colour'" in message
    assert "rank_loss = 'l3' is not one of" in message
    assert "\n" not in message


def test_load_study_reports_types_and_minimums_and_semantics(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """
name = "has space"
extra = 1
[train]
epochs = "ten"
batch_size = 0
warmup_epochs = 50
[search]
metric = "mae"
""",
    )
    with pytest.raises(ConfigError) as info:
        load_study(str(path))
    message = str(info.value)
    for needle in (
        "unknown key 'extra' at top level",
        "name = 'has space' must have 1 to 100 characters",
        "[data] is missing",
        "epochs must be int",
        "batch_size = 0 must be at least 1",
        "warmup_epochs 50 is more than epochs 10",
        "metric 'mae' is for regression",
    ):
        assert needle in message, needle


def test_invalid_toml_is_a_config_error(tmp_path: Path) -> None:
    path = _write(tmp_path, "[model\nwidth = 1\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_study(str(path))


def test_missing_study(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_study(str(tmp_path / "none.toml"))


def test_there_are_shipped_studies() -> None:
    assert {p.stem for p in SHIPPED} >= {"demo", "mosei", "meld", "mfeat"}


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_every_shipped_study_loads(path: Path) -> None:
    study = load_study(str(path))
    assert study.name == path.stem
    assert study.model.width % study.model.heads == 0
    assert isinstance(study.search, SearchConfig)
    assert len(study.sha256) == 64
    # loading by name finds the same file
    assert load_study(path.stem).sha256 == study.sha256


def test_config_sha256_is_stable_and_sensitive() -> None:
    config = {
        "data": config_to_dict(DataConfig()),
        "model": config_to_dict(ModelConfig()),
        "name": "x",
    }
    digest = config_sha256(config)
    assert len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)
    # key order does not matter; a fresh equal dict gives the same digest
    reordered = {
        "name": "x",
        "model": config_to_dict(ModelConfig()),
        "data": config_to_dict(DataConfig()),
    }
    assert config_sha256(reordered) == digest
    assert config_sha256(config) == digest
    changed = {**config, "model": config_to_dict(ModelConfig(width=65))}
    assert config_sha256(changed) != digest
    nested = {**config, "data": {**config["data"], "dims": [32, 16, 9]}}
    assert config_sha256(nested) != digest


def test_study_sha256_changes_with_a_value_and_ignores_search(tmp_path: Path) -> None:
    base = (REPO / "studies" / "demo.toml").read_text(encoding="utf-8")
    a = _write(tmp_path, base)
    digest = load_study(str(a)).sha256
    assert load_study(str(a)).sha256 == digest
    b = tmp_path / "b.toml"
    b.write_text(base.replace("lr = 2e-3", "lr = 3e-3"), encoding="utf-8")
    assert load_study(str(b)).sha256 != digest
    c = tmp_path / "c.toml"
    c.write_text(base.replace("trials = 60", "trials = 61"), encoding="utf-8")
    # the search settings are not part of what the supernet checkpoint depends on
    assert load_study(str(c)).sha256 == digest


def test_distill_must_lie_between_0_and_1() -> None:
    from supernet.config import TrainConfig

    problems: list[str] = []
    cfg = parse_section(TrainConfig, {"distill": 1.5, "per_sample_masks": "yes"}, "train", problems)
    assert problems == [
        "[train] distill = 1.5 must be at most 1.0 (allowed: 0.0 to 1.0)",
        "[train] per_sample_masks must be bool, got 'yes' (str)",
    ]
    assert cfg.distill == 0.0 and cfg.per_sample_masks is False
