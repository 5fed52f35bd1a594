"""`PostDisclosure` (SPEC §11): a member's signed monthly figures, checked and
logged as a `disclosure` entry (docs/audit-log.md). A mixin of GatewayService.

Checked before anything is logged: the caller is an active member presenting
its registered certificate; the body (≤ 4096 bytes) is a canonical, well-formed
statement naming the caller and its current credential serial, for a month
that has ended (Asia/Shanghai); the figures are consistent; the signature (64
bytes) verifies with the caller's registered key. A refused submission is not
logged (it is not a query; nothing about it needs re-deriving). A resubmission
for the same month is logged like the first; the later entry supersedes."""
from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import grpc

from alliance import disclosure
from alliance.errors import CryptoError
from alliance.v1 import alliance_pb2 as pb
from alliance_gateway import audit_log, statement_admission

SHANGHAI = ZoneInfo("Asia/Shanghai")


class DisclosureRpcs:
    """Needs of the host class: engine, _require_active, _take_statement_slot, _logged, _now_ms."""

    def PostDisclosure(self, request: pb.SignedDisclosure, context: grpc.ServicerContext) -> pb.LoggedStatementResponse:
        member = self._require_active(context, ("member",), "post disclosures")  # type: ignore[attr-defined]
        statement = statement_admission.admit(context, member, request, disclosure.parse_statement, what="disclosure",
                                              may="disclose only its own figures")
        now_ms = self._now_ms()  # type: ignore[attr-defined]
        _, last = disclosure.parse_month(statement.month)
        today = datetime.fromtimestamp(now_ms / 1000, tz=SHANGHAI).date()
        if today <= last:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"month {statement.month} has not ended (today is {today} in Asia/Shanghai); disclose it from {last.isoformat()} + 1 day")
        try:
            disclosure.verify(member.ed25519_public_key, request.body, request.signature, what=f"disclosure of {member.member_id}")
        except CryptoError as exc:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
        self._take_statement_slot(context, member.member_id)  # type: ignore[attr-defined]
        with self.engine.begin() as conn:  # type: ignore[attr-defined]
            seq, _ = audit_log.append(conn, lambda s, when: {
                "v": 2, "kind": "disclosure", "seq": s, "time": when, "member_id": member.member_id,
                "month": statement.month, "credential_serial": statement.credential_serial,
                "body": request.body.hex(), "signature": request.signature.hex(),
            }, now_ms=None)  # time taken under the log's lock
        return self._logged(seq)  # type: ignore[attr-defined]  # MembershipRPCs: entry, inclusion proof, checkpoint

