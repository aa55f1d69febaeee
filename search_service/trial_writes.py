"""Writing a trial's rows to Optuna's RDB schema in one transaction of plain SQL statements.

Optuna's storage API writes one value per transaction through the ORM (a trial's claim, its
12 path parameters, its 11 attributes, its two objective values and its state would be some 25
commits of several statements each). Here creating a trial (its row, number, first heartbeat and
stamp: ``create_trial``) is one transaction, a trial's parameters and attributes another, and
finishing a trial (values and state) a third, each a handful of fixed
statements run on the session's connection with the driver's own parameter style: no
SQLAlchemy expression is built or compiled per write, which on a small CPU was a large part of
the per-trial overhead (``benchmarks/bench_overhead.py``).

What is stored is what Optuna's own calls store, row for row
(``tests/search_tests/test_batched_writes.py`` compares the two on SQLite and PostgreSQL, and
``test_fast_sql.py`` the creation, with racing threads);
a finished trial raises ``UpdateFinishedTrialError`` as Optuna does. Like the reads, these
statements are used only where ``trial_reads.unsupported`` finds the Optuna release, schema and
dialect they were checked with (``storage.FaultTolerantRDBStorage.fast_sql``); elsewhere the
storage uses Optuna's calls.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Sequence
from typing import Any

from optuna import distributions
from optuna.storages._rdb import models
from optuna.trial import TrialState
from sqlalchemy.engine import Connection

from search_service.trial_reads import DIALECTS  # noqa: F401 (reads and writes go together)


def _mark(conn: Connection) -> str:
    """The driver's parameter placeholder (sqlite3: ``?``, psycopg: ``%s``)."""
    return "?" if conn.dialect.paramstyle == "qmark" else "%s"


def _marks(conn: Connection, n: int) -> str:
    return "(" + ", ".join([_mark(conn)] * n) + ")"


def trial_state(conn: Connection, trial_id: int, *, for_update: bool = False) -> TrialState:
    """The trial's state (``FOR UPDATE`` on PostgreSQL when asked); ``KeyError`` if none."""
    lock = " FOR UPDATE" if for_update and conn.dialect.name == "postgresql" else ""
    row = conn.exec_driver_sql(f"SELECT state FROM trials WHERE trial_id = {int(trial_id)}{lock}").first()
    if row is None:
        raise KeyError(models.NOT_FOUND_MSG)
    return TrialState[row[0]] if isinstance(row[0], str) else TrialState(row[0])


def create_trial(conn: Connection, study_id: int, start: datetime.datetime, heartbeat: bool, user_attrs: dict[str, Any]) -> tuple[int, int]:
    """A new RUNNING trial of ``study_id`` started at ``start`` (naive local time, as Optuna's
    ``datetime.now()``), with its first heartbeat when asked and ``user_attrs``: the rows
    ``RDBStorage._create_new_trial`` (with ``storage.FaultTolerantRDBStorage``'s heartbeat and
    stamp) writes, in three or four statements instead of the ORM's six and its objects. Returns
    (trial id, number). The caller commits.

    The number is the count of the study's trials before this one, as Optuna counts it, taken in
    the statement that inserts the row: on PostgreSQL after locking the study row (``FOR
    UPDATE``, as Optuna locks it); SQLite runs one writer at a time, and a read before the insert
    would only risk a stale snapshot in WAL mode. So two workers never get one number.
    ``KeyError`` if the study is missing (nothing is committed then)."""
    sid = int(study_id)
    if conn.dialect.name == "postgresql" and conn.exec_driver_sql(f"SELECT study_id FROM studies WHERE study_id = {sid} FOR UPDATE").first() is None:
        raise KeyError(models.NOT_FOUND_MSG)
    utc = start.astimezone(datetime.UTC).replace(tzinfo=None)  # stored naive UTC, as Optuna stores it
    stamp: Any = utc.strftime("%Y-%m-%d %H:%M:%S.%f") if conn.dialect.name == "sqlite" else utc
    mark = _mark(conn)
    trial_id, number = conn.exec_driver_sql(
        "INSERT INTO trials (number, study_id, state, datetime_start) "
        f"VALUES ((SELECT COUNT(*) FROM trials WHERE study_id = {sid}), {sid}, 'RUNNING', {mark}) RETURNING trial_id, number",
        (stamp,),
    ).one()
    if conn.dialect.name != "postgresql" and conn.exec_driver_sql(f"SELECT study_id FROM studies WHERE study_id = {sid}").first() is None:
        raise KeyError(models.NOT_FOUND_MSG)
    if heartbeat:
        conn.exec_driver_sql(f"INSERT INTO trial_heartbeats (trial_id, heartbeat) VALUES ({int(trial_id)}, CURRENT_TIMESTAMP)")
    write_rows(conn, trial_id, {}, user_attrs, {})
    return int(trial_id), int(number)


def write_rows(conn: Connection, trial_id: int, params: dict[str, tuple[float, Any]], user_attrs: dict[str, Any], system_attrs: dict[str, Any]) -> None:
    """Insert new parameters ``{name: (internal value, distribution)}`` and upsert attributes
    of one trial (the caller checked the trial is updatable and commits)."""
    tid = int(trial_id)
    if params:
        rows = [(tid, name, float(value), distributions.distribution_to_json(dist)) for name, (value, dist) in params.items()]
        conn.exec_driver_sql(
            "INSERT INTO trial_params (trial_id, param_name, param_value, distribution_json) VALUES "
            + ", ".join([_marks(conn, 4)] * len(rows)),
            tuple(v for row in rows for v in row),
        )
    for table, attrs in (("trial_user_attributes", user_attrs), ("trial_system_attributes", system_attrs)):
        if attrs:
            values = tuple(v for key, value in attrs.items() for v in (tid, key, json.dumps(value)))
            conn.exec_driver_sql(
                f'INSERT INTO {table} (trial_id, "key", value_json) VALUES '
                + ", ".join([_marks(conn, 3)] * len(attrs))
                + ' ON CONFLICT (trial_id, "key") DO UPDATE SET value_json = excluded.value_json',
                values,
            )


def finish(conn: Connection, trial_id: int, state: TrialState, values: Sequence[float] | None) -> None:
    """Store a finished trial's values (upserted per objective) and its state and completion
    time, as ``RDBStorage.set_trial_state_values`` does for a finished state (the caller checked
    the trial is updatable, holding its row, and commits)."""
    assert state.is_finished()
    tid = int(trial_id)
    if values:
        rows = []
        for objective, value in enumerate(values):
            stored, kind = models.TrialValueModel.value_to_stored_repr(value)
            rows.append((tid, objective, stored, kind.name))
        # the value type is an enum on PostgreSQL: its name as a literal, never a parameter
        mark = _mark(conn)
        conn.exec_driver_sql(
            "INSERT INTO trial_values (trial_id, objective, value, value_type) VALUES "
            + ", ".join(f"({mark}, {mark}, {mark}, '{kind}')" for _, _, _, kind in rows)
            + " ON CONFLICT (trial_id, objective) DO UPDATE SET value = excluded.value, value_type = excluded.value_type",
            tuple(v for row in rows for v in row[:3]),
        )
    complete = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)  # naive UTC, as Optuna stores it
    stamp: Any = complete.strftime("%Y-%m-%d %H:%M:%S.%f") if conn.dialect.name == "sqlite" else complete
    conn.exec_driver_sql(
        f"UPDATE trials SET state = '{state.name}', datetime_complete = {_mark(conn)} WHERE trial_id = {tid}",
        (stamp,),
    )
