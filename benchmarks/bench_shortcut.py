"""Benchmark: does a shortcut fool the prior (issue 22)? The shortcut family, several seeds, the
prior's rank loss learning from each ``[train] rank_data``.

Usage:
    OMP_NUM_THREADS=1 nice .venv/bin/python benchmarks/bench_shortcut.py [--seeds 10] [--rank-data batch,holdout,valid]
        [--samples TRAIN,VALID,TEST] [--epochs N] [--out docs/results] [--tag NAME]

Data: ``studies/shortcut.toml`` (k = 4; planted ``a->b``, ``c->a``; modality ``d`` carries the
label in the train split only, strength 0.9), its [model] and [train], with ``[data] seed`` =
``[train] seed`` = the seed (``--samples`` and ``--epochs`` override the study's). About 20 s of
one core per supernet. For every seed and every arm
(``rank_data``) one supernet is trained; reported per seed:

- ``ranked``: the prior's keep probability of every informative path is above that of every
  shortcut path (the paths touching ``d``): issue 22's first target (>= 9 of 10 seeds);
- the *searched subnet*: the mask with the best validation accuracy among all 4,095, scored by
  the supernet (what ``mro-search run --exhaustive`` finds, so no sampler's luck enters), and its
  test accuracy against the full CMT's (all paths), both with the supernet's weights: issue 22's
  second target (the searched subnet beats the full CMT on test accuracy in >= 9 of 10).

Prints the per-seed table and the counts; writes ``OUT/bench_shortcut[_TAG].json`` and ``.md``
(``benchmarks/results_page.py`` puts them in ``docs/RESULTS.md``).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from benchmarks._common import check_tag, machine_info, write_result  # noqa: E402
from search_service.study_file import load_study  # noqa: E402
from supernet.data.synthetic import make_synthetic  # noqa: E402
from supernet.paths import all_masks, path_names  # noqa: E402
from supernet.scoring import build_cache, score_masks  # noqa: E402
from supernet.train import train_supernet  # noqa: E402


def run_one(seed: int, rank_data: str, samples: list[int] | None, epochs: int | None) -> dict:
    study = load_study(str(REPO / "studies" / "shortcut.toml"))
    data = make_synthetic(dataclasses.replace(study.data, seed=seed, samples=samples or study.data.samples))
    epochs = epochs or study.train.epochs
    cfg = dataclasses.replace(study.train, seed=seed, rank_data=rank_data, epochs=epochs,
                              warmup_epochs=min(study.train.warmup_epochs, epochs - 1))
    started = time.process_time()
    result = train_supernet(data, study.model, cfg, progress=False)
    names = path_names(data.modality_names)
    with torch.no_grad():
        q = result.prior.path_probs()
    informative = [float(q[names.index(p)]) for p in data.informative_paths]
    shortcut = [float(q[names.index(p)]) for p in data.shortcut_paths]
    masks = all_masks(len(names))
    valid = score_masks(result.model, build_cache(result.model, data.splits["valid"]), masks, "accuracy")
    test = score_masks(result.model, build_cache(result.model, data.splits["test"]), masks, "accuracy")
    best = int(valid.argmax())
    full = int((masks.sum(dim=1) == len(names)).nonzero()[0])
    last = result.history[-1]
    return {
        "seed": seed, "rank_data": rank_data,
        "ranked": min(informative) > max(shortcut),
        "keep_informative": informative, "keep_shortcut": shortcut,
        "searched_mask": "".join(str(int(b)) for b in masks[best].tolist()),
        "searched_test": float(test[best]), "full_test": float(test[full]),
        "beats_full": float(test[best]) > float(test[full]),
        "spearman_valid": last["spearman"], "spearman_train": last["spearman_train"],
        "spearman_holdout": last["spearman_holdout"],
        "cpu_s": time.process_time() - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--rank-data", default="batch,holdout,valid")
    parser.add_argument("--samples", default="")
    parser.add_argument("--epochs", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "results")
    parser.add_argument("--tag", default="")
    args = parser.parse_args()
    check_tag(args.tag)
    torch.set_num_threads(1)
    samples = [int(x) for x in args.samples.split(",")] if args.samples else None
    arms = args.rank_data.split(",")
    info = machine_info()
    rows = []
    print(f"{'arm':>8} {'seed':>4} {'ranked':>6} {'min inf q':>9} {'max sc q':>8} {'searched':>13} {'test':>6} {'full':>6} "
          f"{'rho val':>7} {'rho tr':>7} {'cpu s':>6}", flush=True)
    for seed in range(args.seeds):
        for arm in arms:
            r = run_one(seed, arm, samples, args.epochs)
            rows.append(r)
            print(f"{arm:>8} {seed:>4} {'yes' if r['ranked'] else 'no':>6} {min(r['keep_informative']):>9.3f} "
                  f"{max(r['keep_shortcut']):>8.3f} {r['searched_mask']:>13} {r['searched_test']:>6.3f} {r['full_test']:>6.3f} "
                  f"{r['spearman_valid']:>7.3f} {r['spearman_train']:>7.3f} {r['cpu_s']:>6.0f}", flush=True)
    counts = {arm: {"ranked": sum(r["ranked"] for r in rows if r["rank_data"] == arm),
                    "beats_full": sum(r["beats_full"] for r in rows if r["rank_data"] == arm),
                    "seeds": sum(r["rank_data"] == arm for r in rows)} for arm in arms}
    for arm, c in counts.items():
        print(f"{arm}: prior ranks informative above shortcut in {c['ranked']}/{c['seeds']} seeds; "
              f"searched subnet beats the full CMT on test in {c['beats_full']}/{c['seeds']}")
    info["loadavg_end"] = list(__import__("os").getloadavg())
    load = ", ".join(f"{x:.1f}" for x in info["loadavg_start"])
    lines = [f"Run {info['date']} on {info['cpu_model']} ({info['cpu_count']} CPUs), torch {info['torch']}, "
             f"one thread, load average at the start {load}.", "",
             "| rank_data | seed | ranked | min q informative | max q shortcut | searched | test acc | full CMT test acc |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['rank_data']} | {r['seed']} | {'yes' if r['ranked'] else 'no'} | {min(r['keep_informative']):.3f} | "
              f"{max(r['keep_shortcut']):.3f} | `{r['searched_mask']}` | {r['searched_test']:.3f} | {r['full_test']:.3f} |" for r in rows]
    lines += [""] + [f"- {arm}: ranked {c['ranked']}/{c['seeds']}, beats full CMT {c['beats_full']}/{c['seeds']}" for arm, c in counts.items()]
    stem = "bench_shortcut" + (f"_{args.tag}" if args.tag else "")
    write_result(args.out, stem, {"machine": info, "args": vars(args) | {"out": str(args.out)}, "rows": rows, "counts": counts},
                 "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
