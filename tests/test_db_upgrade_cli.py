"""SPEC §12 through the real commands: `alliance member db upgrade` upgrades a
member database made by the previous release (SQLite under the home, or
PostgreSQL with --db) and keeps its rows; twice is a no-op; `member serve` and
`gateway serve` on an older database refuse with one line naming the command
to run (exit 2: an operator step is missing, as for every "run X first"); the
migration environments ship in the wheel and work from it."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from sqlalchemy import func, select

from alliance import db
from alliance_member import store
from tests import v1_schema

ROOT = Path(__file__).resolve().parent.parent


def cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "alliance_cli.main", *args], capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL, env=env, cwd=cwd)


@pytest.fixture
def v1(tmp_path: Path) -> Path:
    """The previous release's alliance homes (keys need 0600, git keeps no modes)."""
    root = tmp_path / "v1"
    shutil.copytree(v1_schema.FIXTURE, root)
    for name in ("admin/admin.json", "gateway/gateway.json"):
        path = root / name
        path.write_text(path.read_text().replace("/tmp/v1fix", str(root)))
    for path in root.rglob("*.key"):
        path.chmod(0o600)
    return root


def _loans(url: str) -> int:
    engine = db.make_engine(url)
    with engine.connect() as conn:
        n = conn.execute(select(func.count()).select_from(store.loans)).scalar_one()
    engine.dispose()
    return n


def test_member_db_upgrade_upgrades_a_v1_member_database_once(db_url, v1: Path) -> None:  # type: ignore[no-untyped-def]
    home = v1 / "members" / "lender-a"
    counts = v1_schema.make_v1_database(db_url, "member")  # SQLite: the v1 fixture file itself
    db_args = ["--db", db_url]
    out = cli("member", "db", "upgrade", "--home", str(home), *db_args)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "member database: upgraded from the previous release's schema to revision mb_0002_v2 (applied mb_0002_v2)\n"
    assert _loans(db_url) == counts["loans"] == 83  # the fixture's book (README: synthetic books of the v1 demo)
    again = cli("member", "db", "upgrade", "--home", str(home), *db_args)
    assert again.returncode == 0 and again.stdout == "member database: already up to date (revision mb_0002_v2)\n"


def test_servers_refuse_a_database_older_than_this_release(v1: Path) -> None:
    member_home = v1 / "members" / "lender-a"
    before = (member_home / "member.db").read_bytes()
    served = cli("member", "serve", "--home", str(member_home), "--listen", "127.0.0.1:0")
    assert served.returncode == 2 and served.stdout == ""
    assert served.stderr == (
        "alliance: error: the member database is at the previous release's schema, older than this release's (mb_0002_v2): "
        f"run `alliance member db upgrade --home {member_home}` first\n")
    assert (member_home / "member.db").read_bytes() == before  # refused before any change
    gateway = cli("gateway", "serve", "--home", str(v1 / "gateway"), "--listen", "127.0.0.1:0")
    assert gateway.returncode == 2 and len(gateway.stderr.splitlines()) == 1, gateway.stderr
    assert "the gateway database is at the previous release's schema" in gateway.stderr
    assert "run `alliance admin db upgrade --home <admin home>` first" in gateway.stderr
    listing = cli("admin", "member", "list", "--home", str(v1 / "admin"))
    assert listing.returncode == 2 and f"run `alliance admin db upgrade --home {v1 / 'admin'}` first" in listing.stderr


def test_admin_db_upgrade_twice_says_already_up_to_date(v1: Path) -> None:
    first = cli("admin", "db", "upgrade", "--home", str(v1 / "admin"))
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines()[0] == (
        "gateway database: upgraded from the previous release's schema to revision gw_0003_book_status "
        "(applied gw_0002_v2, gw_0003_book_status)")
    second = cli("admin", "db", "upgrade", "--home", str(v1 / "admin"))
    assert second.returncode == 0, second.stderr
    assert second.stdout.splitlines() == ["gateway database: already up to date (revision gw_0003_book_status)",
                                          "log: already v2, its v2_started entry is 9"]
    listing = cli("admin", "member", "list", "--home", str(v1 / "admin"), "--json")
    assert listing.returncode == 0, listing.stderr


@pytest.mark.slow
def test_the_wheel_ships_both_environments_and_they_work_from_it(tmp_path: Path, v1: Path) -> None:
    source, wheels = tmp_path / "source", tmp_path / "wheels"  # built from a copy: no build/ left in the checkout
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    package_dirs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    for folder in sorted(set(package_dirs.values())):  # every top-level package folder, as pyproject maps them
        shutil.copytree(ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                            "--disable-pip-version-check", "-w", str(wheels), str(source)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = wheels.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    assert {f"{p.replace('.', '/')}/__init__.py" for p in packages if not p.endswith("migrations")} - names == set()  # every package ships
    for package, revisions in (("alliance_gateway", ("gw_0001_v1", "gw_0002_v2", "gw_0003_book_status")), ("alliance_member", ("mb_0001_v1", "mb_0002_v2"))):
        assert {f"{package}/migrations/env.py", *(f"{package}/migrations/versions/{r}.py" for r in revisions)} <= names
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    env = {**os.environ, "PYTHONPATH": str(site)}  # ahead of the editable install of this checkout
    where = subprocess.run([sys.executable, "-c", "import alliance_member.store as s; print(s.SCHEMA.script_location)"],
                           capture_output=True, text=True, env=env, cwd=tmp_path)
    assert where.stdout.strip() == str(site / "alliance_member" / "migrations"), where.stderr
    out = cli("member", "db", "upgrade", "--home", str(v1 / "members" / "lender-b"), env=env, cwd=tmp_path)
    assert out.returncode == 0 and "upgraded from the previous release's schema to revision mb_0002_v2" in out.stdout, out.stderr
