"""Steps, agent outputs and feedbacks may be stored as zstd deltas against a keyframe record.

Revision ID: 0004_record_deltas
Revises: 0003_blob_store

Adds ``base_step_number`` (and a foreign key to the keyframe row of the same trajectory) to the
three step-scoped tables. Existing rows keep their codec and stay readable.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_record_deltas"
down_revision = "0003_blob_store"
branch_labels = None
depends_on = None

TABLES = ("steps", "agent_outputs", "environment_feedbacks")


def upgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("base_step_number", sa.BigInteger))
            batch.create_foreign_key(
                f"fk_{table}_trajectory_id_{table}",
                table,
                ["trajectory_id", "base_step_number"],
                ["trajectory_id", "step_number"],
            )


def downgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table) as batch:
            batch.drop_constraint(f"fk_{table}_trajectory_id_{table}", type_="foreignkey")
            batch.drop_column("base_step_number")
