"""Schema migrations (Alembic), run programmatically on a connection the caller holds.

The caller (a backend) opens a write transaction, takes its cross-process lock (SQLite: the
``BEGIN IMMEDIATE`` write lock; PostgreSQL: ``pg_advisory_xact_lock``; MySQL: ``GET_LOCK``),
re-reads the version and only then calls :func:`upgrade`, so many processes starting at once
against a fresh database apply each migration exactly once. Alembic's version table is ``fle_db_version``.

Migrations are small, transactional (except on MySQL/MariaDB, which commits each DDL statement)
and never change meaning once released (a MySQL-only variant may be added); a test proves the
migrated schema equals ``fle_db.schema.metadata`` on every built-in backend.
"""

from __future__ import annotations

from functools import lru_cache
from importlib.resources import files

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import Column, Connection, MetaData, String, Table, inspect, select

from ..errors import SchemaVersionError
from ..schema import VERSION_TABLE, metadata

# Alembic's version table, read directly: a plain SELECT instead of a MigrationContext per open.
_version = Table(VERSION_TABLE, MetaData(), Column("version_num", String(32), primary_key=True))


def _config(connection: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(files("fle_db") / "migrations"))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


@lru_cache(maxsize=1)
def script_directory() -> ScriptDirectory:
    """The migration scripts shipped with this package (loaded once per process)."""
    return ScriptDirectory.from_config(_config())


def latest_revision() -> str:
    head = script_directory().get_current_head()
    if head is None:  # pragma: no cover - the package always ships migrations
        raise SchemaVersionError("fle-db ships no migrations")
    return head


def current_revision(connection: Connection) -> str | None:
    """The database's revision, or None for a database fle-db never migrated.

    Raises:
        SchemaVersionError: the revision is unknown to this library (a newer fle-db wrote it), or
            the database holds fle-db's table names without a version (another application's?).
    """
    inspector = inspect(connection)
    versioned = inspector.has_table(VERSION_TABLE)
    revision: str | None = connection.execute(select(_version.c.version_num)).scalar() if versioned else None
    if revision is None:
        # An empty version table with fle-db's tables beside it is a first migration under way
        # in another process (visible only where DDL is not transactional: MySQL), not foreign.
        clash = [] if versioned else sorted(set(inspector.get_table_names()) & set(metadata.tables))
        if clash:
            raise SchemaVersionError(
                f"the database has tables {clash} but no {VERSION_TABLE} table: it was not created "
                "by fle-db, and fle-db will not touch it"
            )
        return None
    try:
        script_directory().get_revision(revision)
    except Exception:  # alembic raises several types for an unknown revision
        raise SchemaVersionError(
            f"the database is at schema revision {revision!r}, which this fle-db does not know: "
            "it was migrated by a newer fle-db; upgrade the package"
        ) from None
    return revision


def pending_revisions(current: str | None) -> list[str]:
    """Revisions between ``current`` and head, oldest first."""
    revs = script_directory().iterate_revisions(latest_revision(), current)
    return [rev.revision for rev in reversed(list(revs))]


def upgrade(connection: Connection, target: str = "head") -> None:
    """Apply migrations up to ``target`` inside the caller's transaction (the caller holds the lock)."""
    command.upgrade(_config(connection), target)
