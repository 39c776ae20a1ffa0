"""Argument validation for the public API: ids, numbers, records, node descriptions.

Every check raises :class:`~fle_db.errors.ValidationError` (or the error class a caller passes,
e.g. ``ConfigurationError`` for settings) naming the argument, and never echoes more than 80
characters of a hostile value. A ``bool`` is never accepted as a number: Python counts it as an
``int``, a caller passing ``True`` for a count made a mistake.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeGuard, TypeVar

import pydantic

from . import models
from .backends.base import NodeRow
from .errors import ValidationError
from .explain import validation_message

_ID = re.compile(models.ID_PATTERN)
M = TypeVar("M", bound=pydantic.BaseModel)
C = TypeVar("C", bound=Callable[..., None])


def is_int(value: object) -> TypeGuard[int]:
    """Whether ``value`` is an ``int`` and not a ``bool``."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> TypeGuard[int | float]:
    """Whether ``value`` is an ``int`` or ``float`` and not a ``bool``."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_id(value: Any, what: str) -> str:
    """``value`` if it is a valid id (1-200 letters, digits and ``_ . : -``)."""
    if not isinstance(value, str) or not _ID.fullmatch(value):  # match() lets '$' accept a final newline
        raise ValidationError(f"{what} must be 1-200 characters of letters, digits and _ . : - ; got {value!r:.80}")
    return value


def as_list(values: Any, what: str) -> list[Any]:
    """A list from any iterable but a string, bytes or mapping: a bare string would be read as
    its characters (``"12"`` as the ids ``"1"`` and ``"2"``), a dict as its keys."""
    if isinstance(values, (str, bytes, bytearray, Mapping)) or not isinstance(values, Iterable):
        raise ValidationError(f"{what} must be a list, got {type(values).__name__} {values!r:.80}")
    return list(values)


def check_ids(values: Any, what: str) -> tuple[str, ...]:
    """A tuple of valid ids from a list of them (see :func:`as_list`)."""
    ids = tuple(as_list(values, what))
    for value in ids:
        check_id(value, what)
    return ids


def check_text(value: Any, what: str) -> str | None:
    """A filter value: None or a string without NUL characters or lone surrogates."""
    if value is None:
        return None
    if not isinstance(value, str) or "\x00" in value or any("\ud800" <= c <= "\udfff" for c in value):
        raise ValidationError(f"{what} must be a string without NUL characters, got {value!r:.80}")
    return value


def check_callback(progress: C | None) -> C | None:
    """A progress callback must be callable (or None): checked before any work starts."""
    if progress is not None and not callable(progress):
        raise ValidationError(f"progress must be a function or None, got {type(progress).__name__}")
    return progress


def check_step_number(value: Any, what: str = "step_number") -> int:
    """``value`` if it is an integer in ``0 .. 2**63-1``."""
    if not is_int(value) or not 0 <= value < 2**63:
        raise ValidationError(f"{what} must be an integer in 0 .. 2**63-1, got {value!r:.80}")
    return int(value)


def check_node_id(value: Any) -> int:
    """``value`` if it is a positive 64-bit integer."""
    if not is_int(value) or not 0 < value < 2**63:
        raise ValidationError(f"node_id must be a positive integer, got {value!r:.80}")
    return int(value)


def check_count(value: Any, what: str) -> int | None:
    """``value`` if it is None or an integer ``>= 0``."""
    if value is None:
        return None
    if not is_int(value) or not 0 <= value < 2**63:
        raise ValidationError(f"{what} must be an integer in 0 .. 2**63-1, got {value!r:.80}")
    return int(value)


def check_float(value: Any, what: str) -> float | None:
    """``value`` as a float if it is None or a finite number."""
    if value is None:
        return None
    if not is_number(value) or not math.isfinite(value):
        raise ValidationError(f"{what} must be a finite number, got {value!r:.80}")
    return float(value)


def as_dict(record: Any, what: str) -> Mapping[str, Any]:
    """A record given as a mapping or a pydantic model (only the fields set) as a mapping."""
    if isinstance(record, pydantic.BaseModel):
        return record.model_dump(exclude_unset=True)
    if not isinstance(record, Mapping):
        raise ValidationError(f"{what} must be a dict, got {type(record).__name__}")
    return record


def validated(model: type[M], record: Any, what: str) -> dict[str, Any]:
    """Check the known fields of ``record`` strictly; return it as a plain dict, keys as given
    (a new dict unless ``record`` already is a plain dict the caller owns)."""
    data = record if type(record) is dict else dict(as_dict(record, what))
    try:
        model.__pydantic_validator__.validate_python(data)
    except pydantic.ValidationError as exc:
        raise ValidationError(validation_message(model, data, exc)) from None
    return data


def node_row(node: Mapping[str, Any]) -> NodeRow:
    """Validate a node description: ``tree`` (an id), ``depth`` (int >= 0), optional ``value``
    and ``advantage`` (finite numbers)."""
    if not isinstance(node, Mapping):
        raise ValidationError(f"node must be a dict, got {type(node).__name__}")
    unknown = set(node) - {"tree", "depth", "value", "advantage"}
    if unknown:
        raise ValidationError(f"node: unknown keys {sorted(unknown)}")
    return NodeRow(
        tree=check_id(node.get("tree"), "node['tree']"),
        depth=check_step_number(node.get("depth"), "node['depth']"),
        value=check_float(node.get("value"), "node['value']"),
        advantage=check_float(node.get("advantage"), "node['advantage']"),
    )


#: Range of an integer query parameter: what every backend stores (SQLite's and BIGINT's).
_INT64 = (-(2**63), 2**63 - 1)


def check_query(query: Any) -> str:
    """``execute_query``'s SQL text: a non-empty string without NUL."""
    if not isinstance(query, str) or not query.strip():
        raise ValidationError(f"query must be a non-empty string, got {query!r:.80}")
    if "\x00" in query:
        raise ValidationError("query contains a NUL byte")
    return query


def check_query_params(params: Any) -> tuple[Any, ...]:
    """``execute_query``'s parameters as a tuple of scalars every backend binds alike."""
    if params is None:
        return ()
    if isinstance(params, (str, bytes, Mapping)) or not isinstance(params, Sequence):
        raise ValidationError(f"params must be a list or tuple of values, got {type(params).__name__}")
    for value in params:
        if isinstance(value, bool) or value is None or isinstance(value, float):
            continue
        if isinstance(value, int):
            if not _INT64[0] <= value <= _INT64[1]:
                raise ValidationError(f"an integer parameter must fit in 64 bits, got {value}")
        elif isinstance(value, str):
            if "\x00" in value:
                raise ValidationError("a string parameter contains a NUL byte")
        else:
            raise ValidationError(f"a parameter must be None, bool, int, float or str, got {type(value).__name__}")
    return tuple(params)
