"""SPEC §6.2 end to end, real processes and the real CLI: after several
queries and a precheck, `alliance member reconcile` exits 0 on every member;
an answer the operator obtains directly with the gateway's certificate makes
that member's reconcile exit 1, naming it and the gateway's start before it."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from datetime import date

import pytest

from alliance import transport
from alliance.v1 import alliance_pb2 as pb
from alliance.v1 import alliance_pb2_grpc as pb_grpc
from alliance_gateway.home import GatewayHome
from alliance_member.querier import Consent, Querier, Subject
from tests.conftest import running_alliance

pytestmark = pytest.mark.e2e

MEMBERS = ["lender-a", "lender-b", "lender-c"]
AS_OF = date(2026, 6, 30)
CONSENT = Consent("CONSENT-R", hashlib.sha256(b"authorisation").digest())


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def alliance(request, tmp_path_factory):  # type: ignore[no-untyped-def]
    yield from running_alliance(request.param, tmp_path_factory, MEMBERS, AS_OF)


def reconcile_cli(home, *extra: str) -> subprocess.CompletedProcess:  # type: ignore[no-untyped-def]
    return subprocess.run([sys.executable, "-m", "alliance_cli.main", "member", "reconcile", "--home", str(home), *extra],
                          capture_output=True, text=True, timeout=120)


def test_every_member_reconciles_after_queries_then_an_off_record_answer_is_named(alliance) -> None:  # type: ignore[no-untyped-def]
    net, dataset = alliance
    for querier_id, s in zip(["lender-a", "lender-b", "lender-a"], dataset.subjects[:3]):
        q = Querier(net.members[querier_id].home)
        try:
            q.query(Subject(s.id_type, s.canonical_id), purpose="LOAN_APPROVAL", consent=CONSENT, as_of=AS_OF)
        finally:
            q.close()
    s = dataset.subjects[5]
    q = Querier(net.members["lender-c"].home)
    try:
        q.precheck(Subject(s.id_type, s.canonical_id), amount_yuan="1000.00", purpose="LOAN_APPROVAL", consent=CONSENT, as_of=AS_OF)
    finally:
        q.close()

    young = reconcile_cli(net.members["lender-a"].home, "--json")  # default age: nothing a minute old yet
    assert young.returncode == 0, young.stderr
    assert json.loads(young.stdout)["checked"] == 0
    for m in MEMBERS:
        # An answer reconciles once a witnessed checkpoint covers its entry
        # (SPEC §6.1/§6.2): within a witness interval; until then it is pending.
        # Reconciled answers leave the journal, so the count adds up over the runs.
        deadline, reconciled = time.monotonic() + 45, 0
        while True:
            out = reconcile_cli(net.members[m].home, "--min-age-s", "0", "--json")
            assert out.returncode == 0, out.stdout + out.stderr
            doc = json.loads(out.stdout)
            assert doc["ok"] is True and doc["missing"] == [], doc
            reconciled += doc["reconciled"]
            if not doc["not_witnessed"] or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert doc["not_witnessed"] == [] and doc["checked"] == doc["reconciled"] and reconciled >= 2, (m, reconciled, doc)
    human = reconcile_cli(net.members["lender-a"].home, "--min-age-s", "0")
    assert human.returncode == 0 and "are in the audit log" in human.stdout

    # The operator asks lender-c directly, with the gateway's own certificate: no log entry.
    g = GatewayHome(net.gateway_home)
    qa = Querier(net.members["lender-a"].home)
    try:
        s = dataset.subjects[7]
        signed, _ = qa._signed(Subject(s.id_type, s.canonical_id), "LOAN_APPROVAL", CONSENT, AS_OF, pb.QUERY_MODE_REPORT)
        request = pb.MemberQueryRequest(query=signed, querier_credential=net.members["lender-a"].home.joinpath("credential.bin").read_bytes())
    finally:
        qa.close()
    channel = transport.secure_channel(net.members["lender-c"].endpoint, g.tls_key.read_bytes(), g.tls_cert.read_bytes(),
                                       g.ca_cert.read_bytes())
    try:
        pb_grpc.MemberNodeStub(channel).Answer(request, timeout=10)
    finally:
        channel.close()
    off_id = pb.QueryRequestBody.FromString(signed.body).query_id
    time.sleep(0.01)
    out = reconcile_cli(net.members["lender-c"].home, "--min-age-s", "0", "--json")
    assert out.returncode == 1, out.stdout + out.stderr
    doc = json.loads(out.stdout)
    assert doc["ok"] is False and [m["query_id"] for m in doc["missing"]] == [off_id]
    assert doc["missing"][0]["nearest_restart"]["before"] is not None  # `gateway serve` logged its start
    assert doc["missing"][0]["nearest_restart"]["after"] is None
    human = reconcile_cli(net.members["lender-c"].home, "--min-age-s", "0")
    assert human.returncode == 1 and off_id in human.stdout and "NOT in the audit log" in human.stdout
    assert reconcile_cli(net.members["lender-b"].home, "--min-age-s", "0").returncode == 0
