"""SPEC v2 §5.3 and §5.4 at the gateway, without a network: bounds before
anything is logged, replayed query ids never reach a member (also across two
replicas), quota slots reserved so concurrent queries cannot overrun a
quota, answering-set pins so no report can be subtracted from another, the
refusal rate limit, and the narrower freshness window."""
from __future__ import annotations

import hashlib
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from alliance import audit_entry, db, paillier, report
from alliance.errors import UsageError
from alliance.v1 import alliance_pb2 as pb
from alliance_gateway import audit_log, reservations, schema
from alliance_gateway.home import GatewayConfig
from alliance_gateway.rate_limit import RefusalLimiter
from alliance_gateway.registry import Registry
from alliance_gateway.service import GatewayService, QueryFailure
from alliance_member import store
from alliance_member.service import MemberService, PeerTrust
from tests.alliance_fixtures import MK, signed_query
from tests.test_gateway_service import FakeStub, _decrypt_report, _last_entry, ca, gateway, members, process  # noqa: F401

OTHER_SUBJECT = ("RESIDENT_ID", "11010519491231002X")


def _entries(svc) -> list[dict]:  # type: ignore[no-untyped-def]
    return [audit_entry.decode(data, index=seq) for seq, data in svc.log.entries(0, svc.log.size())]


def _raise_quotas(svc) -> None:  # type: ignore[no-untyped-def]
    with svc.engine.begin() as conn:
        conn.execute(schema.members.update().values(daily_quota=1000))


def _answering_querier(stubs, members, ca, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """mq also runs a member node, so other queriers' reports can ask it."""
    mengine = db.make_engine(db.sqlite_url(tmp_path / "mq.db"))
    store.create_schema(mengine)
    stubs["mq"] = FakeStub(MemberService(member_id="mq", engine=mengine, trust=PeerTrust(mengine, ca.cert),
                                         signing_key=members["mq"].signing_key, matching_key=lambda: MK,
                                         mask_pools=paillier.MaskPools(target=2)).answer)


def _count_calls(stubs) -> list[str]:  # type: ignore[no-untyped-def]
    calls: list[str] = []
    for mid, stub in stubs.items():
        stub.handler = (lambda h, m: lambda req: (calls.append(m), h(req))[1])(stub.handler, mid)
    return calls


# -- §5.4 bounds -------------------------------------------------------------

@pytest.mark.parametrize("role", ["member", "auditor"])
def test_a_4_mb_body_is_logged_as_its_length_and_hash_only(gateway, role) -> None:  # type: ignore[no-untyped-def]
    svc, stubs, members = gateway
    calls = _count_calls(stubs)
    q = signed_query(members["mq"])
    q.body = q.body + b"\x00" * (4_200_000 - len(q.body))
    with pytest.raises(QueryFailure) as exc:
        process(svc, members, q, "mq", role, "query")
    assert exc.value.reason == "malformed_request" and calls == []
    raw = svc.log.entry(svc.log.size() - 1)
    entry = audit_entry.decode(raw, index=svc.log.size() - 1)
    assert len(raw) < 16384
    assert entry["request_body"] is None and entry["v"] == 2
    assert entry["oversized"] == [{"field": "request_body", "length": 4_200_000, "sha256": hashlib.sha256(q.body).hexdigest()}]
    # ...and it can be served: GetEntries pages by bytes
    assert [seq for seq, _ in svc.log.entries(0, svc.log.size(), page_bytes=1)] == list(range(svc.log.size()))


def test_oversized_signature_and_token_are_hashed_too(gateway) -> None:  # type: ignore[no-untyped-def]
    svc, _, members = gateway
    q = signed_query(members["mq"])
    q.signature = q.signature * 1000
    q.subject_token = q.subject_token * 3
    with pytest.raises(QueryFailure):
        process(svc, members, q, "mq", "member", "query")
    entry = _last_entry(svc)
    assert entry["request_signature"] is None and entry["request_body"] == q.body.hex()
    assert [(o["field"], o["length"]) for o in entry["oversized"]] == [("request_signature", 64_000), ("subject_token", 96)]


# -- §5.4 replays ---------------------------------------------------------------

def test_a_replayed_query_id_never_reaches_a_member(gateway) -> None:  # type: ignore[no-untyped-def]
    svc, stubs, members = gateway
    q = signed_query(members["mq"])
    process(svc, members, q, "mq", "member", "query")
    calls = _count_calls(stubs)
    with pytest.raises(QueryFailure) as exc:
        process(svc, members, q, "mq", "member", "query")
    assert exc.value.reason == "replayed_query_id" and calls == []
    entry = _last_entry(svc)
    assert entry["reason"] == "replayed_query_id" and entry["members_asked"] == []


def test_a_query_id_sent_to_two_replicas_at_once_is_answered_once(gateway) -> None:  # type: ignore[no-untyped-def]
    svc, stubs, members = gateway
    replica = GatewayService(engine=svc.engine, registry=Registry(svc.engine, 0), config=svc.config, member_stub=svc.member_stub,
                             log_reader=svc.log, mask_pools=paillier.MaskPools(target=2))
    calls = _count_calls(stubs)
    q = signed_query(members["mq"])
    barrier = threading.Barrier(2)

    def send(service: GatewayService) -> str:
        barrier.wait()
        try:
            process(service, members, q, "mq", "member", "query")
            return "accepted"
        except QueryFailure as failure:
            return failure.reason

    with ThreadPoolExecutor(2) as pool:
        outcomes = sorted(pool.map(send, (svc, replica)))
    assert outcomes == ["accepted", "replayed_query_id"]
    assert sorted(calls) == ["ma", "mb", "mc"]  # one fan-out only


# -- §5.4 quota --------------------------------------------------------------------

def test_concurrent_queries_cannot_exceed_the_quota(gateway) -> None:  # type: ignore[no-untyped-def]
    svc, _, members = gateway  # mq's daily quota is 3
    queries = [signed_query(members["mq"]) for _ in range(8)]

    def send(q: pb.SignedQuery) -> str:
        try:
            process(svc, members, q, "mq", "member", "query")
            return "accepted"
        except QueryFailure as failure:
            return failure.reason

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(send, queries))
    assert outcomes.count("accepted") == 3 and outcomes.count("quota_exceeded") == 5
    fanned = [e for e in _entries(svc) if e["kind"] == "query" and e["members_asked"]]
    assert len(fanned) == 3


def test_a_query_that_reached_the_members_counts_whatever_its_outcome(gateway) -> None:  # type: ignore[no-untyped-def]
    svc, stubs, members = gateway
    for mid in ("ma", "mb"):
        stubs[mid] = FakeStub(None)  # too few answers, three times
    for _ in range(3):
        with pytest.raises(QueryFailure) as exc:
            process(svc, members, signed_query(members["mq"], subject=OTHER_SUBJECT), "mq", "member", "query")
        assert exc.value.reason == "too_few_answers"
    with pytest.raises(QueryFailure) as exc:
        process(svc, members, signed_query(members["mq"]), "mq", "member", "query")
    assert exc.value.reason == "quota_exceeded"
    assert _last_entry(svc)["members_asked"] == []


# -- §5.3 answering-set pins ----------------------------------------------------------

def test_a_slow_member_cannot_be_subtracted_out(gateway) -> None:  # type: ignore[no-untyped-def]
    svc, stubs, members = gateway
    _raise_quotas(svc)
    first = process(svc, members, signed_query(members["mq"]), "mq", "member", "query")
    assert _decrypt_report(members, first)[report.FIELD_INDEX["score_sum"]] == 2100
    assert _last_entry(svc)["answer_set"] == ["ma", "mb", "mc", "mq"]
    frozen = stubs["mc"]
    stubs["mc"] = FakeStub(None)
    with pytest.raises(QueryFailure) as exc:
        process(svc, members, signed_query(members["mq"]), "mq", "member", "query")
    assert exc.value.reason == "answer_set_changed" and exc.value.exit_code == 5
    assert "after" in str(exc.value)  # says when a new set becomes possible
    entry = _last_entry(svc)
    assert entry["answer_set"] == ["ma", "mb", "mc", "mq"] and entry["members_answered"] == ["ma", "mb"]
    # a precheck on the pinned token needs the same members
    with pytest.raises(QueryFailure) as exc:
        process(svc, members, signed_query(members["mq"], mode=pb.QUERY_MODE_PRECHECK), "mq", "member", "precheck")
    assert exc.value.reason in ("answer_set_changed", "incomplete_precheck")
    stubs["mc"] = frozen
    again = process(svc, members, signed_query(members["mq"]), "mq", "member", "query")
    assert sorted(r.member_id for r in again.answers) == ["ma", "mb", "mc"]


def test_another_querier_gets_the_pin_less_itself(gateway, ca, tmp_path) -> None:  # type: ignore[no-untyped-def]
    svc, stubs, members = gateway
    _raise_quotas(svc)
    _answering_querier(stubs, members, ca, tmp_path)
    process(svc, members, signed_query(members["mq"]), "mq", "member", "query")  # P = {ma, mb, mc, mq}
    resp = process(svc, members, signed_query(members["ma"]), "ma", "member", "query")
    assert sorted(resp.asked_member_ids) == ["mb", "mc", "mq"]
    assert _last_entry(svc)["answer_set"] == ["ma", "mb", "mc", "mq"]


def test_members_outside_the_pin_are_not_asked(gateway) -> None:  # type: ignore[no-untyped-def]
    svc, stubs, members = gateway
    _raise_quotas(svc)
    stubs["mc"] = FakeStub(None)
    process(svc, members, signed_query(members["mq"]), "mq", "member", "query")  # mc missed it: P = {ma, mb, mq}
    assert _last_entry(svc)["answer_set"] == ["ma", "mb", "mq"]
    calls = _count_calls(stubs)
    resp = process(svc, members, signed_query(members["mq"]), "mq", "member", "query")
    assert sorted(resp.asked_member_ids) == ["ma", "mb"] and "mc" not in calls


def test_a_suspended_pinned_member_makes_the_report_wait_not_shrink(gateway) -> None:  # type: ignore[no-untyped-def]
    svc, stubs, members = gateway
    _raise_quotas(svc)
    process(svc, members, signed_query(members["mq"]), "mq", "member", "query")
    with svc.engine.begin() as conn:
        conn.execute(schema.members.update().where(schema.members.c.member_id == "mb").values(status="suspended"))
    calls = _count_calls(stubs)
    with pytest.raises(QueryFailure) as exc:
        process(svc, members, signed_query(members["mq"]), "mq", "member", "query")
    assert exc.value.reason == "answer_set_changed" and calls == []
    assert _last_entry(svc)["members_asked"] == []  # not fanned out, so no quota slot


def test_the_pin_slides_and_ends_24_hours_after_the_latest_report(db_url) -> None:  # type: ignore[no-untyped-def]
    engine = db.make_engine(db_url)
    schema.create_schema(engine)
    token, hour = b"\x07" * 32, 3600 * 1000
    t0 = 1_800_000_000_000
    with engine.begin() as conn:
        pin, ok = reservations.settle_pin(conn, token, "mq", ["ma", "mb"], t0)
        assert ok and pin.members == ("ma", "mb", "mq") and pin.expires_at_ms == t0 + 24 * hour
        pin, ok = reservations.settle_pin(conn, token, "mq", ["ma", "mb"], t0 + 23 * hour)  # slides
        assert ok and pin.expires_at_ms == t0 + 47 * hour
        _, ok = reservations.settle_pin(conn, token, "mq", ["ma", "mb", "mc"], t0 + 46 * hour)
        assert not ok  # still pinned: a report over another set is refused
        _, ok = reservations.settle_pin(conn, token, "ma", ["mb", "mq"], t0 + 46 * hour)
        assert ok  # another querier: P less itself; slides to t0 + 70 h
        _, ok = reservations.settle_pin(conn, token, "mq", ["ma", "mb", "mc"], t0 + 70 * hour - 1)
        assert not ok
        pin, ok = reservations.settle_pin(conn, token, "mq", ["ma", "mb", "mc"], t0 + 70 * hour)
        assert ok and pin.members == ("ma", "mb", "mc", "mq")  # the pin ended; a new set is pinned
    engine.dispose()


def test_the_gateway_window_is_60_seconds(gateway) -> None:  # type: ignore[no-untyped-def]
    svc, stubs, members = gateway
    calls = _count_calls(stubs)
    with pytest.raises(QueryFailure) as exc:
        process(svc, members, signed_query(members["mq"], timestamp_ms=int(time.time() * 1000) - 90_000), "mq", "member", "query")
    assert exc.value.reason == "stale_timestamp" and calls == []
    process(svc, members, signed_query(members["mq"], timestamp_ms=int(time.time() * 1000) - 50_000), "mq", "member", "query")


# -- §5.4 refusal rate limit ----------------------------------------------------------

def test_refusals_beyond_the_limit_are_turned_away_unlogged_and_counted(gateway) -> None:  # type: ignore[no-untyped-def]
    svc, _, members = gateway
    _raise_quotas(svc)
    now = [1000.0]
    svc.limiter = RefusalLimiter(rate=20, burst=100, clock=lambda: now[0])
    svc._peer = lambda context: ("mq", "member", members["mq"].body.tls_cert_sha256)  # the TLS edge, as for mq's certificate
    bad = signed_query(members["mq"])
    bad.signature = bytes(64)
    context = _Context()
    refused = 0
    for _ in range(130):
        try:
            svc.Query(bad, context)
        except _Aborted:
            pass
        refused += 1
    assert [c for c, _ in context.aborts].count(grpc.StatusCode.PERMISSION_DENIED) == 100
    assert [c for c, _ in context.aborts].count(grpc.StatusCode.RESOURCE_EXHAUSTED) == 30
    logged = [e for e in _entries(svc) if e["kind"] == "query"]
    assert len(logged) == 100
    now[0] += 1.0  # 20 more refusals allowed a second later
    context.aborts.clear()
    for _ in range(25):
        try:
            svc.Query(bad, context)
        except _Aborted:
            pass
    assert [c for c, _ in context.aborts].count(grpc.StatusCode.PERMISSION_DENIED) == 20
    assert svc.flush_suppressed(force=True) == 1
    entry = _last_entry(svc)
    assert (entry["kind"], entry["peer_id"], entry["role"], entry["count"]) == ("refusals_suppressed", "mq", "member", 35)
    assert svc.flush_suppressed(force=True) == 0  # counted once


class _Aborted(Exception):
    pass


class _Context:
    """The slice of grpc.ServicerContext the gateway's edge uses."""

    def __init__(self) -> None:
        self.aborts: list[tuple[grpc.StatusCode, str]] = []

    def set_trailing_metadata(self, md) -> None:  # type: ignore[no-untyped-def]
        pass

    def abort(self, code, details):  # type: ignore[no-untyped-def]
        self.aborts.append((code, details))
        raise _Aborted(details)


# -- start-up rules --------------------------------------------------------------------

def test_the_gateway_refuses_k_min_below_2_and_a_v1_log(gateway, db_url) -> None:  # type: ignore[no-untyped-def]
    svc, _, _ = gateway
    cfg = GatewayConfig(**{**svc.config.__dict__, "k_min": 1})
    with pytest.raises(UsageError, match="at least 2"):
        GatewayService(engine=svc.engine, registry=svc.registry, config=cfg, member_stub=svc.member_stub,
                       log_reader=svc.log, mask_pools=svc.mask_pools)
    v1 = db.make_engine(db.sqlite_url(Path(tempfile.mkdtemp()) / "v1.db"))
    schema.create_schema(v1)
    with pytest.raises(UsageError, match="admin db upgrade"):
        GatewayService(engine=v1, registry=Registry(v1, 0), config=svc.config, member_stub=svc.member_stub,
                       log_reader=svc.log, mask_pools=svc.mask_pools)
    with v1.begin() as conn:
        assert audit_log.start_v2(conn, deadline_ms=800) == 0
        assert audit_log.start_v2(conn, deadline_ms=800) == 0  # idempotent
    GatewayService(engine=v1, registry=Registry(v1, 0), config=svc.config, member_stub=svc.member_stub,
                   log_reader=svc.log, mask_pools=svc.mask_pools)
    v1.dispose()


# -- §4 inquiries_30d counts applications only --------------------------------------

def test_inquiries_30d_counts_loan_approval_queries_and_prechecks_only(gateway, ca, tmp_path) -> None:  # type: ignore[no-untyped-def]
    svc, stubs, members = gateway
    _raise_quotas(svc)
    _answering_querier(stubs, members, ca, tmp_path)

    from alliance.policy import Policy
    from alliance_gateway import policy_store
    with svc.engine.begin() as conn:  # monitoring queries need the policy (SPEC §9)
        policy_store.store(conn, Policy(monitoring=True), {"monitoring": True})
    svc.policy._loaded_at = float("-inf")

    def inquiries(querier: str, purpose: str = "LOAN_APPROVAL", mode: int = pb.QUERY_MODE_REPORT) -> int:
        kind = "precheck" if mode == pb.QUERY_MODE_PRECHECK else "query"
        return process(svc, members, signed_query(members[querier], purpose=purpose, mode=mode), querier, "member", kind).inquiries_30d

    assert inquiries("mq", "POST_LOAN_MONITORING") == 0
    assert inquiries("mq", "CREDIT_LIMIT_REVIEW") == 0
    assert inquiries("ma") == 0  # mq's monitoring and limit review are not applications
    assert inquiries("mb") == 1  # ma applied
    assert inquiries("mc", mode=pb.QUERY_MODE_PRECHECK) == 2  # ma, mb
    assert inquiries("mq") == 3  # ma, mb and mc's precheck; not mq's own
    assert inquiries("ma", "POST_LOAN_MONITORING") == 3  # mb, mc, mq: the figure is shown whatever the purpose


def test_a_request_with_an_unknown_purpose_is_refused_and_logged(gateway) -> None:  # type: ignore[no-untyped-def]
    from alliance import signing
    svc, stubs, members = gateway
    calls = _count_calls(stubs)
    q = signed_query(members["mq"])
    body = pb.QueryRequestBody.FromString(q.body)
    body.purpose = 9  # no such purpose
    q.body = body.SerializeToString(deterministic=True)
    q.signature = signing.sign(members["mq"].signing_key, signing.QUERY_REQUEST, q.body)
    with pytest.raises(QueryFailure) as exc:
        process(svc, members, q, "mq", "member", "query")
    assert exc.value.reason == "unknown_purpose" and exc.value.exit_code == 4 and calls == []
    assert _last_entry(svc)["reason"] == "unknown_purpose"


# -- §9 monitoring policy ---------------------------------------------------------------

def test_monitoring_queries_need_the_policy_and_have_their_own_quota(gateway) -> None:  # type: ignore[no-untyped-def]
    from alliance.policy import Policy
    from alliance_gateway import policy_store

    svc, stubs, members = gateway  # mq's daily quota is 3
    calls = _count_calls(stubs)
    with pytest.raises(QueryFailure) as exc:
        process(svc, members, signed_query(members["mq"], purpose="POST_LOAN_MONITORING"), "mq", "member", "query")
    assert exc.value.reason == "monitoring_disabled" and exc.value.exit_code == 4 and calls == []
    with svc.engine.begin() as conn:
        policy_store.store(conn, Policy(monitoring=True, monitoring_quota=2), {"monitoring": True, "monitoring_quota": 2})
    svc.policy._loaded_at = float("-inf")  # as after the refresh period
    entry = _last_entry(svc)
    assert entry["kind"] == "policy_changed" and entry["policy"]["monitoring"] is True and entry["membership_seq"] >= 0
    for _ in range(2):
        process(svc, members, signed_query(members["mq"], purpose="POST_LOAN_MONITORING"), "mq", "member", "query")
    with pytest.raises(QueryFailure) as exc:
        process(svc, members, signed_query(members["mq"], purpose="POST_LOAN_MONITORING"), "mq", "member", "query")
    assert exc.value.reason == "quota_exceeded" and "monitoring" in str(exc.value)
    for _ in range(3):  # the daily quota is untouched by monitoring
        process(svc, members, signed_query(members["mq"]), "mq", "member", "query")


def test_a_precheck_on_a_pinned_token_asks_the_pin_less_its_querier(gateway, ca, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """SPEC §5.3: a precheck on a pinned token asks the same members as a
    report would (P less the querier), never a member outside the pin, also
    for a second querier."""
    svc, stubs, members = gateway
    _raise_quotas(svc)
    _answering_querier(stubs, members, ca, tmp_path)
    late = stubs["mc"]
    stubs["mc"] = FakeStub(None)
    process(svc, members, signed_query(members["mq"]), "mq", "member", "query")  # mc missed it: P = {ma, mb, mq}
    assert _last_entry(svc)["answer_set"] == ["ma", "mb", "mq"]
    stubs["mc"] = late  # mc answers again, but is outside the pin
    calls = _count_calls(stubs)
    resp = process(svc, members, signed_query(members["ma"], mode=pb.QUERY_MODE_PRECHECK), "ma", "member", "precheck")
    assert sorted(resp.asked_member_ids) == ["mb", "mq"] and sorted(calls) == ["mb", "mq"]
    entry = _last_entry(svc)
    assert entry["kind"] == "precheck" and entry["outcome"] == "accepted" and entry["answer_set"] == ["ma", "mb", "mq"]
    calls.clear()
    resp = process(svc, members, signed_query(members["mq"], mode=pb.QUERY_MODE_PRECHECK), "mq", "member", "precheck")
    assert sorted(resp.asked_member_ids) == ["ma", "mb"] and sorted(calls) == ["ma", "mb"]


def test_docs_list_every_refusal_reason_with_its_status_and_exit_code() -> None:
    """docs/audit-log.md's table of refusal reasons is the gateway's list,
    with the same gRPC status and SPEC §7 exit status."""
    import re

    from alliance.audit_verify.reasons import KNOWN_REASONS
    from alliance_gateway.refusals import REFUSALS

    text = (Path(__file__).resolve().parent.parent / "docs" / "audit-log.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| `([a-z_]+)` \| ([A-Z_]+) \| (\d) \| (.+) \|$", text, re.M)
    documented = {reason: (status, int(code)) for reason, status, code, _ in rows}
    assert documented == {reason: (status.name, code) for reason, (status, code) in REFUSALS.items()}
    assert set(documented) == KNOWN_REASONS


@pytest.mark.postgres
def test_a_days_first_slot_committed_between_update_and_read_is_not_a_used_up_quota(pg_url) -> None:  # type: ignore[no-untyped-def]
    """Two replicas take a member's first slots of the day at once: the
    other's INSERT commits after this UPDATE found no row but before this
    transaction reads the row (READ COMMITTED sees it). One slot of 5 is
    used, so this query gets slot 2, not `quota_exceeded` (seen in the
    replica e2e test as 'daily quota of 100000 queries used up')."""
    from sqlalchemy import event, insert

    engine, other = db.make_engine(pg_url), db.make_engine(pg_url)
    schema.create_schema(engine)
    day = 20_000 * 86_400_000
    raced: list[str] = []

    @event.listens_for(engine, "after_cursor_execute")
    def _another_replica_commits_the_first_slot(conn, cursor, statement, *_):  # type: ignore[no-untyped-def]
        if not raced and statement.lstrip().upper().startswith("UPDATE QUOTA_USAGE"):
            raced.append(statement)
            with other.begin() as c2:
                c2.execute(insert(schema.quota_usage).values(member_id="mq", pool="daily", day_start_ms=day, used=1))

    try:
        assert reservations.reserve_quota_slot(engine, "mq", day, 5) == 2
        assert raced, "the race was staged"
        assert reservations.quota_used(engine, "mq", day) == 2
        assert reservations.reserve_quota_slot(engine, "mq", day + 86_400_000, 0) is None  # a zero quota stays refused
    finally:
        engine.dispose()
        other.dispose()
