"""v2 book status (SPEC §10): each member's latest logged book status, read
by the `stale_book` rule. Only a new table.

Revision ID: gw_0003_book_status
Revises: gw_0002_v2
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "gw_0003_book_status"
down_revision = "gw_0002_v2"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if not sa.inspect(op.get_bind()).has_table("book_status"):
        op.create_table(
            "book_status",
            sa.Column("member_id", sa.String(64), primary_key=True),
            sa.Column("seq", sa.BigInteger, nullable=False),
            sa.Column("book_date", sa.String(10), nullable=True),
            sa.Column("loans", sa.BigInteger, nullable=False),
            sa.Column("logged_at_ms", sa.BigInteger, nullable=False),
        )


def downgrade() -> None:
    op.drop_table("book_status")
