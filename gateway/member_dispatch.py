"""Per-member coalescing of Answer calls into AnswerBatch calls (SPEC §8:
"many subjects per member call").

One dispatcher per member endpoint lives on the gateway's grpc.aio loop.
A query's request for that member is queued; a dispatcher with no call in
flight sends what is queued at once (light load: batches of one, no added
latency); while a call is in flight requests accumulate, and when it returns
they go out together as the next batch (at most ``log_rules.MAX_BATCH_ITEMS``
items and ``MAX_BATCH_BYTES`` bytes). Each request keeps its own deadline: one
whose deadline passed while queued is never sent and ends cancelled, which
the fan-out records as ``deadline_exceeded`` exactly as before.

The caller still sees one concurrent.futures.Future per member per query,
resolving to the member's MemberQueryResponse or raising a grpc.RpcError
whose code and details are those the single ``Answer`` call would have
carried, so the fan-out's drop reasons (``permission_denied: <reason>: …``)
and ``_refusal_summary`` are unchanged.

Under load, an idle dispatcher also waits briefly for company: while other
queries are on their way to the fan-out (admitted or being admitted, counted
by ``Arrivals``), it holds its next call up to ``HOLD_S`` for them, so nine
calls per query become fewer, larger AnswerBatch calls. Each call costs both
sides about as much gRPC and transaction work as several answers, which is
what a 2-core box runs out of first. At light load nothing is on its way and
nothing waits."""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc

from alliance import log_rules
from alliance.v1 import alliance_pb2 as pb

log = logging.getLogger("alliance.gateway")

# A member without AnswerBatch (an older release) is asked with single calls;
# it is probed again after this long, so an upgraded member gets batches
# without a gateway restart.
BATCH_REPROBE_S = 300.0

# Under load (other queries on their way to the fan-out), a dispatcher about
# to call its member waits at most this long for them to join the batch.
# Measured at 10 members, 16 concurrent queriers (alliance bench): holding
# cut the CPU per query by about a sixth; a query's latency under that load
# is hundreds of ms of queueing, so 20 ms more for some is in the noise.
HOLD_S = 0.020
_HOLD_POLL_S = 0.005  # a timer wake-up per holding dispatcher this often, not an event per arrival
_HOLD_MARGIN_S = 0.050  # never hold a request into the last moments of its deadline

_CODES: dict[int, grpc.StatusCode] = {code.value[0]: code for code in grpc.StatusCode}


class ItemError(grpc.RpcError):
    """One batch item's refusal or failure, shaped as the RpcError the single
    call would have raised (the fan-out reads code() and details())."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


def item_error(error: pb.MemberBatchError) -> ItemError:
    """A member's per-item error. The member is not trusted to send a sane
    code: an unknown one, or OK on an error, reads as UNKNOWN."""
    code = _CODES.get(error.code, grpc.StatusCode.UNKNOWN)
    if code is grpc.StatusCode.OK:
        code = grpc.StatusCode.UNKNOWN
    return ItemError(code, error.message)


class Arrivals:
    """How many queries are on their way to the fan-out: admitted, or being
    admitted, and not yet handed to the dispatchers (thread-safe). The
    gateway counts each query in with ``arriving()`` and out with the
    returned ticket's ``done()``; the dispatchers read ``on_the_way()``."""

    def __init__(self) -> None:
        self._count = 0
        self._lock = threading.Lock()

    def arriving(self) -> "Arrival":
        with self._lock:
            self._count += 1
        return Arrival(self)

    def on_the_way(self) -> int:
        return self._count  # one int read: no lock needed to look

    def _leave(self, ticket: "Arrival") -> None:
        with self._lock:  # a ticket may be done on two threads at once (a screen stopping): count it out once
            if ticket._arrivals is self:
                ticket._arrivals = None
                self._count -= 1


class Arrival:
    """One query's place in ``Arrivals``; ``done()`` may be called any number of times."""

    __slots__ = ("_arrivals",)

    def __init__(self, arrivals: Arrivals) -> None:
        self._arrivals: Arrivals | None = arrivals

    def done(self) -> None:
        arrivals = self._arrivals
        if arrivals is not None:
            arrivals._leave(self)


@dataclass
class _Item:
    request: pb.MemberQueryRequest
    size: int
    deadline: float  # monotonic seconds
    future: concurrent.futures.Future


class MemberDispatcher:
    """Coalesces one member's Answer requests; thread-safe ``submit``, the
    calls themselves run on ``loop``. ``stub`` is a grpc.aio MemberNodeStub
    (or anything with awaitable ``Answer`` and ``AnswerBatch``)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, stub: Any, *, max_items: int = log_rules.MAX_BATCH_ITEMS,
                 max_bytes: int = log_rules.MAX_BATCH_BYTES, clock: Callable[[], float] = time.monotonic,
                 on_batch: Callable[[int], None] | None = None, arrivals: Arrivals | None = None,
                 hold_s: float = HOLD_S) -> None:
        self._loop = loop
        self._stub = stub
        self._max_items = max_items
        self._max_bytes = max_bytes
        self._clock = clock
        self._on_batch = on_batch  # told each call's number of requests (gateway metrics)
        self._arrivals = arrivals  # None: never hold (tests, or a caller without the gateway's count)
        self._hold_s = hold_s
        self._queue: deque[_Item] = deque()
        self._lock = threading.Lock()
        self._busy = False  # a pump task is sending, or is about to
        self._singles_until = 0.0  # monotonic time until which AnswerBatch is known to be unimplemented

    def submit(self, request: pb.MemberQueryRequest, timeout: float) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        item = _Item(request, request.ByteSize(), self._clock() + timeout, future)
        with self._lock:
            self._queue.append(item)
            if self._busy:
                return future  # the call in flight sends it when it returns
            self._busy = True
        self._loop.call_soon_threadsafe(self._start)
        return future

    def _start(self) -> None:
        self._loop.create_task(self._pump())

    async def _pump(self) -> None:
        while True:
            try:
                await self._hold()
            except asyncio.CancelledError:
                with self._lock:
                    self._busy = False  # what is queued goes with the next submit's pump
                raise
            with self._lock:
                batch = self._take()
                if not batch:
                    self._busy = False
                    return
            try:
                await self._send(batch)
            except BaseException as exc:  # noqa: BLE001 - no item may be left waiting for ever
                for item in batch:
                    _fail(item, ItemError(grpc.StatusCode.UNKNOWN, f"gateway dispatcher: {exc!r}"))
                if isinstance(exc, asyncio.CancelledError):
                    with self._lock:
                        self._busy = False
                    raise
                log.exception("member dispatcher failed a batch")

    async def _hold(self) -> None:
        """Wait for the queries on their way (see Arrivals) to join the next
        batch: until none is left on its way, the batch is full, ``hold_s``
        has passed, or a queued request nears its deadline (checked at each
        poll, so a request that joins during the hold is never held into
        its own). Returns at once when nothing is on its way (light load) or
        nothing is queued (the next submit starts a pump of its own)."""
        arrivals = self._arrivals
        if arrivals is None or self._hold_s <= 0 or arrivals.on_the_way() <= 0 or not self._queue:
            return
        loop_clock = self._loop.time  # real time: the hold is a real wait, whatever clock deadlines use
        until = loop_clock() + self._hold_s
        while arrivals.on_the_way() > 0:
            with self._lock:
                if len(self._queue) >= self._max_items:
                    return
                earliest = min((i.deadline for i in self._queue), default=None)
            now = loop_clock()
            left = until - now
            if earliest is not None:
                left = min(left, earliest - self._clock() - _HOLD_MARGIN_S)
            if left <= 0:
                return
            await asyncio.sleep(min(_HOLD_POLL_S, left))

    def _take(self) -> list[_Item]:
        """The next batch, oldest first, within the bounds; items whose
        deadline passed while queued are cancelled and never sent, as are
        those the fan-out already gave up on. Called under the lock."""
        now = self._clock()
        batch: list[_Item] = []
        size = 0
        while self._queue and len(batch) < self._max_items:
            item = self._queue[0]
            if batch and size + item.size + 16 > self._max_bytes:
                break  # next batch; a lone item is always sent (the member judges its own bounds)
            self._queue.popleft()
            if item.deadline <= now:
                item.future.cancel()  # the fan-out records "deadline_exceeded"
                continue
            if not item.future.set_running_or_notify_cancel():
                continue  # cancelled by the fan-out
            batch.append(item)
            size += item.size + 16  # + field tag and length prefixes
        return batch

    async def _send(self, batch: list[_Item]) -> None:
        if self._on_batch is not None:
            self._on_batch(len(batch))
        if self._clock() < self._singles_until:
            await self._send_singles(batch)
            return
        # The call's timeout is the LATEST deadline in the batch: the member
        # answers the batch as a whole, so the earliest would cut off items
        # that still have time whenever an older one is near its end. An item
        # whose own deadline passes while the call is in flight is dropped by
        # the fan-out's own wait (it stops waiting at its deadline), so no
        # query ever waits past its deadline either way.
        timeout = max(item.deadline for item in batch) - self._clock()
        try:
            response = await self._stub.AnswerBatch(pb.MemberQueryBatch(items=[item.request for item in batch]), timeout=timeout)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                log.info("member does not implement AnswerBatch; asking it with single Answer calls")
                self._singles_until = self._clock() + BATCH_REPROBE_S
                await self._send_singles(batch)
                return
            for item in batch:  # the batch call's own failure is each item's, as a single call's would be
                _fail(item, exc)
            return
        if len(response.items) != len(batch):
            for item in batch:
                _fail(item, ItemError(grpc.StatusCode.DATA_LOSS, f"batch answer has {len(response.items)} items for {len(batch)} requests"))
            return
        for item, result in zip(batch, response.items):
            kind = result.WhichOneof("result")
            if kind == "answer":
                _resolve(item, result.answer)
            elif kind == "error":
                _fail(item, item_error(result.error))
            else:
                _fail(item, ItemError(grpc.StatusCode.DATA_LOSS, "empty batch item"))

    async def _send_singles(self, batch: list[_Item]) -> None:
        """Fallback for a member without AnswerBatch: the items at once, each
        with its own deadline, exactly as the fan-out used to call."""
        async def one(item: _Item) -> None:
            try:
                _resolve(item, await self._stub.Answer(item.request, timeout=max(0.0, item.deadline - self._clock())))
            except grpc.RpcError as exc:
                _fail(item, exc)
            except Exception as exc:  # noqa: BLE001 - settles this item, never another's
                _fail(item, ItemError(grpc.StatusCode.UNKNOWN, f"gateway dispatcher: {exc!r}"))

        await asyncio.gather(*(one(item) for item in batch))


def _resolve(item: _Item, response: Any) -> None:
    if not item.future.done():
        item.future.set_result(response)


def _fail(item: _Item, exc: BaseException) -> None:
    if not item.future.done():
        item.future.set_exception(exc)
