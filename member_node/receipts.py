"""The audit receipt a querying member checks on every answer (SPEC §6,
§6.1): the query must be in the log before it is answered — the signed
checkpoint, the logged entry (exactly this request, and exactly the answers
the response carries), its inclusion proof, and consistency with the newest
checkpoint this member kept (:class:`KeptCheckpoint`). Every checkpoint a
receipt was proven against is kept too, for `member reconcile`."""
from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from alliance import checkpoint, merkle
from alliance._internal.files import write_atomic
from alliance.errors import CryptoError
from alliance.v1 import alliance_pb2 as pb
from alliance_member import witness
from alliance_member.home import MemberHome

# The newest proven checkpoint is kept in memory; it is written to the home at
# most this often (and on close). A crash loses only the newest few: the next
# run proves consistency from the older one on disk, so nothing goes unproven.
PERSIST_INTERVAL_S = 5.0

ConsistencyProof = Callable[[int, int], Sequence[bytes]]


def check_logged(signed: pb.SignedQuery, response: pb.GatewayQueryResponse,
                 verifier: checkpoint.NoteVerifier) -> tuple[checkpoint.Checkpoint, tuple[int, list[bytes]] | None]:
    """The receipt's checks short of consistency: the signed checkpoint,
    that the logged entry holds exactly our request, and its inclusion
    proof. Returns the checkpoint and the consistency proof the receipt
    carries (from the size the querier said it holds), if any."""
    receipt = response.audit
    if response.query_id != pb.QueryRequestBody.FromString(signed.body).query_id:
        raise CryptoError("gateway response is for another query id")
    if not receipt.present:  # an unlogged answer is exactly what the log exists to rule out (SPEC §6)
        raise CryptoError("gateway answered without an audit receipt: the query is not provably logged")
    cp = checkpoint.open_checkpoint(receipt.checkpoint, verifier)
    if cp.size != receipt.tree_size:
        raise CryptoError("audit receipt: checkpoint size differs from the receipt")
    try:
        entry = logged_entry(receipt.entry)
    except ValueError:
        raise CryptoError("audit receipt: the logged entry is not JSON") from None
    if not isinstance(entry, dict) or entry.get("request_body") != signed.body.hex() or entry.get("outcome") != "accepted":
        raise CryptoError("audit receipt: the logged entry is not this request")
    merkle.verify_inclusion(merkle.leaf_hash(receipt.entry), receipt.leaf_index, cp.size, list(receipt.inclusion_proof), cp.root_hash)
    carried = (receipt.consistency_from, list(receipt.consistency_proof)) if receipt.consistency_from else None
    return cp, carried


class KeptCheckpoint:
    """The newest checkpoint a querier proved (``home.checkpoint``), shared
    by the threads of one querier: read from the home once, replaced only by
    a larger one proven consistent with it, written back at most every
    :data:`PERSIST_INTERVAL_S` seconds and on :meth:`close`."""

    def __init__(self, home: MemberHome, verifier: checkpoint.NoteVerifier) -> None:
        self.home = home
        self.verifier = verifier
        self._lock = threading.Lock()
        self._kept: tuple[checkpoint.Checkpoint, str] | None = None  # newest proven checkpoint and its note
        self._kept_loaded = False
        self._persisted_size = 0
        self._persisted_at = 0.0

    def size(self) -> int:
        """The kept checkpoint's size (0 before the first)."""
        with self._lock:
            kept = self._current()
        return kept.size if kept is not None else 0

    def close(self) -> None:
        with self._lock:
            self._persist(force=True)

    def prove_consistent(self, cp: checkpoint.Checkpoint, note: str, consistency_proof: ConsistencyProof, *,
                         carried: tuple[int, list[bytes]] | None = None) -> None:
        """Prove ``cp`` consistent with the newest checkpoint kept (SPEC §6),
        whatever its size and however soon after the last
        one: a newer one must extend the kept one (and is kept instead), an
        older one must be a prefix of it. One consistency proof per new
        checkpoint; the lock is not held across the RPC, so concurrent
        queries retry against a kept checkpoint that moved meanwhile."""
        while True:
            with self._lock:
                kept = self._current()
                if kept is None:  # the very first checkpoint this home sees: trust on first use
                    self._kept = (cp, note)
                    self._persist()
                    return
                if kept.size == cp.size:
                    if kept.root_hash != cp.root_hash:
                        raise CryptoError(f"audit log fork: two different checkpoints of size {cp.size}")
                    return
            small, large = sorted((kept, cp), key=lambda c: c.size)
            if carried is not None and carried[0] == kept.size:
                proof = carried[1]  # the gateway sent it with the receipt; verified like any other
            else:
                proof = consistency_proof(small.size, large.size)
            merkle.verify_consistency(small.size, large.size, proof, small.root_hash, large.root_hash)
            with self._lock:
                if self._kept is None or self._kept[0] is not kept:
                    continue  # another query moved the kept checkpoint: prove against that one
                if cp.size > kept.size:
                    self._kept = (cp, note)
                    self._persist()
                return

    def _current(self) -> checkpoint.Checkpoint | None:
        """Under the lock: the kept checkpoint, read from the home once."""
        if not self._kept_loaded:
            self._kept_loaded = True
            path = self.home.checkpoint
            if path.exists():
                note = path.read_text(encoding="utf-8")
                old = checkpoint.open_checkpoint(note, self.verifier)
                self._kept = (old, note)
                self._persisted_size = old.size
        return None if self._kept is None else self._kept[0]

    def _persist(self, *, force: bool = False) -> None:
        """Under the lock: write the kept checkpoint to the home (it only
        ever grows, each step proven)."""
        if self._kept is None or self._kept[0].size <= self._persisted_size:
            return
        now = time.monotonic()
        if not force and now - self._persisted_at < PERSIST_INTERVAL_S:
            return
        write_atomic(self.home.checkpoint, self._kept[1].encode("utf-8"))
        witness.register_used(self.home, self._kept[1], "querier")  # the witness never cosigns against it (SPEC §6.1)
        self._persisted_size, self._persisted_at = self._kept[0].size, now


# --------------------------------------------------------------------------
# Receipt checkpoints (SPEC §6.1): every checkpoint a receipt was proven
# against is kept, so `member reconcile` can insist that each is covered by a
# consistent witnessed checkpoint.

RECEIPT_CHECKPOINTS = "receipt-checkpoints.jsonl"
RECEIPT_GRACE_S = 300
_receipts_lock = threading.Lock()


def keep_receipt_checkpoint(home: MemberHome, cp: checkpoint.Checkpoint, note: str, *, now_ms: int | None = None) -> None:
    """Append one line per receipt (size, root, when, the note). Receipts
    are all proven consistent with the querier's kept checkpoint, so each is
    a prefix of every later, larger one."""
    line = json.dumps({"size": cp.size, "root": cp.root_hash.hex(), "at_ms": now_ms if now_ms is not None else int(time.time() * 1000),
                       "note": note}, sort_keys=True)
    with _receipts_lock, _locked_receipts(home.path / RECEIPT_CHECKPOINTS, "a") as fh:
        fh.write(line + "\n")


@contextlib.contextmanager
def _locked_receipts(path: Path, mode: str) -> Iterator[IO[str]]:
    """The receipt file, open and locked against the other processes of this
    home (`member serve`, CLI queries, `member reconcile`). A pruner replaces
    the file by rename, so a writer that got the lock on a file that is no
    longer the one at ``path`` reopens: no line goes into a replaced file."""
    while True:
        fh = path.open(mode, encoding="utf-8")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            if os.fstat(fh.fileno()).st_ino == os.stat(path).st_ino:
                break
        except FileNotFoundError:
            pass  # replaced and not yet renamed into place: try again
        except BaseException:
            fh.close()
            raise
        fh.close()
    try:
        yield fh
    finally:
        fh.close()  # releases the lock


def prune_receipt_checkpoints(home: MemberHome | Path, upto_size: int) -> int:
    """Forget the receipt checkpoints of size ≤ ``upto_size``, once a
    witnessed checkpoint covers that size (`member reconcile`): each is a
    prefix of it, so they prove nothing more, and the file would otherwise
    grow by a line per report for ever. Returns how many lines were dropped
    (lines cut short by a crash included)."""
    home = home if isinstance(home, MemberHome) else MemberHome(Path(home))
    path = home.path / RECEIPT_CHECKPOINTS
    if not path.exists():
        return 0
    with _receipts_lock, _locked_receipts(path, "r") as fh:
        lines = fh.read().splitlines()
        kept = [raw for raw in lines if _size_of(raw) > upto_size]
        if len(kept) < len(lines):
            write_atomic(path, "".join(raw + "\n" for raw in kept).encode("utf-8"))
    return len(lines) - len(kept)


def _size_of(raw: str) -> int:
    """A kept line's size; −1 for a line cut short by a crash (always dropped)."""
    try:
        size = json.loads(raw)["size"]
    except (ValueError, KeyError, TypeError):
        return -1
    return size if isinstance(size, int) and not isinstance(size, bool) else -1


def receipt_checkpoints(home: MemberHome | Path) -> list[dict[str, Any]]:
    home = home if isinstance(home, MemberHome) else MemberHome(Path(home))
    path = home.path / RECEIPT_CHECKPOINTS
    if not path.exists():
        return []
    kept = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        try:
            kept.append(json.loads(raw))
        except ValueError:
            continue  # a line cut short by a crash
    return kept


def uncovered_receipt_checkpoints(home: MemberHome | Path, witnessed_note: str | None, now: float, *,
                                  consistency_proof: Any = None, witnesses: dict[str, Any] | None = None,
                                  grace_s: int = RECEIPT_GRACE_S) -> list[dict[str, Any]]:
    """Receipt checkpoints kept more than ``grace_s`` (5 minutes) before
    ``now`` (Unix seconds) that ``witnessed_note`` does not cover (SPEC §6.1;
    `member reconcile` exits 1 when this is not empty).

    Covered means: the witnessed checkpoint verifies under the pinned log key,
    is at least as large, and the receipt's checkpoint is a prefix of it (same
    root at the same size, else ``consistency_proof(m, n)`` from the
    gateway). With ``witnesses`` ({member id: [Ed25519 keys]} of the
    sponsored active members), the note must also carry a quorum of their
    cosignatures, not counting this member's own (`member reconcile` passes
    the checkpoint its membership feed already accepted with that quorum).
    Each item: size, root (hex), at_ms and why."""
    return receipt_coverage(home, witnessed_note, now, consistency_proof=consistency_proof, witnesses=witnesses,
                            grace_s=grace_s).uncovered


@dataclass(frozen=True)
class ReceiptCoverage:
    """``uncovered``: as uncovered_receipt_checkpoints; ``covered_upto``: the
    largest receipt size proven a prefix of the witnessed checkpoint (every
    kept receipt up to it is covered), None when nothing was proven."""

    uncovered: list[dict[str, Any]]
    covered_upto: int | None


def receipt_coverage(home: MemberHome | Path, witnessed_note: str | None, now: float, *,
                     consistency_proof: Any = None, witnesses: dict[str, Any] | None = None,
                     grace_s: int = RECEIPT_GRACE_S) -> ReceiptCoverage:
    """uncovered_receipt_checkpoints, with how far the witnessed checkpoint covers them."""
    from alliance import witness_quorum

    home = home if isinstance(home, MemberHome) else MemberHome(Path(home))
    verifier = checkpoint.parse_verifier_key(home.log_verifier.read_text(encoding="utf-8"))
    due = [r for r in receipt_checkpoints(home) if r.get("at_ms", 0) <= (now - grace_s) * 1000]
    if not due:
        return ReceiptCoverage([], None)
    why_all = None
    w: checkpoint.Checkpoint | None = None
    if witnessed_note is None:
        why_all = "no witnessed checkpoint"
    else:
        try:
            w = checkpoint.open_checkpoint(witnessed_note, verifier)
        except CryptoError as exc:
            why_all = f"the witnessed checkpoint does not verify: {exc}"
        if w is not None and witnesses is not None:
            try:
                witness_quorum.check_quorum(witnessed_note, w, eligible=set(witnesses), keys=witnesses,
                                            deciding=home.config().member_id, now_s=int(now))
            except witness_quorum.NotWitnessed as exc:
                why_all, w = f"the checkpoint of size {w.size} has no quorum of witnesses: {exc}", None
    covered_upto: int | None = None
    if w is not None:
        below = [r for r in due if r["size"] <= w.size]
        if below:
            top = max(below, key=lambda r: r["size"])
            try:
                if top["size"] == w.size:
                    if bytes.fromhex(top["root"]) != w.root_hash:
                        raise CryptoError(f"another root at size {w.size}")
                elif top["size"] > 0:
                    if consistency_proof is None:
                        raise CryptoError("no consistency proof source given")
                    merkle.verify_consistency(top["size"], w.size, list(consistency_proof(top["size"], w.size)),
                                              bytes.fromhex(top["root"]), w.root_hash)
                covered_upto = top["size"]
            except (CryptoError, ValueError) as exc:
                why_all = f"not consistent with the witnessed checkpoint of size {w.size}: {exc}"
    out = []
    for r in due:
        if covered_upto is not None and r["size"] <= covered_upto:
            continue
        why = why_all or (f"size {r['size']} is beyond the witnessed size {w.size}" if w is not None else "not witnessed")
        out.append({"size": r["size"], "root": r["root"], "at_ms": r["at_ms"], "why": why})
    return ReceiptCoverage(out, covered_upto)


@functools.lru_cache(maxsize=64)
def logged_entry(entry: bytes) -> Any:
    """A receipt's entry, decoded once per report (three checks read it).
    Callers only read the result: it is shared."""
    return json.loads(entry)


def check_entry_answers(response: pb.GatewayQueryResponse) -> None:
    """The logged entry must list exactly the members asked and the answer
    receipts the response carries: what the querier decrypts is what
    auditors and members see in the log."""
    try:
        entry = logged_entry(response.audit.entry)
        logged = sorted(
            (a["member_id"], bytes.fromhex(a["ciphertext_sha256"]), bytes.fromhex(a["signature"]),
             bytes.fromhex(a.get("book_status", ""))) for a in entry["answers"]
        )
        answered = sorted(entry["members_answered"])
        asked = list(entry["members_asked"])
    except (KeyError, TypeError, ValueError, AttributeError):
        raise CryptoError("audit receipt: the logged entry does not list the answers") from None
    carried = sorted((r.member_id, r.ciphertext_sha256, r.signature, r.book_status) for r in response.answers)
    if logged != carried or answered != sorted(r.member_id for r in response.answers):
        raise CryptoError("audit receipt: the logged answers differ from the answers in the response")
    if asked != list(response.asked_member_ids):
        raise CryptoError("audit receipt: the logged members asked differ from the response's")


__all__ = ["PERSIST_INTERVAL_S", "RECEIPT_CHECKPOINTS", "RECEIPT_GRACE_S", "KeptCheckpoint", "ReceiptCoverage", "check_entry_answers",
           "check_logged", "keep_receipt_checkpoint", "logged_entry", "prune_receipt_checkpoints", "receipt_checkpoints",
           "receipt_coverage", "uncovered_receipt_checkpoints"]
