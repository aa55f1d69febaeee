"""Benchmark: the paper's Table 5 (baselines and ablations) and Table 4 (rank losses) on our data.

Usage: python benchmarks/bench_tables.py --dataset mfeat|planted [--seeds 0,1,2] [--trials N]
                                         [--epochs E] [--select best|within:EPS] [--ablation paper|search]
                                         [--rank-losses l0,l1,l2,linf] [--tables 4,5]
                                         [--train KEY=VALUE ...] [--tag NAME]
                                         [--workers W] [--quick] [--fresh] [--json] [--out DIR]

Datasets: ``mfeat`` is UCI Multiple Features (``studies/mfeat.toml``: six real views, 10
classes, stratified 70/15/15 split with data seed 0); ``planted`` is the demo study's synthetic
data (``studies/demo.toml``: text, audio, vision; planted paths audio->text and text->vision;
binary classification). The split and the data are the same for every seed; the seed changes
the supernet's training, every stand-alone training and the samplers.

**Budget.** Every model is trained with the study's [train] settings (epochs, batch size, lr,
weight decay, AdamW; ``--epochs`` overrides the epochs for everything). A search has ``--trials``
complete trials (default: the study's ``[search] trials``), the first ``n_startup_trials``
uniform. Each stand-alone model is the one after its last epoch (no early stopping, for every row
alike), scored on the test split.

**Table 5** (``--ablation paper``, the default: each ablation is the whole pipeline without its
part, as in the paper; per seed up to three supernets, all trained by ``train_supernet``):

- *Concat+MLP*, *EmbraceNet* (``supernet.baselines``), trained stand-alone;
- *Pairwise CMT*: the supernet architecture with all paths on, trained stand-alone
  (``supernet.train.train_subnet``);
- four searches, each ``create_search`` + the service's ``Objective`` (cached exact scoring on
  the validation split, objectives accuracy and MFLOPs) through the supernet its row trains
  (``TRAININGS``/``VARIANT_TRAINING``, ``training_overrides``), driven by an ``MROSampler`` built
  from ``sampler_options``; one line per arm (what it changes against *Full MRO*):
    - *MRO w/o prior guidance*: supernet masks uniform throughout (``warmup_epochs = epochs``); every trial a uniform untried mask (flat prior, no refinement).
    - *MRO w/o MRG prior*: the same uniform-throughout supernet; the full sampler (refinement, local moves) from a flat prior ``[0.5] * P``.
    - *MRO w/o rank regularization*: λ = 0 only: ``prior_lr = 0``, ``rank_weight = 0`` in training (the prior keeps its seed's initial weights) and ``refine_steps = 0`` in the search; local moves stay.
    - *Full MRO*: the supernet as the service trains it; ``MROSampler(n_startup_trials, seed)`` as ``run_worker`` builds it.
  Every supernet's prior is initialised from its [train] seed, so each row's seeds are distinct
  draws (before 2026-12-07 the prior's initialisation was the same in every seed, and the λ = 0
  row also switched local moves off);
  then the selected mask (rule below) is trained stand-alone like the CMT. The four samplers get
  the same seed, so their uniform start-up trials are the same masks (common random numbers).

  ``--ablation search`` keeps the earlier form (the "before" in docs/RESULTS.md): the four
  searches run through ONE supernet trained as the service trains it, so the rows ablate the
  search only.

**Selection rule** (``--select``). The paper selects "the top-k subnets with the highest prior
scores and/or best validation performance". Here: among the search's Pareto front (validation
accuracy from the supernet's shared weights, MFLOPs), ``best`` takes the member with the highest
validation accuracy (ties: fewer MFLOPs); ``within:EPS`` takes the cheapest member whose
validation accuracy is at least the front's best minus EPS (e.g. ``within:0.01``).

**Table 4**: a supernet per rank loss p in {0 (l0), 1 (l1), 2 (l2), inf (linf)} and seed. Spearman
rho between the prior's scores of masks and their measured validation losses is the one
``train_supernet`` logs after every epoch (512 validation samples; all masks when there are at
most 512, else 512 uniform masks): the last epoch's value and the mean over the epochs after
warm-up. The found architecture is the Full MRO search through that supernet (its refinement uses
the same rank loss), selected by the same rule, trained stand-alone and scored on test.

**Supernet training options** (``--train KEY=VALUE``, repeatable, TOML values, as in
``bench_fidelity.py``): override the study's [train] for every supernet of the run, e.g.
``--train joint_rank=true`` for Table 4 under joint optimization; stand-alone trainings do not
depend on them and are shared with runs without them. ``--tag NAME`` names the result files
``bench_tables_DATASET_TAG``.

Supernets are keyed by (training, rank loss, seed); a training is the study's [train] table
with the ``--train`` overrides and those of ``TRAININGS``. FLOPs: fvcore on one sample (``supernet.flops.count_flops`` on the masked model;
``supernet.baselines.count_flops``). Reported: mean ± sample std over seeds. MRO against CMT is
also compared per seed (paired differences). Trainings and searches run in ``--workers``
processes (spawned, one torch thread each). Supernet checkpoints are cached in
``runs/bench_tables/STUDY-LOSS-TRAINING-seedS-<config sha>/checkpoints/`` (``write_checkpoint``: the run
directory's latest training, trained with exactly that configuration) and stand-alone results in a JSONL
file there, so an interrupted run resumes; ``--fresh`` ignores both. Writes
``DIR/bench_tables_DATASET.json`` and ``.md`` (``--ablation search``: ``..._search-ablation``;
``--quick``: ``..._quick``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict
from multiprocessing import get_context
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402
import optuna  # noqa: E402
import torch  # noqa: E402
from _common import check_tag, parse_overrides  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from search_service.creation import create_search  # noqa: E402
from search_service.evaluator import Evaluator, load_study_data, objective_metric  # noqa: E402
from search_service.sampler import MROSampler  # noqa: E402
from search_service.search import FULL_MASK_KEY, Objective, pareto_front  # noqa: E402
from search_service.study_file import Study, load_study  # noqa: E402
from supernet.baselines import count_flops as baseline_flops  # noqa: E402
from supernet.baselines import make_baseline, num_parameters  # noqa: E402
from supernet.config import config_sha256  # noqa: E402
from supernet.data.dataset import MultimodalData, Split  # noqa: E402
from supernet.flops import count_flops as subnet_flops  # noqa: E402
from supernet.metrics import compute_metrics  # noqa: E402
from supernet.paths import format_mask, mask_from_paths, num_paths, parse_mask, path_names  # noqa: E402
from supernet.scoring import batches  # noqa: E402
from supernet.train import model_spec, task_loss, train_subnet  # noqa: E402

CACHE_DIR = ROOT / "runs" / "bench_tables"
DATASETS = {"mfeat": "mfeat", "planted": "demo"}
QUICK = {"seeds": "0", "epochs": 2, "warmup_epochs": 1, "trials": 12, "n_startup_trials": 4,
         "planted_samples": [1000, 300, 300]}
TABLE4_LOSSES = ("l0", "l1", "l2", "linf")
P_LABEL = {"l0": "0", "l1": "1", "l2": "2", "linf": "∞", "hinge": "hinge"}
BASELINES = ("concat_mlp", "embracenet")
VARIANTS = ("no_guidance", "no_mrg", "no_rank", "full")
ABLATIONS = ("paper", "search")
# The supernet trainings (overrides of the study's [train] table) and which one each Table 5 row
# searches under --ablation paper (see the module docstring); --ablation search uses "full" for all.
TRAININGS = ("full", "uniform", "no_rank")
VARIANT_TRAINING = {"no_guidance": "uniform", "no_mrg": "uniform", "no_rank": "no_rank", "full": "full"}


def training_overrides(training: str, epochs: int) -> dict:
    """The [train] settings a supernet training changes: uniform masks throughout, or λ = 0."""
    if training == "full":
        return {}
    if training == "uniform":
        return {"warmup_epochs": epochs}  # every epoch a warm-up epoch: masks uniform throughout
    if training == "no_rank":
        return {"prior_lr": 0.0, "rank_weight": 0.0}  # R never moves the prior (nor, joint_rank, the supernet)
    raise ValueError(f"unknown training {training!r}; one of {TRAININGS}")
ROW_NAMES = {
    "concat_mlp": "Concat+MLP",
    "embracenet": "EmbraceNet",
    "cmt": "Pairwise CMT (all paths)",
    "no_guidance": "MRO w/o prior guidance",
    "no_mrg": "MRO w/o MRG prior",
    "no_rank": "MRO w/o rank regularization",
    "full": "Full MRO",
}
TABLE5_ROWS = ("concat_mlp", "embracenet", "cmt", *VARIANTS)
METRICS = {"classification": ("accuracy", "f1_macro", "f1_weighted"),
           "regression": ("mae", "corr", "acc_7", "acc_2_non0", "f1_non0")}


# ----------------------------------------------------------------------------- setup


def machine_info() -> dict:
    return _common.machine_info(optuna=optuna.__version__)


def prepare_study(dataset: str, seed: int, rank_loss: str | None, args, training: str = "full") -> Study:
    """The dataset's study with the benchmark's seed, rank loss, epochs, trials and supernet
    training (``TRAININGS``), and its own cache directory (named by the configuration's SHA-256)."""
    study = load_study(DATASETS[dataset])
    if args.quick:
        study.train.epochs = QUICK["epochs"]
        study.train.warmup_epochs = QUICK["warmup_epochs"]
        study.search.n_startup_trials = min(study.search.n_startup_trials, QUICK["n_startup_trials"])
        if study.data.source == "synthetic":
            study.data.samples = list(QUICK["planted_samples"])
    if args.epochs is not None:
        study.train.epochs = args.epochs
        study.train.warmup_epochs = min(study.train.warmup_epochs, args.epochs)
    if args.trials is not None:
        study.search.trials = args.trials
    study.search.n_startup_trials = min(study.search.n_startup_trials, study.search.trials)
    study.train.seed = seed
    study.train.device = "cpu"
    if rank_loss is not None:
        study.train.rank_loss = rank_loss
    for name, value in args.overrides.items():
        setattr(study.train, name, value)
    for name, value in training_overrides(training, study.train.epochs).items():
        setattr(study.train, name, value)
    label = "" if training == "full" else f"-{training}"
    study.search.run_dir = str(CACHE_DIR / f"{study.name}-{study.train.rank_loss}{label}-seed{seed}-{study.sha256[:12]}")
    return study


def standalone_key(study: Study, what: str, mask: str) -> str:
    """What a stand-alone result depends on: data, model, the training recipe and seed, the model."""
    train = asdict(study.train)
    for unused in ("rank_loss", "rank_every", "rank_masks", "prior_lr", "warmup_epochs", "masks_per_step",
                   "joint_rank", "rank_weight", "prior_gnn", "prior_keep"):
        train.pop(unused)
    return config_sha256({"data": asdict(study.data), "model": asdict(study.model), "train": train,
                          "what": what, "mask": mask})


def parse_select(text: str) -> float | None:
    """``best`` -> None; ``within:EPS`` -> EPS."""
    if text == "best":
        return None
    if text.startswith("within:"):
        eps = float(text.split(":", 1)[1])
        if eps >= 0:
            return eps
    raise argparse.ArgumentTypeError(f"--select must be 'best' or 'within:EPS' with EPS >= 0, got {text!r}")


# ----------------------------------------------------------------------------- jobs (any process)

_DATA: dict[str, MultimodalData] = {}


def _init_worker() -> None:
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def study_data(study: Study) -> MultimodalData:
    key = config_sha256(asdict(study.data))
    if key not in _DATA:
        _DATA.clear()
        _DATA[key] = load_study_data(study)
    return _DATA[key]


def job_supernet(study: Study, fresh: bool, training: str = "full") -> dict:
    """Train the study's supernet with its rank loss and seed, unless exactly this one is cached."""
    started = time.perf_counter()
    if fresh:
        _common.forget_checkpoint(study)
    ckpt = _common.cached_checkpoint(study)
    cached = ckpt is not None
    if not cached:  # RUN_DIR/checkpoints/<identity>.pt, the run directory's latest training
        ckpt = _common.train_checkpoint(study, study_data(study))
    history = ckpt.history
    after_warmup = [r["spearman"] for r in history if r.get("phase") == "prior" and not math.isnan(r["spearman"])]
    return {
        "kind": "supernet",
        "training": training,
        "seed": study.train.seed,
        "rank_loss": study.train.rank_loss,
        "cached": cached,
        "seconds": time.perf_counter() - started,
        "train_seconds_recorded": float(sum(r.get("seconds", 0.0) for r in history)),
        "spearman_last": float(history[-1]["spearman"]) if history else float("nan"),
        "spearman_mean_after_warmup": statistics.mean(after_warmup) if after_warmup else float("nan"),
        "spearman_per_epoch": [float(r["spearman"]) for r in history],
        "valid_loss_full_last": float(history[-1]["valid_loss_full"]) if history else float("nan"),
        "checkpoint": _rel(ckpt.path),
        "checkpoint_identity": ckpt.identity,
    }


def sampler_options(variant: str, study: Study, n_paths: int) -> dict:
    """The ``MROSampler`` options of one Table 5 search row (see the module docstring): each
    ablation differs from the full row only in what it removes."""
    n0 = study.search.n_startup_trials
    flat = [0.5] * n_paths
    if variant == "no_guidance":
        return {"prior_keep_probs": flat, "n_startup_trials": study.search.trials}
    if variant == "no_mrg":
        return {"prior_keep_probs": flat, "n_startup_trials": n0}
    if variant == "no_rank":  # λ = 0: the prior is never refit to the trials; local moves stay
        return {"n_startup_trials": n0, "refine_steps": 0}
    if variant == "full":
        return {"n_startup_trials": n0}  # as search.run_worker builds it
    raise ValueError(variant)


def make_sampler(variant: str, study: Study, n_paths: int, seed: int) -> MROSampler:
    """The sampler of one Table 5 search row (``sampler_options``)."""
    return MROSampler(**sampler_options(variant, study, n_paths), seed=seed)


def select(front: list[dict], within: float | None) -> dict:
    """The selection rule: the best validation accuracy on the front (ties: fewer MFLOPs), or
    the cheapest front member within ``within`` of it."""
    best = max(r["values"][0] for r in front)
    floor = best if within is None else best - within
    candidates = [r for r in front if r["values"][0] >= floor]
    return min(candidates, key=lambda r: (r["mflops"], -r["values"][0], r["trial"]))


def job_search(study: Study, variant: str, within: float | None) -> dict:
    """One search through the study's trained supernet; returns the front and the selection."""
    data = study_data(study)
    seed = study.train.seed
    ckpt = _common.cached_checkpoint(study)
    if ckpt is None:
        raise RuntimeError(f"no supernet checkpoint for seed {seed} in {study.run_dir / 'checkpoints'} (its supernet job runs first)")
    evaluator = Evaluator(study, ckpt, data)
    P = ckpt.model.num_paths
    budget = study.search.trials
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_tables_") as tmp:
        # the study's artifacts (a copy of the checkpoint) go with the temporary study, not into runs/
        # the paper's method: the full row proposes from the trained MRG prior ([search] prior = "mrg";
        # the service's default is the single-path prior since issue 17)
        study = dataclasses.replace(study, search=dataclasses.replace(study.search, prior="mrg"))
        search = create_search(study, f"sqlite:///{tmp}/search.db", evaluator, trials=budget, artifacts_at=f"{tmp}/artifacts")
        optuna_study = search.optuna_study
        optuna_study.sampler = make_sampler(variant, study, P, seed)
        objective = Objective(search, evaluator, study.search.split)
        for _ in range(2 * budget):  # MROSampler never proposes the empty mask: budget rounds suffice
            complete = sum(t.state == TrialState.COMPLETE for t in optuna_study.get_trials(deepcopy=False))
            if complete >= budget:
                break
            optuna_study.optimize(objective, n_trials=1, catch=(), gc_after_trial=False)
        trials = [t for t in optuna_study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
        front = pareto_front(search)
        full = search.attrs.get(FULL_MASK_KEY)
        storage = optuna_study._storage
        engine = getattr(getattr(storage, "_backend", storage), "engine", None)
        if engine is not None:
            engine.dispose()
    seconds = time.perf_counter() - started
    chosen = select(front, within)
    mask = evaluator.parse(chosen["mask"])
    shared_test = evaluator.evaluate(mask, "test")["metrics"]
    metric = evaluator.metric
    return {
        "kind": "search",
        "seed": seed,
        "rank_loss": study.train.rank_loss,
        "variant": variant,
        "trials": len(trials),
        "distinct_masks": len({t.user_attrs.get("mask") for t in trials}),
        "seconds": seconds,
        "metric": metric,
        "best_valid": max(t.values[0] for t in trials),
        "front": [{"mask": r["mask"], "valid": r["values"][0], "mflops": r["mflops"]} for r in front],
        "full_mask_valid": (full or {}).get("metrics", {}).get(metric),
        "mask": chosen["mask"],
        "paths": sum(mask),
        "active_paths": chosen["active_paths"],
        "selected_valid": chosen["values"][0],
        "selected_mflops": chosen["mflops"],
        "shared_weights_test": shared_test,
    }


def _metrics(forward, split: Split, names: list[str], task: str) -> tuple[dict[str, float], float]:
    outputs = []
    with torch.no_grad():
        for features, lengths, _ in batches(split, names, 256):
            outputs.append(forward(features, lengths))
    out = torch.cat(outputs)
    loss = float(task_loss(out, split.labels, task))
    return compute_metrics(out.squeeze(-1) if task == "regression" else out, split.labels, task), loss


def _train_baseline(name: str, data: MultimodalData, study: Study) -> torch.nn.Module:
    """A baseline trained with ``train_subnet``'s recipe: same seed, AdamW, epochs, batch size,
    learning rate, weight decay and batch order; the model after the last epoch."""
    cfg = study.train
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    model = make_baseline(name, model_spec(data), study.model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    train = data.splits["train"]
    for _ in range(cfg.epochs):
        model.train()
        order = torch.randperm(len(train), generator=g)
        for features, lengths, labels in batches(train, data.modality_names, cfg.batch_size, order):
            optimizer.zero_grad(set_to_none=True)
            task_loss(model(features, lengths), labels, data.task).backward()
            optimizer.step()
    return model.eval()


def job_standalone(study: Study, what: str, mask: str) -> dict:
    """Train one model stand-alone (a baseline, or the subnet ``mask`` selects) and score it."""
    data = study_data(study)
    names = data.modality_names
    started = time.perf_counter()
    if what == "subnet":
        bits = parse_mask(mask, num_paths(len(data.modalities)))
        model = train_subnet(data, study.model, study.train, bits).model.eval()

        def forward(features, lengths):
            return model(features, bits, lengths)

        mflops = subnet_flops(model, bits) / 1e6
        params = model.num_parameters(bits)
    else:
        model = _train_baseline(what, data, study)
        forward = model
        mflops = baseline_flops(model) / 1e6
        params = num_parameters(model)
    seconds = time.perf_counter() - started
    test, test_loss = _metrics(forward, data.splits["test"], names, data.task)
    valid, valid_loss = _metrics(forward, data.splits["valid"], names, data.task)
    return {
        "kind": "standalone",
        "key": standalone_key(study, what, mask),
        "seed": study.train.seed,
        "what": what,
        "mask": mask,
        "paths": mask.count("1") if what == "subnet" else None,
        "test": test,
        "test_loss": test_loss,
        "valid": valid,
        "valid_loss": valid_loss,
        "mflops": mflops,
        "params": params,
        "seconds": seconds,
    }


def _run(job: tuple) -> dict:
    kind, *args = job
    return {"supernet": job_supernet, "search": job_search, "standalone": job_standalone}[kind](*args)


def run_jobs(jobs: list[tuple], pool: ProcessPoolExecutor | None, on_result) -> None:
    """Run the jobs in ``pool`` (or here, one after the other, without one); ``on_result`` gets
    each result as it comes, in the main process."""
    if pool is None:
        for job in jobs:
            on_result(_run(job))
        return
    pending = {pool.submit(_run, job) for job in jobs}
    while pending:
        finished, pending = wait(pending, return_when=FIRST_COMPLETED)
        for future in finished:
            on_result(future.result())


# ----------------------------------------------------------------------------- analysis


def _rel(path: Path) -> str:
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def mean_std(xs: list[float]) -> tuple[float, float]:
    xs = [float(x) for x in xs if x is not None and not math.isnan(float(x))]
    if not xs:
        return float("nan"), float("nan")
    return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else float("nan"))


def fmt(pair: tuple[float, float], digits: int = 4) -> str:
    m, s = pair
    if math.isnan(m):
        return "–"
    return f"{m:.{digits}f}" + ("" if math.isnan(s) else f" ± {s:.{digits}f}")


def summarise(rows: list[dict], metrics: tuple[str, ...]) -> dict:
    """Mean and std over seeds of the test metrics, MFLOPs and parameters of one table row."""
    out = {m: mean_std([r["test"][m] for r in rows]) for m in metrics}
    out["mflops"] = mean_std([r["mflops"] for r in rows])
    out["params"] = mean_std([r["params"] for r in rows])
    return out


def planted_info(data: MultimodalData, mask: str) -> dict | None:
    if not data.informative_paths:
        return None
    planted = format_mask(mask_from_paths(data.informative_paths, data.modality_names))
    bits = [int(c) for c in mask]
    want = [int(c) for c in planted]
    return {"planted_mask": planted, "exact": mask == planted,
            "contains": all(b >= w for b, w in zip(bits, want))}


def compare(mro: list[dict], cmt: list[dict], metric: str) -> dict:
    """Per-seed paired comparison of a search row with the full CMT."""
    by_seed = {r["seed"]: r for r in cmt}
    deltas, ratios, wins = [], [], 0
    for r in mro:
        c = by_seed.get(r["seed"])
        if c is None:
            continue
        d = r["test"][metric] - c["test"][metric]
        ratio = r["mflops"] / c["mflops"]
        deltas.append(d)
        ratios.append(ratio)
        wins += int(d > 0 and ratio < 1)
    return {"delta": mean_std(deltas), "deltas": deltas, "mflops_ratio": mean_std(ratios),
            "better_and_cheaper_seeds": wins, "seeds": len(deltas),
            "not_worse_and_cheaper_seeds": sum(1 for d, q in zip(deltas, ratios) if d >= 0 and q < 1)}


def markdown(report: dict) -> str:
    s, info = report["settings"], report["machine"]
    metric_cols = report["metric_columns"]
    lines = [
        f"**bench_tables, dataset `{s['dataset']}`** (study `{s['study']}`; {info['date']}, {info['cpu_model']} "
        f"x{info['cpu_count']}, load {info['loadavg_start'][0]:.1f} → {info['loadavg_end'][0]:.1f}; seeds {s['seeds']}; "
        f"{s['epochs']} epochs ({s['warmup_epochs']} warm-up) for every model; {s['trials']} trials per search "
        f"({s['n_startup_trials']} uniform first); selection `{s['select']}`; "
        f"ablation `{s.get('ablation', 'search')}`; {s['workers']} workers"
        + "".join(f"; supernet `{k} = {json.dumps(v)}`" for k, v in (s.get("train_overrides") or {}).items())
        + f"{'; QUICK settings' if s['quick'] else ''}; wall time {report['wall_s']:.0f} s)",
        "",
    ]
    if "table5" in report:
        t5 = report["table5"]
        lines += [
            f"Table 5 form: test metrics of models trained stand-alone, mean ± std over {len(s['seeds'])} seed(s). "
            f"Supernet valid = the selected mask's validation {report['metric']} with the supernet's shared weights "
            "(what the search saw).",
            "",
            "| model | paths (per seed) | " + " | ".join(metric_cols) + " | MFLOPs | params | supernet valid |",
            "|---|---|" + "---|" * len(metric_cols) + "---|---|---|",
        ]
        for key in TABLE5_ROWS:
            row = t5["rows"].get(key)
            if row is None:
                continue
            summ = row["summary"]
            paths = ", ".join(str(p) for p in row["paths"]) if row["paths"] else "–"
            sv = fmt(mean_std(row["supernet_valid"])) if row.get("supernet_valid") else "–"
            lines.append(
                f"| {ROW_NAMES[key]} | {paths} | " + " | ".join(fmt(summ[m]) for m in metric_cols)
                + f" | {fmt(summ['mflops'], 3)} | {fmt(summ['params'], 0)} | {sv} |"
            )
        trainings = {k: t5["rows"][k].get("training") for k in VARIANTS if k in t5["rows"]}
        if any(trainings.values()):
            labels = {"full": "as the service trains it", "uniform": "uniform masks throughout",
                      "no_rank": "prior_lr = 0 (λ = 0)"}
            lines += ["", "Supernet each search row ran through (Spearman ρ of its prior at the last epoch, per seed):", ""]
            for key, training in trainings.items():
                rho = ", ".join(f"{x:.3f}" for x in t5["rows"][key].get("supernet_spearman_last", []))
                lines.append(f"- {ROW_NAMES[key]}: {labels.get(training, training)} (ρ {rho})")
        lines += ["", "Selected masks (path order: " + ", ".join(report["path_names"]) + "):", ""]
        for key in VARIANTS:
            row = t5["rows"].get(key)
            if row is None:
                continue
            extra = ""
            if row.get("planted"):
                exact = sum(p["exact"] for p in row["planted"])
                contains = sum(p["contains"] for p in row["planted"])
                extra = f" — planted mask exactly: {exact}/{len(row['planted'])} seeds, contains the planted paths: {contains}/{len(row['planted'])}"
            lines.append(f"- {ROW_NAMES[key]}: " + ", ".join(f"`{m}`" for m in row["masks"]) + extra)
        lines.append("")
        for key, c in t5["versus_cmt"].items():
            lines.append(
                f"- {ROW_NAMES[key]} − CMT ({report['metric']}, paired per seed): {fmt(c['delta'])}; "
                f"MFLOPs ratio {fmt(c['mflops_ratio'], 3)}; better and cheaper in {c['better_and_cheaper_seeds']}/{c['seeds']} "
                f"seeds (not worse and cheaper: {c['not_worse_and_cheaper_seeds']}/{c['seeds']})"
            )
        lines.append("")
    if "table4" in report:
        t4 = report["table4"]
        lines += [
            "Table 4 form: Spearman ρ between the prior's mask scores and the supernet's validation losses (logged by "
            "`train_supernet`; last epoch, and mean over the epochs after warm-up), and the Full MRO search's "
            "selection trained stand-alone (test).",
            "",
            "| p | rank loss | ρ (last epoch) | ρ (mean after warm-up) | paths (per seed) | "
            + " | ".join(metric_cols) + " | MFLOPs |",
            "|---|---|---|---|---|" + "---|" * len(metric_cols) + "---|",
        ]
        for loss, row in t4["rows"].items():
            summ = row["summary"]
            lines.append(
                f"| {P_LABEL.get(loss, loss)} | {loss} | {fmt(mean_std(row['spearman_last']), 3)} | "
                f"{fmt(mean_std(row['spearman_mean_after_warmup']), 3)} | {', '.join(str(p) for p in row['paths'])} | "
                + " | ".join(fmt(summ[m]) for m in metric_cols) + f" | {fmt(summ['mflops'], 3)} |"
            )
        lines.append("")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main


def load_cache(path: Path) -> dict[str, dict]:
    return _common.load_jsonl(path, "key")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=tuple(DATASETS), default="mfeat")
    parser.add_argument("--seeds", default=None, help="comma-separated seeds (default 0,1,2; quick: 0)")
    parser.add_argument("--trials", type=int, default=None,
                        help=f"complete trials per search (default: the study's [search] trials; quick: {QUICK['trials']})")
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs of every training, supernet and stand-alone (default: the study's; quick: 2)")
    parser.add_argument("--select", default="best",
                        help="architecture selection from a search's Pareto front: best (default) or within:EPS")
    parser.add_argument("--rank-losses", default=",".join(TABLE4_LOSSES), help="Table 4's rank losses")
    parser.add_argument("--tables", default="4,5", help="which tables: 4, 5 or 4,5")
    parser.add_argument("--ablation", choices=ABLATIONS, default="paper",
                        help="paper (default): each ablation row trains its own supernet; search: one supernet, the rows ablate the search only")
    parser.add_argument("--train", action="append", default=[], metavar="KEY=VALUE",
                        help="override the study's [train] for every supernet (TOML value; repeatable), "
                             "e.g. --train joint_rank=true")
    parser.add_argument("--tag", default="", help="suffix of the result files: bench_tables_DATASET_TAG")
    parser.add_argument("--workers", type=int, default=1, help="processes for trainings and searches (1 torch thread each)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the main process (default 1)")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run: seed {QUICK['seeds']}, {QUICK['epochs']} epochs, {QUICK['trials']} trials, "
                             f"planted samples {QUICK['planted_samples']}")
    parser.add_argument("--fresh", action="store_true", help="ignore cached checkpoints and stand-alone results")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the text tables")
    parser.add_argument("--out", default=str(ROOT / "docs" / "results"), help="folder for the JSON and Markdown files")
    args = parser.parse_args(argv)
    args.overrides = parse_overrides(args.train)
    check_tag(args.tag)
    args.select_text = select_text = args.select
    try:
        args.select = parse_select(select_text)
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    if args.quick:
        args.seeds = args.seeds or QUICK["seeds"]
        args.trials = args.trials or QUICK["trials"]
    seeds = [int(s) for s in (args.seeds or "0,1,2").split(",") if s.strip()]
    tables = {t.strip() for t in args.tables.split(",") if t.strip()}
    if not tables <= {"4", "5"} or not tables:
        parser.error("--tables must name 4, 5 or both")
    losses = [x.strip() for x in args.rank_losses.split(",") if x.strip()] if "4" in tables else []
    torch.set_num_threads(args.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    say = (lambda msg: print(msg, file=sys.stderr, flush=True)) if args.json else (lambda msg: print(msg, flush=True))

    info = machine_info()
    started = time.perf_counter()
    base = prepare_study(args.dataset, seeds[0], None, args)
    study_loss = base.train.rank_loss
    data = study_data(base)
    metric = objective_metric(base)
    P = num_paths(len(data.modalities))
    say(f"# bench_tables  {info['date']}  {info['cpu_model']} x{info['cpu_count']}  torch {info['torch']}  "
        f"optuna {info['optuna']}  load {info['loadavg_start'][0]:.2f}")
    say(f"dataset {args.dataset} (study {base.name}): {len(data.modalities)} modalities, {P} paths; "
        f"train/valid/test {len(data.splits['train'])}/{len(data.splits['valid'])}/{len(data.splits['test'])}; "
        f"{base.train.epochs} epochs ({base.train.warmup_epochs} warm-up), batch {base.train.batch_size}, "
        f"lr {base.train.lr}; {base.search.trials} trials per search ({base.search.n_startup_trials} uniform first); "
        f"metric {metric}; seeds {seeds}; tables {sorted(tables)}; rank losses {losses or [study_loss]}; "
        f"selection {select_text}; {args.workers} workers"
        + (f"; supernet [train] overrides {args.overrides}" if args.overrides else ""))
    if data.informative_paths:
        say(f"planted paths: {', '.join(data.informative_paths)}")

    pool = None
    if args.workers > 1:  # one pool for every phase: a spawned worker pays its imports once
        pool = ProcessPoolExecutor(args.workers, mp_context=get_context("spawn"), initializer=_init_worker)
    try:
        report = _phases(args, seeds, tables, losses, base, data, metric, pool, info, started, say)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    text = markdown(report)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = (f"bench_tables_{args.dataset}{'_search-ablation' if args.ablation == 'search' else ''}"
            f"{'_' + args.tag if args.tag else ''}{'_quick' if args.quick else ''}")
    (out / f"{stem}.json").write_text(json.dumps(_clean(report), indent=1) + "\n")
    (out / f"{stem}.md").write_text(text + "\n")
    say(f"wrote {_rel(out / (stem + '.json'))} and {_rel(out / (stem + '.md'))}; wall time {report['wall_s']:.0f} s")
    if args.json:
        print(json.dumps(_clean(report)))
    else:
        print()
        print(text)
    return 0


def _phases(args, seeds, tables, losses, base, data, metric, pool, info, started, say) -> dict:
    """Supernets, then searches, then stand-alone trainings; returns the report."""
    study_loss = base.train.rank_loss
    P = num_paths(len(data.modalities))
    metric_cols = METRICS[data.task][:2]
    select_text = args.select_text

    # 1. supernets: the study's rank loss (Table 5: one per training its rows need) and Table 4's
    #    losses (the full training), per seed
    needed = sorted(({study_loss} if "5" in tables else set()) | set(losses))
    variant_training = VARIANT_TRAINING if args.ablation == "paper" else dict.fromkeys(VARIANTS, "full")
    wanted_trainings = {("full", loss) for loss in needed}
    if "5" in tables:
        wanted_trainings |= {(t, study_loss) for t in variant_training.values()}
    studies = {(training, loss, seed): prepare_study(args.dataset, seed, loss, args, training)
               for training, loss in sorted(wanted_trainings) for seed in seeds}
    supernets: dict[tuple[str, str, int], dict] = {}

    def on_supernet(r: dict) -> None:
        supernets[(r["training"], r["rank_loss"], r["seed"])] = r
        say(f"  supernet {r['training']} {r['rank_loss']} seed {r['seed']}: "
            + ("cached checkpoint" if r["cached"] else f"trained in {r['seconds']:.1f} s")
            + f"; Spearman rho last epoch {r['spearman_last']:.3f}, mean after warm-up {r['spearman_mean_after_warmup']:.3f}"
            + f"  ({time.perf_counter() - started:.0f} s elapsed)")

    say(f"1. {len(studies)} supernets")
    run_jobs([("supernet", s, args.fresh, key[0]) for key, s in studies.items()], pool, on_supernet)

    # 2. searches: Table 5's four variants on the study-loss supernet; Full MRO on each Table 4 loss
    search_jobs = []
    for seed in seeds:
        if "5" in tables:
            search_jobs += [("search", studies[(variant_training[v], study_loss, seed)], v, args.select) for v in VARIANTS]
        for loss in losses:
            if not ("5" in tables and loss == study_loss):
                search_jobs.append(("search", studies[("full", loss, seed)], "full", args.select))
    searches: dict[tuple[str, int, str], dict] = {}

    def on_search(r: dict) -> None:
        searches[(r["rank_loss"], r["seed"], r["variant"])] = r
        say(f"  search {ROW_NAMES[r['variant']]} ({r['rank_loss']}, seed {r['seed']}): {r['trials']} trials in "
            f"{r['seconds']:.1f} s, front {len(r['front'])}; selected {r['mask']} ({r['paths']} paths, "
            f"{r['selected_mflops']:.3f} MFLOPs, supernet valid {metric} {r['selected_valid']:.4f}; full mask "
            f"{r['full_mask_valid']:.4f})")

    say(f"2. {len(search_jobs)} searches")
    run_jobs(search_jobs, pool, on_search)

    # 3. stand-alone trainings, each (model, seed) once
    cache_path = CACHE_DIR / f"{base.name}{'-quick' if args.quick else ''}-standalone.jsonl"
    cache = {} if args.fresh else load_cache(cache_path)
    wanted: dict[str, tuple] = {}
    for seed in seeds:
        study = studies[("full", needed[0], seed)]
        if "5" in tables:
            for what in BASELINES:
                wanted[standalone_key(study, what, "")] = ("standalone", study, what, "")
            full = "1" * P
            wanted[standalone_key(study, "subnet", full)] = ("standalone", study, "subnet", full)
        for r in searches.values():
            if r["seed"] == seed:
                wanted[standalone_key(study, "subnet", r["mask"])] = ("standalone", study, "subnet", r["mask"])
    standalone = {k: v for k, v in cache.items() if k in wanted}
    todo = [job for key, job in wanted.items() if key not in standalone]
    todo.sort(key=lambda j: -(j[3].count("1") if j[2] == "subnet" else 0))  # the longest first
    if standalone:
        say(f"   {len(standalone)} stand-alone results cached in {_rel(cache_path)}")
    count = 0

    def on_standalone(r: dict) -> None:
        nonlocal count
        count += 1
        standalone[r["key"]] = r
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        with cache_path.open("a") as f:
            f.write(json.dumps(r) + "\n")
        name = ROW_NAMES.get(r["what"], f"subnet {r['mask']}")
        say(f"  [{count}/{len(todo)}] {name} seed {r['seed']}: test {metric} {r['test'][metric]:.4f}, "
            f"{r['mflops']:.3f} MFLOPs, trained in {r['seconds']:.1f} s  ({time.perf_counter() - started:.0f} s elapsed)")

    say(f"3. {len(todo)} stand-alone trainings")
    run_jobs(todo, pool, on_standalone)

    # 4. the tables
    def sa(seed: int, what: str, mask: str = "") -> dict:
        return standalone[standalone_key(studies[("full", needed[0], seed)], what, mask)]

    report: dict = {
        "machine": info,
        "settings": {
            "dataset": args.dataset, "study": base.name, "seeds": seeds, "epochs": base.train.epochs,
            "warmup_epochs": base.train.warmup_epochs, "batch_size": base.train.batch_size, "lr": base.train.lr,
            "trials": base.search.trials, "n_startup_trials": base.search.n_startup_trials,
            "select": select_text, "rank_loss_table5": study_loss, "rank_losses_table4": losses,
            "workers": args.workers, "quick": args.quick, "data_seed": base.data.seed,
            "ablation": args.ablation, "variant_training": variant_training, "train_overrides": args.overrides,
            "tag": args.tag,
            "train_valid_test": [len(data.splits[s]) for s in ("train", "valid", "test")],
        },
        "metric": metric,
        "metric_columns": list(metric_cols),
        "path_names": path_names(data.modality_names),
        "planted_paths": data.informative_paths,
        "supernets": [supernets[k] for k in sorted(supernets)],
    }
    all_metrics = METRICS[data.task]
    if "5" in tables:
        rows: dict[str, dict] = {}
        for what in BASELINES:
            rs = [sa(seed, what) for seed in seeds]
            rows[what] = {"per_seed": rs, "summary": summarise(rs, all_metrics), "paths": None, "masks": None}
        rs = [sa(seed, "subnet", "1" * P) for seed in seeds]
        rows["cmt"] = {"per_seed": rs, "summary": summarise(rs, all_metrics), "paths": [P] * len(seeds),
                       "masks": ["1" * P] * len(seeds),
                       "supernet_valid": [searches[(study_loss, seed, "full")]["full_mask_valid"] for seed in seeds]}
        for v in VARIANTS:
            found = [searches[(study_loss, seed, v)] for seed in seeds]
            rs = [sa(seed, "subnet", f["mask"]) for seed, f in zip(seeds, found)]
            trained = [supernets[(variant_training[v], study_loss, seed)] for seed in seeds]
            rows[v] = {"per_seed": rs, "summary": summarise(rs, all_metrics), "paths": [f["paths"] for f in found],
                       "training": variant_training[v],
                       "supernet_spearman_last": [t["spearman_last"] for t in trained],
                       "masks": [f["mask"] for f in found], "searches": found,
                       "supernet_valid": [f["selected_valid"] for f in found],
                       "planted": [planted_info(data, f["mask"]) for f in found] if data.informative_paths else None}
        report["table5"] = {"rows": rows,
                            "versus_cmt": {v: compare(rows[v]["per_seed"], rows["cmt"]["per_seed"], metric) for v in VARIANTS}}
    if "4" in tables:
        rows4: dict[str, dict] = {}
        for loss in losses:
            found = [searches[(loss, seed, "full")] for seed in seeds]
            rs = [sa(seed, "subnet", f["mask"]) for seed, f in zip(seeds, found)]
            sn = [supernets[("full", loss, seed)] for seed in seeds]
            rows4[loss] = {"spearman_last": [s["spearman_last"] for s in sn],
                           "spearman_mean_after_warmup": [s["spearman_mean_after_warmup"] for s in sn],
                           "per_seed": rs, "summary": summarise(rs, all_metrics),
                           "paths": [f["paths"] for f in found], "masks": [f["mask"] for f in found], "searches": found,
                           "shared_weights_test": [f["shared_weights_test"] for f in found]}
        report["table4"] = {"rows": rows4}
    info["loadavg_end"] = list(os.getloadavg())
    report["wall_s"] = time.perf_counter() - started
    return report


def _clean(x):
    """JSON-safe: NaN becomes null (``json`` would write the non-standard ``NaN``), tuples lists."""
    if isinstance(x, float):
        return None if math.isnan(x) else x
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


if __name__ == "__main__":
    raise SystemExit(main())
