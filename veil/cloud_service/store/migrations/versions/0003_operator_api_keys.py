"""Operator API keys: ``api_keys.operator``.

Revision ID: 0003
Revises: 0002

An operator key may publish the prototype codebook over HTTP (``PUT /v1/codebook``, e.g. from a
federated-learning server on another machine) besides calling the model routes; every other key only
calls them. The column is added with a server default of false, so every key that exists before the
upgrade stays a plain consumer key: becoming an operator takes a new key (``veil keys create
--operator``), never a migration.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("api_keys", sa.Column("operator", sa.Boolean(), server_default=sa.false(), nullable=False))


def downgrade() -> None:
    # Batch mode: SQLite before 3.35 cannot drop a column in place, so the table is copied without it.
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("operator")
