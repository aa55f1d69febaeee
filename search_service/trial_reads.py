"""Reading trials from an Optuna RDB schema with SQLAlchemy Core instead of the ORM.

``RDBStorage._get_trials`` builds one ORM object per trial, parameter, value and attribute row
(five ``selectinload`` relationships) and then a ``FrozenTrial`` from them, parsing every
parameter's distribution JSON twice. Every worker reads the study's changed trials several times
per trial (Optuna's ``_CachedStorage`` fetches the unfinished and the new ones on each
``get_all_trials``), and on a small CPU that ORM work was most of the search service's
per-trial overhead. Here two SELECTs (the trials, then their rows of all five child tables in
one UNION ALL) return plain rows, and each distinct distribution JSON is parsed once per
process.

The result is the same list of ``FrozenTrial`` that Optuna builds, field for field
(``tests/search_tests/test_trial_reads.py`` compares the two on studies with every kind of
value); nothing is written, and the schema is Optuna's own (its models' tables).
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Container, Iterable
from typing import Any

from optuna import distributions
from optuna.storages._rdb import models
from optuna.trial import FrozenTrial
from sqlalchemy import Float, Integer, Text, and_, cast, literal, null, or_, select, union_all
from sqlalchemy.engine import Connection

_STUDIES = models.StudyModel.__table__
_TRIALS = models.TrialModel.__table__
_PARAMS = models.TrialParamModel.__table__
_VALUES = models.TrialValueModel.__table__
_USER_ATTRS = models.TrialUserAttributeModel.__table__
_SYSTEM_ATTRS = models.TrialSystemAttributeModel.__table__
_INTERMEDIATE = models.TrialIntermediateValueModel.__table__


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
    kids: dict[int, tuple[list, list, list, list, list]] = {i: ([], [], [], [], []) for i in ids}
    for trial, kind, key, number, text, index in conn.execute(_children_query(select(_TRIALS.c.trial_id).where(condition).scalar_subquery())):
        if trial in kids:  # a trial created between the two statements is not in ``rows``
            kids[trial][kind].append((key, number, text, index))
    out = []
    for row in rows:
        params, values, user_attrs, system_attrs, intermediate = kids[row[0]]
        out.append(_frozen(row, params, values, user_attrs, system_attrs, intermediate))
    return out


_PARAM, _VALUE, _USER_ATTR, _SYSTEM_ATTR, _INTERMEDIATE_VALUE = range(5)


def _children_query(chosen):
    """One statement for the five child tables of the ``chosen`` trials (instead of five): rows
    of (trial id, kind, key, number, text, index), in each table's insertion order."""
    text_null, float_null, int_null = cast(null(), Text), cast(null(), Float), cast(null(), Integer)

    def part(table, kind, order, key=None, number=None, text=None, index=None):
        return select(
            table.c.trial_id.label("trial_id"),
            literal(kind, Integer).label("kind"),
            (cast(key, Text) if key is not None else text_null).label("key"),
            (number if number is not None else float_null).label("number"),
            (cast(text, Text) if text is not None else text_null).label("text"),
            (index if index is not None else int_null).label("idx"),
            order.label("ord"),
        ).where(table.c.trial_id.in_(chosen))

    union = union_all(
        part(_PARAMS, _PARAM, _PARAMS.c.param_id, key=_PARAMS.c.param_name, number=_PARAMS.c.param_value, text=_PARAMS.c.distribution_json),
        part(_VALUES, _VALUE, _VALUES.c.trial_value_id, number=_VALUES.c.value, text=_VALUES.c.value_type, index=_VALUES.c.objective),
        part(_USER_ATTRS, _USER_ATTR, _USER_ATTRS.c.trial_user_attribute_id, key=_USER_ATTRS.c.key, text=_USER_ATTRS.c.value_json),
        part(_SYSTEM_ATTRS, _SYSTEM_ATTR, _SYSTEM_ATTRS.c.trial_system_attribute_id, key=_SYSTEM_ATTRS.c.key, text=_SYSTEM_ATTRS.c.value_json),
        part(
            _INTERMEDIATE, _INTERMEDIATE_VALUE, _INTERMEDIATE.c.trial_intermediate_value_id,
            number=_INTERMEDIATE.c.intermediate_value, text=_INTERMEDIATE.c.intermediate_value_type, index=_INTERMEDIATE.c.step,
        ),
    ).subquery()
    return select(union.c.trial_id, union.c.kind, union.c.key, union.c.number, union.c.text, union.c.idx).order_by(union.c.kind, union.c.ord)


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
        state=state,
        value=None,
        values=trial_values,
        datetime_start=_local(start),
        datetime_complete=_local(complete),
        params={name: dists[name].to_external_repr(value) for name, value, _, _ in params},
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


def _local(utc: datetime.datetime | None) -> datetime.datetime | None:
    """Stored naive UTC -> naive local time, as ``TrialModel.datetime_start`` returns it."""
    if utc is None:
        return None
    return utc.replace(tzinfo=datetime.UTC).astimezone().replace(tzinfo=None)


def _stored(value: Any, value_type: str) -> float:
    """A stored value and its type's name (both value-type enums of Optuna's schema) -> float."""
    if value_type == "FINITE":
        return value
    return _SPECIAL[value_type]


_SPECIAL = {"INF_POS": float("inf"), "INF_NEG": float("-inf"), "NAN": float("nan")}
