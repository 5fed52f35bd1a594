"""Read-only RPCs for members and auditors: the audit log's signed checkpoint,
its entries (auditors only), inclusion and consistency proofs (SPEC §6), and
the alliance policy in force. A mixin of GatewayService."""
from __future__ import annotations

import json
from collections.abc import Iterator

import grpc

from alliance.v1 import alliance_pb2 as pb
from alliance_gateway import audit_log
from alliance_gateway.peers import PeerChecks
from alliance_gateway.policy_store import PolicyCache


class LogRpcs(PeerChecks):
    """GetCheckpoint, GetEntries, GetInclusionProof, GetConsistencyProof, GetPolicy.

    Needs of the host class: log, policy, registry, clock (via PeerChecks)."""

    log: audit_log.LogReader
    policy: PolicyCache

    def GetCheckpoint(self, request: pb.GetCheckpointRequest, context: grpc.ServicerContext) -> pb.GetCheckpointResponse:
        self._require_reader(context)
        _, note = self.log.signed_checkpoint()
        return pb.GetCheckpointResponse(checkpoint=note)

    def GetEntries(self, request: pb.GetEntriesRequest, context: grpc.ServicerContext) -> Iterator[pb.LogEntry]:
        if self._require_reader(context).role != "auditor":
            context.abort(grpc.StatusCode.PERMISSION_DENIED, "log entries are for auditors")
        end = min(request.end, self.log.size())
        for seq, data in self.log.entries(max(0, request.start), end):
            yield pb.LogEntry(index=seq, data=data)

    def GetInclusionProof(self, request: pb.GetInclusionProofRequest, context: grpc.ServicerContext) -> pb.Proof:
        self._require_reader(context)
        try:
            return pb.Proof(hashes=self.log.inclusion_proof(request.index, request.tree_size))
        except Exception as exc:  # noqa: BLE001 - any bad range is the caller's error
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))

    def GetConsistencyProof(self, request: pb.GetConsistencyProofRequest, context: grpc.ServicerContext) -> pb.Proof:
        self._require_reader(context)
        try:
            return pb.Proof(hashes=self.log.consistency_proof(request.first, request.second))
        except Exception as exc:  # noqa: BLE001
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))

    def GetPolicy(self, request: pb.GetPolicyRequest, context: grpc.ServicerContext) -> pb.PolicyResponse:
        self._require_reader(context)
        return pb.PolicyResponse(policy_json=json.dumps(self.policy.get().to_json(), sort_keys=True, separators=(",", ":")))
