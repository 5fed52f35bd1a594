"""SPEC §12: SQLite stays single-gateway, refused clearly otherwise; a
killed gateway leaves no stale lock behind. Real `gateway serve` processes."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from alliance_cli.localnet import HOST, free_port
from alliance_gateway import admin as admin_ops
from alliance_gateway.server import single_gateway_lock

pytestmark = pytest.mark.e2e


def _serve(gateway_home: Path, port: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "alliance_cli.main", "gateway", "serve", "--home", str(gateway_home),
                             "--listen", f"{HOST}:{port}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_serving(process: subprocess.Popen) -> None:
    assert process.stderr is not None
    deadline = time.monotonic() + 60
    for line in process.stderr:  # the CLI prints "gateway serving on port N" once it listens
        if "gateway serving on port" in line:
            return
        assert time.monotonic() < deadline
    raise AssertionError(f"the gateway exited with {process.wait()} before serving")


def test_a_second_gateway_on_one_sqlite_database_is_refused(tmp_path: Path) -> None:
    port = free_port()
    admin_ops.init_alliance(tmp_path / "admin", tmp_path / "gw", alliance_name="sqlite.test", listen=f"{HOST}:{port}",
                            gateway_endpoint=f"{HOST}:{port}", hosts=("localhost", HOST), local=True)
    first = _serve(tmp_path / "gw", port)
    try:
        _wait_serving(first)
        second = subprocess.run([sys.executable, "-m", "alliance_cli.main", "gateway", "serve", "--home", str(tmp_path / "gw"),
                                 "--listen", f"{HOST}:{free_port()}"], capture_output=True, text=True, timeout=60)
        assert second.returncode == 2, second.stderr
        assert "SQLite serves one gateway only" in second.stderr and "PostgreSQL" in second.stderr
        assert "Traceback" not in second.stderr
        first.kill()  # SIGKILL: no clean shutdown, yet the lock goes with the process
        first.wait()
        third = _serve(tmp_path / "gw", port)
        try:
            _wait_serving(third)
        finally:
            third.terminate()
            third.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()


def test_postgresql_and_in_memory_databases_take_no_file_lock(tmp_path: Path) -> None:
    assert single_gateway_lock("postgresql://u@127.0.0.1:1/db") is None
    assert single_gateway_lock("sqlite:///:memory:") is None
    held = single_gateway_lock(f"sqlite:///{tmp_path / 'g.db'}")
    assert held is not None and (tmp_path / "g.db.gateway-lock").exists()
    held.close()
