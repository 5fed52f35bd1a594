"""The gateway's log storage (SPEC §6) on SQLite and PostgreSQL: O(log n)
appends whose stored tree matches a full rebuild, and one gap-free sequence
when several gateway processes append to the same database at once."""
from __future__ import annotations

import multiprocessing
import time

from sqlalchemy import func, select

from alliance import audit_entry, db, merkle
from alliance_gateway import audit_log, schema

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


def _entry(tag: str):  # type: ignore[no-untyped-def]
    return lambda seq, when: {"v": 1, "kind": "quota_changed", "seq": seq, "time": when, "member_id": tag, "daily_quota": seq}


def _append_many(url: str, tag: str, n: int) -> None:
    engine = db.make_engine(url)
    schema.create_schema(engine)
    for _ in range(n):
        with engine.begin() as conn:
            audit_log.append(conn, _entry(tag), int(time.time() * 1000))
    engine.dispose()


def test_stored_tree_matches_a_full_rebuild(db_url) -> None:
    engine = db.make_engine(db_url)
    schema.create_schema(engine)
    for i in range(37):
        with engine.begin() as conn:
            audit_log.append(conn, _entry(f"m{i}"), 1_700_000_000_000 + i)
    reader = audit_log.LogReader(engine, origin="t/log", key_name="t/log", signing_key=Ed25519PrivateKey.generate())
    leaves = [merkle.leaf_hash(data) for _, data in reader.entries(0, 37)]
    for size in (1, 2, 3, 16, 17, 37):
        with engine.connect() as conn:
            assert merkle.root_at(size, audit_log._getter(conn)) == merkle.root_from_leaf_hashes(leaves[:size])
    root = merkle.root_from_leaf_hashes(leaves)
    for index in (0, 5, 36):
        merkle.verify_inclusion(leaves[index], index, 37, reader.inclusion_proof(index, 37), root)
    merkle.verify_consistency(10, 37, reader.consistency_proof(10, 37), merkle.root_from_leaf_hashes(leaves[:10]), root)
    engine.dispose()


def test_concurrent_gateway_processes_share_one_gap_free_sequence(db_url) -> None:
    engine = db.make_engine(db_url)
    schema.create_schema(engine)
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_append_many, args=(db_url, f"gw{i}", 40)) for i in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    with engine.connect() as conn:
        seqs = conn.execute(select(schema.log_entries.c.seq).order_by(schema.log_entries.c.seq)).scalars().all()
        size = conn.execute(select(schema.log_head.c.size)).scalar_one()
        nodes = conn.execute(select(func.count()).select_from(schema.log_nodes).where(schema.log_nodes.c.level == 0)).scalar_one()
        datas = [bytes(d) for d in conn.execute(select(schema.log_entries.c.data).order_by(schema.log_entries.c.seq)).scalars()]
        root = merkle.root_at(size, audit_log._getter(conn))
    assert seqs == list(range(120)) and size == 120 and nodes == 120
    assert [audit_entry.decode(d, index=i)["seq"] for i, d in enumerate(datas)] == list(range(120))
    assert root == merkle.root_from_leaf_hashes([merkle.leaf_hash(d) for d in datas])
    engine.dispose()


def test_the_gateway_commits_its_log_durably(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """No query is answered before its entry is on disk: on SQLite that needs
    synchronous=FULL (WAL's NORMAL may lose the last commits on power loss)."""
    from sqlalchemy import text

    from alliance_gateway import admin, server
    from alliance_gateway.home import GatewayHome

    admin.init_alliance(tmp_path / "admin", tmp_path / "gateway", alliance_name="durable.test", listen="127.0.0.1:0",
               gateway_endpoint="127.0.0.1:0", hosts=("127.0.0.1",))
    engine = server.open_database(GatewayHome(tmp_path / "gateway"))  # what build_server serves from
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA synchronous")).scalar() == 2  # FULL
    engine.dispose()
    with admin.Admin(tmp_path / "admin").engine.connect() as conn:  # the admin CLI's membership entries too
        assert conn.execute(text("PRAGMA synchronous")).scalar() == 2
    book = db.make_engine(db.sqlite_url(tmp_path / "m.db"))
    with book.connect() as conn:
        assert conn.execute(text("PRAGMA synchronous")).scalar() == 1  # NORMAL: a member's book can be re-imported
    book.dispose()


def test_a_hung_appender_delays_others_by_seconds_not_forever(pg_url) -> None:  # type: ignore[no-untyped-def]
    """SPEC §12 on PostgreSQL: a replica stopped inside an append holds the
    head row's lock; another replica's append gives up after the lock
    timeout, and the server ends the hung transaction so appends resume."""
    from sqlalchemy.exc import OperationalError

    from alliance import log_rules

    engine = db.make_engine(pg_url)
    schema.create_schema(engine)
    hung = engine.connect()
    tx = hung.begin()
    audit_log.append(hung, _entry("hung"), int(time.time() * 1000))  # holds the lock, then goes quiet
    other = db.make_engine(pg_url)
    started = time.monotonic()
    try:  # either the lock timeout fires, or the server ends the idle hung transaction first
        with other.begin() as conn:
            audit_log.append(conn, _entry("waits"), int(time.time() * 1000))
    except OperationalError:
        pass
    waited = time.monotonic() - started
    assert waited < log_rules.LOCK_TIMEOUT_MS / 1000 + 3
    time.sleep(1)
    with other.begin() as conn:
        audit_log.append(conn, _entry("after"), int(time.time() * 1000))
    with other.connect() as conn:
        tags = [audit_entry.decode(bytes(d))["member_id"] for d in conn.execute(select(schema.log_entries.c.data).order_by(schema.log_entries.c.seq)).scalars()]
    assert "hung" not in tags and tags[-1] == "after"  # the hung append was rolled back, never half-written
    try:
        tx.rollback()
    except Exception:  # noqa: BLE001 - its session was terminated
        pass
    hung.close()
    other.dispose()
    engine.dispose()
