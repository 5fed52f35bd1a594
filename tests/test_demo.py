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
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    assert proc.returncode == 0
    time.sleep(0.5)
    assert not any(_port_open(e) for e in endpoints), "SIGTERM must stop every process the demo started"
