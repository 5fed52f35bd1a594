"""The fields of a query or precheck entry, type-checked, and the
consistency of its fan-out (who was asked, who answered, who was dropped)."""
from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import Any, cast

from alliance.audit_verify.fields import (
    STATE_GRACE_MS,
    Bad,
    field,
    hex_field,
    member_ids,
    utc_timestamp,
)
from alliance.audit_verify.v2_rules import (
    FIELD_BOUNDS,
    EntryRules,
    Oversized,
    Rules,
    parse_answer_set,
    parse_entry_rules,
    parse_oversized,
)

COPIED_FIELDS = ("query_id", "subject_token_sha256", "purpose", "consent_id", "consent_sha256")


@dataclass
class Query:
    """The fields of a query/precheck entry, type-checked and decoded."""

    seq: int
    kind: str
    received_ms: int
    querier_id: str
    body_bytes: bytes
    signature: bytes
    asked: list[str]
    answered: list[str]
    answers: list[tuple[str, bytes, bytes, bytes]]  # (member id, ciphertext SHA-256, signature, book status or b"")
    dropped: list[str]
    k_min: int
    inquiries_30d: int
    outcome: str
    reason: str | None
    copies: dict[str, Any]
    rules: EntryRules | None = None  # v2 entries only, as are the fields below
    oversized: list[Oversized] = dataclass_field(default_factory=list)
    answer_set: tuple[str, ...] | None = None
    querier_book: dict[str, Any] | None = None  # SPEC §10: what the querier was judged by (books.py checks it)

    @property
    def v2(self) -> bool:
        return self.rules is not None

    @property
    def window_start(self) -> int:
        return self.received_ms - STATE_GRACE_MS


def parse_query(seq: int, e: dict[str, Any], started: Rules | None = None) -> Query:
    """``started``: the rules of the log's v2_started entry, for a v2 entry."""
    received = field(e, "received_at_ms", int)
    if e.get("time") != utc_timestamp(received):
        raise Bad(f"time {e.get('time')!r} is not the receipt time {utc_timestamp(received)} (received_at_ms)")
    answers = []
    for a in field(e, "answers", list):  # the bulk of an entry: checked inline
        if type(a) is not dict or type(a.get("member_id")) is not str:
            raise Bad("an answer is not an object naming its member")
        status = hex_field(a, "book_status") if "book_status" in a else b""  # SPEC §10, v2 answers
        answers.append((a["member_id"], cast(bytes, hex_field(a, "ciphertext_sha256", size=32)), cast(bytes, hex_field(a, "signature")),
                        status or b""))
    dropped = []
    for d in field(e, "dropped", list):
        if not isinstance(d, dict):
            raise Bad("a dropped member is not an object")
        dropped.append(field(d, "member_id", str))
    outcome = field(e, "outcome", str)
    if outcome not in ("accepted", "refused"):
        raise Bad(f"outcome {outcome!r} is neither accepted nor refused")
    body, signature, v2_fields = _request(e, started)
    q = Query(
        seq=seq, kind=e["kind"], received_ms=received, querier_id=field(e, "querier_id", str),
        body_bytes=body, signature=signature,
        asked=member_ids(e, "members_asked"), answered=member_ids(e, "members_answered"), answers=answers,
        dropped=dropped, k_min=field(e, "k_min", int), inquiries_30d=field(e, "inquiries_30d", int), outcome=outcome,
        reason=field(e, "reason", str, nullable=True), copies={name: e.get(name) for name in COPIED_FIELDS}, **v2_fields,
    )
    field(e, "detail", str, nullable=True)
    return q


def _request(e: dict[str, Any], started: Rules | None) -> tuple[bytes, bytes, dict[str, Any]]:
    """The request body and signature, and for a v2 entry its rules,
    oversized items and answer set. A v2 field over its bound is not logged
    (null) and is named in ``oversized`` instead; one within it is."""
    if started is None:
        return hex_field(e, "request_body") or b"", hex_field(e, "request_signature") or b"", {}
    oversized = parse_oversized(e)
    listed = {item.field for item in oversized}
    logged = {}
    for name in ("request_body", "request_signature"):
        data = hex_field(e, name, nullable=name in listed)
        if data is not None:
            if name in listed:
                raise Bad(f"{name} is logged although it is listed as oversized")
            shortest, longest = FIELD_BOUNDS[name]
            if not shortest <= len(data) <= longest:
                raise Bad(f"{name} of {len(data)} bytes is over its bound, yet logged in full")
        logged[name] = data or b""
    fields = {"rules": parse_entry_rules(e, started), "oversized": oversized, "answer_set": parse_answer_set(e),
              "querier_book": field(e, "querier_book", dict, nullable=True) if "querier_book" in e else None}
    return logged["request_body"], logged["request_signature"], fields


def check_fan_out(q: Query) -> None:
    """Who was asked, who answered, who was dropped: one consistent story."""
    if q.asked != sorted(q.asked):
        raise Bad("members_asked is not sorted")
    if q.querier_id in q.asked:
        raise Bad(f"the querier {q.querier_id} was asked about its own query")
    if q.answered != [a[0] for a in q.answers]:
        raise Bad("members_answered does not list the members of answers, in order")
    if len(set(q.dropped)) != len(q.dropped):
        raise Bad("a member is dropped twice")
    if not set(q.answered) <= set(q.asked):
        raise Bad(f"{', '.join(sorted(set(q.answered) - set(q.asked)))} answered without being asked")
    if set(q.answered) & set(q.dropped):
        raise Bad(f"{', '.join(sorted(set(q.answered) & set(q.dropped)))} both answered and dropped")
    if q.reason == "too_few_members" or not q.asked:
        if q.answered or q.dropped:
            raise Bad("answers or drops recorded for a query that was never sent to members")
    elif set(q.answered) | set(q.dropped) != set(q.asked):
        missing = set(q.asked) - set(q.answered) - set(q.dropped)
        raise Bad(f"asked member(s) {', '.join(sorted(missing))} neither answered nor were dropped")
