"""In-process alliance material for unit tests: a CA, members with real
keys and CA-signed credentials, signed queries. No network."""
from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from alliance import identity, matching_key, paillier, pki, protocol
from alliance.v1 import alliance_pb2 as pb

NOW = datetime.now(timezone.utc)


@dataclass
class EnrolledMember:
    member_id: str
    keys: pki.MemberKeys
    public_key: paillier.PaillierPublicKey
    private_key: paillier.PaillierPrivateKey
    credential: pb.Credential
    body: pb.CredentialBody
    tls_cert_pem: bytes = b""  # what gRPC's auth_context() would show for this peer

    @property
    def signing_key(self) -> Ed25519PrivateKey:
        return self.keys.ed25519_key


class LocalCA:
    def __init__(self) -> None:
        self.key, self.cert = pki.create_ca("test alliance CA")
        self.serial = 0

    def enrol(self, member_id: str, *, role: str = "member", paillier_pair=None) -> EnrolledMember:  # type: ignore[no-untyped-def]
        keys = pki.generate_member_keys()
        pub, priv = paillier_pair or paillier.generate_keypair(2048)
        request = pki.make_join_request(member_id=member_id, name=f"{member_id} ltd", role=role,
                                        endpoint="127.0.0.1:1" if role == "member" else "", keys=keys,
                                        paillier_n=pub.to_bytes() if role == "member" else b"")
        body = pki.verify_join_request(request)
        tls = pki.issue_tls_certificate(self.key, self.cert, keys.tls_key.public_key(), member_id=member_id, role=role,
                                        not_before=NOW - timedelta(minutes=5), not_after=NOW + timedelta(days=30))
        self.serial += 1
        cred = pki.issue_credential(ca_key=self.key, join_body=body, tls_cert=tls, serial=self.serial,
                                    not_before=int(NOW.timestamp()) - 300, not_after=int(NOW.timestamp()) + 86400 * 30)
        return EnrolledMember(member_id, keys, pub, priv, cred, pki.verify_credential(cred, self.cert),
                              tls.public_bytes(serialization.Encoding.PEM))

    def rotate(self, old: EnrolledMember) -> EnrolledMember:
        """New keys for ``old``'s member id, endorsed by its current key (SPEC §5)."""
        keys = pki.generate_member_keys()
        pub, priv = paillier.generate_keypair(2048)
        request = pki.make_join_request(member_id=old.member_id, name=f"{old.member_id} ltd", role="member",
                                        endpoint="127.0.0.1:1", keys=keys, paillier_n=pub.to_bytes(),
                                        previous_ed25519_key=old.signing_key)
        body = pki.verify_join_rotation(request, old.body.ed25519_public_key)
        tls = pki.issue_tls_certificate(self.key, self.cert, keys.tls_key.public_key(), member_id=old.member_id, role="member",
                                        not_before=NOW - timedelta(minutes=5), not_after=NOW + timedelta(days=30))
        self.serial += 1
        cred = pki.issue_credential(ca_key=self.key, join_body=body, tls_cert=tls, serial=self.serial,
                                    not_before=int(NOW.timestamp()) - 300, not_after=int(NOW.timestamp()) + 86400 * 30,
                                    predecessor_signature=request.predecessor_signature)
        return EnrolledMember(old.member_id, keys, pub, priv, cred, pki.verify_credential(cred, self.cert),
                              tls.public_bytes(serialization.Encoding.PEM))


MK = matching_key.MatchingKey(epoch=1, key=bytes(range(100, 132)))
SUBJECT = ("RESIDENT_ID", "11010519491231002X")


def signed_query(querier: EnrolledMember, *, mode: int = pb.QUERY_MODE_REPORT, subject=SUBJECT, epoch: int = 1,  # type: ignore[no-untyped-def]
                 timestamp_ms: int | None = None, fingerprint: bytes | None = None, key: bytes = MK.key,
                 as_of: date = date(2026, 6, 30), enc_x: bytes = b"", purpose: str = "LOAN_APPROVAL") -> pb.SignedQuery:
    token = identity.subject_token(key, *subject)
    if mode == pb.QUERY_MODE_PRECHECK and not enc_x:
        enc_x = paillier.encode_ciphertext(querier.public_key, paillier.encrypt(querier.public_key, 5, paillier.fresh_mask(querier.public_key)))
    return protocol.build_signed_query(protocol.QueryParams(
        querier_id=querier.member_id, credential_serial=querier.body.serial, subject_token=token,
        matching_key_epoch=epoch, purpose=purpose, consent_id="C-1", consent_sha256=b"\x01" * 32, as_of=as_of,
        mode=mode, paillier_key_fingerprint=fingerprint or querier.public_key.fingerprint(),
        timestamp_ms=timestamp_ms if timestamp_ms is not None else int(time.time() * 1000), precheck_ciphertext=enc_x,
    ), querier.signing_key)


def log_book_status(engine, member: EnrolledMember, *, book_date: date | None = None, loans: int = 100,  # type: ignore[no-untyped-def]
                    made_at_ms: int | None = None) -> int:
    """Log a signed SPEC §10 book status for ``member`` in a gateway database,
    as PostBookStatus does (default: a fresh book dated today, Asia/Shanghai)."""
    from zoneinfo import ZoneInfo

    from alliance import book_status
    from alliance_gateway import book_status_rpcs

    if book_date is None and loans:
        book_date = datetime.now(ZoneInfo("Asia/Shanghai")).date()
    status = book_status.BookStatus(member.member_id, member.body.serial, book_date, loans,
                                    made_at_ms if made_at_ms is not None else int(time.time() * 1000))
    body, signature = book_status.sign(member.signing_key, status)
    with engine.begin() as conn:
        return book_status_rpcs.record(conn, member.member_id, body, signature, status)
