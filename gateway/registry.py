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


class Registry:
    def __init__(self, engine: Engine, refresh_ms: int = 1000) -> None:
        self.engine = engine
        self.refresh_s = refresh_ms / 1000
        self._lock = threading.Lock()
        self._loaded_at = float("-inf")
        self._members: dict[str, MemberRecord] = {}

    def snapshot(self) -> dict[str, MemberRecord]:
        with self._lock:
            if time.monotonic() - self._loaded_at >= self.refresh_s:
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
        return self.snapshot().get(member_id)

    def active_members(self) -> list[MemberRecord]:
        return sorted(
            (m for m in self.snapshot().values() if m.role == "member" and m.status == "active"),
            key=lambda m: m.member_id,
        )
