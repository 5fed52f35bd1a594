"""v2 membership RPCs of the gateway (SPEC §5.1; docs/audit-log.md "The
membership feed, sponsorship, witnesses, reconciliation"): members log
sponsorships and the matching key's creation, and members and auditors read
the membership feed (membership entries only, never query entries) with
inclusion proofs against one signed checkpoint carrying `membership <count>`.

A mixin of GatewayService: it uses the service's ``engine``, ``registry``,
``log``, ``_require_active``, ``_require_reader`` and ``_now_ms``."""
from __future__ import annotations

from typing import Any

import grpc
from google.protobuf.message import DecodeError
from sqlalchemy import and_, insert, select

from alliance import audit_entry, log_rules, pki, signing
from alliance.errors import CryptoError, InvalidInput
from alliance.v1 import alliance_pb2 as pb
from alliance_gateway import audit_log, reservations, schema

MAX_STATEMENT_BYTES = 1024          # a SponsorshipBody / MatchingKeyCreatedBody is ~100 bytes
STATEMENT_FRESHNESS_MS = log_rules.MEMBER_FRESHNESS_MS  # a statement is logged within ±5 min of signing
FEED_PAGE_ENTRIES = 256
FEED_PAGE_BYTES = 2 << 20           # well under gRPC's 4 MB default, whatever the credentials hold
_EPOCH_KEY = "matching_key_epoch"


class MembershipRPCs:
    """PostSponsorship, PostMatchingKeyCreated, GetMembership."""

    engine: Any
    registry: Any
    log: audit_log.LogReader

    # -- statements -----------------------------------------------------------

    def PostSponsorship(self, request: pb.SignedSponsorship, context: grpc.ServicerContext) -> pb.LoggedStatementResponse:
        sponsor = self._require_active(context, ("member",), "sponsor members")  # type: ignore[attr-defined]
        body = pb.SponsorshipBody()
        try:
            _check_sizes(request.body, request.signature)
            body.ParseFromString(request.body)
            if len(body.newcomer_fingerprint) != 32:
                raise InvalidInput("the newcomer fingerprint must be 32 bytes")
            pki.check_member_id(body.newcomer_id)
            signing.verify(sponsor.ed25519_public_key, signing.SPONSORSHIP, request.body, request.signature, what="sponsorship")
        except (InvalidInput, DecodeError, CryptoError) as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed sponsorship: {exc}")
        if body.sponsor_id != sponsor.member_id:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, "a sponsorship must be posted by its own sponsor")
        if body.newcomer_id == sponsor.member_id:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "a member cannot sponsor itself")
        self._check_time(context, body.time_ms)
        newcomer = self.registry.get_fresh(body.newcomer_id)
        if newcomer is None or newcomer.role != "member":
            context.abort(grpc.StatusCode.NOT_FOUND, f"no member {body.newcomer_id!r}")
        if newcomer.fingerprint != body.newcomer_fingerprint:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          f"fingerprint_mismatch: {body.newcomer_id}'s registered credential has fingerprint "
                          f"{pki.format_fingerprint(newcomer.fingerprint)}, not the one sponsored")

        def build(seq: int, when: str) -> dict[str, Any]:
            return {"v": 2, "kind": "member_sponsored", "seq": seq, "time": when, "sponsor_id": sponsor.member_id,
                    "member_id": body.newcomer_id, "fingerprint": body.newcomer_fingerprint.hex(),
                    "sponsorship": request.body.hex(), "signature": request.signature.hex()}

        self._take_statement_slot(context, sponsor.member_id)
        with self.engine.begin() as conn:
            _require_v2(conn, context)
            seq, _ = audit_log.append(conn, build, None)  # membership time taken under the lock
        return self._logged(seq)

    def PostMatchingKeyCreated(self, request: pb.SignedMatchingKeyCreated, context: grpc.ServicerContext) -> pb.LoggedStatementResponse:
        founder = self._require_active(context, ("member",), "log a matching key")  # type: ignore[attr-defined]
        body = pb.MatchingKeyCreatedBody()
        try:
            _check_sizes(request.body, request.signature)
            body.ParseFromString(request.body)
            if len(body.check_value) != 8 or body.epoch < 1 or len(body.founder_fingerprint) != 32:
                raise InvalidInput("epoch must be ≥ 1, the check value 8 bytes and the fingerprint 32 bytes")
            signing.verify(founder.ed25519_public_key, signing.MATCHING_KEY_CREATED, request.body, request.signature,
                           what="matching key statement")
        except (InvalidInput, DecodeError, CryptoError) as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed matching key statement: {exc}")
        if body.founder_id != founder.member_id:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, "a matching key statement must be posted by its founder")
        if body.founder_fingerprint != founder.fingerprint:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "fingerprint_mismatch: the statement names another fingerprint "
                                                               "than the founder's registered credential")
        self._check_time(context, body.time_ms)
        self._take_statement_slot(context, founder.member_id)

        def build(seq: int, when: str) -> dict[str, Any]:
            return {"v": 2, "kind": "matching_key_created", "seq": seq, "time": when, "member_id": founder.member_id,
                    "fingerprint": body.founder_fingerprint.hex(), "epoch": body.epoch, "check_value": body.check_value.hex(),
                    "statement": request.body.hex(), "signature": request.signature.hex()}

        with self.engine.begin() as conn:
            _require_v2(conn, context)
            seq, _ = audit_log.append(conn, build, None)
            # After the append, which took the log's lock: concurrent founders are serialised.
            current = conn.execute(select(schema.log_meta.c.value).where(schema.log_meta.c.key == _EPOCH_KEY)).scalar()
            if current is not None and body.epoch <= int(current):
                context.abort(grpc.StatusCode.ALREADY_EXISTS,
                              f"epoch_exists: matching key epoch {current} is already logged; a new key needs a higher epoch")
            if current is None:
                conn.execute(insert(schema.log_meta).values(key=_EPOCH_KEY, value=str(body.epoch)))
            else:
                conn.execute(schema.log_meta.update().where(schema.log_meta.c.key == _EPOCH_KEY).values(value=str(body.epoch)))
        return self._logged(seq)

    # -- the feed -----------------------------------------------------------

    def GetMembership(self, request: pb.GetMembershipRequest, context: grpc.ServicerContext) -> pb.ProvenEntries:
        self._require_reader(context)  # type: ignore[attr-defined]  # active members and auditors
        size, note = self.log.signed_checkpoint()
        limit = min(request.max_entries or FEED_PAGE_ENTRIES, FEED_PAGE_ENTRIES)
        mi, le = schema.membership_index.c, schema.log_entries.c
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(mi.membership_seq, mi.seq, le.data).join(schema.log_entries, le.seq == mi.seq)
                .where(and_(mi.membership_seq >= request.from_membership_seq, mi.seq < size))
                .order_by(mi.membership_seq).limit(limit)
            ).all()
        chosen, total = [], 0
        for row in rows:
            data = bytes(row.data)
            if chosen and total + len(data) > FEED_PAGE_BYTES:
                break
            total += len(data)
            chosen.append((row, data))
        proofs = self.log.inclusion_proofs([row.seq for row, _ in chosen], size)
        entries = [pb.ProvenEntry(index=row.seq, data=data, inclusion_proof=proof, membership_seq=row.membership_seq)
                   for (row, data), proof in zip(chosen, proofs)]
        return pb.ProvenEntries(checkpoint=note, entries=entries)

    # -- helpers -------------------------------------------------------------

    def _logged(self, seq: int) -> pb.LoggedStatementResponse:
        size, note = self.log.signed_checkpoint(seq + 1)
        data = self.log.entry(seq)
        mseq = audit_entry.decode(data, index=seq).get("membership_seq", 0)
        return pb.LoggedStatementResponse(
            entry=pb.ProvenEntry(index=seq, data=data, inclusion_proof=self.log.inclusion_proof(seq, size), membership_seq=mseq),
            checkpoint=note,
        )

    def _take_statement_slot(self, context: grpc.ServicerContext, member_id: str) -> None:
        """Property 12: no member floods the log with valid statements."""
        if not reservations.reserve_statement_slot(self.engine, member_id, self._now_ms()):  # type: ignore[attr-defined]
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"statement_quota_exceeded: {member_id} has had {reservations.STATEMENTS_PER_DAY} statements "
                          "logged today; try again tomorrow")

    def _check_time(self, context: grpc.ServicerContext, time_ms: int) -> None:
        now = self._now_ms()  # type: ignore[attr-defined]
        if abs(now - time_ms) > STATEMENT_FRESHNESS_MS:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "stale_timestamp: the statement was signed more than 5 minutes "
                                                            "from the gateway's clock")


def _check_sizes(body: bytes, signature: bytes) -> None:
    if len(body) > MAX_STATEMENT_BYTES:
        raise InvalidInput(f"statement of {len(body)} bytes exceeds {MAX_STATEMENT_BYTES}")
    if len(signature) != log_rules.SIGNATURE_BYTES:
        raise InvalidInput(f"signature must be {log_rules.SIGNATURE_BYTES} bytes")


def _require_v2(conn: Any, context: grpc.ServicerContext) -> None:
    if audit_log.v2_started_seq(conn) is None:
        context.abort(grpc.StatusCode.FAILED_PRECONDITION, "the audit log is v1: run `alliance admin db upgrade` first")
