"""Alliance PKI: CA, TLS certificates, join requests, credentials, pinning."""
from __future__ import annotations

import datetime as dt
import hashlib
import os
import secrets
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from alliance import pki, signing
from alliance.errors import CryptoError, InvalidInput, Refused
from alliance.v1 import alliance_pb2 as pb

NOW = 1_760_000_000
DAY = 86_400


def paillier_n(bits: int = 2048) -> bytes:
    n = secrets.randbits(bits) | (1 << (bits - 1)) | 1
    return n.to_bytes((bits + 7) // 8, "big")


@pytest.fixture(scope="module")
def ca():
    return pki.create_ca("Test alliance CA")


def tls_cert_for(ca, public_key, member_id, role="member", **kw):
    ca_key, ca_cert = ca
    now = dt.datetime.now(dt.timezone.utc)
    return pki.issue_tls_certificate(
        ca_key, ca_cert, public_key, member_id=member_id, role=role,
        not_before=now - dt.timedelta(minutes=5), not_after=now + dt.timedelta(days=365), **kw,
    )


def enrol(ca, member_id="bank-a", *, keys=None, n=None, role="member", serial=1, previous=None, not_after=NOW + 365 * DAY):
    """Member side: keys + join request; admin side: verify, TLS cert, credential."""
    keys = keys or pki.generate_member_keys()
    n = paillier_n() if n is None and role == "member" else (n or b"")
    req = pki.make_join_request(
        member_id=member_id, name=f"{member_id} Ltd", role=role,
        endpoint="127.0.0.1:50051" if role == "member" else "", keys=keys, paillier_n=n,
        previous_ed25519_key=previous, created_at=NOW,
    )
    body = pki.verify_join_request(req.SerializeToString())
    csr = x509.load_der_x509_csr(body.tls_csr_der)
    cert = tls_cert_for(ca, csr.public_key(), member_id, role)
    cred = pki.issue_credential(
        ca_key=ca[0], join_body=body, tls_cert=cert, serial=serial,
        not_before=NOW - DAY, not_after=not_after, predecessor_signature=req.predecessor_signature,
    )
    return keys, n, req, cert, cred


# ---------------------------------------------------------------------------
# CA and TLS


def test_ca_is_p256_ca(ca):
    key, cert = ca
    assert isinstance(key.curve, ec.SECP256R1)
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert bc.ca is True
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.key_cert_sign and ku.crl_sign
    cert.verify_directly_issued_by(cert)


def test_tls_cert_sans_round_trip_through_peer_identity(ca):
    key = pki.new_tls_key()
    cert = tls_cert_for(ca, key.public_key(), "bank-a", "member", hosts=("localhost", "127.0.0.1", "::1", "node.example"), local=True)
    cert.verify_directly_issued_by(ca[1])
    der = cert.public_bytes(serialization.Encoding.DER)
    assert pki.peer_identity(der) == ("bank-a", "member")
    assert pki.peer_identity(pki.cert_pem(cert)) == ("bank-a", "member")
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "node.example"]
    assert [str(i) for i in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1"]
    assert "urn:alliance:role:member" in san.get_values_for_type(x509.UniformResourceIdentifier)
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "bank-a"
    assert pki.cert_sha256(cert) == pki.cert_sha256(der) and len(pki.cert_sha256(cert)) == 32

    gw = tls_cert_for(ca, pki.new_tls_key().public_key(), "gateway", "gateway")
    assert pki.peer_identity(pki.cert_pem(gw)) == ("gateway", "gateway")


def _plain_cert(ca, sans):
    ca_key, ca_cert = ca
    key = pki.new_tls_key()
    now = dt.datetime.now(dt.timezone.utc)
    b = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bank-a")]))
         .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(7)
         .not_valid_before(now).not_valid_after(now + dt.timedelta(days=1)))
    if sans is not None:
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return b.sign(ca_key, hashes.SHA256())


def test_peer_identity_refuses_certs_without_exactly_one_identity(ca):
    with pytest.raises(Refused):
        pki.peer_identity(pki.cert_pem(_plain_cert(ca, None)))
    with pytest.raises(Refused):
        pki.peer_identity(pki.cert_pem(_plain_cert(ca, [x509.DNSName("localhost")])))
    two = [x509.UniformResourceIdentifier("urn:alliance:member:bank-a"),
           x509.UniformResourceIdentifier("urn:alliance:member:bank-b"),
           x509.UniformResourceIdentifier("urn:alliance:role:member")]
    with pytest.raises(Refused):
        pki.peer_identity(pki.cert_pem(_plain_cert(ca, two)))
    bad_role = [x509.UniformResourceIdentifier("urn:alliance:member:bank-a"),
                x509.UniformResourceIdentifier("urn:alliance:role:admin")]
    with pytest.raises(Refused):
        pki.peer_identity(pki.cert_pem(_plain_cert(ca, bad_role)))


def test_issue_tls_certificate_refuses_bad_input(ca):
    with pytest.raises(InvalidInput):
        tls_cert_for(ca, pki.new_tls_key().public_key(), "Bank A")
    with pytest.raises(InvalidInput):
        tls_cert_for(ca, pki.new_tls_key().public_key(), "bank-a", role="admin")
    with pytest.raises(InvalidInput):
        tls_cert_for(ca, ec.generate_private_key(ec.SECP384R1()).public_key(), "bank-a")


# ---------------------------------------------------------------------------
# Files


def test_private_key_files_are_0600_and_round_trip(tmp_path):
    keys = pki.generate_member_keys()
    for name, key in [("tls.key", keys.tls_key), ("ed.key", keys.ed25519_key), ("x.key", keys.x25519_key)]:
        path = tmp_path / name
        pki.write_private_pem(path, key)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        loaded = pki.load_private_pem(path)
        assert pki.private_pem(loaded) == pki.private_pem(key)
    assert isinstance(pki.load_ed25519_private_pem(tmp_path / "ed.key"), Ed25519PrivateKey)
    assert isinstance(pki.load_x25519_private_pem(tmp_path / "x.key"), X25519PrivateKey)
    with pytest.raises(InvalidInput):
        pki.load_ed25519_private_pem(tmp_path / "x.key")
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_member_keys_save_load(tmp_path):
    keys = pki.generate_member_keys()
    keys.save(tmp_path / "keys")
    for name in pki.MemberKeys.FILES.values():
        assert stat.S_IMODE(os.stat(tmp_path / "keys" / name).st_mode) == 0o600
    again = pki.MemberKeys.load(tmp_path / "keys")
    n = paillier_n()
    assert pki.keys_fingerprint(again, n) == pki.keys_fingerprint(keys, n)


def test_private_key_not_overwritten_and_loose_mode_refused(tmp_path):
    path = tmp_path / "ed.key"
    first = Ed25519PrivateKey.generate()
    pki.write_private_pem(path, first)
    with pytest.raises(InvalidInput, match="already exists"):
        pki.write_private_pem(path, Ed25519PrivateKey.generate())
    assert pki.ed25519_public_raw(pki.load_ed25519_private_pem(path)) == pki.ed25519_public_raw(first)
    os.chmod(path, 0o644)
    with pytest.raises(Refused, match="chmod 600"):
        pki.load_private_pem(path)


def test_encrypted_private_key(tmp_path):
    path = tmp_path / "ca.key"
    key = pki.new_tls_key()
    pki.write_private_pem(path, key, password=b"correct horse")
    assert b"ENCRYPTED" in path.read_bytes()
    assert pki.spki_der(pki.load_ec_private_pem(path, password=b"correct horse")) == pki.spki_der(key)
    with pytest.raises(InvalidInput):
        pki.load_private_pem(path, password=b"wrong")


def test_cert_pem_round_trip(ca, tmp_path):
    pki.write_cert_pem(tmp_path / "ca.pem", ca[1])
    assert pki.load_cert_pem(tmp_path / "ca.pem") == ca[1]


# ---------------------------------------------------------------------------
# Fingerprints


def test_fingerprint_definition_and_format():
    parts = (b"spki", b"e" * 32, b"x" * 32, b"\x01\x03")
    expected_input = b"alliance/v1/member-keys\x00" + b"".join(len(p).to_bytes(4, "big") + p for p in parts)
    fp = pki.member_fingerprint(*parts)
    assert fp == hashlib.sha256(expected_input).digest()
    # Length prefixes make part boundaries unambiguous.
    assert pki.member_fingerprint(b"spkie", b"e" * 31, b"x" * 32, b"\x01\x03") != fp
    text = pki.format_fingerprint(fp)
    assert len(text.split(":")) == 16 and all(len(g) == 4 for g in text.split(":"))
    assert pki.parse_fingerprint(text.upper().replace(":", " ")) == fp


def test_fingerprint_covers_every_key():
    keys = pki.generate_member_keys()
    n = paillier_n()
    base = pki.keys_fingerprint(keys, n)
    assert pki.keys_fingerprint(keys, paillier_n()) != base
    for attr, fresh in [("tls_key", pki.new_tls_key()), ("ed25519_key", Ed25519PrivateKey.generate()),
                        ("x25519_key", X25519PrivateKey.generate())]:
        other = pki.MemberKeys(**{**keys.__dict__, attr: fresh})
        assert pki.keys_fingerprint(other, n) != base


# ---------------------------------------------------------------------------
# Join requests


def _join(member_id="bank-a", role="member", **kw):
    keys = pki.generate_member_keys()
    args = dict(member_id=member_id, name="Bank A", role=role, endpoint="127.0.0.1:50051", keys=keys,
                paillier_n=paillier_n(), created_at=NOW)
    args.update(kw)
    return keys, pki.make_join_request(**args)


def test_join_request_verifies_and_fingerprint_matches_keygen():
    keys, req = _join()
    body = pki.verify_join_request(req.SerializeToString())
    assert body.member_id == "bank-a" and body.role == pb.ROLE_MEMBER
    assert pki.join_request_fingerprint(body) == pki.keys_fingerprint(keys, body.paillier_n)


def test_join_request_any_flipped_body_byte_is_refused():
    _, req = _join()
    for i in range(0, len(req.body), 7):
        body = bytearray(req.body)
        body[i] ^= 0x01
        bad = pb.JoinRequest(body=bytes(body), signature=req.signature)
        with pytest.raises((CryptoError, InvalidInput)):
            pki.verify_join_request(bad)


def test_join_request_signed_by_another_key_refused():
    _, req = _join()
    req.signature = signing.sign(Ed25519PrivateKey.generate(), signing.JOIN_REQUEST, req.body)
    with pytest.raises(CryptoError, match="signature does not verify"):
        pki.verify_join_request(req)


def _resign(body: pb.JoinRequestBody, ed_key) -> pb.JoinRequest:
    raw = body.SerializeToString()
    return pb.JoinRequest(body=raw, signature=signing.sign(ed_key, signing.JOIN_REQUEST, raw))


@pytest.mark.parametrize("field,value,exc", [
    ("member_id", "Bank_A", InvalidInput),
    ("member_id", "a", InvalidInput),
    ("member_id", "bank-a\n", InvalidInput),
    ("paillier_n", (1 << 2047).to_bytes(256, "big"), CryptoError),          # even
    ("paillier_n", ((1 << 2046) | 1).to_bytes(256, "big")[1:], CryptoError),  # 2047 bits
    ("paillier_n", b"", CryptoError),
    ("endpoint", "", InvalidInput),
    ("endpoint", "localhost", InvalidInput),
    ("endpoint", "localhost:99999", InvalidInput),
    ("x25519_public_key", b"\x00" * 32, CryptoError),                        # low order
    ("x25519_public_key", b"\x01" * 31, CryptoError),
    ("role", pb.ROLE_GATEWAY, InvalidInput),
])
def test_join_request_field_checks(field, value, exc):
    keys, req = _join()
    body = pb.JoinRequestBody.FromString(req.body)
    setattr(body, field, value)
    with pytest.raises(exc):
        pki.verify_join_request(_resign(body, keys.ed25519_key))


def test_join_request_csr_must_be_p256_and_for_the_member():
    keys, req = _join()
    body = pb.JoinRequestBody.FromString(req.body)
    p384 = ec.generate_private_key(ec.SECP384R1())
    body.tls_csr_der = (x509.CertificateSigningRequestBuilder()
                        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bank-a")]))
                        .sign(p384, hashes.SHA256()).public_bytes(serialization.Encoding.DER))
    with pytest.raises(InvalidInput, match="P-256"):
        pki.verify_join_request(_resign(body, keys.ed25519_key))
    body.tls_csr_der = pki.make_csr(keys.tls_key, "bank-b")
    with pytest.raises(InvalidInput, match="common name"):
        pki.verify_join_request(_resign(body, keys.ed25519_key))
    csr = bytearray(pki.make_csr(keys.tls_key, "bank-a"))
    csr[-5] ^= 0x01  # inside the CSR's own signature
    body.tls_csr_der = bytes(csr)
    with pytest.raises((CryptoError, InvalidInput)):
        pki.verify_join_request(_resign(body, keys.ed25519_key))


def test_auditor_join_request_without_paillier_or_endpoint():
    _, req = _join("audit-1", role="auditor", paillier_n=b"", endpoint="")
    body = pki.verify_join_request(req)
    assert body.role == pb.ROLE_AUDITOR


def test_join_rotation_signature():
    old = Ed25519PrivateKey.generate()
    _, req = _join(previous_ed25519_key=old)
    body = pki.verify_join_rotation(req, pki.ed25519_public_raw(old))
    assert body.member_id == "bank-a"
    with pytest.raises(CryptoError):
        pki.verify_join_rotation(req, pki.ed25519_public_raw(Ed25519PrivateKey.generate()))
    _, plain = _join()
    with pytest.raises(CryptoError, match="previous key"):
        pki.verify_join_rotation(plain, pki.ed25519_public_raw(old))


# ---------------------------------------------------------------------------
# Credentials


def test_credential_issue_and_verify(ca):
    keys, n, req, cert, cred = enrol(ca)
    body = pki.verify_credential(cred.SerializeToString(), ca[1], now=NOW)
    assert body.member_id == "bank-a" and body.name == "bank-a Ltd"
    assert body.endpoint == "127.0.0.1:50051"
    assert body.tls_cert_sha256 == pki.cert_sha256(cert)
    assert body.member_fingerprint == pki.keys_fingerprint(keys, n)
    pki.check_credential_fingerprint(body, cert)
    pki.check_credential_keys(body, keys, n, cert)


def test_credential_from_another_ca_refused(ca):
    other = pki.create_ca("Rogue CA")
    *_, cred = enrol(other)
    with pytest.raises(CryptoError, match="not signed by this alliance CA"):
        pki.verify_credential(cred, ca[1], now=NOW)


def test_expired_and_not_yet_valid_credential_refused(ca):
    *_, cred = enrol(ca, not_after=NOW + 10)
    pki.verify_credential(cred, ca[1], now=NOW + 9)
    with pytest.raises(Refused, match=r"credential for 'bank-a' expired at 2025-"):
        pki.verify_credential(cred, ca[1], now=NOW + 10)
    with pytest.raises(Refused, match="not valid before"):
        pki.verify_credential(cred, ca[1], now=NOW - 2 * DAY)


def test_tampered_credential_refused(ca):
    *_, cred = enrol(ca)
    body = pb.CredentialBody.FromString(cred.body)
    body.x25519_public_key = pki.x25519_public_raw(X25519PrivateKey.generate())
    forged = pb.Credential(body=body.SerializeToString(), ca_signature=cred.ca_signature)
    with pytest.raises(CryptoError):
        pki.verify_credential(forged, ca[1], now=NOW)


def test_issue_credential_refuses_mismatched_tls_cert(ca):
    keys, req = _join()
    body = pki.verify_join_request(req)
    wrong_key = tls_cert_for(ca, pki.new_tls_key().public_key(), "bank-a")
    with pytest.raises(CryptoError, match="not for the key"):
        pki.issue_credential(ca_key=ca[0], join_body=body, tls_cert=wrong_key, serial=1, not_before=NOW, not_after=NOW + DAY)
    wrong_id = tls_cert_for(ca, keys.tls_key.public_key(), "bank-b")
    with pytest.raises(CryptoError, match="different member"):
        pki.issue_credential(ca_key=ca[0], join_body=body, tls_cert=wrong_id, serial=1, not_before=NOW, not_after=NOW + DAY)
    foreign = tls_cert_for(pki.create_ca("Other"), keys.tls_key.public_key(), "bank-a")
    with pytest.raises(CryptoError, match="not issued by this CA"):
        pki.issue_credential(ca_key=ca[0], join_body=body, tls_cert=foreign, serial=1, not_before=NOW, not_after=NOW + DAY)


def test_check_credential_keys_detects_substitution(ca):
    keys, n, _, cert, _ = enrol(ca)
    *_, other = enrol(ca)  # same id, CA-chosen keys
    body = pki.verify_credential(other, ca[1], now=NOW)
    with pytest.raises(CryptoError, match="does not carry this member's keys"):
        pki.check_credential_keys(body, keys, n)
    with pytest.raises(CryptoError):
        pki.check_credential_fingerprint(body, cert)


# ---------------------------------------------------------------------------
# Pinning


def test_pin_new_then_same(ca):
    keys, n, _, cert, cred = enrol(ca, serial=1)
    body = pki.verify_credential(cred, ca[1], now=NOW)
    status, pin = pki.check_pin(None, cred, body)
    assert status == "new" and pin.fingerprint == body.member_fingerprint
    # Renewal with the same keys (new TLS cert, new serial) is "same".
    body2_join = pki.verify_join_request(pki.make_join_request(
        member_id="bank-a", name="bank-a Ltd", role="member", endpoint="127.0.0.1:50051",
        keys=keys, paillier_n=n, created_at=NOW))
    cert2 = tls_cert_for(ca, keys.tls_key.public_key(), "bank-a")
    cred2 = pki.issue_credential(ca_key=ca[0], join_body=body2_join, tls_cert=cert2, serial=2,
                                 not_before=NOW, not_after=NOW + DAY)
    body2 = pki.verify_credential(cred2, ca[1], now=NOW)
    status, pin2 = pki.check_pin(pin, cred2, body2)
    assert status == "same" and pin2.serial == 2
    # An older credential with the same keys does not roll the pin back.
    status, pin3 = pki.check_pin(pin2, cred, body)
    assert status == "same" and pin3.serial == 2


def test_second_ca_issued_credential_with_other_keys_refused(ca):
    *_, cred = enrol(ca, serial=1)
    body = pki.verify_credential(cred, ca[1], now=NOW)
    _, pin = pki.check_pin(None, cred, body)
    *_, fake = enrol(ca, serial=2)  # the operator admits "bank-a" again with its own keys
    fake_body = pki.verify_credential(fake, ca[1], now=NOW)
    with pytest.raises(CryptoError, match="a second credential for member bank-a is not signed by its pinned key"):
        pki.check_pin(pin, fake, fake_body)


def test_second_credential_repeating_pinned_fingerprint_with_other_keys_refused(ca):
    """The CA cannot keep the pinned fingerprint and swap the X25519 key: the
    pin compares keys, not just the CA-asserted fingerprint."""
    ca_key, ca_cert = ca
    *_, cred = enrol(ca, serial=1)
    body = pki.verify_credential(cred, ca_cert, now=NOW)
    _, pin = pki.check_pin(None, cred, body)
    forged = pb.CredentialBody()
    forged.CopyFrom(body)
    forged.serial = 2
    forged.x25519_public_key = pki.x25519_public_raw(X25519PrivateKey.generate())
    raw = forged.SerializeToString()
    fake = pb.Credential(body=raw, ca_signature=ca_key.sign(signing.CREDENTIAL + raw, ec.ECDSA(hashes.SHA256())))
    # verify_credential recomputes the fingerprint from the keys it binds...
    with pytest.raises(CryptoError, match="fingerprint does not match the keys"):
        pki.verify_credential(fake, ca_cert, now=NOW)
    # ...and the pin compares the keys themselves as a second line.
    with pytest.raises(CryptoError, match="different keys"):
        pki.check_pin(pin, fake, forged)


def test_rotated_credential_with_predecessor_signature(ca):
    old_keys, _, _, _, cred = enrol(ca, serial=1)
    body = pki.verify_credential(cred, ca[1], now=NOW)
    _, pin = pki.check_pin(None, cred, body)
    new_keys, _, _, _, rotated = enrol(ca, serial=2, previous=old_keys.ed25519_key)
    rbody = pki.verify_credential(rotated, ca[1], now=NOW)
    status, new_pin = pki.check_pin(pin, rotated, rbody)
    assert status == "rotated"
    assert new_pin.ed25519_public_key == pki.ed25519_public_raw(new_keys.ed25519_key)
    assert new_pin.serial == 2


def test_rotation_signed_by_wrong_key_or_transplanted_refused(ca):
    ca_key, ca_cert = ca
    old_keys, _, _, _, cred = enrol(ca, serial=1)
    _, pin = pki.check_pin(None, cred, pki.verify_credential(cred, ca_cert, now=NOW))
    # Signed by a key that is not the pinned one.
    *_, wrong = enrol(ca, serial=2, previous=Ed25519PrivateKey.generate())
    with pytest.raises(CryptoError, match="not signed by its pinned key"):
        pki.check_pin(pin, wrong, pki.verify_credential(wrong, ca_cert, now=NOW))
    # A genuine rotation signature moved onto a credential with CA-chosen keys.
    _, _, _, _, genuine = enrol(ca, serial=2, previous=old_keys.ed25519_key)
    gbody = pki.verify_credential(genuine, ca_cert, now=NOW)
    forged = pb.CredentialBody()
    forged.CopyFrom(gbody)
    forged.x25519_public_key = pki.x25519_public_raw(X25519PrivateKey.generate())
    raw = forged.SerializeToString()
    fake = pb.Credential(body=raw, ca_signature=ca_key.sign(signing.CREDENTIAL + raw, ec.ECDSA(hashes.SHA256())),
                         predecessor_signature=genuine.predecessor_signature)
    with pytest.raises(CryptoError, match="fingerprint does not match the keys"):
        pki.verify_credential(fake, ca_cert, now=NOW)
    with pytest.raises(CryptoError, match="not signed by its pinned key"):
        pki.check_pin(pin, fake, forged)


def test_check_pin_refuses_body_not_from_credential(ca):
    *_, a = enrol(ca, "bank-a")
    *_, b = enrol(ca, "bank-b")
    with pytest.raises(CryptoError):
        pki.check_pin(None, a, pki.verify_credential(b, ca[1], now=NOW))


def test_pin_store_persists_and_enforces(ca, tmp_path):
    store = pki.PinStore(tmp_path / "pins.json")
    old_keys, _, _, _, cred = enrol(ca, serial=1)
    body = pki.verify_credential(cred, ca[1], now=NOW)
    assert store.check(cred, body) == "new"
    assert stat.S_IMODE(os.stat(tmp_path / "pins.json").st_mode) == 0o600
    assert pki.PinStore(tmp_path / "pins.json").get("bank-a") == pki.pin_from(body)
    assert store.check(cred, body) == "same"
    *_, fake = enrol(ca, serial=2)
    with pytest.raises(CryptoError):
        store.check(fake, pki.verify_credential(fake, ca[1], now=NOW))
    assert store.get("bank-a") == pki.pin_from(body)  # unchanged after a refusal
    *_, rotated = enrol(ca, serial=3, previous=old_keys.ed25519_key)
    assert store.check(rotated, pki.verify_credential(rotated, ca[1], now=NOW)) == "rotated"
    assert store.get("bank-a").serial == 3
    assert store.remove("bank-a") and store.get("bank-a") is None
