"""Security: a storage password never leaks, and an exposed dashboard says so.

One study in PostgreSQL behind a URL with a password (the server trusts 127.0.0.1, so any
password works and the URL is real): ``run`` (two worker processes, the report written),
``worker`` (with ``--debug``), ``pareto``, ``report``, ``dashboard`` and a failing command with
``--debug`` are run as a user runs them. Every byte they print, every file under the test's
folder (run folder, checkpoint, reports, the logs of every command, the dashboard's HTTP
answers), the worker processes' command lines and what the study stores are searched for the
password.

Covered elsewhere and not repeated: the dashboard listens on 127.0.0.1 by default
(``tests/test_dashboard.py``); ``docker-compose.yml`` takes the password from the environment and
keeps it off command lines (``tests/search_tests/test_compose.py``); ``mask_password`` and
``scrub`` (``tests/search_tests/test_storage.py``).
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from urllib.parse import quote

import psutil
import pytest

SECRET = "Sup3rS3cret"


def _save(logs: Path, name: str, result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    (logs / f"{name}.out").write_text(result.stdout or "", encoding="utf-8")
    (logs / f"{name}.err").write_text(result.stderr or "", encoding="utf-8")
    return result


def _files_holding(root: Path, needles: list[bytes]) -> list[str]:
    hits = []
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            if any(n in data for n in needles):
                hits.append(str(path.relative_to(root)))
    return hits


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=20) as response:
        assert response.status == 200
        return response.read()


def _run_watching_command_lines(mro, args, cwd, env) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Run ``mro-search ARGS``; meanwhile record the command lines of it and its children."""
    proc = subprocess.Popen([*mro.command(), *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen: set[str] = set()
    try:
        deadline = time.monotonic() + 400
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                parent = psutil.Process(proc.pid)
                for p in [parent, *parent.children(recursive=True)]:
                    seen.add(" ".join(p.cmdline()))
            except psutil.Error:
                pass
            time.sleep(0.2)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), sorted(seen)


@pytest.mark.postgres
@pytest.mark.slow
def test_storage_password_appears_in_no_output_log_report_or_process_list(tiny, mro, pg_database, tmp_path):
    url = f"postgresql+psycopg://postgres:{SECRET}@127.0.0.1:5432/{pg_database}"
    needles = [SECRET.encode(), quote(SECRET, safe="").encode()]
    logs = tmp_path / "logs"
    logs.mkdir()
    run_dir = tiny.seed_run_dir(tmp_path / "run")  # same study, same checkpoint
    study_file = tiny.variant(tmp_path, "tiny.toml", run_dir=run_dir)
    args = ["--study", str(study_file)]

    # run: URL from the environment, as the README and docker-compose.yml do; 2 worker processes
    result, command_lines = _run_watching_command_lines(mro, ["run", *args, "--trials", "6", "--workers", "2"], tmp_path, mro.env(MRO_STORAGE=url))
    _save(logs, "run", result)
    assert result.returncode == 0, result.stderr
    assert len(list(run_dir.glob("postgresql-*/report.html"))) == 1  # the study's own folder for its storage
    assert "postgres:***@127.0.0.1" in result.stderr  # the log line names the storage, masked
    assert sum(" worker " in f" {c} " for c in command_lines) >= 2, command_lines  # the workers were seen
    assert not [c for c in command_lines if SECRET in c], "the password is on a command line (`ps` shows it)"

    # worker, with --debug and the URL on its command line, after the budget was raised
    from search_service.search import BUDGET_KEY

    study = mro.open_study(url)
    study._storage.set_study_system_attr(study._study_id, BUDGET_KEY, 8)
    result = _save(logs, "worker", mro.run(["--debug", "worker", *args, "--storage", url], cwd=tmp_path))
    assert result.returncode == 0, result.stderr
    assert "worker finished: 2 trials" in result.stderr

    for name, extra in (("pareto", []), ("pareto-json", ["--json"]), ("report", ["-o", str(run_dir / "again.html"), "--json"])):
        command = name.split("-")[0]
        result = _save(logs, name, mro.run([command, *args, "--storage", url, *extra], cwd=tmp_path))
        assert result.returncode == 0, (name, result.stderr)
    assert json.loads((logs / "pareto-json.out").read_text())["storage"] == url.replace(SECRET, "***")
    assert (run_dir / "again.html").is_file()

    # a failure with --debug: the traceback is shown, the password is not
    unreachable = f"postgresql+psycopg://postgres:{SECRET}@127.0.0.1:1/{pg_database}"
    result = _save(logs, "debug-error", mro.run(["--debug", "pareto", *args, "--storage", unreachable], cwd=tmp_path))
    assert result.returncode != 0 and "Traceback" in result.stderr

    # the dashboard, exposed beyond loopback: a warning, the masked URL, and HTTP answers without it
    _dashboard(mro, url, study_file, logs, tmp_path)

    assert _files_holding(tmp_path, needles) == [], "the password was written"
    stored = json.dumps(study._storage.get_study_system_attrs(study._study_id))
    stored += json.dumps([[t.user_attrs, t.system_attrs] for t in study.get_trials(deepcopy=False)])
    assert SECRET not in stored
    assert len(mro.complete(study)) == 8


def _dashboard(mro, url: str, study_file: Path, logs: Path, cwd: Path) -> None:
    err_path = logs / "dashboard.err"
    with open(err_path, "w") as err:
        proc = subprocess.Popen(
            [*mro.command(), "dashboard", "--study", str(study_file), "--storage", url, "--host", "0.0.0.0", "--port", "0"],
            cwd=cwd, env=mro.env(), stdout=subprocess.DEVNULL, stderr=err,
        )
    try:
        port = mro.wait_for(lambda: _port(err_path, proc), timeout=120, what="the dashboard to start")
        base = f"http://127.0.0.1:{port}"
        answers = [_get(f"{base}/api/meta"), _get(f"{base}/api/studies")]
        studies = json.loads(answers[-1])["study_summaries"]
        (summary,) = [s for s in studies if s["study_name"] == "tiny"]
        answers.append(_get(f"{base}/api/studies/{summary['study_id']}?after=0"))
        answers.append(_get(f"{base}/dashboard/studies/{summary['study_id']}"))
        (logs / "dashboard-http.txt").write_bytes(b"\n".join(answers))
        listening = [c.laddr for c in psutil.Process(proc.pid).net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
        assert [(a.ip, a.port) for a in listening] == [("0.0.0.0", port)]
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    text = err_path.read_text()
    lines = text.strip().splitlines()
    assert (
        "mro-search: warning: the dashboard listens on 0.0.0.0, reachable from other machines, without "
        "authentication (anyone who can connect can read, change and delete studies)"
    ) in lines, text
    serving = [line for line in lines if line.startswith("mro-search: optuna-dashboard for study 'tiny'")]
    assert len(serving) == 1 and "postgres:***@127.0.0.1" in serving[0], text
    assert lines[-1] == "mro-search: dashboard stopped" and "Traceback" not in text


def _port(err_path: Path, proc: subprocess.Popen) -> int | None:
    assert proc.poll() is None, f"the dashboard exited: {err_path.read_text()}"
    found = re.search(r"http://0\.0\.0\.0:(\d+)", err_path.read_text())
    return int(found.group(1)) if found else None

