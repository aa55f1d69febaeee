"""Benchmark: many workers on one PostgreSQL study, under load, with nothing lost.

Usage: python benchmarks/bench_load.py [--workers 8] [--trials 1000] [--json]
                                       [--storage URL | --pg-admin postgresql+psycopg://postgres@127.0.0.1:5432/test]
                                       [--workdir DIR]

The problem is tiny on purpose, so that the storage and the service, not the model, are under
load: synthetic data with 4 modalities ``a b c d`` (12 paths, 4,095 masks, so 1,000 trials
never exhaust or enumerate the space), 128/64/64 samples, a width-8 supernet trained for one
epoch by ``mro-search train``; trials are scored from the path cache. Steps:

1. write the study file in ``--workdir`` (default: a temporary folder) and train it;
2. create the study (``lifecycle.create_search``, as ``mro-search run`` does; its artifact store
   is the run directory's ``artifacts``) in ``--storage``, or in a fresh database made on
   ``--pg-admin``'s server and dropped afterwards;
3. start ``--workers`` worker processes at once. Each is the service's worker (``join_search`` +
   ``study_checkpoint`` + ``Evaluator`` + ``run_worker``, what ``mro-search worker`` runs)
   in a process of this script that also times its storage calls (below);
4. when they have all exited, check the study: COMPLETE == trials, no FAIL, no RUNNING or
   WAITING trial left, no mask completed twice, every worker exit code 0, no traceback.

Figures:

* **throughput**: COMPLETE trials / the search window (first trial's start to the last trial's
  completion, from the trials' timestamps); also per wall second from the workers' launch to
  the last exit (process start-up included).
* **storage latency**: inside each worker, every call of the storage API is timed: all public
  methods of the service's ``RDBStorage`` (``storage.FaultTolerantRDBStorage``: Optuna's trial
  reads and writes; ``_create_new_trial``, ``_set_trial_param`` and ``_get_trials``, which
  Optuna's caching wrapper calls directly; the stale-trial query; the heartbeat) and
  the service's one-transaction writes (``storage._write_trial_rows``: a trial's path parameters,
  its attributes). A call made inside another timed call is counted once (the outer one).
  *Per call*: the wall time of one such call (p50/p95/p99 over all calls of all workers,
  heartbeat thread included). *Per trial*: the sum over the calls one turn of a worker's loop
  makes in its main thread (stale-trial check, state count, ask, the sampler's reads and mask
  claim, parameter and attribute writes, budget check, tell); p50/p95/p99 over all trials.
  The per-method breakdown shows where the time goes.

On a shared 2-core machine the figures include waiting for the CPU (8 workers and the database
server share 2 cores); compare runs made on the same machine under the same load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DEFAULT_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
STUDY_NAME = "load"

STUDY_TOML = """\
# python benchmarks/bench_load.py
name = "{name}"

[data]
source = "synthetic"
modalities = ["a", "b", "c", "d"]
dims = [9, 8, 9, 8]  # the planted roles of a->b and c->d, nothing more
length = 4
samples = [128, 64, 64]
planted_paths = ["a->b", "c->d"]
task = "classification"
seed = 0

[model]
width = 8
heads = 2
ffn_mult = 1
dropout = 0.0
vector_tokens = 2

[train]
epochs = 1
warmup_epochs = 1
batch_size = 64
seed = 0

[search]
metric = "accuracy"
trials = {trials}
n_startup_trials = 10
run_dir = "{run_dir}"
"""


# --- the worker: the service's worker loop, its storage calls timed --------------------------------


class StorageTimer:
    """Times every storage call (outermost only) of this process."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, float, bool]] = []  # (method, seconds, main thread?)
        self.main_total = 0.0
        self._local = threading.local()
        self._lock = threading.Lock()

    def wrap(self, name: str, func):
        timer = self

        def timed(*args, **kwargs):
            depth = getattr(timer._local, "depth", 0)
            if depth:
                return func(*args, **kwargs)
            timer._local.depth = 1
            start = time.perf_counter()
            try:
                return func(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - start
                timer._local.depth = 0
                main = threading.current_thread() is threading.main_thread()
                with timer._lock:
                    timer.calls.append((name, elapsed, main))
                    if main:
                        timer.main_total += elapsed

        timed.__wrapped__ = func
        return timed

    def install(self) -> None:
        from optuna.storages import BaseStorage

        from search_service import storage as storage_module

        cls = storage_module.FaultTolerantRDBStorage
        names = {n for n in dir(BaseStorage) if not n.startswith("_") and callable(getattr(BaseStorage, n))}
        # what Optuna's caching wrapper calls on the backend directly, and the heartbeat
        names |= {"_create_new_trial", "_set_trial_param", "_get_best_trial_id", "_get_trials", "_get_stale_trial_ids", "record_heartbeat"}
        for name in sorted(names):
            if hasattr(cls, name):
                setattr(cls, name, self.wrap(name, getattr(cls, name)))
        storage_module._write_trial_rows = self.wrap("_write_trial_rows", storage_module._write_trial_rows)


def worker_main(study_file: str, seed: int, out: Path) -> int:
    import optuna
    import torch

    torch.set_num_threads(1)
    timer = StorageTimer()
    timer.install()

    from search_service.evaluator import Evaluator
    from search_service.lifecycle import join_search, study_checkpoint
    from search_service.search import run_worker

    per_trial: list[float] = []
    mark = [0.0]
    original = optuna.Study.optimize

    def optimize(self, *args, **kwargs):  # run_worker runs one trial per call
        try:
            return original(self, *args, **kwargs)
        finally:
            per_trial.append(timer.main_total - mark[0])
            mark[0] = timer.main_total

    optuna.Study.optimize = optimize
    joined = join_search(study_file, None)  # the storage from $MRO_STORAGE, as `mro-search worker` finds it
    search = joined.search
    evaluator = Evaluator(joined.study, study_checkpoint(search, joined.study.run_dir))  # the study's own checkpoint
    started = time.time()
    done = run_worker(search, evaluator, seed=seed)
    out.write_text(json.dumps({"completed": done, "started": started, "per_trial_s": per_trial, "calls": timer.calls}))
    return 0


# --- the benchmark -----------------------------------------------------------------------------------------


def percentiles(values: list[float], scale: float = 1e3) -> dict[str, float]:
    import numpy as np

    if not values:
        return {"n": 0}
    a = np.asarray(values) * scale
    return {"n": int(a.size), "mean": float(a.mean()), "p50": float(np.percentile(a, 50)), "p95": float(np.percentile(a, 95)), "p99": float(np.percentile(a, 99)), "max": float(a.max())}


def make_database(admin_url: str) -> tuple[str, callable]:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"mro_bench_load_{uuid.uuid4().hex[:10]}"
    engine = create_engine(admin_url, isolation_level="AUTOCOMMIT", pool_pre_ping=True)
    with engine.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        with engine.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        engine.dispose()

    url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    return url, drop


def child_env(url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()}
    env["MRO_STORAGE"] = url  # not on a command line
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def mro_command() -> list[str]:
    script = Path(sys.executable).parent / "mro-search"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "search_service.cli"]


def run_benchmark(workers: int, trials: int, url: str, workdir: Path, log) -> dict:
    import optuna
    from optuna.trial import TrialState

    from search_service.creation import create_search
    from search_service.evaluator import Evaluator
    from search_service.storage import mask_password, open_storage
    from search_service.study_file import load_study

    workdir.mkdir(parents=True, exist_ok=True)
    study_file = workdir / f"{STUDY_NAME}.toml"
    study_file.write_text(STUDY_TOML.format(name=STUDY_NAME, trials=trials, run_dir=(workdir / "run").as_posix()), encoding="utf-8")
    log(f"training the k=4 supernet ({study_file})")
    train = subprocess.run([*mro_command(), "train", "--study", str(study_file), "-q"], capture_output=True, text=True, env=child_env(url), cwd=workdir)
    if train.returncode != 0:
        raise SystemExit(f"training failed:\n{train.stderr}")
    study = load_study(str(study_file))
    create_search(study, url, Evaluator(study), trials=trials)
    log(f"study {STUDY_NAME!r} in {mask_password(url)}: {trials} trials, {workers} workers")

    procs = []
    launched = time.time()
    for w in range(workers):
        out = workdir / f"worker{w}.json"
        err = open(workdir / f"worker{w}.err", "w")  # noqa: SIM115 - closed below
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--study", str(study_file), "--seed", str(w), "--out", str(out)]
        procs.append((subprocess.Popen(cmd, env=child_env(url), stdout=subprocess.DEVNULL, stderr=err, cwd=workdir), err, out))
    codes = []
    for proc, err, _ in procs:
        codes.append(proc.wait())
        err.close()
    finished = time.time()

    errors: list[str] = []
    for w, code in enumerate(codes):
        text = (workdir / f"worker{w}.err").read_text(errors="replace")
        if code != 0:
            errors.append(f"worker {w} exited with {code}: {text.strip().splitlines()[-1] if text.strip() else ''}")
        elif "Traceback" in text:
            errors.append(f"worker {w} printed a traceback")
    reports = [json.loads(out.read_text()) for _, _, out in procs if out.exists()]

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(url, heartbeat=False)
    all_trials = optuna.load_study(study_name=STUDY_NAME, storage=storage).get_trials(deepcopy=False)
    storage.engine.dispose()
    states = Counter(t.state.name.lower() for t in all_trials)
    complete = [t for t in all_trials if t.state == TrialState.COMPLETE]
    masks = Counter(t.user_attrs.get("mask") for t in complete)
    duplicates = sorted(m for m, n in masks.items() if n > 1)
    if states.get("fail"):
        errors.append(f"{states['fail']} FAIL trial(s)")
    if len(complete) != trials:
        errors.append(f"{len(complete)} COMPLETE trials, not {trials}")
    if duplicates:
        errors.append(f"{len(duplicates)} mask(s) completed twice")
    if states.get("running") or states.get("waiting"):
        errors.append(f"{states.get('running', 0)} RUNNING and {states.get('waiting', 0)} WAITING trial(s) left")

    if complete:
        first = min(t.datetime_start for t in all_trials).timestamp()
        last = max(t.datetime_complete for t in complete).timestamp()
        window = max(last - first, 1e-9)
    else:
        window = float("nan")
    calls = [c for r in reports for c in r["calls"]]
    by_method: dict[str, list[float]] = defaultdict(list)
    for name, seconds, _ in calls:
        by_method[name].append(seconds)
    per_trial = [s for r in reports for s in r["per_trial_s"]]
    main_calls = sum(1 for c in calls if c[2])
    return {
        "workers": workers,
        "trials": trials,
        "storage": mask_password(url),
        "errors": errors,
        "exit_codes": codes,
        "states": dict(states),
        "complete": len(complete),
        "distinct_masks": len(masks),
        "duplicate_masks": duplicates,
        "completed_per_worker": [r["completed"] for r in reports],
        "search_window_s": window,
        "trials_per_s": len(complete) / window if complete else 0.0,
        "wall_s": finished - launched,
        "trials_per_wall_s": len(complete) / (finished - launched),
        "storage_per_trial_ms": percentiles(per_trial),
        "storage_per_call_ms": percentiles([c[1] for c in calls]),
        "storage_calls_per_trial": main_calls / max(len(per_trial), 1),
        "storage_by_method_ms": {k: {**percentiles(v), "total_s": sum(v)} for k, v in sorted(by_method.items(), key=lambda kv: -sum(kv[1]))},
        "machine": {"cpu_count": os.cpu_count(), "python": platform.python_version(), "optuna": optuna.__version__, "load_avg": os.getloadavg()},
    }


def print_report(r: dict) -> None:
    print(f"bench_load: {r['workers']} workers, {r['trials']} trials on {r['storage']}")
    print(f"  states {r['states']}; {r['distinct_masks']} distinct masks; errors: {r['errors'] or 'none'}")
    print(f"  throughput {r['trials_per_s']:.1f} trials/s over the {r['search_window_s']:.1f} s search window "
          f"({r['trials_per_wall_s']:.1f}/s over {r['wall_s']:.1f} s wall, start-up included)")
    t, c = r["storage_per_trial_ms"], r["storage_per_call_ms"]
    print(f"  storage time per trial: p50 {t['p50']:.1f} ms, p95 {t['p95']:.1f} ms, p99 {t['p99']:.1f} ms "
          f"({r['storage_calls_per_trial']:.1f} calls per trial)")
    print(f"  storage latency per call: p50 {c['p50']:.2f} ms, p95 {c['p95']:.2f} ms, p99 {c['p99']:.2f} ms ({c['n']} calls)")
    print(f"  {'method':<32}{'calls':>8}{'p50 ms':>9}{'p95 ms':>9}{'total s':>9}")
    for name, m in list(r["storage_by_method_ms"].items())[:12]:
        print(f"  {name:<32}{m['n']:>8}{m['p50']:>9.2f}{m['p95']:>9.2f}{m['total_s']:>9.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--storage", help="a PostgreSQL URL to use as it is (default: a fresh database on --pg-admin, dropped after)")
    parser.add_argument("--pg-admin", default=DEFAULT_ADMIN, help=f"server on which to make the fresh database (default {DEFAULT_ADMIN})")
    parser.add_argument("--workdir", type=Path, help="folder for the study file, checkpoint and worker logs (default: temporary)")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # a worker process of this benchmark
    parser.add_argument("--study", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker_main(args.study, args.seed, args.out)

    def log(message: str) -> None:
        if not args.json:
            print(message, file=sys.stderr, flush=True)

    drop = None
    url = args.storage
    if url is None:
        url, drop = make_database(args.pg_admin)
    try:
        if args.workdir is not None:
            result = run_benchmark(args.workers, args.trials, url, args.workdir, log)
        else:
            with tempfile.TemporaryDirectory(prefix="bench_load_") as tmp:
                result = run_benchmark(args.workers, args.trials, url, Path(tmp), log)
    finally:
        if drop is not None:
            drop()
    if args.json:
        print(json.dumps(result))
    else:
        print_report(result)
    return 0 if not result["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
