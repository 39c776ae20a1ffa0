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

from ..errors import (
    BackendUnavailableError,
    ConfigurationError,
    ConnectionTimeoutError,
    FleDBError,
    PayloadTooLargeError,
    StorageFullError,
    ValidationError,
)
from ..schema import blobs, metadata
from .base import ConnectionOptions
from .sql import SQLBackend

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
#: Bytes of a statement besides its largest body (SQL text, keys, other columns).
STATEMENT_OVERHEAD = 64 * 1024
#: The TLS modes of ``SKILLS_DB_SSLMODE`` / ``?sslmode=`` this backend understands.
SSL_MODES = ("disable", "require", "verify-ca", "verify-full")


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

    def __init__(self, settings: Any) -> None:
        super().__init__(settings)
        self._max_packet: int | None = None  # the server's max_allowed_packet, read on first need

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
        settings = self.settings
        try:
            from pymysql.constants import CLIENT
        except ImportError as exc:
            raise ConfigurationError("the mysql backend needs the PyMySQL driver: pip install 'fle-db[mysql]'") from exc
        url = settings.url
        query = {key: str(value) for key, value in url.query.items()}
        tls = _tls_context(query.get("sslmode"), query.get("sslrootcert"))
        timeout = max(1, round(settings.connection_timeout))
        engine = create_engine(
            url.difference_update_query(["sslmode", "sslrootcert"]),
            pool_size=settings.max_connections,
            max_overflow=0,
            pool_timeout=settings.connection_timeout,
            pool_pre_ping=True,
            pool_recycle=POOL_RECYCLE_S,
            isolation_level="READ COMMITTED",
            connect_args={"connect_timeout": timeout, **({"ssl": tls} if tls is not None else {})},
        )

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

        return engine

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
        """A ``READ ONLY`` transaction, always rolled back; PyMySQL sends one statement (no
        multi-statement flag). Without parameters the text is not %-formatted (as psycopg).

        The session is read-only too while the statement runs: DDL commits implicitly, which
        would end a read-only transaction and run ``DROP``/``CREATE`` in the next one; a
        read-only session refuses it (error 1792)."""
        import pymysql  # the optional driver, imported like the dialect does: only when used

        raw = conn.connection.dbapi_connection
        assert raw is not None
        cursor = raw.cursor()
        try:
            cursor.execute("SET SESSION TRANSACTION READ ONLY")
            cursor.execute("START TRANSACTION READ ONLY")
            try:
                cursor.execute(sql, params or None)
            except pymysql.err.ProgrammingError as exc:  # syntax, unknown names
                raise ValidationError(f"execute_query runs one SELECT: {exc}") from exc
            except pymysql.err.InternalError as exc:
                raise ValidationError(f"execute_query is read-only: {exc}") from exc
            except pymysql.err.OperationalError as exc:
                if exc.args and exc.args[0] == 1792:  # ER_CANT_EXECUTE_IN_READ_ONLY_TRANSACTION
                    raise ValidationError(f"execute_query is read-only: {exc}") from exc
                raise
            columns = [d[0] for d in cursor.description or ()]
            return [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]
        finally:
            cursor.close()
            raw.rollback()
            reset = raw.cursor()
            try:
                reset.execute("SET SESSION TRANSACTION READ WRITE")
            finally:
                reset.close()

    def _descending_nulls_last(self, column: ColumnElement[Any]) -> Any:
        """MySQL has no ``NULLS LAST``; it sorts NULL below every value, so ``DESC`` puts it last."""
        return column.desc()

    def _clock(self) -> ColumnElement[int]:
        """The server's clock, in microseconds: writers on many hosts share one time line for the
        commit log."""
        return cast(func.floor(func.unix_timestamp(func.now(6)) * 1_000_000), BigInteger)

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
