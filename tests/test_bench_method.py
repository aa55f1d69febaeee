"""``benchmarks/bench_method.py`` and ``bench_within.py``: their pure functions on known inputs,
and every search arm on a tiny real landscape (a k = 3 supernet trained for one epoch)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_efficiency  # noqa: E402
import bench_method  # noqa: E402
import bench_within  # noqa: E402

from supernet.config import DataConfig, ModelConfig, TrainConfig  # noqa: E402
from supernet.data import load_data  # noqa: E402
from supernet.scoring import build_cache  # noqa: E402
from supernet.train import train_supernet  # noqa: E402


def test_spearman_brown_and_the_attenuation_correction():
    assert bench_within.spearman_brown(0.5) == pytest.approx(2 / 3)
    assert bench_within.spearman_brown(1.0) == pytest.approx(1.0)
    # tau 0.4 against a two-run mean whose halves agree at 0.5: 0.4 / sqrt(2/3)
    assert bench_within.corrected(0.4, 0.5) == pytest.approx(0.4 / math.sqrt(2 / 3))
    assert math.isnan(bench_within.corrected(0.4, 0.0)) and math.isnan(bench_within.corrected(0.4, -0.2))


def test_within_size_group_on_a_known_toy():
    # two stand-alone runs that agree except one swap; the supernet has the first run's order;
    # the additive predictor the reverse order
    first = [0.1, 0.2, 0.3, 0.4, 0.5]
    second = [0.2, 0.1, 0.3, 0.4, 0.5]
    sup = [1.0, 2.0, 3.0, 4.0, 5.0]
    g = bench_within.group(sup, [-x for x in sup], first, second, higher_better=True)
    assert g["reliability_half"] == pytest.approx(0.8)  # 9 of 10 pairs concordant
    assert g["tau_supernet"] > 0.9 and g["tau_additive"] == pytest.approx(-g["tau_supernet"])
    assert g["tau_supernet_corrected"] == pytest.approx(g["tau_supernet"] / math.sqrt(1.6 / 1.8))
    # a loss: lower is better, so the same numbers negated give the same taus (the additive
    # predictor is passed oriented, higher = better, in both cases)
    gl = bench_within.group([-x for x in sup], [-x for x in sup], [-x for x in first], [-x for x in second], higher_better=False)
    assert gl["tau_supernet"] == pytest.approx(g["tau_supernet"]) and gl["tau_additive"] == pytest.approx(g["tau_additive"])


def test_masks_of_size_are_distinct_of_that_size_and_deterministic():
    masks = bench_within.masks_of_size(30, 3, 20, 0)
    assert len(set(masks)) == 20 and all(sum(m) == 3 and len(m) == 30 for m in masks)
    assert masks == bench_within.masks_of_size(30, 3, 20, 0) != bench_within.masks_of_size(30, 3, 20, 1)
    assert len(bench_within.masks_of_size(4, 3, 20, 0)) == 4  # only C(4, 3) exist


def test_single_path_probs_and_stratified_sizes():
    q = bench_method.single_path_probs([0.5, 0.75, 1.0])
    assert q == pytest.approx([0.1, 0.5, 0.9])
    assert bench_method.single_path_probs([0.6, 0.6]) == [0.5, 0.5]
    masks = bench_method.stratified(30, 10, 0)
    assert sorted(sum(m) for m in masks) == [1, 4, 7, 11, 14, 17, 20, 24, 27, 30]


def test_wilcoxon_counts_and_p():
    w = bench_method.wilcoxon([1.0] * 10, [0.0] * 10)
    assert (w["wins"], w["losses"], w["ties"]) == (10, 0, 0) and w["p"] < 0.01
    assert bench_method.wilcoxon([0.5, 0.5], [0.5, 0.5])["p"] is None


@pytest.fixture(scope="module")
def tiny() -> bench_efficiency.Landscape:
    torch.set_num_threads(1)
    data = load_data(DataConfig(source="synthetic", modalities=["a", "b", "c"], dims=[12, 12, 12], length=4,
                                samples=[300, 200, 100], planted_paths=["a->b"], task="classification", seed=0))
    result = train_supernet(data, ModelConfig(width=8, heads=2, layers_per_path=1, dropout=0.0, head="linear"),
                            TrainConfig(epochs=1, warmup_epochs=1, batch_size=64, seed=0), progress=False)
    prior = [float(q) for q in result.prior.path_probs().detach()]
    return bench_efficiency.Landscape("tiny", result.model, build_cache(result.model.eval(), data.splits["valid"]), prior, "t", "")


def test_every_arm_searches_the_tiny_landscape(tiny):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    probs = {"mrg": tiny.prior, "single": bench_method.single_path_probs([tiny.score(m)[0] for m in tiny.corners()[1:]])}
    arms = bench_method.PROPOSALS + bench_method.PARTS + bench_method.OPTUNA
    rows = [bench_method.run_search(tiny, arm, 0, probs, 14) for arm in arms]
    for r in rows:
        assert len(r["masks"]) == 14 and all(len(m) == 6 for m in r["masks"])
    size = rows[0]
    assert size["arm"] == "size" and len(set(size["masks"])) == 14 and "000000" not in size["masks"]
    strat = next(r for r in rows if r["arm"] == "nsga2-strat")
    assert [m.count("1") for m in strat["masks"][:6]] == [1, 2, 3, 4, 5, 6]  # the enqueued strata come first
    ref = bench_efficiency.reference(tiny, rows, exact=True)
    curve = bench_efficiency.curve(rows[0]["values"], ref["ref"], ref["hv"])
    assert all(0.0 <= x <= 1.0 + 1e-9 for x in curve) and np.all(np.diff(curve) >= -1e-12)
    chosen = bench_method.front_selection(rows[-1])
    best = max(v[0] for v in rows[-1]["values"])
    assert tiny.score(chosen)[0] == best


def _training_row(seed: int, training: str, mrg: float, size: float, selected: str) -> dict:
    arms = {a: {"at": {"20": x, "50": x}} for a, x in (("size", size), ("flat", size), ("single", size), ("mrg", mrg))}
    return {"kind": "training", "seed": seed, "what": training, "paths": ["p0", "p1"], "selected": selected,
            "arms": arms, "seconds": 1.0, "cpu_s": 1.0}


def test_assemble_summarise_and_targets_count_only_finished_seeds():
    key = lambda kind, seed, what: f"{kind}|{seed}|{what}"  # noqa: E731
    done = {}
    for seed in range(10):
        done[key("training", seed, "prior")] = _training_row(seed, "prior", 0.9, 0.8 - 0.01 * seed, "10")
        done[key("standalone", seed, "10")] = {"test": 0.9}
        done[key("standalone", seed, "11")] = {"test": 0.8}  # the CMT
    done[key("training", 0, "no_rank")] = _training_row(0, "no_rank", 0.9, 0.9, "11")
    rows = bench_method.assemble(done, key, list(range(11)))  # seed 10 has no prior-guided training: left out
    assert [r["seed"] for r in rows] == list(range(10))
    summary = bench_method.summarise(rows, [20, 50])
    assert summary["seeds"] == {"prior": list(range(10)), "no_rank": [0]}
    assert summary["vs_mrg"]["prior"]["20"]["size"]["wins"] == 10
    assert summary["selected"]["prior_vs_no_rank"]["seeds"] == [0]  # paired only where both are done
    met = {t["target"]: t["met"] for t in bench_method.targets(summary, [20, 50])}
    assert met["mrg beats size at 20 trials (>= 8 of 10 seeds, p < 0.05)"]
    assert met["the selected subnet beats the full CMT on test accuracy in >= 8 of 10 seeds"]
    assert not met["prior-guided beats lambda = 0 on the selected subnet's test accuracy (p < 0.05)"]  # 1 seed only
