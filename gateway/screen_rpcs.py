"""Screening (SPEC §8 and §9): many subjects over one streamed call. Each
subject goes through exactly the single query's path (reserved, fanned out,
logged before its answer); up to SCREEN_IN_FLIGHT of one stream at once, the
answers streamed back in request order, each receipt carrying the
consistency proof from the size the querier holds by then.

A peer may keep MAX_SCREEN_STREAMS streams open at once at a gateway
replica: each stream holds a server worker and up to SCREEN_IN_FLIGHT pool
threads, and its subjects queue in every member's dispatcher and in the log's
commit queue ahead of other queriers' requests."""
from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import grpc

from alliance.v1 import alliance_pb2 as pb
from alliance_gateway import audit_log
from alliance_gateway.refusals import QueryFailure

# Subjects of one screening stream processed at once (SPEC §8 screening). More
# in flight means larger member batches and log group commits: at 10 members
# on the bench box, 8 gave 67-68 subjects/s, 16 gave 76-78, 24-32 gave 79-81;
# 16 takes most of that without letting one stream hold 32 gateway threads.
SCREEN_IN_FLIGHT = 16
MAX_SCREEN_STREAMS = 2  # open at once per peer, per gateway replica


class StreamSlots:
    """How many screening streams each peer has open; thread-safe."""

    def __init__(self, per_peer: int = MAX_SCREEN_STREAMS) -> None:
        self.per_peer = per_peer
        self._open: dict[str, int] = {}
        self._lock = threading.Lock()

    def open(self, peer_id: str) -> bool:
        with self._lock:
            if self._open.get(peer_id, 0) >= self.per_peer:
                return False
            self._open[peer_id] = self._open.get(peer_id, 0) + 1
            return True

    def close(self, peer_id: str) -> None:
        with self._lock:
            left = self._open.get(peer_id, 0) - 1
            if left > 0:
                self._open[peer_id] = left
            else:
                self._open.pop(peer_id, None)


class ScreenRpcs:
    """Mixin for GatewayService: the Screen RPC. Needs of the host class:
    log, process, _peer, _check_rate."""

    screen_streams: StreamSlots

    def Screen(self, request_iterator: Iterator[pb.SignedQuery], context: grpc.ServicerContext) -> Iterator[pb.GatewayQueryResponse]:
        """Up to SCREEN_IN_FLIGHT subjects of one batch are processed at once
        (each exactly as a single query: reserved, fanned out, logged before
        its answer); answers stream back in request order. A peer may have
        MAX_SCREEN_STREAMS open at once."""
        peer_id, peer_role, cert_sha256 = self._peer(context)  # type: ignore[attr-defined]
        if not self.screen_streams.open(peer_id):
            context.set_trailing_metadata((("alliance-reason", "too_many_screens"), ("alliance-exit-code", "4")))
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"too_many_screens: {peer_id} already has {MAX_SCREEN_STREAMS} screening streams open at this gateway; "
                          "wait for one to finish")
        try:
            proofs = _StreamProofs(self.log)  # type: ignore[attr-defined]
            with ThreadPoolExecutor(SCREEN_IN_FLIGHT, thread_name_prefix="screen") as pool:
                pending: deque[Future[pb.GatewayQueryResponse]] = deque()
                try:
                    for request in request_iterator:
                        proofs.start(request.known_tree_size)
                        if proofs.size:  # carry() restates the receipt's proof from the size held: one proof, not two
                            request.known_tree_size = 0
                        kind = "precheck" if _peek_mode(request) == pb.QUERY_MODE_PRECHECK else "query"
                        self._check_rate(context, peer_id, peer_role, kind)  # type: ignore[attr-defined]
                        pending.append(pool.submit(self._screen_one, request, peer_id, peer_role, kind, cert_sha256))
                        while pending and (len(pending) >= SCREEN_IN_FLIGHT or pending[0].done()):
                            yield proofs.carry(pending.popleft().result())
                    while pending:
                        yield proofs.carry(pending.popleft().result())
                finally:
                    for fut in pending:
                        fut.cancel()  # the stream ended early: subjects not yet started are never sent
        finally:
            self.screen_streams.close(peer_id)  # after the pool: its running subjects have finished

    def _screen_one(self, request: pb.SignedQuery, peer_id: str, peer_role: str, kind: str,
                    cert_sha256: bytes) -> pb.GatewayQueryResponse:
        try:
            return self.process(request, peer_id, peer_role, kind, cert_sha256)  # type: ignore[attr-defined]
        except QueryFailure as failure:
            return pb.GatewayQueryResponse(query_id=_peek_query_id(request), error=failure.as_error())


class _StreamProofs:
    """Consistency proofs for one Screen stream. Its requests' size hints
    are made before the answers to earlier subjects arrive, so they lag;
    but the querier reads answers in stream order and keeps the largest
    checkpoint seen, so the size it holds when it reads an answer is the
    largest of the first hint and the sizes already streamed. Each receipt
    carries the proof from that size: no extra round trip per subject
    (a querier whose kept checkpoint moved otherwise asks, as before)."""

    def __init__(self, log_reader: audit_log.LogReader) -> None:
        self.log = log_reader
        self.size: int | None = None

    def start(self, hint: int) -> None:
        if self.size is None:
            self.size = hint if hint <= self.log.size() else 0  # a hint beyond the log proves nothing

    def carry(self, response: pb.GatewayQueryResponse) -> pb.GatewayQueryResponse:
        receipt = response.audit
        if not receipt.present or not self.size:
            if receipt.present:
                self.size = receipt.tree_size
            return response
        # Always restated from the size the querier holds: the receipt came with the proof from the
        # request's stale hint. At the same size the proof is empty (nothing to prove, roots compared).
        proof = [] if receipt.tree_size == self.size else self.log.consistency_proof(*sorted((receipt.tree_size, self.size)))
        del receipt.consistency_proof[:]
        receipt.consistency_from = self.size
        receipt.consistency_proof.extend(proof)
        self.size = max(self.size, receipt.tree_size)
        return response


def _peek_mode(request: pb.SignedQuery) -> int:
    body = pb.QueryRequestBody()
    try:
        body.ParseFromString(request.body)
    except Exception:  # noqa: BLE001 - the full parse reports it properly
        return pb.QUERY_MODE_REPORT
    return body.mode


def _peek_query_id(request: pb.SignedQuery) -> str:
    body = pb.QueryRequestBody()
    try:
        body.ParseFromString(request.body)
    except Exception:  # noqa: BLE001
        return ""
    return body.query_id
