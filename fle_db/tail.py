"""The live tail: each newly committed step, in commit order, across processes and machines.

:func:`start` reads where to begin (a cursor, or the current end) and returns a :class:`Tail`
(``for step in tail``) or an :class:`AsyncTail` (``async for step in tail``); both run the same
:class:`Follower`, which the client's ``tail()`` (and the async client's) wraps.

**What it follows.** The backend's TailStore role (:mod:`fle_db.backends.sql.tail`): the steps
whose commit is logged after a position, ordered by ``(commit instant, commit token,
trajectory_id, step_number)``. Commit order, not row ids: a transaction that commits late is
found at its commit. Where writers commit concurrently (PostgreSQL) a commit in flight may still
be logged at or below the newest visible instant, so each round first reads a *mark* (the newest
commit and the writers still open, :class:`~fle_db.backends.base.TailMark`) and fetches only up
to the newest mark whose writers have all ended since (read in a later statement than the mark):
nothing is skipped, nothing is yielded twice, and the order never goes back.

**Cursors** are opaque strings naming a step's place in that order; ``tail(cursor=c)`` resumes
just after the step that carried ``c``. They are checked (:func:`decode_cursor`): a malformed one
is a :class:`~fle_db.errors.ValidationError`.

**Wake-ups.** Between rounds the tail waits for the backend's hint (PostgreSQL: ``LISTEN``, see
:meth:`~fle_db.backends.base.TailStore.tail_listener`) or ``poll_interval`` seconds, whichever
comes first; a hint is never trusted, every round reads the commit log again.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

import orjson

from . import instants
from .backends.base import CheckpointStore, TailedStep, TailListener, TailMark, TailPosition, TailStore, as_tail
from .errors import ValidationError
from .ops.metrics import Metrics, timed
from .storage.records import Records
from .validation import check_float, check_id, check_ids, check_text

#: Cursor format version (the first characters of every cursor).
CURSOR_PREFIX = "t1."
#: Longest cursor accepted (a real one is under 400 characters).
CURSOR_MAX_LENGTH = 1000
#: Steps fetched per round at most (a full round is followed by another at once).
BATCH = 500
#: Marks kept waiting for their writers at most (dropping one only delays a step, never skips it).
MAX_PENDING = 64
#: Seconds between rounds while marks wait for writers in flight (they end within milliseconds),
#: and at least between two rounds however many wake-ups arrive.
SETTLE_INTERVAL = 0.05
_INT64 = 2**63 - 1

#: Turns what the backend found into what the tail yields (the client decodes the records).
Decode = Callable[[TailedStep, str], dict[str, Any]]


def encode_cursor(position: TailPosition) -> str:
    """The opaque cursor of ``position``."""
    raw = orjson.dumps([position.committed_at, position.seq, position.trajectory_id, position.step_number])
    return CURSOR_PREFIX + base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: Any) -> TailPosition:
    """The position a cursor from :func:`encode_cursor` names.

    Raises:
        ValidationError: ``cursor`` is not a string this module made (wrong type, too long, bad
            encoding, fields of the wrong type or out of range).
    """
    if not isinstance(cursor, str):
        raise ValidationError(f"cursor must be a string from a tail step's 'cursor'; got {type(cursor).__name__}")
    if len(cursor) > CURSOR_MAX_LENGTH or not cursor.startswith(CURSOR_PREFIX):
        raise ValidationError(f"not a tail cursor: {cursor!r:.80}")
    body = cursor[len(CURSOR_PREFIX) :]
    try:
        fields = orjson.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    except (binascii.Error, ValueError) as exc:
        raise ValidationError(f"not a tail cursor: {cursor!r:.80}") from exc
    if not (isinstance(fields, list) and len(fields) == 4):
        raise ValidationError(f"not a tail cursor: {cursor!r:.80}")
    at, seq, trajectory_id, number = fields
    if not all(type(v) is int and 0 <= v <= _INT64 for v in (at, seq)) or type(number) is not int:
        raise ValidationError(f"not a tail cursor (bad commit position): {cursor!r:.80}")
    if trajectory_id is None:
        if number != -1:
            raise ValidationError(f"not a tail cursor (bad step): {cursor!r:.80}")
        return TailPosition(at, seq)
    if not 0 <= number <= _INT64:
        raise ValidationError(f"not a tail cursor (bad step number): {cursor!r:.80}")
    return TailPosition(at, seq, check_id(trajectory_id, "the cursor's trajectory_id"), number)


class Follower:
    """One tail's state and its rounds (blocking calls; :class:`Tail` and :class:`AsyncTail`
    schedule them). ``record(seconds, failed)`` counts each round that reads the database."""

    def __init__(
        self,
        store: TailStore,
        decode: Decode,
        after: TailPosition | None,
        *,
        trajectory_ids: Sequence[str] | None,
        task: str | None,
        with_parts: bool,
        poll_interval: float,
        timeout: float | None,
        record: Callable[[float, bool], None],
    ) -> None:
        self._store = store
        self._decode = decode
        self._filters = (trajectory_ids, task, with_parts)
        self._pending: list[TailMark] = []
        self.position = after
        self.resume = None if after is None else encode_cursor(after)
        self._fetched_upto = -1  # the bound of the last round that came back short
        self.buffer: deque[dict[str, Any]] = deque()
        self.poll_interval = poll_interval
        self.timeout = timeout
        self._record = record
        self._settling = False
        self._last_round = 0.0
        self.listener: TailListener | None = None
        self._listener_tried = False
        self.closed = False

    def begin(self) -> TailPosition:
        """The position to fetch after; without a cursor, the current end, read now (once).
        The wake-up hint listens from here on, before the first read."""
        if not self._listener_tried:
            self._listener_tried = True
            self.listener = self._store.tail_listener()
        if self.position is None:
            mark = self._store.tail_mark()
            self.position = TailPosition(mark.position.committed_at, mark.position.seq)
            self.resume = encode_cursor(self.position)
            self._pending.append(mark)
        return self.position

    def _bound(self) -> int | None:
        """Read a mark; return the newest instant up to which every commit is visible now."""
        mark = self._store.tail_mark()
        self._pending.append(mark)
        settled = [m.position.committed_at for m in self._pending if not (m.in_flight & mark.in_flight)]
        settled += [mark.position.committed_at] if not mark.in_flight else []
        bound = max(settled, default=None)
        if bound is not None:
            self._pending = [m for m in self._pending if m.position.committed_at > bound]
        if len(self._pending) > MAX_PENDING:
            del self._pending[1]
        self._settling = bool(self._pending)
        return bound

    def round(self) -> None:
        """One round: settle, then fetch the steps after the position into :attr:`buffer`."""
        started, failed = time.perf_counter(), True
        self._last_round = time.monotonic()
        try:
            position = self.begin()
            bound = self._bound()
            if bound is not None and bound > self._fetched_upto:
                trajectory_ids, task, with_parts = self._filters
                found = self._store.tail_steps(position, bound, trajectory_ids, task, with_parts, BATCH)
                for tailed in found:
                    self.position = tailed.position
                    self.buffer.append(self._decode(tailed, encode_cursor(tailed.position)))
                self._fetched_upto = bound if len(found) < BATCH else -1
            failed = False
        finally:
            self._record(time.perf_counter() - started, failed)

    def pop(self) -> dict[str, Any]:
        """The next buffered step; its cursor becomes :attr:`resume`."""
        item = self.buffer.popleft()
        self.resume = item["cursor"]
        return item

    def delay(self) -> float:
        """Seconds to wait before the next round."""
        if self._fetched_upto == -1 and self.buffer:
            return 0.0
        return min(SETTLE_INTERVAL, self.poll_interval) if self._settling else self.poll_interval

    def wait(self, seconds: float) -> None:
        """Block until the backend's wake-up hint or ``seconds``, whichever comes first."""
        if self.listener is not None:
            self.listener.wait(seconds)
            # Many writers notify many times a second: a round at most every SETTLE_INTERVAL.
            seconds = min(seconds, SETTLE_INTERVAL) - (time.monotonic() - self._last_round)
        if seconds > 0:
            time.sleep(seconds)

    def close(self) -> None:
        self.closed = True
        if self.listener is not None:
            self.listener.close()
            self.listener = None


class Tail(Iterator[dict[str, Any]]):
    """A blocking iterator over newly committed steps (see :func:`start`). It runs until
    :meth:`close` (or ``break`` out of a ``with`` block / a ``for`` loop over a generator that
    closes it), or, with a ``timeout``, until that many seconds pass without a new step."""

    def __init__(self, follower: Follower) -> None:
        follower.begin()
        self._follower = follower

    def __iter__(self) -> Tail:
        return self

    def __next__(self) -> dict[str, Any]:
        follower = self._follower
        deadline = None if follower.timeout is None else time.monotonic() + follower.timeout
        while not follower.buffer:
            if follower.closed:
                raise StopIteration
            follower.round()
            if follower.buffer:
                break
            pause = follower.delay()
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise StopIteration
                pause = min(pause, left)
            follower.wait(pause)
        return follower.pop()

    @property
    def cursor(self) -> str:
        """Where this tail stands: ``tail(cursor=...)`` resumes after the last step yielded (or
        where this tail started, before the first)."""
        return encode_cursor(self._follower.begin()) if self._follower.resume is None else self._follower.resume

    def close(self) -> None:
        """Stop: release the wake-up connection. Idempotent."""
        self._follower.close()

    def __enter__(self) -> Tail:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


class AsyncTail(AsyncIterator[dict[str, Any]]):
    """The same tail for ``async for``: every database round and wake-up wait runs in a worker
    thread (``asyncio.to_thread``), so the event loop never blocks on it. Without a cursor it
    starts at the current end as of ``async with`` (``__aenter__``), else as of the first step
    asked for."""

    def __init__(self, follower: Follower) -> None:
        self._follower = follower

    def __aiter__(self) -> AsyncTail:
        return self

    async def __anext__(self) -> dict[str, Any]:
        follower = self._follower
        deadline = None if follower.timeout is None else time.monotonic() + follower.timeout
        while not follower.buffer:
            if follower.closed:
                raise StopAsyncIteration
            await asyncio.to_thread(follower.round)
            if follower.buffer:
                break
            pause = follower.delay()
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise StopAsyncIteration
                pause = min(pause, left)
            await asyncio.to_thread(follower.wait, pause)
        return follower.pop()

    @property
    def cursor(self) -> str | None:
        """As :attr:`Tail.cursor`; None before it started (see the class)."""
        return self._follower.resume

    async def aclose(self) -> None:
        """Stop: release the wake-up connection. Idempotent."""
        await asyncio.to_thread(self._follower.close)

    async def __aenter__(self) -> AsyncTail:
        await asyncio.to_thread(self._follower.begin)
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()


def start(
    store: TailStore,
    decode: Decode,
    *,
    cursor: str | None,
    trajectory_ids: Sequence[str] | None,
    task: str | None,
    with_parts: bool,
    poll_interval: float,
    timeout: float | None,
    record: Callable[[float, bool], None],
) -> Follower:
    """A :class:`Follower` starting after ``cursor`` (None: at the current end, read now).
    Arguments are already checked, except the cursor (ValidationError)."""
    after = None if cursor is None else decode_cursor(cursor)
    return Follower(
        store,
        decode,
        after,
        trajectory_ids=trajectory_ids,
        task=task,
        with_parts=with_parts,
        poll_interval=poll_interval,
        timeout=timeout,
        record=record,
    )


def _interval(value: Any, what: str, allow_none: bool) -> float | None:
    """A number of seconds > 0 (or None where ``allow_none``)."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or check_float(value, what) is None or not 0 < value <= 86_400:
        raise ValidationError(f"{what} must be a number of seconds > 0 and <= 86400; got {value!r:.80}")
    return float(value)


def follower(
    backend: CheckpointStore,
    records: Records,
    metrics: Metrics,
    trajectory_ids: Sequence[str] | None,
    task: str | None,
    cursor: str | None,
    with_parts: bool,
    poll_interval: float,
    timeout: float | None,
) -> Follower:
    """Check a tail's arguments (as ``DatabaseClient.tail`` takes them) and return its
    :class:`Follower` over ``backend``, decoding with ``records`` and counting each round in
    ``metrics`` as ``tail_round``. Nothing is read yet. Wrap it in :class:`Tail` (which reads
    the start at once) or :class:`AsyncTail` (the async client's ``tail``).

    Raises:
        ValidationError: a malformed cursor, id, task, interval or timeout.
        UnsupportedError: the backend lacks the TailStore role.
    """
    ids = None if trajectory_ids is None else check_ids(trajectory_ids, "trajectory_ids")
    task = check_text(task, "task")
    if not isinstance(with_parts, bool):
        raise ValidationError(f"with_parts must be True or False; got {with_parts!r:.80}")
    interval = _interval(poll_interval, "poll_interval", False)
    assert interval is not None
    wait = _interval(timeout, "timeout", True)

    def decode(tailed: TailedStep, cursor: str) -> dict[str, Any]:
        step = records.steps([tailed.step])[0]
        item = {
            "cursor": cursor,
            "trajectory_id": step["trajectory_id"],
            "step_number": step["step_number"],
            "committed_at": instants.iso(tailed.position.committed_at),
            "step": step,
        }
        if with_parts:
            parts = (("agent_output", tailed.agent_output), ("environment_feedback", tailed.environment_feedback))
            for name, part in parts:
                item[name] = records.values([part])[0] if part is not None else None
        return item

    return start(
        as_tail(backend),
        decode,
        cursor=cursor,
        trajectory_ids=ids,
        task=task,
        with_parts=with_parts,
        poll_interval=interval,
        timeout=wait,
        record=lambda seconds, failed: metrics.record("tail_round", seconds, failed),
    )


class Tailing:
    """The client's :meth:`tail`; mixed into :class:`~fle_db.DatabaseClient`."""

    _backend: CheckpointStore
    _metrics: Metrics
    _records: Records

    @timed
    def tail(
        self,
        trajectory_ids: Sequence[str] | None = None,
        task: str | None = None,
        cursor: str | None = None,
        *,
        with_parts: bool = False,
        poll_interval: float = 0.25,
        timeout: float | None = None,
    ) -> Tail:
        """Follow the steps as they are committed, by any process or machine, in commit order.

        Yields one dict per newly committed step: ``{"cursor", "trajectory_id", "step_number",
        "committed_at", "step"}`` (``step`` as :meth:`load_step` gives it; ``committed_at``: the
        commit's instant, ISO 8601 UTC); ``with_parts=True`` adds ``agent_output`` and
        ``environment_feedback`` (None where absent), as :meth:`load_checkpoint` gives them (the
        game state stays out: ``load_game_state(step["game_state_id"])``). Only steps of
        ``trajectory_ids`` (None: any) and of trajectories whose ``task`` is that (None: any).

        Without ``cursor`` it starts at the current end (a commit still in flight during this
        call may fall on either side on PostgreSQL); ``cursor=item["cursor"]`` resumes exactly
        after that step, in this or any other process (none missed, none repeated). It follows
        the commit log, not row ids, so a transaction committing late is not missed. A restore
        or rewind in place commits the steps it brings back again: the tail yields them again.
        Steps whose commit is older than the recovery window (``pitr_retention``) are never
        yielded.

        The iterator waits for new steps: it wakes on the backend's hint (PostgreSQL
        ``LISTEN``; not behind PgBouncer's transaction pooling) or every ``poll_interval``
        seconds, whichever is first. It ends when closed (``close()``, or a ``with`` block), or
        after ``timeout`` seconds without a new step (None: never). ``tail.cursor`` is where it
        stands. The arguments and the cursor are checked here, and the start read now.
        Counted as ``tail`` (the call) and ``tail_round`` (each read of the commit log) in
        :meth:`get_performance_metrics`. Read-only.

        Raises:
            ValidationError: a malformed cursor, id, task, interval or timeout.
            UnsupportedError: the backend lacks the TailStore role.
            BackendUnavailableError: (from the iterator too) the database stayed unreachable
                for ``retry_deadline``; resume with ``tail.cursor``.
        """
        found = follower(
            self._backend,
            self._records,
            self._metrics,
            trajectory_ids,
            task,
            cursor,
            with_parts,
            poll_interval,
            timeout,
        )
        return Tail(found)


__all__ = ["AsyncTail", "Follower", "Tail", "Tailing", "decode_cursor", "encode_cursor", "follower", "start"]
