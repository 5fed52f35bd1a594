"""`PostBookStatus` and the `stale_book` rule (SPEC §10): a member's signed
book date and loan count, checked and logged as a `book_status` entry
(docs/audit-log.md), and the gateway's memory of each member's latest one.
A mixin of GatewayService.

Checked before anything is logged, like every signed member statement: the
caller is an active member presenting its registered certificate; the body
(≤ 320 bytes) is the canonical encoding of a well-formed status naming the
caller and its current credential serial, made within 5 minutes of the
gateway's clock, with a book date no later than the gateway's tomorrow
(Asia/Shanghai; a day of slack for clocks around midnight); the signature
(64 bytes) verifies with the caller's registered key; and the caller has a
statement slot left today. A refused status is not logged and changes
nothing: the member stays judged by its latest logged one."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import grpc
from sqlalchemy import Connection, Engine, insert, select, update

from alliance import audit_entry, book_status
from alliance.errors import CryptoError
from alliance.policy import Policy
from alliance.v1 import alliance_pb2 as pb
from alliance_gateway import audit_log, schema, statement_admission
from alliance_gateway.entries import QueryContext
from alliance_gateway.refusals import QueryFailure

SHANGHAI = ZoneInfo("Asia/Shanghai")
STATEMENT_FRESHNESS_MS = 5 * 60 * 1000


def shanghai_date(ms: int) -> date:
    return datetime.fromtimestamp(ms / 1000, tz=SHANGHAI).date()


@dataclass(frozen=True)
class Logged:
    """A member's latest logged status: the entry and what it states."""

    seq: int
    book_date: date | None
    loans: int

    def as_status(self, member_id: str) -> book_status.BookStatus:
        return book_status.BookStatus(member_id, 0, self.book_date, self.loans, 0)


class StaleStatus(Exception):
    """A book status not newer than the member's latest logged one."""


def record(conn: Connection, member_id: str, body: bytes, signature: bytes, status: book_status.BookStatus) -> int:
    """Log a checked status as a `book_status` entry and remember it as the
    member's latest, in the caller's transaction; returns the entry's seq.
    Raises StaleStatus, and the caller's transaction must roll back, when
    the member's latest logged status was made at the same time or later
    (a replay, or two posts crossing): checked after the append took the
    log's lock, so replicas log each member's statuses in the order made."""
    seq, _ = audit_log.append(conn, lambda s, when: {
        "v": 2, "kind": "book_status", "seq": s, "time": when, "member_id": member_id,
        "credential_serial": status.credential_serial,
        "book_date": status.book_date.isoformat() if status.book_date else None, "loans": status.loans,
        "body": body.hex(), "signature": signature.hex(),
    }, now_ms=None)  # time taken under the log's lock
    previous = conn.execute(select(schema.book_status.c.seq).where(schema.book_status.c.member_id == member_id)).scalar()
    if previous is not None:
        made = book_status.parse(bytes.fromhex(audit_entry.decode(audit_log.entry_data(conn, previous), index=previous)["body"])).made_at_ms
        if status.made_at_ms <= made:
            raise StaleStatus(f"{member_id}'s logged book status (entry {previous}) was made at {made} ms, "
                              f"not before this one ({status.made_at_ms} ms): only a newer status replaces it")
    values = {"seq": seq, "book_date": status.book_date.isoformat() if status.book_date else None,
              "loans": status.loans, "logged_at_ms": int(time.time() * 1000)}
    if conn.execute(update(schema.book_status).where(schema.book_status.c.member_id == member_id).values(**values)).rowcount == 0:
        conn.execute(insert(schema.book_status).values(member_id=member_id, **values))
    return seq


def load_all(conn: Connection) -> dict[str, Logged]:
    rows = conn.execute(select(schema.book_status)).all()
    return {r.member_id: Logged(r.seq, date.fromisoformat(r.book_date) if r.book_date else None, r.loans) for r in rows}


class BookStatusCache:
    """Every member's latest logged status, re-read at most every
    ``refresh_ms`` (another replica may have logged a newer one)."""

    def __init__(self, engine: Engine, refresh_ms: int = 1000) -> None:
        self.engine = engine
        self.refresh_s = refresh_ms / 1000
        self._lock = threading.Lock()
        self._loaded_at = float("-inf")
        self._latest: dict[str, Logged] = {}

    def get(self, member_id: str) -> Logged | None:
        with self._lock:
            if time.monotonic() - self._loaded_at >= self.refresh_s:
                with self.engine.connect() as conn:
                    self._latest = load_all(conn)
                self._loaded_at = time.monotonic()
            return self._latest.get(member_id)

    def invalidate(self) -> None:
        with self._lock:
            self._loaded_at = float("-inf")


def judge(logged: Logged | None, member_id: str, received_ms: int, policy: Policy) -> tuple[dict[str, object], str | None]:
    """The `querier_book` a v2 query entry states, and the `stale_book`
    message when the querier may not query (None when it may)."""
    today = shanghai_date(received_ms)
    stated: dict[str, object] = {
        "seq": logged.seq if logged else None,
        "book_date": logged.book_date.isoformat() if logged and logged.book_date else None,
        "loans": logged.loans if logged else 0,
        "max_book_age_days": policy.max_book_age_days,
        "judged_on": today.isoformat(),
    }
    status = logged.as_status(member_id) if logged else None
    if book_status.is_stale(status, today, policy.max_book_age_days):
        return stated, book_status.stale_message(status, today, policy.max_book_age_days)
    return stated, None


class BookStatusRpcs:
    """Needs of the host class: engine, policy, book_statuses, _require_active, _take_statement_slot, _logged, _now_ms."""

    def PostBookStatus(self, request: pb.SignedBookStatus, context: grpc.ServicerContext) -> pb.LoggedStatementResponse:
        member = self._require_active(context, ("member",), "post book statuses")  # type: ignore[attr-defined]
        status = statement_admission.admit(context, member, request, book_status.parse, what="book status", may="state only its own")
        now_ms = self._now_ms()  # type: ignore[attr-defined]
        if abs(now_ms - status.made_at_ms) > STATEMENT_FRESHNESS_MS:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "stale_timestamp: the book status was signed more than 5 minutes "
                                                            "from the gateway's clock")
        tomorrow = shanghai_date(now_ms) + timedelta(days=1)
        if status.book_date is not None and status.book_date > tomorrow:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"malformed book status: book date {status.book_date.isoformat()} is in the future "
                          f"(the gateway's date is {shanghai_date(now_ms).isoformat()}, Asia/Shanghai)")
        try:
            book_status.verify(member.ed25519_public_key, request.body, request.signature, what=f"book status of {member.member_id}")
        except CryptoError as exc:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
        self._take_statement_slot(context, member.member_id)  # type: ignore[attr-defined]
        try:
            with self.engine.begin() as conn:  # type: ignore[attr-defined]
                seq = record(conn, member.member_id, request.body, request.signature, status)
        except StaleStatus as exc:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"stale_status: {exc}")
            raise  # unreachable: abort raises
        self.book_statuses.invalidate()  # type: ignore[attr-defined]
        return self._logged(seq)  # type: ignore[attr-defined]  # MembershipRPCs: entry, inclusion proof, checkpoint

    def _check_book(self, ctx: QueryContext, member_id: str) -> None:
        """SPEC §10: only a member with a fresh, non-empty logged book may
        query; the entry states what it was judged by, fresh or not."""
        logged = self.book_statuses.get(member_id)  # type: ignore[attr-defined]
        stated, stale = judge(logged, member_id, ctx.received_ms, self.policy.get())  # type: ignore[attr-defined]
        ctx.querier_book = stated
        if stale is not None:
            raise QueryFailure("stale_book", stale)
