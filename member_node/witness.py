"""The member as a witness of the log (SPEC §6.1, c2sp.org/tlog-witness).

`member serve` runs :func:`start` in a background thread. Each round:

1. fetch the gateway's witness checkpoint with a consistency proof from the
   size this member last cosigned (``GetWitnessCheckpoint(old_size)``);
2. check the log's signature (the key pinned at join), that the size did
   not go back, and the proof; check the checkpoint against every
   checkpoint the member *used* for a trust decision (:func:`register_used`:
   the querier's receipts, the membership feed's view) and against the
   checkpoints other witnesses cosigned that the gateway shows it;
3. persist it durably as the last cosigned checkpoint, *then* cosign it
   (C2SP ``cosignature/v1`` with the member's Ed25519 key) and post it.

Any inconsistency (a bad proof, another root at the same size, a smaller
size that is not a prefix, a contradiction with a used checkpoint) stops
the witness for good: both checkpoints are kept in ``witness/evidence/``,
``witness/stopped.json`` records why, and an ``inconsistent_checkpoint``
alert is raised. A stopped witness cosigns nothing until a person removes
``stopped.json`` after investigating."""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from alliance import checkpoint as tlog
from alliance import cosignature, merkle
from alliance._internal.files import write_atomic
from alliance.checkpoint import Checkpoint
from alliance.errors import AllianceError, CryptoError
from alliance_member.home import MemberHome

log = logging.getLogger("alliance.member.witness")

WITNESS_DIR = "witness"
POLL_ENV = "ALLIANCE_WITNESS_POLL_S"
DEFAULT_POLL_S = 2.0
RECOSIGN_AFTER_S = 60  # an unchanged checkpoint is cosigned again this often, to show the witness is alive


class WitnessSource(Protocol):
    """What the witness needs from the gateway (GatewayClient provides it)."""

    def witness_checkpoint(self, old_size: int) -> tuple[str, list[bytes]]: ...
    def post_cosignature(self, note: str, line: str) -> None: ...
    def consistency_proof(self, first: int, second: int) -> list[bytes]: ...
    def witnessed_checkpoints(self) -> tuple[str, list[str]]: ...


class Inconsistent(CryptoError):
    """The log showed this witness two checkpoints that cannot both be true."""

    def __init__(self, message: str, held: str, seen: str) -> None:
        super().__init__(message)
        self.held, self.seen = held, seen


# --------------------------------------------------------------------------
# Files of the witness in the member home


def _dir(home: MemberHome) -> Path:
    return home.path / WITNESS_DIR


def _durable_write(path: Path, data: bytes) -> None:
    write_atomic(path, data)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)  # the rename itself survives a power loss
    finally:
        os.close(fd)


def register_used(home: MemberHome | Path, note: str, source: str) -> None:
    """Record that ``note`` (a log-signed checkpoint) was used for a trust
    decision by ``source`` (e.g. "querier", "feed"): the witness will never
    cosign a checkpoint inconsistent with it. Only the newest per source is
    needed when, as for the querier and the feed, each one used was proven
    consistent with the previous one."""
    home = home if isinstance(home, MemberHome) else MemberHome(Path(home))
    if not source.isidentifier():
        raise ValueError(f"source {source!r} must be a plain name")
    _durable_write(_dir(home) / "used" / f"{source}.note", note.encode("utf-8"))


def used_checkpoints(home: MemberHome) -> dict[str, str]:
    folder = _dir(home) / "used"
    return {p.stem: p.read_text(encoding="utf-8") for p in sorted(folder.glob("*.note"))} if folder.exists() else {}


def last_cosigned(home: MemberHome) -> str | None:
    path = _dir(home) / "cosigned.note"
    return path.read_text(encoding="utf-8") if path.exists() else None


def stopped(home: MemberHome) -> dict[str, Any] | None:
    path = _dir(home) / "stopped.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


# --------------------------------------------------------------------------
# Consistency of two checkpoints


def check_consistent(a: Checkpoint, a_note: str, b: Checkpoint, b_note: str,
                     proof: Callable[[int, int], Sequence[bytes]]) -> None:
    """Raise Inconsistent unless one of ``a``, ``b`` is a prefix of the other
    (same origin; same root at the same size; a consistency proof otherwise)."""
    if a.origin != b.origin:
        raise Inconsistent(f"checkpoints of two origins ({a.origin!r}, {b.origin!r})", a_note, b_note)
    if a.size == b.size:
        if a.root_hash != b.root_hash:
            raise Inconsistent(f"two different checkpoints of size {a.size}", a_note, b_note)
        return
    small, big = (a, b) if a.size < b.size else (b, a)
    if small.size == 0:
        return
    try:
        merkle.verify_consistency(small.size, big.size, list(proof(small.size, big.size)), small.root_hash, big.root_hash)
    except (merkle.ProofError, CryptoError, ValueError) as exc:
        raise Inconsistent(f"checkpoint of size {small.size} is not a prefix of the one of size {big.size}: {exc}",
                           a_note, b_note) from None


# --------------------------------------------------------------------------
# One round


@dataclass
class Witness:
    home: MemberHome
    member_id: str
    signing_key: Ed25519PrivateKey
    verifier: tlog.NoteVerifier
    source: WitnessSource
    alert: Callable[[str, str, dict[str, Any]], Any] | None = None  # (kind, message, details)
    clock: Callable[[], float] = time.time
    check_others: bool = True

    @classmethod
    def for_home(cls, home: MemberHome, source: WitnessSource, *, alert: Any = None) -> "Witness":
        from alliance import pki

        return cls(home, home.config().member_id, pki.load_ed25519_private_pem(home.signing_key),
                   tlog.parse_verifier_key(home.log_verifier.read_text(encoding="utf-8")), source, alert)

    def round(self) -> str:
        """One witnessing round: "stopped", "cosigned", "unchanged" or
        "refused: ..." (nothing cosigned, no alarm: e.g. a stale replica)."""
        if stopped(self.home) is not None:
            return "stopped"
        held_note = last_cosigned(self.home)
        held = tlog.open_checkpoint(held_note, self.verifier) if held_note else None
        note, proof = self.source.witness_checkpoint(held.size if held else 0)
        note = _log_signed_only(note)
        cp = tlog.open_checkpoint(note, self.verifier)  # not signed by the pinned log key: not evidence of anything
        try:
            self._check(held, held_note, cp, note, proof)
        except Inconsistent as exc:
            self._alarm(exc)
            return "stopped"
        except _Refuse as exc:
            return f"refused: {exc}"
        now = int(self.clock())
        cosigned_at = _cosigned_at(self.home) if held_note else None
        if held is not None and held.size == cp.size and cosigned_at is not None and now - cosigned_at < RECOSIGN_AFTER_S:
            return "unchanged"
        # tlog-witness: persist before answering, so a restart never cosigns a rollback.
        _durable_write(_dir(self.home) / "cosigned.note", note.encode("utf-8"))
        _durable_write(_dir(self.home) / "cosigned-at.txt", f"{now}\n".encode())
        self.source.post_cosignature(note, cosignature.cosign(cp, self.member_id, self.signing_key, now))
        return "cosigned"

    def _check(self, held: Checkpoint | None, held_note: str | None, cp: Checkpoint, note: str, proof: list[bytes]) -> None:
        if held is not None:
            assert held_note is not None
            if cp.size < held.size:
                # An old size that is not the last cosigned one is refused; it is a fork only if not a prefix.
                check_consistent(cp, note, held, held_note, self.source.consistency_proof)
                raise _Refuse(f"size {cp.size} is older than the last cosigned size {held.size}")
            if cp.size == held.size:
                check_consistent(held, held_note, cp, note, lambda a, b: [])
            else:
                check_consistent(held, held_note, cp, note, lambda a, b: proof)
        for source, used_note in used_checkpoints(self.home).items():
            try:
                used = tlog.open_checkpoint(used_note, self.verifier)
            except CryptoError:
                log.warning("used checkpoint of %s does not verify; ignored", source)
                continue
            check_consistent(used, used_note, cp, note, self.source.consistency_proof)
        if self.check_others:
            _, others = self.source.witnessed_checkpoints()
            for other_note in others:
                try:
                    other = tlog.open_checkpoint(other_note, self.verifier)
                except CryptoError:
                    continue  # not the log's: proves nothing
                check_consistent(other, _log_signed_only(other_note), cp, note, self.source.consistency_proof)

    def _alarm(self, exc: Inconsistent) -> None:
        folder = _dir(self.home) / "evidence"
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(self.clock()))
        _durable_write(folder / f"{stamp}-held.note", exc.held.encode("utf-8"))
        _durable_write(folder / f"{stamp}-seen.note", exc.seen.encode("utf-8"))
        details = {"why": str(exc), "held": str(folder / f"{stamp}-held.note"), "seen": str(folder / f"{stamp}-seen.note")}
        _durable_write(_dir(self.home) / "stopped.json", json.dumps({**details, "at": int(self.clock())}).encode())
        message = f"the log showed this member inconsistent checkpoints; witnessing stopped: {exc}"
        log.error("ALERT inconsistent_checkpoint: %s", message)
        if self.alert is not None:
            self.alert("inconsistent_checkpoint", message, details)


class _Refuse(Exception):
    pass


def _log_signed_only(note: str) -> str:
    """The note as the log signed it, without cosignature lines (the log's
    own line comes first; further lines are witnesses')."""
    split = note.rfind("\n\n")
    if split < 0:
        raise CryptoError("signed note has no signature block")
    first = note[split + 2:].split("\n", 1)[0]
    return note[:split + 2] + first + "\n"


def _cosigned_at(home: MemberHome) -> int | None:
    try:
        return int((_dir(home) / "cosigned-at.txt").read_text().strip())
    except (OSError, ValueError):
        return None


# --------------------------------------------------------------------------
# The background thread of `member serve`


def start(home: MemberHome, engine: Any, stop: threading.Event, *, poll_s: float | None = None,
          source: WitnessSource | None = None) -> threading.Thread:
    from alliance_member import alerts
    from alliance_member.gateway_client import GatewayClient

    interval = poll_s if poll_s is not None else float(os.environ.get(POLL_ENV, DEFAULT_POLL_S))

    def alert(kind: str, message: str, details: dict[str, Any]) -> None:
        alerts.raise_alert(engine, kind, message, details)

    def run() -> None:
        client = source or GatewayClient(home, timeout_s=10)
        witness = Witness.for_home(home, client, alert=alert)
        try:
            while not stop.is_set():
                try:
                    outcome = witness.round()
                    log.debug("witness round: %s", outcome)
                except (AllianceError, OSError, ValueError) as exc:
                    log.warning("witness round failed: %s", exc)
                except Exception:  # noqa: BLE001 - never let the thread die silently
                    log.exception("witness round failed")
                stop.wait(interval)
        finally:
            if source is None:
                client.close()  # type: ignore[union-attr]

    thread = threading.Thread(target=run, name="witness", daemon=True)
    thread.start()
    return thread
