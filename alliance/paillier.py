"""Paillier for the alliance (SPEC §1, §4, §8): keys, fixed-width ciphertexts,
80-bit slot packing, precomputed r^n masks and the blinded cap check.

Notation (Paillier, EUROCRYPT '99): n = p·q, g = n + 1, λ = lcm(p−1, q−1).

    Enc(m; r) = g^m · r^n mod n²  =  (1 + m·n) · r^n mod n²     (binomial theorem)
    Dec(c)    = L(c^λ mod n²) · μ mod n,   L(u) = (u − 1) / n
    Enc(a) · Enc(b)   = Enc(a + b mod n)                          (homomorphic sum)
    Enc(a) · Enc(b)⁻¹ = Enc(a − b mod n)
    Enc(a)^k          = Enc(k·a mod n)

The expensive part of Enc is the mask r^n mod n² (≈ 10 ms at 2048 bits), which
does not depend on m, so it is computed ahead of time (alliance.masks: pools of
plain r^n masks, or Damgård–Jurik–Nielsen short-exponent masks from a
fixed-base table) and the request path does one multiplication. Plaintexts are integers only: money is
integer fen and nothing here ever touches a float (SPEC §4).
"""
from __future__ import annotations

import hashlib
import json
import os
import secrets
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Iterable, Protocol, Sequence

import gmpy2

from alliance.errors import CryptoError, SlotOverflow

__all__ = [
    "MIN_KEY_BITS", "MAX_KEY_BITS", "SLOT_BITS", "FIGURE_BOUND", "MAX_SUMMANDS",
    "PaillierPublicKey", "PaillierPrivateKey", "generate_keypair",
    "encode_ciphertext", "decode_ciphertext", "pack", "unpack", "max_slots",
    "encrypt", "encrypt_signed", "fresh_mask", "MaskPool", "MaskPools",
    "add", "sub", "scalar_mul", "blind_precheck", "precheck_within_cap",
    "to_phe_public_key", "to_phe_private_key",
]

MIN_KEY_BITS = 2048
MAX_KEY_BITS = 8192
SLOT_BITS = 80
FIGURE_BOUND = 1 << 64          # every member figure is < 2^64 fen / count
MAX_SUMMANDS = 1 << 16          # 2^16 · (2^64 − 1) < 2^80: sums never carry
_SLOT_MASK = (1 << SLOT_BITS) - 1
_FINGERPRINT_PREFIX = b"alliance/v1/paillier-n\x00"
_PRIVATE_KEY_FORMAT = "alliance/v1/paillier-private-key"
_PRIME_TEST_REPS = 40           # GMP: BPSW plus (reps − 24) Miller–Rabin rounds
_BLIND_MIN_BITS, _BLIND_MAX_BITS = 64, 128


class RandBelow(Protocol):
    """What we need from a CSPRNG: the ``secrets`` module satisfies it."""

    def randbelow(self, exclusive_upper_bound: int) -> int: ...


# ---------------------------------------------------------------- helpers

_MPZ = type(gmpy2.mpz(0))


def _require_int(value: object, what: str) -> int:
    """Ints (or gmpy2 mpz) only: a bool or a float is a bug, never money."""
    if isinstance(value, bool) or not isinstance(value, (int, _MPZ)):
        raise TypeError(f"{what} must be an int, got {type(value).__name__}")
    return int(value)


def _powmod(base: Any, exp: Any, mod: Any) -> Any:
    """gmpy2.powmod with the GIL released (gmpy2 ≥ 2.2 context option
    ``allow_release_gil``; off by default), so a 12 ms r^n never stalls other
    Python threads. The context is per thread; this block changes only ours."""
    with gmpy2.context(gmpy2.get_context(), allow_release_gil=True):
        return gmpy2.powmod(base, exp, mod)


def _powmod_secret_exponent(base: Any, exp: Any, mod: Any) -> Any:
    """Constant-time exponentiation (mpz_powm_sec) for secret exponents p−1,
    q−1; costs ≈ 25 % more than powmod, once per decryption."""
    with gmpy2.context(gmpy2.get_context(), allow_release_gil=True):
        return gmpy2.powmod_sec(base, exp, mod)


# ---------------------------------------------------------------- keys

@dataclass(frozen=True)
class PaillierPublicKey:
    """A querier's public key: n only (g = n + 1 is implied)."""

    n: int

    def __post_init__(self) -> None:
        n = _require_int(self.n, "Paillier modulus n")
        object.__setattr__(self, "n", n)
        if n.bit_length() < MIN_KEY_BITS:
            raise CryptoError(f"Paillier key has {n.bit_length()} bits; at least {MIN_KEY_BITS} are required")
        if n.bit_length() > MAX_KEY_BITS:
            raise CryptoError(f"Paillier key has {n.bit_length()} bits; at most {MAX_KEY_BITS} are accepted")
        if n % 2 == 0:
            raise CryptoError("Paillier modulus n is even, so it is not a product of two odd primes")

    def __repr__(self) -> str:
        return f"PaillierPublicKey(bits={self.n.bit_length()}, fingerprint={self.fingerprint().hex()[:16]}…)"

    @cached_property
    def n_square(self) -> int:
        return self.n * self.n

    @cached_property
    def byte_length(self) -> int:
        return (self.n.bit_length() + 7) // 8

    @property
    def ciphertext_width(self) -> int:
        """c < n² < 256^(2·byte_length): every ciphertext fits, so every answer
        has the same size whatever it encrypts (SPEC §1.4)."""
        return 2 * self.byte_length

    @cached_property
    def _n(self) -> Any:
        return gmpy2.mpz(self.n)

    @cached_property
    def _n2(self) -> Any:
        return gmpy2.mpz(self.n_square)

    def to_bytes(self) -> bytes:
        return self.n.to_bytes(self.byte_length, "big")

    @classmethod
    def from_bytes(cls, data: bytes) -> PaillierPublicKey:
        """Parse the minimal big-endian n; one n has exactly one encoding, so a
        fingerprint over these bytes is canonical."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"Paillier public key must be bytes, got {type(data).__name__}")
        data = bytes(data)
        if not data or data[0] == 0:
            raise CryptoError("Paillier public key is empty or not minimally encoded (leading zero byte)")
        if len(data) * 8 > MAX_KEY_BITS:
            raise CryptoError(f"Paillier key has more than {MAX_KEY_BITS} bits")
        return cls(int.from_bytes(data, "big"))

    def fingerprint(self) -> bytes:
        """SHA-256 over a domain-separated n: what requests sign (SPEC §5)."""
        return hashlib.sha256(_FINGERPRINT_PREFIX + self.to_bytes()).digest()


class PaillierPrivateKey:
    """p, q and the CRT constants for fast decryption (Paillier '99, §7):

        m_p = L_p(c^(p−1) mod p²) · h_p mod p,  h_p = L_p(g^(p−1) mod p²)⁻¹ mod p
        m_q likewise,  m = CRT(m_p, m_q)          with L_p(u) = (u − 1) / p
    """

    __slots__ = ("_p", "_q", "_public_key", "_p2", "_q2", "_pm1", "_qm1", "_hp", "_hq", "_q_inv_p")

    def __init__(self, p: int, q: int, public_key: PaillierPublicKey | None = None) -> None:
        p, q = _require_int(p, "p"), _require_int(q, "q")
        if public_key is None:
            public_key = PaillierPublicKey(p * q)
        _check_factors(p, q, public_key.n)
        self._p, self._q, self._public_key = p, q, public_key
        mp, mq = gmpy2.mpz(p), gmpy2.mpz(q)
        self._p2, self._q2 = mp * mp, mq * mq
        self._pm1, self._qm1 = mp - 1, mq - 1
        g = public_key._n + 1
        self._hp = gmpy2.invert(_l_function(_powmod_secret_exponent(g % self._p2, self._pm1, self._p2), mp), mp)
        self._hq = gmpy2.invert(_l_function(_powmod_secret_exponent(g % self._q2, self._qm1, self._q2), mq), mq)
        self._q_inv_p = gmpy2.invert(mq, mp)

    @property
    def public_key(self) -> PaillierPublicKey:
        return self._public_key

    @property
    def p(self) -> int:
        return self._p

    @property
    def q(self) -> int:
        return self._q

    def __repr__(self) -> str:
        return f"PaillierPrivateKey(<secret>, public_key={self._public_key!r})"

    __str__ = __repr__

    def decrypt(self, c: int) -> int:
        """Dec(c) ∈ [0, n) by CRT: two half-size exponentiations mod p², q²."""
        c = _check_ciphertext(self._public_key, c)
        mp = _l_function(_powmod_secret_exponent(c % self._p2, self._pm1, self._p2), self._p) * self._hp % self._p
        mq = _l_function(_powmod_secret_exponent(c % self._q2, self._qm1, self._q2), self._q) * self._hq % self._q
        # Garner: m = m_q + q · ((m_p − m_q) · q⁻¹ mod p)
        return int(mq + self._q * ((mp - mq) * self._q_inv_p % self._p))

    def decrypt_signed(self, c: int) -> int:
        """Inverse of encrypt_signed: [0, n/3) → itself, (2n/3, n) → negative;
        the middle third means an overflow, never a value."""
        m, n = self.decrypt(c), self._public_key.n
        if 3 * m < n:
            return m
        if 3 * (n - m) < n:
            return m - n
        raise CryptoError("decrypted value is outside the signed range ±n/3 (overflow)")

    def to_json_bytes(self) -> bytes:
        doc = {"format": _PRIVATE_KEY_FORMAT, "n": format(self._public_key.n, "x"),
               "p": format(self._p, "x"), "q": format(self._q, "x")}
        return json.dumps(doc, sort_keys=True).encode("ascii")

    @classmethod
    def from_json_bytes(cls, data: bytes | str) -> PaillierPrivateKey:
        try:
            doc = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise CryptoError("Paillier private key file is not valid JSON") from exc
        if not isinstance(doc, dict) or doc.get("format") != _PRIVATE_KEY_FORMAT:
            raise CryptoError(f"Paillier private key file lacks format {_PRIVATE_KEY_FORMAT!r}")
        p, q, n = (_parse_hex(doc.get(k), k) for k in ("p", "q", "n"))
        if p * q != n:
            raise CryptoError("Paillier private key file is inconsistent: p·q ≠ n")
        if not (gmpy2.is_prime(p, _PRIME_TEST_REPS) and gmpy2.is_prime(q, _PRIME_TEST_REPS)):
            raise CryptoError("Paillier private key file is corrupt: p or q is not prime")
        return cls(p, q, PaillierPublicKey(n))


def _l_function(u: Any, d: Any) -> Any:
    """L_d(u) = (u − 1) / d, exact for u ≡ 1 mod d."""
    return (u - 1) // d


def _check_factors(p: int, q: int, n: int) -> None:
    if p * q != n:
        raise CryptoError("Paillier private key does not match its public key: p·q ≠ n")
    if p == q or p < 3 or q < 3:
        raise CryptoError("Paillier private key needs two distinct odd primes")
    # Paillier needs gcd(n, (p−1)(q−1)) = 1; true for equal-length primes.
    if gmpy2.gcd(n, (p - 1) * (q - 1)) != 1:
        raise CryptoError("Paillier private key is unusable: gcd(n, φ(n)) ≠ 1")


def _parse_hex(value: object, name: str) -> int:
    if not isinstance(value, str) or not value or any(ch not in "0123456789abcdef" for ch in value):
        raise CryptoError(f"Paillier private key file: {name} must be lower-case hex")
    return int(value, 16)


def _random_prime(bits: int) -> int:
    """Uniform-ish prime with the top two bits set, so p·q has exactly the
    requested length. A fresh candidate every time (no incremental search, so
    no bias toward primes after long gaps)."""
    top = 0b11 << (bits - 2)
    while True:
        candidate = secrets.randbits(bits) | top | 1
        if gmpy2.is_prime(candidate, _PRIME_TEST_REPS):
            return candidate


def generate_keypair(bits: int = MIN_KEY_BITS) -> tuple[PaillierPublicKey, PaillierPrivateKey]:
    bits = _require_int(bits, "bits")
    if bits < MIN_KEY_BITS:
        raise CryptoError(f"refusing a {bits}-bit Paillier key: at least {MIN_KEY_BITS} bits are required")
    if bits > MAX_KEY_BITS:
        raise CryptoError(f"refusing a {bits}-bit Paillier key: at most {MAX_KEY_BITS} bits are supported")
    half = bits // 2
    while True:
        p, q = _random_prime(half), _random_prime(bits - half)
        # |p − q| tiny would allow Fermat factoring; with random primes this
        # never happens, but it costs nothing to be sure.
        if p != q and abs(p - q).bit_length() > half - 100 and gmpy2.gcd(p * q, (p - 1) * (q - 1)) == 1:
            break
    public_key = PaillierPublicKey(p * q)
    assert public_key.n.bit_length() == bits
    return public_key, PaillierPrivateKey(p, q, public_key)


def to_phe_public_key(pk: PaillierPublicKey) -> Any:
    """For the §8 naive baseline only: python-paillier with its defaults."""
    from phe import paillier as phe_paillier

    return phe_paillier.PaillierPublicKey(pk.n)


def to_phe_private_key(sk: PaillierPrivateKey) -> Any:
    from phe import paillier as phe_paillier

    return phe_paillier.PaillierPrivateKey(to_phe_public_key(sk.public_key), sk.p, sk.q)


# ---------------------------------------------------------------- ciphertexts

def _check_ciphertext(pk: PaillierPublicKey, c: object) -> Any:
    """A ciphertext is a unit of Z*_{n²}: 0 < c < n² and gcd(c, n) = 1. Zero
    or a multiple of p would reveal a factor or decrypt to garbage."""
    value = gmpy2.mpz(_require_int(c, "ciphertext"))
    if not 0 < value < pk._n2:
        raise CryptoError("ciphertext is out of range: it must satisfy 0 < c < n²")
    if gmpy2.gcd(value, pk._n) != 1:
        raise CryptoError("ciphertext is not invertible modulo n²")
    return value


def _check_range(pk: PaillierPublicKey, c: object) -> Any:
    """The cheap part of the check, for values we produced ourselves."""
    value = gmpy2.mpz(_require_int(c, "ciphertext"))
    if not 0 < value < pk._n2:
        raise CryptoError("ciphertext is out of range: it must satisfy 0 < c < n²")
    return value


def encode_ciphertext(pk: PaillierPublicKey, c: int) -> bytes:
    """Fixed width (2 · byte length of n), big-endian: Enc(0) and Enc(huge)
    have the same size on the wire (SPEC §1.4, §4)."""
    return int(_check_range(pk, c)).to_bytes(pk.ciphertext_width, "big")


def decode_ciphertext(pk: PaillierPublicKey, data: bytes) -> int:
    """Strict inverse of encode_ciphertext; anything else is a CryptoError so
    a malformed answer is dropped, never summed (SPEC §5)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"ciphertext must be bytes, got {type(data).__name__}")
    if len(data) != pk.ciphertext_width:
        raise CryptoError(f"ciphertext is {len(data)} bytes; this key's ciphertexts are exactly {pk.ciphertext_width}")
    return int(_check_ciphertext(pk, int.from_bytes(bytes(data), "big")))


# ---------------------------------------------------------------- packing

def max_slots(pk: PaillierPublicKey) -> int:
    """Slots that fit below n: count · 80 ≤ bits(n) − 1 (25 at 2048 bits)."""
    return (pk.n.bit_length() - 1) // SLOT_BITS


def pack(values: Sequence[int]) -> int:
    """m = Σ v_i · 2^(80·i), each 0 ≤ v_i < 2^64: 16 spare bits per slot absorb
    the sum of up to 2^16 members without a carry (SPEC §4)."""
    m = 0
    for i, value in enumerate(values):
        v = _require_int(value, f"figure in slot {i}")
        if v < 0:
            raise SlotOverflow(f"slot {i}: a figure must not be negative")
        if v >= FIGURE_BOUND:
            raise SlotOverflow(f"slot {i}: a figure must be below 2^64")
        m |= v << (SLOT_BITS * i)
    return m


def unpack(m: int, count: int, summands: int, *, names: Sequence[str] | None = None) -> list[int]:
    """Split a decrypted sum of ``summands`` packed plaintexts into ``count``
    slots. Honest inputs give slot_i ≤ summands · (2^64 − 1) and nothing above
    slot count−1; anything else is a carry or a forged answer, so refuse."""
    m = _require_int(m, "plaintext")
    count = _require_int(count, "count")
    summands = _require_int(summands, "summands")
    if count < 0:
        raise ValueError("count must be ≥ 0")
    if names is not None and len(names) != count:
        raise ValueError("names must name every slot")
    if not 1 <= summands <= MAX_SUMMANDS:
        raise SlotOverflow(f"{summands} summands: a packed sum holds between 1 and {MAX_SUMMANDS}")
    if m < 0:
        raise SlotOverflow("packed plaintext is negative")
    if m >> (SLOT_BITS * count):
        raise SlotOverflow(f"packed plaintext has bits above slot {count - 1}: a carry out of the last slot or a malformed answer")
    bound = summands * (FIGURE_BOUND - 1)
    slots = []
    for i in range(count):
        s = (m >> (SLOT_BITS * i)) & _SLOT_MASK
        if s > bound:
            label = f"slot {i}" + (f" ({names[i]})" if names is not None else "")
            raise SlotOverflow(f"{label} exceeds what {summands} figures below 2^64 can sum to: carry or forged answer")
        slots.append(s)
    return slots


# ---------------------------------------------------------------- encryption

def encrypt(pk: PaillierPublicKey, m: int, mask: int) -> int:
    """Enc(m; r) = (1 + m·n) · r^n mod n², with ``mask`` = r^n mod n² from
    fresh_mask or a MaskPool: one multiplication on the request path."""
    m = _require_int(m, "plaintext")
    if not 0 <= m < pk.n:
        raise CryptoError("plaintext is out of range: it must satisfy 0 ≤ m < n")
    mask_v = _check_range(pk, mask)
    return int((1 + gmpy2.mpz(m) * pk._n) * mask_v % pk._n2)


def encrypt_signed(pk: PaillierPublicKey, v: int, mask: int) -> int:
    """Negative v travels as v mod n; |v| < n/3 keeps the two ends apart so
    decrypt_signed can tell −1 from a huge positive (as in python-paillier)."""
    v = _require_int(v, "plaintext")
    if 3 * abs(v) >= pk.n:
        raise CryptoError("signed plaintext is out of range: |v| must be below n/3")
    return encrypt(pk, v % pk.n, mask)


def fresh_mask(pk: PaillierPublicKey, rng: RandBelow = secrets) -> int:
    """r^n mod n² for r uniform in Z*_n: the randomness of one encryption.
    Used once, then forgotten (SPEC §4)."""
    while True:
        r = rng.randbelow(pk.n - 1) + 1
        if gmpy2.gcd(r, pk._n) == 1:     # fails only if r reveals a factor of n
            break
    return int(_powmod(gmpy2.mpz(r), pk._n, pk._n2))


# ---------------------------------------------------------------- homomorphic operations

def add(pk: PaillierPublicKey, ciphertexts: Iterable[int]) -> int:
    """Π c_i mod n² = Enc(Σ m_i mod n). An empty product would be the constant
    1 — a "ciphertext" anyone can decrypt — so it is refused."""
    acc = None
    for c in ciphertexts:
        v = _check_range(pk, c)
        acc = v if acc is None else acc * v % pk._n2
    if acc is None:
        raise ValueError("add() needs at least one ciphertext")
    return int(acc)


def sub(pk: PaillierPublicKey, a: int, b: int) -> int:
    """a · b⁻¹ mod n² = Enc(m_a − m_b mod n)."""
    a_v, b_v = _check_range(pk, a), _check_range(pk, b)
    try:
        inverse = gmpy2.invert(b_v, pk._n2)
    except ZeroDivisionError as exc:
        raise CryptoError("ciphertext is not invertible modulo n²") from exc
    return int(a_v * inverse % pk._n2)


def scalar_mul(pk: PaillierPublicKey, c: int, k: int) -> int:
    """c^k mod n² = Enc(k·m mod n); a negative k uses c⁻¹."""
    c_v = _check_range(pk, c)
    k = _require_int(k, "scalar")
    try:
        return int(_powmod(c_v, k, pk._n2))
    except ValueError as exc:               # gmpy2: base not invertible
        raise CryptoError("ciphertext is not invertible modulo n²") from exc


def _draw_blinding(rng: RandBelow) -> tuple[int, int]:
    """r with bit length uniform in [64, 128] (top bit set), r′ uniform in
    [0, r): r′ < r keeps the sign of r·d + r′ equal to the sign of d."""
    bits = _BLIND_MIN_BITS + rng.randbelow(_BLIND_MAX_BITS - _BLIND_MIN_BITS + 1)
    top = 1 << (bits - 1)
    r = top | rng.randbelow(top)
    return r, rng.randbelow(r)


def blind_precheck(pk: PaillierPublicKey, enc_x: int, enc_balances: Sequence[int], mask: int,
                   rng: RandBelow = secrets) -> int:
    """The gateway's half of the cap check (SPEC §4): Enc(r·(x − Σ) + r′).

    With d = x − Σ: d ≥ 0 gives r·d + r′ in [0, r·(d+1)); d ≤ −1 gives
    r·d + r′ < r·d + r ≤ 0, i.e. mod n the top half. Under SPEC §4 bounds
    |d| < 2^81, so |r·d| < 2^209 ≪ n/2 and nothing wraps. The querier learns the sign of d and r·d + r′ (d blurred by an
    unknown factor of 64–128 bits). Multiplying by a fresh Enc(r′; mask)
    re-randomises the result, so it is unlinkable to the inputs."""
    if not enc_balances:
        raise ValueError("blind_precheck() needs at least one member balance")
    difference = sub(pk, enc_x, add(pk, enc_balances))
    r, r_prime = _draw_blinding(rng)
    scaled = gmpy2.mpz(scalar_mul(pk, difference, r))
    return int(scaled * encrypt(pk, r_prime, mask) % pk._n2)


def precheck_within_cap(sk: PaillierPrivateKey, c: int) -> bool:
    """Yes iff the blinded headroom decrypts to the lower half of Z_n, i.e.
    x − Σ ≥ 0 (the new loan keeps the subject at or below the cap)."""
    return sk.decrypt(c) < sk.public_key.n // 2


# ---------------------------------------------------------------- masks
# Mask generation and pools live in alliance.masks (which imports this module);
# the old names stay reachable as alliance.paillier.MaskPool etc.

_MASK_NAMES = frozenset({"MaskPool", "MaskPools", "DjnTable", "TableBudget"})


def __getattr__(name: str) -> Any:
    if name in _MASK_NAMES:
        from alliance import masks

        return getattr(masks, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":  # pragma: no cover
    from alliance.masks.measure import _measure

    _measure()
