"""The study report: one self-contained HTML file that opens offline.

``write_report(search, evaluator, path)`` writes, for one study:

1. **accuracy against MFLOPs** of every COMPLETE trial (the paper's Figure 2), the Pareto front
   highlighted and joined as a step line (its attainment boundary), the full-mask model (all
   paths; study system attribute ``mro:full_mask``) marked; hovering a point shows its trial,
   mask and active paths;
2. the **Modal Relation Graph** of the pretrained prior: modalities on a circle, one arrow per
   path ``i->j`` (source ``i`` into target ``j``, ``supernet.paths``), its width and opacity
   growing with ``p(i->j)`` (``RelationGraphPrior.edge_probs()``), labelled with ``p``;
3. the **hypervolume** of the front after each completed trial, by Optuna's own
   ``compute_hypervolume`` on the loss vectors ``(-metric, MFLOPs)``. Reference point: the worst
   value of the metric (0 for accuracies and F1 scores, -1 for Pearson ``corr``; negated) and
   1.1 x the full mask's MFLOPs (the most any mask costs, since costs add up over paths). The
   hypervolume of a growing set of points never decreases;
4. the **Spearman rho of the prior**: after the first n completed trials, Spearman's rho between
   the pretrained prior's log-probability of each trial's mask (``RelationGraphPrior.log_prob``)
   and the trial's metric; beside it the per-epoch rho logged while the supernet trained
   (prior score against validation loss of many masks, ``checkpoint.history``);

and a table of the front; the facts say what the prior's rank loss learned from (``rank_data`` of
the training history), and a table shows each path's share of supernet training and its
single-path validation score (``path_updates``, ``single_path_valid_*`` of the last epoch;
checkpoints trained before these were recorded say so). plotly.js is embedded once, inline, for all figures (no CDN).
The storage URL is shown with its password masked.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import plotly.graph_objects as go
import torch
from optuna._hypervolume import compute_hypervolume
from optuna.study._multi_objective import _is_pareto_front
from optuna.trial import TrialState
from plotly.offline import get_plotlyjs
from plotly.subplots import make_subplots

from search_service.exhaustive import exact_front_note
from search_service.hardware import device_spread, study_tables
from search_service.keys import PRIOR_SOURCE_KEY
from search_service.objectives import HARDWARE_KEY, UNITS, Objectives
from search_service.proposal_prior import PROPOSAL_PRIORS
from search_service.sampler import PATHS_KEY
from search_service.search import FULL_MASK_KEY, METRIC_KEY, SearchStudy, pareto_front
from search_service.storage import mask_password
from supernet.errors import ConfigError
from supernet.files import write_file
from supernet.paths import active_paths, path_pairs
from supernet.rank_loss import spearman

if TYPE_CHECKING:
    from search_service.evaluator import Evaluator

__all__ = ["FIGURE_TITLES", "Report", "build_report", "reference_point", "write_report"]

FIGURE_TITLES = {
    "front": "Accuracy against MFLOPs",
    "graph": "Modal Relation Graph",
    "hypervolume": "Hypervolume of the Pareto front",
    "spearman": "Spearman rho of the prior",
}
MFLOPS_MARGIN = 1.1  # the reference point's MFLOPs: 1.1 x the full mask's
METRIC_FLOOR = {"corr": -1.0}  # the worst value of a maximized metric; 0 for the others
MIN_SPEARMAN_TRIALS = 3  # rho of fewer points is always +-1 and says nothing


@dataclass
class TrialPoint:
    number: int
    mask: str
    active_paths: list[str]
    value: float  # the study's metric
    mflops: float
    params: int | None
    costs: list[float] = field(default_factory=list)  # the study's cost objectives, in order (MFLOPs by default)


@dataclass
class Report:
    """Everything the report shows, computed once; ``html()`` renders it."""

    study_name: str
    storage: str  # password masked
    metric: str
    budget: int
    counts: dict[str, int]
    checkpoint: str  # the supernet checkpoint's identity (supernet.checkpoint)
    path_names: list[str]
    modality_names: list[str]
    edge_probs: list[float]  # p(i->j), path order
    keep_probs: list[float]  # q: each path's keep probability under the prior
    trials: list[TrialPoint]  # COMPLETE trials by number
    front: list[dict[str, Any]]  # search.pareto_front rows, by MFLOPs
    full_mask: dict[str, Any] | None
    reference_point: tuple[float, ...]  # (-worst metric, each cost), loss space
    hypervolume: list[tuple[int, float]]  # (trial number, HV after it)
    spearman_trials: list[tuple[int, int, float]]  # (trial number, n, rho over the first n)
    spearman_epochs: list[tuple[int, float]]  # (epoch, rho) from training
    exact_front: str | None = None  # set when the study holds the exact front (run --exhaustive)
    prior_learned_from: str = ""  # rank_data of the training history (supernet.rank_data)
    proposal_prior: str = "mrg"  # [search] prior: what the sampler proposed from (older studies: the MRG prior)
    path_training: list[dict[str, Any]] = field(default_factory=list)  # per path: updates, single-path scores
    costs: list[str] = field(default_factory=lambda: ["mflops"])  # the cost objectives (search_service.objectives)
    limits: dict[str, float] = field(default_factory=dict)
    hardware: dict[str, Any] = field(default_factory=dict)  # where latency and memory were measured, and the noise
    generated: str = field(default_factory=lambda: _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"))

    def cost_label(self, i: int = 0) -> str:
        name = self.costs[i]
        return "MFLOPs" if name == "mflops" else f"{name} ({UNITS.get(name, '')})"

    def summary(self) -> dict[str, Any]:
        return {
            "study": self.study_name,
            "storage": self.storage,
            "metric": self.metric,
            "complete_trials": len(self.trials),
            "pareto_front": [row["mask"] for row in self.front],
            "hypervolume": self.hypervolume[-1][1] if self.hypervolume else 0.0,
            "reference_point": list(self.reference_point),
            "spearman": self.spearman_trials[-1][2] if self.spearman_trials else None,
            "exact_front": self.exact_front,
            "prior_learned_from": self.prior_learned_from,
            "proposal_prior": self.proposal_prior,
            "path_training": self.path_training,
        }

    def figures(self) -> dict[str, go.Figure]:
        return {
            "front": _front_figure(self),
            "graph": _graph_figure(self),
            "hypervolume": _hypervolume_figure(self),
            "spearman": _spearman_figure(self),
        }

    def html(self) -> str:
        return _render(self)

    def write(self, path: str | Path) -> Path:
        """Write the page to ``path`` (``supernet.files.write_file``: atomic, regular files only,
        one-line errors), creating its folder."""
        path = Path(path)
        if path.is_dir():
            raise ConfigError(f"{path} is a directory; give the report a file name, e.g. {path / 'report.html'}")
        if path.is_file() and not is_report(path):
            raise ConfigError(f"{path} exists and is not an mro-search report (it is left as it is); give the report another file name with -o")
        return write_file(path, self.html(), what="the report", parents=True)


def is_report(path: Path) -> bool:
    """Whether ``path`` holds a report this package wrote (the only kind of file ``write``
    replaces: ``-o study.toml`` must not destroy the study file)."""
    try:
        with path.open("rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return head.startswith(b"<!DOCTYPE html>") and (b'<meta name="generator" content="mro-search">' in head
                                                     or b"<title>mro-search report: " in head)


def write_report(search: SearchStudy, evaluator: Evaluator, path: str | Path) -> Path:
    """Write the study's HTML report to ``path`` and return the path."""
    return build_report(search, evaluator).write(path)


def reference_point(metric: str, full_mflops: float, *more_costs: float) -> tuple[float, ...]:
    """The hypervolume's reference point in loss space ``(-metric, cost, ...)``: the worst metric,
    and ``MFLOPS_MARGIN`` x the most each cost reaches (the full mask's, or a trial's)."""
    return (0.0 - METRIC_FLOOR.get(metric, 0.0), MFLOPS_MARGIN * float(full_mflops), *(MFLOPS_MARGIN * float(c) for c in more_costs))


# 1. collect ---------------------------------------------------------------------------------------


def build_report(search: SearchStudy, evaluator: Evaluator) -> Report:
    study = search.optuna_study
    attrs = search.attrs
    metric = (study.metric_names or [None])[0] or attrs.get(METRIC_KEY) or evaluator.metric
    paths = list(attrs.get(PATHS_KEY) or evaluator.path_names)
    modalities = evaluator.modality_names
    prior = evaluator.checkpoint.prior
    with torch.no_grad():
        edge_probs = [float(p) for p in prior.edge_probs()]
        keep_probs = [float(q) for q in prior.path_probs()]

    objectives = Objectives.from_attrs(attrs, metric)
    costs = list(objectives.costs) if len(objectives.names) == len(study.directions) else ["mflops"]
    trials = [_point(t, paths, modalities) for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    trials = [t for t in trials if len(t.costs) == len(costs)]
    trials.sort(key=lambda t: t.number)
    full = attrs.get(FULL_MASK_KEY)
    full_costs = [float(full[c]) if full and c in full else (evaluator.flops.mflops((1,) * len(paths)) if c == "mflops" else 0.0) for c in costs]
    ref = reference_point(metric, *(max([fc] + [t.costs[i] for t in trials]) for i, fc in enumerate(full_costs)))
    tables = study_tables(attrs)
    hardware = dict(attrs.get(HARDWARE_KEY) or {})
    if hardware:
        hardware["noise"] = device_spread(tables)
        hardware["tables"] = {q: {"median_error": t.median_error, "max_error": t.max_error, "fit_masks": t.fit_masks} for q, t in tables.items()}

    masks = torch.tensor([[int(b) for b in t.mask] for t in trials], dtype=torch.float32)
    with torch.no_grad():
        log_probs = prior.log_prob(masks).numpy() if len(trials) else np.zeros(0)
    values = np.array([t.value for t in trials])
    rho_trials = [
        (trials[n - 1].number, n, spearman(log_probs[:n], values[:n]))
        for n in range(MIN_SPEARMAN_TRIALS, len(trials) + 1)
    ]
    rho_epochs = [
        (int(h.get("epoch", e + 1)), float(h["spearman"]))
        for e, h in enumerate(evaluator.checkpoint.history)
        if h.get("spearman") is not None
    ]
    return Report(
        study_name=study.study_name,
        storage=mask_password(search.url),
        metric=metric,
        budget=search.budget,
        counts=search.counts(),
        checkpoint=evaluator.checkpoint.identity,
        path_names=paths,
        modality_names=modalities,
        edge_probs=edge_probs,
        keep_probs=keep_probs,
        trials=trials,
        front=pareto_front(search),
        full_mask=full,
        reference_point=ref,
        hypervolume=hypervolume_series(trials, ref),
        spearman_trials=rho_trials,
        spearman_epochs=rho_epochs,
        exact_front=exact_front_note(search),
        prior_learned_from=prior_learned_from(evaluator.checkpoint.history),
        proposal_prior=str(attrs.get(PRIOR_SOURCE_KEY) or "mrg"),
        path_training=path_training(evaluator.checkpoint.history, paths),
        costs=costs,
        limits=dict(objectives.limits),
        hardware=hardware,
    )


OLD_RANK_DATA = "training batches (trained before rank_data was recorded)"


def prior_learned_from(history: list[dict[str, Any]]) -> str:
    """Which losses the prior's rank loss learned from, from a checkpoint's training history."""
    return str(history[-1].get("rank_data") or OLD_RANK_DATA) if history else "-"


def path_training(history: list[dict[str, Any]], paths: list[str]) -> list[dict[str, Any]]:
    """Per path: subnets trained that kept it and its single-path validation loss and accuracy at
    the last epoch ([] for checkpoints trained before they were recorded)."""
    last = history[-1] if history else {}
    if "path_updates" not in last:
        return []
    accuracy = last.get("single_path_valid_accuracy") or [None] * len(paths)
    return [
        {"path": p, "updates": u, "valid_loss": loss, "valid_accuracy": acc}
        for p, u, loss, acc in zip(paths, last["path_updates"], last["single_path_valid_loss"], accuracy)
    ]


def _point(t, paths: list[str], modalities: list[str]) -> TrialPoint:
    mask = t.user_attrs.get("mask") or "".join(str(int(t.params.get(name, 0))) for name in paths)
    names = t.user_attrs.get("active_paths") or active_paths([int(b) for b in mask], modalities)
    mflops = t.user_attrs.get("mflops", t.values[1])
    return TrialPoint(t.number, mask, list(names), float(t.values[0]), float(mflops), t.user_attrs.get("params"),
                      [float(v) for v in t.values[1:]])


def hypervolume_series(trials: list[TrialPoint], ref: tuple[float, ...]) -> list[tuple[int, float]]:
    """Hypervolume of the front after each trial (in order), Optuna's ``compute_hypervolume``.

    A running front is kept, so each step costs one front's worth of work. Points that do not
    dominate the reference point (impossible for a sane reference) add nothing.
    """
    reference = np.asarray(ref, dtype=float)
    front = np.empty((0, len(reference)))
    out = []
    for t in trials:
        loss = np.array([[-t.value, *(t.costs or [t.mflops])]])
        if np.all(loss <= reference):
            front = np.concatenate([front, loss])
            front = front[_is_pareto_front(front, assume_unique_lexsorted=False)]
        hv = compute_hypervolume(front, reference, assume_pareto=True) if len(front) else 0.0
        out.append((t.number, float(hv)))
    return out


# 2. figures ---------------------------------------------------------------------------------------

_HOVER = "trial %{customdata[0]}<br>mask %{customdata[1]}<br>%{customdata[2]}<br>%{meta}: %{y:.4f}<br>MFLOPs: %{x:.4f}<extra></extra>"
_BLUE, _RED, _GREY = "#1f77b4", "#d62728", "#7f7f7f"


def _t(text: Any) -> str:
    """A name as plotly text: plotly renders a subset of HTML in texts, titles and hover labels
    (and decodes entities back), so names from study files and stored trials are escaped."""
    return html.escape(str(text), quote=False)


def _wrap_paths(names: list[str], per_line: int = 3) -> str:
    names = [_t(name) for name in names]
    lines = [", ".join(names[i : i + per_line]) for i in range(0, len(names), per_line)]
    return "<br>".join(lines) or "(no path)"


def _layout(fig: go.Figure, title: str, **kwargs: Any) -> go.Figure:
    settings: dict[str, Any] = {"template": "plotly_white", "height": 480, "margin": {"t": 60, "l": 60, "r": 30, "b": 50}}
    fig.update_layout(title={"text": title}, **{**settings, **kwargs})
    return fig


def _empty(fig: go.Figure, text: str) -> None:
    fig.add_annotation(text=text, showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5, font={"size": 14, "color": _GREY})


def _front_figure(r: Report) -> go.Figure:
    fig = go.Figure()
    data = [[t.number, _t(t.mask), _wrap_paths(t.active_paths)] for t in r.trials]
    fig.add_trace(
        go.Scatter(
            x=[t.costs[0] if t.costs else t.mflops for t in r.trials], y=[t.value for t in r.trials], mode="markers", name="trials",
            marker={"color": _BLUE, "size": 8, "opacity": 0.55}, customdata=data, meta=_t(r.metric), hovertemplate=_HOVER,
        )
    )
    front = sorted(r.front, key=lambda row: (row["values"][1], -row["values"][0]))
    fig.add_trace(
        go.Scatter(
            x=[row["values"][1] for row in front], y=[row["values"][0] for row in front], mode="lines+markers",
            line={"shape": "hv", "color": _RED, "width": 2}, marker={"color": _RED, "size": 11, "line": {"color": "white", "width": 1}},
            name=f"Pareto front ({len(front)})", meta=_t(r.metric), hovertemplate=_HOVER,
            customdata=[[row["trial"], _t(row["mask"]), _wrap_paths(row["active_paths"] or [])] for row in front],
        )
    )
    if r.full_mask:
        value = (r.full_mask.get("metrics") or {}).get(r.metric)
        if value is not None and math.isfinite(value):
            fig.add_trace(
                go.Scatter(
                    x=[r.full_mask.get(r.costs[0], r.full_mask.get("mflops"))], y=[value], mode="markers", name="full mask (all paths)",
                    marker={"symbol": "star", "size": 18, "color": "#ff7f0e", "line": {"color": "black", "width": 1}},
                    customdata=[["-", _t(r.full_mask.get("mask", "")), _wrap_paths(r.path_names)]], meta=_t(r.metric), hovertemplate=_HOVER,
                )
            )
    if not r.trials:
        _empty(fig, "no completed trials yet")
    more = f"; the front is over {', '.join(r.costs)}" if len(r.costs) > 1 else ""
    title = FIGURE_TITLES["front"] if r.costs[0] == "mflops" else f"Accuracy against {_t(r.cost_label())}"
    x_title = "MFLOPs (per sample, fvcore)" if r.costs[0] == "mflops" else _t(r.cost_label())
    return _layout(fig, f"{title} ({_t(r.metric)}, {len(r.trials)} completed trials{more})", xaxis_title=x_title, yaxis_title=_t(r.metric), hovermode="closest")


def _graph_figure(r: Report) -> go.Figure:
    """Modalities on a circle, one arrow per path i->j; the two directions of a pair run side by side."""
    k = len(r.modality_names)
    angles = [math.pi / 2 - 2 * math.pi * m / k for m in range(k)]
    pos = [(math.cos(a), math.sin(a)) for a in angles]
    node_r, offset = 0.16, 0.045
    p_max = max(r.edge_probs) if r.edge_probs else 1.0
    fig = go.Figure()
    label_x, label_y, label_text, hover = [], [], [], []
    for p, (i, j) in enumerate(path_pairs(k)):
        (x0, y0), (x1, y1) = pos[i], pos[j]
        dx, dy = x1 - x0, y1 - y0
        length = math.hypot(dx, dy)
        ux, uy = dx / length, dy / length
        nx, ny = uy * offset, -ux * offset  # to the right of the direction of flow
        sx, sy = x0 + ux * node_r + nx, y0 + uy * node_r + ny
        ex, ey = x1 - ux * node_r + nx, y1 - uy * node_r + ny
        prob = r.edge_probs[p]
        rel = prob / p_max if p_max > 0 else 0.0
        fig.add_annotation(
            x=ex, y=ey, ax=sx, ay=sy, xref="x", yref="y", axref="x", ayref="y", text="", showarrow=True,
            arrowhead=2, arrowsize=0.8, arrowwidth=1 + 7 * rel, arrowcolor=f"rgba(31,119,180,{0.15 + 0.85 * rel:.3f})",
        )
        t = 0.62  # labels nearer the target, so the two directions' labels do not collide
        label_x.append(sx + (ex - sx) * t + nx * 1.8)
        label_y.append(sy + (ey - sy) * t + ny * 1.8)
        label_text.append(f"{prob:.2f}")
        hover.append(f"{_t(r.path_names[p])}<br>p(i->j) = {prob:.4f}<br>keep probability q = {r.keep_probs[p]:.4f}")
    fig.add_trace(
        go.Scatter(x=label_x, y=label_y, mode="text", text=label_text, textfont={"size": 11, "color": "#333"},
                   hovertext=hover, hoverinfo="text", showlegend=False, name="p(i->j)")
    )
    fig.add_trace(
        go.Scatter(
            x=[x for x, _ in pos], y=[y for _, y in pos], mode="markers+text", text=[_t(name) for name in r.modality_names],
            textposition="middle center", marker={"size": 58, "color": "#f2f2f2", "line": {"color": "#444", "width": 2}},
            hoverinfo="text", hovertext=[f"modality {m}: {_t(name)}" for m, name in enumerate(r.modality_names)], showlegend=False,
            name="modalities",
        )
    )
    axis = {"visible": False, "range": [-1.45, 1.45]}
    return _layout(
        fig, f"{FIGURE_TITLES['graph']}: p(i->j) of the pretrained prior (arrow i->j: i informs j)",
        xaxis=axis, yaxis={**axis, "scaleanchor": "x", "scaleratio": 1}, height=560, width=620, showlegend=False,
    )


def _hypervolume_figure(r: Report) -> go.Figure:
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=[n for n, _ in r.hypervolume], y=[hv for _, hv in r.hypervolume], mode="lines+markers", line={"shape": "hv", "color": _BLUE},
            name="hypervolume", hovertemplate="after trial %{x}<br>hypervolume %{y:.5g}<extra></extra>",
        )
    )
    if not r.hypervolume:
        _empty(fig, "no completed trials yet")
    labels = [_t(r.cost_label(i)) for i in range(len(r.costs))]
    ref = f"reference point ({_t(r.metric)} = {-r.reference_point[0]:g}, " + ", ".join(f"{lab} = {v:.4g}" for lab, v in zip(labels, r.reference_point[1:])) + ")"
    return _layout(fig, f"{FIGURE_TITLES['hypervolume']} over trials; {ref}", xaxis_title="trial", yaxis_title=f"hypervolume ({' x '.join([_t(r.metric), *labels])})")


def _spearman_figure(r: Report) -> go.Figure:
    fig = make_subplots(
        rows=1, cols=2, column_widths=[0.62, 0.38],
        subplot_titles=(f"search: prior log-probability vs {_t(r.metric)}, first n trials", "supernet training: per-epoch rho"),
    )
    fig.add_trace(
        go.Scatter(
            x=[num for num, _, _ in r.spearman_trials], y=[rho for _, _, rho in r.spearman_trials], mode="lines+markers",
            customdata=[[n] for _, n, _ in r.spearman_trials], name="search trials", line={"color": _BLUE},
            hovertemplate="after trial %{x} (n = %{customdata[0]})<br>rho %{y:.3f}<extra></extra>",
        ),
        row=1, col=1,
    )
    fig.add_trace(
        go.Scatter(
            x=[e for e, _ in r.spearman_epochs], y=[rho for _, rho in r.spearman_epochs], mode="lines+markers", name="training epochs",
            line={"color": "#2ca02c"}, hovertemplate="epoch %{x}<br>rho %{y:.3f}<extra></extra>",
        ),
        row=1, col=2,
    )
    fig.update_yaxes(range=[-1.05, 1.05], title_text="Spearman rho", row=1, col=1)
    fig.update_yaxes(range=[-1.05, 1.05], row=1, col=2)
    fig.update_xaxes(title_text="trial", row=1, col=1)
    fig.update_xaxes(title_text="epoch", dtick=1, row=1, col=2)
    if not r.spearman_trials:
        fig.add_annotation(text=f"needs {MIN_SPEARMAN_TRIALS} completed trials", showarrow=False, xref="x domain", yref="y domain", x=0.5, y=0.5, font={"color": _GREY})
    return _layout(fig, FIGURE_TITLES["spearman"], showlegend=False)


# 3. page ------------------------------------------------------------------------------------------

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1100px; color: #222; padding: 0 1em; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.9em; } td, th { border: 1px solid #ccc; padding: 3px 8px; text-align: left; }
th { background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; } code { background: #f4f4f4; padding: 0 3px; }
.note { color: #555; font-size: 0.9em; max-width: 900px; } dl { display: grid; grid-template-columns: max-content auto; gap: 2px 12px; }
dt { font-weight: 600; } dd { margin: 0; }
"""


def _render(r: Report) -> str:
    e = html.escape
    figures = r.figures()
    divs = {
        key: fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"mro-{key}", config={"displaylogo": False, "responsive": True})
        for key, fig in figures.items()
    }
    counts = ", ".join(f"{v} {k}" for k, v in r.counts.items() if v)
    full = r.full_mask or {}
    full_value = (full.get("metrics") or {}).get(r.metric)
    facts = [
        ("study", r.study_name),
        ("storage", r.storage),
        ("objectives", f"maximize {r.metric}, minimize " + ", ".join(r.cost_label(i) for i in range(len(r.costs)))),
        ("limits", ", ".join(f"{q} <= {v:g} {UNITS.get(q, '')}" for q, v in r.limits.items()) + " (the front holds only trials within them)" if r.limits else "none"),
        *_hardware_facts(r),
        ("trials", f"{len(r.trials)} complete of a budget of {r.budget} ({counts or 'none yet'})"),
        ("modalities", ", ".join(r.modality_names)),
        ("paths (mask order)", ", ".join(r.path_names)),
        ("full mask", f"{full.get('mask', '')}: {r.metric} {full_value:.4f}, " + ", ".join(f"{full[c]:.4f} {UNITS.get(c, '')}" for c in UNITS if c in full)
         if full and full_value is not None else "not recorded"),
        ("hypervolume", f"{r.hypervolume[-1][1]:.5g}" if r.hypervolume else "-"),
        ("Pareto front", r.exact_front or "as found by the search's trials"),
        ("supernet checkpoint", r.checkpoint or "-"),
        ("prior learned from", r.prior_learned_from),
        ("sampler proposed from", PROPOSAL_PRIORS.get(r.proposal_prior, r.proposal_prior)),
        ("generated", r.generated),
    ]
    rows = "".join(f"<dt>{e(k)}</dt><dd>{e(str(v))}</dd>" for k, v in facts)
    cost_names = ", ".join(r.cost_label(i) for i in range(len(r.costs)))
    ref_text = (
        f"Reference point in loss space (-{r.metric}, {cost_names}) = ({', '.join(f'{v:.6g}' for v in r.reference_point)}): "
        f"the worst possible {r.metric} ({-r.reference_point[0]:g}) and {MFLOPS_MARGIN:g} x the most each cost reaches (the full mask's, "
        f"or a trial's). Computed with Optuna's compute_hypervolume on the losses (-metric, {cost_names}) of the "
        "completed trials so far, so the curve never decreases."
    )
    sections = [
        ("front", "Accuracy against MFLOPs of every completed trial (the paper's Figure 2). Red: the Pareto front, "
                  "joined as a step line; star: the full model with all paths. Hover a point for its trial, mask and active paths."),
        ("graph", "The pretrained Modal Relation Graph. An arrow i->j is the path in which modality i informs "
                  "modality j (j gives the queries, i the keys and values); width and opacity grow with p(i->j), "
                  "which sums to 1 over each source's outgoing arrows. Hover a label for the path's keep probability."),
        ("hypervolume", ref_text),
        ("spearman", "Left: after the first n completed trials, Spearman's rho between the pretrained prior's "
                     f"log-probability of each trial's mask and its {r.metric} (positive: the prior ranks masks as the "
                     "search found them). Right: rho logged after each training epoch of the supernet (prior score "
                     "against validation loss of many masks, sign flipped so that higher is better)."),
    ]
    summary = json.dumps(r.summary()).replace("<", "\\u003c")  # safe inside <script>: no </script>, no <!--
    body = []
    for key, note in sections:
        body.append(f"<h2>{e(FIGURE_TITLES[key])}</h2>\n<p class='note'>{e(note)}</p>\n{divs[key]}")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="generator" content="mro-search">
<title>mro-search report: {e(r.study_name)}</title>
<style>{_CSS}</style>
<script type="text/javascript">{get_plotlyjs()}</script>
</head>
<body>
<h1>mro-search report: study {e(r.study_name)}</h1>
<dl>{rows}</dl>
{''.join(body)}
<h2>Pareto front</h2>
{_front_table(r)}
<h2>Paths in supernet training</h2>
{_path_table(r)}
<script type="application/json" id="mro-summary">{summary}</script>
</body>
</html>
"""


def _front_table(r: Report) -> str:
    e = html.escape
    if not r.front:
        return "<p class='note'>No completed trials yet.</p>"
    metrics = []
    for row in r.front:
        for name in row.get("metrics") or {}:
            if name not in metrics:
                metrics.append(name)
    extra = [c for c in r.costs if c not in ("mflops", "params")]  # measured costs: the table's price and the exact measurement
    heads = ["trial", "mask", *metrics, "MFLOPs", "params"]
    for c in extra:
        heads += [f"{c} (table)", f"{c} (measured)"]
    head = "".join(f"<th>{e(h)}</th>" for h in [*heads, "active paths"])
    lines = []
    for row in r.front:
        values = row.get("metrics") or {}
        cells = [f"<td class='num'>{row['trial']}</td>", f"<td><code>{e(str(row['mask']))}</code></td>"]
        cells += [f"<td class='num'>{_fmt(values.get(name))}</td>" for name in metrics]
        cells += [f"<td class='num'>{_fmt(row['mflops'])}</td>", f"<td class='num'>{row.get('params') or ''}</td>"]
        for c in extra:
            got = (row.get("measured") or {}).get(c)
            exact = got.get("median") if isinstance(got, dict) else got
            cells += [f"<td class='num'>{_fmt((row.get('objectives') or {}).get(c))}</td>", f"<td class='num'>{_fmt(exact)}</td>"]
        tie = f" (within the device's noise of trial {row['noise_tie']})" if row.get("noise_tie") is not None else ""
        cells.append(f"<td>{e(', '.join(row.get('active_paths') or []) + tie)}</td>")
        lines.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(lines)}</tbody></table>"


def _hardware_facts(r: Report) -> list[tuple[str, str]]:
    hw = r.hardware
    if not hw:
        return []
    tables = "; ".join(f"{q}: median error {100 * t['median_error']:.1f} %, max {100 * t['max_error']:.1f} % on {t['fit_masks']} measured masks"
                       for q, t in (hw.get("tables") or {}).items())
    return [
        ("latency and memory", f"priced by tables measured on {hw.get('label', hw.get('device'))} (host {hw.get('host', '?')}), batch "
                               f"{hw.get('batch_size')}, {hw.get('precision')}; front members measured exactly when a run ends"),
        ("device noise", f"±{100 * float(hw.get('noise', 0.0)):.1f} % (IQR/median of repeated runs): a front member whose latency is lower "
                         "than another's by less than this is not called better"),
        ("tables", tables or "-"),
    ]


def _path_table(r: Report) -> str:
    e = html.escape
    if not r.path_training:
        return "<p class='note'>Not recorded: the checkpoint was trained before per-path updates were.</p>"
    head = "".join(f"<th>{h}</th>" for h in ("path", "subnets trained with it", "single-path valid loss", "single-path valid accuracy"))
    lines = [
        f"<tr><td>{e(row['path'])}</td><td class='num'>{row['updates']}</td><td class='num'>{_fmt(row['valid_loss'])}</td>"
        f"<td class='num'>{_fmt(row['valid_accuracy'])}</td></tr>"
        for row in r.path_training
    ]
    return (
        "<p class='note'>How many of the subnets trained in the supernet kept each path, and each path alone scored "
        "by the supernet on the validation split after the last epoch: a path near chance was not learnt.</p>"
        f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(lines)}</tbody></table>"
    )


def _fmt(value: Any) -> str:
    if isinstance(value, (int, float)) and math.isfinite(value):
        return f"{value:.4f}"
    return "-"
