"""Issuing: key-rotation endorsements, join requests (made on the member's side) and the CA-signed credential."""
from __future__ import annotations

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from alliance import signing
from alliance.errors import CryptoError, InvalidInput
from alliance.v1 import alliance_pb2 as pb
from alliance.pki.base import _lp, _now, check_member_id, ed25519_public_raw, role_name, role_to_pb, spki_der, x25519_public_raw
from alliance.pki.certificates import _load_csr, cert_sha256, make_csr, peer_identity
from alliance.pki.member_keys import MemberKeys, _check_member_keys, check_ed25519_public, check_name, member_fingerprint

# ---------------------------------------------------------------------------
# Key rotation


def rotation_message(member_id: str, new_fingerprint: bytes, ed25519_public_key: bytes, x25519_public_key: bytes, paillier_n: bytes) -> bytes:
    """Exact bytes the *previous* Ed25519 key signs (prefix KEY_ROTATION) to
    endorse new keys: length-prefixed member id, new fingerprint and the new
    Ed25519, X25519 and Paillier keys. The keys are named explicitly, not only
    through the fingerprint, because a peer cannot recompute the fingerprint
    from a credential (it lacks the TLS public key): a CA that reused the
    signature with other keys would otherwise go unnoticed. The same signature
    travels in JoinRequest.predecessor_signature and Credential.predecessor_signature."""
    return _lp(b"rotation-v1", member_id.encode("utf-8"), new_fingerprint, ed25519_public_key, x25519_public_key, paillier_n)


def _rotation_message_for(member_id: str, fp: bytes, body: pb.JoinRequestBody | pb.CredentialBody) -> bytes:
    return rotation_message(member_id, fp, body.ed25519_public_key, body.x25519_public_key, body.paillier_n)


# ---------------------------------------------------------------------------
# Join requests


def make_join_request(
    *,
    member_id: str,
    name: str,
    role: str,
    endpoint: str,
    keys: MemberKeys,
    paillier_n: bytes,
    previous_ed25519_key: Ed25519PrivateKey | None = None,
    created_at: int | None = None,
) -> pb.JoinRequest:
    """Self-signed join request (proof of possession of the new Ed25519 key;
    the CSR proves the TLS key). For a key rotation, ``previous_ed25519_key``
    signs :func:`rotation_message` over the new keys."""
    check_member_id(member_id)
    body = pb.JoinRequestBody(
        member_id=member_id,
        name=name,
        role=role_to_pb(role),
        tls_csr_der=make_csr(keys.tls_key, member_id),
        ed25519_public_key=ed25519_public_raw(keys.ed25519_key),
        paillier_n=paillier_n,
        x25519_public_key=x25519_public_raw(keys.x25519_key),
        endpoint=endpoint,
        created_at=_now() if created_at is None else created_at,
    )
    _check_join_body(body)
    body_bytes = body.SerializeToString(deterministic=True)
    req = pb.JoinRequest(body=body_bytes, signature=signing.sign(keys.ed25519_key, signing.JOIN_REQUEST, body_bytes))
    if previous_ed25519_key is not None:
        fp = join_request_fingerprint(body)
        req.predecessor_signature = signing.sign(previous_ed25519_key, signing.KEY_ROTATION, _rotation_message_for(member_id, fp, body))
    return req


def _check_join_body(body: pb.JoinRequestBody) -> None:
    who = f"join request for {body.member_id!r}"
    check_member_id(body.member_id)
    check_name(body.name, who)
    if body.role not in (pb.ROLE_MEMBER, pb.ROLE_AUDITOR):
        raise InvalidInput(f"{who}: role must be member or auditor")
    _load_csr(body.tls_csr_der, body.member_id)
    _check_member_keys(body.role, body.ed25519_public_key, body.x25519_public_key, body.paillier_n, body.endpoint, who)


def _parse(cls, data: bytes, what: str):
    try:
        return cls.FromString(data)
    except Exception:  # protobuf raises DecodeError, sometimes others on garbage
        raise InvalidInput(f"{what} is not a valid {cls.DESCRIPTOR.name}") from None


def verify_join_request(data: bytes | pb.JoinRequest) -> pb.JoinRequestBody:
    """Parse and check a join request: self-signature by the Ed25519 key it
    carries, CSR signature and curve, id/role/endpoint/keys well-formed. Does
    not check ``predecessor_signature`` (needs the registered key: see
    :func:`verify_join_rotation`)."""
    req = data if isinstance(data, pb.JoinRequest) else _parse(pb.JoinRequest, data, "join request")
    body = _parse(pb.JoinRequestBody, req.body, "join request body")
    who = f"join request for {body.member_id!r}"
    check_ed25519_public(body.ed25519_public_key, who)
    signing.verify(body.ed25519_public_key, signing.JOIN_REQUEST, req.body, req.signature, what=who)
    _check_join_body(body)
    if req.predecessor_signature and len(req.predecessor_signature) != signing.ED25519_SIGNATURE_SIZE:
        raise CryptoError(f"{who}: malformed predecessor signature")
    return body


def verify_join_rotation(data: bytes | pb.JoinRequest, previous_ed25519_public: bytes) -> pb.JoinRequestBody:
    """For re-keying a known member: the request must carry a rotation
    signature by the member's currently registered Ed25519 key."""
    req = data if isinstance(data, pb.JoinRequest) else _parse(pb.JoinRequest, data, "join request")
    body = verify_join_request(req)
    who = f"key rotation for {body.member_id!r}"
    if not req.predecessor_signature:
        raise CryptoError(f"{who}: no signature by the member's previous key")
    msg = _rotation_message_for(body.member_id, join_request_fingerprint(body), body)
    signing.verify(previous_ed25519_public, signing.KEY_ROTATION, msg, req.predecessor_signature, what=who)
    return body


def join_request_fingerprint(body: pb.JoinRequestBody) -> bytes:
    """The fingerprint the member printed at keygen, recomputed from the request."""
    csr = _load_csr(body.tls_csr_der, body.member_id)
    return member_fingerprint(spki_der(csr.public_key()), body.ed25519_public_key, body.x25519_public_key, body.paillier_n)


# ---------------------------------------------------------------------------
# Credentials


def issue_credential(
    *,
    ca_key: ec.EllipticCurvePrivateKey,
    join_body: pb.JoinRequestBody,
    tls_cert: x509.Certificate,
    serial: int,
    not_before: int,
    not_after: int,
    predecessor_signature: bytes = b"",
) -> pb.Credential:
    """CA-signed credential (ECDSA-SHA256 over CREDENTIAL ‖ body). Refuses a
    TLS certificate that is not the CA's, not for this member, or not for the
    key in the join request's CSR."""
    _check_join_body(join_body)
    who = f"credential for {join_body.member_id!r}"
    if not 0 < serial < 2**64:
        raise InvalidInput(f"{who}: serial must be a positive 64-bit integer")
    if not_after <= not_before:
        raise InvalidInput(f"{who}: not_after must be after not_before")
    csr = _load_csr(join_body.tls_csr_der, join_body.member_id)
    if spki_der(tls_cert.public_key()) != spki_der(csr.public_key()):
        raise CryptoError(f"{who}: TLS certificate is not for the key in the join request")
    try:
        ca_key.public_key().verify(tls_cert.signature, tls_cert.tbs_certificate_bytes, ec.ECDSA(tls_cert.signature_hash_algorithm))
    except (InvalidSignature, ValueError, TypeError):
        raise CryptoError(f"{who}: TLS certificate was not issued by this CA") from None
    if peer_identity(tls_cert) != (join_body.member_id, role_name(join_body.role)):
        raise CryptoError(f"{who}: TLS certificate names a different member or role")
    if predecessor_signature and len(predecessor_signature) != signing.ED25519_SIGNATURE_SIZE:
        raise CryptoError(f"{who}: malformed predecessor signature")
    body = pb.CredentialBody(
        member_id=join_body.member_id,
        name=join_body.name,
        role=join_body.role,
        tls_cert_sha256=cert_sha256(tls_cert),
        ed25519_public_key=join_body.ed25519_public_key,
        paillier_n=join_body.paillier_n,
        x25519_public_key=join_body.x25519_public_key,
        serial=serial,
        not_before=not_before,
        not_after=not_after,
        member_fingerprint=join_request_fingerprint(join_body),
        endpoint=join_body.endpoint,
        tls_public_key_der=spki_der(csr.public_key()),
    )
    body_bytes = body.SerializeToString(deterministic=True)
    sig = ca_key.sign(signing.CREDENTIAL + body_bytes, ec.ECDSA(hashes.SHA256()))
    return pb.Credential(body=body_bytes, ca_signature=sig, predecessor_signature=predecessor_signature)
