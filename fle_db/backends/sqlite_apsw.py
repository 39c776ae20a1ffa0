"""A DB-API 2.0 face on `apsw <https://rogerbinns.github.io/apsw/>`_, for SQLAlchemy's SQLite dialect.

Why: Python's stdlib ``sqlite3`` links the system SQLite (3.40.1 on Debian 12), which has the
WAL-reset corruption bug (fixed in 3.51.3); ``apsw`` bundles a current SQLite and is a thin, fast
layer over it, but it has no DB-API module, and no maintained SQLAlchemy dialect for it exists
(``sqlalchemy-apsw`` on GitHub: unreleased, unmaintained). SQLAlchemy's ``sqlite+pysqlite``
dialect accepts any module with the stdlib's interface (``create_engine("sqlite://", module=...)``),
so this module mirrors the part of ``sqlite3``'s interface that SQLAlchemy, Alembic and fle-db use:

* :func:`connect` (a path, ``:memory:`` or a ``file:`` URI with ``uri=True``; ``timeout`` sets the
  busy timeout), ``sqlite_version``/``sqlite_version_info`` (the *bundled* SQLite's),
  ``paramstyle = "qmark"``, :data:`Binary`, the authorizer constants fle-db uses.
* :class:`Connection` behaves as a ``sqlite3`` connection with ``isolation_level=None``: it never
  opens a transaction by itself (the caller emits ``BEGIN``/``BEGIN IMMEDIATE``); ``commit()`` and
  ``rollback()`` end the open transaction and do nothing outside one.
* :class:`Cursor`: ``execute`` runs exactly one statement (a second raises
  :class:`ProgrammingError` before it runs, as ``sqlite3`` does), ``description`` is known even when
  a query returns no row, ``rowcount`` is the rows changed by INSERT/UPDATE/DELETE/REPLACE and
  -1 otherwise, ``lastrowid`` the connection's last inserted rowid.
* apsw's exceptions become the DB-API classes ``sqlite3`` raises for the same SQLite result code
  (busy, locked, read-only, disk full, I/O -> :class:`OperationalError`; constraint ->
  :class:`IntegrityError`; corrupt, not a database, not authorized -> :class:`DatabaseError`;
  misuse, wrong bindings, a closed connection -> :class:`ProgrammingError`), with SQLite's own
  message unchanged ("database is locked", "database or disk is full", "FOREIGN KEY constraint
  failed", "attempt to write a readonly database", "not authorized", "interrupted"), so error
  handling written for ``sqlite3`` reads them alike.

``import apsw`` happens when this module is imported, which only the SQLite backend and the backup
code do: ``import fle_db`` loads no database driver.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import lru_cache
from itertools import islice
from typing import Any, NoReturn

import apsw

apilevel = "2.0"
#: Connections may be shared between threads one at a time (apsw serialises calls itself).
threadsafety = 1
paramstyle = "qmark"
#: The SQLite library apsw bundles (not the system's).
sqlite_version: str = apsw.sqlite_lib_version()
sqlite_version_info: tuple[int, ...] = tuple(int(part) for part in sqlite_version.split("."))
#: The DB-API binary type constructor (apsw binds any bytes-like object as a BLOB).
Binary = bytes

#: Authorizer actions and answers (SQLite's C constants, as ``sqlite3`` names them).
SQLITE_OK: int = apsw.SQLITE_OK
SQLITE_DENY: int = apsw.SQLITE_DENY
SQLITE_SELECT: int = apsw.SQLITE_SELECT
SQLITE_READ: int = apsw.SQLITE_READ
SQLITE_FUNCTION: int = apsw.SQLITE_FUNCTION
SQLITE_RECURSIVE: int = apsw.SQLITE_RECURSIVE

Parameters = Sequence[Any] | Mapping[str, Any]


class Warning(Exception):  # the DB-API name
    """DB-API warning (never raised by this module)."""


class Error(Exception):
    """Base of every error this module raises. ``sqlite_errorcode``/``sqlite_errorname``: SQLite's
    extended result code and its name, as ``sqlite3`` sets them (None for errors of the layer)."""

    sqlite_errorcode: int | None = None
    sqlite_errorname: str | None = None


class InterfaceError(Error):
    """Misuse of the interface."""


class DatabaseError(Error):
    """An error of the database: corrupt file, not a database, not authorized..."""


class DataError(DatabaseError):
    """A value too big for SQLite."""


class OperationalError(DatabaseError):
    """Busy, locked, read-only, disk full, I/O error, interrupted, SQL error..."""


class IntegrityError(DatabaseError):
    """A constraint failed (UNIQUE, FOREIGN KEY, NOT NULL, CHECK)."""


class InternalError(DatabaseError):
    """SQLite's internal error."""


class ProgrammingError(DatabaseError):
    """Wrong use: several statements in one execute, wrong bindings, a closed connection or cursor."""


class NotSupportedError(DatabaseError):
    """Not supported by SQLite."""


_CLASSES: dict[type[BaseException], type[Error]] = {
    apsw.ConstraintError: IntegrityError,
    apsw.MismatchError: IntegrityError,
    apsw.TooBigError: DataError,
    apsw.CorruptError: DatabaseError,
    apsw.NotADBError: DatabaseError,
    apsw.AuthError: DatabaseError,
    apsw.FormatError: DatabaseError,
    apsw.InternalError: InternalError,
    apsw.NotFoundError: InternalError,
    apsw.MisuseError: ProgrammingError,
    apsw.RangeError: ProgrammingError,
    apsw.BindingsError: ProgrammingError,
    apsw.ExecutionCompleteError: ProgrammingError,
    apsw.IncompleteExecutionError: ProgrammingError,
    apsw.CursorClosedError: ProgrammingError,
    apsw.ConnectionClosedError: ProgrammingError,
    apsw.ThreadingViolationError: ProgrammingError,
    apsw.ForkingViolationError: ProgrammingError,
}
#: Messages where apsw's differ from ``sqlite3``'s (SQLAlchemy detects a closed connection by it).
_MESSAGES: dict[type[BaseException], str] = {
    apsw.ConnectionClosedError: "Cannot operate on a closed database.",
    apsw.CursorClosedError: "Cannot operate on a closed cursor.",
}
_ONE_STATEMENT = "You can only execute one statement at a time."


def _raise(exc: BaseException) -> NoReturn:
    """Raise the DB-API error for an apsw error, chained to it."""
    kind = type(exc)
    error = next((cls for base, cls in _CLASSES.items() if issubclass(kind, base)), OperationalError)
    mapped = error(_MESSAGES.get(kind, str(exc)))
    code = getattr(exc, "extendedresult", None)
    if isinstance(code, int):
        mapped.sqlite_errorcode = code
        name = apsw.mapping_extended_result_codes.get(code) or apsw.mapping_result_codes.get(code & 0xFF)
        mapped.sqlite_errorname = str(name) if name is not None else None
    raise mapped from exc


@lru_cache(maxsize=1024)
def _changes_rows(sql: str) -> bool:
    """Whether a statement is INSERT/UPDATE/DELETE/REPLACE (``sqlite3``'s test for ``rowcount``)."""
    return sql.lstrip(" \t\r\n(").upper().startswith(("INSERT", "UPDATE", "DELETE", "REPLACE"))


class _Trace:
    """apsw's execution tracer of one cursor: it sees each statement prepared and not yet run,
    so it records the result columns (known before any row) and refuses a second statement.
    A separate object, so that apsw's cursor does not refer back to :class:`Cursor`."""

    __slots__ = ("description", "statements")

    def __init__(self) -> None:
        self.description: tuple[tuple[Any, ...], ...] | None = None
        self.statements = 0

    def __call__(self, cursor: apsw.Cursor, _sql: str, _bindings: Any) -> bool:
        self.statements += 1
        if self.statements > 1:
            return False  # apsw raises ExecTraceAbort; Cursor.execute reports it
        self.description = cursor.description or None
        return True


class Cursor:
    """A DB-API cursor over one apsw cursor."""

    __slots__ = ("_cursor", "_trace", "arraysize", "connection", "lastrowid", "rowcount")

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self._cursor = connection.apsw.cursor()
        self._trace = _Trace()
        self._cursor.exec_trace = self._trace
        self.arraysize = 1
        self.rowcount = -1
        self.lastrowid: int | None = None

    @property
    def description(self) -> tuple[tuple[Any, ...], ...] | None:
        """``(name, declared type, None x 5)`` per result column; None for a statement without rows."""
        return self._trace.description

    def execute(self, sql: str, parameters: Parameters = ()) -> Cursor:
        """Run one statement with qmark (``?``) or named (``:name``) parameters.

        Raises:
            ProgrammingError: ``sql`` holds a second statement (it is not run; the first is), or
                the parameters do not match.
        """
        trace = self._trace
        trace.statements, trace.description = 0, None
        conn = self.connection.apsw
        try:
            self._cursor.execute(sql, parameters)
        except apsw.ExecTraceAbort:
            raise ProgrammingError(_ONE_STATEMENT) from None
        except apsw.Error as exc:
            _raise(exc)
        except TypeError as exc:  # a value apsw cannot bind
            raise ProgrammingError(f"Error binding parameter: {exc}") from exc
        if trace.description is None and _changes_rows(sql):
            self.rowcount = conn.changes()
            self.lastrowid = conn.last_insert_rowid()
        else:
            self.rowcount = -1
        return self

    def executemany(self, sql: str, seq_of_parameters: Iterator[Parameters] | Sequence[Parameters]) -> Cursor:
        """Run one statement once per parameter set; ``rowcount`` is the rows changed by all."""
        self._trace.description = None
        conn = self.connection.apsw
        before = conn.total_changes()
        self._cursor.exec_trace = None  # no rows to describe, and no call per parameter set
        try:
            self._cursor.executemany(sql, seq_of_parameters)
        except apsw.Error as exc:
            _raise(exc)
        except TypeError as exc:
            raise ProgrammingError(f"Error binding parameter: {exc}") from exc
        finally:
            self._cursor.exec_trace = self._trace
        self.rowcount = conn.total_changes() - before if _changes_rows(sql) else -1
        return self

    def fetchone(self) -> tuple[Any, ...] | None:
        """The next row, or None after the last."""
        try:
            row: tuple[Any, ...] | None = self._cursor.fetchone()
        except apsw.ExecTraceAbort:
            raise ProgrammingError(_ONE_STATEMENT) from None
        except apsw.Error as exc:
            _raise(exc)
        return row

    def fetchmany(self, size: int | None = None) -> list[tuple[Any, ...]]:
        """Up to ``size`` (default ``arraysize``) further rows."""
        try:
            return list(islice(self._cursor, self.arraysize if size is None else size))
        except apsw.ExecTraceAbort:
            raise ProgrammingError(_ONE_STATEMENT) from None
        except apsw.Error as exc:
            _raise(exc)

    def fetchall(self) -> list[tuple[Any, ...]]:
        """Every remaining row."""
        try:
            return list(self._cursor)
        except apsw.ExecTraceAbort:
            raise ProgrammingError(_ONE_STATEMENT) from None
        except apsw.Error as exc:
            _raise(exc)

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        return iter(self.fetchall())

    def close(self) -> None:
        """Release the statement (idempotent; unread rows are discarded)."""
        self._cursor.close(True)

    def setinputsizes(self, sizes: Any) -> None:
        """DB-API no-op."""

    def setoutputsize(self, size: Any, column: Any = None) -> None:
        """DB-API no-op."""


class Connection:
    """A DB-API connection over one apsw connection, with ``sqlite3``'s ``isolation_level=None``
    transaction handling: nothing is begun implicitly."""

    def __init__(self, connection: apsw.Connection) -> None:
        #: The apsw connection (for what DB-API lacks: backups, hooks).
        self.apsw = connection
        #: Accepted for SQLAlchemy's AUTOCOMMIT switch; transactions are never begun implicitly
        #: whatever it says (fle-db always runs with None).
        self.isolation_level: str | None = None

    @property
    def in_transaction(self) -> bool:
        """Whether a transaction is open."""
        return not self.apsw.get_autocommit()

    @property
    def total_changes(self) -> int:
        """Rows changed since the connection was opened."""
        return int(self.apsw.total_changes())

    def cursor(self) -> Cursor:
        """A new cursor."""
        try:
            return Cursor(self)
        except apsw.Error as exc:
            _raise(exc)

    def execute(self, sql: str, parameters: Parameters = ()) -> Cursor:
        """A new cursor that ran ``sql`` (``sqlite3``'s shortcut)."""
        return self.cursor().execute(sql, parameters)

    def executemany(self, sql: str, seq_of_parameters: Sequence[Parameters]) -> Cursor:
        """A new cursor that ran ``sql`` once per parameter set."""
        return self.cursor().executemany(sql, seq_of_parameters)

    def commit(self) -> None:
        """Commit the open transaction, if any."""
        if not self.apsw.get_autocommit():
            self._run("COMMIT")

    def rollback(self) -> None:
        """Roll the open transaction back, if any."""
        if not self.apsw.get_autocommit():
            self._run("ROLLBACK")

    def close(self) -> None:
        """Close the connection (idempotent; an open transaction is rolled back by SQLite)."""
        self.apsw.close(True)

    def interrupt(self) -> None:
        """Stop the running statement (it raises ``OperationalError("interrupted")``)."""
        self.apsw.interrupt()

    def create_function(
        self, name: str, narg: int, func: Callable[..., Any] | None, *, deterministic: bool = False
    ) -> None:
        """Register a scalar SQL function (``sqlite3``'s signature)."""
        self.apsw.create_scalar_function(name, func, narg, deterministic=deterministic)

    def set_authorizer(self, authorizer: Callable[..., int] | None) -> None:
        """``authorizer(action, arg1, arg2, database, trigger)`` -> SQLITE_OK / SQLITE_DENY; None removes it."""
        self.apsw.authorizer = authorizer

    def set_progress_handler(self, handler: Callable[[], Any] | None, n: int) -> None:
        """Call ``handler`` every ``n`` SQLite VM instructions; a true result interrupts the statement."""
        self.apsw.set_progress_handler(handler, n)

    def _run(self, sql: str) -> None:
        try:
            self.apsw.execute(sql)
        except apsw.Error as exc:
            _raise(exc)


def connect(database: str, timeout: float = 5.0, *, uri: bool = False, check_same_thread: bool = False) -> Connection:
    """Open (creating it unless a ``file:`` URI says ``mode=ro``/``mode=rw``) a SQLite database.

    ``timeout``: seconds a statement waits for another connection's lock (the busy timeout).
    ``check_same_thread`` is accepted for ``sqlite3``'s signature and ignored: apsw lets any
    thread use a connection, one at a time.

    Raises:
        OperationalError: the file cannot be opened ("unable to open database file").
        DatabaseError: it is not a database.
    """
    flags = apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE | (apsw.SQLITE_OPEN_URI if uri else 0)
    try:
        connection = apsw.Connection(database, flags=flags)
        connection.set_busy_timeout(int(timeout * 1000))
    except apsw.Error as exc:
        _raise(exc)
    return Connection(connection)
