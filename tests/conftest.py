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
