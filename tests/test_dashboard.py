"""`mro-search dashboard`: a real server process over a real study, on loopback only."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil
import pytest

from search_service.cli import main
from search_service.dashboard import exposure_warning, is_loopback

STARTUP_SECONDS = 90  # the machine may be busy; the server usually answers within seconds


def _command() -> list[str]:
    script = Path(sys.executable).with_name("mro-search")
    return [str(script)] if script.exists() else [sys.executable, "-m", "search_service.cli"]


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        return json.loads(response.read())


def _wait_for_url(proc: subprocess.Popen, log: Path) -> str:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        found = re.search(r"http://127\.0\.0\.1:(\d+)", log.read_text())
        if found:
            base = found.group(0)
            try:
                _get(f"{base}/api/meta")
                return base
            except OSError:
                pass
        assert proc.poll() is None, f"the dashboard exited early: {log.read_text()}"
        time.sleep(0.2)
    raise AssertionError(f"the dashboard did not answer within {STARTUP_SECONDS} s: {log.read_text()}")


def _other_ipv4() -> str | None:
    for addresses in psutil.net_if_addrs().values():
        for a in addresses:
            if a.family == socket.AF_INET and not a.address.startswith("127."):
                return a.address
    return None


@pytest.fixture
def dashboard(tiny_search: Any, tmp_path: Path):
    log = tmp_path / "dashboard.err"
    with open(log, "w") as err:
        proc = subprocess.Popen(
            [*_command(), "dashboard", "--study", str(tiny_search.path), "--storage", tiny_search.url, "--port", "0"],
            stdout=subprocess.DEVNULL, stderr=err, cwd=tmp_path, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        yield proc, log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def test_dashboard_serves_the_study_on_loopback_only(dashboard, tiny_search: Any) -> None:
    proc, log = dashboard
    base = _wait_for_url(proc, log)
    port = int(base.rsplit(":", 1)[1])

    studies = _get(f"{base}/api/studies")["study_summaries"]
    (summary,) = [s for s in studies if s["study_name"] == "tinysearch"]
    assert summary["directions"] == ["maximize", "minimize"]
    detail = _get(f"{base}/api/studies/{summary['study_id']}?after=0")
    assert detail["objective_names"] == ["accuracy", "mflops"]
    numbers = sorted(t["number"] for t in detail["trials"] if t["state"] == "Complete")
    expected = sorted(t.number for t in tiny_search.search.optuna_study.trials if t.state.name == "COMPLETE")
    assert numbers == expected and len(numbers) == 10
    attrs = {a["key"] for a in detail["trials"][0]["user_attrs"]}
    assert {"mask", "active_paths", "accuracy", "mflops", "params"} <= attrs

    # bound to 127.0.0.1 only
    listening = [c for c in psutil.Process(proc.pid).net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
    assert [(c.laddr.ip, c.laddr.port) for c in listening] == [("127.0.0.1", port)]
    other = _other_ipv4()
    if other is not None:
        with pytest.raises(OSError):
            socket.create_connection((other, port), timeout=3).close()

    text = log.read_text()
    assert "Ctrl-C" in text and "warning" not in text

    proc.send_signal(signal.SIGINT)  # Ctrl-C
    assert proc.wait(timeout=20) in (0, 130)
    text = log.read_text()
    assert "Traceback" not in text
    assert text.strip().splitlines()[-1] == "mro-search: dashboard stopped"


def test_exposure_warning_for_non_loopback_hosts() -> None:
    for host in ("127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.2"):
        assert is_loopback(host) and exposure_warning(host) is None
    for host in ("0.0.0.0", "::", "192.168.1.5", "dashboard.example.org"):
        message = exposure_warning(host)
        assert message is not None and "without authentication" in message and "\n" not in message


def test_busy_port_and_unknown_study_are_one_line_errors(tiny_search: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code = main(["dashboard", "--study", str(tiny_search.path), "--storage", tiny_search.url, "--port", str(port)])
    err = capsys.readouterr().err
    assert code == 2 and err.strip().splitlines()[-1].startswith("mro-search: error: cannot listen on 127.0.0.1:")
    assert "Traceback" not in err

    code = main(["dashboard", "--study", str(tiny_search.path), "--storage", f"sqlite:///{tmp_path / 'empty.db'}", "--port", "0"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "no study named 'tinysearch'" in err
