"""alliance.paillier against independent computations: python-paillier's own
private key built from the same p, q, and the Paillier equations written out
with plain Python ints (pow, %, hashlib)."""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import secrets
import time

import pytest
from phe import paillier as phe

from alliance import paillier as P
from alliance.errors import CryptoError, SlotOverflow

CAP_PERSON_FEN = 1_000_000 * 100
CAP_ORG_FEN = 5_000_000 * 100
MAX_AMOUNT_FEN = 10**12 * 100          # SPEC §4: A ≤ 10^12 yuan


@pytest.fixture(scope="module")
def keys() -> tuple[P.PaillierPublicKey, P.PaillierPrivateKey]:
    return P.generate_keypair(2048)


@pytest.fixture(scope="module")
def pk(keys):
    return keys[0]


@pytest.fixture(scope="module")
def sk(keys):
    return keys[1]


@pytest.fixture(scope="module")
def ref_sk(sk) -> phe.PaillierPrivateKey:
    """The reference decryptor: python-paillier's own code, same p and q."""
    return phe.PaillierPrivateKey(phe.PaillierPublicKey(sk.p * sk.q), sk.p, sk.q)


def ref_encrypt(n: int, m: int, r: int) -> int:
    """Textbook Enc(m; r) = g^m · r^n mod n² with g = n + 1."""
    n2 = n * n
    return pow(n + 1, m, n2) * pow(r, n, n2) % n2


def recover_r(sk: P.PaillierPrivateKey, mask: int) -> int:
    """For mask = r^n mod n²: mask ≡ r^n (mod n), and n is invertible mod φ(n),
    so r = (mask mod n)^(n⁻¹ mod φ) mod n."""
    n, phi = sk.p * sk.q, (sk.p - 1) * (sk.q - 1)
    return pow(mask % n, pow(n, -1, phi), n)


# ------------------------------------------------------------ keys

def test_generated_key_shape(pk, sk):
    assert pk.n.bit_length() == 2048 and pk.n == sk.p * sk.q and sk.p != sk.q
    assert pk.byte_length == 256 and pk.ciphertext_width == 512
    assert pk.n_square == pk.n**2


def test_key_below_2048_bits_refused():
    with pytest.raises(CryptoError, match="2048"):
        P.generate_keypair(1024)
    small = phe.generate_paillier_keypair(n_length=1024)[0].n
    with pytest.raises(CryptoError, match="2048"):
        P.PaillierPublicKey.from_bytes(small.to_bytes(128, "big"))
    with pytest.raises(CryptoError):
        P.PaillierPublicKey(small)


def test_public_key_bytes_round_trip_and_fingerprint(pk):
    data = pk.to_bytes()
    assert len(data) == 256 and data[0] != 0 and int.from_bytes(data, "big") == pk.n
    assert P.PaillierPublicKey.from_bytes(data) == pk
    assert pk.fingerprint() == hashlib.sha256(b"alliance/v1/paillier-n\x00" + data).digest()


@pytest.mark.parametrize("bad", ["even", "leading_zero", "too_big", "empty"])
def test_public_key_from_bytes_rejects(pk, bad):
    data = {
        "even": (pk.n + 1).to_bytes(256, "big"),
        "leading_zero": b"\x00" + pk.to_bytes(),
        "too_big": ((1 << 8200) + 1).to_bytes(1026, "big"),
        "empty": b"",
    }[bad]
    with pytest.raises(CryptoError):
        P.PaillierPublicKey.from_bytes(data)


def test_private_key_json_round_trip(pk, sk):
    restored = P.PaillierPrivateKey.from_json_bytes(sk.to_json_bytes())
    assert restored.public_key == pk and (restored.p, restored.q) == (sk.p, sk.q)
    doc = json.loads(sk.to_json_bytes())
    assert int(doc["p"], 16) == sk.p and int(doc["q"], 16) == sk.q and int(doc["n"], 16) == pk.n


def test_private_key_json_rejects_mismatch(sk):
    doc = json.loads(sk.to_json_bytes())
    doc["p"] = format(sk.p + 2, "x")
    with pytest.raises(CryptoError, match="p·q"):
        P.PaillierPrivateKey.from_json_bytes(json.dumps(doc).encode())
    with pytest.raises(CryptoError):
        P.PaillierPrivateKey.from_json_bytes(b"{not json")
    with pytest.raises(CryptoError):
        P.PaillierPrivateKey(sk.p, sk.q + 2, P.PaillierPublicKey(sk.p * sk.q))


def test_private_key_repr_hides_secrets(sk):
    text = repr(sk) + str(sk)
    for secret in (sk.p, sk.q):
        assert str(secret) not in text and format(secret, "x") not in text
        assert str(secret)[:12] not in text and format(secret, "x")[:12] not in text


# ------------------------------------------------------------ encryption and decryption

def test_encrypt_is_the_paillier_equation(pk):
    r = secrets.randbelow(pk.n - 1) + 1
    mask = pow(r, pk.n, pk.n_square)
    m = secrets.randbelow(pk.n)
    assert P.encrypt(pk, m, mask) == ref_encrypt(pk.n, m, r)


def test_round_trips_against_reference(pk, sk, ref_sk):
    ref_pk = ref_sk.public_key
    for m in (0, 1, 2**64 - 1, P.pack([2**64 - 1] * 25), pk.n - 1, secrets.randbelow(pk.n)):
        c = P.encrypt(pk, m, P.fresh_mask(pk))
        assert ref_sk.raw_decrypt(c) == m            # ours → phe
        assert sk.decrypt(c) == m
        assert sk.decrypt(ref_pk.raw_encrypt(m)) == m  # phe → ours


def test_phe_conversions(pk, sk):
    ref_pk, ref_sk = P.to_phe_public_key(pk), P.to_phe_private_key(sk)
    assert ref_pk.n == pk.n and (ref_sk.p * ref_sk.q) == pk.n
    assert ref_sk.decrypt(ref_pk.encrypt(123_456_789)) == 123_456_789
    assert sk.decrypt(ref_pk.raw_encrypt(42)) == 42


def test_encrypt_rejects_out_of_range_and_non_ints(pk):
    mask = P.fresh_mask(pk)
    for m in (-1, pk.n):
        with pytest.raises(CryptoError):
            P.encrypt(pk, m, mask)
    for m in (True, 1.0, "1"):
        with pytest.raises(TypeError):
            P.encrypt(pk, m, mask)
    with pytest.raises(CryptoError):
        P.encrypt(pk, 1, 0)


def test_encrypt_signed(pk, sk, ref_sk):
    for v in (-1, -MAX_AMOUNT_FEN, 5, -(pk.n // 3) + 1):
        c = P.encrypt_signed(pk, v, P.fresh_mask(pk))
        assert ref_sk.raw_decrypt(c) == v % pk.n
        assert sk.decrypt_signed(c) == v
    with pytest.raises(CryptoError):
        P.encrypt_signed(pk, -(pk.n // 3 + 1), P.fresh_mask(pk))


def test_decrypt_rejects_invalid_ciphertexts(sk):
    n = sk.public_key.n
    for c in (0, n * n, sk.p):
        with pytest.raises(CryptoError):
            sk.decrypt(c)


# ------------------------------------------------------------ wire format

def test_fixed_width_regardless_of_value(pk, sk):
    small = 1                                   # Enc(0; r = 1): the smallest valid ciphertext
    big = P.encrypt(pk, pk.n - 1, P.fresh_mask(pk))
    zero = P.encrypt(pk, 0, P.fresh_mask(pk))
    for c in (small, big, zero):
        data = P.encode_ciphertext(pk, c)
        assert len(data) == pk.ciphertext_width == 512
        assert P.decode_ciphertext(pk, data) == c
    assert sk.decrypt(P.decode_ciphertext(pk, P.encode_ciphertext(pk, big))) == pk.n - 1


def test_decode_rejects_malformed(pk, sk):
    good = P.encode_ciphertext(pk, P.encrypt(pk, 7, P.fresh_mask(pk)))
    width = pk.ciphertext_width
    bad = {
        "short": good[1:],
        "long": b"\x00" + good,
        "zero": bytes(width),
        "n_squared": pk.n_square.to_bytes(width, "big"),
        "above_n_squared": (pk.n_square + 5).to_bytes(width, "big"),
        "all_ones": b"\xff" * width,
        "shares_factor_p": sk.p.to_bytes(width, "big"),
        "multiple_of_n": (pk.n * 3).to_bytes(width, "big"),
    }
    for name, data in bad.items():
        with pytest.raises(CryptoError):
            P.decode_ciphertext(pk, data)
    with pytest.raises(TypeError):
        P.decode_ciphertext(pk, "00" * width)


# ------------------------------------------------------------ packing

def test_pack_layout():
    values = [1, 2**64 - 1, 0, 12345]
    expected = sum(v << (80 * i) for i, v in enumerate(values))
    assert P.pack(values) == expected
    assert P.unpack(expected, 4, 1) == values
    assert P.pack([]) == 0 and P.unpack(0, 0, 1) == []


def test_pack_refuses_out_of_range_figures():
    with pytest.raises(SlotOverflow, match="slot 2"):
        P.pack([0, 1, 2**64])
    with pytest.raises(SlotOverflow, match="slot 0"):
        P.pack([-1])
    for bad in (True, 1.5, "3"):
        with pytest.raises(TypeError):
            P.pack([bad])


def test_homomorphic_sum_of_packed_vectors(pk, sk, ref_sk):
    slots, members = P.max_slots(pk), 5
    assert slots == 25
    vectors = [[secrets.randbelow(2**64) for _ in range(slots)] for _ in range(members)]
    vectors[0][0] = vectors[1][0] = vectors[2][0] = 2**64 - 1     # worst case in a slot
    vectors[3] = [0] * slots                                       # "knows nothing": Enc(zeros)
    expected = [sum(column) for column in zip(*vectors)]
    ciphertexts = [P.encrypt(pk, P.pack(v), P.fresh_mask(pk)) for v in vectors]
    total = P.add(pk, ciphertexts)
    m = ref_sk.raw_decrypt(total)
    assert m == sum(s << (80 * i) for i, s in enumerate(expected))
    assert P.unpack(sk.decrypt(total), slots, members) == expected


def test_max_summands_never_carry(pk, sk):
    """2^16 members all at 2^64 − 1 in every slot: c^(2^16) = Enc(2^16 · m)."""
    slots = P.max_slots(pk)
    c = P.encrypt(pk, P.pack([2**64 - 1] * slots), P.fresh_mask(pk))
    total = P.scalar_mul(pk, c, P.MAX_SUMMANDS)
    assert P.unpack(sk.decrypt(total), slots, P.MAX_SUMMANDS) == [P.MAX_SUMMANDS * (2**64 - 1)] * slots


def test_unpack_detects_a_real_carry(pk, sk):
    """Two answers that bypassed pack() with slot 0 full: the sum carries into
    slot 1 and slot 0 exceeds what 2 figures can sum to."""
    full = (1 << 80) - 1
    cs = [P.encrypt(pk, full, P.fresh_mask(pk)) for _ in range(2)]
    m = sk.decrypt(P.add(pk, cs))
    assert m == 2 * full and (m >> 80) == 1          # the carry really happened
    with pytest.raises(SlotOverflow, match="slot 0"):
        P.unpack(m, 2, 2)
    with pytest.raises(SlotOverflow, match="above slot 0"):
        P.unpack(m, 1, 2)


def test_unpack_crafted_overflows():
    bound = 3 * (2**64 - 1)
    assert P.unpack(bound << 80, 2, 3) == [0, bound]
    with pytest.raises(SlotOverflow, match=r"slot 1 \(active_loans\)"):
        P.unpack((bound + 1) << 80, 2, 3, names=["lenders", "active_loans"])
    with pytest.raises(SlotOverflow, match="above slot 2"):
        P.unpack(1 << 240, 3, 3)
    with pytest.raises(SlotOverflow):
        P.unpack(-1, 1, 1)
    for summands in (0, P.MAX_SUMMANDS + 1):
        with pytest.raises(SlotOverflow):
            P.unpack(0, 1, summands)
    with pytest.raises(SlotOverflow, match="slot 0"):
        P.unpack(2**64, 1, 1)                         # one summand cannot reach 2^64


# ------------------------------------------------------------ homomorphic operations

def test_add_sub_scalar_mul(pk, ref_sk):
    a, b = 10**15, 987_654_321
    ca, cb = (P.encrypt(pk, v, P.fresh_mask(pk)) for v in (a, b))
    assert ref_sk.raw_decrypt(P.add(pk, [ca, cb])) == a + b
    assert P.add(pk, [ca, cb]) == ca * cb % pk.n_square
    assert ref_sk.raw_decrypt(P.sub(pk, ca, cb)) == a - b
    assert ref_sk.raw_decrypt(P.sub(pk, cb, ca)) == (b - a) % pk.n
    assert ref_sk.raw_decrypt(P.scalar_mul(pk, cb, 12345)) == 12345 * b
    assert ref_sk.raw_decrypt(P.scalar_mul(pk, cb, -1)) == (-b) % pk.n
    with pytest.raises(ValueError):
        P.add(pk, [])


# ------------------------------------------------------------ masks

def test_fresh_mask_is_an_nth_residue(pk, sk, ref_sk):
    mask = P.fresh_mask(pk)
    assert ref_sk.raw_decrypt(mask) == 0                         # Enc(0; r)
    assert pow(recover_r(sk, mask), pk.n, pk.n_square) == mask   # mask == r^n


def test_fresh_mask_uses_the_given_rng(pk):
    class Fixed:
        def randbelow(self, bound):
            return 41                                             # r = 42

    assert P.fresh_mask(pk, Fixed()) == pow(42, pk.n, pk.n_square)


def test_mask_pool_never_repeats_and_masks_are_valid(pk, sk, ref_sk):
    pool = P.MaskPool(pk, target=4)
    try:
        assert pool.wait_filled(60)
        masks = [pool.take() for _ in range(24)]           # drains → inline ones too
        assert pool.misses > 0
        assert len(set(masks)) == len(masks)
        for i, mask in enumerate(masks):
            assert 0 < mask < pk.n_square
            assert ref_sk.raw_decrypt(mask) == 0
            assert pow(recover_r(sk, mask), pk.n, pk.n_square) == mask
            assert sk.decrypt(P.encrypt(pk, i * 1000 + 7, mask)) == i * 1000 + 7
    finally:
        pool.close()


def test_mask_pool_precomputes_in_background(pk):
    pool = P.MaskPool(pk, target=3)
    try:
        assert pool.wait_filled(60) and pool.size == 3
        [pool.take() for _ in range(3)]
        assert pool.misses == 0                              # all three were precomputed
        assert pool.wait_filled(60)                          # and it refills itself
    finally:
        pool.close()
    assert pool.size == 0 and pool.closed
    assert 0 < pool.take() < pk.n_square                     # closed: inline, never fails


def test_target_zero_computes_inline(pk, ref_sk):
    pool = P.MaskPool(pk, target=0)
    masks = {pool.take() for _ in range(3)}
    assert len(masks) == 3 and pool.size == 0 and pool.misses == 3
    assert all(ref_sk.raw_decrypt(m) == 0 for m in masks)


def test_mask_pool_is_not_picklable(pk):
    pool = P.MaskPool(pk, target=0)
    with pytest.raises(TypeError):
        pickle.dumps(pool)
    with pytest.raises(TypeError):
        pickle.dumps(P.MaskPools())


def test_forked_child_pool_is_empty(pk, ref_sk):
    pool = P.MaskPool(pk, target=4)
    try:
        assert pool.wait_filled(60)
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:                                         # child: report and leave at once
            try:
                os.close(read_fd)
                size_after_fork = pool.size
                mask = pool.take()
                deadline = time.monotonic() + 60
                while pool.size < pool.target and time.monotonic() < deadline:
                    time.sleep(0.01)
                report = {"size": size_after_fork, "misses": pool.misses, "mask": mask, "refilled": pool.size}
                os.write(write_fd, json.dumps(report).encode())
            finally:
                os._exit(0)
        os.close(write_fd)
        chunks = []
        while chunk := os.read(read_fd, 65536):
            chunks.append(chunk)
        os.close(read_fd)
        os.waitpid(pid, 0)
        report = json.loads(b"".join(chunks))
        assert report["size"] == 0                           # nothing inherited
        assert report["misses"] == 1                         # the child's first take was inline
        assert report["refilled"] == 4                       # refiller restarted lazily in the child
        parent_masks = {pool.take() for _ in range(4)}
        assert pool.misses == 0                              # the parent kept its own
        assert report["mask"] not in parent_masks
        assert ref_sk.raw_decrypt(report["mask"]) == 0
    finally:
        pool.close()


def test_mask_pools_lru(pk):
    other = [P.generate_keypair(2048)[0] for _ in range(2)]
    pools = P.MaskPools(target=0, max_keys=2)
    first = pools.for_key(pk)
    assert pools.for_key(P.PaillierPublicKey(pk.n)) is first   # keyed by n
    second = pools.for_key(other[0])
    assert pools.for_key(pk) is first                          # pk is now most recent
    pools.for_key(other[1])                                    # evicts other[0]
    assert len(pools) == 2 and other[0] not in pools and pk in pools
    assert second.closed and not first.closed
    pools.close()
    assert first.closed and len(pools) == 0


# ------------------------------------------------------------ cap check

class RecordingRng:
    """secrets.randbelow, remembering every draw, so the test can recompute
    r·(x − Σ) + r′ itself."""

    def __init__(self, fixed=None):
        self.draws: list[tuple[int, int]] = []
        self.fixed = fixed

    def randbelow(self, bound):
        value = secrets.randbelow(bound) if self.fixed is None else self.fixed(bound)
        self.draws.append((bound, value))
        return value

    def r_and_r_prime(self):
        (_, k), (_, low), (_, r_prime) = self.draws
        bits = 64 + k
        return (1 << (bits - 1)) | low, r_prime


def run_precheck(pk, sk, x, balances, rng=None):
    rng = rng or RecordingRng()
    enc_x = P.encrypt_signed(pk, x, P.fresh_mask(pk))
    enc_balances = [P.encrypt(pk, b, P.fresh_mask(pk)) for b in balances]
    c = P.blind_precheck(pk, enc_x, enc_balances, P.fresh_mask(pk), rng=rng)
    return c, rng


PRECHECK_CASES = [
    # (x, member balances): x = cap − A − own balance, in fen
    (CAP_PERSON_FEN, [CAP_PERSON_FEN]),                     # exactly at the cap → yes
    (CAP_PERSON_FEN, [CAP_PERSON_FEN - 1]),                 # one fen of headroom → yes
    (CAP_PERSON_FEN, [CAP_PERSON_FEN + 1]),                 # one fen over → no
    (CAP_ORG_FEN, [CAP_ORG_FEN // 2, CAP_ORG_FEN // 2]),    # two members, exactly zero → yes
    (CAP_ORG_FEN, [CAP_ORG_FEN // 2, CAP_ORG_FEN // 2 + 1]),
    (CAP_PERSON_FEN - MAX_AMOUNT_FEN, [0, 0]),              # A = 10^12 yuan → no
    (CAP_PERSON_FEN - MAX_AMOUNT_FEN, [1]),
    (MAX_AMOUNT_FEN, [MAX_AMOUNT_FEN]),                     # 10^14 fen either way of zero
    (MAX_AMOUNT_FEN, [MAX_AMOUNT_FEN - 1]),
    (MAX_AMOUNT_FEN, [MAX_AMOUNT_FEN + 1]),
    (-MAX_AMOUNT_FEN, [0]),
    (0, [0, 0, 0]),                                         # zero with nobody owing → yes
    (-1, [0]),                                              # one fen below zero → no
    (0, [2**64 - 1] * 3),                                   # largest member figures → no
    (3 * (2**64 - 1), [2**64 - 1] * 3),                     # … exactly matched → yes
]


@pytest.mark.parametrize("x, balances", PRECHECK_CASES)
def test_precheck_yes_no(pk, sk, ref_sk, x, balances):
    c, rng = run_precheck(pk, sk, x, balances)
    difference = x - sum(balances)
    r, r_prime = rng.r_and_r_prime()
    assert 64 <= r.bit_length() <= 128 and 0 <= r_prime < r
    assert ref_sk.raw_decrypt(c) == (r * difference + r_prime) % pk.n   # exactly what SPEC §4 says
    assert P.precheck_within_cap(sk, c) is (difference >= 0)


@pytest.mark.parametrize("extreme", [lambda bound: bound - 1, lambda bound: 0], ids=["max", "min"])
@pytest.mark.parametrize("difference", [-1, 0, 1, -MAX_AMOUNT_FEN, MAX_AMOUNT_FEN])
def test_precheck_boundaries_with_extreme_blinding(pk, sk, difference, extreme):
    """r = 2^128 − 1 with r′ = r − 1, and r = 2^63 with r′ = 0: the answer
    depends only on the sign of x − Σ."""
    base = CAP_PERSON_FEN
    c, rng = run_precheck(pk, sk, base + difference, [base], RecordingRng(extreme))
    r, r_prime = rng.r_and_r_prime()
    assert r in (2**128 - 1, 2**63)
    assert P.precheck_within_cap(sk, c) is (difference >= 0)


def test_blinding_distribution():
    rng = RecordingRng()
    lengths = set()
    for _ in range(3000):
        r, r_prime = P._draw_blinding(rng)
        assert 0 <= r_prime < r
        lengths.add(r.bit_length())
    assert lengths == set(range(64, 129))


def test_precheck_result_is_fresh_and_needs_balances(pk, sk):
    enc_x = P.encrypt(pk, 5, P.fresh_mask(pk))
    enc_b = [P.encrypt(pk, 3, P.fresh_mask(pk))]
    one = P.blind_precheck(pk, enc_x, enc_b, P.fresh_mask(pk))
    two = P.blind_precheck(pk, enc_x, enc_b, P.fresh_mask(pk))
    assert one != two and one != P.sub(pk, enc_x, enc_b[0])
    assert P.precheck_within_cap(sk, one) and P.precheck_within_cap(sk, two)
    with pytest.raises(ValueError):
        P.blind_precheck(pk, enc_x, [], P.fresh_mask(pk))


def test_mask_pool_concurrent_takes_never_repeat(pk):
    import threading

    pool = P.MaskPool(pk, target=6)
    taken: list[list[int]] = [[] for _ in range(4)]

    def worker(out: list[int]) -> None:
        for _ in range(8):
            out.append(pool.take())

    try:
        threads = [threading.Thread(target=worker, args=(out,)) for out in taken]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        masks = [m for out in taken for m in out]
        assert len(masks) == 32 and len(set(masks)) == 32
    finally:
        pool.close()
