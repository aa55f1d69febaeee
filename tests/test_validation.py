"""The one validation of study files (``parse_study`` through ``load_study``): every field's type,
range and finiteness, the naming rules, required tables, the npz file's headers against the
metric, and the machine's memory. Every problem is collected into one message."""

from __future__ import annotations

import dataclasses
import math
import os
import tempfile
import typing
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from search_service.study_file import SearchConfig, load_study, task_of
from supernet.config import (
    MODALITIES_MAX,
    SEED_MAX,
    DataConfig,
    ModelConfig,
    TrainConfig,
    modality_names_problem,
    name_problem,
    parse_section,
)
from supernet.errors import ConfigError

SECTIONS = [(DataConfig, "data"), (ModelConfig, "model"), (TrainConfig, "train"), (SearchConfig, "search")]


def _fields(kind: type) -> list[tuple[type, str, str]]:
    out = []
    for cls, section in SECTIONS:
        hints = typing.get_type_hints(cls)
        out += [(cls, section, f.name) for f in dataclasses.fields(cls) if hints[f.name] is kind]
    return out


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize(("cls", "section", "name"), _fields(float), ids=lambda x: getattr(x, "__name__", x))
def test_every_float_field_refuses_nan_and_infinity(cls: type, section: str, name: str, value: float) -> None:
    problems: list[str] = []
    config = parse_section(cls, {name: value}, section, problems)
    assert problems == [f"[{section}] {name} = {value!r} must be a finite number (nan and inf are not allowed)"]
    assert getattr(config, name) == getattr(cls(), name)  # the default stands in


@pytest.mark.parametrize(("cls", "section", "name"), _fields(int) + _fields(float), ids=lambda x: getattr(x, "__name__", x))
def test_every_number_has_a_finite_range_that_is_enforced(cls: type, section: str, name: str) -> None:
    meta = next(f.metadata for f in dataclasses.fields(cls) if f.name == name)
    high = meta.get("max", meta.get("below"))
    assert "min" in meta and high is not None, f"[{section}] {name} has no range"
    problems: list[str] = []
    parse_section(cls, {name: high + 1 if "max" in meta else high}, section, problems)  # "below": excluded
    assert len(problems) == 1 and (" must be at most " in problems[0] or " must be less than " in problems[0]), problems
    parse_section(cls, {name: type(meta["min"])(meta["min"] - 1)}, section, problems)
    assert len(problems) == 2 and " must be at least " in problems[1], problems
    parse_section(cls, {name: meta["min"]}, section, problems)
    assert len(problems) == 2, problems  # the bounds themselves are allowed


@pytest.mark.parametrize(
    ("section", "raw", "needle"),
    [
        ("model", {"dropout": 1.0}, "dropout = 1.0 must be less than 1.0"),
        ("data", {"valid_fraction": 1.0}, "valid_fraction = 1.0 must be less than 1.0"),
        ("train", {"seed": -1}, "seed = -1 must be at least 0"),
        ("train", {"seed": SEED_MAX + 1}, f"seed = {SEED_MAX + 1} must be at most {SEED_MAX}"),
        ("data", {"seed": 2**64}, "must be at most"),
        ("data", {"dims": [3, 0]}, "dims = [3, 0] item 1 (0) must be at least 1"),
        ("data", {"samples": [10**12, 5, 5]}, "item 0 (1000000000000) must be at most 10000000"),
        ("data", {"modalities": [f"m{i}" for i in range(MODALITIES_MAX + 1)]}, f"has {MODALITIES_MAX + 1} items, at most {MODALITIES_MAX}"),
        ("data", {"path": "data\x00.npz"}, "holds the control character '\\x00'"),
        ("data", {"path": "x" * 5000}, "is 5000 characters long, at most 4096"),
        ("search", {"storage": "sqlite:///a.db\nfake log line"}, "control character '\\n'"),
        ("train", {"device": "gpu"}, "device = 'gpu' is not one of cpu, cuda, cuda:N or mps"),
    ],
)
def test_ranges_lists_and_text(section: str, raw: dict, needle: str) -> None:
    cls = dict((s, c) for c, s in SECTIONS)[section]
    problems: list[str] = []
    parse_section(cls, raw, section, problems)
    assert len(problems) == 1 and needle in problems[0], problems


def test_good_values_at_the_edges_pass() -> None:
    problems: list[str] = []
    parse_section(TrainConfig, {"seed": SEED_MAX, "device": "cuda:1", "lr": 0}, "train", problems)
    parse_section(ModelConfig, {"dropout": 0.999, "width": 16384}, "model", problems)
    parse_section(DataConfig, {"modalities": ["text (BERT)", "äudio"], "classes": 100_000}, "data", problems)
    assert problems == []


@pytest.mark.parametrize("name", ["demo", "mosei_v2", "a.b-c", "X" * 100, "0day", "émigré", "研究-é", "хз.2", "हिन्दी", "Ωmega_٣", "研" * 66])
def test_study_names_that_follow_the_rules(name: str) -> None:
    assert name_problem(name, kind="study") is None


@pytest.mark.parametrize("name", [
    "", "x" * 101, "..", "a..b", ".hidden", "-flag", "_x", "a/b", "a\\b", "has space", "nul\x00", "tab\t", 7, None,
    "研" * 67,  # 201 bytes in UTF-8
    "e\u0301migre", "\u0301a",  # an accent as a combining mark (NFD): 'émigré' written otherwise
    "\ufb01le", "\uff21", "x\u00b2",  # NFKC makes them 'file', 'A', 'x2'
    "a\u200db", "\u202eab", "ab\ufeff", "a:b", "a*b", "~a",
])
def test_study_names_that_break_the_rules(name: object) -> None:
    problem = name_problem(name, kind="study")
    assert problem is not None and "letters and digits of any script, '.', '_' or '-'" in problem and "without '..'" in problem
    assert "NFKC" in problem


_NAME_CHARS = st.one_of(st.characters(codec="utf-8"), st.sampled_from(list("./\\-_ :é研\u0301\u200d\ufb01")))


@settings(max_examples=300, deadline=None)
@given(name=st.one_of(st.text(_NAME_CHARS, max_size=110), st.text(st.characters(categories=["L", "Nd"]), min_size=1, max_size=110)))
def test_an_accepted_study_name_is_one_safe_file_name(name: str) -> None:
    """Whatever is accepted names exactly one folder and one file on a real file system, reads
    the same after normalisation and holds nothing that a path, a shell option or a terminal
    would take as something else."""
    if name_problem(name, kind="study") is not None:
        return
    assert unicodedata.normalize("NFKC", name) == name and len(name.encode("utf-8")) <= 200
    assert not name.startswith(("-", ".")) and ".." not in name and all(unicodedata.category(c)[0] in "LNM" or c in "._-" for c in name)
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / name).mkdir()
        (Path(folder) / name / f"{name}.toml").write_text("")
        assert os.listdir(folder) == [name] and os.listdir(Path(folder) / name) == [f"{name}.toml"]


@settings(max_examples=200, deadline=None)
@given(text=st.text(st.characters(categories=["Lu", "Ll", "Lo", "Nd"]), min_size=1, max_size=60))
def test_letters_and_digits_of_any_script_are_accepted(text: str) -> None:
    name = unicodedata.normalize("NFKC", text)
    assume(all(c.isalnum() for c in name) and len(name.encode("utf-8")) <= 200 and len(name) <= 100)
    assert name_problem(name, kind="study") is None, name


@pytest.mark.parametrize("name", ["b->c", "", " text", "text ", "a\nb", "\x00", "x" * 65, 3])
def test_modality_names_that_break_the_rules(name: object) -> None:
    problem = name_problem(name, kind="modality")
    assert problem is not None and "without the path arrow '->'" in problem


def test_modality_name_lists() -> None:
    assert modality_names_problem(["text", "audio"]) is None
    assert "repeat ('a')" in (modality_names_problem(["a", "b", "a"]) or "")
    assert "1 modalities; give 2 to 16" in (modality_names_problem(["a"]) or "")
    assert "modality name 'b->c'" in (modality_names_problem(["a", "b->c"]) or "")


# --- whole study files ----------------------------------------------------------------------------------


def _study(tmp_path: Path, text: str, name: str = "s.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _problems(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_study(str(path))
    message = str(info.value)
    assert "\n" not in message
    return message


def test_an_empty_study_file_is_not_a_synthetic_study(tmp_path: Path) -> None:
    message = _problems(_study(tmp_path, ""))
    assert "1 problem: [data] is missing" in message and "source = one of synthetic, mmsa, meld, mfeat, npz" in message


def test_data_needs_an_explicit_source(tmp_path: Path) -> None:
    message = _problems(_study(tmp_path, "[data]\nseed = 3\n"))
    assert "[data] source is missing" in message
    assert load_study(str(_study(tmp_path, '[data]\nsource = "synthetic"\n', "ok.toml"))).data.source == "synthetic"


def test_every_problem_at_once_values_names_and_tables(tmp_path: Path) -> None:
    text = f"""name = "{'n' * 300}"
[data]
source = "synthetic"
modalities = ["a", "b->c", "c"]
valid_fraction = nan
[model]
width = 1000000000
dropout = 1.5
[train]
lr = inf
seed = -1
"""
    message = _problems(_study(tmp_path, text))
    assert "7 problems" in message, message
    for needle in (
        "(got 300 characters)",
        "modality name 'b->c'",
        "[data] valid_fraction = nan must be a finite number",
        "[model] width = 1000000000 must be at most 16384",
        "[model] dropout = 1.5 must be less than 1.0",
        "[train] lr = inf must be a finite number",
        "[train] seed = -1 must be at least 0",
    ):
        assert needle in message, needle


def test_the_file_name_is_checked_when_it_names_the_study(tmp_path: Path) -> None:
    message = _problems(_study(tmp_path, '[data]\nsource = "synthetic"\n', "my study.toml"))
    assert "the file name 'my study.toml'" in message and "must have 1 to 100 characters" in message
    named = _study(tmp_path, 'name = "fine"\n[data]\nsource = "synthetic"\n', "my other study.toml")
    assert load_study(str(named)).name == "fine"


def test_classes_apply_to_npz_only(tmp_path: Path) -> None:
    message = _problems(_study(tmp_path, '[data]\nsource = "synthetic"\nclasses = 3\n'))
    assert "[data] classes only applies to source = 'npz'" in message


def test_classes_left_out_keeps_the_study_sha256(tmp_path: Path) -> None:
    """``classes`` came later: a study that does not use it keeps the SHA-256 its checkpoint has."""
    a = load_study(str(_study(tmp_path, '[data]\nsource = "synthetic"\n', "a.toml")))
    assert "classes" not in a.supernet_config()["data"]
    npz = tmp_path / "d.npz"
    with_classes = load_study(str(_study(tmp_path, f'[data]\nsource = "npz"\npath = "{npz}"\nclasses = 5\n', "b.toml")))
    assert with_classes.supernet_config()["data"]["classes"] == 5


def _npz(path: Path, labels: np.ndarray) -> Path:
    arrays = {"modalities": np.array(["a", "b"])}
    for split in ("train", "test"):
        arrays[f"{split}/a"] = np.zeros((len(labels), 4, 3), np.float32)
        arrays[f"{split}/b"] = np.zeros((len(labels), 5), np.float32)
        arrays[f"{split}/label"] = labels
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize(
    ("labels", "metric", "needle"),
    [
        (np.linspace(-1, 1, 10), "accuracy", "labels of data.npz are floats (regression targets): store integer class ids"),
        (np.arange(10) % 2, "acc_7", "labels of data.npz are integers (class ids): store floats for regression"),
    ],
)
def test_an_npz_metric_of_the_other_task_is_refused_from_the_headers(tmp_path: Path, labels, metric: str, needle: str) -> None:
    _npz(tmp_path / "data.npz", labels)
    message = _problems(_study(tmp_path, f'[data]\nsource = "npz"\npath = "data.npz"\n[search]\nmetric = "{metric}"\n'))
    assert needle in message


def test_the_task_of_an_npz_study_comes_from_its_labels_header(tmp_path: Path) -> None:
    _npz(tmp_path / "reg.npz", np.linspace(-1, 1, 10))
    _npz(tmp_path / "cls.npz", np.arange(10) % 3)
    reg = load_study(str(_study(tmp_path, '[data]\nsource = "npz"\npath = "reg.npz"\n', "reg.toml")))
    cls = load_study(str(_study(tmp_path, '[data]\nsource = "npz"\npath = "cls.npz"\n', "cls.toml")))
    assert (task_of(reg), task_of(cls)) == ("regression", "classification")
    missing = load_study(str(_study(tmp_path, '[data]\nsource = "npz"\npath = "later.npz"\n', "later.toml")))
    assert task_of(missing) is None and any("does not exist yet" in n for n in missing.notes)


def test_a_corrupt_npz_header_is_a_problem_of_the_study(tmp_path: Path) -> None:
    (tmp_path / "data.npz").write_bytes(b"PK\x03\x04" + b"\x00" * 40)
    message = _problems(_study(tmp_path, '[data]\nsource = "npz"\npath = "data.npz"\n'))
    assert "[data] path:" in message and "not a readable .npz" in message


def test_a_study_larger_than_the_machine_is_refused_whatever_runs_now(tmp_path: Path) -> None:
    text = '[data]\nsource = "synthetic"\n[model]\nwidth = 16384\nheads = 16\nlayers_per_path = 64\nffn_mult = 64\n'
    message = _problems(_study(tmp_path, text))
    assert "TiB of memory but this machine has" in message and "in total" in message
    # the same model on a GPU: its memory is not this machine's, training checks it when it starts
    assert load_study(str(_study(tmp_path, text + '[train]\ndevice = "cuda"\n', "gpu.toml"))).model.width == 16384


def test_synthetic_data_larger_than_the_machine_is_refused(tmp_path: Path) -> None:
    text = '[data]\nsource = "synthetic"\ndims = [65536, 65536, 65536]\nlength = 8\nsamples = [10000000, 10, 10]\n'
    assert "needs about" in _problems(_study(tmp_path, text))
