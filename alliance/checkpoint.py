"""Signed checkpoints of the audit log (SPEC §6): C2SP tlog-checkpoint bodies
in C2SP signed notes with Ed25519 signatures.

Checkpoint body (c2sp.org/tlog-checkpoint)::

    <origin>\\n<decimal tree size>\\n<base64 root hash>\\n[<extension line>\\n ...]

Signed note (c2sp.org/signed-note): the text (ending in a newline), a blank
line, then one or more lines ``— <key name> <base64(key ID || signature)>``.
The Ed25519 signature covers the note text, final newline included; the key ID
is SHA-256(key name || 0x0A || 0x01 || public key)[:4]; a verifier key is
``<name>+<8 hex key ID>+<base64(0x01 || public key)>``.

Every failure raises CryptoError with a message saying what was wrong.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from alliance import signing
from alliance.errors import CryptoError

ED25519_TYPE = 0x01
SIGNATURE_PREFIX = "\u2014 "  # em dash, space
# The C2SP spec asks verifiers to accept at least 16. A witnessed checkpoint
# carries the log's line and one cosignature per member (SPEC §6.1), so this
# bounds the alliance: 199 members. It was 100, which would have made every
# member refuse the witnessed checkpoints of an alliance past 99 members. Not
# higher: GetWitnessedCheckpoint returns a note per distinct size witnesses
# stand at, each with every line, and at 200 lines even 200 such notes stay
# under 5 MB, well inside the 8 MiB messages the alliance allows.
MAX_SIGNATURES = 200
MAX_TREE_SIZE = 2**64 - 1
_SIZE = re.compile(r"0|[1-9][0-9]*")
_HEX8 = re.compile(r"[0-9a-fA-F]{8}")


def _b64decode(text: str, what: str) -> bytes:
    """Strict, canonical standard base64 (RFC 4648 §4)."""
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error, ValueError) as exc:
        raise CryptoError(f"{what}: not valid base64") from exc
    if base64.b64encode(raw).decode("ascii") != text:
        raise CryptoError(f"{what}: not canonical base64")
    return raw


def _check_text(text: str, what: str) -> None:
    """Signed notes are UTF-8 with no control characters other than newline."""
    if not isinstance(text, str):
        raise CryptoError(f"{what}: expected text, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise CryptoError(f"{what}: not valid UTF-8") from exc
    for ch in text:
        if ch < " " and ch != "\n":
            raise CryptoError(f"{what}: contains control character U+{ord(ch):04X}")


def _check_key_name(name: str) -> None:
    if not isinstance(name, str) or not name:
        raise CryptoError("note key name must be non-empty")
    if "+" in name or any(ch.isspace() for ch in name):
        raise CryptoError(f"note key name {name!r} must not contain spaces or '+'")
    _check_text(name, "note key name")


def _raw_public_key(public_key: Ed25519PublicKey | bytes) -> bytes:
    if isinstance(public_key, Ed25519PublicKey):
        return public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    if isinstance(public_key, (bytes, bytearray)) and len(public_key) == 32:
        return bytes(public_key)
    raise CryptoError("expected an Ed25519 public key (object or 32 raw bytes)")


def key_id(key_name: str, public_key: Ed25519PublicKey | bytes) -> bytes:
    """SHA-256(key name || 0x0A || 0x01 || 32-byte public key)[:4]."""
    _check_key_name(key_name)
    raw = _raw_public_key(public_key)
    return hashlib.sha256(key_name.encode("utf-8") + b"\n" + bytes([ED25519_TYPE]) + raw).digest()[:4]


# --- checkpoints ------------------------------------------------------------


@dataclass(frozen=True)
class Checkpoint:
    """A tree head: origin, tree size, RFC 6962 root hash, opaque extension lines."""

    origin: str
    size: int
    root_hash: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.origin, str) or not self.origin or "\n" in self.origin:
            raise CryptoError("checkpoint origin must be non-empty text on one line")
        _check_text(self.origin, "checkpoint origin")
        if type(self.size) is not int or not 0 <= self.size <= MAX_TREE_SIZE:
            raise CryptoError(f"checkpoint tree size must be an integer in [0, 2^64), got {self.size!r}")
        if not isinstance(self.root_hash, bytes) or len(self.root_hash) != 32:
            raise CryptoError("checkpoint root hash must be 32 bytes")
        object.__setattr__(self, "extensions", tuple(self.extensions))
        for line in self.extensions:
            if not isinstance(line, str) or not line or "\n" in line:
                raise CryptoError("checkpoint extension lines must be non-empty text on one line")
            _check_text(line, "checkpoint extension line")

    def body(self) -> str:
        lines = [self.origin, str(self.size), base64.b64encode(self.root_hash).decode("ascii"), *self.extensions]
        return "".join(line + "\n" for line in lines)

    @classmethod
    def parse(cls, body: str) -> Checkpoint:
        """Strict parse of a checkpoint body (the note text)."""
        _check_text(body, "checkpoint")
        if not body.endswith("\n"):
            raise CryptoError("checkpoint must end with a newline")
        lines = body[:-1].split("\n")
        if len(lines) < 3:
            raise CryptoError(f"checkpoint needs origin, size and root hash lines, got {len(lines)} line(s)")
        origin, size_text, root_text, *extensions = lines
        if not origin:
            raise CryptoError("checkpoint origin line is empty")
        if not _SIZE.fullmatch(size_text):
            raise CryptoError(f"checkpoint tree size {size_text!r} is not a decimal without leading zeros")
        size = int(size_text)
        if size > MAX_TREE_SIZE:
            raise CryptoError(f"checkpoint tree size {size_text} is too large")
        root_hash = _b64decode(root_text, "checkpoint root hash")
        if len(root_hash) != 32:
            raise CryptoError(f"checkpoint root hash is {len(root_hash)} bytes, expected 32")
        if any(not line for line in extensions):
            raise CryptoError("checkpoint extension lines must be non-empty")
        return cls(origin, size, root_hash, tuple(extensions))


# --- signed notes ---------------------------------------------------------


@dataclass(frozen=True)
class NoteVerifier:
    """A trusted note key: name, 4-byte key ID and Ed25519 public key."""

    name: str
    key_id: bytes
    public_key: Ed25519PublicKey


def verifier_key(key_name: str, public_key: Ed25519PublicKey | bytes) -> str:
    """``<name>+<8 hex key ID>+<base64(0x01 || public key)>``."""
    raw = _raw_public_key(public_key)
    kid = key_id(key_name, raw)
    return f"{key_name}+{kid.hex()}+{base64.b64encode(bytes([ED25519_TYPE]) + raw).decode('ascii')}"


def parse_verifier_key(text: str) -> NoteVerifier:
    """Parse a verifier key string; its key ID must match its name and key.
    Surrounding whitespace (a trailing newline from a file) is ignored."""
    if not isinstance(text, str):
        raise CryptoError("verifier key must be text")
    parts = text.strip().split("+", 2)  # the name has no '+'; the base64 key may
    if len(parts) != 3:
        raise CryptoError("verifier key must be <name>+<key ID hex>+<base64 key>")
    name, kid_hex, key_b64 = parts
    _check_key_name(name)
    if not _HEX8.fullmatch(kid_hex):
        raise CryptoError("verifier key ID must be 8 hexadecimal digits")
    key = _b64decode(key_b64, "verifier key")
    if not key or key[0] != ED25519_TYPE:
        raise CryptoError("verifier key is not an Ed25519 (type 0x01) key")
    if len(key) != 33:
        raise CryptoError(f"verifier key has {len(key) - 1} key bytes, expected 32")
    kid = key_id(name, key[1:])
    if kid.hex() != kid_hex.lower():
        raise CryptoError(f"verifier key ID {kid_hex} does not match its name and key ({kid.hex()})")
    if not signing.ed25519_key_acceptable(key[1:]):
        raise CryptoError("verifier key is a point of small order or not canonically encoded")
    return NoteVerifier(name, kid, Ed25519PublicKey.from_public_bytes(key[1:]))


def sign_note(body: str, key_name: str, private_key: Ed25519PrivateKey) -> str:
    """Sign ``body`` (the note text, ending in a newline) as a signed note."""
    _check_text(body, "note text")
    if not body.endswith("\n"):
        raise CryptoError("note text must end with a newline")
    kid = key_id(key_name, private_key.public_key())
    signature = private_key.sign(body.encode("utf-8"))
    return f"{body}\n{SIGNATURE_PREFIX}{key_name} {base64.b64encode(kid + signature).decode('ascii')}\n"


def open_note(note: str, verifier: NoteVerifier) -> str:
    """Return the note text if a signature line by ``verifier`` verifies.

    Lines by other keys (another name or key ID) are ignored, as the spec
    requires. The note is refused if it is malformed, if no line is by this key,
    if a line by this key fails to verify, or if this key signed more than once.
    """
    _check_text(note, "signed note")
    if not note.endswith("\n"):
        raise CryptoError("signed note must end with a newline")
    split = note.rfind("\n\n")
    if split < 0:
        raise CryptoError("signed note has no blank line before its signatures")
    text, signature_block = note[: split + 1], note[split + 2 :]
    lines = signature_block[:-1].split("\n") if signature_block else []
    if not lines:
        raise CryptoError("signed note has no signature lines")
    if len(lines) > MAX_SIGNATURES:
        raise CryptoError(f"signed note has {len(lines)} signature lines, more than {MAX_SIGNATURES}")
    message = text.encode("utf-8")
    verified = 0
    for number, line in enumerate(lines, 1):
        if not line.startswith(SIGNATURE_PREFIX):
            raise CryptoError(f"signature line {number} does not start with an em dash and a space")
        name, space, sig_b64 = line[len(SIGNATURE_PREFIX) :].partition(" ")
        if not space:
            raise CryptoError(f"signature line {number} has no signature after the key name")
        try:
            _check_key_name(name)
        except CryptoError as exc:
            raise CryptoError(f"signature line {number}: {exc}") from None
        sig = _b64decode(sig_b64, f"signature line {number}")
        if len(sig) < 5:
            raise CryptoError(f"signature line {number} is too short to hold a key ID and a signature")
        if name != verifier.name or sig[:4] != verifier.key_id:
            continue  # an unknown key: ignored
        if not signing.ed25519_valid(verifier.public_key, sig[4:], message):
            raise CryptoError(f"signature by {verifier.name} (line {number}) does not verify")
        if verified:
            raise CryptoError(f"signed note has more than one signature by {verifier.name}")
        verified += 1
    if not verified:
        raise CryptoError(f"signed note has no signature by {verifier.name}+{verifier.key_id.hex()}")
    return text


def sign_checkpoint(cp: Checkpoint, key_name: str, private_key: Ed25519PrivateKey) -> str:
    return sign_note(cp.body(), key_name, private_key)


def open_checkpoint(note: str, verifier: NoteVerifier, *, origin: str | None = None) -> Checkpoint:
    """Verify the note's signature, then parse its text as a checkpoint; with
    ``origin``, also require that origin."""
    cp = Checkpoint.parse(open_note(note, verifier))
    if origin is not None and cp.origin != origin:
        raise CryptoError(f"checkpoint is for origin {cp.origin!r}, expected {origin!r}")
    return cp
