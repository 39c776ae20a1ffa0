"""Storage engine: content-addressed game-state parts, zstd deltas, lean indexes.

Revision ID: 0003_storage_engine
Revises: 0002_lineage_indexes

* ``blobs``: immutable parts of game states, addressed by digest; a delta names its keyframe.
* ``game_state_parts``: which blobs make a state (WITHOUT ROWID on SQLite: the key is the row).
* ``steps``, ``agent_outputs``, ``environment_feedbacks`` gain ``base_step_number``: a record may
  be a zstd delta of a keyframe record of the same trajectory (foreign key keeps it present).
* Indexes that only serve rare rows (forks, deltas, states) become partial: ordinary checkpoints
  write no page of them.

States and records stored before this revision keep their codecs and stay readable.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0003_storage_engine"
down_revision = "0002_lineage_indexes"
branch_labels = None
depends_on = None

RECORD_TABLES = ("steps", "agent_outputs", "environment_feedbacks")
# MySQL/MariaDB only (see 0001): LONGBLOB bodies, InnoDB tables with a binary collation.
BYTES = sa.LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb")
MYSQL_TABLE: dict[str, Any] = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}


def _where(condition: str) -> dict[str, Any]:
    return {"sqlite_where": sa.text(condition), "postgresql_where": sa.text(condition)}


def upgrade() -> None:
    op.create_table(
        "blobs",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("codec", sa.String(32), nullable=False),
        sa.Column("base_id", sa.String(32)),
        sa.Column("body", BYTES, nullable=False),
        sa.Column("raw_size", sa.Integer, nullable=False),
        sa.Column("checksum", sa.BigInteger, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_blobs"),
        sa.ForeignKeyConstraint(["base_id"], ["blobs.id"], name="fk_blobs_base_id_blobs"),
        **MYSQL_TABLE,
    )
    op.create_index("ix_blobs_base", "blobs", ["base_id"], **_where("base_id IS NOT NULL"))
    op.create_table(
        "game_state_parts",
        sa.Column("state_id", sa.String(32), nullable=False),
        sa.Column("key", sa.String(200), nullable=False),
        sa.Column("blob_id", sa.String(32), nullable=False),
        sa.PrimaryKeyConstraint("state_id", "key", name="pk_game_state_parts"),
        sa.ForeignKeyConstraint(["state_id"], ["game_states.id"], name="fk_game_state_parts_state_id_game_states"),
        sa.ForeignKeyConstraint(["blob_id"], ["blobs.id"], name="fk_game_state_parts_blob_id_blobs"),
        sqlite_with_rowid=False,
        **MYSQL_TABLE,
    )
    op.create_index("ix_game_state_parts_blob", "game_state_parts", ["blob_id"])
    for table in RECORD_TABLES:
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("base_step_number", sa.BigInteger))
            batch.create_foreign_key(
                f"fk_{table}_trajectory_id_{table}", table, ["trajectory_id", "base_step_number"],
                ["trajectory_id", "step_number"],
            )  # fmt: skip
    if _has_partial_indexes():
        op.drop_index("ix_steps_parent", table_name="steps")
        op.create_index(
            "ix_steps_parent", "steps", ["parent_trajectory_id", "parent_step_number"],
            **_where("parent_trajectory_id IS NOT NULL"),
        )  # fmt: skip
        op.drop_index("ix_steps_game_state", table_name="steps")
        op.create_index("ix_steps_game_state", "steps", ["game_state_id"], **_where("game_state_id IS NOT NULL"))


def _has_partial_indexes() -> bool:
    """MySQL/MariaDB have no partial indexes, so rebuilding these two would change nothing; and
    it refuses to drop ix_steps_game_state, which backs a foreign key."""
    return op.get_bind().dialect.name not in ("mysql", "mariadb")


def downgrade() -> None:
    if _has_partial_indexes():
        op.drop_index("ix_steps_game_state", table_name="steps")
        op.create_index("ix_steps_game_state", "steps", ["game_state_id"])
        op.drop_index("ix_steps_parent", table_name="steps")
        op.create_index("ix_steps_parent", "steps", ["parent_trajectory_id", "parent_step_number"])
    for table in RECORD_TABLES:
        with op.batch_alter_table(table) as batch:
            batch.drop_constraint(f"fk_{table}_trajectory_id_{table}", type_="foreignkey")
            batch.drop_column("base_step_number")
    op.drop_table("game_state_parts")
    op.drop_table("blobs")
