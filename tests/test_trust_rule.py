"""The trust rule of SPEC §5.1, replayed from membership entries with real
keys (alliance/trust.py): trust comes from the decider's roots through
logged sponsorships by trusted, active members, or through rotations endorsed
by the previous key; never from the CA alone, never from mutual sponsorship
among the untrusted; and the latest status entry decides."""
from __future__ import annotations

import time

import pytest

from alliance import matching_key, pki, signing, trust
from alliance.v1 import alliance_pb2 as pb
from tests.alliance_fixtures import EnrolledMember, LocalCA


class Log:
    """Builds membership entries as the gateway writes them."""

    def __init__(self) -> None:
        self.entries: list[dict] = []

    def _add(self, kind: str, **fields) -> dict:  # type: ignore[no-untyped-def]
        entry = {"v": 2, "kind": kind, "seq": len(self.entries), "time": "2026-01-01T00:00:00.000Z",
                 "membership_seq": len(self.entries), **fields}
        self.entries.append(entry)
        return entry

    def issued(self, m: EnrolledMember) -> dict:
        return self._add("credential_issued", member_id=m.member_id, name=m.member_id, role="member", serial=m.body.serial,
                         endpoint="127.0.0.1:1", fingerprint=m.body.member_fingerprint.hex(),
                         credential=m.credential.SerializeToString().hex(), daily_quota=10)

    def sponsored(self, sponsor: EnrolledMember, newcomer: EnrolledMember, *, fp: bytes | None = None) -> dict:
        fp = fp or trust.fingerprint_of(newcomer.body)
        body = pb.SponsorshipBody(newcomer_id=newcomer.member_id, newcomer_fingerprint=fp, sponsor_id=sponsor.member_id,
                                  time_ms=int(time.time() * 1000)).SerializeToString()
        return self._add("member_sponsored", sponsor_id=sponsor.member_id, member_id=newcomer.member_id, fingerprint=fp.hex(),
                         sponsorship=body.hex(), signature=signing.sign(sponsor.signing_key, signing.SPONSORSHIP, body).hex())

    def status(self, kind: str, m: EnrolledMember) -> dict:
        return self._add(kind, member_id=m.member_id)

    def created(self, founder: EnrolledMember) -> dict:
        body = pb.MatchingKeyCreatedBody(founder_id=founder.member_id, founder_fingerprint=trust.fingerprint_of(founder.body),
                                         epoch=1, check_value=b"\x01" * 8, time_ms=0).SerializeToString()
        return self._add("matching_key_created", member_id=founder.member_id, fingerprint=trust.fingerprint_of(founder.body).hex(),
                         epoch=1, check_value="01" * 8, statement=body.hex(),
                         signature=signing.sign(founder.signing_key, signing.MATCHING_KEY_CREATED, body).hex())


def root(m: EnrolledMember) -> trust.Root:
    return (m.member_id, trust.fingerprint_of(m.body))


@pytest.fixture(scope="module")
def ca() -> LocalCA:
    return LocalCA()


@pytest.fixture(scope="module")
def m(ca):  # type: ignore[no-untyped-def]
    return {mid: ca.enrol(mid) for mid in ("founder", "mb", "mc", "evil1", "evil2")}


def decide(log: Log, m: EnrolledMember, roots, **kw) -> str:  # type: ignore[no-untyped-def]
    return trust.replay(log.entries, roots, **kw).decide(m.credential.SerializeToString())


def test_a_root_and_a_chain_of_sponsorships_are_trusted(m) -> None:  # type: ignore[no-untyped-def]
    log = Log()
    for mid in ("founder", "mb", "mc"):
        log.issued(m[mid])
    log.sponsored(m["founder"], m["mb"])
    log.sponsored(m["mb"], m["mc"])
    roots = [root(m["founder"])]
    assert [decide(log, m[x], roots) for x in ("founder", "mb", "mc")] == ["trusted"] * 3


def test_a_credential_not_in_the_log_is_not_trusted_even_with_a_root_fingerprint(m) -> None:  # type: ignore[no-untyped-def]
    log = Log()
    log.issued(m["founder"])
    assert decide(log, m["mb"], [root(m["founder"]), root(m["mb"])]) == "not_in_log"


def test_admitted_by_the_operator_alone_is_not_sponsored(m) -> None:  # type: ignore[no-untyped-def]
    log = Log()
    log.issued(m["founder"])
    log.issued(m["evil1"])
    assert decide(log, m["evil1"], [root(m["founder"])]) == "not_sponsored"


def test_mutual_sponsorship_among_the_untrusted_counts_for_nothing(m) -> None:  # type: ignore[no-untyped-def]
    log = Log()
    for mid in ("founder", "evil1", "evil2"):
        log.issued(m[mid])
    log.sponsored(m["evil1"], m["evil2"])
    log.sponsored(m["evil2"], m["evil1"])
    roots = [root(m["founder"])]
    assert decide(log, m["evil1"], roots) == decide(log, m["evil2"], roots) == "not_sponsored"


def test_a_sponsor_must_be_trusted_at_that_point_of_the_log(m) -> None:  # type: ignore[no-untyped-def]
    log = Log()
    for mid in ("founder", "mb", "mc"):
        log.issued(m[mid])
    log.sponsored(m["mb"], m["mc"])       # b not yet trusted here
    log.sponsored(m["founder"], m["mb"])
    roots = [root(m["founder"])]
    assert decide(log, m["mb"], roots) == "trusted" and decide(log, m["mc"], roots) == "not_sponsored"


def test_a_suspended_or_revoked_sponsor_sponsors_nobody(m) -> None:  # type: ignore[no-untyped-def]
    for kind in ("member_suspended", "member_revoked"):
        log = Log()
        for mid in ("founder", "mb", "mc"):
            log.issued(m[mid])
        log.sponsored(m["founder"], m["mb"])
        log.status(kind, m["mb"])
        log.sponsored(m["mb"], m["mc"])
        assert decide(log, m["mc"], [root(m["founder"])]) == "not_sponsored"


def test_a_forged_sponsorship_signature_counts_for_nothing(m) -> None:  # type: ignore[no-untyped-def]
    log = Log()
    for mid in ("founder", "evil1"):
        log.issued(m[mid])
    entry = log.sponsored(m["founder"], m["evil1"])
    entry["signature"] = signing.sign(m["evil1"].signing_key, signing.SPONSORSHIP, bytes.fromhex(entry["sponsorship"])).hex()
    assert decide(log, m["evil1"], [root(m["founder"])]) == "not_sponsored"


def test_a_sponsorship_of_another_fingerprint_does_not_cover_the_credential(m) -> None:  # type: ignore[no-untyped-def]
    log = Log()
    for mid in ("founder", "mb"):
        log.issued(m[mid])
    log.sponsored(m["founder"], m["mb"], fp=b"\x42" * 32)
    assert decide(log, m["mb"], [root(m["founder"])]) == "not_sponsored"


def test_the_latest_status_entry_decides(m) -> None:  # type: ignore[no-untyped-def]
    log = Log()
    for mid in ("founder", "mb"):
        log.issued(m[mid])
    log.sponsored(m["founder"], m["mb"])
    roots = [root(m["founder"])]
    log.status("member_suspended", m["mb"])
    assert decide(log, m["mb"], roots) == "member_inactive"
    log.status("member_resumed", m["mb"])
    assert decide(log, m["mb"], roots) == "trusted"
    log.status("member_revoked", m["mb"])
    log.status("member_resumed", m["mb"])  # revocation is final, whatever follows
    assert decide(log, m["mb"], roots) == "member_inactive"


def test_a_rotation_endorsed_by_the_previous_key_stays_trusted(ca, m) -> None:  # type: ignore[no-untyped-def]
    log = Log()
    for mid in ("founder", "mb"):
        log.issued(m[mid])
    log.sponsored(m["founder"], m["mb"])
    b2 = ca.rotate(m["mb"])
    log.issued(b2)
    view = trust.replay(log.entries, [root(m["founder"])])
    assert view.decide(b2.credential.SerializeToString()) == "trusted"
    assert view.decide(m["mb"].credential.SerializeToString()) == "superseded"


def test_a_second_credential_without_an_endorsement_is_not_trusted(ca, m) -> None:  # type: ignore[no-untyped-def]
    """The operator mints new keys in b's name: a member that never pinned
    b's first credential still refuses it, from the log alone."""
    log = Log()
    for mid in ("founder", "mb"):
        log.issued(m["founder"] if mid == "founder" else m["mb"])
    log.sponsored(m["founder"], m["mb"])
    forged = ca.enrol("mb")  # same id, operator's keys, no predecessor signature
    log.issued(forged)
    assert decide(log, forged, [root(m["founder"])]) == "not_sponsored"
    # nor with an endorsement by a key that is not b's previous one
    bad = ca.rotate(m["evil1"])
    bad_body = pb.CredentialBody.FromString(bad.credential.body)
    bad_body.member_id = "mb"
    log2 = Log()
    log2.issued(m["founder"])
    log2.issued(m["mb"])
    log2.sponsored(m["founder"], m["mb"])
    assert trust._endorsed(trust.replay(log2.entries, [root(m["founder"])]).members["mb"].current, bad.credential, bad_body) is False


def test_a_rotation_of_an_untrusted_credential_is_not_trusted(ca, m) -> None:  # type: ignore[no-untyped-def]
    log = Log()
    log.issued(m["founder"])
    log.issued(m["evil1"])
    log.issued(ca.rotate(m["evil1"]))
    rotated = trust.replay(log.entries, [root(m["founder"])]).members["evil1"].current
    assert rotated is not None and not rotated.trusted


def test_the_fingerprint_is_recomputed_never_the_cas_field(ca, m) -> None:  # type: ignore[no-untyped-def]
    """A credential whose CA-written fingerprint names a root's keys while it
    binds other keys is not the root."""
    log = Log()
    fake = ca.enrol("founder")
    body = pb.CredentialBody.FromString(fake.credential.body)
    body.member_fingerprint = m["founder"].body.member_fingerprint
    fake.credential.body = body.SerializeToString()
    log.issued(fake)
    assert decide(log, fake, [root(m["founder"])]) == "not_sponsored"


def test_auditors_root_at_the_founder_of_matching_key_created(m) -> None:  # type: ignore[no-untyped-def]
    log = Log()
    for mid in ("founder", "mb", "evil1"):
        log.issued(m[mid])
    log.created(m["founder"])
    log.sponsored(m["founder"], m["mb"])
    view = trust.replay(log.entries, founders_are_roots=True)
    assert view.trusted_members() == ["founder", "mb"]
    assert trust.replay(log.entries).trusted_members() == []  # members use only their own roots
