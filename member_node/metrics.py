"""A member node's Prometheus metrics (SPEC §12), on its own registry.

    alliance_member_answers_total{outcome,reason}   outcome: answered|refused|error; reason: the member's refusal
                                                    reason (a code constant such as not_sponsored, replayed_query), or "none"
    alliance_member_answer_seconds{outcome}         histogram of the time to answer one query
    alliance_member_import_rows{kind}               rows in the loan book by UDS-1 kind (loans|flags|scores), read at scrape
    alliance_member_import_runs{kind}               committed `member import` runs by kind, read at scrape
    alliance_member_last_import_timestamp_seconds{kind}
    alliance_member_feed_age_seconds                age of this member's proven view of the membership feed
    alliance_member_witness_lag_seconds             seconds since this member last cosigned a checkpoint
                                                    (only when a witness loop is bound, see bind_witness)
    alliance_member_mask_pools / _mask_pool_masks_available / _mask_pool_table_bytes / _mask_pool_misses

Imports run in their own short-lived process (`alliance member import`), so
the serving process reads import figures from the book itself at scrape
time: they are right whichever process imported, and survive restarts.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from sqlalchemy import Engine, func, select

from alliance import metrics as m

OUTCOMES = ("answered", "refused", "error")
BOOK_KINDS = ("loans", "flags", "scores")


class MemberMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.answers = Counter("alliance_member_answers", "Queries this member answered or refused, by outcome and "
                               "refusal reason.", ["outcome", "reason"], registry=r)
        self.latency = Histogram("alliance_member_answer_seconds", "Time to answer (or refuse) one query.",
                                 ["outcome"], buckets=m.LATENCY_BUCKETS, registry=r)
        self.answers.labels("answered", "none")
        for outcome in OUTCOMES:
            self.latency.labels(outcome)
        self.gauges = m.GaugeCollector("alliance_member")
        r.register(self.gauges)

    def bind(self, *, engine: Engine | None = None, mask_pools: Any = None,
             feed_age: Callable[[], float] | None = None) -> "MemberMetrics":
        if mask_pools is not None:
            m.add_mask_pool_gauges(self.gauges, mask_pools)
        if engine is not None:
            self.gauges.add("import_rows", "Rows held in the loan book by UDS-1 kind (what `member import` wrote).",
                            lambda: book_rows(engine), ("kind",))
            self.gauges.add("import_runs", "Committed `member import` runs by kind.",
                            lambda: {(k,): v for k, (v, _) in import_runs(engine).items()}, ("kind",))
            self.gauges.add("last_import_timestamp_seconds", "Start of the latest committed import by kind (Unix time).",
                            lambda: {(k,): t for k, (_, t) in import_runs(engine).items() if t is not None}, ("kind",))
        if feed_age is not None:
            self.gauges.add("feed_age_seconds", "Age of this member's proven view of the membership feed.", feed_age)
        return self

    def bind_witness(self, lag_s: Callable[[], float | None]) -> "MemberMetrics":
        """For the witness loop (SPEC §6.3): seconds since this member last cosigned."""
        self.gauges.add("witness_lag_seconds", "Seconds since this member last cosigned a checkpoint.", lag_s)
        return self

    # -- call sites ------------------------------------------------------------

    def answered(self, seconds: float) -> None:
        self.answers.labels("answered", "none").inc()
        self.latency.labels("answered").observe(seconds)

    def refused(self, reason: str, seconds: float) -> None:
        self.answers.labels("refused", m.bounded(reason)).inc()
        self.latency.labels("refused").observe(seconds)

    def failed(self, seconds: float) -> None:
        self.answers.labels("error", "internal").inc()
        self.latency.labels("error").observe(seconds)


class NullMemberMetrics(MemberMetrics):
    def __init__(self) -> None:  # noqa: D107 - no registry, no cost
        pass

    def answered(self, seconds: float) -> None:
        pass

    def refused(self, reason: str, seconds: float) -> None:
        pass

    def failed(self, seconds: float) -> None:
        pass


NULL = NullMemberMetrics()


def book_rows(engine: Engine) -> dict[tuple[str], int]:
    from alliance_member import store

    with engine.connect() as conn:
        return {(kind,): conn.execute(select(func.count()).select_from(store.BOOK_TABLES[kind])).scalar_one()
                for kind in BOOK_KINDS}


def import_runs(engine: Engine) -> dict[str, tuple[int, float | None]]:
    from alliance_member import store

    t = store.import_runs.c
    with engine.connect() as conn:
        rows = conn.execute(select(t.kind, func.count(), func.max(t.started_at)).group_by(t.kind)).all()
    out: dict[str, tuple[int, float | None]] = {kind: (0, None) for kind in BOOK_KINDS}
    for kind, count, latest in rows:
        if kind in out:
            out[kind] = (count, _unix(latest))
    return out


def _unix(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, str):  # SQLite may hand back text for an aggregate
        from datetime import datetime

        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        from datetime import timezone

        value = value.replace(tzinfo=timezone.utc)
    return value.timestamp()
