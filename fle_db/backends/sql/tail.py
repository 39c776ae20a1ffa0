"""The TailStore role of the SQL backends: the steps committed after a position, in commit order.

A step row carries its commit's token (``valid_from_seq``, indexed by ``ix_steps_commit``), and
``commit_log`` maps the token to the commit's instant (indexed), which orders commits (see
:mod:`.versioned`). So "the steps committed after position P, up to instant B" is a range of the
log joined to the steps of its tokens: it follows the commits, never row ids or step creation
times, and a transaction that commits late with an early row is found by its commit.

Where writers run concurrently (PostgreSQL, MySQL/MariaDB), a commit in flight can still be
logged at or below the newest visible instant; :meth:`SQLTail.tail_mark` reports those writers
(the dialect's :meth:`SQLTail._writers_in_flight`) so that the tail only reads up to a settled
instant. Where writers are serialized by the ``log_head`` counter (SQLite) a commit that becomes
visible always has a later instant than every commit visible before it, and nothing is in flight.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, Connection, Table, and_, or_, select

from ...schema import agent_outputs, commit_log, environment_feedbacks, steps, trajectories
from ..base import StoredStep, TailedStep, TailMark, TailPosition, TailStore
from .checkpoints import SQLCheckpoints, _step_columns, _stored_step
from .core import _idempotent
from .history import SQLHistory
from .idlist import in_ids

#: The record tables a tail reads with ``with_parts``.
_PARTS = (agent_outputs, environment_feedbacks)


def _after(position: TailPosition) -> ColumnElement[bool]:
    """``(committed_at, seq, trajectory_id, step_number) > position``, spelled out so that every
    engine can use the instant index for the first term."""
    at, seq = commit_log.c.committed_at, commit_log.c.seq
    later_commit = or_(at > position.committed_at, and_(at == position.committed_at, seq > position.seq))
    if position.trajectory_id is None:
        return later_commit
    tid, number = steps.c.trajectory_id, steps.c.step_number
    same_commit = and_(at == position.committed_at, seq == position.seq)
    later_step = or_(tid > position.trajectory_id, and_(tid == position.trajectory_id, number > position.step_number))
    return or_(later_commit, and_(same_commit, later_step))


class SQLTail(SQLCheckpoints, SQLHistory, TailStore):
    """The live tail's two reads: the mark (head + writers in flight) and the steps after a position."""

    def _writers_in_flight(self, conn: Connection) -> frozenset[str]:
        """The open write transactions that may still log a commit at or below the head just
        read (called after reading it, on the same connection). Default: none — writers bump the
        ``log_head`` counter first, so they commit in token order and instant order alike."""
        return frozenset()

    @_idempotent
    def tail_mark(self) -> TailMark:
        with self._read() as conn:
            head = self._head(conn)[1]
            return TailMark(head, self._writers_in_flight(conn))

    @_idempotent
    def tail_steps(
        self,
        after: TailPosition,
        upto: int,
        trajectory_ids: Sequence[str] | None,
        task: str | None,
        with_parts: bool,
        limit: int,
    ) -> list[TailedStep]:
        source: Any = steps.join(commit_log, commit_log.c.seq == steps.c.valid_from_seq)
        conditions = [
            commit_log.c.committed_at >= after.committed_at,
            commit_log.c.committed_at <= upto,
            _after(after),
        ]
        if trajectory_ids is not None:
            conditions.append(in_ids(steps.c.trajectory_id, trajectory_ids))
        if task is not None:
            source = source.join(trajectories, trajectories.c.id == steps.c.trajectory_id)
            conditions.append(trajectories.c.task == task)
        query = (
            select(commit_log.c.committed_at, commit_log.c.seq, *_step_columns(steps))
            .select_from(source)
            .where(*conditions)
            .order_by(commit_log.c.committed_at, commit_log.c.seq, steps.c.trajectory_id, steps.c.step_number)
            .limit(limit)
        )
        found: list[TailedStep] = []
        with self._read() as conn:
            for row in conn.execute(query).all():
                step = self._with_bases(conn, _stored_step(row[2:]))
                position = TailPosition(row[0], row[1], step.trajectory_id, step.step_number)
                if with_parts:
                    output, feedback = (self._tailed_part(conn, table, step) for table in _PARTS)
                    found.append(TailedStep(position, step, output, feedback))
                else:
                    found.append(TailedStep(position, step))
        return found

    def _tailed_part(self, conn: Connection, table: Table, step: StoredStep) -> StoredStep | None:
        """The agent output or environment feedback (``table``) of ``step``, or None."""
        trajectory_id, step_number = step.trajectory_id, step.step_number
        row = conn.execute(
            select(*_step_columns(table)).where(
                table.c.trajectory_id == trajectory_id, table.c.step_number == step_number
            )
        ).first()
        return None if row is None else self._with_bases(conn, _stored_step(row), table)
