"""Serve a study's storage with optuna-dashboard.

``serve(url, study_name, host=..., port=...)`` opens the storage (read through the same
``open_storage`` as the workers, so PostgreSQL URLs get psycopg 3 and ``pool_pre_ping``), checks
that the study is there, and serves optuna-dashboard's WSGI app with ``wsgiref`` on a threaded
server until Ctrl-C (or SIGTERM), which stops it cleanly.

It listens on 127.0.0.1 unless told otherwise. optuna-dashboard has no authentication and its API
can change and delete studies, so any other address gets a one-line warning. The URL printed on
stderr never carries the storage password. ``--port 0`` lets the system pick a free port; the URL
printed says which.

Listening on loopback is not enough on its own: a web page the user visits can make the browser
resolve the page's own name to 127.0.0.1 (DNS rebinding) and then call the API as a same-origin
page, ``DELETE /api/studies/1`` included. Such a request carries the attacker's name in its
``Host`` header, so ``guard`` answers only requests whose ``Host`` is the bound address, a
loopback name or address, or a name given with ``--allowed-host`` (403 otherwise); bound to a
wildcard address (0.0.0.0, ::), any IP address is accepted as ``Host`` too, since no DNS name is
involved. ``--read-only`` refuses every method but GET, HEAD and OPTIONS (405), so nothing can
change the study through the dashboard at all.

optuna-dashboard's API reads every request body as a JSON object (``request.json.get(...)``):
a body of ``[]``, ``null``, nothing, or JSON nested deeper than Python's parser goes made it
answer 500 and log a traceback. ``guard`` checks the body of every change (``POST``, ``PUT``,
``PATCH``, ``DELETE`` under ``/api/``) first: no body is ``{}``, and anything but a JSON object
of at most ``JSON_DEPTH_MAX`` levels is answered 400 with optuna-dashboard's ``{"reason": ...}``.
So is an object whose fields have other types than the route reads (``{"directions": 5}``,
``{"version": "x"}``): optuna-dashboard does not check them and answered 500; the reason names
the field and what it must be (``dashboard_bodies``: one model per route). What
optuna-dashboard still logs as an error is one line on stderr (``--debug``: its traceback).
"""

from __future__ import annotations

import io
import ipaddress
import json
import logging
import signal
import socket
import sys
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from search_service.storage import mask_password, open_storage, optuna_quiet
from supernet.errors import ConfigError

log = logging.getLogger("mro_search")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
LOOPBACK_NAMES = ("localhost",)
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})  # what --read-only lets through
WILDCARD_ADDRESSES = ("0.0.0.0", "::", "")
BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})  # the API's changes, each with a JSON object body
JSON_DEPTH_MAX = 64  # nesting levels of a request body (a user attribute or a note needs a few)


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def exposure_warning(host: str) -> str | None:
    """The warning to print when the dashboard listens beyond this machine, else None."""
    if is_loopback(host):
        return None
    return (
        f"warning: the dashboard listens on {host}, reachable from other machines, without "
        "authentication (anyone who can connect can read, change and delete studies)"
    )


def host_name(header: str | None) -> str | None:
    """The name in a ``Host`` header (``name``, ``name:port``, ``[v6]:port``), lower-cased,
    without a trailing dot; None when there is none or it is malformed."""
    if not header:
        return None
    header = header.strip().lower()
    if header.startswith("["):
        end = header.find("]")
        if end < 0 or (header[end + 1 :] and not header[end + 1 :].startswith(":")):
            return None
        return header[1:end] or None
    name, _, port = header.partition(":")
    if ":" in port or (port and not port.isdigit()):
        return None
    return name.rstrip(".") or None


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


def host_allowed(header: str | None, *, bound: str, allowed: Iterable[str] = ()) -> bool:
    """Whether a request with this ``Host`` header may be answered (see the module's docstring)."""
    name = host_name(header)
    if name is None:
        return False
    if is_loopback(name):
        return True
    names = {bound.strip("[]").lower().rstrip(".")} | {a.strip().strip("[]").lower().rstrip(".") for a in allowed}
    if name in names:
        return True
    return bound.strip("[]") in WILDCARD_ADDRESSES and _is_ip(name)


def guard(app: Callable, *, bound: str, allowed_hosts: Iterable[str] = (), read_only: bool = False) -> Callable:
    """Wrap a WSGI app: refuse other ``Host`` names (403) and, with ``read_only``, every method
    that can change something (405)."""
    allowed = tuple(allowed_hosts)

    def guarded(environ: dict, start_response: Callable) -> Any:
        host = environ.get("HTTP_HOST")
        if not host_allowed(host, bound=bound, allowed=allowed):
            shown = (host or "")[:100]
            return _refuse(start_response, "403 Forbidden", f"mro-search dashboard: Host {shown!r} is not allowed (protection against DNS "
                           "rebinding); open the dashboard by its address or 'localhost', or start it with --allowed-host NAME")
        method = environ.get("REQUEST_METHOD", "GET").upper()
        if read_only and method not in SAFE_METHODS:
            return _refuse(start_response, "405 Method Not Allowed", f"mro-search dashboard: read-only (--read-only): {method} is refused",
                           [("Allow", ", ".join(sorted(SAFE_METHODS)))])
        problem = _check_json_body(environ) if method in BODY_METHODS and environ.get("PATH_INFO", "").startswith("/api/") else None
        if problem is not None:
            body = json.dumps({"reason": f"mro-search dashboard: {problem}"}).encode("utf-8")
            start_response("400 Bad Request", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            log.debug("dashboard: %s %s: %s", method, environ.get("PATH_INFO"), problem)
            return [body]
        return app(environ, start_response)

    return guarded


def _check_json_body(environ: dict) -> str | None:
    """What is wrong with a change's body, else None: the body is read, checked to be a JSON
    object (no body: ``{}``) of at most ``JSON_DEPTH_MAX`` levels whose fields have the types its
    route reads (``dashboard_bodies``), and put back for the app. A body over bottle's size limit
    is left to bottle (413)."""
    from bottle import BaseRequest

    from search_service import dashboard_bodies

    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return "the Content-Length header is not a number"
    if length > BaseRequest.MEMFILE_MAX:
        return None
    raw = environ["wsgi.input"].read(length) if length > 0 else b""
    try:
        value = json.loads(raw) if raw.strip() else {}
    except RecursionError:
        return f"the request body is nested too deeply; at most {JSON_DEPTH_MAX} levels"
    except ValueError:  # UnicodeDecodeError included
        return "the request body is not valid JSON; send a JSON object"
    if not isinstance(value, dict):
        return f"the request body must be a JSON object, not {type(value).__name__ if value is not None else 'null'}"
    if _depth(value) > JSON_DEPTH_MAX:
        return f"the request body is nested too deeply; at most {JSON_DEPTH_MAX} levels"
    wrong = dashboard_bodies.problem(environ.get("REQUEST_METHOD", "GET").upper(), environ.get("PATH_INFO", ""), value)
    if wrong is not None:
        return wrong
    body = raw if raw.strip() else b"{}"
    environ.update({"wsgi.input": io.BytesIO(body), "CONTENT_LENGTH": str(len(body)), "CONTENT_TYPE": "application/json"})
    return None


def _depth(value: Any) -> int:
    """Nesting levels of a parsed JSON value (a scalar: 0), without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        deepest = max(deepest, level)
        stack.extend((child, level + 1) for child in children)
    return deepest


def _refuse(start_response: Callable, status: str, text: str, headers: list[tuple[str, str]] | None = None) -> list[bytes]:
    body = (text + "\n").encode("utf-8", "replace")
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body))),
                            ("X-Content-Type-Options", "nosniff"), *(headers or [])])
    log.debug("dashboard: %s", text)
    return [body]


def find_study_id(storage, name: str) -> int | None:
    for summary in storage.get_all_studies():
        if summary.study_name == name:
            return summary._study_id
    return None


class _Handler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        log.debug("dashboard: " + format % args)


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a hung browser connection never blocks shutdown

    def handle_error(self, request, client_address) -> None:  # a closed tab is not an error
        log.debug("dashboard: error serving %s", client_address, exc_info=True)


def make_server(host: str, port: int, app: Callable) -> WSGIServer:
    """A threaded wsgiref server bound to ``host:port`` (IPv4 or IPv6)."""
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port must be between 0 and 65535, got {port}")
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except socket.gaierror as exc:
        raise ConfigError(f"cannot listen on {host!r}: unknown host ({exc.strerror}); give an IP address or 'localhost'") from exc
    server_class = type("_DashboardServer", (_Server,), {"address_family": family})
    try:
        server = server_class((host.strip("[]"), port), _Handler)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; pick another --port (or --port 0 for any free one)") from exc
    server.set_app(app)
    return server


def server_url(server: WSGIServer, host: str) -> str:
    port = server.server_address[1]
    shown = host.strip("[]")
    if ":" in shown:
        shown = f"[{shown}]"
    return f"http://{shown}:{port}"


def serve(
    url: str,
    study_name: str,
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    allowed_hosts: Iterable[str] = (),
    read_only: bool = False,
    artifact_store: Any = None,
    ready: Callable[[str], None] | None = None,
) -> int:
    """Serve the storage at ``url`` until interrupted; returns 0 after a clean stop.

    ``allowed_hosts``: more names the ``Host`` header may carry; ``read_only``: refuse every
    change; ``artifact_store``: passed to optuna-dashboard (``wsgi(storage, artifact_store=...)``)."""
    from optuna_dashboard import wsgi

    optuna_quiet()
    _one_line_app_errors()
    storage = open_storage(url, heartbeat=False, create=False)
    study_id = find_study_id(storage, study_name)
    if study_id is None:
        raise ConfigError(f"no study named {study_name!r} in {mask_password(url)}; create it with `mro-search run --study {study_name}`")
    warning = exposure_warning(host)
    if warning:
        print(f"mro-search: {warning}", file=sys.stderr, flush=True)
    app = guard(wsgi(storage, artifact_store=artifact_store), bound=host, allowed_hosts=allowed_hosts, read_only=read_only)
    server = make_server(host, port, app)
    base = server_url(server, host)
    print(f"mro-search: optuna-dashboard for study {study_name!r} ({mask_password(url)}) at "
          f"{base}/dashboard/studies/{study_id}{' (read-only)' if read_only else ''} (Ctrl-C stops it)", file=sys.stderr, flush=True)
    if ready is not None:
        ready(base)

    def _terminate(signum, frame) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _terminate) if _main_thread() else None
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        print("mro-search: dashboard stopped", file=sys.stderr, flush=True)
    finally:
        server.server_close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return 0


class _FirstLine(logging.Filter):
    """optuna-dashboard logs an error with its traceback in the message: keep its first line
    (what failed) unless ``--debug``."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not log.isEnabledFor(logging.DEBUG):
            first = record.getMessage().splitlines()[0] if record.getMessage() else ""
            record.msg, record.args, record.exc_info, record.exc_text = f"optuna-dashboard: {first} (--debug shows the traceback)", None, None, None
        return True


def _one_line_app_errors() -> None:
    for name in ("optuna_dashboard", "optuna_dashboard._bottle_util"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _FirstLine) for f in logger.filters):
            logger.addFilter(_FirstLine())


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
