"""Backends over asyncio drivers, for :class:`fle_db.aio.AsyncDatabaseClient`.

The statement building, encoding, retries and error translation of the synchronous backends run
unchanged over an asyncio driver through SQLAlchemy's greenlet bridge: the engine is an
``AsyncEngine``'s ``sync_engine``, and every call runs inside
``sqlalchemy.util.greenlet_spawn``, where each driver round trip awaits on the event loop
(``await_``) instead of blocking the thread. What touches the raw driver is adapted here:

- PostgreSQL's pipeline (the checkpoint's INSERTs in one round trip) is psycopg's
  ``AsyncConnection.pipeline()``, with its statements held until the block ends and then sent
  in one await on psycopg's own cursors (SQLAlchemy's adapter offers no ``pipeline()``, and
  costs three awaits per statement);
- a retry's backoff awaits ``asyncio.sleep`` (``time.sleep`` would stop the loop).

Only PostgreSQL has a native variant (psycopg's async connections). SQLite and MySQL run the
synchronous backend on the client's worker threads (see :func:`has_native_backend` and
:func:`worker_threads`), except SQLite's per-step calls, which run on the event loop itself
(:mod:`fle_db.aio._runner`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from typing import TYPE_CHECKING, Any, ClassVar

from sqlalchemy import Connection, Dialect, Engine, event
from sqlalchemy.util import await_

from .base import CheckpointStore
from .sql.core import Held, holding

if TYPE_CHECKING:
    from ..config import Settings


def has_native_backend(settings: Settings) -> bool:
    """Whether the backend ``settings`` names runs over an asyncio driver: PostgreSQL only.

    MySQL/MariaDB runs the synchronous backend (PyMySQL) on worker threads: aiomysql 0.3.2, the
    asyncio port of PyMySQL whose exceptions the MySQL backend's error translation reads, fails
    on the first bytes parameter with the PyMySQL it needs (>= 1.1 replaced the
    ``escape_bytes_prefixed`` it imports by a string: ``TypeError``), and every blob is bytes;
    asyncmy raises exceptions of its own, which that translation does not know."""
    return settings.backend == "postgres"


def worker_threads(settings: Settings) -> int:
    """Threads of the asyncio client's worker for a backend without an asyncio driver. SQLite:
    one (its writers take turns anyway; measured, 200 concurrent FLE saves: one thread stalls the
    event loop at most ~15 ms, ten threads 55-170 ms, the loop thread waiting for the GIL behind
    them). Servers: up to 4 (their round trips overlap)."""
    return 1 if settings.backend == "sqlite" else min(settings.max_connections, 4)


def open_native_backend(settings: Settings) -> CheckpointStore:
    """The backend of ``settings`` over an asyncio driver, to be used only inside
    ``greenlet_spawn`` (see :func:`has_native_backend`)."""
    assert has_native_backend(settings)
    return _postgres_class()(settings)


class _AwaitingRetries:
    """A retry's backoff awaits on the event loop (``time.sleep`` would stop it)."""

    def _pause(self, seconds: float) -> None:
        await_(asyncio.sleep(seconds))


@cache
def _postgres_class() -> type[CheckpointStore]:
    from sqlalchemy.ext.asyncio import create_async_engine

    from .postgres import PostgresBackend, no_preparing_behind_a_pooler  # psycopg: imported when used

    class AsyncPostgresBackend(_AwaitingRetries, PostgresBackend):
        """:class:`PostgresBackend` over psycopg's ``AsyncConnection`` (same pool settings)."""

        def _create_engine(self) -> Engine:
            engine = create_async_engine(self.settings.url, **self._engine_options()).sync_engine
            event.listen(engine, "connect", no_preparing_behind_a_pooler)
            _skip_idle_ends(engine.dialect)
            return engine

        #: psycopg's autocommit is switched by :func:`_send_pipelined`, in the await that sends
        #: the pipeline: through SQLAlchemy's adapter the switch and its reset on return to the
        #: pool cost three more awaits, ~50-70 µs of CPU per save (measured beside a plain
        #: write transaction, 3,000 each).
        explicit_options: ClassVar[dict[str, Any]] = {"fle_explicit": True}

        @contextmanager
        def _pipeline(self, conn: Connection) -> Iterator[None]:
            """The pipeline's statements are held, then sent in psycopg's async pipeline mode in
            one await (through SQLAlchemy's adapter, each statement cost three: cursor, execute,
            close)."""
            with holding() as batch:
                yield
            explicit = bool(conn.get_execution_options().get("fle_explicit"))
            await_(_send_pipelined(conn.connection.driver_connection, batch, explicit))

    return AsyncPostgresBackend


async def _send_pipelined(connection: Any, batch: list[Held], explicit: bool) -> None:
    """Run ``batch`` on psycopg ``AsyncConnection`` ``connection`` in one pipeline (one round
    trip) and fill in each statement's row count. A failed statement raises psycopg's error at
    the pipeline's sync, as the synchronous pipeline does (the server skips what follows it).

    ``explicit``: the batch sends its own BEGIN and COMMIT, so psycopg runs it in autocommit
    (else it would send a BEGIN of its own, synced alone) and is switched back after, a failed
    transaction rolled back first; a connection that cannot be switched back is closed, and so
    discarded like any lost connection (never handed out in autocommit)."""
    cursors = []
    try:
        if explicit:  # inside the try: a cancellation may land right after the switch
            await connection.set_autocommit(True)
        async with connection.pipeline():
            for held in batch:
                cursor = connection.cursor()
                cursors.append(cursor)
                if len(held.params) == 1:
                    await cursor.execute(held.sql, held.params[0])
                else:
                    await cursor.executemany(held.sql, held.params)
        for held, cursor in zip(batch, cursors, strict=True):
            held.rowcount = cursor.rowcount
    finally:
        for cursor in cursors:
            await cursor.close()
        if explicit:
            await _leave_autocommit(connection)


def _skip_idle_ends(dialect: Dialect) -> None:
    """Make ``dialect`` skip COMMIT and ROLLBACK on a connection with no transaction open.

    psycopg sends nothing then either (its ``commit()``/``rollback()`` return on an idle
    connection), but through SQLAlchemy's adapter each still costs an await (psycopg's connection
    lock, a coroutine and the greenlet switch). After the one-trip save (its own BEGIN and COMMIT,
    sent by :func:`_send_pipelined`), both SQLAlchemy's commit and the pool's reset-on-return
    rollback find the connection idle: two of a save's three awaits (measured 16 and 72 µs of
    CPU less per save, paired medians of two interleaved in-process runs)."""
    commit, rollback = dialect.do_commit, dialect.do_rollback

    def do_commit(dbapi_connection: Any) -> None:
        if not _idle(dbapi_connection.driver_connection):
            commit(dbapi_connection)

    def do_rollback(dbapi_connection: Any) -> None:
        if not _idle(dbapi_connection.driver_connection):
            rollback(dbapi_connection)

    dialect.do_commit = do_commit  # type: ignore[method-assign]
    dialect.do_rollback = do_rollback  # type: ignore[method-assign]


def _idle(connection: Any) -> bool:
    """Whether psycopg ``connection`` has no transaction open (nor a failed one)."""
    return bool(connection.info.transaction_status.name == "IDLE")


async def _leave_autocommit(connection: Any) -> None:
    """Switch psycopg ``AsyncConnection`` ``connection`` back from autocommit (rolling back a
    transaction the batch left open or failed); close it if that fails."""
    try:
        if not _idle(connection):
            await connection.rollback()
        await connection.set_autocommit(False)
    except BaseException as exc:  # lost, in an unknown state, or cancelled meanwhile: never reuse it
        await connection.close()  # without a psycopg pool, close() awaits nothing: uninterruptible
        if not isinstance(exc, Exception):
            raise
