"""The gateway's database: member registry, matching-key relay (ciphertext
only), the inquiry index behind inquiries_30d and quotas, and the audit log
with its stored Merkle node hashes. Nothing here is secret: the gateway holds
no Paillier private key, no matching key and no raw ID (SPEC §1)."""
from __future__ import annotations

from pathlib import Path

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Connection,
    Engine,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    insert,
    select,
)

from alliance import migrations

metadata = MetaData()

members = Table(
    "members",
    metadata,
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
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("recipient_id", String(64), nullable=False, index=True),
    Column("sender_id", String(64), nullable=False),
    Column("share", LargeBinary, nullable=False),
    Column("created_at_ms", BigInteger, nullable=False),
)

# One row per query or precheck the gateway accepted or refused; the audit log
# is the authority, this is its index for quotas and inquiries_30d.
inquiries = Table(
    "inquiries",
    metadata,
    Column("seq", BigInteger, primary_key=True),
    Column("querier_id", String(64), nullable=False),
    Column("token_sha256", LargeBinary(32), nullable=False),
    Column("received_at_ms", BigInteger, nullable=False),
    Column("accepted", Boolean, nullable=False),
    Index("ix_inquiries_token_time", "token_sha256", "received_at_ms"),
    Index("ix_inquiries_querier_time", "querier_id", "received_at_ms"),
)

# v2 (SPEC §5.4): every query id the gateway has let past the signature check,
# reserved before the fan-out so a replay is refused on every replica.
query_ids = Table(
    "query_ids",
    metadata,
    Column("query_id", String(32), primary_key=True),
    Column("querier_id", String(64), nullable=False),
    Column("reserved_at_ms", BigInteger, nullable=False),
)

# v2 (SPEC §5.4): quota slots reserved before the fan-out, per querier, pool
# ("daily", or "monitoring" for POST_LOAN_MONITORING, §9) and Asia/Shanghai
# day; a query that reached the members keeps its slot.
quota_usage = Table(
    "quota_usage",
    metadata,
    Column("member_id", String(64), primary_key=True),
    Column("pool", String(16), primary_key=True),
    Column("day_start_ms", BigInteger, primary_key=True, autoincrement=False),
    Column("used", Integer, nullable=False),
)

# v2 (SPEC §9, §10): the alliance policy, one row; every change is also a
# logged `policy_changed` entry.
policy = Table(
    "policy",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("doc", Text, nullable=False),  # canonical JSON of alliance.policy.Policy
    Column("updated_at_ms", BigInteger, nullable=False),
)

# v2 (SPEC §10): each member's latest logged book status (the `book_status`
# entry at ``seq``), written in that entry's own transaction; what the
# `stale_book` rule reads.
book_status = Table(
    "book_status",
    metadata,
    Column("member_id", String(64), primary_key=True),
    Column("seq", BigInteger, nullable=False),
    Column("book_date", String(10), nullable=True),  # YYYY-MM-DD; null when the book holds no loans
    Column("loans", BigInteger, nullable=False),
    Column("logged_at_ms", BigInteger, nullable=False),
)

# v2 (SPEC §5.3): the set of members reports on a token may cover, written in
# the same transaction as the entry that creates or extends it.
answer_pins = Table(
    "answer_pins",
    metadata,
    Column("token_sha256", LargeBinary(32), primary_key=True),
    Column("members", Text, nullable=False),  # sorted member ids, comma-separated
    Column("expires_at_ms", BigInteger, nullable=False),
)

# v2 (SPEC §5.1): the membership feed's index — membership entry number ->
# leaf index — so members can fetch every membership entry and checkpoints
# can state how many there are ("membership <count>").
membership_index = Table(
    "membership_index",
    metadata,
    Column("membership_seq", BigInteger, primary_key=True, autoincrement=False),
    Column("seq", BigInteger, nullable=False, unique=True),
)

# v2 (SPEC §6.2): which members each query or precheck entry asked (one row
# per name in its `members_asked`), written in the entry's own transaction;
# `gateway_started` entries are indexed under "*" (never a member id). This
# is what GetQueryProofs serves a member from, and nothing else.
asked_index = Table(
    "asked_index",
    metadata,
    Column("member_id", String(64), primary_key=True),
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
)

# Facts about the log itself, e.g. the sequence number of its v2_started entry.
log_meta = Table(
    "log_meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", String(256), nullable=False),
)

# v2 (SPEC §4): accepted LOAN_APPROVAL queries and prechecks, the only ones
# inquiries_30d counts (monitoring and limit reviews are not applications).
applications = Table(
    "applications",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("querier_id", String(64), nullable=False),
    Column("token_sha256", LargeBinary(32), nullable=False),
    Column("received_at_ms", BigInteger, nullable=False),
    Index("ix_applications_token_time", "token_sha256", "received_at_ms"),
)

# v2 (SPEC §6.1): witness checkpoints the gateway cut (one per tree size: the
# log-signed note, deterministic for a size), and the members' cosignature
# lines on them (the newest per member and checkpoint).
witness_checkpoints = Table(
    "witness_checkpoints",
    metadata,
    Column("size", BigInteger, primary_key=True, autoincrement=False),
    Column("note", Text, nullable=False),
    Column("cut_at_ms", BigInteger, nullable=False),
)

cosignatures = Table(
    "cosignatures",
    metadata,
    Column("size", BigInteger, primary_key=True, autoincrement=False),
    Column("member_id", String(64), primary_key=True),
    Column("line", Text, nullable=False),
    Column("time_s", BigInteger, nullable=False),
    Index("ix_cosignatures_member", "member_id", "size"),
)

# Single row: the log's size. Appenders update it first, which serialises
# appends across processes on SQLite and PostgreSQL alike.
log_head = Table(
    "log_head",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("size", BigInteger, nullable=False),
)

log_entries = Table(
    "log_entries",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("data", LargeBinary, nullable=False),
)

# Hash of every perfect subtree: level 0 = leaf hashes (alliance.merkle).
log_nodes = Table(
    "log_nodes",
    metadata,
    Column("level", Integer, primary_key=True, autoincrement=False),
    Column("idx", BigInteger, primary_key=True, autoincrement=False),
    Column("hash", LargeBinary(32), nullable=False),
)


def _seed(conn: Connection) -> None:
    """The log's single head row (size 0 for a new log)."""
    if conn.execute(select(log_head.c.size).where(log_head.c.id == 1)).first() is None:
        conn.execute(insert(log_head).values(id=1, size=0))


# SPEC §12: the schema's versions, kept by Alembic (alliance/migrations.py,
# the environment in ./migrations). A change to the tables above needs a new
# revision there; tests/test_migrations.py fails until it has one.
SCHEMA = migrations.SchemaKind(
    name="gateway",
    script_location=Path(__file__).resolve().parent / "migrations",
    version_table="alembic_version_gateway",
    baseline="gw_0001_v1",
    head="gw_0003_book_status",  # a new revision moves this
    baseline_tables=frozenset({"members", "key_shares", "inquiries", "log_head", "log_entries", "log_nodes"}),
    upgrade_command="alliance admin db upgrade --home {home}",
    home_hint="<admin home>",
    metadata=lambda: (metadata,),
    seed=_seed,
)


def create_schema(engine: Engine, admin_home: Path | None = None) -> None:
    """A new database is created at the current schema; one at the current
    schema is used as it is; an older one is refused (SchemaOutdated: run
    `alliance admin db upgrade`, for ``admin_home`` when known). Safe when
    several gateways start at once."""
    migrations.ensure_current(engine, SCHEMA, admin_home)
