"""The schema: SQLAlchemy Core tables, the single source of truth for every backend.

Migrations in ``migrations/versions`` build exactly this (a test compares a migrated database
with this metadata). Payloads are stored as tagged bytes (``codec`` + ``body``), never as the
backend's JSON type: JSONB would reorder keys and turn ``1e300`` into an integer, and one bytes
column behaves the same on every backend. Timestamps the store adds are integer microseconds since
the epoch (UTC), so ordering and comparisons never depend on a backend's time zone handling.

Access paths and the index each uses:

* resume (newest step of a trajectory): primary key ``steps (trajectory_id, step_number)``, read
  backwards; one index probe whatever the table size.
* load a trajectory's steps / outputs / feedbacks / metadata: the same primary-key prefixes.
* forks of a trajectory, children of a step: ``ix_trajectories_parent``, ``ix_steps_parent``.
* which steps use a game state (garbage collection on delete): ``ix_steps_game_state``; which
  states use a blob, which blobs use it as base: ``ix_game_state_parts_blob``, ``ix_blobs_base``.
* trajectories per task or agent (analysis, best-N): ``ix_trajectories_task``, ``ix_trajectories_agent``.
* oldest/newest step, age-based cleanup, time-range export: ``ix_steps_created``.
* search trees: a node by step ``ix_search_nodes_step``; best-N per depth, largest depth,
  rewards of a tree ``ix_search_nodes_tree`` (tree, depth, value); newest nodes of a tree:
  ``ix_search_nodes_recent`` (tree, id).

Besides these tables, migration 0006 creates the read-only view ``fle_programs`` (FLE's programs,
one row per FLE search node; see ``fle_db.fle``), which is not part of this metadata.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    text,
)
from sqlalchemy.dialects import mysql

ID_LENGTH = 200
DIGEST_LENGTH = 32
CODEC_LENGTH = 32
#: Alembic's version table, named for us so fle-db can share a database with other applications.
VERSION_TABLE = "fle_db_version"

#: Payload bytes. MySQL's BLOB holds 64 KB, so MySQL/MariaDB get LONGBLOB (4 GB).
Payload = LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb")
#: A double. MySQL's FLOAT is single precision: rewards would lose digits and ties would reorder.
Double = Float().with_variant(mysql.DOUBLE(asdecimal=False), "mysql", "mariadb")  # floats, not Decimal
#: MySQL/MariaDB table options: InnoDB (transactions, foreign keys) and a *binary* collation, so
#: ids compare byte for byte as on SQLite and PostgreSQL (the default collations are
#: case-insensitive: "Run1" and "run1" would be one trajectory). Other dialects ignore them.
MYSQL_TABLE: dict[str, Any] = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


def _partial(condition: str) -> dict[str, Any]:
    """A partial index (both dialects): rows outside it cost no index page on write."""
    return {"sqlite_where": text(condition), "postgresql_where": text(condition)}


def _valid_from() -> Column[int]:
    """The token of the commit that made this version of the row current (0: before 0005)."""
    return Column("valid_from_seq", BigInteger, nullable=False, server_default=text("0"))


trajectories = Table(
    "trajectories",
    metadata,
    Column("id", String(ID_LENGTH), primary_key=True),
    Column("agent_type", String(ID_LENGTH)),
    Column("task", String(ID_LENGTH)),
    Column("total_reward", Double),
    Column("success", Boolean),
    # Lineage: this trajectory was forked from step (parent_trajectory_id, parent_step_number).
    Column("parent_trajectory_id", String(ID_LENGTH), ForeignKey("trajectories.id")),
    Column("parent_step_number", BigInteger),
    Column("codec", String(CODEC_LENGTH), nullable=False),
    Column("body", Payload, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    _valid_from(),
    Index("ix_trajectories_parent", "parent_trajectory_id", "parent_step_number"),
    Index("ix_trajectories_task", "task", "total_reward"),
    Index("ix_trajectories_agent", "agent_type"),
    **MYSQL_TABLE,
)

game_states = Table(
    "game_states",
    metadata,
    # Content address: blake2b-128 of the state's manifest of parts (codec "manifest", empty body;
    # see fle_db.storage.engine), or of its canonical JSON for states stored whole (codec "json",
    # "json+zstd", written before migration 0003). Equal states are stored once.
    Column("id", String(DIGEST_LENGTH), primary_key=True),
    Column("codec", String(CODEC_LENGTH), nullable=False),
    Column("body", Payload, nullable=False),
    Column("raw_size", Integer, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    _valid_from(),
    **MYSQL_TABLE,
)

# Immutable, content-addressed parts of game states: id = blake2b-128 of the canonical JSON.
# A delta (codec "zstd+delta") is compressed with its base's bytes as dictionary; every base is a
# full blob (keyframe), so decoding never follows more than one link.
blobs = Table(
    "blobs",
    metadata,
    Column("id", String(DIGEST_LENGTH), primary_key=True),
    Column("codec", String(CODEC_LENGTH), nullable=False),
    Column("base_id", String(DIGEST_LENGTH), ForeignKey("blobs.id")),
    Column("body", Payload, nullable=False),
    Column("raw_size", Integer, nullable=False),
    Column("checksum", BigInteger, nullable=False),  # CRC-32 of body
    Column("created_at", BigInteger, nullable=False),
    _valid_from(),
    Index("ix_blobs_base", "base_id", **_partial("base_id IS NOT NULL")),
    **MYSQL_TABLE,
)

game_state_parts = Table(
    "game_state_parts",
    metadata,
    Column("state_id", String(DIGEST_LENGTH), ForeignKey("game_states.id"), nullable=False),
    Column("key", String(ID_LENGTH), nullable=False),
    Column("blob_id", String(DIGEST_LENGTH), ForeignKey("blobs.id"), nullable=False),
    _valid_from(),
    PrimaryKeyConstraint("state_id", "key"),
    Index("ix_game_state_parts_blob", "blob_id"),
    sqlite_with_rowid=False,
    **MYSQL_TABLE,
)

steps = Table(
    "steps",
    metadata,
    Column("trajectory_id", String(ID_LENGTH), ForeignKey("trajectories.id"), nullable=False),
    Column("step_number", BigInteger, nullable=False),
    # Explicit parent step, when the caller gave one (forks, search trees); absent means the
    # previous step of the same trajectory.
    Column("parent_trajectory_id", String(ID_LENGTH)),
    Column("parent_step_number", BigInteger),
    Column("reward", Double),
    Column("game_state_id", String(DIGEST_LENGTH), ForeignKey("game_states.id")),
    Column("digest", String(DIGEST_LENGTH), nullable=False),
    Column("codec", String(CODEC_LENGTH), nullable=False),
    Column("body", Payload, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    # A delta (codec "zstd+delta") names the keyframe step of the same trajectory whose body is
    # its zstd dictionary; the foreign key keeps that step from vanishing under it.
    Column("base_step_number", BigInteger),
    _valid_from(),
    PrimaryKeyConstraint("trajectory_id", "step_number"),
    ForeignKeyConstraint(["trajectory_id", "base_step_number"], ["steps.trajectory_id", "steps.step_number"]),
    Index("ix_steps_game_state", "game_state_id", **_partial("game_state_id IS NOT NULL")),
    Index("ix_steps_created", "created_at"),
    Index("ix_steps_commit", "valid_from_seq"),  # the live tail: steps of a commit
    Index(
        "ix_steps_parent", "parent_trajectory_id", "parent_step_number", **_partial("parent_trajectory_id IS NOT NULL")
    ),
    **MYSQL_TABLE,
)


def _step_record_table(name: str) -> Table:
    """Agent outputs and environment feedbacks: one immutable record per step, same shape."""
    return Table(
        name,
        metadata,
        Column("trajectory_id", String(ID_LENGTH), ForeignKey("trajectories.id"), nullable=False),
        Column("step_number", BigInteger, nullable=False),
        Column("digest", String(DIGEST_LENGTH), nullable=False),
        Column("codec", String(CODEC_LENGTH), nullable=False),
        Column("body", Payload, nullable=False),
        Column("created_at", BigInteger, nullable=False),
        Column("base_step_number", BigInteger),
        _valid_from(),
        PrimaryKeyConstraint("trajectory_id", "step_number"),
        ForeignKeyConstraint(["trajectory_id", "base_step_number"], [f"{name}.trajectory_id", f"{name}.step_number"]),
        **MYSQL_TABLE,
    )


agent_outputs = _step_record_table("agent_outputs")
environment_feedbacks = _step_record_table("environment_feedbacks")

trajectory_metadata = Table(
    "trajectory_metadata",
    metadata,
    Column("trajectory_id", String(ID_LENGTH), ForeignKey("trajectories.id"), nullable=False),
    Column("key", String(ID_LENGTH), nullable=False),
    Column("codec", String(CODEC_LENGTH), nullable=False),
    Column("body", Payload, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    _valid_from(),
    PrimaryKeyConstraint("trajectory_id", "key"),
    **MYSQL_TABLE,
)

# Search-tree statistics of a step: the only mutable per-step row (steps themselves are
# immutable). ``id`` is a monotonic integer handle (never reused: AUTOINCREMENT on SQLite, an
# identity sequence on PostgreSQL) that search code can pass around (FLE's program id); ``tree``
# groups the nodes one search compares (FLE: one per version); ``depth`` is fixed at creation.
# Every UPDATE of this table goes through ``SQLSearch._bump_search_stats`` (backends/sql/search.py).
search_nodes = Table(
    "search_nodes",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("trajectory_id", String(ID_LENGTH), nullable=False),
    Column("step_number", BigInteger, nullable=False),
    Column("tree", String(ID_LENGTH), nullable=False),
    Column("depth", BigInteger, nullable=False),
    Column("visits", BigInteger, nullable=False),
    Column("value", Double),
    Column("advantage", Double),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    _valid_from(),
    ForeignKeyConstraint(["trajectory_id", "step_number"], ["steps.trajectory_id", "steps.step_number"]),
    Index("ix_search_nodes_step", "trajectory_id", "step_number", unique=True),
    Index("ix_search_nodes_tree", "tree", "depth", "value"),
    Index("ix_search_nodes_recent", "tree", "id"),
    sqlite_autoincrement=True,
    **MYSQL_TABLE,
)

# FLE versions (``fle_db.fle``): allocated atomically (``INSERT ... MAX + 1`` in one write
# transaction, retried on a concurrent duplicate), never updated.
fle_versions = Table(
    "fle_versions",
    metadata,
    Column("version", BigInteger, primary_key=True, autoincrement=False),
    Column("version_description", Text),
    Column("model", String(ID_LENGTH)),
    Column("created_at", BigInteger, nullable=False),
    _valid_from(),
    **MYSQL_TABLE,
)

#: Tables that hold one trajectory's own rows, children first (delete order).
TRAJECTORY_CHILD_TABLES = (agent_outputs, environment_feedbacks, trajectory_metadata, search_nodes, steps)

# -- Point-in-time recovery (migration 0005) -------------------------------------------------
# Every write transaction has a commit token (see ``backends/sql/versioned.py``: the transaction
# id on PostgreSQL, a counter in ``log_head`` on SQLite and MySQL/MariaDB) and stamps it on the
# rows it writes (``valid_from_seq``). A row that is updated or deleted first moves its old image
# into the table's ``<name>_history`` twin with ``valid_to_seq``. ``commit_log`` maps tokens to
# commit instants, logged by each transaction's last statement (above every instant it can see);
# the database as of instant T is every commit logged at or before T. ``log_head`` holds the
# counter (PostgreSQL: the base added to transaction ids), the recovery horizon (times before
# ``horizon_at`` were pruned) and the instant floor of an empty log.

log_head = Table(
    "log_head",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),  # always 1
    Column("seq", BigInteger, nullable=False),
    Column("committed_at", BigInteger, nullable=False),
    Column("horizon_seq", BigInteger, nullable=False),
    Column("horizon_at", BigInteger, nullable=False),
    **MYSQL_TABLE,
)

commit_log = Table(
    "commit_log",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("committed_at", BigInteger, nullable=False),
    Index("ix_commit_log_committed_at", "committed_at"),
    **MYSQL_TABLE,
)

#: Tables whose rows are versioned, parents before children (insert order).
VERSIONED_TABLES = (
    trajectories,
    game_states,
    blobs,
    game_state_parts,
    steps,
    agent_outputs,
    environment_feedbacks,
    trajectory_metadata,
    search_nodes,
    fle_versions,
)


def _history(table: Table) -> Table:
    """The history twin of ``table``: its columns without constraints, plus ``valid_to_seq``."""
    return Table(
        f"{table.name}_history",
        metadata,
        *[Column(c.name, c.type, nullable=c.nullable) for c in table.columns],
        Column("valid_to_seq", BigInteger, nullable=False),
        Index(f"ix_{table.name}_history_valid_to_seq", "valid_to_seq"),
        **MYSQL_TABLE,
    )


#: Versioned table name -> its history table.
HISTORY = {table.name: _history(table) for table in VERSIONED_TABLES}

__all__ = [
    "HISTORY",
    "TRAJECTORY_CHILD_TABLES",
    "VERSIONED_TABLES",
    "VERSION_TABLE",
    "agent_outputs",
    "blobs",
    "commit_log",
    "environment_feedbacks",
    "fle_versions",
    "game_state_parts",
    "game_states",
    "log_head",
    "metadata",
    "search_nodes",
    "steps",
    "trajectories",
    "trajectory_metadata",
]
