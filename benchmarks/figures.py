"""Figures for ``docs/RESULTS.md``: static SVG images drawn with plotly from the benchmarks' JSON.

Usage: python benchmarks/figures.py [--results docs/results] [--out docs/figures]

Reads the JSON files the evidence benchmarks wrote to ``docs/results/`` (never reruns a
benchmark; a result that is missing is skipped and named) and writes one SVG per figure to
``docs/figures/``:

- ``fidelity_STUDY[_TAG].svg`` (``bench_fidelity_STUDY[_TAG].json``): each mask's inherited
  validation score from the supernet against its score after stand-alone training, one colour per
  seed, Kendall τ in the legend (``_TAG``: a supernet training variant);
- ``planted_hits.svg`` (``bench_planted.json``): for k = 3, 4, 5, in how many seeds the
  planted mask was on the Pareto front of the first n trials;
- ``table5_DATASET.svg`` (``bench_tables_DATASET.json``): Table 5's models, mean test metric
  (± std) against mean MFLOPs (min–max) over seeds;
- ``table4_DATASET.svg``: Table 4's Spearman ρ (last epoch) per rank loss, mean ± std;
- ``table5_planted_t20.svg``: Table 5 on the planted data with 20 trials per search;
- ``efficiency.svg`` (``bench_efficiency.json``): the median fraction of the reference
  hypervolume after n trials per sampler, one panel per landscape (mfeat k = 6, planted k = 5, 6).

Static export needs plotly's image engine: ``pip install -e ".[report]"`` (kaleido ≥ 1) and a
Chrome or Chromium on the machine (``apt-get install chromium``; kaleido finds it, or set
``BROWSER_PATH``). ``python benchmarks/results_page.py`` then puts each figure under its table.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import statistics
import sys
from pathlib import Path

import plotly.graph_objects as go
from plotly.subplots import make_subplots

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_tables import P_LABEL, ROW_NAMES  # noqa: E402  (the tables' own row and rank-loss names)

ROOT = Path(__file__).resolve().parent.parent

SEED_COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"]


def _layout(fig: go.Figure, title: str, x: str, y: str, **kwargs) -> go.Figure:
    fig.update_layout(
        title=dict(text=title, x=0.02, font=dict(size=15)),
        xaxis_title=x,
        yaxis_title=y,
        template="plotly_white",
        width=720,
        height=460,
        margin=dict(l=70, r=20, t=60, b=60),
        legend=dict(bgcolor="rgba(255,255,255,0.8)"),
        **kwargs,
    )
    return fig


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def fidelity_figure(result: dict) -> go.Figure:
    """Inherited (supernet) score against stand-alone score, per mask, one trace per seed; where the
    run has a noise ceiling, a second panel: stand-alone against stand-alone with another seed."""
    ceiling = [seed for seed in result["per_seed"] if "ceiling_tau" in seed]
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.1, subplot_titles=(
        "supernet vs stand-alone", "stand-alone vs stand-alone, another seed (noise ceiling)")) if ceiling else go.Figure()
    at = dict(row=1, col=1) if ceiling else {}
    lo, hi = 1.0, 0.0
    for i, seed in enumerate(result["per_seed"]):
        xs = [m["supernet"] for m in seed["per_mask"]]
        ys = [m["standalone"] for m in seed["per_mask"]]
        lo, hi = min(lo, *xs, *ys), max(hi, *xs, *ys)
        colour = SEED_COLOURS[i % len(SEED_COLOURS)]
        fig.add_trace(go.Scatter(
            x=xs, y=ys, mode="markers",
            name=f"seed {seed['seed']}: τ = {seed['kendall_tau']:.3f}",
            marker=dict(size=7, color=colour, opacity=0.75),
            text=[f"{m['mask']} ({m['paths']} paths)" for m in seed["per_mask"]],
        ), **at)
        if "ceiling_tau" in seed:
            again = [m["standalone_again"] for m in seed["per_mask"]]
            lo, hi = min(lo, *again), max(hi, *again)
            fig.add_trace(go.Scatter(
                x=again, y=ys, mode="markers", name=f"ceiling {seed['seed']}: τ = {seed['ceiling_tau']:.3f}",
                marker=dict(size=7, color=colour, opacity=0.75, symbol="square"),
                text=[f"{m['mask']} ({m['paths']} paths)" for m in seed["per_mask"]],
            ), row=1, col=2)
    pad = 0.02
    for col in ((1, 2) if ceiling else (None,)):
        kw = dict(row=1, col=col) if col else {}
        fig.add_trace(go.Scatter(x=[lo - pad, hi + pad], y=[lo - pad, hi + pad], mode="lines", name="y = x",
                                 showlegend=col in (None, 1), line=dict(color="#888", dash="dot", width=1)), **kw)
    s = result["summary"]["kendall_tau"]
    metric = result.get("metric", "accuracy")
    title = (f"Ranking fidelity, {result['settings']['study']}: {result['masks_per_seed']} masks × "
             f"{len(result['per_seed'])} seeds, Kendall τ {s['mean']:.3f} ± {s['std']:.3f}")
    fig = _layout(fig, title, f"supernet (inherited weights), validation {metric}",
                  f"stand-alone training, validation {metric}")
    if ceiling:
        fig.update_layout(width=1100, margin=dict(l=70, r=20, t=95, b=60))
        fig.update_xaxes(title_text=f"stand-alone, seed + 1000, validation {metric}", row=1, col=2)
        fig.update_xaxes(range=[lo - pad, hi + pad])
        fig.update_yaxes(range=[lo - pad, hi + pad])
    return fig


def planted_figure(result: dict) -> go.Figure:
    """Seeds (of 10) with the planted mask on the front of the first n trials, per k."""
    fig = go.Figure()
    for i, (k, s) in enumerate(sorted(result["summary"].items(), key=lambda kv: int(kv[0]))):
        ns = sorted(s["hits_within"], key=int)
        fig.add_trace(go.Scatter(
            x=[int(n) for n in ns], y=[s["hits_within"][n] for n in ns], mode="lines+markers",
            name=f"k = {k} ({s['paths']} paths, {s['masks_in_space']:,} masks)",
            line=dict(color=SEED_COLOURS[i % len(SEED_COLOURS)]),
        ))
        seeds = s["seeds"]
    fig.add_hline(y=s["needed"], line=dict(color="#888", dash="dot"),
                  annotation_text=f"target: {s['needed']} of {seeds}", annotation_position="bottom right")
    return _layout(fig, "Planted mask on the found Pareto front", "trials (n)",
                   f"seeds with the planted mask on the front (of {seeds})",
                   yaxis=dict(range=[-0.3, seeds + 0.5], dtick=1))


def table5_figure(result: dict) -> go.Figure:
    """Table 5: test metric against MFLOPs, mean ± std over seeds, one marker per model."""
    metric = result["metric"]
    fig = go.Figure()
    for i, (key, row) in enumerate(result["table5"]["rows"].items()):
        runs = row["per_seed"]
        acc = _mean_std([r["test"][metric] for r in runs])
        flops = [r["mflops"] for r in runs]
        mean_flops = sum(flops) / len(flops)
        fig.add_trace(go.Scatter(
            x=[mean_flops], y=[acc[0]], mode="markers", name=ROW_NAMES.get(key, key),
            # MFLOPs on a log axis: the bar spans the seeds' min to max (a ± std bar can go below 0)
            error_x=dict(type="data", symmetric=False, array=[max(flops) - mean_flops],
                         arrayminus=[mean_flops - min(flops)], visible=True, thickness=1),
            error_y=dict(type="data", array=[acc[1]], visible=True, thickness=1),
            marker=dict(size=11, symbol="diamond" if key in ("cmt", "full") else "circle",
                        color=(SEED_COLOURS + ["#8c564b", "#17becf"])[i % 7]),
        ))
    seeds = len(result["settings"]["seeds"])
    title = (f"Table 5, {result['settings']['dataset']}: test {metric} vs MFLOPs "
             f"(means over {seeds} seeds, {result['settings']['trials']} trials per search)")
    return _layout(fig, title, "MFLOPs per sample (fvcore; bars: min–max over seeds)",
                   f"test {metric} (bars: ± std over seeds)", xaxis=dict(type="log"))


def table4_figure(result: dict) -> go.Figure:
    """Table 4: Spearman ρ (last epoch) per rank loss, mean ± std, with each seed's value."""
    rows = result["table4"]["rows"]
    keys = [k for k in ("l0", "l1", "l2", "linf") if k in rows]
    means, stds = zip(*(_mean_std(rows[k]["spearman_last"]) for k in keys))
    labels = [f"p = {P_LABEL[k]}" for k in keys]
    fig = go.Figure(go.Bar(x=labels, y=means, name="mean ± std",
                           error_y=dict(type="data", array=list(stds), visible=True),
                           marker_color="#9ecae1"))
    fig.add_trace(go.Scatter(
        x=[f"p = {P_LABEL[k]}" for k in keys for _ in rows[k]["spearman_last"]],
        y=[v for k in keys for v in rows[k]["spearman_last"]],
        mode="markers", name="per seed", marker=dict(color="#08519c", size=7)))
    return _layout(fig, f"Table 4, {result['settings']['dataset']}: rank loss and Spearman ρ "
                        "(prior scores vs validation losses, last epoch)",
                   "rank loss", "Spearman ρ")


EFFICIENCY_NAMES = {"mro": "MROSampler", "mro-uniform": "MROSampler, no prior", "tpe": "TPE", "nsga2": "NSGA-II",
                    "gp": "GP", "random": "Random"}


def efficiency_figure(result: dict) -> go.Figure:
    """Search efficiency (bench_efficiency): the median fraction of the reference hypervolume
    after n trials, one panel per landscape, one line per sampler, the target's 100 trials marked."""
    lands = result["landscapes"]
    fig = make_subplots(rows=1, cols=len(lands), shared_yaxes=True, horizontal_spacing=0.04, subplot_titles=[
        f"{land['landscape']} ({land['paths']} paths, {land['space']:,} masks)" for land in lands])
    colours = dict(zip(EFFICIENCY_NAMES, SEED_COLOURS + ["#8c564b"]))
    for col, land in enumerate(lands, start=1):
        for s, row in land["samplers"].items():
            ys = row["median_curve"]
            fig.add_trace(go.Scatter(
                x=list(range(1, len(ys) + 1)), y=ys, mode="lines", name=EFFICIENCY_NAMES.get(s, s),
                legendgroup=s, showlegend=col == 1,
                line=dict(color=colours.get(s, "#444"), width=3 if s == "mro" else 1.5,
                          dash="dash" if s == "mro-uniform" else None),
            ), row=1, col=col)
        fig.add_vline(x=100, line=dict(color="#888", dash="dot", width=1), row=1, col=col)
    seeds = result["settings"]["seeds"]
    fig = _layout(fig, f"Search efficiency: median of {seeds} seeds, fraction of the reference front's hypervolume",
                  "trials", "hypervolume / reference hypervolume")
    fig.update_xaxes(type="log", title_text="trials (log)")
    fig.update_layout(width=max(720, 420 * len(lands)))
    return fig


def stable_svg(fig: go.Figure, name: str) -> str:
    """The figure as SVG, with fixed trace ids and plotly's random per-render id replaced by one
    derived from ``name``: drawing the same results twice gives the same file (no churn in
    version control)."""
    for i, trace in enumerate(fig.data):
        trace.uid = f"{name}-{i}"
    svg = fig.to_image(format="svg").decode("utf-8")
    found = re.search(r'id="defs-([0-9a-f]{6})"', svg)
    if found is None:
        return svg
    return svg.replace(found.group(1), hashlib.sha256(name.encode()).hexdigest()[:6])


def build(results: Path) -> tuple[dict[str, go.Figure], list[str]]:
    """The figures whose results exist, by output name, and the result files that are missing."""
    fidelity = sorted({"bench_fidelity_demo", "bench_fidelity_mfeat"} | {
        p.stem for p in results.glob("bench_fidelity_*.json") if not p.stem.endswith("_quick")})
    makers = [(stem, stem.replace("bench_", "", 1), fidelity_figure) for stem in fidelity] + [
        ("bench_planted", "planted_hits", planted_figure),
        ("bench_tables_planted", "table5_planted", table5_figure),
        ("bench_tables_planted", "table4_planted", table4_figure),
        ("planted_t20/bench_tables_planted", "table5_planted_t20", table5_figure),
        ("bench_tables_mfeat", "table5_mfeat", table5_figure),
        ("bench_tables_mfeat", "table4_mfeat", table4_figure),
        ("bench_efficiency", "efficiency", efficiency_figure),
    ]
    figures, missing, loaded = {}, [], {}
    for stem, name, make in makers:
        path = results / f"{stem}.json"
        if not path.is_file():
            missing.append(str(path))
            continue
        if stem not in loaded:  # a tables result feeds two figures: read once
            loaded[stem] = json.loads(path.read_text(encoding="utf-8"))
        result = loaded[stem]
        if result.get("settings", {}).get("quick"):
            missing.append(f"{path} (a --quick run; not drawn)")
            continue
        figures[name] = make(result)
    return figures, sorted(set(missing))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default=str(ROOT / "docs" / "results"))
    parser.add_argument("--out", default=str(ROOT / "docs" / "figures"))
    args = parser.parse_args()
    figures, missing = build(Path(args.results))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, fig in figures.items():
        try:
            svg = stable_svg(fig, name)
        except (ValueError, RuntimeError, ImportError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            print(f"error: cannot export {name}.svg ({first}); install the image engine with "
                  "pip install -e \".[report]\" and a Chrome or Chromium (apt-get install chromium)",
                  file=sys.stderr)
            return 1
        (out / f"{name}.svg").write_text(svg, encoding="utf-8")
        print(f"wrote {out / name}.svg")
    for path in missing:
        print(f"skipped: no {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
