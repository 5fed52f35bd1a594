"""Schema versions of the gateway and member databases (SPEC §12), kept by
Alembic.

Each database kind ships its own migration environment inside its package
(``alliance_gateway/migrations``, ``alliance_member/migrations``): a baseline
revision that is the previous release's schema, then the revisions up to
today's. Alembic is configured here, in code; no ``alembic.ini`` is read. Each
kind records its revision in its own version table, so a gateway and a member
may even share one database.

- A new (empty) database is created at the head revision and stamped.
- A database made before Alembic (no version table, the previous release's
  tables present) is stamped at the baseline and then upgraded.
- Servers and commands call :func:`ensure_current`: a database behind the
  head is refused with the command that upgrades it; only the ``db upgrade``
  commands call :func:`upgrade`.

Every change runs in one transaction holding a lock (PostgreSQL: an advisory
lock; SQLite: ``BEGIN IMMEDIATE``), so processes starting together on one
database neither race nor see half a schema."""
from __future__ import annotations

import hashlib
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, MetaData, column, inspect, select, table, text

from alliance.errors import UsageError

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

# Alembic itself is imported only where a schema is created, upgraded or
# compared: the check every command and server makes at start (a database at
# `SchemaKind.head`?) is one query, and costs no import.


@dataclass(frozen=True)
class SchemaKind:
    """One kind of database and its migration environment."""

    name: str  # "gateway" | "member"
    script_location: Path  # the environment's folder (env.py, versions/)
    version_table: str
    baseline: str  # revision of the previous release's schema
    head: str  # this release's revision; upgrade() checks it is the environment's head
    baseline_tables: frozenset[str]  # the tables that release created
    upgrade_command: str  # what an operator runs when a database is behind; "{home}" is filled in
    home_hint: str  # what "{home}" says when the home is not known, e.g. "<admin home>"
    metadata: Callable[[], tuple[MetaData, ...]]  # today's schema (lazy: avoids import cycles)
    seed: Callable[[Connection], None] | None = field(default=None, compare=False)  # rows the schema needs

    def tables(self) -> frozenset[str]:
        return frozenset(name for md in self.metadata() for name in md.tables)


class SchemaOutdated(UsageError):
    """The database is older than this release: run the kind's `db upgrade`.
    A usage error (exit 2, SPEC §7) like every "run X first": nothing is
    wrong with the input or the caller's rights, an operator step is missing."""


class SchemaUnknown(UsageError):
    """The database holds a schema this release cannot place: newer than this
    release, or some of the kind's tables but not the previous release's."""


@dataclass(frozen=True)
class SchemaState:
    revision: str | None  # None: no version table (or an empty one)
    head: str
    tables: frozenset[str]  # this kind's tables present

    @property
    def empty(self) -> bool:
        return self.revision is None and not self.tables

    @property
    def current(self) -> bool:
        return self.revision == self.head


@dataclass(frozen=True)
class UpgradeResult:
    before: str | None  # revision before; None: unversioned (or empty)
    after: str
    created: bool  # the database was empty: created at head
    stamped_baseline: bool  # made before Alembic: stamped at the baseline first
    applied: tuple[str, ...]  # revisions run, oldest first

    @property
    def changed(self) -> bool:
        return self.created or self.stamped_baseline or bool(self.applied)


# -- the environment ---------------------------------------------------------

def config(kind: SchemaKind, connection: Connection | None = None) -> Config:
    """An Alembic configuration built in code (no alembic.ini)."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(kind.script_location))
    cfg.set_main_option("path_separator", "os")
    cfg.attributes["kind"] = kind
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


@cache
def _script(kind: SchemaKind) -> ScriptDirectory:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(config(kind))


def head(kind: SchemaKind) -> str:
    """The environment's head revision, which must be ``kind.head``."""
    heads = _script(kind).get_heads()
    if list(heads) != [kind.head]:
        raise RuntimeError(f"the {kind.name} migrations end at {', '.join(heads)}, not at the declared head {kind.head}: "
                           "update SchemaKind.head with the new revision")
    return kind.head


def revisions(kind: SchemaKind) -> list[str]:
    """Every revision, oldest first."""
    return [s.revision for s in reversed(list(_script(kind).walk_revisions()))]


def include_name(kind: SchemaKind) -> Callable[[str | None, str, Any], bool]:
    """Autogenerate compares this kind's tables only (another kind may share the database)."""
    tables = kind.tables()

    def include(name: str | None, type_: str, _parents: Any) -> bool:
        return type_ != "table" or name in tables

    return include


def run_env(context: Any) -> None:
    """The body of each environment's env.py: online migrations on the
    connection :func:`config` was given (``cfg.attributes["connection"]``)."""
    kind: SchemaKind = context.config.attributes["kind"]
    connection: Connection | None = context.config.attributes.get("connection")
    if connection is None:
        raise UsageError("the alliance migration environments run through `alliance admin|member db upgrade`, "
                         "not the alembic command line")
    context.configure(
        connection=connection, target_metadata=list(kind.metadata()), version_table=kind.version_table,
        render_as_batch=True,  # SQLite cannot ALTER most things: Alembic rebuilds the table in a batch
        include_name=include_name(kind), compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


# -- state -------------------------------------------------------------------

def state(conn: Connection, kind: SchemaKind) -> SchemaState:
    present = set(inspect(conn).get_table_names())
    revision = None
    if kind.version_table in present:
        heads = conn.execute(select(column("version_num")).select_from(table(kind.version_table))).scalars().all()
        if len(heads) > 1:
            raise SchemaUnknown(f"the {kind.name} database records several schema revisions ({', '.join(heads)})")
        revision = heads[0] if heads else None
    return SchemaState(revision, kind.head, frozenset(present & kind.tables()))


def differences(conn: Connection, kind: SchemaKind) -> list[Any]:
    """Alembic's autogenerate diff between the database and today's models:
    empty when the migrations produce exactly the models' schema."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    mc = MigrationContext.configure(conn, opts={
        "version_table": kind.version_table, "include_name": include_name(kind), "compare_type": True})
    return list(compare_metadata(mc, _merged(kind)))


def _merged(kind: SchemaKind) -> MetaData:
    merged = MetaData()
    for md in kind.metadata():
        for t in md.tables.values():
            t.to_metadata(merged)
    return merged


# -- changes -----------------------------------------------------------------

@contextmanager
def _locked(engine: Engine, kind: SchemaKind) -> Iterator[Connection]:
    """One transaction, exclusive among processes changing this database."""
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            key = int.from_bytes(hashlib.sha256(f"alliance-schema-{kind.name}".encode()).digest()[:8], "big", signed=True)
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})
        elif conn.dialect.name == "sqlite":
            conn.exec_driver_sql("BEGIN IMMEDIATE")  # the write lock now, DDL included in the transaction
        yield conn


def _create_at_head(conn: Connection, kind: SchemaKind) -> None:
    from alembic import command

    for md in kind.metadata():
        md.create_all(conn)
    command.stamp(config(kind, conn), head(kind))


def _revision_known(kind: SchemaKind, revision: str) -> bool:
    return revision in revisions(kind)


def _check_placeable(st: SchemaState, kind: SchemaKind) -> None:
    if st.revision is not None and not _revision_known(kind, st.revision):
        raise SchemaUnknown(f"the {kind.name} database is at schema revision {st.revision}, which this release does not "
                            "know (made by a newer release?); use that release")
    if st.revision is None and st.tables and not kind.baseline_tables <= st.tables:
        missing = ", ".join(sorted(kind.baseline_tables - st.tables))
        raise SchemaUnknown(f"the {kind.name} database holds some of its tables but not all of the previous release's "
                            f"(missing: {missing}); restore it from a backup")


def upgrade(engine: Engine, kind: SchemaKind) -> UpgradeResult:
    """Bring the database to the head revision. Idempotent."""
    from alembic import command

    head(kind)
    with _locked(engine, kind) as conn:
        before = state(conn, kind)
        _check_placeable(before, kind)
        created = stamped = False
        cfg = config(kind, conn)
        if before.empty:
            _create_at_head(conn, kind)
            created = True
        elif not before.current:
            if before.revision is None:
                command.stamp(cfg, kind.baseline)  # made by the previous release, before Alembic
                stamped = True
            command.upgrade(cfg, kind.head)
        if kind.seed is not None:
            kind.seed(conn)
        after = state(conn, kind).revision
    assert after is not None
    order = revisions(kind)
    start = before.revision if before.revision is not None else kind.baseline if stamped else after
    applied = tuple(order[order.index(start) + 1:order.index(after) + 1])
    _verified.setdefault(engine, set()).add(kind.name)
    return UpgradeResult(before.revision, after, created, stamped, applied)


_verified: weakref.WeakKeyDictionary[Engine, set[str]] = weakref.WeakKeyDictionary()


def ensure_current(engine: Engine, kind: SchemaKind, home: Path | None = None) -> None:
    """For servers and commands: create an empty database at head; accept a
    database at head; refuse anything older (SchemaOutdated, naming the
    upgrade command, for ``home`` when known) or unknown. Checked once per engine."""
    if kind.name in _verified.get(engine, ()):
        return
    with engine.connect() as conn:
        st = state(conn, kind)
    if not st.current:
        _check_placeable(st, kind)
        if not st.empty:
            raise SchemaOutdated(outdated_message(kind, st, home))
        with _locked(engine, kind) as conn:
            st = state(conn, kind)  # another process may have created it meanwhile
            if st.empty:
                _create_at_head(conn, kind)
            elif not st.current:
                raise SchemaOutdated(outdated_message(kind, st, home))
            if kind.seed is not None:
                kind.seed(conn)
    _verified.setdefault(engine, set()).add(kind.name)


def outdated_message(kind: SchemaKind, st: SchemaState, home: Path | None = None) -> str:
    at = f"schema revision {st.revision}" if st.revision else "the previous release's schema"
    run = kind.upgrade_command.format(home=home if home is not None else kind.home_hint)
    return f"the {kind.name} database is at {at}, older than this release's ({st.head}): run `{run}` first"
