"""v2: replay ids, quota reservations, policy, answer pins, the membership
and asked indexes, log facts, applications, witness checkpoints and
cosignatures (SPEC §5.1–§6.3, §9, §10). Only new tables: v1's are unchanged.

A table a pre-Alembic v2 build already created is left as it is, so such a
database upgrades too (stamped at the baseline, then this revision).
The log's own step (the `v2_started` entry, backfilling the membership index
and applications) is `alliance admin db upgrade`'s, after this revision.

Revision ID: gw_0002_v2
Revises: gw_0001_v1
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "gw_0002_v2"
down_revision = "gw_0001_v1"
branch_labels = None
depends_on = None

TABLES = ("query_ids", "quota_usage", "policy", "answer_pins", "membership_index", "asked_index", "log_meta",
          "applications", "witness_checkpoints", "cosignatures")


def _absent(name: str) -> bool:
    return not sa.inspect(op.get_bind()).has_table(name)


def upgrade() -> None:
    if _absent("query_ids"):
        op.create_table(
            "query_ids",
            sa.Column("query_id", sa.String(32), primary_key=True),
            sa.Column("querier_id", sa.String(64), nullable=False),
            sa.Column("reserved_at_ms", sa.BigInteger, nullable=False),
        )
    if _absent("quota_usage"):
        op.create_table(
            "quota_usage",
            sa.Column("member_id", sa.String(64), primary_key=True),
            sa.Column("pool", sa.String(16), primary_key=True),
            sa.Column("day_start_ms", sa.BigInteger, primary_key=True, autoincrement=False),
            sa.Column("used", sa.Integer, nullable=False),
        )
    if _absent("policy"):
        op.create_table(
            "policy",
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("doc", sa.Text, nullable=False),
            sa.Column("updated_at_ms", sa.BigInteger, nullable=False),
        )
    if _absent("answer_pins"):
        op.create_table(
            "answer_pins",
            sa.Column("token_sha256", sa.LargeBinary(32), primary_key=True),
            sa.Column("members", sa.Text, nullable=False),
            sa.Column("expires_at_ms", sa.BigInteger, nullable=False),
        )
    if _absent("membership_index"):
        op.create_table(
            "membership_index",
            sa.Column("membership_seq", sa.BigInteger, primary_key=True, autoincrement=False),
            sa.Column("seq", sa.BigInteger, nullable=False, unique=True),
        )
    if _absent("asked_index"):
        op.create_table(
            "asked_index",
            sa.Column("member_id", sa.String(64), primary_key=True),
            sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
        )
    if _absent("log_meta"):
        op.create_table(
            "log_meta",
            sa.Column("key", sa.String(64), primary_key=True),
            sa.Column("value", sa.String(256), nullable=False),
        )
    if _absent("applications"):
        op.create_table(
            "applications",
            sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
            sa.Column("querier_id", sa.String(64), nullable=False),
            sa.Column("token_sha256", sa.LargeBinary(32), nullable=False),
            sa.Column("received_at_ms", sa.BigInteger, nullable=False),
        )
        op.create_index("ix_applications_token_time", "applications", ["token_sha256", "received_at_ms"])
    if _absent("witness_checkpoints"):
        op.create_table(
            "witness_checkpoints",
            sa.Column("size", sa.BigInteger, primary_key=True, autoincrement=False),
            sa.Column("note", sa.Text, nullable=False),
            sa.Column("cut_at_ms", sa.BigInteger, nullable=False),
        )
    if _absent("cosignatures"):
        op.create_table(
            "cosignatures",
            sa.Column("size", sa.BigInteger, primary_key=True, autoincrement=False),
            sa.Column("member_id", sa.String(64), primary_key=True),
            sa.Column("line", sa.Text, nullable=False),
            sa.Column("time_s", sa.BigInteger, nullable=False),
        )
        op.create_index("ix_cosignatures_member", "cosignatures", ["member_id", "size"])


def downgrade() -> None:
    for name in reversed(TABLES):
        op.drop_table(name)
