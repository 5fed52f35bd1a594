"""Log-gated trust end to end, with real processes (SPEC §1 property 8,
§5.1): the local alliance is built through the real sponsorship flow; a
member the operator admits alone (`admin member add`, no sponsorship) gets
no answer, through the gateway or by calling a member directly with the
gateway's certificate; `member sponsor` admits it for real; a revocation in
the log stops the members answering within seconds."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from datetime import date
from typing import Any

import grpc
import pytest

from alliance import identity, matching_key, paillier, pki, protocol, transport
from alliance.v1 import alliance_pb2 as pb
from alliance.v1 import alliance_pb2_grpc as pb_grpc
from alliance_cli.localnet import free_port
from alliance_member.home import MemberHome
from tests.conftest import import_fresh_loans, running_alliance, wait_views_cover

pytestmark = pytest.mark.e2e

MEMBERS = ["lender-a", "lender-b", "lender-c", "lender-d"]
AS_OF = date(2026, 6, 30)


@pytest.fixture(scope="module")
def alliance(tmp_path_factory):  # type: ignore[no-untyped-def]
    yield from running_alliance("sqlite", tmp_path_factory, MEMBERS, AS_OF)


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "alliance_cli.main", *args], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def outsider(alliance, tmp_path_factory):  # type: ignore[no-untyped-def]
    """lender-x: admitted by the operator alone, handed the matching key (so
    it can make subject tokens) but sponsored by nobody."""
    net, _ = alliance
    home = tmp_path_factory.mktemp("outsider") / "lender-x"
    port = free_port()
    keygen = cli("member", "keygen", "--home", str(home), "--id", "lender-x", "--name", "X", "--endpoint", f"127.0.0.1:{port}",
                 "--gateway", net.gateway_endpoint)
    assert keygen.returncode == 0, keygen.stderr
    fingerprint = keygen.stdout.split("fingerprint:")[1].strip()
    bundle = home.parent / "bundle.json"
    add = cli("admin", "member", "add", "--home", str(net.admin_home), "--request", str(home / "join-request.bin"), "--out", str(bundle))
    assert add.returncode == 0, add.stderr
    assert cli("member", "join", "--home", str(home), "--bundle", str(bundle)).returncode == 0
    founder = MemberHome(net.members["lender-a"].home)
    matching_key.save(MemberHome(home).matching_key, matching_key.load(founder.matching_key))
    # SPEC §10: a fresh book, so what stops it is the trust rule; then every member's view holds its credential
    wait_views_cover(net, import_fresh_loans(home, home.parent / "data") + 1)
    return home, fingerprint


def query(home, dataset) -> subprocess.CompletedProcess:  # type: ignore[no-untyped-def]
    s = dataset.subjects[0]
    return cli("member", "query", "--home", str(home), "--id-type", s.id_type, "--id", s.canonical_id, "--purpose", "LOAN_APPROVAL",
               "--consent-id", "C-1", "--consent-sha256", "ab" * 32, "--as-of", AS_OF.isoformat(), "--json")


def direct_answer(net, target: str, querier_home, *, batched: bool = False) -> Any:  # type: ignore[no-untyped-def]
    """What an operator holding the gateway's TLS key can do: call a member
    node directly, bypassing the gateway and its log."""
    q = MemberHome(querier_home)
    credential = pb.Credential.FromString(q.credential.read_bytes())
    body = pb.CredentialBody.FromString(credential.body)
    mk = matching_key.load(q.matching_key)
    signed = protocol.build_signed_query(protocol.QueryParams(
        querier_id=body.member_id, credential_serial=body.serial,
        subject_token=identity.subject_token(mk.key, "RESIDENT_ID", "11010519491231002X"), matching_key_epoch=mk.epoch,
        purpose="LOAN_APPROVAL", consent_id="C-1", consent_sha256=b"\x01" * 32, as_of=AS_OF, mode=pb.QUERY_MODE_REPORT,
        paillier_key_fingerprint=paillier.PaillierPublicKey.from_bytes(body.paillier_n).fingerprint(),
        timestamp_ms=int(time.time() * 1000)), pki.load_ed25519_private_pem(q.signing_key))
    g = net.gateway_home
    channel = transport.secure_channel(net.members[target].endpoint, pki.read_private_file(g / "gateway.key"),
                                       (g / "gateway.crt").read_bytes(), (g / "ca.crt").read_bytes())
    request = pb.MemberQueryRequest(query=signed, querier_credential=credential.SerializeToString())
    try:
        if batched:  # SPEC §8 AnswerBatch: the same request twice
            return pb_grpc.MemberNodeStub(channel).AnswerBatch(pb.MemberQueryBatch(items=[request, request]), timeout=10)
        return pb_grpc.MemberNodeStub(channel).Answer(request, timeout=10)
    finally:
        channel.close()


def test_the_local_alliance_was_built_through_logged_sponsorships(alliance) -> None:  # type: ignore[no-untyped-def]
    net, dataset = alliance
    from tests.test_trust_e2e import _log_entries

    entries = _log_entries(net)
    created = [e for e in entries if e["kind"] == "matching_key_created"]
    sponsored = {(e["sponsor_id"], e["member_id"]) for e in entries if e["kind"] == "member_sponsored"}
    assert [e["member_id"] for e in created] == ["lender-a"]
    # both ways along each key hand-over: the sender sponsors at `share`, the newcomer at `install`
    assert sponsored == {("lender-a", m) for m in MEMBERS[1:]} | {(m, "lender-a") for m in MEMBERS[1:]}
    result = query(net.members["lender-b"].home, dataset)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["members_answered"] == 3


def test_a_member_admitted_by_the_operator_alone_gets_no_answer(alliance, outsider) -> None:  # type: ignore[no-untyped-def]
    net, dataset = alliance
    home, _ = outsider
    result = query(home, dataset)
    assert result.returncode in (4, 5) and "not_sponsored" in result.stderr, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr


def test_the_gateway_certificate_buys_no_answer_for_an_unsponsored_querier(alliance, outsider) -> None:  # type: ignore[no-untyped-def]
    net, _ = alliance
    home, _ = outsider
    for target in MEMBERS:
        with pytest.raises(grpc.RpcError) as exc:
            direct_answer(net, target, home)
        assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED and "not_sponsored" in exc.value.details()
        batch = direct_answer(net, target, home, batched=True)  # AnswerBatch: each item refused alike
        assert [(i.error.reason, i.error.code) for i in batch.items] == [("not_sponsored", grpc.StatusCode.PERMISSION_DENIED.value[0])] * 2


def test_member_sponsor_admits_it_for_real(alliance, outsider) -> None:  # type: ignore[no-untyped-def]
    net, dataset = alliance
    home, fingerprint = outsider
    wrong = cli("member", "sponsor", "--home", str(net.members["lender-b"].home), "--to", "lender-x", "--fingerprint", "00" * 32)
    assert wrong.returncode == 4 and "fingerprint" in wrong.stderr
    ok = cli("member", "sponsor", "--home", str(net.members["lender-b"].home), "--to", "lender-x", "--fingerprint", fingerprint)
    assert ok.returncode == 0, ok.stderr
    deadline = time.monotonic() + 15
    while True:  # every member's feed follows within a few seconds
        try:
            assert direct_answer(net, "lender-c", home).member_id == "lender-c"
            break
        except grpc.RpcError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    # As `member matching-key install --from lender-b` would have: the newcomer's root is its sponsor, whose
    # fingerprint it confirmed out of band. A querier counts only answers of members trusted in its own view.
    from alliance import db
    from alliance_member import feed as feed_mod
    from alliance_member import onboarding

    engine = db.make_engine(MemberHome(home).db_url())
    feed_mod.add_root(engine, "lender-b", onboarding.own_fingerprint(MemberHome(net.members["lender-b"].home)), "install")
    engine.dispose()
    result = query(home, dataset)
    assert result.returncode == 0, result.stderr


def test_no_key_share_goes_to_a_member_that_is_not_trusted_and_active(alliance, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """`matching-key share` sponsors first and sends the key only to a member
    trusted and active in the sender's proven view of the log."""
    from sqlalchemy import select

    from alliance import db
    from alliance_gateway import schema
    from alliance_gateway.home import GatewayHome

    net, _ = alliance
    home = tmp_path / "lender-y"
    keygen = cli("member", "keygen", "--home", str(home), "--id", "lender-y", "--name", "Y", "--endpoint", f"127.0.0.1:{free_port()}",
                 "--gateway", net.gateway_endpoint)
    fingerprint = keygen.stdout.split("fingerprint:")[1].strip()
    assert cli("admin", "member", "add", "--home", str(net.admin_home), "--request", str(home / "join-request.bin"),
               "--out", str(tmp_path / "y.json")).returncode == 0
    assert cli("member", "join", "--home", str(home), "--bundle", str(tmp_path / "y.json")).returncode == 0
    assert cli("admin", "member", "suspend", "--home", str(net.admin_home), "lender-y").returncode == 0
    share = cli("member", "matching-key", "share", "--home", str(net.members["lender-a"].home), "--to", "lender-y",
                "--fingerprint", fingerprint)
    assert share.returncode == 4 and "member_inactive" in share.stderr, share.stderr
    engine = db.make_engine(GatewayHome(net.gateway_home).config().db_url)
    with engine.connect() as conn:
        waiting = conn.execute(select(schema.key_shares.c.id).where(schema.key_shares.c.recipient_id == "lender-y")).all()
    engine.dispose()
    assert waiting == []


def test_a_revocation_in_the_log_stops_every_member_answering(alliance) -> None:  # type: ignore[no-untyped-def]
    net, _ = alliance
    querier = net.members["lender-d"].home
    assert direct_answer(net, "lender-b", querier).member_id == "lender-b"
    revoke = cli("admin", "member", "revoke", "--home", str(net.admin_home), "lender-d", "--yes")
    assert revoke.returncode == 0, revoke.stderr
    time.sleep(6)  # feeds refresh at least every 5 s
    for target in ("lender-a", "lender-b", "lender-c"):
        with pytest.raises(grpc.RpcError) as exc:
            direct_answer(net, target, querier)
        assert "member_inactive" in exc.value.details()
