"""SPEC §12: Alembic manages the gateway and member schemas, on SQLite and
PostgreSQL. A database made by the previous release (tests/fixtures/v1_alliance,
rebuilt on PostgreSQL from tests/v1_schema.py) upgrades to exactly today's
schema and keeps its rows; a new database is created at the head revision; an
upgrade twice changes nothing; an older database is refused until upgraded;
the migrations alone produce today's models (so a model change without a
migration fails here)."""
from __future__ import annotations

import multiprocessing
from typing import Any

import pytest
from alembic import command
from sqlalchemy import Engine, MetaData, Table, func, inspect, select, text

from alliance import db, migrations
from alliance.migrations import SchemaKind, SchemaOutdated, SchemaUnknown
from alliance_gateway import schema
from alliance_member import store
from tests import v1_schema

KINDS: dict[str, SchemaKind] = {"gateway": schema.SCHEMA, "member": store.SCHEMA}
# Written out, not read from the migrations: what each release's schema is called.
V2_REVISION = {"gateway": "gw_0003_book_status", "member": "mb_0002_v2"}  # each kind's head
# every revision after the baseline, in order (SPEC §10 added gw_0003_book_status)
AFTER_BASELINE = {"gateway": ("gw_0002_v2", "gw_0003_book_status"), "member": ("mb_0002_v2",)}
UPGRADE_COMMAND = {"gateway": "alliance admin db upgrade", "member": "alliance member db upgrade"}
KIND_PARAM = pytest.mark.parametrize("kind", ["gateway", "member"])


# -- an independent picture of a schema -------------------------------------------

def _expected_shape(kind: SchemaKind, dialect: Any) -> dict[str, Any]:
    """What today's models say, each type compiled for the backend."""
    shape = {}
    for md in kind.metadata():
        for table in md.tables.values():
            shape[table.name] = {
                "columns": {c.name: (c.type.compile(dialect=dialect), c.nullable) for c in table.columns},
                "pk": sorted(c.name for c in table.primary_key.columns),
                "indexes": sorted((i.name, tuple(c.name for c in i.columns), bool(i.unique)) for i in table.indexes),
                "unique": sorted(tuple(c.name for c in u.columns) for u in table.constraints
                                 if type(u).__name__ == "UniqueConstraint"),
            }
    return shape


def _reflected_shape(engine: Engine, names: set[str]) -> dict[str, Any]:
    """What the database holds, read back by SQLAlchemy's inspector."""
    insp = inspect(engine)
    shape = {}
    for name in sorted(set(insp.get_table_names()) & names):
        shape[name] = {
            "columns": {c["name"]: (c["type"].compile(dialect=engine.dialect), c["nullable"]) for c in insp.get_columns(name)},
            "pk": sorted(insp.get_pk_constraint(name)["constrained_columns"]),
            "indexes": sorted((i["name"], tuple(i["column_names"]), bool(i["unique"])) for i in insp.get_indexes(name)
                              if "duplicates_constraint" not in i),
            "unique": sorted(tuple(u["column_names"]) for u in insp.get_unique_constraints(name)),
        }
    return shape


def _assert_exactly_current(engine: Engine, kind: SchemaKind) -> None:
    present = set(inspect(engine).get_table_names()) - {kind.version_table}
    assert present == kind.tables(), present ^ kind.tables()
    assert _reflected_shape(engine, present) == _expected_shape(kind, engine.dialect)
    with engine.connect() as conn:
        assert migrations.differences(conn, kind) == []


def _counts(engine: Engine, names: list[str]) -> dict[str, int]:
    md = MetaData()
    with engine.connect() as conn:
        return {n: conn.execute(select(func.count()).select_from(Table(n, md, autoload_with=conn))).scalar_one() for n in names}


def test_each_environment_ends_at_the_declared_head_and_starts_at_the_baseline() -> None:
    for kind, k in KINDS.items():
        assert migrations.revisions(k) == [k.baseline, *AFTER_BASELINE[kind]]
        assert migrations.head(k) == k.head == V2_REVISION[kind]
        assert k.version_table == f"alembic_version_{kind}"


# -- the previous release -----------------------------------------------------------

def test_the_v1_schema_copy_is_the_schema_of_the_fixture_files(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """tests/v1_schema.py (used to make v1 databases on PostgreSQL) is the
    schema the previous release wrote into the fixture files."""
    for source, md in ((v1_schema.GATEWAY_DB, v1_schema.gateway_metadata), (v1_schema.MEMBER_DB, v1_schema.member_metadata)):
        fixture = db.make_engine(db.sqlite_url(source))
        copy = db.make_engine(db.sqlite_url(tmp_path / f"{source.stem}.db"))
        md.create_all(copy)
        assert set(inspect(fixture).get_table_names()) == set(md.tables)
        assert _reflected_shape(fixture, set(md.tables)) == _reflected_shape(copy, set(md.tables))
        fixture.dispose()
        copy.dispose()


@KIND_PARAM
def test_a_v1_database_upgrades_to_exactly_the_current_schema_and_keeps_its_rows(db_url, kind) -> None:  # type: ignore[no-untyped-def]
    k = KINDS[kind]
    counts = v1_schema.make_v1_database(db_url, kind)
    assert counts["log_entries" if kind == "gateway" else "loans"] > 0  # the fixture holds real rows
    engine = db.make_engine(db_url)
    with engine.connect() as conn:
        before = migrations.state(conn, k)
        fixture_rows = {n: sorted(tuple(r) for r in conn.execute(select(t))) for n, t in (
            v1_schema.gateway_metadata if kind == "gateway" else v1_schema.member_metadata).tables.items()}
    assert before.revision is None and before.tables == k.baseline_tables
    with pytest.raises(SchemaOutdated, match=UPGRADE_COMMAND[kind]):
        (schema.create_schema if kind == "gateway" else store.create_schema)(engine)

    result = migrations.upgrade(engine, k)
    assert (result.before, result.after, result.stamped_baseline, result.created) == (None, V2_REVISION[kind], True, False)
    assert result.applied == AFTER_BASELINE[kind]
    _assert_exactly_current(engine, k)
    assert _counts(engine, list(counts)) == counts
    with engine.connect() as conn:  # every v1 row as it was
        md = v1_schema.gateway_metadata if kind == "gateway" else v1_schema.member_metadata
        assert {n: sorted(tuple(r) for r in conn.execute(select(t))) for n, t in md.tables.items()} == fixture_rows

    again = migrations.upgrade(engine, k)
    assert not again.changed and again.before == again.after == V2_REVISION[kind]
    (schema.create_schema if kind == "gateway" else store.create_schema)(db.make_engine(db_url))  # now accepted
    engine.dispose()


# -- new databases ------------------------------------------------------------------

@KIND_PARAM
def test_a_new_database_is_created_at_head_and_upgrade_is_a_no_op(db_url, kind) -> None:  # type: ignore[no-untyped-def]
    k = KINDS[kind]
    engine = db.make_engine(db_url)
    (schema.create_schema if kind == "gateway" else store.create_schema)(engine)
    with engine.connect() as conn:
        assert conn.execute(text(f"SELECT version_num FROM alembic_version_{kind}")).scalars().all() == [V2_REVISION[kind]]
    _assert_exactly_current(engine, k)
    result = migrations.upgrade(engine, k)
    assert not result.changed and result.after == V2_REVISION[kind]
    if kind == "gateway":
        with engine.connect() as conn:
            assert conn.execute(select(schema.log_head.c.size)).scalars().all() == [0]
    engine.dispose()
    empty = db.make_engine(db_url.replace("test.db", "other.db")) if db_url.startswith("sqlite") else None
    if empty is not None:  # `db upgrade` on an empty database creates it at head
        created = migrations.upgrade(empty, k)
        assert created.created and created.after == V2_REVISION[kind] and created.applied == ()
        _assert_exactly_current(empty, k)
        empty.dispose()


@KIND_PARAM
def test_the_migrations_alone_make_exactly_todays_models(db_url, kind) -> None:  # type: ignore[no-untyped-def]
    """Fails when a model changes without a migration: the revisions, run from
    an empty database, must give what the models (and create_all) give."""
    k = KINDS[kind]
    engine = db.make_engine(db_url)
    with engine.begin() as conn:
        command.upgrade(migrations.config(k, conn), "head")
    _assert_exactly_current(engine, k)
    with engine.begin() as conn:  # and back down: every revision can be undone
        command.downgrade(migrations.config(k, conn), "base")
    assert set(inspect(engine).get_table_names()) <= {k.version_table}
    engine.dispose()


def test_a_gateway_and_a_member_may_share_one_database(db_url) -> None:  # type: ignore[no-untyped-def]
    engine = db.make_engine(db_url)
    schema.create_schema(engine)
    store.create_schema(engine)
    with engine.connect() as conn:
        for kind, k in KINDS.items():
            assert migrations.state(conn, k).revision == V2_REVISION[kind]
            assert migrations.differences(conn, k) == []  # the other kind's tables are not this kind's business
    assert {"alembic_version_gateway", "alembic_version_member"} <= set(inspect(engine).get_table_names())
    engine.dispose()


def _create_both(url: str) -> None:
    engine = db.make_engine(url)
    schema.create_schema(engine)
    store.create_schema(engine)
    engine.dispose()


def test_processes_starting_together_on_an_empty_database_create_it_once(db_url) -> None:  # type: ignore[no-untyped-def]
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_create_both, args=(db_url,)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    engine = db.make_engine(db_url)
    with engine.connect() as conn:
        for kind in KINDS:
            assert conn.execute(text(f"SELECT version_num FROM alembic_version_{kind}")).scalars().all() == [V2_REVISION[kind]]
        assert conn.execute(select(func.count()).select_from(schema.log_head)).scalar_one() == 1
    engine.dispose()


# -- databases this release did not make ---------------------------------------------

@KIND_PARAM
def test_a_database_of_a_pre_alembic_v2_build_is_stamped_and_upgraded(db_url, kind) -> None:  # type: ignore[no-untyped-def]
    k = KINDS[kind]
    engine = db.make_engine(db_url)
    for md in k.metadata():
        md.create_all(engine)  # what v2 builds before Alembic did
    with pytest.raises(SchemaOutdated, match=UPGRADE_COMMAND[kind]):
        migrations.ensure_current(engine, k)
    result = migrations.upgrade(engine, k)
    assert result.stamped_baseline and result.after == V2_REVISION[kind]
    _assert_exactly_current(engine, k)
    engine.dispose()


def test_a_schema_this_release_cannot_place_is_refused(db_url) -> None:  # type: ignore[no-untyped-def]
    engine = db.make_engine(db_url)
    schema.log_entries.create(engine)  # one gateway table, not the previous release's set
    with pytest.raises(SchemaUnknown, match="missing: inquiries, key_shares, log_head, log_nodes, members"):
        migrations.upgrade(engine, schema.SCHEMA)
    with pytest.raises(SchemaUnknown, match="missing"):
        schema.create_schema(engine)
    store.create_schema(engine)
    with engine.begin() as conn:  # a member database from a newer release
        conn.execute(text("UPDATE alembic_version_member SET version_num = 'mb_9999_future'"))
    with pytest.raises(SchemaUnknown, match="mb_9999_future, which this release does not know"):
        migrations.upgrade(engine, store.SCHEMA)
    with pytest.raises(SchemaUnknown, match="mb_9999_future"):
        store.create_schema(db.make_engine(db_url))
    engine.dispose()
