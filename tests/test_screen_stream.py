"""The gateway's Screen stream (gateway/screen_rpcs.py): answers leave as soon
as they are done, requests are read in waves counted as on their way to the
fan-out, and no way of ending a stream leaves a subject counted for ever."""
from __future__ import annotations

import queue
import threading
import time
from typing import Any

import grpc
import pytest

from alliance.v1 import alliance_pb2 as pb
from alliance_gateway import screen_rpcs
from tests.alliance_fixtures import signed_query
from tests.test_gateway_service import Aborted, ScreenPeer as Peer
from tests.test_gateway_service import ca, gateway, members  # noqa: F401 - fixtures

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")


def _drain(stream: Any, out: list, timeout_s: float = 20.0) -> threading.Thread:
    def run() -> None:
        try:
            for response in stream:
                out.append(response)
        except BaseException as exc:  # noqa: BLE001 - inspected by the test
            out.append(exc)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout_s)
    return t


def test_a_querier_that_waits_for_each_answer_before_its_next_request_is_answered(gateway) -> None:  # noqa: F811
    """A careful client sends one subject and waits for its answer before the
    next. The gateway must send each answer when it is done, not when the
    next request arrives: otherwise both sides wait for ever."""
    svc, _, members = gateway
    svc._peer = lambda context: context.peer  # type: ignore[method-assign]
    answered: queue.Queue = queue.Queue()
    sent: list[str] = []

    def one_at_a_time():  # type: ignore[no-untyped-def]
        for _ in range(3):
            q = signed_query(members["mq"])
            sent.append(pb.QueryRequestBody.FromString(q.body).query_id)
            yield q
            answered.get(timeout=15)  # the answer to this one first

    out: list = []
    stream = svc.Screen(one_at_a_time(), Peer(members))

    def on_answer(stream):  # type: ignore[no-untyped-def]
        for response in stream:
            answered.put(response)
            yield response

    worker = _drain(on_answer(stream), out)
    assert not worker.is_alive(), f"the stream stalled after {len(out)} answer(s)"
    assert [r.query_id for r in out] == sent
    assert all(not r.HasField("error") and r.members_answered == 3 for r in out), out
    assert svc.arrivals.on_the_way() == 0


def _readers() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == "screen-reader"}


def _reader_gone(before: set[threading.Thread]) -> None:
    until = time.monotonic() + 5
    while _readers() - before:
        assert time.monotonic() < until, "the stream's reader is still waiting"
        time.sleep(0.01)


def _blocking_process(svc: Any, *, released: bool = False) -> tuple[list[int], threading.Event]:
    """process() replaced by one that notes how many subjects are on their
    way when each starts (``started``), waits for ``release`` (already set
    when ``released``), then answers; the peer is read off the fake context."""
    svc._peer = lambda context: context.peer  # type: ignore[method-assign]
    started: list[int] = []
    release = threading.Event()
    if released:
        release.set()
    def process(request, peer_id, peer_role, kind, cert, *, arrival=None):  # type: ignore[no-untyped-def]
        assert arrival is not None, "a streamed subject comes with its place among those on their way"
        started.append(svc.arrivals.on_the_way())
        release.wait(15)
        arrival.done()
        return pb.GatewayQueryResponse(query_id=pb.QueryRequestBody.FromString(request.body).query_id)
    svc.process = process
    return started, release


def test_requests_of_a_wave_are_counted_on_their_way_as_they_are_read(gateway) -> None:  # noqa: F811
    """The dispatchers hold a member call while queries are on their way;
    a screen's requests count from the moment they are read, so a wave
    reaches each member in one call rather than in ones and twos."""
    svc, _, members = gateway
    started, release = _blocking_process(svc)
    wave = screen_rpcs.SCREEN_WAVE
    requests = [signed_query(members["mq"]) for _ in range(wave)]
    out: list = []
    worker = threading.Thread(target=lambda: out.extend(svc.Screen(iter(requests), Peer(members))), daemon=True)
    worker.start()
    until = time.monotonic() + 10
    while len(started) < wave:
        assert time.monotonic() < until, started
        time.sleep(0.005)
    assert svc.arrivals.on_the_way() == wave  # every subject read, none admitted yet: all on their way
    release.set()
    worker.join(10)
    assert [r.query_id for r in out] == [pb.QueryRequestBody.FromString(q.body).query_id for q in requests]
    assert svc.arrivals.on_the_way() == 0


def test_a_stream_stopped_early_leaves_nothing_counted_on_its_way(gateway) -> None:  # noqa: F811
    """A subject counted on its way for ever would make every member call at
    this gateway wait its full hold: the client going away mid-stream must
    leave the count at zero, and the reader must not hang."""
    svc, _, members = gateway
    started, release = _blocking_process(svc)
    more: queue.Queue = queue.Queue()
    for _ in range(screen_rpcs.SCREEN_IN_FLIGHT + 5):
        more.put(signed_query(members["mq"]))
    readers_before = _readers()
    stream = svc.Screen(iter(more.get, None), Peer(members))
    first = threading.Thread(target=lambda: next(stream), daemon=True)
    first.start()
    until = time.monotonic() + 10
    while len(started) < screen_rpcs.SCREEN_IN_FLIGHT:
        assert time.monotonic() < until, started
        time.sleep(0.005)
    release.set()
    first.join(10)
    stream.close()  # the client went away after one answer
    more.put(None)
    assert svc.arrivals.on_the_way() == 0
    assert svc.screen_streams._open.get("mq", 0) == 0
    _reader_gone(readers_before)


def test_a_refusal_while_reading_ends_the_stream_after_the_answers_before_it(gateway) -> None:  # noqa: F811
    """rate_limited is raised on the thread that reads requests; the stream
    hands over the answers to the subjects before it, then fails with the
    refusal's status, and counts nothing on its way."""
    svc, _, members = gateway
    _blocking_process(svc, released=True)
    calls = [0]

    def check_rate(context, peer_id, peer_role, kind):  # type: ignore[no-untyped-def]
        calls[0] += 1
        if calls[0] == 3:
            context.set_trailing_metadata((("alliance-reason", "rate_limited"),))
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "rate_limited: test")

    svc._check_rate = check_rate
    requests = [signed_query(members["mq"]) for _ in range(5)]
    peer = Peer(members)
    out: list = []
    worker = _drain(svc.Screen(iter(requests), peer), out)
    assert not worker.is_alive()
    assert [r.query_id for r in out[:2]] == [pb.QueryRequestBody.FromString(q.body).query_id for q in requests[:2]]
    assert isinstance(out[2], Aborted) and out[2].args[0] == grpc.StatusCode.RESOURCE_EXHAUSTED, out
    assert len(out) == 3 and dict(peer.trailing)["alliance-reason"] == "rate_limited"
    assert svc.arrivals.on_the_way() == 0


def test_the_stream_reads_its_next_wave_only_when_a_whole_wave_of_places_is_free(gateway) -> None:  # noqa: F811
    """One answer out does not pull one request in: requests are read a
    wave at a time, so they reach the members together."""
    svc, _, members = gateway
    svc._peer = lambda context: context.peer  # type: ignore[method-assign]
    requests = [signed_query(members["mq"]) for _ in range(screen_rpcs.SCREEN_IN_FLIGHT + screen_rpcs.SCREEN_WAVE)]
    ids = [pb.QueryRequestBody.FromString(q.body).query_id for q in requests]
    go = {qid: threading.Event() for qid in ids}
    started: list[str] = []

    def process(request, peer_id, peer_role, kind, cert, *, arrival=None):  # type: ignore[no-untyped-def]
        qid = pb.QueryRequestBody.FromString(request.body).query_id
        started.append(qid)
        go[qid].wait(15)
        arrival.done()
        return pb.GatewayQueryResponse(query_id=qid)

    svc.process = process
    out: list = []
    worker = threading.Thread(target=lambda: out.extend(svc.Screen(iter(requests), Peer(members))), daemon=True)
    worker.start()

    def wait_started(n: int) -> None:
        until = time.monotonic() + 10
        while len(started) < n:
            assert time.monotonic() < until, (n, len(started))
            time.sleep(0.005)

    wait_started(screen_rpcs.SCREEN_IN_FLIGHT)
    for qid in ids[:screen_rpcs.SCREEN_WAVE - 1]:
        go[qid].set()  # all but one place of a wave free
    time.sleep(0.3)
    assert len(started) == screen_rpcs.SCREEN_IN_FLIGHT  # not read one by one
    go[ids[screen_rpcs.SCREEN_WAVE - 1]].set()
    wait_started(len(requests))
    # the new wave, read together and none admitted, beside the first wave's second half, still working
    assert svc.arrivals.on_the_way() == len(requests) - screen_rpcs.SCREEN_WAVE
    for event in go.values():
        event.set()
    worker.join(10)
    assert [r.query_id for r in out] == ids


def test_a_request_read_as_the_stream_stops_is_not_counted_for_ever(gateway) -> None:  # noqa: F811
    """The reader may be inside the request stream when the answers stop:
    the request it then gets is neither sent nor left on its way."""
    svc, _, members = gateway
    started, _ = _blocking_process(svc, released=True)
    stopped = threading.Event()

    def requests():  # type: ignore[no-untyped-def]
        yield signed_query(members["mq"])
        stopped.wait(10)  # the client closes the stream while its next request is on the wire
        yield signed_query(members["mq"])

    readers_before = _readers()
    stream = svc.Screen(requests(), Peer(members))
    next(stream)
    stream.close()
    stopped.set()
    _reader_gone(readers_before)
    assert len(started) == 1 and svc.arrivals.on_the_way() == 0
