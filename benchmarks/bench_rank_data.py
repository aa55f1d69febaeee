"""Benchmark: does ranking subnets by held-out losses (``[train] rank_data = "valid"``) cost ranking
fidelity or search hypervolume against the old training-batch ranking (``rank_data = "batch"``)?

Usage:
    OMP_NUM_THREADS=1 nice .venv/bin/python benchmarks/bench_rank_data.py [--seeds 0-4] [--trials 50]
        [--datasets demo,mfeat,planted6] [--small 2] [--quick] [--out DIR] [--json]

Issue 22's last target: "On demo, mfeat and planted data: ranking fidelity and search hypervolume
no worse than today (rank_data = batch) beyond seed noise (paired, 3 seeds at least)."

**Problems** (``--datasets``): ``demo`` and ``mfeat`` are ``load_study("demo")`` and
``load_study("mfeat")`` with the study's data seed unchanged and only ``[train] seed`` set to the
seed, exactly as ``bench_fidelity.py`` trains its supernets (so its stored stand-alone results
apply); ``planted6`` is ``bench_method.problem(seed, "planted6")`` (``bench_planted``'s k = 6
problem, 30 paths, ``data.samples = [4000, 5000, 5000]``; data seed = training seed = seed).
Every training runs on the CPU with one torch thread.

**Arms**: ``batch`` (the prior's rank loss ranks subnets by their losses on the training batch, the
behaviour before issue 22) and ``valid`` (by their losses on the validation split, the new
default); nothing else differs. For every dataset, seed and arm one supernet is trained
(``train_supernet``), cached as ``runs/bench_rank_data/DATASET-seedS-ARM-<config sha>.pt``
(``save_checkpoint``; the configuration's SHA-256 names it, so a rerun resumes).

**Measured** per dataset, seed and arm:

1. ``prior_rho``: the last epoch's ``spearman`` of the training history: the prior's scores
   against the losses of up to 512 masks on 512 validation samples. For the ``valid`` arm these
   are samples the prior learned from (in-sample for the prior; the supernet's weights never
   train on them); for ``batch`` they are held out. ``spearman_train`` (the same on training
   samples), the keep probabilities ``path_probs()`` and ``full_mask_valid`` (the supernet's
   validation accuracy of the full mask) are recorded beside it.
2. **Supernet ranking fidelity** (demo and mfeat, seeds 0, 1, 2 only): the masks that
   ``docs/results/bench_fidelity_{demo,mfeat}.json`` ranked for that seed (demo: all 63; mfeat: 30
   stratified by size) are scored with this supernet's inherited weights on the validation split
   (``build_cache`` + ``score_masks``, accuracy; ``predict_masks`` + ``task_loss`` for the loss);
   ``tau_acc`` / ``tau_loss`` are Kendall's tau-b (``scipy.stats.kendalltau``) against the stored
   stand-alone validation accuracy / loss of the same masks (trained stand-alone by
   bench_fidelity with the same data, model, epochs and seed; not retrained here). Seeds without
   stored stand-alone results (3, 4) and planted6 get no fidelity figure. The stored runs came
   from older code (before ``rank_data`` existed, i.e. batch ranking), so the ``batch`` arm's tau
   is printed beside the stored ``kendall_tau`` as a check, not expected to equal it.
3. **Search hypervolume**, as ``bench_method.run_training``'s ``mrg`` arm: a
   ``bench_efficiency.Landscape`` over this supernet's cached validation accuracy and the masks'
   MFLOPs (the same for both arms: same model), an ``MROSampler`` with ``prior_keep_probs`` = the
   trained prior's ``path_probs()``, ``--trials`` trials, seed = seed. Hypervolume of the loss
   vectors ``(-accuracy, MFLOPs)`` after 20 and ``--trials`` trials, as a fraction of a reference
   hypervolume (``bench_efficiency.reference`` / ``curve``), three ways:

   - ``hv_own`` (**the one in the verdict**): per (dataset, seed, arm), the reference is this
     arm's own landscape: every mask proposed by *both* arms' searches of that seed, the corners
     and (30 paths) every mask of at most ``--small`` paths, scored by *this* supernet; exact
     (all masks) where the space has at most 2^20 masks (demo: 63). It reads: how much of the
     front its own supernet sees did the search reach, i.e. how well the prior guides the search
     on the landscape it came with. The two arms' fractions are of different landscapes.
   - ``hv_common``: one reference per (dataset, seed) for both arms: the Pareto front of both
     arms' reference fronts together, in a box spanning both landscapes' accuracy ranges. Each
     arm's trials keep their own supernet's accuracy. It reads: how much of the best front
     either supernet claims did this arm reach; a supernet that scores masks higher overall
     (calibration, not better search) gains here, so it is reported, not judged.
   - ``hv_standalone`` (demo, seeds 0-2 only): the arm's proposed masks valued at their stored
     *stand-alone* validation accuracy (bench_fidelity trained all 63 demo masks), against the
     exact stand-alone front of all 63: the search's front as independently trained models see
     it. Reported, not judged (3 seeds).

**Summary and verdict**: per dataset and measure (prior_rho, tau_acc, tau_loss, hv_own@20,
hv_own@trials; spearman_train, full_mask_valid, hv_common and hv_standalone alongside, outside
the verdict): per-seed values of
both arms, the paired difference ``valid - batch`` (mean, min, max) over the seeds where both are
measured, and two one-sided paired tests of "valid worse than batch": ``scipy.stats.wilcoxon``
(``alternative="less"`` on valid - batch, ``zero_method="wilcox"``: ties dropped; no p when every
pair ties; with 5 seeds its smallest p is 1/32 = 0.031, with 3 seeds 1/8 = 0.125, so with 3 seeds
it cannot reject) and ``scipy.stats.ttest_rel(valid, batch, alternative="less")``. **Rule**: a
measure is "no worse" when neither test has p < 0.05 AND the mean difference is not below minus
the ``batch`` arm's standard deviation over the seeds (sample SD; "not below" rather than
"above", so that a measure both arms tie on, SD 0, passes); a dataset's verdict is "no worse"
when every one of its verdict measures is, else "WORSE" (naming the measures). Fewer than 2 paired
seeds: no verdict for that measure.

Writes ``OUT/bench_rank_data.json`` (every number, per-mask scores included) and ``.md``;
``--quick`` (demo with 600/300/300 samples, 2 epochs (1 warm-up), seed 0, 8 trials; the stored stand-alone
scores are then of other data, so its tau only shows that the code runs) writes
``bench_rank_data_quick.*`` and caches under ``runs/bench_rank_data/quick/``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402
import bench_efficiency  # noqa: E402
import bench_method  # noqa: E402
import bench_search  # noqa: E402
import numpy as np  # noqa: E402
import optuna  # noqa: E402
import scipy  # noqa: E402
import torch  # noqa: E402
from optuna.study._multi_objective import _is_pareto_front  # noqa: E402
from scipy.stats import kendalltau, ttest_rel, wilcoxon  # noqa: E402

from search_service.study_file import load_study  # noqa: E402
from supernet.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from supernet.config import config_sha256  # noqa: E402
from supernet.data import load_data  # noqa: E402
from supernet.scoring import build_cache, predict_masks, score_masks  # noqa: E402
from supernet.train import task_loss, train_supernet  # noqa: E402

CACHE_DIR = ROOT / "runs" / "bench_rank_data"
RESULTS = ROOT / "docs" / "results"
DATASETS = ("demo", "mfeat", "planted6")
ARMS = ("batch", "valid")
FIDELITY = {"demo": RESULTS / "bench_fidelity_demo.json", "mfeat": RESULTS / "bench_fidelity_mfeat.json"}
EARLY = 20  # the early point of the hypervolume curve
EXACT_MAX = 2**20  # spaces up to this many masks get an exact reference front
VERDICT = ("prior_rho", "tau_acc", "tau_loss", "hv_own@early", "hv_own@trials")
REPORTED = ("spearman_train", "full_mask_valid", "hv_common@early", "hv_common@trials", "hv_standalone@early", "hv_standalone@trials")
QUICK = {"seeds": "0", "datasets": "demo", "trials": 8, "epochs": 2, "warmup_epochs": 1, "samples": [600, 300, 300]}
bench_efficiency.SCORE_CHUNK = 256


# --- the problems ------------------------------------------------------------------------------


def problem(dataset: str, seed: int, arm: str, quick: bool = False):
    """(DataConfig, ModelConfig, TrainConfig, base_dir) of one dataset, seed and arm."""
    base_dir = None
    if dataset in ("demo", "mfeat"):
        study = load_study(dataset)
        data, model, train, base_dir = study.data, study.model, study.train, study.base_dir
        train = replace(train, seed=seed)  # the data seed stays the study's (as bench_fidelity)
    elif dataset == "planted6":
        data, model, train = bench_method.problem(seed, "planted6")
    else:
        raise ValueError(f"unknown dataset {dataset!r}; one of {', '.join(DATASETS)}")
    train = replace(train, device="cpu", rank_data=arm)
    if quick:
        if data.source == "synthetic":
            data = replace(data, samples=list(QUICK["samples"]))
        train = replace(train, epochs=QUICK["epochs"], warmup_epochs=QUICK["warmup_epochs"])
    return data, model, train, base_dir


def trained(dataset: str, seed: int, arm: str, quick: bool, data):
    """The supernet of one dataset, seed and arm (cached by its configuration's SHA-256)."""
    data_cfg, model_cfg, train_cfg, _ = problem(dataset, seed, arm, quick)
    config = {"bench": "bench_rank_data", "dataset": dataset, "data": asdict(data_cfg), "model": asdict(model_cfg),
              "train": asdict(train_cfg)}
    sha = config_sha256(config)
    path = (CACHE_DIR / "quick" if quick else CACHE_DIR) / f"{dataset}-seed{seed}-{arm}-{sha[:12]}.pt"
    cached = path.is_file()
    if not cached:
        started = time.perf_counter()
        result = train_supernet(data, model_cfg, train_cfg, progress=False)
        print(f"    trained {path.name} in {time.perf_counter() - started:.0f} s", flush=True)
        save_checkpoint(path, result.model, result.prior, config, result.history)
    return load_checkpoint(path, expected_sha256=sha), cached


def stored_fidelity(dataset: str) -> dict[int, dict]:
    """bench_fidelity's stored per-seed rows of ``dataset`` by seed (empty where none)."""
    path = FIDELITY.get(dataset)
    if path is None or not path.is_file():
        return {}
    return {row["seed"]: row for row in json.loads(path.read_text())["per_seed"]}


def _tau(x, y) -> float:
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 2 or np.all(x == x[0]) or np.all(y == y[0]):
        return float("nan")
    return float(kendalltau(x, y).statistic)


# --- one seed: both arms -----------------------------------------------------------------------


def fidelity(model, cache, task: str, stored: dict) -> dict:
    """Kendall tau-b of the supernet's validation accuracy / loss of bench_fidelity's masks against
    their stored stand-alone validation accuracy / loss."""
    rows = stored["per_mask"]
    masks = torch.tensor([[int(c) for c in r["mask"]] for r in rows], dtype=torch.float32)
    with torch.no_grad():
        acc = score_masks(model, cache, masks, "accuracy").tolist()
        loss = task_loss(predict_masks(model, cache, masks), cache.labels, task).tolist()
    return {
        "masks": len(rows),
        "tau_acc": _tau(acc, [r["standalone"] for r in rows]),
        "tau_loss": _tau(loss, [r["standalone_loss"] for r in rows]),
        "stored_kendall_tau": stored.get("kendall_tau"), "stored_kendall_tau_loss": stored.get("kendall_tau_loss"),
        "per_mask": [{"mask": r["mask"], "supernet": a, "supernet_loss": lo, "standalone": r["standalone"],
                      "standalone_loss": r["standalone_loss"]} for r, a, lo in zip(rows, acc, loss)],
    }


def common_reference(refs: list[dict]) -> dict:
    """One reference for several landscapes of the same masks (same MFLOPs): the Pareto front of
    their reference fronts together, in a box spanning all their accuracy ranges."""
    both = np.concatenate([r["front"] for r in refs])
    front = np.unique(both[_is_pareto_front(both, assume_unique_lexsorted=False)], axis=0)
    a_lo = min(r["accuracy_range"][0] for r in refs)
    a_hi = max(max(r["accuracy_range"][1] for r in refs), float(-front[:, 0].min()))
    f_min, f_max = refs[0]["mflops_range"]
    ref = np.array([-(a_lo - 0.01 * (a_hi - a_lo)), f_max + 0.01 * (f_max - f_min)])
    return {"ref": ref, "front": front, "hv": bench_search.hypervolume(front, ref)}


def standalone_reference(land, stored: dict) -> tuple[dict, dict] | None:
    """(mask -> stand-alone accuracy, reference) when the stored stand-alone results cover every
    mask of the space (demo), else None."""
    acc = {r["mask"]: r["standalone"] for r in stored["per_mask"]}
    if len(acc) < land.space:
        return None
    masks = [tuple(int(c) for c in m) for m in acc]
    loss = np.array([[-acc[m], land.flops.mflops(list(t))] for m, t in zip(acc, masks)])
    front = np.unique(loss[_is_pareto_front(loss, assume_unique_lexsorted=False)], axis=0)
    a_lo, a_hi = float(-loss[:, 0].max()), float(-loss[:, 0].min())
    f_min = min(land.flops.mflops(m) for m in land.corners()[1:])
    f_max = land.full_mflops
    ref = np.array([-(a_lo - 0.01 * (a_hi - a_lo)), f_max + 0.01 * (f_max - f_min)])
    return acc, {"ref": ref, "front": front, "hv": bench_search.hypervolume(front, ref)}


def run_seed(dataset: str, seed: int, trials: int, small: int, quick: bool) -> dict:
    """Both arms' supernets of one dataset and seed, their measures and hypervolume curves."""
    data_cfg, _, train_cfg, base_dir = problem(dataset, seed, "batch", quick)
    data = load_data(data_cfg, base_dir=base_dir)
    stored = stored_fidelity(dataset).get(seed)
    arms, lands, searches = {}, {}, {}
    for arm in ARMS:
        started = time.perf_counter()
        ckpt, cached = trained(dataset, seed, arm, quick, data)
        model = ckpt.model.eval()
        last = ckpt.history[-1]
        cache = build_cache(model, data.splits["valid"])
        mrg = [float(q) for q in ckpt.prior.path_probs().detach()]
        land = bench_efficiency.Landscape(f"{dataset}-{arm}", model, cache, mrg, ckpt.path.stem, "")
        row = {
            "checkpoint": ckpt.path.name, "cached": cached,
            "train_s": float(sum(r.get("seconds", 0.0) for r in ckpt.history)),
            "prior_rho": last["spearman"], "spearman_train": last.get("spearman_train"),
            "rank_data": last.get("rank_data"), "keep_probs": dict(zip(land.paths, mrg)),
            "informative": list(data.informative_paths or []),  # planted data only
            "full_mask_valid": land.score(land.corners()[0])[0],
        }
        if stored is not None:
            row["fidelity"] = fidelity(model, cache, data.task, stored)
            row["tau_acc"], row["tau_loss"] = row["fidelity"]["tau_acc"], row["fidelity"]["tau_loss"]
        searches[arm] = bench_method.run_search(land, "mrg", seed, {"mrg": mrg}, trials)
        row["masks"], row["values"] = searches[arm]["masks"], searches[arm]["values"]
        row["seconds"] = time.perf_counter() - started
        arms[arm], lands[arm] = row, land
    rows = list(searches.values())
    points = sorted({min(EARLY, trials), trials})
    refs = {}
    for arm in ARMS:
        land = lands[arm]
        refs[arm] = bench_efficiency.reference(land, rows, exact=land.space <= EXACT_MAX, small=small)
        c = bench_efficiency.curve(searches[arm]["values"], refs[arm]["ref"], refs[arm]["hv"])
        arms[arm]["hv_own_curve"] = c
        arms[arm]["reference"] = {"hv": refs[arm]["hv"], "front_size": len(refs[arm]["front"]), "kind": refs[arm]["kind"]}
    common = common_reference([refs[a] for a in ARMS])
    standalone = standalone_reference(lands[ARMS[0]], stored) if stored is not None else None
    for arm in ARMS:
        r = arms[arm]
        r["hv_common_curve"] = bench_efficiency.curve(searches[arm]["values"], common["ref"], common["hv"])
        if standalone is not None:
            acc, sref = standalone
            flops = lands[arm].flops
            sv = [[acc[m], flops.mflops([int(c) for c in m])] for m in searches[arm]["masks"]]
            r["hv_standalone_curve"] = bench_efficiency.curve(sv, sref["ref"], sref["hv"])
        for kind in ("own", "common", "standalone"):
            c = r.get(f"hv_{kind}_curve")
            if c is not None:
                r[f"hv_{kind}@early"], r[f"hv_{kind}@trials"] = c[min(EARLY, trials) - 1], c[trials - 1]
    return {"dataset": dataset, "seed": seed, "points": points, "paths": len(lands[ARMS[0]].paths),
            "space": lands[ARMS[0]].space, "train_samples": len(data.splits["train"]),
            "valid_samples": len(data.splits["valid"]), "epochs": train_cfg.epochs,
            "common_reference_hv": common["hv"], "arms": arms}


# --- analysis ----------------------------------------------------------------------------------


def _finite(x) -> bool:
    return x is not None and isinstance(x, (int, float)) and math.isfinite(x)


def compare(rows: list[dict], measure: str) -> dict:
    """Both arms' per-seed values of ``measure`` and the paired comparison valid - batch."""
    pairs = [(r["seed"], r["arms"]["batch"].get(measure), r["arms"]["valid"].get(measure)) for r in rows]
    pairs = [(s, b, v) for s, b, v in pairs if _finite(b) and _finite(v)]
    out: dict = {"measure": measure, "seeds": [p[0] for p in pairs], "batch": [p[1] for p in pairs],
                 "valid": [p[2] for p in pairs]}
    n = len(pairs)
    if not n:
        return out | {"n": 0, "verdict": None}
    b, v = np.array(out["batch"]), np.array(out["valid"])
    d = v - b
    out.update(n=n, batch_mean=float(b.mean()), valid_mean=float(v.mean()), diff_mean=float(d.mean()),
               diff_min=float(d.min()), diff_max=float(d.max()),
               batch_sd=float(statistics.stdev(b.tolist())) if n > 1 else float("nan"))
    p_w = p_t = None
    if n > 1 and np.any(d != 0):
        p_w = float(wilcoxon(v, b, alternative="less", zero_method="wilcox").pvalue)
        if np.ptp(d) > 1e-12:
            p_t = float(ttest_rel(v, b, alternative="less").pvalue)
        else:  # every difference the same: t is infinite, p is 0 when they are negative
            p_t = 0.0 if d[0] < 0 else 1.0
    out.update(p_wilcoxon=p_w, p_ttest=p_t)
    if n < 2:
        out["verdict"] = None
    else:
        significant = any(p is not None and p < 0.05 for p in (p_w, p_t))
        within = out["diff_mean"] >= -out["batch_sd"]  # not below: ties at zero with SD 0 pass
        out["verdict"] = "no worse" if not significant and within else "WORSE"
    return out


def summarise(rows: list[dict]) -> dict:
    """Per dataset: every measure compared, and the verdict over VERDICT's measures."""
    out = {}
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        have = [r for r in rows if r["dataset"] == dataset]
        measures = {m: compare(have, m) for m in (*VERDICT, *REPORTED)}
        judged = {m: c["verdict"] for m, c in measures.items() if m in VERDICT and c.get("verdict")}
        worse = [m for m, v in judged.items() if v == "WORSE"]
        verdict = "WORSE (" + ", ".join(worse) + ")" if worse else ("no worse" if judged else "no verdict (fewer than 2 seeds)")
        out[dataset] = {"seeds": [r["seed"] for r in have], "measures": measures, "verdict": verdict,
                        "judged_on": list(judged)}
    return out


# --- output ------------------------------------------------------------------------------------


def _f(x, digits: int = 3) -> str:
    return "–" if not _finite(x) else f"{x:.{digits}f}"


def _label(measure: str, trials: int) -> str:
    return measure.replace("@early", f"@{min(EARLY, trials)}").replace("@trials", f"@{trials}")


def markdown(report: dict) -> str:
    m, st = report["machine"], report["settings"]
    trials = st["trials"]
    lines = [f"**bench_rank_data** ({m['date']}, {m['cpu_model']} x{m['cpu_count']}, load {m['loadavg_start'][0]:.1f} → "
             f"{m['loadavg_end'][0]:.1f}; datasets {', '.join(st['datasets'])}, seeds {st['seeds']}, {trials} trials"
             f"{', QUICK settings' if st['quick'] else ''}; {report['wall_s']:.0f} s of wall time in this invocation, "
             f"{report['trainings_run']} supernet trainings run, the rest cached; "
             f"{sum(r['arms'][a]['train_s'] for r in report['seeds'] for a in ARMS) / 60:.0f} min of supernet training in all, "
             f"as the checkpoints recorded it; code {m.get('code', '?')})", "",
             "Arms: `rank_data = batch` (before issue 22) and `valid` (the default now). Measures: `prior_rho`, the last "
             "epoch's Spearman ρ of the prior's scores vs subnets' validation losses (in-sample for the valid arm's prior); "
             "`tau_acc` / `tau_loss`, Kendall τ-b of the supernet's validation accuracy / loss of bench_fidelity's masks vs "
             "their stored stand-alone results (demo and mfeat, seeds 0-2 only); `hv_own@n`, the MROSampler search's "
             "(prior keep probabilities) hypervolume fraction after n trials of its own supernet's reference front (both "
             "arms' masks scored on it; exact for demo); `hv_common@n`, of one front for both arms' supernets together "
             "(confounded with the supernets' calibration); `hv_standalone@n` (demo, seeds 0-2), the proposed masks valued "
             "by their stored stand-alone accuracy against the exact stand-alone front.", "",
             "Rule: a measure is *no worse* when neither one-sided paired test of \"valid worse than batch\" (Wilcoxon "
             "signed-rank on valid − batch, alternative less; paired t-test, alternative less) has p < 0.05 AND the mean "
             "difference valid − batch is not below −SD(batch over seeds); a dataset is *no worse* when all of "
             f"{', '.join(_label(v, trials) for v in VERDICT)} are. Other rows are reported, not judged. "
             "With 3 seeds Wilcoxon's smallest one-sided p is 0.125, with 5 seeds 0.031.", ""]
    for dataset, s in report["summary"].items():
        lines += [f"### {dataset} (seeds {', '.join(map(str, s['seeds']))}): **{s['verdict']}**", "",
                  "| measure | seeds | batch mean | valid mean | valid − batch mean (min, max) | SD batch | p Wilcoxon | p t-test | verdict |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for measure, c in s["measures"].items():
            label = _label(measure, trials) + ("" if measure in VERDICT else " (reported)")
            if not c.get("n"):
                lines.append(f"| {label} | – | not measured | | | | | | |")
                continue
            lines.append(f"| {label} | {','.join(map(str, c['seeds']))} | {_f(c['batch_mean'])} | {_f(c['valid_mean'])} | "
                         f"{c['diff_mean']:+.3f} ({c['diff_min']:+.3f}, {c['diff_max']:+.3f}) | {_f(c['batch_sd'])} | "
                         f"{_f(c['p_wilcoxon'])} | {_f(c['p_ttest'])} | {c['verdict'] or '–'} |")
        lines += ["", "Per seed (batch / valid):", "",
                  "| seed | prior ρ | ρ train | τ acc | τ loss | τ acc stored (old code) | " + f"HV own @{min(EARLY, trials)} | HV own @{trials} | "
                  f"HV common @{trials} | HV stand-alone @{trials} |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in report["seeds"]:
            if r["dataset"] != dataset:
                continue
            b, v = r["arms"]["batch"], r["arms"]["valid"]
            cell = lambda k, d=3, b=b, v=v: f"{_f(b.get(k), d)} / {_f(v.get(k), d)}"  # noqa: E731
            stored = b.get("fidelity", {}).get("stored_kendall_tau")
            lines.append(f"| {r['seed']} | {cell('prior_rho')} | {cell('spearman_train')} | {cell('tau_acc')} | {cell('tau_loss')} | "
                         f"{_f(stored)} | {cell('hv_own@early')} | {cell('hv_own@trials')} | {cell('hv_common@trials')} | "
                         f"{cell('hv_standalone@trials')} |")
        lines.append("")
    lines += ["Keep probabilities of the planted paths (batch / valid) and the largest of the other paths (real data: the highest three):", ""]
    for r in report["seeds"]:
        b, v = r["arms"]["batch"], r["arms"]["valid"]
        inf = b["informative"]
        rest = [p for p in b["keep_probs"] if p not in inf]
        if not inf:  # real data: no planted paths; the three highest of each arm
            top = lambda q: ", ".join(f"{p} {q[p]:.2f}" for p in sorted(q, key=q.get, reverse=True)[:3])  # noqa: E731
            lines.append(f"- {r['dataset']} seed {r['seed']}: highest keep probabilities, batch: {top(b['keep_probs'])}; "
                         f"valid: {top(v['keep_probs'])}")
            continue
        lines.append(f"- {r['dataset']} seed {r['seed']}: " + ", ".join(f"{p} {b['keep_probs'][p]:.2f} / {v['keep_probs'][p]:.2f}" for p in inf)
                     + (f"; others at most {max(b['keep_probs'][p] for p in rest):.2f} / {max(v['keep_probs'][p] for p in rest):.2f}" if rest else ""))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0-4", help="seeds, e.g. 0-4 or 0,2")
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--small", type=int, default=2, help="30 paths: every mask of at most this many paths joins the reference")
    parser.add_argument("--quick", action="store_true", help="a tiny smoke run (demo, 2 epochs on 600 samples, seed 0, 8 trials)")
    parser.add_argument("--out", default="", help="write DIR/bench_rank_data.json and .md")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    seeds = bench_method.parse_seeds(QUICK["seeds"] if args.quick else args.seeds)
    datasets = [d for d in (QUICK["datasets"] if args.quick else args.datasets).split(",") if d]
    trials = QUICK["trials"] if args.quick else args.trials
    for d in datasets:
        if d not in DATASETS:
            parser.error(f"--datasets: unknown {d!r}; one of {', '.join(DATASETS)}")
    if trials < 1:
        parser.error("--trials must be at least 1")
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    info = _common.machine_info(optuna=optuna.__version__, scipy=scipy.__version__, code=bench_method._git_head())
    print(f"# bench_rank_data  {info['date']}  {info['cpu_model']} x{info['cpu_count']}  "
          f"load {' '.join(f'{x:.2f}' for x in info['loadavg_start'])}", flush=True)
    started = time.perf_counter()
    rows = []
    for dataset in datasets:
        for seed in seeds:
            row = run_seed(dataset, seed, trials, args.small, args.quick)
            rows.append(row)
            b, v = row["arms"]["batch"], row["arms"]["valid"]
            msg = (f"  {dataset} seed {seed}: prior rho {b['prior_rho']:.3f} / {v['prior_rho']:.3f}, "
                   f"HV own@{trials} {b['hv_own@trials']:.3f} / {v['hv_own@trials']:.3f}")
            if "fidelity" in b:
                msg += (f", tau acc {b['tau_acc']:.3f} / {v['tau_acc']:.3f} (stored {b['fidelity']['stored_kendall_tau']:.3f}), "
                        f"tau loss {b['tau_loss']:.3f} / {v['tau_loss']:.3f} (stored {b['fidelity']['stored_kendall_tau_loss']:.3f})")
            print(msg + f"  [batch / valid; {time.perf_counter() - started:.0f} s]", flush=True)
    summary = summarise(rows)
    info["loadavg_end"] = list(os.getloadavg())
    trainings_run = sum(not r["arms"][a]["cached"] for r in rows for a in ARMS)
    report = {"benchmark": "bench_rank_data", "machine": info,
              "settings": {"datasets": datasets, "seeds": ", ".join(map(str, seeds)), "trials": trials, "early": EARLY,
                           "small": args.small, "quick": args.quick, "verdict_measures": list(VERDICT)},
              "wall_s": time.perf_counter() - started, "trainings_run": trainings_run, "summary": summary, "seeds": rows}
    _common.publish(report, markdown(report), out=args.out, stem="bench_rank_data_quick" if args.quick else "bench_rank_data", as_json=args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
