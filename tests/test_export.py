"""`mro-search export`: a standalone subnet that reproduces the supernet and loads with torch alone."""

from __future__ import annotations

import json
import os
import re
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
    [(["--trial", "999"], "has no trial 999"), (["--trial", "0", "--finetune-epochs", "-1"], "--finetune-epochs: must be an integer from 0 to")],
)
def test_cli_export_errors_are_one_line(tiny_search: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], needle: str) -> None:
    try:
        code = main(["export", "--study", str(tiny_search.path), "--storage", tiny_search.url, "-o", str(tmp_path / "x"), *extra])
    except SystemExit as exc:  # argparse refuses a bad number before the command runs
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and needle in err
    assert not (tmp_path / "x").exists()


# --- names in generated text, and where the export may go ------------------------------------------

CRAFTED = [
    "x'); import os; os.system('touch pwned'); ('",
    'y"); open("pwned", "w"); ("',
    "line\nbreak```\n```python\nopen('pwned', 'w')\n#",
    "a|b`c <script>open('pwned','w')</script>",
]


def test_readme_example_runs_and_names_stay_data(make_model, tmp_path: Path) -> None:
    """A model whose modality names are code (built directly: study files refuse such names, the
    generated text must be safe regardless). The README's example runs as it is, in a fresh
    process, and nothing in it runs a name; model.py holds no name at all."""
    from search_service._subnet_template import MODEL_PY
    from search_service.export import write_export
    from supernet.data.dataset import ModalitySpec

    specs = (ModalitySpec(CRAFTED[0], 5, 6), ModalitySpec(CRAFTED[1], 10, None), ModalitySpec(CRAFTED[2], 7, 4), ModalitySpec(CRAFTED[3], 3, 2))
    model = make_model(specs).eval()
    mask = (1,) * model.num_paths
    config = {**architecture_config(model, mask), "study": "it's `a` study\n# heading", "trial": 0, "mflops": 1.0}
    folder = tmp_path / "out dir 'quoted'" / "subnet"
    write_export(folder, config, {"metrics": {"accuracy": 0.5}}, subnet_state_dict(model, mask))

    assert (folder / "model.py").read_text() == MODEL_PY
    readme = (folder / "README.md").read_text()
    blocks = re.findall(r"^```python\n(.*?)\n^```$", readme, re.S | re.M)
    assert len(blocks) == 1 and readme.count("\n```") == 2  # no name opened or closed a block
    outside = re.sub(r"^```python\n.*?\n^```$", "", readme, flags=re.S | re.M)
    assert [line for line in outside.splitlines() if line.startswith("#")] == [outside.splitlines()[0]]  # one heading: the title
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", blocks[0] + "\nprint(tuple(out.shape))"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "(2, 3)"
    assert not list(tmp_path.rglob("pwned")), "a name ran as code"
    config_back = json.loads((folder / "config.json").read_text())
    assert [m["name"] for m in config_back["modalities"]] == CRAFTED


def test_markdown_code_spans() -> None:
    from search_service.export import md_cell, md_code

    assert md_code("text->audio") == "`text->audio`"
    assert md_code("a`b") == '``"a`b"``' and md_code("``") == '```"``"```'
    assert md_code("two\nlines") == '`"two\\nlines"`' and "\n" not in md_code("x\r\ny")
    assert md_cell("a|b") == '`"a\\|b"`'


def test_special_targets_are_refused_before_any_work(exported, tiny_search: Any, tmp_path: Path) -> None:
    import stat

    from supernet.errors import OutputError

    _, trial, _ = exported
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    for target, words in ((fifo, "is a FIFO (named pipe), not a folder"), (Path("/dev/null"), "is a character device, not a folder"), (Path("/proc/subnet"), "pseudo file system")):
        with pytest.raises(OutputError, match=re.escape(words)):
            export_trial(tiny_search.search, tiny_search.evaluator, trial.number, target)
    assert stat.S_ISFIFO(fifo.stat().st_mode)
    # a special file under one of the export's names, even with --force
    folder = tmp_path / "subnet"
    folder.mkdir()
    os.mkfifo(folder / "README.md")
    with pytest.raises(OutputError, match=r"README\.md: it is a FIFO"):
        export_trial(tiny_search.search, tiny_search.evaluator, trial.number, folder, force=True)
    assert [p.name for p in folder.iterdir()] == ["README.md"] and stat.S_ISFIFO((folder / "README.md").stat().st_mode)
