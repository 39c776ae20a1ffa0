"""Pages of trajectories for ``DatabaseClient.list_trajectories``: arguments checked into a
:class:`~fle_db.backends.base.TrajectoryQuery`, rows turned into dicts, and keyset cursors.

A cursor is the last row's sort value and id, with the order and filters it belongs to,
base64url-encoded and sealed with a keyed BLAKE2b digest: a cursor that was altered, truncated
or made for another order or other filters is refused (``ValidationError``) instead of paging
from a wrong place. Its values only ever reach SQL as bound parameters.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import re
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import orjson

from .backends.base import LIST_ORDERS, ListedTrajectory, TrajectoryQuery
from .errors import ValidationError
from .instants import optional_instant
from .models import ID_PATTERN
from .storage import codec

#: Every order ``list_trajectories`` accepts: the backend's, and ``end_time`` (body only).
ORDERS = (*LIST_ORDERS, "end_time")
MAX_LIMIT = 1000
_ID_CHARS = re.compile(ID_PATTERN)
#: Seals cursors against accidental or casual edits (not a secret: a forged cursor can only
#: start a page at another row, which the same filters would let the caller read anyway).
_SEAL = b"fle-db list_trajectories cursor v1"


def build_query(
    *,
    task: str | None,
    agent_type: str | None,
    success: bool | None,
    since: datetime | str | float | None,
    until: datetime | str | float | None,
    id_contains: str | None,
    parent_trajectory_id: str | None,
    order_by: str,
    descending: bool,
    limit: int,
    cursor: str | None,
) -> TrajectoryQuery:
    """Check every argument of ``list_trajectories`` and build the backend's query.

    Raises:
        ValidationError: a bad filter, order, limit or cursor.
    """
    for name, value in (("task", task), ("agent_type", agent_type)):
        if value is not None and (not isinstance(value, str) or not 0 < len(value) <= 200):
            raise ValidationError(f"{name} must be a string of 1-200 characters, got {value!r:.80}")
    for name, value in (("id_contains", id_contains), ("parent_trajectory_id", parent_trajectory_id)):
        if value is not None and (not isinstance(value, str) or not _ID_CHARS.fullmatch(value)):
            raise ValidationError(f"{name} must be 1-200 characters of letters, digits and _ . : -; got {value!r:.80}")
    if success is not None and not isinstance(success, bool):
        raise ValidationError(f"success must be True, False or None, got {success!r:.80}")
    if order_by not in ORDERS:
        raise ValidationError(f"order_by must be one of {', '.join(ORDERS)}; got {order_by!r:.80}")
    if not isinstance(descending, bool):
        raise ValidationError(f"descending must be True or False, got {descending!r:.80}")
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise ValidationError(f"limit must be an integer in 1 .. {MAX_LIMIT}, got {limit!r:.80}")
    query = TrajectoryQuery(
        task=task,
        agent_type=agent_type,
        success=success,
        since_us=optional_instant(since, "since"),
        until_us=optional_instant(until, "until"),
        id_contains=id_contains,
        parent_trajectory_id=parent_trajectory_id,
        order_by=order_by,
        descending=descending,
        limit=limit,
    )
    if cursor is None:
        return query
    return replace(query, after=_open_cursor(cursor, query))


def _scope(query: TrajectoryQuery) -> list[Any]:
    """What a cursor belongs to: the order and every filter."""
    return [query.order_by, query.descending, query.task, query.agent_type, query.success, query.since_us,
            query.until_us, query.id_contains, query.parent_trajectory_id]  # fmt: skip


def _digest(payload: bytes) -> bytes:
    return hashlib.blake2b(payload, key=_SEAL, digest_size=12).digest()


def _make_cursor(query: TrajectoryQuery, value: Any, last_id: str) -> str:
    payload = orjson.dumps([_scope(query), value, last_id])
    return base64.urlsafe_b64encode(_digest(payload) + payload).decode().rstrip("=")


def _open_cursor(cursor: Any, query: TrajectoryQuery) -> tuple[Any, str]:
    bad = ValidationError("cursor is not a next_cursor of this listing (same order and filters); start without one")
    if not isinstance(cursor, str) or len(cursor) > 2000:
        raise bad
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    except ValueError:
        raise bad from None
    seal, payload = raw[:12], raw[12:]
    if len(seal) < 12 or not hmac.compare_digest(seal, _digest(payload)):
        raise bad
    try:
        scope, value, last_id = orjson.loads(payload)
    except (orjson.JSONDecodeError, ValueError, TypeError):
        raise bad from None
    if scope != _scope(query) or not isinstance(last_id, str) or not _ID_CHARS.fullmatch(last_id):
        raise bad
    if value is not None and not isinstance(value, (str, int, float, bool)):
        raise bad
    return value, last_id


def _iso(at_us: int) -> str:
    return datetime.fromtimestamp(at_us / 1_000_000, UTC).isoformat()


def row_dict(row: ListedTrajectory, body: dict[str, Any]) -> dict[str, Any]:
    """The public row: ``start_time`` as saved, else when the trajectory was first saved."""
    start = body.get("start_time")
    return {
        "id": row.id,
        "task": row.task,
        "agent_type": row.agent_type,
        "steps": row.steps,
        "total_reward": row.total_reward,
        "success": row.success,
        "start_time": start if start is not None else _iso(row.created_at),
        "end_time": body.get("end_time"),
        "parent_trajectory_id": row.parent_trajectory_id,
        "parent_step_number": row.parent_step_number,
    }


def _sort_value(row: ListedTrajectory, order_by: str) -> Any:
    if order_by == "start_time":
        return row.created_at
    value = getattr(row, order_by)
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def page(
    query: TrajectoryQuery,
    fetch: Callable[[TrajectoryQuery], list[ListedTrajectory]],
    bodies: Callable[[TrajectoryQuery], list[tuple[str, str, bytes]]],
) -> dict[str, Any]:
    """``{"trajectories", "next_cursor"}``: one page through the backend's ``fetch`` (one more
    row than asked tells whether there is a next page)."""
    limit = query.limit or 1
    if query.order_by == "end_time":
        rows, values = _end_time_page(query, fetch, bodies, limit + 1)
    else:
        rows = fetch(replace(query, limit=limit + 1))
        values = [_sort_value(row, query.order_by) for row in rows]
    decoded = [codec.load(row.codec, row.body) for row in rows[:limit]]
    result = [row_dict(row, body) for row, body in zip(rows[:limit], decoded, strict=True)]
    next_cursor = None
    if len(rows) > limit:
        next_cursor = _make_cursor(query, values[limit - 1], rows[limit - 1].id)
    return {"trajectories": result, "next_cursor": next_cursor}


def _end_time_page(
    query: TrajectoryQuery,
    fetch: Callable[[TrajectoryQuery], list[ListedTrajectory]],
    bodies: Callable[[TrajectoryQuery], list[tuple[str, str, bytes]]],
    want: int,
) -> tuple[list[ListedTrajectory], list[Any]]:
    """``end_time`` is a key of the body, not a column: order the selected trajectories' bodies
    here (nulls last, ties by id), then read the page's rows by id."""
    keyed: list[tuple[Any, str]] = []
    for tid, tag, body in bodies(query):
        end = codec.load(tag, body).get("end_time")
        keyed.append((str(end) if end is not None else None, tid))
    present = sorted((k for k in keyed if k[0] is not None), reverse=query.descending)
    absent = sorted((k for k in keyed if k[0] is None), key=lambda k: k[1], reverse=query.descending)
    ordered = present + absent
    if query.after is not None:
        value, last_id = query.after
        ordered = [k for k in ordered if _after_key(k, value, last_id, query.descending)]
    chosen = ordered[:want]
    ids = tuple(tid for _, tid in chosen)
    by_id = {row.id: row for row in fetch(replace(query, ids=ids, order_by="id", after=None, limit=None))}
    rows = [by_id[tid] for _, tid in chosen if tid in by_id]
    return rows, [value for value, tid in chosen if tid in by_id]


def _after_key(key: tuple[Any, str], value: Any, last_id: str, descending: bool) -> bool:
    """Whether ``key`` comes after the cursor's row in the order (nulls last)."""
    end, tid = key
    if value is None:
        return end is None and (tid < last_id if descending else tid > last_id)
    if end is None:
        return True
    return (end, tid) < (value, last_id) if descending else (end, tid) > (value, last_id)
