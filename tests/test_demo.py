"""`alliance demo` as outside scripts drive it (SPEC §7): --data with one
folder per member, --keep-running, --state-file written once everything
serves, and SIGTERM stopping every process it started."""
from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import pytest

from alliance import synthetic

pytestmark = pytest.mark.e2e


def _port_open(endpoint: str) -> bool:
    host, port = endpoint.rsplit(":", 1)
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, int(port))) == 0


def _reconciled(home: str, timeout_s: float = 45.0) -> tuple[dict, int]:
    """`alliance member reconcile --min-age-s 0 --json` until no answer waits
    for a witnessed checkpoint (one witness interval after the queries): the
    last run's document and the answers reconciled over all runs (reconciled
    answers leave the journal)."""
    deadline, reconciled = time.monotonic() + timeout_s, 0
    while True:
        out = subprocess.run([sys.executable, "-m", "alliance_cli.main", "member", "reconcile", "--home", home,
                              "--min-age-s", "0", "--json"], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr
        doc = json.loads(out.stdout)
        reconciled += doc["reconciled"]
        if not doc["not_witnessed"] or time.monotonic() > deadline:
            return doc, reconciled
        time.sleep(1)


def test_demo_with_data_state_file_and_sigterm(tmp_path: Path) -> None:
    data = tmp_path / "data"
    synthetic.write_alliance_dataset(data, ["alpha", "beta", "gamma"], seed=3, as_of=date(2026, 6, 30))
    (data / "gamma" / "scores.csv").unlink()  # each file is optional
    state_file = tmp_path / "state.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "alliance_cli.main", "demo", "--data", str(data), "--keep-running",
         "--state-file", str(state_file), "--home", str(tmp_path / "work")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not state_file.exists():
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline, "state file never written"
            time.sleep(0.2)
        state = json.loads(state_file.read_text())
        assert set(state) == {"gateway", "admin_home", "gateway_home", "auditor_home", "members"}
        assert set(state["members"]) == {"alpha", "beta", "gamma"}
        assert all(set(m) == {"home", "endpoint"} for m in state["members"].values())
        assert list(Path(state["gateway_home"]).glob("*.db")), "the gateway's SQLite database lives under gateway_home"
        endpoints = [state["gateway"], *(m["endpoint"] for m in state["members"].values())]
        assert all(_port_open(e) for e in endpoints)
        # the alliance is usable by an outside script through the CLI
        out = subprocess.run(
            [sys.executable, "-m", "alliance_cli.main", "member", "query", "--home", state["members"]["alpha"]["home"],
             "--id-type", "RESIDENT_ID", "--id", "11010519491231002X", "--purpose", "LOAN_APPROVAL",
             "--consent-id", "C", "--consent-sha256", "00" * 32, "--json"], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["members_asked"] == 2
        # SPEC §6.2 / issue 8: every answer a demo member gave is in the log (once witnessed)
        reconciled = 0
        for member_id, member in state["members"].items():
            doc, count = _reconciled(member["home"])
            assert doc["ok"] is True and doc["missing"] == [] and doc["not_witnessed"] == [], (member_id, doc)
            reconciled += count
        assert reconciled >= 2, "beta and gamma answered alpha's query at least"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    assert proc.returncode == 0
    time.sleep(0.5)
    assert not any(_port_open(e) for e in endpoints), "SIGTERM must stop every process the demo started"


def test_demo_shows_alerts_monitoring_disclosures_and_the_monthly_report(tmp_path: Path) -> None:
    """Issue 11: `alliance demo` (synthetic data) briefly shows an application
    alert, a monitoring run, each member's disclosure and the monthly report
    written to a file it names; the log still verifies; every process stops."""
    import re

    out = subprocess.run([sys.executable, "-m", "alliance_cli.main", "demo", "--home", str(tmp_path / "work")],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "Traceback" not in out.stderr and "internal error" not in out.stdout + out.stderr
    text = out.stdout
    assert re.search(r"^borrows at 2 other lenders: .* outstanding", text, re.M)  # the summary line, whole
    assert re.search(r"^subject RESIDENT_ID \d{6}\*{8}[\dX]{4}, as of \d{4}-\d\d-\d\d, purpose LOAN_APPROVAL$", text, re.M)
    assert "alert (`alliance member alerts`):" in text and "applied for a loan elsewhere" in text
    assert re.search(r"monitoring run \(`alliance member monitor`\): [1-9]\d* active borrower", text)
    for mid in ("lender-a", "lender-b", "lender-c"):
        assert re.search(rf"^{mid} discloses \d{{4}}-\d\d \(`alliance member disclose`\)", text, re.M), mid
    m = re.search(r"monthly report \(`alliance audit monthly-report`\): (.*); 3 signature\(s\) checked; written to (\S+)$",
                  text, re.M)
    assert m, text[-2000:]
    assert "of 0 active" not in m.group(1)
    report = Path(m.group(2))
    assert report.parent == tmp_path / "work" and report.name.startswith("monthly-report-")
    page = report.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and 'data-chart="outstanding_balance"' in page
    assert "audit verify: ok" in text and text.rstrip().endswith("demo finished; every process stopped")
