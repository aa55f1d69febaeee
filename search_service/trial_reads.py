"""Reading trials from an Optuna RDB schema with SQLAlchemy Core instead of the ORM.

``RDBStorage._get_trials`` builds one ORM object per trial, parameter, value and attribute row
(five ``selectinload`` relationships) and then a ``FrozenTrial`` from them, parsing every
parameter's distribution JSON twice. Every worker reads the study's changed trials several times
per trial (Optuna's ``_CachedStorage`` fetches the unfinished and the new ones on each
``get_all_trials``), and on a small CPU that ORM work was most of the search service's
per-trial overhead. Here the same six SELECTs return plain rows, and each distinct
distribution JSON is parsed once per process.

The result is the same list of ``FrozenTrial`` that Optuna builds, field for field
(``tests/search_tests/test_trial_reads.py`` compares the two on studies with every kind of
value); nothing is written, and the schema is Optuna's own (its models' tables).
"""

from __future__ import annotations

import datetime
import json
from collections import defaultdict
from collections.abc import Container, Iterable
from typing import Any

from optuna import distributions
from optuna.storages._rdb import models
from optuna.trial import FrozenTrial
from sqlalchemy import and_, or_, select
from sqlalchemy.engine import Connection

_STUDIES = models.StudyModel.__table__
_TRIALS = models.TrialModel.__table__
_PARAMS = models.TrialParamModel.__table__
_VALUES = models.TrialValueModel.__table__
_USER_ATTRS = models.TrialUserAttributeModel.__table__
_SYSTEM_ATTRS = models.TrialSystemAttributeModel.__table__
_INTERMEDIATE = models.TrialIntermediateValueModel.__table__

_VALUE_TYPE = models.TrialValueModel.TrialValueType
_INTERMEDIATE_TYPE = models.TrialIntermediateValueModel.TrialIntermediateValueType

_DISTRIBUTIONS: dict[str, distributions.BaseDistribution] = {}
_DISTRIBUTIONS_MAX = 4096


def read_trials(
    conn: Connection,
    study_id: int,
    states: Container | None = None,
    included_trial_ids: Iterable[int] = (),
    trial_id_greater_than: int = -1,
    trial_id: int | None = None,
) -> list[FrozenTrial]:
    """The trials of ``study_id`` that ``RDBStorage._get_trials`` would return for the same
    arguments (ordered by trial id), or the one trial ``trial_id`` (then ``[]`` if it does not
    exist). Raises ``KeyError`` like Optuna when the study does not exist."""
    if trial_id is None:
        if conn.execute(select(_STUDIES.c.study_id).where(_STUDIES.c.study_id == study_id)).first() is None:
            raise KeyError(models.NOT_FOUND_MSG)
        where = [_TRIALS.c.study_id == study_id]
        if states is not None:
            where.append(_TRIALS.c.state.in_(list(states)))  # type: ignore[arg-type]
        included = [i for i in included_trial_ids if i <= trial_id_greater_than]
        if included and trial_id_greater_than > -1:
            where.append(or_(_TRIALS.c.trial_id.in_(included), _TRIALS.c.trial_id > trial_id_greater_than))
        elif trial_id_greater_than > -1:
            where.append(_TRIALS.c.trial_id > trial_id_greater_than)
    else:
        where = [_TRIALS.c.trial_id == trial_id]
    condition = and_(*where)
    rows = conn.execute(
        select(_TRIALS.c.trial_id, _TRIALS.c.number, _TRIALS.c.state, _TRIALS.c.datetime_start, _TRIALS.c.datetime_complete)
        .where(condition)
        .order_by(_TRIALS.c.trial_id)
    ).all()
    if not rows:
        return []
    ids = {row[0] for row in rows}
    chosen = select(_TRIALS.c.trial_id).where(condition).scalar_subquery()

    def children(table, *columns, order=None):
        by_trial: dict[int, list] = defaultdict(list)
        query = select(table.c.trial_id, *columns).where(table.c.trial_id.in_(chosen))
        if order is not None:
            query = query.order_by(order)
        for row in conn.execute(query):
            if row[0] in ids:  # a trial created between the two statements is not in ``rows``
                by_trial[row[0]].append(row[1:])
        return by_trial

    params = children(_PARAMS, _PARAMS.c.param_name, _PARAMS.c.param_value, _PARAMS.c.distribution_json, order=_PARAMS.c.param_id)
    values = children(_VALUES, _VALUES.c.objective, _VALUES.c.value, _VALUES.c.value_type)
    user_attrs = children(_USER_ATTRS, _USER_ATTRS.c.key, _USER_ATTRS.c.value_json, order=_USER_ATTRS.c.trial_user_attribute_id)
    system_attrs = children(_SYSTEM_ATTRS, _SYSTEM_ATTRS.c.key, _SYSTEM_ATTRS.c.value_json, order=_SYSTEM_ATTRS.c.trial_system_attribute_id)
    intermediate = children(
        _INTERMEDIATE, _INTERMEDIATE.c.step, _INTERMEDIATE.c.intermediate_value, _INTERMEDIATE.c.intermediate_value_type,
        order=_INTERMEDIATE.c.trial_intermediate_value_id,
    )
    return [
        _frozen(row, params.get(row[0], ()), values.get(row[0], ()), user_attrs.get(row[0], ()), system_attrs.get(row[0], ()), intermediate.get(row[0], ()))
        for row in rows
    ]


def _frozen(row, params, values, user_attrs, system_attrs, intermediate) -> FrozenTrial:
    trial_id, number, state, start, complete = row
    trial_values: list[float] | None = None
    if values:
        trial_values = [0.0] * len(values)
        for objective, value, value_type in values:
            trial_values[objective] = _stored_value(value, value_type)
    dists = {name: _distribution(dist_json) for name, _, dist_json in params}
    return FrozenTrial(
        number=number,
        state=state,
        value=None,
        values=trial_values,
        datetime_start=_local(start),
        datetime_complete=_local(complete),
        params={name: dists[name].to_external_repr(value) for name, value, _ in params},
        distributions=dists,
        user_attrs={key: json.loads(value) for key, value in user_attrs},
        system_attrs={key: json.loads(value) for key, value in system_attrs},
        intermediate_values={step: _stored_intermediate(value, value_type) for step, value, value_type in intermediate},
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


def _local(utc: datetime.datetime | None) -> datetime.datetime | None:
    """Stored naive UTC -> naive local time, as ``TrialModel.datetime_start`` returns it."""
    if utc is None:
        return None
    return utc.replace(tzinfo=datetime.timezone.utc).astimezone().replace(tzinfo=None)


def _stored_value(value: Any, value_type) -> float:
    if value_type == _VALUE_TYPE.INF_POS:
        return float("inf")
    if value_type == _VALUE_TYPE.INF_NEG:
        return float("-inf")
    return value


def _stored_intermediate(value: Any, value_type) -> float:
    if value_type == _INTERMEDIATE_TYPE.NAN:
        return float("nan")
    if value_type == _INTERMEDIATE_TYPE.INF_POS:
        return float("inf")
    if value_type == _INTERMEDIATE_TYPE.INF_NEG:
        return float("-inf")
    return value
