"""What the gateway knows about one query, and the audit entry it becomes
(docs/audit-log.md). v2 entries are bounded before anything is logged: a
field over its size bound is replaced by its length and SHA-256 (SPEC §5.4)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from alliance import log_rules, protocol, signing
from alliance.v1 import alliance_pb2 as pb
from alliance_gateway.refusals import QueryFailure


@dataclass
class QueryContext:
    """Everything known about one query so far; becomes its audit entry."""

    kind: str
    peer_id: str
    query: pb.SignedQuery
    received_ms: int
    body: pb.QueryRequestBody | None = None
    asked: list[str] = field(default_factory=list)
    receipts: list[pb.AnswerReceipt] = field(default_factory=list)
    dropped: list[dict[str, str]] = field(default_factory=list)
    inquiries_30d: int = 0
    version: int = 1
    rules: dict[str, Any] | None = None
    oversized: list[dict[str, Any]] = field(default_factory=list)
    answer_set: list[str] | None = None
    querier_book: dict[str, Any] | None = None  # SPEC §10: the book status and policy the querier was judged by


_Context = QueryContext  # the name tests and tools/bench_audit.py know

# field, attribute, shortest and longest length allowed (signature and token are exact)
_BOUNDS = (("request_body", "body", 0, log_rules.MAX_BODY_BYTES),
           ("request_signature", "signature", log_rules.SIGNATURE_BYTES, log_rules.SIGNATURE_BYTES),
           ("subject_token", "subject_token", log_rules.TOKEN_BYTES, log_rules.TOKEN_BYTES))


def oversized_fields(query: pb.SignedQuery) -> list[dict[str, Any]]:
    """SPEC §5.4: each field outside its bound, as {field, length, sha256}."""
    out = []
    for name, attr, shortest, longest in _BOUNDS:
        value = getattr(query, attr)
        if not shortest <= len(value) <= longest:
            out.append({"field": name, "length": len(value), "sha256": signing.sha256(value).hex()})
    return out


def check_bounds(ctx: QueryContext) -> None:
    ctx.oversized = oversized_fields(ctx.query)
    if ctx.oversized:
        what = ", ".join(f"{o['field']} of {o['length']} bytes" for o in ctx.oversized)
        raise QueryFailure("malformed_request", f"request over its size bounds ({what}; body ≤ {log_rules.MAX_BODY_BYTES}, "
                                                f"signature {log_rules.SIGNATURE_BYTES}, token {log_rules.TOKEN_BYTES} bytes)")


def _logged_hex(ctx: QueryContext, name: str, value: bytes) -> str | None:
    if any(o["field"] == name for o in ctx.oversized):
        return None
    return value.hex()


def query_entry(ctx: QueryContext, seq: int, when: str, outcome: str, failure: QueryFailure | None, k_min: int) -> dict[str, Any]:
    body = ctx.body
    entry: dict[str, Any] = {
        "v": ctx.version,
        "kind": ctx.kind,
        "seq": seq,
        "time": when,
        "received_at_ms": ctx.received_ms,
        "querier_id": ctx.peer_id,
        "request_body": _logged_hex(ctx, "request_body", ctx.query.body),
        "request_signature": _logged_hex(ctx, "request_signature", ctx.query.signature),
        "query_id": body.query_id if body else None,
        "subject_token_sha256": body.subject_token_sha256.hex() if body else None,
        "purpose": protocol.purpose_name(body.purpose) if body else None,
        "consent_id": body.consent_id if body else None,
        "consent_sha256": body.consent_sha256.hex() if body else None,
        "members_asked": list(ctx.asked),
        "members_answered": [r.member_id for r in ctx.receipts],
        "answers": [_answer(r) for r in ctx.receipts],
        "dropped": [{"member_id": d["member_id"], "reason": d["reason"][: log_rules.MAX_DROP_REASON_CHARS]} for d in ctx.dropped],
        "k_min": k_min,
        "inquiries_30d": ctx.inquiries_30d,
        "outcome": outcome,
        "reason": failure.reason if failure else None,
        "detail": str(failure)[: log_rules.MAX_DETAIL_CHARS] if failure else None,
    }
    if ctx.version >= 2:
        entry["rules"] = dict(ctx.rules or {})
        entry["oversized"] = list(ctx.oversized)
        entry["answer_set"] = list(ctx.answer_set) if ctx.answer_set is not None else None
        if ctx.querier_book is not None:
            entry["querier_book"] = dict(ctx.querier_book)
    return entry


def _answer(r: pb.AnswerReceipt) -> dict[str, Any]:
    a = {"member_id": r.member_id, "ciphertext_sha256": r.ciphertext_sha256.hex(), "signature": r.signature.hex()}
    if r.book_status:  # SPEC §10: the member's book status, covered by its answer signature
        a["book_status"] = r.book_status.hex()
    return a


_query_entry = query_entry
