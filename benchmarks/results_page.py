"""Assemble ``docs/RESULTS.md`` from the result fragments the benchmarks write.

Usage: python benchmarks/results_page.py [--results docs/results] [--figures docs/figures]
                                         [--out docs/RESULTS.md]

Each evidence benchmark (``bench_fidelity.py``, ``bench_planted.py``, ``bench_tables.py``) writes
``docs/results/NAME.md`` (the tables, with the date, machine and load of the run) and
``NAME.json`` (every number behind them). This script puts the fragments in one page, each
under the one command that regenerates it; a result that has not been produced yet is listed
as such, with its command, never filled in by hand. What a result says is written by hand in
``NAME.reading.md`` beside it (a benchmark never overwrites it) and shown under it. The figures ``benchmarks/figures.py`` drew
from the same JSON (``docs/figures/*.svg``) go under their tables.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
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
        "OMP_NUM_THREADS=1 python benchmarks/bench_fidelity.py --study mfeat --seeds 0,1,2 --masks 30 --workers 2 --ceiling 0,1,2",
        "The same on six real views of handwritten digits (k = 6, 30 paths), with the noise ceiling: every mask "
        "trained stand-alone a second time with another seed. On mfeat most subnets are within a few of the 300 "
        "validation samples of each other, so the ceiling tells how much of the ranking is there to be found: the "
        "share of the pairs that both stand-alone runs order alike which the supernet also orders that way is the "
        "fair measure here.",
    ),
    (
        "Ranking fidelity on mfeat: supernet training variants (before and after)",
        "compare:bench_fidelity_mfeat",
        "\n".join(
            "OMP_NUM_THREADS=1 python benchmarks/bench_fidelity.py --study mfeat --seeds 0,1,2 --masks 30 "
            f"--workers 2 --ceiling 0,1,2 {flags}"
            for flags in (
                "--train per_sample_masks=true --train distill=0.5 --tag ps_distill",
                "--train per_sample_masks=true --tag ps",
                "--train distill=0.5 --tag distill",
                "--train warmup_epochs=10 --tag warmup10",
                "--train warmup_epochs=20 --tag warmup20",
            )
        ),
        "The same masks and stand-alone results, the supernet trained differently: per-sample masks "
        "(`[train] per_sample_masks`), in-place distillation from the full supernet (`[train] distill`, "
        "BigNAS), both, and a longer warm-up of uniform masks (10 or all 20 epochs instead of 5). The noise ceiling is Kendall τ between two stand-alone trainings of the same "
        "masks with different seeds. Every variant tried is listed.",
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
    (
        "Table 5 with the paper's ablations (each row its own supernet): planted data",
        "ablation_paper/bench_tables_planted",
        "OMP_NUM_THREADS=1 python benchmarks/bench_tables.py --dataset planted --seeds 0,1,2 --tables 5 --out docs/results/ablation_paper",
        "The sections above ablate the search only: every row searches the one supernet trained with the full "
        "method. Here each ablation is the whole pipeline without its part, as in the paper; each arm against "
        "*Full MRO* (`benchmarks/bench_tables.py`, `training_overrides` and `sampler_options`):\n\n"
        "- *MRO w/o prior guidance*: supernet masks uniform throughout (`warmup_epochs = epochs`, the prior trained "
        "but never sampling); every trial a uniform untried mask (flat prior, no refinement).\n"
        "- *MRO w/o MRG prior*: the same uniform-throughout supernet; the full sampler (refinement, local moves) "
        "from a flat prior (every keep probability 0.5).\n"
        "- *MRO w/o rank regularization*: λ = 0 and nothing else: `prior_lr = 0`, `rank_weight = 0` in training (the "
        "prior keeps its seed's initial weights and samples the masks after warm-up) and `refine_steps = 0` in the "
        "search (never refit to the trials); local moves stay.\n"
        "- *Full MRO*: the supernet as the service trains it, the sampler as `run_worker` builds it.\n\n"
        "Every supernet's prior starts from its own seed's initialisation. The tables in this and the next two "
        "sections were run before 2026-12-07, when every seed's prior started from the same initialisation (so the "
        "λ = 0 row's seeds differed only through the measured statistics and the supernet) and the λ = 0 row also "
        "switched local moves off; they are not yet re-run. Before: the 60-trial table above (same settings).",
    ),
    (
        "Table 5 with the paper's ablations on the planted data, 20 trials per search",
        "ablation_paper/planted_t20/bench_tables_planted",
        "OMP_NUM_THREADS=1 python benchmarks/bench_tables.py --dataset planted --seeds 0,1,2 --tables 5 --trials 20 --out docs/results/ablation_paper/planted_t20",
        "The same supernets, 20 trials per search, so that the searches differ as well. Before: the 20-trial table "
        "above (same settings, one supernet for every row).",
    ),
    (
        "Table 5 with the paper's ablations (each row its own supernet): UCI mfeat",
        "ablation_paper/bench_tables_mfeat",
        "OMP_NUM_THREADS=1 python benchmarks/bench_tables.py --dataset mfeat --seeds 0,1,2 --tables 5 --out docs/results/ablation_paper",
        "The same on six real views. Before: the mfeat table above (same settings).",
    ),
    (
        "Joint optimization of the prior and the supernet, and the paper's GAT (before and after)",
        "compare:joint/bench_fidelity_mfeat",
        "\n".join(
            "OMP_NUM_THREADS=1 python benchmarks/bench_fidelity.py --study mfeat --seeds 0,1,2 --masks 30 --workers 2 "
            f"--standalone-from docs/results/bench_fidelity_mfeat.json --out docs/results/joint {flags}"
            for flags in ("", "--train joint_rank=true --tag joint", "--train prior_gnn='\"gat\"' --tag gat")
        ),
        "`[train] joint_rank = true` adds λ·R (`rank_weight`) to the task loss of the subnets trained in each step, "
        "so R's gradient reaches the prior and the supernet together (Table 1 of the paper) instead of a separate "
        "prior update from cached scores; `[train] prior_gnn = \"gat\"` is Eq. 1 with GAT's own attention logits "
        "instead of today's GATv2 layer and edge MLP. The baseline is re-run on the same machine (supernet training "
        "differs between machines); the stand-alone results are the 2026-11-28 run's, re-trained here for one mask "
        "per seed and matched to 1e-6 (`--standalone-from`).",
    ),
    (
        "Table 4 before joint optimization: planted data, the study's training (re-run as the baseline)",
        "joint/bench_tables_planted_table4",
        "OMP_NUM_THREADS=1 python benchmarks/bench_tables.py --dataset planted --tables 4 --seeds 0,1,2 --workers 2 "
        "--tag table4 --out docs/results/joint",
        "Table 4 (the four rank losses) with the prior trained as the study trains it: a separate prior update every "
        "`rank_every` steps from cached scores. Re-run in the same hour as the joint run below, on the same machine "
        "and code, so the two differ only in `joint_rank`.",
    ),
    (
        "Table 4 after joint optimization: planted data, `joint_rank = true`",
        "joint/bench_tables_planted_table4_joint",
        "OMP_NUM_THREADS=1 python benchmarks/bench_tables.py --dataset planted --tables 4 --seeds 0,1,2 --workers 2 "
        "--train joint_rank=true --tag table4_joint --out docs/results/joint",
        "The same Table 4 with `[train] joint_rank = true` (λ = `rank_weight` 0.1): R of the subnets trained in each "
        "step added to their task loss, so R's gradient reaches the prior and the supernet together. The stand-alone "
        "trainings of masks both runs selected are shared (they do not depend on the supernet's training).",
    ),
    (
        "The prior's keep mapping: two planted paths leaving one modality",
        "keep_mapping/bench_keep_mapping",
        "OMP_NUM_THREADS=1 python benchmarks/bench_keep_mapping.py --seeds 2",
        "Can the trained prior say that two paths leaving the same modality both help (issue 17)? The keep "
        "probabilities of the trained prior under the earlier `per_source` mapping (a source's paths share a budget) "
        "and the `independent` one (`supernet/relation_graph.py`), on the demo data with the planted paths on one "
        "source and, for contrast, on two.",
    ),
    (
        "The prior's keep mapping: ranking fidelity on the demo study (before and after)",
        "compare:keep_mapping/bench_fidelity_demo",
        "\n".join(
            "OMP_NUM_THREADS=1 python benchmarks/bench_fidelity.py --study demo --seeds 0,1,2 --workers 1 "
            f"--standalone-from docs/results/bench_fidelity_demo.json --out docs/results/keep_mapping {flags}"
            for flags in ("--train prior_keep='\"per_source\"' --tag per_source", "--tag independent")
        ),
        "The supernet's ranking of all 63 masks against the same stand-alone results, trained with the earlier and "
        "the new keep mapping (masks are drawn from the prior after warm-up, so the mapping changes the training).",
    ),
    (
        "The exact front against the sampler's: mfeat, five views (k = 5, all 1,048,575 masks)",
        "bench_exhaustive_mfeat5",
        "OMP_NUM_THREADS=1 nice .venv/bin/python benchmarks/bench_exhaustive.py compare --results docs/results",
        "Does the sampler find the front? `mro-search run --exhaustive` scores every mask exactly; on the same "
        "study (same supernet), the sampler's front after its 200-trial budget is compared with the exact one. "
        "k = 6 (2^30 − 1 masks) takes hours on this CPU, so five of mfeat's six views are used (`mor`, 6 "
        "features, left out).",
    ),
    (
        "Search efficiency where the space is large (k = 6)",
        "bench_efficiency",
        'OMP_NUM_THREADS=1 nice python benchmarks/bench_efficiency.py --landscapes mfeat,planted5,planted6 --seeds 5 --trials 500 --long 3000 --gp-cap 50 --gp-landscapes mfeat --jobs 2 --out docs/results',
        "How fast does each sampler approach the best front when the space cannot be enumerated? mfeat's real k = 6 landscape (30 paths, 10^9 masks) and the planted data at k = 5 and 6, every proposed mask scored exactly from the path cache. Target (issue 12): MROSampler reaches the best hypervolume of the other samplers' 500 trials within 100 trials (median of 5 seeds).",
    ),
    (
        "Rank data: a shortcut against the prior (validation losses, the default)",
        "bench_shortcut_valid",
        "OMP_NUM_THREADS=1 nice python benchmarks/bench_shortcut.py --seeds 10 --rank-data valid --tag valid",
        "Does a shortcut fool the prior (issue 22)? `studies/shortcut.toml` (k = 4, planted `a->b`, `c->a`; a feature "
        "of `d` holds the label in 90 % of the train samples only), 10 seeds, the prior's rank loss learning from the "
        "validation split. Targets: every informative path's keep probability above every shortcut path's (the 6 "
        "touching `d`) in >= 9 of 10 seeds; the searched subnet (best validation accuracy of all 4,095 masks, scored "
        "by the supernet) beats the full CMT on test accuracy in >= 9 of 10.",
    ),
    (
        "Rank data: the same with training-batch losses (the code before issue 22)",
        "bench_shortcut_batch",
        "OMP_NUM_THREADS=1 nice python benchmarks/bench_shortcut.py --seeds 10 --rank-data batch --tag batch",
        "The same seeds, `[train] rank_data = \"batch\"`: the rank loss ranks subnets by their training-batch losses.",
    ),
    (
        "Rank data: the same with a held-out slice of the train split",
        "bench_shortcut_holdout",
        "OMP_NUM_THREADS=1 nice python benchmarks/bench_shortcut.py --seeds 10 --rank-data holdout --tag holdout",
        "The same seeds, `[train] rank_data = \"holdout\"` (`rank_holdout = 0.1`, never trained on).",
    ),
    (
        "GPU: training and cached scoring throughput",
        "bench_gpu",
        "python benchmarks/bench_gpu.py --device cuda --batch-sizes 32,256 --latency-masks 100",
        "Training throughput at the CMU-MOSEI shape, plain and with what makes it fast (bf16 autocast, "
        "per-sample masks with all paths as one batched operation, the whole step in one CUDA graph, "
        "`torch.compile` with `--compile`), cached scoring for k = 6, and (issue 21) the latency and memory tables "
        "fitted and checked on the GPU. Targets: 13,000 samples/s at batch 32 and 40,000 at batch 256; the latency "
        "table's median error <= 10 %. Runs only on a lent GPU machine.",
    ),
    (
        "Latency and memory tables (issue 21)",
        "bench_latency",
        "OMP_NUM_THREADS=1 python benchmarks/bench_latency.py --threads 1 --out docs/results",
        "How well does an additive cost table (base + each touched modality's embedding + each active path, "
        "fitted by non-negative least squares on every single-path mask, the full mask and 2P random masks) "
        "predict the measured forward latency and peak memory of masks it was not fitted on, and how well do "
        "MFLOPs rank them? `supernet/hardware.py`; the mosei shape (k = 3) and the mfeat shape (k = 6), on the "
        "CPU, batch 1, fp32. Target: the latency table's median relative error <= 10 % on 100 random masks.",
    ),
    (
        "The exact front under the latency table: mfeat, five views (k = 5), accuracy x latency x parameters (issue 21)",
        "bench_exhaustive_mfeat5_latency_ms_params",
        "OMP_NUM_THREADS=1 python benchmarks/bench_exhaustive.py compare --objectives accuracy,latency_ms,params --verify "
        "--out runs/bench_exhaustive_hw --results docs/results",
        "`run --exhaustive` on a study with three objectives, `[search] objectives = [\"accuracy\", \"latency_ms\", "
        "\"params\"]`: every one of the 1,048,575 masks scored exactly, priced by the latency table the study measured "
        "when it was created and by its exact parameter count, the three-objective front kept. `--verify` checks it "
        "against brute force (every mask scored by `score_masks` and priced again). The sampler's front after the "
        "study's budget is compared with it as for MFLOPs above.",
    ),
]

# Figures (docs/figures/NAME.svg, drawn by benchmarks/figures.py) shown under a fragment, by stem.
FIGURES = {
    "bench_fidelity_demo": [("fidelity_demo", "Supernet score against stand-alone score per mask, demo")],
    "bench_fidelity_mfeat": [("fidelity_mfeat", "Supernet score against stand-alone score per mask, mfeat")],
    "bench_planted": [("planted_hits", "Seeds with the planted mask on the front after n trials")],
    "bench_tables_planted": [("table5_planted", "Table 5 on the planted data: test accuracy against MFLOPs"),
                             ("table4_planted", "Table 4 on the planted data: Spearman rho per rank loss")],
    "planted_t20/bench_tables_planted": [
        ("table5_planted_t20", "Table 5 on the planted data, 20 trials per search: test accuracy against MFLOPs")],
    "bench_efficiency": [("efficiency", "Median fraction of the reference hypervolume against trials, per sampler and landscape")],
    "bench_tables_mfeat": [("table5_mfeat", "Table 5 on mfeat: test accuracy against MFLOPs"),
                           ("table4_mfeat", "Table 4 on mfeat: Spearman rho per rank loss")],
}
FIGURES_COMMAND = "python benchmarks/figures.py"

HEADER = """# Results

Every table below was produced by the command above it and copied here by
`python benchmarks/results_page.py` from the fragment the benchmark wrote to `docs/results/`
(the JSON beside each fragment holds every number behind it). Each fragment names the date,
the machine and its load. The development machine is a shared 2-core VM without a GPU
(`benchmarks/README.md`, "Machine and noise"); the search-service figures (hypervolume,
per-trial overhead, main job) are in `benchmarks/README.md`. The figures are drawn from the
same JSON files by `python benchmarks/figures.py` (plotly, exported to SVG with kaleido).
"""


def _mean_std_text(pair: dict, digits: int = 3) -> str:
    """``{"mean": m, "std": s}`` as ``m ± s`` (``m`` alone when s is missing or NaN)."""
    m, sd = pair["mean"], pair["std"]
    return f"{m:.{digits}f}" + ("" if sd is None or math.isnan(sd) else f" ± {sd:.{digits}f}")


def fidelity_comparison(results: Path, stem: str) -> str | None:
    """One row per run of ``stem`` (the baseline) and its tagged variants ``stem_TAG``, from their JSON."""
    paths = sorted(results.glob(f"{stem}.json")) + sorted(
        p for p in results.glob(f"{stem}_*.json") if not p.stem.endswith("_quick"))
    if not paths:
        return None
    lines = [
        "| run | supernet [train] overrides | Kendall τ | Spearman ρ | τ on loss | top-1 regret | "
        "noise ceiling τ (τ on loss) | τ vs other-seed stand-alone | τ vs mean of both stand-alone | "
        "agreement on reliable pairs | supernet train s | date |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for path in paths:
        r = json.loads(path.read_text(encoding="utf-8"))
        a = r["summary"]
        overrides = r["settings"].get("train_overrides") or {}

        ceiling = f"{_mean_std_text(a['ceiling_tau'])} ({_mean_std_text(a['ceiling_tau_loss'])})" if "ceiling_tau" in a else "–"
        reliable = _mean_std_text(a["reliable_pairs_agreement"]) if "reliable_pairs_agreement" in a else "–"
        cross = " | ".join(_mean_std_text(a[k]) if k in a else "–" for k in ("kendall_tau_vs_again", "kendall_tau_vs_mean"))
        train_s = statistics.mean(row["supernet_train_s"] for row in r["per_seed"])
        lines.append(
            f"| `{path.stem}` | {', '.join(f'{k} = {json.dumps(v)}' for k, v in overrides.items()) or 'none (the study)'} | "
            f"**{_mean_std_text(a['kendall_tau'])}** | {_mean_std_text(a['spearman_rho'])} | {_mean_std_text(a['kendall_tau_loss'])} | {_mean_std_text(a['top1_regret'], 4)} | "
            f"{ceiling} | {cross} | {reliable} | {train_s:.0f} | {r['machine']['date'][:16]} |"
        )
    return "\n".join(lines)


def _figure_links(wanted: list[tuple[str, str]], figures: Path, page_dir: Path) -> str:
    """Markdown images for the figures of ``wanted`` that exist, under one line naming the command."""
    drawn = [(name, alt) for name, alt in wanted if (figures / f"{name}.svg").is_file()]
    if not drawn:
        return ""
    out = [f"\nFigures (`{FIGURES_COMMAND}`, from the same JSON):\n\n"]
    for name, alt in drawn:
        rel = Path(os.path.relpath(figures / f"{name}.svg", page_dir)).as_posix()
        out.append(f"![{alt}]({rel})\n\n")
    return "".join(out)


def build(results: Path, figures: Path | None = None, page_dir: Path | None = None) -> str:
    figures = figures if figures is not None else results.parent / "figures"
    page_dir = page_dir if page_dir is not None else results.parent
    parts = [HEADER]
    for title, stem, command, what in SECTIONS:
        parts.append(f"\n## {title}\n\n{what}\n\n```bash\n{command}\n```\n")
        fragment = results / f"{stem}.md"
        if stem.startswith("compare:"):
            base = stem.removeprefix("compare:")
            table = fidelity_comparison(results, base)
            parts.append("\n" + (table or "*Not run yet. Run the commands above.*") + "\n")
            variants = sorted(p.stem.replace("bench_", "", 1) for p in results.glob(f"{base}_*.json")
                              if not p.stem.endswith("_quick"))
            parts.append(_figure_links(
                [(name, f"Supernet score against stand-alone score per mask, {name}") for name in variants],
                figures, page_dir))
        elif fragment.is_file():
            parts.append("\n" + fragment.read_text(encoding="utf-8").strip() + "\n")
            parts.append(_figure_links(FIGURES.get(stem, []), figures, page_dir))
        else:
            parts.append("\n*Not run yet: no `docs/results/" + f"{stem}.md`. Run the command above.*\n")
        # what the result says: written by hand beside the generated fragment (NAME.reading.md, which
        # no benchmark overwrites), naming the run it reads
        name = stem.removeprefix("compare:") + ("_variants" if stem.startswith("compare:") else "")
        reading = results / f"{name}.reading.md"
        if reading.is_file():
            parts.append("\n" + reading.read_text(encoding="utf-8").strip() + "\n")
    return "".join(parts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default=str(ROOT / "docs" / "results"))
    parser.add_argument("--figures", default=str(ROOT / "docs" / "figures"))
    parser.add_argument("--out", default=str(ROOT / "docs" / "RESULTS.md"))
    args = parser.parse_args()
    page = build(Path(args.results), Path(args.figures), Path(args.out).resolve().parent)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(page, encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
