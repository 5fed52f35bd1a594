"""Database engines for every store: SQLite is the embedded default, any
SQLAlchemy URL (PostgreSQL via psycopg) is accepted."""
from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from alliance.errors import UsageError


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path.resolve()}"


def normalise_url(url: str) -> str:
    """Accept postgres:// and postgresql:// spellings; use the psycopg 3 driver."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://"):]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    return url


def make_engine(url: str, *, durable: bool = False) -> Engine:
    """``durable``: every commit survives power loss, not only a crash of the
    process (SQLite ``synchronous=FULL``; PostgreSQL always is). The gateway's
    audit log needs it: no query is answered before its entry is on disk."""
    url = normalise_url(url)
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise UsageError(f"--db: not a database URL: {url!r}") from exc
    try:
        if parsed.get_backend_name() == "sqlite":
            engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
            event.listen(engine, "connect", _sqlite_pragmas_durable if durable else _sqlite_pragmas)
            return engine
        return create_engine(url, pool_pre_ping=True, pool_size=8, max_overflow=8)
    except NoSuchModuleError:
        raise UsageError(f"--db: unsupported database kind {parsed.get_backend_name()!r} (use sqlite:/// or postgresql://)") from None


def _sqlite_pragmas(dbapi_conn, _record, synchronous: str = "NORMAL") -> None:  # type: ignore[no-untyped-def]
    # WAL lets the member node answer while an import runs; foreign keys on.
    # NORMAL in WAL mode loses no committed data on a process crash, only on
    # power loss: right for a member's book, which can be re-imported.
    cur = dbapi_conn.cursor()
    _wal(cur)
    cur.execute(f"PRAGMA synchronous={synchronous}")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _wal(cur: Any, wait_s: float = 30.0) -> None:
    """Switch a new database to WAL (it stays so: the mode is in the file).
    The switch needs the database to itself, and SQLite reports a process
    starting beside another (replicas, a CLI beside `member serve`) as
    locked at once, without its busy timeout: retry until ``wait_s``."""
    deadline = time.monotonic() + wait_s
    delay = 0.01
    while True:
        try:
            if str(cur.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
                cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            contended = "locked" in str(exc) or "busy" in str(exc)
            if not contended or time.monotonic() + delay > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.5)


def _sqlite_pragmas_durable(dbapi_conn, record) -> None:  # type: ignore[no-untyped-def]
    _sqlite_pragmas(dbapi_conn, record, synchronous="FULL")


def execute_rows(conn: Any, statement: Any, rows: list[dict[str, Any]]) -> None:
    """Insert ``rows`` with one statement; a single row goes as a plain
    execute, since SQLAlchemy's executemany path costs more per call (the
    member's answer path writes one row per table per answer)."""
    conn.execute(statement, rows[0] if len(rows) == 1 else rows)


def is_postgres(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql"


def insert_ignoring_conflicts(engine: Engine, table: Any) -> Any:
    """INSERT … ON CONFLICT DO NOTHING on either backend: for rows that
    another process (a `member serve` beside a CLI command on one database)
    may have written first with the same content."""
    if is_postgres(engine):
        from sqlalchemy.dialects.postgresql import insert as pg_insert
        return pg_insert(table).on_conflict_do_nothing()
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert
    return sqlite_insert(table).on_conflict_do_nothing()
