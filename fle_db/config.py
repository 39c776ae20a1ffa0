"""Settings: constructor arguments first, then the environment, then defaults.

The environment variables are the spec's (FLE's), kept exactly; each maps to the
:class:`DatabaseClient` argument of the same meaning (see :class:`Options`):

==========================  =============================================  =======================
variable (argument)         meaning                                        default
==========================  =============================================  =======================
``FLE_DB_TYPE``             ``sqlite``, ``postgres``, ``mysql`` or a       ``sqlite``
(``db_type``)               registered third-party backend
``SQLITE_DB_FILE``          path of the SQLite file (its folder is         ``.fle/data.db``
(``sqlite_db_file``)        created)
``SKILLS_DB_HOST/PORT``     database server host and port                  required / the
(``host``, ``port``)                                                       backend's (5432, 3306)
``SKILLS_DB_NAME/USER``     database and user on the server                required
(``database``, ``user``)
``SKILLS_DB_PASSWORD``      the user's password                            empty (trust/peer)
(``password``)
``SKILLS_DB_SSLMODE``       TLS mode (``require``, ``verify-ca``,          the driver's
(``sslmode``)               ``verify-full``...)
``SKILLS_DB_SSLROOTCERT``   CA certificate file for ``verify-ca/-full``    none
(``sslrootcert``)
``SKILLS_DB_READONLY_URL``  SELECT-only login of ``execute_query``         derived (migration
(``read_only_url``)         (servers)                                      0007)
``FLE_DB_BACKUP_DIR``       folder of backups                              ``.fle/backups``
(``backup_dir``)
``FLE_DB_BACKUP_INTERVAL``  seconds between automated backups              off
(``backup_interval``)
``FLE_DB_BACKUP_KEEP``      automated backups keep this many               ``10``
(``backup_keep``)
``FLE_DB_PITR_RETENTION``   seconds point-in-time recovery reaches back    ``604800`` (7 days)
(``pitr_retention``)
``FLE_DB_RETENTION``        retention policy (``fle_db.retention``), e.g.  none
(``retention``)             ``thin states older than 30 days to every
                            10th; delete trajectories older than 180 days
                            except the best 5 per task``
``FLE_DB_QUERY_TIMEOUT``    seconds one ``execute_query`` may run          ``5``
(``query_timeout``)
``FLE_DB_QUERY_MAX_ROWS``   rows one ``execute_query`` may return          ``100000``
(``query_max_rows``)
==========================  =============================================  =======================

The other options (``max_connections``, ``connection_timeout``, ``auto_migrate``,
``max_payload_bytes``, ``durability``, ``cache_max_bytes``, ``slow_operation_ms``,
``retry_deadline``) are arguments only; :class:`Settings` documents each and its default.
Which variables a backend reads is the backend's business (``Backend.url_from_options``); the
registry (``fle_db.backends.registry``) decides which names and URL schemes exist. This is the
only module that reads ``os.environ``: backends get it as a mapping. Passwords never appear in
``repr``, logs or errors: :meth:`Settings.safe_url` renders the URL with the password masked.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypedDict

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from . import retention as retention_policy
from .backends import registry
from .backends.base import ConnectionOptions as ConnectionOptions  # re-exported: plug-ins import it from here
from .errors import ConfigurationError
from .ops.files import checked_path
from .redact import redact
from .retention import RetentionPolicy
from .validation import is_int, is_number

DEFAULT_BACKEND = "sqlite"
DEFAULT_MAX_CONNECTIONS = 10
DEFAULT_CONNECTION_TIMEOUT = 30.0
#: Largest encoded (uncompressed JSON) size of one record: step, state, output, feedback or value.
DEFAULT_MAX_PAYLOAD_BYTES = 64 * 1024 * 1024
#: Largest ``max_payload_bytes``: the schema's ``raw_size`` is an INTEGER (32-bit on the servers).
MAX_PAYLOAD_LIMIT = 2**31 - 1
DEFAULT_CACHE_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_SLOW_OPERATION_MS = 100.0
DEFAULT_RETRY_DEADLINE = 30.0
DEFAULT_BACKUP_DIR = ".fle/backups"
DEFAULT_BACKUP_KEEP = 10
#: Longest run of one read-only query (``execute_query``), in seconds.
DEFAULT_QUERY_TIMEOUT = 5.0
#: Most rows one read-only query may return (more is a QueryLimitError, never a truncation).
DEFAULT_QUERY_MAX_ROWS = 100_000
#: How far back point-in-time recovery reaches (seconds): 7 days.
DEFAULT_PITR_RETENTION = 7 * 86400.0

#: ``durability`` values: "full" (default) makes a save that returned survive power loss; "fast"
#: may lose the last commits on power loss or a server crash, never corrupts, and never loses them
#: on a client crash. Each backend maps them to its own settings.
DURABILITY_LEVELS = ("full", "fast")


class Options(TypedDict, total=False):
    """The keyword arguments of :class:`~fle_db.DatabaseClient` and :meth:`Settings.resolve`,
    typed for type checkers and IDEs. Their defaults and environment variables are
    :meth:`Settings.resolve`'s (the module docstring has the table); a test keeps both lists equal.
    """

    db_type: str | None
    sqlite_db_file: str | os.PathLike[str] | None
    host: str | None
    port: int | str | None
    database: str | None
    user: str | None
    password: str | None
    sslmode: str | None
    sslrootcert: str | None
    max_connections: int
    connection_timeout: float
    auto_migrate: bool
    max_payload_bytes: int
    durability: str
    cache_max_bytes: int
    slow_operation_ms: float
    retry_deadline: float
    backup_dir: str | os.PathLike[str] | None
    backup_interval: float | None
    backup_keep: int | None
    pitr_retention: float | None
    retention: str | None
    query_timeout: float | None
    query_max_rows: int | None
    read_only_url: str | None
    read_only: bool
    environ: Mapping[str, str] | None


@dataclass(frozen=True)
class Settings:
    """Resolved connection settings. Build with :meth:`resolve`; immutable afterwards."""

    #: The backend's registered name (``sqlite``, ``postgres``, ``mysql``, or a third party's).
    backend: str
    url: URL = field(repr=False)
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    connection_timeout: float = DEFAULT_CONNECTION_TIMEOUT
    auto_migrate: bool = True
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    #: "full" or "fast": see :data:`DURABILITY_LEVELS`.
    durability: str = "full"
    #: Bytes of decoded, immutable game-state parts kept in memory (per client).
    cache_max_bytes: int = DEFAULT_CACHE_MAX_BYTES
    #: How long idempotent calls retry, with backoff, while the connection is lost (0: never).
    retry_deadline: float = DEFAULT_RETRY_DEADLINE
    #: Operations at least this slow are listed by ``get_performance_metrics()``.
    slow_operation_ms: float = DEFAULT_SLOW_OPERATION_MS
    #: Folder of backups (created owner-only on first use).
    backup_dir: Path = Path(DEFAULT_BACKUP_DIR)
    #: Seconds between automated backups while a client is open; None: no automated backups.
    backup_interval: float | None = None
    #: Automated backups keep this many newest backups.
    backup_keep: int = DEFAULT_BACKUP_KEEP
    #: Seconds of history kept for point-in-time recovery (pruned by optimize, cleanup and
    #: automated backups).
    pitr_retention: float = DEFAULT_PITR_RETENTION
    #: The retention policy (thin and delete old runs), applied with each automated backup and by
    #: ``fle-db retention apply``; None: none.
    retention: RetentionPolicy | None = None
    #: Seconds one read-only query (``execute_query``) may run before it is stopped.
    query_timeout: float = DEFAULT_QUERY_TIMEOUT
    #: Rows one read-only query may return; more raises QueryLimitError.
    query_max_rows: int = DEFAULT_QUERY_MAX_ROWS
    #: The SELECT-only login ``execute_query`` uses on a database server; None: the login
    #: migration ``0007_read_only_login`` derives from the database URL (see ``backends.readonly``).
    read_only_url: URL | None = field(default=None, repr=False)
    #: Open the database read-only: every connection refuses writes (SQLite ``mode=ro`` and
    #: ``query_only``; PostgreSQL and MySQL read-only transactions); no migration, no backups.
    read_only: bool = False

    def __repr__(self) -> str:
        return (
            f"Settings(backend={self.backend!r}, url={self.safe_url()!r}, "
            f"max_connections={self.max_connections}, connection_timeout={self.connection_timeout})"
        )

    def safe_url(self) -> str:
        """The database URL with every password (user-info, ``?password=``...) replaced by ``***``."""
        return redact(self.url.render_as_string(hide_password=True))

    @property
    def location(self) -> str:
        """Where the database is, for people: a file's absolute path, or the URL without password."""
        return redact(registry.backend_class(self.backend).location(self.url))

    def database_exists(self) -> bool:
        """Whether the database exists already, checked without creating or connecting to it
        (file backends look for the file; servers are assumed to hold their database)."""
        return registry.backend_class(self.backend).database_exists(self.url)

    @classmethod
    def resolve(
        cls,
        url: str | None = None,
        *,
        db_type: str | None = None,
        sqlite_db_file: str | os.PathLike[str] | None = None,
        host: str | None = None,
        port: int | str | None = None,
        database: str | None = None,
        user: str | None = None,
        password: str | None = None,
        sslmode: str | None = None,
        sslrootcert: str | None = None,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        connection_timeout: float = DEFAULT_CONNECTION_TIMEOUT,
        auto_migrate: bool = True,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        durability: str = "full",
        cache_max_bytes: int = DEFAULT_CACHE_MAX_BYTES,
        slow_operation_ms: float = DEFAULT_SLOW_OPERATION_MS,
        retry_deadline: float = DEFAULT_RETRY_DEADLINE,
        backup_dir: str | os.PathLike[str] | None = None,
        backup_interval: float | None = None,
        backup_keep: int | None = None,
        pitr_retention: float | None = None,
        retention: str | None = None,
        query_timeout: float | None = None,
        query_max_rows: int | None = None,
        read_only_url: str | None = None,
        read_only: bool = False,
        environ: Mapping[str, str] | None = None,
    ) -> Settings:
        """Resolve settings from arguments, then ``environ`` (default ``os.environ``), then defaults.

        Raises:
            ConfigurationError: a value is missing or invalid; the message names the argument or
                environment variable, never the password.
        """
        env = os.environ if environ is None else environ
        texts = {"url": url, "db_type": db_type, "host": host, "database": database, "user": user}
        texts |= {"password": password, "sslmode": sslmode, "sslrootcert": sslrootcert}
        for name, value in texts.items():
            if value is not None and (not isinstance(value, str) or "\x00" in value):
                # the value is not shown: it may be a password
                raise ConfigurationError(f"{name} must be a string without NUL characters, got {type(value).__name__}")
        if port is not None and (isinstance(port, bool) or not isinstance(port, (int, str))):
            raise ConfigurationError(f"port must be a port number, got {type(port).__name__}")
        for name, path in (("sqlite_db_file", sqlite_db_file), ("backup_dir", backup_dir)):
            if path is not None:
                checked_path(path, name, ConfigurationError)
        if url is not None:
            backend, sa_url = _from_url(url)
        else:
            backend = _backend_name(db_type, env)
            arguments = {
                "sqlite_db_file": sqlite_db_file,
                "host": host,
                "port": port,
                "database": database,
                "user": user,
                "password": password,
                "sslmode": sslmode,
                "sslrootcert": sslrootcert,
            }
            sa_url = registry.backend_class(backend).url_from_options(ConnectionOptions(backend, arguments, env))
        if not is_int(max_connections) or max_connections < 1:
            raise ConfigurationError(f"max_connections must be an integer >= 1, got {max_connections!r}")
        if not is_number(connection_timeout) or not 0 < connection_timeout < 86400:
            raise ConfigurationError(
                f"connection_timeout must be a number of seconds in (0, 86400), got {connection_timeout!r}"
            )
        if not is_int(max_payload_bytes) or not 1024 <= max_payload_bytes <= MAX_PAYLOAD_LIMIT:
            raise ConfigurationError(
                f"max_payload_bytes must be an integer in [1024, {MAX_PAYLOAD_LIMIT}] (a record's size is stored "
                f"in a 32-bit INTEGER on PostgreSQL and MySQL), got {max_payload_bytes!r}"
            )
        if not is_int(cache_max_bytes) or cache_max_bytes < 0:
            raise ConfigurationError(f"cache_max_bytes must be an integer >= 0, got {cache_max_bytes!r}")
        if not is_number(slow_operation_ms) or slow_operation_ms < 0:
            raise ConfigurationError(f"slow_operation_ms must be a number >= 0, got {slow_operation_ms!r}")
        if not is_number(retry_deadline) or retry_deadline < 0:
            raise ConfigurationError(f"retry_deadline must be a number of seconds >= 0, got {retry_deadline!r}")
        if not isinstance(read_only, bool):
            raise ConfigurationError(f"read_only must be True or False, got {read_only!r}")
        if durability not in DURABILITY_LEVELS:
            raise ConfigurationError(f"durability must be one of {sorted(DURABILITY_LEVELS)}, got {durability!r}")
        interval = _number(backup_interval, env, "backup_interval", "FLE_DB_BACKUP_INTERVAL", None)
        keep = _number(backup_keep, env, "backup_keep", "FLE_DB_BACKUP_KEEP", DEFAULT_BACKUP_KEEP)
        if keep is None or keep < 1 or keep != int(keep):
            raise ConfigurationError(f"backup_keep (FLE_DB_BACKUP_KEEP) must be an integer >= 1, got {keep!r}")
        retention_seconds = _number(
            pitr_retention, env, "pitr_retention", "FLE_DB_PITR_RETENTION", DEFAULT_PITR_RETENTION
        )
        timeout = _number(query_timeout, env, "query_timeout", "FLE_DB_QUERY_TIMEOUT", DEFAULT_QUERY_TIMEOUT)
        if not timeout or timeout > 86400:
            raise ConfigurationError(
                f"query_timeout (FLE_DB_QUERY_TIMEOUT) must be a number of seconds in (0, 86400], got {timeout!r}"
            )
        max_rows = _number(query_max_rows, env, "query_max_rows", "FLE_DB_QUERY_MAX_ROWS", DEFAULT_QUERY_MAX_ROWS)
        if max_rows is None or max_rows < 1 or max_rows != int(max_rows):
            raise ConfigurationError(
                f"query_max_rows (FLE_DB_QUERY_MAX_ROWS) must be an integer >= 1, got {max_rows!r}"
            )
        policy_text = retention if retention is not None else env.get("FLE_DB_RETENTION") or None
        source = "retention" if retention is not None else "FLE_DB_RETENTION"
        policy = retention_policy.parse(policy_text, source) if policy_text is not None else None
        read_only_login = _read_only_url(read_only_url, env, backend)
        folder = backup_dir if backup_dir is not None else env.get("FLE_DB_BACKUP_DIR") or DEFAULT_BACKUP_DIR
        return cls(
            backend=backend,
            url=sa_url,
            max_connections=max_connections,
            connection_timeout=float(connection_timeout),
            auto_migrate=bool(auto_migrate),
            max_payload_bytes=max_payload_bytes,
            durability=durability,
            cache_max_bytes=cache_max_bytes,
            slow_operation_ms=float(slow_operation_ms),
            retry_deadline=float(retry_deadline),
            backup_dir=Path(folder).expanduser(),
            backup_interval=interval,
            backup_keep=int(keep),
            pitr_retention=float(retention_seconds or 0.0),
            retention=policy,
            query_timeout=float(timeout),
            query_max_rows=int(max_rows),
            read_only_url=read_only_login,
            read_only=read_only,
        )

    def with_url(self, url: str) -> Settings:
        """A copy of these settings pointing at another database URL (without ``read_only_url``,
        which names a login of this database)."""
        backend, sa_url = _from_url(url)
        return replace(self, backend=backend, url=sa_url, read_only_url=None)


def _read_only_url(value: str | None, env: Mapping[str, str], backend: str) -> URL | None:
    """The configured SELECT-only login (argument, else ``SKILLS_DB_READONLY_URL``): a URL of the
    same backend as the database's."""
    variable = "SKILLS_DB_READONLY_URL"
    source, raw = ("read_only_url", value) if value is not None else (variable, env.get(variable))
    if raw is None or raw == "":
        return None
    if not isinstance(raw, str):
        raise ConfigurationError(f"{source} must be a database URL string, got {type(raw).__name__}")
    other, url = _from_url(raw)
    if other != backend:
        raise ConfigurationError(f"{source} must be a {backend} URL like the database's, got a {other} URL")
    return url


def database_url(target: str | os.PathLike[str]) -> str:
    """The one way a user's target becomes a database URL: a string containing ``://`` is a URL
    as given; anything else is the path of a SQLite file, made absolute and escaped (``?``,
    ``%``, ``#``... reach the file system unchanged; pasting a path into ``sqlite:///`` would
    turn ``?x=1`` into URL parameters and ``%41`` into ``A``).

    Raises:
        ConfigurationError: the path is not a string or path, or contains a NUL byte.
    """
    if isinstance(target, str) and "://" in target:
        return target
    path = os.fspath(checked_path(target, "a database target (URL or file path)", ConfigurationError))
    return URL.create("sqlite", database=os.path.abspath(os.path.expanduser(path))).render_as_string()


def _number(value: Any, env: Mapping[str, str], name: str, var: str, default: float | None) -> float | None:
    """A number of seconds (or a count) >= 0 from the argument, else the variable, else ``default``."""
    source, raw = (name, value) if value is not None else (var, env.get(var))
    if raw is None or raw == "":
        return default
    try:
        number = float(raw) if not isinstance(raw, bool) else float("nan")
    except (TypeError, ValueError):
        number = float("nan")
    if not 0 <= number < float("inf"):
        raise ConfigurationError(f"{source} must be a number >= 0, got {raw!r}")
    return number


def _backend_name(db_type: str | None, env: Mapping[str, str]) -> str:
    source = "db_type" if db_type is not None else "FLE_DB_TYPE"
    raw = db_type if db_type is not None else env.get("FLE_DB_TYPE", DEFAULT_BACKEND)
    name = registry.canonical_name(raw)
    if name is None:
        raise registry.unknown_backend(f"{source}={raw!r}")
    return name


def _from_url(url: str) -> tuple[str, URL]:
    try:
        parsed = make_url(url)
    except ArgumentError:
        # The message of a URL parse error may echo the URL; keep the password out of it.
        raise ConfigurationError(
            "the database URL could not be parsed (expected scheme://user:password@host:port/database, "
            "or sqlite:///path)"
        ) from None
    name = registry.canonical_name(parsed.drivername)
    if name is None:
        raise registry.unknown_backend(f"the URL scheme {parsed.drivername!r}")
    return name, registry.backend_class(name).normalize_url(parsed)
