"""Assemble ``docs/RESULTS.md`` from the result fragments the benchmarks write.

Usage: python benchmarks/results_page.py [--results docs/results] [--out docs/RESULTS.md]

Each evidence benchmark (``bench_fidelity.py``, ``bench_planted.py``, ``bench_tables.py``) writes
``docs/results/NAME.md`` (the tables, with the date, machine and load of the run) and
``NAME.json`` (every number behind them). This script puts the fragments in one page, each
under the one command that regenerates it; a result that has not been produced yet is listed
as such, with its command, never filled in by hand.
"""

from __future__ import annotations

import argparse
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# (section title, fragment file stem, the command that regenerates it, what it answers)
SECTIONS = [
    (
        "Ranking fidelity: the demo study (all 63 masks)",
        "bench_fidelity_demo",
        "OMP_NUM_THREADS=1 python benchmarks/bench_fidelity.py --study demo --seeds 0,1,2",
        "Does the supernet rank subnets the way stand-alone training does? Kendall τ and Spearman ρ "
        "between the supernet's inherited validation accuracy and stand-alone training with the same "
        "budget. Target: τ ≥ 0.6 (uniform weight sharing: τ ≈ 0.2, Yu et al. 2020).",
    ),
    (
        "Ranking fidelity: UCI mfeat (30 masks stratified by size)",
        "bench_fidelity_mfeat",
        "OMP_NUM_THREADS=1 python benchmarks/bench_fidelity.py --study mfeat --seeds 0,1,2 --masks 30",
        "The same on six real views of handwritten digits (k = 6, 30 paths).",
    ),
    (
        "Planted structure found by the search (k = 3, 4, 5; 10 seeds each)",
        "bench_planted",
        "OMP_NUM_THREADS=1 python benchmarks/bench_planted.py --k 3,4,5 --seeds 0-9 --trials 60 --workers 2",
        "Does the search find the structure that is really in the data? The planted mask must be on "
        "the found Pareto front in at least 9 of 10 seeds for each k.",
    ),
    (
        "The paper's Tables 5 and 4 on the planted data",
        "bench_tables_planted",
        "OMP_NUM_THREADS=1 python benchmarks/bench_tables.py --dataset planted --seeds 0,1,2",
        "Concat+MLP, EmbraceNet, the full pairwise CMT, MRO and its ablations, trained stand-alone; "
        "the rank loss p ∈ {0, 1, 2, ∞}.",
    ),
    (
        "Table 5 on the planted data with 20 trials per search",
        "planted_t20/bench_tables_planted",
        "OMP_NUM_THREADS=1 python benchmarks/bench_tables.py --dataset planted --seeds 0,1,2 --trials 20 --out docs/results/planted_t20",
        "With 60 trials over 63 masks every search sees nearly the whole space and the four search rows "
        "coincide; 20 trials separate them.",
    ),
    (
        "The paper's Tables 5 and 4 on UCI mfeat",
        "bench_tables_mfeat",
        "OMP_NUM_THREADS=1 python benchmarks/bench_tables.py --dataset mfeat --seeds 0,1,2",
        "The same on six real views.",
    ),
]

HEADER = """# Results

Every table below was produced by the command above it and copied here by
`python benchmarks/results_page.py` from the fragment the benchmark wrote to `docs/results/`
(the JSON beside each fragment holds every number behind it). Each fragment names the date,
the machine and its load. The development machine is a shared 2-core VM without a GPU
(`benchmarks/README.md`, "Machine and noise"); the search-service figures (hypervolume,
per-trial overhead, main job) are in `benchmarks/README.md`.
"""


def build(results: Path) -> str:
    parts = [HEADER]
    for title, stem, command, what in SECTIONS:
        parts.append(f"\n## {title}\n\n{what}\n\n```bash\n{command}\n```\n")
        fragment = results / f"{stem}.md"
        if fragment.is_file():
            parts.append("\n" + fragment.read_text(encoding="utf-8").strip() + "\n")
        else:
            parts.append("\n*Not run yet: no `docs/results/" + f"{stem}.md`. Run the command above.*\n")
    return "".join(parts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default=str(ROOT / "docs" / "results"))
    parser.add_argument("--out", default=str(ROOT / "docs" / "RESULTS.md"))
    args = parser.parse_args()
    page = build(Path(args.results))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(page, encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
