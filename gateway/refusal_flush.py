"""The refusal rate limit at the gateway's edge (SPEC §5.4) and its
bookkeeping: a peer over the limit is turned away unread with
`rate_limited`, and a background thread logs one `refusals_suppressed`
entry per peer once its minute is up. The gateway's background work
(this flusher and the witness cutter of WitnessRpcs) starts and stops here.
A mixin of GatewayService."""
from __future__ import annotations

import logging
import threading
from typing import Any

import grpc

from alliance import log_rules
from alliance_gateway import audit_log
from alliance_gateway.rate_limit import RefusalLimiter

log = logging.getLogger("alliance.gateway")

SUPPRESSED_FLUSH_INTERVAL_S = 5.0


class RefusalFlush:
    """_check_rate, flush_suppressed, start_background, stop_background.

    Needs of the host class: engine, limiter, metrics, _stop, _flusher, and
    start_witness_cutter / stop_witness_cutter (WitnessRpcs)."""

    engine: Any
    limiter: RefusalLimiter
    metrics: Any
    _stop: threading.Event
    _flusher: threading.Thread | None

    def _check_rate(self, context: grpc.ServicerContext, peer_id: str, peer_role: str, kind: str = "query") -> None:
        if not self.limiter.admit(peer_id, peer_role):
            self.metrics.rate_limited(kind)
            context.set_trailing_metadata((("alliance-reason", "rate_limited"), ("alliance-exit-code", "4")))
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"rate_limited: more than {log_rules.REFUSALS_PER_S} refused requests per second from {peer_id}; "
                          "requests are turned away unread until the rate drops")

    def flush_suppressed(self, *, force: bool = False) -> int:
        """Log one `refusals_suppressed` entry per peer whose minute is up."""
        written = 0
        for item in self.limiter.due(force=force):
            try:
                with self.engine.begin() as conn:
                    audit_log.append(conn, lambda seq, when, i=item: {
                        "v": 2, "kind": "refusals_suppressed", "seq": seq, "time": when, "peer_id": i.peer_id,
                        "role": i.role, "count": i.count, "first_ms": i.first_ms, "last_ms": i.last_ms})
                written += 1
            except Exception:  # noqa: BLE001 - the database may be briefly away; keep the count for later
                log.exception("could not log suppressed refusals of %s; will retry", item.peer_id)
                self.limiter.restore(item)
        return written

    def start_background(self) -> None:
        def run() -> None:
            while not self._stop.wait(SUPPRESSED_FLUSH_INTERVAL_S):
                self.flush_suppressed()
            self.flush_suppressed(force=True)

        self._flusher = threading.Thread(target=run, name="refusals-suppressed", daemon=True)
        self._flusher.start()
        self.start_witness_cutter()  # type: ignore[attr-defined]

    def stop_background(self) -> None:
        self._stop.set()
        if self._flusher is not None:
            self._flusher.join(timeout=5)
        self.stop_witness_cutter()  # type: ignore[attr-defined]
