"""Every reason the gateway refuses a query, with its gRPC status and SPEC §7
exit status. `alliance audit verify` keeps the same list (a test keeps the
two in step) and re-derives each reason from the log."""
from __future__ import annotations

import grpc

from alliance import log_rules
from alliance.v1 import alliance_pb2 as pb

# reason -> (gRPC status, SPEC §7 exit status)
REFUSALS: dict[str, tuple[grpc.StatusCode, int]] = {
    "unauthenticated": (grpc.StatusCode.UNAUTHENTICATED, 4),
    "wrong_role": (grpc.StatusCode.PERMISSION_DENIED, 4),
    "unknown_member": (grpc.StatusCode.PERMISSION_DENIED, 4),
    "member_suspended": (grpc.StatusCode.PERMISSION_DENIED, 4),
    "member_revoked": (grpc.StatusCode.PERMISSION_DENIED, 4),
    "querier_mismatch": (grpc.StatusCode.PERMISSION_DENIED, 4),
    "stale_credential": (grpc.StatusCode.PERMISSION_DENIED, 4),
    "bad_signature": (grpc.StatusCode.PERMISSION_DENIED, 4),
    "stale_timestamp": (grpc.StatusCode.PERMISSION_DENIED, 4),
    "token_mismatch": (grpc.StatusCode.PERMISSION_DENIED, 4),
    "foreign_key": (grpc.StatusCode.PERMISSION_DENIED, 4),
    "missing_consent": (grpc.StatusCode.PERMISSION_DENIED, 4),
    "unknown_purpose": (grpc.StatusCode.PERMISSION_DENIED, 4),
    "replayed_query_id": (grpc.StatusCode.ALREADY_EXISTS, 4),
    "monitoring_disabled": (grpc.StatusCode.PERMISSION_DENIED, 4),
    "stale_book": (grpc.StatusCode.PERMISSION_DENIED, 4),
    "quota_exceeded": (grpc.StatusCode.RESOURCE_EXHAUSTED, 4),
    "malformed_request": (grpc.StatusCode.INVALID_ARGUMENT, 3),
    "too_few_members": (grpc.StatusCode.UNAVAILABLE, 5),
    "too_few_answers": (grpc.StatusCode.UNAVAILABLE, 5),
    "incomplete_precheck": (grpc.StatusCode.UNAVAILABLE, 5),
    "answer_set_changed": (grpc.StatusCode.UNAVAILABLE, 5),
}


class QueryFailure(Exception):
    """A refusal on the query path; becomes the entry's reason and the
    caller's gRPC status (with `alliance-reason` metadata, so a client never
    mistakes it for an outage and retries it elsewhere as a replay)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message[: log_rules.MAX_DETAIL_CHARS])
        self.reason = reason
        self.logged = False
        self.code, self.exit_code = REFUSALS.get(reason, (grpc.StatusCode.PERMISSION_DENIED, 4))

    def as_error(self) -> pb.QueryError:
        return pb.QueryError(exit_code=self.exit_code, reason=self.reason, message=str(self))
