"""The background refiller (SPEC §4): ONE daemon thread per process tops up
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
import threading
import time
from collections import deque
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from alliance.masks.pools import _PoolState

# One logger for the whole package, named as before the split.
log = logging.getLogger("alliance.masks")

REFILL_NICE = 5                 # the refill thread yields CPU to request threads
REFILL_BATCH = 4                # masks per refill step in the background
REFILL_QUIET_S = 0.05           # refill only after this long without a take()…
REFILL_LOW_WATER = 4            # …unless the pool is nearly empty


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


def request(state: _PoolState) -> None:
    """Queue ``state`` for this process' refiller (started lazily)."""
    _refiller.request(state)


def restart_after_fork() -> None:
    """A forked child gets a refiller with no thread (threads do not survive fork)."""
    global _refiller
    _refiller = _Refiller()
