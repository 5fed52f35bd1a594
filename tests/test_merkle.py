"""alliance.merkle against the shared RFC 6962 reference vectors, an independent
recursive transcription of RFC 9162 §2.1, and random trees."""
from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import time
from pathlib import Path

import pytest

from alliance.errors import CryptoError, InvalidInput
from alliance.merkle import (
    EMPTY_ROOT,
    MemoryNodeStore,
    ProofError,
    consistency_proof,
    inclusion_proof,
    inclusion_proofs,
    leaf_hash,
    node_hash,
    nodes_to_add,
    root_at,
    root_from_leaf_hashes,
    subtree_hash,
    verify_consistency,
    verify_inclusion,
)

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "rfc6962"
IN_CI = os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def _require_reference() -> None:
    if not REFERENCE.is_dir():
        message = (
            f"*** RFC 6962 REFERENCE VECTORS MISSING: {REFERENCE} does not exist. The proof verifier "
            "is NOT being checked against them. Put shared/ beside the repository. ***"
        )
        if IN_CI:
            pytest.fail(message + " (CI=true: failing instead of skipping)")
        pytest.skip(message)


def _vector_params(kind: str) -> list:
    files = sorted((REFERENCE / kind).rglob("*.json")) if REFERENCE.is_dir() else []
    if not files:
        return [pytest.param(None, id=f"{kind}-vectors-missing")]
    return [pytest.param(f, id=str(f.relative_to(REFERENCE))) for f in files]


def _b64(value: str) -> bytes:
    return base64.b64decode(value, validate=True)


def _load(path: Path | None) -> dict:
    if path is None:
        _require_reference()
        pytest.fail(f"no {REFERENCE}/*/*.json vectors found although the directory exists")
    return json.loads(path.read_text())


def test_reference_vectors_present():
    _require_reference()
    assert len(list((REFERENCE / "inclusion").rglob("*.json"))) > 0
    assert len(list((REFERENCE / "consistency").rglob("*.json"))) > 0
    assert (REFERENCE / "roots.json").is_file()


@pytest.mark.parametrize("path", _vector_params("inclusion"))
def test_inclusion_vector(path):
    v = _load(path)
    args = (_b64(v["leafHash"]), v["leafIdx"], v["treeSize"], [_b64(p) for p in v["proof"] or []], _b64(v["root"]))
    if v["wantErr"]:
        with pytest.raises(ProofError):
            verify_inclusion(*args)
    else:
        verify_inclusion(*args)


@pytest.mark.parametrize("path", _vector_params("consistency"))
def test_consistency_vector(path):
    v = _load(path)
    args = (v["size1"], v["size2"], [_b64(p) for p in v["proof"] or []], _b64(v["root1"]), _b64(v["root2"]))
    if v["wantErr"]:
        with pytest.raises(ProofError):
            verify_consistency(*args)
    else:
        verify_consistency(*args)


def _roots_json() -> dict:
    _require_reference()
    return json.loads((REFERENCE / "roots.json").read_text())


def test_roots_json_sizes():
    ref = _roots_json()
    leaves = [leaf_hash(bytes.fromhex(x)) for x in ref["leaf_inputs_hex"]]
    expected = ref["roots_hex_by_size"]
    assert len(expected) == len(leaves) + 1
    store = MemoryNodeStore()
    assert store.root() == EMPTY_ROOT
    for size, want in enumerate(expected):
        assert root_from_leaf_hashes(leaves[:size]).hex() == want
        assert _mth(leaves[:size]).hex() == want
        assert store.root().hex() == want
        if size < len(leaves):
            store.append(leaves[size])
    for size, want in enumerate(expected):
        assert store.root(size).hex() == want


def test_happy_path_vectors_match_our_proofs():
    """The happy-path probes are over the roots.json tree: our prover must
    produce exactly the proof each one carries."""
    ref = _roots_json()
    store = MemoryNodeStore()
    for x in ref["leaf_inputs_hex"]:
        store.append(leaf_hash(bytes.fromhex(x)))
    checked = 0
    for path in sorted(REFERENCE.rglob("happy-path.json")):
        v = json.loads(path.read_text())
        want = [_b64(p) for p in v["proof"] or []]
        if "leafIdx" in v:
            assert store.inclusion_proof(v["leafIdx"], v["treeSize"]) == want, path
        else:
            assert store.consistency_proof(v["size1"], v["size2"]) == want, path
        checked += 1
    assert checked >= 2


# --- an independent, recursive transcription of RFC 9162 §2.1 ----------------


def _k(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def _mth(d: list[bytes]) -> bytes:
    if not d:
        return hashlib.sha256(b"").digest()
    if len(d) == 1:
        return d[0]
    k = _k(len(d))
    return hashlib.sha256(b"\x01" + _mth(d[:k]) + _mth(d[k:])).digest()


def _path(m: int, d: list[bytes]) -> list[bytes]:
    if len(d) == 1:
        return []
    k = _k(len(d))
    if m < k:
        return _path(m, d[:k]) + [_mth(d[k:])]
    return _path(m - k, d[k:]) + [_mth(d[:k])]


def _subproof(m: int, d: list[bytes], b: bool) -> list[bytes]:
    n = len(d)
    if m == n:
        return [] if b else [_mth(d)]
    k = _k(n)
    if m <= k:
        return _subproof(m, d[:k], b) + [_mth(d[k:])]
    return _subproof(m - k, d[k:], False) + [_mth(d[:k])]


def _leaves(n: int, seed: int = 0) -> list[bytes]:
    rng = random.Random(seed)
    return [leaf_hash(rng.randbytes(rng.randrange(0, 40))) for _ in range(n)]


def test_batched_inclusion_proofs_are_the_rfc_paths_with_fewer_reads():
    """A reconcile page proves hundreds of leaves of one tree at once; the
    batch must give each leaf exactly its RFC 9162 path, reading less."""
    leaves = _leaves(70, seed=3)
    store = MemoryNodeStore()
    for h in leaves:
        store.append(h)
    reads = [0]

    def counting(level: int, index: int) -> bytes:
        reads[0] += 1
        return store.get(level, index)

    for n in (1, 2, 5, 13, 64, 70):
        indices = list(range(n)) + [n - 1, 0]  # repeats too
        assert inclusion_proofs(indices, n, store.get) == [_path(i, leaves[:n]) for i in indices]
        reads[0] = 0
        inclusion_proofs(indices, n, counting)
        batched = reads[0]
        reads[0] = 0
        for i in indices:
            inclusion_proof(i, n, counting)
        assert batched <= reads[0] and (n < 5 or batched < reads[0] / 2), (n, batched, reads[0])
    with pytest.raises(InvalidInput):
        inclusion_proofs([3, 70], 70, store.get)


def test_hash_functions():
    assert EMPTY_ROOT == hashlib.sha256(b"").digest()
    assert leaf_hash(b"abc") == hashlib.sha256(b"\x00abc").digest()
    a, b = b"a" * 32, b"b" * 32
    assert node_hash(a, b) == hashlib.sha256(b"\x01" + a + b).digest()
    assert root_from_leaf_hashes([]) == EMPTY_ROOT
    assert root_from_leaf_hashes([a]) == a


def test_store_against_rfc_for_sizes_1_to_70():
    leaves = _leaves(70)
    store = MemoryNodeStore()
    roots = [EMPTY_ROOT]
    for h in leaves:
        store.append(h)
        roots.append(store.root())
    inclusions = consistencies = 0
    for n in range(1, 71):
        d = leaves[:n]
        assert roots[n] == root_from_leaf_hashes(d) == _mth(d) == store.root(n)
        for i in range(n):
            proof = store.inclusion_proof(i, n)
            assert proof == _path(i, d)
            verify_inclusion(d[i], i, n, proof, roots[n])
            inclusions += 1
        for m in range(1, n + 1):
            proof = store.consistency_proof(m, n)
            assert proof == (_subproof(m, d, True) if m < n else [])
            verify_consistency(m, n, proof, roots[m], roots[n])
            consistencies += 1
    assert inclusions == consistencies == 70 * 71 // 2


def test_every_single_bit_flip_or_wrong_parameter_is_caught():
    leaves = _leaves(24, seed=1)
    store = MemoryNodeStore()
    for h in leaves:
        store.append(h)
    for n in range(1, 25):
        root = store.root(n)
        for i in range(n):
            proof = store.inclusion_proof(i, n)
            for j in range(len(proof)):
                for bit in (0, 7 * 8 + 3, 255):
                    bad = list(proof)
                    bad[j] = _flip(bad[j], bit)
                    with pytest.raises(ProofError):
                        verify_inclusion(leaves[i], i, n, bad, root)
            with pytest.raises(ProofError):
                verify_inclusion(_flip(leaves[i], 0), i, n, proof, root)
            with pytest.raises(ProofError):
                verify_inclusion(leaves[i], i, n, proof, _flip(root, 100))
            with pytest.raises(ProofError):
                verify_inclusion(leaves[i], i, n, proof + [root], root)
            if proof:
                with pytest.raises(ProofError):
                    verify_inclusion(leaves[i], i, n, proof[:-1], root)
            for wrong_i in {i - 1, i + 1, i ^ 2} - {i}:
                if 0 <= wrong_i < n and leaves[wrong_i] != leaves[i]:
                    with pytest.raises(ProofError):
                        verify_inclusion(leaves[i], wrong_i, n, proof, root)
        for m in range(1, n):
            proof = store.consistency_proof(m, n)
            root1 = store.root(m)
            for j in range(len(proof)):
                bad = list(proof)
                bad[j] = _flip(bad[j], 9)
                with pytest.raises(ProofError):
                    verify_consistency(m, n, bad, root1, root)
            with pytest.raises(ProofError):
                verify_consistency(m, n, proof, _flip(root1, 1), root)
            with pytest.raises(ProofError):
                verify_consistency(m, n, proof, root1, _flip(root, 1))
            with pytest.raises(ProofError):
                verify_consistency(m, n, proof[:-1], root1, root)
            with pytest.raises(ProofError):
                verify_consistency(m, n, proof + [root], root1, root)


def _flip(h: bytes, bit: int) -> bytes:
    b = bytearray(h)
    b[bit // 8] ^= 1 << (bit % 8)
    return bytes(b)


def test_property_random_trees():
    rng = random.Random(20240611)
    for trial in range(40):
        n = rng.randrange(1, 3000)
        leaves = _leaves(n, seed=trial + 100)
        store = MemoryNodeStore()
        for h in leaves:
            store.append(h)
        root = store.root()
        assert root == root_from_leaf_hashes(leaves)
        for _ in range(20):
            i = rng.randrange(n)
            verify_inclusion(leaves[i], i, n, store.inclusion_proof(i), root)
            m = rng.randrange(1, n + 1)
            root1 = store.root(m)
            assert root1 == root_from_leaf_hashes(leaves[:m])
            verify_consistency(m, n, store.consistency_proof(m), root1, root)
            # A tree that differs in one leaf before m is not consistent, and
            # a proof for leaf i does not prove a different leaf.
            j = rng.randrange(m)
            forged = leaves[:m]
            forged[j] = leaf_hash(b"forged")
            with pytest.raises(ProofError):
                verify_consistency(m, n, store.consistency_proof(m), root_from_leaf_hashes(forged), root)
            with pytest.raises(ProofError):
                verify_inclusion(leaf_hash(b"forged"), i, n, store.inclusion_proof(i), root)


class _CountingGet:
    def __init__(self, store: MemoryNodeStore) -> None:
        self.store, self.calls = store, 0

    def __call__(self, level: int, index: int) -> bytes:
        self.calls += 1
        return self.store.get(level, index)


def test_logarithmic_node_access():
    n = 5000
    leaves = _leaves(n, seed=7)
    store = MemoryNodeStore()
    log_n = n.bit_length()
    for size, h in enumerate(leaves):
        get = _CountingGet(store)
        records = nodes_to_add(size, h, get)
        assert get.calls <= log_n and len(records) == get.calls + 1
        assert records[0] == (0, size, h)
        store.append(h)
    rng = random.Random(3)
    for _ in range(200):
        size = rng.randrange(1, n + 1)
        get = _CountingGet(store)
        assert root_at(size, get) == root_from_leaf_hashes(leaves[:size])
        assert get.calls == bin(size).count("1")
        get = _CountingGet(store)
        inclusion_proof(rng.randrange(size), size, get)
        assert get.calls <= log_n * log_n
        get = _CountingGet(store)
        consistency_proof(rng.randrange(1, size + 1), size, get)
        assert get.calls <= log_n * log_n


def test_nodes_to_add_records_exactly_the_perfect_subtrees():
    leaves = _leaves(33, seed=5)
    nodes: dict[tuple[int, int], bytes] = {}
    for size, h in enumerate(leaves):
        for level, index, value in nodes_to_add(size, h, lambda lv, ix: nodes[(lv, ix)]):
            assert (level, index) not in nodes  # append-only: nothing is rewritten
            nodes[(level, index)] = value
    for (level, index), value in nodes.items():
        span = 1 << level
        assert value == _mth(leaves[index * span : (index + 1) * span])
    assert len(nodes) == sum(33 >> level for level in range(6))


def test_subtree_hash_on_rfc_ranges_and_refusals():
    leaves = _leaves(13, seed=9)
    store = MemoryNodeStore()
    for h in leaves:
        store.append(h)
    for start, end in [(0, 13), (8, 13), (12, 13), (8, 12), (0, 8), (4, 6), (6, 7), (0, 1)]:
        assert subtree_hash(start, end, store.get) == _mth(leaves[start:end])
    for start, end in [(1, 3), (2, 5), (3, 3), (5, 4), (-1, 0), (4, 9)]:
        with pytest.raises(InvalidInput):
            subtree_hash(start, end, store.get)


def test_prover_refuses_bad_arguments():
    store = MemoryNodeStore()
    for h in _leaves(5):
        store.append(h)
    for args in [(5, 5), (-1, 5), (0, 0)]:
        with pytest.raises(InvalidInput):
            inclusion_proof(*args, store.get)
    for args in [(0, 5), (4, 3), (-1, 2)]:
        with pytest.raises(InvalidInput):
            consistency_proof(*args, store.get)
    with pytest.raises(InvalidInput):
        store.root(6)
    with pytest.raises(InvalidInput):
        store.append(b"short")
    assert consistency_proof(5, 5, store.get) == []


def test_verifier_refusals_are_typed_and_specific():
    h = leaf_hash(b"x")
    assert issubclass(ProofError, CryptoError)
    with pytest.raises(ProofError, match="index is not below the tree size"):
        verify_inclusion(h, 0, 0, [], EMPTY_ROOT)
    with pytest.raises(ProofError, match="not a 32-byte hash"):
        verify_inclusion(h, 0, 2, [b"\x00" * 31], h)
    with pytest.raises(ProofError, match="too many"):
        verify_inclusion(h, 0, 1, [h], h)
    with pytest.raises(ProofError, match="too few"):
        verify_inclusion(h, 0, 2, [], h)
    with pytest.raises(ProofError, match="first tree is empty"):
        verify_consistency(0, 0, [], EMPTY_ROOT, EMPTY_ROOT)
    with pytest.raises(ProofError, match="larger"):
        verify_consistency(2, 1, [], h, h)
    with pytest.raises(ProofError, match="empty proof"):
        verify_consistency(1, 2, [], h, h)


def test_root_from_100k_leaf_hashes_is_fast():
    n = 100_000
    leaves = [hashlib.sha256(i.to_bytes(8, "big")).digest() for i in range(n)]
    t0 = time.perf_counter()
    root = root_from_leaf_hashes(leaves)
    elapsed = time.perf_counter() - t0
    assert elapsed < 5, f"root_from_leaf_hashes took {elapsed:.2f}s for {n} leaves"
    store = MemoryNodeStore()
    for h in leaves:
        store.append(h)
    assert store.root() == root
    # Spot-check against the recursive definition on a prefix of awkward size.
    assert root_from_leaf_hashes(leaves[:1537]) == _mth(leaves[:1537]) == store.root(1537)
