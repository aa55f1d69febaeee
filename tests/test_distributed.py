"""Data-parallel training under torchrun (``supernet.distributed``), on this machine's CPU with
gloo: ``torchrun --nproc-per-node=2 --no-python mro-search train`` as a user runs it, the
checkpoint it writes evaluated, and its loss curve against one process with the whole batch.

Why the two agree, and to what tolerance: ``[train] batch_size`` is the global batch, both ranks
draw the same order and the same masks (here one per sample, ``per_sample_masks``: each rank
takes its samples' masks), and the gradients are averaged weighted by each rank's share, so the
two runs compute the same sums in another order (float32 rounding, ~1e-7 relative). Dropout is
0, so no random draw differs. The batch of 21 splits 11/10 and the last batch of 1 leaves rank 1
an empty share: uneven and empty shares are exercised. Measured on this machine: the loss curve
agrees to 1e-7 relative, every weight to 2.2e-7 except the key half of the attention's key/value
bias, whose true gradient is exactly zero (softmax ignores a shift shared by all keys): AdamW
divides that gradient's rounding noise by its own size and steps ±lr either way (up to 3e-4
apart), without changing any output; the prior's log-probabilities agree to 1e-6 (with one mask
per batch, ``masks_per_step``, checked by hand the same way: the same, the prior to 1e-3, as Adam
at lr 0.02 amplifies its near-zero gradients alike). The tolerances below are about ten times
those; a per-rank batch (one process with batch 42) misses them by far.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from search_service.cli import main
from search_service.evaluator import load_study_data
from search_service.study_file import load_study
from supernet.checkpoint import latest_checkpoint, load_checkpoint
from supernet.distributed import Distributed
from supernet.paths import all_masks
from supernet.train import train_supernet

pytestmark = pytest.mark.usefixtures("single_thread")

BIN = Path(sys.executable).parent
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
epochs = 4
warmup_epochs = 1
batch_size = 21
rank_every = 2
rank_masks = 6
per_sample_masks = true

[search]
run_dir = "{run_dir}"
"""


@given(n=st.integers(0, 500), world=st.integers(1, 16))
def test_shares_split_a_batch_contiguously_and_evenly(n: int, world: int) -> None:
    shares = [Distributed(rank=r, world_size=world).shard(n) for r in range(world)]
    rows = [i for s in shares for i in range(n)[s]]
    assert rows == list(range(n))
    sizes = [s.stop - s.start for s in shares]
    assert max(sizes) - min(sizes) <= 1


def train_two_ranks(study: Path, cwd: Path) -> subprocess.CompletedProcess:
    """``torchrun --nproc-per-node=2 mro-search train --study STUDY --json`` as a real subprocess
    (gloo, one torch thread per rank); it must succeed."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("MRO_STORAGE", None)
    out = subprocess.run(
        [str(BIN / "torchrun"), "--nproc-per-node=2", "--no-python", str(BIN / "mro-search"), "train", "--study", str(study), "--json"],
        capture_output=True, text=True, timeout=300, env=env, cwd=cwd,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    """The tiny study trained by two gloo ranks under torchrun, as a real subprocess."""
    folder = tmp_path_factory.mktemp("ddp")
    study = folder / "tiny.toml"
    study.write_text(STUDY.format(run_dir=folder / "runs"))
    return study, train_two_ranks(study, folder)


def test_two_ranks_write_one_checkpoint_that_evaluate_uses(two_ranks, capsys) -> None:
    study, out = two_ranks
    summary = json.loads(out.stdout)  # rank 0 alone prints: exactly one JSON object
    assert summary["epochs"] == 4 and summary["new"] is True
    assert out.stderr.count("device: cpu (auto: no CUDA or MPS device); precision fp32, 2 ranks (torchrun)") == 1
    assert out.stderr.count("epoch 4/4") == 1  # only rank 0 logs
    files = sorted((study.parent / "runs" / "checkpoints").glob("*.pt"))
    assert [f.name for f in files] == [Path(summary["checkpoint"]).name]
    assert latest_checkpoint(study.parent / "runs") == files[0]
    assert main(["evaluate", "--study", str(study), "--mask", "101101", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["checkpoint"] == summary["identity"] and 0.0 <= result["metrics"]["accuracy"] <= 1.0


def test_two_ranks_with_half_the_batch_follow_one_process_with_the_whole_batch(two_ranks) -> None:
    study_file, _ = two_ranks
    ranks = load_checkpoint(latest_checkpoint(study_file.parent / "runs"))
    study = load_study(str(study_file))
    data = load_study_data(study)
    one = train_supernet(data, study.model, study.train, progress=False)
    study.train.batch_size = 42  # what a per-rank batch of 21 would have trained
    per_rank = train_supernet(data, study.model, study.train, progress=False)

    keys = ("train_loss", "valid_loss_full", "rank_loss")
    curve = lambda history: torch.tensor([[r[k] for k in keys] for r in history], dtype=torch.float64)  # noqa: E731
    torch.testing.assert_close(curve(ranks.history)[:, :2], curve(one.history)[:, :2], rtol=1e-6, atol=0)
    # the prior's rank loss ranks 6 masks by their losses on a validation batch (rank_data =
    # "valid"), which an untrained tiny model puts within ~1e-6 of each other: the two runs'
    # float rounding reorders near-ties, and R's soft ranks follow by a few 1e-5 (measured
    # 2.5e-5 relative; with rank_data = "batch" it agrees to 1e-6 as before)
    torch.testing.assert_close(curve(ranks.history)[:, 2], curve(one.history)[:, 2], rtol=2e-4, atol=0)
    assert not torch.allclose(curve(per_rank.history), curve(one.history), rtol=1e-6, atol=0)
    assert ranks.history[-1]["rank_data"] == one.history[-1]["rank_data"] == "the validation split (32 samples; rank_data = valid)"

    a, b = one.model.state_dict(), ranks.model.state_dict()
    for key in a:
        x, y = a[key], b[key]
        if key.endswith("attn.key_value.bias"):  # the key half has no true gradient (docstring)
            x, y = x[study.model.width :], y[study.model.width :]
        torch.testing.assert_close(y, x, rtol=0, atol=3e-6, msg=key)
    masks = all_masks(6)
    with torch.no_grad():
        # the prior learns from validation batches (rank_data = "valid") whose 6 mask losses lie
        # near-tied on this untrained model: Adam amplifies the rounding of its near-zero
        # gradients, as with one mask per batch (docstring): measured 2.3e-4
        torch.testing.assert_close(ranks.prior.log_prob(masks), one.prior.log_prob(masks), rtol=0, atol=1e-3)
        assert float((per_rank.prior.log_prob(masks) - one.prior.log_prob(masks)).abs().max()) > 1e-3


# --- starts that fail fast, in one line (issue 19) --------------------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _assert_one_line(code: int, err: str, *needles: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("mro-search: error: "), (code, err[-3000:])
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.mark.parametrize(("env", "needles"), [
    ({"RANK": "2", "WORLD_SIZE": "2"}, ["RANK=2 must be from 0 to WORLD_SIZE-1=1"]),
    ({"RANK": "-1", "WORLD_SIZE": "2"}, ["RANK=-1 must be from 0"]),
    ({"RANK": "-1", "WORLD_SIZE": "1"}, ["RANK=-1 must be from 0"]),
    ({"RANK": "0", "WORLD_SIZE": "0"}, ["WORLD_SIZE=0 must be at least 1"]),
    ({"RANK": "0", "WORLD_SIZE": "two"}, ["WORLD_SIZE='two' is not an integer"]),
    ({"WORLD_SIZE": "2"}, ["RANK is not set"]),
    ({"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": None}, ["MASTER_ADDR is not set"]),
    ({"RANK": "0", "WORLD_SIZE": "2", "MASTER_PORT": "http"}, ["MASTER_PORT='http' is not an integer"]),
    ({"RANK": "0", "WORLD_SIZE": "2", "MASTER_PORT": "70000"}, ["MASTER_PORT=70000 must be a port"]),
    ({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "-3", "MASTER_ADDR": "", "MASTER_PORT": None},
     ["LOCAL_RANK=-3 must be at least 0", "MASTER_ADDR is not set", "MASTER_PORT is not set"]),  # every problem at once
])
def test_an_inconsistent_torchrun_environment_is_one_line_before_any_collective(
    env: dict, needles: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    study = tmp_path / "tiny.toml"
    study.write_text(STUDY.format(run_dir=tmp_path / "runs"))
    for key, value in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29400", **env}.items():
        if value is None:
            monkeypatch.delenv(key, raising=False)
        else:
            monkeypatch.setenv(key, value)
    code = main(["train", "--study", str(study), "-q"])
    _assert_one_line(code, capsys.readouterr().err, "torchrun's environment is inconsistent", *needles)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(("rank", "world", "needle"), [
    (0, 2, "rank 0 of 2: rank 1 did not join the rendezvous"),
    (1, 2, "rank 1 of 2: rank 0's rendezvous store (rank 0 did not start?)"),
])
def test_a_rank_that_never_arrives_is_named_within_the_timeout(rank: int, world: int, needle: str, tmp_path: Path) -> None:
    """One rank started alone: it used to wait for the others forever (past 150 s); it now
    waits $MRO_DIST_TIMEOUT seconds and names the missing ranks."""
    import time

    study = tmp_path / "tiny.toml"
    study.write_text(STUDY.format(run_dir=tmp_path / "runs"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "MRO_DIST_TIMEOUT": "2"}
    env.pop("MRO_STORAGE", None)
    start = time.monotonic()
    out = subprocess.run([str(BIN / "mro-search"), "train", "--study", str(study), "-q"],
                         capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    _assert_one_line(out.returncode, out.stderr, needle, "within 2 s", "MRO_DIST_TIMEOUT")
    assert time.monotonic() - start < 90  # the process start on a busy machine, plus 2 s
    assert not (tmp_path / "runs" / "checkpoints").exists()

@pytest.mark.slow
def test_joint_rank_with_validation_losses_under_two_ranks(tmp_path: Path) -> None:
    """``joint_rank`` under torchrun: the prior's R ranks the step's subnets by their losses on
    a validation batch that each rank scores its share of (``supernet.rank_data``); two ranks
    follow one process with the whole batch closely, not exactly: the supernet's R term ranks
    each rank's own share of the training losses (as before rank_data), a nonlinear function of
    the share, so the runs differ by more than rounding."""
    text = STUDY.format(run_dir=tmp_path / "runs").replace(
        "per_sample_masks = true", "joint_rank = true\nmasks_per_step = 2").replace("epochs = 4", "epochs = 2")
    study_file = tmp_path / "tiny.toml"
    study_file.write_text(text)
    train_two_ranks(study_file, tmp_path)
    ranks = load_checkpoint(latest_checkpoint(tmp_path / "runs"))
    study = load_study(str(study_file))
    one = train_supernet(load_study_data(study), study.model, study.train, progress=False)
    for key in ("train_loss", "valid_loss_full", "rank_loss"):
        torch.testing.assert_close(torch.tensor([r[key] for r in ranks.history]), torch.tensor([r[key] for r in one.history]),
                                   rtol=1e-2, atol=0)
    assert ranks.history[-1]["rank_data"] == "the validation split (32 samples; rank_data = valid)"
    with torch.no_grad():
        masks = all_masks(6)
        torch.testing.assert_close(ranks.prior.log_prob(masks), one.prior.log_prob(masks), rtol=0, atol=2e-2)
