"""Red team, `alliance audit verify` (SPEC §5.4, §6.3, §10): logs a
malicious operator (log key + gateway database) writes so that the
auditor accepts a refusal that does not fit, or misses a query id used twice."""
from __future__ import annotations

from datetime import timedelta
from typing import Any

from alliance import audit_verify, book_status
from alliance_gateway.service import QueryFailure, _Context, _query_entry
from tests.alliance_fixtures import signed_query
from tests.test_audit_verify import ca, people  # noqa: F401 (fixtures)
from tests.test_audit_verify_v2 import V2LogBuilder, b, new_v2_log  # noqa: F401 (fixtures)
from tests.test_book_status import BookLogBuilder, bv  # noqa: F401 (fixture)


def _fabricated_fan_out(b: V2LogBuilder, querier: str, reason: str, **ctx_fields: Any) -> int:  # noqa: F811
    """A refused entry naming ``querier`` that shows every other member asked
    (and dropped, so no member signature is needed): what the gateway never
    logs for a request it refused before checking its signature."""
    received = b.tick()
    signed = signed_query(b.people[querier], timestamp_ms=received - 150)
    ctx = _Context(kind="query", peer_id=querier, query=signed, received_ms=received)
    ctx.asked = sorted(m for m in b.default_asked(querier, ctx))
    ctx.dropped = [{"member_id": m, "reason": "deadline_exceeded"} for m in ctx.asked]
    for name, value in ctx_fields.items():
        setattr(ctx, name, value)
    failure = QueryFailure(reason, f"refused: {reason}")
    return b.append(lambda seq, when: b.shape(_query_entry(ctx, seq, when, "refused", failure, 2)), received)


def test_an_unauthenticated_refusal_cannot_have_reached_the_members_and_spend_a_quota(b) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    """Operator. m1's daily quota is 2. The operator logs two refusals
    `unauthenticated` in m1's name (no signature needed: the reason comes
    before the signature check, and the entry holds no query id, so the
    one-entry-per-query-id rule never sees it) that list every other member
    as asked -- and so count as work that reached the members (§5.4). m1's
    first real query of the day is then refused `quota_exceeded`, and
    `audit verify` re-derives that refusal as fitting. A request refused
    before its signature was checked never reaches a member: such an entry
    must be named."""
    new_v2_log(b, quotas={"m1": 2})
    first = _fabricated_fan_out(b, "m1", "unauthenticated")
    _fabricated_fan_out(b, "m1", "unauthenticated")
    b.query("m1", asked=[], outcome="refused", reason="quota_exceeded")
    entry, message = b.bad_entry()
    assert entry == first, message


def test_a_replayed_book_status_cannot_make_a_member_stale(bv) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    """Operator. A month ago m1 posted a status (its book then dated that
    day); today it posted a fresh one. The operator logs the month-old
    signed status again, as a new `book_status` entry: it is now m1's
    "latest", m1's queries are refused `stale_book`, and `audit verify`
    accepts both the replayed entry and the refusal. The gateway itself
    refuses a status made more than 5 minutes from its clock; the auditor
    must re-derive that from the entry's time."""
    month_ago_ms = bv.clock - 30 * 86_400_000
    old_day = bv.day() - timedelta(days=30)
    m1 = bv.people["m1"]
    body, sig = book_status.sign(m1.signing_key, book_status.BookStatus("m1", m1.body.serial, old_day, 10, month_ago_ms))
    bv.book("m1", bv.day())                                   # today's, fresh
    bv.tick(audit_verify.STATE_GRACE_MS + 1000)
    replayed = bv.append(lambda seq, when: {
        "v": 2, "kind": "book_status", "seq": seq, "time": when, "member_id": "m1",
        "credential_serial": m1.body.serial, "book_date": old_day.isoformat(), "loans": 10,
        "body": body.hex(), "signature": sig.hex()})
    bv.tick(audit_verify.STATE_GRACE_MS + 1000)
    bv.query("m1", asked=[], outcome="refused", reason="stale_book", querier_book=bv.stated(replayed, old_day))
    entry, message = bv.bad_entry()
    assert entry == replayed, message


def test_an_older_book_status_logged_again_within_five_minutes_is_named(bv) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    """Operator. m1 imported a fresh book; two minutes earlier it had posted
    a status of its month-old book. Within the 5-minute window the operator
    logs that older signed status again, after the fresh one: m1 looks stale.
    The gateway logs a member's statuses in the order they were made; the
    auditor must name one that is not newer than the member's last."""
    m1 = bv.people["m1"]
    old_day = bv.day() - timedelta(days=30)
    body, sig = book_status.sign(m1.signing_key, book_status.BookStatus("m1", m1.body.serial, old_day, 10, bv.clock - 120_000))
    bv.book("m1", bv.day())
    bv.tick(1000)
    replayed = bv.append(lambda seq, when: {
        "v": 2, "kind": "book_status", "seq": seq, "time": when, "member_id": "m1",
        "credential_serial": m1.body.serial, "book_date": old_day.isoformat(), "loans": 10,
        "body": body.hex(), "signature": sig.hex()})
    entry, message = bv.bad_entry()
    assert entry == replayed and "not after" in message, message
