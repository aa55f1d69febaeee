"""Benchmark: the main job, ``mro-search run --study demo``, end to end from a clean run directory.

Usage: python benchmarks/bench_main_job.py [--no-report] [--repeats 1] [--json] [-- extra run args]

Runs the installed ``mro-search`` CLI in a fresh temporary working directory, so ``runs/demo``
(checkpoint, SQLite study, report) starts empty: supernet training, the 60-trial search, the
Pareto front and (unless ``--no-report``) ``runs/demo/report.html``. The study file is the
shipped ``studies/demo.toml``. Every output line is time-stamped, which splits the wall time
into phases: training (until the checkpoint is written, i.e. the first line about the study),
search, and the rest (front and report). Target: within 5 minutes on this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET_S = 300.0


def mro_search() -> str:
    local = ROOT / ".venv" / "bin" / "mro-search"
    return str(local) if local.exists() else (shutil.which("mro-search") or "mro-search")


def run_once(extra: list[str], no_report: bool, env: dict[str, str] | None = None) -> dict:
    with tempfile.TemporaryDirectory(prefix="mro-main-job-") as tmp:
        cmd = [mro_search(), "run", "--study", "demo", *(["--no-report"] if no_report else []), *extra]
        lines: list[tuple[float, str, str]] = []
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1, env={**os.environ, **(env or {})})

        def pump(stream, name):
            for line in stream:
                lines.append((time.perf_counter() - started, name, line.rstrip("\n")))

        threads = [threading.Thread(target=pump, args=(proc.stdout, "out")), threading.Thread(target=pump, args=(proc.stderr, "err"))]
        for t in threads:
            t.start()
        rc = proc.wait()
        for t in threads:
            t.join()
        total = time.perf_counter() - started
        run_dir = Path(tmp) / "runs" / "demo"
        files = sorted(p.name for p in run_dir.iterdir()) if run_dir.is_dir() else []
    lines.sort()
    trained = next((t for t, _, text in lines if "study demo" in text or "budget" in text), None)
    front = next((t for t, _, text in lines if "Pareto front" in text or "trials complete" in text), None)
    return {"rc": rc, "total_s": total, "train_s": trained, "search_end_s": front, "files": files, "lines": lines, "cmd": " ".join(cmd)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-report", action="store_true", help="pass --no-report to mro-search run")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="environment for the run (repeatable)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("extra", nargs="*", help="more arguments for mro-search run (after --)")
    args = parser.parse_args()
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("model name")), "?")
    print(f"# bench_main_job  {time.strftime('%Y-%m-%dT%H:%M:%S%z')}  {cpu} x{os.cpu_count()}  load average {os.getloadavg()[0]:.2f}")
    results = []
    for i in range(args.repeats):
        env = dict(kv.split("=", 1) for kv in args.env)
        r = run_once(args.extra, args.no_report, env)
        results.append(r)
        print(f"\nrun {i + 1}: {' '.join(args.env)} {r['cmd']}  (exit {r['rc']}; load average at the end {os.getloadavg()[0]:.2f})")
        for t, name, text in r["lines"]:
            if name == "err" and ("epoch" in text or "budget" in text or "Error" in text or "error" in text):
                print(f"  [{t:7.1f} s] {text[:160]}")
        for t, name, text in r["lines"]:
            if name == "out":
                print(f"  [{t:7.1f} s] {text[:160]}")
        search_s = (r["search_end_s"] - r["train_s"]) if r["train_s"] is not None and r["search_end_s"] is not None else None
        print(f"  files in runs/demo: {', '.join(r['files'])}")
        print(f"  total {r['total_s']:.1f} s" + (f"; training (to the study's creation) {r['train_s']:.1f} s" if r["train_s"] is not None else "")
              + (f"; search and front {search_s:.1f} s" if search_s is not None else "")
              + f"; target {TARGET_S:.0f} s -> {'MET' if r['rc'] == 0 and r['total_s'] <= TARGET_S else 'NOT MET'}")
    if args.json:
        print(json.dumps([{k: v for k, v in r.items() if k != "lines"} for r in results]))
    return 0 if all(r["rc"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
