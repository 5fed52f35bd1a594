"""The member's loan book. Raw ID numbers are never stored: rows are keyed by
the subject token (HMAC under the matching key) and keep a masked ID for the
member's own operators. Every row records the matching-key epoch its token was
made with; only rows of the current epoch are ever used to answer."""
from __future__ import annotations

from datetime import date
from pathlib import Path

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Date,
    DateTime,
    Engine,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    and_,
    bindparam,
    select,
)

from alliance import db, migrations
from alliance.report import FlagFacts, LoanFacts, ScoreFacts

metadata = MetaData()

loans = Table(
    "loans",
    metadata,
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
    metadata,
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
    metadata,
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
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("kind", String(8), nullable=False),
    Column("source", String(512), nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
)

# Replay protection: a query id is answered at most once, across restarts.
seen_queries = Table(
    "seen_queries",
    metadata,
    Column("query_id", String(64), primary_key=True),
    Column("seen_at_ms", BigInteger, nullable=False, index=True),
)

# SPEC §6.2: every answer this member gave, written in the same transaction
# as its seen_queries row, until `member reconcile` finds it in the log.
answer_journal = Table(
    "answer_journal",
    metadata,
    Column("query_id", String(64), primary_key=True),
    Column("request_sha256", LargeBinary(32), nullable=False),  # SHA-256 of the signed request body
    Column("ciphertext_sha256", LargeBinary(32), nullable=False),
    Column("answered_at_ms", BigInteger, nullable=False, index=True),
)

# SPEC §6.2: log sizes reconcile observed and when (this member's clock), so a
# later run reads the log only from before its oldest unreconciled answer.
reconcile_marks = Table(
    "reconcile_marks",
    metadata,
    Column("observed_at_ms", BigInteger, primary_key=True, autoincrement=False),
    Column("tree_size", BigInteger, nullable=False),
)

# Peers' credentials pinned on first sight (SPEC §5).
pinned_credentials = Table(
    "pinned_credentials",
    metadata,
    Column("member_id", String(64), primary_key=True),
    Column("fingerprint", LargeBinary(32), nullable=False),
    Column("ed25519_public_key", LargeBinary(32), nullable=False),
    Column("serial", BigInteger, nullable=False),
    Column("credential", LargeBinary, nullable=False),
)

# What the member node raises for its staff (SPEC §5.1 own-name credentials,
# §6.1 inconsistent checkpoints, §6.2 unlogged answers, §9 alerts); see
# alliance_member.alerts. Alerts never name a querier.
alerts = Table(
    "alerts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("kind", String(48), nullable=False),
    Column("raised_at_ms", BigInteger, nullable=False, index=True),
    Column("message", String(1024), nullable=False),
    Column("details", String(8192), nullable=False),  # canonical JSON
)

# Post-loan monitoring (SPEC §9): the last report per subject, with the set
# of members whose figures it sums; a new report is compared with it only when
# that set is identical. Keyed by token and epoch (a new epoch is a new token).
monitor_reports = Table(
    "monitor_reports",
    metadata,
    Column("subject_token", LargeBinary(32), primary_key=True),
    Column("key_epoch", Integer, primary_key=True),
    Column("masked_id", String(32), nullable=False),
    Column("id_type", String(16), nullable=False),
    Column("query_id", String(64), nullable=False),
    Column("as_of", Date, nullable=False),
    Column("answer_set", String(4096), nullable=False),  # canonical JSON list of member ids
    Column("report", String(4096), nullable=False),  # canonical JSON of the §4 fields
    Column("reported_at_ms", BigInteger, nullable=False),
)

BOOK_TABLES = {"loans": loans, "flags": flags, "scores": scores}


def _member_metadata() -> tuple[MetaData, ...]:
    from alliance_member import feed  # feed's tables live beside the book

    return (metadata, feed.metadata)


# SPEC §12: the member database's versions (this file's tables and
# alliance_member.feed's), kept by Alembic (alliance/migrations.py, the
# environment in ./migrations). A change to the tables needs a new revision
# there; tests/test_migrations.py fails until it has one.
SCHEMA = migrations.SchemaKind(
    name="member",
    script_location=Path(__file__).resolve().parent / "migrations",
    version_table="alembic_version_member",
    baseline="mb_0001_v1",
    head="mb_0002_v2",  # a new revision moves this
    baseline_tables=frozenset({"loans", "flags", "scores", "import_runs", "seen_queries", "pinned_credentials"}),
    upgrade_command="alliance member db upgrade --home {home}",
    home_hint="<member home>",
    metadata=_member_metadata,
)


def create_schema(engine: Engine, home: Path | None = None) -> None:
    """A new database is created at the current schema; one at the current
    schema is used as it is; an older one is refused (SchemaOutdated: run
    `alliance member db upgrade`, for ``home`` when known)."""
    migrations.ensure_current(engine, SCHEMA, home)


def upgrade_db(home_dir: Path, db_url: str | None = None) -> migrations.UpgradeResult:
    """`alliance member db upgrade` (SPEC §12): bring the member's database to
    this release's schema; a database made by the previous release is
    stamped at the baseline first. Idempotent."""
    from alliance_member.home import MemberHome

    engine = db.make_engine(MemberHome(home_dir).db_url(db_url))
    try:
        return migrations.upgrade(engine, SCHEMA)
    finally:
        engine.dispose()


# Built once: the answer path only binds parameters (SQLAlchemy then reuses
# the compiled statements), which halves a member's time per answer.
_LOANS_OF = select(
    loans.c.status, loans.c.balance_fen, loans.c.opened_on, loans.c.overdue_days, loans.c.overdue_amount_fen
).where(and_(loans.c.subject_token == bindparam("token"), loans.c.key_epoch == bindparam("epoch")))
_FLAGS_OF = select(flags.c.flag_type, flags.c.status, flags.c.flagged_on).where(
    and_(flags.c.subject_token == bindparam("token"), flags.c.key_epoch == bindparam("epoch"))
)
_SCORE_OF = select(scores.c.score, scores.c.scored_on).where(
    and_(scores.c.subject_token == bindparam("token"), scores.c.key_epoch == bindparam("epoch"))
)


def subject_facts(
    conn: Connection, token: bytes, epoch: int
) -> tuple[list[LoanFacts], list[FlagFacts], ScoreFacts | None]:
    """Everything this member holds on one subject, from current-epoch rows."""
    params = {"token": token, "epoch": epoch}
    loan_rows = conn.execute(_LOANS_OF, params).all()
    flag_rows = conn.execute(_FLAGS_OF, params).all()
    score_row = conn.execute(_SCORE_OF, params).first()
    return (
        [LoanFacts(r.status, r.balance_fen, r.opened_on, r.overdue_days, r.overdue_amount_fen) for r in loan_rows],
        [FlagFacts(r.flag_type, r.status, r.flagged_on) for r in flag_rows],
        None if score_row is None else ScoreFacts(score_row.score, score_row.scored_on),
    )


Facts = tuple[list[LoanFacts], list[FlagFacts], ScoreFacts | None]

# A batch's subjects in three statements instead of three per subject (AnswerBatch, SPEC §8).
_TOKENS = bindparam("tokens", expanding=True)
_LOANS_OF_MANY = select(
    loans.c.subject_token, loans.c.status, loans.c.balance_fen, loans.c.opened_on, loans.c.overdue_days, loans.c.overdue_amount_fen
).where(and_(loans.c.subject_token.in_(_TOKENS), loans.c.key_epoch == bindparam("epoch")))
_FLAGS_OF_MANY = select(flags.c.subject_token, flags.c.flag_type, flags.c.status, flags.c.flagged_on).where(
    and_(flags.c.subject_token.in_(_TOKENS), flags.c.key_epoch == bindparam("epoch"))
)
_SCORES_OF_MANY = select(scores.c.subject_token, scores.c.score, scores.c.scored_on).where(
    and_(scores.c.subject_token.in_(_TOKENS), scores.c.key_epoch == bindparam("epoch"))
)


def subjects_facts(conn: Connection, tokens: list[bytes], epoch: int) -> dict[bytes, Facts]:
    """``subject_facts`` of each token, read together; every token is a key
    (an unknown subject has no rows, hence all-zero figures)."""
    distinct = sorted(set(tokens))
    if len(distinct) == 1:  # the usual batch of one: `=` statements skip the expanding IN's per-call rendering
        return {distinct[0]: subject_facts(conn, distinct[0], epoch)}
    out: dict[bytes, Facts] = {t: ([], [], None) for t in distinct}
    if not distinct:
        return out
    params = {"tokens": distinct, "epoch": epoch}
    for r in conn.execute(_LOANS_OF_MANY, params):
        out[bytes(r.subject_token)][0].append(LoanFacts(r.status, r.balance_fen, r.opened_on, r.overdue_days, r.overdue_amount_fen))
    for r in conn.execute(_FLAGS_OF_MANY, params):
        out[bytes(r.subject_token)][1].append(FlagFacts(r.flag_type, r.status, r.flagged_on))
    for r in conn.execute(_SCORES_OF_MANY, params):  # the token is the key of scores: one row at most
        token = bytes(r.subject_token)
        out[token] = (out[token][0], out[token][1], ScoreFacts(r.score, r.scored_on))
    return out


def active_balance_fen(engine: Engine, token: bytes, epoch: int, as_of: date) -> int:
    """Σ balance of ACTIVE loans opened on or before as_of: the precheck figure."""
    with engine.connect() as conn:
        loan_facts, _, _ = subject_facts(conn, token, epoch)
    return sum(l.balance_fen for l in loan_facts if l.status == "ACTIVE" and l.opened_on <= as_of)

