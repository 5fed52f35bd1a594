"""The querier's receipt checkpoints (SPEC §6.1): every checkpoint a receipt
was proven against is kept in ``receipt-checkpoints.jsonl``, so `member
reconcile` can insist that each is covered by a consistent witnessed
checkpoint, and then forget it.

Each line names the ``run`` that proved it: one :class:`KeptCheckpoint` (one
querier process) proves every receipt against its kept checkpoint, which
only grows by proven extensions, so the receipts of one run are all prefixes
of that run's last kept checkpoint, hence of each other. Proving a run's
largest receipt below the witnessed checkpoint therefore covers every receipt
of that run up to it: one consistency proof per run, not per report.
Receipts of different runs are proven separately, because the gateway could
have shown each run another view (a CLI query beside `member serve`; a run
after a crash that lost its newest kept checkpoint). A line without a run
(older releases) is a run of its own.

Writers (`member serve`, CLI queries) and the pruner (`member reconcile`) of
one home take an exclusive ``flock`` on the file. The pruner replaces the
file by rename; a writer whose locked file is no longer the one at the path
reopens it, so no line is lost to a concurrent prune."""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from alliance import checkpoint, merkle
from alliance._internal.files import write_atomic
from alliance.errors import AllianceError, CryptoError
from alliance_member.home import MemberHome

log = logging.getLogger("alliance.member.receipts")

RECEIPT_CHECKPOINTS = "receipt-checkpoints.jsonl"
RECEIPT_GRACE_S = 300
MAX_PROOFS_PER_CHECK = 1024  # runs beyond this are reported "not checked yet" and proven by a later check
_receipts_lock = threading.Lock()


def keep_receipt_checkpoint(home: MemberHome, cp: checkpoint.Checkpoint, note: str, *, run: str = "",
                            now_ms: int | None = None) -> None:
    """Append one line per receipt: size, root, when, the note and the run
    (``KeptCheckpoint.run``) that proved it consistent with its kept checkpoint."""
    doc: dict[str, Any] = {"size": cp.size, "root": cp.root_hash.hex(),
                           "at_ms": now_ms if now_ms is not None else int(time.time() * 1000), "note": note}
    if run:
        doc["run"] = run
    line = json.dumps(doc, sort_keys=True).encode("utf-8") + b"\n"
    with _receipts_lock, _locked(home.path / RECEIPT_CHECKPOINTS, "a+b") as fh:
        end = fh.seek(0, os.SEEK_END)
        if end:
            fh.seek(end - 1)
            if fh.read(1) != b"\n":
                line = b"\n" + line  # a line cut short by a crash must not swallow this one
        fh.write(line)  # append mode: always at the end


def receipt_checkpoints(home: MemberHome | Path) -> list[dict[str, Any]]:
    """The kept lines, parsed; a line cut short by a crash is skipped."""
    path = _home(home).path / RECEIPT_CHECKPOINTS
    if not path.exists():
        return []
    kept = []
    for raw in path.read_bytes().splitlines():
        doc = _parse(raw)
        if doc is not None:
            kept.append(doc)
    return kept


@dataclass(frozen=True)
class ReceiptCoverage:
    """``uncovered``: the items uncovered_receipt_checkpoints lists;
    ``covered``: for each run (see :func:`run_key`), the largest size proven
    a prefix of the witnessed checkpoint: that run's receipts up to it are covered."""

    uncovered: list[dict[str, Any]]
    covered: dict[str, int]


# Why a receipt checkpoint is uncovered (the "verdict" of each uncovered item):
INCONSISTENT = "inconsistent"    # proven NOT a prefix of the witnessed checkpoint: a fork
UNPROVEN = "unproven"            # the gateway refused or failed the consistency proof (maybe for this run only)
NOT_WITNESSED = "not_witnessed"  # nothing witnessed covers it yet (none at all, no quorum, or it is larger)
UNCHECKED = "unchecked"          # more runs than one check proves: still due, proven by a later check


def run_key(doc: dict[str, Any]) -> str:
    """The run a line belongs to; a line without one is its own run."""
    run = doc.get("run")
    return f"run:{run}" if isinstance(run, str) and run else f"line:{doc['size']}:{doc['root']}"


def uncovered_receipt_checkpoints(home: MemberHome | Path, witnessed_note: str | None, now: float, *,
                                  consistency_proof: Any = None, witnesses: dict[str, Any] | None = None,
                                  grace_s: int = RECEIPT_GRACE_S) -> list[dict[str, Any]]:
    """Receipt checkpoints kept more than ``grace_s`` (5 minutes) before
    ``now`` (Unix seconds) that ``witnessed_note`` does not cover (SPEC §6.1;
    `member reconcile` exits 1 when this is not empty).

    Covered means: the witnessed checkpoint verifies under the pinned log key,
    is at least as large, and the receipt's checkpoint is a prefix of it (same
    root at the same size, else ``consistency_proof(m, n)`` from the
    gateway), proven for the largest receipt of its run (module docstring).
    With ``witnesses`` ({member id: [Ed25519 keys]} of the sponsored active
    members), the note must also carry a quorum of their cosignatures, not
    counting this member's own (`member reconcile` passes the checkpoint its
    membership feed already accepted with that quorum).
    Each item: size, root (hex), at_ms, why and verdict (INCONSISTENT,
    UNPROVEN, NOT_WITNESSED or UNCHECKED)."""
    return receipt_coverage(home, witnessed_note, now, consistency_proof=consistency_proof, witnesses=witnesses,
                            grace_s=grace_s).uncovered


def receipt_coverage(home: MemberHome | Path, witnessed_note: str | None, now: float, *,
                     consistency_proof: Any = None, witnesses: dict[str, Any] | None = None,
                     grace_s: int = RECEIPT_GRACE_S, max_proofs: int = MAX_PROOFS_PER_CHECK) -> ReceiptCoverage:
    """uncovered_receipt_checkpoints, and how far each run is covered."""
    home = _home(home)
    due = [r for r in receipt_checkpoints(home) if r["at_ms"] <= (now - grace_s) * 1000]
    if not due:
        return ReceiptCoverage([], {})
    w, why_all = _witnessed(home, witnessed_note, witnesses, now)
    covered: dict[str, int] = {}
    failed: dict[str, tuple[str, str]] = {}  # run → (verdict, why)
    if w is not None:
        tops: dict[str, dict[str, Any]] = {}
        for r in due:
            key = run_key(r)
            if r["size"] <= w.size and (key not in tops or r["size"] > tops[key]["size"]):
                tops[key] = r
        verdicts: dict[tuple[int, str], tuple[str, str] | None] = {}  # (size, root) → None if proven, else (verdict, why)
        for key, top in sorted(tops.items(), key=lambda kv: kv[1]["at_ms"]):  # the oldest first
            at = (top["size"], top["root"])
            if at not in verdicts:
                if len(verdicts) >= max_proofs:
                    failed[key] = (UNCHECKED, f"not checked yet: more than {max_proofs} querier runs to prove at once")
                    continue
                verdicts[at] = _prefix_of(w, top, consistency_proof)
            verdict = verdicts[at]
            if verdict is None:
                covered[key] = top["size"]
            else:
                failed[key] = (verdict[0], f"not proven consistent with the witnessed checkpoint of size {w.size}: {verdict[1]}"
                               if verdict[0] == UNPROVEN else f"not consistent with the witnessed checkpoint of size {w.size}: {verdict[1]}")
    uncovered = []
    for r in due:
        key = run_key(r)
        if why_all is not None:
            judged: str | None = NOT_WITNESSED
            why = why_all
        elif w is not None and r["size"] > w.size:
            judged, why = NOT_WITNESSED, f"size {r['size']} is beyond the witnessed size {w.size}"
        else:
            judged, why = failed.get(key, (None, ""))  # none: covered by its run's proof
        if judged is not None:
            uncovered.append({"size": r["size"], "root": r["root"], "at_ms": r["at_ms"], "why": why, "verdict": judged})
    return ReceiptCoverage(uncovered, covered)


def prune_receipt_checkpoints(home: MemberHome | Path, covered: dict[str, int]) -> int:
    """Forget the receipts that ``covered`` (ReceiptCoverage.covered) proves
    prefixes of a witnessed checkpoint: they prove nothing more, and the file
    would otherwise grow by a line per report for ever. Lines that do not
    parse, of other runs, or larger than their run's covered size stay.
    Returns how many lines were dropped."""
    path = _home(home).path / RECEIPT_CHECKPOINTS
    if not covered or not path.exists():
        return 0
    with _receipts_lock, _locked(path, "r+b") as fh:
        owner = os.fstat(fh.fileno()).st_uid
        if os.geteuid() not in (0, owner):  # a replacement would be ours, and its writers could no longer append
            log.warning("not pruning %s: it belongs to uid %d, this process runs as %d", path, owner, os.geteuid())
            return 0
        lines = fh.read().splitlines()
        kept = [raw for raw in lines if not _is_covered(raw, covered)]
        if len(kept) < len(lines):
            # the old file's owner and mode: a `member reconcile` run as root must not take it from `member serve`
            write_atomic(path, b"".join(raw + b"\n" for raw in kept), like=os.fstat(fh.fileno()))
    return len(lines) - len(kept)


# --------------------------------------------------------------------------


def _home(home: MemberHome | Path) -> MemberHome:
    return home if isinstance(home, MemberHome) else MemberHome(Path(home))


def _parse(raw: bytes) -> dict[str, Any] | None:
    try:
        doc = json.loads(raw)
        size, root, at_ms = doc["size"], doc["root"], doc.get("at_ms", 0)
    except (ValueError, KeyError, TypeError):
        return None
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (size, at_ms)) or not isinstance(root, str):
        return None
    if size < 1:  # a receipt proves a leaf is in the tree: never the empty tree. Not ours: kept, not judged
        return None
    doc["at_ms"] = at_ms
    return doc


def _is_covered(raw: bytes, covered: dict[str, int]) -> bool:
    doc = _parse(raw)
    if doc is None:
        return False  # not ours to judge: kept
    upto = covered.get(run_key(doc))
    return upto is not None and doc["size"] <= upto


def _witnessed(home: MemberHome, note: str | None, witnesses: dict[str, Any] | None,
               now: float) -> tuple[checkpoint.Checkpoint | None, str | None]:
    """The witnessed checkpoint, or why there is none to cover anything."""
    from alliance import witness_quorum

    if note is None:
        return None, "no witnessed checkpoint"
    verifier = checkpoint.parse_verifier_key(home.log_verifier.read_text(encoding="utf-8"))
    try:
        w = checkpoint.open_checkpoint(note, verifier)
    except CryptoError as exc:
        return None, f"the witnessed checkpoint does not verify: {exc}"
    if witnesses is not None:
        try:
            witness_quorum.check_quorum(note, w, eligible=set(witnesses), keys=witnesses,
                                        deciding=home.config().member_id, now_s=int(now))
        except witness_quorum.NotWitnessed as exc:
            return None, f"the checkpoint of size {w.size} has no quorum of witnesses: {exc}"
    return w, None


def _prefix_of(w: checkpoint.Checkpoint, receipt: dict[str, Any], consistency_proof: Any) -> tuple[str, str] | None:
    """None if the receipt's checkpoint is a prefix of ``w``; else (verdict,
    why). A proof the gateway refuses or cannot give fails this run
    (UNPROVEN), never the whole check: it could refuse just the forked run's."""
    size = receipt["size"]
    try:
        root = bytes.fromhex(receipt["root"])
    except ValueError as exc:
        return INCONSISTENT, f"unreadable root: {exc}"
    if size == w.size:
        return None if root == w.root_hash else (INCONSISTENT, f"another root at size {w.size}")
    if consistency_proof is None:
        return UNPROVEN, "no consistency proof source given"
    try:
        proof = list(consistency_proof(size, w.size))
    except AllianceError as exc:
        return UNPROVEN, str(exc)
    try:
        merkle.verify_consistency(size, w.size, proof, root, w.root_hash)
    except (CryptoError, ValueError) as exc:
        return INCONSISTENT, str(exc)
    return None


@contextlib.contextmanager
def _locked(path: Path, mode: str) -> Iterator[IO[bytes]]:
    """The file, open and exclusively locked, and still the one at ``path``."""
    while True:
        fh = path.open(mode)
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            if os.fstat(fh.fileno()).st_ino == os.stat(path).st_ino:
                break
        except FileNotFoundError:
            pass  # replaced meanwhile: open the new one
        except BaseException:
            fh.close()
            raise
        fh.close()
    try:
        yield fh
    finally:
        fh.close()  # flushes, then releases the lock
