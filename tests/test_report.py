"""The HTML report: written from a real tiny study, self-contained, with a monotone hypervolume."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from optuna._hypervolume import compute_hypervolume

from search_service.cli import main
from search_service.report import FIGURE_TITLES, build_report, reference_point, write_report
from search_service.search import FULL_MASK_KEY, SearchStudy, pareto_front


@pytest.fixture(scope="module")
def report(tiny_search: Any):
    return build_report(tiny_search.search, tiny_search.evaluator)


@pytest.fixture(scope="module")
def page(tiny_search: Any, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = write_report(tiny_search.search, tiny_search.evaluator, tmp_path_factory.mktemp("report") / "report.html")
    assert isinstance(path, Path) and path.is_file()
    return path.read_text(encoding="utf-8")


def test_page_has_every_figure_and_the_front(page: str, tiny_search: Any) -> None:
    for title in FIGURE_TITLES.values():
        assert title in page
    front = pareto_front(tiny_search.search)
    assert front
    for row in front:
        assert f"<code>{row['mask']}</code>" in page  # the front's table
    assert "tinysearch" in page
    assert tiny_search.url in page  # no password in a SQLite URL: shown as it is


def test_page_is_self_contained(page: str) -> None:
    assert page.count("* plotly.js v") == 1  # the bundle's banner: embedded once, for all figures
    assert not re.search(r"<script[^>]*\bsrc=", page)  # nothing loaded from elsewhere (no CDN)
    assert page.count("Plotly.newPlot(") == len(FIGURE_TITLES)


def test_hypervolume_never_decreases_and_matches_optuna(report: Any, tiny_search: Any) -> None:
    complete = [t for t in tiny_search.search.optuna_study.trials if t.state.name == "COMPLETE"]
    hv = [v for _, v in report.hypervolume]
    assert len(hv) == len(complete) == 10
    assert all(b >= a for a, b in zip(hv, hv[1:]))
    assert hv[-1] > 0
    full = tiny_search.search.attrs[FULL_MASK_KEY]
    ref = np.array(reference_point("accuracy", full["mflops"]))
    assert ref[0] == 0.0 and ref[1] == pytest.approx(1.1 * full["mflops"])
    losses = np.array([[-t.values[0], t.values[1]] for t in complete])
    assert hv[-1] == pytest.approx(compute_hypervolume(losses, ref))


def test_spearman_series(report: Any, tiny_search: Any) -> None:
    assert [n for _, n, _ in report.spearman_trials] == list(range(3, 11))
    assert all(-1.0 <= rho <= 1.0 for _, _, rho in report.spearman_trials)
    assert [e for e, _ in report.spearman_epochs] == [1]  # one training epoch
    assert report.spearman_epochs[0][1] == pytest.approx(tiny_search.evaluator.checkpoint.history[0]["spearman"])


def test_relation_graph_has_one_arrow_per_path(report: Any) -> None:
    figure = report.figures()["graph"]
    arrows = [a for a in figure.layout.annotations if a.showarrow]
    assert len(arrows) == len(report.path_names) == 6
    widths = [a.arrowwidth for a in arrows]
    assert widths[int(np.argmax(report.edge_probs))] == max(widths)
    labels = figure.data[0].text
    assert list(labels) == [f"{p:.2f}" for p in report.edge_probs]


def test_front_figure_marks_front_and_full_mask(report: Any) -> None:
    figure = report.figures()["front"]
    names = [trace.name for trace in figure.data]
    assert names[0] == "trials" and names[1].startswith("Pareto front") and names[2] == "full mask (all paths)"
    assert figure.data[1].line.shape == "hv"
    assert len(figure.data[0].x) == 10
    assert [c[1] for c in figure.data[1].customdata] == [row["mask"] for row in report.front]


def test_password_is_masked(tiny_search: Any) -> None:
    search = SearchStudy(tiny_search.search.optuna_study, "postgresql+psycopg://mro:s3cr3t-pw@db.example:5432/mro")
    page = build_report(search, tiny_search.evaluator).html()
    assert "s3cr3t-pw" not in page
    assert "postgresql+psycopg://mro:***@db.example:5432/mro" in page


def test_cli_report(tiny_search: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sub" / "r.html"
    code = main(["report", "--study", str(tiny_search.path), "--storage", tiny_search.url, "-o", str(out), "--json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["report"] == str(out) and out.is_file()
    assert summary["complete_trials"] == 10 and summary["metric"] == "accuracy"
    embedded = re.search(r'<script type="application/json" id="mro-summary">(.*?)</script>', out.read_text()).group(1)
    assert json.loads(embedded)["pareto_front"] == summary["pareto_front"]


def test_cli_report_errors_are_one_line(tiny_search: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["report", "--study", str(tiny_search.path), "--storage", f"sqlite:///{tmp_path / 'empty.db'}"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "no study named 'tinysearch'" in err
    code = main(["report", "--study", str(tiny_search.path), "--storage", tiny_search.url, "-o", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "is a directory" in err


def test_cli_report_replaces_only_a_report(tiny_search: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``-o`` naming the study file (or any file that is not a report) is refused, the file left
    as it was; an earlier report is replaced."""
    study_file = tmp_path / "study.toml"
    study_file.write_text(tiny_search.path.read_text())
    before = study_file.read_bytes()
    code = main(["report", "--study", str(study_file), "--storage", tiny_search.url, "-o", str(study_file)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "exists and is not an mro-search report" in err, err
    assert study_file.read_bytes() == before
    out = tmp_path / "r.html"
    for _ in range(2):
        assert main(["report", "--study", str(study_file), "--storage", tiny_search.url, "-o", str(out), "-q"]) == 0
    assert out.read_text().startswith("<!DOCTYPE html>")


CRAFTED = ['</script><script>mro_pwned()</script>', '<img src=x onerror=mro_pwned()>', "x'); mro_pwned(); ('\n<b>"]


def test_names_are_escaped_everywhere_in_the_page(report: Any) -> None:
    """Names come from study files and stored trials: none may become markup (another helper's
    name rules refuse most such names; the page must be safe regardless)."""
    import dataclasses

    from supernet.paths import path_names

    paths = path_names(CRAFTED)
    crafted = dataclasses.replace(
        report, study_name=CRAFTED[0], modality_names=list(CRAFTED), path_names=paths, metric="accuracy",
        storage="postgresql://u@h/<script>mro_pwned()</script>",
        trials=[dataclasses.replace(t, mask=CRAFTED[1], active_paths=paths[:2]) for t in report.trials],
        front=[{**row, "mask": CRAFTED[1], "active_paths": paths[:2]} for row in report.front],
    )
    page = crafted.html()
    assert "mro_pwned" in page  # the names are shown ...
    for raw in ("<script>mro_pwned", "<img src=x onerror", "<b>"):  # ... never as markup
        assert raw not in page, raw
    summary = re.search(r'<script type="application/json" id="mro-summary">(.*?)</script>', page, re.S).group(1)
    assert "<" not in summary and json.loads(summary)["study"] == CRAFTED[0]
    # plotly renders a subset of HTML in texts, titles and hover labels: the figures hold the
    # names escaped (plotly shows them as written)
    texts = [text for fig in crafted.figures().values() for text in _strings(fig.to_plotly_json())]
    assert any("mro_pwned" in text for text in texts)
    for text in texts:
        for raw in ("<script", "<img", "<b>"):
            assert raw not in text, text


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, (list, tuple)) or hasattr(value, "tolist"):
        return [s for v in (value.tolist() if hasattr(value, "tolist") else value) for s in _strings(v)]
    return []


def test_password_in_a_query_parameter_is_masked(tiny_search: Any) -> None:
    search = SearchStudy(tiny_search.search.optuna_study, "postgresql+psycopg://mro@db.example:5432/mro?password=s3cr3t-q&sslmode=require")
    page = build_report(search, tiny_search.evaluator).html()
    assert "s3cr3t-q" not in page and "postgresql+psycopg://mro@db.example:5432/mro?password=***&amp;sslmode=require" in page


def test_special_targets_are_refused_and_left_alone(report: Any, tmp_path: Path) -> None:
    import os
    import stat

    from supernet.errors import OutputError

    fifo = tmp_path / "report.html"
    os.mkfifo(fifo)
    for target in (fifo, Path("/dev/null"), Path("/proc/report.html")):
        with pytest.raises(OutputError, match="cannot write the report to"):
            report.write(target)
    assert stat.S_ISFIFO(fifo.stat().st_mode) and [p.name for p in tmp_path.iterdir()] == ["report.html"]


def test_report_says_what_the_prior_learned_from_and_how_each_path_trained(report: Any, page: str, tiny_search: Any) -> None:
    last = tiny_search.evaluator.checkpoint.history[-1]
    assert report.prior_learned_from == last["rank_data"]
    assert "validation split" in report.prior_learned_from and "rank_data = valid" in report.prior_learned_from
    assert "prior learned from" in page and "Paths in supernet training" in page
    assert [row["path"] for row in report.path_training] == report.path_names
    assert [row["updates"] for row in report.path_training] == last["path_updates"]
    assert sum(row["updates"] for row in report.path_training) > 0
    assert report.summary()["prior_learned_from"] == report.prior_learned_from


def test_report_of_a_checkpoint_from_before_rank_data() -> None:
    from search_service.report import OLD_RANK_DATA, path_training, prior_learned_from

    old = [{"epoch": 1, "spearman": 0.1, "valid_loss_full": 0.7}]  # a history as written before
    assert prior_learned_from(old) == OLD_RANK_DATA
    assert path_training(old, ["a->b", "b->a"]) == []
