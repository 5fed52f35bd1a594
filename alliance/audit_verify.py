"""Auditor-side verification of the audit log (SPEC §6), without network and
without trusting the operator.

``verify_log`` takes the entries the gateway served, the signed checkpoint
(already opened), the alliance CA certificate and the checkpoints the auditor
kept, and either returns a :class:`VerifyResult` or raises
``VerificationFailed`` naming the *first bad entry* (its sequence number,
which is its leaf index). Three kinds of evidence are combined, and the
smallest entry index any of them blames is reported:

1. Structure. Every entry decodes canonically with ``seq`` equal to its
   position; the RFC 6962 tree rebuilt from the served bytes must have the
   signed root. When it does not, the first differing leaf is found by binary
   search over prefix sizes m: the prefix of our rebuilt tree is genuine iff
   the gateway can prove (consistency proof m → n) that the signed tree starts
   with exactly those m leaves. Prefix agreement is monotone (a Merkle root
   binds all its leaves), so ~log2(n) proofs name the entry that was changed,
   deleted, inserted or reordered.
2. History. The signed checkpoint must be consistent with every checkpoint
   the auditor kept: a smaller one is a rollback (the first entry no longer
   covered is named), a same-size or earlier one with another root is a fork.
   With the leaf hashes of the last verified tree the exact rewritten entry
   is named; otherwise the first entry not covered by a still-consistent
   checkpoint.
3. Contents, in log order, replaying membership from the log itself (the
   operator's database is never consulted): credentials checked against the
   CA and, on re-issue, against the member's previous key (SPEC §5 rotation);
   every accepted query carries a valid querier signature by the credential
   current at the time, consent, at least k answers each signed by its
   member, and passed every gateway check that can be re-derived; every
   refusal's reason must fit what the entry shows.

The registry the gateway consults lags the log by up to ``STATE_GRACE_MS``
(SPEC §5: status changes take effect within 5 s), so checks that depend on
membership state accept any state in effect during that window.

Signature checks dominate the cost (about 125 µs each here); they are batched
and, for large logs, spread over worker processes while the main process
decodes and replays."""
from __future__ import annotations

import base64
import concurrent.futures as cf
import hashlib
import json
import multiprocessing
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any
from zoneinfo import ZoneInfo

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from alliance import audit_entry, merkle, paillier, pki, protocol, signing
from alliance.checkpoint import Checkpoint
from alliance.errors import AllianceError, CryptoError, Refused, Unreachable, VerificationFailed
from alliance.v1 import alliance_pb2 as pb

ProofSource = Callable[[int, int], Sequence[bytes]]
"""``consistency_proof(m, n)``: the gateway's RFC 9162 proof from size m to n."""

STATE_GRACE_MS = 5_000  # SPEC §5: suspensions take effect within 5 s
CREDENTIAL_SLACK_S = protocol.FRESHNESS_MS // 1000  # clock skew tolerated on credential validity
SHANGHAI = ZoneInfo("Asia/Shanghai")
INQUIRY_WINDOW_MS = 720 * 3600 * 1000  # inquiries_30d, as the gateway counts it

# Every reason the gateway can log (keys of gateway.service.REFUSALS; a test
# keeps the two in step). Grouped by where the gateway's checks raise them.
REASONS_BEFORE_PARSE = frozenset({"unauthenticated", "wrong_role", "unknown_member", "member_suspended", "member_revoked"})
PARSE_REASONS = frozenset({"malformed_request", "unknown_purpose", "missing_consent"})
REASONS_AFTER_SIGNATURE = frozenset(
    {"stale_timestamp", "token_mismatch", "foreign_key", "quota_exceeded", "too_few_members", "too_few_answers", "incomplete_precheck"}
)
KNOWN_REASONS = REASONS_BEFORE_PARSE | PARSE_REASONS | REASONS_AFTER_SIGNATURE | {"querier_mismatch", "stale_credential", "bad_signature"}

PARALLEL_MIN_JOBS = 20_000  # below this a worker pool costs more than it saves
JOBS_PER_CHUNK = 6_000

_TIME_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z")
_COPIED_FIELDS = ("query_id", "subject_token_sha256", "purpose", "consent_id", "consent_sha256")

# --------------------------------------------------------------------------
# Signature jobs (run in worker processes for large logs)

SignatureJob = tuple[int, tuple[bytes, ...], bytes, bytes, bool, str]
"""(entry index, candidate Ed25519 keys, prefixed message, signature,
expected validity, what to say when the outcome is not the expected one)."""

_KEY_CACHE: dict[bytes, Ed25519PublicKey | None] = {}


def _signature_valid(key: bytes, message: bytes, signature: bytes) -> bool:
    public = _KEY_CACHE.get(key, False)
    if public is False:
        try:
            public = Ed25519PublicKey.from_public_bytes(key)
        except ValueError:
            public = None
        _KEY_CACHE[key] = public
    if public is None or len(signature) != signing.ED25519_SIGNATURE_SIZE:
        return False
    try:
        public.verify(signature, message)
        return True
    except InvalidSignature:
        return False


def check_signature_jobs(jobs: Sequence[SignatureJob]) -> list[tuple[int, str]]:
    """Verify a batch; return (entry index, complaint) for every job whose
    outcome is not the expected one. Top-level so worker processes can run it."""
    failures = []
    for index, keys, message, signature, expected, complaint in jobs:
        if any(_signature_valid(k, message, signature) for k in keys) != expected:
            failures.append((index, complaint))
    return failures


class _SignatureChecker:
    """Collects signature jobs and checks them in batches: in this process
    for small logs, in a pool of worker processes for large ones (spawned, not
    forked, so a caller's gRPC threads are never duplicated)."""

    def __init__(self, workers: int | None) -> None:
        self.workers = (os.cpu_count() or 1) if workers is None else max(1, workers)
        self.batch: list[SignatureJob] = []
        self.failures: list[tuple[int, str]] = []
        self.checked = 0
        self.pool: cf.ProcessPoolExecutor | None = None
        self.pending: set[cf.Future[list[tuple[int, str]]]] = set()

    def add(self, jobs: list[SignatureJob]) -> None:
        self.batch.extend(jobs)
        if len(self.batch) >= JOBS_PER_CHUNK and (self.pool is not None or self.checked + len(self.batch) >= PARALLEL_MIN_JOBS):
            self._dispatch()

    def _dispatch(self) -> None:
        batch, self.batch = self.batch, []
        self.checked += len(batch)
        if self.workers <= 1:
            self.failures.extend(check_signature_jobs(batch))
            return
        if self.pool is None:
            self.pool = cf.ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))
        for start in range(0, len(batch), JOBS_PER_CHUNK):
            while len(self.pending) >= 2 * self.workers:  # bound memory: at most two chunks queued per worker
                done, self.pending = cf.wait(self.pending, return_when=cf.FIRST_COMPLETED)
                for future in done:
                    self.failures.extend(future.result())
            self.pending.add(self.pool.submit(check_signature_jobs, batch[start : start + JOBS_PER_CHUNK]))

    def finish(self) -> list[tuple[int, str]]:
        try:
            if self.batch:
                batch, self.batch = self.batch, []
                self.checked += len(batch)
                if self.pool is None:
                    self.failures.extend(check_signature_jobs(batch))
                else:
                    self.pending.add(self.pool.submit(check_signature_jobs, batch))
            for future in cf.as_completed(self.pending):
                self.failures.extend(future.result())
            self.pending = set()
        finally:
            self.close()
        return self.failures

    def close(self) -> None:
        if self.pool is not None:
            for future in self.pending:
                future.cancel()
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None


# --------------------------------------------------------------------------
# Merkle tree rebuilt by the auditor


class Tree:
    """Every perfect-subtree hash of a tree rebuilt from leaf hashes, so the
    root of any prefix and any consistency proof cost O(log n) lookups."""

    def __init__(self, leaf_hashes: list[bytes]) -> None:
        self.levels = [leaf_hashes]
        sha256 = hashlib.sha256
        while len(self.levels[-1]) > 1:
            below = self.levels[-1]
            self.levels.append([sha256(b"\x01" + below[i] + below[i + 1]).digest() for i in range(0, len(below) - 1, 2)])

    @classmethod
    def from_packed(cls, packed: bytes) -> Tree:
        """From leaf hashes stored back to back (32 bytes each)."""
        if len(packed) % merkle.HASH_SIZE:
            raise CryptoError("stored leaf hashes are not a whole number of 32-byte hashes")
        return cls([packed[i : i + merkle.HASH_SIZE] for i in range(0, len(packed), merkle.HASH_SIZE)])

    @property
    def size(self) -> int:
        return len(self.levels[0])

    @property
    def leaves(self) -> list[bytes]:
        return self.levels[0]

    def get(self, level: int, index: int) -> bytes:
        return self.levels[level][index]

    def root(self, size: int | None = None) -> bytes:
        return merkle.root_at(self.size if size is None else size, self.get)

    def consistency_proof(self, first: int, second: int) -> list[bytes]:
        if second != self.size:
            raise CryptoError(f"this tree has {self.size} leaves; no proof to size {second}")
        return merkle.consistency_proof(first, second, self.get)

    def packed(self) -> bytes:
        return b"".join(self.levels[0])


def _prefix_matches(tree: Tree, m: int, size: int, root: bytes, proofs: ProofSource) -> bool:
    """Is the tree of ``size`` leaves with ``root`` an extension of our first m leaves?"""
    ours = tree.root(m)
    if m == size:
        return ours == root
    try:
        merkle.verify_consistency(m, size, list(proofs(m, size)), ours, root)
        return True
    except Unreachable:
        raise
    except AllianceError:  # a failed proof, or a gateway that will not prove it
        return False


def first_divergence(tree: Tree, size: int, root: bytes, proofs: ProofSource) -> int | None:
    """The first leaf index where our tree and the (size, root) tree differ;
    ``size`` when ours is longer and theirs is a prefix of it; None when ours
    is a prefix of theirs. Binary search over prefix sizes: O(log n) proofs."""
    common = min(tree.size, size)
    if common == 0 or _prefix_matches(tree, common, size, root, proofs):
        return size if tree.size > size else None
    good, bad = 0, common  # invariant: prefix `good` matches, prefix `bad` does not
    while bad - good > 1:
        mid = (good + bad) // 2
        if _prefix_matches(tree, mid, size, root, proofs):
            good = mid
        else:
            bad = mid
    return bad - 1


def _consistent(old: Checkpoint, new: Checkpoint, proofs: ProofSource | None) -> bool | None:
    """Is ``new`` an append-only extension of ``old``? None: cannot tell
    without a consistency proof."""
    if old.size > new.size:
        return False
    if old.size == 0:
        return old.root_hash == merkle.EMPTY_ROOT
    if old.size == new.size:
        return old.root_hash == new.root_hash
    if proofs is None:
        return None
    try:
        merkle.verify_consistency(old.size, new.size, list(proofs(old.size, new.size)), old.root_hash, new.root_hash)
        return True
    except Unreachable:
        raise
    except AllianceError:
        return False


def check_history(new: Checkpoint, kept: Sequence[Checkpoint], proofs: ProofSource | None, *,
                  trusted: Tree | None = None) -> tuple[int, str] | None:
    """Check ``new`` against every kept checkpoint. Returns (first bad entry,
    reason) for a rollback or a fork, None when consistent with all.

    ``trusted`` is the tree the auditor last verified entry by entry; with it
    (and proofs) a rewrite is pinned to the exact entry, otherwise to the first
    entry not covered by the largest kept checkpoint still consistent."""
    for old in kept:
        if old.origin != new.origin:
            raise CryptoError(f"the gateway signs checkpoints for log {new.origin!r}, but the kept ones are for {old.origin!r}")
    consistent_size = 0
    for old in sorted(kept, key=lambda c: c.size):
        verdict = _consistent(old, new, proofs)
        if verdict is not False:
            consistent_size = max(consistent_size, old.size) if verdict else consistent_size
            continue
        exact = _rewritten_at(trusted, new, proofs)
        if old.size > new.size:
            first = new.size if exact is None else min(exact, new.size)
            return first, (f"rollback: the gateway's signed checkpoint covers {new.size} entries, but a checkpoint kept "
                           f"earlier covers {old.size}; entries {new.size}..{old.size - 1} are no longer in the log"
                           + (f", and entry {first} was rewritten" if first < new.size else ""))
        first = exact if exact is not None and exact < old.size else consistent_size
        same = "of the same size" if old.size == new.size else f"of size {old.size}"
        where = f"at entry {first}" if exact is not None and first == exact else f"at or after entry {first}"
        return first, (f"fork: a checkpoint kept earlier ({same}, root {_b64(old.root_hash)}) is not consistent with the "
                       f"gateway's signed checkpoint (size {new.size}, root {_b64(new.root_hash)}); the log was rewritten {where}")
    return None


def _rewritten_at(trusted: Tree | None, new: Checkpoint, proofs: ProofSource | None) -> int | None:
    """The first entry of the last verified tree that ``new`` no longer
    contains (None: none, or no way to tell)."""
    if trusted is None or not trusted.size or proofs is None:
        return None
    return first_divergence(trusted, new.size, new.root_hash, proofs)


# --------------------------------------------------------------------------
# Result


@dataclass
class VerifyResult:
    """What a successful verification saw (``to_json`` for the CLI)."""

    origin: str
    tree_size: int
    root_hash: bytes
    entries: int
    kinds: dict[str, int]
    accepted: int
    refused: int
    refusals: dict[str, int]
    unverified_refusals: dict[str, int]
    signatures_checked: int
    kept_checkpoints: int
    seconds: float
    tree: Tree = field(repr=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": True,
            "origin": self.origin,
            "tree_size": self.tree_size,
            "root_hash": _b64(self.root_hash),
            "entries": self.entries,
            "kinds": dict(sorted(self.kinds.items())),
            "accepted": self.accepted,
            "refused": self.refused,
            "refusals": dict(sorted(self.refusals.items())),
            "unverified_refusals": dict(sorted(self.unverified_refusals.items())),
            "signatures_checked": self.signatures_checked,
            "kept_checkpoints": self.kept_checkpoints,
            "seconds": round(self.seconds, 3),
        }


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class _Problems:
    """Every problem found, by entry index; the smallest index is reported."""

    def __init__(self) -> None:
        self.items: list[tuple[int, int, str]] = []  # (index, priority, message)

    def add(self, index: int, priority: int, message: str) -> None:
        self.items.append((index, priority, message))

    @property
    def first_index(self) -> int | None:
        return min((i for i, _, _ in self.items), default=None)

    def raise_first(self) -> None:
        if not self.items:
            return
        first = self.first_index
        messages = list(dict.fromkeys(m for _, _, m in sorted(x for x in self.items if x[0] == first)))
        raise VerificationFailed(f"entry {first}: " + "; ".join(messages), entry=first)


STRUCTURE, DECODE, TREE, CONTENT = 0, 1, 2, 3  # message order when one entry has several problems


# --------------------------------------------------------------------------
# The verifier


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
) -> VerifyResult:
    """Verify ``entries`` (index, bytes), in order, against ``signed``.

    ``consistency_proof(m, n)`` is asked only when the rebuilt root differs
    from the signed one (to name the entry) or to prove a kept checkpoint;
    ``trusted_leaves`` (32-byte leaf hashes back to back) is the tree last
    verified, to name the exact entry of a fork. ``contents=False`` checks
    structure and history only; ``on_entry`` sees each decoded entry (for
    reports). Raises VerificationFailed(entry=first bad entry)."""
    started = time.perf_counter()
    problems = _Problems()
    replay = _Replay(ca_cert) if contents else None
    signatures = _SignatureChecker(workers)
    leaves: list[bytes] = []
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
                entry = decode_entry(data, position)
            except VerificationFailed as exc:
                problems.add(position, DECODE, str(exc).removeprefix(f"entry {position}: "))
                continue
            kinds[entry["kind"]] += 1
            if on_entry is not None:
                on_entry(position, entry)
            if replay is not None:
                try:
                    signatures.add(replay.entry(position, entry))
                except _Bad as exc:
                    problems.add(position, CONTENT, str(exc))
        if len(leaves) < signed.size:
            problems.add(len(leaves), STRUCTURE, f"the entry is missing: the gateway served only {len(leaves)} entries, "
                                                 f"its signed checkpoint covers {signed.size}")
        tree = Tree(leaves)
        trusted = _trusted_tree(trusted_leaves)
        proofs: ProofSource | None
        if tree.size == signed.size and tree.root() == signed.root_hash:
            proofs = tree.consistency_proof  # our tree *is* the signed tree: it proves everything itself
        else:
            proofs = consistency_proof
            bad = _damaged_entry(tree, signed, proofs, trusted)
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
    )


def _damaged_entry(tree: Tree, signed: Checkpoint, proofs: ProofSource | None, trusted: Tree | None) -> int | None:
    """The first entry where the served log departs from the signed tree.
    Without proofs, the last verified tree is the only reference left."""
    if proofs is not None:
        return first_divergence(tree, signed.size, signed.root_hash, proofs)
    if trusted is not None:
        for i, (ours, verified) in enumerate(zip(tree.leaves, trusted.leaves)):
            if ours != verified:
                return i
        return min(tree.size, trusted.size)
    return 0


def _trusted_tree(packed: bytes | None) -> Tree | None:
    if not packed:
        return None
    try:
        return Tree.from_packed(packed)
    except CryptoError:
        return None


def _no_float(text: str) -> Any:
    raise ValueError(f"{text} is not an integer")


def decode_entry(data: bytes, index: int) -> dict[str, Any]:
    """``audit_entry.decode`` for the common case, about twice as fast: JSON
    that parses without floats or NaN into an object and re-encodes to the
    same bytes is canonical (JSON has no other non-canonical types). Anything
    else goes through ``audit_entry.decode``, whose error message is the one
    reported."""
    try:
        if data.isascii():
            entry = json.loads(data, parse_float=_no_float, parse_constant=_no_float)
            if (type(entry) is dict and entry.get("seq") == index and type(entry.get("seq")) is int
                    and entry.get("v") == audit_entry.FORMAT_VERSION and entry.get("kind") in audit_entry.KINDS
                    and json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                                   allow_nan=False).encode("ascii") == data):
                return entry
    except ValueError:
        pass
    return audit_entry.decode(data, index=index)


# --------------------------------------------------------------------------
# Replaying the log


class _Bad(Exception):
    """The entry being replayed breaks a rule; the message says which."""


@dataclass(eq=False)  # identity hashing: kept in sets of credentials in effect
class _Credential:
    member_id: str
    role: str
    serial: int
    ed25519: bytes
    paillier_fingerprint: bytes | None
    not_before: int
    not_after: int
    body: pb.CredentialBody
    seq: int


@dataclass
class _Member:
    """One member as the log says it was. Histories are (time ms, value) in
    log order; the gateway's registry may lag them by STATE_GRACE_MS."""

    member_id: str
    role: str
    first_ms: int
    credentials: list[tuple[int, _Credential]] = field(default_factory=list)
    status: list[tuple[int, str]] = field(default_factory=list)
    quota: list[tuple[int, int | None]] = field(default_factory=list)
    accepted_by_day: dict[int, int] = field(default_factory=dict)

    @property
    def current(self) -> _Credential:
        return self.credentials[-1][1]

    @property
    def bad_answer(self) -> str:
        return f"the answer signature of {self.member_id} does not verify"

    def keys_since(self, start_ms: int) -> tuple[bytes, ...]:
        """Ed25519 keys of the credentials in effect from start_ms on."""
        if len(self.credentials) == 1:
            return (self.credentials[0][1].ed25519,)
        return tuple(dict.fromkeys(c.ed25519 for c in _during(self.credentials, start_ms)))

    def accepted_since(self, day_start_ms: int) -> int:
        return sum(n for day, n in self.accepted_by_day.items() if day >= day_start_ms)


def _during(history: list[tuple[int, Any]], start_ms: int, end_ms: int | None = None) -> set[Any]:
    """Values in effect at some moment of [start_ms, end_ms] (open-ended when
    end_ms is None): the value at start_ms and every later change."""
    values: set[Any] = set()
    for when, value in reversed(history):
        if end_ms is not None and when > end_ms:
            continue
        values.add(value)
        if when <= start_ms:
            break
    return values


def _day_start_ms(ms: int) -> int:
    local = datetime.fromtimestamp(ms / 1000, tz=SHANGHAI)
    return int(local.replace(hour=0, minute=0, second=0, microsecond=0).timestamp() * 1000)


def _utc_timestamp(ms: int) -> str:
    """The gateway's `time` format: RFC 3339 UTC with milliseconds."""
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def _time_ms(text: Any) -> int:
    if not isinstance(text, str) or not _TIME_RE.fullmatch(text):
        raise _Bad(f"time {text!r} is not RFC 3339 UTC with milliseconds")
    try:
        dt = datetime.strptime(text[:-5], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc)
    except ValueError:
        raise _Bad(f"time {text!r} is not a valid date and time") from None
    return int(dt.timestamp()) * 1000 + int(text[-4:-1])


def _field(entry: dict[str, Any], name: str, kind: type | tuple[type, ...], *, nullable: bool = False) -> Any:
    value = entry.get(name)
    if value is None and nullable:
        return None
    if name not in entry or isinstance(value, bool) or not isinstance(value, kind):
        raise _Bad(f"field {name!r} is missing or has the wrong type")
    return value


def _hex(entry: dict[str, Any], name: str, *, size: int | None = None, nullable: bool = False) -> bytes | None:
    text = _field(entry, name, str, nullable=nullable)
    if text is None:
        return None
    try:
        data = bytes.fromhex(text)
    except ValueError:
        data = None
    if data is None or data.hex() != text:  # the canonical form: lowercase, no spaces
        raise _Bad(f"field {name!r} is not lowercase hex")
    if size is not None and len(data) != size:
        raise _Bad(f"field {name!r} must be {size} bytes, not {len(data)}")
    return data


def _member_ids(entry: dict[str, Any], name: str) -> list[str]:
    ids = _field(entry, name, list)
    if not all(isinstance(m, str) for m in ids):
        raise _Bad(f"field {name!r} must list member ids")
    if len(set(ids)) != len(ids):
        raise _Bad(f"field {name!r} names a member twice")
    return ids


@dataclass
class _Query:
    """The fields of a query/precheck entry, type-checked and decoded."""

    seq: int
    kind: str
    received_ms: int
    querier_id: str
    body_bytes: bytes
    signature: bytes
    asked: list[str]
    answered: list[str]
    answers: list[tuple[str, bytes, bytes]]  # (member id, ciphertext SHA-256, signature)
    dropped: list[str]
    k_min: int
    inquiries_30d: int
    outcome: str
    reason: str | None
    copies: dict[str, Any]

    @property
    def window_start(self) -> int:
        return self.received_ms - STATE_GRACE_MS


def _parse_query(seq: int, e: dict[str, Any]) -> _Query:
    received = _field(e, "received_at_ms", int)
    if e.get("time") != _utc_timestamp(received):
        raise _Bad(f"time {e.get('time')!r} is not the receipt time {_utc_timestamp(received)} (received_at_ms)")
    answers = []
    for a in _field(e, "answers", list):  # the bulk of an entry: checked inline
        if type(a) is not dict or type(a.get("member_id")) is not str:
            raise _Bad("an answer is not an object naming its member")
        answers.append((a["member_id"], _hex(a, "ciphertext_sha256", size=32), _hex(a, "signature")))
    dropped = []
    for d in _field(e, "dropped", list):
        if not isinstance(d, dict):
            raise _Bad("a dropped member is not an object")
        dropped.append(_field(d, "member_id", str))
    outcome = _field(e, "outcome", str)
    if outcome not in ("accepted", "refused"):
        raise _Bad(f"outcome {outcome!r} is neither accepted nor refused")
    q = _Query(
        seq=seq, kind=e["kind"], received_ms=received, querier_id=_field(e, "querier_id", str),
        body_bytes=_hex(e, "request_body") or b"", signature=_hex(e, "request_signature") or b"",
        asked=_member_ids(e, "members_asked"), answered=_member_ids(e, "members_answered"), answers=answers,
        dropped=dropped, k_min=_field(e, "k_min", int), inquiries_30d=_field(e, "inquiries_30d", int), outcome=outcome,
        reason=_field(e, "reason", str, nullable=True), copies={name: e.get(name) for name in _COPIED_FIELDS},
    )
    _field(e, "detail", str, nullable=True)
    return q


def _check_fan_out(q: _Query) -> None:
    """Who was asked, who answered, who was dropped: one consistent story."""
    if q.asked != sorted(q.asked):
        raise _Bad("members_asked is not sorted")
    if q.querier_id in q.asked:
        raise _Bad(f"the querier {q.querier_id} was asked about its own query")
    if q.answered != [a[0] for a in q.answers]:
        raise _Bad("members_answered does not list the members of answers, in order")
    if len(set(q.dropped)) != len(q.dropped):
        raise _Bad("a member is dropped twice")
    if not set(q.answered) <= set(q.asked):
        raise _Bad(f"{', '.join(sorted(set(q.answered) - set(q.asked)))} answered without being asked")
    if set(q.answered) & set(q.dropped):
        raise _Bad(f"{', '.join(sorted(set(q.answered) & set(q.dropped)))} both answered and dropped")
    if q.reason == "too_few_members" or not q.asked:
        if q.answered or q.dropped:
            raise _Bad("answers or drops recorded for a query that was never sent to members")
    elif set(q.answered) | set(q.dropped) != set(q.asked):
        missing = set(q.asked) - set(q.answered) - set(q.dropped)
        raise _Bad(f"asked member(s) {', '.join(sorted(missing))} neither answered nor were dropped")


class _Replay:
    """Membership state rebuilt from the log, and the checks of each entry
    against it. ``entry`` returns the signature jobs the entry needs."""

    def __init__(self, ca_cert: x509.Certificate) -> None:
        self.ca_cert = ca_cert
        self.members: dict[str, _Member] = {}
        self.by_serial: dict[int, _Credential] = {}
        self.tokens: dict[bytes, list[tuple[int, str]]] = {}
        self.accepted = 0
        self.refused = 0
        self.refusals: Counter[str] = Counter()
        self.unverified: Counter[str] = Counter()

    def entry(self, seq: int, e: dict[str, Any]) -> list[SignatureJob]:
        kind = e["kind"]
        if kind in audit_entry.QUERY_KINDS:
            return self._query(seq, e)
        if kind == "disclosure":  # SPEC §11: signed by the member's key of the time (the report checks the rest)
            return self._disclosure(seq, e)
        when = _time_ms(e.get("time"))
        member_id = _field(e, "member_id", str)
        if kind == "credential_issued":
            self._credential_issued(seq, e, when, member_id)
        elif kind == "quota_changed":
            quota = _field(e, "daily_quota", int)
            if quota < 0:
                raise _Bad(f"daily quota {quota} is negative")
            self._member(member_id).quota.append((when, quota))
        else:
            self._status_change(kind, when, member_id)
        return []

    # -- membership -----------------------------------------------------------

    def _member(self, member_id: str) -> _Member:
        member = self.members.get(member_id)
        if member is None:
            raise _Bad(f"member {member_id!r} has no credential_issued entry before this one")
        return member

    def _credential_issued(self, seq: int, e: dict[str, Any], when: int, member_id: str) -> None:
        """CA-signed, matching its entry, unique serial, and a re-issue with
        new keys endorsed by the member's previous key (SPEC §5)."""
        raw = _hex(e, "credential") or b""
        try:
            cred = pb.Credential.FromString(raw)
            body = pki.verify_credential(cred, self.ca_cert, now=when // 1000)
        except AllianceError as exc:
            raise _Bad(f"credential for {member_id!r} is not valid under the alliance CA: {exc}") from None
        except Exception:  # noqa: BLE001 - protobuf raises assorted errors on garbage
            raise _Bad(f"credential for {member_id!r} is not a Credential") from None
        role = pki.role_name(body.role)
        expected = {"member_id": body.member_id, "name": body.name, "role": role, "serial": body.serial,
                    "endpoint": body.endpoint, "fingerprint": body.member_fingerprint.hex()}
        for name, value in expected.items():
            if e.get(name) != value:
                raise _Bad(f"{name} {e.get(name)!r} differs from the credential's {value!r}")
        if body.serial in self.by_serial:
            raise _Bad(f"credential serial {body.serial} was already issued at entry {self.by_serial[body.serial].seq}")
        member = self.members.get(member_id)
        if member is not None:
            if member.status[-1][1] == "revoked":
                raise _Bad(f"a credential was issued to {member_id}, which was revoked; revocation is final")
            try:
                pki.check_pin(pki.pin_from(member.current.body), cred, body)
            except CryptoError as exc:
                raise _Bad(f"the CA issued {member_id} a credential with new keys that its previous key did not endorse ({exc})") from None
        fingerprint = None
        if body.paillier_n:
            fingerprint = paillier.PaillierPublicKey.from_bytes(body.paillier_n).fingerprint()
        credential = _Credential(member_id, role, body.serial, bytes(body.ed25519_public_key), fingerprint,
                                 body.not_before, body.not_after, body, seq)
        if member is None:
            member = self.members[member_id] = _Member(member_id, role, when)
            member.quota.append((when, e["daily_quota"] if isinstance(e.get("daily_quota"), int) else None))
        member.role = role
        member.credentials.append((when, credential))
        member.status.append((when, "active"))  # the registry (re)activates on issue
        self.by_serial[body.serial] = credential

    def _status_change(self, kind: str, when: int, member_id: str) -> None:
        allowed_from = {"member_suspended": {"active"}, "member_resumed": {"suspended"},
                        "member_revoked": {"active", "suspended"}}[kind]
        member = self._member(member_id)
        now = member.status[-1][1]
        if now not in allowed_from:
            raise _Bad(f"{kind.replace('_', ' ')} while the member is {now}")
        member.status.append((when, {"member_suspended": "suspended", "member_resumed": "active", "member_revoked": "revoked"}[kind]))

    def _disclosure(self, seq: int, e: dict[str, Any]) -> list[SignatureJob]:
        member = self._member(_field(e, "member_id", str))
        body, signature = _hex(e, "body") or b"", _hex(e, "signature") or b""
        return [(seq, (member.current.ed25519,), signing.DISCLOSURE + body, signature, True,
                 f"the disclosure signature of {member.member_id} does not verify with its key")]

    # -- queries --------------------------------------------------------------

    def _query(self, seq: int, e: dict[str, Any]) -> list[SignatureJob]:
        q = _parse_query(seq, e)
        body, parse_reason = self._parse_body(q)
        self._check_copies(q, body, parse_reason)
        _check_fan_out(q)
        querier = self.members.get(q.querier_id)
        jobs = self._accepted(q, body, querier) if q.outcome == "accepted" else self._refused(q, body, parse_reason, querier)
        if body is not None:
            jobs.extend(self._answer_jobs(q, body))
        self._account(q, body, querier)
        return jobs

    @staticmethod
    def _parse_body(q: _Query) -> tuple[pb.QueryRequestBody | None, str | None]:
        """The body as the gateway parsed it, or the reason it refused it."""
        try:
            return protocol.parse_body(pb.SignedQuery(body=q.body_bytes)), None
        except Refused as exc:
            return None, exc.reason

    @staticmethod
    def _check_copies(q: _Query, body: pb.QueryRequestBody | None, parse_reason: str | None) -> None:
        """The convenience copies (purpose, consent, ...) must say what the
        querier signed, or be null where the gateway never parsed the body."""
        unparsed = body is None or q.reason in REASONS_BEFORE_PARSE
        if unparsed:
            if any(v is not None for v in q.copies.values()):
                raise _Bad("request fields are filled in although the gateway never parsed the request")
            return
        signed = {"query_id": body.query_id, "subject_token_sha256": body.subject_token_sha256.hex(),
                  "purpose": protocol.purpose_name(body.purpose), "consent_id": body.consent_id,
                  "consent_sha256": body.consent_sha256.hex()}
        for name, value in signed.items():
            if q.copies[name] != value:
                raise _Bad(f"{name} {q.copies[name]!r} is not the signed request's {value!r}")

    def _credential_for(self, q: _Query, body: pb.QueryRequestBody) -> _Credential | None:
        cred = self.by_serial.get(body.credential_serial)
        return cred if cred is not None and cred.member_id == q.querier_id else None

    def _querier_job(self, q: _Query, cred: _Credential, expected: bool) -> SignatureJob:
        complaint = ("the querier's signature over the request does not verify" if expected
                     else "reason bad_signature does not fit: the querier's signature verifies")
        return q.seq, (cred.ed25519,), signing.QUERY_REQUEST + q.body_bytes, q.signature, expected, complaint

    def _accepted(self, q: _Query, body: pb.QueryRequestBody | None, querier: _Member | None) -> list[SignatureJob]:
        """Everything the gateway must have checked before answering."""
        if q.reason is not None:
            raise _Bad("an accepted query carries a refusal reason")
        if querier is None or querier.role != "member":
            raise _Bad(f"querier {q.querier_id} is not a member")
        if "active" not in _during(querier.status, q.window_start, q.received_ms):
            raise _Bad(f"querier {q.querier_id} was {querier.status[-1][1]}, yet its query was accepted")
        if body is None:
            raise _Bad("the accepted request does not parse as a valid signed query body")
        if protocol.mode_name(body.mode) != q.kind:
            raise _Bad(f"a {protocol.mode_name(body.mode)} request was accepted as a {q.kind}")
        if body.querier_id != q.querier_id:
            raise _Bad(f"the request names querier {body.querier_id!r}, the entry {q.querier_id!r}")
        cred = self._credential_for(q, body)
        if cred is None:
            raise _Bad(f"the request names credential serial {body.credential_serial}, which was never issued to {q.querier_id}")
        current = {c.serial for c in _during(querier.credentials, q.window_start, q.received_ms)}
        if cred.serial not in current:
            raise _Bad(f"the request names credential serial {cred.serial}, but {q.querier_id}'s current serial was {max(current)}")
        if not cred.not_before - CREDENTIAL_SLACK_S <= q.received_ms // 1000 < cred.not_after + CREDENTIAL_SLACK_S:
            raise _Bad(f"querier credential serial {cred.serial} was not valid at {_utc_timestamp(q.received_ms)}")
        if abs(q.received_ms - body.timestamp_ms) > protocol.FRESHNESS_MS:
            raise _Bad("the request timestamp is more than 5 minutes from its receipt")
        if body.paillier_key_fingerprint != cred.paillier_fingerprint:
            raise _Bad("the request's Paillier key is not the querier's registered key")
        quotas = _during(querier.quota, q.window_start, q.received_ms)
        if None not in quotas and querier.accepted_since(_day_start_ms(q.received_ms)) >= max(quotas):
            raise _Bad(f"querier {q.querier_id} had used its daily quota of {max(quotas)}, yet the query was accepted")
        if q.k_min < 2:
            raise _Bad(f"k_min {q.k_min} is below 2")
        if len(q.answered) < q.k_min:
            raise _Bad(f"accepted with {len(q.answered)} answer(s); at least k_min = {q.k_min} are required")
        if q.kind == "precheck" and len(q.answered) != len(q.asked):
            raise _Bad(f"precheck accepted with {len(q.answered)} of {len(q.asked)} asked members answering")
        self._check_asked(q, querier)
        self._check_inquiries(q, body)
        return [self._querier_job(q, cred, True)]

    def _check_asked(self, q: _Query, querier: _Member) -> None:
        """Those asked were active members; no member active throughout the
        window before the query was left out (its debts would be hidden)."""
        for member_id in q.asked:
            member = self.members.get(member_id)
            if member is None or member.role != "member" or "active" not in _during(member.status, q.window_start):
                raise _Bad(f"asked {member_id}, which was not an active member")
        for member in self.members.values():
            if (member.role == "member" and member.member_id != querier.member_id and member.member_id not in q.asked
                    and member.first_ms <= q.window_start and _during(member.status, q.window_start, q.received_ms) == {"active"}):
                raise _Bad(f"member {member.member_id} was active but not asked")

    def _check_inquiries(self, q: _Query, body: pb.QueryRequestBody) -> None:
        """inquiries_30d may not exceed what the log itself supports."""
        since = q.received_ms - INQUIRY_WINDOW_MS
        others = {who for when, who in self.tokens.get(body.subject_token_sha256, ())
                  if who != q.querier_id and since <= when < q.received_ms}
        if q.inquiries_30d > len(others):
            raise _Bad(f"inquiries_30d is {q.inquiries_30d}, but the log shows {len(others)} other querier(s) in 30 days")

    def _refused(self, q: _Query, body: pb.QueryRequestBody | None, parse_reason: str | None,
                 querier: _Member | None) -> list[SignatureJob]:
        """The stated reason must fit the entry; a refusal raised after the
        signature check must carry a valid querier signature (or the
        operator could log refusals in a member's name)."""
        reason = q.reason
        if reason is None:
            raise _Bad("a refused query has no reason")
        if reason not in KNOWN_REASONS:
            raise _Bad(f"reason {reason!r} is not one the gateway gives")
        jobs: list[SignatureJob] = []
        cred = self._credential_for(q, body) if body is not None else None
        if reason in REASONS_AFTER_SIGNATURE:
            if cred is None:
                raise _Bad(f"reason {reason} comes after the signature check, but the request names no credential of {q.querier_id}")
            jobs.append(self._querier_job(q, cred, True))
        if reason == "bad_signature":
            if cred is None:
                raise _Bad(f"reason bad_signature does not fit: the request names no credential of {q.querier_id}")
            jobs.append(self._querier_job(q, cred, False))
            fits: bool | None = True
        else:
            fits = self._reason_fits(q, body, parse_reason, querier, cred)
        if fits is False:
            raise _Bad(f"reason {reason} does not fit the entry ({_REASON_RULES[reason]})")
        if fits is None:
            self.unverified[reason] += 1
        return jobs

    def _reason_fits(self, q: _Query, body: pb.QueryRequestBody | None, parse_reason: str | None,
                     querier: _Member | None, cred: _Credential | None) -> bool | None:
        """True: re-derived; False: contradicted; None: cannot be re-derived."""
        reason = q.reason
        is_member = querier is not None and querier.role == "member"
        if reason in ("wrong_role", "unknown_member"):
            return not is_member
        if reason in ("member_suspended", "member_revoked"):
            return querier is not None and reason.removeprefix("member_") in _during(querier.status, q.window_start, q.received_ms)
        if reason in PARSE_REASONS and parse_reason is not None:
            return parse_reason == reason
        if body is None:
            return False  # every other reason comes after the body parsed
        if reason == "malformed_request":
            if protocol.mode_name(body.mode) != q.kind:
                return True
            return None if q.kind == "precheck" else False  # a garbled Enc(x) needs the querier's key to show
        if reason == "querier_mismatch":
            return body.querier_id != q.querier_id
        if reason == "stale_credential":
            return querier is not None and any(
                c.serial != body.credential_serial for c in _during(querier.credentials, q.window_start, q.received_ms))
        if reason == "stale_timestamp":
            return abs(q.received_ms - body.timestamp_ms) > protocol.FRESHNESS_MS
        if reason == "foreign_key":
            return cred is not None and body.paillier_key_fingerprint != cred.paillier_fingerprint
        if reason == "quota_exceeded":
            quotas = _during(querier.quota, q.window_start, q.received_ms) if querier else {None}
            known = [x for x in quotas if x is not None]
            if known and querier.accepted_since(_day_start_ms(q.received_ms)) >= min(known):
                return True
            return None if None in quotas else False  # a quota the log never stated may have been lower
        if reason == "too_few_members":
            return len(q.asked) < q.k_min
        if reason == "too_few_answers":
            return len(q.asked) >= q.k_min > len(q.answered)
        if reason == "incomplete_precheck":
            return q.kind == "precheck" and q.k_min <= len(q.answered) < len(q.asked)
        return None  # unauthenticated, token_mismatch: nothing in the entry shows them

    def _answer_jobs(self, q: _Query, body: pb.QueryRequestBody) -> list[SignatureJob]:
        """Each recorded answer must be signed by its member's key of the
        time, over (query id, SHA-256 of the request body, SHA-256 of the ciphertext)."""
        if not q.answers:
            return []
        digest = signing.sha256(q.body_bytes)
        # Every message is (query id, request digest, ciphertext SHA-256), length-prefixed; only the last
        # 32 bytes differ between answers, so the official encoding is built once and its prefix reused.
        first = signing.MEMBER_ANSWER + signing.member_answer_message(body.query_id, digest, q.answers[0][1])
        prefix = first[: -len(q.answers[0][1])]
        jobs = []
        for member_id, ciphertext_sha256, signature in q.answers:
            member = self.members.get(member_id)
            if member is None or member.role != "member":
                raise _Bad(f"answer from {member_id}, which is not a member")
            jobs.append((q.seq, member.keys_since(q.window_start), prefix + ciphertext_sha256, signature, True, member.bad_answer))
        return jobs

    def _account(self, q: _Query, body: pb.QueryRequestBody | None, querier: _Member | None) -> None:
        """Counters, quota usage and the inquiry index, as the gateway keeps them."""
        if q.outcome == "refused":
            self.refused += 1
            self.refusals[q.reason or "?"] += 1
            return
        self.accepted += 1
        assert querier is not None and body is not None  # accepted entries passed _accepted
        day = _day_start_ms(q.received_ms)
        querier.accepted_by_day[day] = querier.accepted_by_day.get(day, 0) + 1
        self.tokens.setdefault(body.subject_token_sha256, []).append((q.received_ms, q.querier_id))


_REASON_RULES = {
    "wrong_role": "the querier is a registered member",
    "unknown_member": "the querier is a registered member",
    "member_suspended": "the querier was not suspended at the time",
    "member_revoked": "the querier was not revoked at the time",
    "malformed_request": "the request parses and its mode matches",
    "unknown_purpose": "the request does not fail for its purpose",
    "missing_consent": "the request does not fail for its consent",
    "querier_mismatch": "the request names the querier",
    "stale_credential": "the request names the querier's current credential",
    "stale_timestamp": "the request timestamp is within 5 minutes of receipt",
    "foreign_key": "the request names the querier's own Paillier key",
    "quota_exceeded": "the querier had not used its daily quota",
    "too_few_members": "enough members were asked",
    "too_few_answers": "enough members answered, or too few were asked",
    "incomplete_precheck": "it is not a precheck with enough but not all answers",
}
