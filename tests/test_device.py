"""Device and precision: ``auto`` resolves to what this machine has (the CPU here), an explicit
device it lacks is one clear error, ``--device`` is a flag of every command that trains or
scores, the device is not part of a checkpoint's identity, and the GPU-only training settings
(bf16, batched paths, CUDA graph) behave on the CPU as documented."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from search_service.cli import build_parser, main
from supernet.checkpoint import checkpoint_identity, load_checkpoint, save_checkpoint
from supernet.config import DataConfig, ModelConfig, TrainConfig
from supernet.data import load_data
from supernet.device import resolve_device, resolve_precision
from supernet.errors import ConfigError
from supernet.train import train_supernet, use_batched_paths

pytestmark = pytest.mark.usefixtures("single_thread")

STUDY = """\
name = "tiny"

[data]
source = "synthetic"
dims = [17, 9, 8]
length = 4
samples = [64, 32, 32]
seed = 0

[model]
width = 16
heads = 2
ffn_mult = 1
dropout = 0.0

[train]
epochs = 1
warmup_epochs = 1
batch_size = 32
{device}
[search]
run_dir = "{run_dir}"
"""


def _study(folder: Path, run_dir: Path, device: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "tiny.toml"
    path.write_text(STUDY.format(device=f'device = "{device}"\n' if device else "", run_dir=run_dir))
    return path


def _data():
    return load_data(DataConfig(dims=[17, 9, 8], length=4, samples=[64, 32, 32], seed=0))


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(**{"epochs": 1, "warmup_epochs": 1, "batch_size": 16, "rank_every": 2, "rank_masks": 4, **kw})


MODEL = ModelConfig(width=16, heads=2, ffn_mult=1, dropout=0.0)


def _state(result) -> dict[str, torch.Tensor]:
    return {**{f"model.{k}": v for k, v in result.model.state_dict().items()},
            **{f"prior.{k}": v for k, v in result.prior.state_dict().items()}}


def test_auto_is_the_default_and_resolves_to_the_cpu_here() -> None:
    assert TrainConfig().device == "auto" and TrainConfig().precision == "auto"
    device, why = resolve_device("auto")
    assert device == torch.device("cpu") and why == "auto: no CUDA or MPS device"
    assert resolve_device("cpu") == (torch.device("cpu"), "[train] device = cpu")
    # precision: auto is bf16 on CUDA only; bf16 is honoured anywhere when asked for
    assert resolve_precision("auto", torch.device("cpu")) is None
    assert resolve_precision("auto", torch.device("cuda")) is torch.bfloat16
    assert resolve_precision("fp32", torch.device("cuda")) is None
    assert resolve_precision("bf16", torch.device("cpu")) is torch.bfloat16


@pytest.mark.parametrize("setting", ["cuda", "cuda:1", "mps"])
def test_an_explicit_device_this_machine_lacks_is_one_clear_error(setting: str) -> None:
    with pytest.raises(ConfigError) as err:
        resolve_device(setting, where="--device")
    message = str(err.value)
    assert message.startswith(f"--device '{setting}' is not available: ") and message.endswith("use 'auto' or 'cpu'")
    assert "\n" not in message
    with pytest.raises(ConfigError, match="puts every torchrun rank on one GPU"):
        resolve_device("cuda:0", local_rank=1)


@pytest.mark.parametrize(
    "command",
    [["train", "--study", "x"], ["run", "--study", "x"], ["worker", "--study", "x"],
     ["evaluate", "--study", "x", "--mask", "1"], ["export", "--study", "x", "--trial", "0", "-o", "d", "--finetune-epochs", "1"]],
)
def test_every_command_that_trains_or_scores_takes_device(command: list[str], capsys) -> None:
    for value in ("auto", "cpu", "cuda", "cuda:3", "mps"):
        assert build_parser().parse_args([*command, "--device", value]).device == value
    assert build_parser().parse_args(command).device is None  # the study's [train] device
    with pytest.raises(SystemExit) as stop:
        build_parser().parse_args([*command, "--device", "gpu"])
    assert stop.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "--device: must be auto, cpu, cuda, cuda:N or mps, got 'gpu'" in lines[0]


def test_train_with_cuda_here_fails_in_one_line(tmp_path: Path, capsys) -> None:
    study = _study(tmp_path, tmp_path / "runs")
    assert main(["train", "--study", str(study), "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["mro-search: error: --device 'cuda' is not available: this machine's torch sees no CUDA device; use 'auto' or 'cpu'"]
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").rglob("*.pt"))


def test_the_device_is_not_part_of_a_checkpoints_identity(tmp_path: Path, capsys) -> None:
    """Trained with device = auto (the default) and --device cpu: the same checkpoint; a study
    file that says device = "cpu" (files written before auto existed) evaluates it."""
    run_dir = tmp_path / "runs"
    auto = _study(tmp_path / "auto", run_dir)
    assert main(["train", "--study", str(auto), "--json"]) == 0
    out = capsys.readouterr()
    assert "device: cpu (auto: no CUDA or MPS device)" in out.err
    first = __import__("json").loads(out.out)
    assert main(["train", "--study", str(auto), "--device", "cpu", "--json"]) == 0
    second = __import__("json").loads(capsys.readouterr().out)
    assert second["identity"] == first["identity"] and second["new"] is False
    old_style = _study(tmp_path / "cpu", run_dir, device="cpu")
    assert main(["evaluate", "--study", str(old_style), "--mask", "111111", "--json"]) == 0
    out = capsys.readouterr()
    assert __import__("json").loads(out.out)["checkpoint"] == first["identity"]
    assert "device: cpu ([train] device = cpu)" in out.err
    assert main(["evaluate", "--study", str(auto), "--mask", "111111", "--device", "cpu", "--direct"]) == 0
    assert "device: cpu (--device = cpu)" in capsys.readouterr().err


def test_a_checkpoint_of_moved_tensors_loads_with_weights_only(tmp_path: Path) -> None:
    """Tensors moved between dtypes and layouts (as a GPU run in bf16 leaves them: views,
    non-contiguous storage) are saved as plain CPU copies and load with weights_only=True, on
    the device asked for, with the same identity."""
    result = train_supernet(_data(), MODEL, _cfg(), progress=False)
    model, prior = result.model, result.prior
    reference = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:  # a transposed view of a transposed copy: the same values, other strides
                p.data = p.data.t().contiguous().t()
            else:  # through bf16's storage and back would round: round trip through float64
                p.data = p.data.double().float()
    assert any(not p.is_contiguous() for p in model.parameters())
    path = save_checkpoint(tmp_path / "moved.pt", model, prior, {"data": {}, "model": {}})
    payload = torch.load(path, weights_only=True)
    assert all(t.device.type == "cpu" for t in payload["model"].values())
    for location in ("cpu", torch.device("cpu")):
        loaded = load_checkpoint(path, map_location=location)
        assert next(loaded.model.parameters()).device == torch.device("cpu")
        for k, v in loaded.model.state_dict().items():
            assert torch.equal(v, reference[k]), k
    assert loaded.identity == checkpoint_identity(reference, prior.state_dict(), {"data": {}, "model": {}})


def test_bf16_on_the_cpu_when_asked_for() -> None:
    data = _data()
    plain = train_supernet(data, MODEL, _cfg(), progress=False)
    bf16 = train_supernet(data, MODEL, _cfg(precision="bf16"), progress=False)
    lines: list[str] = []
    train_supernet(data, MODEL, _cfg(precision="bf16", epochs=1), progress=False, log=lines.append)
    assert "; precision bf16 autocast;" in lines[0]  # then what the prior learns from (supernet.rank_data)
    loss_fp32, loss_bf16 = plain.history[0]["train_loss"], bf16.history[0]["train_loss"]
    assert loss_bf16 != loss_fp32 and loss_bf16 == pytest.approx(loss_fp32, rel=0.05)  # bf16 rounds: close, not equal


def test_batched_paths_train_the_same_supernet() -> None:
    """``batched_paths = true`` (all paths as one batched op) trains what the path-by-path loop
    trains, up to float rounding (dropout 0: no random draws differ); auto is off on the CPU."""
    data = _data()
    cpu = torch.device("cpu")
    assert not use_batched_paths(_cfg(per_sample_masks=True), cpu)
    assert use_batched_paths(_cfg(per_sample_masks=True), torch.device("cuda"))
    assert use_batched_paths(_cfg(per_sample_masks=True, batched_paths=True), cpu)
    assert not use_batched_paths(_cfg(batched_paths=True), cpu)  # per-sample masks only
    loop = _state(train_supernet(data, MODEL, _cfg(per_sample_masks=True, batched_paths=False), progress=False))
    batched = _state(train_supernet(data, MODEL, _cfg(per_sample_masks=True, batched_paths=True), progress=False))
    assert any(not torch.equal(loop[k], batched[k]) for k in loop)  # another computation, really run
    # the supernet's weights; the prior's rank loss ranks mask losses, where float rounding may
    # swap two near-equal losses, so the prior is not compared
    for k in (k for k in loop if k.startswith("model.")):
        torch.testing.assert_close(batched[k], loop[k], atol=1e-4, rtol=1e-3, msg=k)


def test_cuda_graph_is_ignored_with_a_note_on_the_cpu() -> None:
    data = _data()
    lines: list[str] = []
    graph = train_supernet(data, MODEL, _cfg(per_sample_masks=True, cuda_graph=True), progress=False, log=lines.append)
    assert "[train] cuda_graph ignored: it needs a CUDA device, this run trains on cpu" in lines
    plain = train_supernet(data, MODEL, _cfg(per_sample_masks=True), progress=False)
    a, b = _state(graph), _state(plain)
    assert all(torch.equal(a[k], b[k]) for k in a)
