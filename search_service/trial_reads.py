"""Reading trials from Optuna's RDB schema with two plain SQL statements instead of the ORM.

``RDBStorage._get_trials`` builds one ORM object per trial, parameter, value and attribute row
(five ``selectinload`` relationships, six statements) and then a ``FrozenTrial`` from them,
parsing every parameter's distribution JSON twice. Every worker reads the study's changed
trials several times per trial (Optuna's ``_CachedStorage`` fetches the unfinished and the new
ones on each ``get_all_trials``), and on a small CPU that work was most of the search service's
per-trial overhead (``benchmarks/bench_overhead.py``). Here two statements (the trials, then
the rows of all five child tables in one ``UNION ALL``) return plain rows; their text is fixed
but for integers (study and trial ids) and ``TrialState`` names, so no SQLAlchemy expression is
built or compiled per read; each distinct distribution JSON is parsed once per process.

The result is the same list of ``FrozenTrial`` that Optuna builds, field for field
(``tests/search_tests/test_trial_reads.py`` compares the two on SQLite and PostgreSQL studies
with every kind of value and state); nothing is written, and the tables are Optuna's own.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Container, Iterable
from typing import Any

from optuna import distributions
from optuna.storages._rdb import models
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.engine import Connection

_DISTRIBUTIONS: dict[str, distributions.BaseDistribution] = {}
_DISTRIBUTIONS_MAX = 4096

_PARAM, _VALUE, _USER_ATTR, _SYSTEM_ATTR, _INTERMEDIATE_VALUE = range(5)

# the rows of the five child tables of the chosen trials: (trial id, kind, key, number, text,
# index), in each table's insertion order (what the ORM's relationships give)
_CHILDREN = """
SELECT trial_id, 0 AS kind, CAST(param_name AS TEXT) AS key, param_value AS num, distribution_json AS txt,
       CAST(NULL AS INTEGER) AS idx, param_id AS ord FROM trial_params WHERE trial_id IN ({chosen})
UNION ALL
SELECT trial_id, 1, CAST(NULL AS TEXT), value, CAST(value_type AS TEXT), objective, trial_value_id
       FROM trial_values WHERE trial_id IN ({chosen})
UNION ALL
SELECT trial_id, 2, CAST(key AS TEXT), CAST(NULL AS FLOAT), value_json, CAST(NULL AS INTEGER), trial_user_attribute_id
       FROM trial_user_attributes WHERE trial_id IN ({chosen})
UNION ALL
SELECT trial_id, 3, CAST(key AS TEXT), CAST(NULL AS FLOAT), value_json, CAST(NULL AS INTEGER), trial_system_attribute_id
       FROM trial_system_attributes WHERE trial_id IN ({chosen})
UNION ALL
SELECT trial_id, 4, CAST(NULL AS TEXT), intermediate_value, CAST(intermediate_value_type AS TEXT), step, trial_intermediate_value_id
       FROM trial_intermediate_values WHERE trial_id IN ({chosen})
ORDER BY 2, 7
"""


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
    exist). Raises ``KeyError`` like Optuna when the study does not exist."""
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
    rows = conn.exec_driver_sql(f"SELECT trial_id, number, state, datetime_start, datetime_complete FROM trials WHERE {condition} ORDER BY trial_id").fetchall()
    if not rows:
        if trial_id is None and conn.exec_driver_sql(f"SELECT 1 FROM studies WHERE study_id = {int(study_id)}").first() is None:
            raise KeyError(models.NOT_FOUND_MSG)
        return []
    kids: dict[int, tuple[list, list, list, list, list]] = {row[0]: ([], [], [], [], []) for row in rows}
    chosen = f"SELECT trial_id FROM trials WHERE {condition}"
    for trial, kind, key, number, text, index, _ in conn.exec_driver_sql(_CHILDREN.format(chosen=chosen)):
        found = kids.get(trial)
        if found is not None:  # a trial created between the two statements is not in ``rows``
            found[kind].append((key, number, text, index))
    return [_frozen(row, *kids[row[0]]) for row in rows]


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
        state=TrialState[state] if isinstance(state, str) else TrialState(state),
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


def _local(utc: datetime.datetime | str | None) -> datetime.datetime | None:
    """Stored naive UTC (SQLite returns it as text) -> naive local time, as
    ``TrialModel.datetime_start`` returns it."""
    if utc is None:
        return None
    if isinstance(utc, str):
        utc = datetime.datetime.fromisoformat(utc)
    return utc.replace(tzinfo=datetime.timezone.utc).astimezone().replace(tzinfo=None)


def _stored(value: Any, value_type: str) -> float:
    """A stored value and its type's name (both value-type enums of Optuna's schema) -> float."""
    if value_type == "FINITE":
        return float(value)
    return _SPECIAL[value_type]


_SPECIAL = {"INF_POS": float("inf"), "INF_NEG": float("-inf"), "NAN": float("nan")}
