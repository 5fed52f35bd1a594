"""UDS-1 import into the member store (SPEC §2).

One database transaction per file: all-or-nothing by default, so an invalid
row, Ctrl-C or a crash leaves the store exactly as it was. Rows stream through
in chunks, so memory stays flat whatever the file size: duplicate keys within
one file are found by tagging every written row with this import's run id and
asking the database, not by remembering keys in memory. Validation and tokens
happen in import_rows, for a large file in a worker process that runs
alongside the writes (SPEC §8: a million rows in 30 s on two cores)."""
from __future__ import annotations

import csv
import json
import os
import sqlite3
import tempfile
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any, TextIO

from sqlalchemy import Connection, Engine, Table, and_, delete, func, insert, select, tuple_

from alliance import identity, uds1
from alliance._internal.files import is_special
from alliance.errors import InvalidInput, UsageError
from alliance.matching_key import MatchingKey
from alliance_member import import_rows, store
from alliance_member.import_rows import Row

CHUNK_ROWS = 5000
# A snapshot may remove at most this share of the book without --allow-shrink.
SNAPSHOT_MAX_SHRINK = 0.20
# SQLite page cache for the import's connection, in KiB (the default is 2 MiB).
SQLITE_IMPORT_CACHE_KIB = 32 << 10


@dataclass
class ImportResult:
    kind: str
    rows_read: int = 0
    rows_written: int = 0
    rows_rejected: int = 0
    rows_removed: int = 0
    committed: bool = False
    dry_run: bool = False
    reject_file: Path | None = None
    first_errors: list[str] = field(default_factory=list)


ErrorSink = Callable[[uds1.RowError], None]
ProgressSink = Callable[[int], None]


def import_file(
    engine: Engine,
    path: Path,
    kind: str,
    matching_key: MatchingKey,
    *,
    skip_invalid: bool = False,
    snapshot: bool = False,
    reject_path: Path | None = None,
    on_error: ErrorSink | None = None,
    on_progress: ProgressSink | None = None,
    today: date | None = None,
    dry_run: bool = False,
    allow_shrink: bool = False,
) -> ImportResult:
    """Import one UDS-1 file. Raises InvalidInput (nothing written) when any row
    is invalid and ``skip_invalid`` is off; with ``skip_invalid`` valid rows are
    committed, invalid ones go to ``reject_path`` and the result says how many.

    ``snapshot`` removes records absent from the file, but refuses (InvalidInput)
    to remove more than 20 % of the book or to leave it empty unless
    ``allow_shrink``. ``dry_run`` does all of it inside a transaction that is
    rolled back, writes no reject file, and returns the same counts."""
    check_arguments(path, kind, skip_invalid=skip_invalid, snapshot=snapshot, reject_path=reject_path)
    table = store.BOOK_TABLES[kind]
    result = ImportResult(kind=kind, dry_run=dry_run)
    rejects = _RejectWriter(reject_path, path, kind) if skip_invalid and not dry_run else None

    def reject(errors: list[uds1.RowError], raw: dict[str, str] | None) -> None:
        result.rows_rejected += 1
        for err in errors:
            if len(result.first_errors) < 20:
                result.first_errors.append(str(err))
            if on_error is not None:
                on_error(err)
        if rejects is not None:
            rejects.write(raw, errors)

    try:
        with engine.connect() as conn, _sqlite_cache_for_import(conn), conn.begin():
            run_id = conn.execute(
                insert(store.import_runs).values(kind=kind, source=path.name, started_at=datetime.now(timezone.utc))
            ).inserted_primary_key[0]
            book_before = conn.execute(select(func.count()).select_from(table)).scalar_one() if snapshot else 0
            writer = _Upserter(conn, table, kind, run_id, source=str(path))
            spec = import_rows.RowSpec(
                path=path, kind=kind, display_name=str(path), today=today or identity.shanghai_today(),
                key=matching_key.key, epoch=matching_key.epoch, run_id=run_id, sqlite=writer.is_sqlite,
                keep_raw=rejects is not None,
            )
            # closing: an error or Ctrl-C ends a worker at once, not when the traceback is freed
            with closing(import_rows.rows(spec)) as prepared:
                for line, row, raw, errors in prepared:
                    result.rows_read += 1
                    if row is None:
                        reject(errors, raw)
                    else:
                        for dup_error, dup_raw in writer.add(line, row, raw):
                            reject([dup_error], dup_raw)
                    if on_progress is not None and result.rows_read % 1000 == 0:
                        on_progress(result.rows_read)
            for dup_error, dup_raw in writer.flush():
                reject([dup_error], dup_raw)
            result.rows_written = writer.written
            if result.rows_rejected and not skip_invalid:
                raise _Rollback()
            if snapshot:
                _check_shrink(conn, table, run_id, book_before, path, allow_shrink)
                result.rows_removed = conn.execute(delete(table).where(table.c.import_run != run_id)).rowcount
            if on_progress is not None:
                on_progress(result.rows_read)
            if dry_run:
                raise _DryRun()
    except _DryRun:
        return result
    except _Rollback:
        if rejects is not None:
            rejects.discard()
        raise InvalidInput(
            f"{path}: {result.rows_rejected} invalid row(s) out of {result.rows_read}; nothing was imported"
        ) from None
    except BaseException:
        if rejects is not None:
            rejects.discard()
        raise
    if rejects is not None:
        rejects.commit()
    result.committed = True
    result.reject_file = rejects.path if rejects is not None and result.rows_rejected else None
    return result


@contextmanager
def _sqlite_cache_for_import(conn: Connection) -> Iterator[None]:
    """A bigger SQLite page cache while one import runs (the connection's own
    setting is restored after): the loan_id and token indexes of a large book
    then stay in memory instead of being re-read for every chunk. Bounded, so
    memory stays flat whatever the file size."""
    if conn.engine.dialect.name != "sqlite":
        yield
        return
    dbapi = conn.connection.dbapi_connection
    assert dbapi is not None
    before = dbapi.execute("PRAGMA cache_size").fetchone()[0]
    dbapi.execute(f"PRAGMA cache_size=-{SQLITE_IMPORT_CACHE_KIB}")
    try:
        yield
    finally:
        try:
            dbapi.execute(f"PRAGMA cache_size={int(before)}")
        except sqlite3.Error:  # a broken connection: the pool discards it, and with it the setting
            pass


def check_arguments(path: Path, kind: str, *, skip_invalid: bool, snapshot: bool, reject_path: Path | None) -> None:
    """Everything about the arguments that can be checked before the file is
    read (SPEC §2): a reject file only with --skip-invalid, in a folder that
    exists, and never one of the input files."""
    if kind not in uds1.FIELDS:
        raise UsageError(f"--kind must be one of {', '.join(uds1.FIELDS)}, not {kind!r}")
    if snapshot and skip_invalid:
        raise UsageError("--snapshot is all-or-nothing and cannot be combined with --skip-invalid")
    if reject_path is not None and not skip_invalid:
        raise UsageError("--reject-file needs --skip-invalid (without it an invalid row rejects the whole file)")
    if not path.is_file():
        raise InvalidInput(f"{path}: no such file")
    if skip_invalid:
        target = reject_path or _RejectWriter.default_path(path)
        if reject_path is not None and not reject_path.parent.is_dir():
            raise UsageError(f"--reject-file: folder {reject_path.parent} does not exist")
        if target.exists() and (target.is_dir() or os.path.samefile(target, path)):
            what = "is a folder" if target.is_dir() else f"is the input file {path}"
            raise UsageError(f"--reject-file {target} {what}; choose another path")


def _check_shrink(conn: Connection, table: Table, run_id: int, book_before: int, path: Path, allow_shrink: bool) -> None:
    """The snapshot guard: refuse to remove more than 20 % of the book, or
    all of it, unless the caller said --allow-shrink."""
    if allow_shrink or book_before == 0:
        return
    to_remove = conn.execute(select(func.count()).select_from(table).where(table.c.import_run != run_id)).scalar_one()
    remaining = conn.execute(select(func.count()).select_from(table)).scalar_one() - to_remove
    if to_remove > book_before * SNAPSHOT_MAX_SHRINK:  # leaving the book empty is removing 100 %
        share = 100 * to_remove / book_before
        raise InvalidInput(
            f"{path}: snapshot would remove {to_remove:,} of {book_before:,} {table.name} row(s) ({share:.0f} %"
            + (", leaving the book empty" if remaining == 0 else f", more than {SNAPSHOT_MAX_SHRINK:.0%}")
            + "); nothing was imported (give --allow-shrink if that is intended)"
        )


def _writable(text: str) -> bool:
    """Whether the reject file (UTF-8, surrogateescape) can hold ``text``."""
    try:
        text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return False
    return True


class _Rollback(Exception):
    """Raised inside the transaction to undo an all-or-nothing import."""


class _DryRun(Exception):
    """Raised inside the transaction to undo a --dry-run import after counting."""


Duplicate = tuple[uds1.RowError, "dict[str, str] | None"]


class _Upserter:
    """Buffers valid records and writes them in chunks. A key seen earlier in
    the same file makes the later row invalid: within a chunk the buffer finds
    it, across chunks the database does (rows carry this run's id).

    The upsert leaves a row this run already wrote untouched (its WHERE clause
    compares import runs), so the driver's row count falls short exactly when
    the chunk repeats a key from an earlier chunk; only then are the keys
    looked up and the repeats reported. Each record becomes one tuple, bound
    as it is: no per-row dicts and no SQLAlchemy parameter processing, which
    would cost more than validation and hashing together."""

    def __init__(self, conn: Connection, table: Table, kind: str, run_id: int, *, source: str) -> None:
        self.conn, self.table, self.kind, self.run_id, self.source = conn, table, kind, run_id, source
        self.key_columns = list(table.primary_key.columns)
        self.is_sqlite = conn.engine.dialect.name == "sqlite"
        self.columns = import_rows.COLUMNS[kind]
        if set(self.columns) != {c.name for c in table.columns}:  # a migration changed the table: say so, loudly
            raise AssertionError(f"importer columns for {kind} do not match table {table.name}")
        self.upsert_sql = _upsert_sql(table, self.columns, "?" if self.is_sqlite else "%s")
        self.line_index = self.columns.index("import_line")
        key_names = [c.name for c in self.key_columns]
        self.key_of = _key_getter([self.columns.index(name) for name in key_names])
        self.pending: dict[Any, tuple[Row, dict[str, str] | None]] = {}
        self.written = 0

    def add(self, line: int, row: Row, raw: dict[str, str] | None) -> list[Duplicate]:
        db_key = self.key_of(row)
        earlier = self.pending.get(db_key)
        if earlier is not None:
            return [(self._duplicate(line, earlier[0][self.line_index]), raw)]
        self.pending[db_key] = (row, raw)
        return self.flush() if len(self.pending) >= CHUNK_ROWS else []

    def flush(self) -> list[Duplicate]:
        if not self.pending:
            return []
        rows = [row for row, _ in self.pending.values()]
        changed = self.conn.exec_driver_sql(self.upsert_sql, rows).rowcount
        duplicates = [] if changed == len(rows) else self._keys_already_written_by_this_run()
        self.written += len(rows) - len(duplicates)
        self.pending.clear()
        return duplicates

    def _keys_already_written_by_this_run(self) -> list[Duplicate]:
        """The rows of the pending chunk that the upsert skipped: their key
        already holds a row of this run, from an earlier line."""
        cols = self.key_columns
        if len(cols) == 1:
            key_match = cols[0].in_(list(self.pending))
        else:
            key_match = tuple_(*cols).in_(list(self.pending))
        seen = self.conn.execute(
            select(*cols, self.table.c.import_line).where(and_(key_match, self.table.c.import_run == self.run_id))
        ).all()
        duplicates = []
        for found in seen:
            db_key = found[0] if len(cols) == 1 else tuple(found[: len(cols)])
            row, raw = self.pending[db_key]
            if found.import_line != row[self.line_index]:
                duplicates.append((self._duplicate(row[self.line_index], found.import_line), raw))
        return duplicates

    def _duplicate(self, line: int, first_line: int) -> uds1.RowError:
        field_name = {"loans": "loan_id", "flags": "flag_type", "scores": "id_number"}[self.kind]
        return uds1.RowError(self.source, line, field_name, f"duplicate key: already given on line {first_line}")


def _key_getter(indexes: list[int]) -> Callable[[Row], Any]:
    """The upsert key of a row: the value itself for a one-column key (as the
    database returns it), a tuple for a composite key."""
    if len(indexes) == 1:
        index = indexes[0]
        return lambda row: row[index]
    return lambda row: tuple(row[i] for i in indexes)


def _upsert_sql(table: Table, columns: tuple[str, ...], placeholder: str) -> str:
    """INSERT … ON CONFLICT (key) DO UPDATE, the same text on SQLite ≥ 3.24 and
    PostgreSQL. A row this run already wrote is left alone (and not counted),
    which is how a key repeated across chunks shows up."""
    keys = [c.name for c in table.primary_key.columns]
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c not in keys)
    return (
        f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({', '.join([placeholder] * len(columns))}) "
        f"ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {updates} "
        f"WHERE {table.name}.import_run <> excluded.import_run"
    )


class _RejectWriter:
    """--skip-invalid: invalid rows, as they were, plus the reasons, in the
    input's own format so they can be fixed and imported again."""

    def __init__(self, path: Path | None, source: Path, kind: str) -> None:
        self.path = path or self.default_path(source)
        self.is_csv = source.suffix.lower() == ".csv"
        self.columns = list(uds1.FIELDS[kind]) + ["reject_reason"]
        self._fh: TextIO | None = None
        self._tmp: Path | None = None
        self._csv: Any = None

    @staticmethod
    def default_path(source: Path) -> Path:
        return source.with_name(source.stem + ".rejects" + source.suffix)

    def write(self, raw: dict[str, str] | None, errors: list[uds1.RowError]) -> None:
        if self._fh is None:
            # Written to a temporary file in the same folder and renamed into
            # place only when the import succeeds (SPEC §2: atomically).
            if is_special(self.path):  # /dev/null, a FIFO: written into, never renamed over
                fd = os.open(self.path, os.O_WRONLY)
            else:
                fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
                self._tmp = Path(tmp)
            # surrogateescape: a value holding bytes that are not UTF-8 (read
            # with surrogateescape) is written back as the very bytes it was.
            self._fh = os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape", newline="")
            if self.is_csv:
                self._csv = csv.DictWriter(self._fh, fieldnames=self.columns, extrasaction="ignore")
                self._csv.writeheader()
        row = dict(raw or {})
        row["reject_reason"] = "; ".join(str(e) for e in errors)
        if self.is_csv:
            if not all(_writable(str(v)) for v in row.values()):
                row = {k: str(v).encode("utf-8", "backslashreplace").decode("utf-8") for k, v in row.items()}
            self._csv.writerow(row)
        else:
            line = json.dumps(row, ensure_ascii=False)
            if not _writable(line):  # a lone surrogate from a JSON \ud800 escape: keep it escaped
                line = json.dumps(row)
            self._fh.write(line + "\n")

    def commit(self) -> None:
        if self._fh is not None and self._tmp is None:  # a special file, written in place
            self._fh.close()
            self._fh = None
        if self._fh is None or self._tmp is None:
            return
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        os.replace(self._tmp, self.path)
        self._fh = self._tmp = None

    def discard(self) -> None:
        if self._fh is not None:
            self._fh.close()
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)
        self._fh = self._tmp = None
