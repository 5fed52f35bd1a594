"""Member registry as the gateway sees it, re-read from the database at most
every ``refresh_ms`` so suspensions and revocations by the admin CLI (another
process) take effect within seconds, without a restart."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from sqlalchemy import Engine, select

from alliance_gateway import schema


@dataclass(frozen=True)
class MemberRecord:
    member_id: str
    name: str
    role: str
    status: str
    endpoint: str
    credential: bytes
    credential_serial: int
    fingerprint: bytes
    ed25519_public_key: bytes
    paillier_n: bytes
    tls_cert_sha256: bytes
    daily_quota: int


MISS_REFRESH_S = 0.05


class Registry:
    def __init__(self, engine: Engine, refresh_ms: int = 1000) -> None:
        self.engine = engine
        self.refresh_s = refresh_ms / 1000
        self._lock = threading.Lock()
        self._loaded_at = float("-inf")
        self._members: dict[str, MemberRecord] = {}

    def snapshot(self, max_age_s: float | None = None) -> dict[str, MemberRecord]:
        max_age_s = self.refresh_s if max_age_s is None else max_age_s
        with self._lock:
            if time.monotonic() - self._loaded_at >= max_age_s:
                with self.engine.connect() as conn:
                    rows = conn.execute(select(schema.members)).all()
                self._members = {
                    r.member_id: MemberRecord(
                        member_id=r.member_id,
                        name=r.name,
                        role=r.role,
                        status=r.status,
                        endpoint=r.endpoint,
                        credential=bytes(r.credential),
                        credential_serial=r.credential_serial,
                        fingerprint=bytes(r.fingerprint),
                        ed25519_public_key=bytes(r.ed25519_public_key),
                        paillier_n=bytes(r.paillier_n),
                        tls_cert_sha256=bytes(r.tls_cert_sha256),
                        daily_quota=r.daily_quota,
                    )
                    for r in rows
                }
                self._loaded_at = time.monotonic()
            return self._members

    def get(self, member_id: str) -> MemberRecord | None:
        record = self.snapshot().get(member_id)
        if record is None:
            # A member added a moment ago (by the admin CLI, another process) must
            # not be "unknown" for a whole refresh period; a miss re-reads, at most
            # every MISS_REFRESH_S so a flood of unknown names cannot hammer the DB.
            record = self.get_fresh(member_id)
        return record

    def get_fresh(self, member_id: str) -> MemberRecord | None:
        """Re-read (at most every MISS_REFRESH_S) before deciding against a
        caller, e.g. a certificate that a rotation made current a moment ago."""
        return self.snapshot(max_age_s=MISS_REFRESH_S).get(member_id)

    def active_members(self) -> list[MemberRecord]:
        return sorted(
            (m for m in self.snapshot().values() if m.role == "member" and m.status == "active"),
            key=lambda m: m.member_id,
        )
