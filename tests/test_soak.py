"""`alliance bench --soak` (SPEC §12), for a few seconds: the real command
line, two gateway replicas on PostgreSQL, one SIGKILLed and restarted; the
JSON document's shape and a pass verdict, checked against its own figures."""
from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest
from sqlalchemy import create_engine, text

from tests.conftest import IN_CI, PG_URL

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]


def _need_pg() -> str:
    if not PG_URL:
        if IN_CI:
            pytest.fail("PostgreSQL is required under CI=true")
        pytest.skip("*** PostgreSQL not available: run ./dev test ***")
    return PG_URL


def test_a_short_soak_passes_and_reports_every_figure() -> None:
    url = _need_pg()
    done = subprocess.run([sys.executable, "-m", "alliance_cli.main", "bench", "--soak", "6", "--members", "3", "--db", url,
                           "--json"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    r = json.loads(done.stdout)  # stdout is one JSON document; progress went to stderr
    assert r["pass"] is True and r["failures"] == []
    assert (r["seconds"], r["members"], r["replicas"]) == (6, 3, 2)
    q = r["queries"]
    assert q["offered"] == q["acknowledged"] + q["errors"] + q["interrupted_by_kill"] > 0
    assert q["errors"] == 0 and q["error_rate"] == 0
    assert q["failed_over"] >= max(1, q["interrupted_by_kill"])  # clients listing the killed replica first moved over
    assert r["offered_per_s"] == pytest.approx(0.8 * r["capacity"]["queries_per_s"], abs=0.01)
    log = r["log"]
    assert log["acknowledged"] == log["acknowledged_found"] == q["acknowledged"]
    assert log["gap_free"] is True and log["duplicate_seqs"] == 0 and log["query_ids_fanned_out_twice"] == []
    assert log["gateway_started"] == 3  # both replicas, and the killed one once more
    assert r["kill"]["signal"] == "SIGKILL" and r["kill"]["at_s"] < r["kill"]["serving_again_at_s"]
    assert r["kill"]["answered_while_down"] > 0
    names = sorted(p["process"] for p in r["rss"])
    assert names == ["gateway-1", "gateway-1", "gateway-2", "m00", "m01", "m02"]  # the restarted replica is a new process
    for p in r["rss"]:
        assert p["drift_mb"] == pytest.approx(p["last_mb"] - p["first_mb"], abs=0.11) and p["drift_mb"] < 50
    v = r["audit_verify"]
    assert v["exit_code"] == 0 and v["ok"] is True and v["entries"] >= log["entries"]
    assert sum(v["refusals"].values()) >= q["interrupted_by_kill"]
    # the soak's database was its own, and is gone
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            left = conn.execute(text("SELECT count(*) FROM pg_database WHERE datname LIKE 'soak_%'")).scalar_one()
    finally:
        engine.dispose()
    assert left == 0


def test_soak_usage_errors() -> None:
    cases = [(["bench", "--db", "postgresql://x@127.0.0.1:1/db"], "--db is for --soak only"),
             (["bench", "--soak", "5", "--members", "3,5"], "one member count"),
             (["bench", "--soak", "1"], "--soak")]
    for args, message in cases:
        done = subprocess.run([sys.executable, "-m", "alliance_cli.main", *args], capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and message in done.stderr, (args, done.stderr)
        assert "Traceback" not in done.stderr


def test_the_throw_away_server_starts_as_the_soak_needs_and_is_removed() -> None:
    """What `--soak` without --db uses: a server (as the postgres user under
    root, since initdb refuses root) with a fresh database, all gone after."""
    from alliance_cli import pg_throwaway

    try:
        pg_throwaway.find_pg_bin()
    except Exception:  # noqa: BLE001
        if IN_CI:
            raise
        pytest.skip("*** PostgreSQL server binaries not installed ***")
    with pg_throwaway.throwaway_server() as server:
        port = int(server.rsplit(":", 1)[1].split("/", 1)[0])
        with pg_throwaway.fresh_database(server) as url:
            engine = create_engine(url)
            try:
                with engine.begin() as conn:
                    conn.execute(text("CREATE TABLE t (x int)"))
                    conn.execute(text("INSERT INTO t VALUES (41), (1)"))
                    assert conn.execute(text("SELECT sum(x) FROM t")).scalar_one() == 42
                    assert conn.execute(text("SHOW max_connections")).scalar_one() == "300"
            finally:
                engine.dispose()
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0, "the server was stopped"
