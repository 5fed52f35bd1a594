"""Alerts a member node raises for its own staff: one table, one function to
raise and one to list (SPEC §5.1, §6.1, §6.2, §9). Every alert is also a
warning in the node's log, so an operator tailing it sees it at once."""
from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
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

    def as_json(self) -> dict[str, Any]:
        """What `member alerts --json` prints and a webhook receives."""
        return {**asdict(self), "raised_at": _iso(self.raised_at_ms)}


# Called with every alert this process raises, after it is stored (the
# webhook's queue, SPEC §9). A listener must not block: it runs on the
# raising thread.
_listeners: list[Callable[[Alert], None]] = []
_listeners_lock = threading.Lock()


def add_listener(listener: Callable[[Alert], None]) -> Callable[[], None]:
    """Register ``listener``; returns a function that unregisters it."""
    with _listeners_lock:
        _listeners.append(listener)

    def remove() -> None:
        with _listeners_lock:
            if listener in _listeners:
                _listeners.remove(listener)
    return remove


def _iso(ms: int) -> str:
    from datetime import datetime
    from zoneinfo import ZoneInfo

    return datetime.fromtimestamp(ms / 1000, tz=ZoneInfo("Asia/Shanghai")).isoformat(timespec="seconds")


def raise_alert(engine: Engine, kind: str, message: str, details: dict[str, Any] | None = None, *, now_ms: int | None = None) -> int:
    """Record an alert durably and log it; returns its id."""
    doc = json.dumps(details or {}, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    at_ms = now_ms if now_ms is not None else int(time.time() * 1000)
    with engine.begin() as conn:
        result = conn.execute(insert(store.alerts).values(kind=kind, raised_at_ms=at_ms, message=message[:1024], details=doc[:8192]))
        alert_id = int(result.inserted_primary_key[0])
    log.warning("ALERT %s: %s", kind, message)
    with _listeners_lock:
        listeners = list(_listeners)
    if listeners:
        alert = Alert(alert_id, kind, at_ms, message[:1024], json.loads(doc) if len(doc) <= 8192 else {})
        for listener in listeners:
            try:
                listener(alert)
            except Exception:  # noqa: BLE001 - a listener's bug must not lose the stored alert
                log.exception("alert listener failed")
    return alert_id


def list_alerts(engine: Engine, *, since_ms: int = 0, after_id: int = 0, kinds: tuple[str, ...] = ()) -> list[Alert]:
    """Alerts newest last."""
    a = store.alerts.c
    q = select(store.alerts).where(a.raised_at_ms >= since_ms, a.id > after_id).order_by(a.id)
    if kinds:
        q = q.where(a.kind.in_(kinds))
    with engine.connect() as conn:
        return [Alert(r.id, r.kind, r.raised_at_ms, r.message, json.loads(r.details)) for r in conn.execute(q)]
