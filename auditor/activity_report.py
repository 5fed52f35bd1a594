"""`alliance audit report` (SPEC §7): who queried, why, what was refused,
and unusual days, per member, from a log checked against a signed,
consistent checkpoint; and its CSV form."""
from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable
from datetime import date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from google.protobuf.message import DecodeError

from alliance import audit_entry, protocol
from alliance.errors import UsageError
from alliance.v1 import alliance_pb2 as pb
from alliance_auditor import log_source
from alliance_auditor.log_source import LogSource
from alliance_auditor.state import AuditorState
from alliance_auditor.verify import verified_entries
from alliance_member.home import MemberHome

SHANGHAI = ZoneInfo("Asia/Shanghai")
SPIKE_FACTOR = 3


def report(home: MemberHome | Path | str, date_from: date, date_to: date, member: str | None = None, *,
           client: LogSource | None = None) -> list[dict[str, Any]]:
    """Per member over [date_from, date_to] (Asia/Shanghai days), from a log
    checked against a signed, consistent checkpoint: see :func:`report_rows`."""
    if date_to < date_from:
        raise UsageError(f"--to {date_to} is before --from {date_from}")
    state = AuditorState(home)
    queries: list[dict[str, Any]] = []

    def collect(_seq: int, entry: dict[str, Any]) -> None:
        if entry["kind"] in audit_entry.QUERY_KINDS:
            queries.append({**{k: entry.get(k) for k in ("querier_id", "received_at_ms", "outcome", "reason")},
                            "purpose": query_purpose(entry)})

    with log_source.opened(state.home, client) as source:
        verified_entries(state, source, collect)
    return report_rows(queries, date_from, date_to, member)


UNREADABLE_REQUEST = "unreadable request"


def query_purpose(entry: dict[str, Any]) -> str:
    """The purpose a query entry records; for a request refused before the
    gateway parsed it (wrong role, unknown, suspended or revoked member…) the
    entry's ``purpose`` is null, so it is read from the logged request body.
    A body that does not parse, or was too large to be logged, is
    :data:`UNREADABLE_REQUEST`."""
    purpose = entry.get("purpose")
    if isinstance(purpose, str) and purpose:
        return purpose
    raw = entry.get("request_body")
    if isinstance(raw, str):
        try:
            body = pb.QueryRequestBody.FromString(bytes.fromhex(raw))
        except (ValueError, DecodeError):
            return UNREADABLE_REQUEST
        name = protocol.purpose_name(body.purpose)
        if name in protocol.PURPOSES:
            return name
    return UNREADABLE_REQUEST


def shanghai_date(ms: int) -> date:
    return datetime.fromtimestamp(ms / 1000, tz=SHANGHAI).date()


def report_rows(entries: Iterable[dict[str, Any]], date_from: date, date_to: date, member: str | None = None) -> list[dict[str, Any]]:
    """Pure aggregation over query/precheck entries. Per querying member:
    queries (accepted and refused) by purpose, refusals by reason, quota hits
    (refusals for quota_exceeded), and spike days — days whose volume exceeds
    3× the member's median daily volume, the median taken over the days in
    range on which it queried at all (counting idle days would make any
    activity a spike). An entry without a purpose is counted under the one
    its request body states, or :data:`UNREADABLE_REQUEST`."""
    per_member: dict[str, dict[str, Any]] = {}
    days: dict[str, Counter[date]] = defaultdict(Counter)
    for e in entries:
        querier = e.get("querier_id")
        if not isinstance(querier, str) or not isinstance(e.get("received_at_ms"), int):
            continue
        if member is not None and querier != member:
            continue
        day = shanghai_date(e["received_at_ms"])
        if not date_from <= day <= date_to:
            continue
        row = per_member.setdefault(querier, _empty_row(querier))
        row["queries"] += 1
        row["by_purpose"][query_purpose(e)] += 1
        if e.get("outcome") == "accepted":
            row["accepted"] += 1
        else:
            row["refused"] += 1
            row["refusals"][e.get("reason") or "?"] += 1
            row["quota_hits"] += e.get("reason") == "quota_exceeded"
        days[querier][day] += 1
    if member is not None and member not in per_member:
        per_member[member] = _empty_row(member)
    rows = []
    for member_id in sorted(per_member):
        row = per_member[member_id]
        volumes = days[member_id]
        median = statistics.median(volumes.values()) if volumes else 0
        row["by_purpose"] = dict(sorted(row["by_purpose"].items()))
        row["refusals"] = dict(sorted(row["refusals"].items()))
        row["active_days"] = len(volumes)
        row["median_daily"] = median
        row["spike_days"] = [{"date": d.isoformat(), "queries": n} for d, n in sorted(volumes.items()) if n > SPIKE_FACTOR * median]
        rows.append(row)
    return rows


def _empty_row(member_id: str) -> dict[str, Any]:
    return {"member_id": member_id, "queries": 0, "accepted": 0, "refused": 0, "by_purpose": Counter(),
            "refusals": Counter(), "quota_hits": 0}


CSV_COLUMNS = ("member_id", "queries", "accepted", "refused", *(f"purpose_{p}" for p in protocol.PURPOSES),
               "purpose_other", "quota_hits", "refusals", "active_days", "median_daily", "spike_days")


def csv_row(row: dict[str, Any]) -> dict[str, Any]:
    """One flat CSV record per member; maps as `key=count;key=count`."""
    other = sum(n for p, n in row["by_purpose"].items() if p not in protocol.PURPOSES)
    return {
        "member_id": row["member_id"], "queries": row["queries"], "accepted": row["accepted"], "refused": row["refused"],
        **{f"purpose_{p}": row["by_purpose"].get(p, 0) for p in protocol.PURPOSES}, "purpose_other": other,
        "quota_hits": row["quota_hits"], "refusals": ";".join(f"{k}={v}" for k, v in row["refusals"].items()),
        "active_days": row["active_days"], "median_daily": row["median_daily"],
        "spike_days": ";".join(f"{d['date']}={d['queries']}" for d in row["spike_days"]),
    }


__all__ = ["CSV_COLUMNS", "UNREADABLE_REQUEST", "csv_row", "query_purpose", "report", "report_rows", "shanghai_date"]
