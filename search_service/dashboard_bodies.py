"""The JSON bodies optuna-dashboard's API takes, checked before the app reads them.

optuna-dashboard's change endpoints read their body's fields without checking their types
(``request.json.get("directions", [])`` then ``d.lower()`` for each): a JSON object with a field
of the wrong type (``{"directions": 5}``, ``{"version": "x", "body": 3}``, ``{"user_attrs": []}``)
raised inside the app, which answered 500 and logged a traceback. ``problem(method, path, body)``
checks a body against the model of its route (``ROUTES``, one pydantic model per route, from
optuna-dashboard 0.21's ``_app.py``, ``artifact/_backend.py`` and ``llm/_api_views.py``) and
says in one line which field is wrong and what it must be; ``dashboard.guard`` answers that 400.

The models check types, strictly (``"5"`` is no integer, ``true`` no number), not meanings the
app checks itself (a direction that is neither ``minimize`` nor ``maximize``, a missing field, a
note version that is not the next one: the app's own 400 or 409). Fields the app does not read
are let through, as the app ignores them. A string that becomes a database column (a study name,
a user attribute's key) must fit Optuna's column (512 characters) and hold no NUL or lone UTF-16
surrogate, which PostgreSQL or the SQLite driver refuse; a trial's values must be numbers Optuna
can store (NaN cannot: SQLite stores it as NULL, and every later read of the study fails).
Routes without a body the app reads (deleting an artifact, skipping a trial) take any object.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
)

COLUMN_CHARS_MAX = 512  # Optuna's MAX_INDEXED_STRING_LENGTH: study names, attribute keys


def _column_text(value: str) -> str:
    if len(value) > COLUMN_CHARS_MAX:
        raise ValueError(f"at most {COLUMN_CHARS_MAX} characters")
    if "\x00" in value or any("\ud800" <= c <= "\udfff" for c in value):
        raise ValueError("no NUL character or lone UTF-16 surrogate")
    return value


def _storable(value: float) -> float:
    if isinstance(value, float) and math.isnan(value):
        raise ValueError("NaN cannot be stored")
    try:
        float(value)
    except OverflowError as exc:
        raise ValueError("too large for a float") from exc
    return value


def _data_uri(value: str) -> str:
    """What optuna-dashboard's ``parse_data_uri`` accepts: ``data:TYPE,BASE64``."""
    head, comma, data = value.partition(",")
    if not head.startswith("data:") or not comma:
        raise ValueError("not a data: URI")
    try:
        base64.standard_b64decode(data)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("its data is not base64") from exc
    return value


ColumnText = Annotated[StrictStr, AfterValidator(_column_text)]
Number = Annotated[StrictInt | StrictFloat, AfterValidator(_storable)]
DataUri = Annotated[StrictStr, AfterValidator(_data_uri)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


class CreateStudy(_Body):
    """POST /api/studies"""

    study_name: ColumnText | None = Field(None, description=f"a string of at most {COLUMN_CHARS_MAX} characters (the new study's name)")
    directions: list[StrictStr] = Field([], description='a list of strings, each "minimize" or "maximize"')


class RenameStudy(_Body):
    """POST /api/studies/ID/rename"""

    study_name: ColumnText | None = Field(None, description=f"a string of at most {COLUMN_CHARS_MAX} characters (the new name)")


class DeleteStudy(_Body):
    """DELETE /api/studies/ID"""

    remove_associated_artifacts: StrictBool = Field(True, description="true or false")


class Note(_Body):
    """PUT /api/studies/ID/note and /api/studies/ID/TRIAL_ID/note"""

    version: StrictInt | None = Field(None, description="an integer (the note's next version)")
    body: StrictStr | None = Field(None, description="a string (the note's text)")


class Preference(_Body):
    """POST /api/studies/ID/preference"""

    mode: StrictStr = Field("", description='a string ("ChooseWorst")')
    candidates: list[StrictInt] = Field([], description="a list of integers (trial numbers)")
    clicked: StrictInt = Field(-1, description="an integer (a trial number)")


class FeedbackComponent(_Body):
    """PUT /api/studies/ID/preference_feedback_component"""

    output_type: StrictStr = Field("", description='a string ("note" or "artifact")')
    artifact_key: StrictStr | None = Field(None, description="a string or null")


class Tell(_Body):
    """POST /api/trials/ID/tell"""

    state: StrictStr = Field("", description='a string ("Complete" or "Fail")')
    values: list[Number] | None = Field(None, description="a list of numbers (not NaN) or null")


class UserAttrs(_Body):
    """POST /api/trials/ID/user-attrs"""

    user_attrs: dict[ColumnText, Any] | None = Field(
        None, description=f"an object whose keys have at most {COLUMN_CHARS_MAX} characters (the attributes)")


class ArtifactUpload(_Body):
    """POST /api/artifacts/ID and /api/artifacts/ID/TRIAL_ID"""

    file: DataUri | None = Field(None, description="a data: URI with base64 content (data:TYPE;base64,DATA)")
    filename: StrictStr = Field("", description="a string (the file's name)")


class LastResponse(_Body):
    func_str: StrictStr | None = None
    error_message: StrictStr | None = None


class LlmQuery(_Body):
    """POST /api/llm/trial_filter_query and /api/llm/generate_plotly_graph_query"""

    user_query: StrictStr = Field("", description="a string")
    last_response: LastResponse = Field(LastResponse(), description='an object with "func_str" and "error_message" strings')


class LlmRegenerate(_Body):
    """POST /api/llm/re_generate_plotly_graph_query"""

    modification_request_query: StrictStr = Field("", description="a string")
    previous_function: StrictStr = Field("", description="a string")
    last_response: LastResponse = Field(LastResponse(), description='an object with "func_str" and "error_message" strings')


_ID = r"-?\d+"  # bottle's <name:int>
ROUTES: list[tuple[str, re.Pattern[str], type[_Body]]] = [
    (method, re.compile(pattern), model)
    for method, pattern, model in (
        ("POST", r"/api/studies", CreateStudy),
        ("POST", rf"/api/studies/{_ID}/rename", RenameStudy),
        ("DELETE", rf"/api/studies/{_ID}", DeleteStudy),
        ("PUT", rf"/api/studies/{_ID}/note", Note),
        ("PUT", rf"/api/studies/{_ID}/{_ID}/note", Note),
        ("POST", rf"/api/studies/{_ID}/preference", Preference),
        ("PUT", rf"/api/studies/{_ID}/preference_feedback_component", FeedbackComponent),
        ("POST", rf"/api/trials/{_ID}/tell", Tell),
        ("POST", rf"/api/trials/{_ID}/user-attrs", UserAttrs),
        ("POST", rf"/api/artifacts/{_ID}(?:/{_ID})?", ArtifactUpload),
        ("POST", r"/api/llm/(?:trial_filter_query|generate_plotly_graph_query)", LlmQuery),
        ("POST", r"/api/llm/re_generate_plotly_graph_query", LlmRegenerate),
    )
]


def model_for(method: str, path: str) -> type[_Body] | None:
    """The model of a route's body, or None for a route whose body the app does not read."""
    for route_method, pattern, model in ROUTES:
        if route_method == method and pattern.fullmatch(path):
            return model
    return None


def problem(method: str, path: str, body: dict[str, Any]) -> str | None:
    """What is wrong with the fields of a change's body (a JSON object), in one line, else None."""
    model = model_for(method, path)
    if model is None:
        return None
    try:
        model.model_validate(body)
    except ValidationError as exc:
        return _say(model, exc.errors(include_url=False)[0])
    return None


def _say(model: type[_Body], error: dict[str, Any]) -> str:
    loc = [part for part in error["loc"] if part != "[key]"]
    field = str(loc[0]) if loc else "?"
    where = field + "".join(f"[{part}]" if isinstance(part, int) else f"[{str(part)[:40]!r}]" for part in loc[1:])
    info = model.model_fields.get(field)
    must = info.description if info is not None and info.description else "of another type"
    got = _json_type(error.get("input"))
    reason = str(error.get("msg", "")).removeprefix("Value error, ") if error.get("type") == "value_error" else None
    if "[key]" in error["loc"]:
        detail = f"key {str(error.get('input'))[:40]!r}: {reason or 'not a string'}"
    elif reason:
        detail = f"{where}: {reason}"
    else:
        detail = f"{where} is {'null' if got == 'null' else ('an ' if got[0] in 'aeiou' else 'a ') + got}"
    return f"field {field!r} must be {must} ({detail})"


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"
