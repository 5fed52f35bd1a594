"""The gateway's gRPC service: authenticate the querier, fan the signed query
out to every other active member under a deadline, check and multiply their
ciphertexts, log the query, and only then answer (SPEC §4–§6).

The gateway never holds a Paillier private key or the matching key: it sees
token hashes, tokens and ciphertexts, and multiplies ciphertexts. The other
RPCs, the peer checks and the background threads are mixins (see the bases)."""
from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import grpc
from sqlalchemy import Connection, Engine, and_, bindparam, func, insert, select

from alliance import book_status, log_rules, naive, paillier, protocol, report, signing
from alliance.policy import MONITORING_PURPOSE
from alliance.errors import CryptoError, InvalidInput, Refused, UsageError
from alliance.v1 import alliance_pb2 as pb
from alliance.v1 import alliance_pb2_grpc as pb_grpc
from alliance_gateway import audit_log, reservations, schema
from alliance_gateway import metrics as gateway_metrics
from alliance_gateway.reconcile_rpcs import ReconcileRPCs, index_asked
from alliance_gateway.entries import QueryContext, _Context, _query_entry, check_bounds, query_entry  # noqa: F401 (re-exported)
from alliance_gateway.book_status_rpcs import BookStatusCache, BookStatusRpcs
from alliance_gateway.disclosure_rpcs import DisclosureRpcs
from alliance_gateway.group_commit import GroupCommit
from alliance_gateway.home import GatewayConfig
from alliance_gateway.key_share_rpcs import KeyShareRpcs
from alliance_gateway.log_rpcs import LogRpcs
from alliance_gateway.member_dispatch import Arrival, Arrivals
from alliance_gateway.membership_rpcs import MembershipRPCs
from alliance_gateway.peers import PeerChecks
from alliance_gateway.policy_store import PolicyCache
from alliance_gateway.rate_limit import RefusalLimiter
from alliance_gateway.refusal_flush import RefusalFlush
from alliance_gateway.refusals import REFUSALS, QueryFailure  # noqa: F401 (re-exported)
from alliance_gateway.screen_rpcs import ScreenRpcs, StreamSlots
from alliance_gateway.registry import MemberRecord, Registry
from alliance_gateway.witness_rpcs import WitnessRpcs

log = logging.getLogger("alliance.gateway")

SHANGHAI = ZoneInfo("Asia/Shanghai")
INQUIRY_WINDOW_MS = 720 * 3600 * 1000

APPLICATION_PURPOSE = "LOAN_APPROVAL"  # SPEC §4: the only purpose inquiries_30d counts
_app = schema.applications.c
_OTHER_QUERIERS = select(func.count(func.distinct(_app.querier_id))).where(
    and_(
        _app.token_sha256 == bindparam("token"),
        _app.querier_id != bindparam("querier"),
        _app.received_at_ms >= bindparam("since"),
        _app.received_at_ms < bindparam("until"),
    )
)


# Built once (the query path binds parameters only).
_INSERT_INQUIRY = insert(schema.inquiries)
_INSERT_APPLICATION = insert(schema.applications)


def shanghai_day_start_ms(now_ms: int) -> int:
    local = datetime.fromtimestamp(now_ms / 1000, tz=SHANGHAI)
    midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
    return int(midnight.timestamp() * 1000)


class GatewayService(ScreenRpcs, MembershipRPCs, ReconcileRPCs, DisclosureRpcs, BookStatusRpcs, WitnessRpcs, KeyShareRpcs, LogRpcs,
                     RefusalFlush, PeerChecks, pb_grpc.GatewayServicer):
    def __init__(
        self,
        *,
        engine: Engine,
        registry: Registry,
        log_reader: audit_log.LogReader,
        config: GatewayConfig,
        member_stub: Callable[[str], pb_grpc.MemberNodeStub],
        mask_pools: paillier.MaskPools,
        clock: Callable[[], float] = time.time,
        limiter: RefusalLimiter | None = None,
        metrics: gateway_metrics.GatewayMetrics | None = None,
        naive_baseline: bool = False,
        arrivals: Arrivals | None = None,
    ) -> None:
        self.engine = engine
        self.naive_baseline = naive_baseline  # SPEC §8 bench baseline only (alliance.naive): reports carry a ciphertext per figure
        self.registry = registry
        self.log = log_reader
        self.config = config
        self.member_stub = member_stub
        self.mask_pools = mask_pools
        self.clock = clock
        self.limiter = limiter or RefusalLimiter()
        self.policy = PolicyCache(engine, config.registry_refresh_ms)
        self.book_statuses = BookStatusCache(engine, config.registry_refresh_ms)  # SPEC §10
        self.reserve_engine = reservations.reservation_engine(engine)
        self.rules = log_rules.query_rules(config.deadline_ms)
        if config.k_min < 2:
            raise UsageError(f"k_min is {config.k_min}; it must be at least 2 (a sum over one member discloses it)")
        with engine.connect() as conn:
            if audit_log.v2_started_seq(conn) is None:
                raise UsageError("this gateway database holds a v1 audit log: run `alliance admin db upgrade` first (SPEC §6.4)")
        self._stop = threading.Event()
        self._flusher: threading.Thread | None = None
        self.metrics = (metrics or gateway_metrics.NULL).bind(self)  # SPEC §12
        self.log_commits = GroupCommit(engine, on_batch=self.metrics.log_batch)  # SPEC §8: batched log appends
        self.screen_streams = StreamSlots()
        # Queries on their way to the fan-out; the member dispatchers wait for them under load (SPEC §8).
        self.arrivals = arrivals or Arrivals()

    # -- RPCs -------------------------------------------------------------

    def Query(self, request: pb.SignedQuery, context: grpc.ServicerContext) -> pb.GatewayQueryResponse:
        return self._unary(request, context, "query")

    def Precheck(self, request: pb.SignedQuery, context: grpc.ServicerContext) -> pb.GatewayQueryResponse:
        return self._unary(request, context, "precheck")

    # -- the query path ---------------------------------------------------

    def _unary(self, request: pb.SignedQuery, context: grpc.ServicerContext, kind: str) -> pb.GatewayQueryResponse:
        started = time.perf_counter()
        peer_id, peer_role, cert_sha256 = self._peer(context)
        self._check_rate(context, peer_id, peer_role, kind)
        try:
            response = self.process(request, peer_id, peer_role, kind, cert_sha256)
            log.debug("handler total %.1f ms", 1000 * (time.perf_counter() - started))
            return response
        except QueryFailure as failure:
            context.set_trailing_metadata((("alliance-reason", failure.reason), ("alliance-exit-code", str(failure.exit_code))))
            context.abort(failure.code, f"{failure.reason}: {failure}")
            raise  # unreachable: abort raises

    def process(self, query: pb.SignedQuery, peer_id: str, peer_role: str, kind: str,
                peer_cert_sha256: bytes, *, arrival: Arrival | None = None) -> pb.GatewayQueryResponse:
        """One query from an authenticated TLS peer (id, role and certificate
        digest). Order matters and is what `audit verify` re-derives: bounds,
        then who is asking, then the signed request, then what is reserved
        (query id, quota slot) before any member does any work. ``arrival``:
        the query's place among those on their way to the fan-out, when the
        caller counted it in earlier (a screening stream, as it reads it)."""
        ctx = QueryContext(kind=kind, peer_id=peer_id, query=query, received_ms=self._now_ms(), version=2, rules=self.rules)
        t0 = time.perf_counter()
        arrival = arrival or self.arrivals.arriving()
        try:
            check_bounds(ctx)
            querier, body = self._admit(ctx, peer_role, peer_cert_sha256)
            if not reservations.reserve_query_id(self.reserve_engine, body.query_id, querier.member_id, ctx.received_ms):
                raise QueryFailure("replayed_query_id", f"query id {body.query_id} was already used; a replay is never sent to the members")
            pk = paillier.PaillierPublicKey.from_bytes(querier.paillier_n)
            # A garbled Enc(x) is refused before any member spends work on it.
            enc_x = paillier.decode_ciphertext(pk, body.precheck_ciphertext) if kind == "precheck" else None
            pool, quota = self._quota_pool(body, querier)
            targets = self._targets(ctx, querier, body)
            if reservations.reserve_quota_slot(self.reserve_engine, querier.member_id, shanghai_day_start_ms(ctx.received_ms),
                                               quota, pool) is None:
                raise QueryFailure("quota_exceeded", f"{'monitoring' if pool == 'monitoring' else 'daily'} quota of {quota} queries used up")
            ctx.asked = [m.member_id for m in targets]
            t_admit = time.perf_counter()
            arrival.done()  # here now: the dispatchers stop waiting for it
            answers = self._fan_out(ctx, targets, querier, pk)
            t_fan = time.perf_counter()
            if len(answers) < self.config.k_min:
                raise QueryFailure("too_few_answers", f"{len(answers)} of {len(targets)} members answered in time; at least {self.config.k_min} are needed"
                                   + _refusal_summary(ctx.dropped))
            if kind == "precheck":
                if len(answers) != len(targets):
                    raise QueryFailure("incomplete_precheck", f"{len(answers)} of {len(targets)} members answered; a precheck needs every asked member")
                aggregate = paillier.blind_precheck(pk, enc_x, list(answers.values()), self.mask_pools.for_key(pk).take())
            elif self._naive(ctx):
                aggregate = naive.add(pk, list(answers.values()))
            else:
                aggregate = paillier.add(pk, answers.values())
            ctx.inquiries_30d = self._inquiries_30d(querier.member_id, body.subject_token_sha256, ctx.received_ms)
            t_agg = time.perf_counter()
            seq = self._commit(ctx, querier, outcome="accepted")
            t_commit = time.perf_counter()
        except QueryFailure as failure:
            arrival.done()  # refused: it will never reach the members
            if not failure.logged:
                self._commit(ctx, None, outcome="refused", failure=failure)
            self.limiter.refused(peer_id)
            self.metrics.query_done(kind, time.perf_counter() - t0, ctx.dropped, failure.reason)
            raise
        except CryptoError as exc:  # e.g. a garbled Enc(x) in a precheck
            arrival.done()
            failure = QueryFailure("malformed_request", str(exc))
            self._commit(ctx, None, outcome="refused", failure=failure)
            self.limiter.refused(peer_id)
            self.metrics.query_done(kind, time.perf_counter() - t0, ctx.dropped, failure.reason)
            raise failure from None
        finally:
            arrival.done()  # whatever failed: a query counted as on its way for ever would make every batch wait
        self.metrics.query_done(kind, time.perf_counter() - t0, ctx.dropped)
        receipt = self._receipt(seq, query.known_tree_size)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("query %s: admit %.1f ms, fan-out %.1f ms, aggregate %.1f ms, commit %.1f ms, receipt %.1f ms",
                      body.query_id, *(1000 * d for d in (t_admit - t0, t_fan - t_admit, t_agg - t_fan, t_commit - t_agg,
                                                          time.perf_counter() - t_commit)))
        return pb.GatewayQueryResponse(
            query_id=body.query_id,
            members_asked=len(ctx.asked),
            members_answered=len(answers),
            complete=len(answers) == len(ctx.asked),
            aggregate_ciphertext=naive.encode(pk, aggregate) if self._naive(ctx) else paillier.encode_ciphertext(pk, aggregate),
            inquiries_30d=ctx.inquiries_30d,
            asked_member_ids=ctx.asked,
            answers=ctx.receipts,
            audit=receipt,
        )

    def _quota_pool(self, body: pb.QueryRequestBody, querier: MemberRecord) -> tuple[str, int]:
        """SPEC §9: monitoring queries need the alliance to enable monitoring
        and count against their own daily quota; all others the member's."""
        if protocol.purpose_name(body.purpose) != MONITORING_PURPOSE:
            return "daily", querier.daily_quota
        policy = self.policy.get()
        if not policy.monitoring:
            raise QueryFailure("monitoring_disabled", "portfolio monitoring is off for this alliance "
                                                      "(the operator enables it with `alliance admin policy set monitoring on`)")
        return "monitoring", policy.monitoring_quota

    def _targets(self, ctx: QueryContext, querier: MemberRecord, body: pb.QueryRequestBody) -> list[MemberRecord]:
        """Who is asked: every other active member, or, while the token is
        pinned, exactly the pin less the querier (SPEC §5.3). A pinned member
        that cannot be asked makes the report impossible until the pin ends."""
        active = {m.member_id: m for m in self.registry.active_members() if m.member_id != querier.member_id}
        pin = reservations.read_pin(self.engine, body.subject_token_sha256, ctx.received_ms)
        if pin is None:
            targets = list(active.values())
        else:
            ctx.answer_set = list(pin.members)
            wanted = [m for m in pin.members if m != querier.member_id]
            missing = [m for m in wanted if m not in active]
            if missing:
                raise QueryFailure("answer_set_changed", _pin_message(pin, missing))
            targets = [active[m] for m in wanted]
        if len(targets) < self.config.k_min:
            ctx.asked = [m.member_id for m in targets]
            raise QueryFailure("too_few_members", f"only {len(targets)} other active member(s); a report needs at least {self.config.k_min}")
        return targets

    def _admit(self, ctx: QueryContext, peer_role: str, peer_cert_sha256: bytes) -> tuple[MemberRecord, pb.QueryRequestBody]:
        """Every check the gateway can make before reserving anything."""
        if peer_role != "member":
            raise QueryFailure("wrong_role", f"role {peer_role!r} may not query; only members may")
        querier = self.registry.get(ctx.peer_id)
        if querier is None or querier.role != "member":
            raise QueryFailure("unknown_member", f"{ctx.peer_id!r} is not a registered member")
        registered = self._registered(ctx.peer_id, peer_role, peer_cert_sha256)
        if registered is None:
            raise QueryFailure("unauthenticated", f"the TLS certificate presented is not {ctx.peer_id}'s registered one "
                                                  "(superseded by a key rotation?)")
        querier = registered
        if querier.status != "active":
            raise QueryFailure(f"member_{querier.status}", f"member {ctx.peer_id} is {querier.status}")
        try:
            body = protocol.parse_body(ctx.query)
        except Refused as exc:
            raise QueryFailure(exc.reason, str(exc)) from None
        ctx.body = body
        if protocol.mode_name(body.mode) != ctx.kind:
            raise QueryFailure("malformed_request", f"a {protocol.mode_name(body.mode)} request was sent as a {ctx.kind}")
        if body.querier_id != ctx.peer_id:
            raise QueryFailure("querier_mismatch", f"request names querier {body.querier_id!r} but the TLS peer is {ctx.peer_id!r}")
        if body.credential_serial != querier.credential_serial:
            raise QueryFailure("stale_credential", f"request names credential serial {body.credential_serial}, current is {querier.credential_serial}")
        try:
            protocol.verify_query_signature(ctx.query, querier.ed25519_public_key)
            protocol.check_fresh(body, ctx.received_ms, window_ms=log_rules.GATEWAY_FRESHNESS_MS)
            protocol.check_token(ctx.query, body)
        except Refused as exc:
            raise QueryFailure(exc.reason, str(exc)) from None
        if body.paillier_key_fingerprint != paillier.PaillierPublicKey.from_bytes(querier.paillier_n).fingerprint():
            raise QueryFailure("foreign_key", "the request's Paillier key is not the querier's registered key")
        self._check_book(ctx, querier.member_id)  # SPEC §10: stale_book
        return querier, body

    def _fan_out(self, ctx: _Context, targets: list[MemberRecord], querier: MemberRecord, pk: paillier.PaillierPublicKey) -> dict[str, Any]:
        """Ask every target at once; keep the well-formed, correctly signed
        answers that arrive before the deadline. Everything else is dropped
        and recorded, never summed."""
        assert ctx.body is not None
        request = pb.MemberQueryRequest(query=ctx.query, querier_credential=querier.credential)
        deadline_s = self.config.deadline_ms / 1000
        pending = len(targets)
        all_done = threading.Event()
        lock = threading.Lock()

        def on_done(_fut: Any) -> None:
            nonlocal pending
            with lock:
                pending -= 1
                if pending == 0:
                    all_done.set()

        calls = []
        for member in targets:
            try:
                fut = self.member_stub(member.endpoint).Answer.future(request, timeout=deadline_s)
            except Exception as exc:  # noqa: BLE001 - a broken channel is one dropped member
                ctx.dropped.append({"member_id": member.member_id, "reason": f"unreachable: {exc}"})
                on_done(None)
                continue
            fut.add_done_callback(on_done)
            calls.append((member, fut))
        all_done.wait(deadline_s + 0.1)
        answers: dict[str, Any] = {}
        for member, fut in calls:
            if not fut.done():
                fut.cancel()
                ctx.dropped.append({"member_id": member.member_id, "reason": "deadline_exceeded"})
                continue
            try:
                response = fut.result()
            except grpc.RpcError as exc:
                code = exc.code().name.lower() if exc.code() else "error"
                ctx.dropped.append({"member_id": member.member_id, "reason": f"{code}: {exc.details()}"[:300]})
                continue
            except (grpc.FutureCancelledError, concurrent.futures.CancelledError):
                ctx.dropped.append({"member_id": member.member_id, "reason": "deadline_exceeded"})
                continue
            try:
                answers[member.member_id] = self._check_answer(ctx, member, pk, response)
            except CryptoError as exc:
                log.warning("dropped answer from %s: %s", member.member_id, exc)
                ctx.dropped.append({"member_id": member.member_id, "reason": f"malformed_answer: {exc}"[:300]})
        return answers

    def _naive(self, ctx: _Context) -> bool:
        return self.naive_baseline and ctx.kind == "query"

    def _check_answer(self, ctx: _Context, member: MemberRecord, pk: paillier.PaillierPublicKey, response: pb.MemberQueryResponse) -> Any:
        assert ctx.body is not None
        if response.member_id != member.member_id:
            raise CryptoError(f"answer names {response.member_id!r}, expected {member.member_id!r}")
        if self._naive(ctx):
            ciphertext: Any = naive.decode(pk, response.ciphertext, len(report.REPORT_FIELDS))
        else:
            ciphertext = paillier.decode_ciphertext(pk, response.ciphertext)
        if response.book_status:  # SPEC §10: the member's book status, covered by the answer signature
            try:
                book_status.check_answer_status(response.book_status, member.member_id)
            except InvalidInput as exc:
                raise CryptoError(str(exc)) from None
        signing.verify(
            member.ed25519_public_key,
            signing.MEMBER_ANSWER,
            protocol.answer_message(ctx.body, ctx.query.body, response.ciphertext, response.book_status),
            response.signature,
            what=f"answer of {member.member_id}",
        )
        ctx.receipts.append(
            pb.AnswerReceipt(member_id=member.member_id, ciphertext_sha256=signing.sha256(response.ciphertext), signature=response.signature,
                             book_status=response.book_status)
        )
        return ciphertext

    # -- bookkeeping --------------------------------------------------------

    def _inquiries_30d(self, querier_id: str, token_sha256: bytes, now_ms: int) -> int:
        with self.engine.connect() as conn:
            return conn.execute(
                _OTHER_QUERIERS, {"token": token_sha256, "querier": querier_id, "since": now_ms - INQUIRY_WINDOW_MS, "until": now_ms}
            ).scalar_one()

    def _commit(self, ctx: QueryContext, querier: MemberRecord | None, *, outcome: str, failure: QueryFailure | None = None) -> int:
        """Durably log the query before anything is answered, in a
        transaction shared with the queries committing at the same time
        (group_commit.py). An accepted report settles its token's pin under
        the log's lock, so pins are taken in log order; a report over another
        set becomes an `answer_set_changed` refusal (its quota slot stays
        spent)."""
        seq, outcome, failure = self.log_commits.run(lambda conn: self._write_query(conn, ctx, querier, outcome, failure))
        if outcome != "accepted" and failure is not None and querier is not None:
            failure.logged = True  # settling the pin turned this entry into a refusal
            raise failure
        return seq

    def _write_query(self, conn: Connection, ctx: QueryContext, querier: MemberRecord | None, outcome: str,
                     failure: QueryFailure | None) -> tuple[int, str, QueryFailure | None]:
        """The query's log entry and its indexes, in ``conn``'s transaction.
        Restartable (group commit may run it again after a rollback): it
        starts from the arguments each time and returns what settling the
        pin made of the outcome."""
        def build(seq: int, when: str) -> dict[str, Any]:
            nonlocal outcome, failure
            if outcome == "accepted" and querier is not None and ctx.body is not None:
                pin, ok = reservations.settle_pin(conn, ctx.body.subject_token_sha256, querier.member_id,
                                                  [r.member_id for r in ctx.receipts], ctx.received_ms)
                ctx.answer_set = list(pin.members)
                if not ok:
                    missing = sorted(set(pin.members) - {querier.member_id} - {r.member_id for r in ctx.receipts})
                    outcome, failure = "refused", QueryFailure("answer_set_changed", _pin_message(pin, missing))
            return query_entry(ctx, seq, when, outcome, failure, self.config.k_min)

        seq, _ = audit_log.append(conn, build, ctx.received_ms, cache=self.log.nodes)
        index_asked(conn, seq, ctx.asked)  # SPEC §6.2: what GetQueryProofs may serve each member
        conn.execute(_INSERT_INQUIRY, {
            "seq": seq,
            "querier_id": ctx.peer_id,
            "token_sha256": ctx.body.subject_token_sha256 if ctx.body is not None else b"",
            "received_at_ms": ctx.received_ms,
            "accepted": outcome == "accepted",
        })
        if outcome == "accepted" and ctx.body is not None and protocol.purpose_name(ctx.body.purpose) == APPLICATION_PURPOSE:
            conn.execute(_INSERT_APPLICATION, {"seq": seq, "querier_id": ctx.peer_id, "token_sha256": ctx.body.subject_token_sha256,
                                               "received_at_ms": ctx.received_ms})
        return seq, outcome, failure

    def _receipt(self, seq: int, known_size: int = 0) -> pb.AuditReceipt:
        """Checkpoint, inclusion proof and entry; with the querier's known
        tree size, also the consistency proof between the two sizes, so the
        querier needs no second round trip to prove it (SPEC §6)."""
        size, note, inclusion, entry, consistency = self.log.receipt(seq, known_size)
        receipt = pb.AuditReceipt(present=True, leaf_index=seq, tree_size=size, checkpoint=note, inclusion_proof=inclusion, entry=entry)
        if consistency is not None:  # a hint beyond the log gets none: the querier asks on its own and finds out
            receipt.consistency_from, proof = consistency
            receipt.consistency_proof.extend(proof)
        return receipt


def _pin_message(pin: reservations.Pin, missing: list[str]) -> str:
    until = datetime.fromtimestamp(pin.expires_at_ms / 1000, tz=SHANGHAI).strftime("%Y-%m-%d %H:%M %Z")
    return (f"reports on this subject are pinned to {', '.join(pin.members)} and {', '.join(missing)} did not answer; "
            f"keep the earlier report: a new set becomes possible after {until} (24 h after the latest report)")


def _refusal_summary(dropped: list[dict[str, Any]]) -> str:
    """The members' own refusal reasons (e.g. not_sponsored, SPEC §5.1), so
    a querier that no member trusts is told why."""
    reasons: dict[str, int] = {}
    for d in dropped:
        parts = str(d.get("reason", "")).split(": ")
        reason = parts[1] if len(parts) > 1 and parts[0] == "permission_denied" else parts[0]
        reasons[reason] = reasons.get(reason, 0) + 1
    return "" if not reasons else " (members refused or failed: " + ", ".join(f"{r} ×{n}" for r, n in sorted(reasons.items())) + ")"
