"""Where a study lives: SQLite by default, PostgreSQL (or any RDB) for many workers.

The URL comes from ``--storage``, else the ``MRO_STORAGE`` environment variable, else the study
file's ``[search] storage``, else ``sqlite:///runs/NAME/study.db``. Passwords never appear in
output: print ``mask_password(url)``.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from pathlib import Path

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from search_service.study_file import Study
from supernet.errors import ConfigError

ENV_VAR = "MRO_STORAGE"
HEARTBEAT_INTERVAL = 5  # seconds between a running trial's heartbeats
GRACE_PERIOD = 20  # a trial with no heartbeat for this long is failed (and retried)
MAX_RETRY = 3


def resolve_url(study: Study, cli_url: str | None = None) -> str:
    url = cli_url or os.environ.get(ENV_VAR) or study.search.storage
    if not url:
        path = (study.run_dir / "study.db").resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{path}"
    return url


def mask_password(url: str) -> str:
    """The URL with its password replaced by ``***`` (also inside an error message)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def scrub(text: str, url: str) -> str:
    """Remove the password of ``url`` from any text (error messages quote URLs), decoded or as
    it is written in the URL (percent-encoded)."""
    secrets = set()
    try:
        password = make_url(url).password
    except (ArgumentError, ValueError):
        password = None
    if password:
        secrets.add(str(password))
    written = re.search(r"://[^:/@]*:([^@]*)@", url)
    if written and written.group(1):
        secrets.add(written.group(1))
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def open_storage(url: str, *, heartbeat: bool = True) -> RDBStorage:
    """An ``RDBStorage`` with heartbeats, retries of stale trials and ``pool_pre_ping``."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as exc:
        raise ConfigError(f"storage URL {mask_password(url)!r} is not a valid database URL (e.g. sqlite:///study.db or postgresql+psycopg://user@host/db)") from exc
    engine_kwargs: dict = {"pool_pre_ping": True}
    if parsed.get_backend_name() == "sqlite":
        engine_kwargs["connect_args"] = {"timeout": 60}
        if parsed.database and parsed.database != ":memory:":
            try:
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ConfigError(f"cannot create the folder of SQLite storage {mask_password(url)}: {exc.strerror or exc}; check the path") from exc
    elif parsed.get_backend_name() == "postgresql":
        if parsed.drivername == "postgresql":  # psycopg 3 is the driver we ship
            url = parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
        engine_kwargs["connect_args"] = {"connect_timeout": 10}
    kwargs: dict = {}
    if heartbeat:
        kwargs = {
            "heartbeat_interval": HEARTBEAT_INTERVAL,
            "grace_period": GRACE_PERIOD,
            "heartbeat_stale_trial_callback": RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY),
        }
    try:
        return RDBStorage(url, engine_kwargs=engine_kwargs, skip_table_creation=False, **kwargs)
    except Exception as exc:  # sqlalchemy/psycopg raise many types for unreachable servers
        reason = scrub(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__, url)
        raise ConfigError(f"cannot open storage {mask_password(url)}: {reason[:200]}; check the URL, the server and the credentials") from exc


class _NoInterruptTraceback(logging.Filter):
    """Optuna logs a trial stopped by Ctrl-C (or SIGTERM turned into KeyboardInterrupt) as a
    failure with a traceback; keep the line, drop the traceback (the CLI says "interrupted")."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], KeyboardInterrupt):
            record.exc_info = None
            record.exc_text = None
        return True


def optuna_quiet() -> None:
    """Optuna's per-trial INFO lines and experimental-API warnings are noise in our output."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    for handler in logging.getLogger("optuna").handlers:
        if not any(isinstance(f, _NoInterruptTraceback) for f in handler.filters):
            handler.addFilter(_NoInterruptTraceback())
