"""`mro-search export`: a standalone subnet that reproduces the supernet and loads with torch alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from fvcore.nn import FlopCountAnalysis

from search_service.cli import main
from search_service.export import (
    architecture_config,
    build_subnet,
    export_trial,
    load_module,
    subnet_state_dict,
)
from supernet.flops import example_inputs, sdpa_flop_jit
from supernet.paths import parse_mask

FILES = {"model.py", "weights.pt", "config.json", "metrics.json", "README.md"}


def _smallest_trial(search) -> Any:
    """A complete trial with few paths, preferring one that leaves a modality untouched."""
    complete = [t for t in search.optuna_study.trials if t.state.name == "COMPLETE"]
    return min(complete, key=lambda t: (len(set("".join(t.user_attrs["active_paths"]).replace("->", " ").split())), t.user_attrs["mask"].count("1")))


@pytest.fixture(scope="module")
def exported(tiny_search: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any, tuple[int, ...]]:
    trial = _smallest_trial(tiny_search.search)
    folder = tmp_path_factory.mktemp("export") / "subnet"
    result = export_trial(tiny_search.search, tiny_search.evaluator, trial.number, folder)
    assert result["max_abs_difference_vs_supernet"] <= 1e-5
    return folder, trial, parse_mask(trial.user_attrs["mask"], 6)


def test_files_and_config(exported, tiny_search: Any) -> None:
    folder, trial, mask = exported
    assert FILES <= {p.name for p in folder.iterdir()}
    config = json.loads((folder / "config.json").read_text())
    assert config["mask"] == trial.user_attrs["mask"] and config["trial"] == trial.number
    assert config["active_paths"] == trial.user_attrs["active_paths"]
    assert [p["name"] for p in config["paths"]] == config["active_paths"]
    assert [m["name"] for m in config["modalities"]] == ["text", "audio", "vision"]
    assert config["model"]["width"] == 16 and config["model"]["heads"] == 2 and config["task"] == "classification"
    assert config["objectives"] == {"accuracy": trial.values[0], "mflops": trial.values[1]}
    assert "import model" in (folder / "README.md").read_text()


def test_weights_hold_only_the_active_paths(exported, tiny_search: Any) -> None:
    folder, _, mask = exported
    model = tiny_search.evaluator.model
    state = torch.load(folder / "weights.pt", weights_only=True)
    used = set(model.modalities_of(mask))
    for key in state:
        part, index = key.split(".")[:2]
        if part == "paths":
            assert mask[int(index)], f"{key}: parameter of an inactive path"
        elif part == "embeddings":
            assert int(index) in used, f"{key}: embedding of a modality no active path touches"
        else:
            assert part == "head", key
    supernet = model.state_dict()
    for key, value in state.items():
        assert torch.equal(value, supernet[key])
    assert sum(v.numel() for v in state.values()) == model.num_parameters(mask)
    assert any(not bit for bit in mask)  # the check above is not vacuous


def test_one_path_keeps_two_embeddings_and_the_head(tiny_search: Any) -> None:
    model = tiny_search.evaluator.model
    state = subnet_state_dict(model, (0, 0, 1, 0, 0, 0))  # audio->text: vision is not read
    prefixes = {".".join(k.split(".")[:2]) if not k.startswith("head.") else "head" for k in state}
    assert prefixes == {"paths.2", "embeddings.0", "embeddings.1", "head"}


@pytest.mark.parametrize(
    ("k", "settings"),
    [
        (3, {"head": "linear", "pooling": "mean"}),
        (3, {"head": "mlp", "pooling": "max", "task": "regression"}),
        (4, {"layers_per_path": 2, "pooling": "max"}),
        (2, {"head": "mlp", "task": "regression", "layers_per_path": 2}),
    ],
)
def test_standalone_subnet_equals_masked_supernet(make_model, make_inputs, modality_sets, k: int, settings: dict) -> None:
    """Every head, pooling, task and depth; sequences with padding and a vector modality."""
    modalities = modality_sets[k]
    model = make_model(modalities, seed=k, **settings).eval()
    features, lengths = make_inputs(modalities, 5, seed=k, variable=True)
    g = torch.Generator().manual_seed(k)
    for _ in range(4):
        mask = tuple(int(b) for b in torch.randint(0, 2, (model.num_paths,), generator=g))
        if not any(mask):
            continue
        subnet = build_subnet(architecture_config(model, mask), subnet_state_dict(model, mask))
        with torch.no_grad():
            expected = model(features, mask, lengths)
            got = subnet(features, lengths)
        assert got.shape == expected.shape
        assert torch.allclose(got, expected, atol=1e-5, rtol=0)
        assert sum(v.numel() for v in subnet.state_dict().values()) == model.num_parameters(mask)


def test_metrics_match_the_supernet(exported, tiny_search: Any) -> None:
    folder, _, mask = exported
    metrics = json.loads((folder / "metrics.json").read_text())
    reference = tiny_search.evaluator.evaluate(mask, "test")
    assert metrics["split"] == "test" and metrics["finetune_epochs"] == 0
    assert metrics["metrics"] == pytest.approx(reference["metrics"])
    assert metrics["mflops"] == pytest.approx(reference["mflops"])
    assert metrics["params"] == reference["params"]


def test_fvcore_counts_the_exported_model_as_the_flop_table_prices_its_mask(exported, tiny_search: Any) -> None:
    folder, _, mask = exported
    module = load_module((folder / "model.py").read_text())
    subnet = module.load(folder)

    class Wrapped(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.subnet = subnet

        def forward(self, *features: torch.Tensor) -> torch.Tensor:
            return self.subnet(list(features))

    analysis = FlopCountAnalysis(Wrapped(), example_inputs(tiny_search.evaluator.model))
    analysis.set_op_handle("aten::scaled_dot_product_attention", sdpa_flop_jit)
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    assert analysis.total() == tiny_search.evaluator.flops.flops(mask)


def test_fresh_process_loads_it_with_torch_only_and_matches_the_supernet(exported, tiny_search: Any, tmp_path: Path) -> None:
    folder, _, mask = exported
    model = tiny_search.evaluator.model
    split = tiny_search.evaluator.data.splits["test"]
    g = torch.Generator().manual_seed(1)
    features = [split.features[m.name][:16] for m in model.spec.modalities]
    lengths = [torch.randint(1, m.length + 1, (16,), generator=g) if m.is_sequence else None for m in model.spec.modalities]
    with torch.no_grad():
        expected = model(features, mask, lengths)  # the supernet's masked forward, padding honoured
        expected_full = model(features, mask)
    names = [m.name for m in model.spec.modalities]
    used = set(model.modalities_of(mask))
    torch.save(
        {
            "features": features,
            "lengths": lengths,
            "by_name": {names[m]: features[m] for m in used},  # only what the subnet reads
            "expected": expected,
            "expected_full": expected_full,
        },
        tmp_path / "case.pt",
    )
    script = textwrap.dedent(
        f"""
        import json, sys
        sys.path.insert(0, {str(folder)!r})
        import torch
        import model
        m = model.load({str(folder)!r})
        case = torch.load({str(tmp_path / 'case.pt')!r}, weights_only=True)
        with torch.no_grad():
            a = (m(case["features"], case["lengths"]) - case["expected"]).abs().max().item()
            b = (m(case["by_name"]) - case["expected_full"]).abs().max().item()
        print(json.dumps({{"diff": a, "diff_by_name": b, "training": m.training,
                          "leaked": sorted(n for n in sys.modules if n.split(".")[0] in ("supernet", "search_service"))}}))
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["leaked"] == []  # 'supernet' not in sys.modules: torch alone did it
    assert result["diff"] <= 1e-5 and result["diff_by_name"] <= 1e-5
    assert result["training"] is False


def test_cli_export_with_finetuning(exported, tiny_search: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, trial, mask = exported
    folder = tmp_path / "tuned"
    argv = ["export", "--study", str(tiny_search.path), "--storage", tiny_search.url, "--trial", str(trial.number), "-o", str(folder), "--finetune-epochs", "1", "-q"]
    assert main([*argv, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["finetune_epochs"] == 1 and len(metrics["finetune_history"]) == 1
    assert set(metrics["before_finetune"]) == set(metrics["after_finetune"]) == {"accuracy", "f1_weighted", "f1_macro"}
    assert metrics["metrics"] == metrics["after_finetune"] == result["after_finetune"]
    assert metrics["before_finetune"] == pytest.approx(tiny_search.evaluator.evaluate(mask, "test")["metrics"])
    tuned = torch.load(folder / "weights.pt", weights_only=True)
    supernet = tiny_search.evaluator.model.state_dict()
    assert set(tuned) == set(torch.load(exported[0] / "weights.pt", weights_only=True))
    assert any(not torch.equal(v, supernet[k]) for k, v in tuned.items())  # it did train
    subnet = load_module((folder / "model.py").read_text()).load(folder)
    assert not subnet.training

    # a second export into the same folder needs --force
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--force" in err


@pytest.mark.parametrize(
    ("extra", "needle"),
    [(["--trial", "999"], "has no trial 999"), (["--trial", "0", "--finetune-epochs", "-1"], "--finetune-epochs must be 0 or more")],
)
def test_cli_export_errors_are_one_line(tiny_search: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], needle: str) -> None:
    code = main(["export", "--study", str(tiny_search.path), "--storage", tiny_search.url, "-o", str(tmp_path / "x"), *extra])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and needle in err
    assert not (tmp_path / "x").exists()
