"""Indexes for lineage (forks of a trajectory, children of a step) and per-task/agent queries.

Revision ID: 0002_lineage_indexes
Revises: 0001_initial
"""

from __future__ import annotations

from alembic import op

revision = "0002_lineage_indexes"
down_revision = "0001_initial"
branch_labels = None
depends_on = None

INDEXES = {
    "ix_trajectories_parent": ("trajectories", ["parent_trajectory_id", "parent_step_number"]),
    "ix_trajectories_task": ("trajectories", ["task", "total_reward"]),
    "ix_trajectories_agent": ("trajectories", ["agent_type"]),
    "ix_steps_parent": ("steps", ["parent_trajectory_id", "parent_step_number"]),
}


def upgrade() -> None:
    for name, (table, columns) in INDEXES.items():
        op.create_index(name, table, columns)


def downgrade() -> None:
    for name, (table, _columns) in INDEXES.items():
        op.drop_index(name, table_name=table)
