"""Plain masks r^n mod n², r uniform in Z*_n (SPEC §4): the form every
pool falls back to without a DJN table."""
from __future__ import annotations

import secrets
from typing import Any

import gmpy2

from alliance.paillier import _powmod


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
