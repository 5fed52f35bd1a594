"""v2: the answer journal and reconcile marks (SPEC §6.2), alerts (§5.1,
§6.1, §6.2, §9), monitoring reports (§9), and the membership feed with its
state and trust roots (§5.1). Only new tables: v1's are unchanged.

A table a pre-Alembic v2 build already created is left as it is, so such a
database upgrades too (stamped at the baseline, then this revision).

Revision ID: mb_0002_v2
Revises: mb_0001_v1
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "mb_0002_v2"
down_revision = "mb_0001_v1"
branch_labels = None
depends_on = None

TABLES = ("answer_journal", "reconcile_marks", "alerts", "monitor_reports", "membership_feed", "feed_state", "trust_roots")


def _absent(name: str) -> bool:
    return not sa.inspect(op.get_bind()).has_table(name)


def upgrade() -> None:
    if _absent("answer_journal"):
        op.create_table(
            "answer_journal",
            sa.Column("query_id", sa.String(64), primary_key=True),
            sa.Column("request_sha256", sa.LargeBinary(32), nullable=False),
            sa.Column("ciphertext_sha256", sa.LargeBinary(32), nullable=False),
            sa.Column("answered_at_ms", sa.BigInteger, nullable=False),
        )
        op.create_index("ix_answer_journal_answered_at_ms", "answer_journal", ["answered_at_ms"])
    if _absent("reconcile_marks"):
        op.create_table(
            "reconcile_marks",
            sa.Column("observed_at_ms", sa.BigInteger, primary_key=True, autoincrement=False),
            sa.Column("tree_size", sa.BigInteger, nullable=False),
        )
    if _absent("alerts"):
        op.create_table(
            "alerts",
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("kind", sa.String(48), nullable=False),
            sa.Column("raised_at_ms", sa.BigInteger, nullable=False),
            sa.Column("message", sa.String(1024), nullable=False),
            sa.Column("details", sa.String(8192), nullable=False),
        )
        op.create_index("ix_alerts_raised_at_ms", "alerts", ["raised_at_ms"])
    if _absent("monitor_reports"):
        op.create_table(
            "monitor_reports",
            sa.Column("subject_token", sa.LargeBinary(32), primary_key=True),
            sa.Column("key_epoch", sa.Integer, primary_key=True),
            sa.Column("masked_id", sa.String(32), nullable=False),
            sa.Column("id_type", sa.String(16), nullable=False),
            sa.Column("query_id", sa.String(64), nullable=False),
            sa.Column("as_of", sa.Date, nullable=False),
            sa.Column("answer_set", sa.String(4096), nullable=False),
            sa.Column("report", sa.String(4096), nullable=False),
            sa.Column("reported_at_ms", sa.BigInteger, nullable=False),
        )
    if _absent("membership_feed"):
        op.create_table(
            "membership_feed",
            sa.Column("membership_seq", sa.BigInteger, primary_key=True, autoincrement=False),
            sa.Column("seq", sa.BigInteger, nullable=False, unique=True),
            sa.Column("data", sa.LargeBinary, nullable=False),
        )
    if _absent("feed_state"):
        op.create_table(
            "feed_state",
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("checkpoint", sa.Text, nullable=False),
            sa.Column("size", sa.BigInteger, nullable=False),
            sa.Column("membership_count", sa.BigInteger, nullable=False),
            sa.Column("verified_at_ms", sa.BigInteger, nullable=False),
            sa.Column("witnessed_at_ms", sa.BigInteger, nullable=True),
        )
    if _absent("trust_roots"):
        op.create_table(
            "trust_roots",
            sa.Column("member_id", sa.String(64), primary_key=True),
            sa.Column("fingerprint", sa.LargeBinary(32), primary_key=True),
            sa.Column("source", sa.String(16), nullable=False),
            sa.Column("added_at_ms", sa.BigInteger, nullable=False),
        )


def downgrade() -> None:
    for name in reversed(TABLES):
        op.drop_table(name)
