"""Shared fixtures: database URLs for both supported backends.

`db_url` is parametrised over SQLite and PostgreSQL. PostgreSQL comes from
ALLIANCE_TEST_PG_URL (./dev test starts a throw-away server); without it the
PostgreSQL cases skip loudly, and under CI=true they fail instead."""
from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

PG_URL = os.environ.get("ALLIANCE_TEST_PG_URL")
IN_CI = os.environ.get("CI") == "true"


def _fresh_pg_database() -> Iterator[str]:
    if not PG_URL:
        if IN_CI:
            pytest.fail("ALLIANCE_TEST_PG_URL is not set under CI=true: PostgreSQL tests must run")
        pytest.skip("*** PostgreSQL not available (ALLIANCE_TEST_PG_URL unset): run ./dev test ***")
    name = "t_" + secrets.token_hex(6)
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    base = PG_URL.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'test.db'}"
    else:
        yield from _fresh_pg_database()


@pytest.fixture
def pg_url() -> Iterator[str]:
    yield from _fresh_pg_database()


def pg_databases(names: list[str]) -> tuple[dict[str, str], list[str]]:
    """Fresh PostgreSQL databases, one per name."""
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    urls, created = {}, []
    with admin.connect() as conn:
        for n in names:
            db = f"e2e_{n.replace('-', '_')}_{secrets.token_hex(4)}"
            conn.execute(text(f'CREATE DATABASE "{db}"'))
            created.append(db)
            urls[n] = f"{PG_URL.rsplit('/', 1)[0]}/{db}"
    admin.dispose()
    return urls, created


def drop_pg_databases(names: list[str]) -> None:
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        for db in names:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))
    admin.dispose()


def running_alliance(backend: str, tmp_path_factory: pytest.TempPathFactory, members: list[str], as_of):  # type: ignore[no-untyped-def]
    """A started LocalAlliance (separate processes, mutual TLS) with synthetic
    books imported, on SQLite or PostgreSQL; stopped afterwards."""
    from alliance import synthetic
    from alliance_cli.localnet import LocalAlliance
    from alliance_member import book, book_status
    from alliance_member.querier import today_shanghai

    root = tmp_path_factory.mktemp(f"alliance-{backend}")
    gateway_db, member_dbs, created = None, {}, []
    if backend == "postgres":
        if not PG_URL:
            if IN_CI:
                pytest.fail("PostgreSQL is required under CI=true")
            pytest.skip("*** PostgreSQL not available: run ./dev test ***")
        urls, created = pg_databases(["gateway", *members])
        gateway_db = urls.pop("gateway")
        member_dbs = urls
    # Exported today (SPEC §10): the books are fresh whatever the reports' as-of date.
    dataset = synthetic.write_alliance_dataset(root / "data", members, seed=42, as_of=as_of, book_date=today_shanghai())
    net = LocalAlliance(root, members, gateway_db_url=gateway_db, member_db_urls=member_dbs, deadline_ms=2000)
    net.start()
    try:
        for m in members:
            for kind in ("loans", "flags", "scores"):
                book.import_book(net.members[m].home, root / "data" / m / f"{kind}.csv", kind)
            sent = book_status.refresh(net.members[m].home)  # SPEC §10: as `alliance member import` does
            assert sent is not None and sent.sent, sent
        yield net, dataset
    finally:
        net.stop()
        if created:
            drop_pg_databases(created)


def import_fresh_loans(home: Path, work: Path) -> int:
    """SPEC §10: give a joined member a fresh book (a few synthetic loans
    updated today), imported and its signed status logged, as `alliance
    member import --kind loans` does; so tests about other refusals are not
    refused `stale_book` first."""
    from alliance import synthetic
    from alliance_member import book, book_status
    from alliance_member.home import MemberHome
    from alliance_member.querier import today_shanghai

    member_id = MemberHome(home).config().member_id
    synthetic.write_alliance_dataset(work, [member_id], seed=7, people=3, orgs=1, as_of=today_shanghai(),
                                     book_date=today_shanghai())
    book.import_book(home, work / member_id / "loans.csv", "loans")
    sent = book_status.refresh(home)
    assert sent is not None and sent.sent and sent.leaf_index is not None, sent
    return sent.leaf_index


def wait_views_cover(net, size: int, timeout_s: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    """Wait until every member's proven view of the log (its membership feed,
    SPEC §5.1) covers the first ``size`` entries, then until it is witnessed."""
    import time

    from sqlalchemy import select

    from alliance import db
    from alliance_member import feed as feed_mod
    from alliance_member.home import MemberHome

    engines = [db.make_engine(MemberHome(m.home).db_url(m.db_url)) for m in net.members.values()]
    deadline = time.monotonic() + timeout_s
    try:
        for engine in engines:
            while True:
                with engine.connect() as conn:
                    held = conn.execute(select(feed_mod.feed_state.c.size)).scalar()
                if held is not None and held >= size:
                    break
                assert time.monotonic() < deadline, "a member's view never caught up"
                time.sleep(0.2)
    finally:
        for engine in engines:
            engine.dispose()
    net.wait_witnessed(timeout_s)
