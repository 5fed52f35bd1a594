"""Alerts a member node raises for its own staff: one table, one function to
raise and one to list (SPEC §5.1, §6.1, §6.2, §9). Every alert is also a
warning in the node's log, so an operator tailing it sees it at once."""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, insert, select

from alliance_member import store

log = logging.getLogger("alliance.member.alerts")


@dataclass(frozen=True)
class Alert:
    id: int
    kind: str
    raised_at_ms: int
    message: str
    details: dict[str, Any]


def raise_alert(engine: Engine, kind: str, message: str, details: dict[str, Any] | None = None, *, now_ms: int | None = None) -> int:
    """Record an alert durably and log it; returns its id."""
    doc = json.dumps(details or {}, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    with engine.begin() as conn:
        result = conn.execute(insert(store.alerts).values(kind=kind, raised_at_ms=now_ms if now_ms is not None else int(time.time() * 1000),
                                                          message=message[:1024], details=doc[:8192]))
        alert_id = int(result.inserted_primary_key[0])
    log.warning("ALERT %s: %s", kind, message)
    return alert_id


def list_alerts(engine: Engine, *, since_ms: int = 0, after_id: int = 0, kinds: tuple[str, ...] = ()) -> list[Alert]:
    """Alerts newest last."""
    a = store.alerts.c
    q = select(store.alerts).where(a.raised_at_ms >= since_ms, a.id > after_id).order_by(a.id)
    if kinds:
        q = q.where(a.kind.in_(kinds))
    with engine.connect() as conn:
        return [Alert(r.id, r.kind, r.raised_at_ms, r.message, json.loads(r.details)) for r in conn.execute(q)]
