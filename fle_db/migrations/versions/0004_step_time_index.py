"""Index steps by the time they were stored: oldest/newest statistics, age-based cleanup and
time-range exports read it instead of scanning the steps.

Revision ID: 0004_step_time_index
Revises: 0003_storage_engine
"""

from __future__ import annotations

from alembic import op

revision = "0004_step_time_index"
down_revision = "0003_storage_engine"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_steps_created", "steps", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_steps_created", table_name="steps")
