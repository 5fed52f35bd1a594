"""SPEC §9 end to end: member nodes as separate processes over mutual TLS.
A real LOAN_APPROVAL query raises `applied_elsewhere` at a member holding
an ACTIVE loan of the subject (after the answer: the query succeeds first),
monitoring queries do not; `alliance member monitor` keeps a baseline, then
finds nothing changed; without a policy it is refused (exit 4)."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import date

import pytest
from sqlalchemy import create_engine, select

from alliance import synthetic
from alliance_cli.localnet import LocalAlliance
from alliance_member import store
from alliance_member.querier import Consent, Querier
from tests.conftest import running_alliance

pytestmark = pytest.mark.e2e

MEMBERS = ["lender-a", "lender-b", "lender-c"]
AS_OF = date(2026, 6, 30)
CONSENT = Consent("PLM-1", hashlib.sha256(b"authorisation").digest())


@pytest.fixture(scope="module")
def alliance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalAlliance, synthetic.Dataset]]:
    yield from running_alliance("sqlite", tmp_path_factory, MEMBERS, AS_OF)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "alliance_cli.main", *args], capture_output=True, text=True, timeout=300)


def _alerts(net: LocalAlliance, member: str) -> list[dict]:
    r = _cli("member", "alerts", "--home", str(net.members[member].home), "--json")
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines()]


def _tokens(net: LocalAlliance, member: str, status: str) -> dict[bytes, str]:
    engine = create_engine(f"sqlite:///{net.members[member].home / 'member.db'}")
    with engine.connect() as conn:
        rows = conn.execute(select(store.loans.c.subject_token, store.loans.c.masked_id, store.loans.c.status)).all()
    engine.dispose()
    by: dict[bytes, set[str]] = {}
    masked: dict[bytes, str] = {}
    for r in rows:
        by.setdefault(bytes(r.subject_token), set()).add(r.status)
        masked[bytes(r.subject_token)] = r.masked_id
    return {t: masked[t] for t, s in by.items() if (status in s if status == "ACTIVE" else s == {status})}


def _wait_for(pred, timeout_s: float = 15.0) -> bool:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.2)
    return False


def test_application_alert_over_grpc_and_not_for_monitoring(alliance) -> None:  # type: ignore[no-untyped-def]
    net, _ = alliance
    active_at_b = _tokens(net, "lender-b", "ACTIVE")
    token, masked = sorted(active_at_b.items())[0]
    assert _cli("admin", "policy", "set", "--home", str(net.admin_home), "monitoring", "on").returncode == 0
    time.sleep(1.5)  # the gateway re-reads the policy within a second (SPEC §9: monitoring is off unless enabled)
    q = Querier(net.members["lender-a"].home)
    try:
        q.query_token(token, purpose="POST_LOAN_MONITORING", consent=CONSENT, as_of=AS_OF)
        q.query_token(token, purpose="CREDIT_LIMIT_REVIEW", consent=CONSENT, as_of=AS_OF)
        result, members = q.query_token(token, purpose="LOAN_APPROVAL", consent=CONSENT, as_of=AS_OF)
    finally:
        q.close()
    assert "lender-b" in members and result["report"]["active_loans"] >= 1
    assert _wait_for(lambda: any(a["kind"] == "applied_elsewhere" for a in _alerts(net, "lender-b")))
    time.sleep(1)
    got = [a for a in _alerts(net, "lender-b") if a["kind"] == "applied_elsewhere"]
    assert len(got) == 1  # the monitoring and limit-review queries raised nothing
    assert got[0]["details"]["masked_id"] == masked and got[0]["details"]["mode"] == "query"
    assert "lender-a" not in json.dumps(got[0])


def test_member_monitor_baseline_then_unchanged(alliance, tmp_path) -> None:  # type: ignore[no-untyped-def]
    net, _ = alliance
    home = str(net.members["lender-c"].home)
    own = _tokens(net, "lender-c", "ACTIVE")
    args = ("member", "monitor", "--home", home, "--consent-id", "PLM-1",
            "--consent-sha256", CONSENT.sha256.hex(), "--json")
    assert _cli("admin", "policy", "set", "--home", str(net.admin_home), "monitoring", "off").returncode == 0
    time.sleep(1.5)
    refused = _cli(*args)
    assert refused.returncode == 4 and "monitoring is off" in refused.stderr
    applied_before = [a for m in ("lender-a", "lender-b") for a in _alerts(net, m) if a["kind"] == "applied_elsewhere"]
    assert _cli("admin", "policy", "set", "--home", str(net.admin_home), "monitoring", "on").returncode == 0
    time.sleep(1.5)  # the gateways' policy refresh
    first = _cli(*args)
    assert first.returncode == 0, first.stderr
    run1 = json.loads(first.stdout)
    assert run1["summary"]["subjects"] == len(own) > 0
    assert run1["summary"]["baseline"] == len(own) and run1["summary"]["alerts"] == 0
    assert sorted(s["masked_id"] for s in run1["subjects"]) == sorted(own.values())
    second = _cli(*args)
    assert second.returncode == 0, second.stderr
    run2 = json.loads(second.stdout)
    assert run2["summary"]["unchanged"] == len(own) and run2["summary"]["alerts"] == 0
    assert not [a for a in _alerts(net, "lender-c") if a["kind"].startswith("monitor_")]
    # the other members were asked POST_LOAN_MONITORING queries only: no application alerts
    assert [a for m in ("lender-a", "lender-b") for a in _alerts(net, m) if a["kind"] == "applied_elsewhere"] == applied_before
