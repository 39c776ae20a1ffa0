"""The HistoryStore role of the SQL backends: the recovery window, consistent snapshots (as of
any commit in it), loading a snapshot (copies, restores), rewinding in place and pruning history.
The row-versioning model they rely on is :mod:`.versioned`."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Connection,
    delete,
    exists,
    func,
    select,
    update,
)

from ... import migrations
from ...errors import (
    ConflictError,
    ValidationError,
)
from ...schema import (
    HISTORY,
    VERSIONED_TABLES,
    commit_log,
    log_head,
    metadata,
)
from ..base import (
    CommitPoint,
    HistoryStore,
    Snapshot,
)
from . import versioned
from .core import SQLCore, _idempotent, _restartable, _rowcount, now_us


def _instant(at_us: int) -> str:
    """Epoch microseconds as ISO 8601 UTC, for messages."""
    return datetime.fromtimestamp(at_us / 1_000_000, tz=UTC).isoformat()


class SQLHistory(SQLCore, HistoryStore):
    """Point-in-time reads, copies and rewinds over the versioned rows."""

    #: Isolation level of :meth:`snapshot` reads (None: the engine's, which must already give one
    #: snapshot per transaction, as SQLite's WAL does).
    snapshot_isolation: str | None = None

    #: Rows per chunk when streaming a snapshot.
    snapshot_chunk_rows = 500

    def _head(self, conn: Connection) -> tuple[CommitPoint, CommitPoint]:
        row = conn.execute(select(log_head.c.horizon_seq, log_head.c.horizon_at).where(log_head.c.id == 1)).one()
        latest = conn.execute(
            select(commit_log.c.seq, commit_log.c.committed_at)
            .order_by(commit_log.c.committed_at.desc(), commit_log.c.seq.desc())
            .limit(1)
        ).one()
        return CommitPoint(row.horizon_seq, row.horizon_at), CommitPoint(latest.seq, latest.committed_at)

    @_idempotent
    def recovery_window(self) -> tuple[CommitPoint, CommitPoint]:
        with self._read() as conn:
            return self._head(conn)

    @_idempotent
    def commit_position(self) -> CommitPoint:
        with self._read() as conn:
            return self._head(conn)[1]

    def _commit_at(self, conn: Connection, at_us: int) -> CommitPoint:
        horizon, latest = self._head(conn)
        if at_us < horizon.committed_at:
            raise ValidationError(
                f"{_instant(at_us)} is before the recovery window, which starts at "
                f"{_instant(horizon.committed_at)} (history older than pitr_retention is pruned)"
            )
        if at_us > max(now_us(), latest.committed_at):
            raise ValidationError(
                f"{_instant(at_us)} is in the future; the latest commit is {_instant(latest.committed_at)}"
            )
        row = conn.execute(
            select(commit_log.c.seq, commit_log.c.committed_at)
            .where(commit_log.c.committed_at <= at_us)
            .order_by(commit_log.c.committed_at.desc(), commit_log.c.seq.desc())
            .limit(1)
        ).one()
        return CommitPoint(row.seq, row.committed_at)

    @_idempotent
    def commit_at(self, at_us: int) -> CommitPoint:
        with self._read() as conn:
            return self._commit_at(conn, at_us)

    def _check_seq(self, conn: Connection, seq: int) -> CommitPoint:
        horizon, latest = self._head(conn)
        at = conn.execute(select(commit_log.c.committed_at).where(commit_log.c.seq == seq)).scalar()
        if at is None or at < horizon.committed_at:
            raise ValidationError(
                f"commit {seq} is outside the recovery window (commits from {_instant(horizon.committed_at)} "
                f"to {_instant(latest.committed_at)})"
            )
        return CommitPoint(seq, at)

    @contextmanager
    def snapshot(self, seq: int | None = None) -> Iterator[Snapshot]:
        with self._translate(), self.engine.connect() as conn:
            if self.snapshot_isolation is not None:
                conn.execution_options(isolation_level=self.snapshot_isolation)
            with conn.begin():
                horizon, head = self._head(conn)  # the first read fixes the snapshot
                if seq is not None:
                    head = self._check_seq(conn, seq)
                at = None if seq is None else head.committed_at
                tables = {table.name: table for table in VERSIONED_TABLES}
                sources = {
                    **{name: versioned.rows_at(table, at) for name, table in tables.items()},
                    **{HISTORY[name].name: versioned.history_at(table, at) for name, table in tables.items()},
                    commit_log.name: select(commit_log).where(commit_log.c.committed_at <= head.committed_at),
                }

                def rows(name: str) -> Iterator[list[dict[str, Any]]]:
                    result = conn.execution_options(yield_per=self.snapshot_chunk_rows).execute(sources[name])
                    for chunk in result.mappings().partitions():
                        yield [dict(row) for row in chunk]

                def count(name: str) -> int:
                    return int(conn.execute(select(func.count()).select_from(sources[name].subquery())).scalar_one())

                yield Snapshot(head, horizon, migrations.current_revision(conn), rows, count)

    @_restartable
    def load_snapshot(
        self, snapshot: Snapshot, replace: bool, progress: Callable[[str, int], None] | None = None
    ) -> dict[str, int]:
        written: Counter[str] = Counter()
        lineage: list[dict[str, Any]] = []
        with self._write() as conn:
            seq: int | None = None
            if replace:
                for cursor in self._open_commit(conn):
                    _rowcount(cursor)
                self._lock_out_writers(conn)
                seq = self._seq(conn)
                versioned.delete_all(conn, self.unlink_bases_before_delete)
                names = [table.name for table in VERSIONED_TABLES]
            else:
                self._require_empty(conn)
                conn.execute(delete(commit_log))
                names = [table.name for table in VERSIONED_TABLES] + [HISTORY[t.name].name for t in VERSIONED_TABLES]
                names.append(commit_log.name)
            for name in names:
                table = metadata.tables[name]
                for done in versioned.load_rows(conn, table, snapshot.rows(name), seq, lineage):
                    written[str(name)] += done
                    if progress is not None:
                        progress(name, done)
            versioned.link_lineage(conn, lineage)
            self._after_load(conn)
            if replace:
                _rowcount(self._close_commit(conn))
            else:
                # New tokens must stay clear of every token loaded (the counter continues above
                # them; on PostgreSQL they are the base added to transaction ids).
                conn.execute(
                    update(log_head)
                    .where(log_head.c.id == 1)
                    .values(
                        seq=self._highest_token(conn),
                        committed_at=snapshot.head.committed_at,
                        horizon_seq=snapshot.horizon.seq,
                        horizon_at=snapshot.horizon.committed_at,
                    )
                )
        return dict(written)

    def _after_load(self, conn: Connection) -> None:
        """Bring what the database generates itself (identity sequences) past the rows a load
        wrote with explicit values. SQLite's AUTOINCREMENT and MySQL's AUTO_INCREMENT follow by
        themselves."""

    @staticmethod
    def _highest_token(conn: Connection) -> int:
        """The highest commit token any stored row or log entry carries."""
        tokens = [select(func.max(commit_log.c.seq))]
        tokens += [select(func.max(table.c.valid_from_seq)) for table in (*VERSIONED_TABLES, *HISTORY.values())]
        tokens += [select(func.max(table.c.valid_to_seq)) for table in HISTORY.values()]
        return max(int(conn.execute(query).scalar() or 0) for query in tokens)

    def _require_empty(self, conn: Connection) -> None:
        seq = conn.execute(select(func.count()).select_from(commit_log).where(commit_log.c.seq != 0)).scalar_one()
        used = [
            t.name
            for t in (*VERSIONED_TABLES, *HISTORY.values())
            if conn.execute(select(exists().select_from(t))).scalar()
        ]
        if seq != 0 or used:
            raise ConflictError(
                f"{self.settings.safe_url()} is not empty ({', '.join(used) or f'{seq} commits'}): "
                "a copy or restore goes into an empty database only"
            )

    @_restartable
    def rewind(self, seq: int) -> dict[str, int]:
        with self._commit() as conn:
            self._lock_out_writers(conn)
            point = self._check_seq(conn, seq)
            return versioned.rewind(conn, point.committed_at, self.unlink_bases_before_delete)

    @_restartable
    def prune_history(self, before_us: int) -> dict[str, int]:
        deleted: dict[str, int] = {}
        with self._write() as conn:
            conn.execute(update(log_head).where(log_head.c.id == 1).values(seq=log_head.c.seq))  # lock the head
            horizon, latest = self._head(conn)
            point = conn.execute(
                select(commit_log.c.seq, commit_log.c.committed_at)
                .where(commit_log.c.committed_at <= min(before_us, latest.committed_at))
                .order_by(commit_log.c.committed_at.desc(), commit_log.c.seq.desc())
                .limit(1)
            ).first()
            if point is None or point.committed_at <= horizon.committed_at:
                return deleted
            for table in HISTORY.values():
                gone = conn.execute(
                    delete(table).where(~versioned.logged_after(table.c.valid_to_seq, point.committed_at))
                )
                deleted[str(table.name)] = int(gone.rowcount)
            gone = conn.execute(delete(commit_log).where(commit_log.c.committed_at < point.committed_at))
            deleted[str(commit_log.name)] = int(gone.rowcount)
            conn.execute(
                update(log_head).where(log_head.c.id == 1).values(horizon_seq=point.seq, horizon_at=point.committed_at)
            )
        return deleted
