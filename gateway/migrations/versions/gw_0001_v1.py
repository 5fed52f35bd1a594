"""Baseline: the gateway schema of the previous release (v1): registry, key
shares, inquiry index, audit log. Written out here, never derived from today's
models, so it stays what v1 made (tests/fixtures/v1_alliance/gateway/gateway.db).

Revision ID: gw_0001_v1
Revises:
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "gw_0001_v1"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "members",
        sa.Column("member_id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(256), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("endpoint", sa.String(256), nullable=False),
        sa.Column("credential", sa.LargeBinary, nullable=False),
        sa.Column("credential_serial", sa.BigInteger, nullable=False),
        sa.Column("fingerprint", sa.LargeBinary(32), nullable=False),
        sa.Column("ed25519_public_key", sa.LargeBinary(32), nullable=False),
        sa.Column("paillier_n", sa.LargeBinary, nullable=False),
        sa.Column("tls_cert_sha256", sa.LargeBinary(32), nullable=False),
        sa.Column("daily_quota", sa.Integer, nullable=False),
        sa.Column("updated_at_ms", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "key_shares",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("recipient_id", sa.String(64), nullable=False),
        sa.Column("sender_id", sa.String(64), nullable=False),
        sa.Column("share", sa.LargeBinary, nullable=False),
        sa.Column("created_at_ms", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_key_shares_recipient_id", "key_shares", ["recipient_id"])
    op.create_table(
        "inquiries",
        sa.Column("seq", sa.BigInteger, primary_key=True),
        sa.Column("querier_id", sa.String(64), nullable=False),
        sa.Column("token_sha256", sa.LargeBinary(32), nullable=False),
        sa.Column("received_at_ms", sa.BigInteger, nullable=False),
        sa.Column("accepted", sa.Boolean, nullable=False),
    )
    op.create_index("ix_inquiries_token_time", "inquiries", ["token_sha256", "received_at_ms"])
    op.create_index("ix_inquiries_querier_time", "inquiries", ["querier_id", "received_at_ms"])
    op.create_table(
        "log_head",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("size", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "log_entries",
        sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("data", sa.LargeBinary, nullable=False),
    )
    op.create_table(
        "log_nodes",
        sa.Column("level", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("idx", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("hash", sa.LargeBinary(32), nullable=False),
    )


def downgrade() -> None:
    for name in ("log_nodes", "log_entries", "log_head", "inquiries", "key_shares", "members"):
        op.drop_table(name)
