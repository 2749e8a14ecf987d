"""Gateway key epochs and tombstones, the replay store, random upload ids.

Revision ID: 0002
Revises: 0001

* ``gateway_keys`` is keyed by *epoch* (every key the deployment makes gets the next number; never
  reused), and the sealed record's associated data now binds key id and epoch. Records sealed by 0001
  (associated data without the epoch) cannot be re-sealed here (the migration has no KEK), so they are
  dropped: the gateway makes a fresh key when it starts, and phones holding the old key configuration
  are told ``unknown_key_id`` (with the RFC 9458 ``ohttp-key`` problem type) and fetch the new one.
* ``gateway_key_tombstones`` remembers retired (epoch, key id) pairs, so a retired record that comes
  back from a backup is refused.
* ``ohttp_replays`` holds the digest of every accepted HPKE ``enc`` until its key retires; on SQLite
  it has no rowid, so it keeps no arrival order.
* ``uploads.id`` becomes a random 63-bit number: PostgreSQL's sequence goes, and the rows already
  stored get random ids, rewritten in random order.
"""

from __future__ import annotations

import random
import secrets

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_ID_LIMIT = 2**63 - 1


def _randomise_upload_ids() -> None:
    connection = op.get_bind()
    old = [row[0] for row in connection.execute(sa.text("SELECT id FROM uploads"))]
    taken, pairs = set(old), []
    for old_id in old:
        new_id = 1 + secrets.randbelow(_ID_LIMIT)
        while new_id in taken:  # never collide with an id not yet rewritten, nor a new one
            new_id = 1 + secrets.randbelow(_ID_LIMIT)
        taken.add(new_id)
        pairs.append({"old": old_id, "new": new_id})
    # Rewritten in random order: PostgreSQL places updated rows in the order they are written.
    random.SystemRandom().shuffle(pairs)
    if pairs:
        connection.execute(sa.text("UPDATE uploads SET id = :new WHERE id = :old"), pairs)


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    op.drop_table("gateway_keys")
    op.create_table(
        "gateway_keys",
        sa.Column("epoch", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("key_id", sa.Integer(), nullable=False),
        sa.Column("record", sa.LargeBinary(), nullable=False),
        sa.Column("created_day", sa.Date(), nullable=False),
        sa.PrimaryKeyConstraint("epoch", name="pk_gateway_keys"),
        sa.UniqueConstraint("key_id", name="uq_gateway_keys_key_id"),
        sa.CheckConstraint("key_id >= 0 AND key_id <= 255", name="ck_gateway_keys_key_id_range"),
        sa.CheckConstraint("epoch >= 1", name="ck_gateway_keys_epoch_positive"),
    )
    op.create_table(
        "gateway_key_tombstones",
        sa.Column("epoch", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("key_id", sa.Integer(), nullable=False),
        sa.Column("retired_day", sa.Date(), nullable=False),
        sa.PrimaryKeyConstraint("epoch", name="pk_gateway_key_tombstones"),
    )
    op.create_table(
        "ohttp_replays",
        sa.Column("enc_digest", sa.LargeBinary(16), nullable=False),
        sa.Column("key_id", sa.Integer(), nullable=False),
        sa.Column("key_epoch", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("enc_digest", name="pk_ohttp_replays"),
        sqlite_with_rowid=False,
    )
    op.create_index("ix_ohttp_replays_key_epoch", "ohttp_replays", ["key_epoch"])
    if dialect == "postgresql":
        op.execute("ALTER TABLE uploads ALTER COLUMN id DROP DEFAULT")
        op.execute("DROP SEQUENCE IF EXISTS uploads_id_seq")
    _randomise_upload_ids()


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        # Ids stay random; new rows count up from the largest (the 0001 behaviour).
        op.execute("CREATE SEQUENCE uploads_id_seq OWNED BY uploads.id")
        op.execute("SELECT setval('uploads_id_seq', COALESCE((SELECT max(id) FROM uploads), 0) + 1, false)")
        op.execute("ALTER TABLE uploads ALTER COLUMN id SET DEFAULT nextval('uploads_id_seq')")
    op.drop_index("ix_ohttp_replays_key_epoch", table_name="ohttp_replays")
    op.drop_table("ohttp_replays")
    op.drop_table("gateway_key_tombstones")
    op.drop_table("gateway_keys")
    op.create_table(
        "gateway_keys",
        sa.Column("key_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("record", sa.LargeBinary(), nullable=False),
        sa.Column("created_day", sa.Date(), nullable=False),
        sa.Column("retired", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("key_id", name="pk_gateway_keys"),
        sa.CheckConstraint("key_id >= 0 AND key_id <= 255", name="ck_gateway_keys_key_id_range"),
    )
