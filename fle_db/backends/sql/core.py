"""The shared core of the SQL backends: engine and pool, transactions, the commit log, retry
with backoff, driver-error translation, migrations and the dialect hooks.

Dialect differences are hooks that ``sqlite.py``, ``postgres.py`` and ``mysql.py`` fill in: how
the engine is built, how a write transaction takes its lock, how an INSERT skips or overwrites a
stored key (``ON CONFLICT`` or ``ON DUPLICATE KEY UPDATE``), and how errors are named. Statements
are built once per backend and reused (:class:`_Raw`), so the hot path (``save_checkpoints``) only
binds parameters: no per-call SQL compilation, no RETURNING, one transaction per call.

The role modules (``checkpoints``, ``lineage``, ``search``, ``admin``, ``history``) each hold one
mixin over :class:`SQLCore`; :class:`fle_db.backends.sql.SQLBackend` combines them.
"""

from __future__ import annotations

import functools
import logging
import random
import time
from abc import abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar
from typing import Any, ClassVar, TypeVar

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    Engine,
    Table,
    bindparam,
    case,
    event,
    func,
    insert,
    null,
    select,
    text,
    update,
)
from sqlalchemy import exc as sa_exc

from ... import migrations
from ...errors import (
    BackendUnavailableError,
    ClientClosedError,
    ConflictError,
    ConnectionTimeoutError,
    FleDBError,
    MissingReferenceError,
    ReadOnlyError,
    StorageFullError,
)
from ...redact import redact
from ...schema import (
    blobs,
    commit_log,
    log_head,
    trajectories,
    trajectory_metadata,
)
from ..base import (
    CheckpointStore,
    MigrationStatus,
)
from . import versioned

log = logging.getLogger("fle_db")


T = TypeVar("T")


_VERIFY_CHUNK = 500


class Held:
    """A statement :meth:`_Raw.start` was given inside :func:`holding`: sent later, with the
    rest of the batch, by whoever holds it; quacks like the cursor ``start`` returns otherwise
    (its row count is -1 until the batch has run)."""

    __slots__ = ("params", "rowcount", "sql")

    def __init__(self, sql: str, params: list[Any]) -> None:
        self.sql = sql
        self.params = params
        self.rowcount = -1

    def close(self) -> None:
        """Nothing to release: the batch's sender closes the real cursor."""


_held: ContextVar[list[Held] | None] = ContextVar("fle_db_held", default=None)


@contextmanager
def holding() -> Iterator[list[Held]]:
    """Hold the statements :meth:`_Raw.start` is given in this context instead of sending them;
    yields the list the caller sends after the block (an asyncio backend: all of them in one
    await, see :mod:`fle_db.backends.aio`)."""
    batch: list[Held] = []
    token = _held.set(batch)
    try:
        yield batch
    finally:
        _held.reset(token)


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
        batch = _held.get()
        if batch is not None:
            held = Held(self.sql, params)
            batch.append(held)
            return held
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
    until ``retry_deadline`` (see :meth:`SQLCore._retrying`). Writes qualify because each is
    one transaction that is a no-op when already applied; deletions do not (a retry after a lost
    acknowledgement would report the trajectory missing), so they are not marked."""

    @functools.wraps(method)
    def retried(self: SQLCore, *args: Any, **kwargs: Any) -> T:
        return self._retrying(lambda: method(self, *args, **kwargs))

    return retried


def _restartable(method: Callable[..., T]) -> Callable[..., T]:
    """Mark a write method that is not idempotent (appending a step, deleting, rewinding...) but
    safe to re-run after a lost connection as long as its COMMIT was never sent: the transaction
    then certainly rolled back. This is how a pooled connection the server closed while idle
    (found dead on first use, as nothing pings it) never fails such a call. A connection lost
    during the COMMIT is reported (``commit_unknown``), not retried."""

    @functools.wraps(method)
    def retried(self: SQLCore, *args: Any, **kwargs: Any) -> T:
        return self._retrying(lambda: method(self, *args, **kwargs), idempotent=False)

    return retried


def now_us() -> int:
    """Wall-clock time in integer microseconds since the epoch (UTC)."""
    return time.time_ns() // 1000


class SQLCore(CheckpointStore):
    """Engine, transactions, retry, error translation and dialect hooks shared by every role
    mixin of :class:`~fle_db.backends.sql.SQLBackend`. Subclasses provide the dialect hooks."""

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
        # This thread's (or, over an asyncio driver, this greenlet's) open write transaction: a
        # context variable, as greenlets of one thread each have their own context.
        self._in_transaction: ContextVar[Connection | None] = ContextVar(f"fle_db_write_{id(self)}", default=None)
        # Whether this context's write transaction has sent its COMMIT (see _send_commit).
        self._commit_sent: ContextVar[bool] = ContextVar(f"fle_db_commit_sent_{id(self)}", default=False)
        event.listen(self.engine, "checkout", self._refuse_second_connection)
        self._reached = False  # set by the first call that got an answer (see _retrying)
        dialect = self.engine.dialect
        # The commit: a dialect with a counter bumps the one-row head first (its row lock orders
        # writers, see versioned.py); every dialect logs the commit's token and instant as the
        # transaction's last statement. Instants strictly increase over what the committer can
        # see, even when the clock steps back.
        self._raw_bump = _Raw(update(log_head).where(log_head.c.id == 1).values(seq=log_head.c.seq + 1), dialect)
        clock = self._clock()
        seen = func.coalesce(
            select(func.max(commit_log.c.committed_at)).scalar_subquery(),
            select(log_head.c.committed_at).where(log_head.c.id == 1).scalar_subquery(),
        )
        self._raw_log = _Raw(
            insert(commit_log).from_select(
                ["seq", "committed_at"], select(versioned.CURRENT_SEQ, case((seen >= clock, seen + 1), else_=clock))
            ),
            dialect,
        )
        self._raw_head = _Raw(select(versioned.CURRENT_SEQ), dialect)
        self._raw_begin = _Raw(text("BEGIN"), dialect)
        self._raw_commit = _Raw(text("COMMIT"), dialect)

    def _stamped(self, table: Table) -> tuple[Any, list[str]]:
        """INSERT of ``table`` whose rows carry the current commit (see :mod:`.versioned`); the
        caller's rows give every other column (their names are returned)."""
        keys = [c.name for c in table.columns if c.name != "valid_from_seq"]
        return type(self).dialect_insert(table).values(valid_from_seq=versioned.CURRENT_SEQ), keys

    def _raw_insert(self, table: Table) -> _Raw:
        """A precompiled plain INSERT of ``table``: a key stored already fails the statement."""
        stmt, keys = self._stamped(table)
        return _Raw(stmt, self.engine.dialect, keys)

    def _raw_insert_ignore(self, table: Table) -> _Raw:
        """A precompiled INSERT of ``table`` that skips rows whose key is stored already."""
        stmt, keys = self._stamped(table)
        return _Raw(self._insert_ignore(stmt, table), self.engine.dialect, keys)

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

    #: Whether a write may send its BEGIN and COMMIT itself inside :meth:`_pipeline`, with its
    #: statements (see :meth:`_write` ``explicit``): one round trip for the whole transaction
    #: instead of three (psycopg syncs after the BEGIN it sends in a pipeline, and its commit()
    #: is one more).
    commits_in_pipeline = False

    #: Execution options of a ``_write(explicit=True)`` connection: the driver in autocommit,
    #: so that it sends neither a BEGIN nor a COMMIT of its own.
    explicit_options: ClassVar[dict[str, Any]] = {"isolation_level": "AUTOCOMMIT"}

    def _send_begin(self, conn: Connection) -> Any:
        """Send BEGIN on a connection of ``_write(explicit=True)``; returns its cursor."""
        return self._raw_begin.start(conn, [{}])

    def _send_commit(self, conn: Connection) -> Any:
        """Send COMMIT on a connection of ``_write(explicit=True)``, as the last statement of the
        pipeline: the server runs it only if every statement before it succeeded (after an error
        it skips to the pipeline's sync, and :meth:`_write` rolls back). From here on, a lost
        connection is ``commit_unknown``. Returns its cursor."""
        self._commit_sent.set(True)
        return self._raw_commit.start(conn, [{}])

    def _is_duplicate_key(self, exc: BaseException) -> bool:
        """Whether driver error ``exc`` is a unique-key violation (a plain INSERT of a stored key)."""
        return False

    @abstractmethod
    def _migration_lock(self, conn: Connection) -> AbstractContextManager[None]:
        """Hold the cross-process migration lock (taken inside the open write transaction) for
        the duration of the ``with`` block."""

    #: Whether a record table's delta links must be cut before its rows are deleted: an engine
    #: that checks foreign keys row by row (InnoDB) would refuse to delete a keyframe before the
    #: deltas that name it, in one DELETE.
    unlink_bases_before_delete = False

    def _check_bodies(self, bodies: Iterable[bytes]) -> None:
        """Refuse, before anything is sent, payload bodies the server could not take in one
        statement (PayloadTooLargeError); every write calls it with the bodies it will store.
        Default: every size is accepted."""

    def _descending_nulls_last(self, column: ColumnElement[Any]) -> Any:
        """An ORDER BY term: ``column`` highest first, NULLs after every value. Default:
        ``DESC NULLS LAST``."""
        return column.desc().nulls_last()

    def _clock(self) -> ColumnElement[int]:
        """Now, in integer microseconds, as a SQL expression: by default the client's clock,
        bound as ``now`` (one writer machine); a server backend uses the server's clock, shared
        by every writer host."""
        return bindparam("now", type_=BigInteger)

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
            missing = self._missing_reference(exc)
            if missing is not None:
                return MissingReferenceError(
                    f"the write names a row that does not exist ({missing}); nothing of it was stored", missing
                )
            return ConflictError(f"the write conflicts with stored data: {detail}")
        error = BackendUnavailableError(f"database error on {self.settings.safe_url()}: {detail}")
        error.retryable = self._is_disconnect(exc)
        return error

    def _is_disconnect(self, exc: BaseException | None) -> bool:
        """Whether ``exc`` means the connection or server went away (worth a retry)."""
        return False

    def _missing_reference(self, exc: BaseException) -> str | None:
        """For an integrity error raised because a written row references a row that does not
        exist (a foreign key), what is missing as the engine names it; None for any other
        integrity error (a content conflict). Default: the SQLite wording, which names nothing
        more than the violated foreign key."""
        return "a foreign key's target" if "FOREIGN KEY constraint failed" in str(exc) else None

    def _retrying(self, operation: Callable[[], T], idempotent: bool = True) -> T:
        """Run ``operation``, retrying with exponential backoff (50 ms doubling to 2 s, with
        jitter) while the connection is lost, until ``retry_deadline`` seconds; when it is not
        ``idempotent``, only while its COMMIT was never sent (see :func:`_restartable`).

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
                if not (exc.retryable and self._reached) or (exc.commit_unknown and not idempotent):
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
                self._pause(pause)
                delay = min(delay * 2, 2.0)

    def _pause(self, seconds: float) -> None:
        """Wait between retries (over an asyncio driver: without blocking the event loop)."""
        time.sleep(seconds)

    @contextmanager
    def _write(self, explicit: bool = False) -> Iterator[Connection]:
        """One write transaction: commits on success, rolls back on any error. While it is open,
        this thread's reads run on its connection (see :meth:`_refuse_second_connection`).

        ``explicit`` (only where :attr:`commits_in_pipeline`): the caller sends BEGIN and COMMIT
        itself (:meth:`_send_begin`, :meth:`_send_commit`) in one pipeline with its statements;
        the driver runs in autocommit, so it sends neither, and the rollback after an error
        still ends the failed transaction.

        Raises ReadOnlyError at once on a read-only backend (whose connections refuse writes
        anyway: this only saves taking a write lock for nothing)."""
        if self.settings.read_only:
            raise ReadOnlyError(f"{self.settings.safe_url()} was opened read-only: nothing was written")
        committing = False
        sent = self._commit_sent.set(False)
        try:
            with self._translate(), self.engine.connect() as conn:
                if explicit:
                    conn.execution_options(fle_write=True, **self.explicit_options)
                else:
                    conn.execution_options(fle_write=True)
                with conn.begin():
                    token = self._in_transaction.set(conn)
                    try:
                        yield conn
                    finally:
                        self._in_transaction.reset(token)
                    committing = True
        except BackendUnavailableError as exc:
            exc.commit_unknown = (committing or self._commit_sent.get()) and exc.retryable
            raise
        finally:
            self._commit_sent.reset(sent)

    def _refuse_second_connection(self, *_args: Any) -> None:
        """Pool checkout hook: a thread inside a write transaction never waits for a second
        connection (with ``max_connections=1``, or a server at its connection limit, it would
        wait on itself until ``connection_timeout``)."""
        if self._in_transaction.get() is not None:
            raise FleDBError("fle-db bug: a second connection was checked out inside a write transaction")

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        """A connection for reads. Every read that must be consistent is one statement (resume
        and load-state join the step, state, parts and bases), so a backend may read in
        autocommit (:attr:`read_isolation`) and save the BEGIN/ROLLBACK round trips. Inside this
        thread's write transaction: that transaction's connection."""
        held = self._in_transaction.get()
        if held is not None:
            yield held
            return
        with self._translate(), self.engine.connect() as conn:
            if self.read_isolation is not None:
                conn.execution_options(isolation_level=self.read_isolation)
            yield conn

    #: Whether commit tokens come from the ``log_head`` counter, bumped first by every write
    #: transaction (False: the dialect compiles :data:`versioned.CURRENT_SEQ` to a token of its own).
    counted_commits = True

    @contextmanager
    def _commit(self) -> Iterator[Connection]:
        """A write transaction that changes stored data: the rows it writes carry its commit token
        (:data:`versioned.CURRENT_SEQ`), and its last statement logs the commit."""
        with self._write() as conn:
            for cursor in self._open_commit(conn):
                _rowcount(cursor)
            yield conn
            if conn.in_transaction():  # a dry run rolled back: nothing to log
                _rowcount(self._close_commit(conn))

    def _open_commit(self, conn: Connection) -> list[Any]:
        """Send what starts a commit (with a counter: its bump, and with it the lock that orders
        writers; on MySQL: drawing the token into the session; inside a pipeline it travels with
        what follows); returns the cursors to close once synced. Every transaction that writes
        stamped rows sends it first."""
        return [self._raw_bump.start(conn, [{}])] if self.counted_commits else []

    def _close_commit(self, conn: Connection) -> Any:
        """Send the ``commit_log`` row, the last statement of a commit (see :mod:`.versioned`);
        returns its cursor."""
        return self._raw_log.start(conn, [{"now": now_us()}])

    def _lock_out_writers(self, conn: Connection) -> None:
        """Keep every other writer out until this transaction ends (a rewind or a restore in
        place). Default: nothing, the ``log_head`` counter's row lock already does."""

    def _seq(self, conn: Connection) -> int:
        """This transaction's commit token."""
        return int(self._raw_head.fetch(conn, {})[0][0])

    def close(self) -> None:
        self._closed = True
        self.engine.dispose()

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

    @staticmethod
    def _exists(conn: Connection, trajectory_id: str) -> bool:
        return conn.execute(select(trajectories.c.id).where(trajectories.c.id == trajectory_id)).first() is not None
