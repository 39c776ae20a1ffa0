"""Initial schema: trajectories, steps, game states, agent outputs, feedbacks, metadata.

Revision ID: 0001_initial
Revises:
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0001_initial"
down_revision = None
branch_labels = None
depends_on = None

ID = sa.String(200)
DIGEST = sa.String(32)
CODEC = sa.String(32)
# MySQL/MariaDB only (added with the MySQL backend; other dialects ignore these variants and
# options, so SQLite and PostgreSQL databases are built exactly as before): LONGBLOB, since
# BLOB holds 64 KB; DOUBLE, since FLOAT is single precision; InnoDB with a binary collation, so
# ids compare byte for byte (the default collation is case-insensitive).
BYTES = sa.LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb")
DOUBLE = sa.Float().with_variant(mysql.DOUBLE(), "mysql", "mariadb")
MYSQL_TABLE: dict[str, Any] = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}


def _payload() -> list[sa.Column[object]]:
    return [
        sa.Column("digest", DIGEST, nullable=False),
        sa.Column("codec", CODEC, nullable=False),
        sa.Column("body", BYTES, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
    ]


def upgrade() -> None:
    op.create_table(
        "trajectories",
        sa.Column("id", ID, nullable=False),
        sa.Column("agent_type", ID),
        sa.Column("task", ID),
        sa.Column("total_reward", DOUBLE),
        sa.Column("success", sa.Boolean),
        sa.Column("parent_trajectory_id", ID),
        sa.Column("parent_step_number", sa.BigInteger),
        sa.Column("codec", CODEC, nullable=False),
        sa.Column("body", BYTES, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_trajectories"),
        sa.ForeignKeyConstraint(
            ["parent_trajectory_id"], ["trajectories.id"], name="fk_trajectories_parent_trajectory_id_trajectories"
        ),
        **MYSQL_TABLE,
    )
    op.create_table(
        "game_states",
        sa.Column("id", DIGEST, nullable=False),
        sa.Column("codec", CODEC, nullable=False),
        sa.Column("body", BYTES, nullable=False),
        sa.Column("raw_size", sa.Integer, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_game_states"),
        **MYSQL_TABLE,
    )
    op.create_table(
        "steps",
        sa.Column("trajectory_id", ID, nullable=False),
        sa.Column("step_number", sa.BigInteger, nullable=False),
        sa.Column("parent_trajectory_id", ID),
        sa.Column("parent_step_number", sa.BigInteger),
        sa.Column("reward", DOUBLE),
        sa.Column("game_state_id", DIGEST),
        *_payload(),
        sa.PrimaryKeyConstraint("trajectory_id", "step_number", name="pk_steps"),
        sa.ForeignKeyConstraint(["trajectory_id"], ["trajectories.id"], name="fk_steps_trajectory_id_trajectories"),
        sa.ForeignKeyConstraint(["game_state_id"], ["game_states.id"], name="fk_steps_game_state_id_game_states"),
        **MYSQL_TABLE,
    )
    op.create_index("ix_steps_game_state", "steps", ["game_state_id"])
    for name in ("agent_outputs", "environment_feedbacks"):
        op.create_table(
            name,
            sa.Column("trajectory_id", ID, nullable=False),
            sa.Column("step_number", sa.BigInteger, nullable=False),
            *_payload(),
            sa.PrimaryKeyConstraint("trajectory_id", "step_number", name=f"pk_{name}"),
            sa.ForeignKeyConstraint(
                ["trajectory_id"], ["trajectories.id"], name=f"fk_{name}_trajectory_id_trajectories"
            ),
            **MYSQL_TABLE,
        )
    op.create_table(
        "trajectory_metadata",
        sa.Column("trajectory_id", ID, nullable=False),
        sa.Column("key", ID, nullable=False),
        sa.Column("codec", CODEC, nullable=False),
        sa.Column("body", BYTES, nullable=False),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("trajectory_id", "key", name="pk_trajectory_metadata"),
        sa.ForeignKeyConstraint(
            ["trajectory_id"], ["trajectories.id"], name="fk_trajectory_metadata_trajectory_id_trajectories"
        ),
        **MYSQL_TABLE,
    )


def downgrade() -> None:
    for name in ("trajectory_metadata", "environment_feedbacks", "agent_outputs", "steps", "game_states"):
        op.drop_table(name)
    op.drop_table("trajectories")
