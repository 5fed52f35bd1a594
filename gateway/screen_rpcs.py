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

import queue
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc

from alliance.v1 import alliance_pb2 as pb
from alliance_gateway import audit_log
from alliance_gateway.member_dispatch import Arrival
from alliance_gateway.refusals import QueryFailure

# Subjects of one screening stream processed at once (SPEC §8 screening). More
# in flight means larger member batches and log group commits: at 10 members
# on the bench box, 8 gave 67-68 subjects/s, 16 gave 76-78, 24-32 gave 79-81;
# 16 takes most of that without letting one stream hold 32 gateway threads.
SCREEN_IN_FLIGHT = 16
# Requests are read in waves of this many (see _ScreenStream): two waves in flight, one
# with the members while the other is admitted or logged.
SCREEN_WAVE = SCREEN_IN_FLIGHT // 2
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
    log, process, arrivals, _peer, _check_rate."""

    screen_streams: StreamSlots

    def Screen(self, request_iterator: Iterator[pb.SignedQuery], context: grpc.ServicerContext) -> Iterator[pb.GatewayQueryResponse]:
        """Up to SCREEN_IN_FLIGHT subjects of one batch are processed at once
        (each exactly as a single query: reserved, fanned out, logged before
        its answer); answers stream back in request order, each as soon as
        it and those before it are done. A peer may have MAX_SCREEN_STREAMS
        open at once."""
        peer_id, peer_role, cert_sha256 = self._peer(context)  # type: ignore[attr-defined]
        if not self.screen_streams.open(peer_id):
            context.set_trailing_metadata((("alliance-reason", "too_many_screens"), ("alliance-exit-code", "4")))
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"too_many_screens: {peer_id} already has {MAX_SCREEN_STREAMS} screening streams open at this gateway; "
                          "wait for one to finish")
        try:
            with ThreadPoolExecutor(SCREEN_IN_FLIGHT, thread_name_prefix="screen") as pool:
                yield from _ScreenStream(self, pool, context, peer_id, peer_role, cert_sha256).answers(request_iterator)
        finally:
            self.screen_streams.close(peer_id)  # after the pool: its running subjects have finished

    def _screen_one(self, request: pb.SignedQuery, peer_id: str, peer_role: str, kind: str,
                    cert_sha256: bytes, arrival: Arrival) -> pb.GatewayQueryResponse:
        try:
            return self.process(request, peer_id, peer_role, kind, cert_sha256, arrival=arrival)  # type: ignore[attr-defined]
        except QueryFailure as failure:
            return pb.GatewayQueryResponse(query_id=_peek_query_id(request), error=failure.as_error())
        finally:
            arrival.done()  # process() does, from its first statements on; this covers whatever fails before them


_END = object()  # the request stream ended


class _ScreenStream:
    """One Screen call. A reader thread takes requests off the stream a wave
    of SCREEN_WAVE at a time, once that many of the SCREEN_IN_FLIGHT places
    are free, counts each as on its way to the fan-out (``Arrivals``) the
    moment it is read, and hands it to the pool; the handler's thread
    streams the answers back in request order.

    Two things follow from reading on a thread of its own. An answer goes
    out as soon as it is done, never waiting for the querier's next request
    (a querier that holds back, as a slow or careful client may, cannot
    deadlock the stream). And requests the querier sent ahead are read as a
    burst when answers free their places, so the members' dispatchers hold
    for the whole burst (they wait while queries are on their way) and each
    member is asked for many subjects per call (SPEC §8) instead of for the
    one subject that happened to be admitted first."""

    def __init__(self, service: Any, pool: ThreadPoolExecutor, context: grpc.ServicerContext,
                 peer_id: str, peer_role: str, cert_sha256: bytes) -> None:
        self.service = service
        self.pool = pool
        self.context = context
        self.peer = (peer_id, peer_role, cert_sha256)
        self.proofs = _StreamProofs(service.log)
        self.places = threading.Semaphore(SCREEN_IN_FLIGHT)
        self.order: queue.SimpleQueue[Any] = queue.SimpleQueue()  # (future, arrival) in request order, then _END or an exception
        self.lock = threading.Lock()  # no subject is handed to the pool once the answers have stopped
        self.stopped = False

    def answers(self, request_iterator: Iterator[pb.SignedQuery]) -> Iterator[pb.GatewayQueryResponse]:
        threading.Thread(target=self._read, args=(request_iterator,), name="screen-reader", daemon=True).start()
        try:
            while True:
                item = self.order.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item  # e.g. rate_limited: the context already carries its status and trailers
                future, _arrival = item
                response = future.result()
                self.places.release()
                yield self.proofs.carry(response)
        finally:
            with self.lock:
                self.stopped = True
            self.places.release()  # a reader waiting for a place wakes, sees the stop and leaves
            self._cancel_unsent()

    def _read(self, request_iterator: Iterator[pb.SignedQuery]) -> None:
        try:
            while True:
                for _ in range(SCREEN_WAVE):  # read in waves: the dispatchers hold for the whole wave
                    self.places.acquire()
                    if self.stopped:
                        return
                for _ in range(SCREEN_WAVE):
                    if self.stopped:
                        return
                    request = next(request_iterator, None)
                    if request is None:
                        self.order.put(_END)
                        return
                    self._hand_over(request)
        except BaseException as exc:  # noqa: BLE001 - handed to the handler's thread, which raises it in order
            self.order.put(exc)

    def _hand_over(self, request: pb.SignedQuery) -> None:
        service, (peer_id, peer_role, cert_sha256) = self.service, self.peer
        if self.stopped:
            return  # read as the answers stopped: neither counted, rate-checked nor sent
        arrival = service.arrivals.arriving()  # on its way from now: the dispatchers hold for it
        try:
            self.proofs.start(request.known_tree_size)
            if self.proofs.size:  # carry() restates the receipt's proof from the size held: one proof, not two
                request.known_tree_size = 0
            kind = "precheck" if _peek_mode(request) == pb.QUERY_MODE_PRECHECK else "query"
            service._check_rate(self.context, peer_id, peer_role, kind)
            with self.lock:
                if self.stopped:
                    arrival.done()
                    return
                future = self.pool.submit(service._screen_one, request, peer_id, peer_role, kind, cert_sha256, arrival)
                self.order.put((future, arrival))  # under the lock: the answers' end sees every subject handed over
        except BaseException:
            arrival.done()  # never counted as on its way for ever: every batch would wait its full hold
            raise

    def _cancel_unsent(self) -> None:
        """The stream ended early: subjects not yet started are never sent
        (running ones finish when the pool shuts down)."""
        while True:
            try:
                item = self.order.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, tuple):
                future, arrival = item
                future.cancel()
                arrival.done()  # idempotent; a running subject's own process() has called it or will


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
