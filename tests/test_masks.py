"""alliance.masks (SPEC §4, §8, issue 10): Damgård–Jurik–Nielsen short-exponent
masks from fixed-base tables, checked against values computed independently
with plain Python ints (pow, %) and the querier's private key; the node-wide
table budget (LRU, fallback to plain); fork hygiene; the member's own base."""
from __future__ import annotations

import inspect
import json
import os
import pickle
import secrets
import sys
import time

import gmpy2
import pytest

from alliance import masks as M
from alliance import paillier as P
from alliance.errors import CryptoError


from tests.test_paillier import keys, pk, ref_sk, sk  # noqa: E402,F401 - one key pair and reference decryptor per module


@pytest.fixture(scope="module")
def table(pk) -> M.DjnTable:
    return M.DjnTable(pk)


def fake_key() -> P.PaillierPublicKey:
    """A 2048-bit odd n that nobody can decrypt for: enough to exercise the
    budget (tables only need n), much cheaper than a key generation."""
    return P.PaillierPublicKey(secrets.randbits(2048) | (1 << 2047) | 1)


def nth_root(sk: P.PaillierPrivateKey, value: int) -> int:
    """For value = h^n mod n²: h mod n = (value mod n)^(n⁻¹ mod φ) mod n."""
    n, phi = sk.p * sk.q, (sk.p - 1) * (sk.q - 1)
    return pow(value % n, pow(n, -1, phi), n)


def legendre(a: int, p: int) -> int:
    return pow(a % p, (p - 1) // 2, p)


class Scripted:
    """randbelow returning scripted values (then secrets), remembering bounds."""

    def __init__(self, *values: int) -> None:
        self.values, self.bounds = list(values), []

    def randbelow(self, bound: int) -> int:
        self.bounds.append(bound)
        return self.values.pop(0) if self.values else secrets.randbelow(bound)


# ------------------------------------------------------------ the DJN form

def test_base_is_minus_x_squared_to_the_n_and_the_table_is_exact(pk) -> None:
    n, n2 = pk.n, pk.n * pk.n
    x = secrets.randbelow(n - 2) + 2
    table = M.DjnTable(pk, rng=Scripted(x - 1))              # _random_unit draws randbelow(n − 1) + 1
    assert int(table.h_s) == pow((-x * x) % n, n, n2)        # independently: (−x²)^n mod n²
    assert (table.exponent_bits, table.window_bits) == (448, 6)
    assert len(table._rows) == 75 and all(len(row) == 63 for row in table._rows)
    for a in [0, 1, 2, 63, 64, 65, (1 << 448) - 1, 1 << 447] + [secrets.randbits(448) for _ in range(20)]:
        assert int(table.power(a)) == pow(int(table.h_s), a, n2)
    with pytest.raises(ValueError):
        table.power(1 << 448)


def test_mask_exponent_is_uniform_448_bits_never_zero(pk, table) -> None:
    rng = Scripted(0, 12345)
    assert int(table.mask(rng)) == pow(int(table.h_s), 1, pk.n_square)          # a = 0 + 1
    assert int(table.mask(rng)) == pow(int(table.h_s), 12346, pk.n_square)
    assert rng.bounds == [(1 << 448) - 1] * 2                                     # a ∈ [1, 2^448)
    assert M.djn_exponent_bits(2048) == 448 and M.djn_exponent_bits(3072) == 512 and M.djn_exponent_bits(4096) == 768
    with pytest.raises(CryptoError):
        M.DjnTable(pk, exponent_bits=256)                                         # shorter than 4λ is refused
    longer = M.DjnTable(pk, exponent_bits=1024)                                   # longer is allowed (HEU's k/2)
    a = secrets.randbits(1024)
    assert int(longer.power(a)) == pow(int(longer.h_s), a, pk.n_square)


def test_djn_mask_is_an_encryption_of_zero_and_masks_never_repeat(pk, sk, ref_sk, table) -> None:
    masks = [int(table.mask()) for _ in range(200)]
    assert len(set(masks)) == 200 and 1 not in masks
    for mask in masks[:20]:
        assert sk.decrypt(mask) == 0 and ref_sk.raw_decrypt(mask) == 0
        assert pow(nth_root(sk, mask), pk.n, pk.n_square) == mask                 # an n-th residue


def test_homomorphic_sums_with_djn_masks_decrypt_exactly(pk, sk, ref_sk) -> None:
    tables = [M.DjnTable(pk) for _ in range(3)]                                    # three members, own bases
    vectors = [[secrets.randbelow(P.FIGURE_BOUND) for _ in range(20)] for _ in range(6)]
    cts = [P.encrypt(pk, P.pack(v), int(tables[i % 3].mask()) if i < 5 else P.fresh_mask(pk))
           for i, v in enumerate(vectors)]
    total = P.add(pk, cts)
    expected = [sum(col) for col in zip(*vectors)]
    assert P.unpack(sk.decrypt(total), 20, 6) == expected
    assert ref_sk.raw_decrypt(total) == sum(v << (80 * i) for i, v in enumerate(expected))
    c = P.encrypt_signed(pk, -42, int(tables[0].mask()))
    assert sk.decrypt_signed(c) == -42


def test_the_member_draws_its_own_base(pk, sk) -> None:
    params = set(inspect.signature(M.DjnTable).parameters)
    assert params == {"pk", "exponent_bits", "window_bits", "rng"}               # no way to pass a base or x in
    bases = {int(M.DjnTable(pk).h_s) for _ in range(4)}
    assert len(bases) == 4                                                          # each table its own x
    n = pk.n
    for h_s in bases:
        h = nth_root(sk, h_s)
        assert h not in (1, n - 1) and h * h % n != 1                               # not degenerate
        # h = −x²: −h is a square mod p and mod q (checked with the factors).
        assert legendre(-h, sk.p) == 1 and legendre(-h, sk.q) == 1


def test_tables_and_pools_never_pickle(pk, table) -> None:
    with pytest.raises(TypeError):
        pickle.dumps(table)
    with pytest.raises(TypeError):
        pickle.dumps(M.MaskPools())


# ------------------------------------------------------------ pools and the budget

def test_warm_builds_the_table_and_fills_before_the_first_take(pk, sk) -> None:
    pools = M.MaskPools(target=4)
    try:
        pool = pools.warm(pk)
        deadline = time.monotonic() + 60
        while (pool.mode != "djn" or pool.size < 4) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert pool.mode == "djn" and pool.size == 4 and pool.made["djn"] >= 4 and pool.made["plain"] == 0
        taken = [pool.take() for _ in range(4)]
        assert pool.misses == 0 and len(set(taken)) == 4
        assert all(sk.decrypt(m) == 0 for m in taken)
        assert pools.table_bytes == pool.table.nbytes
    finally:
        pools.close()
    assert pools.table_bytes == 0


def test_plain_mode_keeps_the_rn_path(pk, sk) -> None:
    pools = M.MaskPools(target=0, mode="plain")
    pool = pools.for_key(pk)
    assert not pool.ensure_table() and pool.mode == "plain" and pools.budget is None
    mask = pool.take()
    assert sk.decrypt(mask) == 0 and pool.made == {"djn": 0, "plain": 1}


def test_table_memory_stays_under_the_bound_with_many_querier_keys() -> None:
    keys = [fake_key() for _ in range(40)]
    pools = M.MaskPools(target=0, max_keys=64, min_idle_s=0)      # the default 64 MiB budget
    entry = sys.getsizeof(gmpy2.mpz(1) << 4095)
    assert pools.budget.table_bytes_for(2048) >= 75 * 63 * entry   # the estimate covers every entry
    try:
        held = []
        for pk in keys:
            pool = pools.for_key(pk)
            pool.ensure_table()
            pool.take()
            held.append(pool)
            with_tables = [p for p in held if p.table is not None]
            real = sum(p.table.nbytes for p in with_tables)
            assert pools.table_bytes == real <= M.TABLE_BUDGET_BYTES == 64 * 2**20
        with_tables = [p for p in held if p.table is not None]
        fits = len(with_tables)
        assert 20 <= M.TABLE_BUDGET_BYTES // pools.budget.table_bytes_for(2048) <= fits < 40
        assert with_tables == held[-fits:]                        # the most recently used keys kept theirs
        before = held[0].made["plain"]
        assert held[0].mode == "plain" and held[0].table is None  # LRU: fell back to plain …
        held[0].take()
        assert held[0].made["plain"] == before + 1                # … and still answers, with plain masks
        # Early keys were built wider while few keys shared the budget; they gave their memory back (narrowed)
        # or were evicted as idle; at 40 keys every table left has the floor window.
        assert pools.budget.evictions + pools.budget.narrowed == 40 - fits
        assert {p.table.window_bits for p in with_tables} == {M.DEFAULT_WINDOW_BITS}
    finally:
        pools.close()
    assert pools.table_bytes == 0


def test_a_lone_querier_key_gets_the_widest_window_that_fits_every_key() -> None:
    pools = M.MaskPools(target=0)                                 # the default 64 MiB budget
    try:
        pool = pools.for_key(fake_key())
        assert pool.ensure_table() and pool.table.window_bits == M.MAX_WINDOW_BITS == 8
        assert pools.table_bytes == pool.table.nbytes <= M.estimate_table_bytes(2048, 448, 8) <= M.TABLE_BUDGET_BYTES
        # 448 / 8 = 56 windows of 255 entries: the mask is a product of at most 56 of them
        assert len(pool.table._rows) == 56 and {len(r) for r in pool.table._rows} == {255}
    finally:
        pools.close()


def _widest_fitting(keys: int, limit: int) -> int:
    """The window rule, restated: widest w in [6, 8] with keys × estimate(w) ≤ limit, else 6."""
    return next((w for w in (8, 7) if keys * M.estimate_table_bytes(2048, 448, w) <= limit), 6)


def test_keys_joining_narrow_the_wider_tables_and_the_bound_always_holds() -> None:
    """Three keys on a budget that holds two tables at w = 8 but three only
    at w = 7: the third key's admission takes memory from a wider table
    (busy or not: min_idle_s is an hour), which rebuilds narrower on its next
    refill; the accounted and the real bytes never pass the bound."""
    limit = 2 * M.estimate_table_bytes(2048, 448, 8) + 4096
    assert (_widest_fitting(2, limit), _widest_fitting(3, limit)) == (8, 7)
    pools = M.MaskPools(target=0, table_budget_bytes=limit, min_idle_s=3600)

    def within_bound() -> None:
        assert pools.table_bytes == sum(p.table.nbytes for p in made if p.table is not None) <= limit

    try:
        made = [pools.for_key(fake_key()), pools.for_key(fake_key())]
        for pool in made:
            assert pool.ensure_table() and pool.table.window_bits == 8
            pool.take()
        within_bound()
        made.append(pools.for_key(fake_key()))
        assert made[2].ensure_table() and made[2].table.window_bits == 7   # not plain, though both others are busy
        within_bound()
        assert pools.budget.narrowed == 1 and pools.budget.evictions == 0 and pools.budget.refusals == 0
        narrowed = [p for p in made[:2] if p.table is None]
        assert len(narrowed) == 1 and narrowed[0].mode == "plain"
        assert narrowed[0].ensure_table() and narrowed[0].table.window_bits == 7  # its next refill rebuilds it
        within_bound()
        survivor = next(p for p in made[:2] if p is not narrowed[0])
        assert survivor.table is None or survivor.table.window_bits == 8  # gave way to the rebuild, or still wide
        assert survivor.ensure_table() and survivor.table.window_bits == 7
        within_bound()
        assert {p.table.window_bits for p in made} == {7}
        for pool in made:                                        # every table still makes encryptions of 0 …
            assert pool.take() != pool.take()                    # … and never the same mask twice
    finally:
        pools.close()
    assert pools.table_bytes == 0 and pools.budget.keys == 0


def test_a_wide_table_is_rebuilt_narrower_on_its_next_refill_once_more_keys_share_the_budget() -> None:
    pools = M.MaskPools(target=0)                                 # the default 64 MiB budget
    try:
        first = pools.for_key(fake_key())
        assert first.ensure_table() and first.table.window_bits == 8
        old = first.table
        others = [pools.for_key(fake_key()) for _ in range(8)]     # nine keys: 9 tables fit at w = 7, not at 8
        assert pools.budget.window() == _widest_fitting(9, M.TABLE_BUDGET_BYTES) == 7
        assert first.ensure_table() and first.table is not old and first.table.window_bits == 7
        assert pools.table_bytes == first.table.nbytes and len(others) == 8
    finally:
        pools.close()


def test_keys_of_different_sizes_share_one_window_and_all_keep_a_table() -> None:
    """Review finding (stop 17): with the window worked out per key size, a
    4096-bit key joining 13 busy 2048-bit keys kept asking for a window the
    others left no room for; one key stayed plain though all 14 fit at w = 6."""
    def odd(bits: int) -> P.PaillierPublicKey:
        return P.PaillierPublicKey(secrets.randbits(bits) | (1 << (bits - 1)) | 1)

    def needed(window: int) -> int:  # the rule restated from the estimates
        return 13 * M.estimate_table_bytes(2048, 448, window) + M.estimate_table_bytes(4096, M.djn_exponent_bits(4096), window)

    pools = M.MaskPools(target=0, min_idle_s=3600)               # every table busy: nothing idle to evict
    try:
        small = [pools.for_key(odd(2048)) for _ in range(13)]
        for pool in small:
            assert pool.ensure_table() and pool.table.window_bits == 7   # 13 keys of 2048 bits fit at w = 7
            pool.take()
        big = pools.for_key(odd(4096))
        expected = next((w for w in (8, 7) if needed(w) <= M.TABLE_BUDGET_BYTES), 6)
        assert expected == 6 == pools.budget.window()
        everyone = [*small, big]
        for _ in range(3):                                       # a few refill rounds
            for pool in everyone:
                pool.ensure_table()
                assert pools.table_bytes <= M.TABLE_BUDGET_BYTES
        assert all(p.table is not None and p.table.window_bits == 6 for p in everyone)
        assert pools.budget.refusals == 0 and pools.budget.evictions == 0
    finally:
        pools.close()


def test_a_closed_key_no_longer_narrows_the_others() -> None:
    limit = 2 * M.estimate_table_bytes(2048, 448, 8) + 4096
    pools = M.MaskPools(target=0, max_keys=2, table_budget_bytes=limit, min_idle_s=3600)
    try:
        a, b = pools.for_key(fake_key()), pools.for_key(fake_key())
        assert pools.budget.keys == 2 and pools.budget.window() == 8
        pools.for_key(fake_key())                                # max_keys: a's pool is closed
        assert a.closed and pools.budget.keys == 2 and pools.budget.window() == 8
    finally:
        pools.close()


def test_busy_tables_are_not_evicted_the_newcomer_stays_plain() -> None:
    one = M.TableBudget(limit_bytes=0).table_bytes_for(2048)
    pools = M.MaskPools(target=0, table_budget_bytes=2 * one + 1000, min_idle_s=3600)
    try:
        a, b, c = (pools.for_key(fake_key()) for _ in range(3))
        assert a.ensure_table() and b.ensure_table()
        assert not c.ensure_table() and c.mode == "plain"        # a and b were used within the hour
        assert a.table is not None and b.table is not None and pools.budget.refusals == 1
        assert pools.table_bytes <= 2 * one + 1000
    finally:
        pools.close()


def test_closing_an_evicted_pool_releases_its_table() -> None:
    pools = M.MaskPools(target=0, max_keys=1, min_idle_s=0)
    try:
        first = pools.for_key(fake_key())
        assert first.ensure_table() and pools.table_bytes > 0
        pools.for_key(fake_key())                                 # pool LRU evicts the first key
        assert first.closed and first.table is None and pools.table_bytes == 0
    finally:
        pools.close()


def _in_child(fn) -> dict:  # type: ignore[no-untyped-def]
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_fd)
            try:
                report = fn()
            except BaseException as exc:  # noqa: BLE001
                report = {"error": repr(exc)}
            os.write(write_fd, json.dumps(report).encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    chunks = []
    while chunk := os.read(read_fd, 1 << 16):
        chunks.append(chunk)
    os.close(read_fd)
    os.waitpid(pid, 0)
    return json.loads(b"".join(chunks))


def test_a_forked_child_rebuilds_and_never_reuses_the_parents_table(pk, sk) -> None:
    pools = M.MaskPools(target=4)
    try:
        pool = pools.warm(pk)
        assert pool.ensure_table() and pool.wait_filled(60)
        parent_table = pool.table
        parent_h_s = int(parent_table.h_s)

        def child() -> dict:
            report = {"size": pool.size, "mode": pool.mode, "bytes": pools.table_bytes}
            try:
                parent_table.mask()
                report["parent_table_usable"] = True
            except CryptoError:
                report["parent_table_usable"] = False
            report["mask"] = pool.take()
            report["built"] = pool.ensure_table()
            report["h_s"] = int(pool.table.h_s)
            report["djn_mask"] = pool.take()
            report["bytes_after"] = pools.table_bytes
            return report

        report = _in_child(child)
        assert "error" not in report, report
        assert (report["size"], report["mode"], report["bytes"]) == (0, "plain", 0)   # nothing inherited
        assert report["parent_table_usable"] is False
        assert report["built"] and report["h_s"] != parent_h_s                        # a fresh x in the child
        assert 0 < report["bytes_after"] <= M.TABLE_BUDGET_BYTES
        parent_masks = {pool.take() for _ in range(4)}
        assert pool.misses == 0 and int(pool.table.h_s) == parent_h_s                 # the parent kept its own
        assert not {report["mask"], report["djn_mask"]} & parent_masks
        assert sk.decrypt(report["mask"]) == 0 and sk.decrypt(report["djn_mask"]) == 0
    finally:
        pools.close()


def test_measure_costs_reports_plain_and_djn(pk) -> None:
    costs = M.measure_costs(pk, rounds=20, plain_rounds=2)
    assert costs["exponent_bits"] == 448 and costs["window_bits"] == 6
    assert costs["djn_mask_ms"] < costs["plain_mask_ms"]
    assert 0 < costs["table_mib"] < 64
