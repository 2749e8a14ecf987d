"""Initial schema: uploads, api_keys, gateway_keys, training_runs.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# Frozen copies of the values in tables.py: a migration must not change when the ORM later does.
_TASKS = "task IN ('classification', 'next_word')"
_STATUSES = "status IN ('queued', 'running', 'succeeded', 'failed')"
_BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "uploads",
        sa.Column("id", _BIG_ID, nullable=False),
        sa.Column("idempotency_key", sa.String(128), nullable=False),
        sa.Column("task", sa.String(32), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("label", sa.String(256), nullable=True),
        sa.Column("embedding", sa.LargeBinary(), nullable=True),
        sa.Column("n_tokens", sa.Integer(), nullable=True),
        sa.Column("hidden", sa.Integer(), nullable=True),
        sa.Column("model", sa.String(256), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_uploads"),
        sa.UniqueConstraint("idempotency_key", name="uq_uploads_idempotency_key"),
        sa.CheckConstraint(_TASKS, name="ck_uploads_task"),
        sa.CheckConstraint(
            "(embedding IS NULL AND n_tokens IS NULL AND hidden IS NULL) OR "
            "(embedding IS NOT NULL AND n_tokens >= 1 AND hidden >= 1)",
            name="ck_uploads_embedding_shape",
        ),
    )
    op.create_index("ix_uploads_task_model", "uploads", ["task", "model"])

    op.create_table(
        "api_keys",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("prefix", sa.String(8), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("label", sa.String(256), nullable=False),
        sa.Column("created_day", sa.Date(), nullable=False),
        sa.Column("revoked", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_api_keys"),
        sa.UniqueConstraint("prefix", name="uq_api_keys_prefix"),
    )

    op.create_table(
        "gateway_keys",
        sa.Column("key_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("record", sa.LargeBinary(), nullable=False),
        sa.Column("created_day", sa.Date(), nullable=False),
        sa.Column("retired", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("key_id", name="pk_gateway_keys"),
        sa.CheckConstraint("key_id >= 0 AND key_id <= 255", name="ck_gateway_keys_key_id_range"),
    )

    op.create_table(
        "training_runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_day", sa.Date(), nullable=False),
        sa.Column("config", sa.Text(), nullable=False),
        sa.Column("metrics", sa.Text(), nullable=True),
        sa.Column("checkpoint", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_training_runs"),
        sa.CheckConstraint(_STATUSES, name="ck_training_runs_status"),
    )
    op.create_index("ix_training_runs_kind_status", "training_runs", ["kind", "status"])


def downgrade() -> None:
    op.drop_index("ix_training_runs_kind_status", table_name="training_runs")
    op.drop_table("training_runs")
    op.drop_table("gateway_keys")
    op.drop_table("api_keys")
    op.drop_index("ix_uploads_task_model", table_name="uploads")
    op.drop_table("uploads")
