"""`alliance member alerts` (SPEC §9): newest last, --since a day in
Asia/Shanghai, --kind, --json (one object per line), --follow."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from alliance import db
from alliance_cli.main import cli
from alliance_member import alerts, store
from alliance_member.home import MemberConfig, MemberHome

# 2026-06-01 00:00:00 +08:00 = 2026-05-31 16:00:00 UTC = 1,780,243,200 s since the epoch
JUNE_1_SHANGHAI_MS = 1_780_243_200_000


@pytest.fixture
def home(tmp_path: Path) -> Path:
    h = tmp_path / "m"
    h.mkdir()
    MemberHome(h).write_config(MemberConfig("lender-x", "X ltd", "member", "127.0.0.1:1", "127.0.0.1:1", "127.0.0.1:2"))
    engine = db.make_engine(db.sqlite_url(h / "member.db"))
    store.create_schema(engine)
    alerts.raise_alert(engine, "applied_elsewhere", "first", {"masked_id": "110105********002X"}, now_ms=JUNE_1_SHANGHAI_MS - 1)
    alerts.raise_alert(engine, "monitor_balance_up", "second", {"rule": "balance_up"}, now_ms=JUNE_1_SHANGHAI_MS)
    alerts.raise_alert(engine, "applied_elsewhere", "third", {}, now_ms=JUNE_1_SHANGHAI_MS + 1000)
    engine.dispose()
    return h


def test_alerts_newest_last_and_since_a_day(home: Path) -> None:
    r = CliRunner().invoke(cli, ["member", "alerts", "--home", str(home)])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert [line.rsplit(": ", 1)[1] for line in lines] == ["first", "second", "third"]
    assert lines[0].startswith("2026-05-31 23:59:59+08:00  #1  applied_elsewhere")
    r = CliRunner().invoke(cli, ["member", "alerts", "--home", str(home), "--since", "2026-06-01", "--json"])
    docs = [json.loads(line) for line in r.output.splitlines()]
    assert [d["message"] for d in docs] == ["second", "third"]
    assert docs[0]["raised_at"] == "2026-06-01T00:00:00+08:00" and docs[0]["details"] == {"rule": "balance_up"}
    r = CliRunner().invoke(cli, ["member", "alerts", "--home", str(home), "--kind", "applied_elsewhere", "--json"])
    assert [json.loads(line)["message"] for line in r.output.splitlines()] == ["first", "third"]


def test_alerts_bad_since_is_a_usage_error(home: Path) -> None:
    r = CliRunner().invoke(cli, ["member", "alerts", "--home", str(home), "--since", "June"])
    assert r.exit_code == 2


def test_alerts_follow_prints_new_ones(home: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "alliance_cli.main", "member", "alerts", "--home", str(home),
                             "--follow", "--json", "--interval", "0.1", "--since", "2026-06-01"],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert json.loads(proc.stdout.readline())["message"] == "second"
        assert json.loads(proc.stdout.readline())["message"] == "third"
        engine = db.make_engine(db.sqlite_url(home / "member.db"))
        alerts.raise_alert(engine, "monitor_new_write_off", "fourth", {})
        engine.dispose()
        assert json.loads(proc.stdout.readline())["message"] == "fourth"
    finally:
        proc.terminate()
        proc.wait(10)
