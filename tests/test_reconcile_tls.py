"""SPEC §1 property 9 against a malicious operator, over real mutual TLS: the
operator holds the gateway's certificate and asks a member directly, with no
log entry. The member's `member reconcile` (and `member serve`'s background
Reconciler, which raises an `unlogged_answer` alert) names that answer, with
the gateway restarts around it; GetQueryProofs answers active members only."""
from __future__ import annotations

import grpc
import pytest

from alliance import transport
from alliance.v1 import alliance_pb2 as pb
from alliance.v1 import alliance_pb2_grpc as pb_grpc
from alliance_gateway.reconcile_rpcs import log_gateway_started
from alliance_member import alerts, reconcile
from alliance_member.home import MemberHome
from tests.test_roles_and_keys import HOST, Net, _call_answer


@pytest.fixture(scope="module")
def net(tmp_path_factory) -> Net:  # type: ignore[no-untyped-def]
    return Net(tmp_path_factory.mktemp("reconcile-tls"))


@pytest.fixture(scope="module")
def servers(net: Net):  # type: ignore[no-untyped-def]
    from alliance_gateway.server import build_server as build_gateway
    from alliance_member.server import build_server as build_member

    from alliance import db, pki
    from alliance_member import feed

    gateway, _, service = build_gateway(net.gateway, listen=net.gateway_endpoint)
    gateway.start()
    # lender-b confirmed lender-a's fingerprint out of band (as at `matching-key install`): its root, so it answers
    # lender-a (SPEC §5.1) -- and so an answer the operator obtains with lender-a's request is a real one.
    engine = db.make_engine(MemberHome(net.homes["lender-b"]).db_url())
    feed.add_root(engine, "lender-a", pki.parse_fingerprint(net.fingerprints["lender-a"]), "install")
    engine.dispose()
    member, port = build_member(net.homes["lender-b"], listen=f"{HOST}:0")
    member.start()
    yield service, f"{HOST}:{port}"
    member.stop(grace=None)
    gateway.stop(grace=None)


def test_an_answer_the_operator_obtained_directly_is_reported_and_alerted(net: Net, servers) -> None:  # type: ignore[no-untyped-def]
    service, member_b = servers
    before = log_gateway_started(service.engine, deadline_ms=2000, k_min=2)
    response = _call_answer(net, member_b, "gateway")  # the operator, off the record
    assert response.member_id == "lender-b"
    after = log_gateway_started(service.engine, deadline_ms=2000, k_min=2)

    home = net.homes["lender-b"]
    young = reconcile.reconcile_home(home)  # default: only answers older than a minute
    assert young.ok and young.checked == 0
    result = reconcile.reconcile_home(home, min_age_ms=0)
    assert not result.ok and result.checked == 1 and result.reconciled == 0
    miss = result.missing[0]
    near = miss["nearest_restart"]
    assert near["before"]["seq"] == before and near["after"]["seq"] == after
    assert MemberHome(home).checkpoint.exists()  # the checkpoint it verified against is kept

    from alliance import db
    engine = db.make_engine(MemberHome(home).db_url())
    try:
        reconciler = reconcile.Reconciler(home, engine, min_age_ms=0)
        reconciler.run_once()
        reconciler.run_once()  # one alert per answer, not one per run
        raised = alerts.list_alerts(engine, kinds=(reconcile.ALERT_KIND,))
        assert len(raised) == 1 and miss["query_id"] in raised[0].message
        assert raised[0].details["query_id"] == miss["query_id"]
    finally:
        engine.dispose()


@pytest.mark.parametrize("caller", ["auditor", "gateway"])
def test_get_query_proofs_is_for_members_only(net: Net, servers, caller: str) -> None:  # type: ignore[no-untyped-def]
    channel = transport.secure_channel(net.gateway_endpoint, *net.tls(caller))
    try:
        with pytest.raises(grpc.RpcError) as exc:
            pb_grpc.GatewayStub(channel).GetQueryProofs(pb.GetQueryProofsRequest(), timeout=10)
        assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED
    finally:
        channel.close()
