"""PostgreSQL backend (psycopg 3 through SQLAlchemy).

Connections are pooled (``pool_size = max_connections``, no overflow, ``pool_timeout =
connection_timeout``) and not pinged before use (a round trip per call): a connection the server
dropped fails its first statement, is discarded, and the call is retried (idempotent calls until
``retry_deadline``; the others too when their COMMIT was never sent, see ``_restartable``).
Commits are synchronous by default (``durability="full"``): a save that returned is durable;
``durability="fast"`` sets ``synchronous_commit=off`` for fle-db's sessions. Migrations
serialise on a transaction-scoped advisory lock; PostgreSQL DDL is transactional, so a failed
migration leaves nothing behind.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    Engine,
    Table,
    Text,
    cast,
    create_engine,
    event,
    extract,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.pool import NullPool

from ..errors import ConfigurationError, QueryTimeoutError, ValidationError
from ..schema import VERSIONED_TABLES, commit_log, metadata
from . import pgnotify
from .base import ConnectionOptions, TailListener
from .readonly import ReadOnlyLogin, capped_rows
from .sql import SQLBackend
from .sql.versioned import HEAD_SEQ, CurrentCommit

#: Tables with at least this many rows (by the planner's estimate) are counted approximately: an exact
#: count reads the whole heap, payloads included (steps keep bodies under ~2 KB inline).
EXACT_COUNT_LIMIT = 50_000
#: Share of the server's max_connections in use at which health is degraded.
CONNECTIONS_DEGRADED_SHARE = 0.9
#: Advisory lock key for migrations: the bytes "fle_db" as an integer.
MIGRATION_LOCK_KEY = int.from_bytes(b"fle_db", "big")
#: ``durability`` -> ``synchronous_commit``.
SYNCHRONOUS_COMMIT = {"full": "on", "fast": "off"}


def no_preparing_behind_a_pooler(dbapi_conn: Any, _record: Any) -> None:
    """Prepared statements where they are safe. psycopg prepares a statement once it ran
    ``prepare_threshold`` (5) times on a connection, saving its parse and plan on every later
    call. Behind a pooler in transaction mode (PgBouncer 1.18 keeps no prepared statements across
    transactions) one client connection's transactions land on different server connections,
    where a prepared name is missing or, worse, names another statement: there preparing is off.
    Detected once per new connection: a pooler hands out a backend key of its own, so the pid it
    announced is not the server's ``pg_backend_pid()``."""
    with dbapi_conn.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        (pid,) = cursor.fetchone()
    dbapi_conn.rollback()
    if pid != dbapi_conn.info.backend_pid:
        # psycopg's own connection (SQLAlchemy's asyncio adapter wraps it: driver_connection)
        getattr(dbapi_conn, "driver_connection", dbapi_conn).prepare_threshold = None


@compiles(CurrentCommit, "postgresql")
def _transaction_token(element: CurrentCommit, compiler: Any, **kw: Any) -> str:
    """The commit token on PostgreSQL: this transaction's id (``pg_current_xact_id()``, 64 bits,
    never reused by the cluster) plus ``log_head.seq``, a base that a copy into this database
    sets above every token it loaded. Writers share no row: nothing orders them but the data
    they touch (see :mod:`fle_db.backends.sql.versioned`)."""
    return str(compiler.process(HEAD_SEQ + cast(cast(func.pg_current_xact_id(), Text), BigInteger), **kw))


class PostgresBackend(SQLBackend):
    """PostgreSQL server, many writers."""

    name = "postgres"
    dialect_insert = staticmethod(pg_insert)
    # Reads in autocommit: no BEGIN/ROLLBACK round trips around a one-statement read.
    read_isolation = "AUTOCOMMIT"
    # A backup or copy reads every table in one snapshot.
    snapshot_isolation = "REPEATABLE READ"
    # Commit tokens are transaction ids: writers never queue on log_head.
    counted_commits = False

    def __init__(self, settings: Any) -> None:
        super().__init__(settings)
        self._notifier = pgnotify.Notifier(*self._own_session())

    @contextmanager
    def _write(self, explicit: bool = False) -> Iterator[Connection]:
        """A write transaction; once it committed, a wake-up for live tails, sent out of band
        (see :mod:`.pgnotify`)."""
        with super()._write(explicit) as conn:
            yield conn
        self._notifier.poke()

    def close(self) -> None:
        self._notifier.stop()
        super().close()

    def _writers_in_flight(self, conn: Connection) -> frozenset[str]:
        """The open transactions (their virtual transaction ids) that have written steps into
        this database: only such a transaction, if it had already logged its commit before the
        head was read, can still appear at or below it. A lock the writer holds until it ends
        (``RowExclusiveLock`` on ``steps``) names it; ``pg_locks`` is read here, after the head."""
        rows = conn.execute(
            text(
                "SELECT DISTINCT virtualtransaction FROM pg_locks WHERE locktype = 'relation' "
                "AND mode = 'RowExclusiveLock' AND relation = to_regclass('steps') "
                "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
                "AND pid <> pg_backend_pid()"
            )
        ).scalars()
        return frozenset(str(row) for row in rows)

    def tail_listener(self) -> TailListener | None:
        """``LISTEN`` on a session of its own; None behind a pooler in transaction mode."""
        with self._translate():  # a closed client refuses (ClientClosedError)
            pass
        return pgnotify.listener(*self._own_session())

    def _own_session(self) -> tuple[str, dict[str, Any]]:
        """libpq conninfo and psycopg ``connect`` arguments of a session outside the pool."""
        url = self.settings.url.set(drivername="postgresql")
        return url.render_as_string(hide_password=False), {
            "connect_timeout": max(1, round(self.settings.connection_timeout))
        }

    def _make_read_only_login(self) -> ReadOnlyLogin:
        return PostgresReadOnlyLogin(self.settings)

    @classmethod
    def url_from_options(cls, options: ConnectionOptions) -> URL:
        """``SKILLS_DB_HOST/PORT/NAME/USER/PASSWORD`` (port 5432), ``SKILLS_DB_SSLMODE`` and
        ``SKILLS_DB_SSLROOTCERT`` (libpq's ``sslmode``/``sslrootcert``)."""
        return options.server_url("postgresql+psycopg", 5432)

    @classmethod
    def normalize_url(cls, url: URL) -> URL:
        """``postgres://``, ``postgresql://`` and ``postgresql+psycopg://`` all use psycopg 3."""
        if not url.database:
            raise ConfigurationError("the postgresql:// URL names no database")
        return url.set(drivername="postgresql+psycopg")

    def _create_engine(self) -> Engine:
        engine = create_engine(self.settings.url, **self._engine_options())
        event.listen(engine, "connect", no_preparing_behind_a_pooler)
        return engine

    def _engine_options(self) -> dict[str, Any]:
        """``create_engine``'s keyword arguments (the asyncio client's engine takes the same)."""
        settings = self.settings
        connect_args: dict[str, Any] = {
            "connect_timeout": max(1, round(settings.connection_timeout)),
            "application_name": "fle-db",
        }
        # Startup ``options`` only where they change something: the default (durability="full",
        # writable) is the server's own setting, and PgBouncer (1.18, stock settings) refuses
        # any startup ``options``, so the default client works behind it unconfigured.
        options = (
            []
            if settings.durability == "full"
            else [f"-c synchronous_commit={SYNCHRONOUS_COMMIT[settings.durability]}"]
        )
        if settings.read_only:
            options.append("-c default_transaction_read_only=on")
        if options:
            connect_args["options"] = " ".join(options)
        return {
            "pool_size": settings.max_connections,
            "max_overflow": 0,
            "pool_timeout": settings.connection_timeout,
            "connect_args": connect_args,
        }

    def _after_load(self, conn: Connection) -> None:
        """The search-node id sequence continues after the highest id loaded."""
        conn.execute(
            text(
                "SELECT setval(pg_get_serial_sequence('search_nodes', 'id'), "
                "GREATEST((SELECT max(id) FROM search_nodes), 1), (SELECT max(id) FROM search_nodes) IS NOT NULL)"
            )
        )

    def _clock(self) -> ColumnElement[int]:
        """The server's clock: writers on many hosts share one time line for the commit log."""
        return cast(func.floor(extract("epoch", func.clock_timestamp()) * 1_000_000), BigInteger)

    @contextmanager
    def _pipeline(self, conn: Connection) -> Iterator[None]:
        """psycopg pipeline mode: the checkpoint's INSERTs travel in one round trip."""
        with conn.connection.dbapi_connection.pipeline():  # type: ignore[union-attr]
            yield

    # psycopg's pipeline: BEGIN, the INSERTs and COMMIT of a checkpoint in one round trip.
    commits_in_pipeline = True

    def _is_duplicate_key(self, exc: BaseException) -> bool:
        """SQLSTATE 23505, unique_violation."""
        return getattr(exc, "sqlstate", None) == "23505"

    def _is_disconnect(self, exc: BaseException | None) -> bool:
        """Connection refused, closed or terminated, server shutting down or starting up."""
        return isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError))

    def _missing_reference(self, exc: BaseException) -> str | None:
        """A foreign-key violation by an INSERT or UPDATE (SQLSTATE 23503; a DELETE of a
        referenced row says "update or delete"): PostgreSQL names the missing key."""
        diag = getattr(exc, "diag", None)
        if getattr(exc, "sqlstate", None) != "23503" or diag is None:
            return None
        if not str(diag.message_primary or "").startswith("insert or update"):
            return None
        return str(diag.message_detail or diag.constraint_name or "a foreign key's target")

    def _count(self, conn: Connection, table: Table) -> tuple[int, bool]:
        """Exact below :data:`EXACT_COUNT_LIMIT` rows; above, the planner's estimate
        (``pg_class.reltuples``), since an exact count would read the whole heap."""
        estimate = conn.execute(
            text("SELECT reltuples::bigint FROM pg_class WHERE oid = to_regclass(:t)"), {"t": table.name}
        ).scalar()
        if estimate is not None and estimate >= EXACT_COUNT_LIMIT:
            return int(estimate), False
        return super()._count(conn, table)

    def _table_sizes(self, conn: Connection) -> dict[str, int]:
        rows = conn.execute(
            text("SELECT t, pg_total_relation_size(to_regclass(t)) FROM unnest(CAST(:names AS text[])) AS t"),
            {"names": list(metadata.tables)},
        ).all()
        return {name: int(size or 0) for name, size in rows}

    def _maintenance(self, vacuum: bool, reindex: bool) -> list[tuple[str, str]]:
        tables = ", ".join(metadata.tables)  # fle-db's own table names, not user input
        actions = [("vacuum_analyze", f"VACUUM (ANALYZE) {tables}") if vacuum else ("analyze", f"ANALYZE {tables}")]
        if reindex:
            actions += [(f"reindex {t}", f"REINDEX TABLE CONCURRENTLY {t}") for t in metadata.tables]
        return actions

    def _structure_problems(self, conn: Connection) -> list[tuple[str, str, str]]:
        """``amcheck``'s ``bt_index_check`` on every index of fle-db's tables, where the
        extension is installed (``CREATE EXTENSION amcheck`` needs a privileged role). Foreign
        keys are enforced by the server, so they need no check."""
        if not conn.execute(text("SELECT count(*) FROM pg_extension WHERE extname = 'amcheck'")).scalar():
            return []
        problems = []
        indexes = conn.execute(
            text(
                "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                "JOIN pg_class t ON t.oid = i.indrelid WHERE t.relname = ANY(CAST(:names AS text[])) "
                "AND c.relam = (SELECT oid FROM pg_am WHERE amname = 'btree')"
            ),
            {"names": list(metadata.tables)},
        ).scalars()
        for index in list(indexes):
            try:  # reads run in autocommit: a failed check does not abort the next one
                conn.execute(text("SELECT bt_index_check(to_regclass(:i))"), {"i": index})
            except DBAPIError as exc:
                problems.append(("structure", f"index {index}", str(exc.orig).splitlines()[0]))
        return problems

    def _backend_checks(self) -> dict[str, dict[str, Any]]:
        with self._read() as conn:
            used, limit, standby = conn.execute(
                text(
                    "SELECT (SELECT count(*) FROM pg_stat_activity), current_setting('max_connections')::int,"
                    " pg_is_in_recovery()"
                )
            ).one()
            replicas = conn.execute(
                text("SELECT count(*), max(EXTRACT(EPOCH FROM replay_lag)) FROM pg_stat_replication")
            ).one()
        share = used / limit
        checks = {
            "connections": {
                "status": "degraded" if share >= CONNECTIONS_DEGRADED_SHARE else "ok",
                "detail": f"{used} of the server's {limit} connections in use",
                "in_use": used,
                "max": limit,
            },
            "replication": {
                "status": "failing" if standby else "ok",
                "detail": (
                    "this server is a read-only standby"
                    if standby
                    else f"{replicas[0]} replica(s)"
                    + (f", replay lag {replicas[1]:.1f} s" if replicas[1] is not None else "")
                ),
            },
        }
        return checks

    def _lock_out_writers(self, conn: Connection) -> None:
        """``EXCLUSIVE`` locks on the versioned tables and the commit log: writers (``ROW
        EXCLUSIVE``) wait until this transaction ends, readers do not."""
        names = ", ".join(str(t.name) for t in (*VERSIONED_TABLES, commit_log))  # fle-db's own tables
        conn.execute(text(f"LOCK TABLE {names} IN EXCLUSIVE MODE"))

    @contextmanager
    def _migration_lock(self, conn: Connection) -> Iterator[None]:
        """A transaction-scoped advisory lock: released by the commit or rollback."""
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        yield

    def _read_only_rows(
        self, conn: Connection, sql: str, params: Sequence[Any] | Mapping[str, Any]
    ) -> list[dict[str, Any]]:
        """A READ ONLY transaction, always rolled back, on the SELECT-only login's connection
        (whose ``statement_timeout`` is ``query_timeout``). The statement always goes through the
        extended protocol (``binary=True``; psycopg would send a query without parameters as a
        simple query, which runs ``SELECT 1; COMMIT; DELETE ...`` as three statements), so it is
        exactly one statement, and it must return rows."""
        raw = conn.connection.dbapi_connection
        assert isinstance(raw, psycopg.Connection)
        raw.autocommit = False
        try:
            with raw.cursor() as cursor:
                cursor.execute("SET TRANSACTION READ ONLY")
                try:
                    # No parameters: None, so that a literal % needs no escaping (as in psycopg).
                    cursor.execute(sql, params or None, prepare=False, binary=True)
                    return capped_rows(cursor, self.settings.query_max_rows)
                except psycopg.errors.QueryCanceled as exc:
                    raise QueryTimeoutError(
                        f"execute_query ran longer than query_timeout={self.settings.query_timeout:g} s and was stopped"
                    ) from exc
                except (psycopg.errors.ReadOnlySqlTransaction, psycopg.errors.InsufficientPrivilege) as exc:
                    raise ValidationError(f"execute_query is read-only: {exc}".strip()) from exc
                except (psycopg.ProgrammingError, psycopg.DataError) as exc:
                    # syntax, unknown names, several statements, no rows, a bad cast
                    raise ValidationError(f"execute_query runs one SELECT: {exc}".strip()) from exc
        finally:
            raw.rollback()


class PostgresReadOnlyLogin(ReadOnlyLogin):
    """PostgreSQL's SELECT-only login: sessions with ``statement_timeout = query_timeout`` and
    ``default_transaction_read_only``."""

    dialect = "postgresql"

    def build_engine(self, url: URL) -> Engine:
        settings = self.settings
        options = (
            f"-c statement_timeout={max(1, round(settings.query_timeout * 1000))} -c default_transaction_read_only=on"
        )
        return create_engine(
            url,
            poolclass=NullPool,
            connect_args={
                "connect_timeout": max(1, round(settings.connection_timeout)),
                "application_name": "fle-db read-only",
                "options": options,
            },
        )

    def refused(self, exc: BaseException | None) -> bool:
        return isinstance(exc, psycopg.OperationalError) and any(word in str(exc) for word in _REFUSALS)

    def excess_privileges(self, conn: Connection) -> list[str]:
        row = conn.execute(text(_PRIVILEGES)).one()
        return [name for name, held in zip(_PRIVILEGE_NAMES, row, strict=True) if held]


#: Messages of a refused login (libpq reports them without a SQLSTATE).
_REFUSALS = ("password authentication failed", "does not exist", "permission denied", "no pg_hba.conf entry")
_PRIVILEGE_NAMES = (
    "superuser",
    "CREATEROLE",
    "CREATEDB",
    "pg_read_server_files",
    "pg_write_server_files",
    "pg_execute_server_program",
    "writes to fle-db's tables",
    "CREATE in the schema",
)
_PRIVILEGES = """
SELECT r.rolsuper, r.rolcreaterole, r.rolcreatedb,
       pg_has_role(current_user, 'pg_read_server_files', 'MEMBER'),
       pg_has_role(current_user, 'pg_write_server_files', 'MEMBER'),
       pg_has_role(current_user, 'pg_execute_server_program', 'MEMBER'),
       coalesce(has_table_privilege(to_regclass('steps'), 'INSERT, UPDATE, DELETE, TRUNCATE'), false),
       has_schema_privilege(current_schema(), 'CREATE')
FROM pg_roles r WHERE r.rolname = current_user
"""
