"""Matching a member's journalled answers to log entries (SPEC §6.2): pure
functions, no I/O. ``entry_reconciles`` decides whether one entry accounts
for one answer; ``OwnSignatures`` checks the member's own answer signatures;
``nearest_restart`` names the gateway restarts around an unlogged answer."""
from __future__ import annotations

import hmac
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from alliance import audit_entry, signing
from alliance.errors import CryptoError


@dataclass(frozen=True)
class JournalRow:
    query_id: str
    request_sha256: bytes
    ciphertext_sha256: bytes
    answered_at_ms: int


class OwnSignatures:
    """Checks signatures this member claims as its own answers. Given its
    signing key (the one matching ``public_key``), a signature equal to that
    key's signature of the message is ours: Ed25519 signing is deterministic
    (RFC 8032 §5.1.6), so those are the bytes the answer path produced, valid
    by construction, for less than a verification (sign 0.033 ms, verify
    0.053 ms). Any other bytes (an older key's, a forgery) still get a full
    verification."""

    def __init__(self, public_key: Ed25519PublicKey | bytes, signing_key: Ed25519PrivateKey | None = None) -> None:
        self.public_key = public_key if isinstance(public_key, Ed25519PublicKey) else _public_key(public_key)
        matches = (signing_key is not None and self.public_key is not None
                   and signing_key.public_key().public_bytes_raw() == self.public_key.public_bytes_raw())
        self.signing_key = signing_key if matches else None  # another key's signatures are not ours

    def valid(self, message: bytes, signature: bytes) -> bool:
        # Constant time: the status hashed into the message is the gateway's to choose, and a
        # timed comparison would leak our signature over it byte by byte.
        if self.signing_key is not None and hmac.compare_digest(
                signing.sign(self.signing_key, signing.MEMBER_ANSWER, message), signature):
            return True
        if self.public_key is None:
            return False
        try:
            signing.verify(self.public_key, signing.MEMBER_ANSWER, message, signature, what="own answer signature")
        except CryptoError:
            return False
        return True


def _public_key(raw: bytes) -> Ed25519PublicKey | None:
    try:
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError:
        return None  # a malformed key verifies nothing


def entry_reconciles(entry: dict[str, Any], row: JournalRow, member_id: str,
                     own: OwnSignatures | Ed25519PublicKey | bytes) -> bool:
    """Does this log entry account for this journalled answer? Same query id
    and request digest, this member among `members_asked`, and either its
    answer (same ciphertext digest, this member's valid signature) or a drop
    reason for it. An answer listed with another ciphertext never counts.

    Never raises: the entry's bytes are the gateway's, and a run that stopped
    at an odd entry would never report the answers missing around it. Any
    field of the wrong shape, or hex an auditor would refuse (not lowercase),
    accounts for nothing."""
    if entry.get("kind") not in audit_entry.QUERY_KINDS or entry.get("query_id") != row.query_id:
        return False
    body = _strict_hex(entry.get("request_body"))
    if body is None or signing.sha256(body) != row.request_sha256:
        return False
    asked, answers, dropped = entry.get("members_asked"), entry.get("answers", []), entry.get("dropped", [])
    if not (isinstance(asked, list) and isinstance(answers, list) and isinstance(dropped, list)) or member_id not in asked:
        return False
    mine = [a for a in answers if isinstance(a, dict) and a.get("member_id") == member_id]
    if mine:
        own = own if isinstance(own, OwnSignatures) else OwnSignatures(own)
        return any(_answer_is_ours(a, row, own) for a in mine)
    return any(isinstance(d, dict) and d.get("member_id") == member_id and isinstance(d.get("reason"), str)
               for d in dropped)


def _answer_is_ours(answer: dict[str, Any], row: JournalRow, own: OwnSignatures) -> bool:
    signature = _strict_hex(answer.get("signature"))
    status = _strict_hex(answer.get("book_status", ""))  # SPEC §10: covered by the answer signature
    if answer.get("ciphertext_sha256") != row.ciphertext_sha256.hex() or signature is None or status is None:
        return False
    return own.valid(signing.member_answer_message(row.query_id, row.request_sha256, row.ciphertext_sha256,
                                                   signing.sha256(status) if status else b""), signature)


_LOWER_HEX = re.compile(r"(?:[0-9a-f]{2})*")


def _strict_hex(value: Any) -> bytes | None:
    """Bytes the log spells as lowercase hex (docs/audit-log.md), else None."""
    if not isinstance(value, str) or not _LOWER_HEX.fullmatch(value):
        return None
    return bytes.fromhex(value)


@dataclass(frozen=True)
class Restart:
    seq: int
    time_ms: int
    time: str
    pid: Any
    host: Any

    def as_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "time": self.time, "pid": self.pid, "host": self.host}


def nearest_restart(restarts: list[Restart], answered_at_ms: int) -> dict[str, Any]:
    """The latest gateway_started at or before the answer and the first after it
    (by time; None when the log read holds none)."""
    before = [r for r in restarts if r.time_ms <= answered_at_ms]
    after = [r for r in restarts if r.time_ms > answered_at_ms]
    return {"before": max(before, key=lambda r: r.time_ms).as_json() if before else None,
            "after": min(after, key=lambda r: r.time_ms).as_json() if after else None}


def parse_time_ms(text: Any) -> int:
    try:
        return int(datetime.strptime(str(text), "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp() * 1000)
    except ValueError:
        return 0


def format_utc(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"
