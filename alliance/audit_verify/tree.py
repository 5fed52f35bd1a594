"""The auditor's rebuilt Merkle tree and the history checks on it (SPEC §6).

Structure: the RFC 6962 tree rebuilt from the served bytes must have the
signed root. When it does not, the first differing leaf is found by binary
search over prefix sizes m: the prefix of our rebuilt tree is genuine iff the
gateway can prove (consistency proof m → n) that the signed tree starts with
exactly those m leaves. Prefix agreement is monotone (a Merkle root binds all
its leaves), so ~log2(n) proofs name the entry that was changed, deleted,
inserted or reordered.

History: the signed checkpoint must be consistent with every checkpoint the
auditor kept: a smaller one is a rollback (the first entry no longer covered
is named), a same-size or earlier one with another root is a fork. With the
leaf hashes of the last verified tree the exact rewritten entry is named;
otherwise the first entry not covered by a still-consistent checkpoint."""
from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Sequence

from alliance import merkle
from alliance.checkpoint import Checkpoint
from alliance.errors import AllianceError, CryptoError, Unreachable

ProofSource = Callable[[int, int], Sequence[bytes]]
"""``consistency_proof(m, n)``: the gateway's RFC 9162 proof from size m to n."""


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


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
        return first, (f"fork: a checkpoint kept earlier ({same}, root {b64(old.root_hash)}) is not consistent with the "
                       f"gateway's signed checkpoint (size {new.size}, root {b64(new.root_hash)}); the log was rewritten {where}")
    return None


def _rewritten_at(trusted: Tree | None, new: Checkpoint, proofs: ProofSource | None) -> int | None:
    """The first entry of the last verified tree that ``new`` no longer
    contains (None: none, or no way to tell)."""
    if trusted is None or not trusted.size or proofs is None:
        return None
    return first_divergence(trusted, new.size, new.root_hash, proofs)


def damaged_entry(tree: Tree, signed: Checkpoint, proofs: ProofSource | None, trusted: Tree | None) -> int | None:
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


def trusted_tree(packed: bytes | None) -> Tree | None:
    if not packed:
        return None
    try:
        return Tree.from_packed(packed)
    except CryptoError:
        return None
