"""SPEC §12 metrics: an in-process gateway and three member services, each
with its own registry served over HTTP; scrape before and after real queries
(and a refusal, and an import) and check that every metric moved as it should."""
from __future__ import annotations

import urllib.request
from datetime import date, datetime, timedelta, timezone
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import insert

from alliance import db, metrics, paillier, pki, synthetic
from alliance.errors import Refused, UsageError
from alliance_gateway import audit_log, schema
from alliance_gateway.home import GatewayConfig
from alliance_gateway.metrics import GatewayMetrics
from alliance_gateway.registry import Registry
from alliance_gateway.service import GatewayService, QueryFailure
from alliance_member import importer, store
from alliance_member.metrics import MemberMetrics
from alliance_member.service import MemberService, PeerTrust
from tests.alliance_fixtures import MK, LocalCA, signed_query, log_book_status
from tests.test_gateway_service import FakeStub, process

Scrape = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(endpoint: metrics.MetricsEndpoint) -> Scrape:
    with urllib.request.urlopen(endpoint.url, timeout=5) as resp:
        text = resp.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(sample: Scrape, name: str, **labels: str) -> float:
    return sample.get((name, frozenset(labels.items())), 0.0)


class GatewayContext:
    """What MemberService.Answer reads of a gRPC context: the gateway's TLS
    certificate; abort raises as the member's refusal reaches the gateway."""

    def __init__(self, cert_pem: bytes) -> None:
        self.cert_pem = cert_pem

    def auth_context(self) -> dict[str, list[bytes]]:
        return {"x509_pem_cert": [self.cert_pem]}

    def abort(self, code: Any, details: str) -> None:
        raise Refused(details, reason=details.split(":", 1)[0])


@pytest.fixture(scope="module")
def ca() -> LocalCA:
    return LocalCA()


@pytest.fixture(scope="module")
def members(ca):  # type: ignore[no-untyped-def]
    return {mid: ca.enrol(mid) for mid in ("mq", "ma", "mb", "mc")}


@pytest.fixture
def alliance(members, ca, tmp_path):  # type: ignore[no-untyped-def]
    now = datetime.now(timezone.utc)
    gw_key = ec.generate_private_key(ec.SECP256R1())
    gw_cert = pki.issue_tls_certificate(ca.key, ca.cert, gw_key.public_key(), member_id="gateway", role="gateway",
                                        not_before=now - timedelta(minutes=5), not_after=now + timedelta(days=1))
    context = GatewayContext(gw_cert.public_bytes(serialization.Encoding.PEM))
    engine = db.make_engine(db.sqlite_url(tmp_path / "gateway.db"))
    schema.create_schema(engine)
    with engine.begin() as conn:
        audit_log.start_v2(conn, deadline_ms=800)
        for m in members.values():
            conn.execute(insert(schema.members).values(
                member_id=m.member_id, name=m.member_id, role="member", status="active", endpoint=m.member_id,
                credential=m.credential.SerializeToString(), credential_serial=m.body.serial,
                fingerprint=m.body.member_fingerprint, ed25519_public_key=m.body.ed25519_public_key,
                paillier_n=m.body.paillier_n, tls_cert_sha256=m.body.tls_cert_sha256, daily_quota=100, updated_at_ms=0))
    for m in members.values():
        log_book_status(engine, m)  # SPEC §10: fresh books, so they may query
    endpoints: list[metrics.MetricsEndpoint] = []
    services, member_metrics, engines, stubs = {}, {}, {}, {}
    for mid in ("ma", "mb", "mc"):
        mengine = db.make_engine(db.sqlite_url(tmp_path / f"{mid}.db"))
        store.create_schema(mengine)
        pools = paillier.MaskPools(target=2)
        mm = MemberMetrics().bind(engine=mengine, mask_pools=pools, feed_age=lambda: 12.5)
        # mc has no matching key yet: it refuses every query (no_matching_key), the gateway drops it
        services[mid] = MemberService(member_id=mid, engine=mengine, trust=PeerTrust(mengine, ca.cert),
                                      signing_key=members[mid].signing_key, matching_key=(lambda: None) if mid == "mc" else (lambda: MK),
                                      mask_pools=pools, metrics=mm)
        stubs[mid] = FakeStub(lambda req, s=services[mid]: s.Answer(req, context))
        member_metrics[mid], engines[mid] = mm, mengine
        endpoints.append(metrics.serve_metrics(mm.registry, "127.0.0.1:0"))
    cfg = GatewayConfig(listen="", db_url="", log_origin="test/log", log_key_name="test/log", k_min=2, deadline_ms=800,
                        registry_refresh_ms=0)
    gm = GatewayMetrics()
    svc = GatewayService(engine=engine, registry=Registry(engine, 0), config=cfg, member_stub=lambda ep: stubs[ep],
                         log_reader=audit_log.LogReader(engine, origin="test/log", key_name="test/log",
                                                        signing_key=Ed25519PrivateKey.generate()),
                         mask_pools=paillier.MaskPools(target=2), metrics=gm)
    gw_endpoint = metrics.serve_metrics(gm.registry, "127.0.0.1:0")
    yield {"svc": svc, "gw": gw_endpoint, "members": dict(zip(("ma", "mb", "mc"), endpoints)), "engines": engines}
    for ep in [gw_endpoint, *endpoints]:
        ep.close()
    engine.dispose()


def test_every_metric_moves_with_real_queries_a_refusal_and_an_import(alliance, members, tmp_path) -> None:
    svc, gw, mep = alliance["svc"], alliance["gw"], alliance["members"]
    gw0, ma0, mc0 = scrape(gw), scrape(mep["ma"]), scrape(mep["mc"])
    log0 = svc.log.size()
    assert value(gw0, "alliance_gateway_log_size") == log0

    n = 3
    queries = [signed_query(members["mq"]) for _ in range(n)]
    responses = [process(svc, members, q, "mq", "member", "query") for q in queries]
    # mc refuses (no matching key): dropped on the first query; later ones on the subject go to the pinned set
    assert [(r.members_asked, r.members_answered) for r in responses] == [(3, 2)] + [(2, 2)] * (n - 1)
    with pytest.raises(QueryFailure) as refused:
        process(svc, members, queries[0], "mq", "member", "query")  # the same query id again
    assert refused.value.reason == "replayed_query_id"

    gw1, ma1, mc1 = scrape(gw), scrape(mep["ma"]), scrape(mep["mc"])

    def moved(before: Scrape, after: Scrape, name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    # gateway: queries by kind and outcome, refusal reasons, latency, drops by normalised reason, log size
    assert moved(gw0, gw1, "alliance_gateway_queries_total", kind="query", outcome="accepted") == n
    assert moved(gw0, gw1, "alliance_gateway_queries_total", kind="query", outcome="refused") == 1
    assert moved(gw0, gw1, "alliance_gateway_queries_total", kind="precheck", outcome="accepted") == 0
    assert moved(gw0, gw1, "alliance_gateway_refusals_total", kind="query", reason="replayed_query_id") == 1
    assert moved(gw0, gw1, "alliance_gateway_query_seconds_count", kind="query", outcome="accepted") == n
    assert moved(gw0, gw1, "alliance_gateway_query_seconds_count", kind="query", outcome="refused") == 1
    assert moved(gw0, gw1, "alliance_gateway_query_seconds_sum", kind="query", outcome="accepted") > 0
    assert moved(gw0, gw1, "alliance_gateway_answers_dropped_total", member="mc", reason="refused") == 1
    assert moved(gw0, gw1, "alliance_gateway_answers_dropped_total", member="ma", reason="refused") == 0
    assert value(gw1, "alliance_gateway_log_size") == svc.log.size() == log0 + n + 1
    for gauge in ("mask_pools", "mask_pool_masks_available", "mask_pool_table_bytes", "mask_pool_misses"):
        assert ("alliance_gateway_" + gauge, frozenset()) in gw1
    # no query id and no free text ever becomes a label value
    label_values = {v for (_, labels) in gw1 for _, v in labels}
    assert not {r.query_id for r in responses} & label_values
    assert all(len(v) <= 64 and " " not in v for v in label_values)

    # members: answers by outcome and reason, answer time, mask-pool levels
    assert moved(ma0, ma1, "alliance_member_answers_total", outcome="answered", reason="none") == n
    assert moved(ma0, ma1, "alliance_member_answer_seconds_count", outcome="answered") == n
    assert moved(mc0, mc1, "alliance_member_answers_total", outcome="refused", reason="no_matching_key") == 1
    assert moved(mc0, mc1, "alliance_member_answer_seconds_count", outcome="refused") == 1
    assert moved(mc0, mc1, "alliance_member_answers_total", outcome="answered", reason="none") == 0
    assert value(ma1, "alliance_member_mask_pools") == 1  # mq's key, seen on the first query
    assert value(ma1, "alliance_member_feed_age_seconds") == 12.5

    # import rows at the member: equal to the rows imported
    assert value(ma1, "alliance_member_import_rows", kind="loans") == 0
    dataset_dir = tmp_path / "data"
    synthetic.write_alliance_dataset(dataset_dir, ["ma"], seed=7, people=12, orgs=2, as_of=date(2026, 6, 30))
    result = importer.import_file(alliance["engines"]["ma"], dataset_dir / "ma" / "loans.csv", "loans", MK)
    assert result.committed and result.rows_written > 0
    ma2 = scrape(mep["ma"])
    assert value(ma2, "alliance_member_import_rows", kind="loans") == result.rows_written
    assert value(ma2, "alliance_member_import_rows", kind="flags") == 0
    assert value(ma2, "alliance_member_import_runs", kind="loans") == 1
    assert value(ma2, "alliance_member_last_import_timestamp_seconds", kind="loans") > 0


def test_drop_reasons_are_normalised_and_bounded() -> None:
    assert metrics.drop_reason("deadline_exceeded") == "deadline_exceeded"
    assert metrics.drop_reason("unavailable: failed to connect to all addresses") == "unreachable"
    assert metrics.drop_reason("unreachable: boom") == "unreachable"
    assert metrics.drop_reason("permission_denied: not_sponsored: querier x") == "refused"
    assert metrics.drop_reason("malformed_answer: bad ciphertext") == "malformed_answer"
    assert metrics.drop_reason("something a member made up") == "error"
    assert metrics.bounded("Not A Reason!") == "other"
    assert metrics.member_label("lender-a") == "lender-a"
    assert metrics.member_label("x" * 200) == "unknown"


def test_metrics_listen_is_checked() -> None:
    assert metrics.parse_listen("127.0.0.1:9100") == ("127.0.0.1", 9100)
    assert metrics.parse_listen("[::1]:0") == ("::1", 0)
    for bad in ("9100", "host:", "host:70000", ":9100"):
        with pytest.raises(UsageError):
            metrics.parse_listen(bad)
