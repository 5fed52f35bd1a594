"""RFC 6962 / RFC 9162 §2.1 Merkle tree for the audit log (SPEC §6).

Everything here is a small pure function over bytes and integers:

* hashing (RFC 9162 §2.1.1): ``leaf_hash``, ``node_hash``, ``EMPTY_ROOT`` and
  ``root_from_leaf_hashes`` (MTH, for verifiers rebuilding a whole tree);
* verification (RFC 9162 §2.1.3.2 and §2.1.4.2): ``verify_inclusion`` and
  ``verify_consistency``, raising ``ProofError``;
* a persistent-tree core for a log whose node hashes live in a database. The
  store keeps the hash of every *perfect* subtree: ``(level k, index i)`` is the
  hash of leaves ``[i·2^k, (i+1)·2^k)``; level 0 holds the leaf hashes. These
  nodes never change once written, so appending is O(log n) inserts and the tree
  is never rebuilt. Every RFC subtree ``D[a:b]`` is a right fold of at most
  log2(n) stored perfect subtrees, which gives roots and proofs from a lookup
  callable ``get(level, index) -> bytes`` alone.

Argument errors of the prover functions (an index outside the tree, sizes out
of order) raise ``InvalidInput``: they come from whoever asked for the proof.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence

from alliance.errors import CryptoError, InvalidInput

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()  # MTH({}) = SHA-256() (RFC 9162 §2.1.1)

GetNode = Callable[[int, int], bytes]
"""``get(level, index)``: the stored hash of leaves [index·2^level, (index+1)·2^level)."""


class ProofError(CryptoError):
    """An inclusion or consistency proof failed to verify."""


# --- hashing (RFC 9162 §2.1.1) ----------------------------------------------


def leaf_hash(data: bytes) -> bytes:
    """MTH({d}) = SHA-256(0x00 || d)."""
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 || left || right)."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def root_from_leaf_hashes(hashes: Sequence[bytes]) -> bytes:
    """MTH over already-hashed leaves, level by level.

    Pairing neighbours and carrying an odd last node up unchanged gives the
    RFC's split-at-the-largest-power-of-two tree, because every left part of
    that split is perfect. Iterative: 100,000+ leaves are fine.
    """
    level = list(hashes)
    for i, h in enumerate(level):
        if not isinstance(h, bytes) or len(h) != HASH_SIZE:
            raise InvalidInput(f"leaf hash {i} is not {HASH_SIZE} bytes")
    if not level:
        return EMPTY_ROOT
    sha256 = hashlib.sha256
    while len(level) > 1:
        odd = level[-1] if len(level) % 2 else None
        level = [sha256(b"\x01" + level[i] + level[i + 1]).digest() for i in range(0, len(level) - 1, 2)]
        if odd is not None:
            level.append(odd)
    return level[0]


def _split(n: int) -> int:
    """k, the largest power of two smaller than n (n > 1), RFC 9162 §2.1.1."""
    return 1 << ((n - 1).bit_length() - 1)


# --- verification (RFC 9162 §2.1.3.2, §2.1.4.2) ------------------------------


def _check_hashes(proof: Sequence[bytes], what: str) -> None:
    for i, p in enumerate(proof):
        if not isinstance(p, (bytes, bytearray)) or len(p) != HASH_SIZE:
            raise ProofError(f"{what}: proof element {i} is not a {HASH_SIZE}-byte hash")


def verify_inclusion(leaf_hash: bytes, index: int, tree_size: int, proof: Sequence[bytes], root: bytes) -> None:
    """Raise ProofError unless ``proof`` shows leaf ``index`` of a tree of
    ``tree_size`` leaves has hash ``leaf_hash`` under ``root`` (RFC 9162 §2.1.3.2)."""
    what = f"inclusion of leaf {index} in tree of size {tree_size}"
    if not isinstance(index, int) or not isinstance(tree_size, int) or index < 0 or tree_size < 0:
        raise ProofError(f"{what}: index and size must be non-negative integers")
    if index >= tree_size:  # step 1
        raise ProofError(f"{what}: index is not below the tree size")
    if not isinstance(leaf_hash, (bytes, bytearray)) or len(leaf_hash) != HASH_SIZE:
        raise ProofError(f"{what}: leaf hash is not {HASH_SIZE} bytes")
    _check_hashes(proof, what)
    fn, sn = index, tree_size - 1  # step 2
    r = bytes(leaf_hash)  # step 3
    for p in proof:  # step 4
        if sn == 0:
            raise ProofError(f"{what}: proof has {len(proof)} elements, too many")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while fn and not fn & 1:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:  # step 5
        raise ProofError(f"{what}: proof has {len(proof)} elements, too few")
    if r != root:
        raise ProofError(f"{what}: computed root does not match the expected root")


def verify_consistency(size1: int, size2: int, proof: Sequence[bytes], root1: bytes, root2: bytes) -> None:
    """Raise ProofError unless ``proof`` shows the tree of ``size1`` leaves with
    ``root1`` is a prefix of the tree of ``size2`` leaves with ``root2``
    (RFC 9162 §2.1.4.2).

    RFC 9162 defines the proof for 0 < size1 < size2. Equal sizes need an empty
    proof and equal roots. size1 = 0 is refused: an empty tree is a prefix of
    every tree, so the caller has nothing to verify and must not ask.
    """
    what = f"consistency of tree size {size1} with tree size {size2}"
    if not isinstance(size1, int) or not isinstance(size2, int) or size1 < 0 or size2 < 0:
        raise ProofError(f"{what}: sizes must be non-negative integers")
    if size1 > size2:
        raise ProofError(f"{what}: the first tree is larger than the second")
    if size1 == 0:
        raise ProofError(f"{what}: the first tree is empty; there is nothing to prove")
    if size1 == size2:
        if len(proof):
            raise ProofError(f"{what}: sizes are equal, so the proof must be empty")
        if root1 != root2:
            raise ProofError(f"{what}: sizes are equal but the roots differ")
        return
    if not len(proof):  # step 1
        raise ProofError(f"{what}: empty proof")
    _check_hashes(proof, what)
    path = list(proof)
    if size1 & (size1 - 1) == 0:  # step 2: size1 is a power of two
        path.insert(0, bytes(root1))
    fn, sn = size1 - 1, size2 - 1  # step 3
    while fn & 1:  # step 4
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]  # step 5
    for c in path[1:]:  # step 6
        if sn == 0:
            raise ProofError(f"{what}: proof has {len(proof)} elements, too many")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while fn and not fn & 1:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:  # step 7
        raise ProofError(f"{what}: proof has {len(proof)} elements, too few")
    if fr != root1:
        raise ProofError(f"{what}: computed first root does not match root1")
    if sr != root2:
        raise ProofError(f"{what}: computed second root does not match root2")


# --- persistent tree of perfect subtrees -------------------------------------


def nodes_to_add(size: int, leaf_hash: bytes, get: GetNode) -> list[tuple[int, int, bytes]]:
    """The (level, index, hash) records to store when appending leaf number
    ``size`` to a tree of ``size`` leaves: the leaf, then every perfect subtree
    it completes (one get per completed subtree, at most log2(n))."""
    if size < 0:
        raise InvalidInput(f"tree size {size} is negative")
    if not isinstance(leaf_hash, (bytes, bytearray)) or len(leaf_hash) != HASH_SIZE:
        raise InvalidInput(f"leaf hash is not {HASH_SIZE} bytes")
    h, level, index = bytes(leaf_hash), 0, size
    records = [(0, index, h)]
    while index & 1:  # a right child completes its parent
        h = node_hash(get(level, index - 1), h)
        level, index = level + 1, index >> 1
        records.append((level, index, h))
    return records


def subtree_hash(start: int, end: int, get: GetNode) -> bytes:
    """MTH(D[start:end]) for a range of the RFC decomposition: non-empty, with
    ``start`` a multiple of the smallest power of two ≥ ``end - start``.

    Such a range is the right fold of the perfect subtrees given by the bits of
    its length, largest first: at most log2(n) gets.
    """
    n = end - start
    if start < 0 or n <= 0:
        raise InvalidInput(f"[{start}, {end}) is not a non-empty range of leaves")
    if start % (1 << (n - 1).bit_length()):
        raise InvalidInput(f"[{start}, {end}) is not a subtree of an RFC 6962 tree")
    parts = []
    offset = start
    for level in range(n.bit_length() - 1, -1, -1):
        if n >> level & 1:
            parts.append(get(level, offset >> level))
            offset += 1 << level
    h = parts.pop()
    while parts:
        h = node_hash(parts.pop(), h)
    return h


def root_at(size: int, get: GetNode) -> bytes:
    """MTH of the first ``size`` leaves (O(log n) gets)."""
    if size < 0:
        raise InvalidInput(f"tree size {size} is negative")
    return subtree_hash(0, size, get) if size else EMPTY_ROOT


def inclusion_proof(index: int, size: int, get: GetNode) -> list[bytes]:
    """PATH(index, D[0:size]) of RFC 9162 §2.1.3.1, leaf to root."""
    return _path(index, size, lambda start, end: subtree_hash(start, end, get))


def inclusion_proofs(indices: Iterable[int], size: int, get: GetNode) -> list[list[bytes]]:
    """PATH(index, D[0:size]) for several leaves of one tree. Their paths
    share the upper levels and the tree's ragged right edge, whose hashes
    take several gets each: every distinct subtree is hashed once."""
    memo: dict[tuple[int, int], bytes] = {}

    def subtree(start: int, end: int) -> bytes:
        h = memo.get((start, end))
        if h is None:
            h = memo[(start, end)] = subtree_hash(start, end, get)
        return h

    return [_path(index, size, subtree) for index in indices]


def _path(index: int, size: int, subtree: Callable[[int, int], bytes]) -> list[bytes]:
    if not 0 <= index < size:
        raise InvalidInput(f"leaf {index} is not in a tree of size {size}")
    siblings = []  # collected root to leaf
    start, end = 0, size
    while end - start > 1:
        k = _split(end - start)
        if index < start + k:
            siblings.append(subtree(start + k, end))
            end = start + k
        else:
            siblings.append(subtree(start, start + k))
            start += k
    return siblings[::-1]


def consistency_proof(size1: int, size2: int, get: GetNode) -> list[bytes]:
    """PROOF(size1, D[0:size2]) of RFC 9162 §2.1.4.1 (empty when the sizes are
    equal). 0 < size1 ≤ size2."""
    if not 0 < size1 <= size2:
        raise InvalidInput(f"no consistency proof from size {size1} to size {size2}: need 0 < size1 <= size2")
    siblings = []  # collected root to leaf; SUBPROOF appends them on the way out
    start, end, m, whole = 0, size2, size1, True
    while m != end - start:
        k = _split(end - start)
        if m <= k:
            siblings.append(subtree_hash(start + k, end, get))
            end = start + k
        else:
            siblings.append(subtree_hash(start, start + k, get))
            start, m, whole = start + k, m - k, False
    base = [] if whole else [subtree_hash(start, end, get)]
    return base + siblings[::-1]


class MemoryNodeStore:
    """Dict-backed node store for tests and tools."""

    def __init__(self) -> None:
        self._nodes: dict[tuple[int, int], bytes] = {}
        self._size = 0

    @property
    def size(self) -> int:
        return self._size

    def get(self, level: int, index: int) -> bytes:
        try:
            return self._nodes[(level, index)]
        except KeyError:
            raise InvalidInput(f"no stored node at level {level}, index {index} (tree size {self._size})") from None

    def append(self, leaf_hash: bytes) -> int:
        """Append a leaf hash; return its index."""
        for level, index, h in nodes_to_add(self._size, leaf_hash, self.get):
            self._nodes[(level, index)] = h
        self._size += 1
        return self._size - 1

    def root(self, size: int | None = None) -> bytes:
        return root_at(self._size if size is None else self._check(size), self.get)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        return inclusion_proof(index, self._size if size is None else self._check(size), self.get)

    def consistency_proof(self, size1: int, size2: int | None = None) -> list[bytes]:
        return consistency_proof(size1, self._size if size2 is None else self._check(size2), self.get)

    def _check(self, size: int) -> int:
        if not 0 <= size <= self._size:
            raise InvalidInput(f"tree size {size} is beyond the stored size {self._size}")
        return size
