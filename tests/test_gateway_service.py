"""The gateway's query path without a network (SPEC §4, §5): member answers
come from in-process member services or from deliberately broken fakes, so
each failure mode is exact: a malformed or wrongly signed answer is dropped
and logged, never summed; a dead member costs at most the deadline; fewer
than k answers is an error; a precheck with a missing member never says yes."""
from __future__ import annotations

import threading
from datetime import date
import time
from concurrent.futures import Future
from typing import Any, Callable

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import insert

from alliance import audit_entry, db, identity, paillier, report
from alliance.errors import Refused
from alliance.v1 import alliance_pb2 as pb
from alliance_gateway import audit_log, schema
from alliance_gateway.home import GatewayConfig
from alliance_gateway.registry import Registry
from alliance_gateway.service import GatewayService, QueryFailure
from alliance_member import store
from alliance_member.service import MemberService, PeerTrust
from tests.alliance_fixtures import MK, SUBJECT, LocalCA, log_book_status, signed_query


class FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


class FakeStub:
    """Stands in for a member's gRPC stub: Answer.future(request, timeout)."""

    def __init__(self, handler: Callable[[pb.MemberQueryRequest], pb.MemberQueryResponse] | None) -> None:
        self.handler = handler
        self.Answer = self

    def future(self, request: pb.MemberQueryRequest, timeout: float) -> Future:
        fut: Future = Future()
        if self.handler is None:  # a dead member: never answers
            return fut

        def run() -> None:
            try:
                fut.set_result(self.handler(request))
            except Refused as exc:
                fut.set_exception(FakeRpcError(grpc.StatusCode.PERMISSION_DENIED, str(exc)))

        threading.Thread(target=run, daemon=True).start()
        return fut


@pytest.fixture(scope="module")
def ca() -> LocalCA:
    return LocalCA()


@pytest.fixture(scope="module")
def members(ca):  # type: ignore[no-untyped-def]
    return {mid: ca.enrol(mid) for mid in ("mq", "ma", "mb", "mc")}


@pytest.fixture
def gateway(members, ca, tmp_path, db_url):  # type: ignore[no-untyped-def]
    engine = db.make_engine(db_url)
    schema.create_schema(engine)
    with engine.begin() as conn:
        audit_log.start_v2(conn, deadline_ms=800)
        for m in members.values():
            conn.execute(insert(schema.members).values(
                member_id=m.member_id, name=m.member_id, role="member", status="active", endpoint=m.member_id,
                credential=m.credential.SerializeToString(), credential_serial=m.body.serial,
                fingerprint=m.body.member_fingerprint, ed25519_public_key=m.body.ed25519_public_key,
                paillier_n=m.body.paillier_n, tls_cert_sha256=m.body.tls_cert_sha256, daily_quota=3, updated_at_ms=0))
    for m in members.values():
        log_book_status(engine, m)  # SPEC §10: fresh books, so they may query
    services = {}
    for mid in ("ma", "mb", "mc"):
        mengine = db.make_engine(db.sqlite_url(tmp_path / f"{mid}.db"))
        store.create_schema(mengine)
        token = identity.subject_token(MK.key, *SUBJECT)
        with mengine.begin() as conn:  # each member scores the subject: 600, 700, 800
            conn.execute(store.scores.insert().values(subject_token=token, key_epoch=1, masked_id="x", id_type="RESIDENT_ID",
                                                      score={"ma": 600, "mb": 700, "mc": 800}[mid], scored_on=date(2026, 1, 1),
                                                      import_run=1, import_line=2))
        services[mid] = MemberService(member_id=mid, engine=mengine, trust=PeerTrust(mengine, ca.cert),
                                      signing_key=members[mid].signing_key, matching_key=lambda: MK,
                                      mask_pools=paillier.MaskPools(target=2))
    stubs: dict[str, Any] = {mid: FakeStub(services[mid].answer) for mid in services}
    cfg = GatewayConfig(listen="", db_url=db_url, log_origin="test/log", log_key_name="test/log", k_min=2, deadline_ms=800,
                        registry_refresh_ms=0)
    svc = GatewayService(engine=engine, registry=Registry(engine, 0), config=cfg, member_stub=lambda ep: stubs[ep],
                         log_reader=audit_log.LogReader(engine, origin="test/log", key_name="test/log",
                                                        signing_key=Ed25519PrivateKey.generate()),
                         mask_pools=paillier.MaskPools(target=2))
    yield svc, stubs, members
    engine.dispose()


def process(svc: GatewayService, members, query: pb.SignedQuery, peer_id: str, role: str, kind: str) -> pb.GatewayQueryResponse:  # type: ignore[no-untyped-def]
    """As the gRPC edge calls it: with the digest of the peer's TLS certificate."""
    cert = members[peer_id].body.tls_cert_sha256 if peer_id in members else bytes(32)
    return svc.process(query, peer_id, role, kind, cert)


def _decrypt_report(members, response: pb.GatewayQueryResponse) -> list[int]:  # type: ignore[no-untyped-def]
    q = members["mq"]
    m = q.private_key.decrypt(paillier.decode_ciphertext(q.public_key, response.aggregate_ciphertext))
    return paillier.unpack(m, len(report.REPORT_FIELDS), response.members_answered)


def _last_entry(svc) -> dict:  # type: ignore[no-untyped-def]
    size = svc.log.size()
    return audit_entry.decode(svc.log.entry(size - 1), index=size - 1)


def test_all_members_answer_and_the_sum_is_exact(gateway) -> None:
    svc, _, members = gateway
    resp = process(svc, members, signed_query(members["mq"]), "mq", "member", "query")
    assert (resp.members_asked, resp.members_answered, resp.complete) == (3, 3, True)
    sums = _decrypt_report(members, resp)
    assert sums[report.FIELD_INDEX["score_sum"]] == 2100 and sums[report.FIELD_INDEX["scored_lenders"]] == 3
    entry = _last_entry(svc)
    assert entry["outcome"] == "accepted" and sorted(entry["members_answered"]) == ["ma", "mb", "mc"]
    assert resp.audit.present and resp.audit.leaf_index == entry["seq"]


def test_malformed_answer_is_dropped_and_logged_never_summed(gateway) -> None:
    svc, stubs, members = gateway
    good = stubs["mc"].handler

    def garbage(request: pb.MemberQueryRequest) -> pb.MemberQueryResponse:
        resp = good(request)
        return pb.MemberQueryResponse(member_id="mc", ciphertext=resp.ciphertext[:-1], signature=resp.signature)

    stubs["mc"] = FakeStub(garbage)
    resp = process(svc, members, signed_query(members["mq"]), "mq", "member", "query")
    assert (resp.members_answered, resp.complete) == (2, False)
    assert _decrypt_report(members, resp)[report.FIELD_INDEX["score_sum"]] == 1300
    dropped = _last_entry(svc)["dropped"]
    assert dropped and dropped[0]["member_id"] == "mc" and dropped[0]["reason"].startswith("malformed_answer")


def test_answer_with_a_wrong_signature_is_dropped(gateway) -> None:
    svc, stubs, members = gateway
    good = stubs["mb"].handler

    def resigned(request: pb.MemberQueryRequest) -> pb.MemberQueryResponse:
        resp = good(request)
        resp.signature = bytes(64)
        return resp

    stubs["mb"] = FakeStub(resigned)
    resp = process(svc, members, signed_query(members["mq"]), "mq", "member", "query")
    assert resp.members_answered == 2 and "mb" not in [r.member_id for r in resp.answers]


def test_dead_member_costs_at_most_the_deadline(gateway) -> None:
    svc, stubs, members = gateway
    stubs["ma"] = FakeStub(None)
    start = time.monotonic()
    resp = process(svc, members, signed_query(members["mq"]), "mq", "member", "query")
    assert time.monotonic() - start < 0.8 + 0.5
    assert (resp.members_answered, resp.complete) == (2, False)
    assert _last_entry(svc)["dropped"] == [{"member_id": "ma", "reason": "deadline_exceeded"}]


def test_report_over_a_single_member_is_refused(gateway) -> None:
    svc, stubs, members = gateway
    stubs["ma"] = FakeStub(None)
    stubs["mb"] = FakeStub(None)
    with pytest.raises(QueryFailure) as exc:
        process(svc, members, signed_query(members["mq"]), "mq", "member", "query")
    assert exc.value.reason == "too_few_answers" and exc.value.exit_code == 5
    entry = _last_entry(svc)
    assert entry["outcome"] == "refused" and entry["reason"] == "too_few_answers" and entry["members_answered"] == ["mc"]


def test_a_garbled_precheck_ciphertext_is_refused_before_any_member_is_asked(gateway) -> None:
    svc, stubs, members = gateway
    asked = []
    for mid, stub in stubs.items():
        stub.handler = (lambda h, m: lambda req: (asked.append(m), h(req))[1])(stub.handler, mid)
    garbled = signed_query(members["mq"], mode=pb.QUERY_MODE_PRECHECK, enc_x=b"\x00" * 512)
    with pytest.raises(QueryFailure) as exc:
        process(svc, members, garbled, "mq", "member", "precheck")
    assert exc.value.reason == "malformed_request" and asked == []
    assert _last_entry(svc)["reason"] == "malformed_request"


def test_precheck_with_a_missing_member_never_says_yes(gateway) -> None:
    svc, stubs, members = gateway
    stubs["ma"] = FakeStub(None)
    with pytest.raises(QueryFailure) as exc:
        process(svc, members, signed_query(members["mq"], mode=pb.QUERY_MODE_PRECHECK), "mq", "member", "precheck")
    assert exc.value.reason == "incomplete_precheck" and exc.value.exit_code == 5


def test_refusals_are_logged_with_their_reason(gateway) -> None:
    svc, _, members = gateway
    q = signed_query(members["mq"])
    q.signature = bytes(64)
    with pytest.raises(QueryFailure) as exc:
        process(svc, members, q, "mq", "member", "query")
    assert exc.value.reason == "bad_signature"
    with pytest.raises(QueryFailure) as exc:
        process(svc, members, signed_query(members["mq"]), "a-different-peer", "member", "query")
    assert exc.value.reason == "unknown_member"
    with pytest.raises(QueryFailure) as exc:
        process(svc, members, signed_query(members["mq"], purpose="LOAN_APPROVAL"), "mq", "auditor", "query")
    assert exc.value.reason == "wrong_role"
    assert _last_entry(svc)["reason"] == "wrong_role"
    # A CA-signed certificate in mq's name that is not mq's registered one (e.g. from before a key rotation).
    with pytest.raises(QueryFailure) as exc:
        svc.process(signed_query(members["mq"]), "mq", "member", "query", bytes(32))
    assert exc.value.reason == "unauthenticated" and "registered" in str(exc.value)
    assert _last_entry(svc)["reason"] == "unauthenticated"


def test_daily_quota_is_enforced_and_logged(gateway) -> None:
    svc, _, members = gateway
    for _ in range(3):
        process(svc, members, signed_query(members["mq"]), "mq", "member", "query")
    with pytest.raises(QueryFailure) as exc:
        process(svc, members, signed_query(members["mq"]), "mq", "member", "query")
    assert exc.value.reason == "quota_exceeded" and exc.value.exit_code == 4
    assert _last_entry(svc)["outcome"] == "refused"


def test_suspended_member_is_refused_and_not_asked(gateway) -> None:
    svc, _, members = gateway
    with svc.engine.begin() as conn:
        conn.execute(schema.members.update().where(schema.members.c.member_id == "mc").values(status="suspended"))
    resp = process(svc, members, signed_query(members["mq"]), "mq", "member", "query")
    assert list(resp.asked_member_ids) == ["ma", "mb"]
    with svc.engine.begin() as conn:
        conn.execute(schema.members.update().where(schema.members.c.member_id == "mq").values(status="revoked"))
    with pytest.raises(QueryFailure) as exc:
        process(svc, members, signed_query(members["mq"]), "mq", "member", "query")
    assert exc.value.reason == "member_revoked"


def test_registry_sees_a_member_added_by_another_process_at_once(members, db_url) -> None:  # type: ignore[no-untyped-def]
    """The admin CLI adds a member from another process; the gateway must know
    it on its very first call, not a refresh period later (a newcomer's first
    matching-key hand-over raced this)."""
    engine = db.make_engine(db_url)
    schema.create_schema(engine)
    registry = Registry(engine, refresh_ms=60_000)
    assert registry.get("mq") is None  # loads (empty) and caches for a minute
    m = members["mq"]
    with engine.begin() as conn:
        conn.execute(insert(schema.members).values(
            member_id="mq", name="mq", role="member", status="active", endpoint="mq",
            credential=m.credential.SerializeToString(), credential_serial=m.body.serial,
            fingerprint=m.body.member_fingerprint, ed25519_public_key=m.body.ed25519_public_key,
            paillier_n=m.body.paillier_n, tls_cert_sha256=m.body.tls_cert_sha256, daily_quota=3, updated_at_ms=0))
    record = registry.get("mq")  # at once: no rate limit on a miss (the CI failure of test_fake_member_…)
    assert record is not None and record.ed25519_public_key == m.body.ed25519_public_key
    engine.dispose()


class Aborted(Exception):
    """What ScreenPeer.abort raises: (status code, details)."""


class ScreenPeer:
    """A servicer context as the Screen handler uses it: the peer's identity,
    trailing metadata kept, abort raising ``Aborted``."""

    def __init__(self, members: Any, member_id: str = "mq") -> None:
        self.peer = (member_id, "member", members[member_id].body.tls_cert_sha256)
        self.trailing: tuple = ()

    def set_trailing_metadata(self, metadata: tuple) -> None:
        self.trailing = metadata

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise Aborted(code, details)


def _screen(svc: GatewayService, members, queries: list[pb.SignedQuery]) -> list[pb.GatewayQueryResponse]:  # type: ignore[no-untyped-def]
    class Peer:
        peer = ("mq", "member", members["mq"].body.tls_cert_sha256)

        def abort(self, code: grpc.StatusCode, details: str) -> None:
            raise AssertionError(f"stream aborted: {code} {details}")

    svc._peer = lambda context: context.peer  # type: ignore[method-assign]
    return list(svc.Screen(iter(queries), Peer()))


def test_a_screen_streams_each_receipt_with_the_proof_from_the_size_the_querier_holds(gateway) -> None:
    """The querier reads a stream's answers in order and keeps the largest
    checkpoint; every receipt must carry the consistency proof from exactly
    that size (checked here with RFC 6962 verification, independently of the
    gateway), so screening costs no extra round trip per subject."""
    from alliance import checkpoint, merkle

    svc, _, members = gateway
    held = svc.log.size()
    held_root = checkpoint.Checkpoint.parse(svc.log.signed_checkpoint(held)[1].split("\n\n")[0] + "\n").root_hash
    queries = []
    for _ in range(3):
        q = signed_query(members["mq"])
        q.known_tree_size = held  # made before any answer arrived: every hint is the same, stale size
        queries.append(q)
    asked_from: list[int] = []
    receipt = svc.log.receipt
    svc.log.receipt = lambda seq, known_size=0: (asked_from.append(known_size), receipt(seq, known_size))[1]
    responses = _screen(svc, members, queries)
    assert asked_from == [0, 0, 0]  # the stream restates each proof from the size held: none is made from the stale hint
    assert all(r.audit.present for r in responses), responses
    size, root = held, held_root
    for r in responses:
        cp = checkpoint.Checkpoint.parse(r.audit.checkpoint.split("\n\n")[0] + "\n")
        assert r.audit.consistency_from == size
        small, large = sorted([(size, root), (cp.size, cp.root_hash)])
        merkle.verify_consistency(small[0], large[0], list(r.audit.consistency_proof), small[1], large[1])
        if cp.size > size:
            size, root = cp.size, cp.root_hash


def test_a_streamed_receipt_at_the_held_size_carries_an_empty_proof_from_that_size_not_the_stale_hint() -> None:
    """Two subjects whose receipts share a tree size: the second came with the
    proof from the request's stale hint; the stream restates it from the size
    the querier holds, where there is nothing to prove (found by CI: a
    receipt at the held size kept consistency_from = the hint)."""
    from alliance_gateway.screen_rpcs import _StreamProofs

    class Log:
        def size(self) -> int:
            return 8

        def consistency_proof(self, first: int, second: int) -> list[bytes]:
            raise AssertionError(f"no proof is needed between equal sizes ({first}, {second})")

    proofs = _StreamProofs(Log())  # type: ignore[arg-type]
    proofs.start(5)
    proofs.size = 8  # an earlier subject's receipt at size 8 was streamed
    stale = pb.GatewayQueryResponse(audit=pb.AuditReceipt(present=True, tree_size=8, consistency_from=5,
                                                          consistency_proof=[b"\x01" * 32]))
    receipt = proofs.carry(stale).audit
    assert (receipt.consistency_from, list(receipt.consistency_proof)) == (8, [])


def test_a_screen_hint_beyond_the_log_is_ignored_not_fatal(gateway) -> None:
    svc, _, members = gateway
    q = signed_query(members["mq"])
    q.known_tree_size = 10**12
    (response,) = _screen(svc, members, [q])
    assert response.audit.present and response.audit.consistency_from == 0 and not response.audit.consistency_proof


def test_a_peer_keeps_at_most_two_screening_streams_open(gateway) -> None:
    """Each stream holds a server worker and up to 16 subjects in flight, queued
    ahead of other queriers in every member's dispatcher and in the log's
    commit queue: a third concurrent stream is refused before it reads a
    request, with its reason; a stream that ends frees its slot."""
    import queue

    from alliance_gateway.screen_rpcs import MAX_SCREEN_STREAMS

    svc, _, members = gateway
    assert MAX_SCREEN_STREAMS == 2

    def held_open():  # type: ignore[no-untyped-def]
        """A request stream that sends nothing until closed."""
        gate: queue.Queue = queue.Queue()
        return gate, iter(gate.get, None)

    svc._peer = lambda context: context.peer  # type: ignore[method-assign]
    streams = []
    for _ in range(2):
        gate, requests = held_open()
        stream = svc.Screen(requests, ScreenPeer(members, "mq"))
        threading.Thread(target=lambda s=stream: list(s), daemon=True).start()  # open, waiting for requests
        streams.append(gate)
    until = time.monotonic() + 10
    while svc.screen_streams._open.get("mq", 0) < 2:
        assert time.monotonic() < until
        time.sleep(0.01)
    third = ScreenPeer(members, "mq")
    with pytest.raises(Aborted) as refused:
        list(svc.Screen(iter([]), third))
    assert refused.value.args[0] == grpc.StatusCode.RESOURCE_EXHAUSTED and "too_many_screens" in refused.value.args[1]
    assert dict(third.trailing)["alliance-reason"] == "too_many_screens"
    assert list(svc.Screen(iter([]), ScreenPeer(members, "ma"))) == []  # another peer is not affected
    streams[0].put(None)  # one stream ends: its slot is free again
    while svc.screen_streams._open.get("mq", 0) > 1:
        assert time.monotonic() < until
        time.sleep(0.01)
    assert list(svc.Screen(iter([]), ScreenPeer(members, "mq"))) == []
    streams[1].put(None)
