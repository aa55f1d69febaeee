"""Reading trials from Optuna's RDB schema with one plain SQL statement instead of the ORM.

``RDBStorage._get_trials`` builds one ORM object per trial, parameter, value and attribute row
(five ``selectinload`` relationships, six statements) and then a ``FrozenTrial`` from them,
parsing every parameter's distribution JSON twice. Every worker reads the study's changed
trials several times per trial (Optuna's ``_CachedStorage`` fetches the unfinished and the new
ones on each ``get_all_trials``), and on a small CPU that work was most of the search service's
per-trial overhead (``benchmarks/bench_overhead.py``). Here one statement (the trials and the
rows of their five child tables in one ``UNION ALL``) returns plain rows; its text is fixed
but for integers (study and trial ids) and ``TrialState`` names, so no SQLAlchemy expression is
built or compiled per read; each distinct distribution JSON is parsed once per process.

The result is the same list of ``FrozenTrial`` that Optuna builds, field for field
(``tests/search_tests/test_trial_reads.py`` compares the two on SQLite and PostgreSQL studies
with every kind of value and state); nothing is written, and the tables are Optuna's own.
"""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Container, Iterable
from typing import Any

import optuna
from optuna import distributions
from optuna.storages._rdb import models
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.engine import Connection

# What the statements here and in ``trial_writes`` were written for and checked against: an
# Optuna release (major.minor), its RDB schema as Optuna records it in the database
# (``version_info.schema_version``, and the alembic revision in ``alembic_version``), which also
# fixes the time-zone convention (datetimes stored naive UTC, read as naive local time:
# ``models.TrialModel.datetime_start``), and two dialects. On anything else the storage uses
# Optuna's own reads and writes (``unsupported``, ``storage.FaultTolerantRDBStorage.fast_sql``).
#
# To admit a new Optuna release: read its changes to ``optuna/storages/_rdb/models.py``,
# ``storage.py`` (``_get_trials``, ``set_trial_state_values``, ``_get_prepared_new_trial``) and
# ``alembic/versions/`` (the trial tables, their enums, the datetime convention); install it and
# run ``tests/search_tests/test_trial_reads.py`` and ``test_batched_writes.py`` (they compare
# these statements with Optuna's ORM on SQLite and PostgreSQL); then add its major.minor here,
# and its schema version and head revision (``RDBStorage.get_head_version()``) if they are new.
# 5.1 (read against 5.0.0): ``models.py`` gained ``Mapped[...]`` annotations and spells out
# ``nullable=True`` where it was the default (the same tables), ``storage.py`` reads the
# heartbeat's ``now()`` with ``scalar_one``; schema version 12 and the alembic head unchanged.
OPTUNA_RELEASES = ("5.0", "5.1")
SCHEMA_VERSIONS = (12,)
ALEMBIC_REVISIONS = ("v3.2.0.a",)
DIALECTS = ("sqlite", "postgresql")
_ISO_TEXT = {
    "sqlite": "CAST({} AS TEXT)",
    "postgresql": "to_char({}, 'YYYY-MM-DD HH24:MI:SS.US')",  # whatever the server's DateStyle
}
_DISTRIBUTIONS: dict[str, distributions.BaseDistribution] = {}
_DISTRIBUTIONS_MAX = 4096

_PARAM, _VALUE, _USER_ATTR, _SYSTEM_ATTR, _INTERMEDIATE_VALUE = range(5)

# one statement for the chosen trials and the rows of their five child tables: (trial id, kind,
# key, number, text, index, order), each table in its insertion order (what the ORM's
# relationships give), the trials themselves last (kind 5: state in key, number in index,
# start and completion as ISO text, which SQLite's columns are anyway)
_READ = """
SELECT trial_id, 0 AS kind, CAST(param_name AS TEXT) AS key, param_value AS num, distribution_json AS txt,
       CAST(NULL AS TEXT) AS txt2, CAST(NULL AS INTEGER) AS idx, param_id AS ord FROM trial_params WHERE trial_id IN ({chosen})
UNION ALL
SELECT trial_id, 1, CAST(NULL AS TEXT), value, CAST(value_type AS TEXT), CAST(NULL AS TEXT), objective, trial_value_id
       FROM trial_values WHERE trial_id IN ({chosen})
UNION ALL
SELECT trial_id, 2, CAST(key AS TEXT), CAST(NULL AS FLOAT), value_json, CAST(NULL AS TEXT), CAST(NULL AS INTEGER), trial_user_attribute_id
       FROM trial_user_attributes WHERE trial_id IN ({chosen})
UNION ALL
SELECT trial_id, 3, CAST(key AS TEXT), CAST(NULL AS FLOAT), value_json, CAST(NULL AS TEXT), CAST(NULL AS INTEGER), trial_system_attribute_id
       FROM trial_system_attributes WHERE trial_id IN ({chosen})
UNION ALL
SELECT trial_id, 4, CAST(NULL AS TEXT), intermediate_value, CAST(intermediate_value_type AS TEXT), CAST(NULL AS TEXT), step, trial_intermediate_value_id
       FROM trial_intermediate_values WHERE trial_id IN ({chosen})
UNION ALL
SELECT trial_id, 5, CAST(state AS TEXT), CAST(NULL AS FLOAT), {start}, {complete}, number, trial_id
       FROM trials WHERE {condition}
ORDER BY 2, 8
"""


def unsupported(conn: Connection) -> str | None:
    """Why the statements of this module and ``trial_writes`` must not be used on ``conn``'s
    database with the installed Optuna (the first mismatch with ``OPTUNA_RELEASES``,
    ``DIALECTS``, ``SCHEMA_VERSIONS``, ``ALEMBIC_REVISIONS``), or ``None`` when they may."""
    found = re.match(r"(\d+)\.(\d+)", optuna.__version__)
    release = f"{found.group(1)}.{found.group(2)}" if found else optuna.__version__
    if release not in OPTUNA_RELEASES:
        return f"Optuna {optuna.__version__} is installed; the trial SQL was checked with Optuna {', '.join(OPTUNA_RELEASES)}"
    if conn.dialect.name not in DIALECTS:
        return f"the database is {conn.dialect.name}; the trial SQL is written for {' and '.join(DIALECTS)}"
    schema = [row[0] for row in conn.exec_driver_sql("SELECT schema_version FROM version_info")]
    if len(schema) != 1 or schema[0] not in SCHEMA_VERSIONS:
        return f"the database records Optuna schema version {', '.join(map(str, schema)) or 'none'}; the trial SQL was checked with {', '.join(map(str, SCHEMA_VERSIONS))}"
    revisions = [row[0] for row in conn.exec_driver_sql("SELECT version_num FROM alembic_version")]
    if len(revisions) != 1 or revisions[0] not in ALEMBIC_REVISIONS:
        return f"the database records alembic revision {', '.join(revisions) or 'none'}; the trial SQL was checked with {', '.join(ALEMBIC_REVISIONS)}"
    return None


def read_trials(
    conn: Connection,
    study_id: int,
    states: Container | None = None,
    included_trial_ids: Iterable[int] = (),
    trial_id_greater_than: int = -1,
    trial_id: int | None = None,
) -> list[FrozenTrial]:
    """The trials of ``study_id`` that ``RDBStorage._get_trials`` returns for the same
    arguments (ordered by trial id), or the one trial ``trial_id`` (then ``[]`` if it does not
    exist). Raises ``KeyError`` like Optuna when the study does not exist. SQLite and
    PostgreSQL only (``DIALECTS``)."""
    if trial_id is not None:
        condition = f"trial_id = {int(trial_id)}"
    else:
        parts = [f"study_id = {int(study_id)}"]
        if states is not None:
            names = [TrialState(s).name for s in states]  # type: ignore[attr-defined]
            parts.append("state IN (" + ", ".join(f"'{name}'" for name in names) + ")" if names else "1 = 0")
        greater = int(trial_id_greater_than)
        included = sorted({int(i) for i in included_trial_ids if i <= greater})
        if included and greater > -1:
            parts.append(f"(trial_id IN ({', '.join(map(str, included))}) OR trial_id > {greater})")
        elif greater > -1:
            parts.append(f"trial_id > {greater}")
        condition = " AND ".join(parts)
    kids: dict[int, tuple[list, list, list, list, list]] = {}
    rows = []
    chosen = f"SELECT trial_id FROM trials WHERE {condition}"
    iso = _ISO_TEXT[conn.dialect.name]
    statement = _READ.format(chosen=chosen, condition=condition, start=iso.format("datetime_start"), complete=iso.format("datetime_complete"))
    for trial, kind, key, number, text, text2, index, _ in conn.exec_driver_sql(statement):
        if kind == 5:
            rows.append((trial, index, key, text, text2))
        else:
            kids.setdefault(trial, ([], [], [], [], []))[kind].append((key, number, text, index))
    if not rows and trial_id is None and conn.exec_driver_sql(f"SELECT 1 FROM studies WHERE study_id = {int(study_id)}").first() is None:
        raise KeyError(models.NOT_FOUND_MSG)
    # (a trial created between the subqueries may have child rows but no row of its own: left out)
    empty: tuple = ((), (), (), (), ())
    return [_frozen(row, *kids.get(row[0], empty)) for row in rows]


def _frozen(row, params, values, user_attrs, system_attrs, intermediate) -> FrozenTrial:
    trial_id, number, state, start, complete = row
    trial_values: list[float] | None = None
    if values:
        trial_values = [0.0] * len(values)
        for _, value, value_type, objective in values:
            trial_values[objective] = _stored(value, value_type)
    dists = {name: _distribution(dist_json) for name, _, dist_json, _ in params}
    return FrozenTrial(
        number=number,
        state=TrialState[state],
        value=None,
        values=trial_values,
        datetime_start=_local(start),
        datetime_complete=_local(complete),
        params={name: dists[name].to_external_repr(float(value)) for name, value, _, _ in params},
        distributions=dists,
        user_attrs={key: json.loads(text) for key, _, text, _ in user_attrs},
        system_attrs={key: json.loads(text) for key, _, text, _ in system_attrs},
        intermediate_values={step: _stored(value, value_type) for _, value, value_type, step in intermediate},
        trial_id=trial_id,
    )


def _distribution(dist_json: str) -> distributions.BaseDistribution:
    """``json_to_distribution``, parsed once per distinct JSON (a study has a handful). The
    object is shared by the trials that use it, as Optuna's own in-memory storages share theirs."""
    found = _DISTRIBUTIONS.get(dist_json)
    if found is None:
        if len(_DISTRIBUTIONS) >= _DISTRIBUTIONS_MAX:
            _DISTRIBUTIONS.clear()
        found = _DISTRIBUTIONS[dist_json] = distributions.json_to_distribution(dist_json)
    return found


def _local(utc: str | None) -> datetime.datetime | None:
    """Stored naive UTC, as text -> naive local time, as ``TrialModel.datetime_start`` returns it."""
    if utc is None:
        return None
    return datetime.datetime.fromisoformat(utc).replace(tzinfo=datetime.UTC).astimezone().replace(tzinfo=None)


def _stored(value: Any, value_type: str) -> float:
    """A stored value and its type's name (both value-type enums of Optuna's schema) -> float."""
    if value_type == "FINITE":
        return float(value)
    return _SPECIAL[value_type]


_SPECIAL = {"INF_POS": float("inf"), "INF_NEG": float("-inf"), "NAN": float("nan")}
