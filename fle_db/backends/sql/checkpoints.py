"""Checkpoint writes and reads of the SQL backends: trajectories, steps, agent outputs,
environment feedbacks, game states with their blobs, metadata (part of the CheckpointStore role)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Collection, Sequence
from dataclasses import replace
from typing import Any

from sqlalchemy import (
    Connection,
    Table,
    and_,
    bindparam,
    func,
    null,
    select,
    tuple_,
    update,
)

from ...errors import (
    ConflictError,
    DataIntegrityError,
    DependencyError,
    MissingReferenceError,
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
    trajectory_metadata,
)
from ...storage.codec import CODEC_JSON
from ...storage.engine import CODEC_MANIFEST, EncodedRecord, EncodedState, StoredBlob
from ..base import (
    Blob,
    Checkpoint,
    ListedTrajectory,
    SaveResult,
    StepPage,
    StoredCheckpoint,
    StoredRecord,
    StoredState,
    StoredStep,
    TrajectoryQuery,
    TrajectoryRow,
)
from . import browse, versioned
from .core import _VERIFY_CHUNK, SQLCore, _idempotent, _Raw, _restartable, _rowcount, now_us

_EMPTY_BODY = b"{}"
#: How many trajectory ids a backend remembers as stored (see ``SQLCheckpoints.save_checkpoints``).
_KNOWN_TRAJECTORIES = 4096


#: Checkpoint part (attribute of :class:`Checkpoint`) -> its one-record-per-step table.
_STEP_RECORDS = {"agent_output": agent_outputs, "environment_feedback": environment_feedbacks}


#: ``load_step_records`` kinds -> table.
_RECORD_KINDS = {"agent_outputs": agent_outputs, "environment_feedbacks": environment_feedbacks}


def _step_columns(table: Table) -> list[Any]:
    """The columns of a :class:`StoredStep`, in order (records have no game state)."""
    state = table.c.game_state_id if "game_state_id" in table.c else null()
    return [table.c.trajectory_id, table.c.step_number, state, table.c.codec, table.c.body, table.c.digest,
            table.c.base_step_number]  # fmt: skip


def _stored_step(row: Sequence[Any]) -> StoredStep:
    return StoredStep(row[0], row[1], row[2], row[3], bytes(row[4]), row[5], row[6])


def _read_statements(dialect: Any) -> tuple[_Raw, _Raw, _Raw, Any]:
    """Resume, load-checkpoint and load-state queries: each reads a checkpoint and/or state with
    all its parts and their bases in ONE round trip (one row per part)."""
    base = blobs.alias("base")
    state_columns = [
        game_states.c.codec, game_states.c.body, game_state_parts.c.key,
        blobs.c.id, blobs.c.codec, blobs.c.body, blobs.c.checksum,
        base.c.id, base.c.codec, base.c.body, base.c.checksum,
    ]  # fmt: skip

    def with_parts(source: Any) -> Any:
        return (
            source.outerjoin(game_state_parts, game_state_parts.c.state_id == game_states.c.id)
            .outerjoin(blobs, blobs.c.id == game_state_parts.c.blob_id)
            .outerjoin(base, base.c.id == blobs.c.base_id)
        )

    select_state = (
        select(game_states.c.id, *state_columns)
        .select_from(with_parts(game_states))
        .where(game_states.c.id == bindparam("sid"))
    )
    select_states = (
        select(game_states.c.id, *state_columns)
        .select_from(with_parts(game_states))
        .where(game_states.c.id.in_(bindparam("sids", expanding=True)))
    )
    return (
        _Raw(browse.checkpoint_statement(latest=True), dialect),
        _Raw(browse.checkpoint_statement(latest=False), dialect),
        _Raw(select_state, dialect),
        select_states,
    )


def _stored_state(state_id: str, rows: Sequence[Sequence[Any]]) -> StoredState | None:
    """A state from the rows of a parts join: ``(codec, body, key, blob..., base...)`` each."""
    codec, body = rows[0][0], rows[0][1]
    if codec is None:
        return None
    if codec != CODEC_MANIFEST:
        return StoredState(state_id, codec, bytes(body))
    parts = tuple(
        (r[2], StoredBlob(r[3], r[4], bytes(r[5]), r[6], StoredBlob(r[7], r[8], bytes(r[9]), r[10]) if r[7] else None))
        for r in rows
        if r[2] is not None
    )
    return StoredState(state_id, codec, bytes(body), parts)


def _save_result(cp: Checkpoint, existed: set[tuple[str, int]]) -> SaveResult:
    return SaveResult(
        cp.trajectory_id,
        cp.step_number,
        cp.game_state.id if cp.game_state is not None else None,
        (cp.trajectory_id, cp.step_number) not in existed,
    )


def _row(cp: Checkpoint, now: int, **columns: Any) -> dict[str, Any]:
    """The row of one part of a checkpoint: its key, ``columns``, and the write's instant."""
    return {"trajectory_id": cp.trajectory_id, "step_number": cp.step_number, **columns, "created_at": now}


def _node_values(cp: Checkpoint, now: int) -> dict[str, Any]:
    node = cp.node
    assert node is not None
    return _row(cp, now, tree=node.tree, depth=node.depth, visits=node.visits, value=node.value,
                advantage=node.advantage, updated_at=now)  # fmt: skip


def _record_values(cp: Checkpoint, record: EncodedRecord, now: int, **columns: Any) -> dict[str, Any]:
    """The row of a step, agent output or feedback: ``record``'s encoded body and ``columns``."""
    return _row(cp, now, **columns, digest=record.digest, codec=record.codec, body=record.body,
                base_step_number=record.base)  # fmt: skip


class _AlreadyStored(Exception):
    """A one-trip write met a stored key (see ``SQLCheckpoints._write_checkpoints``)."""


class SQLCheckpoints(SQLCore):
    """Writes (one transaction each, idempotent per part) and reads of checkpoints."""

    def __init__(self, settings: Any) -> None:
        super().__init__(settings)
        dialect = self.engine.dialect
        self._raw_trajectory = self._raw_insert_ignore(trajectories)
        self._raw_state = self._raw_insert_ignore(game_states)
        self._raw_part = self._raw_insert_ignore(game_state_parts)
        self._raw_delta = self._raw_insert_ignore(blobs)
        self._raw_step = self._raw_insert_ignore(steps)
        self._raw_record = {part: self._raw_insert_ignore(table) for part, table in _STEP_RECORDS.items()}
        # Plain INSERTs for a one-trip write (BEGIN, INSERTs and COMMIT in one pipeline, see
        # commits_in_pipeline): a stored key fails it before anything is committed, and it runs
        # again the checking way.
        self._strict_step = self._raw_insert(steps)
        self._strict_record = {part: self._raw_insert(table) for part, table in _STEP_RECORDS.items()}
        # Explicit columns: the id is left to the database (identity / AUTOINCREMENT).
        node_keys = [c.name for c in search_nodes.c if c.name not in ("id", "valid_from_seq")]
        self._raw_node = _Raw(
            self._insert_ignore(
                type(self)
                .dialect_insert(search_nodes)
                .values({**{name: bindparam(name) for name in node_keys}, "valid_from_seq": versioned.CURRENT_SEQ}),
                search_nodes,
            ),
            dialect,
        )
        keyframe, keyframe_keys = self._stamped(blobs)
        # A keyframe replaces a delta of the same content (the row's content is the same: it
        # keeps its version).
        self._raw_keyframe = _Raw(self._upsert_keyframe(keyframe), dialect, keyframe_keys)
        self._upsert_metadata = self._upsert_metadata_value(self._stamped(trajectory_metadata)[0])
        self._select_steps = (
            select(*_step_columns(steps)).where(steps.c.trajectory_id == bindparam("tid")).order_by(steps.c.step_number)
        )
        self._select_latest, self._select_checkpoint, self._select_state, self._select_states = _read_statements(
            dialect
        )
        self._known: OrderedDict[str, None] = OrderedDict()
        self._known_lock = threading.Lock()

    def _ensure_trajectories(self, conn: Connection, ids: Sequence[str], now: int) -> None:
        self._raw_trajectory.run(
            conn,
            [
                {
                    "id": tid,
                    "codec": CODEC_JSON,
                    "body": _EMPTY_BODY,
                    "created_at": now,
                    "updated_at": now,
                }
                for tid in ids
            ],
        )

    @_idempotent
    def save_trajectory(self, trajectory_id: str, build: Callable[[tuple[str, bytes]], TrajectoryRow]) -> None:
        now = now_us()
        with self._commit() as conn:
            # Create-if-missing, then lock the row: concurrent savers of one id serialise here and
            # each merges into what the previous one committed.
            self._ensure_trajectories(conn, [trajectory_id], now)
            old = conn.execute(
                select(trajectories.c.codec, trajectories.c.body)
                .where(trajectories.c.id == trajectory_id)
                .with_for_update()
            ).one()
            row = build((old.codec, old.body))
            self._check_bodies([row.body.body])
            if row.parent_trajectory_id is not None:
                self._check_fork_point(conn, row)
            this = trajectories.c.id == trajectory_id
            versioned.archive(conn, trajectories, this)
            conn.execute(
                update(trajectories)
                .where(this)
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
                    valid_from_seq=versioned.CURRENT_SEQ,
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
            raise MissingReferenceError(
                f"trajectory {row.id!r} is forked from step {step_no} of {parent!r}, which does not exist",
                f"step {step_no} of trajectory {parent!r}",
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

    @_idempotent
    def save_checkpoints(self, checkpoints: Sequence[Checkpoint]) -> list[SaveResult]:
        if not checkpoints:
            return []
        self._check_bodies(
            body.body
            for cp in checkpoints
            for body in (cp.step.body if cp.step else None, cp.agent_output, cp.environment_feedback)
            if body is not None
        )
        self._check_bodies(blob.body for cp in checkpoints if cp.game_state for blob in cp.game_state.blobs)
        ids = list(dict.fromkeys(cp.trajectory_id for cp in checkpoints))
        with self._known_lock:
            assumed = {tid for tid in ids if tid in self._known}

        def attempt(assumed: Collection[str], one_trip: bool) -> set[tuple[str, int]]:
            with self._write(explicit=one_trip) as conn:
                return self._write_checkpoints(conn, checkpoints, now_us(), True, assumed, one_trip)

        try:
            try:
                existed = attempt(assumed, self.commits_in_pipeline)
            except _AlreadyStored:
                # A retry, or a step saved before: compare it with what is stored.
                existed = attempt(assumed, False)
        except MissingReferenceError:
            if not assumed:
                raise
            # Deleted by another process since this one stored it: create it again.
            with self._known_lock:
                for tid in ids:
                    self._known.pop(tid, None)
            existed = attempt((), False)
        with self._known_lock:
            for tid in ids:
                self._known[tid] = None
                self._known.move_to_end(tid)
            while len(self._known) > _KNOWN_TRAJECTORIES:
                self._known.popitem(last=False)
        return [_save_result(cp, existed) for cp in checkpoints]

    def _write_checkpoints(
        self,
        conn: Connection,
        checkpoints: Sequence[Checkpoint],
        now: int,
        log: bool,
        assumed: Collection[str] = (),
        one_trip: bool = False,
    ) -> set[tuple[str, int]]:
        """Insert the checkpoints' rows inside the caller's write transaction, taking the commit
        number first in the same pipeline when ``log`` (else the caller took it); returns the keys
        of the steps that were stored before (identical). ConflictError if any part differs.

        The trajectory rows are created if missing, except those of ``assumed`` (which this
        backend stored before: re-inserting them was one more statement per checkpoint); a
        write naming one that was deleted since fails with MissingReferenceError.

        ``one_trip`` (in ``_write(explicit=True)``): BEGIN and COMMIT go in the same pipeline, so
        the steps and their records are plain INSERTs, never skipped, and a stored key raises
        :class:`_AlreadyStored` (nothing committed) instead of being compared."""
        step_rows = [self._step_values(cp, now) for cp in checkpoints if cp.step is not None]
        record_rows = {
            part: [_record_values(cp, blob, now) for cp in checkpoints if (blob := getattr(cp, part)) is not None]
            for part in _STEP_RECORDS
        }
        node_rows = [_node_values(cp, now) for cp in checkpoints if cp.node is not None]
        existed: set[tuple[str, int]] = set()
        step_insert, record_inserts = (
            (self._strict_step, self._strict_record) if one_trip else (self._raw_step, self._raw_record)
        )
        # Every INSERT goes out in one pipeline (PostgreSQL: one round trip); the row counts
        # of the immutable records are read after it, and only a shortfall costs a query.
        try:
            with self._pipeline(conn):
                logged = [self._send_begin(conn)] if one_trip else []
                if log:
                    logged += self._open_commit(conn)
                ids = [tid for tid in dict.fromkeys(cp.trajectory_id for cp in checkpoints) if tid not in assumed]
                self._ensure_trajectories(conn, ids, now)
                states = {cp.game_state.id: cp.game_state for cp in checkpoints if cp.game_state is not None}
                if states:
                    self._insert_states(conn, list(states.values()), now)
                counted = [(step_insert.start(conn, step_rows), steps, step_rows, "step")]
                for part, table in _STEP_RECORDS.items():
                    rows = record_rows[part]
                    counted.append((record_inserts[part].start(conn, rows), table, rows, part.replace("_", " ")))
                # A node already stored for its step keeps its (mutable) statistics.
                self._raw_node.run(conn, node_rows)
                if log:
                    logged.append(self._close_commit(conn))
                if one_trip:
                    logged.append(self._send_commit(conn))
        except self.engine.dialect.loaded_dbapi.IntegrityError as exc:
            if one_trip and self._is_duplicate_key(exc):
                raise _AlreadyStored from exc
            raise
        for cursor in logged:
            _rowcount(cursor)
        for cursor, table, rows, what in counted:
            inserted = _rowcount(cursor)
            if inserted != len(rows):
                existed |= self._verify_stored(conn, table, rows, now, what)
        return existed

    @_restartable
    def append_checkpoint(
        self, trajectory_id: str, build: Callable[[int], Checkpoint]
    ) -> tuple[SaveResult, int | None]:
        now = now_us()
        with self._commit() as conn:
            # Create-if-missing, then lock the trajectory row (PostgreSQL; SQLite's write
            # transaction already excludes every other writer): appenders to one trajectory
            # serialise here, so each reads the step number the previous one committed.
            self._ensure_trajectories(conn, [trajectory_id], now)
            forked_at = conn.execute(
                select(trajectories.c.parent_step_number).where(trajectories.c.id == trajectory_id).with_for_update()
            ).scalar()
            last = conn.execute(
                select(func.max(steps.c.step_number)).where(steps.c.trajectory_id == trajectory_id)
            ).scalar()
            # A fork without steps continues from its fork point.
            if last is None:
                last = forked_at if forked_at is not None else -1
            checkpoint = build(int(last) + 1)
            existed = self._write_checkpoints(conn, [checkpoint], now, log=False)
            node_id = None
            if checkpoint.node is not None:
                node_id = conn.execute(
                    select(search_nodes.c.id).where(
                        search_nodes.c.trajectory_id == trajectory_id,
                        search_nodes.c.step_number == checkpoint.step_number,
                    )
                ).scalar_one()
        return _save_result(checkpoint, existed), node_id

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
        self._raw_keyframe.run(conn, list(keyframes.values()))
        self._raw_delta.run(conn, list(deltas.values()))
        self._raw_state.run(
            conn,
            [
                {
                    "id": s.id,
                    "codec": CODEC_MANIFEST,
                    "body": b"",
                    "raw_size": s.raw_size,
                    "created_at": now,
                }
                for s in states
            ],
        )
        self._raw_part.run(
            conn,
            [{"state_id": s.id, "key": key, "blob_id": blob_id} for s in states for key, blob_id in s.parts],
        )

    @staticmethod
    def _step_values(cp: Checkpoint, now: int) -> dict[str, Any]:
        step = cp.step
        assert step is not None
        state = cp.game_state.id if cp.game_state is not None else None
        return _record_values(cp, step.body, now, parent_trajectory_id=step.parent_trajectory_id,
                              parent_step_number=step.parent_step_number, reward=step.reward,
                              game_state_id=state)  # fmt: skip

    def _verify_stored(
        self, conn: Connection, table: Table, rows: list[dict[str, Any]], now: int, what: str
    ) -> set[tuple[str, int]]:
        """Some of ``rows`` were ignored as already stored: prove each stored row identical.

        Returns the keys that were stored before this transaction. Raises ConflictError (the
        caller's transaction then rolls back) when a stored row differs.
        """
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

    @_idempotent
    def save_game_state(self, state: EncodedState) -> None:
        self._check_bodies(blob.body for blob in state.blobs)
        with self._commit() as conn:
            self._insert_states(conn, [state], now_us())

    @_idempotent
    def save_metadata(self, trajectory_id: str, key: str, value: Blob) -> None:
        self._check_bodies([value.body])
        now = now_us()
        with self._commit() as conn:
            self._ensure_trajectories(conn, [trajectory_id], now)
            versioned.archive(
                conn,
                trajectory_metadata,
                and_(trajectory_metadata.c.trajectory_id == trajectory_id, trajectory_metadata.c.key == key),
            )
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

    @_idempotent
    def trajectory_exists(self, trajectory_id: str) -> bool:
        with self._read() as conn:
            return self._exists(conn, trajectory_id)

    @_idempotent
    def load_trajectory(self, trajectory_id: str) -> StoredRecord | None:
        with self._read() as conn:
            rec = conn.execute(
                select(trajectories.c.codec, trajectories.c.body).where(trajectories.c.id == trajectory_id)
            ).first()
        return StoredRecord(trajectory_id, trajectory_id, rec.codec, rec.body) if rec is not None else None

    @_idempotent
    def load_steps(self, trajectory_id: str) -> list[StoredStep]:
        with self._read() as conn:
            rows = conn.execute(self._select_steps, {"tid": trajectory_id}).all()
        return [_stored_step(row) for row in rows]

    @_idempotent
    def load_checkpoint(self, trajectory_id: str, step_number: int | None) -> StoredCheckpoint | None:
        with self._read() as conn:
            if step_number is None:
                rows = self._select_latest.fetch(conn, {"tid": trajectory_id})
            else:
                rows = self._select_checkpoint.fetch(conn, {"tid": trajectory_id, "n": step_number})
            if not rows or rows[0][3] is None:
                return None
            step, output, feedback = (
                self._with_bases(conn, record, table) if record is not None else None
                for record, table in zip(browse.records_of(rows[0]), browse.RECORD_TABLES, strict=True)
            )
        assert step is not None
        if step.game_state_id is None:
            return StoredCheckpoint(step, output, feedback, None)
        state = _stored_state(step.game_state_id, [r[browse.STATE_OFFSET :] for r in rows])
        if state is None:
            raise DataIntegrityError(
                f"step {step.step_number} of {trajectory_id!r} names game state {step.game_state_id}, which is missing"
            )
        return StoredCheckpoint(step, output, feedback, state)

    @_idempotent
    def list_trajectories(self, query: TrajectoryQuery) -> list[ListedTrajectory]:
        with self._read() as conn:
            return [browse.listed(row) for row in conn.execute(browse.list_statement(query))]

    @_idempotent
    def trajectory_bodies(self, query: TrajectoryQuery) -> list[tuple[str, str, bytes]]:
        with self._read() as conn:
            return [(tid, codec, bytes(body)) for tid, codec, body in conn.execute(browse.bodies_statement(query))]

    def _with_bases(self, conn: Connection, step: StoredStep, table: Table = steps) -> StoredStep:
        """Attach the keyframe a delta record of ``table`` needs, unless attached already; deeper
        links (rare: a retried keyframe that was stored as a delta before) are read one by one."""
        if step.base_step_number is None:
            return step
        if step.base is not None:
            return replace(step, base=self._with_bases(conn, step.base, table))
        row = conn.execute(
            select(*_step_columns(table)).where(
                table.c.trajectory_id == step.trajectory_id, table.c.step_number == step.base_step_number
            )
        ).first()
        if row is None:
            raise DataIntegrityError(
                f"{table.name} record {step.step_number} of {step.trajectory_id!r} is a delta of missing record "
                f"{step.base_step_number}"
            )
        return replace(step, base=self._with_bases(conn, _stored_step(row), table))

    @_idempotent
    def load_step(self, trajectory_id: str, step_number: int) -> StoredStep | None:
        with self._read() as conn:
            row = conn.execute(
                select(*_step_columns(steps)).where(
                    steps.c.trajectory_id == trajectory_id, steps.c.step_number == step_number
                )
            ).first()
            return self._with_bases(conn, _stored_step(row)) if row is not None else None

    @_idempotent
    def load_game_state(self, state_id: str) -> StoredState | None:
        with self._read() as conn:
            rows = self._select_state.fetch(conn, {"sid": state_id})
        return _stored_state(state_id, [r[1:] for r in rows]) if rows else None

    @_idempotent
    def load_game_states(self, state_ids: Sequence[str]) -> dict[str, StoredState]:
        rows_by_id: dict[str, list[Any]] = {}
        with self._read() as conn:
            for i in range(0, len(state_ids), _VERIFY_CHUNK):
                for row in conn.execute(self._select_states, {"sids": list(state_ids[i : i + _VERIFY_CHUNK])}):
                    rows_by_id.setdefault(row[0], []).append(row[1:])
        found = {sid: _stored_state(sid, rows) for sid, rows in rows_by_id.items()}
        return {sid: state for sid, state in found.items() if state is not None}

    @_idempotent
    def load_step_records(self, kind: str, trajectory_id: str) -> list[StoredStep]:
        table = _RECORD_KINDS[kind]
        with self._read() as conn:
            rows = conn.execute(
                select(*_step_columns(table))
                .where(table.c.trajectory_id == trajectory_id)
                .order_by(table.c.step_number)
            ).all()
        return [_stored_step(row) for row in rows]

    @_idempotent
    def load_step_page(self, trajectory_id: str, after: int | None, max_steps: int, max_bytes: int) -> StepPage:
        with self._read() as conn:
            sizes, complete = self._record_sizes(conn, trajectory_id, after, max_steps)
            if not sizes:
                return StepPage([], [], [], False)
            total, last = 0, sizes[0][0]
            for number, size in sizes:
                total += size
                if total > max_bytes and number != sizes[0][0]:
                    break
                last = number
            pages = [
                self._record_range(conn, table, trajectory_id, sizes[0][0], last) for table in browse.RECORD_TABLES
            ]
        return StepPage(pages[0], pages[1], pages[2], not complete or last != sizes[-1][0])

    @staticmethod
    def _record_sizes(
        conn: Connection, trajectory_id: str, after: int | None, limit: int
    ) -> tuple[list[tuple[int, int]], bool]:
        """``(step_number, stored bytes of its records)`` of the next numbers after ``after``
        (without reading the bodies), and whether they are all that remain. Each table is read
        ``limit`` rows ahead; numbers beyond the first table's last row read are left out."""
        totals: dict[int, int] = {}
        horizon: int | None = None
        for table in browse.RECORD_TABLES:
            query = select(table.c.step_number, func.length(table.c.body)).where(table.c.trajectory_id == trajectory_id)
            if after is not None:
                query = query.where(table.c.step_number > after)
            rows = conn.execute(query.order_by(table.c.step_number).limit(limit)).all()
            for number, size in rows:
                totals[number] = totals.get(number, 0) + int(size)
            if len(rows) == limit:
                horizon = rows[-1][0] if horizon is None else min(horizon, rows[-1][0])
        return sorted((n, size) for n, size in totals.items() if horizon is None or n <= horizon), horizon is None

    def _record_range(
        self, conn: Connection, table: Table, trajectory_id: str, first: int, last: int
    ) -> list[StoredStep]:
        """The records of ``table`` numbered ``first``..``last`` in order, each delta whose
        keyframe lies outside the range with it attached (read once, shared)."""
        rows = [
            _stored_step(row)
            for row in conn.execute(
                select(*_step_columns(table))
                .where(table.c.trajectory_id == trajectory_id, table.c.step_number.between(first, last))
                .order_by(table.c.step_number)
            )
        ]
        # A keyframe missing altogether is reported when its delta is decoded.
        wanted = {r.base_step_number for r in rows if r.base_step_number is not None} - {r.step_number for r in rows}
        outside: dict[int, StoredStep] = {}
        if wanted:
            for row in conn.execute(
                select(*_step_columns(table)).where(
                    table.c.trajectory_id == trajectory_id, table.c.step_number.in_(sorted(wanted))
                )
            ):
                keyframe = self._with_bases(conn, _stored_step(row), table)
                outside[keyframe.step_number] = keyframe
        return [replace(r, base=outside[r.base_step_number]) if r.base_step_number in outside else r for r in rows]

    @_idempotent
    def game_state_sizes(self, state_ids: Sequence[str]) -> dict[str, int]:
        sizes: dict[str, int] = {}
        with self._read() as conn:
            for i in range(0, len(state_ids), _VERIFY_CHUNK):
                query = select(game_states.c.id, game_states.c.raw_size).where(
                    game_states.c.id.in_(state_ids[i : i + _VERIFY_CHUNK])
                )
                sizes.update((sid, int(size)) for sid, size in conn.execute(query))
        return sizes

    @_idempotent
    def load_metadata(self, trajectory_id: str) -> list[StoredRecord]:
        table = trajectory_metadata
        with self._read() as conn:
            rows = conn.execute(
                select(table.c.trajectory_id, table.c.key, table.c.codec, table.c.body)
                .where(table.c.trajectory_id == trajectory_id)
                .order_by(table.c.key)
            ).all()
        return [StoredRecord(*row) for row in rows]
