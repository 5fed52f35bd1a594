"""Client side of the gateway API for members and auditors: a mutual-TLS
channel built from the home's certificate, and gRPC failures turned into the
typed errors (and so the exit statuses) of SPEC §7."""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from types import TracebackType

import grpc

from alliance import pki, transport
from alliance.errors import AllianceError, InvalidInput, Refused, Unreachable, UsageError
from alliance.v1 import alliance_pb2 as pb
from alliance.v1 import alliance_pb2_grpc as pb_grpc
from alliance_member.home import MemberHome

DEFAULT_TIMEOUT_S = 30.0


def error_from_rpc(exc: grpc.RpcError) -> AllianceError:
    code = exc.code()
    details = exc.details() or code.name
    trailing = dict(exc.trailing_metadata() or ())
    reason = trailing.get("alliance-reason", code.name.lower())
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        if "alliance-reason" in trailing:  # the gateway answered: too few members, answer set changed, ...
            return Unreachable(details)
        return Unreachable(f"the alliance gateway cannot be reached: {details}")
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidInput(details)
    if code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.ALREADY_EXISTS,
                grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND):
        return Refused(details, reason=reason)
    return AllianceError(f"gateway error {code.name}: {details}")


class GatewayClient:
    def __init__(self, home: MemberHome, *, target: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        if not home.is_joined():
            raise UsageError(f"{home.path} has not joined the alliance (run `alliance member join`)")
        self.timeout_s = timeout_s
        # SPEC §5.2, §5.4: the key only if private; the server only if it has the gateway role.
        self.channel = transport.gateway_channel(
            target or home.config().gateway, pki.read_private_file(home.tls_key), home.tls_cert.read_bytes(), home.ca_cert.read_bytes()
        )
        self.stub = pb_grpc.GatewayStub(self.channel)

    def __enter__(self) -> "GatewayClient":
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    def _call(self, method, request, timeout: float | None = None):  # type: ignore[no-untyped-def]
        try:
            return method(request, timeout=timeout or self.timeout_s)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from None

    def query(self, signed: pb.SignedQuery) -> pb.GatewayQueryResponse:
        return self._call(self.stub.Query, signed)

    def precheck(self, signed: pb.SignedQuery) -> pb.GatewayQueryResponse:
        return self._call(self.stub.Precheck, signed)

    def screen(self, requests: Iterable[pb.SignedQuery], timeout_s: float | None = None) -> Iterator[pb.GatewayQueryResponse]:
        try:
            yield from self.stub.Screen(iter(requests), timeout=timeout_s)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from None

    def member_credential(self, member_id: str) -> pb.Credential:
        return self._call(self.stub.GetMemberCredential, pb.GetMemberCredentialRequest(member_id=member_id))

    def post_key_share(self, share: pb.MatchingKeyShare) -> None:
        self._call(self.stub.PostKeyShare, share)

    def key_shares(self) -> list[pb.MatchingKeyShare]:
        return list(self._call(self.stub.FetchKeyShares, pb.FetchKeySharesRequest()).shares)

    def checkpoint(self) -> str:
        return self._call(self.stub.GetCheckpoint, pb.GetCheckpointRequest()).checkpoint

    def inclusion_proof(self, index: int, tree_size: int) -> list[bytes]:
        return list(self._call(self.stub.GetInclusionProof, pb.GetInclusionProofRequest(index=index, tree_size=tree_size)).hashes)

    def consistency_proof(self, first: int, second: int) -> list[bytes]:
        return list(self._call(self.stub.GetConsistencyProof, pb.GetConsistencyProofRequest(first=first, second=second)).hashes)

    def entries(self, start: int, end: int) -> Iterator[pb.LogEntry]:
        try:
            yield from self.stub.GetEntries(pb.GetEntriesRequest(start=start, end=end), timeout=600)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from None

    # -- v2 membership feed and statements (SPEC §5.1) -------------------------

    def membership(self, from_membership_seq: int, max_entries: int = 0) -> pb.ProvenEntries:
        return self._call(self.stub.GetMembership, pb.GetMembershipRequest(from_membership_seq=from_membership_seq,
                                                                           max_entries=max_entries))

    def post_sponsorship(self, signed: pb.SignedSponsorship) -> pb.LoggedStatementResponse:
        return self._call(self.stub.PostSponsorship, signed)

    def post_matching_key_created(self, signed: pb.SignedMatchingKeyCreated) -> pb.LoggedStatementResponse:
        return self._call(self.stub.PostMatchingKeyCreated, signed)
