"""Search trees: ``search_nodes`` (the mutable visit/value statistics of a step, with a monotonic
integer id, its tree and depth), ``fle_versions`` (FLE versions, allocated atomically) and the
read-only view ``fle_programs`` (one row per FLE program, shaped like FLE's ``programs`` table
minus its payload columns, for ``fle_db.fle``'s ``execute_query``).
Additive: two new tables, their indexes and a view; nothing existing changes. Both tables are
versioned for point-in-time recovery (``valid_from_seq`` and a ``*_history`` twin, as in 0005).

Revision ID: 0006_search_tree
Revises: 0005_point_in_time
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

DOUBLE = sa.Float().with_variant(mysql.DOUBLE(), "mysql", "mariadb")
MYSQL_TABLE: dict[str, Any] = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}

revision = "0006_search_tree"
down_revision = "0005_point_in_time"
branch_labels = None
depends_on = None

ID_LENGTH = 200

# SQLite and PostgreSQL (MySQL: see _view_sql): FLE trees are 'fle-v{version}', their trajectories
# 'fle-v{version}-i{instance}'; times are epoch microseconds.
FLE_PROGRAMS_VIEW = """
CREATE VIEW fle_programs AS
SELECT n.id AS id,
       CAST(substr(n.tree, 6) AS BIGINT) AS version,
       CAST(substr(n.trajectory_id, length(n.tree) + 3) AS BIGINT) AS instance,
       p.id AS parent_id,
       n.depth AS depth,
       n.value AS value,
       n.visits AS visits,
       n.advantage AS advantage,
       s.reward AS reward,
       CAST((s.game_state_id IS NOT NULL) AS INTEGER) AS has_state,
       v.model AS model,
       v.version_description AS version_description,
       n.created_at AS created_at,
       n.trajectory_id AS trajectory_id,
       n.step_number AS step_number
FROM search_nodes n
JOIN steps s ON s.trajectory_id = n.trajectory_id AND s.step_number = n.step_number
LEFT JOIN search_nodes p ON p.trajectory_id = s.parent_trajectory_id AND p.step_number = s.parent_step_number
LEFT JOIN fle_versions v ON v.version = CAST(substr(n.tree, 6) AS BIGINT)
WHERE n.tree LIKE 'fle-v%' AND n.trajectory_id LIKE n.tree || '-i%'
"""


def _view_sql() -> str:
    """MySQL/MariaDB cast to SIGNED and concatenate with CONCAT (``||`` is OR there)."""
    if op.get_bind().dialect.name not in ("mysql", "mariadb"):
        return FLE_PROGRAMS_VIEW
    return (
        FLE_PROGRAMS_VIEW.replace("AS BIGINT", "AS SIGNED")
        .replace("AS INTEGER", "AS SIGNED")
        .replace("n.tree || '-i%'", "CONCAT(n.tree, '-i%')")
    )


def upgrade() -> None:
    op.create_table(
        "search_nodes",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("trajectory_id", sa.String(ID_LENGTH), nullable=False),
        sa.Column("step_number", sa.BigInteger, nullable=False),
        sa.Column("tree", sa.String(ID_LENGTH), nullable=False),
        sa.Column("depth", sa.BigInteger, nullable=False),
        sa.Column("visits", sa.BigInteger, nullable=False),
        sa.Column("value", DOUBLE),
        sa.Column("advantage", DOUBLE),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
        sa.Column("valid_from_seq", sa.BigInteger, nullable=False, server_default=sa.text("0")),
        sa.ForeignKeyConstraint(
            ["trajectory_id", "step_number"],
            ["steps.trajectory_id", "steps.step_number"],
            name="fk_search_nodes_trajectory_id_steps",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_search_nodes"),
        sqlite_autoincrement=True,
        **MYSQL_TABLE,
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
        sa.Column("valid_from_seq", sa.BigInteger, nullable=False, server_default=sa.text("0")),
        sa.PrimaryKeyConstraint("version", name="pk_fle_versions"),
        **MYSQL_TABLE,
    )
    op.create_table(
        "search_nodes_history",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), nullable=False),
        sa.Column("trajectory_id", sa.String(ID_LENGTH), nullable=False),
        sa.Column("step_number", sa.BigInteger, nullable=False),
        sa.Column("tree", sa.String(ID_LENGTH), nullable=False),
        sa.Column("depth", sa.BigInteger, nullable=False),
        sa.Column("visits", sa.BigInteger, nullable=False),
        sa.Column("value", DOUBLE),
        sa.Column("advantage", DOUBLE),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
        sa.Column("valid_from_seq", sa.BigInteger, nullable=False),
        sa.Column("valid_to_seq", sa.BigInteger, nullable=False),
        **MYSQL_TABLE,
    )
    op.create_table(
        "fle_versions_history",
        sa.Column("version", sa.BigInteger, nullable=False, autoincrement=False),
        sa.Column("version_description", sa.Text),
        sa.Column("model", sa.String(ID_LENGTH)),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("valid_from_seq", sa.BigInteger, nullable=False),
        sa.Column("valid_to_seq", sa.BigInteger, nullable=False),
        **MYSQL_TABLE,
    )
    for name in ("search_nodes", "fle_versions"):
        op.create_index(f"ix_{name}_history_valid_to_seq", f"{name}_history", ["valid_to_seq"])
    op.execute(_view_sql())


def downgrade() -> None:
    op.execute("DROP VIEW fle_programs")
    for name in ("search_nodes", "fle_versions"):
        op.drop_index(f"ix_{name}_history_valid_to_seq", table_name=f"{name}_history")
        op.drop_table(f"{name}_history")
    op.drop_table("fle_versions")
    op.drop_index("ix_search_nodes_recent", table_name="search_nodes")
    op.drop_index("ix_search_nodes_tree", table_name="search_nodes")
    op.drop_index("ix_search_nodes_step", table_name="search_nodes")
    op.drop_table("search_nodes")
