"""Portfolio monitoring (SPEC §9): `alliance member monitor` re-screens the
member's own ACTIVE borrowers (or a watchlist) with purpose
`POST_LOAN_MONITORING`, keeps the last report per subject in the member's
database and raises an alert for each change against it.

Rules (each its own alert kind, ``monitor_<rule>``):

- ``more_lenders`` / ``more_active_loans``: either count went up;
- ``balance_up``: outstanding balance up by at least ``balance_up_pct`` per
  cent (default 20) AND at least ``balance_up_min_fen`` (default 50,000
  yuan); both must hold;
- ``new_overdue``: more overdue loans, or more lenders with an overdue loan;
- ``worse_dpd``: the worst days-past-due bucket went up from an already
  overdue one (1–30 < 31–60 < 61–90 < 91+; going from none to overdue is
  ``new_overdue``);
- ``new_write_off``: more written-off loans;
- ``new_fraud_flag`` / ``new_malicious_default_flag``: more lenders flagging.

Only reports over identical member sets are compared (the members whose
figures the report sums; §5.3): when the set differs the new report is
stored without alerting, and the outcome says so. A subject refused
``answer_set_changed`` keeps its earlier report and is retried next run.

What monitoring reveals: each asked member sees the querier and token of
every query, so a run tells every asked member which of its own borrowers
the monitor also lends to. Hence it is off unless the alliance enables it
(``monitoring_enabled``) and the gateway counts it against its own quota.
"""
from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, and_, delete, insert, select

from alliance import identity
from alliance.errors import AllianceError, Refused, Unreachable, UsageError
from alliance_member import alerts, store

log = logging.getLogger("alliance.member.monitor")

PURPOSE = "POST_LOAN_MONITORING"
MONITORING_OFF = "monitoring is off: the alliance has not enabled it (alliance admin policy set monitoring on)"
DPD_BUCKETS = ("dpd_1_30", "dpd_31_60", "dpd_61_90", "dpd_91_plus")
DPD_LABELS = ("not overdue", "1–30 days", "31–60 days", "61–90 days", "91+ days")


# ---------------------------------------------------------------- policy

def monitoring_enabled(client: Any) -> bool:
    """True when the alliance policy the gateway publishes enables
    monitoring; raises Refused (exit 4, reason ``monitoring_off``) when it
    does not. An early, friendly refusal: the gateway enforces the policy
    itself (`monitoring_disabled`) and logs every change of it."""
    policy = client.policy()
    value = policy.get("monitoring") if isinstance(policy, Mapping) else getattr(policy, "monitoring", None)
    if value is True or (isinstance(value, str) and value.lower() == "on"):
        return True
    raise Refused(MONITORING_OFF, reason="monitoring_off")


# ---------------------------------------------------------------- rules

@dataclass(frozen=True)
class Thresholds:
    balance_up_pct: int = 20
    balance_up_min_fen: int = 50_000 * 100


@dataclass(frozen=True)
class Change:
    rule: str
    message: str
    before: Any
    after: Any


def worst_bucket(report: Mapping[str, Any]) -> int:
    """0 when nothing is overdue, else 1..4 for the worst non-empty DPD bucket."""
    worst = 0
    for i, name in enumerate(DPD_BUCKETS, start=1):
        if int(report.get(name, 0)) > 0:
            worst = i
    return worst


def _yuan(fen: int) -> str:
    return f"¥{fen // 100:,}.{fen % 100:02d}"


def changes(before: Mapping[str, Any], after: Mapping[str, Any], thresholds: Thresholds = Thresholds()) -> list[Change]:
    """Every §9 change from ``before`` to ``after`` (two §4 reports over the same members)."""
    out: list[Change] = []

    def up(name: str) -> tuple[int, int] | None:
        b, a = int(before.get(name, 0)), int(after.get(name, 0))
        return (b, a) if a > b else None

    if v := up("lenders_with_active_loans"):
        out.append(Change("more_lenders", f"now borrows at {v[1]} other lender(s) (was {v[0]})", *v))
    if v := up("active_loans"):
        out.append(Change("more_active_loans", f"now has {v[1]} active loan(s) elsewhere (was {v[0]})", *v))
    b, a = int(before.get("outstanding_balance_fen", 0)), int(after.get("outstanding_balance_fen", 0))
    rise = a - b
    if rise >= thresholds.balance_up_min_fen and rise * 100 >= thresholds.balance_up_pct * b:
        pct = "new" if b == 0 else f"+{rise * 100 // b}%"
        out.append(Change("balance_up", f"outstanding balance elsewhere up {_yuan(rise)} ({pct}): {_yuan(b)} → {_yuan(a)}", b, a))
    if (v := up("overdue_loans")) or up("lenders_with_overdue"):
        ob, oa = int(before.get("overdue_loans", 0)), int(after.get("overdue_loans", 0))
        out.append(Change("new_overdue", f"a new overdue loan elsewhere: {oa} overdue loan(s) (was {ob})", ob, oa))
    wb, wa = worst_bucket(before), worst_bucket(after)
    if wb > 0 and wa > wb:
        out.append(Change("worse_dpd", f"worst overdue now {DPD_LABELS[wa]} (was {DPD_LABELS[wb]})", DPD_LABELS[wb], DPD_LABELS[wa]))
    if v := up("written_off_loans"):
        out.append(Change("new_write_off", f"a new write-off elsewhere: {v[1]} written-off loan(s) (was {v[0]})", *v))
    if v := up("lenders_flagging_fraud"):
        out.append(Change("new_fraud_flag", f"flagged for fraud by {v[1]} lender(s) (was {v[0]})", *v))
    if v := up("lenders_flagging_malicious_default"):
        out.append(Change("new_malicious_default_flag", f"flagged for malicious default by {v[1]} lender(s) (was {v[0]})", *v))
    return out


# ---------------------------------------------------------------- subjects

@dataclass(frozen=True)
class Subject:
    """A monitored subject: its token under the current matching key and a
    masked id for staff; never the raw number."""

    token: bytes
    key_epoch: int
    id_type: str
    masked_id: str


def own_borrowers(engine: Engine, key_epoch: int) -> list[Subject]:
    """Distinct subjects with at least one ACTIVE loan in the member's book (current epoch)."""
    l = store.loans.c
    q = (select(l.subject_token, l.id_type, l.masked_id)
         .where(and_(l.status == "ACTIVE", l.key_epoch == key_epoch))
         .group_by(l.subject_token, l.id_type, l.masked_id).order_by(l.masked_id, l.subject_token))
    seen: dict[bytes, Subject] = {}
    with engine.connect() as conn:
        for r in conn.execute(q):
            seen.setdefault(bytes(r.subject_token), Subject(bytes(r.subject_token), key_epoch, r.id_type, r.masked_id))
    return list(seen.values())


def watchlist(path: Path, key: bytes, key_epoch: int) -> tuple[list[Subject], list[tuple[int, str, AllianceError]]]:
    """Subjects of a CSV with the header id_type,id_number; bad rows come back
    as (line, masked id, error) and do not stop the run."""
    from alliance_member.querier import screen_rows

    subjects: dict[bytes, Subject] = {}
    bad: list[tuple[int, str, AllianceError]] = []
    for row in screen_rows(path):
        if isinstance(row.subject, AllianceError):
            bad.append((row.line, row.masked_id, row.subject))
            continue
        token = identity.subject_token(key, row.subject.id_type, row.subject.canonical_id)
        subjects.setdefault(token, Subject(token, key_epoch, row.subject.id_type, row.masked_id))
    return list(subjects.values()), bad


# ---------------------------------------------------------------- the engine

@dataclass
class Outcome:
    """What one run did for one subject. status: ``baseline`` (first report
    kept), ``unchanged``, ``changed`` (alerts raised), ``set_changed`` (the
    answering set differs: stored, not compared), ``kept_earlier`` (refused
    answer_set_changed: earlier report kept, retried next run), ``failed``,
    ``not_run`` (the run stopped before it)."""

    id_type: str
    masked_id: str
    status: str
    message: str = ""
    alerts: list[int] = field(default_factory=list)
    rules: list[str] = field(default_factory=list)
    query_id: str | None = None
    exit_code: int = 0


@dataclass
class StoredReport:
    query_id: str
    answer_set: list[str]
    report: dict[str, Any]
    reported_at_ms: int


def stored_report(engine: Engine, token: bytes, key_epoch: int) -> StoredReport | None:
    m = store.monitor_reports.c
    with engine.connect() as conn:
        r = conn.execute(select(store.monitor_reports).where(and_(m.subject_token == token, m.key_epoch == key_epoch))).first()
    if r is None:
        return None
    return StoredReport(r.query_id, json.loads(r.answer_set), json.loads(r.report), r.reported_at_ms)


def _canon(doc: Any) -> str:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


QueryToken = Callable[[bytes], tuple[dict[str, Any], list[str]]]


class Monitor:
    """One monitoring run over a list of subjects. ``query_token(token)``
    returns (the querier's result: query_id, report, …; the answering set)."""

    def __init__(self, engine: Engine, query_token: QueryToken, *, thresholds: Thresholds = Thresholds(),
                 clock: Callable[[], float] = time.time, as_of: date | None = None) -> None:
        self.engine = engine
        self.as_of = as_of
        self.query_token = query_token
        self.thresholds = thresholds
        self.clock = clock

    def run(self, subjects: Iterable[Subject]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        stopped: AllianceError | None = None
        for subject in subjects:
            if stopped is not None:
                outcomes.append(Outcome(subject.id_type, subject.masked_id, "not_run", f"run stopped: {stopped}",
                                        exit_code=stopped.exit_code))
                continue
            try:
                outcomes.append(self.check(subject))
            except (Refused, Unreachable) as exc:
                if isinstance(exc, Unreachable) and exc.reason == "answer_set_changed":
                    outcomes.append(Outcome(subject.id_type, subject.masked_id, "kept_earlier",
                                            f"refused answer_set_changed: earlier report kept, retried next run ({exc})"))
                    continue
                outcomes.append(Outcome(subject.id_type, subject.masked_id, "failed", str(exc), exit_code=exc.exit_code))
                if isinstance(exc, Refused) or exc.reason == "unreachable":
                    stopped = exc  # quota, policy, suspension or an outage: the same for every subject
            except AllianceError as exc:  # this subject's report did not verify, too few answers, …
                outcomes.append(Outcome(subject.id_type, subject.masked_id, "failed", str(exc), exit_code=exc.exit_code))
        return outcomes

    def check(self, subject: Subject) -> Outcome:
        result, answer_set = self.query_token(subject.token)
        report = dict(result["report"])
        query_id = str(result["query_id"])
        now_ms = int(self.clock() * 1000)
        earlier = stored_report(self.engine, subject.token, subject.key_epoch)
        self._store(subject, query_id, answer_set, report, now_ms)
        out = Outcome(subject.id_type, subject.masked_id, "unchanged", query_id=query_id)
        if earlier is None:
            out.status, out.message = "baseline", "first report kept; later runs compare against it"
            return out
        if sorted(earlier.answer_set) != sorted(answer_set):
            out.status = "set_changed"
            out.message = (f"answer set changed ({', '.join(sorted(earlier.answer_set))} → {', '.join(sorted(answer_set))}): "
                           "new report stored, not compared")
            return out
        found = changes(earlier.report, report, self.thresholds)
        for change in found:
            out.alerts.append(alerts.raise_alert(
                self.engine, f"monitor_{change.rule}",
                f"{subject.id_type} {subject.masked_id}: {change.message}",
                {"masked_id": subject.masked_id, "id_type": subject.id_type, "rule": change.rule,
                 "before": change.before, "after": change.after, "query_id": query_id,
                 "previous_query_id": earlier.query_id},
                now_ms=now_ms,
            ))
            out.rules.append(change.rule)
        if found:
            out.status, out.message = "changed", "; ".join(c.message for c in found)
        return out

    def _store(self, subject: Subject, query_id: str, answer_set: list[str], report: dict[str, Any],
               now_ms: int) -> None:
        from alliance_member.querier import today_shanghai

        m = store.monitor_reports.c
        with self.engine.begin() as conn:
            conn.execute(delete(store.monitor_reports).where(and_(m.subject_token == subject.token, m.key_epoch == subject.key_epoch)))
            conn.execute(insert(store.monitor_reports).values(
                subject_token=subject.token, key_epoch=subject.key_epoch, masked_id=subject.masked_id, id_type=subject.id_type,
                query_id=query_id, as_of=self.as_of or today_shanghai(),
                answer_set=_canon(sorted(answer_set)), report=_canon(report), reported_at_ms=now_ms,
            ))


def summary(outcomes: list[Outcome]) -> dict[str, int]:
    counts = {s: 0 for s in ("baseline", "unchanged", "changed", "set_changed", "kept_earlier", "failed", "not_run")}
    for o in outcomes:
        counts[o.status] = counts.get(o.status, 0) + 1
    counts["subjects"] = len(outcomes)
    counts["alerts"] = sum(len(o.alerts) for o in outcomes)
    return counts


def outcome_json(o: Outcome) -> dict[str, Any]:
    return asdict(o)


_DURATION = re.compile(r"^\s*(\d+)\s*([smhd])\s*$")


def parse_every(text: str) -> float:
    """``90s``, ``30m``, ``24h``, ``1d`` → seconds."""
    m = _DURATION.match(text or "")
    if not m:
        raise UsageError(f"--every must be a number with s, m, h or d (e.g. 24h), not {text!r}")
    seconds = int(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
    if seconds < 1:
        raise UsageError("--every must be at least 1s")
    return float(seconds)


def run_once(querier: Any, *, consent: Any, watchlist_path: Path | None = None, thresholds: Thresholds = Thresholds(),
             as_of: date | None = None) -> list[Outcome]:
    """One run with a Querier: its own ACTIVE borrowers (or the watchlist),
    queried by token with purpose POST_LOAN_MONITORING."""
    engine = querier.engine()
    key = querier.matching_key
    bad: list[tuple[int, str, AllianceError]] = []
    if watchlist_path is not None:
        subjects, bad = watchlist(watchlist_path, key.key, key.epoch)
    else:
        subjects = own_borrowers(engine, key.epoch)
    monitor = Monitor(engine, lambda token: querier.query_token(token, purpose=PURPOSE, consent=consent, as_of=as_of),
                      thresholds=thresholds, as_of=as_of)
    outcomes = [Outcome("", masked, "failed", str(exc), exit_code=exc.exit_code) for _, masked, exc in bad]
    return outcomes + monitor.run(subjects)
