"""The gateway's Prometheus metrics (SPEC §12), on its own registry.

    alliance_gateway_queries_total{kind,outcome}            kind: query|precheck; outcome: accepted|refused|rate_limited
    alliance_gateway_refusals_total{kind,reason}             reason: a gateway refusal reason (refusals.REFUSALS) or rate_limited
    alliance_gateway_query_seconds{kind,outcome}             histogram of query handling, receipt to logged
    alliance_gateway_answers_dropped_total{member,reason}    reason: deadline_exceeded|malformed_answer|unreachable|refused|error
    alliance_gateway_member_batch_items                      histogram of requests per call to a member (AnswerBatch, SPEC §8)
    alliance_gateway_log_batch_entries                       histogram of query entries per log transaction (group commit, SPEC §8)
    alliance_gateway_log_size                                audit-log entries (read at scrape)
    alliance_gateway_mask_pools / _mask_pool_masks_available / _mask_pool_table_bytes / _mask_pool_misses

``member`` is a registered member id (operator-chosen, one per member: bounded
by the alliance's size); every other label comes from a fixed list.
"""
from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

from alliance import metrics as m
from alliance_gateway.refusals import REFUSALS

KINDS = ("query", "precheck")
OUTCOMES = ("accepted", "refused", "rate_limited")
REASONS = (*REFUSALS, "rate_limited")


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.queries = Counter("alliance_gateway_queries", "Queries handled, by kind and outcome.",
                               ["kind", "outcome"], registry=r)
        self.refusals = Counter("alliance_gateway_refusals", "Refused queries, by kind and refusal reason.",
                                ["kind", "reason"], registry=r)
        self.latency = Histogram("alliance_gateway_query_seconds", "Time to handle one query (admission, fan-out, "
                                 "aggregation, durable log append).", ["kind", "outcome"], buckets=m.LATENCY_BUCKETS, registry=r)
        self.dropped = Counter("alliance_gateway_answers_dropped", "Member answers dropped (never summed), by member "
                               "and normalised reason.", ["member", "reason"], registry=r)
        # SPEC §8: how well the per-member dispatchers coalesce (1 = light load, no waiting).
        self.batch_items = Histogram("alliance_gateway_member_batch_items", "Requests sent per call to a member "
                                     "(AnswerBatch).", buckets=(1, 2, 4, 8, 16, 32, 64), registry=r)
        self.log_batch_entries = Histogram("alliance_gateway_log_batch_entries", "Query log entries written per "
                                           "transaction (group commit).", buckets=(1, 2, 4, 8, 16, 32, 64), registry=r)
        for kind in KINDS:  # the series exist (at 0) before the first query, so rate() works from the start
            for outcome in ("accepted", "refused"):
                self.queries.labels(kind, outcome)
                self.latency.labels(kind, outcome)
        self.gauges = m.GaugeCollector("alliance_gateway")
        r.register(self.gauges)

    def bind(self, service: Any) -> "GatewayMetrics":
        """Gauges read from a GatewayService at scrape time."""
        self.gauges.add("log_size", "Entries in the audit log.", service.log.size)
        m.add_mask_pool_gauges(self.gauges, service.mask_pools)
        return self

    # -- call sites ------------------------------------------------------------

    def query_done(self, kind: str, seconds: float, dropped: list[dict[str, Any]], reason: str | None = None) -> None:
        kind = m.bounded(kind, KINDS)
        outcome = "accepted" if reason is None else "refused"
        self.queries.labels(kind, outcome).inc()
        self.latency.labels(kind, outcome).observe(seconds)
        if reason is not None:
            self.refusals.labels(kind, m.bounded(reason, REASONS)).inc()
        for d in dropped:
            self.dropped.labels(m.member_label(str(d.get("member_id", ""))), m.drop_reason(str(d.get("reason", "")))).inc()

    def member_batch(self, items: int) -> None:
        self.batch_items.observe(items)

    def log_batch(self, entries: int) -> None:
        self.log_batch_entries.observe(entries)

    def rate_limited(self, kind: str) -> None:
        kind = m.bounded(kind, KINDS)
        self.queries.labels(kind, "rate_limited").inc()
        self.refusals.labels(kind, "rate_limited").inc()


class NullGatewayMetrics(GatewayMetrics):
    """What a GatewayService records into when metrics are off."""

    def __init__(self) -> None:  # noqa: D107 - no registry, no cost
        pass

    def bind(self, service: Any) -> "GatewayMetrics":
        return self

    def query_done(self, kind: str, seconds: float, dropped: list[dict[str, Any]], reason: str | None = None) -> None:
        pass

    def rate_limited(self, kind: str) -> None:
        pass

    def member_batch(self, items: int) -> None:
        pass

    def log_batch(self, entries: int) -> None:
        pass


NULL = NullGatewayMetrics()
