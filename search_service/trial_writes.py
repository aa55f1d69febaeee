"""Writing a trial's rows to Optuna's RDB schema in one transaction of plain SQL statements.

Optuna's storage API writes one value per transaction through the ORM (a trial's claim, its
12 path parameters, its 11 attributes, its two objective values and its state would be some 25
commits of several statements each). Here a trial's parameters and attributes are one
transaction, and finishing a trial (values and state) another, each a handful of fixed
statements run on the session's connection with the driver's own parameter style: no
SQLAlchemy expression is built or compiled per write, which on a small CPU was a large part of
the per-trial overhead (``benchmarks/bench_overhead.py``).

What is stored is what Optuna's own calls store, row for row
(``tests/search_tests/test_batched_writes.py`` compares the two on SQLite and PostgreSQL);
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
