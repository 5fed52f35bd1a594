"""Witness cosignatures (SPEC §6.1): C2SP tlog-cosignature `cosignature/v1`
with Ed25519, and the quorum rule.

A cosignature is a note signature line on a checkpoint,

    — <member id> base64(key ID ‖ 8-byte big-endian time ‖ signature)

key ID = SHA-256(name ‖ "\\n" ‖ 0x04 ‖ public key)[:4], over the message
"cosignature/v1\\ntime <unix seconds>\\n" followed by the whole checkpoint
body (c2sp.org/tlog-cosignature). Members are the witnesses and sign with
their credential's Ed25519 key."""
from __future__ import annotations

import base64
import hashlib
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from alliance.checkpoint import SIGNATURE_PREFIX, Checkpoint
from alliance import signing
from alliance.errors import CryptoError

COSIGNATURE_ALGORITHM = b"\x04"
MAX_FUTURE_S = 300  # verifiers may refuse cosignatures from the future


def cosigner_key_id(name: str, public_key: bytes) -> bytes:
    return hashlib.sha256(name.encode("utf-8") + b"\n" + COSIGNATURE_ALGORITHM + public_key).digest()[:4]


def signed_message(body: str, time_s: int) -> bytes:
    if not 0 <= time_s < 2**63:
        raise CryptoError("cosignature time out of range")
    return f"cosignature/v1\ntime {time_s}\n".encode("ascii") + body.encode("utf-8")


def cosign(cp: Checkpoint, name: str, private_key: Ed25519PrivateKey, time_s: int) -> str:
    """The cosignature line (without a trailing newline) for ``cp``."""
    public = private_key.public_key().public_bytes_raw()
    signature = private_key.sign(signed_message(cp.body(), time_s))
    blob = cosigner_key_id(name, public) + struct.pack(">Q", time_s) + signature
    return f"{SIGNATURE_PREFIX}{name} {base64.b64encode(blob).decode('ascii')}"


@dataclass(frozen=True)
class Cosignature:
    name: str
    time_s: int


def verify_line(line: str, cp: Checkpoint, witnesses: Mapping[str, bytes], *, now_s: int | None = None) -> Cosignature | None:
    """The cosignature a line holds if it is by a known witness and verifies;
    None for a line by a key we do not know (ignored, as notes require).
    A line that names a known witness with its key ID but fails is an error."""
    if not line.startswith(SIGNATURE_PREFIX):
        raise CryptoError("cosignature line does not start with an em dash and a space")
    name, space, b64 = line[len(SIGNATURE_PREFIX):].partition(" ")
    key = witnesses.get(name)
    if not space or key is None:
        return None
    try:
        blob = base64.b64decode(b64, validate=True)
    except ValueError:
        raise CryptoError(f"cosignature by {name} is not base64") from None
    if len(blob) != 4 + 8 + 64 or blob[:4] != cosigner_key_id(name, key):
        return None  # another key of that name (e.g. the log's own signature, or a rotated key)
    (time_s,) = struct.unpack(">Q", blob[4:12])
    if now_s is not None and time_s > now_s + MAX_FUTURE_S:
        raise CryptoError(f"cosignature by {name} is dated in the future")
    if not signing.ed25519_valid(key, blob[12:], signed_message(cp.body(), time_s)):
        raise CryptoError(f"cosignature by {name} does not verify")
    return Cosignature(name, time_s)


def signature_lines(note: str) -> list[str]:
    split = note.rfind("\n\n")
    if split < 0 or not note.endswith("\n"):
        raise CryptoError("signed note has no signature block")
    return note[split + 2:-1].split("\n")


def verified_cosigners(note: str, cp: Checkpoint, witnesses: Mapping[str, bytes], *, now_s: int | None = None) -> dict[str, int]:
    """witness name -> cosignature time, for every valid cosignature by a
    known witness on ``note`` (whose body must be ``cp``)."""
    found: dict[str, int] = {}
    for line in signature_lines(note):
        c = verify_line(line, cp, witnesses, now_s=now_s)
        if c is not None:
            found[c.name] = max(c.time_s, found.get(c.name, 0))
    return found


def quorum(m: int) -> int:
    """⌊m/2⌋ + 1 of the m sponsored active members (SPEC §6.1)."""
    return m // 2 + 1


def required(eligible: set[str] | frozenset[str], exclude: str | None = None) -> int:
    """How many cosignatures of ``eligible`` other than ``exclude`` a
    checkpoint needs: ⌊m/2⌋ + 1 of the m eligible witnesses, the deciding
    member's own cosignature not counting — capped at the number of the
    others, so that a 1- or 2-member alliance (where ⌊m/2⌋ + 1 others do not
    exist) needs every other eligible witness instead of being stuck
    forever (docs/audit-log.md "Witness quorum for members")."""
    others = len(set(eligible) - {exclude}) if exclude is not None else len(eligible)
    return min(quorum(len(eligible)), others)


def has_quorum(cosigners: set[str] | Mapping[str, int], eligible: set[str], *, exclude: str | None = None) -> bool:
    """Whether the cosigners include a quorum of ``eligible`` (the sponsored
    members active in the verifier's last kept witnessed checkpoint); a
    member deciding for itself does not count its own cosignature."""
    counted = (set(cosigners) & eligible) - ({exclude} if exclude else set())
    return len(counted) >= required(eligible, exclude)


def cosigners_by_keys(note: str, cp: Checkpoint, keys: Mapping[str, Sequence[bytes]], *, now_s: int) -> dict[str, int]:
    """member id -> newest cosignature time, for every line of ``note`` that
    verifies under one of that member's keys (all keys a member ever had:
    the key ID picks the right one). A line that fails counts for nothing,
    so a bogus line cannot make a good checkpoint fail."""
    found: dict[str, int] = {}
    for line in signature_lines(note):
        # A line can only verify for the member it names: look that one up,
        # so the work grows with the lines, not with lines × members.
        mid = line[len(SIGNATURE_PREFIX):].partition(" ")[0] if line.startswith(SIGNATURE_PREFIX) else ""
        for key in keys.get(mid, ()):
            try:
                c = verify_line(line, cp, {mid: key}, now_s=now_s)
            except CryptoError:
                c = None
            if c is not None:
                found[mid] = max(c.time_s, found.get(mid, 0))
    return found


def add_cosignatures(note: str, lines: list[str]) -> str:
    """The note with further signature lines appended."""
    return note + "".join(line + "\n" for line in lines)
