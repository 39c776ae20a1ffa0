"""Validation errors in the user's words: the one place pydantic's errors become fle-db's messages.

A message names the record kind, the field and what to do, and shows what was given, e.g.
``a trajectory needs 'id' (got keys: step_number, trajectory_id) — did you mean save_step?`` or
``a step's 'step_number' must be an integer in 0 .. 2**63-1 (got '1', a str)``. It never quotes
pydantic's own phrasing, and values are cut to 80 characters.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pydantic

from .models import ID_PATTERN

#: How each record model is named in a message.
_KINDS = {
    "Trajectory": "a trajectory",
    "Step": "a step",
    "AgentOutput": "an agent output",
    "EnvironmentFeedback": "an environment feedback",
    "MetadataEntry": "a metadata entry",
}
_ID_RULE = "1-200 letters, digits and _ . : -"
_STEP_KEYS = {"trajectory_id", "step_number"}
#: pydantic error types -> what the value must be.
_EXPECTED = {
    "string_pattern_mismatch": f"an id: {_ID_RULE}",
    "text_with_nul": "text without NUL characters",
    "string_type": "a string",
    "bool_type": "true or false",
    "int_type": "an integer in 0 .. 2**63-1",
    "int_from_float": "an integer in 0 .. 2**63-1",
    "greater_than_equal": "an integer in 0 .. 2**63-1",
    "less_than_equal": "an integer in 0 .. 2**63-1",
    "float_type": "a number",
}


def validation_message(model: type[pydantic.BaseModel], data: Mapping[str, Any], exc: pydantic.ValidationError) -> str:
    """The message for ``exc``, raised by validating ``data`` as a ``model`` record."""
    kind = _KINDS.get(model.__name__, f"a {model.__name__}")
    missing: list[str] = []
    wrong: dict[str, set[str]] = {}
    for error in exc.errors():
        field = str(error["loc"][0]) if error["loc"] else ""
        if error["type"] == "missing":
            missing.append(field)
        else:
            wrong.setdefault(field, set()).add(_error_type(error))
    problems = []
    if missing:
        names = " and ".join(repr(name) for name in missing)
        problems.append(
            f"{kind} needs {names} (got keys: {', '.join(sorted(map(str, data))) or 'none'}){_hint(model, data)}"
        )
    for field, types in wrong.items():
        value = data.get(field)
        problems.append(f"{kind}'s {field!r} must be {_expected(types)} (got {_shown(value)})")
    return "; ".join(problems)


def _error_type(error: Any) -> str:
    """pydantic's error type, told apart where one type covers several rules (patterns, lengths)."""
    kind, context = str(error["type"]), error.get("ctx") or {}
    if kind == "string_pattern_mismatch" and context.get("pattern") != ID_PATTERN:
        return "text_with_nul"  # the only other pattern: no NUL character (ShortText)
    if kind == "string_too_long":
        return f"string_too_long:{context.get('max_length')}"
    return kind


def _expected(types: set[str]) -> str:
    if {"int_type", "float_type"} <= types:  # a number field: the union of int and float failed
        return "a number"
    for error_type in types:
        if error_type.startswith("string_too_long:"):
            return f"at most {error_type.split(':', 1)[1]} characters"
    for error_type, expected in _EXPECTED.items():
        if error_type in types:
            return expected
    return "valid: " + ", ".join(sorted(types)).replace("_", " ")


def _hint(model: type[pydantic.BaseModel], data: Mapping[str, Any]) -> str:
    """What the caller probably meant, when the keys belong to another kind of record."""
    if model.__name__ == "Trajectory" and _STEP_KEYS & set(data):
        return " — did you mean save_step? (a step is keyed by trajectory_id and step_number)"
    if model.__name__ == "Step" and "id" in data and "trajectory_id" not in data:
        return " — did you mean save_trajectory? (a step names its trajectory as trajectory_id)"
    if model.__name__ == "Step" and "step_number" not in data:
        return " — or let append_step number it"
    return ""


def _shown(value: Any) -> str:
    text = repr(value)
    if isinstance(value, str) and len(text) > 80:
        return f"{text[:60]}..., a str of {len(value):,} characters"
    text = text if len(text) <= 80 else text[:77] + "..."
    article = "an" if type(value).__name__[0] in "aeiou" else "a"
    return f"{text}, {article} {type(value).__name__}" if value is not None else "None"


__all__ = ["validation_message"]
