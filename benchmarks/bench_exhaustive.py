"""Benchmark: exhaustive exact scoring (``supernet/exhaustive.py``) against today's ``score_masks``.

Usage:
    OMP_NUM_THREADS=1 nice .venv/bin/python benchmarks/bench_exhaustive.py speed [--seconds 20] [--run-bits 24] [--json]
    .venv/bin/python benchmarks/bench_exhaustive.py speed --device cuda --seconds 5 --run-bits 30   # all 2**30 - 1 masks on a GPU
    OMP_NUM_THREADS=1 nice .venv/bin/python benchmarks/bench_exhaustive.py compare [--views fou,fac,kar,pix,zer] [--out runs/bench_exhaustive] [--results docs/results]

``speed`` (issue 11, item 4's CPU target: at least 50,000 masks/s at the mfeat shape on one
thread): the mfeat study's shape, k = 6 views, 30 paths, the real validation split (300 samples,
10 classes), a supernet of ``studies/mfeat.toml``'s [model] (trained if ``--checkpoint`` names
one, else at its initialization: the speed does not depend on the weights). In the same run, on
the same cache and thread:

(a) ``score_masks`` (one einsum over masks x paths per batch, float32) on ``--batch`` random
    masks, repeated: masks/s, the baseline (on the CPU);
(b) ``ExhaustiveScorer.timed_sample`` over the first steps of the enumeration for ``--seconds``:
    masks/s, the ratio to (a), and 2**30 - 1 masks extrapolated;
(c) a check on the masks of (b): their values equal ``score_masks`` on a float64 copy of the
    cache (the reference) exactly, and the share equal to the float32 ``score_masks`` is shown;
(d) with ``--run-bits B``: all 2**B - 1 masks whose active paths are among the last B paths
    (the first 2**B mask numbers) scored end to end with the running front, timed.

``compare`` (the exact front against the sampler's front on the same study): writes the real
mfeat data with the views of ``--views`` (default five: k = 5, 20 paths, 1,048,575 masks, which
one CPU thread scores in seconds; k = 6 would take hours here) as an .npz with mfeat's own
splits and standardization, a study file with ``studies/mfeat.toml``'s [model], [train] and
[search], then runs the real commands: ``mro-search train``, ``mro-search run`` (the sampler,
the study's budget) and ``mro-search run --exhaustive`` on the same study. Reported: whether
every sampler front point is dominated by or on the exact front, how many exact-front masks the
sampler found, and the share of the exact front's hypervolume the sampler's front reaches
(Optuna's ``compute_hypervolume``, the report's reference point).

Timing figures on a shared machine are noisy: the load is printed with them, and (b) is given as
a ratio to (a) measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

TARGET_MASKS_PER_S = 50_000


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


# --- speed ----------------------------------------------------------------------------------------


def mfeat_model_and_cache(checkpoint: str | None):
    from search_service.evaluator import load_study_data
    from search_service.study_file import load_study
    from supernet.checkpoint import load_checkpoint
    from supernet.model import Supernet, SupernetSpec
    from supernet.scoring import build_cache

    study = load_study(str(ROOT / "studies" / "mfeat.toml"))
    data = load_study_data(study)
    if checkpoint:
        model = load_checkpoint(checkpoint, expected_scoring=study.scoring_sha256).model.eval()
        trained = True
    else:
        torch.manual_seed(0)
        model = Supernet(SupernetSpec(tuple(data.modalities), data.task, data.output_dim), study.model).eval()
        trained = False
    cache = build_cache(model, data.splits["valid"])
    return model, cache, trained


def speed(args) -> dict:
    from supernet.exhaustive import ExhaustiveScorer
    from supernet.flops import flop_table
    from supernet.scoring import PathCache, score_masks

    torch.set_num_threads(args.threads)
    model, cache, trained = mfeat_model_and_cache(args.checkpoint)
    table = flop_table(model)
    P, N = model.num_paths, len(cache)
    classes = int(cache.projected.shape[2])
    g = torch.Generator().manual_seed(0)
    masks = torch.randint(0, 2, (args.batch, P), generator=g).float()
    masks[masks.sum(dim=1) == 0, 0] = 1.0
    score_masks(model, cache, masks[:64], "accuracy")  # warm-up
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        score_masks(model, cache, masks, "accuracy")
        times.append(time.perf_counter() - start)
    base_rate = args.batch / float(np.median(times))
    load_before = loadavg()
    device = torch.device(args.device)
    on_device = PathCache(pooled=cache.pooled.to(device), labels=cache.labels.to(device), task=cache.task, projected=cache.projected.to(device))
    model_on_device = model.to(device)
    scorer = ExhaustiveScorer(model_on_device, on_device, "accuracy", table)
    scorer.timed_sample(seconds=0.5)  # warm-up
    rate, chunks = scorer.timed_sample(seconds=args.seconds, max_steps=10**9)
    scored = sum(len(c.masks) for c in chunks)
    # (c) the sampled masks against score_masks: float64 reference exactly, float32 share
    numbers = torch.cat([c.masks for c in chunks])[1:20001].cpu()
    values = torch.cat([c.values for c in chunks])[1:20001].cpu()
    model = model_on_device.cpu()
    bits = ((numbers[:, None] >> torch.arange(P - 1, -1, -1)) & 1).float()
    cache64 = PathCache(pooled=cache.pooled.double(), labels=cache.labels, task=cache.task, projected=cache.projected.double())
    equal64 = bool(torch.equal(values, score_masks(model, cache64, bits, "accuracy")))
    share32 = float((values == score_masks(model, cache, bits, "accuracy")).double().mean())
    total = 2**P - 1
    out = {
        "machine": _common.machine_info(),
        "threads": torch.get_num_threads(),
        "device": str(device),
        "trained_supernet": trained,
        "paths": P,
        "samples": N,
        "classes": classes,
        "metric": "accuracy",
        "score_masks_masks_per_s": round(base_rate),
        "exhaustive_masks_per_s": round(rate),
        "ratio": round(rate / base_rate, 2),
        "sampled_masks": scored,
        "settings": {"low_bits": scorer.low_bits, "batch_masks": scorer.batch_masks, "dtype": str(scorer.dtype)},
        "all_masks": total,
        "all_masks_hours_extrapolated": round(total / rate / 3600, 2),
        "all_masks_hours_score_masks": round(total / base_rate / 3600, 2),
        "equal_to_score_masks_float64": equal64,
        "share_equal_to_score_masks_float32": share32,
        "target_masks_per_s": TARGET_MASKS_PER_S,
        "loadavg_before": load_before,
    }
    if args.run_bits:
        run_bits = min(args.run_bits, P)
        sub = ExhaustiveScorer(model.to(device), on_device, "accuracy", table)
        highs = 2 ** (run_bits - sub.low_bits)  # the first 2**run_bits mask numbers
        from supernet.exhaustive import RunningFront

        front = RunningFront()
        start = time.perf_counter()
        for h0 in range(0, highs, sub.highs_per_step):
            chunk = sub.score_step(h0, min(h0 + sub.highs_per_step, highs))
            front.update(chunk.costs[:, 0], chunk.values, chunk.masks)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        out["run"] = {
            "masks": 2**run_bits - 1,
            "seconds": round(seconds, 2),
            "masks_per_s": round((2**run_bits - 1) / seconds),
            "front_points": len(front),
            "all_masks_hours_extrapolated": round(total / ((2**run_bits - 1) / seconds) / 3600, 2),
        }
    out["loadavg_after"] = loadavg()
    return out


# --- compare --------------------------------------------------------------------------------------

STUDY = """\
# OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_exhaustive.py compare  (writes and runs this file)
name = "{name}"

[data]
source = "npz"
path = "{npz}"

[model]
{model}

[train]
{train}

[search]
{search}
run_dir = "{run_dir}"
"""


def _toml_table(values: dict) -> str:
    lines = []
    for key, value in values.items():
        if isinstance(value, str):
            lines.append(f'{key} = "{value}"')
        elif isinstance(value, bool):
            lines.append(f"{key} = {'true' if value else 'false'}")
        elif isinstance(value, list):
            lines.append(f"{key} = {json.dumps(value)}")
        else:
            lines.append(f"{key} = {value!r}")
    return "\n".join(lines)


def prepare(out: Path, views: list[str], search_keys: dict | None = None) -> Path:
    """The mfeat views as an .npz (mfeat's splits and standardization) and a study file
    (``search_keys`` added to its [search])."""
    import tomllib

    from search_service.evaluator import load_study_data
    from search_service.study_file import load_study

    mfeat = load_study(str(ROOT / "studies" / "mfeat.toml"))
    data = load_study_data(mfeat)
    arrays = {"modalities": np.array(views)}
    for split_name, split in data.splits.items():
        for view in views:
            arrays[f"{split_name}/{view}"] = split.features[view].numpy()
        arrays[f"{split_name}/label"] = split.labels.numpy().astype(np.int64)
    out.mkdir(parents=True, exist_ok=True)
    npz = out / "mfeat_views.npz"
    np.savez(npz, **arrays)
    raw = tomllib.loads((ROOT / "studies" / "mfeat.toml").read_text())
    name = f"mfeat{len(views)}"
    file = out / f"{name}.toml"
    file.write_text(STUDY.format(name=name, npz=npz.as_posix(), model=_toml_table(raw["model"]), train=_toml_table(raw["train"]),
                                 search=_toml_table({**raw["search"], **(search_keys or {})}), run_dir=(out / "run").as_posix()),
                    encoding="utf-8")
    return file


def cli(args: list[str], what: str) -> dict:
    command = [sys.executable, "-m", "search_service.cli", *args]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{what} failed ({result.returncode}): {result.stderr.strip()[-2000:]}")
    print(f"{what}: {seconds:.1f} s", file=sys.stderr)
    return {"seconds": round(seconds, 1), "stdout": result.stdout}


def compare(args) -> dict:
    from optuna._hypervolume import compute_hypervolume
    from optuna.trial import TrialState

    from search_service.lifecycle import load_search
    from search_service.report import reference_point
    from search_service.study_file import load_study

    out = Path(args.out).resolve()  # the study file names its data by an absolute path
    objectives = args.objectives.split(",")
    keys = {"objectives": objectives} if objectives != ["accuracy", "mflops"] else {}
    file = prepare(out, args.views.split(","), keys)
    study = load_study(str(file))
    url = f"sqlite:///{(out / 'study.db').resolve()}"
    timings = {}
    if not list((out / "run" / "checkpoints").glob("*.pt")):
        timings["train"] = cli(["train", "--study", str(file), "-q"], "train")["seconds"]
    timings["run_sampled"] = cli(["run", "--study", str(file), "--storage", url, "--no-report", "-q"], "run (sampler)")["seconds"]
    search = load_search(study.name, url)
    sampled = [t for t in search.optuna_study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
               if not t.user_attrs.get("mro:exhaustive")]  # the sampler's trials (also when run again)
    exhaustive_out = cli(["run", "--study", str(file), "--storage", url, "--exhaustive", "--max-minutes", str(args.max_minutes),
                          "--no-report", "--json", "-q"], "run --exhaustive")
    timings["run_exhaustive"] = exhaustive_out["seconds"]
    result = json.loads(exhaustive_out["stdout"])
    search = load_search(study.name, url)
    record = search.attrs["mro:exhaustive"]
    trials = search.optuna_study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    by_mask = {t.user_attrs["mask"]: t for t in trials}
    exact = [tuple(float(v) for v in by_mask[m].values) for m in record["front"]]
    sampled_points = np.array([list(t.values) for t in sampled])

    def losses_of(points: np.ndarray) -> np.ndarray:
        return np.concatenate([-points[:, :1], points[:, 1:]], axis=1)

    def front_of(points: np.ndarray) -> np.ndarray:
        loss = losses_of(points)
        keep = [i for i in range(len(points)) if not any(np.all(loss[j] <= loss[i]) and np.any(loss[j] < loss[i]) for j in range(len(points)))]
        return points[keep]

    sampler_front = front_of(sampled_points)
    exact_arr = np.array(exact)
    exact_loss = losses_of(exact_arr)
    on_or_dominated = all(any(np.all(q <= losses_of(p[None])[0]) for q in exact_loss) for p in sampler_front)
    on_front = sum(1 for p in sampler_front if any(np.array_equal(p, q) for q in exact_arr))
    full = search.attrs.get("mro:full_mask") or {}
    worst = [max([float(full.get(c, 0.0))] + [float(t.values[i + 1]) for t in trials]) for i, c in enumerate(objectives[1:])]
    ref = np.array(reference_point("accuracy", *worst))

    def hv(points: np.ndarray) -> float:
        return float(compute_hypervolume(losses_of(points), ref, assume_pareto=False))

    verified = verify_front(search, study, record) if args.verify else None

    exact_masks = set(record["front"])
    found = sorted(exact_masks & {t.user_attrs["mask"] for t in sampled})
    return {
        "machine": _common.machine_info(),
        "views": args.views.split(","),
        "paths": len(study_paths := search.attrs["mro:paths"]),
        "masks": record["masks"],
        "budget": len(sampled),
        "timings_s": timings,
        "exhaustive": {k: record[k] for k in ("seconds", "masks_per_s", "method", "device", "dtype", "added")},
        "objectives": objectives,
        "exact_front": [{"mask": m, **dict(zip(objectives, v)), "equal": e} for m, v, e in zip(record["front"], exact, record["equal"])],
        "sampler_front": [dict(zip(objectives, (float(x) for x in p))) for p in sampler_front],
        "brute_force": verified,
        "sampler_front_on_or_dominated_by_exact": on_or_dominated,
        "sampler_front_points_on_exact_front": on_front,
        "exact_front_masks_found_by_sampler": found,
        "hypervolume_exact": hv(exact_arr),
        "hypervolume_sampler": hv(sampler_front),
        "hypervolume_share": hv(sampler_front) / hv(exact_arr),
        "reference_point": ref.tolist(),
        "pareto_exact_note": result.get("exact_front"),
        "loadavg": loadavg(),
        "paths_names": study_paths,
    }


def verify_front(search, study, record: dict) -> dict:
    """The exhaustive front checked against brute force: every mask scored with ``score_masks``
    (the float32 cache the search records), priced with the study's own prices (FLOPs table,
    exact parameters, its cost tables), masks over a limit dropped, the non-dominated set taken;
    the set of its objective vectors must equal the recorded front's."""
    from optuna.study._multi_objective import _is_pareto_front

    from search_service.evaluator import Evaluator
    from search_service.hardware import study_tables
    from search_service.lifecycle import study_checkpoint
    from search_service.objectives import Objectives
    from supernet.exhaustive import params_cost
    from supernet.scoring import score_masks

    start = time.perf_counter()
    attrs = search.attrs
    objectives = Objectives.from_attrs(attrs, attrs["mro:metric"])
    evaluator = Evaluator(study, study_checkpoint(search, study.run_dir))
    model, cache = evaluator.model, evaluator.cache("valid")
    tables = study_tables(attrs)
    parts = params_cost(model)
    P = model.num_paths
    shifts = torch.arange(P - 1, -1, -1)
    touch = torch.zeros(P, model.k, dtype=torch.float64)
    for p, (i, j) in enumerate(model.pairs):
        touch[p, i] = touch[p, j] = 1.0
    rows = []
    for lo in range(1, 2**P, 1 << 15):
        numbers = torch.arange(lo, min(lo + (1 << 15), 2**P))
        masks = ((numbers[:, None] >> shifts) & 1).to(torch.float32)
        m64 = masks.double()
        used = ((m64 @ touch) > 0).double()
        cols = {"metric": score_masks(model, cache, masks, objectives.metric).double(), "mflops": evaluator.flops.mflops_many(masks)}
        cols["params"] = parts.base + m64 @ torch.tensor(parts.path, dtype=torch.float64) + used @ torch.tensor(parts.modality, dtype=torch.float64)
        for q, t in tables.items():
            cols[q] = t.estimate_many(masks).double()
        ok = torch.ones(len(masks), dtype=torch.bool)
        for q, limit in objectives.limits.items():
            ok &= (cols[q] - limit) <= 0
        values = torch.stack([cols["metric"], *(cols[c] for c in objectives.costs)], dim=1)[ok].numpy()
        loss = np.concatenate([-values[:, :1], values[:, 1:]], axis=1)
        rows.append(values[_is_pareto_front(loss, assume_unique_lexsorted=False)])
    allv = np.concatenate(rows)
    loss = np.concatenate([-allv[:, :1], allv[:, 1:]], axis=1)
    front = {tuple(np.round(v, 9)) for v in allv[_is_pareto_front(loss, assume_unique_lexsorted=False)]}
    by_mask = {t.user_attrs["mask"]: t for t in search.optuna_study.get_trials(deepcopy=False)}
    recorded = {tuple(np.round(np.array(by_mask[m].values, dtype=float), 9)) for m in record["front"]}
    return {"masks": 2**P - 1, "front_points": len(front), "recorded_points": len(recorded), "equal": front == recorded,
            "only_brute_force": len(front - recorded), "only_recorded": len(recorded - front), "seconds": round(time.perf_counter() - start, 1)}


def fragment(r: dict) -> str:
    """The compare result as the markdown fragment ``docs/results/bench_exhaustive_mfeat5.md``."""
    m = r["machine"]
    lines = [
        f"**bench_exhaustive compare, views {', '.join(r['views'])}** ({m['date']}, {m['cpu_model']} x{m['cpu_count']}, "
        f"load {r['loadavg']}; {r['paths']} paths, {r['masks']:,} masks, sampler budget {r['budget']} trials)",
        "",
        f"- exhaustive scoring: {r['exhaustive']['seconds']:.0f} s at {r['exhaustive']['masks_per_s']:,.0f} masks/s "
        f"({r['exhaustive']['method']}, {r['exhaustive']['device']}, {r['exhaustive']['dtype']}, 1 thread); "
        f"`train` {r['timings_s'].get('train', 0):.0f} s, sampled `run` {r['timings_s']['run_sampled']:.0f} s",
        f"- every point of the sampler's front is on or dominated by the exact front: **{'yes' if r['sampler_front_on_or_dominated_by_exact'] else 'NO'}**",
        f"- sampler front points on the exact front: {r['sampler_front_points_on_exact_front']} of {len(r['sampler_front'])}; "
        f"exact-front masks the sampler tried: {len(r['exact_front_masks_found_by_sampler'])} of {len(r['exact_front'])}",
        f"- hypervolume (reference {r['reference_point']}): exact {r['hypervolume_exact']:.5g}, sampler {r['hypervolume_sampler']:.5g}, "
        f"share **{100 * r['hypervolume_share']:.2f} %**",
        "",
    ]
    bf = r.get("brute_force")
    if bf:
        lines.insert(-1, f"- brute force over all {bf['masks']:,} masks (every mask scored and priced again, limits applied): the front's "
                         f"{bf['front_points']} points {'**equal**' if bf['equal'] else '**DIFFER from**'} the {bf['recorded_points']} recorded "
                         f"({bf['seconds']:.0f} s)")
    objectives = r.get("objectives", ["accuracy", "mflops"])
    names = {"mflops": "MFLOPs", "latency_ms": "latency (ms, table)", "params": "params", "peak_memory_mb": "peak memory (MiB, table)"}
    lines += ["| exact front mask | " + " | ".join(names.get(o, o) for o in objectives) + " | masks with this point | found by the sampler |",
              "|---|" + "---:|" * len(objectives) + "---:|:---:|"]
    found = set(r["exact_front_masks_found_by_sampler"])
    for p in r["exact_front"]:
        cells = " | ".join(f"{p[o]:.4f}" if o != "params" else f"{p[o]:.0f}" for o in objectives)
        lines.append(f"| `{p['mask']}` | {cells} | {p['equal']} | {'yes' if p['mask'] in found else ''} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    p = sub.add_parser("speed")
    p.add_argument("--seconds", type=float, default=20.0, help="length of the timed sample (b)")
    p.add_argument("--batch", type=int, default=4096, help="masks per score_masks call (a)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--run-bits", type=int, default=0, help="(d): score the first 2**B masks end to end")
    p.add_argument("--checkpoint", help="a trained mfeat checkpoint (default: the supernet at initialization)")
    p.add_argument("--device", default="cpu", help="where (b) and (d) run, e.g. cuda (the score_masks baseline (a) stays on the CPU)")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("compare")
    p.add_argument("--views", default="fou,fac,kar,pix,zer")
    p.add_argument("--objectives", default="accuracy,mflops", help="the study's [search] objectives, e.g. accuracy,latency_ms,params")
    p.add_argument("--verify", action="store_true", help="check the exhaustive front against brute force (every mask priced again)")
    p.add_argument("--out", default=str(ROOT / "runs" / "bench_exhaustive"))
    p.add_argument("--max-minutes", type=float, default=30.0)
    p.add_argument("--results", help="write the fragment NAME.md and NAME.json for docs/RESULTS.md into this folder")
    p.add_argument("--from-json", help="render the fragment of an earlier compare's JSON instead of running")
    p.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.mode == "compare" and args.from_json:
        report = json.loads(Path(args.from_json).read_text())
    else:
        report = speed(args) if args.mode == "speed" else compare(args)
    if args.mode == "compare" and args.results:
        folder = Path(args.results)
        folder.mkdir(parents=True, exist_ok=True)
        objectives = report.get("objectives", ["accuracy", "mflops"])
        stem = f"bench_exhaustive_mfeat{len(report['views'])}" + ("" if objectives == ["accuracy", "mflops"] else "_" + "_".join(objectives[1:]))
        (folder / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
        (folder / f"{stem}.md").write_text(fragment(report))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for key, value in report.items():
            print(f"{key}: {value}")
    if args.mode == "speed":
        met = report["exhaustive_masks_per_s"] >= TARGET_MASKS_PER_S
        print(f"target {TARGET_MASKS_PER_S:,} masks/s: {'met' if met else 'NOT met'} ({report['exhaustive_masks_per_s']:,} masks/s, "
              f"{report['ratio']}x score_masks; load {report['loadavg_before']} -> {report['loadavg_after']})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
