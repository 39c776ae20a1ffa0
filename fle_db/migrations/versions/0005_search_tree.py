"""Search trees: ``search_nodes`` (the mutable visit/value statistics of a step, with a monotonic
integer id, its tree and depth) and ``fle_versions`` (FLE versions, allocated atomically).
Additive: two new tables and their indexes; nothing existing changes.

Revision ID: 0005_search_tree
Revises: 0004_step_time_index
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_search_tree"
down_revision = "0004_step_time_index"
branch_labels = None
depends_on = None

ID_LENGTH = 200


def upgrade() -> None:
    op.create_table(
        "search_nodes",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("trajectory_id", sa.String(ID_LENGTH), nullable=False),
        sa.Column("step_number", sa.BigInteger, nullable=False),
        sa.Column("tree", sa.String(ID_LENGTH), nullable=False),
        sa.Column("depth", sa.BigInteger, nullable=False),
        sa.Column("visits", sa.BigInteger, nullable=False),
        sa.Column("value", sa.Float),
        sa.Column("advantage", sa.Float),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
        sa.ForeignKeyConstraint(
            ["trajectory_id", "step_number"],
            ["steps.trajectory_id", "steps.step_number"],
            name="fk_search_nodes_trajectory_id_steps",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_search_nodes"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_search_nodes_step", "search_nodes", ["trajectory_id", "step_number"], unique=True)
    op.create_index("ix_search_nodes_tree", "search_nodes", ["tree", "depth", "value"])
    op.create_index("ix_search_nodes_recent", "search_nodes", ["tree", "id"])
    op.create_table(
        "fle_versions",
        sa.Column("version", sa.BigInteger, autoincrement=False),
        sa.Column("version_description", sa.Text),
        sa.Column("model", sa.String(ID_LENGTH)),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("version", name="pk_fle_versions"),
    )


def downgrade() -> None:
    op.drop_table("fle_versions")
    op.drop_index("ix_search_nodes_recent", table_name="search_nodes")
    op.drop_index("ix_search_nodes_tree", table_name="search_nodes")
    op.drop_index("ix_search_nodes_step", table_name="search_nodes")
    op.drop_table("search_nodes")
