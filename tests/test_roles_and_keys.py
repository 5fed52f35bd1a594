"""SPEC §5.2 roles on both ends and §5.4 key handling: clients talk only to a
gateway-role server, member nodes answer only the gateway role, certificates
carry only the names asked for, private keys load only at mode 0600, the CA
key can be encrypted at rest, and the gateway refuses k_min < 2.

The alliance here is built through the real onboarding path (admin init →
member keygen → admin member add → member join), offline; the servers are
real mutual-TLS gRPC servers in this process."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from contextlib import contextmanager
from datetime import date
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from alliance import identity, matching_key, pki, protocol, transport
from alliance.errors import InvalidInput, Refused, Unreachable
from alliance.v1 import alliance_pb2 as pb
from alliance.v1 import alliance_pb2_grpc as pb_grpc
from alliance_auditor import log_source
from alliance_gateway import admin as admin_ops
from alliance_gateway.home import GatewayHome
from alliance_member import onboarding
from alliance_member.gateway_client import GatewayClient
from alliance_member.home import MemberHome
from alliance_member.querier import Querier

HOST = "127.0.0.1"
SUBJECT = ("RESIDENT_ID", "11010519491231002X")
SENTINEL_CHECKPOINT = "sentinel checkpoint from the stub server\n"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class Net:
    """Homes of one local alliance: admin, gateway, lender-a, lender-b, auditor."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.admin, self.gateway = root / "admin", root / "gateway"
        self.gateway_endpoint = f"{HOST}:{_free_port()}"
        admin_ops.init_alliance(self.admin, self.gateway, alliance_name="roles.test", listen=self.gateway_endpoint,
                                gateway_endpoint=self.gateway_endpoint, hosts=(HOST,), local=True)
        registry = admin_ops.Admin(self.admin)
        self.homes: dict[str, Path] = {}
        self.fingerprints: dict[str, str] = {}
        for mid, role in (("lender-a", "member"), ("lender-b", "member"), ("auditor", "auditor")):
            home = root / mid
            endpoint = f"{HOST}:{_free_port()}" if role == "member" else ""
            result = onboarding.keygen(home, member_id=mid, name=f"{mid} ltd", role=role, endpoint=endpoint,
                                       listen=endpoint, gateway=self.gateway_endpoint)
            onboarding.join(home, registry.add(result.join_request.read_bytes(), expected_role=role))
            self.homes[mid] = home
            self.fingerprints[mid] = result.fingerprint
        # Both members hold the same matching key (installed directly: the hand-over is tested elsewhere).
        self.mk = onboarding.create_matching_key(self.homes["lender-a"])
        matching_key.save(MemberHome(self.homes["lender-b"]).matching_key, self.mk)

    def tls(self, who: str) -> tuple[bytes, bytes, bytes]:
        """(key, cert, ca) PEM of a party: 'gateway' or a member/auditor id."""
        if who == "gateway":
            g = GatewayHome(self.gateway)
            return g.tls_key.read_bytes(), g.tls_cert.read_bytes(), g.ca_cert.read_bytes()
        h = MemberHome(self.homes[who])
        return h.tls_key.read_bytes(), h.tls_cert.read_bytes(), h.ca_cert.read_bytes()


@pytest.fixture(scope="module")
def net(tmp_path_factory) -> Net:  # type: ignore[no-untyped-def]
    return Net(tmp_path_factory.mktemp("roles"))


# ---------------------------------------------------------------------------
# Clients of the gateway accept only a gateway-role server


class StubGateway(pb_grpc.GatewayServicer):
    def GetCheckpoint(self, request, context):  # type: ignore[no-untyped-def]
        return pb.GetCheckpointResponse(checkpoint=SENTINEL_CHECKPOINT)


@contextmanager
def stub_gateway(net: Net, presenting: str):  # type: ignore[no-untyped-def]
    """A gateway API server presenting ``presenting``'s certificate (all from the alliance CA)."""
    key, cert, ca = net.tls(presenting)
    server = transport.make_server(max_workers=4)
    pb_grpc.add_GatewayServicer_to_server(StubGateway(), server)
    port = server.add_secure_port(f"{HOST}:0", transport.server_credentials(key, cert, ca))
    server.start()
    try:
        yield f"{HOST}:{port}"
    finally:
        server.stop(grace=None)


@pytest.mark.parametrize("impostor", ["lender-b", "auditor"])
def test_gateway_client_refuses_a_non_gateway_server(net: Net, impostor: str) -> None:
    with stub_gateway(net, impostor) as target:
        with GatewayClient(MemberHome(net.homes["lender-a"]), target=target, timeout_s=5) as client:
            with pytest.raises(Unreachable):
                client.checkpoint()


def test_gateway_client_talks_to_the_gateway_certificate(net: Net) -> None:
    """The control: same stub, same client, the gateway's certificate → it works."""
    with stub_gateway(net, "gateway") as target:
        with GatewayClient(MemberHome(net.homes["lender-a"]), target=target, timeout_s=5) as client:
            assert client.checkpoint() == SENTINEL_CHECKPOINT


def test_querier_refuses_a_member_certificate_posing_as_the_gateway(net: Net) -> None:
    home = MemberHome(net.homes["lender-a"])
    cfg = json.loads((home.path / "member.json").read_text())
    for presenting, ok in (("lender-b", False), ("gateway", True)):
        with stub_gateway(net, presenting) as target:
            (home.path / "member.json").write_text(json.dumps({**cfg, "gateway": target}))
            try:
                q = Querier(home.path)
                try:
                    if ok:
                        assert q.client.checkpoint() == SENTINEL_CHECKPOINT
                    else:
                        with pytest.raises(Unreachable):
                            q.client.checkpoint()
                finally:
                    q.client.close()
            finally:
                (home.path / "member.json").write_text(json.dumps(cfg))


def test_auditor_client_refuses_a_member_certificate_posing_as_the_gateway(net: Net) -> None:
    home = MemberHome(net.homes["auditor"])
    cfg = json.loads((home.path / "member.json").read_text())
    for presenting, ok in (("lender-a", False), ("gateway", True)):
        with stub_gateway(net, presenting) as target:
            (home.path / "member.json").write_text(json.dumps({**cfg, "gateway": target}))
            try:
                source = log_source.connect(home)
                try:
                    if ok:
                        assert source.checkpoint() == SENTINEL_CHECKPOINT
                    else:
                        with pytest.raises(Unreachable):
                            source.checkpoint()
                finally:
                    source.close()
            finally:
                (home.path / "member.json").write_text(json.dumps(cfg))


# ---------------------------------------------------------------------------
# Member nodes answer only the gateway role


@pytest.fixture(scope="module")
def member_b(net: Net):  # type: ignore[no-untyped-def]
    from alliance_member.server import build_server

    server, port = build_server(net.homes["lender-b"], listen=f"{HOST}:0")
    server.start()
    yield f"{HOST}:{port}"
    server.stop(grace=None)


def _answer_request(net: Net) -> pb.MemberQueryRequest:
    q = MemberHome(net.homes["lender-a"])
    credential = pb.Credential.FromString(q.credential.read_bytes())
    body = pb.CredentialBody.FromString(credential.body)
    paillier_n = body.paillier_n
    from alliance import paillier

    pk = paillier.PaillierPublicKey.from_bytes(paillier_n)
    signed = protocol.build_signed_query(protocol.QueryParams(
        querier_id="lender-a", credential_serial=body.serial, subject_token=identity.subject_token(net.mk.key, *SUBJECT),
        matching_key_epoch=net.mk.epoch, purpose="LOAN_APPROVAL", consent_id="C-1", consent_sha256=b"\x01" * 32,
        as_of=date(2026, 6, 30), mode=pb.QUERY_MODE_REPORT, paillier_key_fingerprint=pk.fingerprint(),
        timestamp_ms=int(time.time() * 1000),
    ), pki.load_ed25519_private_pem(q.signing_key))
    return pb.MemberQueryRequest(query=signed, querier_credential=credential.SerializeToString())


def _call_answer(net: Net, target: str, caller: str) -> pb.MemberQueryResponse:
    channel = transport.secure_channel(target, *net.tls(caller))
    try:
        return pb_grpc.MemberNodeStub(channel).Answer(_answer_request(net), timeout=10)
    finally:
        channel.close()


@pytest.mark.parametrize("caller", ["lender-a", "auditor"])
def test_member_node_refuses_answer_to_non_gateway_roles(net: Net, member_b: str, caller: str) -> None:
    with pytest.raises(grpc.RpcError) as exc:
        _call_answer(net, member_b, caller)
    assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "wrong_role" in exc.value.details()
    assert dict(exc.value.trailing_metadata() or ()).get("alliance-reason") == "wrong_role"


@pytest.mark.parametrize("caller", ["lender-a", "auditor"])
def test_member_node_refuses_every_rpc_to_non_gateway_roles(net: Net, member_b: str, caller: str) -> None:
    """Health and reflection too: a member node serves the gateway role only."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    channel = transport.secure_channel(member_b, *net.tls(caller))
    try:
        with pytest.raises(grpc.RpcError) as exc:
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED
    finally:
        channel.close()


def test_member_node_lets_the_gateway_certificate_through_to_its_trust_checks(net: Net, member_b: str) -> None:
    """The gateway role passes the TLS role check; what it forwards is then
    judged by the member's own view of the log (SPEC §5.1). This alliance
    runs no gateway, so lender-b has no view and answers nobody: the
    operator's certificate alone buys nothing."""
    with pytest.raises(grpc.RpcError) as exc:
        _call_answer(net, member_b, "gateway")
    assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "feed_stale" in exc.value.details() and "wrong_role" not in exc.value.details()


# ---------------------------------------------------------------------------
# Certificates carry only the names asked for; the gateway name is reserved


def _sans(cert_pem: bytes) -> tuple[list[str], list[str]]:
    san = x509.load_pem_x509_certificate(cert_pem).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return san.get_values_for_type(x509.DNSName), [str(i) for i in san.get_values_for_type(x509.IPAddress)]


def test_gateway_certificate_carries_the_reserved_name_and_members_do_not(net: Net) -> None:
    dns, _ = _sans(net.tls("gateway")[1])
    assert "gateway.alliance.invalid" in dns
    for who in ("lender-a", "auditor"):
        dns, _ = _sans(net.tls(who)[1])
        assert not any(d.endswith("alliance.invalid") for d in dns)


def test_production_alliance_certificates_carry_only_the_requested_names(tmp_path: Path) -> None:
    admin_ops.init_alliance(tmp_path / "admin", tmp_path / "gw", alliance_name="prod.test", listen="0.0.0.0:50051",
                            gateway_endpoint="gw.example:50051", hosts=("gw.example",))
    registry = admin_ops.Admin(tmp_path / "admin")
    a = onboarding.keygen(tmp_path / "a", member_id="lender-a", name="A", role="member", endpoint="a.example:7001",
                          listen="0.0.0.0:7001", gateway="gw.example:50051")
    onboarding.join(tmp_path / "a", registry.add(a.join_request.read_bytes(), expected_role="member"))
    assert _sans(MemberHome(tmp_path / "a").tls_cert.read_bytes()) == (["a.example"], [])
    aud = onboarding.keygen(tmp_path / "aud", member_id="auditor", name="Aud", role="auditor", endpoint="",
                            listen="", gateway="gw.example:50051")
    onboarding.join(tmp_path / "aud", registry.add(aud.join_request.read_bytes(), expected_role="auditor"))
    assert _sans(MemberHome(tmp_path / "aud").tls_cert.read_bytes()) == ([], [])
    assert _sans(GatewayHome(tmp_path / "gw").tls_cert.read_bytes()) == (["gateway.alliance.invalid", "gw.example"], [])
    # A member asking for a loopback endpoint outside local mode gets no certificate.
    lo = onboarding.keygen(tmp_path / "lo", member_id="lender-lo", name="Lo", role="member", endpoint="127.0.0.1:7002",
                           listen="127.0.0.1:7002", gateway="gw.example:50051")
    with pytest.raises(InvalidInput, match="loopback"):
        registry.add(lo.join_request.read_bytes(), expected_role="member")


def test_local_alliance_certificates_add_loopback_names(net: Net) -> None:
    dns, ips = _sans(net.tls("lender-a")[1])
    assert dns == ["localhost"] and ips == ["127.0.0.1"]
    dns, ips = _sans(net.tls("auditor")[1])
    assert dns == ["localhost"] and ips == ["127.0.0.1"]


@pytest.mark.parametrize("host", ["gateway.alliance.invalid", "x.alliance.invalid", "alliance.invalid", "GATEWAY.Alliance.Invalid"])
def test_the_ca_never_puts_the_reserved_name_in_another_role(host: str) -> None:
    import datetime as dt

    ca_key, ca_cert = pki.create_ca("t")
    now = dt.datetime.now(dt.timezone.utc)
    for role in ("member", "auditor"):
        with pytest.raises(InvalidInput, match="reserved"):
            pki.issue_tls_certificate(ca_key, ca_cert, pki.new_tls_key().public_key(), member_id="lender-x", role=role,
                                      hosts=(host,), not_before=now, not_after=now + dt.timedelta(days=1), local=True)
    with pytest.raises(InvalidInput, match="reserved"):
        pki.check_endpoint(f"{host}:7001", "join request")


# ---------------------------------------------------------------------------
# Private keys load only at mode 0600


@contextmanager
def mode(path: Path, m: int):  # type: ignore[no-untyped-def]
    old = stat.S_IMODE(path.stat().st_mode)
    os.chmod(path, m)
    try:
        yield
    finally:
        os.chmod(path, old)


def _refused_insecure(fn) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(Refused) as exc:
        fn()
    assert exc.value.reason == "insecure_key_file" and "0644" in str(exc.value)


def test_tls_key_readable_by_others_is_refused(net: Net) -> None:
    from alliance_gateway.server import build_server as build_gateway
    from alliance_member.server import build_server as build_member

    home = MemberHome(net.homes["lender-a"])
    with mode(home.tls_key, 0o644):
        _refused_insecure(lambda: GatewayClient(home))
        _refused_insecure(lambda: build_member(home.path, listen=f"{HOST}:0"))
    with mode(GatewayHome(net.gateway).tls_key, 0o644):
        _refused_insecure(lambda: build_gateway(net.gateway, listen=f"{HOST}:0"))


def test_paillier_key_readable_by_others_is_refused(net: Net) -> None:
    home = MemberHome(net.homes["lender-a"])

    class NoClient:
        def close(self) -> None: ...

    with mode(home.paillier_key, 0o644):
        _refused_insecure(lambda: Querier(home.path, client=NoClient()))  # type: ignore[arg-type]
    Querier(home.path, client=NoClient())  # type: ignore[arg-type]  # at 0600 it loads


def test_ed25519_key_readable_by_others_is_refused(net: Net) -> None:
    from alliance_member.server import build_server as build_member

    home = MemberHome(net.homes["lender-b"])
    assert stat.S_IMODE(home.signing_key.stat().st_mode) == 0o600
    with mode(home.signing_key, 0o644):
        _refused_insecure(lambda: build_member(home.path, listen=f"{HOST}:0"))
    with mode(GatewayHome(net.gateway).log_key, 0o644):
        _refused_insecure(lambda: pki.load_ed25519_private_pem(GatewayHome(net.gateway).log_key))


def test_ca_key_readable_by_others_is_refused_by_the_cli(net: Net, tmp_path: Path) -> None:
    req = tmp_path / "req.bin"
    onboarding.keygen(tmp_path / "c", member_id="lender-c", name="C", role="member", endpoint=f"{HOST}:7003",
                      listen=f"{HOST}:7003", gateway=net.gateway_endpoint)
    req.write_bytes(MemberHome(tmp_path / "c").join_request.read_bytes())
    with mode(net.admin / "ca.key", 0o644):
        r = cli("admin", "member", "add", "--home", str(net.admin), "--request", str(req), "--out", str(tmp_path / "b"))
    assert_one_line_error(r, 4, "ca.key is readable by group or others")
    assert not (tmp_path / "b").exists()


# ---------------------------------------------------------------------------
# The CA key encrypted at rest (real CLI)


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    e = {k: v for k, v in os.environ.items() if k not in ("ALLIANCE_CA_PASSPHRASE", "ALLIANCE_DEBUG")}
    return subprocess.run([sys.executable, "-m", "alliance_cli.main", *args], capture_output=True, text=True,
                          timeout=120, env={**e, **(env or {})})


def assert_one_line_error(r: subprocess.CompletedProcess, status: int, text: str) -> None:
    assert r.returncode == status, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("alliance: error:") and text in lines[0], r.stderr


def _secret(path: Path, text: str) -> Path:
    path.write_text(text + "\n")
    os.chmod(path, 0o600)
    return path


def test_ca_key_encrypted_with_a_passphrase(tmp_path: Path) -> None:
    admin, gw = tmp_path / "admin", tmp_path / "gw"
    good = _secret(tmp_path / "pass", "correct horse battery staple")
    r = cli("admin", "init", "--home", str(admin), "--gateway-home", str(gw), "--listen", f"{HOST}:50051", "--local",
            "--passphrase-file", str(good))
    assert r.returncode == 0, r.stderr
    data = (admin / "ca.key").read_bytes()
    assert data.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert stat.S_IMODE((admin / "ca.key").stat().st_mode) == 0o600
    with pytest.raises(TypeError):  # cryptography: encrypted, no password given
        serialization.load_pem_private_key(data, password=None)
    key = serialization.load_pem_private_key(data, password=b"correct horse battery staple")
    ca_cert = x509.load_pem_x509_certificate((admin / "ca.crt").read_bytes())
    assert pki.spki_der(key) == pki.spki_der(ca_cert.public_key())  # type: ignore[arg-type]

    onboarding.keygen(tmp_path / "m", member_id="lender-m", name="M", role="member", endpoint=f"{HOST}:7009",
                      listen=f"{HOST}:7009", gateway=f"{HOST}:50051")
    req, out = MemberHome(tmp_path / "m").join_request, tmp_path / "bundle"
    add = ("admin", "member", "add", "--home", str(admin), "--request", str(req), "--out", str(out))

    assert_one_line_error(cli(*add, "--passphrase-file", str(_secret(tmp_path / "bad", "wrong"))), 4, "wrong passphrase")
    assert_one_line_error(cli(*add, env={"ALLIANCE_CA_PASSPHRASE": "also wrong"}), 4, "wrong passphrase")
    assert_one_line_error(cli(*add), 4, "is encrypted and no passphrase was given")
    loose = tmp_path / "loose"
    loose.write_text("correct horse battery staple\n")
    os.chmod(loose, 0o644)
    assert_one_line_error(cli(*add, "--passphrase-file", str(loose)), 4, "readable by group or others")
    assert not out.exists()

    r = cli(*add, env={"ALLIANCE_CA_PASSPHRASE": "correct horse battery staple"})
    assert r.returncode == 0, r.stderr
    bundle = json.loads(out.read_text())
    assert pki.verify_credential(__import__("base64").b64decode(bundle["credential"]), ca_cert).member_id == "lender-m"


def test_unencrypted_ca_key_stays_plain(tmp_path: Path) -> None:
    r = cli("admin", "init", "--home", str(tmp_path / "admin"), "--gateway-home", str(tmp_path / "gw"), "--listen", f"{HOST}:50051")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "admin" / "ca.key").read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")


# ---------------------------------------------------------------------------
# k_min


def test_gateway_refuses_to_start_with_k_min_1(net: Net, tmp_path: Path) -> None:
    import shutil

    from alliance_gateway.server import build_server

    gw = tmp_path / "gw"
    shutil.copytree(net.gateway, gw)
    cfg_path = gw / "gateway.json"
    cfg = json.loads(cfg_path.read_text())
    assert cfg["k_min"] == 2
    cfg_path.write_text(json.dumps({**cfg, "k_min": 1}))
    with pytest.raises(InvalidInput, match=r"gateway\.json: k_min is 1"):
        build_server(gw, listen=f"{HOST}:0")
    r = cli("gateway", "serve", "--home", str(gw), "--listen", f"{HOST}:0")
    assert_one_line_error(r, 3, f"{cfg_path}: k_min is 1")


def test_peer_identity_refuses_a_member_certificate_carrying_the_gateway_name() -> None:
    """Belt and braces against a CA bug: built by hand, as a faulty CA would."""
    import datetime as dt

    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    ca_key, ca_cert = pki.create_ca("t")
    now = dt.datetime.now(dt.timezone.utc)

    def cert(role: str) -> bytes:
        sans = [x509.UniformResourceIdentifier("urn:alliance:member:lender-x"),
                x509.UniformResourceIdentifier(f"urn:alliance:role:{role}"), x509.DNSName("gateway.alliance.invalid")]
        c = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "lender-x")]))
             .issuer_name(ca_cert.subject).public_key(pki.new_tls_key().public_key()).serial_number(9)
             .not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
             .add_extension(x509.SubjectAlternativeName(sans), critical=False).sign(ca_key, hashes.SHA256()))
        return pki.cert_pem(c)

    with pytest.raises(Refused, match="reserved name"):
        pki.peer_identity(cert("member"))
    assert pki.peer_identity(cert("gateway")) == ("lender-x", "gateway")


def test_a_second_gateway_on_a_port_in_use_fails_loudly(net: Net) -> None:
    """SPEC §12: no SO_REUSEPORT, so two replicas never share a port unnoticed."""
    from alliance.errors import UsageError
    from alliance_gateway.server import build_server

    first, port, _ = build_server(net.gateway, listen=f"{HOST}:0")
    first.start()
    try:
        with pytest.raises(UsageError, match="in use"):
            build_server(net.gateway, listen=f"{HOST}:{port}")
    finally:
        first.stop(0)


def test_no_member_past_what_a_witnessed_checkpoint_can_carry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A witnessed checkpoint carries one cosignature per member beside the
    log's line, and verifiers read at most checkpoint.MAX_SIGNATURES lines:
    the CA refuses the member that would outgrow it (here with the bound
    lowered to 2 members), while auditors and revoked members do not count."""
    from alliance import checkpoint
    from alliance.errors import Refused
    from alliance_gateway import admin

    assert admin.MAX_MEMBERS == checkpoint.MAX_SIGNATURES - 1 == 199
    monkeypatch.setattr(admin, "MAX_MEMBERS", 2)
    admin_ops.init_alliance(tmp_path / "admin", tmp_path / "gw", alliance_name="prod.test", listen="0.0.0.0:50051",
                            gateway_endpoint="gw.example:50051", hosts=("gw.example",))
    registry = admin_ops.Admin(tmp_path / "admin")

    def request(member_id: str, role: str = "member") -> bytes:
        home = tmp_path / member_id
        result = onboarding.keygen(home, member_id=member_id, name=member_id, role=role,
                                   endpoint="" if role == "auditor" else f"{member_id}.example:7001",
                                   listen="" if role == "auditor" else "0.0.0.0:7001", gateway="gw.example:50051")
        return result.join_request.read_bytes()

    registry.add(request("lender-a"), expected_role="member")
    registry.add(request("lender-b"), expected_role="member")
    third = request("lender-c")
    with pytest.raises(Refused, match="the most its witnessed checkpoints can carry") as full:
        registry.add(third, expected_role="member")
    assert full.value.reason == "alliance_full"
    registry.add(request("auditor", role="auditor"), expected_role="auditor")  # auditors cosign nothing
    registry.set_status("lender-b", "revoked")
    registry.add(third, expected_role="member")  # a revoked member frees its place
