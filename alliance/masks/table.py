"""The DJN fixed-base table of one querier key (SPEC §4, §8).

For DJN, every member node draws its OWN x per querier key from its CSPRNG
(never a base chosen by the querier or the gateway: h_s = 1, or any base whose
discrete log someone knows, would let that someone strip the mask and read the
member's figures). The fixed base h_s gets a windowed table: row i holds
h_s^(j·2^(w·i)) for j = 1 … 2^w − 1, so h_s^a is one multiplication per
non-zero w-bit digit of a (⌈ℓ/w⌉ at most). Security rests on the assumption
that h_s^a with a short uniform a is indistinguishable from a uniform element
of the subgroup ⟨h_s⟩ of n-th residues (docs/masks.md: the assumption, the
choice ℓ = 4λ = 448 bits at 2048-bit n, the table's memory).

Tables live in memory only: never pickled, logged or written to disk, never
used across a fork (a table records the pid that built it; a forked child
rebuilds lazily with a fresh x).
"""
from __future__ import annotations

import os
import secrets
import sys
import time
from typing import Any

import gmpy2

from alliance.errors import CryptoError
from alliance.paillier import PaillierPublicKey, RandBelow, _powmod, _require_int

DEFAULT_WINDOW_BITS = 6                 # 2^6 − 1 = 63 entries per window

# NIST SP 800-57 Part 1, Table 2: security strength λ of an RSA/Paillier modulus.
_STRENGTH = ((2048, 112), (3072, 128), (7680, 192), (15360, 256))


def djn_exponent_bits(n_bits: int) -> int:
    """ℓ = 4λ (Ma–Han–Lei, ACSAC 2021): 448 bits at 2048-bit n, 512 up to
    3072, 768 up to 7680. The generic attacks on a short exponent (Pollard λ,
    baby-step giant-step, van Oorschot–Wiener) cost ≈ 2^(ℓ/2) = 2^(2λ), so
    ℓ = 4λ leaves a factor 2 in the exponent over the modulus' own λ."""
    for limit, strength in _STRENGTH:
        if n_bits <= limit:
            return 4 * strength
    return 4 * _STRENGTH[-1][1]


def estimate_table_bytes(n_bits: int, exponent_bits: int, window_bits: int = DEFAULT_WINDOW_BITS) -> int:
    """Upper bound of a DjnTable's memory: every entry is < n², so each mpz is
    at most the size of a 2·n_bits-bit one; plus the row and table lists."""
    windows = -(-exponent_bits // window_bits)
    per_row = (1 << window_bits) - 1
    entry = sys.getsizeof(gmpy2.mpz(1) << (2 * n_bits - 1))
    row = sys.getsizeof(tuple(range(per_row)))
    return windows * (per_row * entry + row) + sys.getsizeof(tuple(range(windows)))


def _random_unit(n: Any, rng: RandBelow) -> Any:
    while True:
        x = gmpy2.mpz(rng.randbelow(int(n) - 1) + 1)
        if gmpy2.gcd(x, n) == 1:      # fails only if x reveals a factor of n
            return x



class DjnTable:
    """One member's fixed-base table for one querier key. The base is drawn
    here, from this process' CSPRNG; there is deliberately no way to pass a
    base (or x) in."""

    __slots__ = ("n", "n2", "h_s", "exponent_bits", "window_bits", "_rows", "nbytes", "pid", "build_s")

    def __init__(self, pk: PaillierPublicKey, *, exponent_bits: int | None = None,
                 window_bits: int = DEFAULT_WINDOW_BITS, rng: RandBelow = secrets) -> None:
        if not isinstance(pk, PaillierPublicKey):
            raise TypeError("DjnTable needs the querier's PaillierPublicKey")
        floor = djn_exponent_bits(pk.n.bit_length())
        bits = floor if exponent_bits is None else _require_int(exponent_bits, "exponent_bits")
        if bits < floor:
            raise CryptoError(f"a {bits}-bit DJN exponent is below {floor} bits (4λ for a {pk.n.bit_length()}-bit key)")
        window_bits = _require_int(window_bits, "window_bits")
        if not 1 <= window_bits <= 12:
            raise ValueError("window_bits must be in [1, 12]")
        started = time.process_time()
        n, n2 = pk._n, pk._n2
        while True:
            x = _random_unit(n, rng)
            h = (-x * x) % n                      # −x²: a square times −1, Jacobi symbol +1
            if h != 1 and h != n - 1 and h * h % n != 1:
                break                             # never a base of order ≤ 2 (negligible anyway)
        del x
        h_s = _powmod(h, n, n2)                   # the n-th power: an encryption of 0
        self.n, self.n2, self.h_s = n, n2, h_s
        self.exponent_bits, self.window_bits = bits, window_bits
        self._rows = _build_rows(h_s, n2, -(-bits // window_bits), window_bits)
        self.nbytes = (sum(sys.getsizeof(e) for row in self._rows for e in row)
                       + sum(sys.getsizeof(row) for row in self._rows) + sys.getsizeof(self._rows))
        self.pid = os.getpid()
        self.build_s = time.process_time() - started

    def power(self, a: int) -> Any:
        """h_s^a mod n² for 0 ≤ a < 2^ℓ from the table (for masks and tests)."""
        if not 0 <= a < (1 << self.exponent_bits):
            raise ValueError("exponent out of the table's range")
        rows, n2, w = self._rows, self.n2, self.window_bits
        digit_mask = (1 << w) - 1
        acc = None
        i = 0
        while a:
            d = a & digit_mask
            if d:
                v = rows[i][d - 1]
                acc = v if acc is None else acc * v % n2
            a >>= w
            i += 1
        return gmpy2.mpz(1) if acc is None else acc

    def mask(self, rng: RandBelow = secrets) -> Any:
        """A fresh mask h_s^a, a uniform in [1, 2^ℓ) (a = 0 would give the mask
        1, which hides nothing). Refused in a process that did not build it."""
        if self.pid != os.getpid():
            raise CryptoError("a DJN table is never used across a fork")
        return self.power(rng.randbelow((1 << self.exponent_bits) - 1) + 1)

    def __repr__(self) -> str:
        return f"DjnTable(ℓ={self.exponent_bits}, w={self.window_bits}, {self.nbytes / 2**20:.1f} MiB)"

    def __reduce__(self) -> Any:
        raise TypeError("a DJN table must never leave this process")


def _build_rows(h_s: Any, n2: Any, windows: int, w: int) -> tuple[tuple[Any, ...], ...]:
    """rows[i][j−1] = h_s^(j·2^(w·i)); (2^w − 1) multiplications per row."""
    rows = []
    base = h_s
    for _ in range(windows):
        row = [base]
        for _ in range((1 << w) - 2):
            row.append(row[-1] * base % n2)
        rows.append(tuple(row))
        base = row[-1] * base % n2                # base^(2^w)
    return tuple(rows)
