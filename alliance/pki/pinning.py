"""Pinning peers' credentials on first sight; a changed key only with the previous key's endorsement (SPEC §5)."""
from __future__ import annotations

import fcntl
import json
from dataclasses import dataclass
from pathlib import Path

from alliance import signing
from alliance.errors import CryptoError, InvalidInput
from alliance.v1 import alliance_pb2 as pb
from alliance.pki.base import PathLike, write_file_atomic
from alliance.pki.issuing import _parse, _rotation_message_for

# ---------------------------------------------------------------------------
# Pinning (trust on first use, SPEC §5)


@dataclass(frozen=True)
class Pin:
    """What a member remembers about a peer. The actual keys are kept, not just
    the CA-asserted fingerprint, so a credential repeating the fingerprint with
    other keys is caught."""

    member_id: str
    fingerprint: bytes
    ed25519_public_key: bytes
    serial: int
    x25519_public_key: bytes
    paillier_n: bytes

    def to_json(self) -> dict:
        return {
            "member_id": self.member_id,
            "fingerprint": self.fingerprint.hex(),
            "ed25519_public_key": self.ed25519_public_key.hex(),
            "serial": self.serial,
            "x25519_public_key": self.x25519_public_key.hex(),
            "paillier_n": self.paillier_n.hex(),
        }

    @classmethod
    def from_json(cls, d: dict) -> "Pin":
        return cls(
            member_id=d["member_id"],
            fingerprint=bytes.fromhex(d["fingerprint"]),
            ed25519_public_key=bytes.fromhex(d["ed25519_public_key"]),
            serial=int(d["serial"]),
            x25519_public_key=bytes.fromhex(d["x25519_public_key"]),
            paillier_n=bytes.fromhex(d["paillier_n"]),
        )


def pin_from(body: pb.CredentialBody) -> Pin:
    return Pin(
        member_id=body.member_id,
        fingerprint=bytes(body.member_fingerprint),
        ed25519_public_key=bytes(body.ed25519_public_key),
        serial=body.serial,
        x25519_public_key=bytes(body.x25519_public_key),
        paillier_n=bytes(body.paillier_n),
    )


def check_pin(pinned: Pin | None, cred: pb.Credential, body: pb.CredentialBody) -> tuple[str, Pin]:
    """Compare a verified credential (``body`` from :func:`verify_credential`)
    with the pin for its member id. Returns ("new"|"same"|"rotated", pin to
    store). Different keys are accepted only with ``cred.predecessor_signature``
    by the pinned Ed25519 key over :func:`rotation_message` for the new keys;
    otherwise CryptoError — the CA cannot swap a member's keys silently."""
    if _parse(pb.CredentialBody, cred.body, "credential body") != body:
        raise CryptoError(f"credential for {body.member_id!r}: body does not match the credential bytes")
    new = pin_from(body)
    if pinned is None:
        return "new", new
    if pinned.member_id != body.member_id:
        raise CryptoError(f"pin for {pinned.member_id!r} checked against a credential for {body.member_id!r}")
    same_keys = (
        new.ed25519_public_key == pinned.ed25519_public_key
        and new.x25519_public_key == pinned.x25519_public_key
        and new.paillier_n == pinned.paillier_n
    )
    if same_keys and new.fingerprint == pinned.fingerprint:
        return "same", (new if new.serial >= pinned.serial else pinned)
    if new.fingerprint == pinned.fingerprint:
        raise CryptoError(f"a second credential for member {body.member_id} repeats its pinned fingerprint with different keys")
    if not cred.predecessor_signature:
        raise CryptoError(f"a second credential for member {body.member_id} is not signed by its pinned key")
    try:
        signing.verify(
            pinned.ed25519_public_key,
            signing.KEY_ROTATION,
            _rotation_message_for(body.member_id, bytes(body.member_fingerprint), body),
            cred.predecessor_signature,
            what=f"key rotation for {body.member_id}",
        )
    except CryptoError:
        raise CryptoError(f"a second credential for member {body.member_id} is not signed by its pinned key") from None
    return "rotated", new


class PinStore:
    """Pins in one JSON file, rewritten atomically under an exclusive lock.
    A deliberate :meth:`remove` (after an out-of-band check) is the only way to
    accept a member that lost its previous key."""

    def __init__(self, path: PathLike) -> None:
        self.path = Path(path)

    def _read(self) -> dict[str, Pin]:
        try:
            raw = json.loads(self.path.read_text("utf-8"))
        except FileNotFoundError:
            return {}
        except ValueError as exc:
            raise InvalidInput(f"{self.path}: pin store is not valid JSON ({exc})") from None
        if raw.get("version") != 1:
            raise InvalidInput(f"{self.path}: unsupported pin store version")
        return {mid: Pin.from_json(d) for mid, d in raw.get("pins", {}).items()}

    def _write(self, pins: dict[str, Pin]) -> None:
        data = {"version": 1, "pins": {mid: p.to_json() for mid, p in sorted(pins.items())}}
        write_file_atomic(self.path, json.dumps(data, indent=2).encode("utf-8") + b"\n", mode=0o600, overwrite=True)

    def _locked(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path.with_name(self.path.name + ".lock"), "a")
        fcntl.flock(fh, fcntl.LOCK_EX)
        return fh

    def all(self) -> dict[str, Pin]:
        return self._read()

    def get(self, member_id: str) -> Pin | None:
        return self._read().get(member_id)

    def put(self, pin: Pin) -> None:
        with self._locked():
            pins = self._read()
            pins[pin.member_id] = pin
            self._write(pins)

    def remove(self, member_id: str) -> bool:
        with self._locked():
            pins = self._read()
            found = pins.pop(member_id, None) is not None
            if found:
                self._write(pins)
            return found

    def check(self, cred: pb.Credential, body: pb.CredentialBody) -> str:
        """check_pin against the stored pin and store the result, atomically."""
        with self._locked():
            pins = self._read()
            status, pin = check_pin(pins.get(body.member_id), cred, body)
            if pins.get(body.member_id) != pin:
                pins[pin.member_id] = pin
                self._write(pins)
            return status
