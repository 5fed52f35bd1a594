"""Paillier masks for the alliance (SPEC §4, §8): the randomness of one
encryption, computed ahead of time so the request path does one
multiplication. Two forms, both encryptions of 0 under the querier's key n:

plain   r^n mod n², r uniform in Z*_n                  (≈ 10 ms at 2048 bits)
DJN     h_s^a mod n², h_s = (−x²)^n mod n², a uniform in [1, 2^ℓ)
        (Damgård–Jurik–Nielsen short-exponent form)    (≈ 0.4 ms with a table)

Where each part lives:

- table    the DJN fixed-base windowed table; ℓ per key size; each member
           draws its own base; tables stay in this process
- plain    plain r^n masks from fresh uniform units
- budget   TableBudget: the node-wide LRU bound on table memory (64 MiB) and
           the window each key's table gets (wider while few keys share it)
- pools    MaskPool (one querier key) and MaskPools (the LRU of keys); masks
           handed out once, dropped across a fork
- refill   the one background refiller thread per process
- measure  measure_costs (bench, docs/masks.md); `python -m alliance.masks`
"""
from __future__ import annotations

from alliance.masks.budget import MAX_WINDOW_BITS, TABLE_BUDGET_BYTES, TABLE_MIN_IDLE_S, TableBudget
from alliance.masks.measure import measure_costs
from alliance.masks.pools import MODES, MaskPool, MaskPools, mode_from_env
from alliance.masks.table import DEFAULT_WINDOW_BITS, DjnTable, djn_exponent_bits, estimate_table_bytes

__all__ = [
    "DjnTable", "TableBudget", "MaskPool", "MaskPools", "djn_exponent_bits", "estimate_table_bytes",
    "TABLE_BUDGET_BYTES", "DEFAULT_WINDOW_BITS", "MAX_WINDOW_BITS", "mode_from_env", "measure_costs",
]
