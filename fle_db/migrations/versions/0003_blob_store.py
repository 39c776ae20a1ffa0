"""Blob store for game states: content-addressed parts with bounded zstd deltas.

Revision ID: 0003_blob_store
Revises: 0002_lineage_indexes

States stored before this revision keep their whole-state body and stay readable.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_blob_store"
down_revision = "0002_lineage_indexes"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "blobs",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("codec", sa.String(32), nullable=False),
        sa.Column("base_id", sa.String(32)),
        sa.Column("body", sa.LargeBinary, nullable=False),
        sa.Column("raw_size", sa.Integer, nullable=False),
        sa.Column("checksum", sa.BigInteger, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_blobs"),
        sa.ForeignKeyConstraint(["base_id"], ["blobs.id"], name="fk_blobs_base_id_blobs"),
    )
    op.create_index("ix_blobs_base", "blobs", ["base_id"])
    op.create_table(
        "game_state_parts",
        sa.Column("state_id", sa.String(32), nullable=False),
        sa.Column("key", sa.String(200), nullable=False),
        sa.Column("blob_id", sa.String(32), nullable=False),
        sa.PrimaryKeyConstraint("state_id", "key", name="pk_game_state_parts"),
        sa.ForeignKeyConstraint(["state_id"], ["game_states.id"], name="fk_game_state_parts_state_id_game_states"),
        sa.ForeignKeyConstraint(["blob_id"], ["blobs.id"], name="fk_game_state_parts_blob_id_blobs"),
    )
    op.create_index("ix_game_state_parts_blob", "game_state_parts", ["blob_id"])


def downgrade() -> None:
    op.drop_table("game_state_parts")
    op.drop_table("blobs")
