"""SPEC §6.4: a v1 alliance (database, log, homes made by the previous
release, tests/fixtures/v1_alliance) upgrades with `alliance admin db
upgrade`, keeps working with v2 processes, and its log still verifies: v1
entries by v1 rules, everything after `v2_started` by v2 rules."""
from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select

from alliance import audit_entry, checkpoint, db
from alliance_gateway import schema
from alliance_gateway.home import GatewayHome

FIXTURE = Path(__file__).parent / "fixtures" / "v1_alliance"
MADE_AT = "/tmp/v1fix"
PRIVATE = ("ca.key", "gateway.key", "log-signing.key", "tls.key", "ed25519.key", "x25519.key", "paillier.key", "matching-key.json")


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "alliance_cli.main", *args], capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)


@pytest.fixture
def v1(tmp_path: Path) -> Path:
    root = tmp_path / "v1"
    shutil.copytree(FIXTURE, root)
    for name in ("admin/admin.json", "gateway/gateway.json"):
        path = root / name
        path.write_text(path.read_text().replace(MADE_AT, str(root)))
    for path in root.rglob("*"):
        if path.name in PRIVATE:
            path.chmod(stat.S_IRUSR | stat.S_IWUSR)  # git keeps no modes
    return root


def _entries(root: Path) -> list[dict]:
    engine = db.make_engine(GatewayHome(root / "gateway").config().db_url)
    with engine.connect() as conn:
        rows = conn.execute(select(schema.log_entries.c.seq, schema.log_entries.c.data).order_by(schema.log_entries.c.seq)).all()
    engine.dispose()
    return [audit_entry.decode(bytes(r.data), index=r.seq) for r in rows]


def test_a_v1_log_upgrades_and_still_verifies(v1: Path) -> None:
    before = _entries(v1)
    assert before and {e["v"] for e in before} == {1}  # made by the previous release
    out = cli("admin", "db", "upgrade", "--home", str(v1 / "admin"))
    assert out.returncode == 0, out.stderr
    assert "v2_started logged as entry 9" in out.stdout and "reissued" in out.stdout
    assert "gateway database: upgraded from the previous release's schema" in out.stdout  # SPEC §12, before the log step
    again = cli("admin", "db", "upgrade", "--home", str(v1 / "admin"))
    assert again.returncode == 0 and "already v2" in again.stdout and "already up to date" in again.stdout
    for m in ("lender-a", "lender-b", "lender-c"):  # SPEC §12: v2 member nodes refuse a v1 database until upgraded
        member_db = cli("member", "db", "upgrade", "--home", str(v1 / "members" / m))
        assert member_db.returncode == 0 and "upgraded from the previous release's schema" in member_db.stdout, member_db.stderr
    after = _entries(v1)
    assert after[: len(before)] == before  # nothing rewritten
    assert after[len(before)]["kind"] == "v2_started" and after[len(before)]["v"] == 2
    assert after[len(before)]["membership_seq"] == sum(e["kind"] == "credential_issued" for e in before)
    # a v2 gateway serves the upgraded log; the auditor verifies it, v1 and v2 parts
    from alliance_cli.localnet import free_port

    port = free_port()
    cfg_path = v1 / "gateway" / "gateway.json"
    cfg = json.loads(cfg_path.read_text())
    cfg_path.write_text(json.dumps({**cfg, "witness_interval_s": 1.0}))  # witness checkpoints every second for the test
    gateway = subprocess.Popen([sys.executable, "-m", "alliance_cli.main", "gateway", "serve", "--home", str(v1 / "gateway"),
                                "--listen", f"127.0.0.1:{port}"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    # v2 member nodes on the v1 homes: they witness (cosign) the upgraded log, which auditors then require (SPEC §6.1)
    env = {**os.environ, "ALLIANCE_GATEWAY": f"127.0.0.1:{port}", "ALLIANCE_WITNESS_POLL_S": "0.5"}
    logs = {m: (v1 / f"{m}.log").open("w") for m in ("lender-a", "lender-b", "lender-c")}
    members = [subprocess.Popen([sys.executable, "-m", "alliance_cli.main", "-v", "member", "serve", "--home", str(v1 / "members" / m),
                                 "--listen", f"127.0.0.1:{free_port()}"], stdout=logs[m], stderr=subprocess.STDOUT, env=env)
               for m in logs]
    try:
        env_gateway = f"127.0.0.1:{port}"
        import time
        deadline = time.monotonic() + 120
        while True:  # the gateway starting (exit 5), then the witnesses' first cosignatures (insufficient_witnesses)
            verify = cli("--gateway", env_gateway, "audit", "verify", "--home", str(v1 / "auditor"), "--json", "--witness-wait", "30")
            if verify.returncode == 0 or time.monotonic() > deadline or not (
                    verify.returncode == 5 or "insufficient_witnesses" in verify.stdout):
                break
            time.sleep(1)
        member_logs = "".join(f"\n--- {m}\n" + (v1 / f"{m}.log").read_text()[-2000:] for m in logs)
        assert verify.returncode == 0, verify.stdout + verify.stderr + member_logs
        result = json.loads(verify.stdout)
        assert result["ok"] is True and result["tree_size"] >= len(before) + 2  # v2_started, gateway_started
        cosigned = {m for m, w in result["witnesses"].items() if w.get("newest_cosigned_size")}
        assert len(cosigned) >= 2, result["witnesses"]  # a quorum of the three members witnessed the upgraded log
    finally:
        for process in (*members, gateway):
            process.terminate()
        for process in (*members, gateway):
            process.wait(10)
        for log_file in logs.values():
            log_file.close()
    kinds = [e["kind"] for e in _entries(v1)]
    assert "gateway_started" in kinds[len(before):]
