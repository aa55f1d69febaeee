"""Where a study lives: SQLite by default, PostgreSQL (or any RDB) for many workers.

The URL comes from ``--storage``, else the ``MRO_STORAGE`` environment variable, else the study
file's ``[search] storage``, else ``sqlite:///runs/NAME/study.db``. Passwords never appear in
output: print ``mask_password(url)``.

Trials are read and written with plain SQL (``trial_reads``, ``trial_writes``: the same rows as
Optuna's ORM, a fraction of the CPU) only where that SQL was checked: the installed Optuna
release, the schema version the database records and the dialect (SQLite, PostgreSQL); anything
else uses Optuna's own storage calls (same results, slower), said once at debug level
(``FaultTolerantRDBStorage.fast_sql``). ``MRO_FAST_SQL=0`` forces Optuna's calls, e.g. to compare
the two in tests and benchmarks (``benchmarks/bench_overhead.py --fallback``).
"""

from __future__ import annotations

import copy
import datetime
import json
import logging
import math
import os
import re
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages._rdb.storage import _create_scoped_session
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, IntegrityError

from search_service.keys import MASK_KEY, PATHS_KEY, STALE_KEY
from search_service.redaction import SecretFilter, install_secret_filter, mask_password, scrub  # noqa: F401 (re-exported)
from search_service.study_file import Study
from search_service.trial_index import MAX_RETRY, trial_mask
from search_service.trial_reads import read_trials, unsupported
from search_service.trial_writes import create_trial, finish, trial_state, write_rows
from supernet.errors import ConfigError, MROError

log = logging.getLogger("mro_search")

ENV_VAR = "MRO_STORAGE"
HEARTBEAT_INTERVAL = 5  # seconds between a running trial's heartbeats
GRACE_PERIOD = 20  # a trial with no heartbeat for this long is failed (and retried)
STALE_CHECK_S = 1.0  # a process looks for stale trials at most this often
CREATED_FRESH_S = 1.0  # how long ``get_trial`` may return a trial this process just created unread


def resolve_url(study: Study | None, cli_url: str | None = None, *, name: str | None = None) -> str:
    """``--storage``, else ``$MRO_STORAGE``, else the study file's ``[search] storage``, else
    ``sqlite:///RUN_DIR/study.db`` (``runs/NAME`` for a study known only by ``name``). Creates
    nothing: only a command that creates a study makes the database (``open_storage``)."""
    url = cli_url or os.environ.get(ENV_VAR) or (study.search.storage if study is not None else "")
    if not url:
        run_dir = study.run_dir if study is not None else Path("runs") / str(name)
        url = f"sqlite:///{(run_dir / 'study.db').resolve()}"
    return url


def check_reachable(url: str) -> None:
    """Parse the URL and, for a database server, connect once (credentials included); creates
    nothing. Raises ``ConfigError`` in one line, password masked."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as exc:
        raise ConfigError(f"storage URL {_invalid_shown(url)} is not a valid database URL (e.g. sqlite:///study.db or postgresql+psycopg://user@host/db)") from exc
    if parsed.get_backend_name() == "sqlite":
        return
    from sqlalchemy import create_engine

    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    kwargs = {"connect_args": {"connect_timeout": 10}} if parsed.get_backend_name() == "postgresql" else {}
    try:
        engine = create_engine(parsed, **kwargs)
        try:
            with engine.connect():
                pass
        finally:
            engine.dispose()
    except Exception as exc:
        reason = scrub(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__, url)
        raise ConfigError(f"cannot open storage {mask_password(url)}: {reason[:200]}; check the URL, the server and the credentials") from exc


class NoDatabase(ConfigError):
    """The storage URL names an SQLite file that does not exist (and nothing may create it)."""


OPTUNA_TABLES = ("studies", "version_info", "trials")


def _check_optuna_database(url: str, parsed, engine_kwargs: dict[str, Any]) -> bool:
    """Whether the database holds Optuna's tables; without creating anything. An SQLite file
    that does not exist raises ``NoDatabase`` (connecting would create it)."""
    from sqlalchemy import create_engine, inspect

    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if not database or database == ":memory:":
            return False
        if not Path(database).is_file():
            raise NoDatabase(f"no study database at {database}")
        immutable = "&immutable=1" if not _writable(Path(database)) else ""  # no -shm beside a read-only file
        url = f"sqlite:///file:{Path(database).resolve()}?mode=ro{immutable}&uri=true"
        engine_kwargs = {}
    engine = create_engine(url, **engine_kwargs)
    try:
        names = set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
    return all(t in names for t in OPTUNA_TABLES)


def _invalid_shown(url: str) -> str:
    """How an unparsable storage URL is named in its error: its scheme only (``'postgresql://...'``),
    since what follows may be a password (a URL missing its ``@host``, a password pasted alone)."""
    scheme = re.match(r"[A-Za-z][A-Za-z0-9+.-]{0,30}://", url)
    return f"'{scheme.group(0)}...'" if scheme else "(not shown: it has no scheme://)"


def sqlite_file(url: str) -> Path | None:
    """The database file of a SQLite URL; None for other URLs, in-memory SQLite and anything
    that does not parse."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        return None
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def open_storage(url: str, *, heartbeat: bool = True, create: bool = True) -> RDBStorage:
    """An ``RDBStorage`` with heartbeats, retries of stale trials and ``pool_pre_ping``
    (:class:`FaultTolerantRDBStorage`, :class:`RetryStaleTrialCallback`).

    With ``create=False`` (every command but the one that creates a study) this makes no
    database file and no table: the database must already be an Optuna database; a missing
    SQLite file raises ``NoDatabase``, a database without Optuna's tables a ``ConfigError``.
    With ``create`` (the default, as Optuna's ``RDBStorage``) both are made as needed."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as exc:
        raise ConfigError(f"storage URL {_invalid_shown(url)} is not a valid database URL (e.g. sqlite:///study.db or postgresql+psycopg://user@host/db)") from exc
    engine_kwargs: dict = {"pool_pre_ping": True}
    # WAL is a property of the file: switched on only in a database file this call creates (an
    # existing file keeps its mode; another application's database is not rewritten)
    file = sqlite_file(url)
    new_sqlite_file = file is not None and not file.exists()
    if parsed.get_backend_name() == "sqlite":
        engine_kwargs["connect_args"] = {"timeout": 60}
        if file is not None and file.is_file() and not _writable(file):
            # a read-only database is read as such: SQLite would otherwise make -wal and -shm
            # files beside it (a WAL database needs them to be read), and leave them there
            url = f"sqlite:///file:{file.resolve()}?mode=ro&immutable=1&uri=true"
        if create and parsed.database and parsed.database != ":memory:":
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
            "heartbeat_stale_trial_callback": RetryStaleTrialCallback(max_retry=MAX_RETRY),
        }
    try:
        if not create and not _check_optuna_database(url, parsed, engine_kwargs):
            raise ConfigError(
                f"storage {mask_password(url)} is not an Optuna database (no Optuna tables); "
                "point --storage at the database that holds the study"
            )
        storage = _open_rdb(url, parsed, engine_kwargs, create, kwargs)
    except MROError:
        raise
    except Exception as exc:  # sqlalchemy/psycopg raise many types for unreachable servers
        reason = scrub(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__, url)
        raise ConfigError(f"cannot open storage {mask_password(url)}: {reason[:200]}; check the URL, the server and the credentials") from exc
    _fast_commits(storage, parsed.get_backend_name(), parsed.database, wal=create and new_sqlite_file)
    return storage


def _open_rdb(url: str, parsed, engine_kwargs: dict[str, Any], create: bool, kwargs: dict[str, Any]) -> RDBStorage:
    """The storage; two processes making Optuna's tables in one new database at once (two ``run``s
    of a new study) collide ("table ... already exists", a duplicate alembic version): the one
    that lost opens the tables the other made."""
    for attempt in range(5):
        try:
            return FaultTolerantRDBStorage(url, engine_kwargs=engine_kwargs, skip_table_creation=not create, **kwargs)
        except Exception:
            if not create or attempt == 4:
                raise
            time.sleep(0.2 * (attempt + 1))
            if _check_optuna_database(url, parsed, engine_kwargs):
                create = False
    raise AssertionError("unreachable")


def _writable(file: Path) -> bool:
    """Whether this process may write ``file`` (also for root: an immutable file, a read-only mount)."""
    try:
        with open(file, "r+b"):
            return True
    except OSError:
        return False


def _fast_commits(storage: RDBStorage, backend: str, database: str | None, *, wal: bool = True) -> None:
    """Make the many small commits of a trial cheap (``benchmarks/bench_overhead.py``).

    A trial commits about 20 small transactions (its parameters one by one, its attributes,
    its state). Waiting for the disk on each dominated the per-trial time:

    * SQLite: write-ahead log with ``synchronous=NORMAL``: commits no longer fsync (checkpoints
      do); an application crash loses nothing, a power loss may lose the last commits but never
      corrupts the file. Readers no longer block the writer, which also helps local workers.
      (WAL needs a local file system; use PostgreSQL for workers on several machines.)
    * PostgreSQL: ``synchronous_commit = off`` for this service's sessions only: a commit
      returns before its WAL record is flushed; a server crash may lose the last fraction of a
      second of commits (a trial then looks unfinished and is retried), never consistency.
    """
    from sqlalchemy import event

    if backend == "sqlite":
        # the journal mode is kept in the file: set when the database is made (``wal``), never
        # changed by a command that may not write to it (another application's file)
        file_db = wal and bool(database) and database != ":memory:"

        def on_connect(dbapi_connection, _record) -> None:
            cursor = dbapi_connection.cursor()
            try:
                if file_db:
                    cursor.execute("PRAGMA journal_mode=WAL")
                # NORMAL is safe in WAL mode only (in rollback mode a power loss may corrupt)
                if str(cursor.execute("PRAGMA journal_mode").fetchone()[0]).lower() == "wal":
                    cursor.execute("PRAGMA synchronous=NORMAL")
            except Exception:  # e.g. a read-only file: keep SQLite's defaults
                pass
            finally:
                cursor.close()

    elif backend == "postgresql":

        def on_connect(dbapi_connection, _record) -> None:
            cursor = dbapi_connection.cursor()
            try:
                cursor.execute("SET SESSION synchronous_commit TO OFF")
                dbapi_connection.commit()
            except Exception:
                dbapi_connection.rollback()
            finally:
                cursor.close()

    else:
        return
    event.listen(storage.engine, "connect", on_connect)
    storage.engine.dispose()  # connections opened while creating the tables get the settings too


def set_trial_attrs(
    storage, trial_id: int, user_attrs: dict[str, Any], system_attrs: dict[str, Any] | None = None, *, params: dict[str, tuple[float, Any]] | None = None
) -> None:
    """Write several trial attributes, and parameters ``{name: (internal value, distribution)}``
    the trial does not have yet, at once: one transaction, not one per value.

    Optuna's storage API writes one value per transaction (a commit and four statements each).
    On a :class:`FaultTolerantRDBStorage` (also behind Optuna's caching wrapper) whose
    ``fast_sql`` holds, this writes the parameters with one multi-row insert and the attributes
    with one multi-row upsert per table, the statement Optuna itself uses. Any other storage, a
    parameter the trial already has (then nothing of the batch is written) or a failure of that
    SQL (a warning, once: ``FaultTolerantRDBStorage.fast_sql_failed``) falls back to the public
    one-by-one calls. A finished trial raises ``UpdateFinishedTrialError``, a missing one
    ``KeyError``, an unreachable database its error, as Optuna's calls do.
    """
    system_attrs = system_attrs or {}
    params = params or {}
    if not _write_trial_rows(storage, trial_id, params, user_attrs, system_attrs):
        for name, (value, dist) in params.items():
            storage.set_trial_param(trial_id, name, value, dist)
        for key, value in user_attrs.items():
            storage.set_trial_user_attr(trial_id, key, value)
        for key, value in system_attrs.items():
            storage.set_trial_system_attr(trial_id, key, value)


def _write_trial_rows(storage, trial_id: int, params: dict[str, tuple[float, Any]], user_attrs: dict[str, Any], system_attrs: dict[str, Any]) -> bool:
    """Write the rows with ``trial_writes`` in one transaction: True, or False when the caller
    must use Optuna's calls instead (nothing of the batch written)."""
    backend = getattr(storage, "_backend", storage)
    if not isinstance(backend, FaultTolerantRDBStorage) or not backend.fast_sql:
        return False
    backend._forget_created(trial_id)
    session = backend.scoped_session()
    try:
        conn = session.connection()
        backend.check_trial_is_updatable(trial_id, trial_state(conn, trial_id))  # raises for a finished trial, as Optuna does
        write_rows(conn, trial_id, params, user_attrs, system_attrs)
        session.commit()
        return True
    except (optuna.exceptions.UpdateFinishedTrialError, KeyError):
        session.rollback()
        raise
    except IntegrityError:  # a parameter the trial already has: Optuna's call checks it against the new one
        session.rollback()
        return False
    except Exception as exc:
        session.rollback()
        if not backend.fast_sql_failed("writing a trial's parameters and attributes", exc):
            raise
        return False
    except BaseException:  # Ctrl-C mid-write: leave the session clean for Optuna to fail the trial
        session.rollback()
        raise


class _NoInterruptTraceback(logging.Filter):
    """Optuna logs a trial stopped by Ctrl-C (or SIGTERM turned into KeyboardInterrupt) as a
    failure: a warning with the traceback, then "Trial N failed with value None.". A stop is not
    a failure, and the CLI says "interrupted" in one line: drop both records (the trial is FAIL
    in the study, where ``resume`` finds it)."""

    _FAILED = re.compile(r"Trial (\d+) failed with ")

    def __init__(self) -> None:
        super().__init__()
        self._interrupted: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        found = self._FAILED.match(str(record.msg))
        if record.exc_info and isinstance(record.exc_info[1], KeyboardInterrupt):
            if found:
                self._interrupted.add(found.group(1))
            return False
        if found and found.group(1) in self._interrupted and str(record.msg).startswith(f"Trial {found.group(1)} failed with value"):
            self._interrupted.discard(found.group(1))
            return False
        return True


class _NoRetriedQueryWarning(logging.Filter):
    """Optuna warns "Caught an error from sqlalchemy: ..." (several lines) when a query of
    trials fails, taking it for too many SQL variables, and retries it another way. When the
    database is unreachable that retry fails too and the worker says so in one line; when it
    was the variable limit, the retry works. Either way the warning says nothing useful."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Caught an error from sqlalchemy")


def optuna_quiet() -> None:
    """Optuna's per-trial INFO lines and experimental-API warnings are noise in our output."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    install_secret_filter("optuna")
    for handler in logging.getLogger("optuna").handlers:
        for kind in (_NoInterruptTraceback, _NoRetriedQueryWarning):
            if not any(isinstance(f, kind) for f in handler.filters):
                handler.addFilter(kind())


# --- faults: killed workers, a database that goes away -------------------------------------------

OUTAGE_RETRIES = 12  # consecutive failed turns a worker rides out (back-off 1, 2, 4, 8, 10, ... s)


class StorageError(MROError):
    """The storage stayed unreachable for longer than a worker waits."""


class StorageOutage(BaseException):
    """Raised out of an objective when the storage is unreachable.

    Not an ``Exception``, so Optuna neither catches it nor tries to write the trial as FAIL (that
    write cannot reach the database either, and a FAIL written this way is never retried): the
    trial stays RUNNING, its heartbeat stops, and after the grace period a worker fails it and
    ``RetryStaleTrialCallback`` queues it again, exactly as for the trial of a killed worker.
    """


def is_storage_outage(exc: BaseException | None) -> bool:
    """Whether ``exc`` comes from the storage being unreachable: a refused or dropped connection,
    a server shutting down or restarting, a locked SQLite file, a deadlock. Optuna wraps such
    errors (``StorageInternalError``) and can raise another one while handling them, so the
    whole chain (``__cause__``, ``__context__``) is searched."""
    from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError

    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, StorageOutage | OperationalError | InterfaceError | DisconnectionError):
            return True
        if isinstance(exc, DBAPIError) and exc.connection_invalidated:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def outage_reason(exc: BaseException, url: str) -> str:
    """The database's own words for an outage in ``exc``'s chain (the driver's message, else the
    deepest message), first line only, password removed."""
    from sqlalchemy.exc import DBAPIError

    messages: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        source = current.orig if isinstance(current, DBAPIError) and current.orig is not None else current
        text = str(source).strip()
        if text and text not in ("()", "None"):
            if source is not current:  # the driver's message: the most precise one
                return scrub(text.splitlines()[0], url)[:200]
            messages.append(text.splitlines()[0])
        current = current.__cause__ or current.__context__
    return scrub(messages[-1] if messages else type(exc).__name__, url)[:200]


FAST_SQL_ENV = "MRO_FAST_SQL"  # "0" (or false, no, off): use Optuna's storage calls, never the trial SQL
_FALLBACK_SAID: set[str] = set()  # reasons for Optuna's calls already logged by this process


class FaultTolerantRDBStorage(RDBStorage):
    """Optuna's ``RDBStorage`` with three changes that keep a study whole under faults, and
    trial reads and writes in plain SQL (``trial_reads``, ``trial_writes``: the same rows, a
    fraction of the CPU).

    The plain SQL is tied to the Optuna release, schema and time-zone convention it was checked
    with. Whether this storage uses it is decided once, when it opens, in ``fast_sql`` (and why
    not in ``fast_sql_reason``); every override below goes by it, and without it uses the base
    class's implementation or Optuna's public calls. A failure of the SQL that is neither an
    unreachable database nor one of Optuna's own errors is a warning, once, and switches this
    storage to Optuna's calls (``fast_sql_failed``).

    * Every RUNNING trial has a heartbeat from the moment it exists. Optuna writes the first
      heartbeat only when the objective starts, and never fails a RUNNING trial without one: a
      worker killed (or cut off from the database) while its sampler was still proposing left a
      trial RUNNING forever, and the study never reached its budget. The heartbeat row is added
      in the transaction that creates the trial (no extra commit; without ``fast_sql``, by
      Optuna's calls right after it); a WAITING trial (a retry) gets one when a worker takes it.
    * A trial about to be failed as stale is marked ``mro:stale`` first (``STALE_KEY``), so that
      the budget keeps its retry's place until the retry is queued (``search``'s docstring).
    * A heartbeat that cannot be written (the database is restarting) is skipped, not fatal to
      the heartbeat thread (which used to die with a traceback, so that a trial that outlived
      the outage was later failed as stale while its worker still ran it).
    """

    stamp: dict[str, Any] = {}  # user attributes of every trial this process starts (``stamp_trials``)
    fast_sql: bool = False  # trials read and written with ``trial_reads`` / ``trial_writes``
    fast_sql_reason: str | None = "not checked"  # why not (None when ``fast_sql``)
    _fresh_beats: dict[int, float] | None = None  # trial id -> when its first beat was written here
    _stale_checked: dict[int, float] | None = None  # study id -> when this process last looked for stale trials
    # (the trial as a read would return it, when): ``ask``'s new trial, which ``get_trial``
    # returns once instead of reading it back (``_created_trial``)
    _created: tuple[FrozenTrial, float] | None = None

    def __init__(self, url: str, *args: Any, **kwargs: Any) -> None:
        # Optuna fills the URL as a str.format template ({SCHEMA_VERSION}): a brace in a password
        # ("p{w}") raised KeyError('w'), whose message carried the password past the masking.
        # Braces are doubled, so format() gives the URL back exactly as the user wrote it.
        super().__init__(url.replace("{", "{{").replace("}", "}}"), *args, **kwargs)
        if os.environ.get(FAST_SQL_ENV, "").strip().lower() in ("0", "false", "no", "off"):
            reason: str | None = f"{FAST_SQL_ENV}={os.environ[FAST_SQL_ENV]}"
        else:
            try:
                with self.engine.connect() as conn:
                    reason = unsupported(conn)
            except Exception as exc:
                if is_storage_outage(exc) and not _schema_error(exc):
                    raise
                reason = f"the schema version could not be read ({type(exc).__name__})"
        self.fast_sql, self.fast_sql_reason = reason is None, reason
        if reason is not None and reason not in _FALLBACK_SAID:
            _FALLBACK_SAID.add(reason)
            log.debug(f"trials are read and written with Optuna's storage calls (slower than mro-search's SQL): {reason}")

    def fast_sql_failed(self, what: str, exc: BaseException) -> bool:
        """Called with an exception from the plain SQL while doing ``what``: False when the caller
        must raise it (an unreachable database: workers ride that out; Optuna's own errors), else
        warn once and use Optuna's calls from now on (True: the caller falls back)."""
        if isinstance(exc, KeyError | optuna.exceptions.UpdateFinishedTrialError):
            return False
        if is_storage_outage(exc) and not _schema_error(exc):
            return False
        source = exc.__cause__ if isinstance(exc, optuna.exceptions.StorageInternalError) and exc.__cause__ else exc
        first = str(source).strip().splitlines()[0] if str(source).strip() else ""
        reason = scrub(f"{type(source).__name__}: {first}"[:300], self.url)
        if self.fast_sql:
            self.fast_sql, self.fast_sql_reason = False, f"{what} failed: {reason}"
            log.warning(f"mro-search's trial SQL failed while {what} ({reason}); using Optuna's storage calls from now on (slower)")
        return True

    def stamp_trials(self, user_attrs: dict[str, Any]) -> None:
        """Give every trial this storage starts (``ask``, or a WAITING trial taken) these user
        attributes, written in the transaction that creates the trial: e.g. which worker runs
        it, known from the trial's first moment without a commit of its own."""
        self.stamp = dict(user_attrs)

    def _create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> FrozenTrial:
        if template_trial is None and self.fast_sql:
            # ``ask``'s new trial (a template, from ``enqueue_trial`` or a retry, goes to Optuna):
            # its row, first beat and stamp in one transaction of plain SQL (``trial_writes``)
            start = datetime.datetime.now()
            try:
                with _create_scoped_session(self.scoped_session) as session:
                    trial_id, number = create_trial(session.connection(), study_id, start, self.heartbeat_interval is not None, self.stamp)
            except Exception as exc:
                # Optuna's creation below makes the trial (retrying a lock or a deadlock, as it
                # does) or raises; a failure of the SQL itself also switches this storage to
                # Optuna's calls (a warning, once)
                self.fast_sql_failed("creating a trial", exc)
            else:
                if self.heartbeat_interval is not None:
                    if self._fresh_beats is None:
                        self._fresh_beats = {}
                    self._fresh_beats[trial_id] = time.monotonic()
                created = FrozenTrial(
                    number=number,
                    state=TrialState.RUNNING,
                    value=None,
                    values=None,
                    datetime_start=start,
                    datetime_complete=None,
                    params={},
                    distributions={},
                    user_attrs={},
                    system_attrs={},
                    intermediate_values={},
                    trial_id=trial_id,
                )
                as_read = copy.deepcopy(created)  # ours alone: returned once, unshared
                as_read.user_attrs = dict(self.stamp)  # the stamp's rows went in with the trial's
                self._created = (as_read, time.monotonic())
                return created
        trial = super()._create_new_trial(study_id, template_trial)
        if not self.fast_sql and trial.state == TrialState.RUNNING:
            # without ``_get_prepared_new_trial``'s rows: the first beat and the stamp right after
            if self.heartbeat_interval is not None:
                self.record_heartbeat(trial._trial_id)
            if self.stamp:
                set_trial_attrs(self, trial._trial_id, self.stamp)
        return trial

    def _get_prepared_new_trial(self, study_id, template_trial, session):  # type: ignore[override]
        trial = super()._get_prepared_new_trial(study_id, template_trial, session)
        if self.fast_sql and trial.state == TrialState.RUNNING:
            from optuna.storages._rdb import models

            if self.heartbeat_interval is not None:
                session.add(models.TrialHeartbeatModel(trial_id=trial.trial_id))
                if self._fresh_beats is None:
                    self._fresh_beats = {}
                self._fresh_beats[trial.trial_id] = time.monotonic()
            for key, value in self.stamp.items():
                session.add(models.TrialUserAttributeModel(trial_id=trial.trial_id, key=key, value_json=json.dumps(value)))
        return trial

    def _created_trial(self, trial_id: int) -> FrozenTrial | None:
        """The trial this storage has just created, as a read would return it, once: ``ask``
        creates a trial and at once reads it back (``optuna.Trial``), a round trip that can only
        return what the creation wrote (its row, its stamp). Only for the next ``get_trial`` of
        that trial within ``CREATED_FRESH_S``, and only if nothing was written to it meanwhile:
        after that, or for any other trial, ``get_trial`` reads."""
        created, self._created = self._created, None
        if created is None or created[0]._trial_id != trial_id or time.monotonic() - created[1] > CREATED_FRESH_S:
            return None
        return created[0]

    def _forget_created(self, trial_id: int) -> None:
        """Called by every write to a trial (``_write_trial_rows`` for the attributes and
        parameters written in plain SQL, the overrides below for the rest)."""
        if self._created is not None and self._created[0]._trial_id == trial_id:
            self._created = None

    def _set_trial_param(self, trial_id, param_name, param_value_internal, distribution, previous_distribution) -> None:  # type: ignore[override]
        self._forget_created(trial_id)
        super()._set_trial_param(trial_id, param_name, param_value_internal, distribution, previous_distribution)

    def set_trial_intermediate_value(self, trial_id: int, step: int, intermediate_value: float) -> None:
        self._forget_created(trial_id)
        super().set_trial_intermediate_value(trial_id, step, intermediate_value)

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        # one upsert in one transaction (``trial_writes``); a sampler's claim is one per trial
        if not _write_trial_rows(self, trial_id, {}, {}, {key: value}):
            super().set_trial_system_attr(trial_id, key, value)

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        if not _write_trial_rows(self, trial_id, {}, {key: value}, {}):
            super().set_trial_user_attr(trial_id, key, value)

    def set_trial_state_values(self, trial_id: int, state: TrialState, values=None) -> bool:  # type: ignore[override]
        self._forget_created(trial_id)
        if state.is_finished() and self.fast_sql:
            # a trial's end (``tell``): values and state in a few plain statements (``trial_writes``)
            try:
                with _create_scoped_session(self.scoped_session) as session:
                    conn = session.connection()
                    self.check_trial_is_updatable(trial_id, trial_state(conn, trial_id, for_update=True))
                    finish(conn, trial_id, state, values)
                return True
            except IntegrityError:
                return False  # as Optuna's call
            except Exception as exc:
                if not self.fast_sql_failed("finishing a trial", exc):
                    raise
        changed = super().set_trial_state_values(trial_id, state, values)
        if changed and state == TrialState.RUNNING:  # a WAITING trial taken by a worker
            if self.heartbeat_interval is not None:
                self.record_heartbeat(trial_id)
            if self.stamp:
                set_trial_attrs(self, trial_id, self.stamp)
        return changed

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        # Optuna looks for stale trials as every trial starts: with trials of milliseconds,
        # once a second is plenty (a trial goes stale after GRACE_PERIOD seconds without a beat)
        now = time.monotonic()
        if self._stale_checked is None:
            self._stale_checked = {}
        if now - self._stale_checked.get(study_id, -math.inf) < STALE_CHECK_S:
            return []
        self._stale_checked[study_id] = now
        # mark each stale trial before Optuna fails it: between the failure and the queueing of
        # its retry, the budget keeps the retry's place (trial_index.TrialIndex.places_before)
        stale = super()._get_stale_trial_ids(study_id)
        for trial_id in stale:
            try:
                self.set_trial_system_attr(trial_id, STALE_KEY, True)
            except optuna.exceptions.UpdateFinishedTrialError:
                pass  # another worker failed it first
        return stale

    def _get_trials(self, study_id, states, included_trial_ids, trial_id_greater_than):  # type: ignore[override]
        # the same trials as Optuna's ORM read, several times faster (``trial_reads``)
        if self.fast_sql:
            try:
                with _create_scoped_session(self.scoped_session) as session:
                    return read_trials(session.connection(), study_id, states, included_trial_ids, trial_id_greater_than)
            except Exception as exc:
                if not self.fast_sql_failed("reading trials", exc):
                    raise
        return super()._get_trials(study_id, states, included_trial_ids, trial_id_greater_than)

    def get_trial(self, trial_id: int) -> FrozenTrial:
        if self.fast_sql:
            created = self._created_trial(trial_id)
            if created is not None:
                return created
            try:
                with _create_scoped_session(self.scoped_session) as session:
                    found = read_trials(session.connection(), -1, trial_id=trial_id)
            except Exception as exc:
                if not self.fast_sql_failed("reading a trial", exc):
                    raise
            else:
                if not found:
                    from optuna.storages._rdb.models import NOT_FOUND_MSG

                    raise KeyError(NOT_FOUND_MSG)
                return found[0]
        return super().get_trial(trial_id)

    def record_heartbeat(self, trial_id: int) -> None:
        # the beat Optuna's heartbeat thread writes as it starts, right after ``ask`` created the
        # trial with its first beat (``_get_prepared_new_trial``): skipped, a transaction less
        # per trial; the thread's next beats (every HEARTBEAT_INTERVAL) are written as usual
        fresh = self._fresh_beats.pop(trial_id, None) if self._fresh_beats else None
        if fresh is not None and time.monotonic() - fresh < 1.0:
            return
        try:
            super().record_heartbeat(trial_id)
        except Exception as exc:
            if not is_storage_outage(exc):
                raise
            log.debug(f"heartbeat of trial id {trial_id} not written (storage unreachable); the next one retries")


def _schema_error(exc: BaseException) -> bool:
    """Whether ``exc`` says a table or column the SQL names does not exist. SQLite reports that as
    an ``OperationalError``, which otherwise means the file is locked or unreachable
    (``is_storage_outage``); PostgreSQL as a ``ProgrammingError``."""
    text = str(exc.__cause__ if isinstance(exc, optuna.exceptions.StorageInternalError) and exc.__cause__ else exc)
    return any(words in text for words in ("no such table", "no such column", "has no column named"))


class RetryStaleTrialCallback(RetryHeartbeatStaleTrialCallback):
    """Optuna's retry of a heartbeat-stale trial, which keeps the trial's mask.

    Optuna queues the retry with the stale trial's *parameters*. A worker killed after its
    sampler claimed a mask (trial system attribute ``mro:mask``) but before the path parameters
    were written would lose that mask: the retry would get no or some parameters and propose
    another mask. Here the retry gets the claimed mask as its parameters, unless another live
    trial holds that mask by now (then the retry proposes a fresh one, and its stale claim is
    dropped so that the waiting retry does not block the mask).
    """

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        trial = copy.deepcopy(trial)
        # the retry is not stale itself (a retry that later fails for another reason must not
        # keep a place in the budget)
        trial.system_attrs = {k: v for k, v in trial.system_attrs.items() if k != STALE_KEY}
        try:
            trial = _with_claimed_mask(study, trial)
        except Exception as exc:  # never lose the retry itself over this
            if is_storage_outage(exc):
                raise
            log.debug(f"retry of trial {trial.number}: claimed mask not applied ({exc!r})")
        super().__call__(study, trial)


def _with_claimed_mask(study: optuna.Study, trial: FrozenTrial) -> FrozenTrial:
    from optuna.distributions import CategoricalDistribution

    paths = study._storage.get_study_system_attrs(study._study_id).get(PATHS_KEY)
    if not paths or all(name in trial.params for name in paths):
        return trial
    claimed = trial.system_attrs.get(MASK_KEY)
    mask = tuple(int(c) for c in claimed) if isinstance(claimed, str) and len(claimed) == len(paths) and set(claimed) <= {"0", "1"} else None
    agrees = mask is not None and any(mask) and all(int(trial.params[p]) == b for p, b in zip(paths, mask) if p in trial.params)
    if agrees:
        live = study._storage.get_all_trials(study._study_id, deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING, TrialState.COMPLETE))
        agrees = not any(t.number != trial.number and trial_mask(t, paths) == mask for t in live)
    trial = copy.deepcopy(trial)
    if agrees:
        bit = CategoricalDistribution((0, 1))
        trial.params = {**trial.params, **dict(zip(paths, mask))}
        trial.distributions = {**trial.distributions, **{p: bit for p in paths}}
    else:
        trial.system_attrs = {k: v for k, v in trial.system_attrs.items() if k != MASK_KEY}
    return trial
