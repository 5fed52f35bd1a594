"""What the auditor keeps in its home, and trusts: the alliance CA
certificate, the log's verifier key (``log-verifier.txt``) and what it kept
itself — every checkpoint it ever accepted (``checkpoints/*.note``) and the
leaf hashes of the last tree it verified entry by entry
(``checkpoints/verified-leaves.bin``). Each new checkpoint must be
consistent with those, so the operator can neither roll the log back nor
show this auditor a fork without it being named."""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from alliance import audit_verify, merkle, pki
from alliance import checkpoint as tlog
from alliance._internal.files import write_atomic
from alliance.checkpoint import Checkpoint
from alliance.errors import CryptoError, UsageError, VerificationFailed
from alliance_member.home import MemberHome

CHECKPOINT_DIR = "checkpoints"
REJECTED_DIR = "rejected"
VERIFIED_LEAVES = "verified-leaves.bin"
VERIFIED_META = "verified.json"


@dataclass(frozen=True)
class Kept:
    checkpoint: Checkpoint
    note: str
    path: Path


class AuditorState:
    """The auditor home: trust anchors, kept checkpoints, last verified tree."""

    def __init__(self, home: MemberHome | Path | str) -> None:
        self.home = home if isinstance(home, MemberHome) else MemberHome(Path(home))
        self.dir = self.home.path / CHECKPOINT_DIR
        for path, what in ((self.home.ca_cert, "the alliance CA certificate"), (self.home.log_verifier, "the log verifier key")):
            if not path.exists():
                raise UsageError(f"{self.home.path} is not an auditor home: {path.name} ({what}) is missing; "
                                 "run `alliance member keygen --role auditor` and `alliance member join` first")
        self.verifier = tlog.parse_verifier_key(self.home.log_verifier.read_text(encoding="utf-8"))
        self._ca_cert: x509.Certificate | None = None

    @property
    def ca_cert(self) -> x509.Certificate:
        if self._ca_cert is None:
            self._ca_cert = pki.load_cert_pem(self.home.ca_cert)
        return self._ca_cert

    def open(self, note: str) -> Checkpoint:
        """Check the log's signature on a checkpoint from the gateway."""
        try:
            return tlog.open_checkpoint(note, self.verifier)
        except CryptoError as exc:
            raise CryptoError(f"the gateway's checkpoint is not signed by the log key in {self.home.log_verifier}: {exc}") from None

    def kept(self) -> list[Kept]:
        """Every checkpoint kept so far, smallest first; each re-checked
        against the verifier key, so a planted file is refused loudly."""
        kept = []
        for path in sorted(self.dir.glob("*.note")) if self.dir.exists() else ():
            note = path.read_text(encoding="utf-8")
            try:
                kept.append(Kept(tlog.open_checkpoint(note, self.verifier), note, path))
            except CryptoError as exc:
                raise CryptoError(f"kept checkpoint {path} does not verify ({exc}); remove it if you did not put it there") from None
        return sorted(kept, key=lambda k: k.checkpoint.size)

    def keep(self, cp: Checkpoint, note: str) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / f"{cp.size:012d}-{cp.root_hash.hex()[:16]}.note"
        if not path.exists():
            write_atomic(path, note.encode("utf-8"))
        return path

    def reject(self, cp: Checkpoint | None, note: str, why: str) -> Path:
        """Keep a refused checkpoint as evidence: a signed checkpoint that
        contradicts a kept one proves the operator misbehaved."""
        folder = self.dir / REJECTED_DIR
        folder.mkdir(parents=True, exist_ok=True)
        stem = f"{cp.size:012d}-{cp.root_hash.hex()[:16]}" if cp else "unreadable"
        path = folder / f"{stem}.note"
        write_atomic(path, note.encode("utf-8"))
        write_atomic(folder / f"{stem}.why.txt", (why + "\n").encode("utf-8"))
        return path

    def trusted_leaves(self, kept: Sequence[Kept]) -> bytes | None:
        """Leaf hashes of the last verified tree, if intact and matching a
        kept checkpoint (otherwise ignored: they only sharpen fork reports)."""
        try:
            meta = json.loads((self.dir / VERIFIED_META).read_text(encoding="utf-8"))
            packed = (self.dir / VERIFIED_LEAVES).read_bytes()
            size, root = int(meta["size"]), bytes.fromhex(meta["root"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if len(packed) != size * merkle.HASH_SIZE or not any(k.checkpoint.size == size and k.checkpoint.root_hash == root for k in kept):
            return None
        if audit_verify.Tree.from_packed(packed).root() != root:
            return None
        return packed

    def save_verified(self, cp: Checkpoint, tree: audit_verify.Tree) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        write_atomic(self.dir / VERIFIED_LEAVES, tree.packed())
        write_atomic(self.dir / VERIFIED_META, json.dumps({"size": cp.size, "root": cp.root_hash.hex()}).encode())


def relevant(kept: Sequence[Kept], size: int) -> list[Checkpoint]:
    """Kept checkpoints are mutually consistent (each was checked when kept),
    so checking a new one against the newest no larger than it, and every one
    at least as large, covers them all with few proofs."""
    smaller = [k.checkpoint for k in kept if k.checkpoint.size < size]
    return smaller[-1:] + [k.checkpoint for k in kept if k.checkpoint.size >= size]


def fail(state: AuditorState, cp: Checkpoint | None, note: str, exc: VerificationFailed) -> VerificationFailed:
    path = state.reject(cp, note, str(exc))
    return VerificationFailed(f"{exc} (checkpoint kept as evidence in {path})", entry=exc.entry)


__all__ = ["AuditorState", "Kept", "fail", "relevant"]
