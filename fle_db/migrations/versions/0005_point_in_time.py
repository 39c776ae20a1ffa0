"""Point-in-time recovery: a commit log, versioned rows and history tables.

Revision ID: 0005_point_in_time
Revises: 0004_step_time_index

* ``log_head`` (one row) hands out commit sequence numbers; ``commit_log`` maps each to its
  commit instant. The recovery window starts when this revision is applied.
* Every stored table gains ``valid_from_seq`` (0 for rows written before this revision).
* Each stored table gets a ``<name>_history`` twin that keeps superseded and deleted row images
  with ``valid_to_seq``.

The column lists are frozen here as they are at this revision (never derived from schema.py,
which moves on).
"""

from __future__ import annotations

import time
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0005_point_in_time"
down_revision = "0004_step_time_index"
branch_labels = None
depends_on = None


# MySQL/MariaDB only (see 0001): LONGBLOB bodies, DOUBLE rewards, InnoDB tables with a binary
# collation. Other dialects ignore these variants and options.
BYTES = sa.LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb")
DOUBLE = sa.Float().with_variant(mysql.DOUBLE(), "mysql", "mariadb")
MYSQL_TABLE: dict[str, Any] = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}


def _id() -> sa.String:
    return sa.String(200)


def _short() -> sa.String:
    """Digests and codec tags."""
    return sa.String(32)


def _record_columns() -> list[sa.Column[object]]:
    return [
        sa.Column("trajectory_id", _id(), nullable=False),
        sa.Column("step_number", sa.BigInteger, nullable=False),
        sa.Column("digest", _short(), nullable=False),
        sa.Column("codec", _short(), nullable=False),
        sa.Column("body", BYTES, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("base_step_number", sa.BigInteger),
    ]


def _columns() -> dict[str, list[sa.Column[object]]]:
    """Each stored table's columns at revision 0004, in order."""
    return {
        "trajectories": [
            sa.Column("id", _id(), nullable=False),
            sa.Column("agent_type", _id()),
            sa.Column("task", _id()),
            sa.Column("total_reward", DOUBLE),
            sa.Column("success", sa.Boolean),
            sa.Column("parent_trajectory_id", _id()),
            sa.Column("parent_step_number", sa.BigInteger),
            sa.Column("codec", _short(), nullable=False),
            sa.Column("body", BYTES, nullable=False),
            sa.Column("created_at", sa.BigInteger, nullable=False),
            sa.Column("updated_at", sa.BigInteger, nullable=False),
        ],
        "game_states": [
            sa.Column("id", _short(), nullable=False),
            sa.Column("codec", _short(), nullable=False),
            sa.Column("body", BYTES, nullable=False),
            sa.Column("raw_size", sa.Integer, nullable=False),
            sa.Column("created_at", sa.BigInteger, nullable=False),
        ],
        "blobs": [
            sa.Column("id", _short(), nullable=False),
            sa.Column("codec", _short(), nullable=False),
            sa.Column("base_id", _short()),
            sa.Column("body", BYTES, nullable=False),
            sa.Column("raw_size", sa.Integer, nullable=False),
            sa.Column("checksum", sa.BigInteger, nullable=False),
            sa.Column("created_at", sa.BigInteger, nullable=False),
        ],
        "game_state_parts": [
            sa.Column("state_id", _short(), nullable=False),
            sa.Column("key", _id(), nullable=False),
            sa.Column("blob_id", _short(), nullable=False),
        ],
        "steps": [
            sa.Column("trajectory_id", _id(), nullable=False),
            sa.Column("step_number", sa.BigInteger, nullable=False),
            sa.Column("parent_trajectory_id", _id()),
            sa.Column("parent_step_number", sa.BigInteger),
            sa.Column("reward", DOUBLE),
            sa.Column("game_state_id", _short()),
            sa.Column("digest", _short(), nullable=False),
            sa.Column("codec", _short(), nullable=False),
            sa.Column("body", BYTES, nullable=False),
            sa.Column("created_at", sa.BigInteger, nullable=False),
            sa.Column("base_step_number", sa.BigInteger),
        ],
        "agent_outputs": _record_columns(),
        "environment_feedbacks": _record_columns(),
        "trajectory_metadata": [
            sa.Column("trajectory_id", _id(), nullable=False),
            sa.Column("key", _id(), nullable=False),
            sa.Column("codec", _short(), nullable=False),
            sa.Column("body", BYTES, nullable=False),
            sa.Column("updated_at", sa.BigInteger, nullable=False),
        ],
    }


def upgrade() -> None:
    op.create_table(
        "log_head",
        sa.Column("id", sa.Integer, nullable=False, autoincrement=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("committed_at", sa.BigInteger, nullable=False),
        sa.Column("horizon_seq", sa.BigInteger, nullable=False),
        sa.Column("horizon_at", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_log_head"),
        **MYSQL_TABLE,
    )
    op.create_table(
        "commit_log",
        sa.Column("seq", sa.BigInteger, nullable=False, autoincrement=False),
        sa.Column("committed_at", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("seq", name="pk_commit_log"),
        **MYSQL_TABLE,
    )
    op.create_index("ix_commit_log_committed_at", "commit_log", ["committed_at"])
    now = time.time_ns() // 1000
    op.execute(
        sa.text(
            "INSERT INTO log_head (id, seq, committed_at, horizon_seq, horizon_at) VALUES (1, 0, :now, 0, :now)"
        ).bindparams(now=now)
    )
    op.execute(sa.text("INSERT INTO commit_log (seq, committed_at) VALUES (0, :now)").bindparams(now=now))
    for name, columns in _columns().items():
        op.add_column(name, sa.Column("valid_from_seq", sa.BigInteger, nullable=False, server_default=sa.text("0")))
        op.create_table(
            f"{name}_history",
            *columns,
            sa.Column("valid_from_seq", sa.BigInteger, nullable=False),
            sa.Column("valid_to_seq", sa.BigInteger, nullable=False),
            **MYSQL_TABLE,
        )
        op.create_index(f"ix_{name}_history_valid_to_seq", f"{name}_history", ["valid_to_seq"])


def downgrade() -> None:
    for name in reversed(list(_columns())):
        op.drop_index(f"ix_{name}_history_valid_to_seq", table_name=f"{name}_history")
        op.drop_table(f"{name}_history")
        with op.batch_alter_table(name) as batch:
            batch.drop_column("valid_from_seq")
    op.drop_index("ix_commit_log_committed_at", table_name="commit_log")
    op.drop_table("commit_log")
    op.drop_table("log_head")
