"""The member node's gRPC service: answer one signed query with exactly one
ciphertext of fixed width (SPEC §1 property 4, §5).

Every check that protects the member happens here, independently of the
gateway: the querier's CA-signed credential and its pin, the querier's
signature, freshness, replay, the token's hash, the matching-key epoch and
that the encryption key is the querier's own. A refusal is an error, never an
encryption of zeros."""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from typing import Any, Protocol

import grpc
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Connection, Engine, delete, insert, select
from sqlalchemy.exc import IntegrityError

from alliance import log_rules, naive, paillier, pki, protocol, report, signing
from alliance.errors import CryptoError, Refused
from alliance.matching_key import MatchingKey
from alliance.transport import peer_identity
from alliance.v1 import alliance_pb2 as pb
from alliance.v1 import alliance_pb2_grpc as pb_grpc
from alliance_member import store
from alliance_member import metrics as member_metrics
from alliance_member.reconcile import journal_answer
from alliance_member.application_alerts import AnswerNotice

log = logging.getLogger("alliance.member")

SEEN_RETENTION_MS = 2 * protocol.FRESHNESS_MS + 60_000
_REMEMBER = insert(store.seen_queries)


class PeerTrust:
    """Verifies peers' credentials against the alliance CA and pins them on
    first sight; a second credential in a known member's name is accepted
    only when signed by that member's pinned key (SPEC §5)."""

    def __init__(self, engine: Engine, ca_cert: x509.Certificate, feed: TrustGate | None = None) -> None:
        """``feed``: the member's view of the membership feed (SPEC §5.1),
        which `member serve` always passes; only then is trust gated by the
        log. Without it (unit tests of the v1 checks) pins alone decide."""
        self.engine = engine
        self.ca_cert = ca_cert
        self.feed = feed
        self._verified: dict[bytes, pb.CredentialBody] = {}
        self._generation: object = None
        self._decisions: dict[bytes, str] = {}
        self._lock = threading.Lock()

    def verify(self, credential: bytes, now_s: int) -> pb.CredentialBody:
        digest = signing.sha256(credential)
        if self.feed is not None:
            self._gate(credential, digest)
        with self._lock:
            cached = self._verified.get(digest)
        if cached is not None and cached.not_before <= now_s <= cached.not_after:
            return cached
        try:
            cred = pb.Credential.FromString(credential)
        except Exception:  # noqa: BLE001 - any parse failure is a refusal
            raise Refused("querier credential is not a Credential", reason="bad_credential") from None
        try:
            body = pki.verify_credential(cred, self.ca_cert, now=now_s)
        except CryptoError as exc:
            raise Refused(f"querier credential: {exc}", reason="bad_credential") from None
        with self._lock, self.engine.begin() as conn:
            row = conn.execute(select(store.pinned_credentials).where(store.pinned_credentials.c.member_id == body.member_id)).first()
            pinned = None if row is None else pki.pin_from(pb.CredentialBody.FromString(pb.Credential.FromString(bytes(row.credential)).body))
            try:
                decision, pin = pki.check_pin(pinned, cred, body)
            except CryptoError as exc:
                raise Refused(str(exc), reason="unpinned_credential") from None
            if decision != "same":
                values = dict(
                    fingerprint=pin.fingerprint, ed25519_public_key=pin.ed25519_public_key, serial=pin.serial, credential=credential
                )
                if row is None:
                    conn.execute(insert(store.pinned_credentials).values(member_id=body.member_id, **values))
                else:
                    conn.execute(
                        store.pinned_credentials.update().where(store.pinned_credentials.c.member_id == body.member_id).values(**values)
                    )
                log.info("pinned credential of %s (%s)", body.member_id, decision)
            if decision == "rotated":  # the member's earlier credentials lost their pin: forget them
                self._verified = {d: b for d, b in self._verified.items() if b.member_id != body.member_id}
            self._verified[digest] = body
        return body

    def _gate(self, credential: bytes, digest: bytes) -> None:
        """SPEC §5.1: trusted in this member's own view of the log, or
        refused (`feed_stale`, `not_in_log`, `not_sponsored`,
        `member_inactive`, `superseded`, `not_witnessed`: §6.1), logged locally. Decisions are cached
        per credential until the feed moves; staleness is checked every time."""
        assert self.feed is not None
        if self.feed.stale():
            decision = "feed_stale"
        else:
            generation = self.feed.generation
            with self._lock:
                if generation != self._generation:
                    self._decisions = {}
                    self._generation = generation
                decision = self._decisions.get(digest, "")
            if not decision:
                decision = self.feed.trust_decision(credential)
                with self._lock:
                    self._decisions[digest] = decision
        if decision != "trusted":
            who = _credential_name(credential)
            log.warning("refused querier credential %s: %s", who, decision)
            raise Refused(f"querier credential {who} is not trusted in this member's view of the log ({decision})", reason=decision)

    def decide(self, credential: bytes) -> str:
        """The gate's decision alone, for key shares (no pinning)."""
        try:
            self._gate(credential, signing.sha256(credential))
        except Refused as exc:
            return exc.reason
        return "trusted"


class TrustGate(Protocol):
    """What PeerTrust needs of the membership feed (alliance_member.feed.MembershipFeed)."""

    def stale(self) -> bool: ...
    @property
    def generation(self) -> object: ...
    def view(self) -> Any: ...
    def trust_decision(self, credential: bytes) -> str: ...


def _credential_name(credential: bytes) -> str:
    try:
        body = pb.CredentialBody.FromString(pb.Credential.FromString(credential).body)
        return f"{body.member_id} serial {body.serial}"
    except Exception:  # noqa: BLE001
        return f"sha256 {signing.sha256(credential).hex()[:16]}"


@dataclass(frozen=True)
class Admitted:
    """A request that passed every check of ``MemberService.admit``."""

    query: pb.SignedQuery
    body: pb.QueryRequestBody
    pk: paillier.PaillierPublicKey
    epoch: int


class MemberService(pb_grpc.MemberNodeServicer):
    def __init__(
        self,
        *,
        member_id: str,
        engine: Engine,
        trust: PeerTrust,
        signing_key: Ed25519PrivateKey,
        matching_key: Callable[[], MatchingKey | None],
        mask_pools: paillier.MaskPools,
        clock: Callable[[], float] = time.time,
        after_answer: Callable[[AnswerNotice], None] | None = None,
        metrics: member_metrics.MemberMetrics | None = None,
        naive_baseline: bool = False,
        book_status: Callable[[], bytes] | None = None,
    ) -> None:
        self.member_id = member_id
        self.naive_baseline = naive_baseline  # SPEC §8 bench baseline only (alliance.naive): phe per figure
        self.book_status = book_status  # SPEC §10: the signed status's exact bytes, carried in every answer
        self.metrics = metrics or member_metrics.NULL  # SPEC §12
        self.engine = engine
        self.trust = trust
        self.signing_key = signing_key
        self.matching_key = matching_key
        self.mask_pools = mask_pools
        self.clock = clock
        self.after_answer = after_answer  # SPEC §9 application alerts: called only once the answer is sent
        self._last_prune_ms = 0

    def Answer(self, request: pb.MemberQueryRequest, context: grpc.ServicerContext) -> pb.MemberQueryResponse:
        started = time.perf_counter()
        try:
            self._check_peer(context)
            response, notice = self.answer_with_notice(request)
            log.debug("answered in %.1f ms", 1000 * (time.perf_counter() - started))
            self._hand_over_after_sending(context, [notice])
            self.metrics.answered(time.perf_counter() - started)
            return response
        except Refused as exc:
            self.metrics.refused(exc.reason, time.perf_counter() - started)
            log.warning("refused a query: %s (%s)", exc, exc.reason)
            context.abort(refusal_code(exc), refusal_details(exc))
            raise  # unreachable
        except Exception:  # a bug must cost one answer, never the server, and must be seen
            log.exception("internal error answering a query")
            self.metrics.failed(time.perf_counter() - started)
            context.abort(grpc.StatusCode.INTERNAL, INTERNAL_DETAILS)
            raise  # unreachable

    def AnswerBatch(self, request: pb.MemberQueryBatch, context: grpc.ServicerContext) -> pb.MemberQueryBatchResponse:
        """Many queries in one call (SPEC §8): item i answers request i, each
        with exactly the checks and the answer of Answer; one bad item spoils
        no other. The book is written in one transaction (answer_batch.py)."""
        from alliance_member import answer_batch  # here: answer_batch imports this module

        started = time.perf_counter()
        answer_batch.check_batch_bounds(request, context)  # aborts INVALID_ARGUMENT
        try:
            self._check_peer(context)
        except Refused as exc:  # the peer is the same for every item: the call is refused, each item counted
            for _ in request.items:
                self.metrics.refused(exc.reason, time.perf_counter() - started)
            log.warning("refused a batch of %d queries: %s (%s)", len(request.items), exc, exc.reason)
            context.abort(refusal_code(exc), refusal_details(exc))
            raise  # unreachable
        response, notices, outcomes = answer_batch.answer_batch(self, request)
        self._hand_over_after_sending(context, notices)
        elapsed = time.perf_counter() - started  # each item waited for the whole batch
        for outcome in outcomes:
            if outcome is None:
                self.metrics.answered(elapsed)
            elif isinstance(outcome, Refused):
                self.metrics.refused(outcome.reason, elapsed)
            else:
                self.metrics.failed(elapsed)
        return response

    def _check_peer(self, context: grpc.ServicerContext) -> None:
        peer_id, role, _ = peer_identity(context)
        if role != "gateway":
            raise Refused(f"{peer_id} ({role}) may not ask members; only the gateway may", reason="wrong_role")

    def _hand_over_after_sending(self, context: grpc.ServicerContext, notices: list[AnswerNotice]) -> None:
        if self.after_answer is None or not notices:
            return
        hand_over = self.after_answer

        def all_notices() -> None:
            for notice in notices:
                hand_over(notice)

        # Runs when the RPC has terminated, i.e. after the answer was sent;
        # the callee only enqueues (SPEC §9: answer timing never depends on it).
        if not context.add_callback(all_notices):
            all_notices()  # already terminated: the answer is out

    def answer(self, request: pb.MemberQueryRequest) -> pb.MemberQueryResponse:
        return self.answer_with_notice(request)[0]

    def answer_with_notice(self, request: pb.MemberQueryRequest) -> tuple[pb.MemberQueryResponse, AnswerNotice]:
        """The answer, and what the application alerts (SPEC §9) may look at
        once it has been sent: token, epoch, purpose, mode, time; never the querier."""
        now_ms = int(self.clock() * 1000)
        admitted = self.admit(request, now_ms)
        with self.engine.begin() as conn:
            self._remember_query_id(conn, admitted.body.query_id, now_ms)
            facts = store.subject_facts(conn, admitted.query.subject_token, admitted.epoch)
            ciphertext = self.ciphertext(admitted, facts)
            journal_answer(conn, admitted.body.query_id, admitted.query.body, ciphertext, now_ms)  # SPEC §6.2, with the replay row
        return self.signed(admitted, ciphertext, now_ms, active_borrower=has_active_loan(facts))

    def admit(self, request: pb.MemberQueryRequest, now_ms: int) -> Admitted:
        """Every check that needs no write to this member's book: bounds,
        matching key, the querier's credential (trust gate and pin), role,
        serial, signature, freshness, token, epoch, key. Refused otherwise.
        Shared by Answer and AnswerBatch (answer_batch.py)."""
        _check_bounds(request)
        key = self.matching_key()
        if key is None:
            raise Refused("this member has no matching key installed yet", reason="no_matching_key")
        querier = self.trust.verify(request.querier_credential, now_ms // 1000)
        query = request.query
        body = protocol.parse_body(query)
        if querier.role != pb.ROLE_MEMBER or body.querier_id != querier.member_id:
            raise Refused(f"request names {body.querier_id!r} but the credential is {querier.member_id!r}", reason="querier_mismatch")
        if querier.member_id == self.member_id:
            raise Refused("a member is never asked about its own query", reason="self_query")
        if body.credential_serial != querier.serial:
            raise Refused(f"request names credential serial {body.credential_serial}, credential has {querier.serial}", reason="stale_credential")
        protocol.verify_query_signature(query, querier.ed25519_public_key)
        protocol.check_fresh(body, now_ms)
        protocol.check_token(query, body)
        if body.matching_key_epoch != key.epoch:
            raise Refused(f"token made with matching-key epoch {body.matching_key_epoch}; this member is at epoch {key.epoch}", reason="epoch_mismatch")
        pk = paillier.PaillierPublicKey.from_bytes(querier.paillier_n)
        if body.paillier_key_fingerprint != pk.fingerprint():
            raise Refused("the request's Paillier key is not the querier's own", reason="foreign_key")
        return Admitted(query, body, pk, key.epoch)

    def ciphertext(self, admitted: Admitted, facts: store.Facts) -> bytes:
        """The one fixed-width ciphertext of the figures, under a fresh
        single-use mask; ``facts``: the subject's rows, read by the caller
        (which also writes the answer's rows)."""
        figures = self._figures(facts, admitted.body)
        pk = admitted.pk
        if self.naive_baseline and admitted.body.mode == pb.QUERY_MODE_REPORT:
            return naive.encrypt_figures(pk, figures)
        plaintext = paillier.pack(figures)
        return paillier.encode_ciphertext(pk, paillier.encrypt(pk, plaintext, self.mask_pools.for_key(pk).take()))

    def signed(self, admitted: Admitted, ciphertext: bytes, now_ms: int, *,
               active_borrower: bool | None = None) -> tuple[pb.MemberQueryResponse, AnswerNotice]:
        """Sign an answer whose rows are committed (never before: an answer
        that is out must be in the journal). ``active_borrower``: what the
        answer's read of the book showed, for the application alerts."""
        body, query = admitted.body, admitted.query
        status = self.book_status() if self.book_status is not None else b""
        signature = signing.sign(self.signing_key, signing.MEMBER_ANSWER, protocol.answer_message(body, query.body, ciphertext, status))
        notice = AnswerNotice(bytes(query.subject_token), admitted.epoch, body.purpose, body.mode, now_ms, active_borrower)
        return pb.MemberQueryResponse(member_id=self.member_id, ciphertext=ciphertext, signature=signature, book_status=status), notice

    def _figures(self, facts: store.Facts, body: pb.QueryRequestBody) -> list[int]:
        """Unknown subjects give all-zero figures: the same single ciphertext."""
        as_of = date.fromisoformat(body.as_of)
        loans, flags, score = facts
        if body.mode == pb.QUERY_MODE_PRECHECK:
            balance = sum(l.balance_fen for l in loans if l.status == "ACTIVE" and l.opened_on <= as_of)
            return [balance]
        return report.member_figures(loans, flags, score, as_of)

    def _remember_query_id(self, conn: Connection, query_id: str, now_ms: int) -> None:
        """Replay protection that survives restarts; ids older than the
        freshness window can never be accepted again, so they are pruned."""
        try:
            conn.execute(_REMEMBER, {"query_id": query_id, "seen_at_ms": now_ms})
        except IntegrityError:
            raise replay_refusal(query_id) from None
        self.prune_seen(conn, now_ms)

    def prune_seen(self, conn: Connection, now_ms: int) -> None:
        if now_ms - self._last_prune_ms > 60_000:
            self._last_prune_ms = now_ms
            conn.execute(delete(store.seen_queries).where(store.seen_queries.c.seen_at_ms < now_ms - SEEN_RETENTION_MS))


def has_active_loan(facts: store.Facts) -> bool:
    """An ACTIVE loan under the subject's token, whatever its dates (the
    application alerts' "current borrower", SPEC §9)."""
    return any(loan.status == "ACTIVE" for loan in facts[0])


def replay_refusal(query_id: str) -> Refused:
    return Refused(f"query id {query_id} was already answered (replay)", reason="replayed_query")


INTERNAL_DETAILS = "internal error in the member node (see its log)"


def refusal_code(exc: Refused) -> grpc.StatusCode:
    """The status a refusal ends the call with (an item's code in a batch)."""
    return grpc.StatusCode.FAILED_PRECONDITION if exc.reason == "epoch_mismatch" else grpc.StatusCode.PERMISSION_DENIED


def refusal_details(exc: Refused) -> str:
    """"<reason>: <message>": the gateway's drop reasons and refusal summary read the reason from it."""
    return f"{exc.reason}: {exc}"


def _check_bounds(request: pb.MemberQueryRequest) -> None:
    """SPEC §5.4 sizes, before anything is parsed: the gateway bounds what it
    logs, and the member does not trust the gateway to have done so."""
    q = request.query
    for what, size, bound in (("credential", len(request.querier_credential), log_rules.MAX_CREDENTIAL_BYTES),
                              ("request body", len(q.body), log_rules.MAX_BODY_BYTES)):
        if size > bound:
            raise Refused(f"{what} of {size} bytes exceeds {bound}", reason="malformed_request")
    if len(q.signature) != log_rules.SIGNATURE_BYTES or len(q.subject_token) != log_rules.TOKEN_BYTES:
        raise Refused(f"signature must be {log_rules.SIGNATURE_BYTES} bytes and token {log_rules.TOKEN_BYTES}", reason="malformed_request")
