"""The study's page in optuna-dashboard: the report's figures and a note, one copy of each.

``publish(search, evaluator)`` (``mro-search run`` when it creates a study, and ``run``,
``resume``, ``run --exhaustive`` when they finish) stores on the study:

- the report's four figures (``search_service.report``) as optuna-dashboard plots
  (``optuna_dashboard.save_plotly_graph_object``), under fixed ids (``PLOT_IDS``): a later run
  overwrites them (optuna-dashboard blanks the chunks a shorter figure no longer uses), so a
  study holds one copy of each however often it runs. The front's points are labelled with
  their masks, so the page shows them without hovering;
- a Markdown note (``optuna_dashboard.save_note``): the checkpoint's identity, the data, the
  objectives and trial counts, the prior's path ranking (keep probability q, ``p(i->j)``), and
  the fidelity figures the study knows (Spearman rho of the prior against the completed trials'
  metric, the last training epoch's rho, the exact front after ``run --exhaustive``). The note
  is replaced each time (a hand edit in the dashboard is overwritten by the next run).

Both live in the study's system attributes (optuna-dashboard's own keys), so ``delete`` removes
them with the study, and every storage optuna-dashboard reads shows them.

``replace_report(search, path)`` puts the HTML report into the study's artifact store, records
its id (study system attribute ``mro:report``) and then removes the study's earlier reports (the
one recorded before, and any ``report.html`` of type ``text/html`` that earlier versions, which
added one per run, left): the object from the store and its record from the study, so Optuna's
``get_all_artifact_meta`` and the dashboard list exactly one report, and re-running adds no
artifact.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from optuna.storages._rdb.models import StudySystemAttributeModel
from optuna.storages._rdb.storage import _create_scoped_session

from search_service import artifacts
from search_service.proposal_prior import PROPOSAL_PRIORS
from search_service.report import FIGURE_TITLES, Report, build_report
from search_service.search import CHECKPOINT_KEY

if TYPE_CHECKING:
    import plotly.graph_objects as go

    from search_service.evaluator import Evaluator
    from search_service.search import SearchStudy

log = logging.getLogger("mro_search")

__all__ = ["PLOT_IDS", "REPORT_FILE", "REPORT_KEY", "dashboard_figures", "note_text", "publish", "replace_report"]

PLOT_IDS = {"graph": "mro-relation-graph", "hypervolume": "mro-hypervolume", "spearman": "mro-prior-rho", "front": "mro-front"}
REPORT_FILE, REPORT_TYPE = "report.html", "text/html"
REPORT_KEY = "mro:report"  # study system attribute: the artifact id of the study's report
RANKED_PATHS = 30  # the note's path ranking lists at most this many paths (k = 6 has 30)


def publish(search: SearchStudy, evaluator: Evaluator, report: Report | None = None) -> Report | None:
    """Store the report's figures and the note on the study (see the module's docstring); returns
    the report, or None when they could not be stored (a warning says why; the search goes on)."""
    from optuna_dashboard import save_note, save_plotly_graph_object

    try:
        report = report or build_report(search, evaluator)
        study = search.optuna_study
        for key, figure in dashboard_figures(report).items():
            save_plotly_graph_object(study, figure, graph_object_id=PLOT_IDS[key])
        save_note(study, note_text(report, evaluator))
    except Exception as exc:
        log.warning(f"mro-search: the dashboard's figures and note were not stored ({_reason(exc)})")
        return None
    return report


def dashboard_figures(report: Report) -> dict[str, go.Figure]:
    """The report's figures as the dashboard shows them (half the page wide each): short titles,
    no fixed width, the front's points labelled with their masks, the other trials' hover without
    the list of their paths."""
    figures = report.figures()
    for key, figure in figures.items():
        figure.update_layout(title={"text": FIGURE_TITLES[key]}, width=None, autosize=True, height=420)
    figures["spearman"].update_annotations(font={"size": 11})  # the two panels' titles, side by side
    # every trial's hover names its mask and how many paths it has, not each path (the bulk of the
    # figure: the study's system attributes hold it, and a worker reads them every few seconds)
    figures["front"].update_traces(selector={"name": "trials"}, customdata=[
        [t.number, t.mask, f"{len(t.active_paths)} active path{'s' if len(t.active_paths) != 1 else ''}"] for t in report.trials
    ])
    figures["front"].update_traces(
        selector=lambda trace: str(trace.name or "").startswith("Pareto front"),
        mode="lines+markers+text", text=[row["mask"] for row in _front_rows(report)], textposition="top right",
        textfont={"size": 10},
    )
    return {key: figures[key] for key in PLOT_IDS}


def _front_rows(report: Report) -> list[dict[str, Any]]:
    """The front in the order ``report._front_figure`` draws it (by MFLOPs, then metric down)."""
    return sorted(report.front, key=lambda row: (row["values"][1], -row["values"][0]))


def note_text(report: Report, evaluator: Evaluator) -> str:
    """The study's note, in Markdown."""
    study = evaluator.study
    data = study.data
    counts = ", ".join(f"{v} {k}" for k, v in report.counts.items() if v) or "none yet"
    checkpoint = evaluator.checkpoint
    epochs = len(checkpoint.history)
    source = f"`{_code(data.source)}`" + (f" from `{_code(data.path)}`" if data.path else "")
    modalities = ", ".join(f"`{_code(m.name)}` ({m.dim} features{f' x {m.length} steps' if m.length else ''})"
                           for m in evaluator.model.spec.modalities)
    lines = [
        f"## mro-search study `{_code(report.study_name)}`",
        "",
        f"Written by mro-search on {report.generated} (each `run`/`resume` replaces this note and the four plots).",
        "",
        f"- **Checkpoint:** `{checkpoint.identity}` ({epochs} training epoch{'s' if epochs != 1 else ''}, "
        f"rank loss `{_code(str((checkpoint.config.get('train') or {}).get('rank_loss', study.train.rank_loss)))}`)",
        f"- **Data:** {source}, task {evaluator.model.spec.task}, scored on the `{study.search.split}` split",
        f"- **Modalities:** {modalities}",
        f"- **Objectives:** maximize `{_code(report.metric)}`, minimize " + ", ".join(_code(report.cost_label(i)) for i in range(len(report.costs))),
        *(["- **Limits:** " + ", ".join(f"`{_code(q)}` <= {v:g}" for q, v in report.limits.items()) + " (the front holds only trials within them)"]
          if report.limits else []),
        *([f"- **Latency and memory:** tables measured on {_code(str(report.hardware.get('label', report.hardware.get('device'))))}, "
           f"batch {report.hardware.get('batch_size')}, {report.hardware.get('precision')}; device noise ±{100 * float(report.hardware.get('noise', 0)):.1f} %"]
          if report.hardware else []),
        f"- **Trials:** {len(report.trials)} complete of a budget of {report.budget} ({counts})",
        f"- **Pareto front:** {len(report.front)} mask(s): " + (", ".join(f"`{row['mask']}`" for row in _front_rows(report)) or "none yet"),
        f"- **Storage:** `{_code(report.storage)}`",
        f"- **Sampler proposed from:** {PROPOSAL_PRIORS.get(report.proposal_prior, report.proposal_prior)} (`[search] prior`)",
        "",
        "### The prior's path ranking",
        "",
        "| rank | path (mask bit) | keep probability q | p(i->j) |",
        "|---:|---|---:|---:|",
    ]
    order = sorted(range(len(report.path_names)), key=lambda p: -report.keep_probs[p])
    for rank, p in enumerate(order[:RANKED_PATHS], start=1):
        lines.append(f"| {rank} | `{_code(report.path_names[p])}` (bit {p}) | {report.keep_probs[p]:.4f} | {report.edge_probs[p]:.4f} |")
    if len(order) > RANKED_PATHS:
        lines.append(f"| | ... {len(order) - RANKED_PATHS} more | | |")
    lines += ["", "### Fidelity of the prior", "", *_fidelity_lines(report)]
    return "\n".join(lines) + "\n"


def _fidelity_lines(report: Report) -> list[str]:
    lines = []
    if report.spearman_trials:
        _, n, rho = report.spearman_trials[-1]
        lines.append(f"- Spearman rho of the prior's log-probability against `{_code(report.metric)}` over the {n} completed trials: **{rho:.3f}**")
    else:
        lines.append("- Spearman rho against the completed trials: not known yet (needs 3 completed trials)")
    if report.spearman_epochs:
        epoch, rho = report.spearman_epochs[-1]
        lines.append(f"- Supernet training, epoch {epoch}: rho of the prior against the validation loss of sampled masks **{rho:.3f}**")
    else:
        lines.append("- Supernet training: no per-epoch rho recorded in the checkpoint")
    if report.exact_front:
        lines.append(f"- Exhaustive search: {report.exact_front}")
    if report.hypervolume:
        ref = report.reference_point
        costs = ", ".join(f"{_code(report.cost_label(i))} = {v:.4g}" for i, v in enumerate(ref[1:]))
        lines.append(f"- Hypervolume of the front: {report.hypervolume[-1][1]:.5g} (reference point `{_code(report.metric)}` = {-ref[0] or 0.0:g}, {costs})")
    return lines


def _code(text: str) -> str:
    """Text for a Markdown code span (backticks would end it; a line break would end the item)."""
    return " ".join(str(text).replace("`", "'").split())


# --- the report artifact --------------------------------------------------------------------------


def replace_report(search: SearchStudy, path: Path, override: str | None = None) -> str | None:
    """Store the report at ``path`` as the study's one report artifact (see the module's
    docstring); returns its id, or None when the store cannot be written (a warning says why;
    the local file is there all the same, and the earlier report stays)."""
    from search_service.lifecycle import artifacts_location

    study = search.optuna_study
    location = artifacts_location(search, override)
    # the reports there were before this upload: two runs ending at once each remove only those,
    # never the other's new one (the next run removes the one of them that is left over)
    earlier = report_artifact_ids(search)
    try:
        store = artifacts.open_store(location)
        new_id = artifacts.upload(store, location, study, path, mimetype=REPORT_TYPE)
    except Exception as exc:
        log.warning(f"mro-search: report not stored in the artifact store ({_reason(exc)})")
        return None
    study._storage.set_study_system_attr(study._study_id, REPORT_KEY, new_id)
    for old in earlier:
        try:
            artifacts.remove(store, old)  # False when it was gone already: its record goes all the same
            forget_artifact(study, old)
        except Exception as exc:
            log.warning(f"mro-search: an earlier report {old} was not removed from {location} ({_reason(exc)})")
    return new_id


def report_artifact_ids(search: SearchStudy) -> list[str]:
    """The ids of the study's report artifacts: the one ``REPORT_KEY`` names, and those earlier
    versions left (``report.html``, ``text/html``; never the checkpoint), read from Optuna's
    records (``artifacts:<id>``: JSON of the artifact's meta, or ``null`` where
    optuna-dashboard's delete button blanked one)."""
    attrs = search.attrs
    checkpoint = (attrs.get(CHECKPOINT_KEY) or {}).get("artifact_id")
    recorded = attrs.get(REPORT_KEY)
    ids = [str(recorded)] if recorded and recorded != checkpoint and artifacts.ARTIFACTS_ATTR_PREFIX + str(recorded) in attrs else []
    for key, value in attrs.items():
        if not key.startswith(artifacts.ARTIFACTS_ATTR_PREFIX):
            continue
        try:
            record = json.loads(value) if isinstance(value, str) else value
        except ValueError:
            continue
        if (isinstance(record, dict) and record.get("filename") == REPORT_FILE and record.get("mimetype") == REPORT_TYPE
                and record.get("artifact_id") not in (None, checkpoint)):
            ids.append(str(record["artifact_id"]))
    return list(dict.fromkeys(ids))


def forget_artifact(study: Any, artifact_id: str) -> None:
    """Remove an artifact's record (``artifacts:<id>``) from the study's system attributes.

    Optuna has no call that removes a system attribute, and blanking it (optuna-dashboard writes
    ``null``) breaks ``optuna.artifacts.get_all_artifact_meta``; the row goes with the same
    session Optuna's ``RDBStorage`` uses (the storage every study of this service is in)."""
    storage = getattr(study._storage, "_backend", study._storage)
    with _create_scoped_session(storage.scoped_session, True) as session:
        session.query(StudySystemAttributeModel).filter(
            StudySystemAttributeModel.study_id == study._study_id,
            StudySystemAttributeModel.key == artifacts.ARTIFACTS_ATTR_PREFIX + artifact_id,
        ).delete(synchronize_session=False)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]
