"""What each signature covers (SPEC §5): exact bytes behind a distinct prefix
per message type, so a signature made for one purpose can never be replayed as
another. Signed protobuf messages travel as exact bytes (``body``), so nobody
re-serialises before verifying."""
from __future__ import annotations

import hashlib
import logging
import struct
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from nacl.bindings import crypto_sign_open
from nacl.exceptions import CryptoError as _SodiumError

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


_P = 2**255 - 19
# y of the eight points of small order (a point and its negation share y; with x = 0, the
# sign bit set is a non-canonical encoding of the same point).
_SMALL_ORDER_Y = frozenset({1, _P - 1, 0,
                            0x05fc536d880238b13933c6d305acdfd5f098eff289f4c345b027b2c28f95e826,
                            0x7a03ac9277fdc74ec6cc392cfa53202a0f67100d760b3cba4fd84d3d706a17c7})
_ED25519_COFACTORED_ONLY = (  # honest key aB; R = rB + T (T of order 2): valid only under cofactored verification
    bytes.fromhex("0eabdd0194151f7e89c0502929783a7d6e0fafcf9e9c5368e3aa5d3dc3b698d8"),
    bytes.fromhex("ac71dc6e15b4c1e545c2f0676dc960d409b782051c68e29e8f848db019ef19cc"
                  "01a412506eb9728fa985f4fca545d2f85ee8188bf9e6845c2d8fb8530f14e604"),
    b"alliance: valid only under cofactored verification")


def ed25519_key_acceptable(public_key: bytes) -> bool:
    """A public key the alliance's rule can verify under: 32 bytes, its y
    canonically encoded (y < p) and not a point of small order (under such a
    key one signature, R = identity and S = 0, verifies every message)."""
    if len(public_key) != 32:
        return False
    n = int.from_bytes(public_key, "little")
    y = n & ((1 << 255) - 1)
    return y < _P and y not in _SMALL_ORDER_Y


def _sodium_valid(raw: bytes, signature: bytes, message: bytes) -> bool:
    try:
        crypto_sign_open(bytes(signature) + bytes(message), bytes(raw))
    except (_SodiumError, ValueError, TypeError):
        return False
    return True


def _openssl_valid(raw: bytes, signature: bytes, message: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(bytes(raw)).verify(bytes(signature), bytes(message))
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


# libsodium 1.0.20 (PyNaCl 1.6) verifies cofactorless, as OpenSSL does, and refuses more
# (small-order or non-canonical keys and R, S ≥ L): what it accepts, OpenSSL accepts. A build
# that verified cofactored would accept some signatures OpenSSL refuses; then it is not used.
def _sodium_agrees(check: Any = None) -> bool:
    return not (check or _sodium_valid)(*_ED25519_COFACTORED_ONLY)


_SODIUM_FAST_PATH = _sodium_agrees()
if not _SODIUM_FAST_PATH:
    logging.getLogger("alliance").warning(
        "this libsodium verifies Ed25519 cofactored; signatures are checked with OpenSSL alone (correct, about 2x slower)")


def ed25519_valid(public_key: Ed25519PublicKey | bytes, signature: bytes, message: bytes) -> bool:
    """The alliance's one rule for an Ed25519 signature, applied by every
    party to every kind of signature it checks: OpenSSL's verification (RFC
    8032 §5.1.7, cofactorless, S < L; the library that signs here) under a
    key ``ed25519_key_acceptable`` allows. So every party agrees on every
    signature, and a log written by an earlier release (OpenSSL's rule
    alone) verifies the same way, unless a key of small order signed in it.
    libsodium answers first: it refuses everything OpenSSL refuses and more
    (tests/test_signing_rule.py), so its yes is final and costs 0.053 ms
    against OpenSSL's 0.103; only a signature it refuses is asked of OpenSSL
    as well (R of small order with an honest key, say, which OpenSSL
    accepts). Thirty-odd verifications per query at 10 members."""
    raw = public_key.public_bytes_raw() if isinstance(public_key, Ed25519PublicKey) else public_key
    if len(raw) != 32 or len(signature) != ED25519_SIGNATURE_SIZE:
        return False
    if _SODIUM_FAST_PATH and _sodium_valid(raw, signature, message):
        return True
    return ed25519_key_acceptable(bytes(raw)) and _openssl_valid(raw, signature, message)


def verify(public_key: Ed25519PublicKey | bytes, prefix: bytes, message: bytes, signature: bytes, *, what: str) -> None:
    """Raise CryptoError naming ``what`` unless ``signature`` is valid (``ed25519_valid``)."""
    if isinstance(public_key, bytes) and len(public_key) != 32:
        raise CryptoError(f"{what}: malformed Ed25519 public key")
    if len(signature) != ED25519_SIGNATURE_SIZE:
        raise CryptoError(f"{what}: signature must be {ED25519_SIGNATURE_SIZE} bytes, got {len(signature)}")
    if not ed25519_valid(public_key, signature, prefix + message):
        raise CryptoError(f"{what}: signature does not verify")


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
