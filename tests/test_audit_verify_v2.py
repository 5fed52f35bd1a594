"""Version 2 audit entries (docs/audit-log.md "Version 2 entries"; SPEC §5.3,
§5.4, §6.3, §6.4), verified by ``alliance.audit_verify``.

The gateway writes v2 entries in a later change; until then these logs are
built here by a small builder that follows the doc exactly: the gateway's
own v1 entry (``service._query_entry``, appended with ``audit_log.append``)
plus ``"v": 2``, ``rules``, ``oversized`` and ``answer_set``, with the
answering-set pins replayed as the doc says. Every rule has a test that
goes red when the rule is removed from the verifier."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

from sqlalchemy import insert

from alliance import audit_entry, audit_verify, protocol
from alliance.v1 import alliance_pb2 as pb
from alliance_gateway import audit_log, schema
from alliance_gateway.service import _Context
from tests.alliance_fixtures import EnrolledMember, LocalCA, signed_query
from tests.test_audit_verify import MEMBERS, LogBuilder, _subject, _unsigned_query, ca, people, standard_log  # noqa: F401

DAY_MS = 86_400_000
RULES = {"freshness_ms": 60_000, "quota": "fanned_out", "deadline_ms": 2_000, "lock_timeout_ms": 5_000, "pin_ms": DAY_MS}
KEEP = object()  # answer_set: what the doc says the gateway writes


class V2LogBuilder(LogBuilder):
    """Writes v2 entries as docs/audit-log.md describes them."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.pins: dict[str, tuple[tuple[str, ...], int]] = {}  # token hex -> (P, expiry)

    def start_v2(self, rules: dict[str, Any] | None = None, *, version: int = 2) -> int:
        """As ``audit_log.start_v2`` does, with chosen rules: the entry, and the
        log marked version 2 (its checkpoints then carry ``membership <count>``)."""
        self.version = 2
        seq = self.append(lambda seq, when: {"v": version, "kind": "v2_started", "seq": seq, "time": when,
                                             "rules": dict(rules or RULES)})
        with self.engine.begin() as conn:
            if audit_log.v2_started_seq(conn) is None:
                conn.execute(insert(schema.log_meta).values(key=audit_log.V2_STARTED_KEY, value=str(seq)))
        return seq

    def suppressed(self, peer_id: str, count: int, first_ms: int, last_ms: int, role: str = "member") -> int:
        return self.append(lambda seq, when: {"v": 2, "kind": "refusals_suppressed", "seq": seq, "time": when,
                                              "peer_id": peer_id, "role": role, "count": count,
                                              "first_ms": first_ms, "last_ms": last_ms})

    def live_pin(self, token: str | None, at_ms: int) -> tuple[str, ...] | None:
        pin = self.pins.get(token) if token else None
        return pin[0] if pin is not None and at_ms < pin[1] else None

    def default_asked(self, querier: str, ctx: _Context) -> list[str]:
        """While a pin is live the gateway asks P less the querier only (§5.3)."""
        pinned = self.live_pin(ctx.body.subject_token_sha256.hex(), ctx.received_ms) if ctx.body and self.version == 2 else None
        everyone = super().default_asked(querier, ctx)
        return everyone if pinned is None else [m for m in pinned if m != querier and m in everyone]

    def shape(self, entry: dict[str, Any], *, answer_set: Any = KEEP, oversized: list[dict[str, Any]] | None = None,
              rules: dict[str, Any] | None = None, pad: int = 0) -> dict[str, Any]:
        if self.version == 1:
            return entry
        entry["v"] = 2
        entry["rules"] = rules or {k: RULES[k] for k in ("freshness_ms", "quota", "deadline_ms")}
        entry["oversized"] = oversized or []
        for item in entry["oversized"]:
            if item["field"] in entry:
                entry[item["field"]] = None
        token, received = entry["subject_token_sha256"], entry["received_at_ms"]
        pinned = self.live_pin(token, received)
        if entry["outcome"] == "accepted":
            members = pinned or tuple(sorted({*entry["members_answered"], entry["querier_id"]}))
            expiry = max(self.pins.get(token, ((), 0))[1] if pinned else 0, received + RULES["pin_ms"])
            self.pins[token] = (members, expiry)
            pinned = members
        elif entry["reason"] != "answer_set_changed":
            pinned = None  # a refusal that never got as far as the pin
        entry["answer_set"] = (list(pinned) if pinned is not None else None) if answer_set is KEEP else answer_set
        if pad:
            entry["padding"] = "x" * pad
        return entry

    def verify(self, **kwargs: Any) -> audit_verify.VerifyResult:
        kwargs.setdefault("now_ms", self.clock)
        return super().verify(**kwargs)

    def bad_entry(self, **kwargs: Any) -> tuple[int | None, str]:
        kwargs.setdefault("now_ms", self.clock)
        return super().bad_entry(**kwargs)


@pytest.fixture
def b(tmp_path: Path, ca: LocalCA, people: dict[str, EnrolledMember]) -> V2LogBuilder:  # noqa: F811
    return V2LogBuilder(tmp_path / "gateway.db", ca, people)


def new_v2_log(b: V2LogBuilder, quotas: dict[str, int] | None = None) -> V2LogBuilder:
    """A new v2 log: v2_started is entry 0, then every member issued."""
    b.start_v2()
    for m in (*MEMBERS, "aud"):
        b.issue(b.people[m], daily_quota=(quotas or {}).get(m, 1000))
    b.tick(audit_verify.STATE_GRACE_MS + 1000)  # past the registry's grace: every member must be asked from now on
    return b


@pytest.fixture
def v2(b: V2LogBuilder) -> V2LogBuilder:
    return new_v2_log(b)


SUBJECT = _subject(4242)


def _reissue(b: V2LogBuilder, querier: str, original: pb.SignedQuery, **kwargs: Any) -> int:
    """The same signed request logged again (a replay, or a duplicate)."""
    return b.query(querier, signed=original, **kwargs)


def _fresh(b: V2LogBuilder, querier: str, subject: str | None = None) -> pb.SignedQuery:
    return signed_query(b.people[querier], timestamp_ms=b.clock + 1000 - 150, subject=("RESIDENT_ID", subject or SUBJECT))


# --------------------------------------------------------------------------
# Versions


def test_a_v1_log_followed_by_v2_started_and_v2_entries_verifies(b: V2LogBuilder) -> None:
    s = standard_log(b)
    started = b.start_v2()
    assert started == s.last + 1
    b.set_quota("m3", 10)
    b.query("m3", subject=SUBJECT)
    b.query("m2", subject=SUBJECT)  # over P less m2
    b.query("m4", asked=[], outcome="refused", reason="stale_timestamp",
            signed=_unsigned_query(b.people["m4"], b.clock + 1000 - 90_000))  # 90 s: stale under v2's 60 s
    b.suppressed("m4", 12, b.clock - 50_000, b.clock - 20_000)
    b.set_status("m4", "member_suspended")
    result = b.verify()
    assert result.entries == b.size() and result.kinds["v2_started"] == 1 and result.kinds["refusals_suppressed"] == 1
    assert result.refusals["stale_timestamp"] == 2 and result.suppressed_refusals == {"m4": 12}
    assert result.to_json()["suppressed_refusals"] == {"m4": 12}
    assert audit_entry.decode(b.data(started), index=started)["v"] == 2


def test_a_v1_entry_after_v2_started_is_named(v2: V2LogBuilder) -> None:
    v2.version = 1  # a v1 gateway still writing after the upgrade
    bad = v2.set_quota("m1", 3)
    entry, message = v2.bad_entry()
    assert entry == bad and '"v": 2' in message


def test_a_v2_entry_before_v2_started_is_named(b: V2LogBuilder) -> None:
    b.issue(b.people["m1"])
    b.version = 2
    bad = b.issue(b.people["m2"])
    entry, message = b.bad_entry()
    assert entry == bad and "before the log's v2_started" in message


def test_a_second_v2_started_and_one_without_v2_are_named(v2: V2LogBuilder, tmp_path: Path) -> None:
    bad = v2.start_v2()
    entry, message = v2.bad_entry()
    assert entry == bad and "second v2_started" in message
    other = V2LogBuilder(tmp_path / "other.db", v2.ca, v2.people)
    other.start_v2(version=1)
    entry, message = other.bad_entry()
    assert entry == 0 and '"v": 2' in message


@pytest.mark.parametrize(("key", "value"), [("quota", "accepted"), ("freshness_ms", 300_000), ("pin_ms", 3_600_000)])
def test_v2_started_rules_outside_the_spec_are_named(b: V2LogBuilder, key: str, value: Any) -> None:
    b.start_v2({**RULES, key: value})
    entry, message = b.bad_entry()
    assert entry == 0 and key in message


def test_an_entry_stating_another_freshness_than_the_log_is_named(v2: V2LogBuilder) -> None:
    bad = v2.query("m1", rules={"freshness_ms": 300_000, "quota": "fanned_out", "deadline_ms": 2_000})
    entry, message = v2.bad_entry()
    assert entry == bad and "freshness_ms" in message


# --------------------------------------------------------------------------
# Freshness under rules.freshness_ms


def test_stale_timestamp_uses_the_stated_freshness(v2: V2LogBuilder) -> None:
    stale = _unsigned_query(v2.people["m1"], v2.clock + 1000 - 90_000)  # stale at 60 s, fresh at 5 minutes
    v2.query("m1", signed=stale, asked=[], outcome="refused", reason="stale_timestamp")
    assert v2.verify().refusals == {"stale_timestamp": 1}
    fresh = _unsigned_query(v2.people["m1"], v2.clock + 1000 - 30_000)
    bad = v2.query("m1", signed=fresh, asked=[], outcome="refused", reason="stale_timestamp")
    entry, message = v2.bad_entry()
    assert entry == bad and "stale_timestamp does not fit" in message


def test_an_accepted_request_outside_the_stated_freshness_is_named(v2: V2LogBuilder) -> None:
    bad = v2.query("m1", signed=_unsigned_query(v2.people["m1"], v2.clock + 1000 - 90_000))
    entry, message = v2.bad_entry()
    assert entry == bad and "freshness_ms" in message


# --------------------------------------------------------------------------
# Query ids: one use each; replays need an original


def test_a_query_id_accepted_twice_is_named(v2: V2LogBuilder) -> None:
    original = _fresh(v2, "m1")
    v2.query("m1", signed=original)
    bad = _reissue(v2, "m1", original)  # same signed request, same pin: only the query id shows it
    entry, message = v2.bad_entry()
    assert entry == bad and "query id" in message and "already" in message


def test_a_replay_refusal_with_a_genuine_original_verifies_before_or_after_it(v2: V2LogBuilder) -> None:
    original = _fresh(v2, "m1")
    v2.query("m1", signed=original)
    _reissue(v2, "m1", original, asked=[], outcome="refused", reason="replayed_query_id")
    early = _fresh(v2, "m2", _subject(777))
    _reissue(v2, "m2", early, asked=[], outcome="refused", reason="replayed_query_id")  # the other replica's entry ...
    v2.query("m2", signed=early)  # ... is logged after it
    result = v2.verify()
    assert result.refusals == {"replayed_query_id": 2} and result.unverified_refusals == {}


def test_a_replay_refusal_without_any_original_is_reported_unverified(v2: V2LogBuilder) -> None:
    """SPEC §12: a replica SIGKILLed after reserving a query id but before
    logging its entry leaves no original; the client's retry on another
    replica is refused as a replay. Never fanned out, so it hides no answer:
    accepted as stated and reported, not a broken log."""
    v2.query("m1", asked=[], outcome="refused", reason="replayed_query_id")
    v2.query("m2")
    result = v2.verify()
    assert result.refusals == {"replayed_query_id": 1} and result.unverified_refusals == {"replayed_query_id": 1}


def test_a_replay_refusal_that_reached_the_members_is_named(v2: V2LogBuilder) -> None:
    original = _fresh(v2, "m1")
    v2.query("m1", signed=original)
    bad = _reissue(v2, "m1", original, answer=(), outcome="refused", reason="replayed_query_id")
    entry, message = v2.bad_entry()
    assert entry == bad


def test_a_replay_refusal_in_a_v1_entry_is_named(b: V2LogBuilder) -> None:
    for m in MEMBERS:
        b.issue(b.people[m])
    original = _fresh(b, "m1")
    b.query("m1", signed=original)
    bad = _reissue(b, "m1", original, asked=[], outcome="refused", reason="replayed_query_id")
    entry, message = b.bad_entry()
    assert entry == bad and "version 1" in message


# --------------------------------------------------------------------------
# Answering-set pins (§5.3)


def test_reports_on_a_pinned_token_are_over_the_pin_less_their_querier(v2: V2LogBuilder) -> None:
    first = v2.query("m1", subject=SUBJECT, answer=("m2", "m3"))  # m4 too slow: P = m1, m2, m3
    assert v2.entry(first)["answer_set"] == ["m1", "m2", "m3"]
    second = v2.query("m2", subject=SUBJECT)  # asks P less m2 = m1, m3; m4 is outside P
    assert v2.entry(second)["members_asked"] == ["m1", "m3"]
    precheck = v2.query("m3", kind="precheck", subject=SUBJECT)
    assert v2.entry(precheck)["members_answered"] == ["m1", "m2"]
    assert v2.verify().accepted == 3


def test_an_accepted_report_over_another_set_than_the_pin_is_named(v2: V2LogBuilder) -> None:
    v2.query("m1", subject=SUBJECT, answer=("m2", "m3"))  # P = m1, m2, m3
    bad = v2.query("m2", subject=SUBJECT, asked=["m1", "m3", "m4"])  # m4 outside P answered too
    entry, message = v2.bad_entry()
    assert entry == bad and "pinned" in message


def test_an_accepted_report_missing_a_pinned_member_is_named(v2: V2LogBuilder) -> None:
    v2.query("m1", subject=SUBJECT)  # P = everyone
    bad = v2.query("m2", subject=SUBJECT, answer=("m1", "m3"))  # k = 2 reached, but m4 of P is missing
    entry, message = v2.bad_entry()
    assert entry == bad and "pinned" in message


def test_a_report_after_the_pin_expired_may_be_over_a_new_set(v2: V2LogBuilder) -> None:
    v2.query("m1", subject=SUBJECT, answer=("m2", "m3"))  # P = m1, m2, m3
    v2.tick(DAY_MS)
    later = v2.query("m1", subject=SUBJECT)  # the pin lapsed: everyone is asked, a new P
    assert v2.entry(later)["answer_set"] == ["m1", "m2", "m3", "m4"]
    v2.verify()


def test_each_report_extends_the_pin(v2: V2LogBuilder) -> None:
    v2.query("m1", subject=SUBJECT, answer=("m2", "m3"))  # P = m1, m2, m3 until a day later ...
    v2.tick(20 * 3600 * 1000)
    v2.query("m2", subject=SUBJECT)  # ... and now until a day after this report
    v2.tick(10 * 3600 * 1000)
    bad = v2.query("m1", subject=SUBJECT, asked=["m2", "m3", "m4"],  # 30 h after the first report: still pinned,
                   answer_set=["m1", "m2", "m3", "m4"])  # so it cannot start a new set
    entry, message = v2.bad_entry()
    assert entry == bad and "must be over exactly m2, m3" in message


def test_a_report_just_before_the_pin_expired_is_still_held_to_it(v2: V2LogBuilder) -> None:
    v2.query("m1", subject=SUBJECT, answer=("m2", "m3"))
    v2.tick(DAY_MS - 5_000)
    bad = v2.query("m1", subject=SUBJECT, asked=["m2", "m3", "m4"])
    entry, message = v2.bad_entry()
    assert entry == bad and "pinned" in message


def test_a_wrong_answer_set_is_named(v2: V2LogBuilder) -> None:
    bad = v2.query("m1", subject=SUBJECT, answer_set=["m1", "m2"])
    entry, message = v2.bad_entry()
    assert entry == bad and "answer_set" in message


def test_answer_set_changed_fits_only_when_the_answers_are_not_the_pin(v2: V2LogBuilder) -> None:
    v2.query("m1", subject=SUBJECT)  # P = everyone
    v2.query("m2", subject=SUBJECT, answer=("m1", "m3"), outcome="refused", reason="answer_set_changed")  # m4 slow
    result = v2.verify()
    assert result.refusals == {"answer_set_changed": 1}
    bad = v2.query("m3", subject=SUBJECT, outcome="refused", reason="answer_set_changed")  # all of P less m3 answered
    entry, message = v2.bad_entry()
    assert entry == bad and "answer_set_changed does not fit" in message


def test_answer_set_changed_without_a_pin_is_named(v2: V2LogBuilder) -> None:
    bad = v2.query("m2", subject=SUBJECT, answer=("m1", "m3"), outcome="refused", reason="answer_set_changed",
                   answer_set=["m1", "m2", "m3", "m4"])
    entry, message = v2.bad_entry()
    assert entry == bad and "answer_set_changed does not fit" in message


# --------------------------------------------------------------------------
# Quotas under the fanned_out rule


def test_more_fanned_out_entries_in_a_day_than_the_quota_is_named(b: V2LogBuilder) -> None:
    v2 = new_v2_log(b, {"m1": 2})  # in force all day: the largest quota in force that day is the bound
    v2.query("m1", answer=("m2",), outcome="refused", reason="too_few_answers")  # reached the members: a slot
    v2.query("m1", asked=[], outcome="refused", reason="stale_timestamp",
             signed=_unsigned_query(v2.people["m1"], v2.clock + 1000 - 90_000))  # never fanned out: no slot
    v2.query("m1")
    bad = v2.query("m1")
    entry, message = v2.bad_entry()
    assert entry == bad and "quota" in message


def test_a_quota_exceeded_refusal_fits_when_the_fanned_out_entries_reach_the_quota(b: V2LogBuilder) -> None:
    v2 = new_v2_log(b, {"m1": 2})
    v2.query("m1", answer=("m2",), outcome="refused", reason="too_few_answers")
    v2.query("m1", asked=[], outcome="refused", reason="quota_exceeded")  # the 2nd slot was reserved, not yet logged:
    slow = v2.clock + 3_000  # received up to 5 s after the refusal (the refused request was slow to check) ...
    v2.append(lambda seq, when: v2.shape(_late_entry(v2, "m1", seq, when, slow)), slow)  # ... and logged after it
    v2.tick(60_000)
    v2.query("m2")
    result = v2.verify()
    assert result.refusals["quota_exceeded"] == 1 and result.unverified_refusals == {}


def _late_entry(b: V2LogBuilder, querier: str, seq: int, when: str, received: int) -> dict[str, Any]:
    from alliance_gateway.service import _query_entry

    signed = signed_query(b.people[querier], timestamp_ms=received - 150, subject=("RESIDENT_ID", _subject(received)))
    ctx = _Context(kind="query", peer_id=querier, query=signed, received_ms=received, body=protocol.parse_body(signed))
    ctx.asked = ["m2", "m3", "m4"]
    ctx.dropped = [{"member_id": m, "reason": "deadline_exceeded"} for m in ctx.asked]
    return _query_entry(ctx, seq, when, "refused", _failure("too_few_answers"), 2)


def _failure(reason: str) -> Any:
    from alliance_gateway.service import QueryFailure

    return QueryFailure(reason, f"refused: {reason}")


def test_a_quota_exceeded_refusal_below_the_quota_is_named(v2: V2LogBuilder) -> None:
    v2.set_quota("m1", 5)
    v2.tick(10_000)
    v2.query("m1")
    bad = v2.query("m1", asked=[], outcome="refused", reason="quota_exceeded")
    v2.tick(60_000)  # out of the newest deadline + 10 s, where refusals are left unverified
    v2.query("m2")
    entry, message = v2.bad_entry()
    assert entry == bad and "quota_exceeded does not fit" in message


def test_a_recent_quota_refusal_below_the_quota_is_left_unverified(v2: V2LogBuilder) -> None:
    v2.set_quota("m1", 5)
    v2.tick(10_000)
    v2.query("m1")
    v2.query("m1", asked=[], outcome="refused", reason="quota_exceeded")  # its slots' entries may not be logged yet
    assert v2.verify().unverified_refusals == {"quota_exceeded": 1}


# --------------------------------------------------------------------------
# Bounds (§5.4)


def _oversized(field: str, length: int) -> dict[str, Any]:
    return {"field": field, "length": length, "sha256": hashlib.sha256(os.urandom(8)).hexdigest()}


def test_an_oversized_request_is_logged_by_length_and_digest(v2: V2LogBuilder) -> None:
    v2.query("m1", parsed=False, asked=[], outcome="refused", reason="malformed_request",
             oversized=[_oversized("request_body", 9_000)])
    v2.query("m2", parsed=False, asked=[], outcome="refused", reason="malformed_request",
             oversized=[_oversized("request_signature", 65), _oversized("subject_token", 4_000)])
    assert v2.verify().refusals == {"malformed_request": 2}


@pytest.mark.parametrize(("field", "length"), [("request_body", 4_096), ("request_signature", 64), ("subject_token", 32)])
def test_an_oversized_malformed_request_within_the_bounds_is_named(v2: V2LogBuilder, field: str, length: int) -> None:
    bad = v2.query("m1", parsed=False, asked=[], outcome="refused", reason="malformed_request",
                   oversized=[_oversized(field, length)])
    entry, message = v2.bad_entry()
    assert entry == bad and "malformed_request does not fit" in message


def test_oversized_items_on_an_entry_not_refused_malformed_request_are_named(v2: V2LogBuilder) -> None:
    bad = v2.query("m1", parsed=False, asked=[], outcome="refused", reason="unknown_member",
                   oversized=[_oversized("request_body", 9_000)])
    entry, message = v2.bad_entry()
    assert entry == bad and "oversized" in message


def test_an_oversized_field_logged_in_full_is_named(v2: V2LogBuilder) -> None:
    body = os.urandom(5_000)
    signed = pb.SignedQuery(body=body, signature=os.urandom(64), subject_token=os.urandom(32))
    bad = v2.query("m1", signed=signed, parsed=False, asked=[], outcome="refused", reason="malformed_request")
    entry, message = v2.bad_entry()
    assert entry == bad and "over its bound" in message


def test_a_v2_entry_over_its_size_bound_is_named(v2: V2LogBuilder) -> None:
    v2.query("m1", pad=16_384)  # within 16384 + 1024 per member asked (3)
    bad = v2.query("m2", pad=16_384 + 3 * 1024)
    entry, message = v2.bad_entry()
    assert entry == bad and "bound" in message and "bytes" in message


def test_a_long_detail_is_named(v2: V2LogBuilder) -> None:
    def long_detail(seq: int, when: str) -> dict[str, Any]:
        e = v2.entry(seq - 1)
        return {**e, "seq": seq, "time": when, "detail": "x" * 513}

    v2.query("m1", asked=[], outcome="refused", reason="token_mismatch")
    bad = v2.append(long_detail, v2.clock)
    entry, message = v2.bad_entry()
    assert entry == bad and "detail" in message


# --------------------------------------------------------------------------
# Membership entry times (taken under the append lock)


def test_a_future_dated_membership_entry_is_named(v2: V2LogBuilder) -> None:
    v2.query("m1")
    bad = v2.set_quota("m2", 9)
    now = v2.clock - 5 * 60_000 - 1  # the verifier's clock: the entry is over 5 minutes ahead of it
    entry, message = v2.bad_entry(now_ms=now)
    assert entry == bad and "ahead of the verifier's clock" in message
    v2.verify(now_ms=now + 2)


def test_a_membership_entry_earlier_than_the_previous_one_is_named(v2: V2LogBuilder) -> None:
    v2.set_quota("m1", 9)
    v2.query("m2")
    bad = v2.append(lambda seq, when: {"v": 2, "kind": "quota_changed", "seq": seq, "time": when, "member_id": "m3",
                                       "daily_quota": 7}, v2.clock - 3_000)  # before the quota_changed of m1
    entry, message = v2.bad_entry()
    assert entry == bad and "earlier than the previous membership entry" in message


def test_a_membership_entry_later_than_the_following_entry_allows_is_named(v2: V2LogBuilder) -> None:
    slack = RULES["deadline_ms"] + RULES["lock_timeout_ms"] + 5_000
    first = v2.clock + 60_000

    def quota(value: int) -> Any:
        return lambda seq, when: {"v": 2, "kind": "quota_changed", "seq": seq, "time": when, "member_id": "m3", "daily_quota": value}

    v2.append(quota(7), first)
    v2.clock = first - slack - 1_000  # the next request was received this much earlier: just within the slack
    v2.query("m1")
    v2.verify()
    second = first + 10_000
    bad = v2.append(quota(8), second)
    v2.clock = second - slack - 1 - 1_000  # one millisecond more
    v2.query("m2")
    entry, message = v2.bad_entry()
    assert entry == bad and "following entry" in message


# --------------------------------------------------------------------------
# refusals_suppressed


def test_suppressed_refusals_are_counted_per_peer(v2: V2LogBuilder) -> None:
    v2.suppressed("m1", 150, v2.clock - 50_000, v2.clock - 1_000)
    v2.suppressed("m1", 30, v2.clock - 10_000, v2.clock - 100)
    v2.suppressed("aud", 1, v2.clock - 10, v2.clock - 10, role="auditor")
    result = v2.verify()
    assert result.suppressed_refusals == {"m1": 180, "aud": 1}
    assert result.refused == 0


@pytest.mark.parametrize(("count", "first", "last", "role"), [
    (0, -5_000, -1_000, "member"),  # nothing suppressed
    (5, -1_000, -5_000, "member"),  # last before first
    (5, -70_000, -1_000, "member"),  # longer than a minute
    (5, -5_000, 5_000, "member"),  # ends after the entry was written
    (5, -5_000, -1_000, "operator"),  # not a certificate role
])
def test_a_malformed_refusals_suppressed_entry_is_named(v2: V2LogBuilder, count: int, first: int, last: int, role: str) -> None:
    at = v2.clock + 1_000
    bad = v2.suppressed("m1", count, at + first, at + last, role=role)
    entry, _ = v2.bad_entry()
    assert entry == bad


def test_a_replay_refusal_needs_the_queriers_signature(v2: V2LogBuilder) -> None:
    """Otherwise the operator could log replays in a member's name."""
    original = _fresh(v2, "m1")
    v2.query("m1", signed=original)
    forged = pb.SignedQuery(body=original.body, signature=bytes(64), subject_token=original.subject_token)
    bad = _reissue(v2, "m1", forged, asked=[], outcome="refused", reason="replayed_query_id")
    entry, message = v2.bad_entry()
    assert entry == bad and "querier's signature" in message


@pytest.mark.parametrize("dropped", [7, "deadline_exceeded", [{"member_id": "m2", "reason": 7}]])
def test_a_garbled_dropped_list_is_named_not_a_crash(v2: V2LogBuilder, dropped: Any) -> None:
    v2.query("m1", answer=("m2", "m3"))
    e = v2.entry(v2.size() - 1)
    e["dropped"] = dropped
    v2.set_data(v2.size() - 1, audit_entry.encode(e))
    v2.rebuild_tree()
    entry, _ = v2.bad_entry()
    assert entry == v2.size() - 1
