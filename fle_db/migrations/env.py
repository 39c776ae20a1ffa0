"""Alembic environment: runs on the connection fle-db passes in; no logging configuration."""

from __future__ import annotations

from alembic import context

from fle_db.schema import VERSION_TABLE, metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("fle-db migrations run through DatabaseClient.migrate() or `fle-db migrate`")

context.configure(
    connection=connection,
    target_metadata=metadata,
    version_table=VERSION_TABLE,
    render_as_batch=True,
    transactional_ddl=True,
)
with context.begin_transaction():
    context.run_migrations()
