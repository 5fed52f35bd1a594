"""The gateway's append-only audit log (SPEC §6): canonical entries as leaves
of an RFC 6962 tree whose perfect-subtree hashes live in the database, so an
append costs O(log n) and proofs never rebuild the tree."""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Connection, Engine, and_, bindparam, func, insert, select, update

from alliance import audit_entry, checkpoint, log_rules, merkle
from alliance.errors import InvalidInput
from alliance_gateway import schema

EntryBuilder = Callable[[int, str], dict[str, Any]]


def utc_timestamp(ms: int) -> str:
    """RFC 3339 UTC with milliseconds: the `time` of an entry."""
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


# SPEC §12: a replica that hangs inside an append (stopped, partitioned) holds
# the head row's lock; others give up after the lock timeout instead of
# queueing forever, and the server ends the hung transaction, releasing the
# lock, once it has been idle that long. One round trip.
_PG_APPEND_LIMITS = (
    f"SET LOCAL lock_timeout = '{log_rules.LOCK_TIMEOUT_MS}ms'; "
    f"SET LOCAL statement_timeout = '{2 * log_rules.LOCK_TIMEOUT_MS}ms'; "
    f"SET LOCAL idle_in_transaction_session_timeout = '{log_rules.LOCK_TIMEOUT_MS}ms'"
)


# The append's statements, built once (SQLAlchemy then reuses their compiled
# form without rebuilding a cache key per query).
_BUMP_HEAD = (update(schema.log_head).where(schema.log_head.c.id == 1).values(size=schema.log_head.c.size + 1)
              .returning(schema.log_head.c.size))
_INSERT_MEMBERSHIP = insert(schema.membership_index)
_INSERT_ENTRY = insert(schema.log_entries)
_INSERT_NODE = insert(schema.log_nodes)


def append(conn: Connection, build: EntryBuilder, now_ms: int | None = None, *,
           cache: "NodeCache | None" = None) -> tuple[int, bytes]:
    """Append one entry inside the caller's transaction; returns (seq, leaf hash).

    The head row is updated *first*: that takes the write lock (SQLite) or the
    row lock (PostgreSQL) before anything is read, so concurrent appenders from
    any number of processes get one gap-free sequence. ``now_ms`` None means
    "now, under the lock": membership entries are timed that way, so their
    times never go backwards in log order (SPEC §6.3). ``cache``: sibling
    hashes are looked up there first (stored nodes never change); an append
    never adds to it, since what it reads may be this transaction's own."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(_PG_APPEND_LIMITS)
    seq = conn.execute(_BUMP_HEAD).scalar_one() - 1
    if now_ms is None:
        now_ms = int(time.time() * 1000)
    entry = build(seq, utc_timestamp(now_ms))
    if entry.get("kind") in audit_entry.MEMBERSHIP_KINDS:
        # Under the head lock, so membership numbers are gap-free in log order too.
        mseq = conn.execute(select(func.count()).select_from(schema.membership_index)).scalar_one()
        if entry.get("v", 1) >= 2:
            entry["membership_seq"] = mseq
        conn.execute(_INSERT_MEMBERSHIP, {"membership_seq": mseq, "seq": seq})
    data = audit_entry.encode(entry)
    leaf = merkle.leaf_hash(data)
    conn.execute(_INSERT_ENTRY, {"seq": seq, "data": data})
    nodes = merkle.nodes_to_add(seq, leaf, _getter(conn, cache, populate=False))
    conn.execute(_INSERT_NODE, [{"level": l, "idx": i, "hash": h} for l, i, h in nodes])
    return seq, leaf


V2_STARTED_KEY = "v2_started_seq"


def v2_started_seq(conn: Connection) -> int | None:
    """Sequence number of the log's `v2_started` entry, None for a v1 log."""
    value = conn.execute(select(schema.log_meta.c.value).where(schema.log_meta.c.key == V2_STARTED_KEY)).scalar()
    return None if value is None else int(value)


def entry_version(conn: Connection) -> int:
    return 1 if v2_started_seq(conn) is None else 2


_MEMBERSHIP_COUNT = select(func.count()).select_from(schema.membership_index).where(schema.membership_index.c.seq < bindparam("size"))


def membership_count(conn: Connection, size: int) -> int:
    """How many membership entries the first ``size`` leaves hold (every
    receipt's checkpoint states it: the statement is built once)."""
    return conn.execute(_MEMBERSHIP_COUNT, {"size": size}).scalar_one()


def _backfill_v1_indexes(conn: Connection) -> None:
    """Index a v1 log for v2 (SPEC §6.4): its membership entries get their
    membership numbers, and its accepted LOAN_APPROVAL queries enter the
    applications index behind inquiries_30d (§4)."""
    if conn.execute(select(func.count()).select_from(schema.membership_index)).scalar_one():
        return
    mseq = 0
    for row in conn.execute(select(schema.log_entries.c.seq, schema.log_entries.c.data).order_by(schema.log_entries.c.seq)):
        entry = audit_entry.decode(bytes(row.data), index=row.seq)
        if entry["kind"] in audit_entry.MEMBERSHIP_KINDS:
            conn.execute(insert(schema.membership_index).values(membership_seq=mseq, seq=row.seq))
            mseq += 1
        elif (entry["kind"] in audit_entry.QUERY_KINDS and entry.get("outcome") == "accepted"
              and entry.get("purpose") == "LOAN_APPROVAL" and entry.get("subject_token_sha256")):
            conn.execute(insert(schema.applications).values(
                seq=row.seq, querier_id=entry["querier_id"], token_sha256=bytes.fromhex(entry["subject_token_sha256"]),
                received_at_ms=entry["received_at_ms"]))


def start_v2(conn: Connection, *, deadline_ms: int) -> int:
    """Append `v2_started` (SPEC §6.4) unless the log already has one; returns its seq."""
    existing = v2_started_seq(conn)
    if existing is not None:
        return existing
    _backfill_v1_indexes(conn)
    seq, _ = append(conn, lambda s, when: {"v": 2, "kind": "v2_started", "seq": s, "time": when,
                                           "rules": log_rules.started_rules(deadline_ms)})
    conn.execute(insert(schema.log_meta).values(key=V2_STARTED_KEY, value=str(seq)))
    return seq


# Built once: constructing a SQLAlchemy statement per lookup cost more CPU
# than running it (≈ 14 lookups per query).
_NODE_HASH = select(schema.log_nodes.c.hash).where(
    and_(schema.log_nodes.c.level == bindparam("level"), schema.log_nodes.c.idx == bindparam("idx")))
_HEAD_SIZE = select(schema.log_head.c.size).where(schema.log_head.c.id == 1)
_ENTRY_DATA = select(schema.log_entries.c.data).where(schema.log_entries.c.seq == bindparam("seq"))


def entry_data(conn: Connection, seq: int) -> bytes:
    """One logged entry's bytes, read in the caller's transaction."""
    return bytes(conn.execute(_ENTRY_DATA, {"seq": seq}).scalar_one())


def _getter(conn: Connection, cache: "NodeCache | None" = None, *, populate: bool = True) -> Callable[[int, int], bytes]:
    def get(level: int, index: int) -> bytes:
        if cache is not None:
            hit = cache.get((level, index))
            if hit is not None:
                return hit
        row = conn.execute(_NODE_HASH, {"level": level, "idx": index}).first()
        if row is None:
            raise LookupError(f"log node ({level}, {index}) is missing")
        if cache is not None and populate:
            cache.put((level, index), bytes(row.hash))
        return bytes(row.hash)

    return get


class NodeCache:
    """Stored node hashes never change once written, so readers may keep
    them; bounded so a long-running gateway's memory stays flat."""

    def __init__(self, max_entries: int = 200_000) -> None:
        self._data: dict[tuple[int, int], bytes] = {}
        self._max = max_entries
        self._lock = threading.Lock()

    def get(self, key: tuple[int, int]) -> bytes | None:
        return self._data.get(key)

    def put(self, key: tuple[int, int], value: bytes) -> None:
        with self._lock:
            if len(self._data) >= self._max:
                self._data.clear()
            self._data[key] = value


_NOTES_KEPT = 16


class LogReader:
    """Read side for checkpoints and proofs; safe to use from many threads."""

    def __init__(self, engine: Engine, *, origin: str, key_name: str, signing_key: Ed25519PrivateKey) -> None:
        self.engine = engine
        self.origin = origin
        self.key_name = key_name
        self.signing_key = signing_key
        self.nodes = NodeCache()
        self._v2 = False
        self._notes: dict[tuple[int, bool], str] = {}  # (size, v2) -> signed checkpoint, oldest first
        self._notes_lock = threading.Lock()

    def size(self) -> int:
        with self.engine.connect() as conn:
            return conn.execute(_HEAD_SIZE).scalar_one()

    def signed_checkpoint(self, size: int | None = None) -> tuple[int, str]:
        """A log-signed checkpoint; on a v2 log it carries `membership <count>`."""
        with self.engine.connect() as conn:
            if size is None:
                size = conn.execute(_HEAD_SIZE).scalar_one()
            return size, self._note_at(conn, size, _getter(conn, self.nodes))

    def receipt(self, seq: int, known_size: int = 0) -> tuple[int, str, list[bytes], bytes, tuple[int, list[bytes]] | None]:
        """What a query's receipt carries, read over one connection (it was
        six): size and signed checkpoint of the log as it is now (at least
        up to leaf ``seq``), the leaf's inclusion proof in it, the entry, and,
        when the querier's ``known_size`` is another size within the log,
        (known_size, the consistency proof between the two sizes).

        The log's current size rather than ``seq + 1``: queries committed
        close together then share one checkpoint, signed once (cached), and
        a querier with several in flight proves it once, not once each."""
        with self.engine.connect() as conn:
            size = max(seq + 1, conn.execute(_HEAD_SIZE).scalar_one())
            get = _getter(conn, self.nodes)
            note = self._note_at(conn, size, get)
            inclusion = merkle.inclusion_proof(seq, size, get)
            entry = bytes(conn.execute(_ENTRY_DATA, {"seq": seq}).scalar_one())
            consistency = None
            if 0 < known_size != size and known_size <= size:
                consistency = (known_size, merkle.consistency_proof(min(known_size, size), max(known_size, size), get))
        return size, note, inclusion, entry, consistency

    def drop_caches(self) -> None:
        """Forget cached nodes and checkpoints. Never needed by an append-only
        log; tests that rewrite the store as a hostile operator would need it."""
        self.nodes = NodeCache()
        with self._notes_lock:
            self._notes.clear()

    def _note_at(self, conn: Connection, size: int, get: Callable[[int, int], bytes]) -> str:
        """The signed checkpoint of the first ``size`` leaves; a tree's
        checkpoint never changes, so the last few are kept."""
        key = (size, self._is_v2(conn))
        with self._notes_lock:
            note = self._notes.get(key)
        if note is not None:
            return note
        root = merkle.root_at(size, get) if size else merkle.EMPTY_ROOT
        extensions = (f"membership {membership_count(conn, size)}",) if key[1] else ()
        note = checkpoint.sign_checkpoint(checkpoint.Checkpoint(self.origin, size, root, extensions), self.key_name, self.signing_key)
        with self._notes_lock:
            self._notes[key] = note
            while len(self._notes) > _NOTES_KEPT:
                del self._notes[next(iter(self._notes))]
        return note

    def _is_v2(self, conn: Connection) -> bool:
        if not self._v2:
            self._v2 = v2_started_seq(conn) is not None  # once v2, always v2
        return self._v2

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        return self.inclusion_proofs([index], size)[0]

    def inclusion_proofs(self, indices: list[int], size: int) -> list[bytes]:
        """Inclusion proofs of several leaves in one tree, over one connection
        and one read of the log's size: a reconcile page proves up to a
        thousand entries, and a connection plus a size read per entry was
        most of what serving it cost."""
        if not indices:
            return []
        with self.engine.connect() as conn:
            log_size = conn.execute(_HEAD_SIZE).scalar_one()
            for index in indices:
                if not 0 <= index < size <= log_size:
                    raise InvalidInput(f"no leaf {index} in a tree of size {size} (log size {log_size})")
            return merkle.inclusion_proofs(indices, size, _getter(conn, self.nodes))

    def consistency_proof(self, first: int, second: int) -> list[bytes]:
        with self.engine.connect() as conn:
            log_size = conn.execute(_HEAD_SIZE).scalar_one()
            if not 0 < first <= second <= log_size:
                raise InvalidInput(f"no consistency proof from size {first} to {second} (log size {log_size})")
            return merkle.consistency_proof(first, second, _getter(conn, self.nodes))

    def entry(self, seq: int) -> bytes:
        with self.engine.connect() as conn:
            return bytes(conn.execute(_ENTRY_DATA, {"seq": seq}).scalar_one())

    def entries(self, start: int, end: int, *, page_bytes: int = 4 << 20) -> Iterator[tuple[int, bytes]]:
        """Entries [start, end), read in pages of about ``page_bytes`` (sizes
        are read first), so memory stays bounded whatever the entries hold;
        v1 logs may contain entries far larger than the v2 bound."""
        seq_c, data_c = schema.log_entries.c.seq, schema.log_entries.c.data
        while start < end:
            with self.engine.connect() as conn:
                sizes = conn.execute(
                    select(seq_c, func.length(data_c)).where(and_(seq_c >= start, seq_c < min(end, start + 4096))).order_by(seq_c)
                ).all()
                stop, total = start, 0
                for seq, size in sizes:
                    if stop > start and total + size > page_bytes:
                        break
                    stop, total = seq + 1, total + size
                if stop == start:
                    return  # nothing stored there
                rows = conn.execute(select(seq_c, data_c).where(and_(seq_c >= start, seq_c < stop)).order_by(seq_c)).all()
            for row in rows:
                yield row.seq, bytes(row.data)
            start = stop
