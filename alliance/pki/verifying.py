"""Verifying a credential against the alliance CA and against the keys and certificate it must match."""
from __future__ import annotations

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from alliance import signing
from alliance.errors import CryptoError, Refused
from alliance.v1 import alliance_pb2 as pb
from alliance.pki.base import _now, _utc, check_member_id, ed25519_public_raw, spki_der, x25519_public_raw
from alliance.pki.certificates import as_certificate, cert_sha256
from alliance.pki.member_keys import MemberKeys, _check_member_keys, keys_fingerprint, member_fingerprint
from alliance.pki.issuing import _parse

def verify_credential(cred: bytes | pb.Credential, ca_cert: x509.Certificate, *, now: int | None = None) -> pb.CredentialBody:
    """CA signature, validity window and well-formed keys. A valid credential
    means only "the operator admitted this"; pin it (:func:`check_pin`) before
    trusting its keys against the operator."""
    c = cred if isinstance(cred, pb.Credential) else _parse(pb.Credential, cred, "credential")
    ca_pub = ca_cert.public_key()
    if not isinstance(ca_pub, ec.EllipticCurvePublicKey) or not isinstance(ca_pub.curve, ec.SECP256R1):
        raise CryptoError("alliance CA certificate must hold an ECDSA P-256 key")
    try:
        ca_pub.verify(c.ca_signature, signing.CREDENTIAL + c.body, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        raise CryptoError("credential is not signed by this alliance CA") from None
    body = _parse(pb.CredentialBody, c.body, "credential body")
    who = f"credential for {body.member_id!r}"
    check_member_id(body.member_id)
    if body.role not in (pb.ROLE_MEMBER, pb.ROLE_AUDITOR):
        raise CryptoError(f"{who}: role must be member or auditor")
    if len(body.tls_cert_sha256) != 32 or len(body.member_fingerprint) != 32:
        raise CryptoError(f"{who}: malformed TLS certificate hash or fingerprint")
    _check_member_keys(body.role, body.ed25519_public_key, body.x25519_public_key, body.paillier_n, body.endpoint, who)
    if body.serial == 0:
        raise CryptoError(f"{who}: serial 0 is not valid")
    # The fingerprint is recomputed, never taken on the CA's word: otherwise an
    # operator could keep a member's real fingerprint while swapping a key.
    fp = member_fingerprint(body.tls_public_key_der, body.ed25519_public_key, body.x25519_public_key, body.paillier_n)
    if fp != body.member_fingerprint:
        raise CryptoError(f"{who}: member fingerprint does not match the keys it binds")
    if c.predecessor_signature and len(c.predecessor_signature) != signing.ED25519_SIGNATURE_SIZE:
        raise CryptoError(f"{who}: malformed predecessor signature")
    t = _now() if now is None else now
    if t < body.not_before:
        raise Refused(f"{who} is not valid before {_utc(body.not_before)}", reason="credential_not_yet_valid")
    if t >= body.not_after:
        raise Refused(f"{who} expired at {_utc(body.not_after)}", reason="credential_expired")
    return body


def check_credential_fingerprint(body: pb.CredentialBody, tls_cert: x509.Certificate | bytes) -> None:
    """Recompute ``member_fingerprint`` when the TLS certificate is at hand:
    it must hash to ``tls_cert_sha256`` and, with the body's other keys, give
    the fingerprint the CA wrote. Use before comparing fingerprints out of band."""
    who = f"credential for {body.member_id!r}"
    cert = as_certificate(tls_cert)
    if cert_sha256(cert) != body.tls_cert_sha256:
        raise CryptoError(f"{who}: TLS certificate does not match the credential")
    fp = member_fingerprint(spki_der(cert.public_key()), body.ed25519_public_key, body.x25519_public_key, body.paillier_n)
    if fp != body.member_fingerprint:
        raise CryptoError(f"{who}: member fingerprint does not match its keys")


def check_credential_keys(body: pb.CredentialBody, keys: MemberKeys, paillier_n: bytes, tls_cert: x509.Certificate | None = None) -> None:
    """For a member installing its own credential: the CA must have bound our
    keys, not substitutes."""
    who = f"credential for {body.member_id!r}"
    if (
        body.ed25519_public_key != ed25519_public_raw(keys.ed25519_key)
        or body.x25519_public_key != x25519_public_raw(keys.x25519_key)
        or body.paillier_n != paillier_n
        or body.member_fingerprint != keys_fingerprint(keys, paillier_n)
    ):
        raise CryptoError(f"{who} does not carry this member's keys")
    if tls_cert is not None:
        if cert_sha256(tls_cert) != body.tls_cert_sha256 or spki_der(tls_cert.public_key()) != spki_der(keys.tls_key):
            raise CryptoError(f"{who}: TLS certificate does not match this member's TLS key")
