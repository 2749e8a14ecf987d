"""Alembic environment: runs on the connection handed over by ``migrate`` (never on a URL of its own).

``migrate`` opens the transaction and takes the migration lock before Alembic starts, so Alembic
sees an external transaction and runs every revision inside it.
"""

from __future__ import annotations

from alembic import context

from veil.cloud_service.store.tables import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through veil.cloud_service.store.db.migrate(engine)")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    # SQLite cannot ALTER most things in place; batch mode copies the table instead.
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
