"""SPEC v2 §1 properties 11 and 12 end to end, with real processes and the
real CLI: a 4.2 MB request from the auditor's certificate leaves a log that
still verifies; a frozen member cannot be subtracted out of a subject's
reports (the second report is refused `answer_set_changed`, and another
querier's report is over the same pinned members); a replayed request never
reaches the members."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from datetime import date

import grpc
import pytest
from sqlalchemy import select

from alliance import audit_entry, db, log_rules
from alliance.errors import Refused
from alliance.v1 import alliance_pb2 as pb
from alliance_gateway import schema
from alliance_gateway.home import GatewayHome
from alliance_member.gateway_client import GatewayClient
from alliance_member.home import MemberHome
from alliance_member.querier import Consent, Querier, Subject
from tests import independent
from tests.conftest import running_alliance

pytestmark = pytest.mark.e2e

MEMBERS = ["lender-a", "lender-b", "lender-c", "lender-d"]
AS_OF = date(2026, 6, 30)
CONSENT = Consent("CONSENT-1", hashlib.sha256(b"authorisation").digest())


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def alliance(request, tmp_path_factory):  # type: ignore[no-untyped-def]
    yield from running_alliance(request.param, tmp_path_factory, MEMBERS, AS_OF)


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "alliance_cli.main", *args], capture_output=True, text=True, timeout=120)


def _log(net) -> list[tuple[bytes, dict]]:  # type: ignore[no-untyped-def]
    engine = db.make_engine(GatewayHome(net.gateway_home).config().db_url)
    with engine.connect() as conn:
        rows = conn.execute(select(schema.log_entries.c.seq, schema.log_entries.c.data).order_by(schema.log_entries.c.seq)).all()
    engine.dispose()
    return [(bytes(r.data), audit_entry.decode(bytes(r.data), index=r.seq)) for r in rows]


def _query_cli(net, member: str, s, *extra: str) -> subprocess.CompletedProcess:  # type: ignore[no-untyped-def]
    return cli("member", "query", "--home", str(net.members[member].home), "--id-type", s.id_type, "--id", s.canonical_id,
               "--purpose", "LOAN_APPROVAL", "--consent-id", "C-7", "--consent-sha256", "ab" * 32, "--as-of", AS_OF.isoformat(),
               "--json", *extra)


def test_a_4_mb_body_from_the_auditor_leaves_a_verifiable_log(alliance) -> None:  # type: ignore[no-untyped-def]
    net, _ = alliance
    assert cli("audit", "checkpoint", "--home", str(net.auditor_home)).returncode == 0
    huge = pb.SignedQuery(body=os.urandom(4_200_000), signature=bytes(64), subject_token=bytes(32))
    with GatewayClient(MemberHome(net.auditor_home)) as client:
        with pytest.raises(Exception) as exc:
            client.query(huge)
    assert "malformed_request" in str(exc.value)
    data, entry = _log(net)[-1]
    assert entry["reason"] == "malformed_request" and entry["request_body"] is None
    assert entry["oversized"] == [{"field": "request_body", "length": 4_200_000, "sha256": hashlib.sha256(huge.body).hexdigest()}]
    assert len(data) <= log_rules.max_entry_bytes(0)
    out = cli("audit", "verify", "--home", str(net.auditor_home), "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    assert json.loads(out.stdout)["ok"] is True


def test_a_frozen_member_cannot_be_subtracted_out(alliance) -> None:  # type: ignore[no-untyped-def]
    net, dataset = alliance
    s = next(x for x in dataset.subjects if len(x.members) >= 3)  # held by several lenders: a real difference to hide
    first = _query_cli(net, "lender-a", s)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["members_answered"] == 3
    frozen = net.members["lender-d"].process
    os.kill(frozen.pid, signal.SIGSTOP)
    try:
        second = _query_cli(net, "lender-a", s)
        precheck = cli("member", "precheck", "--home", str(net.members["lender-c"].home), "--id-type", s.id_type, "--id",
                       s.canonical_id, "--purpose", "LOAN_APPROVAL", "--consent-id", "C-8", "--consent-sha256", "ab" * 32,
                       "--amount", "1000.00")
    finally:
        os.kill(frozen.pid, signal.SIGCONT)
    assert second.returncode == 5 and "answer_set_changed" in second.stderr, second.stderr
    assert precheck.returncode == 5, precheck.stderr  # a precheck on the pinned token needs the same members
    entries = [e for _, e in _log(net) if e["kind"] in ("query", "precheck")]
    refused = [e for e in entries if e.get("reason") == "answer_set_changed"]
    assert refused and refused[0]["answer_set"] == MEMBERS
    # another querier, lender-b: over exactly the pin less itself, figures as computed independently
    other = _query_cli(net, "lender-b", s)
    assert other.returncode == 0, other.stderr
    report = json.loads(other.stdout)
    latest = [e for _, e in _log(net) if e["kind"] == "query"][-1]
    assert latest["members_answered"] == ["lender-a", "lender-c", "lender-d"] and latest["answer_set"] == MEMBERS
    expected = independent.expected_report(dataset.root, ["lender-a", "lender-c", "lender-d"], s.id_type, s.canonical_id, AS_OF)
    assert {k: v for k, v in report["report"].items() if k not in ("inquiries_30d",)} == expected


def test_a_replayed_request_never_reaches_the_members(alliance) -> None:  # type: ignore[no-untyped-def]
    net, dataset = alliance
    s = dataset.subjects[2]
    q = Querier(net.members["lender-c"].home)
    try:
        signed, _ = q._signed(Subject(s.id_type, s.canonical_id), "LOAN_APPROVAL", CONSENT, AS_OF, pb.QUERY_MODE_REPORT)
        q.client.query(signed)
        with pytest.raises(Refused) as exc:
            q.client.query(signed)
    finally:
        q.close()
    assert exc.value.reason == "replayed_query_id"
    last = _log(net)[-1][1]
    assert last["reason"] == "replayed_query_id" and last["members_asked"] == []


def test_clients_fail_over_on_an_outage_but_never_retry_a_refusal(alliance) -> None:  # type: ignore[no-untyped-def]
    """SPEC §5.4, §12: several gateway endpoints; only UNAVAILABLE without
    `alliance-reason` moves to the next one, so a refusal is never replayed."""
    from alliance_cli.localnet import free_port

    net, dataset = alliance
    dead = f"127.0.0.1:{free_port()}"
    home = MemberHome(net.members["lender-b"].home)
    client = GatewayClient(home, target=f"{dead},{net.gateway_endpoint}")
    called: list[str] = []
    real = client._stub_for
    client._stub_for = lambda target: (called.append(target), real(target))[1]  # type: ignore[method-assign]
    q = Querier(home.path, client=client)
    try:
        s = dataset.subjects[4]
        signed, _ = q._signed(Subject(s.id_type, s.canonical_id), "LOAN_APPROVAL", CONSENT, AS_OF, pb.QUERY_MODE_REPORT)
        q.read_report(signed, client.query(signed))
        assert called[:2] == [dead, net.gateway_endpoint] and set(called[2:]) <= {net.gateway_endpoint}  # then sticks to it
        called.clear()
        with pytest.raises(Refused) as exc:  # the same request again: refused, and not tried elsewhere
            client.query(signed)
        assert exc.value.reason == "replayed_query_id" and called == [net.gateway_endpoint]
    finally:
        q.close()
    s = dataset.subjects[6]
    out = cli("--gateway", f"{dead},{net.gateway_endpoint}", "member", "query", "--home", str(home.path), "--id-type", s.id_type,
              "--id", s.canonical_id, "--purpose", "LOAN_APPROVAL", "--consent-id", "C-9", "--consent-sha256", "ab" * 32, "--json")
    assert out.returncode == 0, out.stderr
