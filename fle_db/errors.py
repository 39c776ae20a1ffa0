"""The one error hierarchy of fle-db.

Every error the library raises on purpose derives from :class:`FleDBError`; driver errors are
translated at the backend boundary and chained (``raise ... from exc``), never swallowed.
"""

from __future__ import annotations


class FleDBError(Exception):
    """Base of every fle-db error."""


class ConfigurationError(FleDBError, ValueError):
    """A setting is missing or invalid. The message names the setting (argument or variable)."""


class ValidationError(FleDBError, ValueError):
    """A record was rejected before anything was written (wrong type, NaN, NUL byte, too large...)."""


class PayloadTooLargeError(ValidationError):
    """An encoded record exceeds the configured ``max_payload_bytes``."""


class QueryLimitError(ValidationError):
    """A read-only query (``execute_query``) would return more than ``query_max_rows`` rows; no
    rows are returned (never a silently truncated result). Narrow the query or add a LIMIT."""


class QueryTimeoutError(QueryLimitError, TimeoutError):
    """A read-only query ran longer than ``query_timeout`` seconds and was stopped by the server
    (SQLite: by a progress handler); nothing changed."""


class NotFoundError(FleDBError, LookupError):
    """The trajectory, step or game state asked for does not exist."""


class MissingReferenceError(NotFoundError):
    """A write names a row that does not exist (a fork's parent step, a step's parent): the
    database refused the reference. Nothing of the write was stored; retrying cannot help until
    the referenced row exists. ``reference`` names what is missing when the backend knows it."""

    def __init__(self, message: str, reference: str | None = None) -> None:
        super().__init__(message)
        self.reference = reference


class StateThinnedError(NotFoundError):
    """The game state asked for was dropped by :meth:`~fle_db.DatabaseClient.thin` (the step's
    action, output, feedback and reward are kept). Saving or importing the original checkpoint
    again restores it; ``restore_to`` an instant before the thinning still has it."""


class ConflictError(FleDBError):
    """A different record already exists under the same key; nothing was changed."""


class DependencyError(ConflictError):
    """The operation would break lineage (e.g. deleting a trajectory a fork depends on)."""


class SchemaVersionError(FleDBError):
    """The database schema is newer than this library, or unknown to it."""


class BackendUnavailableError(FleDBError, ConnectionError):
    """The database cannot be reached or opened. ``retryable`` is True for a lost connection
    (fle-db has already retried the call until ``retry_deadline`` when you see it, unless
    ``commit_unknown``). ``commit_unknown`` is True when the connection was lost while the write's
    COMMIT was in flight: it may or may not be stored (a write that is not idempotent, such as
    ``append_step``, is then not retried)."""

    retryable: bool = False
    commit_unknown: bool = False


class ConnectionTimeoutError(BackendUnavailableError, TimeoutError):
    """No pooled connection became free within ``connection_timeout`` seconds."""


class StorageFullError(BackendUnavailableError):
    """The disk holding the database is full: nothing of the failed write was stored. Writing
    works again once space is freed."""


class UnsupportedError(FleDBError):
    """The backend in use does not implement the optional role a call needs (``role``: e.g.
    ``"SearchStore"``); nothing was done. See :mod:`fle_db.backends.base` for the roles."""

    def __init__(self, message: str, role: str) -> None:
        super().__init__(message)
        self.role = role


class ReadOnlyError(FleDBError, PermissionError):
    """A write was attempted through a client opened with ``read_only=True``; nothing was written."""


class ClientClosedError(FleDBError):
    """The client (or backend) was closed: it never reopens behind the caller's back. Open a
    new ``DatabaseClient``."""


class DataIntegrityError(FleDBError):
    """Stored data failed a checksum or could not be decoded: the store never returns wrong data."""


class WouldWaitError(FleDBError):
    """Internal, never raised to a caller: a call made under a backend's ``without_lock_waits()``
    would have waited for another connection's lock, so it stopped before writing anything. The
    asyncio client then runs the call again on its worker thread (see :mod:`fle_db.aio._runner`);
    not exported, and not counted in the performance metrics."""


__all__ = [
    "BackendUnavailableError",
    "ClientClosedError",
    "ConfigurationError",
    "ConflictError",
    "ConnectionTimeoutError",
    "DataIntegrityError",
    "DependencyError",
    "FleDBError",
    "MissingReferenceError",
    "NotFoundError",
    "PayloadTooLargeError",
    "QueryLimitError",
    "QueryTimeoutError",
    "ReadOnlyError",
    "SchemaVersionError",
    "StateThinnedError",
    "StorageFullError",
    "UnsupportedError",
    "ValidationError",
]
