"""Paillier masks for the alliance (SPEC §4, §8): the randomness of one
encryption, computed ahead of time so the request path does one
multiplication. Two forms, both encryptions of 0 under the querier's key n:

plain   r^n mod n², r uniform in Z*_n                  (≈ 10 ms at 2048 bits)
DJN     h_s^a mod n², h_s = (−x²)^n mod n², a uniform in [1, 2^ℓ)
        (Damgård–Jurik–Nielsen short-exponent form)    (≈ 0.4 ms with a table)

For DJN, every member node draws its OWN x per querier key from its CSPRNG
(never a base chosen by the querier or the gateway: h_s = 1, or any base whose
discrete log someone knows, would let that someone strip the mask and read the
member's figures). The fixed base h_s gets a windowed table: row i holds
h_s^(j·2^(w·i)) for j = 1 … 2^w − 1, so h_s^a is one multiplication per
non-zero w-bit digit of a (⌈ℓ/w⌉ at most). Security rests on the assumption
that h_s^a with a short uniform a is indistinguishable from a uniform element
of the subgroup ⟨h_s⟩ of n-th residues (docs/masks.md: the assumption, the
choice ℓ = 4λ = 448 bits at 2048-bit n, the table's memory).

Tables and masks live in memory only: never pickled, logged or written to
disk, never shared across a fork (a forked child drops every table and mask
and rebuilds lazily with a fresh x), and every mask is handed out once. Tables
are bounded per node by a TableBudget (default 64 MiB): the least recently
used querier keys lose their table and fall back to plain masks.

Background mechanism: ONE daemon thread per process (the "refiller") tops up
every live pool round-robin, REFILL_BATCH masks at a time, and builds a key's
table before its first refill. Plain r^n is computed by
gmpy2.powmod_base_list, which releases the GIL; a DJN mask is ~75 GIL-holding
4096-bit multiplications (≈ 5 µs each), so the refiller yields to request
threads every few of them. It also lowers its own scheduling priority (Linux,
best effort) and refills between requests, not during them.
"""
from __future__ import annotations

import logging
import os
import secrets
import sys
import threading
import time
import weakref
from collections import OrderedDict, deque
from typing import Any

import gmpy2

from alliance.paillier import MIN_KEY_BITS, PaillierPublicKey, RandBelow, _powmod, _require_int
from alliance.errors import CryptoError

__all__ = [
    "DjnTable", "TableBudget", "MaskPool", "MaskPools", "djn_exponent_bits", "estimate_table_bytes",
    "TABLE_BUDGET_BYTES", "DEFAULT_WINDOW_BITS", "mode_from_env", "measure_costs",
]

log = logging.getLogger(__name__)

REFILL_NICE = 5                 # the refill thread yields CPU to request threads
REFILL_BATCH = 4                # masks per refill step in the background
REFILL_QUIET_S = 0.05           # refill only after this long without a take()…
REFILL_LOW_WATER = 4            # …unless the pool is nearly empty

TABLE_BUDGET_BYTES = 64 * 1024 * 1024   # SPEC §8: ≤ 64 MB of tables per node
DEFAULT_WINDOW_BITS = 6                 # 2^6 − 1 = 63 entries per window
TABLE_MIN_IDLE_S = 60.0                 # a table younger in use than this is never evicted
MODES = ("djn", "plain")

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


# ---------------------------------------------------------------- DJN table

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


# ---------------------------------------------------------------- budget

class TableBudget:
    """The node-wide bound on table memory. Keys with a table are kept in
    least-recently-used order; admitting a new table evicts the least recently
    used ones (their pools fall back to plain masks), but never a table used
    within ``min_idle_s``: with more busy queriers than fit, the newcomer stays
    plain instead of every key rebuilding its table in turn."""

    def __init__(self, limit_bytes: int = TABLE_BUDGET_BYTES, *, min_idle_s: float = TABLE_MIN_IDLE_S,
                 exponent_bits: int | None = None, window_bits: int = DEFAULT_WINDOW_BITS) -> None:
        self.limit_bytes = _require_int(limit_bytes, "limit_bytes")
        self.min_idle_s = float(min_idle_s)
        self.exponent_bits = exponent_bits
        self.window_bits = window_bits
        self.evictions = 0
        self.refusals = 0
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

    def table_bytes_for(self, n_bits: int) -> int:
        bits = self.exponent_bits or djn_exponent_bits(n_bits)
        return estimate_table_bytes(n_bits, bits, self.window_bits)

    def touch(self, state: _PoolState) -> None:
        with self._lock:
            if id(state) in self._holders:
                self._holders.move_to_end(id(state))

    def try_admit(self, state: _PoolState, need: int) -> bool:
        with self._lock:
            self._check_pid()
            if id(state) in self._holders:
                return True
            if need > self.limit_bytes:
                self.refusals += 1
                return False
            available, victims, now = self.limit_bytes - self._reserved, [], time.monotonic()
            for other in self._holders.values():          # least recently used first
                if available >= need:
                    break
                if now - other.last_use < self.min_idle_s:
                    break                                 # everyone after it is more recent
                victims.append(other)
                available += other.table_bytes
            if available < need:
                self.refusals += 1
                return False
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


# ---------------------------------------------------------------- pools

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
        never on the request path)."""
        table = self.usable_table()
        budget = self.budget
        if table is not None or budget is None or self.closed or self.pid != os.getpid():
            return table
        if not budget.try_admit(self, budget.table_bytes_for(self.n_bits)):
            return None
        generation = self.generation
        try:
            table = DjnTable(PaillierPublicKey(int(self.n)), exponent_bits=budget.exponent_bits,
                             window_bits=budget.window_bits)
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
_live_budgets: weakref.WeakSet[TableBudget] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    """SPEC §4: a mask is never shared across a fork, nor is a table. The
    child gets empty pools, no tables (rebuilt lazily with a fresh x), empty
    budgets and a refiller with no thread (threads do not survive fork)."""
    global _refiller
    _refiller = _Refiller()
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
            _refiller.request(state)
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
                 exponent_bits: int | None = None, window_bits: int = DEFAULT_WINDOW_BITS) -> None:
        if _require_int(max_keys, "max_keys") < 1:
            raise ValueError("max_keys must be ≥ 1")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        self._target = _require_int(target, "target")
        self._max_keys = max_keys
        self.mode = mode
        self.budget = None if mode == "plain" else TableBudget(
            table_budget_bytes, min_idle_s=min_idle_s, exponent_bits=exponent_bits, window_bits=window_bits)
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


# ---------------------------------------------------------------- measurement

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


if __name__ == "__main__":  # pragma: no cover
    _measure()
