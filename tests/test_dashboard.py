"""`mro-search dashboard`: a real server process over a real study, on loopback only."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from search_service.cli import main
from search_service.dashboard import exposure_warning, host_allowed, host_name, is_loopback

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


# --- Host names (DNS rebinding) and --read-only, against the real server ---------------------------


def _request(base: str, path: str, *, host: str, method: str = "GET", body: bytes | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(f"{base}{path}", method=method, data=body, headers={"Host": host, "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _study_names(url: str) -> list[str]:
    import optuna

    return [s.study_name for s in optuna.get_all_study_summaries(storage=url)]


@pytest.fixture
def study_copy(tiny_search: Any, tmp_path: Path) -> str:
    """A copy of the tiny study's database (SQLite's backup API: the WAL included), which the
    tests may delete studies from."""
    import sqlite3

    source = tiny_search.url.removeprefix("sqlite:///")
    copy = tmp_path / "copy.db"
    with sqlite3.connect(source) as src, sqlite3.connect(copy) as dst:
        src.backup(dst)
    return f"sqlite:///{copy}"


@contextlib.contextmanager
def _serving(tiny_search: Any, url: str, tmp_path: Path, *flags: str) -> Iterator[tuple[str, int]]:
    log = tmp_path / f"dashboard{len(flags)}.err"
    with open(log, "w") as err:
        proc = subprocess.Popen(
            [*_command(), "dashboard", "--study", str(tiny_search.path), "--storage", url, "--port", "0", *flags],
            stdout=subprocess.DEVNULL, stderr=err, cwd=tmp_path, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        base = _wait_for_url(proc, log)
        (summary,) = [s for s in _get(f"{base}/api/studies")["study_summaries"] if s["study_name"] == "tinysearch"]
        yield base, summary["study_id"]
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert "Traceback" not in log.read_text()


def test_other_host_names_are_refused_so_dns_rebinding_cannot_delete_a_study(tiny_search: Any, study_copy: str, tmp_path: Path) -> None:
    with _serving(tiny_search, study_copy, tmp_path) as (base, study_id):
        port = base.rsplit(":", 1)[1]
        for host in ("evil.example", f"evil.example:{port}", f"localhost.evil.example:{port}", "127.0.0.1.evil.example", ""):
            status, body = _request(base, "/api/studies", host=host)
            assert status == 403 and b"--allowed-host" in body and b"tinysearch" not in body, (host, status, body)
        status, _ = _request(base, f"/api/studies/{study_id}", host=f"evil.example:{port}", method="DELETE")
        assert status == 403
        assert "tinysearch" in _study_names(study_copy)
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", "LOCALHOST", f"[::1]:{port}", "localhost."):
            status, body = _request(base, f"/api/studies/{study_id}?after=0", host=host)
            assert status == 200 and json.loads(body)["name"] == "tinysearch", (host, status)
        # the same DELETE with the server's own name works: the 403 above was the Host check
        status, _ = _request(base, f"/api/studies/{study_id}", host=f"127.0.0.1:{port}", method="DELETE")
        assert status == 204 and "tinysearch" not in _study_names(study_copy)


def test_read_only_refuses_every_change_and_allowed_hosts_are_answered(tiny_search: Any, study_copy: str, tmp_path: Path) -> None:
    with _serving(tiny_search, study_copy, tmp_path, "--read-only", "--allowed-host", "mro.example") as (base, study_id):
        port = base.rsplit(":", 1)[1]
        good = f"mro.example:{port}"
        status, body = _request(base, f"/api/studies/{study_id}?after=0", host=good)
        assert status == 200 and json.loads(body)["name"] == "tinysearch"
        assert _request(base, "/api/meta", host=f"127.0.0.1:{port}")[0] == 200
        assert _request(base, "/api/meta", host=f"other.example:{port}")[0] == 403
        changes = [
            ("DELETE", f"/api/studies/{study_id}", None),
            ("POST", "/api/studies", json.dumps({"study_name": "new", "directions": ["minimize"]}).encode()),
            ("PUT", f"/api/studies/{study_id}/note", json.dumps({"version": 0, "body": "x"}).encode()),
            ("PATCH", f"/api/studies/{study_id}", b"{}"),
        ]
        for method, path, body in changes:
            status, text = _request(base, path, host=good, method=method, body=body)
            assert status == 405 and b"read-only" in text, (method, path, status, text)
        assert _study_names(study_copy) == ["tinysearch"]


def test_host_rules() -> None:
    assert host_name("Example.ORG.:8080") == "example.org" and host_name("[::1]:80") == "::1" and host_name("a:b:c") is None
    assert host_name(None) is None and host_name("") is None and host_name("[::1") is None
    for host in ("localhost", "localhost:1", "127.0.0.1:8080", "127.0.0.2", "[::1]:8080"):
        assert host_allowed(host, bound="127.0.0.1"), host
    for host in ("evil.example", "evil.example:8080", "192.168.1.5", None, "", "localhost.evil.example"):
        assert not host_allowed(host, bound="127.0.0.1"), host
    assert host_allowed("mro.example:80", bound="127.0.0.1", allowed=["MRO.example"])
    assert host_allowed("10.0.0.5:8080", bound="10.0.0.5") and not host_allowed("10.0.0.6", bound="10.0.0.5")
    # bound to all addresses: any IP literal (no DNS name, nothing to rebind), names only when allowed
    assert host_allowed("192.168.1.5:8080", bound="0.0.0.0") and host_allowed("[fe80::1]:80", bound="::")
    assert not host_allowed("evil.example", bound="0.0.0.0")


def test_malformed_bodies_are_answered_400_without_a_traceback(tiny_search: Any, study_copy: str, tmp_path: Path) -> None:
    """optuna-dashboard reads every change's body as a JSON object: `[]`, `null`, no body or a
    body nested past Python's parser made it answer 500 and log a traceback."""
    with _serving(tiny_search, study_copy, tmp_path) as (base, study_id):
        host = f"127.0.0.1:{base.rsplit(':', 1)[1]}"
        trial_id = _get(f"{base}/api/studies/{study_id}?after=0")["trials"][0]["trial_id"]
        bodies = [b"[]", b"null", b"5", b'"x"', b"{", b"\xff\xfe", b"[" * 5000 + b"]" * 5000,
                  b'{"a":' * 100 + b"1" + b"}" * 100, b"{" * 100000]
        for path in ("/api/studies", f"/api/studies/{study_id}/rename", f"/api/trials/{trial_id}/user-attrs"):
            for body in bodies:
                status, text = _request(base, path, host=host, method="POST", body=body)
                assert status == 400 and "mro-search dashboard" in json.loads(text)["reason"], (path, body[:20], status, text[:200])
        status, text = _request(base, "/api/studies", host=host, method="POST", body=None)  # no body: {} -> optuna-dashboard's own 400
        assert status == 400, (status, text)
        nested = {"study_name": "new", "directions": ["minimize"], "extra": {"a": [1, {"b": [2]}]}}  # a few levels are fine
        status, text = _request(base, "/api/studies", host=host, method="POST", body=json.dumps(nested).encode())
        assert status == 201, (status, text)
        assert sorted(_study_names(study_copy)) == ["new", "tinysearch"]
    log = (tmp_path / "dashboard0.err").read_text()
    assert "Traceback" not in log and "File " not in log, log


# --- wrongly-typed fields of a JSON object (dashboard_bodies) -------------------------------------
#
# optuna-dashboard reads its bodies' fields unchecked: `{"directions": 5}` raised in the app, which
# answered 500. The guard checks them against one model per route. Each route is exercised on a
# study of its own (made per request), so a rename or a delete never takes another request's
# study away: what is tested is the body, nothing else.

# field -> (a wrong value, its route, a body that the app takes with that field right)
WRONG_FIELDS = {
    "study_name": (5, "POST", "/api/studies"),
    "directions": ("maximize", "POST", "/api/studies"),
    "version": ("x", "PUT", "/api/studies/{sid}/note"),
    "body": (3, "PUT", "/api/studies/{sid}/{tid}/note"),
    "remove_associated_artifacts": ("no", "DELETE", "/api/studies/{sid}"),
    "candidates": (["1"], "POST", "/api/studies/{sid}/preference"),
    "clicked": (None, "POST", "/api/studies/{sid}/preference"),
    "artifact_key": (7, "PUT", "/api/studies/{sid}/preference_feedback_component"),
    "state": (1, "POST", "/api/trials/{rid}/tell"),
    "values": (["1"], "POST", "/api/trials/{rid}/tell"),
    "user_attrs": (["a"], "POST", "/api/trials/{rid}/user-attrs"),
    "file": ("not a data URI", "POST", "/api/artifacts/{sid}"),
    "filename": (1, "POST", "/api/artifacts/{sid}/{rid}"),
}
VALID_BODIES = [  # (method, path, body, status): what the dashboard's pages send
    ("POST", "/api/studies", {"study_name": "made-{sid}", "directions": ["Minimize", "maximize"]}, 201),
    ("POST", "/api/studies/{sid}/rename", {"study_name": "renamed-{sid}"}, 201),
    ("PUT", "/api/studies/{sid}/note", {"version": 1, "body": "# a note"}, 204),
    ("PUT", "/api/studies/{sid}/{tid}/note", {"version": 1, "body": "a trial's note"}, 204),
    ("POST", "/api/trials/{rid}/user-attrs", {"user_attrs": {"checked": True, "by": "me"}}, 204),
    ("POST", "/api/trials/{rid}/tell", {"state": "Complete", "values": [0.5]}, 204),
    ("POST", "/api/trials/{rid}/tell", {"state": "fail"}, 204),
    ("POST", "/api/studies/{sid}/preference", {"mode": "ChooseWorst", "candidates": [0, 1], "clicked": 1}, 204),
    ("PUT", "/api/studies/{sid}/preference_feedback_component", {"output_type": "note"}, 204),
    ("POST", "/api/artifacts/{sid}", {"file": "data:text/plain;base64,aGk=", "filename": "hi.txt"}, 201),
    ("POST", "/api/artifacts/{sid}/{rid}", {"file": "data:text/plain;base64,aGk=", "filename": "hi.txt"}, 201),
    ("DELETE", "/api/studies/{sid}", {"remove_associated_artifacts": False}, 204),
]
BODY_ROUTES = sorted({(method, path) for _, method, path in WRONG_FIELDS.values()} | {(m, p) for m, p, _, _ in VALID_BODIES}
                     | {("POST", "/api/llm/trial_filter_query"), ("POST", "/api/studies/{sid}/{tid}/skip")})


class _App:
    """optuna-dashboard's WSGI app over an SQLite storage opened as ``mro-search dashboard``
    opens it, behind ``guard``, called directly; ``call`` makes a study of its own (one complete
    and one running trial) for each request."""

    def __init__(self, folder: Path) -> None:
        from optuna.artifacts import FileSystemArtifactStore
        from optuna_dashboard import wsgi

        from search_service.dashboard import guard
        from search_service.storage import open_storage

        url = f"sqlite:///{folder / 'bodies.db'}"
        open_storage(url, heartbeat=False, create=True)  # the database, as a run makes it
        self.storage = open_storage(url, heartbeat=False, create=False)
        (folder / "artifacts").mkdir()
        self.app = guard(wsgi(self.storage, artifact_store=FileSystemArtifactStore(str(folder / "artifacts"))), bound="127.0.0.1")
        self.count = 0

    def ids(self) -> dict[str, int]:
        import optuna

        self.count += 1
        study = optuna.create_study(storage=self.storage, study_name=f"s{self.count}")
        study.enqueue_trial({})
        done = study.ask()
        study.tell(done, 1.0)
        running = study.ask()
        return {"sid": study._study_id, "tid": done._trial_id, "rid": running._trial_id}

    def call(self, method: str, path: str, body: bytes) -> tuple[int, dict]:
        from wsgiref.util import setup_testing_defaults

        ids = self.ids()
        environ: dict[str, Any] = {"REQUEST_METHOD": method, "PATH_INFO": path.format(**ids), "HTTP_HOST": "127.0.0.1:8080",
                                   "CONTENT_TYPE": "application/json", "CONTENT_LENGTH": str(len(body)), "wsgi.input": io.BytesIO(body)}
        setup_testing_defaults(environ)
        statuses: list[str] = []
        text = b"".join(self.app(environ, lambda status, headers, exc_info=None: statuses.append(status)))
        try:
            answer = json.loads(text) if text.strip() else {}
        except ValueError:
            answer = {"text": text.decode("utf-8", "replace")}
        return int(statuses[0].split()[0]), answer


@pytest.fixture(scope="module")
def body_app(tmp_path_factory: pytest.TempPathFactory) -> _App:
    return _App(tmp_path_factory.mktemp("bodies"))


@pytest.mark.parametrize("field", sorted(WRONG_FIELDS))
def test_a_wrongly_typed_field_is_answered_400_naming_it(body_app: _App, field: str) -> None:
    wrong, method, path = WRONG_FIELDS[field]
    status, answer = body_app.call(method, path, json.dumps({field: wrong}).encode())
    reason = answer.get("reason", "")
    assert status == 400 and reason.startswith(f"mro-search dashboard: field '{field}' must be ") and "\n" not in reason, (status, answer)


@pytest.mark.parametrize(("method", "path", "body", "expected"), VALID_BODIES, ids=[f"{m} {p}" for m, p, _, _ in VALID_BODIES])
def test_valid_bodies_still_reach_optuna_dashboard(body_app: _App, method: str, path: str, body: dict, expected: int) -> None:
    text = json.dumps(body).replace("{sid}", str(body_app.count + 1))  # a name of its own
    status, answer = body_app.call(method, path, text.encode())
    assert status == expected, (status, answer)


def _json_values():
    from hypothesis import strategies as st

    likely = st.sampled_from(["minimize", "maximize", "Complete", "fail", "ChooseWorst", "note", "artifact",
                              "data:text/plain;base64,aGk=", "data:,", "data:x;base64,a", ""])
    scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12) | likely
    return st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                        max_leaves=12)


def _objects():
    from hypothesis import strategies as st

    names = sorted({f for f in WRONG_FIELDS} | {"mode", "output_type", "last_response", "user_query"})
    return st.dictionaries(st.sampled_from(names) | st.text(max_size=8), _json_values(), max_size=5)


def test_no_json_object_makes_a_change_answer_500(body_app: _App) -> None:
    """Any JSON object (NaN, huge integers and deep values included) to any route that reads a
    body: never a 5xx."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    @settings(max_examples=150, deadline=None, database=None)
    @given(route=st.sampled_from(BODY_ROUTES), body=_objects())
    def check(route: tuple[str, str], body: dict) -> None:
        status, answer = body_app.call(*route, json.dumps(body).encode())
        assert status < 500, (route, body, status, answer)

    check()


def test_wrongly_typed_fields_against_the_real_server(tiny_search: Any, study_copy: str, tmp_path: Path) -> None:
    """The brief's examples on `mro-search dashboard` itself: 400 naming the field, the study
    unchanged, nothing logged as an error; a valid body still works."""
    with _serving(tiny_search, study_copy, tmp_path) as (base, study_id):
        host = f"127.0.0.1:{base.rsplit(':', 1)[1]}"
        trial_id = _get(f"{base}/api/studies/{study_id}?after=0")["trials"][0]["trial_id"]
        cases = [
            ("POST", "/api/studies", {"study_name": 5, "directions": "maximize"}, "study_name"),
            ("POST", "/api/studies", {"directions": [1]}, "directions"),
            ("PUT", f"/api/studies/{study_id}/note", {"version": "x", "body": 3}, "version"),
            ("POST", f"/api/trials/{trial_id}/user-attrs", {"user_attrs": "abc"}, "user_attrs"),
            ("POST", f"/api/trials/{trial_id}/tell", {"state": "Complete", "values": "12"}, "values"),
        ]
        for method, path, body, field in cases:
            status, text = _request(base, path, host=host, method=method, body=json.dumps(body).encode())
            assert status == 400 and f"field '{field}' must be" in json.loads(text)["reason"], (path, body, status, text)
        status, text = _request(base, f"/api/studies/{study_id}/note", host=host, method="PUT",
                                body=json.dumps({"version": 1, "body": "checked"}).encode())
        assert status == 204, (status, text)
        assert _study_names(study_copy) == ["tinysearch"]
    log = (tmp_path / "dashboard0.err").read_text()
    assert "optuna-dashboard: " not in log and "Traceback" not in log, log  # no error logged by the app
