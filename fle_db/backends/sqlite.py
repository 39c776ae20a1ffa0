"""SQLite backend (the SQLite ``apsw`` bundles, through SQLAlchemy and :mod:`.sqlite_apsw`).

Driver: by default :mod:`.sqlite_apsw`, a DB-API face on ``apsw``, whose bundled SQLite (>= 3.51.3,
pinned in pyproject.toml) has no known corruption bug. A ``sqlite+pysqlite://`` URL selects the
stdlib ``sqlite3`` instead (the system's SQLite, e.g. a custom build): a documented choice, warned
about once per process and reported by ``health_check()`` when that SQLite has the WAL-reset bug.

Per connection: WAL journal (readers never block the writer), ``synchronous=FULL`` by default
(a save that returned survives power loss; ``durability="fast"`` selects NORMAL, trading that
for speed), foreign keys on, and a busy timeout equal to ``connection_timeout`` (all set by
:func:`open_connection`). The driver never begins a transaction by itself (``isolation_level =
None``) so that fle-db emits ``BEGIN`` itself: write transactions start with ``BEGIN IMMEDIATE``,
taking the write lock up front, so concurrent writer processes queue on the busy timeout instead
of failing with "database is locked" when a deferred transaction tries to upgrade its lock.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import quote

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import QueuePool

from .. import migrations
from ..errors import (
    BackendUnavailableError,
    ConfigurationError,
    FleDBError,
    NotFoundError,
    QueryTimeoutError,
    ValidationError,
    WouldWaitError,
)
from ..ops.files import check_regular
from ..schema import metadata
from . import sqlite_apsw
from .base import ConnectionOptions, MigrationStatus
from .readonly import capped_rows
from .sql import SQLBackend
from .sqlite_checkpoint import Checkpointer

#: SQLite's WAL-reset bug (https://sqlite.org/wal.html, "WAL-reset bug"): two connections that
#: write or checkpoint at the same moment can corrupt a WAL database. In 3.7.0 up to 3.51.2,
#: fixed in 3.51.3 and the 3.44.6 and 3.50.7 patch releases. Python's stdlib sqlite3 links the
#: system library (3.40.1 on Debian 12); pysqlite3-binary bundles 3.51.1, still affected. So
#: fle-db uses the SQLite apsw bundles (:mod:`.sqlite_apsw`); when a URL forces the stdlib
#: driver, fle-db detects an affected library, warns once per process and reports it in
#: health_check().
WAL_RESET_FIXED = ((3, 51, 3), (3, 50, 7), (3, 44, 6))


def wal_reset_bug_affects(version: tuple[int, ...]) -> bool:
    """Whether this SQLite version has the WAL-reset bug."""
    if version < (3, 7, 0) or version >= WAL_RESET_FIXED[0]:
        return False
    return not any(version[:2] == fixed[:2] and version >= fixed for fixed in WAL_RESET_FIXED[1:])


_warned = False
#: The logger of the warning about the linked SQLite library (the CLI leaves it out of read-only
#: commands: it concerns concurrent writers).
SQLITE_LIBRARY_LOGGER = "fle_db.sqlite_library"
#: SQLite VM instructions between two checks of a read-only query's deadline (~1 ms of work).
PROGRESS_STEPS = 10_000
#: FLE's placeholders: ``%s`` a parameter, ``%%`` a literal ``%``.
_PLACEHOLDER = re.compile(r"%[s%]")
#: The URL driver name that selects the stdlib ``sqlite3`` module instead of :mod:`.sqlite_apsw`.
STDLIB_DRIVER = "sqlite+pysqlite"


def driver(url: URL) -> ModuleType:
    """The DB-API module fle-db opens ``url``'s SQLite connections with: :mod:`.sqlite_apsw`
    (a bundled SQLite without known corruption bugs), or ``sqlite3`` for a ``sqlite+pysqlite`` URL."""
    if url.drivername == STDLIB_DRIVER:
        import sqlite3

        return sqlite3
    return sqlite_apsw


def _warn_wal_reset_bug(dbapi: ModuleType) -> None:
    global _warned
    if not _warned and wal_reset_bug_affects(dbapi.sqlite_version_info):
        _warned = True
        logging.getLogger(SQLITE_LIBRARY_LOGGER).warning(
            "SQLite %s (the %s driver) has the WAL-reset bug (fixed in 3.51.3): several processes writing "
            "one database file at once risk corrupting it. Drop +pysqlite from the URL to use the SQLite "
            "fle-db bundles, or use PostgreSQL.",
            dbapi.sqlite_version,
            dbapi.__name__,
        )


#: Set inside :meth:`SQLiteBackend.without_lock_waits`.
_NO_LOCK_WAIT: ContextVar[bool] = ContextVar("fle_db_sqlite_no_lock_wait", default=False)


def _begin_without_waiting(conn: Connection, busy_ms: int) -> None:
    """``BEGIN IMMEDIATE`` if the write lock is free now, else WouldWaitError (nothing begun).
    apsw connections only (the busy timeout is set on the connection, without a statement)."""
    raw: Any = conn.connection.dbapi_connection
    raw.apsw.set_busy_timeout(0)
    try:
        raw.execute("BEGIN IMMEDIATE").close()
    except sqlite_apsw.OperationalError as exc:
        if "locked" not in str(exc) and "busy" not in str(exc):
            raise
        raise WouldWaitError("another connection holds the SQLite write lock") from exc
    finally:
        raw.apsw.set_busy_timeout(busy_ms)


#: Where the database is when neither ``SQLITE_DB_FILE`` nor ``sqlite_db_file`` says (FLE's default).
DEFAULT_FILE = ".fle/data.db"
#: ``durability`` -> ``PRAGMA synchronous``.
SYNCHRONOUS = {"full": "FULL", "fast": "NORMAL"}

#: Free space on the database's filesystem below which health is degraded / failing.
DISK_DEGRADED_BYTES = 1024**3
DISK_FAILING_BYTES = 64 * 1024**2
#: A write-ahead log above this size means checkpoints cannot keep up.
WAL_DEGRADED_BYTES = 512 * 1024**2


class SQLiteBackend(SQLBackend):
    """Embedded SQLite file (or ``:memory:``: one connection that threads take turns on, for
    tests and demos)."""

    name = "sqlite"
    dialect_insert = staticmethod(sqlite_insert)
    # Reads keep fle-db's own transaction control (a deferred BEGIN costs no I/O); switching
    # pysqlite to AUTOCOMMIT and back would re-enable its legacy implicit transactions.

    @classmethod
    def url_from_options(cls, options: ConnectionOptions) -> URL:
        """``sqlite_db_file`` / ``SQLITE_DB_FILE``, default ``.fle/data.db``; ``:memory:`` or
        empty for an in-memory database."""
        path = options.get("sqlite_db_file", "SQLITE_DB_FILE")
        return _url(str(path) if path else DEFAULT_FILE, "SQLITE_DB_FILE")

    @classmethod
    def normalize_url(cls, url: URL) -> URL:
        """Path expanded; the driver kept only if it is ``pysqlite`` (the stdlib's, by choice)."""
        normal = _url(url.database or ":memory:", "url")
        return normal.set(drivername=STDLIB_DRIVER) if url.drivername == STDLIB_DRIVER else normal

    @classmethod
    def location(cls, url: URL) -> str:
        path = database_path(url)
        return os.path.abspath(path) if path is not None else url.render_as_string()

    @classmethod
    def database_exists(cls, url: URL) -> bool:
        path = database_path(url)
        return path is None or os.path.exists(path)

    def _create_engine(self) -> Engine:
        settings = self.settings
        path = database_path(settings.url)
        timeout = settings.connection_timeout
        dbapi = driver(settings.url)
        self._checkpointer: Checkpointer | None = None
        # Its calls never wait on the loop (without_lock_waits, checkpoints off the commit path);
        # with the stdlib driver a commit may run a WAL checkpoint, so the asyncio client keeps
        # every call on its worker thread.
        self.runs_on_event_loop = dbapi is sqlite_apsw
        if path is None:
            # One in-memory database is one connection. A pool of exactly that connection makes
            # threads take turns (StaticPool would hand it to several threads at once, mixing
            # their transactions: the conformance suite's thread test failed with FK errors).
            memory = open_connection(settings)
            engine = create_engine(
                "sqlite://",
                module=dbapi,
                poolclass=QueuePool,
                pool_size=1,
                max_overflow=0,
                pool_timeout=timeout,
                creator=lambda: memory,
            )
        else:
            _check_regular(path)
            if settings.read_only:
                if not os.path.exists(path):
                    raise BackendUnavailableError(f"the SQLite database {path!r} does not exist (opened read-only)")
            else:
                if settings.auto_migrate:
                    _create_owner_only(Path(path))
                _warn_wal_reset_bug(dbapi)
            # apsw: WAL checkpoints on a thread of their own, off the commit path (see
            # sqlite_checkpoint.py); the stdlib driver keeps SQLite's autocheckpoint.
            if dbapi is sqlite_apsw and not settings.read_only:
                self._checkpointer = Checkpointer(lambda: open_connection(settings), path)
            hook = self._checkpointer.wal_hook if self._checkpointer is not None else None
            engine = create_engine(
                "sqlite://",
                module=dbapi,
                poolclass=QueuePool,
                pool_size=settings.max_connections,
                max_overflow=0,
                pool_timeout=timeout,
                creator=lambda: open_connection(settings, wal_hook=hook),
            )

        busy_ms = int(timeout * 1000)

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            # On the driver's connection: SQLAlchemy's statement machinery around it cost
            # ~8 % of a checkpoint save's database time (py-spy, FLE checkpoints).
            if not conn.get_execution_options().get("fle_write"):
                conn.connection.dbapi_connection.execute("BEGIN").close()  # type: ignore[union-attr]
            elif not _NO_LOCK_WAIT.get():
                conn.connection.dbapi_connection.execute("BEGIN IMMEDIATE").close()  # type: ignore[union-attr]
            elif self._checkpointer is not None and self._checkpointer.pending:
                raise WouldWaitError("a WAL checkpoint is running: the commit's fsync would wait for its writes")
            else:
                _begin_without_waiting(conn, busy_ms)

        return engine

    def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.close()
        super().close()

    @contextmanager
    def without_lock_waits(self) -> Iterator[None]:
        """Write transactions begun inside take the write lock only if it is free at once
        (``busy_timeout`` 0 for their ``BEGIN IMMEDIATE``), and only while no WAL checkpoint
        is pending (its writes would hold up the commit's fsync), else raise WouldWaitError.
        Once begun, nothing in a WAL database's write transaction waits for another connection."""
        token = _NO_LOCK_WAIT.set(True)
        try:
            yield
        finally:
            _NO_LOCK_WAIT.reset(token)

    def migrate(self) -> list[str]:
        """Create the database file (owner-only) if it is missing, then migrate it."""
        path = database_path(self.settings.url)
        if path is not None:
            _create_owner_only(Path(path))
        return super().migrate()

    def migration_status(self) -> MigrationStatus:
        """A missing file is a database with no migration applied: reported, not created."""
        path = database_path(self.settings.url)
        if path is not None and not os.path.exists(path):
            return MigrationStatus(None, migrations.latest_revision(), migrations.pending_revisions(None))
        return super().migration_status()

    def _translate_driver(self, exc: BaseException | None) -> FleDBError:
        path = database_path(self.settings.url)
        if path is not None and not os.path.exists(path):
            return NotFoundError(f"there is no SQLite database at {os.path.abspath(path)} (`fle-db init` creates one)")
        return super()._translate_driver(exc)

    @contextmanager
    def _migration_lock(self, conn: Connection) -> Iterator[None]:
        """``BEGIN IMMEDIATE`` already holds the database's single write lock."""
        yield

    def _table_sizes(self, conn: Connection) -> dict[str, int]:
        """Pages of each table and its indexes (the ``dbstat`` table, which reads b-tree pages,
        not payloads); empty where this SQLite build lacks it."""
        try:
            rows = conn.exec_driver_sql(
                "SELECT tbl_name, name FROM sqlite_schema WHERE tbl_name IN "
                "(SELECT name FROM sqlite_schema WHERE type = 'table')"
            ).all()
            sizes: dict[str, Any] = dict(
                conn.exec_driver_sql("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name").all()
            )
        except DBAPIError:
            return {}
        tables: dict[str, int] = {}
        for table, name in rows:
            if table in metadata.tables:
                tables[table] = tables.get(table, 0) + int(sizes.get(name, 0))
        return tables

    def _maintenance(self, vacuum: bool, reindex: bool) -> list[tuple[str, str]]:
        actions = [("analyze", "ANALYZE")]
        if reindex:
            actions.append(("reindex", "REINDEX"))
        if vacuum:
            actions.append(("vacuum", "VACUUM"))
        # Last: fold the WAL into the database file and truncate it to zero bytes.
        actions.append(("wal_checkpoint", "PRAGMA wal_checkpoint(TRUNCATE)"))
        return actions

    def _structure_problems(self, conn: Connection) -> list[tuple[str, str, str]]:
        """``integrity_check`` (pages, b-trees, indexes) and ``foreign_key_check``."""
        problems = [
            ("structure", "database file", str(row[0]))
            for row in conn.exec_driver_sql("PRAGMA integrity_check").all()
            if row[0] != "ok"
        ]
        problems += [
            ("foreign_key", f"{table} row {rowid}", f"refers to a missing row of {parent}")
            for table, rowid, parent, _ in conn.exec_driver_sql("PRAGMA foreign_key_check").all()
        ]
        return problems

    def _backend_checks(self) -> dict[str, dict[str, Any]]:
        path = database_path(self.settings.url)
        if path is None:
            return {}
        free = shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free
        disk = "failing" if free < DISK_FAILING_BYTES else "degraded" if free < DISK_DEGRADED_BYTES else "ok"
        wal = os.path.getsize(path + "-wal") if os.path.exists(path + "-wal") else 0
        dbapi = driver(self.settings.url)
        affected = wal_reset_bug_affects(dbapi.sqlite_version_info)
        return {
            "sqlite_version": {
                "status": "degraded" if affected else "ok",
                "detail": f"SQLite {dbapi.sqlite_version} ({'apsw' if dbapi is sqlite_apsw else 'stdlib sqlite3'})"
                + (": has the WAL-reset bug (fixed in 3.51.3); avoid many writer processes" if affected else ""),
            },
            "disk": {"status": disk, "detail": f"{free / 2**20:,.0f} MiB free", "free_bytes": free},
            "wal": {
                "status": "degraded" if wal > WAL_DEGRADED_BYTES else "ok",
                "detail": f"write-ahead log {wal / 2**20:,.1f} MiB"
                + (": checkpoints are starved (a long-lived reader?)" if wal > WAL_DEGRADED_BYTES else ""),
                "wal_bytes": wal,
            },
        }

    def _total_size(self, tables: dict[str, int]) -> int:
        """The database file and its write-ahead log."""
        path = database_path(self.settings.url)
        if path is None:
            return sum(tables.values())
        return sum(os.path.getsize(p) for p in (path, path + "-wal") if os.path.exists(p))

    def bind_placeholders(self, sql: str) -> str:
        """``%s`` -> ``?`` and ``%%`` -> ``%`` (the stdlib driver's qmark style)."""
        return _PLACEHOLDER.sub(lambda m: "?" if m.group(0) == "%s" else "%", sql)

    def _read_only_rows(
        self, conn: Connection, sql: str, params: Sequence[Any] | Mapping[str, Any]
    ) -> list[dict[str, Any]]:
        """``PRAGMA query_only`` plus an authorizer that allows reading and nothing else (no
        ATTACH, no PRAGMA, no temporary objects: nothing in the pooled connection's session can
        change), a progress handler that interrupts the statement after ``query_timeout``; the
        driver runs one statement only."""
        dbapi = driver(self.settings.url)
        raw: Any = conn.connection.dbapi_connection
        deadline = time.monotonic() + self.settings.query_timeout
        raw.execute("PRAGMA query_only = 1")
        raw.set_authorizer(_authorize_read)
        raw.set_progress_handler(lambda: int(time.monotonic() > deadline), PROGRESS_STEPS)
        cursor = raw.cursor()
        try:
            cursor.execute(sql, params)
            return capped_rows(cursor, self.settings.query_max_rows)
        except dbapi.ProgrammingError as exc:  # several statements, wrong parameter count
            raise ValidationError(f"execute_query runs one SELECT: {exc}") from exc
        except dbapi.OperationalError as exc:
            detail = str(exc)
            if detail == "interrupted":
                raise QueryTimeoutError(
                    f"execute_query ran longer than query_timeout={self.settings.query_timeout:g} s and was stopped"
                ) from exc
            if any(word in detail for word in ("locked", "disk", "unable to open")):
                raise  # the database's trouble, not the query's
            raise ValidationError(f"execute_query runs one read-only SELECT: {detail}") from exc
        except dbapi.DatabaseError as exc:
            if "not authorized" not in str(exc):
                raise
            raise ValidationError(f"execute_query is read-only: {exc}") from exc
        finally:
            cursor.close()
            raw.set_progress_handler(None, 0)
            raw.set_authorizer(None)
            raw.execute("PRAGMA query_only = 0")


def open_connection(settings: Any, wal_hook: Callable[[Any, str, int], int] | None = None) -> Any:
    """A new DB-API connection to the SQLite database of ``settings``, set up as every fle-db
    SQLite connection is; the client's engine opens its connections with it, and so should any
    other component (an async client).

    The driver is :func:`driver`'s; the busy timeout is ``connection_timeout``; foreign keys on;
    ``synchronous`` per ``durability``; ``secure_delete`` on; no transaction is begun implicitly (fle-db emits
    ``BEGIN``/``BEGIN IMMEDIATE``). A file is opened ``mode=rw`` (never created: only migrating
    creates it) and put in WAL mode, or ``mode=ro`` plus ``query_only`` when ``read_only`` (the
    OS call opens it read-only). ``:memory:`` opens a new private in-memory database.
    ``wal_hook`` (apsw's connections only): called after each commit, in place of SQLite's
    autocheckpoint (see :mod:`.sqlite_checkpoint`).
    """
    path = database_path(settings.url)
    dbapi = driver(settings.url)
    timeout = settings.connection_timeout
    if path is None:
        conn = dbapi.connect(":memory:", check_same_thread=False)
    else:
        uri = f"file:{quote(os.path.abspath(path))}?mode={'ro' if settings.read_only else 'rw'}"
        conn = dbapi.connect(uri, uri=True, check_same_thread=False, timeout=timeout)
    try:
        conn.isolation_level = None
        conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute(f"PRAGMA synchronous = {SYNCHRONOUS[settings.durability]}")
        # Deleted rows (delete_trajectory, cleanup) are overwritten with zeros, not left in free
        # pages: Debian's system SQLite is built that way, apsw's bundled one is not.
        conn.execute("PRAGMA secure_delete = ON")
        if settings.read_only:
            conn.execute("PRAGMA query_only = 1")
        elif path is not None:
            _ensure_wal(dbapi, conn, timeout)
        if wal_hook is not None:
            conn.apsw.set_wal_hook(wal_hook)
    except BaseException:
        conn.close()
        raise
    return conn


def database_path(url: URL) -> str | None:
    """The SQLite file a URL names, or None for an in-memory database."""
    return None if url.database in (None, "", ":memory:") else url.database


def _url(path: str, source: str) -> URL:
    if "\x00" in path:
        raise ConfigurationError(f"{source} contains a NUL byte")
    if path in (":memory:", ""):
        return URL.create("sqlite", database=":memory:")
    return URL.create("sqlite", database=str(Path(path).expanduser()))


def _ensure_wal(dbapi: ModuleType, conn: Any, timeout: float) -> None:
    """Put the database in WAL mode (a persistent property of the file).

    Switching needs exclusive access and SQLite answers "database is locked" at once, without
    the busy timeout, while another connection holds the file — as happens when several
    processes open a new database together (measured: 4 of 25 rounds of 6 processes failed).
    So check first (no lock needed once the file is in WAL mode), and retry the switch until
    ``timeout``.
    """
    deadline = time.monotonic() + timeout
    while conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
        try:
            if conn.execute("PRAGMA journal_mode = WAL").fetchone()[0] == "wal":
                return
        except dbapi.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
        time.sleep(0.01)
        if time.monotonic() > deadline:
            raise dbapi.OperationalError("database is locked: could not switch it to WAL mode")


def _check_regular(path: str) -> None:
    """Refuse a database "file" that is a device, FIFO, socket or folder (``/dev/null`` would
    make SQLite write ``/dev/null-journal`` beside it); a symlink to a regular file is fine."""
    check_regular(path, f"the SQLite database {path!r}", follow_symlinks=True, error=ConfigurationError)


def _create_owner_only(path: Path) -> None:
    """Create the directory and an empty database file readable by the owner only.

    SQLite gives its ``-wal`` and ``-shm`` files the database file's permissions, so those are
    owner-only too. An existing file is left as it is (if it is a regular file).
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        pass
    except OSError as exc:
        raise BackendUnavailableError(f"cannot create the SQLite database {str(path)!r}: {exc}") from exc
    _check_regular(str(path))


#: What a read-only query may do: read tables and columns, SELECT, call functions, recurse.
_READ_ACTIONS = frozenset(
    {sqlite_apsw.SQLITE_SELECT, sqlite_apsw.SQLITE_READ, sqlite_apsw.SQLITE_FUNCTION, sqlite_apsw.SQLITE_RECURSIVE}
)


def _authorize_read(action: int, *_args: Any) -> int:
    return sqlite_apsw.SQLITE_OK if action in _READ_ACTIONS else sqlite_apsw.SQLITE_DENY
