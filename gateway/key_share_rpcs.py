"""Member credentials and matching-key shares (SPEC §5.1): members and auditors
read a member's credential; members relay signed matching-key shares to one
another through the gateway, which checks the sender's signature and keeps
only the newest share per sender and recipient. A mixin of GatewayService."""
from __future__ import annotations

from typing import Any

import grpc
from google.protobuf.message import DecodeError
from sqlalchemy import and_, delete, insert, select

from alliance import signing
from alliance.errors import CryptoError
from alliance.v1 import alliance_pb2 as pb
from alliance_gateway import schema
from alliance_gateway.peers import PeerChecks

MAX_SHARE_BYTES = 4096


class KeyShareRpcs(PeerChecks):
    """GetMemberCredential, PostKeyShare, FetchKeyShares.

    Needs of the host class: engine, registry, clock (via PeerChecks)."""

    engine: Any

    def GetMemberCredential(self, request: pb.GetMemberCredentialRequest, context: grpc.ServicerContext) -> pb.Credential:
        self._require_active(context, ("member", "auditor"), "read member credentials")
        record = self.registry.get(request.member_id)
        if record is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no member {request.member_id!r}")
        return pb.Credential.FromString(record.credential)

    def PostKeyShare(self, request: pb.MatchingKeyShare, context: grpc.ServicerContext) -> pb.PostKeyShareResponse:
        sender = self._require_active(context, ("member",), "relay matching-key shares")
        peer_id = sender.member_id
        body = pb.MatchingKeyShareBody()
        try:
            if len(request.body) > MAX_SHARE_BYTES:
                raise ValueError("share too large")
            body.ParseFromString(request.body)
            signing.verify(sender.ed25519_public_key, signing.MATCHING_KEY_SHARE, request.body, request.signature, what="key share")
        except (ValueError, DecodeError, CryptoError) as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed key share: {exc}")
        if body.sender_id != peer_id:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, "a key share must be sent by its own sender")
        recipient = self.registry.get(body.recipient_id)
        if recipient is None or recipient.role != "member":
            context.abort(grpc.StatusCode.NOT_FOUND, f"no member {body.recipient_id!r}")
        with self.engine.begin() as conn:
            # Only the newest share per sender waits for a recipient, so no member can bury another's shares.
            conn.execute(delete(schema.key_shares).where(and_(schema.key_shares.c.recipient_id == body.recipient_id,
                                                              schema.key_shares.c.sender_id == peer_id)))
            conn.execute(
                insert(schema.key_shares).values(
                    recipient_id=body.recipient_id,
                    sender_id=peer_id,
                    share=request.SerializeToString(),
                    created_at_ms=self._now_ms(),
                )
            )
        return pb.PostKeyShareResponse()

    def FetchKeyShares(self, request: pb.FetchKeySharesRequest, context: grpc.ServicerContext) -> pb.FetchKeySharesResponse:
        peer_id = self._require_active(context, ("member",), "fetch matching-key shares").member_id
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(schema.key_shares.c.share).where(schema.key_shares.c.recipient_id == peer_id).order_by(schema.key_shares.c.id)
            ).all()
        return pb.FetchKeySharesResponse(shares=[pb.MatchingKeyShare.FromString(bytes(r.share)) for r in rows])
