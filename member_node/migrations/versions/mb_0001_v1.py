"""Baseline: the member schema of the previous release (v1): the book
(loans, flags, scores), import runs, replay protection, pinned peer
credentials. Written out here, never derived from today's models, so it stays
what v1 made (tests/fixtures/v1_alliance/members/*/member.db).

Revision ID: mb_0001_v1
Revises:
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "mb_0001_v1"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "loans",
        sa.Column("loan_id", sa.String(64), primary_key=True),
        sa.Column("subject_token", sa.LargeBinary(32), nullable=False),
        sa.Column("key_epoch", sa.Integer, nullable=False),
        sa.Column("masked_id", sa.String(32), nullable=False),
        sa.Column("subject_type", sa.String(8), nullable=False),
        sa.Column("id_type", sa.String(16), nullable=False),
        sa.Column("product_type", sa.String(16), nullable=False),
        sa.Column("principal_fen", sa.BigInteger, nullable=False),
        sa.Column("balance_fen", sa.BigInteger, nullable=False),
        sa.Column("annual_rate_e4", sa.Integer, nullable=False),
        sa.Column("term_months", sa.Integer, nullable=False),
        sa.Column("repayment_method", sa.String(24), nullable=False),
        sa.Column("opened_on", sa.Date, nullable=False),
        sa.Column("due_on", sa.Date, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("overdue_days", sa.Integer, nullable=False),
        sa.Column("overdue_amount_fen", sa.BigInteger, nullable=False),
        sa.Column("guarantee_type", sa.String(16), nullable=False),
        sa.Column("updated_on", sa.Date, nullable=False),
        sa.Column("import_run", sa.Integer, nullable=False),
        sa.Column("import_line", sa.Integer, nullable=False),
    )
    op.create_index("ix_loans_subject_token", "loans", ["subject_token"])
    op.create_table(
        "flags",
        sa.Column("subject_token", sa.LargeBinary(32), primary_key=True),
        sa.Column("flag_type", sa.String(24), primary_key=True),
        sa.Column("key_epoch", sa.Integer, nullable=False),
        sa.Column("masked_id", sa.String(32), nullable=False),
        sa.Column("id_type", sa.String(16), nullable=False),
        sa.Column("flagged_on", sa.Date, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("import_run", sa.Integer, nullable=False),
        sa.Column("import_line", sa.Integer, nullable=False),
    )
    op.create_table(
        "scores",
        sa.Column("subject_token", sa.LargeBinary(32), primary_key=True),
        sa.Column("key_epoch", sa.Integer, nullable=False),
        sa.Column("masked_id", sa.String(32), nullable=False),
        sa.Column("id_type", sa.String(16), nullable=False),
        sa.Column("score", sa.Integer, nullable=False),
        sa.Column("scored_on", sa.Date, nullable=False),
        sa.Column("import_run", sa.Integer, nullable=False),
        sa.Column("import_line", sa.Integer, nullable=False),
    )
    op.create_table(
        "import_runs",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("source", sa.String(512), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "seen_queries",
        sa.Column("query_id", sa.String(64), primary_key=True),
        sa.Column("seen_at_ms", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_seen_queries_seen_at_ms", "seen_queries", ["seen_at_ms"])
    op.create_table(
        "pinned_credentials",
        sa.Column("member_id", sa.String(64), primary_key=True),
        sa.Column("fingerprint", sa.LargeBinary(32), nullable=False),
        sa.Column("ed25519_public_key", sa.LargeBinary(32), nullable=False),
        sa.Column("serial", sa.BigInteger, nullable=False),
        sa.Column("credential", sa.LargeBinary, nullable=False),
    )


def downgrade() -> None:
    for name in ("pinned_credentials", "seen_queries", "import_runs", "scores", "flags", "loans"):
        op.drop_table(name)
