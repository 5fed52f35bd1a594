"""Paillier for the alliance (SPEC §1, §4, §8): keys, fixed-width ciphertexts,
80-bit slot packing, precomputed r^n masks and the blinded cap check.

Notation (Paillier, EUROCRYPT '99): n = p·q, g = n + 1, λ = lcm(p−1, q−1).

    Enc(m; r) = g^m · r^n mod n²  =  (1 + m·n) · r^n mod n²     (binomial theorem)
    Dec(c)    = L(c^λ mod n²) · μ mod n,   L(u) = (u − 1) / n
    Enc(a) · Enc(b)   = Enc(a + b mod n)                          (homomorphic sum)
    Enc(a) · Enc(b)⁻¹ = Enc(a − b mod n)
    Enc(a)^k          = Enc(k·a mod n)

The expensive part of Enc is the mask r^n mod n² (≈ 12 ms at 2048 bits), which
does not depend on m, so it is computed ahead of time by a MaskPool and the
request path does one multiplication. Plaintexts are integers only: money is
integer fen and nothing here ever touches a float (SPEC §4).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import threading
import time
import weakref
from collections import OrderedDict, deque
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

log = logging.getLogger(__name__)

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
REFILL_NICE = 5                 # the refill thread yields CPU to request threads
REFILL_BATCH = 4                # masks per GIL-free call in the background
REFILL_QUIET_S = 0.05           # refill only after this long without a take()…
REFILL_LOW_WATER = 4            # …unless the pool is nearly empty


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


# ---------------------------------------------------------------- mask pools
#
# Background mechanism: ONE daemon thread per process (the "refiller") tops up
# every live pool round-robin, REFILL_BATCH masks at a time. r^n is computed by
# gmpy2.powmod_base_list, which releases the GIL (inline masks use powmod with
# the context option allow_release_gil=True), so the refiller holds the GIL
# only for microseconds per batch and request threads keep running on the
# other core. One thread for all pools bounds background CPU to one core; the thread
# also lowers its own scheduling priority (Linux, best effort) so that, when
# the cores are contended, request threads win and a drained pool falls back
# to computing inline. Masks live in a deque in memory only; they are never
# pickled, logged or written anywhere, and a forked child starts with empty
# pools and no refiller (os.register_at_fork), restarted lazily on first use.

class _PoolState:
    """Everything the refiller touches, kept apart from the MaskPool handle so
    that the refiller never keeps an abandoned pool alive."""

    __slots__ = ("n", "n2", "target", "lock", "masks", "closed", "queued", "generation", "pid", "misses", "__weakref__")

    def __init__(self, pk: PaillierPublicKey, target: int) -> None:
        self.n, self.n2, self.target = pk._n, pk._n2, target
        self.lock = threading.Lock()
        self.masks: deque[Any] = deque()
        self.closed = False
        self.queued = False      # guarded by the refiller's lock
        self.generation = 0      # bumped on close/fork: stale refills are dropped
        self.pid = os.getpid()
        self.misses = 0

    def is_low(self) -> bool:
        with self.lock:
            return len(self.masks) < min(REFILL_LOW_WATER, self.target)

    def wants_more(self) -> bool:
        with self.lock:
            return not self.closed and self.pid == os.getpid() and len(self.masks) < self.target

    def refill_some(self) -> None:
        with self.lock:
            missing = self.target - len(self.masks)
            if self.closed or missing <= 0:
                return
            generation = self.generation
        masks = _masks_for(self.n, self.n2, min(missing, REFILL_BATCH))   # ≈ 12 ms each, GIL released
        with self.lock:   # only the refiller adds, so this never overshoots the target
            if generation == self.generation and not self.closed and self.pid == os.getpid():
                self.masks.extend(masks)

    def discard(self) -> None:
        """Forget every precomputed mask (close, or this is a forked child)."""
        self.lock = threading.Lock()     # the parent's lock may be held by a thread that no longer exists
        self.masks = deque()
        self.generation += 1
        self.queued = False
        self.pid = os.getpid()


def _random_units(n: Any, count: int) -> list[Any]:
    """``count`` values uniform in Z*_n from one os.urandom call per batch.
    Rejection sampling (accept 0 < x < n with gcd(x, n) = 1, which fails only
    if x reveals a factor) keeps each draw exactly uniform."""
    bits = n.bit_length()
    width, excess = (bits + 7) // 8, -bits % 8
    units: list[Any] = []
    while len(units) < count:
        pool = secrets.token_bytes(width * 2 * (count - len(units)))   # acceptance ≥ 1/2
        for i in range(0, len(pool), width):
            x = gmpy2.mpz(int.from_bytes(pool[i:i + width], "big") >> excess)
            if 0 < x < n and gmpy2.gcd(x, n) == 1:
                units.append(x)
                if len(units) == count:
                    break
    return units


def _mask_for(n: Any, n2: Any) -> Any:
    return _powmod(_random_units(n, 1)[0], n, n2)


def _masks_for(n: Any, n2: Any, count: int) -> list[Any]:
    """Several r^n mod n² in ONE call that always releases the GIL
    (gmpy2.powmod_base_list), so a GIL-hungry request thread delays the
    refiller once per batch, not once per mask."""
    return list(gmpy2.powmod_base_list(_random_units(n, count), n, n2))


class _Refiller:
    """The one background thread of a process; started lazily."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._queue: deque[_PoolState] = deque()
        self._thread: threading.Thread | None = None

    def request(self, state: _PoolState) -> None:
        # Lock order: refiller lock, then (inside wants_more) the pool's lock.
        with self._cond:
            if state.queued:
                return
            state.queued = True
            self._queue.append(state)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="paillier-mask-refill", daemon=True)
                self._thread.start()
            self._cond.notify()

    def _run(self) -> None:
        # No thread-wide allow_release_gil: measured, it makes the small mpz
        # ops between batches (gcd, compare) each wait ~5 ms (one switch
        # interval) to get the GIL back from a busy request thread.
        _lower_own_priority()
        while True:
            with self._cond:
                while not self._queue:
                    self._cond.wait()
                state = self._queue.popleft()
            _wait_for_quiet(state)
            try:
                state.refill_some()
            except Exception:  # never let one bad pool kill the refiller
                log.exception("Paillier mask refill failed")
            with self._cond:
                if state.wants_more():
                    self._queue.append(state)
                else:
                    state.queued = False


_last_take = [0.0]   # monotonic time of the latest take() in this process


def _wait_for_quiet(state: _PoolState) -> None:
    """Refill between requests, not during them: a request burst (a query
    fans out to every member at once) finishes before the refiller takes a
    core, unless the pool is nearly empty."""
    while not state.is_low():
        idle = time.monotonic() - _last_take[0]
        if idle >= REFILL_QUIET_S:
            return
        time.sleep(REFILL_QUIET_S - idle)


def _lower_own_priority() -> None:
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), REFILL_NICE)  # Linux: per thread
    except (AttributeError, OSError):
        pass


_refiller = _Refiller()
_live_states: weakref.WeakSet[_PoolState] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    """SPEC §4: a mask is never shared across a fork. The child gets empty
    pools and a refiller with no thread (threads do not survive fork)."""
    global _refiller
    _refiller = _Refiller()
    for state in list(_live_states):
        state.discard()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _close_state(state: _PoolState) -> None:
    with state.lock:
        state.closed = True
        state.generation += 1
        state.masks.clear()


class MaskPool:
    """Precomputed r^n masks for one key. ``take()`` returns a mask never
    handed out before; if none is ready it computes one inline — it never
    blocks on the refiller and never reuses."""

    def __init__(self, pk: PaillierPublicKey, *, target: int = 32) -> None:
        target = _require_int(target, "target")
        if target < 0:
            raise ValueError("target must be ≥ 0")
        self._pk = pk
        self._state = _PoolState(pk, target)
        _live_states.add(self._state)
        self._finalizer = weakref.finalize(self, _close_state, self._state)
        if target:
            _refiller.request(self._state)

    @property
    def public_key(self) -> PaillierPublicKey:
        return self._pk

    @property
    def target(self) -> int:
        return self._state.target

    @property
    def size(self) -> int:
        """Masks ready now."""
        return len(self._state.masks)

    @property
    def misses(self) -> int:
        """How often take() found the pool empty and computed inline."""
        return self._state.misses

    @property
    def closed(self) -> bool:
        return self._state.closed

    def take(self) -> int:
        _last_take[0] = time.monotonic()
        state = self._state
        if state.pid != os.getpid():     # a fork the at-fork hook did not see
            state.discard()
        with state.lock:
            mask = state.masks.popleft() if state.masks else None
            if mask is None:
                state.misses += 1
        if state.target and not state.closed:
            _refiller.request(state)
        if mask is None:
            mask = _mask_for(state.n, state.n2)
        return int(mask)

    def wait_filled(self, timeout: float = 30.0) -> bool:
        """Block until the pool holds ``target`` masks (bench warm-up, tests)."""
        deadline = time.monotonic() + timeout
        while self.size < self.target:
            if self.closed or time.monotonic() >= deadline:
                return False
            time.sleep(0.005)
        return True

    def close(self) -> None:
        """Drop every precomputed mask and stop refilling. take() still works
        (inline), so a request racing an LRU eviction never fails."""
        self._finalizer()

    def __repr__(self) -> str:
        return f"MaskPool({self._pk!r}, size={self.size}, target={self.target})"

    def __reduce__(self) -> Any:
        raise TypeError("MaskPool holds one-time masks and must never leave this process")


class MaskPools:
    """One MaskPool per querier key (by n), least-recently-used first out."""

    def __init__(self, target: int = 32, max_keys: int = 64) -> None:
        if _require_int(max_keys, "max_keys") < 1:
            raise ValueError("max_keys must be ≥ 1")
        self._target = _require_int(target, "target")
        self._max_keys = max_keys
        self._pools: OrderedDict[int, MaskPool] = OrderedDict()
        self._lock = threading.Lock()

    def for_key(self, pk: PaillierPublicKey) -> MaskPool:
        evicted: list[MaskPool] = []
        with self._lock:
            pool = self._pools.get(pk.n)
            if pool is not None and not pool.closed:
                self._pools.move_to_end(pk.n)
                return pool
            pool = MaskPool(pk, target=self._target)
            self._pools[pk.n] = pool
            while len(self._pools) > self._max_keys:
                evicted.append(self._pools.popitem(last=False)[1])
        for old in evicted:
            old.close()
        return pool

    def __len__(self) -> int:
        return len(self._pools)

    def __contains__(self, pk: object) -> bool:
        return isinstance(pk, PaillierPublicKey) and pk.n in self._pools

    def close(self) -> None:
        with self._lock:
            pools = list(self._pools.values())
            self._pools.clear()
        for pool in pools:
            pool.close()

    def __reduce__(self) -> Any:
        raise TypeError("MaskPools hold one-time masks and must never leave this process")


# ---------------------------------------------------------------- measurement
# `python -m alliance.paillier`: a quick look at the costs behind SPEC §8, not a test.

def _measure() -> None:  # pragma: no cover - manual tool
    import statistics

    def median_ms(fn: Any, rounds: int) -> float:
        samples = []
        for _ in range(rounds):
            start = time.perf_counter_ns()
            fn()
            samples.append(time.perf_counter_ns() - start)
        return statistics.median(samples) / 1e6

    pk, sk = generate_keypair(MIN_KEY_BITS)
    phe_pk = to_phe_public_key(pk)
    mask, m = fresh_mask(pk), pack([secrets.randbelow(FIGURE_BOUND) for _ in range(20)])
    c = encrypt(pk, m, mask)
    print(f"fresh_mask (r^n mod n², 2048-bit n)   {median_ms(lambda: fresh_mask(pk), 40):8.2f} ms")
    print(f"encrypt with a precomputed mask        {median_ms(lambda: encrypt(pk, m, mask), 5000) * 1000:8.1f} µs")
    print(f"encrypt + encode_ciphertext            {median_ms(lambda: encode_ciphertext(pk, encrypt(pk, m, mask)), 5000) * 1000:8.1f} µs")
    print(f"CRT decrypt (powmod_sec)               {median_ms(lambda: sk.decrypt(c), 100):8.2f} ms")
    print(f"phe default encrypt (one figure)       {median_ms(lambda: phe_pk.encrypt(123_456), 40):8.2f} ms")
    phe_sk, phe_c = to_phe_private_key(sk), phe_pk.encrypt(1)
    print(f"phe decrypt (one figure)               {median_ms(lambda: phe_sk.decrypt(phe_c), 100):8.2f} ms")

    # GIL: a request-like loop (pure Python + one encrypt) on the main thread
    # while masks are generated in the background three ways.
    def request_loop(seconds: float = 3.0) -> tuple[float, float]:
        latencies, end = [], time.perf_counter() + seconds
        while time.perf_counter() < end:
            start = time.perf_counter()
            sum(i * i for i in range(1500))
            encrypt(pk, m, mask)
            latencies.append(time.perf_counter() - start)
        latencies.sort()
        return len(latencies) / seconds, latencies[int(0.99 * len(latencies))] * 1000

    def gil_holding_worker(stop: threading.Event) -> None:
        while not stop.is_set():
            gmpy2.powmod(gmpy2.mpz(secrets.randbelow(pk.n)), pk._n, pk._n2)  # allow_release_gil=False

    print(f"{'background during request loop':38s} {'req/s':>8s} {'p99 ms':>8s} {'masks/s':>8s}")
    for label in ("idle", "thread, GIL held (plain powmod)", "MaskPool refiller (GIL released)"):
        stop, pool, made = threading.Event(), None, 0
        if label.startswith("thread"):
            worker = threading.Thread(target=gil_holding_worker, args=(stop,), daemon=True)
            worker.start()
        elif label.startswith("MaskPool"):
            pool = MaskPool(pk, target=1 << 20)      # never full: refills the whole time
        time.sleep(0.2)
        before = pool.size if pool else 0
        rate, p99 = request_loop()
        made = (pool.size - before) / 3.0 if pool else 0
        stop.set()
        if pool:
            pool.close()
        print(f"{label:38s} {rate:8.0f} {p99:8.2f} {made if pool else float('nan'):8.1f}")


if __name__ == "__main__":  # pragma: no cover
    _measure()
