"""Benchmark: what the trained prior says when two planted paths leave the same modality.

Usage: python benchmarks/bench_keep_mapping.py [--seeds 0,1,2] [--samples 4000,1000,1000]
                                               [--out DIR] [--json]

The demo study (``studies/demo.toml``: text, audio, vision; its model and [train] settings) with
two planted arrangements: ``text->audio, text->vision`` (one source: under the ``per_source`` keep
mapping the two paths share a budget, issue 17) and the demo's own ``audio->text, text->vision``
(two sources). For each arrangement, seed and keep mapping (``[train] prior_keep``:
``per_source``, the earlier mapping, and ``independent``) a supernet is trained with
``train_supernet`` (``--samples`` train/valid/test samples, the study's 8 epochs, 3 warm-up) and
the prior's keep probabilities ``prior.path_probs()`` are recorded, with the rank of the planted
paths among all six and the last epoch's Spearman rho between the prior's scores and the masks'
validation losses. One torch thread. Writes ``DIR/bench_keep_mapping.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402
import torch  # noqa: E402

from search_service.evaluator import load_study_data  # noqa: E402
from search_service.study_file import load_study  # noqa: E402
from supernet.paths import path_names  # noqa: E402
from supernet.train import train_supernet  # noqa: E402

ARRANGEMENTS = {"same_source": ["text->audio", "text->vision"], "two_sources": ["audio->text", "text->vision"]}
MAPPINGS = ("per_source", "independent")


def run_one(arrangement: str, keep: str, seed: int, samples: list[int]) -> dict:
    study = load_study("demo")
    study.data.planted_paths = ARRANGEMENTS[arrangement]
    study.data.samples = samples
    study.train.seed, study.train.device, study.train.prior_keep = seed, "cpu", keep
    started = time.perf_counter()
    result = train_supernet(load_study_data(study), study.model, study.train, progress=False)
    names = path_names(list(study.data.modalities))
    q = [float(v) for v in result.prior.path_probs().detach()]
    order = sorted(range(len(q)), key=lambda p: -q[p])
    return {"arrangement": arrangement, "planted": ARRANGEMENTS[arrangement], "keep": keep, "seed": seed,
            "keep_probs": dict(zip(names, q)),
            "planted_ranks": [order.index(names.index(p)) + 1 for p in ARRANGEMENTS[arrangement]],
            "spearman_last": float(result.history[-1]["spearman"]), "seconds": time.perf_counter() - started}


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [f"**bench_keep_mapping** ({m['date']}, {m['cpu_model']} x{m['cpu_count']}, load "
             f"{m['loadavg_start'][0]:.1f}; demo model and [train], samples {report['samples']}, seeds {report['seeds']})", "",
             "| planted | keep mapping | seed | keep probabilities (path order) | planted paths' ranks | ρ last epoch |",
             "|---|---|---|---|---|---|"]
    for r in report["runs"]:
        probs = ", ".join(f"{n} {v:.3f}" for n, v in r["keep_probs"].items())
        lines.append(f"| {', '.join(r['planted'])} | {r['keep']} | {r['seed']} | {probs} | "
                     f"{', '.join(map(str, r['planted_ranks']))} | {r['spearman_last']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--samples", default="4000,1000,1000")
    parser.add_argument("--out", default=str(ROOT / "docs" / "results" / "keep_mapping"))
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    samples = [int(s) for s in args.samples.split(",")]
    report = {"machine": _common.machine_info(), "seeds": seeds, "samples": samples, "runs": []}
    for seed in seeds:
        for arrangement in ARRANGEMENTS:
            for keep in MAPPINGS:
                run = run_one(arrangement, keep, seed, samples)
                report["runs"].append(run)
                print(f"{arrangement} {keep} seed {seed}: ranks {run['planted_ranks']}, "
                      + ", ".join(f"{n} {v:.3f}" for n, v in run["keep_probs"].items()), file=sys.stderr, flush=True)
    report["loadavg_end"] = list(os.getloadavg())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_keep_mapping.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "bench_keep_mapping.md").write_text(markdown(report))
    print(json.dumps(report, indent=1) if args.json else markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
