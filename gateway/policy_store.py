"""The alliance policy as the gateway keeps it (SPEC §9, §10): read from the
database at most every ``refresh_ms`` (the admin CLI changes it from another
process), written only together with its `policy_changed` log entry."""
from __future__ import annotations

import json
import threading
import time

from sqlalchemy import Connection, Engine, insert, select, update

from alliance.policy import Policy
from alliance_gateway import audit_log, schema


def load(conn: Connection) -> Policy:
    doc = conn.execute(select(schema.policy.c.doc).where(schema.policy.c.id == 1)).scalar()
    return Policy() if doc is None else Policy.from_json(json.loads(doc))


def store(conn: Connection, policy: Policy, changed: dict[str, object]) -> int:
    """Save the policy and log it as a `policy_changed` entry (time under
    the log's lock); returns the entry's sequence number."""
    policy.check()
    doc = json.dumps(policy.to_json(), sort_keys=True, separators=(",", ":"))
    now_ms = int(time.time() * 1000)
    if conn.execute(update(schema.policy).where(schema.policy.c.id == 1).values(doc=doc, updated_at_ms=now_ms)).rowcount == 0:
        conn.execute(insert(schema.policy).values(id=1, doc=doc, updated_at_ms=now_ms))
    seq, _ = audit_log.append(conn, lambda s, when: {
        "v": 2, "kind": "policy_changed", "seq": s, "time": when, "policy": policy.to_json(), "changed": dict(changed)})
    return seq


class PolicyCache:
    def __init__(self, engine: Engine, refresh_ms: int = 1000) -> None:
        self.engine = engine
        self.refresh_s = refresh_ms / 1000
        self._lock = threading.Lock()
        self._loaded_at = float("-inf")
        self._policy = Policy()

    def get(self) -> Policy:
        with self._lock:
            if time.monotonic() - self._loaded_at >= self.refresh_s:
                with self.engine.connect() as conn:
                    self._policy = load(conn)
                self._loaded_at = time.monotonic()
            return self._policy
