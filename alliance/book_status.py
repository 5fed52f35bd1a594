"""A member's book status (SPEC §10): its book date (the newest `updated_on`
among its loans, never later than its own today, so neither re-importing an
old file nor a future-dated row makes a book fresh) and its number of loans.

A status is canonical JSON (the audit log's encoding: keys sorted, no white
space, ASCII), signed with the member's Ed25519 key behind
``signing.BOOK_STATUS``:

    {"book_date": "2026-12-07", "credential_serial": 7, "format": "alliance-book-status/1",
     "loans": 1200, "made_at_ms": 1780000000000, "member_id": "ma"}

``book_date`` is null when the book holds no loans. The same bytes travel in
every answer (covered there by the answer signature, see
``signing.member_answer_message``) and in a ``book_status`` log entry.

Staleness (docs/audit-log.md "Book status"): on a day T (Asia/Shanghai), a
book is stale when it holds no loans, or when T − book date (whole calendar
days) exceeds ``max_book_age_days``. So with the default 7 a book dated
1 December may query up to and including 8 December."""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from datetime import date
from typing import Any

from alliance import audit_entry, signing
from alliance.errors import CryptoError, InvalidInput

FORMAT = "alliance-book-status/1"
MAX_BODY_BYTES = 320  # SPEC §5.4: bounded, so an answer with its status fits the 1 KiB per member of a log entry (a real one is ~150 bytes)
MAX_LOANS = 10**12
_KEYS = {"book_date", "credential_serial", "format", "loans", "made_at_ms", "member_id"}
_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}")


@dataclass(frozen=True)
class BookStatus:
    member_id: str
    credential_serial: int
    book_date: date | None
    loans: int
    made_at_ms: int

    def to_json(self) -> dict[str, Any]:
        return {"book_date": self.book_date.isoformat() if self.book_date else None,
                "credential_serial": self.credential_serial, "format": FORMAT, "loans": self.loans,
                "made_at_ms": self.made_at_ms, "member_id": self.member_id}

    def encode(self) -> bytes:
        return audit_entry.encode(self.to_json())


@functools.lru_cache(maxsize=4096)
def parse(body: bytes) -> BookStatus:
    """The exact bytes of a status → BookStatus; refuses anything that is not
    the canonical encoding of a well-formed status. Memoised: every answer
    of a member carries the same status until its next import, and the
    result is immutable."""
    data = audit_entry.parse_canonical_statement(body, what="book status", keys=_KEYS, max_bytes=MAX_BODY_BYTES,
                                                 format_=FORMAT, prefix="book status")
    for name, top in (("credential_serial", 2**63), ("made_at_ms", 2**63), ("loans", MAX_LOANS)):
        v = data[name]
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < top:
            raise InvalidInput(f"book status {name} must be a non-negative integer")
    book_date = _date(data["book_date"])
    if (book_date is None) != (data["loans"] == 0):
        raise InvalidInput("book status book_date must be null exactly when the book holds no loans")
    return BookStatus(data["member_id"], data["credential_serial"], book_date, data["loans"], data["made_at_ms"])


def _date(value: Any) -> date | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _DATE_RE.fullmatch(value):
        raise InvalidInput(f"book status book_date must be YYYY-MM-DD or null, not {value!r}")
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise InvalidInput(f"book status book_date {value!r} is not a date") from None


def sign(private_key: Any, status: BookStatus) -> tuple[bytes, bytes]:
    body = status.encode()
    return body, signing.sign(private_key, signing.BOOK_STATUS, body)


def verify(public_key: bytes, body: bytes, signature: bytes, *, what: str) -> None:
    """Raise CryptoError unless ``signature`` is the key's over ``body``."""
    signing.verify(public_key, signing.BOOK_STATUS, body, signature, what=what)


def age_days(book_date: date, today: date) -> int:
    """Whole calendar days from the book date to ``today`` (negative if later)."""
    return (today - book_date).days


def is_stale(status: BookStatus | None, today: date, max_book_age_days: int) -> bool:
    """SPEC §10: no status, no loans, or a book date more than
    ``max_book_age_days`` days before ``today``."""
    if status is None or status.loans == 0 or status.book_date is None:
        return True
    return age_days(status.book_date, today) > max_book_age_days


def stale_message(status: BookStatus | None, today: date, max_book_age_days: int) -> str:
    """The one line a refused querier reads (`stale_book`)."""
    if status is None:
        return ("no book status of this member is logged: import loans (`alliance member import --kind loans`) "
                "and keep `alliance member serve` running so the gateway learns the book's date")
    if status.loans == 0 or status.book_date is None:
        return "this member has imported no loans; only members that contribute data may query (SPEC §10)"
    since = date.fromordinal(status.book_date.toordinal() + max_book_age_days + 1)
    return (f"book is stale since {since.isoformat()}: its newest loan update is {status.book_date.isoformat()}, "
            f"{age_days(status.book_date, today)} days before {today.isoformat()} (Asia/Shanghai); "
            f"the alliance allows at most {max_book_age_days} (import a fresh loans file)")


@dataclass(frozen=True)
class Coverage:
    """SPEC §10 `coverage` of one report, over its answering members."""

    oldest_book_as_of: date | None
    stale_members: int

    def to_json(self) -> dict[str, Any]:
        return {"oldest_book_as_of": self.oldest_book_as_of.isoformat() if self.oldest_book_as_of else None,
                "stale_members": self.stale_members}


def coverage(statuses: list[BookStatus | None], reference: date, max_book_age_days: int) -> Coverage:
    """``statuses``: one per answering member (None where its answer carried
    no status). ``reference``: the report's as-of date. The oldest book date
    among them (null when none states one) and how many are stale on the
    reference date (no status or no loans counts as stale)."""
    dates = [s.book_date for s in statuses if s is not None and s.book_date is not None]
    stale = sum(1 for s in statuses if is_stale(s, reference, max_book_age_days))
    return Coverage(min(dates) if dates else None, stale)


def check_answer_status(body: bytes, member_id: str) -> BookStatus:
    """An answer's status must parse and name the answering member."""
    status = parse(body)
    if status.member_id != member_id:
        raise CryptoError(f"the book status in {member_id}'s answer names {status.member_id!r}")
    return status
