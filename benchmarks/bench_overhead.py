"""Benchmark: per-trial overhead of the search service (everything except scoring).

Usage: python benchmarks/bench_overhead.py [--trials 1000] [--backends sqlite,postgres]
                                           [--pg-admin postgresql+psycopg://postgres@127.0.0.1:5432/test]
                                           [--fallback] [--json]

The real service path runs ``--trials`` trials: ``create_search`` (study system attributes as
``mro-search run`` writes them), then ``run_worker`` (its loop, ``MROSampler``, the real
``Objective`` with all its storage writes, the budget check), on

* SQLite: a fresh file in a temporary directory;
* PostgreSQL: a fresh database created for the run on ``--pg-admin``'s server and dropped after.

The problem is ``bench_search``'s (4 modalities, 12 paths, 4,095 masks, so the sampler never
enumerates; its supernet checkpoint is trained once and cached in ``runs/bench_search/``). The
evaluator is the real ``Evaluator`` on that checkpoint; each ``evaluate`` call (the scoring:
cached path outputs -> all metrics, MFLOPs, parameter count) is timed and subtracted.

Per-trial overhead = the wall time from the start of one trial's scoring to the start of the
next one's (one full turn of the worker loop) minus the first one's scoring time. Printed: the
median and p95 over windows of 100 trials ending at 100, 500 and 1,000 finished trials, and a
breakdown (sampler ``sample_relative`` incl. the claim; Objective without scoring; the rest:
trial creation, ``tell``, the worker loop's reads). Target: median <= 20 ms at 1,000 trials and
growth no faster than linear in the number of trials.

``--fallback`` measures the storage with the service's trial SQL turned off (``MRO_FAST_SQL=0``:
Optuna's own storage calls, what a storage uses with an Optuna release or schema that SQL was not
checked with; ``search_service/storage.py``). Each result says which path ran (``fast_sql``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_search  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from search_service import search as search_mod  # noqa: E402
from search_service.creation import create_search  # noqa: E402
from search_service.evaluator import Evaluator  # noqa: E402
from search_service.sampler import MROSampler  # noqa: E402
from search_service.storage import mask_password, optuna_quiet  # noqa: E402
from search_service.study_file import SearchConfig, Study  # noqa: E402
from supernet.checkpoint import load_checkpoint  # noqa: E402
from supernet.data import load_data  # noqa: E402

WINDOWS = (100, 500, 1000)
TARGET_MS = 20.0


class Timings:
    def __init__(self) -> None:
        self.score_start: list[float] = []
        self.score_cpu_start: list[float] = []
        self.score_s: list[float] = []
        self.score_cpu_s: list[float] = []
        self.sampler_s: list[float] = []
        self.objective_s: list[float] = []  # whole Objective.__call__, scoring included


def instrument(evaluator: Evaluator, timings: Timings):
    """Time the scoring (``evaluate``), the sampler and the objective; returns an undo function."""
    original_evaluate = evaluator.evaluate

    def evaluate(mask, split="valid", **kw):
        start, cpu = time.perf_counter(), time.process_time()
        out = original_evaluate(mask, split, **kw)
        timings.score_start.append(start)
        timings.score_cpu_start.append(cpu)
        timings.score_s.append(time.perf_counter() - start)
        timings.score_cpu_s.append(time.process_time() - cpu)
        return out

    evaluator.evaluate = evaluate
    original_sample = MROSampler.sample_relative
    original_call = search_mod.Objective.__call__

    def sample_relative(self, study, trial, space):
        start = time.perf_counter()
        try:
            return original_sample(self, study, trial, space)
        finally:
            if space:
                timings.sampler_s.append(time.perf_counter() - start)

    def call(self, trial):
        start = time.perf_counter()
        try:
            return original_call(self, trial)
        finally:
            timings.objective_s.append(time.perf_counter() - start)

    MROSampler.sample_relative = sample_relative
    search_mod.Objective.__call__ = call

    def undo():
        evaluator.evaluate = original_evaluate
        MROSampler.sample_relative = original_sample
        search_mod.Objective.__call__ = original_call

    return undo


def make_study(trials: int, run_dir: Path) -> Study:
    data_cfg, model_cfg, train_cfg = bench_search.problem()
    search = SearchConfig(metric="accuracy", trials=trials, n_startup_trials=10, run_dir=str(run_dir))
    return Study("bench_overhead", ROOT / "studies" / "bench_overhead.toml", data_cfg, model_cfg, train_cfg, search)


def run_backend(name: str, url: str, study: Study, evaluator: Evaluator, trials: int) -> dict:
    timings = Timings()
    search = create_search(study, url, evaluator, trials=trials)
    backend = getattr(search.optuna_study._storage, "_backend", search.optuna_study._storage)
    fast_sql, fast_sql_reason = backend.fast_sql, backend.fast_sql_reason
    undo = instrument(evaluator, timings)
    started = time.perf_counter()
    try:
        done = search_mod.run_worker(search, evaluator, seed=0)
    finally:
        undo()
    total_s = time.perf_counter() - started
    starts, score = np.array(timings.score_start), np.array(timings.score_s)
    overhead_ms = (np.diff(starts) - score[:-1]) * 1e3  # trial i -> i+1: one loop turn, scoring removed
    cpu_ms = (np.diff(np.array(timings.score_cpu_start)) - np.array(timings.score_cpu_s)[:-1]) * 1e3  # this process's CPU time
    objective_ms = (np.array(timings.objective_s[: len(score)]) - score) * 1e3
    sampler_ms = np.array(timings.sampler_s) * 1e3
    rows = {}
    for end in WINDOWS:
        if end > len(overhead_ms) + 1:
            continue
        lo, hi = max(end - 100, 0), end - 1  # overhead_ms[i] is the turn that ends at trial i+1
        window = overhead_ms[lo:hi]
        rows[end] = {
            "median_ms": float(np.median(window)),
            "p95_ms": float(np.percentile(window, 95)),
            "cpu_median_ms": float(np.median(cpu_ms[lo:hi])),
            "sampler_median_ms": float(np.median(sampler_ms[lo:hi])),
            "objective_median_ms": float(np.median(objective_ms[lo:hi])),
            "score_median_ms": float(np.median(score[lo:hi] * 1e3)),
        }
    counts = search.counts()
    if backend.fast_sql != fast_sql:  # the SQL failed during the run (a warning said so): the figures mix both paths
        fast_sql_reason = f"switched during the run: {backend.fast_sql_reason}"
    return {
        "backend": name, "url": mask_password(url), "fast_sql": fast_sql, "fast_sql_reason": fast_sql_reason,
        "completed": done, "counts": counts, "total_s": total_s, "windows": rows,
    }


def create_pg_database(admin_url: str) -> tuple[str, str]:
    from sqlalchemy import create_engine, text

    name = f"mro_bench_{uuid.uuid4().hex[:12]}"
    engine = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    base = admin_url.rsplit("/", 1)[0]
    return name, f"{base}/{name}"


def drop_pg_database(admin_url: str, name: str) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    engine.dispose()


def report(r: dict) -> None:
    path = "the service's trial SQL" if r["fast_sql"] and not r["fast_sql_reason"] else f"Optuna's storage calls ({r['fast_sql_reason']})"
    print(f"\n{r['backend']} ({r['url']}), {path}: {r['completed']} trials completed in {r['total_s']:.1f} s; states {r['counts']}")
    print(f"  {'finished':>8} {'median ms':>10} {'p95 ms':>8} {'cpu ms':>7} {'sampler':>8} {'objective':>10} {'scoring':>8}")
    for end, w in r["windows"].items():
        print(f"  {end:>8} {w['median_ms']:10.2f} {w['p95_ms']:8.2f} {w['cpu_median_ms']:7.2f} {w['sampler_median_ms']:8.2f} {w['objective_median_ms']:10.2f} {w['score_median_ms']:8.2f}")
    print("  (per-trial overhead over the last 100 trials: wall median and p95, this process's CPU median; then medians of the"
          " sampler's sample_relative, the Objective without scoring, and the scoring itself, which is excluded)")
    ws = r["windows"]
    if 1000 in ws:
        met = ws[1000]["median_ms"] <= TARGET_MS
        growth = ws[1000]["median_ms"] / ws[100]["median_ms"]
        print(f"  target median <= {TARGET_MS:.0f} ms at 1,000 trials: {ws[1000]['median_ms']:.2f} ms -> {'MET' if met else 'NOT MET'}; "
              f"growth 100 -> 1,000 trials x{growth:.2f} (linear would be up to x10)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--pg-admin", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--fallback", action="store_true", help="Optuna's storage calls instead of the service's trial SQL (MRO_FAST_SQL=0)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.fallback:
        os.environ["MRO_FAST_SQL"] = "0"
    torch.set_num_threads(args.threads)
    optuna_quiet()
    info = bench_search.machine_info()
    print(f"# bench_overhead  {info['date']}  {info['cpu_model']} x{info['cpu_count']}  torch {info['torch']}  optuna {info['optuna']}  "
          f"load average {os.getloadavg()[0]:.2f}")
    bench_search.trained_problem(log=lambda m: print(m))  # trains and caches the checkpoint if needed
    data_cfg, _, _ = bench_search.problem()
    checkpoint = load_checkpoint(bench_search.checkpoint_path())
    data = load_data(data_cfg)
    results = []
    with tempfile.TemporaryDirectory(prefix="mro-bench-overhead-") as tmp:
        study = make_study(args.trials, Path(tmp))
        evaluator = Evaluator(study, checkpoint=checkpoint, data=data)
        evaluator.cache("valid")
        _ = evaluator.flops
        for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
            if backend == "sqlite":
                url = f"sqlite:///{Path(tmp) / 'overhead.db'}"
                results.append(run_backend("sqlite", url, study, evaluator, args.trials))
                report(results[-1])
            elif backend == "postgres":
                db, url = create_pg_database(args.pg_admin)
                try:
                    results.append(run_backend("postgresql", url, study, evaluator, args.trials))
                    report(results[-1])
                finally:
                    drop_pg_database(args.pg_admin, db)
            else:
                raise SystemExit(f"unknown backend {backend!r}")
    if args.json:
        print(json.dumps({"machine": info, "results": results}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
