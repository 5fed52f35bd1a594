"""What the gateway reserves before it asks any member (SPEC §5.3, §5.4):
the query id (a replay is refused on every replica sharing the database), a
quota slot (kept whatever the outcome once members were asked), and the
answering-set pin of the subject token, settled under the log's lock."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, and_, bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError

from alliance import db, log_rules
from alliance_gateway import schema


def reservation_engine(engine: Engine) -> Engine:
    """The engine reservations commit through: visible to every replica at
    once, but not flushed to disk on their own (SQLite synchronous=NORMAL;
    PostgreSQL synchronous_commit off, see _fast). That is safe because no
    member's answer reaches anyone before the query's log entry commits
    durably, and that flush (the WAL is sequential) carries every earlier
    reservation with it: a reservation lost to a power cut belongs to a query
    nobody was answered. Saves one disk flush per reservation on the query path."""
    if engine.dialect.name == "sqlite":
        return db.make_engine(engine.url.render_as_string(hide_password=False))
    return engine


def _fast(conn: Connection) -> None:
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")


_INSERT_QUERY_ID = insert(schema.query_ids)


def reserve_query_id(engine: Engine, query_id: str, querier_id: str, now_ms: int) -> bool:
    """True when this query id is new; False when any replica saw it before."""
    try:
        with engine.begin() as conn:
            _fast(conn)
            conn.execute(_INSERT_QUERY_ID, {"query_id": query_id, "querier_id": querier_id, "reserved_at_ms": now_ms})
    except IntegrityError:
        return False
    return True


_q = schema.quota_usage.c
_QUOTA_ROW = and_(_q.member_id == bindparam("b_member"), _q.pool == bindparam("b_pool"), _q.day_start_ms == bindparam("b_day"))
_TAKE_SLOT = (update(schema.quota_usage).where(and_(_QUOTA_ROW, _q.used < bindparam("b_quota"))).values(used=_q.used + 1)
              .returning(_q.used))
_SLOTS_USED = select(_q.used).where(_QUOTA_ROW)


def reserve_quota_slot(engine: Engine, member_id: str, day_start_ms: int, daily_quota: int, pool: str = "daily") -> int | None:
    """Take one slot of the day's quota atomically; the slot number, or None
    when the quota is used up. Concurrent queries cannot overrun it: the
    conditional UPDATE is one statement, and the first insert of a day is
    guarded by the primary key."""
    key = {"b_member": member_id, "b_pool": pool, "b_day": day_start_ms}
    if daily_quota < 1:
        return None
    for _ in range(8):
        with engine.begin() as conn:
            _fast(conn)
            row = conn.execute(_TAKE_SLOT, {**key, "b_quota": daily_quota}).first()
            if row is not None:
                return int(row.used)
            used = conn.execute(_SLOTS_USED, key).scalar()
            if used is not None and used >= daily_quota:
                return None
            if used is not None:
                # The day's first row was committed by another query between
                # the UPDATE and this read (READ COMMITTED): not used up, retry.
                continue
        try:
            with engine.begin() as conn:
                _fast(conn)
                conn.execute(insert(schema.quota_usage).values(member_id=member_id, pool=pool, day_start_ms=day_start_ms, used=1))
            return 1
        except IntegrityError:
            continue  # another query took the day's first slot at the same moment
    return None


# SPEC §5.4 / property 12: signed statements (sponsorships, matching-key
# statements, disclosures) are logged on a member's word alone, so each member
# may have at most this many logged per day; beyond, they are refused unlogged.
STATEMENTS_PER_DAY = 64
STATEMENT_POOL = "statements"


def reserve_statement_slot(engine: Engine, member_id: str, now_ms: int) -> bool:
    """Take one of the member's daily statement slots (UTC days); False when used up."""
    day_start_ms = now_ms - now_ms % (24 * 3600 * 1000)
    return reserve_quota_slot(engine, member_id, day_start_ms, STATEMENTS_PER_DAY, STATEMENT_POOL) is not None


def quota_used(engine: Engine, member_id: str, day_start_ms: int, pool: str = "daily") -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(_q.used).where(
            and_(_q.member_id == member_id, _q.pool == pool, _q.day_start_ms == day_start_ms))).scalar() or 0)


@dataclass(frozen=True)
class Pin:
    members: tuple[str, ...]  # sorted; includes the querier of the first report
    expires_at_ms: int


_p = schema.answer_pins.c


_PIN_OF = select(_p.members, _p.expires_at_ms).where(_p.token_sha256 == bindparam("token"))


def live_pin(conn: Connection, token_sha256: bytes, at_ms: int) -> Pin | None:
    return _live(conn.execute(_PIN_OF, {"token": token_sha256}).first(), at_ms)


def _live(row: Any, at_ms: int) -> Pin | None:
    if row is None or at_ms >= row.expires_at_ms:
        return None
    return Pin(tuple(m for m in row.members.split(",") if m), int(row.expires_at_ms))


def read_pin(engine: Engine, token_sha256: bytes, at_ms: int) -> Pin | None:
    with engine.connect() as conn:
        return live_pin(conn, token_sha256, at_ms)


def settle_pin(conn: Connection, token_sha256: bytes, querier_id: str, answered: list[str], received_ms: int) -> tuple[Pin, bool]:
    """Under the log's lock, for a report about to be accepted: create the
    pin (answering members plus the querier) or check the report is over
    exactly the pin less its querier. Returns (pin, ok); the pin's expiry
    slides only when ok."""
    row = conn.execute(_PIN_OF, {"token": token_sha256}).first()
    pin = _live(row, received_ms)
    expires = received_ms + log_rules.PIN_MS
    if pin is None:
        pin = Pin(tuple(sorted(set(answered) | {querier_id})), expires)
        members = ",".join(pin.members)
        if row is None:  # never pinned; under the log's lock, so nobody inserts it meanwhile
            conn.execute(_INSERT_PIN, {"token_sha256": token_sha256, "members": members, "expires_at_ms": expires})
        else:  # an expired pin: a new set starts
            conn.execute(_RENEW_PIN, {"b_token": token_sha256, "b_members": members, "b_expires": expires})
        return pin, True
    if set(answered) != set(pin.members) - {querier_id}:
        return pin, False
    if expires > pin.expires_at_ms:
        conn.execute(_SLIDE_PIN, {"b_token": token_sha256, "b_expires": expires})
        pin = Pin(pin.members, expires)
    return pin, True


# Built once (the query path binds parameters only).
_RENEW_PIN = (update(schema.answer_pins).where(_p.token_sha256 == bindparam("b_token"))
              .values(members=bindparam("b_members"), expires_at_ms=bindparam("b_expires")))
_SLIDE_PIN = update(schema.answer_pins).where(_p.token_sha256 == bindparam("b_token")).values(expires_at_ms=bindparam("b_expires"))
_INSERT_PIN = insert(schema.answer_pins)
