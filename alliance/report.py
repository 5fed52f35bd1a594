"""The multi-lending report of SPEC §4: which figures a member contributes,
how they are computed at an as-of date, and how the decrypted alliance-wide
sums become the report a querier reads.

Every figure is a non-negative integer (money in fen) so it fits one 80-bit
Paillier slot; the order of REPORT_FIELDS is the slot order on the wire."""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta

REPORT_FIELDS: tuple[str, ...] = (
    "lenders_with_active_loans",
    "active_loans",
    "outstanding_balance_fen",
    "loans_opened_30d",
    "loans_opened_90d",
    "lenders_with_overdue",
    "overdue_loans",
    "overdue_amount_fen",
    "dpd_1_30",
    "dpd_31_60",
    "dpd_61_90",
    "dpd_91_plus",
    "written_off_loans",
    "written_off_amount_fen",
    "settled_loans",
    "lenders_flagging_fraud",
    "lenders_flagging_malicious_default",
    "scored_lenders",
    "score_sum",
)
FIELD_INDEX = {name: i for i, name in enumerate(REPORT_FIELDS)}

# Figures that count members rather than loans: a summed value can never
# exceed the number of members that answered.
PER_MEMBER_FLAGS = (
    "lenders_with_active_loans",
    "lenders_with_overdue",
    "lenders_flagging_fraud",
    "lenders_flagging_malicious_default",
    "scored_lenders",
)


@dataclass(frozen=True, slots=True)
class LoanFacts:
    status: str
    balance_fen: int
    opened_on: date
    overdue_days: int
    overdue_amount_fen: int


@dataclass(frozen=True, slots=True)
class FlagFacts:
    flag_type: str
    status: str
    flagged_on: date


@dataclass(frozen=True, slots=True)
class ScoreFacts:
    score: int
    scored_on: date


def window_start(as_of: date, days: int) -> date:
    """First day of a window of ``days`` calendar days ending on and including as_of."""
    return as_of - timedelta(days=days - 1)


def member_figures(
    loans: Iterable[LoanFacts],
    flags: Iterable[FlagFacts],
    score: ScoreFacts | None,
    as_of: date,
) -> list[int]:
    """One member's figures for one subject at ``as_of`` (SPEC §4), in slot order.

    Records dated after as_of (loans opened, flags raised, scores given) are
    ignored; otherwise the latest imported values count."""
    f = dict.fromkeys(REPORT_FIELDS, 0)
    start30, start90 = window_start(as_of, 30), window_start(as_of, 90)
    for loan in loans:
        if loan.opened_on > as_of:
            continue
        if start30 <= loan.opened_on:
            f["loans_opened_30d"] += 1
        if start90 <= loan.opened_on:
            f["loans_opened_90d"] += 1
        if loan.status == "ACTIVE":
            f["active_loans"] += 1
            f["outstanding_balance_fen"] += loan.balance_fen
            if loan.overdue_days >= 1:
                f["overdue_loans"] += 1
                f["overdue_amount_fen"] += loan.overdue_amount_fen
                f[_dpd_bucket(loan.overdue_days)] += 1
        elif loan.status == "WRITTEN_OFF":
            f["written_off_loans"] += 1
            f["written_off_amount_fen"] += loan.balance_fen
        elif loan.status == "SETTLED":
            f["settled_loans"] += 1
    f["lenders_with_active_loans"] = int(f["active_loans"] > 0)
    f["lenders_with_overdue"] = int(f["overdue_loans"] > 0)
    for flag in flags:
        if flag.status != "ACTIVE" or flag.flagged_on > as_of:
            continue
        if flag.flag_type == "FRAUD":
            f["lenders_flagging_fraud"] = 1
        elif flag.flag_type == "MALICIOUS_DEFAULT":
            f["lenders_flagging_malicious_default"] = 1
    if score is not None and score.scored_on <= as_of:
        f["scored_lenders"] = 1
        f["score_sum"] = score.score
    return [f[name] for name in REPORT_FIELDS]


def _dpd_bucket(overdue_days: int) -> str:
    if overdue_days <= 30:
        return "dpd_1_30"
    if overdue_days <= 60:
        return "dpd_31_60"
    if overdue_days <= 90:
        return "dpd_61_90"
    return "dpd_91_plus"


def average_score_tenths(score_sum: int, scored_lenders: int) -> int | None:
    """score_sum / scored_lenders in tenths, rounded half-up, in integers only."""
    if scored_lenders == 0:
        return None
    return (score_sum * 20 + scored_lenders) // (2 * scored_lenders)


def check_plausible(sums: Sequence[int], members_summed: int) -> None:
    """Reject decrypted sums that no honest set of members could produce."""
    from alliance.errors import CryptoError

    for name in PER_MEMBER_FLAGS:
        if sums[FIELD_INDEX[name]] > members_summed:
            raise CryptoError(f"report figure {name} exceeds the {members_summed} members summed")


def build_report(sums: Sequence[int], *, inquiries_30d: int) -> dict[str, int | float | None]:
    """The report of SPEC §4 as a JSON-ready dict (integers; average_score a number or null)."""
    if len(sums) != len(REPORT_FIELDS):
        raise ValueError(f"expected {len(REPORT_FIELDS)} figures, got {len(sums)}")
    report: dict[str, int | float | None] = dict(zip(REPORT_FIELDS, sums))
    tenths = average_score_tenths(sums[FIELD_INDEX["score_sum"]], sums[FIELD_INDEX["scored_lenders"]])
    # A float only at the presentation edge: one decimal for people and JSON.
    report["average_score"] = None if tenths is None else tenths / 10
    report["inquiries_30d"] = inquiries_30d
    return report
