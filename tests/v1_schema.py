"""The previous release's schemas (v1, commit 80e91bf), copied verbatim from
that commit's gateway/schema.py and member_node/store.py (`git show
80e91bf:gateway/schema.py`), never from today's code. The test fixture
databases under fixtures/v1_alliance were made by that release; this copy
makes the same schema on PostgreSQL (tests/test_migrations.py checks it
equals the fixture files' schema) and loads their rows into it."""
from __future__ import annotations

import shutil
from pathlib import Path

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    create_engine,
    insert,
    select,
)
from sqlalchemy.engine import make_url

from alliance.db import normalise_url

FIXTURE = Path(__file__).parent / "fixtures" / "v1_alliance"
GATEWAY_DB = FIXTURE / "gateway" / "gateway.db"
MEMBER_DB = FIXTURE / "members" / "lender-a" / "member.db"

gateway_metadata = MetaData()
member_metadata = MetaData()

# -- gateway/schema.py at 80e91bf ----------------------------------------------

members = Table(
    "members",
    gateway_metadata,
    Column("member_id", String(64), primary_key=True),
    Column("name", String(256), nullable=False),
    Column("role", String(16), nullable=False),  # member | auditor
    Column("status", String(16), nullable=False),  # active | suspended | revoked
    Column("endpoint", String(256), nullable=False),
    Column("credential", LargeBinary, nullable=False),
    Column("credential_serial", BigInteger, nullable=False),
    Column("fingerprint", LargeBinary(32), nullable=False),
    Column("ed25519_public_key", LargeBinary(32), nullable=False),
    Column("paillier_n", LargeBinary, nullable=False),
    Column("tls_cert_sha256", LargeBinary(32), nullable=False),
    Column("daily_quota", Integer, nullable=False),
    Column("updated_at_ms", BigInteger, nullable=False),
)

key_shares = Table(
    "key_shares",
    gateway_metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("recipient_id", String(64), nullable=False, index=True),
    Column("sender_id", String(64), nullable=False),
    Column("share", LargeBinary, nullable=False),
    Column("created_at_ms", BigInteger, nullable=False),
)

inquiries = Table(
    "inquiries",
    gateway_metadata,
    Column("seq", BigInteger, primary_key=True),
    Column("querier_id", String(64), nullable=False),
    Column("token_sha256", LargeBinary(32), nullable=False),
    Column("received_at_ms", BigInteger, nullable=False),
    Column("accepted", Boolean, nullable=False),
    Index("ix_inquiries_token_time", "token_sha256", "received_at_ms"),
    Index("ix_inquiries_querier_time", "querier_id", "received_at_ms"),
)

log_head = Table(
    "log_head",
    gateway_metadata,
    Column("id", Integer, primary_key=True),
    Column("size", BigInteger, nullable=False),
)

log_entries = Table(
    "log_entries",
    gateway_metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("data", LargeBinary, nullable=False),
)

log_nodes = Table(
    "log_nodes",
    gateway_metadata,
    Column("level", Integer, primary_key=True, autoincrement=False),
    Column("idx", BigInteger, primary_key=True, autoincrement=False),
    Column("hash", LargeBinary(32), nullable=False),
)

# -- member_node/store.py at 80e91bf -------------------------------------------

loans = Table(
    "loans",
    member_metadata,
    Column("loan_id", String(64), primary_key=True),
    Column("subject_token", LargeBinary(32), nullable=False, index=True),
    Column("key_epoch", Integer, nullable=False),
    Column("masked_id", String(32), nullable=False),
    Column("subject_type", String(8), nullable=False),
    Column("id_type", String(16), nullable=False),
    Column("product_type", String(16), nullable=False),
    Column("principal_fen", BigInteger, nullable=False),
    Column("balance_fen", BigInteger, nullable=False),
    Column("annual_rate_e4", Integer, nullable=False),
    Column("term_months", Integer, nullable=False),
    Column("repayment_method", String(24), nullable=False),
    Column("opened_on", Date, nullable=False),
    Column("due_on", Date, nullable=False),
    Column("status", String(16), nullable=False),
    Column("overdue_days", Integer, nullable=False),
    Column("overdue_amount_fen", BigInteger, nullable=False),
    Column("guarantee_type", String(16), nullable=False),
    Column("updated_on", Date, nullable=False),
    # Not indexed on purpose: an index here lures SQLite's planner away from the
    # primary key in the importer's duplicate check, making imports quadratic.
    Column("import_run", Integer, nullable=False),
    Column("import_line", Integer, nullable=False),
)

flags = Table(
    "flags",
    member_metadata,
    Column("subject_token", LargeBinary(32), primary_key=True),
    Column("flag_type", String(24), primary_key=True),
    Column("key_epoch", Integer, nullable=False),
    Column("masked_id", String(32), nullable=False),
    Column("id_type", String(16), nullable=False),
    Column("flagged_on", Date, nullable=False),
    Column("status", String(16), nullable=False),
    Column("import_run", Integer, nullable=False),
    Column("import_line", Integer, nullable=False),
)

scores = Table(
    "scores",
    member_metadata,
    Column("subject_token", LargeBinary(32), primary_key=True),
    Column("key_epoch", Integer, nullable=False),
    Column("masked_id", String(32), nullable=False),
    Column("id_type", String(16), nullable=False),
    Column("score", Integer, nullable=False),
    Column("scored_on", Date, nullable=False),
    Column("import_run", Integer, nullable=False),
    Column("import_line", Integer, nullable=False),
)

import_runs = Table(
    "import_runs",
    member_metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("kind", String(8), nullable=False),
    Column("source", String(512), nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
)

seen_queries = Table(
    "seen_queries",
    member_metadata,
    Column("query_id", String(64), primary_key=True),
    Column("seen_at_ms", BigInteger, nullable=False, index=True),
)

pinned_credentials = Table(
    "pinned_credentials",
    member_metadata,
    Column("member_id", String(64), primary_key=True),
    Column("fingerprint", LargeBinary(32), nullable=False),
    Column("ed25519_public_key", LargeBinary(32), nullable=False),
    Column("serial", BigInteger, nullable=False),
    Column("credential", LargeBinary, nullable=False),
)


def make_v1_database(url: str, kind: str) -> dict[str, int]:
    """A database at the previous release's schema holding the fixture's rows
    (SQLite: the fixture file itself, made by v1; PostgreSQL: the v1 tables,
    then every row copied). Returns the row count of every table."""
    source = GATEWAY_DB if kind == "gateway" else MEMBER_DB
    md = gateway_metadata if kind == "gateway" else member_metadata
    src = create_engine(f"sqlite:///{source}")
    with src.connect() as conn:
        rows = {name: [r._asdict() for r in conn.execute(select(t))] for name, t in md.tables.items()}
    src.dispose()
    target = make_url(url)
    if target.get_backend_name() == "sqlite":
        shutil.copyfile(source, target.database)
    else:
        engine = create_engine(normalise_url(url))
        md.create_all(engine)
        with engine.begin() as conn:
            for name, table in md.tables.items():
                if rows[name]:
                    conn.execute(insert(table), rows[name])
        engine.dispose()
    return {name: len(r) for name, r in rows.items()}
