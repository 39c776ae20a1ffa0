"""Commit tokens: point-in-time history ordered by commit instant, not by a locked counter.

From this revision a write transaction stamps its rows with a token that is only unique (on
PostgreSQL its transaction id plus ``log_head.seq``; see ``fle_db.backends.sql.versioned``) and
logs ``commit_log(token, instant)`` as its last statement; cuts are taken by instant. Rows stamped
with the old sequence numbers keep their meaning unchanged: each is a token whose ``commit_log``
row holds its instant, and on PostgreSQL new tokens are above them (``log_head.seq`` + a
transaction id). No table changes: the upgrade only marks the revision, so an older fle-db —
whose writers would bump ``log_head.seq``, the base of the tokens — refuses the database.

The downgrade renumbers every token in instant order (1, 2, ... by ``committed_at``; a token
pruned from the log becomes 0, "before the horizon"), so the counter model of 0005 holds again.

Revision ID: 0008_commit_tokens
Revises: 0007_read_only_login
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from fle_db.schema import HISTORY, VERSIONED_TABLES, commit_log, log_head

revision = "0008_commit_tokens"
down_revision = "0007_read_only_login"
branch_labels = None
depends_on = None

#: The old -> new token table the downgrade fills and drops.
_MAP = sa.Table(
    "fle_db_token_map",
    sa.MetaData(),
    sa.Column("old", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("new", sa.BigInteger, nullable=False),
)


def upgrade() -> None:
    """Nothing to change (see the module docstring)."""


def downgrade() -> None:
    conn = op.get_bind()
    log = conn.execute(
        sa.select(commit_log.c.seq, commit_log.c.committed_at).order_by(commit_log.c.committed_at, commit_log.c.seq)
    ).all()
    numbers = {token: n for n, (token, _) in enumerate(log, start=1)}
    _MAP.create(conn)
    try:
        if numbers:
            conn.execute(sa.insert(_MAP), [{"old": old, "new": new} for old, new in numbers.items()])
        renumbered = sa.select(_MAP.c.new).scalar_subquery()
        for table in (*VERSIONED_TABLES, *HISTORY.values()):
            columns = ["valid_from_seq", *(["valid_to_seq"] if "valid_to_seq" in table.c else [])]
            conn.execute(
                sa.update(table).values(
                    {name: sa.func.coalesce(renumbered.where(_MAP.c.old == table.c[name]), 0) for name in columns}
                )
            )
        horizon = conn.execute(sa.select(log_head.c.horizon_seq).where(log_head.c.id == 1)).scalar()
        conn.execute(sa.delete(commit_log))
        if log:
            conn.execute(sa.insert(commit_log), [{"seq": numbers[t], "committed_at": at} for t, at in log])
        conn.execute(
            sa.update(log_head)
            .where(log_head.c.id == 1)
            .values(
                seq=len(log),
                committed_at=log[-1][1] if log else log_head.c.committed_at,
                horizon_seq=numbers.get(horizon, 0),
            )
        )
    finally:
        _MAP.drop(conn)
