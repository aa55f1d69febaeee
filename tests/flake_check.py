"""Look for order- and timing-dependent tests: run the suite several times, each in a random order
(pytest-random-order, from the ``test`` extra), optionally with every core kept busy by a CPU hog,
and list every test that failed in any run.

    python tests/flake_check.py --runs 3                 # three random orders
    python tests/flake_check.py --runs 1 --load          # one more with both cores loaded
    python tests/flake_check.py --runs 2 -- tests/search_tests   # a part of the suite

Opt-in (CI runs the suite once, in file order); it takes the suite's time per run (longer under
--load). Each run's seed is printed, so a failing order can be replayed with
``python -m pytest -q -p random_order --random-order-bucket=global --random-order-seed=SEED``.
Exit 0 when every run passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FAILED = re.compile(r"^(?:FAILED|ERROR) (\S+)", re.MULTILINE)


def _hog() -> None:  # pragma: no cover - a busy loop in a child process
    while True:
        pass


def run_once(seed: int, extra: list[str]) -> tuple[int, list[str], float]:
    command = [sys.executable, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider", "-p", "random_order",
               "--random-order-bucket=global", f"--random-order-seed={seed}", *extra]
    start = time.monotonic()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    tail = done.stdout.strip().splitlines()[-1:] or ["(no output)"]
    print(f"  seed {seed}: exit {done.returncode}, {tail[0]}", flush=True)
    return done.returncode, FAILED.findall(done.stdout), time.monotonic() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="suite runs, each in a new random order (default 3)")
    parser.add_argument("--load", action="store_true", help="keep every core busy with a CPU hog during the runs")
    parser.add_argument("--seed", type=int, default=None, help="seed of the first run (default: random); run r uses seed + r")
    parser.add_argument("pytest_args", nargs="*", help="passed to pytest after --")
    args = parser.parse_args(argv)
    first = args.seed if args.seed is not None else random.randrange(1_000_000)
    hogs = [multiprocessing.Process(target=_hog, daemon=True) for _ in range(os.cpu_count() or 1)] if args.load else []
    for hog in hogs:
        hog.start()
    failures: Counter[str] = Counter()
    try:
        print(f"{args.runs} run(s), random order{', every core loaded' if hogs else ''}", flush=True)
        bad = 0
        for r in range(args.runs):
            code, failed, seconds = run_once(first + r, args.pytest_args)
            print(f"  ({seconds / 60:.1f} min)", flush=True)
            bad += code != 0
            failures.update(failed)
    finally:
        for hog in hogs:
            hog.terminate()
    for test, n in failures.most_common():
        print(f"failed in {n} of {args.runs} run(s): {test}")
    print("no failures" if not bad else f"{bad} of {args.runs} run(s) failed")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
