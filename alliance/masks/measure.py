"""Mask costs, measured (the bench's plain-vs-DJN report, docs/masks.md):
``python -m alliance.masks``."""
from __future__ import annotations

import time
from typing import Any

from alliance.masks.budget import TABLE_BUDGET_BYTES
from alliance.masks.plain import _mask_for
from alliance.masks.table import DEFAULT_WINDOW_BITS, DjnTable
from alliance.paillier import MIN_KEY_BITS, PaillierPublicKey


def measure_costs(pk: PaillierPublicKey | None = None, *, rounds: int = 200, plain_rounds: int = 20,
                  exponent_bits: int | None = None, window_bits: int = DEFAULT_WINDOW_BITS) -> dict[str, Any]:
    """CPU time (time.process_time, so other load on the box does not count)
    per plain mask, per DJN mask from a table, and per table build; for the
    bench's plain-vs-DJN report and docs/masks.md."""
    if pk is None:
        from alliance.paillier import generate_keypair

        pk = generate_keypair(MIN_KEY_BITS)[0]
    t0 = time.process_time()
    for _ in range(plain_rounds):
        _mask_for(pk._n, pk._n2)
    plain_s = (time.process_time() - t0) / plain_rounds
    builds = []
    for _ in range(3):
        table = DjnTable(pk, exponent_bits=exponent_bits, window_bits=window_bits)
        builds.append(table.build_s)
    t0 = time.process_time()
    for _ in range(rounds):
        table.mask()
    djn_s = (time.process_time() - t0) / rounds
    return {
        "key_bits": pk.n.bit_length(),
        "plain_mask_ms": round(plain_s * 1000, 3),
        "djn_mask_ms": round(djn_s * 1000, 3),
        "mask_speedup": round(plain_s / djn_s, 1),
        "exponent_bits": table.exponent_bits,
        "window_bits": table.window_bits,
        "table_build_ms": round(min(builds) * 1000, 1),
        "table_mib": round(table.nbytes / 2**20, 2),
        "tables_per_64mib": TABLE_BUDGET_BYTES // table.nbytes,
    }


def _measure() -> None:  # pragma: no cover - manual tool: `python -m alliance.masks`
    from alliance.paillier import generate_keypair

    pk = generate_keypair(MIN_KEY_BITS)[0]
    for bits, w in ((None, 4), (None, 5), (None, 6), (None, 7), (None, 8), (1024, 6), (1024, 8)):
        print(measure_costs(pk, exponent_bits=bits, window_bits=w))
