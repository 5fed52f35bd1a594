"""The node-wide bound on DJN table memory (SPEC §8: ≤ 64 MB per node).
Tables are bounded per node by a TableBudget (default 64 MiB): the least
recently used querier keys lose their table and fall back to plain masks.

The window of a table follows how many querier keys share the budget: the
widest window (up to MAX_WINDOW_BITS) at which every key's table fits, never
below the budget's floor window. A node answering few queriers spends its
budget on faster masks (w = 8: ≈ 56 multiplications instead of 75 at w = 6);
as keys are added, wider tables give their memory back and are rebuilt
narrower, so the number of keys with a table is never below what the floor
window gives."""
from __future__ import annotations

import functools
import logging
import os
import threading
import time
import weakref
from collections import OrderedDict
from typing import TYPE_CHECKING

from alliance.masks.table import DEFAULT_WINDOW_BITS, DjnTable, djn_exponent_bits, estimate_table_bytes
from alliance.paillier import _require_int

if TYPE_CHECKING:
    from alliance.masks.pools import _PoolState

# One logger for the whole package, named as before the split.
log = logging.getLogger("alliance.masks")

TABLE_BUDGET_BYTES = 64 * 1024 * 1024   # SPEC §8: ≤ 64 MB of tables per node
TABLE_MIN_IDLE_S = 60.0                 # a table younger in use than this is never evicted
MAX_WINDOW_BITS = 8                     # widest window: 255 entries per row, ≈ 7.6 MiB per 2048-bit key


class TableBudget:
    """The node-wide bound on table memory. Keys with a table are kept in
    least-recently-used order; admitting a new table evicts the least recently
    used ones (their pools fall back to plain masks), but never a table used
    within ``min_idle_s``: with more busy queriers than fit, the newcomer stays
    plain instead of every key rebuilding its table in turn."""

    def __init__(self, limit_bytes: int = TABLE_BUDGET_BYTES, *, min_idle_s: float = TABLE_MIN_IDLE_S,
                 exponent_bits: int | None = None, window_bits: int = DEFAULT_WINDOW_BITS,
                 max_window_bits: int = MAX_WINDOW_BITS) -> None:
        self.limit_bytes = _require_int(limit_bytes, "limit_bytes")
        self.min_idle_s = float(min_idle_s)
        self.exponent_bits = exponent_bits
        self.window_bits = window_bits  # the floor: every key's table once many keys share the budget
        self.max_window_bits = max(window_bits, _require_int(max_window_bits, "max_window_bits"))
        self.evictions = 0
        self.refusals = 0
        self.narrowed = 0  # tables given back to be rebuilt with a narrower window
        self._keys: dict[int, int] = {}  # the pools sharing this budget: id of their state -> key bits; survives a fork
        self._reset()
        _live_budgets.add(self)

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._holders: OrderedDict[int, _PoolState] = OrderedDict()
        self._reserved = 0
        self.pid = os.getpid()

    def _check_pid(self) -> None:
        if self.pid != os.getpid():      # a fork the at-fork hook did not see
            self._reset()

    @property
    def used_bytes(self) -> int:
        with self._lock:
            self._check_pid()
            return self._reserved

    @property
    def tables(self) -> int:
        with self._lock:
            self._check_pid()
            return len(self._holders)

    def table_bytes_for(self, n_bits: int, window_bits: int | None = None) -> int:
        """The reservation for one table (at the floor window unless told)."""
        bits = self.exponent_bits or djn_exponent_bits(n_bits)
        return _estimate(n_bits, bits, self.window_bits if window_bits is None else window_bits)

    def join(self, state: _PoolState) -> None:
        """A pool now shares this budget (its key counts for the window)."""
        with self._lock:
            self._keys[id(state)] = state.n_bits

    def leave(self, state: _PoolState) -> None:
        with self._lock:
            self._keys.pop(id(state), None)

    @property
    def keys(self) -> int:
        with self._lock:
            return len(self._keys)

    def window(self) -> int:
        """One window for every table of the node: the widest at which the
        tables of every pool sharing the budget, whatever their key sizes,
        fit at once; the floor window when none is wider. (Per key size it
        would let a large key keep asking for a window the others' tables
        leave no room for.)"""
        with self._lock:
            sizes = list(self._keys.values())
        for window in range(self.max_window_bits, self.window_bits, -1):
            if sum(self.table_bytes_for(n_bits, window) for n_bits in sizes) <= self.limit_bytes:
                return window
        return self.window_bits

    def touch(self, state: _PoolState) -> None:
        with self._lock:
            if id(state) in self._holders:
                self._holders.move_to_end(id(state))

    def try_admit(self, state: _PoolState, need: int, window_bits: int | None = None) -> bool:
        """Reserve ``need`` bytes for ``state``'s table, built with
        ``window_bits``. Room is made first from tables wider than that window
        (their keys rebuild narrower on their next refill, busy or not: they
        hold more than their share), then from the least recently used tables
        idle for ``min_idle_s`` (those keys fall back to plain masks)."""
        with self._lock:
            self._check_pid()
            if id(state) in self._holders:
                return True
            if need > self.limit_bytes:
                self.refusals += 1
                return False
            available, now = self.limit_bytes - self._reserved, time.monotonic()
            wider = [] if window_bits is None else [
                other for other in self._holders.values()  # least recently used first
                if other.table is not None and other.table.window_bits > window_bits]
            narrowed = []
            for other in wider:
                if available >= need:
                    break
                narrowed.append(other)
                available += other.table_bytes
            victims = []
            for other in self._holders.values():          # least recently used first
                if available >= need:
                    break
                if other in narrowed:
                    continue
                if now - other.last_use < self.min_idle_s:
                    break                                 # everyone after it is more recent
                victims.append(other)
                available += other.table_bytes
            if available < need:
                self.refusals += 1
                return False
            for other in narrowed:
                self._drop(other)
                self.narrowed += 1
                log.info("a DJN table wider than a %d-bit window gave its memory back; its key rebuilds narrower", window_bits)
            for other in victims:
                self._drop(other)
                self.evictions += 1
                log.info("DJN table of a querier key evicted (LRU); that key falls back to plain masks")
            self._holders[id(state)] = state
            state.table_bytes = need
            self._reserved += need
            return True

    def install(self, state: _PoolState, table: DjnTable) -> bool:
        """Attach a built table if the reservation still stands; the real size
        (≤ the estimate) replaces the reservation."""
        with self._lock:
            if self.pid != os.getpid() or id(state) not in self._holders or table.pid != os.getpid():
                return False
            self._reserved += table.nbytes - state.table_bytes
            state.table_bytes = table.nbytes
            state.table = table
            return True

    def release(self, state: _PoolState) -> None:
        with self._lock:
            if self.pid == os.getpid() and id(state) in self._holders:
                self._drop(state)

    def _drop(self, state: _PoolState) -> None:
        del self._holders[id(state)]
        self._reserved -= state.table_bytes
        state.table_bytes = 0
        state.table = None


# Every budget of this process, reset in a forked child (pools._after_fork_in_child).
_live_budgets: weakref.WeakSet[TableBudget] = weakref.WeakSet()


@functools.lru_cache(maxsize=64)
def _estimate(n_bits: int, exponent_bits: int, window_bits: int) -> int:
    return estimate_table_bytes(n_bits, exponent_bits, window_bits)
