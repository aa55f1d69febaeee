"""Serve a study's storage with optuna-dashboard.

``serve(url, study_name, host=..., port=...)`` opens the storage (read through the same
``open_storage`` as the workers, so PostgreSQL URLs get psycopg 3 and ``pool_pre_ping``), checks
that the study is there, and serves optuna-dashboard's WSGI app with ``wsgiref`` on a threaded
server until Ctrl-C (or SIGTERM), which stops it cleanly.

It listens on 127.0.0.1 unless told otherwise. optuna-dashboard has no authentication and its API
can change and delete studies, so any other address gets a one-line warning. The URL printed on
stderr never carries the storage password. ``--port 0`` lets the system pick a free port; the URL
printed says which.
"""

from __future__ import annotations

import ipaddress
import logging
import signal
import socket
import sys
from collections.abc import Callable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from search_service.storage import mask_password, open_storage, optuna_quiet
from supernet.errors import ConfigError

log = logging.getLogger("mro_search")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
LOOPBACK_NAMES = ("localhost",)


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


def serve(url: str, study_name: str, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, ready: Callable[[str], None] | None = None) -> int:
    """Serve the storage at ``url`` until interrupted; returns 0 after a clean stop."""
    from optuna_dashboard import wsgi

    optuna_quiet()
    storage = open_storage(url, heartbeat=False)
    study_id = find_study_id(storage, study_name)
    if study_id is None:
        raise ConfigError(f"no study named {study_name!r} in {mask_password(url)}; create it with `mro-search run --study {study_name}`")
    warning = exposure_warning(host)
    if warning:
        print(f"mro-search: {warning}", file=sys.stderr, flush=True)
    server = make_server(host, port, wsgi(storage))
    base = server_url(server, host)
    print(f"mro-search: optuna-dashboard for study {study_name!r} ({mask_password(url)}) at "
          f"{base}/dashboard/studies/{study_id} (Ctrl-C stops it)", file=sys.stderr, flush=True)
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


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
