"""Instants: the one parser and the one formatter of points in time, in epoch microseconds.

Every public argument naming a point in time (``restore_to``, ``cleanup(before=)``,
``export_data(since=, until=)``) accepts the same three forms, parsed here: a timezone-aware
``datetime``, an ISO 8601 string with an offset (``2026-11-27T20:15:00Z``), or epoch seconds (an
int or a float). Stored times are epoch microseconds (integers: exact, comparable on every
backend); every ISO 8601 string fle-db returns is made by :func:`iso`.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

from .errors import ValidationError

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: Epoch seconds at or beyond this (year 5138) are taken for a unit mistake (milliseconds?).
_MAX_EPOCH_SECONDS = 1e11


def parse_instant(value: Any, what: str = "a point in time") -> int:
    """An instant as epoch microseconds, from a timezone-aware ``datetime``, an ISO 8601 string
    with an offset, or epoch seconds (int or float, ``0 <= s < 1e11``).

    Raises:
        ValidationError: anything else, including naive times (ambiguous: which zone?); the
            message starts with ``what``.
    """
    if isinstance(value, bool):  # a bool is an int to Python, never a time to a caller
        raise ValidationError(f"{what} must be a datetime, ISO 8601 string or epoch seconds, got {value!r}")
    if isinstance(value, (int, float)):
        if not 0 <= value < _MAX_EPOCH_SECONDS:
            raise ValidationError(f"{what}: epoch seconds out of range: {value!r}")
        return round(value * 1_000_000)
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise ValidationError(f"{what} is not an ISO 8601 time: {value!r:.80}") from None
    if not isinstance(value, datetime):
        raise ValidationError(f"{what} must be a datetime, ISO 8601 string or epoch seconds, got {value!r:.80}")
    if value.tzinfo is None:
        raise ValidationError(
            f"{what}: {value.isoformat()} has no time zone; give a timezone-aware time (offset 'Z', '+00:00'...)"
        )
    try:
        delta = value - _EPOCH  # exact integer arithmetic: a float timestamp would round microseconds
    except OverflowError:  # e.g. 0001-01-01T00:00+01:00 is before datetime.min in UTC
        raise ValidationError(f"{what}: {value.isoformat()} is outside the range of times") from None
    at_us = delta.days * 86_400_000_000 + delta.seconds * 1_000_000 + delta.microseconds
    if not 0 <= at_us < _MAX_EPOCH_SECONDS * 1_000_000:  # the epoch-seconds range above
        raise ValidationError(f"{what}: {value.isoformat()} is outside 1970 .. 5138")
    return at_us


def optional_instant(value: Any, what: str) -> int | None:
    """:func:`parse_instant`, with None kept as None (an absent filter)."""
    return None if value is None else parse_instant(value, what)


def parse_duration(value: Any, what: str) -> float:
    """Seconds from a ``timedelta`` or a number of seconds ``>= 0``.

    Raises:
        ValidationError: anything else (a bool, a negative or infinite duration).
    """
    if isinstance(value, bool) or not isinstance(value, (timedelta, int, float)):
        raise ValidationError(f"{what} must be a timedelta or seconds, got {value!r:.80}")
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if not 0 <= seconds < float("inf"):
        raise ValidationError(f"{what} must be a positive duration, got {value!r:.80}")
    return seconds


def now_us() -> int:
    """The current time in epoch microseconds."""
    return time.time_ns() // 1000


def ago_us(seconds: float) -> int:
    """The instant ``seconds`` before now, in epoch microseconds."""
    return now_us() - int(seconds * 1_000_000)


def iso(at_us: int) -> str:
    """Epoch microseconds as ISO 8601 in UTC (``2026-11-27T20:15:00.123456+00:00``)."""
    return from_us(at_us).isoformat()


def optional_iso(at_us: int | None) -> str | None:
    """:func:`iso`, with None kept as None."""
    return None if at_us is None else iso(at_us)


def from_us(at_us: int) -> datetime:
    """Epoch microseconds as an aware UTC ``datetime``."""
    return _EPOCH + timedelta(microseconds=at_us)


def to_seconds(iso_text: str) -> float:
    """Epoch seconds of an ISO 8601 string that fle-db wrote (with its offset)."""
    return datetime.fromisoformat(iso_text).timestamp()
