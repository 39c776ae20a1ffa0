"""Settings: constructor arguments first, then the environment, then defaults.

The environment variables are the spec's, kept exactly:

=====================  ===========================================  ==================
variable               meaning                                      default
=====================  ===========================================  ==================
``FLE_DB_TYPE``        ``sqlite`` or ``postgres``                   ``sqlite``
``SQLITE_DB_FILE``     path of the SQLite file (dir is created)     ``.fle/data.db``
``SKILLS_DB_HOST``     PostgreSQL host                              required
``SKILLS_DB_PORT``     PostgreSQL port                              ``5432``
``SKILLS_DB_NAME``     PostgreSQL database                          required
``SKILLS_DB_USER``     PostgreSQL user                              required
``SKILLS_DB_PASSWORD`` PostgreSQL password                          empty (trust/peer)
``SKILLS_DB_SSLMODE``  libpq ``sslmode`` (``require``, ``verify-full``) libpq default
``SKILLS_DB_SSLROOTCERT`` CA certificate file for ``verify-ca/-full``  none
``FLE_DB_BACKUP_DIR``  folder of backups                           ``.fle/backups``
``FLE_DB_BACKUP_INTERVAL`` seconds between automated backups        off
``FLE_DB_BACKUP_KEEP`` automated backups keep this many             ``10``
``FLE_DB_PITR_RETENTION`` seconds point-in-time recovery reaches back ``604800`` (7 days)
=====================  ===========================================  ==================

This is the only module that reads ``os.environ``. Passwords never appear in ``repr``, logs or
errors: :meth:`Settings.safe_url` renders the URL with the password masked.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from .errors import ConfigurationError

BackendName = Literal["sqlite", "postgres"]

DEFAULT_SQLITE_FILE = ".fle/data.db"
DEFAULT_MAX_CONNECTIONS = 10
DEFAULT_CONNECTION_TIMEOUT = 30.0
#: Largest encoded (uncompressed JSON) size of one record: step, state, output, feedback or value.
DEFAULT_MAX_PAYLOAD_BYTES = 64 * 1024 * 1024
DEFAULT_CACHE_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_SLOW_OPERATION_MS = 100.0
DEFAULT_RETRY_DEADLINE = 30.0
DEFAULT_BACKUP_DIR = ".fle/backups"
DEFAULT_BACKUP_KEEP = 10
#: How far back point-in-time recovery reaches (seconds): 7 days.
DEFAULT_PITR_RETENTION = 7 * 86400.0

_BACKEND_ALIASES: dict[str, BackendName] = {
    "sqlite": "sqlite",
    "sqlite3": "sqlite",
    "postgres": "postgres",
    "postgresql": "postgres",
    "psql": "postgres",
}
#: ``durability`` values: "full" (default) makes a save that returned survive power loss
#: (SQLite ``synchronous=FULL`` in WAL, PostgreSQL synchronous commit); "fast" may lose the last
#: commits on power loss or a server crash, never corrupts, and never loses them on a client crash.
DURABILITY = {"full": ("FULL", "on"), "fast": ("NORMAL", "off")}


@dataclass(frozen=True)
class Settings:
    """Resolved connection settings. Build with :meth:`resolve`; immutable afterwards."""

    backend: BackendName
    url: URL = field(repr=False)
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    connection_timeout: float = DEFAULT_CONNECTION_TIMEOUT
    auto_migrate: bool = True
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    #: "full" or "fast": see :data:`DURABILITY`.
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

    def __repr__(self) -> str:
        return (
            f"Settings(backend={self.backend!r}, url={self.safe_url()!r}, "
            f"max_connections={self.max_connections}, connection_timeout={self.connection_timeout})"
        )

    def safe_url(self) -> str:
        """The database URL with any password replaced by ``***``."""
        return self.url.render_as_string(hide_password=True)

    @property
    def sqlite_path(self) -> str | None:
        """The SQLite file path, or None for an in-memory database or another backend."""
        if self.backend != "sqlite" or self.url.database in (None, "", ":memory:"):
            return None
        return self.url.database

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
        environ: Mapping[str, str] | None = None,
    ) -> Settings:
        """Resolve settings from arguments, then ``environ`` (default ``os.environ``), then defaults.

        Raises:
            ConfigurationError: a value is missing or invalid; the message names the argument or
                environment variable, never the password.
        """
        env = os.environ if environ is None else environ
        if url is not None:
            backend, sa_url = _from_url(url)
        else:
            backend = _backend_name(db_type, env)
            if backend == "sqlite":
                path = sqlite_db_file if sqlite_db_file is not None else env.get("SQLITE_DB_FILE")
                sa_url = _sqlite_url(str(path) if path else DEFAULT_SQLITE_FILE, "SQLITE_DB_FILE")
            else:
                sa_url = _postgres_url(env, host, port, database, user, password, sslmode, sslrootcert)
        if isinstance(max_connections, bool) or not isinstance(max_connections, int) or max_connections < 1:
            raise ConfigurationError(f"max_connections must be an integer >= 1, got {max_connections!r}")
        if (
            isinstance(connection_timeout, bool)
            or not isinstance(connection_timeout, (int, float))
            or not 0 < connection_timeout < 86400
        ):
            raise ConfigurationError(
                f"connection_timeout must be a number of seconds in (0, 86400), got {connection_timeout!r}"
            )
        if isinstance(max_payload_bytes, bool) or not isinstance(max_payload_bytes, int) or max_payload_bytes < 1024:
            raise ConfigurationError(f"max_payload_bytes must be an integer >= 1024, got {max_payload_bytes!r}")
        if isinstance(cache_max_bytes, bool) or not isinstance(cache_max_bytes, int) or cache_max_bytes < 0:
            raise ConfigurationError(f"cache_max_bytes must be an integer >= 0, got {cache_max_bytes!r}")
        if (
            isinstance(slow_operation_ms, bool)
            or not isinstance(slow_operation_ms, (int, float))
            or slow_operation_ms < 0
        ):
            raise ConfigurationError(f"slow_operation_ms must be a number >= 0, got {slow_operation_ms!r}")
        if isinstance(retry_deadline, bool) or not isinstance(retry_deadline, (int, float)) or retry_deadline < 0:
            raise ConfigurationError(f"retry_deadline must be a number of seconds >= 0, got {retry_deadline!r}")
        if durability not in DURABILITY:
            raise ConfigurationError(f"durability must be one of {sorted(DURABILITY)}, got {durability!r}")
        interval = _number(backup_interval, env, "backup_interval", "FLE_DB_BACKUP_INTERVAL", None)
        keep = _number(backup_keep, env, "backup_keep", "FLE_DB_BACKUP_KEEP", DEFAULT_BACKUP_KEEP)
        if keep is None or keep < 1 or keep != int(keep):
            raise ConfigurationError(f"backup_keep (FLE_DB_BACKUP_KEEP) must be an integer >= 1, got {keep!r}")
        retention = _number(pitr_retention, env, "pitr_retention", "FLE_DB_PITR_RETENTION", DEFAULT_PITR_RETENTION)
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
            pitr_retention=float(retention or 0.0),
        )

    def with_url(self, url: str) -> Settings:
        """A copy of these settings pointing at another database URL."""
        backend, sa_url = _from_url(url)
        return replace(self, backend=backend, url=sa_url)


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


def _backend_name(db_type: str | None, env: Mapping[str, str]) -> BackendName:
    source = "db_type" if db_type is not None else "FLE_DB_TYPE"
    raw = db_type if db_type is not None else env.get("FLE_DB_TYPE", "sqlite")
    name = _BACKEND_ALIASES.get(raw.strip().lower())
    if name is None:
        raise ConfigurationError(f"{source}={raw!r} is not a known database type; use one of: sqlite, postgres")
    return name


def _sqlite_url(path: str, source: str) -> URL:
    if "\x00" in path:
        raise ConfigurationError(f"{source} contains a NUL byte")
    if path in (":memory:", ""):
        return URL.create("sqlite", database=":memory:")
    return URL.create("sqlite", database=str(Path(path).expanduser()))


def _postgres_url(
    env: Mapping[str, str],
    host: str | None,
    port: int | str | None,
    database: str | None,
    user: str | None,
    password: str | None,
    sslmode: str | None,
    sslrootcert: str | None,
) -> URL:
    def pick(arg: Any, var: str, required: bool) -> Any:
        value = arg if arg is not None else env.get(var)
        if required and (value is None or str(value).strip() == ""):
            raise ConfigurationError(
                f"PostgreSQL was selected (FLE_DB_TYPE=postgres) but {var} is not set; "
                "set it or pass a postgresql:// URL"
            )
        return value

    raw_port = pick(port, "SKILLS_DB_PORT", False)
    try:
        port_no = int(raw_port) if raw_port not in (None, "") else 5432
    except (TypeError, ValueError):
        raise ConfigurationError(f"SKILLS_DB_PORT must be a port number, got {raw_port!r}") from None
    if not 0 < port_no < 65536:
        raise ConfigurationError(f"SKILLS_DB_PORT must be in 1..65535, got {port_no}")
    return URL.create(
        "postgresql+psycopg",
        username=pick(user, "SKILLS_DB_USER", True),
        password=pick(password, "SKILLS_DB_PASSWORD", False) or None,
        host=pick(host, "SKILLS_DB_HOST", True),
        port=port_no,
        database=pick(database, "SKILLS_DB_NAME", True),
        query={
            key: str(value)
            for key, value in (
                ("sslmode", pick(sslmode, "SKILLS_DB_SSLMODE", False)),
                ("sslrootcert", pick(sslrootcert, "SKILLS_DB_SSLROOTCERT", False)),
            )
            if value
        },
    )


def _from_url(url: str) -> tuple[BackendName, URL]:
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    try:
        parsed = make_url(url)
    except ArgumentError:
        # The message of a URL parse error may echo the URL; keep the password out of it.
        raise ConfigurationError(
            "the database URL could not be parsed (expected sqlite:///path or "
            "postgresql://user:password@host:port/database)"
        ) from None
    scheme = parsed.get_backend_name()
    if scheme == "sqlite":
        return "sqlite", _sqlite_url(parsed.database or ":memory:", "url")
    if scheme == "postgresql":
        if not parsed.database:
            raise ConfigurationError("the postgresql:// URL names no database")
        return "postgres", parsed.set(drivername="postgresql+psycopg")
    raise ConfigurationError(f"URL scheme {scheme!r} is not supported; use sqlite:// or postgresql://")
