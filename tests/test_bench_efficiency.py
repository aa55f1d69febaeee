"""``benchmarks/bench_efficiency.py``'s core on a tiny landscape: a k = 3 supernet trained for one
epoch on a little synthetic data (63 masks, so the exact front is known), a few short studies,
and the analysis that turns them into hypervolume fractions."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_efficiency  # noqa: E402

from supernet.config import DataConfig, ModelConfig, TrainConfig  # noqa: E402
from supernet.data import load_data  # noqa: E402
from supernet.scoring import build_cache  # noqa: E402
from supernet.train import train_supernet  # noqa: E402


@pytest.fixture(scope="module")
def tiny() -> bench_efficiency.Landscape:
    data = load_data(DataConfig(source="synthetic", modalities=["a", "b", "c"], dims=[12, 12, 12], length=4,
                                samples=[300, 200, 100], planted_paths=["a->b"], task="classification", seed=0))
    model_cfg = ModelConfig(width=8, heads=2, layers_per_path=1, dropout=0.0, head="linear")
    result = train_supernet(data, model_cfg, TrainConfig(epochs=1, warmup_epochs=1, batch_size=64, seed=0), progress=False)
    prior = [float(q) for q in result.prior.path_probs().detach()]
    cache = build_cache(result.model.eval(), data.splits["valid"])
    return bench_efficiency.Landscape("tiny", result.model, cache, prior, "test", "k = 3, one epoch")


def test_fractions_lie_in_0_1_and_never_fall(tiny):
    torch.set_num_threads(1)
    rows = [bench_efficiency.run_study(tiny, s, seed, 40) for s in ("mro", "random") for seed in (0, 1)]
    for exact in (False, True):  # the union of the trials, then every mask
        result = bench_efficiency.analyse(tiny, [dict(r) for r in rows], [], ["mro", "random"], 40, exact)
        assert result["reference"]["front_size"] >= 1 and result["reference"]["hypervolume"] > 0
        for s in ("mro", "random"):
            curve = np.array(result["samplers"][s]["median_curve"])
            assert len(curve) == 40
            assert ((curve >= 0) & (curve <= 1 + 1e-12)).all()
            assert (np.diff(curve) >= -1e-12).all()
    # the exact front of all 63 masks: the union of the studies cannot beat it
    exact = bench_efficiency.analyse(tiny, [dict(r) for r in rows], [], ["mro", "random"], 40, True)
    union = bench_efficiency.analyse(tiny, [dict(r) for r in rows], [], ["mro", "random"], 40, False)
    assert exact["reference"]["hypervolume"] >= union["reference"]["hypervolume"] - 1e-12
    # MROSampler never proposes the empty mask and, within 40 of 63 masks, never repeats one
    mro = [r for r in rows if r["sampler"] == "mro"]
    assert all(r["empty_masks"] == 0 and r["distinct_masks"] == 40 for r in mro)


def test_target_reads_the_medians(tiny):
    rows = [
        {"sampler": "mro", "curve": [0.2, 0.5, 0.9, 0.95], "seconds": 1.0, "distinct_masks": 4, "empty_masks": 0},
        {"sampler": "random", "curve": [0.1, 0.3, 0.6, 0.8], "seconds": 1.0, "distinct_masks": 4, "empty_masks": 0},
        {"sampler": "tpe", "curve": [0.1, 0.4, 0.7, 0.9], "seconds": 1.0, "distinct_masks": 4, "empty_masks": 0},
    ]
    target = bench_efficiency.summarise(rows, ["mro", "random", "tpe"], [2, 4])["target"]
    assert target["best_other"] == "tpe" and target["mro_reaches_at"] == 3 and target["met"]
    rows[0]["curve"] = [0.2, 0.5, 0.6, 0.85]  # never reaches TPE's 0.9
    target = bench_efficiency.summarise(rows, ["mro", "random", "tpe"], [2, 4])["target"]
    assert target["mro_reaches_at"] is None and not target["met"]


def test_bad_options_are_one_line_errors(capsys):
    with pytest.raises(SystemExit) as exc:
        bench_efficiency.main(["--landscapes", "mfeat,nope"])
    assert exc.value.code == 2
    assert "unknown landscape or sampler 'nope'" in capsys.readouterr().err
