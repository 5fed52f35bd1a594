"""What `audit verify` requires of witnesses (SPEC §6.1), as pure functions.

- :func:`sponsored_active` replays membership entries of the verified log up
  to a tree size: who is a sponsored, active member (the eligible witnesses)
  and every Ed25519 key each member ever had (cosignatures are checked
  against all of them; the key ID picks the right one). Small on purpose:
  alliance/trust.py (log-gated trust) replaces it when it lands.
- :func:`judge` checks every cosigned checkpoint the gateway showed against
  the tree the auditor rebuilt (one log: each must be a prefix of it, or
  extend it by a consistency proof), finds the newest with a quorum
  ⌊m/2⌋ + 1 of the eligible witnesses, and each witness's newest
  cosignature."""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from alliance import checkpoint as tlog
from alliance import cosignature, merkle
from alliance.errors import CryptoError, VerificationFailed
from alliance.v1 import alliance_pb2 as pb

LAG_LIMIT_S = 300  # SPEC §6.1: a witness more than 5 minutes behind is named
ACTIVE, SUSPENDED, REVOKED = "active", "suspended", "revoked"


class InsufficientWitnesses(VerificationFailed):
    reason = "insufficient_witnesses"

    def __init__(self, message: str) -> None:
        super().__init__(f"insufficient_witnesses: {message}", entry=None)


class SplitView(VerificationFailed):
    reason = "split_view"


def sponsored_active(entries: Iterable[tuple[int, dict[str, Any]]], upto: int) -> tuple[set[str], dict[str, list[bytes]]]:
    """(eligible witnesses, Ed25519 keys by member) after the first ``upto``
    leaves. Eligible: role member, latest status active, and — once the log
    has a `matching_key_created` entry — sponsored: its credential's
    fingerprint is the founder's or covered by a `member_sponsored` entry
    whose sponsor was itself eligible at that point. A log without any
    `matching_key_created` (an alliance from before sponsorship) counts every
    active member. Key rotations are trusted as the entry-level rules judged
    them: a member sponsored under any of its fingerprints stays sponsored."""
    status: dict[str, str] = {}
    fingerprints: dict[str, set[str]] = {}
    keys: dict[str, list[bytes]] = {}
    sponsored: set[str] = set()
    rooted = False
    for seq, e in entries:
        if seq >= upto:
            break
        kind, mid = e.get("kind"), e.get("member_id")
        if kind == "credential_issued" and e.get("role") == "member" and isinstance(mid, str):
            try:
                body = pb.CredentialBody.FromString(pb.Credential.FromString(bytes.fromhex(e["credential"])).body)
            except (KeyError, ValueError, TypeError, Exception):  # noqa: BLE001 - the entry rules name it; here it just counts for nothing
                continue
            keys.setdefault(mid, []).append(bytes(body.ed25519_public_key))
            fingerprints.setdefault(mid, set()).add(body.member_fingerprint.hex())
            status.setdefault(mid, ACTIVE)
        elif kind in ("member_suspended", "member_resumed", "member_revoked") and mid in status:
            if status[mid] != REVOKED:
                status[mid] = {"member_suspended": SUSPENDED, "member_resumed": ACTIVE, "member_revoked": REVOKED}[kind]
        elif kind == "matching_key_created" and isinstance(mid, str):
            rooted = True
            if e.get("fingerprint") in fingerprints.get(mid, ()):
                sponsored.add(mid)
        elif kind == "member_sponsored" and isinstance(mid, str):
            sponsor = e.get("sponsor_id")
            if sponsor in sponsored and status.get(sponsor) == ACTIVE and e.get("fingerprint") in fingerprints.get(mid, ()):
                sponsored.add(mid)
    eligible = {m for m, s in status.items() if s == ACTIVE and (not rooted or m in sponsored)}
    return eligible, keys


def cosigners(note: str, cp: tlog.Checkpoint, keys: Mapping[str, Sequence[bytes]], now_s: int) -> dict[str, int]:
    """member id -> cosignature time (alliance/cosignature.py, shared with members' own checks)."""
    return cosignature.cosigners_by_keys(note, cp, keys, now_s=now_s)


@dataclass
class Judgement:
    witnessed: tlog.Checkpoint | None  # newest checkpoint with a quorum
    witnessed_note: str | None
    eligible: list[str]
    quorum: int
    witnesses: dict[str, dict[str, int | None]] = field(default_factory=dict)
    lagging: list[str] = field(default_factory=list)


def judge(notes: Sequence[str], verifier: tlog.NoteVerifier, *, tree_root: Callable[[int], bytes], tree_size: int,
          consistency_proof: Callable[[int, int], Sequence[bytes]],
          membership: Callable[[int], tuple[set[str], dict[str, list[bytes]]]],
          kept_size: int | None, now_s: int) -> Judgement:
    """``membership(size)`` is :func:`sponsored_active` at a size; the
    eligible set is taken at ``kept_size`` (the verifier's last kept
    witnessed checkpoint) or, on the very first run (None), at each
    candidate's own size (trust on first use, reported as such)."""
    parsed: list[tuple[tlog.Checkpoint, str]] = []
    for note in notes:
        try:
            cp = tlog.open_checkpoint(note, verifier)
        except CryptoError as exc:
            raise VerificationFailed(f"a witnessed checkpoint is not signed by the pinned log key: {exc}") from None
        if cp.size <= tree_size:
            if tree_root(cp.size) != cp.root_hash:
                raise SplitView(f"split_view: a cosigned checkpoint of size {cp.size} disagrees with the log rebuilt from its entries "
                                "(the operator showed someone another log)")
        else:
            try:
                merkle.verify_consistency(tree_size, cp.size, list(consistency_proof(tree_size, cp.size)), tree_root(tree_size), cp.root_hash)
            except (CryptoError, ValueError) as exc:
                raise SplitView(f"split_view: a cosigned checkpoint of size {cp.size} does not extend the verified log: {exc}") from None
        parsed.append((cp, note))
    _, all_keys = membership(max([tree_size] + [cp.size for cp, _ in parsed]))
    fixed = membership(kept_size) if kept_size is not None else None
    best: tuple[tlog.Checkpoint, str] | None = None
    newest: dict[str, tuple[int, int]] = {}
    for cp, note in parsed:
        signers = cosigners(note, cp, all_keys, now_s)
        for mid, t in signers.items():
            if mid not in newest or (cp.size, t) > newest[mid]:
                newest[mid] = (cp.size, t)
        eligible = fixed[0] if fixed else membership(cp.size)[0]
        if eligible and cosignature.has_quorum(signers, eligible) and (best is None or cp.size > best[0].size):
            best = (cp, note)
    eligible_shown = set(fixed[0]) if fixed else set(membership(best[0].size if best else tree_size)[0])
    witnesses = {mid: {"newest_cosigned_size": newest[mid][0] if mid in newest else None,
                       "newest_cosigned_time": newest[mid][1] if mid in newest else None}
                 for mid in sorted(eligible_shown | set(newest))}
    lagging = sorted(m for m in eligible_shown if m not in newest or now_s - newest[m][1] > LAG_LIMIT_S)
    return Judgement(best[0] if best else None, best[1] if best else None, sorted(eligible_shown),
                     cosignature.quorum(len(eligible_shown)), witnesses, lagging)
