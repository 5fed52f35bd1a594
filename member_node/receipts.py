"""The audit receipt a querying member checks on every answer (SPEC §6,
§6.1): the query must be in the log before it is answered — the signed
checkpoint, the logged entry (exactly this request, and exactly the answers
the response carries), its inclusion proof, and consistency with the newest
checkpoint this member kept (:class:`KeptCheckpoint`). Every checkpoint a
receipt was proven against is kept too, for `member reconcile`
(receipt_checkpoints.py)."""
from __future__ import annotations

import functools
import json
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from alliance import checkpoint, merkle
from alliance._internal.files import write_atomic
from alliance.errors import CryptoError
from alliance.v1 import alliance_pb2 as pb
from alliance_member import witness
from alliance_member.home import MemberHome
from alliance_member.receipt_checkpoints import (  # the receipt checkpoints' own module; importable from here too
    RECEIPT_CHECKPOINTS, RECEIPT_GRACE_S, ReceiptCoverage, keep_receipt_checkpoint, prune_receipt_checkpoints, receipt_checkpoints,
    receipt_coverage, uncovered_receipt_checkpoints)

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
        # Names this run in the receipt checkpoints it keeps: all of one run's
        # receipts are prefixes of its kept checkpoint (receipt_checkpoints.py).
        self.run = secrets.token_hex(8)

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
            path = self.home.checkpoint
            if path.exists():  # a failure raises, every time: never trust-on-first-use over a kept checkpoint we could not read
                note = path.read_text(encoding="utf-8")
                old = checkpoint.open_checkpoint(note, self.verifier)
                self._kept = (old, note)
                self._persisted_size = old.size
            self._kept_loaded = True
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
