"""The membership feed and sponsorship rules of ``audit verify`` (SPEC §5.1,
§6.3 additions of issue 8; docs/audit-log.md "The membership feed,
sponsorship, witnesses, reconciliation"): ``membership_seq`` and the
checkpoint's ``membership <count>`` line, the entry kinds
``member_sponsored``, ``matching_key_created``, ``gateway_started`` and
``policy_changed``, and the sponsorship chains accepted queries must have.

Logs are built with the V2LogBuilder (the gateway's own append, which numbers
membership entries) and real Ed25519 keys from LocalCA; every rule has a test
that goes red when the rule is removed from the verifier."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from alliance import audit_entry, signing
from alliance.v1 import alliance_pb2 as pb
from tests.alliance_fixtures import EnrolledMember, LocalCA
from tests.test_audit_verify import MEMBERS, ca, people, standard_log  # noqa: F401
from tests.test_audit_verify_v2 import V2LogBuilder, b, new_v2_log, v2  # noqa: F401

CHECK_VALUE = bytes.fromhex("0123456789abcdef")


def fp(b: V2LogBuilder, member_id: str) -> bytes:
    return bytes(b.people[member_id].body.member_fingerprint)


def sponsor(b: V2LogBuilder, sponsor_id: str, newcomer: str, *, fingerprint: bytes | None = None,
            key: Ed25519PrivateKey | None = None, entry: dict[str, Any] | None = None) -> int:
    """A member_sponsored entry as docs/audit-log.md describes it; ``entry``
    overrides fields of the entry (not of the signed body)."""
    body = pb.SponsorshipBody(newcomer_id=newcomer, newcomer_fingerprint=fingerprint or fp(b, newcomer),
                              sponsor_id=sponsor_id, time_ms=b.clock).SerializeToString()
    signature = signing.sign(key or b.people[sponsor_id].signing_key, signing.SPONSORSHIP, body)
    return b.append(lambda seq, when: {
        "v": 2, "kind": "member_sponsored", "seq": seq, "time": when, "sponsor_id": sponsor_id, "member_id": newcomer,
        "fingerprint": (fingerprint or fp(b, newcomer)).hex(), "sponsorship": body.hex(), "signature": signature.hex(),
        **(entry or {})})


def key_created(b: V2LogBuilder, founder: str, epoch: int = 1, *, key: Ed25519PrivateKey | None = None,
                fingerprint: bytes | None = None, entry: dict[str, Any] | None = None) -> int:
    statement = pb.MatchingKeyCreatedBody(founder_id=founder, founder_fingerprint=fingerprint or fp(b, founder), epoch=epoch,
                                          check_value=CHECK_VALUE, time_ms=b.clock).SerializeToString()
    signature = signing.sign(key or b.people[founder].signing_key, signing.MATCHING_KEY_CREATED, statement)
    return b.append(lambda seq, when: {
        "v": 2, "kind": "matching_key_created", "seq": seq, "time": when, "member_id": founder,
        "fingerprint": (fingerprint or fp(b, founder)).hex(), "epoch": epoch, "check_value": CHECK_VALUE.hex(),
        "statement": statement.hex(), "signature": signature.hex(), **(entry or {})})


def gateway_started(b: V2LogBuilder, **fields: Any) -> int:
    shape = {"pid": 4242, "host": "gw-1", "deadline_ms": 2_000, "k_min": 2, **fields}
    return b.append(lambda seq, when: {"v": 2, "kind": "gateway_started", "seq": seq, "time": when,
                                       **{k: v for k, v in shape.items() if v is not None}})


def policy_changed(b: V2LogBuilder, policy: Any) -> int:
    return b.append(lambda seq, when: {"v": 2, "kind": "policy_changed", "seq": seq, "time": when, "policy": policy})


def rewrite(b: V2LogBuilder, seq: int, **changes: Any) -> None:
    """An operator rewriting entry ``seq`` and re-signing the tree over it."""
    entry = b.entry(seq)
    for name, value in changes.items():
        if value is None:
            entry.pop(name, None)
        else:
            entry[name] = value
    b.set_data(seq, audit_entry.encode(entry))
    b.rebuild_tree()


def chained(b: V2LogBuilder) -> V2LogBuilder:
    """m1 founds the matching key; m1 sponsors m2, m2 sponsors m3 (m4 unsponsored)."""
    key_created(b, "m1")
    sponsor(b, "m1", "m2")
    sponsor(b, "m2", "m3")
    return b


@pytest.fixture
def c(v2: V2LogBuilder) -> V2LogBuilder:  # noqa: F811
    return chained(v2)


# --------------------------------------------------------------------------
# Sponsorship chains (§5.1 "Who is trusted", §6.3)


def test_queries_along_a_sponsorship_chain_verify(c: V2LogBuilder) -> None:
    for querier in ("m1", "m2", "m3"):
        c.query(querier)
    result = c.verify()
    assert result.accepted == 3 and result.kinds["member_sponsored"] == 2 and result.kinds["matching_key_created"] == 1


def test_an_accepted_query_from_an_unsponsored_querier_is_named(c: V2LogBuilder) -> None:
    bad = c.query("m4")
    entry, message = c.bad_entry()
    assert entry == bad and "not_sponsored" in message and "m4" in message


def test_an_unsponsored_querier_may_be_refused(c: V2LogBuilder) -> None:
    c.query("m4", asked=[], outcome="refused", reason="stale_timestamp",
            signed=_stale(c, "m4"))
    assert c.verify().refused == 1


def _stale(b: V2LogBuilder, querier: str) -> pb.SignedQuery:
    from tests.test_audit_verify import _unsigned_query
    return _unsigned_query(b.people[querier], b.clock + 1000 - 90_000)


def test_mutual_sponsorships_among_unsponsored_members_count_for_nothing(v2: V2LogBuilder) -> None:  # noqa: F811
    key_created(v2, "m1")
    sponsor(v2, "m3", "m4")
    sponsor(v2, "m4", "m3")
    v2.verify()  # the sponsorships themselves are signed by active members: valid entries
    bad = v2.query("m3")
    entry, message = v2.bad_entry()
    assert entry == bad and "not_sponsored" in message


def test_a_sponsorship_counts_only_if_its_sponsor_was_trusted_at_that_point(v2: V2LogBuilder) -> None:  # noqa: F811
    key_created(v2, "m1")
    sponsor(v2, "m3", "m4")  # m3 not trusted yet
    sponsor(v2, "m1", "m3")  # now it is: too late for m4
    v2.query("m3")
    bad = v2.query("m4")
    entry, message = v2.bad_entry()
    assert entry == bad and "not_sponsored" in message


def test_a_suspended_sponsor_is_named(v2: V2LogBuilder) -> None:  # noqa: F811
    from alliance import audit_verify
    key_created(v2, "m1")
    sponsor(v2, "m1", "m2")
    v2.set_status("m2", "member_suspended")
    v2.tick(audit_verify.STATE_GRACE_MS + 1000)
    bad = sponsor(v2, "m2", "m3")
    entry, message = v2.bad_entry()
    assert entry == bad and "suspended" in message


def test_a_rotation_of_a_sponsored_credential_stays_trusted(c: V2LogBuilder, ca: LocalCA) -> None:  # noqa: F811
    c.people = dict(c.people)
    c.people["m2"] = ca.rotate(c.people["m2"])
    c.issue(c.people["m2"])
    c.tick(6_000)
    c.query("m2")
    assert c.verify().accepted == 1


def test_a_sponsorship_names_the_exact_credential(c: V2LogBuilder, ca: LocalCA) -> None:  # noqa: F811
    """m4 sponsored under one fingerprint; a credential with other keys (not an
    endorsed rotation of a trusted one) is not covered."""
    sponsor(c, "m3", "m4", fingerprint=os.urandom(32))
    bad = c.query("m4")
    entry, message = c.bad_entry()
    assert entry == bad and "not_sponsored" in message


def test_the_founder_needs_no_sponsorship_and_a_later_sponsorship_covers_a_newcomer_first_issued_after_it(
        tmp_path: Path, ca: LocalCA, people: dict[str, EnrolledMember]) -> None:  # noqa: F811
    b = V2LogBuilder(tmp_path / "g.db", ca, people)
    b.start_v2()
    for m in ("m1", "m2", "m3"):
        b.issue(b.people[m])
    key_created(b, "m1")
    sponsor(b, "m1", "m4")  # before m4's credential_issued: the gateway would refuse, the rule still holds
    b.issue(b.people["m4"])
    b.tick(6_000)
    b.query("m1")
    b.query("m4")
    assert b.verify().accepted == 2


def test_an_untrusted_member_cannot_make_itself_a_root_with_a_new_epoch(c: V2LogBuilder) -> None:
    key_created(c, "m4", epoch=2)  # signed by an active member: a valid entry, but m4 is not trusted
    sponsor(c, "m4", "m4")
    c.verify()
    bad = c.query("m4")
    entry, message = c.bad_entry()
    assert entry == bad and "not_sponsored" in message


def test_a_trusted_founder_of_a_new_epoch_keeps_earlier_trust(c: V2LogBuilder) -> None:
    key_created(c, "m2", epoch=2)
    sponsor(c, "m2", "m4")
    for querier in ("m1", "m2", "m3", "m4"):
        c.query(querier)
    assert c.verify().accepted == 4


def test_an_upgraded_log_needs_chains_only_after_the_first_matching_key_created(b: V2LogBuilder) -> None:  # noqa: F811
    standard_log(b)
    b.start_v2()
    b.tick(6_000)
    b.query("m4")  # no chain can exist yet
    key_created(b, "m1")
    b.verify()
    bad = b.query("m4")
    entry, message = b.bad_entry()
    assert entry == bad and "not_sponsored" in message


def test_prechecks_need_a_chain_too(c: V2LogBuilder) -> None:
    bad = c.query("m4", kind="precheck")
    entry, message = c.bad_entry()
    assert entry == bad and "not_sponsored" in message


# --------------------------------------------------------------------------
# member_sponsored entries


def test_a_sponsorship_not_signed_by_its_sponsor_is_named(v2: V2LogBuilder) -> None:  # noqa: F811
    key_created(v2, "m1")
    bad = sponsor(v2, "m1", "m2", key=Ed25519PrivateKey.generate())
    entry, message = v2.bad_entry()
    assert entry == bad and "sponsorship signature does not verify" in message


@pytest.mark.parametrize(("name", "value"), [("sponsor_id", "m3"), ("member_id", "m3"), ("fingerprint", "ab" * 32)])
def test_a_sponsorship_entry_differing_from_its_signed_body_is_named(v2: V2LogBuilder, name: str, value: str) -> None:  # noqa: F811
    bad = sponsor(v2, "m1", "m2", entry={name: value})
    entry, message = v2.bad_entry()
    assert entry == bad and name in message and "signed sponsorship" in message


def test_a_sponsorship_fingerprint_of_another_length_is_named(v2: V2LogBuilder) -> None:  # noqa: F811
    short = os.urandom(16)
    bad = sponsor(v2, "m1", "m2", fingerprint=short)
    entry, message = v2.bad_entry()
    assert entry == bad and "fingerprint" in message and "32 bytes" in message


def test_a_garbled_sponsorship_body_is_named(v2: V2LogBuilder) -> None:  # noqa: F811
    bad = sponsor(v2, "m1", "m2", entry={"sponsorship": "ff" * 7})
    entry, message = v2.bad_entry()
    assert entry == bad and "SponsorshipBody" in message


@pytest.mark.parametrize("who", ["nobody", "aud"])
def test_a_sponsor_that_is_not_a_member_is_named(v2: V2LogBuilder, who: str) -> None:  # noqa: F811
    key = v2.people["aud"].signing_key
    bad = v2.append(lambda seq, when: _forged_sponsorship(v2, seq, when, who, key))
    entry, message = v2.bad_entry()
    assert entry == bad and "not a member" in message


def _forged_sponsorship(b: V2LogBuilder, seq: int, when: str, sponsor_id: str, key: Ed25519PrivateKey) -> dict[str, Any]:
    body = pb.SponsorshipBody(newcomer_id="m2", newcomer_fingerprint=fp(b, "m2"), sponsor_id=sponsor_id,
                              time_ms=b.clock).SerializeToString()
    return {"v": 2, "kind": "member_sponsored", "seq": seq, "time": when, "sponsor_id": sponsor_id, "member_id": "m2",
            "fingerprint": fp(b, "m2").hex(), "sponsorship": body.hex(),
            "signature": signing.sign(key, signing.SPONSORSHIP, body).hex()}


def test_a_revoked_sponsor_is_named(v2: V2LogBuilder) -> None:  # noqa: F811
    v2.set_status("m3", "member_revoked")
    v2.tick(6_000)
    bad = sponsor(v2, "m3", "m4")
    entry, message = v2.bad_entry()
    assert entry == bad and "revoked" in message


@pytest.mark.parametrize("version", [1, 2])
def test_a_sponsorship_before_v2_started_is_named(b: V2LogBuilder, version: int) -> None:  # noqa: F811
    for m in MEMBERS:
        b.issue(b.people[m])
    bad = sponsor(b, "m1", "m2", entry={"v": version})
    entry, message = b.bad_entry()
    assert entry == bad and "before the log's v2_started" in message


# --------------------------------------------------------------------------
# matching_key_created entries


def test_a_matching_key_statement_not_signed_by_its_founder_is_named(v2: V2LogBuilder) -> None:  # noqa: F811
    bad = key_created(v2, "m1", key=v2.people["m2"].signing_key)
    entry, message = v2.bad_entry()
    assert entry == bad and "statement's signature does not verify" in message


def test_a_matching_key_statement_naming_another_fingerprint_is_named(v2: V2LogBuilder) -> None:  # noqa: F811
    bad = key_created(v2, "m1", fingerprint=fp(v2, "m2"))
    entry, message = v2.bad_entry()
    assert entry == bad and "current credential" in message


@pytest.mark.parametrize(("name", "value"), [("epoch", 7), ("check_value", "00" * 8), ("member_id", "m2")])
def test_a_matching_key_entry_differing_from_its_statement_is_named(v2: V2LogBuilder, name: str, value: Any) -> None:  # noqa: F811
    bad = key_created(v2, "m1", entry={name: value})
    entry, message = v2.bad_entry()
    assert entry == bad and name in message and "signed statement" in message


def test_a_suspended_founder_is_named(v2: V2LogBuilder) -> None:  # noqa: F811
    v2.set_status("m1", "member_suspended")
    v2.tick(6_000)
    bad = key_created(v2, "m1")
    entry, message = v2.bad_entry()
    assert entry == bad and "founder m1 was suspended" in message


def test_matching_key_epochs_must_increase(c: V2LogBuilder) -> None:
    bad = key_created(c, "m2", epoch=1)
    entry, message = c.bad_entry()
    assert entry == bad and "epoch 1" in message


# --------------------------------------------------------------------------
# gateway_started and policy_changed


def test_gateway_started_and_policy_changed_entries_verify(c: V2LogBuilder) -> None:
    gateway_started(c)
    policy_changed(c, {"max_book_age_days": 14, "monitoring": True, "monitoring_quota": 50})
    c.query("m2")
    result = c.verify()
    assert result.kinds["gateway_started"] == 1 and result.kinds["policy_changed"] == 1
    assert "membership_seq" not in c.entry(c.size() - 3) and c.entry(c.size() - 2)["membership_seq"] == 9


@pytest.mark.parametrize(("fields", "word"), [({"k_min": 1}, "k_min"), ({"host": None}, "host"), ({"pid": 0}, "pid"),
                                              ({"deadline_ms": 0}, "deadline_ms"), ({"deadline_ms": "2000"}, "deadline_ms")])
def test_a_malformed_gateway_started_is_named(v2: V2LogBuilder, fields: dict[str, Any], word: str) -> None:  # noqa: F811
    bad = gateway_started(v2, **fields)
    entry, message = v2.bad_entry()
    assert entry == bad and word in message


def test_a_policy_changed_without_a_policy_object_is_named(v2: V2LogBuilder) -> None:  # noqa: F811
    bad = policy_changed(v2, ["min_answers", 3])
    entry, message = v2.bad_entry()
    assert entry == bad and "policy" in message


# --------------------------------------------------------------------------
# membership_seq


def test_membership_seq_counts_v1_membership_entries_of_an_upgraded_log(b: V2LogBuilder) -> None:  # noqa: F811
    standard_log(b)
    v1_membership = sum(1 for i in range(b.size()) if b.entry(i)["kind"] in audit_entry.MEMBERSHIP_KINDS)
    started = b.start_v2()
    assert b.entry(started)["membership_seq"] == v1_membership
    b.verify()
    rewrite(b, started, membership_seq=0)  # numbered as if the v1 entries did not count
    entry, message = b.bad_entry()
    assert entry == started and "membership_seq 0" in message


@pytest.mark.parametrize(("shift", "word"), [(1, "gap"), (-1, "repeated")])
def test_a_membership_seq_gap_or_repeat_is_named(c: V2LogBuilder, shift: int, word: str) -> None:
    target = c.size() - 1  # the last sponsorship
    rewrite(c, target, membership_seq=c.entry(target)["membership_seq"] + shift)
    entry, message = c.bad_entry()
    assert entry == target and word in message


def test_a_v2_membership_entry_without_membership_seq_is_named(c: V2LogBuilder) -> None:
    target = c.size() - 1
    rewrite(c, target, membership_seq=None)
    entry, message = c.bad_entry()
    assert entry == target and "membership_seq" in message


@pytest.mark.parametrize("kind", ["query", "v1"])
def test_membership_seq_on_an_entry_that_is_not_numbered_is_named(b: V2LogBuilder, kind: str) -> None:  # noqa: F811
    if kind == "v1":
        target = b.issue(b.people["m1"])
    else:
        new_v2_log(b)
        target = b.query("m1")
    rewrite(b, target, membership_seq=0)
    entry, message = b.bad_entry()
    assert entry == target and "states membership_seq" in message


# --------------------------------------------------------------------------
# The checkpoint's `membership <count>` line


def _with_line(b: V2LogBuilder, *lines: str) -> Any:
    cp = b.signed()[0]
    return dataclasses.replace(cp, extensions=tuple(lines))


def test_the_checkpoint_of_a_v2_log_carries_the_membership_count(c: V2LogBuilder) -> None:
    cp = c.signed()[0]
    count = sum(1 for i in range(c.size()) if c.entry(i)["kind"] in audit_entry.MEMBERSHIP_KINDS)
    assert cp.extensions == (f"membership {count}",)
    c.verify()


def test_a_membership_count_below_the_leaves_names_the_first_entry_not_accounted_for(c: V2LogBuilder) -> None:
    count = sum(1 for i in range(c.size()) if c.entry(i)["kind"] in audit_entry.MEMBERSHIP_KINDS)
    entry, message = c.bad_entry(signed=_with_line(c, f"membership {count - 1}"))
    assert entry == c.size() - 1 and "not accounted for" in message  # the last sponsorship


@pytest.mark.parametrize("lines", [(), ("membership 99",), ("membership x",), ("membership 9", "membership 9")])
def test_a_missing_high_or_malformed_membership_line_blames_the_checkpoint(c: V2LogBuilder, lines: tuple[str, ...]) -> None:
    entry, message = c.bad_entry(signed=_with_line(c, *lines))
    assert entry is None and "checkpoint of size" in message and "membership" in message


def test_a_v1_checkpoint_needs_no_membership_line_but_a_stated_one_must_match(b: V2LogBuilder) -> None:  # noqa: F811
    standard_log(b)
    assert b.signed()[0].extensions == ()
    b.verify()
    entry, message = b.bad_entry(signed=_with_line(b, "membership 1"))
    assert entry is not None and "not accounted for" in message


def test_a_policy_changed_with_an_unknown_or_invalid_setting_is_named(v2: V2LogBuilder) -> None:  # noqa: F811
    """The policy is the whole documented Policy: refusals re-derived from it must mean something (SPEC §9, §10)."""
    bad = policy_changed(v2, {"max_book_age_days": 0, "monitoring": True, "monitoring_quota": 5})
    entry, message = v2.bad_entry()
    assert entry == bad and "policy" in message


# --------------------------------------------------------------------------
# The monitoring policy (SPEC §9): monitoring queries need it on, and draw on its own quota

def _monitoring_query(b: V2LogBuilder, querier: str = "m1") -> Any:
    from tests.alliance_fixtures import signed_query
    from tests.test_audit_verify import _subject
    return signed_query(b.people[querier], timestamp_ms=b.clock + 1000 - 150, purpose="POST_LOAN_MONITORING",
                        subject=("RESIDENT_ID", _subject(b.clock + 17)))


ON = {"max_book_age_days": 7, "monitoring": True, "monitoring_quota": 1}


def test_an_accepted_monitoring_query_needs_the_logged_policy(v2: V2LogBuilder) -> None:  # noqa: F811
    bad = v2.query("m1", signed=_monitoring_query(v2))
    entry, message = v2.bad_entry()
    assert entry == bad and "monitoring" in message


def test_monitoring_queries_draw_on_the_monitoring_quota_only(v2: V2LogBuilder) -> None:  # noqa: F811
    policy_changed(v2, ON)
    v2.tick(25 * 3600 * 1000)  # a whole (Asia/Shanghai) day later: monitoring_quota 1 is the only one in force that day
    v2.query("m1", signed=_monitoring_query(v2))
    v2.query("m1")  # an application: the daily quota, not the monitoring one
    assert v2.verify().accepted >= 2
    bad = v2.query("m1", signed=_monitoring_query(v2))  # a second monitoring query: over monitoring_quota 1
    entry, message = v2.bad_entry()
    assert entry == bad and "monitoring quota" in message


def test_monitoring_disabled_fits_only_while_the_policy_is_off(v2: V2LogBuilder) -> None:  # noqa: F811
    v2.query("m1", signed=_monitoring_query(v2), asked=[], outcome="refused", reason="monitoring_disabled")
    assert v2.verify().refusals["monitoring_disabled"] == 1
    policy_changed(v2, ON)
    v2.tick(6_000)
    bad = v2.query("m1", signed=_monitoring_query(v2), asked=[], outcome="refused", reason="monitoring_disabled")
    entry, message = v2.bad_entry()
    assert entry == bad and "monitoring_disabled" in message
