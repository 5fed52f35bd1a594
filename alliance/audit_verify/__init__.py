"""Auditor-side verification of the audit log (SPEC §6), without network and
without trusting the operator.

``verify_log`` takes the entries the gateway served, the signed checkpoint
(already opened), the alliance CA certificate and the checkpoints the auditor
kept, and either returns a :class:`VerifyResult` or raises
``VerificationFailed`` naming the *first bad entry* (its sequence number,
which is its leaf index). Three kinds of evidence are combined, and the
smallest entry index any of them blames is reported:

1. Structure: every entry decodes canonically with ``seq`` equal to its
   position, and the tree rebuilt from the served bytes has the signed root
   (:mod:`.tree` names the first differing leaf).
2. History: the signed checkpoint is consistent with every checkpoint the
   auditor kept (:func:`check_history`: rollbacks and forks).
3. Contents, in log order (:mod:`.replay`): membership replayed from the
   log itself (:mod:`.membership`), every query entry checked against it
   (:mod:`.query_rules`, reasons in :mod:`.reasons`); from a ``v2_started``
   entry on, also the version 2 rules (:mod:`.v2_rules`: bounds and shapes;
   :mod:`.pins`: answering sets; :mod:`.ledger`: query ids and quotas across
   entries; :mod:`.timeline`: membership entry times).

Signature checks dominate the cost; they are batched and, for large logs,
spread over worker processes (:mod:`.signatures`) while the main process
decodes and replays.

Modules: ``tree`` (structure, checkpoints, first divergence), ``signatures``
(batched Ed25519 jobs), ``fields`` (decoding and typed field access),
``membership`` (membership replay), ``query_entry`` (query fields and
fan-out), ``query_rules`` and ``reasons`` (what accepted and refused entries
must show), ``replay`` (dispatch and versions), ``v2_rules``, ``pins``,
``ledger``, ``timeline`` (version 2), ``result`` (the result and the choice
of the first problem)."""
from __future__ import annotations

import hashlib
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from cryptography import x509

from alliance.audit_verify.fields import (
    CREDENTIAL_SLACK_S,
    INQUIRY_WINDOW_MS,
    SHANGHAI,
    STATE_GRACE_MS,
    Bad,
)
from alliance.audit_verify.feed import Feed
from alliance.audit_verify.reasons import (
    KNOWN_REASONS,
    PARSE_REASONS,
    REASONS_AFTER_SIGNATURE,
    REASONS_BEFORE_PARSE,
)
from alliance.audit_verify.replay import Replay
from alliance.audit_verify.result import (
    CONTENT,
    DECODE,
    STRUCTURE,
    TREE,
    Problems,
    VerifyResult,
)
from alliance.audit_verify.signatures import (
    JOBS_PER_CHUNK,
    PARALLEL_MIN_JOBS,
    SignatureChecker,
    SignatureJob,
    check_signature_jobs,
)
from alliance.audit_verify.v2_rules import V2_STARTED
from alliance.audit_verify.tree import (
    ProofSource,
    Tree,
    check_history,
    damaged_entry,
    first_divergence,
    trusted_tree,
)
from alliance import audit_entry
from alliance.checkpoint import Checkpoint
from alliance.errors import VerificationFailed

__all__ = [
    "CREDENTIAL_SLACK_S", "INQUIRY_WINDOW_MS", "JOBS_PER_CHUNK", "KNOWN_REASONS", "PARALLEL_MIN_JOBS", "PARSE_REASONS",
    "REASONS_AFTER_SIGNATURE", "REASONS_BEFORE_PARSE", "SHANGHAI", "STATE_GRACE_MS", "ProofSource", "SignatureJob",
    "Tree", "VerifyResult", "check_history", "check_signature_jobs", "first_divergence", "verify_log",
]

# PARALLEL_MIN_JOBS and JOBS_PER_CHUNK tune the signature checks; verify_log reads them here at each call,
# so setting alliance.audit_verify.PARALLEL_MIN_JOBS takes effect (tests lower them).


def verify_log(
    entries: Iterable[tuple[int, bytes]],
    signed: Checkpoint,
    ca_cert: x509.Certificate,
    *,
    kept: Sequence[Checkpoint] = (),
    consistency_proof: ProofSource | None = None,
    trusted_leaves: bytes | None = None,
    contents: bool = True,
    on_entry: Callable[[int, dict[str, Any]], None] | None = None,
    workers: int | None = None,
    now_ms: int | None = None,
) -> VerifyResult:
    """Verify ``entries`` (index, bytes), in order, against ``signed``.

    ``consistency_proof(m, n)`` is asked only when the rebuilt root differs
    from the signed one (to name the entry) or to prove a kept checkpoint;
    ``trusted_leaves`` (32-byte leaf hashes back to back) is the tree last
    verified, to name the exact entry of a fork. ``contents=False`` checks
    structure and history only; ``on_entry`` sees each decoded entry (for
    reports). ``now_ms`` is the verifier's clock (default: now), against
    which a v2 membership entry's time is judged. Raises
    VerificationFailed(entry=first bad entry)."""
    started = time.perf_counter()
    problems = Problems()
    replay = Replay(ca_cert, now_ms=int(time.time() * 1000) if now_ms is None else now_ms) if contents else None
    signatures = SignatureChecker(workers, parallel_min_jobs=PARALLEL_MIN_JOBS, jobs_per_chunk=JOBS_PER_CHUNK)
    leaves: list[bytes] = []
    feed = Feed()
    kinds: Counter[str] = Counter()
    sha256 = hashlib.sha256
    try:
        for position, (index, data) in enumerate(entries):
            if position >= signed.size:
                break  # beyond the checkpoint: not covered, not ours to judge
            leaves.append(sha256(b"\x00" + data).digest())
            if problems.items:
                continue  # the first problem is found; keep hashing to localise tree damage before it
            if index != position:
                what = "missing" if index > position else "out of order or repeated"
                problems.add(position, STRUCTURE, f"the entry is {what}: the gateway served entry {index} in its place")
                continue
            try:
                entry = audit_entry.decode(data, index=position)
            except VerificationFailed as exc:
                problems.add(position, DECODE, str(exc).removeprefix(f"entry {position}: "))
                continue
            kinds[entry["kind"]] += 1
            try:
                feed.entry(position, entry)
            except Bad as exc:
                if contents:
                    problems.add(position, CONTENT, str(exc))
                    continue
            if on_entry is not None:
                on_entry(position, entry)
            if replay is not None:
                try:
                    signatures.add(replay.entry(position, entry, len(data)))
                except Bad as exc:
                    problems.add(position, CONTENT, str(exc))
        if replay is not None:
            for index, complaint in replay.finish(complete=not problems.items and len(leaves) == signed.size):
                problems.add(index, CONTENT, complaint)
        line = feed.checkpoint_problem(signed, v2=kinds[V2_STARTED] > 0,
                                       complete=not problems.items and len(leaves) == signed.size)
        if line is not None:
            if line[0] is None:
                problems.checkpoint = line[1]
            else:
                problems.add(line[0], STRUCTURE, line[1])
        if len(leaves) < signed.size:
            problems.add(len(leaves), STRUCTURE, f"the entry is missing: the gateway served only {len(leaves)} entries, "
                                                 f"its signed checkpoint covers {signed.size}")
        tree = Tree(leaves)
        trusted = trusted_tree(trusted_leaves)
        proofs: ProofSource | None
        if tree.size == signed.size and tree.root() == signed.root_hash:
            proofs = tree.consistency_proof  # our tree *is* the signed tree: it proves everything itself
        else:
            proofs = consistency_proof
            bad = damaged_entry(tree, signed, proofs, trusted)
            if bad is not None:
                problems.add(bad, TREE, "its bytes differ from the entry the signed checkpoint commits to "
                                        "(changed, inserted, deleted or reordered after it was logged)")
        history = check_history(signed, kept, proofs, trusted=trusted)
        if history is not None:
            problems.add(history[0], STRUCTURE, history[1])
        for index, complaint in signatures.finish():
            problems.add(index, CONTENT, complaint)
    finally:
        signatures.close()
    problems.raise_first()
    return VerifyResult(
        origin=signed.origin, tree_size=signed.size, root_hash=signed.root_hash, entries=len(leaves), kinds=dict(kinds),
        accepted=replay.accepted if replay else 0, refused=replay.refused if replay else 0,
        refusals=dict(replay.refusals) if replay else {}, unverified_refusals=dict(replay.unverified) if replay else {},
        signatures_checked=signatures.checked, kept_checkpoints=len(kept), seconds=time.perf_counter() - started, tree=tree,
        suppressed_refusals=dict(replay.suppressed) if replay else {},
    )

