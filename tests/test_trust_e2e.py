"""Trust and onboarding end to end (SPEC §1 properties 2, 5, 7; §5): mutual
TLS on every port, live suspension and revocation from the admin CLI, consent
and quota refusals that leave a record, and a fake member admitted by the
operator getting nothing."""
from __future__ import annotations

import hashlib
import subprocess
import sys
import threading
import time
from datetime import date, datetime, timedelta, timezone

import grpc
import pytest
from sqlalchemy import select

from alliance import audit_entry, db, pki, protocol
from alliance.errors import Refused
from alliance.v1 import alliance_pb2 as pb
from alliance.v1 import alliance_pb2_grpc as pb_grpc
from alliance_gateway import schema
from alliance_gateway.home import GatewayHome
from alliance_member import onboarding
from alliance_member.gateway_client import GatewayClient
from alliance_member.home import MemberHome
from alliance_member.querier import Consent, Querier, Subject
from tests.conftest import running_alliance

pytestmark = pytest.mark.e2e

MEMBERS = ["lender-a", "lender-b", "lender-c", "lender-d"]
AS_OF = date(2026, 6, 30)
CONSENT = Consent("CONSENT-1", hashlib.sha256(b"authorisation").digest())


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def alliance(request, tmp_path_factory):  # type: ignore[no-untyped-def]
    yield from running_alliance(request.param, tmp_path_factory, MEMBERS, AS_OF)


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "alliance_cli.main", *args], capture_output=True, text=True, timeout=120)


def _subject(dataset) -> Subject:  # type: ignore[no-untyped-def]
    s = dataset.subjects[0]
    return Subject(s.id_type, s.canonical_id)


def _log_entries(net) -> list[dict]:  # type: ignore[no-untyped-def]
    engine = db.make_engine(GatewayHome(net.gateway_home).config().db_url)
    with engine.connect() as conn:
        rows = conn.execute(select(schema.log_entries.c.seq, schema.log_entries.c.data).order_by(schema.log_entries.c.seq)).all()
    engine.dispose()
    return [audit_entry.decode(bytes(r.data), index=r.seq) for r in rows]


# -- mutual TLS --------------------------------------------------------------

def _health_rpc(channel: grpc.Channel) -> None:
    pb_grpc.GatewayStub(channel).GetCheckpoint(pb.GetCheckpointRequest(), timeout=3)


def test_plaintext_client_is_refused(alliance) -> None:
    net, _ = alliance
    for endpoint in [net.gateway_endpoint, net.members["lender-b"].endpoint]:
        with grpc.insecure_channel(endpoint) as channel, pytest.raises(grpc.RpcError) as exc:
            _health_rpc(channel)
        assert exc.value.code() == grpc.StatusCode.UNAVAILABLE


def test_client_without_certificate_is_refused(alliance) -> None:
    net, _ = alliance
    ca = (net.gateway_home / "ca.crt").read_bytes()
    with grpc.secure_channel(net.gateway_endpoint, grpc.ssl_channel_credentials(root_certificates=ca)) as channel:
        with pytest.raises(grpc.RpcError) as exc:
            _health_rpc(channel)
    assert exc.value.code() == grpc.StatusCode.UNAVAILABLE


def test_certificate_from_another_ca_is_refused(alliance) -> None:
    net, _ = alliance
    key, cert = pki.create_ca("rogue CA")
    tls = pki.new_tls_key()
    now = datetime.now(timezone.utc)
    rogue = pki.issue_tls_certificate(key, cert, tls.public_key(), member_id="lender-a", role="member",
                                      not_before=now - timedelta(minutes=1), not_after=now + timedelta(days=1))
    creds = grpc.ssl_channel_credentials(root_certificates=(net.gateway_home / "ca.crt").read_bytes(),
                                         private_key=pki.tls_key_pem(tls), certificate_chain=pki.cert_pem(rogue))
    for endpoint in [net.gateway_endpoint, net.members["lender-b"].endpoint]:
        with grpc.secure_channel(endpoint, creds) as channel, pytest.raises(grpc.RpcError) as exc:
            _health_rpc(channel)
        assert exc.value.code() == grpc.StatusCode.UNAVAILABLE


def test_members_answer_only_the_gateway(alliance) -> None:
    """A member's certificate is valid, but only the gateway role may ask members."""
    net, _ = alliance
    home = MemberHome(net.members["lender-a"].home)
    from alliance import transport
    channel = transport.secure_channel(net.members["lender-b"].endpoint, home.tls_key.read_bytes(),
                                       home.tls_cert.read_bytes(), home.ca_cert.read_bytes())
    with channel:
        with pytest.raises(grpc.RpcError) as exc:
            pb_grpc.MemberNodeStub(channel).Answer(pb.MemberQueryRequest(), timeout=5)
        assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED and "wrong_role" in exc.value.details()
        with pytest.raises(grpc.RpcError) as exc:  # SPEC §8 AnswerBatch: the same gate
            pb_grpc.MemberNodeStub(channel).AnswerBatch(pb.MemberQueryBatch(items=[pb.MemberQueryRequest()]), timeout=5)
        assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED and "wrong_role" in exc.value.details()


# -- consent, purpose, quota ---------------------------------------------------

def test_query_without_consent_is_refused_and_logged(alliance) -> None:
    net, dataset = alliance
    q = Querier(net.members["lender-a"].home)
    try:
        params = protocol.QueryParams(
            querier_id="lender-a", credential_serial=q.credential.serial,
            subject_token=bytes(32), matching_key_epoch=q.matching_key.epoch, purpose="LOAN_APPROVAL",
            consent_id="", consent_sha256=b"", as_of=AS_OF, mode=pb.QUERY_MODE_REPORT,
            paillier_key_fingerprint=q.public_key.fingerprint(), timestamp_ms=int(time.time() * 1000))
        signed = protocol.build_signed_query(params, q.signing_key)
        with pytest.raises(Refused, match="consent"):
            q.client.query(signed)
    finally:
        q.close()
    last = _log_entries(net)[-1]
    assert last["outcome"] == "refused" and last["reason"] == "missing_consent" and last["querier_id"] == "lender-a"


def test_unknown_purpose_is_a_usage_error(alliance) -> None:
    """The CLI offers the three purposes as a choice (exit 2); a request
    carrying another purpose is refused by the gateway (exit 4), see
    tests/test_gateway_service.py and the audit verifier's reason rules."""
    net, dataset = alliance
    s = dataset.subjects[0]
    out = cli("member", "query", "--home", str(net.members["lender-a"].home), "--id-type", s.id_type, "--id", s.canonical_id,
              "--purpose", "MARKETING", "--consent-id", "C", "--consent-sha256", "00" * 32)
    assert out.returncode == 2 and "purpose" in out.stderr.lower() and "Traceback" not in out.stderr


def test_quota_is_enforced_live_and_logged(alliance) -> None:
    net, dataset = alliance
    admin = str(net.admin_home)
    assert cli("admin", "member", "set-quota", "--home", admin, "lender-d", "0").returncode == 0
    time.sleep(1.2)  # registry refresh
    s = dataset.subjects[0]
    out = cli("member", "query", "--home", str(net.members["lender-d"].home), "--id-type", s.id_type, "--id", s.canonical_id,
              "--purpose", "LOAN_APPROVAL", "--consent-id", "C", "--consent-sha256", "00" * 32)
    assert out.returncode == 4 and "quota" in out.stderr, out.stderr
    kinds = [(e["kind"], e.get("reason")) for e in _log_entries(net)]
    assert ("quota_changed", None) in kinds and ("query", "quota_exceeded") in kinds
    assert cli("admin", "member", "set-quota", "--home", admin, "lender-d", "1000").returncode == 0


# -- live suspension and revocation --------------------------------------------

def test_suspend_and_revoke_take_effect_within_5s_while_queries_run(alliance) -> None:
    net, dataset = alliance
    subject = _subject(dataset)
    q = Querier(net.members["lender-a"].home)
    asked: list[tuple[float, list[str]]] = []
    stop = threading.Event()

    import random

    from alliance import synthetic
    fresh = iter(synthetic.unknown_subjects(random.Random(7), 2000))  # a pinned subject would not show who is asked (§5.3)

    def load() -> None:
        while not stop.is_set():
            f = next(fresh)
            result = q.client.query(q._signed(Subject(f.id_type, f.canonical_id), "LOAN_APPROVAL", CONSENT, AS_OF, pb.QUERY_MODE_REPORT)[0])
            asked.append((time.monotonic(), list(result.asked_member_ids)))

    worker = threading.Thread(target=load, daemon=True)
    worker.start()
    try:
        time.sleep(0.5)
        t0 = time.monotonic()
        assert cli("admin", "member", "suspend", "--home", str(net.admin_home), "lender-b").returncode == 0
        _wait_until(lambda: asked and asked[-1][0] > t0 and "lender-b" not in asked[-1][1], 5.0, "suspension")
        suspended_at = time.monotonic() - t0
        out = cli("member", "query", "--home", str(net.members["lender-b"].home), "--id-type", subject.id_type,
                  "--id", subject.canonical_id, "--purpose", "LOAN_APPROVAL", "--consent-id", "C", "--consent-sha256", "00" * 32)
        assert out.returncode == 4 and "suspended" in out.stderr
        assert cli("admin", "member", "resume", "--home", str(net.admin_home), "lender-b").returncode == 0
        t1 = time.monotonic()
        _wait_until(lambda: asked and asked[-1][0] > t1 and "lender-b" in asked[-1][1], 5.0, "resumption")
        assert cli("admin", "member", "revoke", "--home", str(net.admin_home), "lender-c", "--yes").returncode == 0
        t2 = time.monotonic()
        _wait_until(lambda: asked and asked[-1][0] > t2 and "lender-c" not in asked[-1][1], 5.0, "revocation")
    finally:
        stop.set()
        worker.join(10)
        q.close()
    assert suspended_at < 5.0
    out = cli("member", "query", "--home", str(net.members["lender-c"].home), "--id-type", subject.id_type,
              "--id", subject.canonical_id, "--purpose", "LOAN_APPROVAL", "--consent-id", "C", "--consent-sha256", "00" * 32)
    assert out.returncode == 4 and "revoked" in out.stderr
    assert cli("admin", "member", "resume", "--home", str(net.admin_home), "lender-c").returncode == 4  # revocation is final
    kinds = [e["kind"] for e in _log_entries(net)]
    assert {"member_suspended", "member_resumed", "member_revoked"} <= set(kinds)


def _wait_until(condition, timeout_s: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"{what} did not take effect within {timeout_s}s")


# -- the matching key never reaches the operator ---------------------------------

def test_fake_member_admitted_by_the_operator_gets_no_matching_key(alliance, tmp_path) -> None:
    """The operator admits 'lender-x' with keys it controls. The founder shares
    only after checking the fingerprint the real newcomer gave out of band, so
    the share is refused; and the operator cannot open a share sent to a real
    member either."""
    net, _ = alliance
    fake_home = tmp_path / "fake"
    real_fp = onboarding.own_fingerprint(MemberHome(net.members["lender-d"].home))
    result = onboarding.keygen(fake_home, member_id="lender-x", name="Not A Lender", role="member",
                               endpoint="127.0.0.1:1", listen="127.0.0.1:1", gateway=net.gateway_endpoint)
    from alliance_gateway.admin import Admin
    onboarding.join(fake_home, Admin(net.admin_home).add(result.join_request.read_bytes(), expected_role="member"))
    founder = net.members["lender-a"].home
    with pytest.raises(Refused, match="fingerprint"):
        onboarding.share_matching_key(founder, recipient_id="lender-x", recipient_fingerprint=pki.format_fingerprint(real_fp))
    # A genuine share to lender-d sits at the gateway; the fake member cannot open it.
    onboarding.share_matching_key(founder, recipient_id="lender-d", recipient_fingerprint=pki.format_fingerprint(real_fp))
    onboarding.share_matching_key(founder, recipient_id="lender-d", recipient_fingerprint=pki.format_fingerprint(real_fp))
    with GatewayClient(MemberHome(net.members["lender-d"].home)) as client:
        assert len(client.key_shares()) == 1  # only a sender's newest share waits: no one can bury another's
    from alliance import matching_key
    mk = matching_key.load(MemberHome(founder).matching_key)
    with GatewayClient(MemberHome(fake_home)) as client:
        assert client.key_shares() == []  # shares are only handed to their recipient
    engine = db.make_engine(GatewayHome(net.gateway_home).config().db_url)
    with engine.connect() as conn:
        shares = [pb.MatchingKeyShare.FromString(bytes(r.share)) for r in conn.execute(select(schema.key_shares.c.share))]
    engine.dispose()
    fake_x25519 = pki.MemberKeys.load(fake_home).x25519_key
    founder_pub = pki.ed25519_public_raw(pki.MemberKeys.load(founder).ed25519_key)
    for share in shares:
        assert mk.key not in share.SerializeToString()
        with pytest.raises(Exception):
            matching_key.open_share(share, recipient_id="lender-x", recipient_x25519_key=fake_x25519,
                                    sender_ed25519_public=founder_pub, expected_check_value=matching_key.check_value(mk.key))
