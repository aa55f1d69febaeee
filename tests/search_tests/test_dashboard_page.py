"""The study's page in optuna-dashboard: the report's figures and a note, one copy of each, and
one report artifact however often the study runs (``search_service.dashboard_plots``).

Read back the way a user meets them: optuna-dashboard's own Python functions, optuna-dashboard's
server over HTTP on 127.0.0.1 (as ``mro-search dashboard`` serves it), and a headless Chromium
(Debian's ``chromium`` package; the test says so and is skipped at its end where it is missing)
that renders the study's page and its note page (``MRO_SCREENSHOT_DIR=DIR`` keeps the PNGs).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from optuna.artifacts import get_all_artifact_meta, upload_artifact
from optuna_dashboard import get_note
from optuna_dashboard._custom_plot_data import get_plotly_graph_objects

from search_service.cli import main
from search_service.dashboard_plots import PLOT_IDS, REPORT_KEY
from search_service.search import CHECKPOINT_KEY

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--hide-scrollbars"]
SCREENSHOT_DIR = os.environ.get("MRO_SCREENSHOT_DIR")  # keep the page's PNG here (else only in tmp_path)


def _mro(args: list[object], cwd: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``mro-search ARGS`` in this process (a subprocess' start-up costs seconds)."""
    with monkeypatch.context() as mp:
        mp.chdir(cwd)
        assert main([str(a) for a in args]) == 0


def _study_file(tiny, tmp_path: Path) -> Path:
    run_dir = tiny.seed_run_dir(tmp_path / "run")
    return tiny.variant(tmp_path, "tiny.toml", run_dir=run_dir)


def _attrs(study) -> dict:
    return study._storage.get_study_system_attrs(study._study_id)


def _plots(study) -> dict[str, dict]:
    return {key: json.loads(value) for key, value in get_plotly_graph_objects(_attrs(study)).items()}


def _front_traces(figure: dict) -> tuple[dict, dict]:
    trials = next(t for t in figure["data"] if t["name"] == "trials")
    front = next(t for t in figure["data"] if t["name"].startswith("Pareto front"))
    return trials, front


def test_run_and_resume_keep_one_copy_of_plots_note_and_report(tiny, mro, tmp_path, sqlite_url, monkeypatch):
    """``run`` stores the four plots, the note and one report; ``resume`` replaces them (and the
    reports earlier versions piled up); the dashboard serves them and Chromium renders them;
    ``delete`` removes everything."""
    file, store = _study_file(tiny, tmp_path), tmp_path / "store"
    _mro(["run", "--study", file, "--storage", sqlite_url, "--artifacts", store, "--trials", "3", "-q"], tmp_path, monkeypatch)
    study = mro.open_study(sqlite_url)
    record = _attrs(study)[CHECKPOINT_KEY]

    note = get_note(study)
    for text in (record["identity"], "**Data:** `synthetic`", "The prior's path ranking", "`text->audio` (bit 0)", "`audio->text` (bit 2)",
                 "3 complete of a budget of 3", "Fidelity of the prior", "Spearman rho"):
        assert text in note, (text, note)
    plots = _plots(study)
    assert sorted(plots) == sorted(PLOT_IDS.values())
    trials, front = _front_traces(plots["mro-front"])
    assert len(trials["x"]) == 3
    masks = [t.user_attrs["mask"] for t in mro.complete(study)]
    assert front["text"] and set(front["text"]) <= set(masks)  # the front's points carry their masks
    assert plots["mro-relation-graph"]["layout"]["title"]["text"] == "Modal Relation Graph"

    metas = get_all_artifact_meta(study)
    assert sorted(m.filename for m in metas) == sorted([record["file"], "report.html"])
    first_report = next(m.artifact_id for m in metas if m.filename == "report.html")
    # two more reports, as every run of earlier versions added one
    (report,) = (tmp_path / "run").rglob("report.html")  # in the study's own folder (its storage is not the default)
    for _ in range(2):
        upload_artifact(artifact_store=_store(store), file_path=str(report), study_or_trial=study, mimetype="text/html")
    assert len(get_all_artifact_meta(study)) == len(os.listdir(store)) == 4

    _mro(["resume", "--study", file, "--storage", sqlite_url, "--artifacts", store, "--trials", "5", "-q"], tmp_path, monkeypatch)
    study = mro.open_study(sqlite_url)
    metas = get_all_artifact_meta(study)  # readable: no blanked record is left
    assert sorted(m.filename for m in metas) == sorted([record["file"], "report.html"])
    report = next(m.artifact_id for m in metas if m.filename == "report.html")
    assert report != first_report and _attrs(study)[REPORT_KEY] == report
    assert sorted(os.listdir(store)) == sorted([record["artifact_id"], report])  # the earlier reports are gone from the store
    plots = _plots(study)
    assert sorted(plots) == sorted(PLOT_IDS.values())  # replaced, not added
    assert len(_front_traces(plots["mro-front"])[0]["x"]) == 5
    note = get_note(study)
    assert "5 complete of a budget of 5" in note and note.count("## mro-search study") == 1

    with _dashboard(sqlite_url, store) as base:
        detail = _get(f"{base}/api/studies/{study._study_id}?after=0")
        served = {g["id"]: json.loads(g["graph_object"]) for g in detail["plotly_graph_objects"]}
        assert served == plots
        assert detail["note"] == {"version": 3, "body": note}  # saved when the study was made, when run and resume ended
        assert sorted(a["artifact_id"] for a in detail["artifacts"]) == sorted([record["artifact_id"], report])
        rendered = Path(CHROMIUM).is_file() and _check_page(f"{base}/dashboard/studies/{study._study_id}", tmp_path, record["identity"])

    _mro(["delete", "--study", file, "--storage", sqlite_url, "--artifacts", store, "--yes"], tmp_path, monkeypatch)
    assert not store.exists()  # both artifacts removed, then the emptied store
    if not rendered:
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium, Debian's package): the page was not rendered; the rest passed")


def _store(path: Path):
    from optuna.artifacts import FileSystemArtifactStore

    return FileSystemArtifactStore(str(path))


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        return json.loads(response.read())


@contextlib.contextmanager
def _dashboard(url: str, store: Path) -> Iterator[str]:
    """optuna-dashboard's own WSGI app over the study, served on 127.0.0.1 as ``mro-search
    dashboard`` serves it (``search_service.dashboard``), in a thread of this process."""
    from optuna_dashboard import wsgi

    from search_service import artifacts
    from search_service.dashboard import guard, make_server, server_url
    from search_service.storage import open_storage

    app = wsgi(open_storage(url, heartbeat=False, create=False), artifact_store=artifacts.open_store(str(store)))
    server = make_server("127.0.0.1", 0, guard(app, bound="127.0.0.1"))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield server_url(server, "127.0.0.1")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _check_page(page: str, folder: Path, identity: str) -> bool:
    """The study's page and its note page as headless Chromium renders them: every plot drawn by
    plotly under its title, and the note's text."""
    html = _render(page, folder / "dashboard-plots.png")
    for plot_id in PLOT_IDS.values():  # each plot's container, drawn by plotly
        assert re.search(rf'<div[^>]*id="user-defined-plot:{plot_id}"[^>]*><div class="plot-container plotly"', html), plot_id
    for title in ("Modal Relation Graph", "Hypervolume of the Pareto front", "Spearman rho of the prior", "Accuracy against MFLOPs"):
        assert re.search(rf'class="gtitle"[^>]*data-unformatted="{title}"', html), title
    html = _render(f"{page}/note", folder / "dashboard-note.png")
    for text in (identity, "The prior's path ranking", "Fidelity of the prior", "5 complete of a budget of 5"):
        assert text in html, text  # the note, rendered on its page
    return True


def _render(url: str, png: Path) -> str:
    """The page at ``url`` as headless Chromium renders it (its DOM), with a screenshot in ``png``
    (copied to ``$MRO_SCREENSHOT_DIR`` when that is set)."""
    with tempfile.TemporaryDirectory(prefix="mro-chromium-") as profile:
        result = subprocess.run(
            [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=20000", "--window-size=1400,3000",
             "--dump-dom", f"--screenshot={png}", url],
            capture_output=True, text=True, timeout=120,
        )
    assert result.returncode == 0 and png.is_file() and png.stat().st_size > 20_000, result.stderr[-2000:]
    if SCREENSHOT_DIR:
        shutil.copy(png, Path(SCREENSHOT_DIR) / png.name)
    return result.stdout
