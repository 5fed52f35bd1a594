"""A throw-away PostgreSQL server for `alliance bench --soak`, started the way
tools/with_postgres.sh starts the test server: Debian's binaries, a fresh
data directory, loopback only, removed afterwards. initdb refuses to run as
root, so under root the server runs as the `postgres` user. Also fresh
databases on any server (the soak's gateway database, dropped afterwards)."""
from __future__ import annotations

import glob
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.exc import SQLAlchemyError

from alliance import db
from alliance.errors import Unreachable, UsageError
from alliance_cli.localnet import free_port

PG_BIN_GLOB = "/usr/lib/postgresql/*/bin"


def find_pg_bin() -> Path:
    for candidate in sorted(glob.glob(PG_BIN_GLOB), reverse=True):
        if os.access(Path(candidate) / "initdb", os.X_OK):
            return Path(candidate)
    raise UsageError(f"no PostgreSQL server binaries under {PG_BIN_GLOB} (install Debian's postgresql package, "
                     "or give --db with a PostgreSQL server URL)")


def _as_server_user() -> list[str]:
    if os.geteuid() != 0:
        return []
    try:
        subprocess.run(["id", "postgres"], check=True, capture_output=True)
    except subprocess.CalledProcessError:
        raise UsageError("running as root, and there is no `postgres` user to run the throw-away PostgreSQL server as "
                         "(initdb refuses root): create it, or give --db with a PostgreSQL server URL") from None
    return ["runuser", "-u", "postgres", "--"]


@contextmanager
def throwaway_server(*, max_connections: int = 300) -> Iterator[str]:
    """Start a PostgreSQL server on a free loopback port; yields its URL
    (database `postgres`); stopped (immediate) and deleted on exit. fsync is
    off: a throw-away server, and a gateway killed with SIGKILL never depends
    on the server's own flush (the server keeps running)."""
    pg_bin = find_pg_bin()
    runner = _as_server_user()
    data = Path(tempfile.mkdtemp(prefix="alliance-soak-pg-"))
    port = free_port()
    try:
        if runner:
            shutil.chown(data, user="postgres")
        _run([*runner, str(pg_bin / "initdb"), "-D", str(data / "db"), "-U", "postgres", "-A", "trust", "-E", "UTF8",
              "--no-sync"], "initdb")
        options = (f"-p {port} -k {data} -c listen_addresses=127.0.0.1 -c fsync=off "
                   f"-c max_connections={max_connections}")
        _run([*runner, str(pg_bin / "pg_ctl"), "-D", str(data / "db"), "-l", str(data / "log"), "-w", "-o", options,
              "start"], "pg_ctl start")
        try:
            yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
        finally:
            subprocess.run([*runner, str(pg_bin / "pg_ctl"), "-D", str(data / "db"), "-m", "immediate", "stop"],
                           capture_output=True)
    finally:
        shutil.rmtree(data, ignore_errors=True)


def _run(args: list[str], what: str) -> None:
    done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise Unreachable(f"the throw-away PostgreSQL server did not start ({what}: {detail[0]})")


@contextmanager
def fresh_database(server_url: str, prefix: str = "soak") -> Iterator[str]:
    """A new, empty database on ``server_url``'s server (the user needs
    CREATEDB); yields its URL; dropped on exit."""
    url = db.normalise_url(server_url)
    if not url.startswith("postgresql"):
        raise UsageError(f"--db must be a PostgreSQL URL (gateway replicas share one PostgreSQL database), not {server_url!r}")
    name = f"{prefix}_{secrets.token_hex(4)}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except SQLAlchemyError as exc:
        admin.dispose()
        raise Unreachable(f"--db: could not create a database for the soak on that server: {str(exc).splitlines()[0]}") from None
    try:
        yield f"{url.rsplit('/', 1)[0]}/{name}"
    finally:
        try:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        finally:
            admin.dispose()
