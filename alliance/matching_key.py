"""Matching key (SPEC §3): the 32-byte HMAC key behind identity tokens, held by
members only, and its hand-over from an existing member to a newcomer.

The hand-over is HPKE-style (base mode, one-shot): an ephemeral X25519 key
agrees a secret with the recipient's X25519 key; HKDF-SHA256 derives an
AES-256-GCM key with an ``info`` that binds a label, sender id, recipient id,
recipient X25519 key, ephemeral key and epoch; the same bytes are the GCM AAD.
The sender signs the whole body with Ed25519 (prefix MATCHING_KEY_SHARE).

Why the operator (who runs the CA and relays the share) gets nothing:
- it cannot read the key: only the holder of the recipient's X25519 private
  key can decrypt, and the sender takes that public key from the newcomer's
  *pinned* credential whose fingerprint it confirmed out of band;
- it cannot redirect a share to a fake member: recipient id and X25519 key are
  inside the AAD and the signature;
- it cannot plant a key of its choosing: the recipient checks the sender's
  signature and requires the decrypted key's check value to equal the one the
  founding member published (confirmed out of band).
"""
from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import struct
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from alliance import signing
from alliance._internal.hexgroups import format_hex_groups, parse_hex_groups
from alliance.errors import CryptoError, InvalidInput
from alliance.pki import PathLike, check_member_id, read_private_file, write_file_atomic, x25519_public_raw
from alliance.v1 import alliance_pb2 as pb

KEY_SIZE = 32
CHECK_VALUE_SIZE = 8
NONCE_SIZE = 12
MAX_EPOCH = 2**32 - 1  # uint32 on the wire
WRAP_LABEL = b"alliance/v1/matching-key-wrap\x00"
CHECK_LABEL = b"UDS1|check"
FILE_VERSION = 1


@dataclass(frozen=True)
class MatchingKey:
    """A matching key and its epoch. ``repr`` shows the check value, never the key."""

    epoch: int
    key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.epoch, int) or not 1 <= self.epoch <= MAX_EPOCH:
            raise InvalidInput(f"matching-key epoch must be 1..{MAX_EPOCH}, got {self.epoch!r}")
        if not isinstance(self.key, bytes) or len(self.key) != KEY_SIZE:
            raise InvalidInput(f"a matching key is {KEY_SIZE} bytes")

    def __repr__(self) -> str:
        return f"MatchingKey(epoch={self.epoch}, check_value={format_check_value(self.check_value)})"

    @property
    def check_value(self) -> bytes:
        return check_value(self.key)


def create(epoch: int = 1) -> MatchingKey:
    """Founding member only: 32 bytes from the OS CSPRNG."""
    return MatchingKey(epoch=epoch, key=secrets.token_bytes(KEY_SIZE))


def check_value(key: bytes) -> bytes:
    """First 8 bytes of HMAC-SHA256(key, "UDS1|check"): identifies the key
    without revealing it; published by the founding member."""
    return hmac.new(key, CHECK_LABEL, hashlib.sha256).digest()[:CHECK_VALUE_SIZE]


def format_check_value(cv: bytes) -> str:
    """Hex in groups of 4 (``1a2b:3c4d:5e6f:7a8b``), for reading aloud."""
    return format_hex_groups(cv)


def parse_check_value(text: str) -> bytes:
    """Inverse of :func:`format_check_value`; tolerant of separators and case."""
    return parse_hex_groups(text, CHECK_VALUE_SIZE, "check value")


# ---------------------------------------------------------------------------
# Storage


def save(path: PathLike, mk: MatchingKey, *, overwrite: bool = False) -> None:
    """JSON, mode 0600, atomic. Refuses to replace an existing key file unless
    ``overwrite`` (a lost matching key means re-importing every book)."""
    doc = {"version": FILE_VERSION, "epoch": mk.epoch, "key": mk.key.hex(), "check_value": mk.check_value.hex()}
    write_file_atomic(path, (json.dumps(doc, indent=2) + "\n").encode("utf-8"), mode=0o600, overwrite=overwrite)


def load(path: PathLike) -> MatchingKey:
    """Load and self-check (stored check value must match the key)."""
    try:
        doc = json.loads(read_private_file(path))
        if doc.get("version") != FILE_VERSION:
            raise InvalidInput(f"{path}: unsupported matching-key file version {doc.get('version')!r}")
        mk = MatchingKey(epoch=int(doc["epoch"]), key=bytes.fromhex(doc["key"]))
        stored_cv = bytes.fromhex(doc["check_value"])
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise InvalidInput(f"{path}: not a matching-key file ({exc})") from None
    if not hmac.compare_digest(stored_cv, mk.check_value):
        raise CryptoError(f"{path}: matching key does not match its stored check value (file corrupted?)")
    return mk


# ---------------------------------------------------------------------------
# Hand-over


def _lp(*parts: bytes) -> bytes:
    return b"".join(struct.pack(">I", len(p)) + p for p in parts)


def share_binding(sender_id: str, recipient_id: str, recipient_x25519_public: bytes, ephemeral_public: bytes, epoch: int) -> bytes:
    """HKDF info and GCM AAD: everything the ciphertext must not be moved
    away from (who sent it, to which member id, under which X25519 key, for
    which epoch)."""
    return WRAP_LABEL + _lp(
        sender_id.encode("utf-8"),
        recipient_id.encode("utf-8"),
        recipient_x25519_public,
        ephemeral_public,
        struct.pack(">I", epoch),
    )


def _wrap_key(shared_secret: bytes, binding: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=binding).derive(shared_secret)


def _exchange(private: X25519PrivateKey, public_raw: bytes, what: str) -> bytes:
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(public_raw))
    except ValueError:
        raise CryptoError(f"{what}: malformed or low-order X25519 public key") from None


def seal_share(
    mk: MatchingKey,
    *,
    sender_id: str,
    sender_ed25519_key: Ed25519PrivateKey,
    recipient_id: str,
    recipient_x25519_public: bytes,
    now: int,
) -> pb.MatchingKeyShare:
    """Encrypt ``mk`` to one recipient and sign it. Take
    ``recipient_x25519_public`` from the recipient's verified, *pinned*
    credential whose fingerprint was confirmed out of band — never from the
    operator alone."""
    check_member_id(sender_id)
    check_member_id(recipient_id)
    if sender_id == recipient_id:
        raise InvalidInput("a member does not share the matching key with itself")
    what = f"matching-key share for {recipient_id}"
    eph = X25519PrivateKey.generate()
    eph_pub = x25519_public_raw(eph)
    shared = _exchange(eph, recipient_x25519_public, what)
    binding = share_binding(sender_id, recipient_id, recipient_x25519_public, eph_pub, mk.epoch)
    nonce = secrets.token_bytes(NONCE_SIZE)
    ciphertext = AESGCM(_wrap_key(shared, binding)).encrypt(nonce, mk.key, binding)
    body = pb.MatchingKeyShareBody(
        sender_id=sender_id,
        recipient_id=recipient_id,
        recipient_x25519_public_key=recipient_x25519_public,
        epoch=mk.epoch,
        ephemeral_public_key=eph_pub,
        nonce=nonce,
        ciphertext=ciphertext,
        check_value=mk.check_value,
        created_at=now,
    )
    body_bytes = body.SerializeToString(deterministic=True)
    return pb.MatchingKeyShare(body=body_bytes, signature=signing.sign(sender_ed25519_key, signing.MATCHING_KEY_SHARE, body_bytes))


def _parse_share(share: bytes | pb.MatchingKeyShare) -> pb.MatchingKeyShare:
    if isinstance(share, pb.MatchingKeyShare):
        return share
    try:
        return pb.MatchingKeyShare.FromString(share)
    except Exception:
        raise InvalidInput("not a MatchingKeyShare") from None


def peek_share(share: bytes | pb.MatchingKeyShare) -> pb.MatchingKeyShareBody:
    """UNVERIFIED body, only to route the share (find the sender's credential
    by ``sender_id``). Trust nothing in it until :func:`open_share` succeeds."""
    try:
        return pb.MatchingKeyShareBody.FromString(_parse_share(share).body)
    except Exception:
        raise InvalidInput("matching-key share body is malformed") from None


def open_share(
    share: bytes | pb.MatchingKeyShare,
    *,
    recipient_id: str,
    recipient_x25519_key: X25519PrivateKey,
    sender_ed25519_public: bytes,
    expected_check_value: bytes,
    sender_id: str | None = None,
) -> MatchingKey:
    """Verify and decrypt a share addressed to us. ``sender_ed25519_public``
    comes from the sender's pinned credential (fingerprint confirmed out of
    band) and ``expected_check_value`` from the founding member's publication;
    if ``sender_id`` is given the share must name it."""
    s = _parse_share(share)
    if len(expected_check_value) != CHECK_VALUE_SIZE:
        raise InvalidInput(f"expected check value must be {CHECK_VALUE_SIZE} bytes")
    signing.verify(sender_ed25519_public, signing.MATCHING_KEY_SHARE, s.body, s.signature,
                   what="matching-key share: sender signature")
    body = peek_share(s)
    who = f"matching-key share from {body.sender_id!r}"
    if sender_id is not None and body.sender_id != sender_id:
        raise CryptoError(f"{who}: expected a share from {sender_id!r}")
    if body.recipient_id != recipient_id:
        raise CryptoError(f"{who} is addressed to {body.recipient_id!r}, not to {recipient_id!r}")
    own_pub = x25519_public_raw(recipient_x25519_key)
    if body.recipient_x25519_public_key != own_pub:
        raise CryptoError(f"{who} is encrypted to another X25519 key than this member's")
    if not 1 <= body.epoch <= MAX_EPOCH:
        raise CryptoError(f"{who}: invalid epoch {body.epoch}")
    if len(body.nonce) != NONCE_SIZE or len(body.ciphertext) != KEY_SIZE + 16 or len(body.check_value) != CHECK_VALUE_SIZE:
        raise CryptoError(f"{who}: malformed nonce, ciphertext or check value")
    if not hmac.compare_digest(body.check_value, expected_check_value):
        raise CryptoError(
            f"{who}: check value {format_check_value(body.check_value)} is not the published "
            f"{format_check_value(expected_check_value)}; refusing this key"
        )
    shared = _exchange(recipient_x25519_key, body.ephemeral_public_key, who)
    binding = share_binding(body.sender_id, body.recipient_id, own_pub, body.ephemeral_public_key, body.epoch)
    try:
        key = AESGCM(_wrap_key(shared, binding)).decrypt(body.nonce, body.ciphertext, binding)
    except InvalidTag:
        raise CryptoError(f"{who}: does not decrypt (tampered, or not encrypted to this member's key)") from None
    cv = check_value(key)
    if not (hmac.compare_digest(cv, body.check_value) and hmac.compare_digest(cv, expected_check_value)):
        raise CryptoError(f"{who}: decrypted key does not have the published check value; refusing it")
    return MatchingKey(epoch=body.epoch, key=key)
