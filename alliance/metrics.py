"""Prometheus metrics shared by every server (SPEC §12).

Each server process builds its own ``CollectorRegistry`` (never the
prometheus-client global default), so several gateways and member nodes in
one test process never collide, and serves it over plain HTTP only when
``--metrics-listen HOST:PORT`` is given.

Label cardinality is bounded by construction: labels only ever take values
from fixed code lists (query kinds, outcomes, the gateway's refusal reasons,
normalised drop reasons, the three book kinds), or member ids. Member ids are
chosen by the operator at registration, one per alliance member: fine for an
alliance of tens of members, and the only open-ended label. No query id,
subject token, free-text error message or member-supplied string is ever a
label value.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from alliance.errors import UsageError

log = logging.getLogger("alliance.metrics")

# Seconds: a member answer takes ~1-50 ms, a gateway query up to its deadline (2 s default).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# Why the gateway dropped a member's answer, normalised from its free-text record.
DROP_REASONS = ("deadline_exceeded", "malformed_answer", "unreachable", "refused", "error")
_GRPC_TO_DROP = {
    "deadline_exceeded": "deadline_exceeded",
    "cancelled": "deadline_exceeded",
    "malformed_answer": "malformed_answer",
    "unreachable": "unreachable",
    "unavailable": "unreachable",
    "permission_denied": "refused",
    "failed_precondition": "refused",
    "unauthenticated": "refused",
    "resource_exhausted": "refused",
    "invalid_argument": "refused",
}

_LABEL_SAFE = re.compile(r"^[a-z][a-z0-9_]{0,47}$")
_MEMBER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def drop_reason(text: str) -> str:
    """One of DROP_REASONS for a dropped answer's recorded reason, e.g.
    ``"permission_denied: not_sponsored: …"`` → ``refused``."""
    head = str(text).split(":", 1)[0].strip().lower()
    return _GRPC_TO_DROP.get(head, "error")


def bounded(value: str, allowed: Iterable[str] | None = None, *, other: str = "other") -> str:
    """``value`` if it is in ``allowed`` (or, without a list, a short
    lower-case identifier as code constants are), else ``other``."""
    if allowed is not None:
        return value if value in allowed else other
    return value if _LABEL_SAFE.match(value or "") else other


def member_label(member_id: str) -> str:
    """A registered member id as a label value (bounded by the alliance's size)."""
    return member_id if _MEMBER_ID.match(member_id or "") else "unknown"


def parse_listen(value: str) -> tuple[str, int]:
    """HOST:PORT (``[::1]:9100`` for IPv6; port 0 picks a free one)."""
    host, sep, port = value.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise UsageError(f"--metrics-listen must be HOST:PORT with a port 0-65535, not {value!r}")
    return host, int(port)


@dataclass
class MetricsEndpoint:
    """A running /metrics HTTP server for one registry."""

    server: Any
    thread: Any
    host: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def serve_metrics(registry: CollectorRegistry, listen: str) -> MetricsEndpoint:
    """Serve ``registry`` at http://HOST:PORT/metrics in a daemon thread."""
    host, port = parse_listen(listen)
    try:
        server, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise UsageError(f"--metrics-listen {listen}: cannot listen ({exc.strerror or exc})") from None
    endpoint = MetricsEndpoint(server, thread, host, server.server_address[1])
    log.info("metrics at %s", endpoint.url)
    return endpoint


class GaugeCollector(Collector):
    """Gauges read at scrape time (log size, pool levels, feed age …): the
    value is always current and costs nothing between scrapes. A failing
    reader omits its gauge from that scrape rather than failing the scrape."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self._readers: list[tuple[str, str, Callable[[], Any], tuple[str, ...]]] = []

    def add(self, name: str, documentation: str, read: Callable[[], Any], labels: tuple[str, ...] = ()) -> None:
        """``read`` returns a number, or with ``labels`` a dict from a label
        tuple to a number."""
        self._readers.append((f"{self.prefix}_{name}", documentation, read, labels))

    def collect(self) -> Iterable[GaugeMetricFamily]:
        for name, documentation, read, labels in self._readers:
            try:
                value = read()
            except Exception:  # noqa: BLE001 - a scrape must never take the server down
                log.debug("metric %s unavailable", name, exc_info=True)
                continue
            if value is None:
                continue
            family = GaugeMetricFamily(name, documentation, labels=list(labels) if labels else None)
            if labels:
                for key, v in value.items():
                    family.add_metric(list(key), float(v))
            else:
                family.add_metric([], float(value))
            yield family

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return []  # values are read per scrape; nothing to describe up front


def mask_pool_levels(pools: Any) -> dict[str, float]:
    """Summary of a MaskPools (never per querier key: keys are not labels):
    pools alive, masks ready across them, DJN table memory."""
    snapshot = pools.levels()
    return {"pools": snapshot["pools"], "masks_available": snapshot["masks_available"],
            "table_bytes": snapshot["table_bytes"], "misses": snapshot["misses"]}


def add_mask_pool_gauges(collector: GaugeCollector, pools: Any) -> None:
    collector.add("mask_pools", "Mask pools alive in memory (one per querier key).",
                  lambda: mask_pool_levels(pools)["pools"])
    collector.add("mask_pool_masks_available", "Precomputed masks ready, summed over every pool.",
                  lambda: mask_pool_levels(pools)["masks_available"])
    collector.add("mask_pool_table_bytes", "Memory held by DJN fixed-base tables, bytes.",
                  lambda: mask_pool_levels(pools)["table_bytes"])
    collector.add("mask_pool_misses", "Masks computed on the request path because a pool was empty (live pools).",
                  lambda: mask_pool_levels(pools)["misses"])
