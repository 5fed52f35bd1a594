"""What each signature covers (SPEC §5): exact bytes behind a distinct prefix
per message type, so a signature made for one purpose can never be replayed as
another. Signed protobuf messages travel as exact bytes (``body``), so nobody
re-serialises before verifying."""
from __future__ import annotations

import hashlib
import struct

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from alliance.errors import CryptoError

QUERY_REQUEST = b"alliance/v1/query-request\x00"
MEMBER_ANSWER = b"alliance/v1/member-answer\x00"
CREDENTIAL = b"alliance/v1/credential\x00"
KEY_ROTATION = b"alliance/v1/key-rotation\x00"
JOIN_REQUEST = b"alliance/v1/join-request\x00"
MATCHING_KEY_SHARE = b"alliance/v1/matching-key-share\x00"
SPONSORSHIP = b"alliance/v1/sponsorship\x00"
MATCHING_KEY_CREATED = b"alliance/v1/matching-key-created\x00"
DISCLOSURE = b"alliance/v1/disclosure\x00"  # SPEC §11 monthly figures (alliance/disclosure.py)
BOOK_STATUS = b"alliance/v1/book-status\x00"  # SPEC §10 book date and loan count (alliance/book_status.py)

ED25519_SIGNATURE_SIZE = 64


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def sign(private_key: Ed25519PrivateKey, prefix: bytes, message: bytes) -> bytes:
    return private_key.sign(prefix + message)


def verify(public_key: Ed25519PublicKey | bytes, prefix: bytes, message: bytes, signature: bytes, *, what: str) -> None:
    """Raise CryptoError naming ``what`` unless ``signature`` is valid."""
    if isinstance(public_key, bytes):
        try:
            public_key = Ed25519PublicKey.from_public_bytes(public_key)
        except ValueError as exc:
            raise CryptoError(f"{what}: malformed Ed25519 public key") from exc
    if len(signature) != ED25519_SIGNATURE_SIZE:
        raise CryptoError(f"{what}: signature must be {ED25519_SIGNATURE_SIZE} bytes, got {len(signature)}")
    try:
        public_key.verify(signature, prefix + message)
    except InvalidSignature as exc:
        raise CryptoError(f"{what}: signature does not verify") from exc


def _length_prefixed(*parts: bytes) -> bytes:
    return b"".join(struct.pack(">I", len(p)) + p for p in parts)


def member_answer_message(query_id: str, request_digest: bytes, ciphertext_sha256: bytes,
                          book_status_sha256: bytes = b"") -> bytes:
    """Bytes a member signs for its answer: (query id, SHA-256 of the request
    body, SHA-256 of the ciphertext), each length-prefixed; an answer that
    carries the member's book status (SPEC §10) appends, as a fourth
    length-prefixed part, the SHA-256 of the status's exact bytes. Answers
    without a status keep the three-part form, so older signatures still
    verify, and a status can be neither added to nor stripped from a signed
    answer (the part count is in the bytes)."""
    parts = [query_id.encode("utf-8"), request_digest, ciphertext_sha256]
    if book_status_sha256:
        parts.append(book_status_sha256)
    return _length_prefixed(*parts)
