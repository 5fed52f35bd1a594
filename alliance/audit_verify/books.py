"""Book statuses and the `stale_book` rule (SPEC §10), re-derived from the
log alone (docs/audit-log.md "Book status").

A ``book_status`` entry must hold the canonical status it was signed over,
its fields copied exactly, signed by the key of the member's credential it
names, with a book date no later than the entry's day (Asia/Shanghai) plus
one. A v2 query entry states what its querier was judged by
(``querier_book``: the seq, book date and loan count of a logged status,
``max_book_age_days``, and ``judged_on``, the day it was received); that
status must be the querier's latest logged one (or one logged within the
5 s the gateway's cache may lag), the limit the logged policy's, and by them:

- an accepted query's book was not stale,
- a ``stale_book`` refusal's book was stale,
- any other refusal stating it was judged fresh (the gateway refuses
  ``stale_book`` first).

From the log's first ``book_status`` entry on, every accepted v2 query must
state ``querier_book`` (the gateway enforcing §10 states it in every entry)."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any

from alliance import book_status, log_rules, signing
from alliance.audit_verify.fields import SHANGHAI, STATE_GRACE_MS, Bad, hex_field, time_ms
from alliance.audit_verify.fields import field as entry_field
from alliance.audit_verify.membership import Membership
from alliance.audit_verify.signatures import SignatureJob
from alliance.errors import InvalidInput

if TYPE_CHECKING:
    from alliance.audit_verify.ledger import Ledger
    from alliance.audit_verify.query_entry import Query

STATUS_FRESHNESS_MS = 5 * 60 * 1000  # PostBookStatus's window (gateway/book_status_rpcs.py STATEMENT_FRESHNESS_MS)
STATED_KEYS = {"seq", "book_date", "loans", "max_book_age_days", "judged_on"}


@dataclass(frozen=True)
class LoggedStatus:
    seq: int
    time_ms: int
    book_date: date | None
    loans: int
    made_at_ms: int = 0


def shanghai_date(ms: int) -> date:
    return datetime.fromtimestamp(ms / 1000, tz=SHANGHAI).date()


def check_answer_status(body: bytes, member_id: str) -> book_status.BookStatus:
    """An answer's status must be a well-formed status of the answering member."""
    try:
        status = book_status.parse(body)
    except InvalidInput as exc:
        raise Bad(f"the book status in {member_id}'s answer is malformed: {exc}") from None
    if status.member_id != member_id:
        raise Bad(f"the book status in {member_id}'s answer names {status.member_id!r}")
    return status


class Books:
    def __init__(self, membership: Membership) -> None:
        self.membership = membership
        self.logged: dict[str, list[LoggedStatus]] = {}  # member id -> its book_status entries, in log order
        self.first_seq: int | None = None  # the log's first book_status entry: §10 is enforced from it on

    def book_status(self, seq: int, e: dict[str, Any]) -> list[SignatureJob]:
        """A ``book_status`` entry; returns its signature job."""
        member_id = entry_field(e, "member_id", str)
        member = self.membership.member(member_id)
        body, signature = hex_field(e, "body") or b"", hex_field(e, "signature") or b""
        try:
            status = book_status.parse(body)
        except InvalidInput as exc:
            raise Bad(f"the book status body is malformed: {exc}") from None
        stated = {"member_id": member_id, "credential_serial": entry_field(e, "credential_serial", int),
                  "book_date": entry_field(e, "book_date", str, nullable=True), "loans": entry_field(e, "loans", int)}
        signed = status.to_json()
        for name, value in stated.items():
            if signed[name] != value:
                raise Bad(f"{name} {value!r} is not the signed status's {signed[name]!r}")
        cred = self.membership.by_serial.get(status.credential_serial)
        if cred is None or cred.member_id != member_id:
            raise Bad(f"the book status names credential serial {status.credential_serial}, never issued to {member_id}")
        when = time_ms(e.get("time"))
        if abs(when - status.made_at_ms) > STATUS_FRESHNESS_MS + log_rules.LOCK_TIMEOUT_MS + STATE_GRACE_MS:
            # the gateway refuses a status made more than 5 minutes from its clock: an older one logged again is a replay
            raise Bad(f"the book status was made at {status.made_at_ms} ms, more than 5 minutes from the entry's time "
                      f"({when} ms): a status the gateway would have refused, or an old one logged again")
        if status.book_date is not None and status.book_date > shanghai_date(when) + timedelta(days=1):
            raise Bad(f"book date {status.book_date.isoformat()} is after the entry's day {shanghai_date(when).isoformat()}")
        if member.role != "member":
            raise Bad(f"{member_id} is not a member; only members state a book status")
        earlier = self.logged.get(member_id)
        if earlier and status.made_at_ms <= earlier[-1].made_at_ms:
            # the gateway logs a member's statuses only in the order they were made: an older one
            # logged again (even within the 5 minutes) would replace a newer book with a stale one
            raise Bad(f"the book status was made at {status.made_at_ms} ms, not after {member_id}'s status at entry "
                      f"{earlier[-1].seq} (made at {earlier[-1].made_at_ms} ms): an older status logged again")
        self.logged.setdefault(member_id, []).append(LoggedStatus(seq, when, status.book_date, status.loans, status.made_at_ms))
        if self.first_seq is None:
            self.first_seq = seq
        return [(seq, (cred.ed25519,), signing.BOOK_STATUS + body, signature, True,
                 f"the book status signature of {member_id} does not verify with its key")]

    def candidates(self, querier_id: str, received_ms: int) -> list[LoggedStatus | None]:
        """The statuses the gateway may have judged by: the latest logged
        before the grace window (None if there was none) and every later one
        logged before this entry."""
        start = received_ms - STATE_GRACE_MS
        logged = self.logged.get(querier_id, [])
        before = [s for s in logged if s.time_ms < start]
        return [before[-1] if before else None] + [s for s in logged if s.time_ms >= start]

    def judge(self, q: "Query", ledger: "Ledger") -> None:
        stated = q.querier_book
        if stated is None:
            if q.outcome == "accepted" and self.first_seq is not None:
                raise Bad("an accepted query states no querier_book although the log holds book statuses (SPEC §10)")
            return
        if set(stated) != STATED_KEYS:
            raise Bad(f"querier_book must hold exactly {sorted(STATED_KEYS)}")
        for name in ("loans", "max_book_age_days"):
            if type(stated[name]) is not int or stated[name] < 0:
                raise Bad(f"querier_book.{name} must be a non-negative integer")
        judged_on = shanghai_date(q.received_ms)
        if stated["judged_on"] != judged_on.isoformat():
            raise Bad(f"querier_book.judged_on {stated['judged_on']!r} is not the day received, {judged_on.isoformat()} (Asia/Shanghai)")
        limits = {p.max_book_age_days for p in ledger.policy_during(q.received_ms - STATE_GRACE_MS, q.received_ms)}
        if stated["max_book_age_days"] not in limits:
            raise Bad(f"querier_book.max_book_age_days {stated['max_book_age_days']} is not the logged policy's "
                      f"({', '.join(str(x) for x in sorted(limits))})")
        status = self._stated_status(q, stated)
        stale = book_status.is_stale(status, judged_on, stated["max_book_age_days"])
        if q.outcome == "accepted" and stale:
            raise Bad(f"accepted a query from {q.querier_id}, whose book was stale: "
                      + book_status.stale_message(status, judged_on, stated["max_book_age_days"]))
        if q.reason == "stale_book" and not stale:
            raise Bad(f"reason stale_book does not fit: {q.querier_id}'s logged book (dated {stated['book_date']}, "
                      f"{stated['loans']} loans) was at most {stated['max_book_age_days']} days old on {judged_on.isoformat()}")
        if q.outcome == "refused" and q.reason != "stale_book" and stale:
            raise Bad(f"refused {q.reason}, but by the book status it states {q.querier_id} was stale (stale_book comes first)")

    def _stated_status(self, q: "Query", stated: dict[str, Any]) -> book_status.BookStatus | None:
        candidates = self.candidates(q.querier_id, q.received_ms)
        seq = stated["seq"]
        if seq is not None and type(seq) is not int:
            raise Bad("querier_book.seq must be an entry number or null")
        if seq is None:
            if None not in candidates:
                raise Bad(f"querier_book states no book status, but {q.querier_id}'s status at entry "
                          f"{candidates[0].seq if candidates[0] else '?'} was logged before")
            if stated["book_date"] is not None or stated["loans"] != 0:
                raise Bad("querier_book states a book without a book status entry")
            return None
        match = [s for s in candidates if s is not None and s.seq == seq]
        if not match:
            raise Bad(f"querier_book.seq {seq!r} is not {q.querier_id}'s latest logged book status")
        s = match[0]
        if stated["book_date"] != (s.book_date.isoformat() if s.book_date else None) or stated["loans"] != s.loans:
            raise Bad(f"querier_book does not copy the book status at entry {seq}")
        return book_status.BookStatus(q.querier_id, 0, s.book_date, s.loans, 0)
