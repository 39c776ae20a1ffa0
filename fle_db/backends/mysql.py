"""MySQL / MariaDB backend (PyMySQL through SQLAlchemy). Install with ``pip install 'fle-db[mysql]'``.

**Driver.** PyMySQL: pure Python, so it installs from a wheel on any platform with no client
library or compiler (mysqlclient needs the libmariadb/libmysqlclient headers and a C toolchain),
maintained, and SQLAlchemy's reference pure-Python MySQL driver. Its protocol parsing costs
some CPU per row, which is second order beside fle-db's encoding and the commit.

**Semantics made equal to SQLite and PostgreSQL:**

* *Skipping stored keys.* ``INSERT IGNORE`` would also turn foreign-key, truncation and NOT NULL
  errors into warnings, so a skipped row is ``INSERT ... ON DUPLICATE KEY UPDATE pk = pk`` (a
  no-op on a duplicate key, every other error still raised). Its row count is 0 for a duplicate
  only without the ``CLIENT_FOUND_ROWS`` flag, which SQLAlchemy always sets and this backend
  clears (fle-db never reads the row count of an UPDATE), so a conflict is detected and checked
  by digest exactly as elsewhere: a different record under a stored key is a ConflictError.
* *Keyframe upserts* (``ON CONFLICT ... DO UPDATE ... WHERE``) become ``IF(base_id IS NOT NULL,
  new, old)`` per column, with ``base_id`` assigned last (MySQL evaluates the assignments left
  to right, each seeing the previous ones).
* *Ids compare byte for byte*: every table has the ``utf8mb4_bin`` collation (see ``schema``).
* *Isolation.* Write transactions run at READ COMMITTED, as on PostgreSQL (each statement sees
  what was committed before it; no gap locks), reads in autocommit; ``sql_mode`` is strict
  (``TRADITIONAL``) whatever the server's default, so nothing is silently truncated.
* *Commit tokens.* Each write transaction's first statement draws a token of its own into the
  session variable ``@fle_commit`` (``log_head.seq`` + ``UUID_SHORT()`` without its server-id
  byte: unique, never reused after a restart) and its rows carry it, as PostgreSQL's carry the
  transaction id (see ``fle_db.backends.sql.versioned``): writers no longer queue on a counter
  row. That statement reads ``log_head`` with a shared lock, which writers never wait on among
  themselves; a rewind or restore in place takes it exclusively (:meth:`_lock_out_writers`), so
  it runs alone. 16 writer processes saving small steps measured 959 InnoDB row-lock waits
  (22.9 s waited) with the counter, none with the tokens.
* *Locks.* ``innodb_lock_wait_timeout`` is ``connection_timeout``; a lock wait that runs out is a
  ConnectionTimeoutError. A deadlock rolls the transaction back and is retried like a lost
  connection (every retried write is idempotent).
* *Migrations* serialise on ``GET_LOCK('fle_db_migrate')``. MySQL has no transactional DDL:
  each DDL statement commits, so a migration interrupted half-way (a crash, a killed process)
  leaves its revision partly applied and must be finished by hand; fle-db's revisions are small.
* *Durability.* Whether a commit survives power loss is the server's setting
  (``innodb_flush_log_at_trx_commit``, global); ``durability="fast"`` changes nothing here, and
  health reports the server's setting.
* *Payload size.* One stored body must fit the server's ``max_allowed_packet`` (16 MB by
  default) as PyMySQL sends it (bytes travel as hex: twice their size). A server given a larger
  statement drops the connection, which would look like a lost server; so each write checks its
  bodies first and refuses an oversized one with a PayloadTooLargeError naming the setting,
  nothing written.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import BigInteger, ColumnElement, Connection, Engine, Table, cast, create_engine, event, func, text
from sqlalchemy.dialects.mysql import insert as mysql_insert
from sqlalchemy.engine import URL
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.pool import NullPool

from ..errors import (
    BackendUnavailableError,
    ConfigurationError,
    ConnectionTimeoutError,
    FleDBError,
    PayloadTooLargeError,
    QueryTimeoutError,
    StorageFullError,
    ValidationError,
)
from ..schema import blobs, metadata
from .base import ConnectionOptions
from .readonly import ReadOnlyLogin, capped_rows
from .sql import SQLBackend
from .sql.core import _Raw
from .sql.versioned import CurrentCommit

#: Tables with at least this many rows (InnoDB's estimate) are counted approximately, as on
#: PostgreSQL: an exact count walks a whole index.
EXACT_COUNT_LIMIT = 50_000
#: Share of the server's max_connections in use at which health is degraded.
CONNECTIONS_DEGRADED_SHARE = 0.9
#: Name of the migration lock (GET_LOCK is server-wide, per name).
MIGRATION_LOCK = "fle_db_migrate"
#: Idle connections are replaced before the server's ``wait_timeout`` (8 h by default) drops them.
POOL_RECYCLE_S = 3600
#: Server error codes fle-db names.
ER_LOCK_WAIT_TIMEOUT = 1205
ER_LOCK_DEADLOCK = 1213
ER_NET_PACKET_TOO_LARGE = 1153
ER_RECORD_FILE_FULL = 1114
ER_DISK_FULL = 1021
#: A statement stopped by MariaDB's max_statement_time / MySQL's max_execution_time.
ER_QUERY_TIMEOUTS = {1969, 3024}
#: Refused by a read-only transaction or a missing privilege (FILE, a write, a table).
ER_READ_ONLY = {1792, 1045, 1044, 1142, 1143, 1227, 1370}
#: Bytes of a statement besides its largest body (SQL text, keys, other columns).
STATEMENT_OVERHEAD = 64 * 1024
#: The TLS modes of ``SKILLS_DB_SSLMODE`` / ``?sslmode=`` this backend understands.
SSL_MODES = ("disable", "require", "verify-ca", "verify-full")


#: How far below the newest commit a live tail waits for commits in flight (µs): a write
#: transaction's COMMIT follows its last statement within milliseconds.
IN_FLIGHT_WINDOW_US = 10_000_000
#: The session variable holding this write transaction's commit token.
TOKEN_VARIABLE = "@fle_commit"
#: Draws the token: ``log_head.seq`` (the base) + ``UUID_SHORT()`` without its top byte (the
#: server id), i.e. (startup time << 24) + a counter, below 2**56 (72057594037927935 = 2**56 - 1),
#: so the sum stays far inside a signed BIGINT. The shared lock lets writers run side by side
#: and keeps them out while a rewind holds the row exclusively.
DRAW_TOKEN = (
    "SELECT seq + (UUID_SHORT() & 72057594037927935) INTO @fle_commit FROM log_head WHERE id = 1 LOCK IN SHARE MODE"
)


@compiles(CurrentCommit, "mysql")
@compiles(CurrentCommit, "mariadb")
def _session_token(element: CurrentCommit, compiler: Any, **kw: Any) -> str:
    """The commit token on MySQL/MariaDB: the session variable the transaction's first statement
    set (see :meth:`MySQLBackend._open_commit`)."""
    return TOKEN_VARIABLE


class MySQLBackend(SQLBackend):
    """MySQL 8 / MariaDB 10.5+ server (InnoDB), many writers."""

    name = "mysql"
    dialect_insert = staticmethod(mysql_insert)
    # Reads in autocommit: every consistent read is one statement (see SQLCore._read).
    read_isolation = "AUTOCOMMIT"
    # A backup or copy reads every table in one snapshot (InnoDB: from its first read on).
    snapshot_isolation = "REPEATABLE READ"
    # InnoDB checks foreign keys row by row, within a statement too.
    unlink_bases_before_delete = True
    # Commit tokens are drawn per transaction: writers never queue on log_head.
    counted_commits = False

    def __init__(self, settings: Any) -> None:
        super().__init__(settings)
        self._max_packet: int | None = None  # the server's max_allowed_packet, read on first need
        self._raw_token = _Raw(text(DRAW_TOKEN), self.engine.dialect)

    def _make_read_only_login(self) -> ReadOnlyLogin:
        return MySQLReadOnlyLogin(self.settings)

    # -- configuration --------------------------------------------------------------------
    @classmethod
    def url_from_options(cls, options: ConnectionOptions) -> URL:
        """``SKILLS_DB_HOST/PORT/NAME/USER/PASSWORD`` (port 3306), ``SKILLS_DB_SSLMODE``
        (``disable``, ``require``, ``verify-ca``, ``verify-full``) and ``SKILLS_DB_SSLROOTCERT``."""
        return cls.normalize_url(options.server_url("mysql+pymysql", 3306))

    @classmethod
    def normalize_url(cls, url: URL) -> URL:
        """``mysql://``, ``mariadb://`` and ``mysql+pymysql://`` all use PyMySQL with utf8mb4."""
        if not url.database:
            raise ConfigurationError("the mysql:// URL names no database")
        mode = url.query.get("sslmode")
        if mode is not None and mode not in SSL_MODES:
            raise ConfigurationError(f"sslmode (SKILLS_DB_SSLMODE) must be one of {', '.join(SSL_MODES)}, got {mode!r}")
        return url.set(drivername="mysql+pymysql").update_query_dict({"charset": "utf8mb4"})

    # -- engine ---------------------------------------------------------------------------
    def _create_engine(self) -> Engine:
        return _engine(
            self.settings,
            self.settings.url,
            pool_size=self.settings.max_connections,
            max_overflow=0,
            pool_timeout=self.settings.connection_timeout,
            pool_recycle=POOL_RECYCLE_S,
            isolation_level="READ COMMITTED",
        )

    # -- writes: refuse what the server would drop the connection for -----------------------
    def _check_bodies(self, bodies: Iterable[bytes]) -> None:
        """Raise PayloadTooLargeError if a body would not fit in one ``max_allowed_packet``."""
        largest = max((len(body) for body in bodies), default=0)
        if largest == 0:
            return
        if self._max_packet is None:
            with self._read() as conn:
                self._max_packet = int(conn.execute(text("SELECT @@max_allowed_packet")).scalar_one())
        if 2 * largest + STATEMENT_OVERHEAD > self._max_packet:
            raise PayloadTooLargeError(
                f"a record of {largest / 2**20:,.1f} MiB compressed does not fit the MySQL server's "
                f"max_allowed_packet ({self._max_packet / 2**20:,.0f} MiB; bytes are sent as hex, twice their size); "
                "nothing was written. Raise max_allowed_packet on the server, or store smaller records"
            )

    # -- statements -----------------------------------------------------------------------
    def _insert_ignore(self, stmt: Any, table: Table) -> Any:
        first_key = table.primary_key.columns.values()[0]
        return stmt.on_duplicate_key_update({first_key.name: first_key})

    def _upsert_keyframe(self, stmt: Any) -> Any:
        is_delta = blobs.c.base_id.is_not(None)
        # Ordered: base_id last, so the conditions above it still see the stored value.
        return stmt.on_duplicate_key_update(
            [
                *[
                    (name, func.if_(is_delta, stmt.inserted[name], blobs.c[name]))
                    for name in ("codec", "body", "checksum")
                ],
                ("base_id", func.if_(is_delta, None, blobs.c.base_id)),
            ]
        )

    def _upsert_metadata_value(self, stmt: Any) -> Any:
        return stmt.on_duplicate_key_update(
            codec=stmt.inserted.codec,
            body=stmt.inserted.body,
            updated_at=stmt.inserted.updated_at,
            valid_from_seq=stmt.inserted.valid_from_seq,
        )

    def _read_only_rows(
        self, conn: Connection, sql: str, params: Sequence[Any] | Mapping[str, Any]
    ) -> list[dict[str, Any]]:
        """A ``READ ONLY`` transaction, always rolled back, on the SELECT-only login's connection
        (whose statements stop after ``query_timeout``); PyMySQL sends one statement (no
        multi-statement flag). Without parameters the text is not %-formatted (as psycopg)."""
        import pymysql  # the optional driver, imported like the dialect does: only when used

        raw = conn.connection.dbapi_connection
        assert raw is not None
        cursor = raw.cursor()
        try:
            cursor.execute("START TRANSACTION READ ONLY")
            try:
                cursor.execute(sql, params or None)
                return capped_rows(cursor, self.settings.query_max_rows)
            except pymysql.err.MySQLError as exc:
                code = exc.args[0] if exc.args else None
                if code in ER_QUERY_TIMEOUTS:
                    raise QueryTimeoutError(
                        f"execute_query ran longer than query_timeout={self.settings.query_timeout:g} s and was stopped"
                    ) from exc
                if code in ER_READ_ONLY or isinstance(exc, pymysql.err.InternalError):
                    raise ValidationError(f"execute_query is read-only: {exc}") from exc
                if isinstance(exc, (pymysql.err.ProgrammingError, pymysql.err.DataError)):
                    raise ValidationError(f"execute_query runs one SELECT: {exc}") from exc  # syntax, unknown names
                raise
        finally:
            cursor.close()
            raw.rollback()

    def _descending_nulls_last(self, column: ColumnElement[Any]) -> Any:
        """MySQL has no ``NULLS LAST``; it sorts NULL below every value, so ``DESC`` puts it last."""
        return column.desc()

    def _clock(self) -> ColumnElement[int]:
        """The server's clock, in microseconds: writers on many hosts share one time line for the
        commit log."""
        return cast(func.floor(func.unix_timestamp(func.now(6)) * 1_000_000), BigInteger)

    def _open_commit(self, conn: Connection) -> list[Any]:
        """Draw this transaction's commit token into ``@fle_commit`` (under a shared lock of the
        ``log_head`` row: writers share it, :meth:`_lock_out_writers` excludes them)."""
        return [self._raw_token.start(conn, [{}])]

    def _writers_in_flight(self, conn: Connection) -> frozenset[str]:
        """Waits for the commits in flight instead of naming them: a locking read of the commit
        log's newest :data:`IN_FLIGHT_WINDOW_US` (a write transaction's uncommitted log row holds
        its lock, so the read returns once each has committed or rolled back; committed rows'
        shared locks stop no writer, READ COMMITTED takes no gap locks). Then none is in flight.
        (``information_schema.INNODB_TRX`` could name them, but InnoDB refreshes that view only
        after 100 ms without readers, so a tail polling faster saw it frozen.) A commit whose
        COMMIT comes more than the window after its last statement could still be missed."""
        conn.execute(
            text(
                "SELECT COUNT(*) FROM commit_log WHERE committed_at >= "
                "(SELECT COALESCE(MAX(c.committed_at), 0) FROM commit_log c) - :window LOCK IN SHARE MODE"
            ),
            {"window": IN_FLIGHT_WINDOW_US},
        )
        return frozenset()

    def _lock_out_writers(self, conn: Connection) -> None:
        """The ``log_head`` row locked exclusively: every writer's first statement waits until
        this transaction ends; readers do not."""
        conn.execute(text("SELECT seq FROM log_head WHERE id = 1 FOR UPDATE"))

    @contextmanager
    def _migration_lock(self, conn: Connection) -> Iterator[None]:
        """``GET_LOCK``: a named server-wide lock held by this session until released (not by the
        transaction: MySQL's DDL commits implicitly)."""
        got = conn.execute(
            text("SELECT GET_LOCK(:name, :timeout)"),
            {"name": MIGRATION_LOCK, "timeout": max(1, round(self.settings.connection_timeout))},
        ).scalar()
        if got != 1:
            raise ConnectionTimeoutError(
                f"another process held the migration lock for connection_timeout={self.settings.connection_timeout:g} s"
            )
        try:
            yield
            # Commit the last version row before another process may read it: the lock belongs to
            # the session, so releasing it first would let a waiter see the previous revision.
            conn.exec_driver_sql("COMMIT")
        finally:
            conn.execute(text("SELECT RELEASE_LOCK(:name)"), {"name": MIGRATION_LOCK})

    # -- errors ---------------------------------------------------------------------------
    def _translate_driver(self, exc: BaseException | None) -> FleDBError:
        code = _error_code(exc)
        if code == ER_LOCK_WAIT_TIMEOUT:
            return ConnectionTimeoutError(
                "a row this write needs stayed locked by another transaction for "
                f"connection_timeout={self.settings.connection_timeout:g} s; nothing was written"
            )
        if code == ER_NET_PACKET_TOO_LARGE:
            return PayloadTooLargeError(
                "the write is larger than the MySQL server's max_allowed_packet; nothing was written. "
                "Raise max_allowed_packet on the server, or lower max_payload_bytes"
            )
        if code in (ER_RECORD_FILE_FULL, ER_DISK_FULL):
            return StorageFullError(
                f"the disk holding {self.settings.safe_url()} is full: nothing of this write was stored; "
                "free space (or run cleanup and optimize(vacuum=True)) and retry"
            )
        error = super()._translate_driver(exc)
        if code == ER_LOCK_DEADLOCK and isinstance(error, BackendUnavailableError):
            error.retryable = True  # the server rolled the whole transaction back: safe to re-run
        return error

    def _is_disconnect(self, exc: BaseException | None) -> bool:
        """Connection refused, lost or closed, server shutting down ("gone away", 2006/2013...)."""
        import pymysql

        if isinstance(exc, pymysql.err.InterfaceError):
            return True
        return isinstance(exc, pymysql.err.OperationalError) and bool(
            self.engine.dialect.is_disconnect(exc, None, None)  # type: ignore[arg-type]
        )

    def _missing_reference(self, exc: BaseException) -> str | None:
        """Error 1452 ("cannot add or update a child row: a foreign key constraint fails"),
        whose message names the constraint; 1451 (deleting a referenced row) is a conflict."""
        args = getattr(exc, "args", ())
        if not args or args[0] != 1452:
            return None
        detail = str(args[1]) if len(args) > 1 else ""
        return detail.partition("fails")[2].strip(" ()") or "a foreign key's target"

    # -- operations -----------------------------------------------------------------------
    def _count(self, conn: Connection, table: Table) -> tuple[int, bool]:
        """Exact below :data:`EXACT_COUNT_LIMIT` rows; above, InnoDB's estimate."""
        estimate = conn.execute(
            text(
                "SELECT table_rows FROM information_schema.tables WHERE table_schema = DATABASE() AND table_name = :t"
            ),
            {"t": table.name},
        ).scalar()
        if estimate is not None and estimate >= EXACT_COUNT_LIMIT:
            return int(estimate), False
        return super()._count(conn, table)

    def _table_sizes(self, conn: Connection) -> dict[str, int]:
        """Data and index bytes of each table (InnoDB's page counts, refreshed by ANALYZE)."""
        rows = conn.execute(
            text(
                "SELECT table_name, data_length + index_length FROM information_schema.tables "
                "WHERE table_schema = DATABASE()"
            )
        ).all()
        return {str(name): int(size or 0) for name, size in rows if name in metadata.tables}

    def _maintenance(self, vacuum: bool, reindex: bool) -> list[tuple[str, str]]:
        """ANALYZE TABLE; VACUUM and REINDEX are both OPTIMIZE TABLE on InnoDB (a rebuild of the
        table and its indexes that returns free space to the file system)."""
        tables = ", ".join(f"`{name}`" for name in metadata.tables)  # fle-db's own table names
        if vacuum or reindex:
            return [("optimize", f"OPTIMIZE TABLE {tables}")]
        return [("analyze", f"ANALYZE TABLE {tables}")]

    def _structure_problems(self, conn: Connection) -> list[tuple[str, str, str]]:
        """``CHECK TABLE`` (pages and indexes) of every fle-db table; InnoDB enforces foreign keys."""
        problems = []
        for name in metadata.tables:
            for _table, _op, kind, message in conn.exec_driver_sql(f"CHECK TABLE `{name}`").all():
                if kind.lower() == "error" or (kind.lower() == "status" and message.lower() != "ok"):
                    problems.append(("structure", f"table {name}", str(message)))
        return problems

    def _backend_checks(self) -> dict[str, dict[str, Any]]:
        with self._read() as conn:
            used, limit, read_only, flush, packet, version = conn.execute(
                text(
                    "SELECT (SELECT variable_value FROM information_schema.global_status "
                    "WHERE variable_name = 'THREADS_CONNECTED'), @@max_connections, @@read_only, "
                    "@@innodb_flush_log_at_trx_commit, @@max_allowed_packet, VERSION()"
                )
            ).one()
        share = int(used) / int(limit)
        return {
            "connections": {
                "status": "degraded" if share >= CONNECTIONS_DEGRADED_SHARE else "ok",
                "detail": f"{used} of the server's {limit} connections in use",
                "in_use": int(used),
                "max": int(limit),
            },
            "read_only": {
                "status": "failing" if read_only else "ok",
                "detail": f"{version}: " + ("read-only (a replica?)" if read_only else "accepts writes"),
            },
            "durability": {
                "status": "ok" if int(flush) == 1 else "degraded",
                "detail": f"innodb_flush_log_at_trx_commit={flush}"
                + ("" if int(flush) == 1 else ": a commit may be lost on a crash of the server or power loss"),
            },
            # Informational: records are stored compressed, so the limit on a record's JSON
            # (max_payload_bytes) and the server's on a statement are not comparable.
            "max_allowed_packet": {
                "status": "ok",
                "detail": f"{int(packet) / 2**20:,.0f} MiB: a write whose compressed records exceed it is refused "
                "(PayloadTooLargeError)",
                "bytes": int(packet),
            },
        }


def _error_code(exc: BaseException | None) -> int | None:
    """The server's error number of a PyMySQL error (its first argument), if any."""
    args = getattr(exc, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


def _tls_context(mode: str | None, root_cert: str | None) -> ssl.SSLContext | None:
    """The TLS context of an ``sslmode`` (libpq's names): None keeps PyMySQL's default (no TLS)."""
    if mode in (None, "disable"):
        return None
    context = ssl.create_default_context(cafile=root_cert)
    if mode == "require":
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif mode == "verify-ca":
        context.check_hostname = False
    return context


def _engine(settings: Any, url: URL, *, statement_timeout: float | None = None, **options: Any) -> Engine:
    """An engine of ``url`` whose sessions are strict (``TRADITIONAL``), UTC, with lock waits
    bounded by ``connection_timeout``, and, given ``statement_timeout``, statements stopped after
    it (MariaDB ``max_statement_time``, MySQL ``max_execution_time``)."""
    try:
        from pymysql.constants import CLIENT
    except ImportError as exc:
        raise ConfigurationError("the mysql backend needs the PyMySQL driver: pip install 'fle-db[mysql]'") from exc
    query = {key: str(value) for key, value in url.query.items()}
    tls = _tls_context(query.get("sslmode"), query.get("sslrootcert"))
    timeout = max(1, round(settings.connection_timeout))
    connect_args: dict[str, Any] = {"connect_timeout": timeout, **({"ssl": tls} if tls is not None else {})}
    if statement_timeout is not None:
        # The client stops waiting a little after the server should have stopped the statement.
        connect_args["read_timeout"] = round(statement_timeout) + timeout
    bare = url.difference_update_query(["sslmode", "sslrootcert"])
    engine = create_engine(bare, connect_args=connect_args, **options)

    @event.listens_for(engine, "do_connect")
    def _without_found_rows(_dialect: Any, _record: Any, _cargs: Any, cparams: dict[str, Any]) -> None:
        # Row counts must count inserted rows only (see the module docstring).
        cparams["client_flag"] = cparams.get("client_flag", 0) & ~CLIENT.FOUND_ROWS

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        with dbapi_conn.cursor() as cursor:
            cursor.execute(
                "SET SESSION sql_mode = 'TRADITIONAL,NO_ENGINE_SUBSTITUTION', "
                "innodb_lock_wait_timeout = %s, time_zone = '+00:00'",
                (timeout,),
            )
            if statement_timeout is not None:
                if "MariaDB" in dbapi_conn.get_server_info():
                    cursor.execute("SET SESSION max_statement_time = %s", (statement_timeout,))
                else:
                    cursor.execute("SET SESSION max_execution_time = %s", (round(statement_timeout * 1000),))
            if settings.read_only:  # every later transaction, autocommitted reads included
                cursor.execute("SET SESSION TRANSACTION READ ONLY")

    return engine


class MySQLReadOnlyLogin(ReadOnlyLogin):
    """MySQL's SELECT-only login: sessions whose statements stop after ``query_timeout``."""

    dialect = "mysql"

    def build_engine(self, url: URL) -> Engine:
        return _engine(self.settings, url, statement_timeout=self.settings.query_timeout, poolclass=NullPool)

    def refused(self, exc: BaseException | None) -> bool:
        return _error_code(exc) in ER_LOGIN_REFUSED

    def excess_privileges(self, conn: Connection) -> list[str]:
        # information_schema lists the current login's own privileges (all logins' for a
        # privileged one, which is then refused anyway).
        return list(conn.execute(text(_PRIVILEGES)).scalars())


#: Access denied for the login, or to the database.
ER_LOGIN_REFUSED = {1044, 1045, 1698}
_PRIVILEGES = """
SELECT DISTINCT privilege_type FROM information_schema.user_privileges WHERE privilege_type <> 'USAGE'
UNION SELECT DISTINCT privilege_type FROM information_schema.schema_privileges
WHERE table_schema = DATABASE() AND privilege_type NOT IN ('SELECT', 'SHOW VIEW')
"""
