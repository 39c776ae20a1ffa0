"""The SELECT-only login ``execute_query`` runs as on PostgreSQL and MySQL/MariaDB.

Creates the login derived from the database (name and password: ``fle_db.backends.readonly``)
with SELECT on this database only, where the migrating user may create logins; otherwise logs a
warning and changes nothing (``execute_query`` then names the GRANTs to run, or the user
configures ``read_only_url``). A re-created database of the same name gets its login's password
reset. SQLite: nothing (read-only SQL runs on a ``query_only`` connection with an authorizer).
No table changes.

Revision ID: 0007_read_only_login
Revises: 0006_search_tree
"""

from __future__ import annotations

from alembic import op

from fle_db.backends import readonly

revision = "0007_read_only_login"
down_revision = "0006_search_tree"
branch_labels = None
depends_on = None


def upgrade() -> None:
    readonly.create_login(op.get_bind())


def downgrade() -> None:
    readonly.drop_login(op.get_bind())
