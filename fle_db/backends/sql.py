"""The SQL implementation of the backend contract, shared by every SQLAlchemy dialect.

Dialect differences are hooks that ``sqlite.py``, ``postgres.py`` and ``mysql.py`` fill in: how
the engine is built, how a write transaction takes its lock, how an INSERT skips or overwrites a
stored key (``ON CONFLICT`` or ``ON DUPLICATE KEY UPDATE``), and how errors are named. Statements
are built once per backend and reused, so the hot path (``save_checkpoints``) only binds
parameters: no per-call SQL compilation, no RETURNING, one transaction per call.
"""

from __future__ import annotations

import functools
import logging
import random
import threading
import time
from abc import abstractmethod
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    Engine,
    Integer,
    String,
    Table,
    and_,
    bindparam,
    case,
    cast,
    delete,
    event,
    exists,
    func,
    insert,
    literal,
    null,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.pool import QueuePool

from .. import migrations
from ..errors import (
    BackendUnavailableError,
    ClientClosedError,
    ConflictError,
    ConnectionTimeoutError,
    DataIntegrityError,
    DependencyError,
    FleDBError,
    NotFoundError,
    ReadOnlyError,
    StorageFullError,
    ValidationError,
)
from ..redact import redact
from ..schema import (
    HISTORY,
    TRAJECTORY_CHILD_TABLES,
    VERSIONED_TABLES,
    agent_outputs,
    blobs,
    commit_log,
    environment_feedbacks,
    fle_versions,
    game_state_parts,
    game_states,
    log_head,
    metadata,
    search_nodes,
    steps,
    trajectories,
    trajectory_metadata,
)
from ..storage.codec import CODEC_JSON
from ..storage.engine import CODEC_MANIFEST, EncodedState, StoredBlob, manifest_id
from . import browse, history
from .base import (
    Backend,
    Blob,
    Checkpoint,
    CleanupCriteria,
    CommitPoint,
    ListedTrajectory,
    MigrationStatus,
    NodeQuery,
    SaveResult,
    Snapshot,
    StepPage,
    StoredCheckpoint,
    StoredNode,
    StoredRecord,
    StoredState,
    StoredStep,
    TrajectoryFilter,
    TrajectoryQuery,
    TrajectoryRow,
)
from .readonly import ReadOnlyLogin

log = logging.getLogger("fle_db")
T = TypeVar("T")

_EMPTY_BODY = b"{}"
_VERIFY_CHUNK = 500
#: Checkpoint part (attribute of :class:`Checkpoint`) -> its one-record-per-step table.
_STEP_RECORDS = {"agent_output": agent_outputs, "environment_feedback": environment_feedbacks}
#: ``load_step_records`` kinds -> table.
_RECORD_KINDS = {"agent_outputs": agent_outputs, "environment_feedbacks": environment_feedbacks}
#: What a cleanup report counts, besides bytes.
_TALLIED = ("trajectories", "steps", "agent_outputs", "environment_feedbacks", "trajectory_metadata", "search_nodes",
            "game_states", "blobs")  # fmt: skip
#: Tables whose rows :meth:`SQLBackend.statistics` counts.
_COUNTED = (trajectories, steps, game_states, agent_outputs, environment_feedbacks, blobs, search_nodes)


def _step_columns(table: Table) -> list[Any]:
    """The columns of a :class:`StoredStep`, in order (records have no game state)."""
    state = table.c.game_state_id if "game_state_id" in table.c else null()
    return [table.c.trajectory_id, table.c.step_number, state, table.c.codec, table.c.body, table.c.digest,
            table.c.base_step_number]  # fmt: skip


def _stored_step(row: Sequence[Any]) -> StoredStep:
    return StoredStep(row[0], row[1], row[2], row[3], bytes(row[4]), row[5], row[6])


class _Raw:
    """A statement compiled once to the driver's SQL, executed on the raw DBAPI cursor.

    The write hot path (``save_checkpoints``) runs a handful of INSERTs per checkpoint; going
    around SQLAlchemy's per-execute parameter processing measured 758 -> 816 FLE-sized
    checkpoints/s and 37k -> 46k small steps/s in batches on SQLite. The SQL is still generated
    by SQLAlchemy for the dialect, so there is no hand-written dialect SQL.
    """

    def __init__(self, stmt: Any, dialect: Any, column_keys: list[str] | None = None) -> None:
        compiled = stmt.compile(dialect=dialect, column_keys=column_keys)
        self.sql = str(compiled)
        self.names: list[str] = list(compiled.positiontup if compiled.positional else compiled.params)
        self.positional = bool(compiled.positional)
        # Values SQLAlchemy bound itself (LIMIT 1...); the caller's row supplies the rest.
        given = set(column_keys or ())
        self.defaults = {k: v for k, v in compiled.params.items() if v is not None and k not in given}

    def params(self, row: dict[str, Any]) -> Any:
        """The driver's parameters for one row: a tuple (qmark) or a dict (pyformat)."""
        if self.defaults:
            row = {**self.defaults, **row}
        if self.positional:
            return tuple([row.get(n) for n in self.names])
        return {n: row.get(n) for n in self.names}

    def fetch(self, conn: Connection, params: dict[str, Any]) -> list[Any]:
        """Execute once and return all rows as tuples."""
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.execute(self.sql, self.params(params))
            return list(cursor.fetchall())
        finally:
            cursor.close()

    def run(self, conn: Connection, rows: Sequence[dict[str, Any]]) -> int:
        """Execute for every row (executemany for several); returns the rows affected."""
        return _rowcount(self.start(conn, rows))

    def start(self, conn: Connection, rows: Sequence[dict[str, Any]]) -> Any:
        """Send the statement for every row; returns the cursor (None for no rows), whose row
        count may only be known once a surrounding pipeline has synced (see :func:`_rowcount`)."""
        if not rows:
            return None
        params = [self.params(row) for row in rows]
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            if len(params) == 1:
                cursor.execute(self.sql, params[0])
            else:
                cursor.executemany(self.sql, params)
        except BaseException:
            cursor.close()
            raise
        return cursor


def _rowcount(cursor: Any) -> int:
    """Rows affected by a cursor from :meth:`_Raw.start` (0 for None); closes it."""
    if cursor is None:
        return 0
    try:
        return int(cursor.rowcount)
    finally:
        cursor.close()


def _idempotent(method: Callable[..., T]) -> Callable[..., T]:
    """Mark a backend method safe to re-run after a lost connection: it is retried with backoff
    until ``retry_deadline`` (see :meth:`SQLBackend._retrying`). Writes qualify because each is
    one transaction that is a no-op when already applied; deletions do not (a retry after a lost
    acknowledgement would report the trajectory missing), so they are not marked."""

    @functools.wraps(method)
    def retried(self: SQLBackend, *args: Any, **kwargs: Any) -> T:
        return self._retrying(lambda: method(self, *args, **kwargs))

    return retried


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


def _manifest_problem(state_id: str | None, parts: list[tuple[str, str]]) -> list[tuple[str, str]]:
    if state_id is None:
        return []
    if not parts:
        return [(state_id, "has no parts")]
    if manifest_id(parts) != state_id:
        return [(state_id, f"its parts {sorted(parts)} do not add up to its id")]
    return []


def _save_result(cp: Checkpoint, existed: set[tuple[str, int]]) -> SaveResult:
    return SaveResult(
        cp.trajectory_id,
        cp.step_number,
        cp.game_state.id if cp.game_state is not None else None,
        (cp.trajectory_id, cp.step_number) not in existed,
    )


def _node_values(cp: Checkpoint, now: int) -> dict[str, Any]:
    node = cp.node
    assert node is not None
    return {
        "trajectory_id": cp.trajectory_id,
        "step_number": cp.step_number,
        "tree": node.tree,
        "depth": node.depth,
        "visits": node.visits,
        "value": node.value,
        "advantage": node.advantage,
        "created_at": now,
        "updated_at": now,
    }


#: Lineage walks stop after this many hops (a guard: stored parents always precede children).
_MAX_LINEAGE = 1_000_000


def _node_select() -> Any:
    """Nodes with their step's state id, explicit parent step and that parent's node id."""
    parent = search_nodes.alias("parent_node")
    return select(
        search_nodes.c.id, search_nodes.c.trajectory_id, search_nodes.c.step_number, search_nodes.c.tree,
        search_nodes.c.depth, search_nodes.c.visits, search_nodes.c.value, search_nodes.c.advantage,
        search_nodes.c.created_at, search_nodes.c.updated_at, steps.c.game_state_id,
        steps.c.parent_trajectory_id, steps.c.parent_step_number, parent.c.id.label("parent_id"),
    ).select_from(
        search_nodes.join(
            steps,
            and_(steps.c.trajectory_id == search_nodes.c.trajectory_id,
                 steps.c.step_number == search_nodes.c.step_number),
        ).outerjoin(
            parent,
            and_(parent.c.trajectory_id == steps.c.parent_trajectory_id,
                 parent.c.step_number == steps.c.parent_step_number),
        )
    )  # fmt: skip


def _stored_node(row: Sequence[Any]) -> StoredNode:
    return StoredNode(*row)


def _selected(table: Any, criteria: TrajectoryFilter) -> list[Any]:
    """The WHERE conditions of ``criteria`` on ``table`` (``trajectories`` or an alias of it)."""
    conditions = []
    if criteria.trajectory_ids is not None:
        conditions.append(table.c.id.in_(criteria.trajectory_ids))
    if criteria.task is not None:
        conditions.append(table.c.task == criteria.task)
    if criteria.agent_type is not None:
        conditions.append(table.c.agent_type == criteria.agent_type)
    if criteria.since_us is not None:
        conditions.append(table.c.created_at >= criteria.since_us)
    if criteria.until_us is not None:
        conditions.append(table.c.created_at < criteria.until_us)
    return conditions


def now_us() -> int:
    """Wall-clock time in integer microseconds since the epoch (UTC)."""
    return time.time_ns() // 1000


class SQLBackend(Backend):
    """Backend over a SQLAlchemy engine. Subclasses provide the dialect hooks below."""

    #: ``sqlalchemy.dialects.<name>.insert``: the dialect's INSERT construct, which the default
    #: statement hooks use with ``on_conflict_*`` (SQLite and PostgreSQL share that API but no
    #: common base class, hence Any); a dialect without it overrides those hooks.
    dialect_insert: Callable[[Table], Any]
    #: Isolation level of read connections, None to keep the engine's (see :meth:`_read`).
    read_isolation: str | None = None

    def __init__(self, settings: Any) -> None:
        super().__init__(settings)
        self.engine: Engine = self._create_engine()
        self._closed = False
        self._login = self._make_read_only_login()
        self._in_transaction = threading.local()  # .conn: this thread's open write transaction
        event.listen(self.engine, "checkout", self._refuse_second_connection)
        self._reached = False  # set by the first call that got an answer (see _retrying)
        dialect = self.engine.dialect
        ins = type(self).dialect_insert

        def stamped(table: Table) -> tuple[Any, list[str]]:
            """INSERT of ``table`` whose rows carry the current commit (see :mod:`.history`);
            the caller's rows give every other column."""
            keys = [c.name for c in table.columns if c.name != "valid_from_seq"]
            return ins(table).values(valid_from_seq=history.CURRENT_SEQ), keys

        def insert_ignore(table: Table) -> _Raw:
            stmt, keys = stamped(table)
            return _Raw(self._insert_ignore(stmt, table), dialect, keys)

        self._raw_trajectory = insert_ignore(trajectories)
        self._raw_state = insert_ignore(game_states)
        self._raw_part = insert_ignore(game_state_parts)
        self._raw_delta = insert_ignore(blobs)
        self._raw_step = insert_ignore(steps)
        self._raw_record = {part: insert_ignore(table) for part, table in _STEP_RECORDS.items()}
        # Explicit columns: the id is left to the database (identity / AUTOINCREMENT).
        node_keys = [c.name for c in search_nodes.c if c.name not in ("id", "valid_from_seq")]
        self._raw_node = _Raw(
            self._insert_ignore(
                ins(search_nodes).values(
                    {**{name: bindparam(name) for name in node_keys}, "valid_from_seq": history.CURRENT_SEQ}
                ),
                search_nodes,
            ),
            dialect,
        )
        keyframe, keyframe_keys = stamped(blobs)
        # A keyframe replaces a delta of the same content (the row's content is the same: it
        # keeps its version).
        self._raw_keyframe = _Raw(self._upsert_keyframe(keyframe), dialect, keyframe_keys)
        self._upsert_metadata = self._upsert_metadata_value(stamped(trajectory_metadata)[0])
        self._select_steps = (
            select(*_step_columns(steps)).where(steps.c.trajectory_id == bindparam("tid")).order_by(steps.c.step_number)
        )
        self._select_latest, self._select_checkpoint, self._select_state, self._select_states = _read_statements(
            dialect
        )
        # The commit sequence: bump the one-row head (its row lock orders writers) and log the
        # commit; rows read the number with history.CURRENT_SEQ. Commit instants strictly
        # increase even when the clock steps back.
        clock = self._clock()
        self._raw_bump = _Raw(
            update(log_head)
            .where(log_head.c.id == 1)
            .values(
                seq=log_head.c.seq + 1,
                committed_at=case((log_head.c.committed_at >= clock, log_head.c.committed_at + 1), else_=clock),
            ),
            dialect,
        )
        self._raw_log = _Raw(
            insert(commit_log).from_select(
                ["seq", "committed_at"], select(log_head.c.seq, log_head.c.committed_at).where(log_head.c.id == 1)
            ),
            dialect,
        )
        self._raw_head = _Raw(select(log_head.c.seq).where(log_head.c.id == 1), dialect)

    # -- dialect hooks --------------------------------------------------------------------
    @abstractmethod
    def _create_engine(self) -> Engine:
        """Build the pooled engine (pool size, timeouts, per-connection settings)."""

    def _insert_ignore(self, stmt: Any, table: Table) -> Any:
        """``stmt`` (an INSERT into ``table``) made to skip a row whose primary key is stored
        already (its row count counts only the rows inserted) and raise on any other error.
        Default: ``ON CONFLICT DO NOTHING``."""
        return stmt.on_conflict_do_nothing()

    def _upsert_keyframe(self, keyframe: Any) -> Any:
        """``keyframe`` (an INSERT of a blob) made so that a stored *delta* of the same id becomes
        this full blob (codec, body, checksum, no base), so every base stays a keyframe; a stored
        keyframe is kept."""
        return keyframe.on_conflict_do_update(
            index_elements=[blobs.c.id],
            set_={
                "codec": keyframe.excluded.codec,
                "body": keyframe.excluded.body,
                "base_id": null(),
                "checksum": keyframe.excluded.checksum,
            },
            where=blobs.c.base_id.is_not(None),
        )

    def _upsert_metadata_value(self, row: Any) -> Any:
        """``row`` (an INSERT of a metadata value) made to overwrite the stored value (codec,
        body, updated_at, version)."""
        return row.on_conflict_do_update(
            index_elements=[trajectory_metadata.c.trajectory_id, trajectory_metadata.c.key],
            set_={
                "codec": row.excluded.codec,
                "body": row.excluded.body,
                "updated_at": row.excluded.updated_at,
                "valid_from_seq": row.excluded.valid_from_seq,
            },
        )

    @contextmanager
    def _pipeline(self, conn: Connection) -> Iterator[None]:
        """Batch the statements sent inside into as few round trips as the driver allows."""
        yield

    @abstractmethod
    def _migration_lock(self, conn: Connection) -> AbstractContextManager[None]:
        """Hold the cross-process migration lock (taken inside the open write transaction) for
        the duration of the ``with`` block."""

    #: Whether a record table's delta links must be cut before its rows are deleted: an engine
    #: that checks foreign keys row by row (InnoDB) would refuse to delete a keyframe before the
    #: deltas that name it, in one DELETE.
    unlink_bases_before_delete = False

    def _clock(self) -> ColumnElement[int]:
        """Now, in integer microseconds, as a SQL expression: by default the client's clock,
        bound as ``now`` (one writer machine); a server backend uses the server's clock, shared
        by every writer host."""
        return bindparam("now", type_=BigInteger)

    # -- connections and errors -----------------------------------------------------------
    @contextmanager
    def _translate(self) -> Iterator[None]:
        """Turn driver errors into fle-db errors (messages carry no SQL parameters or passwords).
        Every connection is taken inside it, so it is also where a closed backend refuses (a
        disposed engine would silently open new connections)."""
        if self._closed:
            raise ClientClosedError(f"the client of {self.settings.safe_url()} is closed; open a new one")
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
            raise self._translate_driver(exc.orig) from exc
        except self.engine.dialect.loaded_dbapi.Error as exc:  # raised on the raw cursor (_Raw)
            raise self._translate_driver(exc) from exc

    def _translate_driver(self, exc: BaseException | None) -> FleDBError:
        text = str(exc).strip() if exc is not None else ""
        detail = redact(text.splitlines()[0]) if text else type(exc).__name__
        if "database is locked" in detail:
            return ConnectionTimeoutError(
                "the database is locked by another connection (fle-db waits for it up to "
                f"connection_timeout={self.settings.connection_timeout:g} s)"
            )
        if "disk is full" in detail or "No space left on device" in detail:
            return StorageFullError(
                f"the disk holding {self.settings.safe_url()} is full: nothing of this write was stored; "
                "free space (or run cleanup and optimize(vacuum=True)) and retry"
            )
        if self.settings.read_only and any(w in detail.lower() for w in ("readonly", "read-only", "read only")):
            return ReadOnlyError(f"{self.settings.safe_url()} was opened read-only: {detail}")
        if isinstance(exc, self.engine.dialect.loaded_dbapi.IntegrityError):
            return ConflictError(f"the write conflicts with stored data: {detail}")
        error = BackendUnavailableError(f"database error on {self.settings.safe_url()}: {detail}")
        error.retryable = self._is_disconnect(exc)
        return error

    def _is_disconnect(self, exc: BaseException | None) -> bool:
        """Whether ``exc`` means the connection or server went away (worth a retry)."""
        return False

    def _retrying(self, operation: Callable[[], T]) -> T:
        """Run an idempotent ``operation``, retrying with exponential backoff (50 ms doubling to
        2 s, with jitter) while the connection is lost, until ``retry_deadline`` seconds.

        Only once the backend has reached its database: a wrong URL fails at once instead of
        being retried."""
        deadline = time.monotonic() + self.settings.retry_deadline
        delay = 0.05
        while True:
            try:
                result = operation()
                self._reached = True
                return result
            except BackendUnavailableError as exc:
                if not (exc.retryable and self._reached):
                    raise
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    final = BackendUnavailableError(
                        f"{exc} (still failing after retrying for retry_deadline={self.settings.retry_deadline:g} s)"
                    )
                    final.retryable = True
                    raise final from exc
                pause = min(delay * random.uniform(0.8, 1.2), remaining)
                log.warning("connection to %s lost (%s); retrying in %.2f s", self.settings.safe_url(), exc, pause)
                time.sleep(pause)
                delay = min(delay * 2, 2.0)

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        """One write transaction: commits on success, rolls back on any error. While it is open,
        this thread's reads run on its connection (see :meth:`_refuse_second_connection`).

        Raises ReadOnlyError at once on a read-only backend (whose connections refuse writes
        anyway: this only saves taking a write lock for nothing)."""
        if self.settings.read_only:
            raise ReadOnlyError(f"{self.settings.safe_url()} was opened read-only: nothing was written")
        with self._translate(), self.engine.connect() as conn:
            conn.execution_options(fle_write=True)
            with conn.begin():
                self._in_transaction.conn = conn
                try:
                    yield conn
                finally:
                    self._in_transaction.conn = None

    def _refuse_second_connection(self, *_args: Any) -> None:
        """Pool checkout hook: a thread inside a write transaction never waits for a second
        connection (with ``max_connections=1``, or a server at its connection limit, it would
        wait on itself until ``connection_timeout``)."""
        if getattr(self._in_transaction, "conn", None) is not None:
            raise FleDBError("fle-db bug: a second connection was checked out inside a write transaction")

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        """A connection for reads. Every read that must be consistent is one statement (resume
        and load-state join the step, state, parts and bases), so a backend may read in
        autocommit (:attr:`read_isolation`) and save the BEGIN/ROLLBACK round trips. Inside this
        thread's write transaction: that transaction's connection."""
        held = getattr(self._in_transaction, "conn", None)
        if held is not None:
            yield held
            return
        with self._translate(), self.engine.connect() as conn:
            if self.read_isolation is not None:
                conn.execution_options(isolation_level=self.read_isolation)
            yield conn

    @contextmanager
    def _commit(self) -> Iterator[Connection]:
        """A write transaction that changes stored data: it first takes the next commit number
        (and with it the lock that orders commits), which the rows it writes carry."""
        with self._write() as conn:
            with self._pipeline(conn):
                sent = self._log_commit(conn)
            for cursor in sent:
                _rowcount(cursor)
            yield conn

    def _log_commit(self, conn: Connection) -> list[Any]:
        """Send the bump of ``log_head`` and the ``commit_log`` row (inside a pipeline, they
        travel with what follows); returns the cursors to close once synced."""
        return [self._raw_bump.start(conn, [{"now": now_us()}]), self._raw_log.start(conn, [{}])]

    def _seq(self, conn: Connection) -> int:
        """This transaction's commit number (after :meth:`_commit` took it)."""
        return int(self._raw_head.fetch(conn, {})[0][0])

    def close(self) -> None:
        self._closed = True
        if self._login is not None:
            self._login.close()
        self.engine.dispose()

    # -- migrations -----------------------------------------------------------------------
    @_idempotent
    def migration_status(self) -> MigrationStatus:
        with self._read() as conn:
            current = migrations.current_revision(conn)
        return MigrationStatus(current, migrations.latest_revision(), migrations.pending_revisions(current))

    @_idempotent
    def migrate(self) -> list[str]:
        if self.migration_status().up_to_date:
            return []
        with self._write() as conn:
            with self._migration_lock(conn):
                # Re-read under the lock: another process may have migrated while we waited.
                pending = migrations.pending_revisions(migrations.current_revision(conn))
                if pending:
                    log.info("migrating %s: applying %s", self.settings.safe_url(), ", ".join(pending))
                    migrations.upgrade(conn)
        return pending

    # -- writes ---------------------------------------------------------------------------
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
            if row.parent_trajectory_id is not None:
                self._check_fork_point(conn, row)
            this = trajectories.c.id == trajectory_id
            history.archive(conn, trajectories, this)
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
                    valid_from_seq=history.CURRENT_SEQ,
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

    @_idempotent
    def save_checkpoints(self, checkpoints: Sequence[Checkpoint]) -> list[SaveResult]:
        if not checkpoints:
            return []
        now = now_us()
        with self._write() as conn:
            existed = self._write_checkpoints(conn, checkpoints, now, log=True)
        return [_save_result(cp, existed) for cp in checkpoints]

    def _write_checkpoints(
        self, conn: Connection, checkpoints: Sequence[Checkpoint], now: int, log: bool
    ) -> set[tuple[str, int]]:
        """Insert the checkpoints' rows inside the caller's write transaction, taking the commit
        number first in the same pipeline when ``log`` (else the caller took it); returns the keys
        of the steps that were stored before (identical). ConflictError if any part differs."""
        step_rows = [self._step_values(cp, now) for cp in checkpoints if cp.step is not None]
        record_rows = {
            part: [
                {
                    "trajectory_id": cp.trajectory_id,
                    "step_number": cp.step_number,
                    "digest": blob.digest,
                    "codec": blob.codec,
                    "body": blob.body,
                    "base_step_number": blob.base,
                    "created_at": now,
                }
                for cp in checkpoints
                if (blob := getattr(cp, part)) is not None
            ]
            for part in _STEP_RECORDS
        }
        node_rows = [_node_values(cp, now) for cp in checkpoints if cp.node is not None]
        existed: set[tuple[str, int]] = set()
        # Every INSERT goes out in one pipeline (PostgreSQL: one round trip); the row counts
        # of the immutable records are read after it, and only a shortfall costs a query.
        with self._pipeline(conn):
            logged = self._log_commit(conn) if log else []
            self._ensure_trajectories(conn, list(dict.fromkeys(cp.trajectory_id for cp in checkpoints)), now)
            states = {cp.game_state.id: cp.game_state for cp in checkpoints if cp.game_state is not None}
            if states:
                self._insert_states(conn, list(states.values()), now)
            counted = [(self._raw_step.start(conn, step_rows), steps, step_rows, "step")]
            for part, table in _STEP_RECORDS.items():
                rows = record_rows[part]
                counted.append((self._raw_record[part].start(conn, rows), table, rows, part.replace("_", " ")))
            # A node already stored for its step keeps its (mutable) statistics.
            self._raw_node.run(conn, node_rows)
        for cursor in logged:
            _rowcount(cursor)
        for cursor, table, rows, what in counted:
            inserted = _rowcount(cursor)
            if inserted != len(rows):
                existed |= self._verify_stored(conn, table, rows, now, what)
        return existed

    def append_checkpoint(
        self, trajectory_id: str, build: Callable[[int], Checkpoint]
    ) -> tuple[SaveResult, int | None]:
        now = now_us()
        with self._commit() as conn:
            # Create-if-missing, then lock the trajectory row (PostgreSQL; SQLite's write
            # transaction already excludes every other writer): appenders to one trajectory
            # serialise here, so each reads the step number the previous one committed.
            self._ensure_trajectories(conn, [trajectory_id], now)
            conn.execute(select(trajectories.c.id).where(trajectories.c.id == trajectory_id).with_for_update()).one()
            last = conn.execute(
                select(func.max(steps.c.step_number)).where(steps.c.trajectory_id == trajectory_id)
            ).scalar()
            checkpoint = build(0 if last is None else int(last) + 1)
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
            "base_step_number": step.body.base,
            "created_at": now,
        }

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
        with self._commit() as conn:
            self._insert_states(conn, [state], now_us())

    @_idempotent
    def save_metadata(self, trajectory_id: str, key: str, value: Blob) -> None:
        now = now_us()
        with self._commit() as conn:
            self._ensure_trajectories(conn, [trajectory_id], now)
            history.archive(
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

    def delete_trajectory(self, trajectory_id: str, cascade: bool) -> list[str]:
        with self._commit() as conn:
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
            tally: Counter[str] = Counter()
            for tid in reversed(order):  # forks before their parents (foreign keys)
                self._delete_one(conn, tid, tally)
        return order

    def cleanup(self, criteria: CleanupCriteria, dry_run: bool) -> dict[str, Any]:
        with self._commit() as conn:
            selected = self._select_for_cleanup(conn, criteria)
            doomed, kept = self._lineage_safe(conn, selected)
            tally: Counter[str] = Counter()
            for tid in doomed:
                self._delete_one(conn, tid, tally, measure=True)
            if dry_run:
                conn.rollback()
        return {
            "dry_run": dry_run,
            "trajectories": sorted(doomed),
            "kept_for_lineage": sorted(kept),
            "rows": {table: tally[table] for table in _TALLIED},
            "bytes_freed": tally["bytes"],
        }

    def _select_for_cleanup(self, conn: Connection, criteria: CleanupCriteria) -> list[str]:
        """Ids of the trajectories every given criterion selects (AND)."""
        query = select(trajectories.c.id, trajectories.c.task, trajectories.c.total_reward, trajectories.c.created_at)
        if criteria.trajectory_ids is not None:
            query = query.where(trajectories.c.id.in_(criteria.trajectory_ids))
        if criteria.task is not None:
            query = query.where(trajectories.c.task == criteria.task)
        if criteria.agent_type is not None:
            query = query.where(trajectories.c.agent_type == criteria.agent_type)
        if criteria.before_us is not None:
            # Old = neither the trajectory nor any of its steps was written since the cutoff.
            query = query.where(
                trajectories.c.updated_at < criteria.before_us,
                ~exists().where(steps.c.trajectory_id == trajectories.c.id, steps.c.created_at >= criteria.before_us),
            )
        rows = conn.execute(query).all()
        if criteria.keep_best_per_task is None:
            return [row.id for row in rows]
        by_task: dict[str | None, list[Any]] = {}
        for row in rows:
            by_task.setdefault(row.task, []).append(row)
        doomed = []
        for group in by_task.values():
            # Best first: highest total_reward (None lowest), then the newest.
            group.sort(key=lambda r: (r.total_reward is not None, r.total_reward or 0.0, r.created_at), reverse=True)
            doomed += [row.id for row in group[criteria.keep_best_per_task :]]
        return doomed

    def _lineage_safe(self, conn: Connection, selected: list[str]) -> tuple[list[str], set[str]]:
        """Split ``selected`` into what can go (in a safe order: dependents first) and what must
        stay because a surviving trajectory forks from it, directly or through kept ones."""
        doomed = set(selected)
        dependents = {tid: set(self._dependents(conn, [tid])) for tid in selected}
        kept: set[str] = set()
        changed = True
        while changed:
            changed = False
            for tid in list(doomed):
                if dependents[tid] - doomed:
                    doomed.discard(tid)
                    kept.add(tid)
                    changed = True
        order: list[str] = []
        remaining = set(doomed)
        while remaining:
            ready = sorted(t for t in remaining if not dependents[t] & remaining)
            order += ready
            remaining -= set(ready)
        return order, kept

    def _dependents(self, conn: Connection, ids: list[str]) -> list[str]:
        forks = conn.execute(select(trajectories.c.id).where(trajectories.c.parent_trajectory_id.in_(ids)))
        children = conn.execute(
            select(steps.c.trajectory_id)
            .where(steps.c.parent_trajectory_id.in_(ids), steps.c.trajectory_id.not_in(ids))
            .distinct()
        )
        return list(dict.fromkeys([*forks.scalars(), *children.scalars()]))

    def _delete_one(self, conn: Connection, tid: str, tally: Counter[str], measure: bool = False) -> None:
        """Delete one trajectory's rows and the states and blobs nothing else uses, adding the
        rows removed to ``tally`` (and, with ``measure``, their payload bytes: one more query per
        table, which only cleanup's report needs)."""
        state_ids = list(
            conn.execute(
                select(steps.c.game_state_id)
                .where(steps.c.trajectory_id == tid, steps.c.game_state_id.is_not(None))
                .distinct()
            ).scalars()
        )
        for table in (*TRAJECTORY_CHILD_TABLES, trajectories):
            key = table.c.id if table is trajectories else table.c.trajectory_id
            if measure and "body" in table.c:
                tally["bytes"] += conn.execute(
                    select(func.coalesce(func.sum(func.length(table.c.body)), 0)).where(key == tid)
                ).scalar_one()
            tally[table.name] += history.retire(conn, table, key == tid, self.unlink_bases_before_delete)
        self._collect_garbage(conn, state_ids, tally)

    def _collect_garbage(self, conn: Connection, state_ids: list[str], tally: Counter[str]) -> None:
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
            history.retire(conn, game_state_parts, game_state_parts.c.state_id.in_(orphans))
            history.retire(conn, game_states, game_states.c.id.in_(orphans))
            tally["game_states"] += len(orphans)
            dependent = blobs.alias("dependent")
            while blob_ids:
                unused = conn.execute(
                    select(blobs.c.id, blobs.c.base_id, func.length(blobs.c.body)).where(
                        blobs.c.id.in_(list(blob_ids)),
                        ~exists().where(game_state_parts.c.blob_id == blobs.c.id),
                        ~exists().where(dependent.c.base_id == blobs.c.id),
                    )
                ).all()
                if unused:
                    history.retire(conn, blobs, blobs.c.id.in_([row[0] for row in unused]))
                tally["blobs"] += len(unused)
                tally["bytes"] += sum(row[2] for row in unused)
                blob_ids = {row[1] for row in unused if row[1] is not None}

    # -- search trees ---------------------------------------------------------------------
    def _bump_search_stats(
        self,
        conn: Connection,
        node_id: int,
        add_visits: int = 0,
        add_value: float = 0.0,
        set_value: float | None = None,
        set_advantage: float | None = None,
        set_visits: int | None = None,
    ) -> int:
        """THE one statement that changes a ``search_nodes`` row: add to visits and value, or set
        value / advantage, in a single UPDATE (atomic under concurrent writers: the increment is
        computed by the database, not read-modify-written). Returns the rows changed (0 or 1)."""
        values: dict[str, Any] = {"updated_at": now_us()}
        if set_visits is not None:
            values["visits"] = set_visits
        elif add_visits:
            values["visits"] = search_nodes.c.visits + add_visits
        if set_value is not None:
            values["value"] = set_value
        elif add_value:
            values["value"] = func.coalesce(search_nodes.c.value, 0.0) + add_value
        if set_advantage is not None:
            values["advantage"] = set_advantage
        this = search_nodes.c.id == node_id
        history.archive(conn, search_nodes, this)
        values["valid_from_seq"] = history.CURRENT_SEQ
        return int(conn.execute(update(search_nodes).where(this).values(**values)).rowcount)

    def bump_search_stats(
        self,
        node_id: int,
        add_visits: int,
        add_value: float,
        set_value: float | None,
        set_advantage: float | None,
        set_visits: int | None = None,
    ) -> StoredNode:
        with self._commit() as conn:
            if not self._bump_search_stats(conn, node_id, add_visits, add_value, set_value, set_advantage, set_visits):
                raise NotFoundError(f"search node {node_id} does not exist")
            return _stored_node(conn.execute(_node_select().where(search_nodes.c.id == node_id)).one())

    def visit(self, node_id: int, children: int) -> StoredNode:
        with self._commit() as conn:
            node = conn.execute(_node_select().where(search_nodes.c.id == node_id)).first()
            if node is None:
                raise NotFoundError(f"search node {node_id} does not exist")
            self._bump_search_stats(conn, node_id, add_visits=children)
            kids = conn.execute(
                select(search_nodes.c.id, search_nodes.c.value)
                .select_from(
                    search_nodes.join(
                        steps,
                        and_(steps.c.trajectory_id == search_nodes.c.trajectory_id,
                             steps.c.step_number == search_nodes.c.step_number),
                    )
                )
                .where(
                    steps.c.parent_trajectory_id == node.trajectory_id,
                    steps.c.parent_step_number == node.step_number,
                    search_nodes.c.value.is_not(None),
                )
            ).all()  # fmt: skip
            if kids:
                mean = sum(kid.value for kid in kids) / len(kids)
                for kid in kids:
                    self._bump_search_stats(conn, kid.id, set_advantage=kid.value - mean)
            return _stored_node(conn.execute(_node_select().where(search_nodes.c.id == node_id)).one())

    @_idempotent
    def load_node(self, node_id: int | None = None, step: tuple[str, int] | None = None) -> StoredNode | None:
        query = _node_select()
        if node_id is not None:
            query = query.where(search_nodes.c.id == node_id)
        elif step is not None:
            query = query.where(search_nodes.c.trajectory_id == step[0], search_nodes.c.step_number == step[1])
        else:
            raise ValueError("load_node needs a node id or a step")
        with self._read() as conn:
            row = conn.execute(query).first()
        return _stored_node(row) if row is not None else None

    @_idempotent
    def find_nodes(self, query: NodeQuery) -> list[StoredNode]:
        n = search_nodes.c
        conditions = []
        if query.tree is not None:
            conditions.append(n.tree == query.tree)
        if query.trajectory_id is not None:
            conditions.append(n.trajectory_id == query.trajectory_id)
        if query.with_value or query.per_depth is not None:
            conditions.append(n.value.is_not(None))
        if query.with_advantage:
            conditions.append(n.advantage.is_not(None))
        if query.with_state:
            conditions.append(steps.c.game_state_id.is_not(None))
        select_nodes = _node_select().where(*conditions)
        if query.per_depth is not None:
            rank = func.row_number().over(partition_by=n.depth, order_by=(n.value.desc(), n.id)).label("rank")
            ranked = select_nodes.add_columns(rank).subquery("ranked")
            select_nodes = (
                select(*[c for c in ranked.c if c.name != "rank"])
                .where(ranked.c.rank <= query.per_depth)
                .order_by(ranked.c.depth, ranked.c.value.desc(), ranked.c.id)
            )
        elif query.order == "recent":
            select_nodes = select_nodes.order_by(n.id.desc())
        elif query.order == "step":
            select_nodes = select_nodes.order_by(n.step_number.desc())
        else:
            select_nodes = select_nodes.order_by(n.value.desc().nulls_last(), n.id)
        if query.limit is not None:
            select_nodes = select_nodes.limit(query.limit)
        with self._read() as conn:
            return [_stored_node(row) for row in conn.execute(select_nodes)]

    @_idempotent
    def tree_summary(self, tree: str) -> tuple[int, int | None]:
        with self._read() as conn:
            count, deepest = conn.execute(
                select(func.count(), func.max(search_nodes.c.depth)).where(search_nodes.c.tree == tree)
            ).one()
        return int(count), None if deepest is None else int(deepest)

    @_idempotent
    def tree_values(self, tree_prefix: str, tree: str | None) -> list[float]:
        n = search_nodes.c
        where = n.tree == tree if tree is not None else n.tree.startswith(tree_prefix, autoescape=True)
        with self._read() as conn:
            return [
                float(v)
                for v in conn.execute(select(n.value).where(where, n.value.is_not(None)).order_by(n.id)).scalars()
            ]

    @_idempotent
    def lineage(self, trajectory_id: str, step_number: int) -> list[tuple[str, int]]:
        s, prev, t = steps.alias("s"), steps.alias("prev"), trajectories.alias("t")
        # Plain VARCHAR / BIGINT on both sides of the recursion: PostgreSQL wants equal types.
        seed = select(
            cast(literal(trajectory_id), String()).label("tid"),
            cast(literal(step_number), BigInteger()).label("n"),
            cast(literal(0), Integer()).label("hops"),
        )
        path = seed.cte("path", recursive=True)
        explicit = s.c.parent_trajectory_id.is_not(None)
        has_prev = prev.c.step_number.is_not(None)
        next_tid = case((explicit, s.c.parent_trajectory_id), (has_prev, s.c.trajectory_id),
                        else_=t.c.parent_trajectory_id)  # fmt: skip
        next_n = case((explicit, s.c.parent_step_number), (has_prev, s.c.step_number - 1),
                      else_=t.c.parent_step_number)  # fmt: skip
        hop = (
            select(cast(next_tid, String()), cast(next_n, BigInteger()), cast(path.c.hops + 1, Integer()))
            .select_from(
                path.join(s, and_(s.c.trajectory_id == path.c.tid, s.c.step_number == path.c.n))
                .join(t, t.c.id == s.c.trajectory_id)
                .outerjoin(prev, and_(prev.c.trajectory_id == s.c.trajectory_id,
                                      prev.c.step_number == s.c.step_number - 1))
            )
            .where(next_tid.is_not(None), path.c.hops < _MAX_LINEAGE)
        )  # fmt: skip
        path = path.union_all(hop)
        query = (
            select(path.c.tid, path.c.n)
            .select_from(path.join(steps, and_(steps.c.trajectory_id == path.c.tid, steps.c.step_number == path.c.n)))
            .order_by(path.c.hops.desc())
        )
        with self._read() as conn:
            rows = [(str(r[0]), int(r[1])) for r in conn.execute(query)]
        if not rows or rows[-1] != (trajectory_id, step_number):
            raise NotFoundError(f"step {step_number} of trajectory {trajectory_id!r} does not exist")
        return rows

    @_idempotent
    def children(self, trajectory_id: str, step_number: int) -> list[tuple[str, int]]:
        found: set[tuple[str, int]] = set()
        with self._read() as conn:
            explicit = conn.execute(
                select(steps.c.trajectory_id, steps.c.step_number).where(
                    steps.c.parent_trajectory_id == trajectory_id, steps.c.parent_step_number == step_number
                )
            )
            found.update((str(r[0]), int(r[1])) for r in explicit)
            following = conn.execute(
                select(steps.c.step_number).where(
                    steps.c.trajectory_id == trajectory_id,
                    steps.c.step_number == step_number + 1,
                    steps.c.parent_trajectory_id.is_(None),
                )
            ).first()
            if following is not None:
                found.add((trajectory_id, step_number + 1))
            # A fork's first step (no explicit parent) descends from the fork point.
            first = (
                select(steps.c.trajectory_id, func.min(steps.c.step_number).label("first"))
                .select_from(trajectories.join(steps, steps.c.trajectory_id == trajectories.c.id))
                .where(
                    trajectories.c.parent_trajectory_id == trajectory_id,
                    trajectories.c.parent_step_number == step_number,
                )
                .group_by(steps.c.trajectory_id)
                .subquery("first")
            )
            forks = conn.execute(
                select(first.c.trajectory_id, first.c.first).select_from(
                    first.join(steps, and_(steps.c.trajectory_id == first.c.trajectory_id,
                                           steps.c.step_number == first.c.first))
                ).where(steps.c.parent_trajectory_id.is_(None))
            )  # fmt: skip
            found.update((str(r[0]), int(r[1])) for r in forks)
        return sorted(found)

    # -- FLE versions ---------------------------------------------------------------------
    def allocate_version(self, description: str | None, model: str | None) -> int:
        while True:
            try:
                with self._commit() as conn:
                    version = int(
                        conn.execute(select(func.coalesce(func.max(fle_versions.c.version), 0) + 1)).scalar_one()
                    )
                    conn.execute(
                        insert(fle_versions).values(
                            version=version,
                            version_description=description,
                            model=model,
                            created_at=now_us(),
                            valid_from_seq=history.CURRENT_SEQ,
                        )
                    )
                return version
            except ConflictError:
                # PostgreSQL: a concurrent allocator committed the same number first; read again.
                continue

    @_idempotent
    def register_version(self, version: int, description: str | None, model: str | None) -> None:
        with self._commit() as conn:
            conn.execute(
                type(self)
                .dialect_insert(fle_versions)
                .values(
                    version=version,
                    version_description=description,
                    model=model,
                    created_at=now_us(),
                    valid_from_seq=history.CURRENT_SEQ,
                )
                .on_conflict_do_nothing()
            )

    @_idempotent
    def load_version(self, version: int | None) -> tuple[int, str | None, str | None] | None:
        v = fle_versions.c
        query = select(v.version, v.version_description, v.model)
        query = query.where(v.version == version) if version is not None else query.order_by(v.version.desc())
        with self._read() as conn:
            row = conn.execute(query.limit(1)).first()
        return (int(row[0]), row[1], row[2]) if row is not None else None

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

    # -- operations -----------------------------------------------------------------------
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
                    self._raw_trajectory.run(
                        conn,
                        [
                            {
                                "id": probe,
                                "codec": CODEC_JSON,
                                "body": _EMPTY_BODY,
                                "created_at": 0,
                                "updated_at": 0,
                            }
                        ],
                    )
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

    # -- validation -----------------------------------------------------------------------
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
            .where(game_states.c.codec == CODEC_MANIFEST)
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

    def iter_selected_trajectories(self, criteria: TrajectoryFilter) -> Iterator[str]:
        parent = trajectories.alias("parent")
        selected = _selected(trajectories, criteria)
        # Roots of the walk: selected trajectories whose parent is absent or not selected.
        roots = (
            select(trajectories.c.id)
            .where(
                *selected,
                or_(
                    trajectories.c.parent_trajectory_id.is_(None),
                    ~exists().where(parent.c.id == trajectories.c.parent_trajectory_id, *_selected(parent, criteria)),
                ),
            )
            .order_by(trajectories.c.id)
            .limit(_VERIFY_CHUNK)
        )
        forks = (
            select(trajectories.c.id)
            .where(*selected, trajectories.c.parent_trajectory_id == bindparam("parent"))
            .order_by(trajectories.c.id)
        )
        last: str | None = None
        while True:
            page = self._ids(roots if last is None else roots.where(trajectories.c.id > last), {})
            for root in page:
                pending = [iter([root])]  # depth-first: a fork right after its parent's subtree starts
                while pending:
                    tid = next(pending[-1], None)
                    if tid is None:
                        pending.pop()
                        continue
                    yield tid
                    pending.append(iter(self._ids(forks, {"parent": tid})))
            if len(page) < _VERIFY_CHUNK:
                return
            last = page[-1]

    @_idempotent
    def _ids(self, query: Any, params: dict[str, Any]) -> list[str]:
        with self._read() as conn:
            return list(conn.execute(query, params).scalars())

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

    # -- reads ----------------------------------------------------------------------------
    @staticmethod
    def _exists(conn: Connection, trajectory_id: str) -> bool:
        return conn.execute(select(trajectories.c.id).where(trajectories.c.id == trajectory_id)).first() is not None

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

    # -- point in time, backups and copies ------------------------------------------------
    #: Isolation level of :meth:`snapshot` reads (None: the engine's, which must already give one
    #: snapshot per transaction, as SQLite's WAL does).
    snapshot_isolation: str | None = None
    #: Rows per chunk when streaming a snapshot.
    snapshot_chunk_rows = 500

    def _head(self, conn: Connection) -> tuple[CommitPoint, CommitPoint]:
        row = conn.execute(
            select(log_head.c.seq, log_head.c.committed_at, log_head.c.horizon_seq, log_head.c.horizon_at).where(
                log_head.c.id == 1
            )
        ).one()
        return CommitPoint(row.horizon_seq, row.horizon_at), CommitPoint(row.seq, row.committed_at)

    @_idempotent
    def recovery_window(self) -> tuple[CommitPoint, CommitPoint]:
        with self._read() as conn:
            return self._head(conn)

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
            .order_by(commit_log.c.committed_at.desc())
            .limit(1)
        ).one()
        return CommitPoint(row.seq, row.committed_at)

    @_idempotent
    def commit_at(self, at_us: int) -> CommitPoint:
        with self._read() as conn:
            return self._commit_at(conn, at_us)

    def _check_seq(self, conn: Connection, seq: int) -> CommitPoint:
        horizon, latest = self._head(conn)
        if not horizon.seq <= seq <= latest.seq:
            raise ValidationError(
                f"commit {seq} is outside the recovery window (commits {horizon.seq} to {latest.seq})"
            )
        at = conn.execute(select(commit_log.c.committed_at).where(commit_log.c.seq == seq)).scalar_one()
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
                tables = {table.name: table for table in VERSIONED_TABLES}
                sources = {
                    **{name: history.rows_at(table, seq) for name, table in tables.items()},
                    **{HISTORY[name].name: history.history_at(table, seq) for name, table in tables.items()},
                    commit_log.name: select(commit_log).where(commit_log.c.seq <= head.seq),
                }

                def rows(name: str) -> Iterator[list[dict[str, Any]]]:
                    result = conn.execution_options(yield_per=self.snapshot_chunk_rows).execute(sources[name])
                    for chunk in result.mappings().partitions():
                        yield [dict(row) for row in chunk]

                def count(name: str) -> int:
                    return int(conn.execute(select(func.count()).select_from(sources[name].subquery())).scalar_one())

                yield Snapshot(head, horizon, migrations.current_revision(conn), rows, count)

    def load_snapshot(
        self, snapshot: Snapshot, replace: bool, progress: Callable[[str, int], None] | None = None
    ) -> dict[str, int]:
        written: Counter[str] = Counter()
        lineage: list[dict[str, Any]] = []
        with self._write() as conn:
            seq: int | None = None
            if replace:
                for cursor in self._log_commit(conn):
                    _rowcount(cursor)
                seq = self._seq(conn)
                history.delete_all(conn, self.unlink_bases_before_delete)
                names = [table.name for table in VERSIONED_TABLES]
            else:
                self._require_empty(conn)
                conn.execute(delete(commit_log))
                names = [table.name for table in VERSIONED_TABLES] + [HISTORY[t.name].name for t in VERSIONED_TABLES]
                names.append(commit_log.name)
            for name in names:
                table = metadata.tables[name]
                for done in history.load_rows(conn, table, snapshot.rows(name), seq, lineage):
                    written[str(name)] += done
                    if progress is not None:
                        progress(name, done)
            history.link_lineage(conn, lineage)
            self._after_load(conn)
            if not replace:
                conn.execute(
                    update(log_head)
                    .where(log_head.c.id == 1)
                    .values(
                        seq=snapshot.head.seq,
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

    def _require_empty(self, conn: Connection) -> None:
        seq = conn.execute(select(log_head.c.seq).where(log_head.c.id == 1)).scalar_one()
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

    def rewind(self, seq: int) -> dict[str, int]:
        with self._commit() as conn:  # the commit's lock on log_head keeps every other writer out
            self._check_seq(conn, seq)
            return history.rewind(conn, seq, self._seq(conn), self.unlink_bases_before_delete)

    def prune_history(self, before_us: int) -> dict[str, int]:
        deleted: dict[str, int] = {}
        with self._write() as conn:
            conn.execute(update(log_head).where(log_head.c.id == 1).values(seq=log_head.c.seq))  # lock the head
            horizon, latest = self._head(conn)
            point = conn.execute(
                select(commit_log.c.seq, commit_log.c.committed_at)
                .where(commit_log.c.committed_at <= min(before_us, latest.committed_at))
                .order_by(commit_log.c.committed_at.desc())
                .limit(1)
            ).first()
            if point is None or point.seq <= horizon.seq:
                return deleted
            for table in HISTORY.values():
                gone = conn.execute(delete(table).where(table.c.valid_to_seq <= point.seq))
                deleted[str(table.name)] = int(gone.rowcount)
            gone = conn.execute(delete(commit_log).where(commit_log.c.seq < point.seq))
            deleted[str(commit_log.name)] = int(gone.rowcount)
            conn.execute(
                update(log_head).where(log_head.c.id == 1).values(horizon_seq=point.seq, horizon_at=point.committed_at)
            )
        return deleted


def _instant(at_us: int) -> str:
    """Epoch microseconds as ISO 8601 UTC, for messages."""
    return datetime.fromtimestamp(at_us / 1_000_000, tz=UTC).isoformat()
