"""C2SP tlog-checkpoint bodies signed as C2SP signed notes with Ed25519
(SPEC §6). A checkpoint is ``<origin>\\n<size>\\n<base64 root>\\n`` plus optional
extension lines; a note is the body, a blank line, and signature lines
``— <name> <base64(key id ‖ signature)>``. Key id = SHA-256(name ‖ 0x0A ‖ 0x01 ‖
public key)[:4]; verifier keys are ``<name>+<hex key id>+<base64(0x01 ‖ key)>``."""
from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from alliance.errors import CryptoError

ED25519_TYPE = b"\x01"
EM_DASH = "\u2014"
_SIZE = re.compile(r"^(0|[1-9][0-9]{0,19})$")


@dataclass(frozen=True)
class Checkpoint:
    origin: str
    size: int
    root_hash: bytes
    extensions: tuple[str, ...] = ()

    def body(self) -> str:
        if not self.origin or "\n" in self.origin or len(self.root_hash) != 32 or self.size < 0:
            raise ValueError("checkpoint needs a one-line origin, a size ≥ 0 and a 32-byte root")
        lines = [self.origin, str(self.size), base64.b64encode(self.root_hash).decode(), *self.extensions]
        return "\n".join(lines) + "\n"

    @classmethod
    def parse(cls, body: str) -> "Checkpoint":
        if not body.endswith("\n"):
            raise CryptoError("checkpoint body must end with a newline")
        lines = body[:-1].split("\n")
        if len(lines) < 3 or not lines[0] or any(not line for line in lines[3:]):
            raise CryptoError("checkpoint body must hold origin, size and root hash lines")
        if not _SIZE.match(lines[1]):
            raise CryptoError(f"checkpoint tree size {lines[1]!r} is not a decimal number")
        try:
            root = base64.b64decode(lines[2], validate=True)
        except binascii.Error:
            raise CryptoError("checkpoint root hash is not base64") from None
        if len(root) != 32:
            raise CryptoError("checkpoint root hash must be 32 bytes")
        return cls(lines[0], int(lines[1]), root, tuple(lines[3:]))


@dataclass(frozen=True)
class NoteVerifier:
    name: str
    key_id: bytes
    public_key: Ed25519PublicKey


def _raw(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def key_id(name: str, public_key: Ed25519PublicKey) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + ED25519_TYPE + _raw(public_key)).digest()[:4]


def verifier_key(name: str, public_key: Ed25519PublicKey) -> str:
    return f"{name}+{key_id(name, public_key).hex()}+{base64.b64encode(ED25519_TYPE + _raw(public_key)).decode()}"


def parse_verifier_key(text: str) -> NoteVerifier:
    try:
        name, kid_hex, key_b64 = text.strip().split("+", 2)
        kid, key = bytes.fromhex(kid_hex), base64.b64decode(key_b64, validate=True)
    except (ValueError, binascii.Error):
        raise CryptoError("not a signed-note verifier key (<name>+<key id>+<key>)") from None
    if len(kid) != 4 or len(key) != 33 or key[:1] != ED25519_TYPE:
        raise CryptoError("verifier key must be an Ed25519 signed-note key")
    public = Ed25519PublicKey.from_public_bytes(key[1:])
    if key_id(name, public) != kid:
        raise CryptoError("verifier key id does not match its name and key")
    return NoteVerifier(name, kid, public)


def sign_note(body: str, key_name: str, private_key: Ed25519PrivateKey) -> str:
    if not body.endswith("\n"):
        raise ValueError("a note body ends with a newline")
    sig = private_key.sign(body.encode())
    blob = base64.b64encode(key_id(key_name, private_key.public_key()) + sig).decode()
    return f"{body}\n{EM_DASH} {key_name} {blob}\n"


def open_note(note: str, verifier: NoteVerifier) -> str:
    """The body, if a signature line by ``verifier`` verifies; lines by other keys are ignored."""
    body, sep, signatures = note.rpartition("\n\n")
    if not sep or not signatures.endswith("\n"):
        raise CryptoError("malformed signed note")
    body += "\n"
    for line in signatures[:-1].split("\n"):
        prefix = f"{EM_DASH} {verifier.name} "
        if not line.startswith(prefix):
            if not line.startswith(EM_DASH + " "):
                raise CryptoError("malformed signature line in signed note")
            continue
        try:
            blob = base64.b64decode(line[len(prefix):], validate=True)
        except binascii.Error:
            raise CryptoError("signature line is not base64") from None
        if len(blob) != 68 or blob[:4] != verifier.key_id:
            continue
        try:
            verifier.public_key.verify(blob[4:], body.encode())
        except InvalidSignature:
            raise CryptoError(f"signed note: signature by {verifier.name} does not verify") from None
        return body
    raise CryptoError(f"signed note carries no signature by {verifier.name}")


def sign_checkpoint(cp: Checkpoint, key_name: str, private_key: Ed25519PrivateKey) -> str:
    return sign_note(cp.body(), key_name, private_key)


def open_checkpoint(note: str, verifier: NoteVerifier, *, origin: str | None = None) -> Checkpoint:
    cp = Checkpoint.parse(open_note(note, verifier))
    if origin is not None and cp.origin != origin:
        raise CryptoError(f"checkpoint origin {cp.origin!r}, expected {origin!r}")
    return cp
