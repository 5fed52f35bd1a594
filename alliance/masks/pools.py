"""Mask pools (SPEC §4, §8): MaskPool holds the precomputed masks of one
querier key, MaskPools one pool per key (least recently used first out) and
the node's TableBudget.

Masks live in memory only: never pickled, logged or written to disk, never
shared across a fork (a forked child drops every table and mask and rebuilds
lazily with a fresh x), and every mask is handed out once.
"""
from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections import OrderedDict, deque
from typing import Any

from alliance.masks import refill
from alliance.masks.budget import MAX_WINDOW_BITS, TABLE_BUDGET_BYTES, TABLE_MIN_IDLE_S, TableBudget, _live_budgets
from alliance.masks.plain import _mask_for, _masks_for
from alliance.masks.refill import REFILL_BATCH, REFILL_LOW_WATER, _last_take
from alliance.masks.table import DEFAULT_WINDOW_BITS, DjnTable
from alliance.paillier import PaillierPublicKey, _require_int

# One logger for the whole package, named as before the split.
log = logging.getLogger("alliance.masks")

MODES = ("djn", "plain")


class _PoolState:
    """Everything the refiller touches, kept apart from the MaskPool handle so
    that the refiller never keeps an abandoned pool alive."""

    __slots__ = ("n", "n2", "n_bits", "target", "lock", "masks", "closed", "queued", "generation", "pid", "misses",
                 "budget", "table", "table_bytes", "last_use", "djn_masks", "plain_masks", "__weakref__")

    def __init__(self, pk: PaillierPublicKey, target: int, budget: TableBudget | None) -> None:
        self.n, self.n2, self.n_bits, self.target = pk._n, pk._n2, pk.n.bit_length(), target
        self.lock = threading.Lock()
        self.masks: deque[Any] = deque()
        self.closed = False
        self.queued = False      # guarded by the refiller's lock
        self.generation = 0      # bumped on close/fork: stale refills are dropped
        self.pid = os.getpid()
        self.misses = 0
        self.budget = budget     # None: plain masks only
        if budget is not None:
            budget.join(self)    # this key counts for the window every key's table gets
        self.table: DjnTable | None = None
        self.table_bytes = 0
        self.last_use = time.monotonic()
        self.djn_masks = 0       # masks made (background or inline), by form
        self.plain_masks = 0

    def is_low(self) -> bool:
        with self.lock:
            return len(self.masks) < min(REFILL_LOW_WATER, self.target)

    def wants_more(self) -> bool:
        with self.lock:
            return not self.closed and self.pid == os.getpid() and len(self.masks) < self.target

    def usable_table(self) -> DjnTable | None:
        table = self.table
        return table if table is not None and table.pid == os.getpid() else None

    def ensure_table(self) -> DjnTable | None:
        """Build this key's table if the budget admits it (refiller or warm-up,
        never on the request path), with the window the budget gives each of
        its keys now; a table wider than that gives its memory back first
        (more keys share the budget than when it was built)."""
        table = self.usable_table()
        budget = self.budget
        if budget is None or self.closed or self.pid != os.getpid():
            return table
        window = budget.window()
        if table is not None:
            if table.window_bits <= window:
                return table
            budget.release(self)  # masks it made stay valid (and single-use); the next ones come from the new table
            log.debug("rebuilding a DJN table with a %d-bit window (was %d)", window, table.window_bits)
            table = None  # the old table's memory goes before the new one is built
        if not budget.try_admit(self, budget.table_bytes_for(self.n_bits, window), window):
            return None
        generation = self.generation
        try:
            table = DjnTable(PaillierPublicKey(int(self.n)), exponent_bits=budget.exponent_bits,
                             window_bits=window)
        except Exception:
            budget.release(self)
            raise
        if generation != self.generation or self.closed or not budget.install(self, table):
            budget.release(self)
            return None
        log.debug("built a DJN table: %s in %.0f ms", table, table.build_s * 1000)
        return table

    def make_masks(self, count: int) -> list[Any]:
        table = self.usable_table()
        if table is not None:
            self.djn_masks += count
            return [table.mask() for _ in range(count)]
        self.plain_masks += count
        if count == 1:
            return [_mask_for(self.n, self.n2)]
        return _masks_for(self.n, self.n2, count)

    def refill_some(self) -> None:
        with self.lock:
            missing = self.target - len(self.masks)
            if self.closed or missing <= 0:
                return
            generation = self.generation
        self.ensure_table()
        masks = self.make_masks(min(missing, REFILL_BATCH))
        with self.lock:   # only the refiller adds, so this never overshoots the target
            if generation == self.generation and not self.closed and self.pid == os.getpid():
                self.masks.extend(masks)

    def discard(self) -> None:
        """Forget every precomputed mask and the table (this is a forked child)."""
        self.lock = threading.Lock()     # the parent's lock may be held by a thread that no longer exists
        self.masks = deque()
        self.generation += 1
        self.queued = False
        self.table = None
        self.table_bytes = 0
        self.pid = os.getpid()


# Every pool state of this process, emptied in a forked child.
_live_states: weakref.WeakSet[_PoolState] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    """SPEC §4: a mask is never shared across a fork, nor is a table. The
    child gets empty pools, no tables (rebuilt lazily with a fresh x), empty
    budgets and a refiller with no thread (threads do not survive fork)."""
    refill.restart_after_fork()
    for budget in list(_live_budgets):
        budget._reset()
    for state in list(_live_states):
        state.discard()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _close_state(state: _PoolState) -> None:
    with state.lock:
        state.closed = True
        state.generation += 1
        state.masks.clear()
    if state.budget is not None:
        state.budget.release(state)
        state.budget.leave(state)
    state.table = None


class MaskPool:
    """Precomputed masks for one querier key. ``take()`` returns a mask never
    handed out before; if none is ready it computes one inline (from the
    table if the key has one, else plain) — it never blocks on the refiller
    and never reuses. With a ``budget`` the pool uses a DJN table while the
    budget grants one; without, plain r^n masks only."""

    def __init__(self, pk: PaillierPublicKey, *, target: int = 32, budget: TableBudget | None = None) -> None:
        target = _require_int(target, "target")
        if target < 0:
            raise ValueError("target must be ≥ 0")
        self._pk = pk
        self._state = _PoolState(pk, target, budget)
        _live_states.add(self._state)
        self._finalizer = weakref.finalize(self, _close_state, self._state)
        if target:
            refill.request(self._state)

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

    @property
    def mode(self) -> str:
        """"djn" while this process holds a table for the key, else "plain"."""
        return "djn" if self._state.usable_table() is not None else "plain"

    @property
    def table(self) -> DjnTable | None:
        return self._state.usable_table()

    @property
    def made(self) -> dict[str, int]:
        return {"djn": self._state.djn_masks, "plain": self._state.plain_masks}

    def _check_process(self) -> _PoolState:
        state = self._state
        if state.pid != os.getpid():     # a fork the at-fork hook did not see
            state.discard()
        return state

    def ensure_table(self) -> bool:
        """Build the table now (warm-up, tests); True if the key has one."""
        return self._check_process().ensure_table() is not None

    def take(self) -> int:
        now = time.monotonic()
        _last_take[0] = now
        state = self._check_process()
        state.last_use = now
        with state.lock:
            mask = state.masks.popleft() if state.masks else None
            if mask is None:
                state.misses += 1
        if state.budget is not None:
            state.budget.touch(state)
        if state.target and not state.closed:
            refill.request(state)
        if mask is None:
            mask = state.make_masks(1)[0]
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
        """Drop every precomputed mask and the table, stop refilling. take()
        still works (inline, plain), so a request racing an LRU eviction never
        fails."""
        self._finalizer()

    def __repr__(self) -> str:
        return f"MaskPool({self._pk!r}, size={self.size}, target={self.target}, mode={self.mode})"

    def __reduce__(self) -> Any:
        raise TypeError("MaskPool holds one-time masks and must never leave this process")


def mode_from_env() -> str:
    """ALLIANCE_MASKS=plain|djn (default djn): plain stays for comparison."""
    mode = os.environ.get("ALLIANCE_MASKS", "djn").strip().lower() or "djn"
    if mode not in MODES:
        raise ValueError(f"ALLIANCE_MASKS must be one of {', '.join(MODES)}, got {mode!r}")
    return mode


class MaskPools:
    """One MaskPool per querier key (by n), least-recently-used first out, and
    one TableBudget for the node's DJN tables (mode "djn"; "plain" keeps the
    r^n path only)."""

    def __init__(self, target: int = 32, max_keys: int = 64, *, mode: str = "djn",
                 table_budget_bytes: int = TABLE_BUDGET_BYTES, min_idle_s: float = TABLE_MIN_IDLE_S,
                 exponent_bits: int | None = None, window_bits: int = DEFAULT_WINDOW_BITS,
                 max_window_bits: int = MAX_WINDOW_BITS) -> None:
        if _require_int(max_keys, "max_keys") < 1:
            raise ValueError("max_keys must be ≥ 1")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        self._target = _require_int(target, "target")
        self._max_keys = max_keys
        self.mode = mode
        self.budget = None if mode == "plain" else TableBudget(
            table_budget_bytes, min_idle_s=min_idle_s, exponent_bits=exponent_bits, window_bits=window_bits,
            max_window_bits=max_window_bits)
        self._pools: OrderedDict[int, MaskPool] = OrderedDict()
        self._lock = threading.Lock()

    def for_key(self, pk: PaillierPublicKey) -> MaskPool:
        evicted: list[MaskPool] = []
        with self._lock:
            pool = self._pools.get(pk.n)
            if pool is not None and not pool.closed:
                self._pools.move_to_end(pk.n)
                return pool
            pool = MaskPool(pk, target=self._target, budget=self.budget)
            self._pools[pk.n] = pool
            while len(self._pools) > self._max_keys:
                evicted.append(self._pools.popitem(last=False)[1])
        for old in evicted:
            old.close()
        return pool

    def warm(self, pk: PaillierPublicKey) -> MaskPool:
        """A querier key this node expects to answer: make its pool now, so
        the refiller builds the table and fills the pool before its first
        query (known keys at start, new ones on first sight)."""
        return self.for_key(pk)

    @property
    def table_bytes(self) -> int:
        return 0 if self.budget is None else self.budget.used_bytes

    def levels(self) -> dict[str, int]:
        """Counts only, for metrics (SPEC §12): never a key, mask or table."""
        with self._lock:
            pools = [p for p in self._pools.values() if not p.closed]
        return {"pools": len(pools), "masks_available": sum(p.size for p in pools),
                "misses": sum(p.misses for p in pools), "table_bytes": self.table_bytes}

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
