"""Member key rotation end to end (SPEC §5: a second credential in a known
member's name is accepted only when its previous key endorsed it): the member
rotates, the CA issues only for an endorsed request, peers accept the rotated
credential through their pins, and reports stay exact."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from datetime import date

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from alliance import paillier, pki, transport
from alliance.errors import AllianceError, CryptoError, Refused, Unreachable
from alliance.v1 import alliance_pb2 as pb
from alliance.v1 import alliance_pb2_grpc as pb_grpc
from alliance_gateway.admin import Admin
from alliance_member import onboarding
from alliance_member.home import MemberHome
from alliance_member.querier import Consent, Querier, Subject
from tests import independent
from tests.conftest import running_alliance

pytestmark = pytest.mark.e2e

MEMBERS = ["lender-a", "lender-b", "lender-c"]
AS_OF = date(2026, 6, 30)
CONSENT = Consent("CONSENT-R", hashlib.sha256(b"authorisation").digest())


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def alliance(request, tmp_path_factory):  # type: ignore[no-untyped-def]
    yield from running_alliance(request.param, tmp_path_factory, MEMBERS, AS_OF)


def _figures(result: dict) -> dict:
    return {k: v for k, v in result["report"].items() if k != "inquiries_30d"}


def _query_until_answered(home, subject: Subject, timeout_s: float = 10.0) -> dict:  # type: ignore[no-untyped-def]
    """The gateway's registry refreshes within a second; retry until then."""
    deadline = time.monotonic() + timeout_s
    while True:
        q = Querier(home)
        try:
            result = q.query(subject, purpose="LOAN_APPROVAL", consent=CONSENT, as_of=AS_OF)
            if result["members_answered"] == result["members_asked"]:
                return result
        except AllianceError:
            if time.monotonic() > deadline:
                raise
        finally:
            q.close()
        if time.monotonic() > deadline:
            raise AssertionError(f"not every member answered within {timeout_s}s: {result}")
        time.sleep(0.2)


def test_a_member_rotates_its_keys_endorsed_by_the_old_one(alliance) -> None:  # type: ignore[no-untyped-def]
    net, dataset = alliance
    admin = Admin(net.admin_home)
    b = net.members["lender-b"]
    s = dataset.subjects[0]
    subject = Subject(s.id_type, s.canonical_id)
    expected_for_a = independent.expected_report(dataset.root, ["lender-b", "lender-c"], s.id_type, s.canonical_id, AS_OF)
    expected_for_b = independent.expected_report(dataset.root, ["lender-a", "lender-c"], s.id_type, s.canonical_id, AS_OF)
    old_fingerprint = onboarding.own_fingerprint(MemberHome(b.home))
    old_serial = admin.show("lender-b")["credential_serial"]

    result = onboarding.rotate_keys(b.home)
    with pytest.raises(Exception, match="already pending"):
        onboarding.rotate_keys(b.home)

    # The CA refuses new keys in lender-b's name that lender-b's key did not endorse.
    pub, _ = paillier.generate_keypair(2048)
    forged = pki.make_join_request(member_id="lender-b", name="lender-b lending platform", role="member", endpoint=b.endpoint,
                                   keys=pki.generate_member_keys(), paillier_n=pub.to_bytes(),
                                   previous_ed25519_key=Ed25519PrivateKey.generate())
    with pytest.raises(CryptoError):
        admin.add(forged.SerializeToString(), expected_role="member")
    assert admin.show("lender-b")["credential_serial"] == old_serial

    bundle = admin.add(result.join_request.read_bytes(), expected_role="member")
    net.stop_member("lender-b")
    body = onboarding.join(b.home, bundle)
    assert pki.format_fingerprint(body.member_fingerprint) == result.fingerprint
    assert body.member_fingerprint != old_fingerprint and body.serial != old_serial
    assert onboarding.own_fingerprint(MemberHome(b.home)) == body.member_fingerprint
    assert not (b.home / "rotation").exists()
    assert (b.home / "retired" / str(old_serial) / "ed25519.key").exists()
    net.start_member("lender-b")

    # lender-b queries with its new keys: a and c accept the rotated credential (their pins) and answer.
    got_b = _query_until_answered(b.home, subject)
    assert got_b["members_answered"] == 2 and _figures(got_b) == expected_for_b
    # lender-a queries: lender-b answers, signed with its new key, and the sum is exact.
    got_a = _query_until_answered(net.members["lender-a"].home, subject)
    assert got_a["members_answered"] == 2 and _figures(got_a) == expected_for_a

    # The old certificate is still CA-signed and unexpired, but no longer lender-b's: the gateway refuses it.
    retired = b.home / "retired" / str(old_serial)
    channel = transport.gateway_channel(net.gateway_endpoint, (retired / "tls.key").read_bytes(), (retired / "tls.crt").read_bytes(),
                                       (b.home / "ca.crt").read_bytes())
    try:
        with pytest.raises(grpc.RpcError) as exc:
            pb_grpc.GatewayStub(channel).FetchKeyShares(pb.FetchKeySharesRequest(), timeout=5)
        assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED
    finally:
        channel.close()

    # The auditor sees an endorsed rotation: the log verifies, and watch reports it as "rotated".
    out = subprocess.run([sys.executable, "-m", "alliance_cli.main", "audit", "verify", "--home", str(net.auditor_home), "--json"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    out = subprocess.run([sys.executable, "-m", "alliance_cli.main", "audit", "watch", "--home", str(net.auditor_home),
                          "--member", "lender-b", "--json"], capture_output=True, text=True, timeout=120)
    assert [a["keys"] for a in json.loads(out.stdout)] == ["new", "rotated"], out.stdout + out.stderr


def test_the_matching_key_moves_to_a_new_epoch_and_books_are_reimported(alliance) -> None:  # type: ignore[no-untyped-def]
    """SPEC §3: rotating the matching key means re-importing the book. Rows of
    an old epoch are never used; a member still at the old epoch refuses."""
    from alliance import matching_key
    from alliance_member import book

    net, dataset = alliance
    a, b, c = (net.members[m] for m in MEMBERS)
    s = dataset.subjects[0]
    subject = Subject(s.id_type, s.canonical_id)
    expected = independent.expected_report(dataset.root, ["lender-b", "lender-c"], s.id_type, s.canonical_id, AS_OF)
    assert any(v for v in expected.values()), "the subject must be known to lender-b or lender-c"
    fingerprint = {m.member_id: pki.format_fingerprint(onboarding.own_fingerprint(MemberHome(m.home))) for m in (a, b, c)}

    with pytest.raises(Exception, match="higher epoch"):
        onboarding.create_matching_key(a.home, epoch=1)
    mk2 = onboarding.create_matching_key(a.home, epoch=2)
    check = matching_key.format_check_value(matching_key.check_value(mk2.key))
    onboarding.share_matching_key(a.home, recipient_id="lender-b", recipient_fingerprint=fingerprint["lender-b"])
    onboarding.install_matching_key(b.home, sender_id="lender-a", sender_fingerprint=fingerprint["lender-a"], check_value=check)

    # lender-c is still at epoch 1: it refuses the epoch-2 token, leaving one answer, which is no report.
    q = Querier(a.home)
    try:
        with pytest.raises(Unreachable, match="1 of 2 members answered"):
            q.query(subject, purpose="LOAN_APPROVAL", consent=CONSENT, as_of=AS_OF)
    finally:
        q.close()

    onboarding.share_matching_key(a.home, recipient_id="lender-c", recipient_fingerprint=fingerprint["lender-c"])
    onboarding.install_matching_key(c.home, sender_id="lender-a", sender_fingerprint=fingerprint["lender-a"], check_value=check)
    # Everyone is at epoch 2 but the books still hold epoch-1 tokens: never used, so nothing is found.
    before = _query_until_answered(a.home, subject)
    assert all(v in (0, None) for v in _figures(before).values())
    for m in (a, b, c):
        for kind in ("loans", "flags", "scores"):
            book.import_book(m.home, dataset.root / m.member_id / f"{kind}.csv", kind)
    after = _query_until_answered(a.home, subject)
    assert after["members_answered"] == 2 and _figures(after) == expected


def test_a_revoked_member_cannot_come_back_through_a_rotation(alliance) -> None:  # type: ignore[no-untyped-def]
    net, _ = alliance
    admin = Admin(net.admin_home)
    c = net.members["lender-c"]
    result = onboarding.rotate_keys(c.home)  # endorsed by lender-c's own key: only the revocation stops it
    admin.set_status("lender-c", "revoked")
    with pytest.raises(Refused, match="revoked"):
        admin.add(result.join_request.read_bytes(), expected_role="member")
    assert admin.show("lender-c")["status"] == "revoked"
