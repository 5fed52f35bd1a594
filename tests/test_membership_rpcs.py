"""The gateway's v2 membership RPCs (SPEC §5.1): sponsorships and the
matching key's creation are logged only when posted by their active signer
with a valid signature, and the membership feed serves membership entries
only, gap-free, each with an inclusion proof against one checkpoint that
carries `membership <count>`."""
from __future__ import annotations

import time

import grpc
import pytest

from alliance import audit_entry, checkpoint, merkle, signing
from alliance.v1 import alliance_pb2 as pb
from alliance_gateway import schema
from tests.alliance_fixtures import signed_query
from tests.test_gateway_service import _decrypt_report, ca, gateway, members, process  # noqa: F401


class Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code, self.details = code, details


class FakeContext:
    def __init__(self, peer: tuple[str, str, bytes]) -> None:
        self.peer = peer

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise Aborted(code, details)


def ctx(members, mid: str, role: str = "member") -> FakeContext:  # type: ignore[no-untyped-def]
    return FakeContext((mid, role, members[mid].body.tls_cert_sha256))


@pytest.fixture
def svc(gateway):  # type: ignore[no-untyped-def]
    service, _, members = gateway
    service._peer = lambda context: context.peer
    return service, members


def sponsorship(sponsor, newcomer, *, fp: bytes | None = None, time_ms: int | None = None) -> pb.SignedSponsorship:  # type: ignore[no-untyped-def]
    body = pb.SponsorshipBody(newcomer_id=newcomer.member_id, newcomer_fingerprint=fp or newcomer.body.member_fingerprint,
                              sponsor_id=sponsor.member_id, time_ms=time_ms or int(time.time() * 1000)).SerializeToString()
    return pb.SignedSponsorship(body=body, signature=signing.sign(sponsor.signing_key, signing.SPONSORSHIP, body))


def _verifier(service):  # type: ignore[no-untyped-def]
    return checkpoint.parse_verifier_key(checkpoint.verifier_key("test/log", service.log.signing_key.public_key()))


def test_a_sponsorship_is_logged_with_its_proof(svc) -> None:  # type: ignore[no-untyped-def]
    service, members = svc
    resp = service.PostSponsorship(sponsorship(members["ma"], members["mb"]), ctx(members, "ma"))
    cp = checkpoint.open_checkpoint(resp.checkpoint, _verifier(service))
    merkle.verify_inclusion(merkle.leaf_hash(resp.entry.data), resp.entry.index, cp.size, list(resp.entry.inclusion_proof), cp.root_hash)
    entry = audit_entry.decode(resp.entry.data, index=resp.entry.index)
    assert entry["kind"] == "member_sponsored" and entry["v"] == 2
    assert (entry["sponsor_id"], entry["member_id"], entry["fingerprint"]) == ("ma", "mb", members["mb"].body.member_fingerprint.hex())
    assert entry["membership_seq"] == resp.entry.membership_seq
    assert f"membership {resp.entry.membership_seq + 1}" in cp.extensions


@pytest.mark.parametrize("case", ["other_peer", "bad_signature", "suspended", "auditor", "wrong_fp", "self", "stale", "huge", "names_another_sponsor"])
def test_a_sponsorship_not_by_its_active_signer_is_refused_and_not_logged(svc, case) -> None:  # type: ignore[no-untyped-def]
    service, members = svc
    size = service.log.size()
    request = sponsorship(members["ma"], members["mb"])
    peer = ctx(members, "ma")
    if case == "other_peer":
        peer = ctx(members, "mc")
    elif case == "bad_signature":
        request.signature = signing.sign(members["mc"].signing_key, signing.SPONSORSHIP, request.body)
    elif case == "suspended":
        with service.engine.begin() as conn:
            conn.execute(schema.members.update().where(schema.members.c.member_id == "ma").values(status="suspended"))
    elif case == "auditor":
        peer = ctx(members, "ma", role="auditor")
    elif case == "wrong_fp":
        request = sponsorship(members["ma"], members["mb"], fp=b"\x01" * 32)
    elif case == "self":
        request = sponsorship(members["ma"], members["ma"])
    elif case == "stale":
        request = sponsorship(members["ma"], members["mb"], time_ms=int(time.time() * 1000) - 600_000)
    elif case == "huge":
        request.body = request.body + b"\x00" * 5000
    elif case == "names_another_sponsor":  # ma signs a sponsorship that claims mc vouched
        body = pb.SponsorshipBody.FromString(request.body)
        body.sponsor_id = "mc"
        request.body = body.SerializeToString()
        request.signature = signing.sign(members["ma"].signing_key, signing.SPONSORSHIP, request.body)
    with pytest.raises(Aborted):
        service.PostSponsorship(request, peer)
    assert service.log.size() == size


def test_matching_key_created_once_per_epoch_by_its_founder(svc) -> None:  # type: ignore[no-untyped-def]
    service, members = svc

    def statement(founder, epoch):  # type: ignore[no-untyped-def]
        body = pb.MatchingKeyCreatedBody(founder_id=founder.member_id, founder_fingerprint=founder.body.member_fingerprint,
                                         epoch=epoch, check_value=b"\x07" * 8, time_ms=int(time.time() * 1000)).SerializeToString()
        return pb.SignedMatchingKeyCreated(body=body, signature=signing.sign(founder.signing_key, signing.MATCHING_KEY_CREATED, body))

    resp = service.PostMatchingKeyCreated(statement(members["ma"], 1), ctx(members, "ma"))
    entry = audit_entry.decode(resp.entry.data, index=resp.entry.index)
    assert (entry["kind"], entry["member_id"], entry["epoch"], entry["check_value"]) == ("matching_key_created", "ma", 1, "07" * 8)
    size = service.log.size()
    with pytest.raises(Aborted) as exc:
        service.PostMatchingKeyCreated(statement(members["mb"], 1), ctx(members, "mb"))
    assert exc.value.code == grpc.StatusCode.ALREADY_EXISTS
    with pytest.raises(Aborted):
        service.PostMatchingKeyCreated(statement(members["ma"], 2), ctx(members, "mb"))  # not its founder
    assert service.log.size() == size


def test_the_feed_serves_membership_entries_only_gap_free_with_proofs(svc) -> None:  # type: ignore[no-untyped-def]
    service, members = svc
    process(service, members, signed_query(members["mq"]), "mq", "member", "query")  # a query entry: never in the feed
    service.PostSponsorship(sponsorship(members["ma"], members["mb"]), ctx(members, "ma"))
    got, start = [], 0
    while True:
        page = service.GetMembership(pb.GetMembershipRequest(from_membership_seq=start, max_entries=1), ctx(members, "mc"))
        cp = checkpoint.open_checkpoint(page.checkpoint, _verifier(service))
        if not page.entries:
            break
        for e in page.entries:
            merkle.verify_inclusion(merkle.leaf_hash(e.data), e.index, cp.size, list(e.inclusion_proof), cp.root_hash)
            got.append(audit_entry.decode(e.data, index=e.index))
        start = page.entries[-1].membership_seq + 1
    assert [e["membership_seq"] for e in got] == list(range(len(got)))
    assert all(e["kind"] in audit_entry.MEMBERSHIP_KINDS for e in got)
    assert f"membership {len(got)}" in cp.extensions
    assert got[-1]["kind"] == "member_sponsored"


def test_the_feed_is_for_active_members_and_auditors(svc) -> None:  # type: ignore[no-untyped-def]
    service, members = svc
    with service.engine.begin() as conn:
        conn.execute(schema.members.update().where(schema.members.c.member_id == "mc").values(status="revoked"))
    with pytest.raises(Aborted) as exc:
        service.GetMembership(pb.GetMembershipRequest(), ctx(members, "mc"))
    assert exc.value.code == grpc.StatusCode.PERMISSION_DENIED
