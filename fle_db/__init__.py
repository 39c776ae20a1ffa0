"""fle-db: the checkpoint database for AI-agent trajectories (SQLite, PostgreSQL, MySQL or a custom backend)."""

from ._version import __version__
from .aio import AsyncDatabaseClient
from .client import DatabaseClient
from .config import Settings
from .errors import (
    BackendUnavailableError,
    ClientClosedError,
    ConfigurationError,
    ConflictError,
    ConnectionTimeoutError,
    DataIntegrityError,
    DependencyError,
    FleDBError,
    MissingReferenceError,
    NotFoundError,
    PayloadTooLargeError,
    QueryLimitError,
    QueryTimeoutError,
    ReadOnlyError,
    SchemaVersionError,
    StateThinnedError,
    StorageFullError,
    UnsupportedError,
    ValidationError,
)
from .models import AgentOutput, EnvironmentFeedback, MetadataEntry, Step, Trajectory

__all__ = [
    "AgentOutput",
    "AsyncDatabaseClient",
    "BackendUnavailableError",
    "ClientClosedError",
    "ConfigurationError",
    "ConflictError",
    "ConnectionTimeoutError",
    "DataIntegrityError",
    "DatabaseClient",
    "DependencyError",
    "EnvironmentFeedback",
    "FleDBError",
    "MetadataEntry",
    "MissingReferenceError",
    "NotFoundError",
    "PayloadTooLargeError",
    "QueryLimitError",
    "QueryTimeoutError",
    "ReadOnlyError",
    "SchemaVersionError",
    "Settings",
    "StateThinnedError",
    "Step",
    "StorageFullError",
    "Trajectory",
    "UnsupportedError",
    "ValidationError",
    "__version__",
]
