"""The gateway's per-member coalescing dispatcher (SPEC §8 "many subjects per
member call"): singles when idle, one batch of what queued while a call was
in flight, bounded batches, per-item deadlines, per-item errors with the
single call's code and details, and the fallback to Answer for a member
without AnswerBatch; the hold for queries on their way (under load only,
bounded); and the fan-out through it, unchanged in its results."""
from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from alliance import log_rules, report
from alliance.v1 import alliance_pb2 as pb
from alliance_gateway import member_dispatch
from alliance_gateway.member_dispatch import Arrivals, MemberDispatcher
from alliance_gateway.metrics import GatewayMetrics
from alliance_gateway.server import _DispatchStub
from alliance_gateway.service import QueryFailure
from alliance_member import service as member_service_mod
from tests.alliance_fixtures import signed_query
from tests.test_gateway_service import _decrypt_report, _last_entry, ca, gateway, members, process  # noqa: F401 (fixtures)


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


def _aio_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)


class FakeMember:
    """A grpc.aio MemberNode stub. Request ``bad…`` is refused as a replay;
    while ``gate`` is clear, AnswerBatch does not return."""

    def __init__(self, *, unimplemented: bool = False, fail: grpc.StatusCode | None = None) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.unimplemented, self.fail = unimplemented, fail
        self.batches: list[list[str]] = []
        self.timeouts: list[float] = []
        self.singles: list[str] = []

    async def AnswerBatch(self, request: pb.MemberQueryBatch, timeout: float) -> pb.MemberQueryBatchResponse:
        self.batches.append([r.query.body.decode() for r in request.items])
        self.timeouts.append(timeout)
        if self.unimplemented:
            raise _aio_error(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")
        if self.fail is not None:
            raise _aio_error(self.fail, "connection refused")
        while not self.gate.is_set():
            await asyncio.sleep(0.002)
        response = pb.MemberQueryBatchResponse()
        for r in request.items:
            name = r.query.body.decode()
            if name.startswith("bad"):
                response.items.add().error.CopyFrom(pb.MemberBatchError(
                    reason="replayed_query", message=f"replayed_query: query id {name} was already answered (replay)",
                    code=grpc.StatusCode.PERMISSION_DENIED.value[0]))
            else:
                response.items.add().answer.member_id = name
        return response

    async def Answer(self, request: pb.MemberQueryRequest, timeout: float) -> pb.MemberQueryResponse:
        name = request.query.body.decode()
        self.singles.append(name)
        if name.startswith("bad"):
            raise _aio_error(grpc.StatusCode.PERMISSION_DENIED, f"replayed_query: query id {name} was already answered (replay)")
        return pb.MemberQueryResponse(member_id=name)


def req(name: str) -> pb.MemberQueryRequest:
    return pb.MemberQueryRequest(query=pb.SignedQuery(body=name.encode()))


def wait_for(condition: Any, timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.002)


def test_an_idle_member_gets_each_request_at_once_alone(loop) -> None:  # type: ignore[no-untyped-def]
    member = FakeMember()
    d = MemberDispatcher(loop, member)
    assert d.submit(req("q1"), 2.0).result(5).member_id == "q1"
    assert d.submit(req("q2"), 2.0).result(5).member_id == "q2"
    assert member.batches == [["q1"], ["q2"]] and member.singles == []
    assert 1.5 < member.timeouts[0] <= 2.0


def test_requests_queued_while_a_call_is_in_flight_go_as_one_batch(loop) -> None:  # type: ignore[no-untyped-def]
    member = FakeMember()
    member.gate.clear()
    metrics = GatewayMetrics()
    d = MemberDispatcher(loop, member, on_batch=metrics.member_batch)
    first = d.submit(req("q0"), 5.0)
    wait_for(lambda: len(member.batches) == 1)  # in flight, blocked
    rest = [d.submit(req(f"q{i}"), 5.0) for i in range(1, 6)]
    time.sleep(0.05)
    assert len(member.batches) == 1  # nothing sent while the call is in flight
    member.gate.set()
    assert [f.result(5).member_id for f in [first, *rest]] == [f"q{i}" for i in range(6)]  # position i answers request i
    assert member.batches == [["q0"], ["q1", "q2", "q3", "q4", "q5"]]
    sample = metrics.registry.get_sample_value
    assert (sample("alliance_gateway_member_batch_items_count"), sample("alliance_gateway_member_batch_items_sum")) == (2, 6)
    assert sample("alliance_gateway_member_batch_items_bucket", {"le": "1.0"}) == 1


def test_batches_are_bounded(loop) -> None:  # type: ignore[no-untyped-def]
    member = FakeMember()
    member.gate.clear()
    d = MemberDispatcher(loop, member)
    futures = [d.submit(req("q0"), 5.0)]
    wait_for(lambda: len(member.batches) == 1)
    futures += [d.submit(req(f"q{i}"), 5.0) for i in range(1, log_rules.MAX_BATCH_ITEMS + 8)]
    member.gate.set()
    assert [f.result(5).member_id for f in futures] == [f"q{i}" for i in range(log_rules.MAX_BATCH_ITEMS + 8)]
    assert [len(b) for b in member.batches] == [1, log_rules.MAX_BATCH_ITEMS, 7]


def test_a_request_whose_deadline_passed_while_queued_is_never_sent(loop) -> None:  # type: ignore[no-untyped-def]
    member = FakeMember()
    member.gate.clear()
    d = MemberDispatcher(loop, member)
    first = d.submit(req("q0"), 5.0)
    wait_for(lambda: len(member.batches) == 1)
    late, timely = d.submit(req("late"), 0.05), d.submit(req("timely"), 5.0)
    time.sleep(0.15)
    member.gate.set()
    assert first.result(5).member_id == "q0" and timely.result(5).member_id == "timely"
    with pytest.raises(concurrent.futures.CancelledError):  # the fan-out records it as "deadline_exceeded"
        late.result(5)
    assert member.batches == [["q0"], ["timely"]]


def test_each_item_fails_alone_with_the_single_calls_code_and_details(loop) -> None:  # type: ignore[no-untyped-def]
    d = MemberDispatcher(loop, FakeMember())
    member = d._stub
    member.gate.clear()
    first = d.submit(req("q0"), 5.0)
    wait_for(lambda: len(member.batches) == 1)
    bad, good = d.submit(req("bad1"), 5.0), d.submit(req("q2"), 5.0)
    member.gate.set()
    assert first.result(5).member_id == "q0" and good.result(5).member_id == "q2"
    with pytest.raises(grpc.RpcError) as exc:
        bad.result(5)
    # what the fan-out records: identical to a single Answer's refusal
    assert f"{exc.value.code().name.lower()}: {exc.value.details()}" == "permission_denied: replayed_query: query id bad1 was already answered (replay)"


def test_a_failed_batch_call_fails_each_item_as_a_single_call_would(loop) -> None:  # type: ignore[no-untyped-def]
    d = MemberDispatcher(loop, FakeMember(fail=grpc.StatusCode.UNAVAILABLE))
    futures = [d.submit(req(f"q{i}"), 5.0) for i in range(3)]
    for f in futures:
        with pytest.raises(grpc.RpcError) as exc:
            f.result(5)
        assert (exc.value.code(), exc.value.details()) == (grpc.StatusCode.UNAVAILABLE, "connection refused")


def test_a_member_without_answer_batch_is_asked_with_single_calls(loop) -> None:  # type: ignore[no-untyped-def]
    member = FakeMember(unimplemented=True)
    d = MemberDispatcher(loop, member)
    assert d.submit(req("q1"), 2.0).result(5).member_id == "q1"
    futures = [d.submit(req(name), 2.0) for name in ("q2", "bad3", "q4")]
    assert futures[0].result(5).member_id == "q2" and futures[2].result(5).member_id == "q4"
    with pytest.raises(grpc.RpcError) as exc:
        futures[1].result(5)
    assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED and exc.value.details().startswith("replayed_query: ")
    assert member.batches == [["q1"]]  # probed once, then single calls only
    assert member.singles == ["q1", "q2", "bad3", "q4"]


# -- holding for queries on their way (Arrivals) ------------------------------------------


def test_with_nothing_on_its_way_a_request_is_sent_at_once_even_with_a_long_hold(loop) -> None:  # type: ignore[no-untyped-def]
    member = FakeMember()
    d = MemberDispatcher(loop, member, arrivals=Arrivals(), hold_s=30.0)
    started = time.monotonic()
    assert d.submit(req("q1"), 60.0).result(5).member_id == "q1"  # a hold would take 30 s: result(5) would time out
    assert time.monotonic() - started < 5 and member.batches == [["q1"]]


def test_a_request_waits_for_the_queries_on_their_way_and_goes_in_one_batch_with_them(loop) -> None:  # type: ignore[no-untyped-def]
    member = FakeMember()
    arrivals = Arrivals()
    d = MemberDispatcher(loop, member, arrivals=arrivals, hold_s=30.0)
    coming = [arrivals.arriving(), arrivals.arriving()]
    first = d.submit(req("q1"), 60.0)
    time.sleep(0.1)
    assert member.batches == []  # held: two queries are on their way
    coming[0].done()
    second = d.submit(req("q2"), 60.0)
    time.sleep(0.05)
    assert member.batches == []  # still one on its way
    coming[1].done()
    third = d.submit(req("q3"), 60.0)
    assert [f.result(5).member_id for f in (first, second, third)] == ["q1", "q2", "q3"]
    assert member.batches[0][:2] == ["q1", "q2"] and sum(map(len, member.batches)) == 3  # q3 may race the hold's end


def test_a_done_ticket_leaves_once_however_often_it_is_done(loop) -> None:  # type: ignore[no-untyped-def]
    arrivals = Arrivals()
    a, b = arrivals.arriving(), arrivals.arriving()
    a.done()
    a.done()
    assert arrivals.on_the_way() == 1
    b.done()
    assert arrivals.on_the_way() == 0


def test_the_hold_is_bounded_when_a_query_on_its_way_never_comes(loop) -> None:  # type: ignore[no-untyped-def]
    member = FakeMember()
    arrivals = Arrivals()
    arrivals.arriving()  # never done
    d = MemberDispatcher(loop, member, arrivals=arrivals, hold_s=0.2)
    started = time.monotonic()
    assert d.submit(req("q1"), 60.0).result(5).member_id == "q1"
    assert 0.15 < time.monotonic() - started < 5 and member.batches == [["q1"]]


def test_the_hold_never_runs_a_request_into_its_deadline(loop, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(member_dispatch, "_HOLD_MARGIN_S", 0.5)  # wide, so a late timer on a loaded box cannot fail it
    member = FakeMember()
    arrivals = Arrivals()
    arrivals.arriving()  # never done
    d = MemberDispatcher(loop, member, arrivals=arrivals, hold_s=30.0)
    started = time.monotonic()
    assert d.submit(req("q1"), 1.0).result(5).member_id == "q1"  # sent before its deadline, not cancelled
    assert member.batches == [["q1"]] and member.timeouts[0] > 0 and time.monotonic() - started > 0.3


def test_a_request_joining_a_hold_is_never_held_into_its_deadline(loop, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The cap is taken from every queued request at each poll, not from
    those queued when the hold began (review finding, stop 17)."""
    monkeypatch.setattr(member_dispatch, "_HOLD_MARGIN_S", 0.5)  # wide, so a late timer on a loaded box cannot fail it
    member = FakeMember()
    arrivals = Arrivals()
    d = MemberDispatcher(loop, member, arrivals=arrivals, hold_s=5.0)
    arrivals.arriving()  # never done
    long = d.submit(req("q0"), 60.0)  # starts a hold capped only by hold_s
    time.sleep(0.05)
    short = d.submit(req("q1"), 1.0)  # joins the hold: must go before its own deadline
    assert short.result(5).member_id == "q1" and long.result(5).member_id == "q0"
    assert member.batches == [["q0", "q1"]]


def test_a_pump_cancelled_while_holding_leaves_the_dispatcher_usable(loop) -> None:  # type: ignore[no-untyped-def]
    member = FakeMember()
    arrivals = Arrivals()
    d = MemberDispatcher(loop, member, arrivals=arrivals, hold_s=30.0)
    ticket = arrivals.arriving()
    first = d.submit(req("q1"), 60.0)
    time.sleep(0.05)

    async def cancel_pumps() -> None:
        for task in asyncio.all_tasks():
            if task is not asyncio.current_task():
                task.cancel()

    asyncio.run_coroutine_threadsafe(cancel_pumps(), loop).result(5)
    wait_for(lambda: not d._busy)
    ticket.done()
    second = d.submit(req("q2"), 60.0)  # a new pump takes what the cancelled one left queued
    assert first.result(5).member_id == "q1" and second.result(5).member_id == "q2"
    assert member.batches == [["q1", "q2"]]


def test_a_full_batch_does_not_wait(loop) -> None:  # type: ignore[no-untyped-def]
    member = FakeMember()
    member.gate.clear()
    arrivals = Arrivals()
    d = MemberDispatcher(loop, member, arrivals=arrivals, hold_s=0.0)
    first = d.submit(req("q0"), 60.0)
    wait_for(lambda: len(member.batches) == 1)
    d._hold_s = 30.0
    arrivals.arriving()  # never done
    futures = [d.submit(req(f"q{i}"), 60.0) for i in range(1, log_rules.MAX_BATCH_ITEMS + 1)]
    member.gate.set()
    assert first.result(5).member_id == "q0"
    assert futures[-1].result(5).member_id == f"q{log_rules.MAX_BATCH_ITEMS}"  # a full batch goes at once
    assert [len(b) for b in member.batches] == [1, log_rules.MAX_BATCH_ITEMS]


# -- the fan-out through dispatchers, with real member services ---------------------------


class InProcessMember:
    """A grpc.aio stub reaching a MemberService in process (its handlers run
    in a thread, as grpc's server runs them); AnswerBatch takes ``delay`` s."""

    def __init__(self, service: Any, delay: float = 0.0) -> None:
        self.service, self.delay = service, delay
        self.batch_sizes: list[int] = []

    async def AnswerBatch(self, request: pb.MemberQueryBatch, timeout: float) -> pb.MemberQueryBatchResponse:
        self.batch_sizes.append(len(request.items))
        await asyncio.sleep(self.delay)
        return await asyncio.to_thread(self.service.AnswerBatch, request, _GatewayContext())

    async def Answer(self, request: pb.MemberQueryRequest, timeout: float) -> pb.MemberQueryResponse:
        raise AssertionError("AnswerBatch is implemented")


class _GatewayContext:
    def add_callback(self, callback: Any) -> bool:
        return False

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise _aio_error(code, details)


@pytest.fixture
def batched_gateway(gateway, loop, monkeypatch):  # type: ignore[no-untyped-def]
    svc, stubs, members = gateway
    monkeypatch.setattr(member_service_mod, "peer_identity", lambda context: ("gateway", "gateway", b""))
    inproc = {}
    for mid in list(stubs):
        inproc[mid] = InProcessMember(stubs[mid].handler.__self__, delay=0.05)
        stubs[mid] = _DispatchStub(MemberDispatcher(loop, inproc[mid], arrivals=svc.arrivals))  # as build_server wires it
    return svc, inproc, members


def test_concurrent_queries_are_coalesced_and_each_sum_is_exact(batched_gateway) -> None:  # type: ignore[no-untyped-def]
    svc, inproc, members = batched_gateway
    with svc.engine.begin() as conn:  # room for the run in the querier's daily quota
        conn.execute(svc_members_quota(), {"q": 100})
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda _: process(svc, members, signed_query(members["mq"]), "mq", "member", "query"), range(6)))
    for resp in results:
        assert (resp.members_asked, resp.members_answered, resp.complete) == (3, 3, True)
        sums = _decrypt_report(members, resp)
        assert sums[report.FIELD_INDEX["score_sum"]] == 600 + 700 + 800 and sums[report.FIELD_INDEX["scored_lenders"]] == 3
    for member in inproc.values():
        assert sum(member.batch_sizes) == 6 and max(member.batch_sizes) > 1, member.batch_sizes


def test_member_refusals_read_as_before_through_batches(batched_gateway) -> None:  # type: ignore[no-untyped-def]
    svc, inproc, members = batched_gateway
    for member in inproc.values():
        member.service.matching_key = lambda: None
    with pytest.raises(QueryFailure) as exc:
        process(svc, members, signed_query(members["mq"]), "mq", "member", "query")
    assert exc.value.reason == "too_few_answers" and "(members refused or failed: no_matching_key ×3)" in str(exc.value)
    assert sorted(d["reason"] for d in _last_entry(svc)["dropped"]) == [
        "permission_denied: no_matching_key: this member has no matching key installed yet"] * 3


def test_a_request_queued_past_its_deadline_is_dropped_as_deadline_exceeded(batched_gateway, loop) -> None:  # type: ignore[no-untyped-def]
    svc, inproc, members = batched_gateway
    blocker = FakeMember()
    blocker.gate.clear()
    dispatcher = MemberDispatcher(loop, blocker)
    svc_stubs = svc.member_stub
    original = svc_stubs("ma")
    svc.member_stub = lambda ep: _DispatchStub(dispatcher) if ep == "ma" else svc_stubs(ep)
    try:
        in_flight = dispatcher.submit(req("q0"), 10.0)
        wait_for(lambda: len(blocker.batches) == 1)
        resp = process(svc, members, signed_query(members["mq"]), "mq", "member", "query")
        assert (resp.members_asked, resp.members_answered, resp.complete) == (3, 2, False)
        assert _last_entry(svc)["dropped"] == [{"member_id": "ma", "reason": "deadline_exceeded"}]
        blocker.gate.set()
        assert in_flight.result(5).member_id == "q0"
        assert blocker.batches == [["q0"]]  # the expired request was never sent
    finally:
        svc.member_stub = svc_stubs
    assert original is svc_stubs("ma")


def svc_members_quota() -> Any:
    from sqlalchemy import bindparam, update

    from alliance_gateway import schema

    return update(schema.members).values(daily_quota=bindparam("q"))


def test_every_query_leaves_the_arrivals_count_whatever_its_outcome(batched_gateway, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A query counted as on its way for ever would make every member's
    batches wait their full hold: accepted, refused and failing queries all
    leave the count."""
    svc, _, members = batched_gateway
    assert process(svc, members, signed_query(members["mq"]), "mq", "member", "query").members_answered == 3
    assert svc.arrivals.on_the_way() == 0
    with pytest.raises(QueryFailure):
        process(svc, members, signed_query(members["mq"]), "nobody", "member", "query")  # refused in admission
    assert svc.arrivals.on_the_way() == 0

    def broken(*_: Any) -> Any:
        raise RuntimeError("a bug in admission")

    monkeypatch.setattr(svc, "_targets", broken)
    with pytest.raises(RuntimeError):
        process(svc, members, signed_query(members["mq"]), "mq", "member", "query")
    assert svc.arrivals.on_the_way() == 0


def test_a_query_is_counted_on_its_way_while_it_is_admitted(batched_gateway, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    svc, _, members = batched_gateway
    seen: list[int] = []
    real = svc._targets

    def spying(*args: Any) -> Any:
        seen.append(svc.arrivals.on_the_way())
        return real(*args)

    real_fan_out = svc._fan_out

    def fanning_out(*args: Any) -> Any:
        seen.append(svc.arrivals.on_the_way())  # arrived: its own requests must not wait for itself
        return real_fan_out(*args)

    monkeypatch.setattr(svc, "_targets", spying)
    monkeypatch.setattr(svc, "_fan_out", fanning_out)
    process(svc, members, signed_query(members["mq"]), "mq", "member", "query")
    assert seen == [1, 0] and svc.arrivals.on_the_way() == 0
