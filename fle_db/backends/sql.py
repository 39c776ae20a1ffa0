"""The SQL implementation of the backend contract, shared by every SQLAlchemy dialect.

Dialect differences are hooks that ``sqlite.py`` and ``postgres.py`` fill in: how the engine is
built, how a write transaction takes its lock, and which ``INSERT ... ON CONFLICT`` construct to
use. Statements are built once per backend and reused, so the hot path (``save_checkpoints``)
only binds parameters: no per-call SQL compilation, no RETURNING, one transaction per call.
"""

from __future__ import annotations

import logging
import time
from abc import abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    Insert,
    Table,
    bindparam,
    delete,
    exists,
    select,
    tuple_,
    update,
)
from sqlalchemy import exc as sa_exc

from .. import migrations
from ..errors import (
    BackendUnavailableError,
    ConflictError,
    ConnectionTimeoutError,
    DependencyError,
    FleDBError,
    NotFoundError,
)
from ..schema import (
    TRAJECTORY_CHILD_TABLES,
    agent_outputs,
    blobs,
    environment_feedbacks,
    game_state_parts,
    game_states,
    steps,
    trajectories,
    trajectory_metadata,
)
from ..storage.codec import CODEC_JSON
from ..storage.engine import CODEC_MANIFEST, EncodedState, StoredBlob
from .base import (
    Backend,
    Blob,
    Checkpoint,
    MigrationStatus,
    SaveResult,
    StoredRecord,
    StoredState,
    StoredStep,
    TrajectoryRow,
)

log = logging.getLogger("fle_db")

_EMPTY_BODY = b"{}"
_VERIFY_CHUNK = 500
#: Checkpoint part (attribute of :class:`Checkpoint`) -> its one-record-per-step table.
_STEP_RECORDS = {"agent_output": agent_outputs, "environment_feedback": environment_feedbacks}
#: ``load_records`` kinds -> table.
_RECORD_KINDS = {
    "agent_outputs": agent_outputs,
    "environment_feedbacks": environment_feedbacks,
    "metadata": trajectory_metadata,
}


def _execute(conn: Connection, stmt: Any, rows: list[dict[str, Any]]) -> None:
    """Execute ``stmt`` for ``rows``: one execute for one row, executemany for more, none for none."""
    if rows:
        conn.execute(stmt, rows[0] if len(rows) == 1 else rows)


def now_us() -> int:
    """Wall-clock time in integer microseconds since the epoch (UTC)."""
    return time.time_ns() // 1000


class SQLBackend(Backend):
    """Backend over a SQLAlchemy engine. Subclasses provide the dialect hooks below."""

    #: ``sqlalchemy.dialects.<name>.insert``: the dialect's INSERT with ``on_conflict_do_nothing``
    #: (typed Any: the SQLite and PostgreSQL constructs share that API but no common base class).
    dialect_insert: Callable[[Table], Any]

    def __init__(self, settings: Any) -> None:
        super().__init__(settings)
        self.engine: Engine = self._create_engine()
        ins = type(self).dialect_insert
        self._ensure_trajectory = ins(trajectories).on_conflict_do_nothing()
        self._insert_state = ins(game_states).on_conflict_do_nothing()
        self._insert_part = ins(game_state_parts).on_conflict_do_nothing()
        self._insert_delta = ins(blobs).on_conflict_do_nothing()
        keyframe = ins(blobs)
        # A keyframe replaces a delta of the same content, so every base stays a full blob.
        self._upsert_keyframe = keyframe.on_conflict_do_update(
            index_elements=[blobs.c.id],
            set_={
                "codec": keyframe.excluded.codec,
                "body": keyframe.excluded.body,
                "base_id": None,
                "checksum": keyframe.excluded.checksum,
            },
            where=blobs.c.base_id.is_not(None),
        )
        self._insert_step = ins(steps).on_conflict_do_nothing()
        self._insert_record = {n: ins(t).on_conflict_do_nothing() for n, t in _STEP_RECORDS.items()}
        self._upsert_metadata = self._metadata_upsert()
        self._select_latest = (
            select(
                steps.c.trajectory_id,
                steps.c.step_number,
                steps.c.game_state_id,
                steps.c.codec,
                steps.c.body,
                game_states.c.codec,
                game_states.c.body,
            )
            .select_from(steps.outerjoin(game_states, game_states.c.id == steps.c.game_state_id))
            .where(steps.c.trajectory_id == bindparam("tid"))
            .order_by(steps.c.step_number.desc())
            .limit(1)
        )
        self._select_steps = (
            select(steps.c.trajectory_id, steps.c.step_number, steps.c.game_state_id, steps.c.codec, steps.c.body)
            .where(steps.c.trajectory_id == bindparam("tid"))
            .order_by(steps.c.step_number)
        )
        self._select_state = select(game_states.c.codec, game_states.c.body).where(game_states.c.id == bindparam("sid"))
        base = blobs.alias("base")
        self._select_parts = (
            select(
                game_state_parts.c.key,
                blobs.c.id,
                blobs.c.codec,
                blobs.c.body,
                blobs.c.checksum,
                base.c.id,
                base.c.codec,
                base.c.body,
                base.c.checksum,
            )
            .select_from(
                game_state_parts.join(blobs, blobs.c.id == game_state_parts.c.blob_id).outerjoin(
                    base, base.c.id == blobs.c.base_id
                )
            )
            .where(game_state_parts.c.state_id == bindparam("sid"))
        )

    # -- dialect hooks --------------------------------------------------------------------
    @abstractmethod
    def _create_engine(self) -> Engine:
        """Build the pooled engine (pool size, timeouts, per-connection settings)."""

    @abstractmethod
    def _lock_for_migration(self, conn: Connection) -> None:
        """Take the cross-process migration lock inside the open write transaction."""

    def _metadata_upsert(self) -> Insert:
        stmt = type(self).dialect_insert(trajectory_metadata)
        excluded = stmt.excluded
        return stmt.on_conflict_do_update(  # type: ignore[no-any-return]
            index_elements=[trajectory_metadata.c.trajectory_id, trajectory_metadata.c.key],
            set_={"codec": excluded.codec, "body": excluded.body, "updated_at": excluded.updated_at},
        )

    # -- connections and errors -----------------------------------------------------------
    @contextmanager
    def _translate(self) -> Iterator[None]:
        """Turn driver errors into fle-db errors (messages carry no SQL parameters or passwords)."""
        try:
            yield
        except FleDBError:
            raise
        except sa_exc.TimeoutError as exc:
            raise ConnectionTimeoutError(
                f"no database connection became free within {self.settings.connection_timeout:g} s "
                f"(max_connections={self.settings.max_connections}); raise max_connections or "
                "connection_timeout, or close clients you no longer use"
            ) from exc
        except sa_exc.DBAPIError as exc:
            raise self._translate_dbapi(exc) from exc

    def _translate_dbapi(self, exc: sa_exc.DBAPIError) -> FleDBError:
        detail = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else type(exc).__name__
        if "database is locked" in detail:
            return ConnectionTimeoutError(
                f"the database stayed locked by another writer for {self.settings.connection_timeout:g} s "
                "(connection_timeout)"
            )
        if isinstance(exc, sa_exc.IntegrityError):
            return ConflictError(f"the write conflicts with stored data: {detail}")
        return BackendUnavailableError(f"database error on {self.settings.safe_url()}: {detail}")

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        """One write transaction: commits on success, rolls back on any error."""
        with self._translate(), self.engine.connect() as conn:
            conn.execution_options(fle_write=True)
            with conn.begin():
                yield conn

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        """A read-only snapshot (one transaction, rolled back at the end)."""
        with self._translate(), self.engine.connect() as conn:
            yield conn

    def close(self) -> None:
        self.engine.dispose()

    # -- migrations -----------------------------------------------------------------------
    def migration_status(self) -> MigrationStatus:
        with self._read() as conn:
            current = migrations.current_revision(conn)
        return MigrationStatus(current, migrations.latest_revision(), migrations.pending_revisions(current))

    def migrate(self) -> list[str]:
        if self.migration_status().up_to_date:
            return []
        with self._write() as conn:
            self._lock_for_migration(conn)
            # Re-read under the lock: another process may have migrated while we waited.
            pending = migrations.pending_revisions(migrations.current_revision(conn))
            if pending:
                log.info("migrating %s: applying %s", self.settings.safe_url(), ", ".join(pending))
                migrations.upgrade(conn)
        return pending

    # -- writes ---------------------------------------------------------------------------
    def _ensure_trajectories(self, conn: Connection, ids: Sequence[str], now: int) -> None:
        rows = [
            {"id": tid, "codec": CODEC_JSON, "body": _EMPTY_BODY, "created_at": now, "updated_at": now} for tid in ids
        ]
        conn.execute(self._ensure_trajectory, rows[0] if len(rows) == 1 else rows)

    def save_trajectory(self, trajectory_id: str, build: Callable[[tuple[str, bytes]], TrajectoryRow]) -> None:
        now = now_us()
        with self._write() as conn:
            # Create-if-missing, then lock the row: concurrent savers of one id serialise here and
            # each merges into what the previous one committed.
            self._ensure_trajectories(conn, [trajectory_id], now)
            old = conn.execute(
                select(trajectories.c.codec, trajectories.c.body)
                .where(trajectories.c.id == trajectory_id)
                .with_for_update()
            ).one()
            row = build((old.codec, old.body))
            if row.parent_trajectory_id is not None:
                self._check_fork_point(conn, row)
            conn.execute(
                update(trajectories)
                .where(trajectories.c.id == trajectory_id)
                .values(
                    agent_type=row.agent_type,
                    task=row.task,
                    total_reward=row.total_reward,
                    success=row.success,
                    parent_trajectory_id=row.parent_trajectory_id,
                    parent_step_number=row.parent_step_number,
                    codec=row.body.codec,
                    body=row.body.body,
                    updated_at=now,
                )
            )

    def _check_fork_point(self, conn: Connection, row: TrajectoryRow) -> None:
        parent, step_no = row.parent_trajectory_id, row.parent_step_number
        if parent == row.id:
            raise DependencyError(f"trajectory {row.id!r} cannot be forked from itself")
        found = conn.execute(
            select(steps.c.step_number).where(steps.c.trajectory_id == parent, steps.c.step_number == step_no)
        ).first()
        if found is None:
            raise NotFoundError(
                f"trajectory {row.id!r} is forked from step {step_no} of {parent!r}, which does not exist"
            )
        # Walk up the fork chain: the new parent must not descend from this trajectory.
        seen, cursor = {row.id}, parent
        while cursor is not None:
            if cursor in seen:
                raise DependencyError(f"forking {row.id!r} from {parent!r} would make a lineage cycle")
            seen.add(cursor)
            cursor = conn.execute(
                select(trajectories.c.parent_trajectory_id).where(trajectories.c.id == cursor)
            ).scalar()

    def save_checkpoints(self, checkpoints: Sequence[Checkpoint]) -> list[SaveResult]:
        if not checkpoints:
            return []
        now = now_us()
        with self._write() as conn:
            self._ensure_trajectories(conn, list(dict.fromkeys(cp.trajectory_id for cp in checkpoints)), now)
            states = {cp.game_state.id: cp.game_state for cp in checkpoints if cp.game_state is not None}
            if states:
                self._insert_states(conn, list(states.values()), now)
            existed: set[tuple[str, int]] = set()
            step_rows = [self._step_values(cp, now) for cp in checkpoints if cp.step is not None]
            existed |= self._insert_verified(conn, self._insert_step, steps, step_rows, now, "step")
            for part, table in _STEP_RECORDS.items():
                rows = [
                    {
                        "trajectory_id": cp.trajectory_id,
                        "step_number": cp.step_number,
                        "digest": blob.digest,
                        "codec": blob.codec,
                        "body": blob.body,
                        "created_at": now,
                    }
                    for cp in checkpoints
                    if (blob := getattr(cp, part)) is not None
                ]
                existed |= self._insert_verified(
                    conn, self._insert_record[part], table, rows, now, part.replace("_", " ")
                )
        return [
            SaveResult(
                cp.trajectory_id,
                cp.step_number,
                cp.game_state.id if cp.game_state is not None else None,
                (cp.trajectory_id, cp.step_number) not in existed,
            )
            for cp in checkpoints
        ]

    def _insert_states(self, conn: Connection, states: Sequence[EncodedState], now: int) -> None:
        """Insert states, their part links and blobs: keyframes (upserted full) before deltas."""
        keyframes: dict[str, dict[str, Any]] = {}
        deltas: dict[str, dict[str, Any]] = {}
        for state in states:
            for b in state.blobs:
                row = {
                    "id": b.id,
                    "codec": b.codec,
                    "base_id": b.base_id,
                    "body": b.body,
                    "raw_size": b.raw_size,
                    "checksum": b.checksum,
                    "created_at": now,
                }
                (deltas if b.base_id is not None else keyframes)[b.id] = row
        for blob_id in keyframes.keys() & deltas.keys():
            del deltas[blob_id]
        _execute(conn, self._upsert_keyframe, list(keyframes.values()))
        _execute(conn, self._insert_delta, list(deltas.values()))
        _execute(
            conn,
            self._insert_state,
            [
                {"id": s.id, "codec": CODEC_MANIFEST, "body": b"", "raw_size": s.raw_size, "created_at": now}
                for s in states
            ],
        )
        _execute(
            conn,
            self._insert_part,
            [{"state_id": s.id, "key": key, "blob_id": blob_id} for s in states for key, blob_id in s.parts],
        )

    @staticmethod
    def _step_values(cp: Checkpoint, now: int) -> dict[str, Any]:
        step = cp.step
        assert step is not None
        return {
            "trajectory_id": cp.trajectory_id,
            "step_number": cp.step_number,
            "parent_trajectory_id": step.parent_trajectory_id,
            "parent_step_number": step.parent_step_number,
            "reward": step.reward,
            "game_state_id": cp.game_state.id if cp.game_state is not None else None,
            "digest": step.body.digest,
            "codec": step.body.codec,
            "body": step.body.body,
            "created_at": now,
        }

    def _insert_verified(
        self, conn: Connection, stmt: Insert, table: Table, rows: list[dict[str, Any]], now: int, what: str
    ) -> set[tuple[str, int]]:
        """Insert-or-ignore ``rows``; if any was ignored, prove each stored row is identical.

        Returns the keys that were stored before this transaction. Raises ConflictError (the
        caller's transaction then rolls back) when a stored row differs.
        """
        if not rows:
            return set()
        inserted = conn.execute(stmt, rows[0] if len(rows) == 1 else rows).rowcount
        if inserted == len(rows):
            return set()
        has_state = "game_state_id" in table.c
        cols = [table.c.trajectory_id, table.c.step_number, table.c.digest, table.c.created_at]
        if has_state:
            cols.append(table.c.game_state_id)
        stored: dict[tuple[str, int], Any] = {}
        keys = list(dict.fromkeys((r["trajectory_id"], r["step_number"]) for r in rows))
        for i in range(0, len(keys), _VERIFY_CHUNK):
            chunk = keys[i : i + _VERIFY_CHUNK]
            for rec in conn.execute(select(*cols).where(tuple_(table.c.trajectory_id, table.c.step_number).in_(chunk))):
                stored[(rec.trajectory_id, rec.step_number)] = rec
        existed = set()
        for r in rows:
            key = (r["trajectory_id"], r["step_number"])
            rec = stored[key]
            if rec.digest != r["digest"] or (has_state and rec.game_state_id != r["game_state_id"]):
                raise ConflictError(
                    f"{what} {key[1]} of trajectory {key[0]!r} is already stored with different content; "
                    "stored steps are immutable: use a new step_number or fork the trajectory. "
                    "Nothing of this call was written."
                )
            if rec.created_at != now:
                existed.add(key)
        return existed

    def save_game_state(self, state: EncodedState) -> None:
        with self._write() as conn:
            self._insert_states(conn, [state], now_us())

    def save_metadata(self, trajectory_id: str, key: str, value: Blob) -> None:
        now = now_us()
        with self._write() as conn:
            self._ensure_trajectories(conn, [trajectory_id], now)
            conn.execute(
                self._upsert_metadata,
                {
                    "trajectory_id": trajectory_id,
                    "key": key,
                    "codec": value.codec,
                    "body": value.body,
                    "updated_at": now,
                },
            )

    def delete_trajectory(self, trajectory_id: str, cascade: bool) -> list[str]:
        with self._write() as conn:
            if not self._exists(conn, trajectory_id):
                raise NotFoundError(f"trajectory {trajectory_id!r} does not exist")
            order, frontier = [trajectory_id], [trajectory_id]
            while frontier:
                forks = self._dependents(conn, frontier)
                forks = [f for f in forks if f not in order]
                if forks and not cascade:
                    shown = ", ".join(repr(f) for f in forks[:10])
                    raise DependencyError(
                        f"trajectory {trajectory_id!r} has forks that depend on it ({shown}"
                        f"{', ...' if len(forks) > 10 else ''}); delete them first or pass cascade=True"
                    )
                order.extend(forks)
                frontier = forks
            for tid in reversed(order):  # forks before their parents (foreign keys)
                self._delete_one(conn, tid)
        return order

    def _dependents(self, conn: Connection, ids: list[str]) -> list[str]:
        forks = conn.execute(select(trajectories.c.id).where(trajectories.c.parent_trajectory_id.in_(ids)))
        children = conn.execute(
            select(steps.c.trajectory_id)
            .where(steps.c.parent_trajectory_id.in_(ids), steps.c.trajectory_id.not_in(ids))
            .distinct()
        )
        return list(dict.fromkeys([*forks.scalars(), *children.scalars()]))

    def _delete_one(self, conn: Connection, tid: str) -> None:
        state_ids = list(
            conn.execute(
                select(steps.c.game_state_id)
                .where(steps.c.trajectory_id == tid, steps.c.game_state_id.is_not(None))
                .distinct()
            ).scalars()
        )
        for table in TRAJECTORY_CHILD_TABLES:
            conn.execute(delete(table).where(table.c.trajectory_id == tid))
        conn.execute(delete(trajectories).where(trajectories.c.id == tid))
        self._collect_garbage(conn, state_ids)

    def _collect_garbage(self, conn: Connection, state_ids: list[str]) -> None:
        """Delete the given states that no step uses any more, then their blobs that no state
        uses and no delta needs as base (deltas first, then the keyframes they freed)."""
        for i in range(0, len(state_ids), _VERIFY_CHUNK):
            chunk = state_ids[i : i + _VERIFY_CHUNK]
            orphans = list(
                conn.execute(
                    select(game_states.c.id).where(
                        game_states.c.id.in_(chunk), ~exists().where(steps.c.game_state_id == game_states.c.id)
                    )
                ).scalars()
            )
            if not orphans:
                continue
            blob_ids = set(
                conn.execute(
                    select(game_state_parts.c.blob_id).where(game_state_parts.c.state_id.in_(orphans))
                ).scalars()
            )
            conn.execute(delete(game_state_parts).where(game_state_parts.c.state_id.in_(orphans)))
            conn.execute(delete(game_states).where(game_states.c.id.in_(orphans)))
            while blob_ids:
                candidates = list(blob_ids)
                bases = set(
                    conn.execute(
                        select(blobs.c.base_id).where(blobs.c.id.in_(candidates), blobs.c.base_id.is_not(None))
                    ).scalars()
                )
                base_alias = blobs.alias("dependent")
                conn.execute(
                    delete(blobs).where(
                        blobs.c.id.in_(candidates),
                        ~exists().where(game_state_parts.c.blob_id == blobs.c.id),
                        ~exists().where(base_alias.c.base_id == blobs.c.id),
                    )
                )
                blob_ids = bases

    # -- reads ----------------------------------------------------------------------------
    @staticmethod
    def _exists(conn: Connection, trajectory_id: str) -> bool:
        return conn.execute(select(trajectories.c.id).where(trajectories.c.id == trajectory_id)).first() is not None

    def trajectory_exists(self, trajectory_id: str) -> bool:
        with self._read() as conn:
            return self._exists(conn, trajectory_id)

    def load_trajectory(self, trajectory_id: str) -> StoredRecord | None:
        with self._read() as conn:
            rec = conn.execute(
                select(trajectories.c.codec, trajectories.c.body).where(trajectories.c.id == trajectory_id)
            ).first()
        return StoredRecord(trajectory_id, trajectory_id, rec.codec, rec.body) if rec is not None else None

    def load_steps(self, trajectory_id: str) -> list[StoredStep]:
        with self._read() as conn:
            rows = conn.execute(self._select_steps, {"tid": trajectory_id}).all()
        return [StoredStep(*row) for row in rows]

    def load_latest(self, trajectory_id: str) -> tuple[StoredStep, StoredState | None] | None:
        with self._read() as conn:
            row = conn.execute(self._select_latest, {"tid": trajectory_id}).first()
            if row is None:
                return None
            step = StoredStep(row[0], row[1], row[2], row[3], row[4])
            if row[2] is None:
                return step, None
            return step, self._stored_state(conn, row[2], row[5], row[6])

    def load_game_state(self, state_id: str) -> StoredState | None:
        with self._read() as conn:
            row = conn.execute(self._select_state, {"sid": state_id}).first()
            return self._stored_state(conn, state_id, row[0], row[1]) if row is not None else None

    def _stored_state(self, conn: Connection, state_id: str, codec: str, body: bytes) -> StoredState:
        if codec != CODEC_MANIFEST:
            return StoredState(state_id, codec, body)
        parts = []
        for r in conn.execute(self._select_parts, {"sid": state_id}):
            base = StoredBlob(r[5], r[6], r[7], r[8]) if r[5] is not None else None
            parts.append((r[0], StoredBlob(r[1], r[2], r[3], r[4], base)))
        return StoredState(state_id, codec, body, tuple(parts))

    def load_records(self, kind: str, trajectory_id: str) -> list[StoredRecord]:
        table = _RECORD_KINDS[kind]
        key = table.c.key if kind == "metadata" else table.c.step_number
        with self._read() as conn:
            rows = conn.execute(
                select(table.c.trajectory_id, key, table.c.codec, table.c.body)
                .where(table.c.trajectory_id == trajectory_id)
                .order_by(key)
            ).all()
        return [StoredRecord(*row) for row in rows]
