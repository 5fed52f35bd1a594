"""The soak's own reading of the audit log, straight from the gateway
database (not through a gateway): is every acknowledged query at its
receipt's leaf index, is the log gap-free and duplicate-free, and did any
query id reach the members twice (SPEC §5.4, §12)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import create_engine, text


@dataclass(frozen=True)
class Ack:
    querier_id: str
    query_id: str
    leaf_index: int


def check_log(db_url: str, acked: list[Ack]) -> dict[str, Any]:
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            head = int(conn.execute(text("SELECT size FROM log_head WHERE id = 1")).scalar_one())
            rows = conn.execute(text("SELECT seq, data FROM log_entries ORDER BY seq")).all()
    finally:
        engine.dispose()
    seqs = [int(r.seq) for r in rows]
    entries = {int(r.seq): json.loads(bytes(r.data)) for r in rows}
    gaps = sorted(set(range(head)) - set(seqs))
    duplicates = len(seqs) - len(set(seqs))
    misnumbered = [seq for seq, e in entries.items() if e.get("seq") != seq]
    missing = []
    for ack in acked:
        e = entries.get(ack.leaf_index)
        if (e is None or e.get("kind") != "query" or e.get("query_id") != ack.query_id
                or e.get("querier_id") != ack.querier_id or e.get("outcome") != "accepted"):
            missing.append({"query_id": ack.query_id, "leaf_index": ack.leaf_index})
    uses: dict[str, int] = {}
    replays = 0
    for e in entries.values():
        if e.get("kind") not in ("query", "precheck") or e.get("query_id") is None:
            continue
        if e.get("reason") == "replayed_query_id":
            replays += 1
            if e.get("members_asked"):
                uses[e["query_id"]] = uses.get(e["query_id"], 0) + 2  # a replay that reached the members: always wrong
        elif e.get("members_asked") or e.get("outcome") == "accepted":
            uses[e["query_id"]] = uses.get(e["query_id"], 0) + 1
    twice = sorted(q for q, n in uses.items() if n > 1)
    return {
        "entries": len(rows),
        "head_size": head,
        "gap_free": not gaps and len(rows) == head,
        "gaps": gaps[:10],
        "duplicate_seqs": duplicates,
        "misnumbered": misnumbered[:10],
        "acknowledged": len(acked),
        "acknowledged_found": len(acked) - len(missing),
        "acknowledged_missing": missing[:10],
        "query_ids_fanned_out_twice": twice[:10],
        "replay_refusals": replays,
        "gateway_started": sum(1 for e in entries.values() if e.get("kind") == "gateway_started"),
    }


def log_ok(result: dict[str, Any]) -> list[str]:
    """What is wrong with the log, as verdict lines (empty when nothing)."""
    problems = []
    if not result["gap_free"] or result["duplicate_seqs"] or result["misnumbered"]:
        problems.append(f"log sequence broken: gaps {result['gaps']}, {result['duplicate_seqs']} duplicate(s), "
                        f"misnumbered {result['misnumbered']}")
    if result["acknowledged_found"] != result["acknowledged"]:
        problems.append(f"{result['acknowledged'] - result['acknowledged_found']} acknowledged "
                        f"quer{'y is' if result['acknowledged'] - result['acknowledged_found'] == 1 else 'ies are'} "
                        f"not in the log at its receipt's leaf index (first: {result['acknowledged_missing'][:3]})")
    if result["query_ids_fanned_out_twice"]:
        problems.append(f"query ids that reached the members twice: {result['query_ids_fanned_out_twice']}")
    return problems
