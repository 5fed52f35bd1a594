"""Refusal rate limits per peer (SPEC §5.4): each refusal spends a token of
the peer's bucket (20 per second, burst 100); a peer with an empty bucket is
turned away with RESOURCE_EXHAUSTED before its request is parsed or logged,
and those requests are summed into one `refusals_suppressed` entry per peer
per minute. Limits are per gateway replica."""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from alliance import log_rules


@dataclass
class _Bucket:
    tokens: float
    updated: float
    suppressed: int = 0
    first_ms: int = 0
    last_ms: int = 0
    role: str = ""


@dataclass(frozen=True)
class Suppressed:
    peer_id: str
    role: str
    count: int
    first_ms: int
    last_ms: int


class RefusalLimiter:
    def __init__(self, *, rate: float = log_rules.REFUSALS_PER_S, burst: int = log_rules.REFUSAL_BURST,
                 clock: Callable[[], float] = time.monotonic, wall_ms: Callable[[], int] = lambda: int(time.time() * 1000),
                 max_peers: int = 100_000) -> None:
        self.rate, self.burst = rate, burst
        self.clock, self.wall_ms = clock, wall_ms
        self.max_peers = max_peers
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def _bucket(self, peer_id: str, now: float) -> _Bucket:
        b = self._buckets.get(peer_id)
        if b is None:
            if len(self._buckets) >= self.max_peers:  # peers are CA-certified, but stay bounded anyway
                self._buckets = {k: v for k, v in self._buckets.items() if v.suppressed}
            b = self._buckets[peer_id] = _Bucket(tokens=float(self.burst), updated=now)
        else:
            b.tokens = min(float(self.burst), b.tokens + (now - b.updated) * self.rate)
            b.updated = now
        return b

    def admit(self, peer_id: str, role: str) -> bool:
        """False when the peer has no refusal left: turn it away unparsed."""
        with self._lock:
            b = self._bucket(peer_id, self.clock())
            if b.tokens >= 1:
                return True
            now_ms = self.wall_ms()
            if b.suppressed == 0:
                b.first_ms = now_ms
            b.suppressed += 1
            b.last_ms, b.role = now_ms, role
            return False

    def refused(self, peer_id: str) -> None:
        with self._lock:
            b = self._bucket(peer_id, self.clock())
            b.tokens = max(0.0, b.tokens - 1)

    def due(self, *, force: bool = False) -> list[Suppressed]:
        """Suppressed counts to log now: each peer's at most once a minute
        (all of them with ``force``, e.g. at shutdown). Taken counts reset."""
        now_ms = self.wall_ms()
        out = []
        with self._lock:
            for peer_id, b in self._buckets.items():
                if b.suppressed and (force or now_ms - b.first_ms >= log_rules.SUPPRESSED_FLUSH_MS):
                    out.append(Suppressed(peer_id, b.role, b.suppressed, b.first_ms, b.last_ms))
                    b.suppressed = 0
        return out

    def restore(self, item: Suppressed) -> None:
        """Put back a count whose entry could not be written (try again later)."""
        with self._lock:
            b = self._bucket(item.peer_id, self.clock())
            if b.suppressed:
                b.first_ms = min(b.first_ms, item.first_ms)
            else:
                b.first_ms, b.last_ms, b.role = item.first_ms, item.last_ms, item.role
            b.suppressed += item.count
