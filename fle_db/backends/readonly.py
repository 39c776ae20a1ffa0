"""The SELECT-only login behind ``execute_query`` on a database server (PostgreSQL, MySQL).

A READ ONLY transaction does not stop a privileged role from writing server files (``COPY ...
TO PROGRAM``, ``lo_export``, ``SELECT ... INTO OUTFILE``), and ``SET ROLE`` can be undone by the
query itself; a SQL parser cannot see what a function does. So read-only SQL runs as a separate
login that holds nothing but SELECT on this database (no superuser, no
``pg_read_server_files``/``pg_write_server_files``/``pg_execute_server_program``, no MySQL
``FILE``/``SUPER``), over a connection opened for the call and closed after it (advisory locks
and ``SET`` changes die with it).

**Which login.** ``read_only_url`` (``SKILLS_DB_READONLY_URL``) when configured. Otherwise the
login migration ``0007_read_only_login`` creates where the migrating user may create logins: its
name is derived from the database name (:func:`login_name`, so one per database) and its password
from the *connecting* user's password and the database name (:func:`login_password`, an HMAC).
A random password stored in the database would be readable only by the owner, useless to the
clients; a derived one needs no storage and is exactly as secret as the password it is derived
from, so whoever may connect as the owner may run read-only queries, and nobody else. A client
connecting with another user or password (or a migration that could not create logins) must
configure ``read_only_url``: ``execute_query`` then raises ConfigurationError naming the GRANTs.
With no owner password (trust authentication) the derived password is guessable, as the owner's
login already is on such a server.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError

from ..errors import ConfigurationError, QueryLimitError

log = logging.getLogger("fle_db")

#: Names of derived logins: the prefix and 16 hex digits of the database name's SHA-256 (23
#: characters: within MySQL's 32 and PostgreSQL's 63).
LOGIN_PREFIX = "fle_ro_"
_PASSWORD_CONTEXT = b"fle-db read-only login\x00"
#: MySQL server errors meaning "the migrating user may not create logins or grant".
_MYSQL_DENIED = {1044, 1045, 1142, 1227, 1396, 1410}


def login_name(database: str) -> str:
    """The derived SELECT-only login of a database (deterministic)."""
    return LOGIN_PREFIX + hashlib.sha256(database.encode()).hexdigest()[:16]


def login_password(owner_password: str | None, database: str) -> str:
    """The derived login's password: HMAC-SHA256 of the database name, keyed by the connecting
    user's password (empty without one)."""
    key = (owner_password or "").encode()
    return hmac.new(key, _PASSWORD_CONTEXT + database.encode(), hashlib.sha256).hexdigest()


def derived_url(url: URL) -> URL:
    """``url`` with the derived login and password in place of the owner's."""
    database = url.database or ""
    return url.set(username=login_name(database), password=login_password(url.password, database))


def capped_rows(cursor: Any, max_rows: int) -> list[dict[str, Any]]:
    """The rows of an executed DB-API cursor as dicts, at most ``max_rows``.

    Raises:
        QueryLimitError: the query returns more rows (the result is refused, never truncated).
    """
    columns = [d[0] for d in cursor.description or ()]
    rows = cursor.fetchmany(max_rows + 1)
    if len(rows) > max_rows:
        raise QueryLimitError(
            f"execute_query returns more than query_max_rows={max_rows} rows; add a LIMIT or narrow the query"
        )
    return [dict(zip(columns, row, strict=True)) for row in rows]


def grant_statements(dialect: str, database: str, schema: str | None, password: str) -> list[str]:
    """The statements that create the derived SELECT-only login of ``database`` (``dialect``:
    SQLAlchemy's name) with ``password``: run by migration 0007, and named by the error when
    the login is missing."""
    name = login_name(database)
    if dialect == "postgresql":
        where = f'"{schema or "public"}"'
        return [
            f"CREATE ROLE \"{name}\" LOGIN PASSWORD '{password}' NOSUPERUSER NOCREATEDB NOCREATEROLE "
            "NOINHERIT NOREPLICATION NOBYPASSRLS",
            f'GRANT CONNECT ON DATABASE "{database}" TO "{name}"',
            f'GRANT USAGE ON SCHEMA {where} TO "{name}"',
            f'GRANT SELECT ON ALL TABLES IN SCHEMA {where} TO "{name}"',
            f'ALTER DEFAULT PRIVILEGES IN SCHEMA {where} GRANT SELECT ON TABLES TO "{name}"',
        ]
    return [
        f"CREATE USER '{name}'@'%' IDENTIFIED BY '{password}'",
        f"GRANT SELECT ON `{database}`.* TO '{name}'@'%'",
    ]


def missing_login(dialect: str, url: URL, schema: str | None, cause: str) -> ConfigurationError:
    """The error ``execute_query`` raises when its SELECT-only login cannot log in: it names the
    GRANTs to run (with a placeholder password) and the setting to configure."""
    statements = "; ".join(grant_statements(dialect, url.database or "", schema, "<password>"))
    return ConfigurationError(
        f"execute_query runs as a SELECT-only login, and {url.username!r} could not log in ({cause}). "
        f"As a user that may create logins, run: {statements}; then set read_only_url "
        "(SKILLS_DB_READONLY_URL) to that login's URL. Without read_only_url, fle-db uses the login "
        "migration 0007_read_only_login creates, with a password derived from yours"
    )


def create_login(conn: Connection) -> None:
    """Create (or reset the password of) the derived login of the connected database, if the
    connected user may; else log why and leave it (``execute_query`` then names the GRANTs)."""
    url = conn.engine.url
    database = url.database or ""
    dialect = conn.dialect.name
    password = login_password(url.password, database)
    if dialect == "postgresql":
        schema = conn.execute(text("SELECT current_schema()")).scalar()
        statements = grant_statements(dialect, database, schema, password)
        exists = conn.execute(text("SELECT 1 FROM pg_roles WHERE rolname = :n"), {"n": login_name(database)}).first()
        if exists is not None:  # a database re-created under the same name: refresh the password
            statements[0] = statements[0].replace("CREATE ROLE", "ALTER ROLE", 1)
        _run(conn, statements, savepoint=True)
    elif dialect in ("mysql", "mariadb"):
        name = login_name(database)
        statements = grant_statements(dialect, database, None, password)
        statements[0] = statements[0].replace("CREATE USER", "CREATE USER IF NOT EXISTS", 1)
        statements.insert(1, f"ALTER USER '{name}'@'%' IDENTIFIED BY '{password}'")
        _run(conn, statements, savepoint=False)


def drop_login(conn: Connection) -> None:
    """Drop the derived login of the connected database, if the connected user may."""
    name = login_name(conn.engine.url.database or "")
    if conn.dialect.name == "postgresql":
        if conn.execute(text("SELECT 1 FROM pg_roles WHERE rolname = :n"), {"n": name}).first() is not None:
            _run(conn, [f'DROP OWNED BY "{name}"', f'DROP ROLE "{name}"'], savepoint=True)
    elif conn.dialect.name in ("mysql", "mariadb"):
        _run(conn, [f"DROP USER IF EXISTS '{name}'@'%'"], savepoint=False)


def _run(conn: Connection, statements: Sequence[str], *, savepoint: bool) -> None:
    """Run the statements; a privilege error skips them (PostgreSQL: rolled back to a savepoint;
    MySQL has no transactional DDL, and each statement either ran or was refused)."""
    try:
        if savepoint:
            with conn.begin_nested():
                for statement in statements:
                    conn.execute(text(statement))
        else:
            for statement in statements:
                conn.execute(text(statement))
    except DBAPIError as exc:
        code = exc.orig.args[0] if exc.orig is not None and exc.orig.args else None
        sqlstate = getattr(exc.orig, "sqlstate", None)
        if sqlstate != "42501" and code not in _MYSQL_DENIED:  # insufficient_privilege
            raise
        log.warning(
            "the read-only login for execute_query was not created (%s lacks the privilege); "
            "configure read_only_url (SKILLS_DB_READONLY_URL)",
            conn.engine.url.username,
        )


class ReadOnlyLogin:
    """The SELECT-only login's connections: one engine without a pool (each call connects and
    disconnects: nothing a query changes in its session outlives it), built on first use.

    A backend subclasses it with the dialect's engine, refusal test and privilege check."""

    #: SQLAlchemy's name of the dialect (for the GRANTs named in errors).
    dialect = ""

    def __init__(self, settings: Any) -> None:
        self.settings = settings
        self.url: URL = settings.read_only_url or derived_url(settings.url)
        self._engine = self.build_engine(self.url)  # connects on first use only

    def build_engine(self, url: URL) -> Engine:
        """An engine of ``url`` with ``NullPool`` whose sessions stop statements after
        ``query_timeout``."""
        raise NotImplementedError

    def refused(self, exc: BaseException | None) -> bool:
        """Whether a connection error means the login was refused (missing, wrong password, no
        CONNECT), as opposed to an unreachable server."""
        raise NotImplementedError

    def excess_privileges(self, conn: Connection) -> list[str]:
        """What the login may do beyond reading this database (empty: nothing)."""
        raise NotImplementedError

    @contextmanager
    def connect(self) -> Iterator[Connection]:
        """A fresh connection as the login, closed (not pooled) on exit.

        Raises:
            ConfigurationError: the login is refused (naming the GRANTs to run), or holds more
                than SELECT (naming what it holds; a read-only query never runs as it).
        """
        try:
            conn = self._engine.connect()
        except DBAPIError as exc:
            if not self.refused(exc.orig):
                raise
            detail = str(exc.orig).strip().splitlines()[-1] if str(exc.orig).strip() else type(exc.orig).__name__
            raise missing_login(self.dialect, self.url, None, detail) from exc
        with conn:
            excess = self.excess_privileges(conn)
            conn.rollback()  # the check's transaction: the query opens its own
            if excess:
                raise ConfigurationError(
                    f"the read-only login {self.url.username!r} of execute_query may do more than read "
                    f"({', '.join(excess)}); give read_only_url (SKILLS_DB_READONLY_URL) a login with SELECT only"
                )
            yield conn

    def close(self) -> None:
        """Release the engine (idempotent)."""
        self._engine.dispose()
