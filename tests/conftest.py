"""Shared fixtures: tiny supernets and random inputs for them.

The factories are fixtures returning callables, so test modules need no imports from here.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
import torch

from supernet.config import ModelConfig
from supernet.data.dataset import ModalitySpec, Split
from supernet.model import Supernet, SupernetSpec

# A suite started in the background by a non-interactive shell (`sh -c 'pytest &'`) inherits SIGINT
# ignored, and so would every mro-search process the tests start: the Ctrl-C tests need it delivered.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

DISRUPTIVE_ENV = "MRO_TEST_DISRUPTIVE"  # =1: run the tests that stop and restart the PostgreSQL server


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``disruptive`` stop and restart the machine's PostgreSQL server: they run only
    when asked for, with ``-m disruptive`` (or any -m expression naming them) or
    ``MRO_TEST_DISRUPTIVE=1`` (``.ci/run`` sets it: CI runs on a machine of its own)."""
    if os.environ.get(DISRUPTIVE_ENV) == "1" or "disruptive" in (config.getoption("markexpr", "") or ""):
        return
    skip = pytest.mark.skip(reason=f"restarts the PostgreSQL server: run with -m disruptive or {DISRUPTIVE_ENV}=1")
    for item in items:
        if "disruptive" in item.keywords:
            item.add_marker(skip)


# Mixed modalities: sequences of different lengths and widths, and one vector modality.
SEQ_A = ModalitySpec("text", 6, 5)
SEQ_B = ModalitySpec("audio", 4, 7)
VEC_C = ModalitySpec("view", 10, None)  # cut into tokens
SEQ_D = ModalitySpec("vision", 3, 4)

MODALITY_SETS: dict[int, tuple[ModalitySpec, ...]] = {
    2: (SEQ_A, VEC_C),
    3: (SEQ_A, SEQ_B, VEC_C),
    4: (SEQ_A, SEQ_B, VEC_C, SEQ_D),
}

MakeModel = Callable[..., Supernet]
MakeInputs = Callable[..., tuple[list[torch.Tensor], list[torch.Tensor | None]]]
MakeSplit = Callable[..., Split]


def _model(
    modalities: Sequence[ModalitySpec] = MODALITY_SETS[3],
    *,
    task: str = "classification",
    output_dim: int | None = None,
    seed: int = 0,
    **cfg: Any,
) -> Supernet:
    settings: dict[str, Any] = {
        "width": 16,
        "heads": 2,
        "ffn_mult": 2,
        "dropout": 0.0,
        "vector_tokens": 4,
    }
    settings.update(cfg)
    if output_dim is None:
        output_dim = 3 if task == "classification" else 1
    torch.manual_seed(seed)
    return Supernet(SupernetSpec(tuple(modalities), task, output_dim), ModelConfig(**settings))


def _inputs(
    modalities: Sequence[ModalitySpec],
    batch: int = 3,
    *,
    seed: int = 0,
    variable: bool = False,
) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
    """Random features; with ``variable``, random lengths (1..L, at least one sample full and one
    short) for every sequence modality, None for vectors."""
    g = torch.Generator().manual_seed(seed)
    features: list[torch.Tensor] = []
    lengths: list[torch.Tensor | None] = []
    for m in modalities:
        if m.is_sequence:
            assert m.length is not None
            features.append(torch.randn(batch, m.length, m.dim, generator=g))
            if variable:
                n = torch.randint(1, m.length + 1, (batch,), generator=g)
                n[0] = m.length
                n[-1] = max(1, m.length - 2)
                lengths.append(n)
            else:
                lengths.append(None)
        else:
            features.append(torch.randn(batch, m.dim, generator=g))
            lengths.append(None)
    return features, lengths


def _split(
    modalities: Sequence[ModalitySpec],
    n: int = 20,
    *,
    task: str = "classification",
    classes: int = 3,
    seed: int = 0,
    variable: bool = False,
) -> Split:
    features, lengths = _inputs(modalities, n, seed=seed, variable=variable)
    g = torch.Generator().manual_seed(seed + 1)
    if task == "classification":
        labels = torch.randint(0, classes, (n,), generator=g)
    else:
        labels = (torch.rand(n, generator=g) * 6 - 3).float()
    return Split(
        features={m.name: f for m, f in zip(modalities, features)},
        labels=labels,
        lengths={m.name: ln for m, ln in zip(modalities, lengths) if ln is not None},
    )


@pytest.fixture
def make_model() -> MakeModel:
    return _model


@pytest.fixture
def make_inputs() -> MakeInputs:
    return _inputs


@pytest.fixture
def make_split() -> MakeSplit:
    return _split


@pytest.fixture
def modality_sets() -> dict[int, tuple[ModalitySpec, ...]]:
    return MODALITY_SETS


@pytest.fixture
def single_thread() -> Iterator[None]:
    """Run torch on one thread for the test. The tensors here are tiny, and on a busy 2-core
    machine OpenMP's spinning threads make them tens of times slower than one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# --- a tiny searched study, shared by the report, dashboard and export tests ----------------------

TINY_SEARCH_STUDY = """\
# mro-search run --study {path}
name = "tinysearch"

[data]
source = "synthetic"
samples = [64, 32, 32]

[model]
width = 16
heads = 2
ffn_mult = 2
dropout = 0.0
vector_tokens = 4

[train]
epochs = 1
warmup_epochs = 1
batch_size = 32
seed = 0

[search]
metric = "accuracy"
trials = 10
n_startup_trials = 10
run_dir = "{run_dir}"
"""


@pytest.fixture(scope="session")
def tiny_search(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A real study made by the service: a supernet trained for one epoch on 64 synthetic
    samples, then 10 trials in SQLite. Attributes: ``path`` (the study file), ``url``, ``study``,
    ``evaluator``, ``search``."""
    from types import SimpleNamespace

    from search_service.creation import create_search
    from search_service.evaluator import Evaluator, train_study
    from search_service.search import run_worker
    from search_service.study_file import load_study

    folder = tmp_path_factory.mktemp("tinysearch")
    path = folder / "tinysearch.toml"
    path.write_text(TINY_SEARCH_STUDY.format(path=path, run_dir=folder / "run"))
    url = f"sqlite:///{folder / 'run' / 'study.db'}"
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        study = load_study(str(path))
        train_study(study, progress=False)
        evaluator = Evaluator(study)
        search = create_search(study, url, evaluator)
        run_worker(search, evaluator, seed=0)
    finally:
        torch.set_num_threads(before)
    return SimpleNamespace(path=path, url=url, study=study, evaluator=evaluator, search=search)
