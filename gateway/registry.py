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
                # The age counts from before the read: a row committed while the
                # read ran is not covered by it.
                started = time.monotonic()
                with self.engine.connect() as conn:
                    rows = conn.execute(select(schema.members)).all()
                self._members = {r.member_id: _record(r) for r in rows}
                self._loaded_at = started
            return self._members

    def get(self, member_id: str) -> MemberRecord | None:
        record = self.snapshot().get(member_id)
        if record is None:
            # A member added a moment ago (by the admin CLI, another process) must
            # not be "unknown" for a whole refresh period.
            record = self.get_fresh(member_id)
        return record

    def get_fresh(self, member_id: str) -> MemberRecord | None:
        """The member's row as committed now, e.g. before deciding against a
        caller whose certificate a rotation made current a moment ago. One
        primary-key read (callers are authenticated certificate holders whose
        refusals are rate-limited), so no window in which a committed row is
        still unknown."""
        with self.engine.connect() as conn:
            row = conn.execute(select(schema.members).where(schema.members.c.member_id == member_id)).first()
        with self._lock:
            if row is None:
                return None
            record = _record(row)
            self._members = {**self._members, member_id: record}  # readers may hold the old dict
            return record

    def active_members(self) -> list[MemberRecord]:
        return sorted(
            (m for m in self.snapshot().values() if m.role == "member" and m.status == "active"),
            key=lambda m: m.member_id,
        )


def _record(r) -> MemberRecord:  # type: ignore[no-untyped-def]
    return MemberRecord(
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
