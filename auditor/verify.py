"""`alliance audit checkpoint / verify / prove` (SPEC §6, §6.1): fetch and
keep signed checkpoints, verify the whole log (and that it is witnessed),
prove one entry; and the log's entries checked against a signed checkpoint
consistent with every kept one, for the auditor's other tools. What the
auditor keeps is :mod:`alliance_auditor.state`; verification itself is pure
and lives in :mod:`alliance.audit_verify`."""
from __future__ import annotations

import base64
import time
from pathlib import Path
from typing import Any

from alliance import audit_entry, audit_verify, cosignature, merkle
from alliance import checkpoint as tlog
from alliance._internal.files import write_atomic
from alliance.checkpoint import Checkpoint
from alliance.errors import InvalidInput, VerificationFailed
from alliance_auditor import log_source, witness_audit
from alliance_auditor.log_source import LogSource
from alliance_auditor.state import AuditorState, Kept, fail, relevant
from alliance_member.home import MemberHome


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def checkpoint(home: MemberHome | Path | str, *, client: LogSource | None = None) -> dict[str, Any]:
    """Fetch the signed checkpoint, prove it consistent with the newest kept
    one (refusing a rollback or a fork, naming the first entry concerned), keep it."""
    state = AuditorState(home)
    with log_source.opened(state.home, client) as source:
        cp, note, kept = _current_checkpoint(state, source)
    previous = max((k.checkpoint.size for k in kept), default=None)
    return {
        "ok": True, "origin": cp.origin, "tree_size": cp.size, "root_hash": _b64(cp.root_hash),
        "previous_size": previous, "kept_checkpoints": len(state.kept()), "checkpoint": note,
    }


def _current_checkpoint(state: AuditorState, source: LogSource) -> tuple[Checkpoint, str, list[Kept]]:
    note = source.checkpoint()
    cp = state.open(note)
    kept = state.kept()
    trusted = state.trusted_leaves(kept)
    problem = audit_verify.check_history(cp, relevant(kept, cp.size), source.consistency_proof,
                                         trusted=audit_verify.Tree.from_packed(trusted) if trusted else None)
    if problem is not None:
        raise fail(state, cp, note, VerificationFailed(f"entry {problem[0]}: {problem[1]}", entry=problem[0]))
    state.keep(cp, note)
    return cp, note, kept


def verify(home: MemberHome | Path | str, *, client: LogSource | None = None, workers: int | None = None,
           witness_wait_s: float = 0.0, now_s: int | None = None) -> dict[str, Any]:
    """Everything of SPEC §6: the entries rebuild the signed tree, the signed
    checkpoint is consistent with every kept one, and every entry's contents
    check out; for a v2 log also §6.1: the log is witnessed (see
    :func:`_require_witnesses`). Raises VerificationFailed naming the first
    bad entry (InsufficientWitnesses, entry None, when nothing new is
    witnessed)."""
    state = AuditorState(home)
    membership: list[tuple[int, dict[str, Any]]] = []
    v2 = []

    def collect(seq: int, entry: dict[str, Any]) -> None:
        if entry["kind"] == "v2_started":
            v2.append(seq)
        if entry["kind"] in audit_entry.MEMBERSHIP_KINDS:
            membership.append((seq, entry))

    with log_source.opened(state.home, client) as source:
        witnessed = _witnessed_notes(source, witness_wait_s)
        cp, note, result = _checked_log(state, source, workers=workers, on_entry=collect)
        state.save_verified(cp, result.tree)
        witness_doc: dict[str, Any] = {}
        if v2:
            witness_doc = _require_witnesses(state, source, witnessed, cp, result.tree, membership,
                                             int(time.time()) if now_s is None else now_s)
    return {**result.to_json(), **witness_doc, "kept_checkpoints": len(state.kept()), "checkpoint": note}


WITNESSED_NOTE = "witnessed.note"


def _witnessed_notes(source: Any, wait_s: float) -> list[str] | None:
    """Every cosigned checkpoint the gateway shows (the newest cut, and each
    witness's newest). With ``wait_s``, first wait (polling) until the newest
    cut covers the log's current size and carries as many cosignatures as any
    checkpoint does, so a verify right after a query need not fail."""
    if not hasattr(source, "witnessed_checkpoints"):
        return None
    deadline = time.monotonic() + wait_s
    target = tlog.Checkpoint.parse(_text_of(source.checkpoint())).size if wait_s > 0 else 0
    while True:
        newest, per_witness = source.witnessed_checkpoints()
        if not newest:
            notes: list[str] = []
        else:
            notes = [newest, *per_witness]
            lines = [len(cosignature.signature_lines(n)) for n in notes]
            if tlog.Checkpoint.parse(_text_of(newest)).size >= target and lines[0] >= max(lines) and lines[0] > 1:
                return notes
        if time.monotonic() >= deadline:
            return notes
        time.sleep(0.5)


def _text_of(note: str) -> str:
    return note[:note.rfind("\n\n") + 1]


def _require_witnesses(state: AuditorState, source: Any, notes: list[str] | None, cp: Checkpoint,
                       tree: audit_verify.Tree, membership: list[tuple[int, dict[str, Any]]], now_s: int) -> dict[str, Any]:
    """SPEC §6.1 for the auditor. Every cosigned checkpoint shown must be
    consistent with the verified tree (otherwise someone was shown another
    log); the log counts as verified up to the newest checkpoint cosigned by
    a quorum ⌊m/2⌋ + 1 of the m sponsored members active in the last
    witnessed checkpoint this auditor kept. Bootstrap: on the first run
    (nothing kept) the m members are those active in the candidate
    checkpoint's own view (trust on first use, reported as
    "witness_bootstrap": true), as the first kept checkpoint already is."""
    path = state.dir / WITNESSED_NOTE
    kept_note = path.read_text(encoding="utf-8") if path.exists() else None
    kept_w = state.open(kept_note) if kept_note else None
    if kept_w is not None and (kept_w.size > tree.size or tree.root(kept_w.size) != kept_w.root_hash):
        raise witness_audit.SplitView(f"split_view: the kept witnessed checkpoint of size {kept_w.size} is not a prefix of the log")
    judged = witness_audit.judge(
        notes or [], state.verifier, tree_root=tree.root, tree_size=tree.size, consistency_proof=source.consistency_proof,
        membership=lambda size: witness_audit.sponsored_active(membership, size),
        kept_size=kept_w.size if kept_w else None, now_s=now_s)
    if judged.witnessed is not None and (kept_w is None or judged.witnessed.size > kept_w.size):
        witnessed, witnessed_note = judged.witnessed, judged.witnessed_note
        assert witnessed_note is not None
        state.keep(witnessed, witnessed_note)
        write_atomic(path, witnessed_note.encode("utf-8"))
    elif kept_w is not None and cp.size <= kept_w.size:
        witnessed = kept_w  # nothing new since the last witnessed checkpoint
    else:
        have = f"newest kept witnessed size {kept_w.size}" if kept_w else "no witnessed checkpoint kept yet"
        raise witness_audit.InsufficientWitnesses(
            f"no checkpoint newer than the {have} is cosigned by {judged.quorum} of the {len(judged.eligible)} "
            f"sponsored active members ({', '.join(judged.eligible) or 'none'}); the log has {cp.size} entries")
    later = list(range(witnessed.size, cp.size))
    return {
        "witnessed_size": witnessed.size,
        "not_yet_witnessed": {"count": len(later), "entries": later[:1000]},
        "witness_quorum": judged.quorum, "eligible_witnesses": judged.eligible,
        "witness_bootstrap": kept_w is None,
        "witnesses": judged.witnesses, "lagging_witnesses": judged.lagging,
    }


def prove(home: MemberHome | Path | str, seq: int, *, client: LogSource | None = None) -> dict[str, Any]:
    """Show that entry ``seq`` is in the log under a signed checkpoint
    consistent with everything kept: the entry, its leaf hash and its
    RFC 9162 inclusion proof, verified."""
    state = AuditorState(home)
    with log_source.opened(state.home, client) as source:
        cp, note, _ = _current_checkpoint(state, source)
        if not 0 <= seq < cp.size:
            raise InvalidInput(f"there is no entry {seq}: the log has {cp.size} entries (0..{cp.size - 1})")
        served = list(source.entries(seq, seq + 1))
        if len(served) != 1 or served[0].index != seq:
            raise VerificationFailed(f"entry {seq}: the gateway did not serve it", entry=seq)
        data = bytes(served[0].data)
        entry = audit_entry.decode(data, index=seq)
        leaf = merkle.leaf_hash(data)
        proof = source.inclusion_proof(seq, cp.size)
    try:
        merkle.verify_inclusion(leaf, seq, cp.size, proof, cp.root_hash)
    except merkle.ProofError as exc:
        raise VerificationFailed(f"entry {seq}: not in the signed tree ({exc})", entry=seq) from None
    return {
        "ok": True, "seq": seq, "tree_size": cp.size, "root_hash": _b64(cp.root_hash), "leaf_hash": leaf.hex(),
        "proof": [p.hex() for p in proof], "entry": entry, "checkpoint": note,
    }


def verified_entries(state: AuditorState, source: LogSource, on_entry: Any) -> Checkpoint:
    """Fetch every entry, check the structure and history (not contents:
    that is `verify`), and hand each decoded entry to ``on_entry``."""
    cp, _, _ = _checked_log(state, source, contents=False, on_entry=on_entry)
    return cp


def _checked_log(state: AuditorState, source: LogSource, **options: Any) -> tuple[Checkpoint, str, audit_verify.VerifyResult]:
    """Every entry checked against the signed checkpoint, consistent with
    every kept one (``options`` go to :func:`audit_verify.verify_log`); the
    checkpoint is kept, or kept as evidence when refused."""
    note = source.checkpoint()
    cp = state.open(note)
    kept = state.kept()
    try:
        result = audit_verify.verify_log(
            ((e.index, e.data) for e in source.entries(0, cp.size)), cp, state.ca_cert,
            kept=relevant(kept, cp.size), consistency_proof=source.consistency_proof,
            trusted_leaves=state.trusted_leaves(kept), **options,
        )
    except VerificationFailed as exc:
        raise fail(state, cp, note, exc) from None
    state.keep(cp, note)
    return cp, note, result


__all__ = ["WITNESSED_NOTE", "checkpoint", "prove", "verified_entries", "verify"]
