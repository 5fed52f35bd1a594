"""What every signed member statement the gateway logs on a member's word
(book status, SPEC §10; disclosure, §11) must pass before anything else is
looked at: a 64-byte signature, a body that parses, and the caller's own
member id and current credential serial. One place, so the statements'
admission rules cannot drift apart."""
from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TypeVar

import grpc

from alliance import log_rules
from alliance.errors import InvalidInput
from alliance_gateway.registry import MemberRecord


class _Signed(Protocol):
    body: bytes
    signature: bytes


class _Statement(Protocol):
    member_id: str
    credential_serial: int


S = TypeVar("S", bound=_Statement)


def admit(context: grpc.ServicerContext, member: MemberRecord, request: _Signed, parse: Callable[[bytes], S], *,
          what: str, may: str) -> S:
    """The parsed statement, or the call aborted (INVALID_ARGUMENT for a
    malformed one, PERMISSION_DENIED for one in another's name or under a
    superseded credential). ``may``: what a member may state, for messages."""
    if len(request.signature) != log_rules.SIGNATURE_BYTES:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                      f"malformed {what}: signature must be {log_rules.SIGNATURE_BYTES} bytes, got {len(request.signature)}")
    try:
        statement = parse(request.body)
    except InvalidInput as exc:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed {what}: {exc}")
        raise  # unreachable: abort raises
    if statement.member_id != member.member_id:
        context.abort(grpc.StatusCode.PERMISSION_DENIED,
                      f"a {what} names member {statement.member_id!r}; {member.member_id} may {may}")
    if statement.credential_serial != member.credential_serial:
        context.abort(grpc.StatusCode.PERMISSION_DENIED,
                      f"the {what} names credential serial {statement.credential_serial}, current is {member.credential_serial}")
    return statement
