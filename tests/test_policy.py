"""The alliance policy (SPEC §9, §10): validated settings, and `alliance
admin policy set / show` logging each change as a policy_changed entry."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select

from alliance import audit_entry, db
from alliance.errors import UsageError
from alliance.policy import Policy
from alliance_gateway import schema


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "alliance_cli.main", *args], capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)


def test_settings_are_validated() -> None:
    p = Policy()
    assert (p.max_book_age_days, p.monitoring, p.monitoring_quota) == (7, False, 1000)
    assert p.with_setting("monitoring", "on").monitoring is True
    assert p.with_setting("max_book_age_days", "14").max_book_age_days == 14
    for key, value in (("monitoring", "maybe"), ("max_book_age_days", "0"), ("max_book_age_days", "-1"),
                       ("monitoring_quota", "1.5"), ("colour", "blue")):
        with pytest.raises(UsageError):
            p.with_setting(key, value)
    with pytest.raises(UsageError):
        Policy.from_json({"monitoring": True, "extra": 1})


def test_admin_policy_set_and_show_log_every_change(tmp_path: Path) -> None:
    admin = tmp_path / "admin"
    assert cli("admin", "init", "--local", "--home", str(admin), "--gateway-home", str(tmp_path / "gw")).returncode == 0
    shown = cli("admin", "policy", "show", "--home", str(admin), "--json")
    assert shown.returncode == 0 and json.loads(shown.stdout) == {"max_book_age_days": 7, "monitoring": False, "monitoring_quota": 1000}
    assert cli("admin", "policy", "set", "--home", str(admin), "monitoring", "on").returncode == 0
    assert cli("admin", "policy", "set", "--home", str(admin), "max_book_age_days", "14").returncode == 0
    bad = cli("admin", "policy", "set", "--home", str(admin), "max_book_age_days", "soon")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr
    shown = json.loads(cli("admin", "policy", "show", "--home", str(admin), "--json").stdout)
    assert shown == {"max_book_age_days": 14, "monitoring": True, "monitoring_quota": 1000}
    engine = db.make_engine(db.sqlite_url(tmp_path / "gw" / "gateway.db"))
    with engine.connect() as conn:
        entries = [audit_entry.decode(bytes(d)) for d in conn.execute(select(schema.log_entries.c.data).order_by(schema.log_entries.c.seq)).scalars()]
    engine.dispose()
    changes = [e for e in entries if e["kind"] == "policy_changed"]
    assert [c["changed"] for c in changes] == [{"monitoring": True}, {"max_book_age_days": 14}]
    assert changes[-1]["policy"] == shown and changes[-1]["v"] == 2
