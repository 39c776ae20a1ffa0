"""Index steps by the commit that wrote them (``valid_from_seq``): the live tail (``tail()``) finds
the steps of the commits logged after a position through ``commit_log``'s instant index and this
one, instead of scanning the steps. One more B-tree entry per step written.

Revision ID: 0009_tail_index
Revises: 0008_commit_tokens
"""

from __future__ import annotations

from alembic import op

revision = "0009_tail_index"
down_revision = "0008_commit_tokens"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_steps_commit", "steps", ["valid_from_seq"])


def downgrade() -> None:
    op.drop_index("ix_steps_commit", table_name="steps")
