"""Who is calling: the TLS peer's identity, the registry record it *is*, and
the role and status checks every RPC of the gateway makes before acting.

The base mixin of GatewayService's RPC mixins; the query path, the
membership, witness, reconciliation, disclosure, book-status, key-share and
log RPCs all authenticate through it."""
from __future__ import annotations

from collections.abc import Callable

import grpc

from alliance.errors import Refused
from alliance.transport import peer_identity
from alliance_gateway.registry import MemberRecord, Registry


class PeerChecks:
    """_peer, _registered, _require_active, _require_reader, _now_ms.

    Needs of the host class: registry, clock."""

    registry: Registry
    clock: Callable[[], float]

    def _peer(self, context: grpc.ServicerContext) -> tuple[str, str, bytes]:
        try:
            return peer_identity(context)
        except Refused as exc:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
            raise  # unreachable: abort raises

    def _registered(self, member_id: str, role: str, cert_sha256: bytes) -> MemberRecord | None:
        """The registry record this TLS peer *is*: same id, same role, and the
        very certificate the registry holds (an older certificate of a member
        who rotated its keys, though CA-signed, is no longer it)."""
        record = self.registry.get(member_id)
        if record is not None and record.tls_cert_sha256 != cert_sha256:
            record = self.registry.get_fresh(member_id)
        if record is None or record.role != role or record.tls_cert_sha256 != cert_sha256:
            return None
        return record

    def _require_active(self, context: grpc.ServicerContext, roles: tuple[str, ...], what: str) -> MemberRecord:
        peer_id, role, cert_sha256 = self._peer(context)
        record = self._registered(peer_id, role, cert_sha256)
        if role not in roles or record is None or record.status != "active":
            context.abort(grpc.StatusCode.PERMISSION_DENIED, f"{peer_id} ({role}) may not {what}")
        assert record is not None
        return record

    def _require_reader(self, context: grpc.ServicerContext) -> MemberRecord:
        return self._require_active(context, ("member", "auditor"), "read the audit log")

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)
