"""Client side of the gateway API for members and auditors: a mutual-TLS
channel built from the home's certificate, and gRPC failures turned into the
typed errors (and so the exit statuses) of SPEC §7."""
from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterable, Iterator
from types import TracebackType

import grpc

from alliance import pki, transport
from alliance.errors import AllianceError, InvalidInput, Refused, Unreachable, UsageError
from alliance.v1 import alliance_pb2 as pb
from alliance.v1 import alliance_pb2_grpc as pb_grpc
from alliance_member.home import MemberHome

log = logging.getLogger("alliance.client")

DEFAULT_TIMEOUT_S = 30.0


def error_from_rpc(exc: grpc.RpcError) -> AllianceError:
    code = exc.code()
    details = exc.details() or code.name
    trailing = dict(exc.trailing_metadata() or ())
    reason = trailing.get("alliance-reason", code.name.lower())
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        if "alliance-reason" in trailing:  # the gateway answered: too few members, answer set changed, ...
            return Unreachable(details, reason=reason)
        return Unreachable(f"the alliance gateway cannot be reached: {details}")
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidInput(details)
    if code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.ALREADY_EXISTS,
                grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND):
        return Refused(details, reason=reason)
    return AllianceError(f"gateway error {code.name}: {details}")


GATEWAY_ENV = "ALLIANCE_GATEWAY"  # overrides member.json; `alliance --gateway` sets it


def gateway_targets(home: MemberHome, target: str | None = None) -> list[str]:
    """The gateway replicas to try, in order: ``target``, else $ALLIANCE_GATEWAY,
    else member.json's `gateway`; each a comma-separated host:port list."""
    text = target or os.environ.get(GATEWAY_ENV) or home.config().gateway
    targets = list(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))
    if not targets:
        raise UsageError("no gateway endpoint configured (member.json `gateway`, --gateway or $ALLIANCE_GATEWAY)")
    return targets


def may_fail_over(exc: grpc.RpcError) -> bool:
    """SPEC §5.4: only an outage (UNAVAILABLE without the gateway's own
    `alliance-reason`) is retried on another replica; a refusal never is, so
    it cannot turn into a replay."""
    return exc.code() == grpc.StatusCode.UNAVAILABLE and "alliance-reason" not in dict(exc.trailing_metadata() or ())


class GatewayClient:
    def __init__(self, home: MemberHome, *, target: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        if not home.is_joined():
            raise UsageError(f"{home.path} has not joined the alliance (run `alliance member join`)")
        self.timeout_s = timeout_s
        self.targets = gateway_targets(home, target)
        # SPEC §5.2, §5.4: the key only if private; the server only if it has the gateway role.
        self._creds = (pki.read_private_file(home.tls_key), home.tls_cert.read_bytes(), home.ca_cert.read_bytes())
        self._current = 0
        self._channels: dict[str, grpc.Channel] = {}
        self._stubs: dict[str, pb_grpc.GatewayStub] = {}  # a stub builds a callable per RPC: ≈ 1 ms, so once per channel
        self._lock = threading.Lock()

    @property
    def stub(self) -> pb_grpc.GatewayStub:
        return self._stub_for(self.targets[self._current])

    @property
    def channel(self) -> grpc.Channel:
        self._stub_for(self.targets[self._current])
        return self._channels[self.targets[self._current]]

    def _stub_for(self, target: str) -> pb_grpc.GatewayStub:
        with self._lock:
            stub = self._stubs.get(target)
            if stub is None:
                channel = self._channels.get(target)
                if channel is None:
                    channel = self._channels[target] = transport.gateway_channel(target, *self._creds)
                stub = self._stubs[target] = pb_grpc.GatewayStub(channel)
            return stub

    def __enter__(self) -> "GatewayClient":
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            for channel in self._channels.values():
                channel.close()
            self._channels.clear()
            self._stubs.clear()

    def _call(self, name: str, request, timeout: float | None = None):  # type: ignore[no-untyped-def]
        """One unary call; on an outage, the same request (same query id) on
        the next replica, each replica at most once."""
        start = self._current
        for attempt in range(len(self.targets)):
            index = (start + attempt) % len(self.targets)
            try:
                response = getattr(self._stub_for(self.targets[index]), name)(request, timeout=timeout or self.timeout_s)
                self._current = index
                return response
            except grpc.RpcError as exc:
                if attempt + 1 < len(self.targets) and may_fail_over(exc):
                    log.warning("gateway %s unavailable (%s); trying %s", self.targets[index], exc.details(),
                                self.targets[(index + 1) % len(self.targets)])
                    continue
                raise error_from_rpc(exc) from None
        raise AssertionError("unreachable")

    def query(self, signed: pb.SignedQuery) -> pb.GatewayQueryResponse:
        return self._call("Query", signed)

    def precheck(self, signed: pb.SignedQuery) -> pb.GatewayQueryResponse:
        return self._call("Precheck", signed)

    def screen(self, requests: Iterable[pb.SignedQuery], timeout_s: float | None = None) -> Iterator[pb.GatewayQueryResponse]:
        try:
            yield from self.stub.Screen(iter(requests), timeout=timeout_s)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from None

    def member_credential(self, member_id: str) -> pb.Credential:
        return self._call("GetMemberCredential", pb.GetMemberCredentialRequest(member_id=member_id))

    def post_key_share(self, share: pb.MatchingKeyShare) -> None:
        self._call("PostKeyShare", share)

    def key_shares(self) -> list[pb.MatchingKeyShare]:
        return list(self._call("FetchKeyShares", pb.FetchKeySharesRequest()).shares)

    def checkpoint(self) -> str:
        return self._call("GetCheckpoint", pb.GetCheckpointRequest()).checkpoint

    def inclusion_proof(self, index: int, tree_size: int) -> list[bytes]:
        return list(self._call("GetInclusionProof", pb.GetInclusionProofRequest(index=index, tree_size=tree_size)).hashes)

    def consistency_proof(self, first: int, second: int) -> list[bytes]:
        return list(self._call("GetConsistencyProof", pb.GetConsistencyProofRequest(first=first, second=second)).hashes)

    def entries(self, start: int, end: int) -> Iterator[pb.LogEntry]:
        try:
            yield from self.stub.GetEntries(pb.GetEntriesRequest(start=start, end=end), timeout=600)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from None

    # -- v2 membership feed and statements (SPEC §5.1) -------------------------

    def membership(self, from_membership_seq: int, max_entries: int = 0) -> pb.ProvenEntries:
        return self._call("GetMembership", pb.GetMembershipRequest(from_membership_seq=from_membership_seq,
                                                                           max_entries=max_entries))

    def post_sponsorship(self, signed: pb.SignedSponsorship) -> pb.LoggedStatementResponse:
        return self._call("PostSponsorship", signed)

    def post_matching_key_created(self, signed: pb.SignedMatchingKeyCreated) -> pb.LoggedStatementResponse:
        return self._call("PostMatchingKeyCreated", signed)

    def policy(self) -> dict:
        """The alliance policy in force (SPEC §9, §10): max_book_age_days, monitoring, monitoring_quota."""
        return json.loads(self._call("GetPolicy", pb.GetPolicyRequest()).policy_json)

    def post_disclosure(self, signed: pb.SignedDisclosure) -> pb.LoggedStatementResponse:
        """SPEC §11: log this member's signed monthly figures."""
        return self._call("PostDisclosure", signed)

    def post_book_status(self, signed: pb.SignedBookStatus) -> pb.LoggedStatementResponse:
        """SPEC §10: log this member's signed book date and loan count."""
        return self._call("PostBookStatus", signed)

    # -- witnessing (SPEC §6.1) ------------------------------------------------

    def witness_checkpoint(self, old_size: int) -> tuple[str, list[bytes]]:
        r = self._call("GetWitnessCheckpoint", pb.GetWitnessCheckpointRequest(old_size=old_size))
        return r.checkpoint, list(r.consistency_proof)

    def post_cosignature(self, note: str, line: str) -> None:
        self._call("PostCosignature", pb.PostCosignatureRequest(checkpoint=note, cosignature_line=line))

    def witnessed_checkpoints(self) -> tuple[str, list[str]]:
        """The newest witness checkpoint with every cosignature line, and
        each witness's newest cosigned checkpoint (with its lines)."""
        r = self._call("GetWitnessedCheckpoint", pb.GetWitnessedCheckpointRequest())
        return r.checkpoint, list(r.newest_per_witness)
