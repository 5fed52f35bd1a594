"""Member-side onboarding (SPEC §3, §5): keys are generated here and never
leave the member; the admin only ever sees a join request of public keys.
The matching key travels member to member, encrypted and signed, with
fingerprints and the key's check value confirmed out of band, so the operator
relaying it can neither read it nor plant one of its own."""
from __future__ import annotations

import base64
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from alliance import matching_key, paillier, pki
from alliance._internal.files import write_atomic
from alliance.errors import CryptoError, InvalidInput, Refused, UsageError
from alliance.v1 import alliance_pb2 as pb
from alliance_member.home import MemberConfig, MemberHome
from alliance_member.gateway_client import GatewayClient


KEY_FILES = ("tls.key", "ed25519.key", "x25519.key", "paillier.key", "join-request.bin")


@dataclass(frozen=True)
class KeygenResult:
    join_request: Path
    fingerprint: str


def keygen(
    home_dir: Path, *, member_id: str, name: str, role: str, endpoint: str, listen: str, gateway: str,
    db_url: str | None = None, paillier_bits: int = paillier.MIN_KEY_BITS,
) -> KeygenResult:
    home = MemberHome(home_dir)
    if home.signing_key.exists():
        raise UsageError(f"{home_dir} already holds member keys; refusing to overwrite them")
    if role not in ("member", "auditor"):
        raise UsageError("role must be member or auditor")
    # Everything is checked and built in memory first; files are written only
    # then, and removed again if writing fails: no half-made home (SPEC §2).
    pki.check_member_id(member_id)
    if not name.strip():
        raise InvalidInput("--name must not be empty")
    keys = pki.generate_member_keys()
    paillier_n = b""
    priv = None
    if role == "member":
        pub, priv = paillier.generate_keypair(paillier_bits)
        paillier_n = pub.to_bytes()
    request = pki.make_join_request(
        member_id=member_id, name=name, role=role, endpoint=endpoint if role == "member" else "",
        keys=keys, paillier_n=paillier_n,
    )
    body = pki.verify_join_request(request)
    created_home = not home_dir.exists()
    before = set(home_dir.iterdir()) if not created_home else set()
    try:
        home_dir.mkdir(parents=True, exist_ok=True)
        if priv is not None:
            write_atomic(home.paillier_key, priv.to_json_bytes(), private=True)
        keys.save(home_dir)  # tls.key, ed25519.key, x25519.key, all 0600
        write_atomic(home.join_request, request.SerializeToString())
        home.write_config(MemberConfig(member_id=member_id, name=name, role=role, endpoint=endpoint,
                                       listen=listen, gateway=gateway, db_url=db_url))
    except BaseException:
        if created_home:
            shutil.rmtree(home_dir, ignore_errors=True)
        else:
            for path in set(home_dir.iterdir()) - before:
                path.unlink(missing_ok=True)
        raise
    return KeygenResult(home.join_request, pki.format_fingerprint(pki.join_request_fingerprint(body)))


def own_fingerprint(home: MemberHome) -> bytes:
    body = pki.verify_join_request(home.join_request.read_bytes())
    return pki.join_request_fingerprint(body)


def rotate_keys(home_dir: Path, *, paillier_bits: int = paillier.MIN_KEY_BITS) -> KeygenResult:
    """Start a key rotation: fresh keys in the home's ``rotation/`` folder and
    a join request endorsed by the current Ed25519 key, which members'
    pins require (SPEC §5). The current keys stay in use until `member join`
    installs the new credential; the matching key and the book are kept."""
    home = MemberHome(home_dir)
    if not home.is_joined():
        raise UsageError(f"{home_dir} has not joined yet; `alliance member keygen` is for new keys")
    pending = home.pending_rotation
    if pending.path.exists():
        raise UsageError(f"a key rotation is already pending in {pending.path}; finish it with `alliance member join` or remove that folder")
    cfg = home.config()
    keys = pki.generate_member_keys()
    paillier_n = b""
    pending.path.mkdir(mode=0o700)
    if cfg.role == "member":
        pub, priv = paillier.generate_keypair(paillier_bits)
        write_atomic(pending.paillier_key, priv.to_json_bytes(), private=True)
        paillier_n = pub.to_bytes()
    keys.save(pending.path)
    request = pki.make_join_request(
        member_id=cfg.member_id, name=cfg.name, role=cfg.role, endpoint=cfg.endpoint if cfg.role == "member" else "",
        keys=keys, paillier_n=paillier_n, previous_ed25519_key=pki.load_ed25519_private_pem(home.signing_key),
    )
    write_atomic(pending.join_request, request.SerializeToString())
    body = pki.verify_join_request(request)
    return KeygenResult(pending.join_request, pki.format_fingerprint(pki.join_request_fingerprint(body)))


def _install_rotated_keys(home: MemberHome) -> None:
    """Swap the pending keys in; the old ones move to ``retired/<old serial>/``
    (kept, never reused) so nothing is lost if a step fails midway."""
    pending = home.pending_rotation
    old_serial = pb.CredentialBody.FromString(pb.Credential.FromString(home.credential.read_bytes()).body).serial
    retired = home.path / "retired" / str(old_serial)
    retired.mkdir(parents=True, exist_ok=True, mode=0o700)
    for done in (home.credential, home.tls_cert):
        shutil.copy2(done, retired / done.name)
    for name in KEY_FILES:
        if (home.path / name).exists():
            os.replace(home.path / name, retired / name)
        if (pending.path / name).exists():
            os.replace(pending.path / name, home.path / name)
    pending.path.rmdir()


def join(home_dir: Path, bundle: bytes) -> pb.CredentialBody:
    """Install the credential bundle from `admin member add`, after checking
    that it is CA-signed and binds exactly this home's keys."""
    home = MemberHome(home_dir)
    cfg = home.config()
    try:
        data = json.loads(bundle)
        credential = base64.b64decode(data["credential"], validate=True)
        ca_cert = x509.load_pem_x509_certificate(data["ca_cert"].encode())
        tls_cert = x509.load_pem_x509_certificate(data["tls_cert"].encode())
        gateway, log_verifier = str(data["gateway"]), str(data["log_verifier"])
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidInput(f"not a credential bundle from `alliance admin member add`: {exc}") from None
    body = pki.verify_credential(credential, ca_cert)
    if body.member_id != cfg.member_id:
        raise CryptoError(f"bundle is for member {body.member_id!r}, this home is {cfg.member_id!r}")
    keys = home
    if home.pending_rotation.join_request.exists() and body.member_fingerprint == own_fingerprint(home.pending_rotation):
        keys = home.pending_rotation  # the credential for a rotation this home started
    elif body.member_fingerprint != own_fingerprint(home):
        raise CryptoError("the credential does not bind this home's keys (fingerprint differs)")
    own_tls_public = pki.load_private_pem(keys.tls_key).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    cert_public = tls_cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if cert_public != own_tls_public or pki.cert_sha256(tls_cert) != body.tls_cert_sha256:
        raise CryptoError("the TLS certificate in the bundle is not for this home's TLS key")
    if keys is not home:
        _install_rotated_keys(home)
    pki.write_cert_pem(home.ca_cert, ca_cert)
    pki.write_cert_pem(home.tls_cert, tls_cert)
    write_atomic(home.log_verifier, (log_verifier + "\n").encode())
    write_atomic(home.credential, credential)
    cfg.gateway = gateway
    home.write_config(cfg)
    return body


def create_matching_key(home_dir: Path, *, epoch: int = 1) -> matching_key.MatchingKey:
    home = MemberHome(home_dir)
    if home.matching_key.exists():
        current = matching_key.load(home.matching_key)
        if epoch <= current.epoch:
            raise UsageError(f"a matching key of epoch {current.epoch} is installed; a new one needs a higher epoch")
    mk = matching_key.create(epoch)
    matching_key.save(home.matching_key, mk, overwrite=True)
    return mk


def share_matching_key(home_dir: Path, *, recipient_id: str, recipient_fingerprint: str) -> None:
    """Encrypt this member's matching key to a newcomer whose fingerprint was
    confirmed out of band, and hand the ciphertext to the gateway to relay."""
    home = MemberHome(home_dir)
    cfg = home.config()
    mk = matching_key.load(home.matching_key)
    with GatewayClient(home) as client:
        cred = client.member_credential(recipient_id)
    body = pki.verify_credential(cred, pki.load_cert_pem(home.ca_cert))
    if body.member_id != recipient_id or body.role != pb.ROLE_MEMBER:
        raise Refused(f"{recipient_id!r} is not a member", reason="not_a_member")
    if body.member_fingerprint != pki.parse_fingerprint(recipient_fingerprint):
        raise Refused(
            f"{recipient_id}'s credential has fingerprint {pki.format_fingerprint(body.member_fingerprint)}, "
            "not the one confirmed out of band: not sharing", reason="fingerprint_mismatch",
        )
    share = matching_key.seal_share(
        mk, sender_id=cfg.member_id, sender_ed25519_key=pki.load_ed25519_private_pem(home.signing_key),
        recipient_id=recipient_id, recipient_x25519_public=body.x25519_public_key, now=int(time.time()),
    )
    with GatewayClient(home) as client:
        client.post_key_share(share)


def install_matching_key(home_dir: Path, *, sender_id: str, sender_fingerprint: str, check_value: str) -> matching_key.MatchingKey:
    """Open the newest share from ``sender_id``; refuse unless the sender's
    fingerprint and the key's published check value match what was confirmed
    out of band."""
    home = MemberHome(home_dir)
    cfg = home.config()
    expected_check = matching_key.parse_check_value(check_value)
    with GatewayClient(home) as client:
        shares = client.key_shares()
        sender_cred = client.member_credential(sender_id)
    sender = pki.verify_credential(sender_cred, pki.load_cert_pem(home.ca_cert))
    if sender.member_fingerprint != pki.parse_fingerprint(sender_fingerprint):
        raise Refused(f"{sender_id}'s credential does not have the fingerprint confirmed out of band", reason="fingerprint_mismatch")
    candidates = [s for s in shares if pb.MatchingKeyShareBody.FromString(s.body).sender_id == sender_id]
    if not candidates:
        raise Refused(f"no matching-key share from {sender_id} is waiting at the gateway", reason="no_share")
    mk = matching_key.open_share(
        candidates[-1], recipient_id=cfg.member_id, recipient_x25519_key=pki.load_x25519_private_pem(home.x25519_key),
        sender_ed25519_public=sender.ed25519_public_key, expected_check_value=expected_check,
    )
    if home.matching_key.exists() and matching_key.load(home.matching_key).epoch > mk.epoch:
        raise Refused("the shared key is older than the installed one", reason="old_epoch")
    matching_key.save(home.matching_key, mk, overwrite=True)
    return mk
