"""The AdminStore role of the SQL backends: statistics, health checks, pool status,
maintenance, the read-only validation scans and read-only queries."""

from __future__ import annotations

import time
from abc import abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

from sqlalchemy import (
    Connection,
    Table,
    exists,
    func,
    select,
)
from sqlalchemy.pool import QueuePool

from ...errors import (
    FleDBError,
)
from ...schema import (
    agent_outputs,
    blobs,
    environment_feedbacks,
    game_state_parts,
    game_states,
    search_nodes,
    steps,
    trajectories,
)
from ...storage.engine import CODEC_MANIFEST, StoredBlob, manifest_id
from ..base import (
    AdminStore,
    StoredStep,
)
from ..readonly import ReadOnlyLogin
from .checkpoints import _RECORD_KINDS, SQLCheckpoints
from .core import _VERIFY_CHUNK, _idempotent, _rowcount
from .thinning import thinned_state

#: Tables whose rows :meth:`SQLAdmin.statistics` counts.
_COUNTED = (trajectories, steps, game_states, agent_outputs, environment_feedbacks, blobs, search_nodes)


def _manifest_problem(state_id: str | None, parts: list[tuple[str, str]]) -> list[tuple[str, str]]:
    if state_id is None:
        return []
    if not parts:
        return [(state_id, "has no parts")]
    if manifest_id(parts) != state_id:
        return [(state_id, f"its parts {sorted(parts)} do not add up to its id")]
    return []


class SQLAdmin(SQLCheckpoints, AdminStore):
    """Operations and validation; every method here reads, except :meth:`maintain`."""

    def __init__(self, settings: Any) -> None:
        super().__init__(settings)
        self._login = self._make_read_only_login()

    def close(self) -> None:
        if self._login is not None:
            self._login.close()
        super().close()

    @_idempotent
    def read_only_query(self, sql: str, params: Sequence[Any] | Mapping[str, Any]) -> list[dict[str, Any]]:
        if params:
            sql = self.bind_placeholders(sql)
        with self._translate(), self._read_only_connection() as conn:
            return self._read_only_rows(conn, sql, params)

    def bind_placeholders(self, sql: str) -> str:
        """``sql`` written with ``%s`` placeholders (``%%``: a literal ``%``) in the driver's
        parameter style. Default: the driver's style is ``%s`` (psycopg, PyMySQL)."""
        return sql

    def _make_read_only_login(self) -> ReadOnlyLogin | None:
        """The SELECT-only login read-only queries run as (see ``backends.readonly``); None
        (the default): they run on a pooled connection, made read-only by the dialect."""
        return None

    def _read_only_connection(self) -> AbstractContextManager[Connection]:
        return self._login.connect() if self._login is not None else self.engine.connect()

    @abstractmethod
    def _read_only_rows(
        self, conn: Connection, sql: str, params: Sequence[Any] | Mapping[str, Any]
    ) -> list[dict[str, Any]]:
        """Run one statement so that it cannot write (the dialect's means), stopped after
        ``query_timeout``; at most ``query_max_rows`` rows, as dicts (``readonly.capped_rows``)."""

    @_idempotent
    def statistics(self) -> dict[str, Any]:
        with self._read() as conn:
            counted = {table.name: self._count(conn, table) for table in _COUNTED}
            # Two scalar subqueries: each is one probe at an end of ix_steps_created.
            oldest, newest = conn.execute(
                select(
                    select(func.min(steps.c.created_at)).scalar_subquery(),
                    select(func.max(steps.c.created_at)).scalar_subquery(),
                )
            ).one()
            raw = conn.execute(select(func.coalesce(func.sum(game_states.c.raw_size), 0))).scalar()
            tables = self._table_sizes(conn)
        return {
            **{name: count for name, (count, _) in counted.items()},
            "exact_counts": all(exact for _, exact in counted.values()),
            "size": self._total_size(tables),
            "tables": tables,
            "game_state_bytes": {
                "raw": int(raw or 0),
                "stored": sum(tables.get(t.name, 0) for t in (blobs, game_state_parts, game_states)),
            },
            "oldest_step_us": oldest,
            "newest_step_us": newest,
        }

    def _count(self, conn: Connection, table: Table) -> tuple[int, bool]:
        """``(rows, exact)``; the default counts exactly (SQLite reads the smallest index)."""
        return int(conn.execute(select(func.count()).select_from(table)).scalar() or 0), True

    @abstractmethod
    def _table_sizes(self, conn: Connection) -> dict[str, int]:
        """Bytes on disk of each fle-db table with its indexes."""

    def _total_size(self, tables: dict[str, int]) -> int:
        """Bytes of the whole database as fle-db sees it (default: its tables)."""
        return sum(tables.values())

    def health_checks(self) -> dict[str, dict[str, Any]]:
        checks: dict[str, dict[str, Any]] = {}
        started = time.perf_counter()
        try:
            with self._read() as conn:
                conn.execute(select(1)).scalar()
        except FleDBError as exc:
            return {"connectivity": {"status": "failing", "detail": str(exc)}}
        checks["connectivity"] = {"status": "ok", "detail": "connected", "ms": (time.perf_counter() - started) * 1000}
        try:
            status = self.migration_status()
            checks["schema"] = (
                {"status": "ok", "detail": f"at {status.current_version}"}
                if status.up_to_date
                else {"status": "degraded", "detail": f"pending migrations: {', '.join(status.pending)}"}
            )
        except FleDBError as exc:
            checks["schema"] = {"status": "failing", "detail": str(exc)}
        checks["write_probe"] = self._write_probe()
        checks["pool"] = self._pool_check()
        try:
            checks.update(self._backend_checks())
        except FleDBError as exc:
            checks["backend"] = {"status": "failing", "detail": str(exc)}
        return checks

    def _write_probe(self) -> dict[str, Any]:
        """Insert and read back a probe row in a write transaction that is rolled back."""
        if self.settings.read_only:
            return {"status": "ok", "detail": "skipped: opened read-only"}
        probe = "fle-db-health-probe"
        started = time.perf_counter()
        try:
            with self._translate(), self.engine.connect() as conn:
                conn.execution_options(fle_write=True)
                transaction = conn.begin()
                try:
                    for cursor in self._open_commit(conn):  # a commit token, as every stamped write
                        _rowcount(cursor)
                    self._ensure_trajectories(conn, [probe], 0)
                    if not self._exists(conn, probe):
                        return {"status": "failing", "detail": "a row written was not read back"}
                finally:
                    transaction.rollback()
        except FleDBError as exc:
            return {"status": "failing", "detail": f"cannot write: {exc}"}
        return {"status": "ok", "detail": "write, read, rolled back", "ms": (time.perf_counter() - started) * 1000}

    def _pool_check(self) -> dict[str, Any]:
        pool = self.pool_status()
        if pool["in_use"] >= pool["max"]:
            return {"status": "degraded", "detail": f"all {pool['max']} pooled connections in use", **pool}
        return {"status": "ok", "detail": f"{pool['in_use']} of {pool['max']} connections in use", **pool}

    @abstractmethod
    def _backend_checks(self) -> dict[str, dict[str, Any]]:
        """Checks only this backend can make (disk and WAL; server limits and replication)."""

    def pool_status(self) -> dict[str, int]:
        pool = self.engine.pool
        if isinstance(pool, QueuePool):
            return {"in_use": pool.checkedout(), "idle": pool.checkedin(), "max": pool.size()}
        return {"in_use": 0, "idle": 1, "max": 1}  # one shared in-memory connection

    def maintain(self, vacuum: bool, reindex: bool) -> list[dict[str, Any]]:
        done = []
        with self._read() as conn:  # outside any transaction: VACUUM refuses to run inside one
            raw = conn.connection.dbapi_connection
            assert raw is not None
            for action, statement in self._maintenance(vacuum, reindex):
                started = time.perf_counter()
                cursor = raw.cursor()
                try:
                    cursor.execute(statement)
                    if cursor.description is not None:  # MySQL's ANALYZE/OPTIMIZE TABLE report rows
                        cursor.fetchall()
                finally:
                    cursor.close()
                done.append({"action": action, "ms": (time.perf_counter() - started) * 1000})
        return done

    @abstractmethod
    def _maintenance(self, vacuum: bool, reindex: bool) -> list[tuple[str, str]]:
        """``(action, SQL)`` in order; each statement runs outside a transaction."""

    def structure_problems(self) -> list[tuple[str, str, str]]:
        with self._read() as conn:
            return self._structure_problems(conn)

    @abstractmethod
    def _structure_problems(self, conn: Connection) -> list[tuple[str, str, str]]:
        """The engine's own structural checks."""

    def iter_blobs(self) -> Iterator[StoredBlob]:
        base = blobs.alias("base")
        query = (
            select(
                blobs.c.id,
                blobs.c.codec,
                blobs.c.body,
                blobs.c.checksum,
                base.c.id,
                base.c.codec,
                base.c.body,
                base.c.checksum,
            )
            .select_from(blobs.outerjoin(base, base.c.id == blobs.c.base_id))
            .order_by(blobs.c.id)
            .limit(_VERIFY_CHUNK)
        )
        last = ""
        while True:
            with self._read() as conn:
                rows = conn.execute(query.where(blobs.c.id > last)).all()
            for r in rows:
                parent = StoredBlob(r[4], r[5], bytes(r[6]), r[7]) if r[4] is not None else None
                yield StoredBlob(r[0], r[1], bytes(r[2]), r[3], parent)
            if len(rows) < _VERIFY_CHUNK:
                return
            last = rows[-1][0]

    def manifest_problems(self) -> list[tuple[str, str]]:
        problems = []
        query = (
            select(game_states.c.id, game_state_parts.c.key, game_state_parts.c.blob_id)
            .select_from(game_states.outerjoin(game_state_parts, game_state_parts.c.state_id == game_states.c.id))
            .where(game_states.c.codec == CODEC_MANIFEST, ~thinned_state(game_states.c.id))
            .order_by(game_states.c.id)
        )
        with self._read() as conn:
            current: str | None = None
            parts: list[tuple[str, str]] = []
            for state_id, key, blob_id in conn.execute(query):
                if state_id != current:
                    problems += _manifest_problem(current, parts)
                    current, parts = state_id, []
                if key is not None:
                    parts.append((key, blob_id))
            problems += _manifest_problem(current, parts)
        return problems

    def iter_trajectory_ids(self) -> Iterator[str]:
        last = ""
        while True:
            with self._read() as conn:
                ids = list(
                    conn.execute(
                        select(trajectories.c.id)
                        .where(trajectories.c.id > last)
                        .order_by(trajectories.c.id)
                        .limit(_VERIFY_CHUNK)
                    ).scalars()
                )
            yield from ids
            if len(ids) < _VERIFY_CHUNK:
                return
            last = ids[-1]

    def trajectory_records(self, trajectory_id: str) -> list[tuple[str, list[StoredStep]]]:
        return [("steps", self.load_steps(trajectory_id))] + [
            (kind, self.load_step_records(kind, trajectory_id)) for kind in _RECORD_KINDS
        ]

    def reference_problems(self) -> list[tuple[str, str, str, str]]:
        parent = steps.alias("parent")
        missing_parent = ~exists().where(
            parent.c.trajectory_id == trajectories.c.parent_trajectory_id,
            parent.c.step_number == trajectories.c.parent_step_number,
        )
        problems: list[tuple[str, str, str, str]] = []
        with self._read() as conn:
            for tid, ptid, pstep in conn.execute(
                select(trajectories.c.id, trajectories.c.parent_trajectory_id, trajectories.c.parent_step_number).where(
                    trajectories.c.parent_trajectory_id.is_not(None), missing_parent
                )
            ):
                problems.append(
                    ("error", "lineage", f"trajectory {tid!r}", f"forked from missing step {pstep} of {ptid!r}")
                )
            step_parent = ~exists().where(
                parent.c.trajectory_id == steps.c.parent_trajectory_id,
                parent.c.step_number == steps.c.parent_step_number,
            )
            for tid, number, ptid, pstep in conn.execute(
                select(
                    steps.c.trajectory_id, steps.c.step_number, steps.c.parent_trajectory_id, steps.c.parent_step_number
                ).where(steps.c.parent_trajectory_id.is_not(None), step_parent)
            ):
                problems.append(
                    ("error", "lineage", f"step {number} of {tid!r}", f"names missing parent step {pstep} of {ptid!r}")
                )
            dependent = blobs.alias("dependent")
            for (blob_id,) in conn.execute(
                select(blobs.c.id).where(
                    ~exists().where(game_state_parts.c.blob_id == blobs.c.id),
                    ~exists().where(dependent.c.base_id == blobs.c.id),
                )
            ):
                problems.append(("warning", "orphan", f"blob {blob_id}", "no game state uses it (wasted space)"))
        return problems

    def numbering_problems(self) -> list[tuple[str, str]]:
        lowest, highest, count = func.min(steps.c.step_number), func.max(steps.c.step_number), func.count()
        with self._read() as conn:
            rows = conn.execute(
                select(steps.c.trajectory_id, lowest, highest, count)
                .group_by(steps.c.trajectory_id)
                .having(highest - lowest + 1 != count)
            ).all()
        return [
            (f"trajectory {tid!r}", f"steps {low}..{high} hold {n} steps: {high - low + 1 - n} missing")
            for tid, low, high, n in rows
        ]
