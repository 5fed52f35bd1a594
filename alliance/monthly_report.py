"""The monthly alliance operations report (SPEC §11), built from the audit log
alone: pure functions over decoded entries in log order.

Every disclosure entry is checked as it is replayed, and one that fails
refuses the whole report (VerificationFailed naming the entry): its body is a
well-formed statement whose member, month and serial match the entry; the
member held that credential (CA-signed, from the log's `credential_issued`
entries) and was active when the entry was logged; the signature verifies
with that credential's Ed25519 key. Per member and month, the latest valid
disclosure in log order supersedes earlier ones (all stay in the log and are
listed). Figures are never averaged: alliance rates are recomputed from the
summed counts. docs/disclosure.md documents fields and formatting."""
from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from typing import Any
from zoneinfo import ZoneInfo

from cryptography import x509

from alliance import disclosure, pki, protocol
from alliance.errors import AllianceError, CryptoError, VerificationFailed

SHANGHAI = ZoneInfo("Asia/Shanghai")
TREND_MONTHS = 12
TITLE = "Monthly alliance operations report"
SUMMED = disclosure.COUNT_FIGURES  # summed across members
NOT_AGGREGABLE = ("top1_borrower_share_bp", "top10_borrowers_share_bp")  # need the borrowers themselves: null in totals


def time_ms(text: str) -> int:
    dt = datetime.strptime(text[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc)
    return int(dt.timestamp()) * 1000 + int(text[20:23])


def shanghai_text(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=SHANGHAI).strftime("%Y-%m-%d %H:%M")


def month_bounds_ms(month: str) -> tuple[int, int]:
    """[start, end) of the month in Asia/Shanghai, Unix ms."""
    first, _ = disclosure.parse_month(month)
    nxt = disclosure.next_month(first)
    start = datetime(first.year, first.month, 1, tzinfo=SHANGHAI)
    end = datetime(nxt.year, nxt.month, 1, tzinfo=SHANGHAI)
    return int(start.timestamp() * 1000), int(end.timestamp() * 1000)


@dataclass
class _Member:
    member_id: str
    name: str
    role: str
    credentials: list[tuple[int, int, bytes]] = field(default_factory=list)  # (time ms, serial, ed25519)
    status: list[tuple[int, str]] = field(default_factory=list)

    def status_at(self, ms: int) -> str | None:
        now = None
        for when, status in self.status:
            if when >= ms:
                break
            now = status
        return now


@dataclass
class Disclosed:
    seq: int
    time: str
    statement: disclosure.Statement
    superseded: list[int] = field(default_factory=list)


class Collector:
    """Feed it every entry in log order (``add``); then ``build``."""

    def __init__(self, ca_cert: x509.Certificate, month: str) -> None:
        disclosure.parse_month(month)
        self.ca_cert = ca_cert
        self.month = month
        self.members: dict[str, _Member] = {}
        self.disclosures: dict[str, dict[str, Disclosed]] = defaultdict(dict)  # month -> member -> latest
        self.activity: dict[str, dict[str, Any]] = {}
        self.start_ms, self.end_ms = month_bounds_ms(month)
        self.checked = 0

    def add(self, seq: int, e: dict[str, Any]) -> None:
        kind = e.get("kind")
        if kind == "credential_issued":
            self._credential(seq, e)
        elif kind in ("member_suspended", "member_resumed", "member_revoked"):
            m = self.members.get(e.get("member_id"))  # type: ignore[arg-type]
            if m is not None:
                m.status.append((time_ms(e["time"]), {"member_suspended": "suspended", "member_resumed": "active",
                                                      "member_revoked": "revoked"}[kind]))
        elif kind == "disclosure":
            self._disclosure(seq, e)
        elif kind in ("query", "precheck"):
            self._query(e)

    def _credential(self, seq: int, e: dict[str, Any]) -> None:
        when = time_ms(e["time"])
        try:
            from alliance.v1 import alliance_pb2 as pb

            body = pki.verify_credential(pb.Credential.FromString(bytes.fromhex(e["credential"])), self.ca_cert, now=when // 1000)
        except Exception:  # noqa: BLE001 - an invalid credential gives no key; `audit verify` names it
            return
        m = self.members.get(body.member_id)
        if m is None:
            m = self.members[body.member_id] = _Member(body.member_id, body.name, pki.role_name(body.role))
        m.name, m.role = body.name, pki.role_name(body.role)
        m.credentials.append((when, body.serial, bytes(body.ed25519_public_key)))
        m.status.append((when, "active"))

    def _disclosure(self, seq: int, e: dict[str, Any]) -> None:
        def bad(why: str) -> VerificationFailed:
            return VerificationFailed(f"entry {seq}: disclosure of {e.get('member_id')!r} for {e.get('month')!r}: {why}", entry=seq)

        try:
            body, signature = bytes.fromhex(e["body"]), bytes.fromhex(e["signature"])
            st = disclosure.parse_statement(body)
        except (KeyError, TypeError, ValueError, AllianceError) as exc:
            raise bad(f"malformed ({exc})") from None
        if (st.member_id, st.month, st.credential_serial) != (e.get("member_id"), e.get("month"), e.get("credential_serial")):
            raise bad("the entry's member, month or serial differ from the signed statement's")
        member = self.members.get(st.member_id)
        when = time_ms(e["time"])
        if member is None or member.role != "member" or not member.credentials:
            raise bad("no member credential for it earlier in the log")
        if member.status_at(when + 1) != "active":
            raise bad(f"the member was {member.status_at(when + 1)} when it was logged")
        _, serial, key = member.credentials[-1]  # the credential of the time
        if serial != st.credential_serial:
            raise bad(f"signed under credential serial {st.credential_serial}; the member's credential then was {serial}")
        try:
            disclosure.verify(key, body, signature, what="signature")
        except CryptoError as exc:
            raise bad(f"{exc} with the member's key (credential serial {serial})") from None
        self.checked += 1
        month = self.disclosures[st.month]
        earlier = month.get(st.member_id)
        month[st.member_id] = Disclosed(seq, e["time"], st, (earlier.superseded + [earlier.seq]) if earlier else [])

    def _query(self, e: dict[str, Any]) -> None:
        received = e.get("received_at_ms")
        querier = e.get("querier_id")
        if not isinstance(received, int) or not isinstance(querier, str) or not self.start_ms <= received < self.end_ms:
            return
        a = self.activity.setdefault(querier, _empty_activity(querier))
        if e.get("outcome") == "accepted":
            if e["kind"] == "precheck":
                a["prechecks_accepted"] += 1
            else:
                a["queries_by_purpose"][e.get("purpose") or "UNPARSED"] = a["queries_by_purpose"].get(e.get("purpose") or "UNPARSED", 0) + 1
                a["queries_accepted"] += 1
        else:
            reason = e.get("reason") or "unknown"
            a["refused"] += 1
            a["refusals_by_reason"][reason] = a["refusals_by_reason"].get(reason, 0) + 1
            a["quota_hits"] += reason == "quota_exceeded"

    # -- the report -----------------------------------------------------------

    def expected_members(self) -> list[str]:
        """Members (role member) active at the month's end, by the log."""
        return sorted(m.member_id for m in self.members.values() if m.role == "member" and m.status_at(self.end_ms) == "active")

    def build(self, *, generated_at_ms: int, log: dict[str, Any]) -> dict[str, Any]:
        month, prev = self.month, disclosure.previous_month(self.month)
        current, previous = self.disclosures.get(month, {}), self.disclosures.get(prev, {})
        rows = []
        for member_id in sorted(current):
            d = current[member_id]
            before = previous.get(member_id)
            rows.append({
                "member_id": member_id, "name": self.members[member_id].name,
                "entry": d.seq, "disclosed_at": d.time, "disclosed_at_shanghai": shanghai_text(time_ms(d.time)),
                "made_at_ms": d.statement.made_at_ms, "credential_serial": d.statement.credential_serial,
                "superseded_entries": list(d.superseded), "figures": dict(d.statement.figures),
                "change": change(d.statement.figures, before.statement.figures if before else None),
            })
        totals = totals_of([d.statement.figures for d in current.values()])
        prev_totals = totals_of([d.statement.figures for d in previous.values()])
        activity_ids = sorted(set(self.activity) | set(self.expected_members()))
        activity = []
        for member_id in activity_ids:
            a = self.activity.get(member_id) or _empty_activity(member_id)
            a = {**a, "queries_by_purpose": {p: a["queries_by_purpose"].get(p, 0) for p in
                                             (*protocol.PURPOSES, *sorted(set(a["queries_by_purpose"]) - set(protocol.PURPOSES)))},
                 "refusals_by_reason": dict(sorted(a["refusals_by_reason"].items()))}
            activity.append(a)
        trend = []
        for m in trend_months(month):
            t = totals_of([d.statement.figures for d in self.disclosures.get(m, {}).values()])
            trend.append({"month": m, "members_disclosed": len(self.disclosures.get(m, {})),
                          **{k: (t[k] if t else None) for k in ("outstanding_balance_fen", "overdue_amount_fen", "outstanding_loans",
                                                                 "overdue_loans", "loan_overdue_rate_bp", "amount_overdue_rate_bp")}})
        return {
            "title": TITLE, "month": month, "previous_month": prev,
            "generated_at": datetime.fromtimestamp(generated_at_ms / 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "generated_at_shanghai": shanghai_text(generated_at_ms),
            "log": log, "disclosures_checked": self.checked,
            "figures": list(disclosure.FIGURES),
            "members": rows, "members_disclosed": len(rows),
            "members_expected": len(self.expected_members()),
            "not_disclosed": [m for m in self.expected_members() if m not in current],
            "totals": totals, "previous_totals": prev_totals, "totals_change": change(totals, prev_totals) if totals else None,
            "activity": activity, "trend": trend,
        }


def _empty_activity(member_id: str) -> dict[str, Any]:
    return {"member_id": member_id, "queries_accepted": 0, "queries_by_purpose": {}, "prechecks_accepted": 0, "refused": 0,
            "refusals_by_reason": {}, "quota_hits": 0}


def trend_months(month: str) -> list[str]:
    months = [month]
    while len(months) < TREND_MONTHS:
        months.append(disclosure.previous_month(months[-1]))
    return months[::-1]


def totals_of(figure_sets: list[dict[str, int | None]]) -> dict[str, int | None] | None:
    """Sums of the counts and amounts; overdue rates recomputed from the sums
    (never averaged); top-borrower shares null (not derivable from members'
    figures). None when nobody disclosed."""
    if not figure_sets:
        return None
    totals: dict[str, int | None] = {k: sum(f[k] or 0 for f in figure_sets) for k in SUMMED}
    totals.update({k: None for k in NOT_AGGREGABLE})
    totals.update(disclosure.rates_of(totals))
    return {k: totals[k] for k in disclosure.FIGURES}


def change(now: dict[str, int | None] | None, before: dict[str, int | None] | None) -> dict[str, int | None] | None:
    """Figure by figure: now − before (basis points for rates); null where either is null."""
    if now is None or before is None:
        return None
    return {k: (None if now[k] is None or before[k] is None else now[k] - before[k]) for k in disclosure.FIGURES}  # type: ignore[operator]


def build(entries: Iterable[tuple[int, dict[str, Any]]], ca_cert: x509.Certificate, month: str, *,
          generated_at_ms: int, log: dict[str, Any]) -> dict[str, Any]:
    c = Collector(ca_cert, month)
    for seq, e in entries:
        c.add(seq, e)
    return c.build(generated_at_ms=generated_at_ms, log=log)


def today_shanghai() -> date:
    return datetime.now(tz=SHANGHAI).date()
