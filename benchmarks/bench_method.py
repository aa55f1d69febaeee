"""Benchmark: does the method earn its place? Training x proposal arms over >= 10 data seeds.

Usage: python benchmarks/bench_method.py [--seeds 0-9] [--trials 50] [--family NAME]
                                         [--workers 1] [--quick] [--out DIR] [--json]

Issue 17, item 4. For each data seed (the data, every training and every sampler take it):

1. **Supernet trainings** (``train_supernet``, encoded as ``bench_tables.training_overrides``):
   ``uniform`` (uniform masks throughout), ``prior`` (the service's training: prior-guided masks
   after the warm-up) and ``no_rank`` (lambda = 0: ``prior_lr = 0``, the prior never moves).
2. **Proposals**, through each training's supernet, on the landscape of ``bench_efficiency``
   (``Landscape``: cached exact validation accuracy and MFLOPs of any mask):
   ``size`` (size-uniform random: a number of paths uniform in 1..P, then the paths uniform; no
   start-up, no refinement, no local moves), ``flat`` (``MROSampler`` with keep probabilities
   0.5), ``single`` (``MROSampler`` whose keep probabilities come from each path's cached
   single-path score ``s``: ``q = 0.1 + 0.8 (s - min s) / (max s - min s)``) and ``mrg``
   (``MROSampler`` with the trained prior's ``path_probs()``, as the service runs it). The three
   ``MROSampler`` arms use its defaults otherwise (10 uniform start-up trials, refinement, local
   moves), the study's budget and the seed.
3. **Parts** (the prior-guided supernet only), to attribute ``mrg``'s lead: ``draws`` (flat prior,
   ``refine_steps = 0, local = 0``: only the start-up and the size draws), ``mrg-norefine``
   (``refine_steps = 0``), ``mrg-nolocal`` (``local = 0``).
4. **What a user would reach for instead** (the prior-guided supernet; params one
   ``suggest_categorical(path, [0, 1])`` per path): Optuna's ``random``, ``tpe``, ``nsga2``
   (defaults), and ``tpe-strat`` / ``nsga2-strat`` (NSGA-II with population 10): the first 10
   trials enqueued with sizes spread evenly over 1..P (``stratified``), the fair encoding of a
   search whose objective grows with the number of paths. ``GPSampler`` is left out for its cost
   (bench_efficiency: 356 s per 50-trial study at 30 paths); HEBO is not installed (its wheel pins
   numpy 1.24 and scipy 1.12, which would downgrade the shared environment).

**Hypervolume**: ``bench_efficiency.reference`` and ``curve`` per training landscape (the union of
every study's trials of that landscape, the corners, and every mask of at most ``--small`` paths);
the fraction of the reference hypervolume after 20 and 50 trials. Only fractions on one landscape
are compared: paired over seeds, Wilcoxon signed-rank (``scipy.stats.wilcoxon``, two-sided; ties
dropped, ``zero_method="wilcox"``) of ``mrg`` against each other arm.

**Selected subnet**: for each training, the ``mrg`` search's Pareto front after all trials; its
member with the best validation accuracy (fewest MFLOPs among ties, ``bench_tables.select``) is
trained stand-alone (``train_subnet``, the study's [train] settings and the seed) and scored on
the test split, beside the full mask (the CMT) trained the same way. Paired Wilcoxon prior vs
no_rank; the count of seeds where the prior-guided selection beats the CMT.

Jobs (one training of one seed with its searches; one stand-alone training) are appended to
``runs/bench_method/jobs.jsonl`` keyed by the family, the configuration's SHA-256, the seed and
the job (checkpoints beside it), so an interrupted run resumes; they run in phases, the targets'
arms first (prior-guided and lambda = 0 trainings, then their selections and the CMT, then the
uniform training), and ``--report-only`` reports whatever is done.
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
import bench_planted  # noqa: E402
import numpy as np  # noqa: E402
import optuna  # noqa: E402
import torch  # noqa: E402
from bench_tables import select, training_overrides  # noqa: E402
from optuna.distributions import CategoricalDistribution  # noqa: E402
from optuna.study._multi_objective import _is_pareto_front  # noqa: E402

from search_service.proposal_prior import scaled  # noqa: E402
from search_service.sampler import MROSampler  # noqa: E402
from search_service.study_file import load_study  # noqa: E402
from supernet.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from supernet.config import config_sha256  # noqa: E402
from supernet.data import load_data  # noqa: E402
from supernet.scoring import build_cache, score_masks  # noqa: E402
from supernet.train import train_subnet, train_supernet  # noqa: E402

CACHE_DIR = ROOT / "runs" / "bench_method"
FAMILY = "family"  # the default data family
TRAININGS = ("uniform", "prior", "no_rank")
PROPOSALS = ("size", "flat", "single", "mrg")
PARTS = ("draws", "mrg-norefine", "mrg-nolocal")
OPTUNA = ("random", "tpe", "tpe-strat", "nsga2", "nsga2-strat")
POINTS = (20, 50)
STRATA = 10  # trials enqueued with stratified sizes (and NSGA-II's population)
bench_efficiency.SCORE_CHUNK = 256  # masks per score_masks call: 5,000 validation samples through the MLP head
QUICK = {"seeds": "0", "trials": 12, "epochs": 2, "warmup_epochs": 1, "samples": [600, 400, 400], "small": 2}


# --- the problem ------------------------------------------------------------------------------


def problem(seed: int, family: str, quick: bool = False, cut: tuple[int, int] | None = None):
    """(DataConfig, ModelConfig, TrainConfig) of one data seed: ``family`` is the study
    ``studies/family.toml`` (issue 17's family: graded planted paths, a same-source pair, a
    multiplicative pair, a shortcut modality), ``planted6`` bench_planted's k = 6 problem with
    5,000 validation and test samples; the data and training seeds are ``seed``. ``cut``:
    (epochs, training samples) instead of the family's, to fit a CPU budget (0: unchanged)."""
    if family == "family":
        study = load_study("family")
        data, model, train = replace(study.data, seed=seed), study.model, replace(study.train, seed=seed)
    elif family == "planted6":
        data, model, train = bench_planted.problem(6, seed)
        data.samples = [4000, 5000, 5000]
    else:
        raise ValueError(f"unknown family {family!r}; one of family, planted6")
    train = replace(train, device="cpu")
    if cut and cut[0]:
        train = replace(train, epochs=cut[0], warmup_epochs=min(train.warmup_epochs, max(1, cut[0] * 3 // 8)))
    if cut and cut[1]:
        data = replace(data, samples=[cut[1], *data.samples[1:]])
    if quick:
        data = replace(data, samples=list(QUICK["samples"]))
        train = replace(train, epochs=QUICK["epochs"], warmup_epochs=QUICK["warmup_epochs"])
    return data, model, train


def trained(seed: int, family: str, training: str, quick: bool, cut, data):
    """The supernet of one training (cached in runs/bench_method/ by its configuration)."""
    data_cfg, model_cfg, train_cfg = problem(seed, family, quick, cut)
    train_cfg = replace(train_cfg, **training_overrides("full" if training == "prior" else training, train_cfg.epochs))
    config = {"bench": "bench_method", "family": family, "data": asdict(data_cfg), "model": asdict(model_cfg), "train": asdict(train_cfg)}
    sha = config_sha256(config)
    path = CACHE_DIR / f"{family}-seed{seed}-{training}-{sha[:12]}.pt"
    started = time.process_time()
    if not path.is_file():
        result = train_supernet(data, model_cfg, train_cfg, progress=False)
        save_checkpoint(path, result.model, result.prior, config, result.history)
    return load_checkpoint(path, expected_sha256=sha), time.process_time() - started


# --- samplers ---------------------------------------------------------------------------------


class SizeUniformSampler(optuna.samplers.BaseSampler):
    """A number of paths uniform in 1..P, then that many paths uniformly (a repeat redrawn)."""

    def __init__(self, paths: list[str], seed: int) -> None:
        self._paths, self._seed = list(paths), seed
        self._fallback = optuna.samplers.RandomSampler(seed=seed)

    def infer_relative_search_space(self, study, trial):
        return {p: CategoricalDistribution([0, 1]) for p in self._paths}

    def sample_relative(self, study, trial, search_space):
        if not search_space:
            return {}
        rng = np.random.default_rng([self._seed, trial.number])
        seen = {tuple(t.params.get(p) for p in self._paths) for t in study.get_trials(deepcopy=False)}
        P = len(self._paths)
        for _ in range(100):
            on = set(rng.choice(P, int(rng.integers(1, P + 1)), replace=False).tolist())
            mask = tuple(int(i in on) for i in range(P))
            if mask not in seen:
                break
        return dict(zip(self._paths, mask))

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self._fallback.sample_independent(study, trial, param_name, param_distribution)


def stratified(P: int, n: int, seed: int) -> list[tuple[int, ...]]:
    """``n`` masks whose sizes are spread evenly over 1..P (paths uniform within a size)."""
    rng = np.random.default_rng([seed, 7919])
    sizes = np.unique(np.round(np.linspace(1, P, n)).astype(int)) if n <= P else np.arange(1, P + 1)
    masks = []
    for size in sizes.tolist():
        on = set(rng.choice(P, size, replace=False).tolist())
        masks.append(tuple(int(i in on) for i in range(P)))
    return masks


def single_path_probs(scores: list[float]) -> list[float]:
    """Keep probabilities from single-path scores: the service's own ``[search] prior =
    "single_path"`` scaling (min-max into [0.1, 0.9]; flat 0.5 when every path scores the same)."""
    return scaled(scores)


def make_sampler(arm: str, seed: int, paths: list[str], probs: dict[str, list[float]], trials: int):
    """The sampler of one arm (see the module docstring)."""
    P = len(paths)
    mro = {"paths": paths, "budget": trials, "seed": seed}
    if arm == "size":
        return SizeUniformSampler(paths, seed)
    if arm == "flat":
        return MROSampler(prior_keep_probs=[0.5] * P, **mro)
    if arm == "single":
        return MROSampler(prior_keep_probs=probs["single"], **mro)
    if arm == "mrg":
        return MROSampler(prior_keep_probs=probs["mrg"], **mro)
    if arm == "draws":
        return MROSampler(prior_keep_probs=[0.5] * P, refine_steps=0, local=0.0, **mro)
    if arm == "mrg-norefine":
        return MROSampler(prior_keep_probs=probs["mrg"], refine_steps=0, **mro)
    if arm == "mrg-nolocal":
        return MROSampler(prior_keep_probs=probs["mrg"], local=0.0, **mro)
    if arm == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if arm.startswith("tpe"):
        return optuna.samplers.TPESampler(seed=seed)
    if arm.startswith("nsga2"):
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=STRATA if arm.endswith("strat") else 50)
    raise ValueError(arm)


def run_search(land, arm: str, seed: int, probs: dict, trials: int) -> dict:
    """One study on ``land`` (bench_efficiency's objective: cached accuracy, MFLOPs)."""
    paths = land.paths

    def objective(trial: optuna.Trial) -> tuple[float, float]:
        return land.score(tuple(int(trial.suggest_categorical(p, [0, 1])) for p in paths))

    study = optuna.create_study(directions=["maximize", "minimize"], sampler=make_sampler(arm, seed, paths, probs, trials))
    if arm.endswith("-strat"):
        for mask in stratified(len(paths), STRATA, seed):
            study.enqueue_trial(dict(zip(paths, mask)))
    started = time.process_time()
    study.optimize(objective, n_trials=trials)
    return {"arm": arm, "masks": ["".join(str(int(t.params[p])) for p in paths) for t in study.trials],
            "values": [list(t.values) for t in study.trials], "cpu_s": time.process_time() - started}


# --- one seed ---------------------------------------------------------------------------------


def standalone_test(data, model_cfg, train_cfg, mask: tuple[int, ...]) -> dict:
    """Train ``mask`` stand-alone (``train_subnet``) and score it on the test split."""
    started = time.process_time()
    result = train_subnet(data, model_cfg, train_cfg, mask)
    cache = build_cache(result.model, data.splits["test"])
    with torch.no_grad():
        acc = float(score_masks(result.model, cache, torch.tensor([mask], dtype=torch.float32), "accuracy")[0])
    return {"mask": "".join(map(str, mask)), "paths": sum(mask), "test": acc, "cpu_s": time.process_time() - started}


def front_selection(row: dict) -> tuple[int, ...]:
    """``bench_tables.select`` on the Pareto front of one search's trials."""
    values = np.array(row["values"], dtype=float)
    loss = np.stack([-values[:, 0], values[:, 1]], axis=1)
    on = np.flatnonzero(_is_pareto_front(loss, assume_unique_lexsorted=False))
    front = [{"values": row["values"][i], "mflops": row["values"][i][1], "trial": int(i), "mask": row["masks"][i]} for i in on]
    return tuple(int(c) for c in select(front, None)["mask"])


def run_training(seed: int, family: str, training: str, quick: bool, cut, trials: int, small: int, data) -> dict:
    """One training's supernet, its searches and their hypervolume curves."""
    ckpt, train_s = trained(seed, family, training, quick, cut, data)
    cache = build_cache(ckpt.model.eval(), data.splits["valid"])
    mrg = [float(q) for q in ckpt.prior.path_probs().detach()]
    land = bench_efficiency.Landscape(f"{family}-{training}", ckpt.model, cache, mrg, ckpt.path.stem, "")
    single = [land.score(m)[0] for m in land.corners()[1:]]
    probs = {"mrg": mrg, "single": single_path_probs(single)}
    arms = list(PROPOSALS) + (list(PARTS) + list(OPTUNA) if training == "prior" else [])
    rows = [run_search(land, arm, seed, probs, trials) for arm in arms]
    ref = bench_efficiency.reference(land, rows, exact=False, small=small)
    for r in rows:
        r["curve"] = bench_efficiency.curve(r["values"], ref["ref"], ref["hv"])
    informative = list(data.informative_paths)
    return {
        "training": training, "train_s": train_s, "paths": land.paths, "informative": informative,
        "single_path_valid": dict(zip(land.paths, single)), "mrg_probs": dict(zip(land.paths, mrg)),
        "full_mask_valid": land.score(land.corners()[0])[0],
        "reference": {"hv": ref["hv"], "front_size": len(ref["front"]), "kind": ref["kind"]},
        "arms": {r["arm"]: {"at": {str(n): r["curve"][n - 1] for n in (*POINTS, trials) if n <= len(r["curve"])},
                            "distinct": len(set(r["masks"])), "median_paths": statistics.median(m.count("1") for m in r["masks"]),
                            "cpu_s": r["cpu_s"]} for r in rows},
        "selected": front_selection(next(r for r in rows if r["arm"] == "mrg")),
    }


def run_job(job: tuple) -> dict:
    """One job in a worker: ``("training", seed, training)`` (its supernet, searches, curves) or
    ``("standalone", seed, mask)`` (a mask trained stand-alone, scored on test)."""
    kind, seed, what, family, quick, cut, trials, small = job
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    started, cpu = time.perf_counter(), time.process_time()
    data_cfg, model_cfg, train_cfg = problem(seed, family, quick, cut)
    data = load_data(data_cfg)
    if kind == "training":
        row = run_training(seed, family, what, quick, cut, trials, small, data)
        row["selected"] = "".join(map(str, row["selected"]))
    else:
        row = standalone_test(data, model_cfg, train_cfg, tuple(int(c) for c in what))
    row.update(kind=kind, seed=seed, what=what, seconds=time.perf_counter() - started, cpu_s=time.process_time() - cpu)
    return row


def assemble(done: dict[str, dict], key, seeds: list[int]) -> list[dict]:
    """Per seed: its trainings and the stand-alone results of the CMT and of each selection, as
    far as they are done (a seed appears once its prior-guided training is done)."""
    rows = []
    for seed in seeds:
        trainings = {t: dict(done[key("training", seed, t)]) for t in TRAININGS if key("training", seed, t) in done}
        if "prior" not in trainings:
            continue
        P = len(trainings["prior"]["paths"])
        cmt = done.get(key("standalone", seed, "1" * P))
        for t in trainings.values():
            t["selected_test"] = done.get(key("standalone", seed, t["selected"]))
        rows.append({"seed": seed, "trainings": trainings, "cmt": cmt,
                     "seconds": sum(t["seconds"] for t in trainings.values()), "cpu_s": sum(t["cpu_s"] for t in trainings.values())})
    return rows


# --- analysis ---------------------------------------------------------------------------------


def wilcoxon(a: list[float], b: list[float]) -> dict:
    """Paired two-sided Wilcoxon signed-rank test of ``a`` against ``b``: wins, losses, ties,
    median difference and p (None when every pair ties)."""
    from scipy.stats import wilcoxon as _wilcoxon

    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    wins, losses = int((d > 0).sum()), int((d < 0).sum())
    p = float(_wilcoxon(a, b, zero_method="wilcox").pvalue) if wins + losses else None
    return {"wins": wins, "losses": losses, "ties": len(d) - wins - losses, "median_diff": float(np.median(d)), "p": p}


def summarise(seeds: list[dict], points: list[int]) -> dict:
    """Per training and arm: the hypervolume fractions over the seeds where that training is done;
    ``mrg`` against every other arm of its landscape; the selected subnets' test accuracy over the
    seeds where both sides of a comparison are done."""
    out: dict = {"hv": {}, "vs_mrg": {}, "seeds": {}}
    for training in TRAININGS:
        have = [s for s in seeds if training in s["trainings"]]
        if not have:
            continue
        out["seeds"][training] = [s["seed"] for s in have]
        arms = list(have[0]["trainings"][training]["arms"])
        for n in map(str, points):
            cells = {a: [s["trainings"][training]["arms"][a]["at"].get(n, math.nan) for s in have] for a in arms}
            out["hv"].setdefault(training, {})[n] = {a: {"mean": float(np.mean(v)), "median": float(np.median(v)), "min": min(v), "max": max(v)}
                                                     for a, v in cells.items()}
            out["vs_mrg"].setdefault(training, {})[n] = {a: wilcoxon(cells["mrg"], v) for a, v in cells.items() if a != "mrg"}

    def test(s: dict, t: str) -> float | None:
        if t == "cmt":
            return s["cmt"]["test"] if s.get("cmt") else None
        row = s["trainings"].get(t, {}).get("selected_test")
        return row["test"] if row else None

    def paired(a: str, b: str) -> dict:
        pairs = [(test(s, a), test(s, b), s["seed"]) for s in seeds]
        pairs = [p for p in pairs if p[0] is not None and p[1] is not None]
        if not pairs:
            return {"seeds": [], "wins": 0, "losses": 0, "ties": 0, "p": None, "median_diff": math.nan}
        return wilcoxon([p[0] for p in pairs], [p[1] for p in pairs]) | {"seeds": [p[2] for p in pairs]}

    out["selected"] = {
        "mean": {t: float(np.mean(v)) if (v := [x for s in seeds if (x := test(s, t)) is not None]) else math.nan for t in (*TRAININGS, "cmt")},
        "prior_vs_no_rank": paired("prior", "no_rank"),
        "prior_vs_uniform": paired("prior", "uniform"),
        "vs_cmt": {t: paired(t, "cmt") for t in TRAININGS},
    }
    return out


def targets(summary: dict, points: list[int]) -> list[dict]:
    """Issue 17's targets, each met or not (counted over the seeds that are done)."""
    rows = []
    for n in map(str, points):
        for arm in ("size", "flat", "single"):
            c = summary["vs_mrg"]["prior"][n][arm]
            k = c["wins"] + c["losses"] + c["ties"]
            met = k >= 10 and c["wins"] >= math.ceil(0.8 * k) and c["p"] is not None and c["p"] < 0.05
            rows.append({"target": f"mrg beats {arm} at {n} trials (>= 8 of 10 seeds, p < 0.05)", "met": met,
                         "figures": f"{c['wins']} wins / {c['losses']} losses / {c['ties']} ties of {k} seeds, p = {_p(c['p'])}"})
    c = summary["selected"]["prior_vs_no_rank"]
    rows.append({"target": "prior-guided beats lambda = 0 on the selected subnet's test accuracy (p < 0.05)",
                 "met": len(c["seeds"]) >= 10 and c["p"] is not None and c["p"] < 0.05 and c["wins"] > c["losses"],
                 "figures": f"{c['wins']} wins / {c['losses']} losses / {c['ties']} ties of {len(c['seeds'])} seeds, p = {_p(c['p'])}"})
    c = summary["selected"]["vs_cmt"]["prior"]
    rows.append({"target": "the selected subnet beats the full CMT on test accuracy in >= 8 of 10 seeds",
                 "met": len(c["seeds"]) >= 10 and c["wins"] >= 8,
                 "figures": f"{c['wins']} wins / {c['losses']} losses / {c['ties']} ties of {len(c['seeds'])} seeds, p = {_p(c['p'])}"})
    return rows


def _p(p: float | None) -> str:
    return "–" if p is None else f"{p:.3g}"


def _test(row: dict | None) -> str:
    return "–" if not row else f"{row['test']:.4f}"


def markdown(report: dict) -> str:
    m, st, sm = report["machine"], report["settings"], report["summary"]
    lines = [f"**bench_method** ({m['date']}, {m['cpu_model']} x{m['cpu_count']}, load {m['loadavg_start'][0]:.1f} → "
             f"{m['loadavg_end'][0]:.1f}; family {st['family']}, seeds {st['seeds']}, {st['trials']} trials, "
             f"{st['epochs']} epochs on {st['train_samples']} training samples; "
             f"{report['seed_cpu_s'] / 60:.0f} CPU-min of training jobs, {report['wall_s']:.0f} s of wall time in this invocation)", ""]
    points = st["points"]
    for training in TRAININGS:
        if training not in sm["hv"]:
            lines += [f"Training `{training}`: not run.", ""]
            continue
        arms = list(sm["hv"][training][str(points[0])])
        lines += [f"Training `{training}` (seeds {', '.join(map(str, sm['seeds'][training]))}): fraction of the reference "
                  "hypervolume, mean (min–max) over seeds; `mrg` against the arm: wins/losses/ties, Wilcoxon p", "",
                  "| arm | " + " | ".join(f"{n} trials | mrg vs arm at {n}" for n in points) + " |",
                  "|---|" + "---|---|" * len(points)]
        for a in arms:
            cells = []
            for n in map(str, points):
                h = sm["hv"][training][n][a]
                cells.append(f"{100 * h['mean']:.1f} % ({100 * h['min']:.1f}–{100 * h['max']:.1f})")
                c = sm["vs_mrg"][training][n].get(a)
                cells.append("–" if c is None else f"{c['wins']}/{c['losses']}/{c['ties']}, p {_p(c['p'])}")
            lines.append(f"| {a} | " + " | ".join(cells) + " |")
        lines.append("")
    sel = sm["selected"]
    lines += ["Selected subnet (mrg search, best validation accuracy on its front, trained stand-alone), test accuracy per seed "
              "(– not run):", "",
              "| seed | " + " | ".join(TRAININGS) + " | full CMT | selected mask (prior) |", "|---|" + "---|" * (len(TRAININGS) + 2)]
    for s in report["seeds"]:
        lines.append(f"| {s['seed']} | " + " | ".join(_test(s["trainings"].get(t, {}).get("selected_test")) for t in TRAININGS)
                     + f" | {_test(s.get('cmt'))} | `{s['trainings']['prior']['selected']}` |")
    lines.append("| **mean** | " + " | ".join(f"{sel['mean'][t]:.4f}" for t in TRAININGS) + f" | {sel['mean']['cmt']:.4f} | |")
    lines += ["", "Targets:", ""] + [f"- {t['target']}: {t['figures']} -> **{'MET' if t['met'] else 'NOT MET'}**" for t in report["targets"]]
    lines += ["", "Informative paths' single-path validation accuracy (prior-guided supernet) and MRG keep probabilities q:", ""]
    for s in report["seeds"]:
        t = s["trainings"]["prior"]
        lines.append(f"- seed {s['seed']}: " + ", ".join(f"{p} {t['single_path_valid'][p]:.3f} (q {t['mrg_probs'][p]:.2f})" for p in t["informative"])
                     + f"; other paths: single-path accuracy at most {max(v for p, v in t['single_path_valid'].items() if p not in t['informative']):.3f}, "
                     f"q at most {max(q for p, q in t['mrg_probs'].items() if p not in t['informative']):.2f}")
    return "\n".join(lines) + "\n"


def _git_head() -> str:
    import subprocess

    try:
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def parse_seeds(text: str) -> list[int]:
    seeds: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        seeds += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
    return seeds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0-9", help="data seeds, e.g. 0-9 or 0,3,5")
    parser.add_argument("--trials", type=int, default=max(POINTS))
    parser.add_argument("--family", default=FAMILY)
    parser.add_argument("--small", type=int, default=2, help="every mask of at most this many paths joins the reference front")
    parser.add_argument("--epochs", type=int, default=0, help="epochs of every training instead of the family's (0: the family's)")
    parser.add_argument("--train-samples", type=int, default=0, help="training samples instead of the family's (0: the family's)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="a tiny smoke run (1 seed, 2 epochs, 12 trials); writes *_quick files")
    parser.add_argument("--out", default="", help="write DIR/bench_method.json and .md")
    parser.add_argument("--report-only", action="store_true", help="run nothing: report the cached jobs")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    try:
        seeds = parse_seeds(QUICK["seeds"] if args.quick else args.seeds)
    except ValueError:
        parser.error(f"--seeds {args.seeds!r}: use e.g. 0-9 or 0,3,5")
    trials = QUICK["trials"] if args.quick else args.trials
    small = QUICK["small"] if args.quick else args.small
    try:
        problem(0, args.family)
    except ValueError as exc:
        parser.error(str(exc))
    cut = (args.epochs, args.train_samples)
    torch.set_num_threads(1)
    info = _common.machine_info(optuna=optuna.__version__, code=_git_head())  # the commit this invocation started from
    print(f"# bench_method  {info['date']}  load {' '.join(f'{x:.2f}' for x in info['loadavg_start'])}", flush=True)
    sha = config_sha256({"family": args.family, "quick": args.quick, "trials": trials, "small": small,
                         "problem": [asdict(c) for c in problem(0, args.family, args.quick, cut)]})[:12]
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    jobs_file = CACHE_DIR / ("jobs_quick.jsonl" if args.quick else "jobs.jsonl")
    done = _common.load_jsonl(jobs_file, "key")
    key = lambda kind, seed, what: f"{args.family}|{sha}|{kind}|{seed}|{what}"  # noqa: E731
    common = (args.family, args.quick, cut, trials, small)
    started = time.perf_counter()

    def record(row: dict) -> None:
        row["key"] = key(row["kind"], row["seed"], row["what"])
        done[row["key"]] = row
        with jobs_file.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"  {row['kind']} seed {row['seed']} {row['what']}: {row['seconds']:.0f} s, {row['cpu_s']:.0f} CPU-s "
              f"({time.perf_counter() - started:.0f} s)", flush=True)

    def run(jobs: list[tuple]) -> None:
        todo = [j for j in jobs if key(j[0], j[1], j[2]) not in done]
        if todo and not args.report_only:
            _common.run_jobs(todo, run_job, record, workers=args.workers, initializer=bench_efficiency._init_worker)

    # phases, the targets' arms first, so that a run cut short still answers them
    for phase in (("prior", "no_rank"), ("uniform",)):
        run([("training", seed, t, *common) for t in phase for seed in seeds])
        masks = [(seed, done[k]["selected"]) for t in phase for seed in seeds if (k := key("training", seed, t)) in done]
        masks += [(seed, "1" * len(done[k]["paths"])) for seed in seeds if (k := key("training", seed, "prior")) in done]
        run([("standalone", seed, m, *common) for seed, m in dict.fromkeys(masks)])
    rows = assemble(done, key, seeds)
    if not rows:
        raise SystemExit("error: no seed's prior-guided training is done yet; run without --report-only")
    points = [n for n in POINTS if n <= trials] or [trials]
    summary = summarise(rows, points)
    info["loadavg_end"] = list(os.getloadavg())
    cpu = sum(r["cpu_s"] for r in done.values() if r["key"].startswith(f"{args.family}|{sha}|") and r["seed"] in seeds)
    report = {"machine": info, "settings": {"family": args.family, "seeds": ", ".join(str(r["seed"]) for r in rows),
                                            "trials": trials, "points": points, "epochs": problem(0, args.family, args.quick, cut)[2].epochs,
                                            "train_samples": problem(0, args.family, args.quick, cut)[0].samples[0], "small": small, "quick": args.quick},
              "wall_s": time.perf_counter() - started, "seed_cpu_s": cpu, "summary": summary, "targets": targets(summary, points), "seeds": rows}
    _common.publish(report, markdown(report), out=args.out, stem="bench_method_quick" if args.quick else "bench_method", as_json=args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
