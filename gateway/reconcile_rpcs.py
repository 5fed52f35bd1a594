"""Member reconciliation, the gateway's side (SPEC §6.2).

- ``index_asked``: in the transaction that logs a query or precheck, one
  ``asked_index`` row per member the entry lists in ``members_asked``.
- ``log_gateway_started``: every gateway process logs ``gateway_started`` at
  start (time taken under the log's lock), so a member can tell a crash
  between fan-out and commit from an off-the-record query.
- ``ReconcileRPCs.GetQueryProofs``: to an active member, from a leaf index,
  the entries that asked it and the ``gateway_started`` entries, each with its
  inclusion proof against one log-signed checkpoint, paged by count and
  bytes. Never an entry that did not ask the caller: the index selects, and
  every entry is re-read and checked before it is served."""
from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Iterable
from typing import Any

import grpc
from sqlalchemy import Connection, Engine, and_, func, insert, select

from alliance import audit_entry
from alliance.v1 import alliance_pb2 as pb
from alliance_gateway import audit_log, schema

log = logging.getLogger("alliance.gateway")

RESTARTS = "*"  # asked_index key of gateway_started entries; never a member id (pki.MEMBER_ID_RE)
DEFAULT_PAGE_ENTRIES = 256
MAX_PAGE_ENTRIES = 1024
PAGE_BYTES = 1 << 20  # well under gRPC's 4 MB; one entry always fits (≤ 16 KiB + 1 KiB per member asked)
_INDEXED_KEY = "asked_index_from"  # log_meta: entries before this seq were indexed at start-up (backfill)


def index_asked(conn: Connection, seq: int, members_asked: Iterable[str]) -> None:
    """Index one logged query or precheck by the members it asked (inside the
    transaction that appended it, so the index never disagrees with the log)."""
    rows = [{"member_id": m, "seq": seq} for m in sorted(set(members_asked))]
    if rows:
        conn.execute(_INSERT_ASKED, rows)


_INSERT_ASKED = insert(schema.asked_index)  # built once (the query path)


def serves(entry: dict[str, Any], member_id: str) -> bool:
    """May this entry be served to ``member_id`` by GetQueryProofs?"""
    if entry.get("kind") == "gateway_started":
        return True
    asked = entry.get("members_asked")
    return entry.get("kind") in audit_entry.QUERY_KINDS and isinstance(asked, list) and member_id in asked


def log_gateway_started(engine: Engine, *, deadline_ms: int, k_min: int) -> int:
    """Append `gateway_started` for this process; returns its seq. Entries
    logged before the index existed (an older release) are indexed here,
    once, under the log's lock."""
    with engine.begin() as conn:
        seq, _ = audit_log.append(conn, lambda s, when: {
            "v": 2, "kind": "gateway_started", "seq": s, "time": when,
            "pid": os.getpid(), "host": socket.gethostname(), "deadline_ms": deadline_ms, "k_min": k_min})
        _backfill(conn, seq)
        conn.execute(insert(schema.asked_index).values(member_id=RESTARTS, seq=seq))
    log.info("logged gateway_started at entry %d", seq)
    return seq


def _backfill(conn: Connection, upto: int) -> None:
    meta = schema.log_meta.c
    if conn.execute(select(meta.value).where(meta.key == _INDEXED_KEY)).scalar() is not None:
        return
    have = {(r.member_id, r.seq) for r in conn.execute(select(schema.asked_index.c.member_id, schema.asked_index.c.seq)
                                                       .where(schema.asked_index.c.seq < upto))}
    seq_c, data_c = schema.log_entries.c.seq, schema.log_entries.c.data
    start = 0
    while start < upto:
        rows = conn.execute(select(seq_c, data_c).where(and_(seq_c >= start, seq_c < upto)).order_by(seq_c).limit(512)).all()
        if not rows:
            break
        for row in rows:
            entry = json.loads(bytes(row.data))
            if entry.get("kind") == "gateway_started":
                wanted = [RESTARTS]
            elif entry.get("kind") in audit_entry.QUERY_KINDS:
                wanted = [m for m in entry.get("members_asked") or [] if isinstance(m, str)]
            else:
                continue
            fresh = [{"member_id": m, "seq": row.seq} for m in sorted(set(wanted)) if (m, row.seq) not in have]
            if fresh:
                conn.execute(insert(schema.asked_index), fresh)
        start = rows[-1].seq + 1
    conn.execute(insert(schema.log_meta).values(key=_INDEXED_KEY, value=str(upto)))


def query_proofs(engine: Engine, reader: audit_log.LogReader, member_id: str, from_index: int, max_entries: int,
                 *, page_bytes: int = PAGE_BYTES) -> pb.ProvenEntries:
    """One page of GetQueryProofs for ``member_id`` (already authenticated)."""
    size, note = reader.signed_checkpoint()
    limit = min(max_entries or DEFAULT_PAGE_ENTRIES, MAX_PAGE_ENTRIES)
    ix = schema.asked_index.c
    seq_c, data_c = schema.log_entries.c.seq, schema.log_entries.c.data
    with engine.connect() as conn:
        seqs = [r.seq for r in conn.execute(
            select(ix.seq).where(and_(ix.member_id.in_((member_id, RESTARTS)), ix.seq >= from_index, ix.seq < size))
            .group_by(ix.seq).order_by(ix.seq).limit(limit))]
        if seqs:
            lengths = dict(conn.execute(select(seq_c, func.length(data_c)).where(seq_c.in_(seqs))).all())
            chosen, total = [], 0
            for s in seqs:
                if chosen and total + lengths.get(s, 0) > page_bytes:
                    break
                chosen.append(s)
                total += lengths.get(s, 0)
            rows = conn.execute(select(seq_c, data_c).where(seq_c.in_(chosen)).order_by(seq_c)).all()
        else:
            rows = []
    served: list[tuple[int, bytes]] = []
    for row in rows:
        data = bytes(row.data)
        try:
            entry = json.loads(data)
        except ValueError:
            entry = {}
        if not serves(entry, member_id):  # belt and braces: the index must never widen what a member sees
            log.error("asked_index lists entry %d for %s but the entry does not ask it; not served", row.seq, member_id)
            continue
        served.append((row.seq, data))
    proofs = reader.inclusion_proofs([seq for seq, _ in served], size)
    out = [pb.ProvenEntry(index=seq, data=data, inclusion_proof=proof) for (seq, data), proof in zip(served, proofs)]
    return pb.ProvenEntries(checkpoint=note, entries=out)


class ReconcileRPCs:
    """Mixin for GatewayService: the reconciliation RPC (SPEC §6.2)."""

    def GetQueryProofs(self, request: pb.GetQueryProofsRequest, context: grpc.ServicerContext) -> pb.ProvenEntries:
        caller = self._require_active(context, ("member",), "read the entries of queries that asked it")  # type: ignore[attr-defined]
        return query_proofs(self.engine, self.log, caller.member_id, request.from_index, request.max_entries)  # type: ignore[attr-defined]
