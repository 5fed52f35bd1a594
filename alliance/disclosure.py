"""Monthly disclosure figures (SPEC §11): the pure computation from a loan
book, the signed statement's exact bytes, and the checks every party makes
on it (member before signing, gateway before logging, auditor before
reporting). Definitions are in docs/disclosure.md; they are the contract.

A statement is canonical JSON (the audit log's encoding: keys sorted, no
white space, ASCII, integers only):

    {"credential_serial": 7, "figures": {...18 figures...}, "format": "UDS1-disclosure/1",
     "made_at_ms": 1780000000000, "member_id": "ma", "month": "2026-05"}

signed with the member's Ed25519 key behind ``signing.DISCLOSURE``."""
from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from alliance import audit_entry, signing
from alliance.errors import CryptoError, InvalidInput

FORMAT = "UDS1-disclosure/1"
MAX_BODY_BYTES = 4096

COUNT_FIGURES = (
    "cumulative_loans", "cumulative_amount_fen", "new_loans", "new_amount_fen",
    "outstanding_loans", "outstanding_balance_fen", "cumulative_borrowers", "current_borrowers",
    "overdue_loans", "overdue_amount_fen", "overdue_90_loans", "overdue_90_amount_fen",
    "written_off_loans", "written_off_amount_fen",
)
RATE_FIGURES = ("top1_borrower_share_bp", "top10_borrowers_share_bp", "loan_overdue_rate_bp", "amount_overdue_rate_bp")
# The order of SPEC §11, used by every table and the CSV.
FIGURES = (
    "cumulative_loans", "cumulative_amount_fen", "new_loans", "new_amount_fen",
    "outstanding_loans", "outstanding_balance_fen", "cumulative_borrowers", "current_borrowers",
    "top1_borrower_share_bp", "top10_borrowers_share_bp",
    "overdue_loans", "overdue_amount_fen", "overdue_90_loans", "overdue_90_amount_fen",
    "written_off_loans", "written_off_amount_fen", "loan_overdue_rate_bp", "amount_overdue_rate_bp",
)
assert set(FIGURES) == set(COUNT_FIGURES) | set(RATE_FIGURES)

_MONTH_RE = re.compile(r"(\d{4})-(0[1-9]|1[0-2])")
_STATEMENT_KEYS = {"credential_serial", "figures", "format", "made_at_ms", "member_id", "month"}
MAX_FIGURE = 10**18  # far above any real book; keeps every figure inside int64


@dataclass(frozen=True)
class Loan:
    """What the figures need of one loan row (money in fen)."""

    subject_token: bytes
    principal_fen: int
    balance_fen: int
    opened_on: date
    status: str  # ACTIVE | SETTLED | WRITTEN_OFF
    overdue_days: int


def parse_month(text: str) -> tuple[date, date]:
    """``YYYY-MM`` → (first day, last day)."""
    m = _MONTH_RE.fullmatch(text or "")
    if not m:
        raise InvalidInput(f"month must be YYYY-MM, not {text!r}")
    first = date(int(m.group(1)), int(m.group(2)), 1)
    return first, next_month(first) - timedelta(days=1)


def next_month(first: date) -> date:
    return date(first.year + first.month // 12, first.month % 12 + 1, 1)


def previous_month(month: str) -> str:
    first, _ = parse_month(month)
    last_of_prev = first - timedelta(days=1)
    return f"{last_of_prev.year:04d}-{last_of_prev.month:02d}"


def bp(numerator: int, denominator: int) -> int | None:
    """numerator/denominator in basis points, rounded half-up with integers
    only; None for a zero denominator."""
    if denominator == 0:
        return None
    if numerator < 0 or denominator < 0:
        raise ValueError("basis points of negative figures")
    return (2 * numerator * 10_000 + denominator) // (2 * denominator)


def compute(loans: Iterable[Loan], month: str) -> dict[str, int | None]:
    """The 18 figures of SPEC §11 for ``month`` from the book as it stands
    (each loan's latest state), counting loans opened up to the month's last day."""
    first, last = parse_month(month)
    f = {name: 0 for name in COUNT_FIGURES}
    borrowers: set[bytes] = set()
    outstanding_by_borrower: dict[bytes, int] = defaultdict(int)
    for loan in loans:
        if loan.opened_on > last:
            continue
        f["cumulative_loans"] += 1
        f["cumulative_amount_fen"] += loan.principal_fen
        borrowers.add(loan.subject_token)
        if loan.opened_on >= first:
            f["new_loans"] += 1
            f["new_amount_fen"] += loan.principal_fen
        if loan.status == "ACTIVE":
            f["outstanding_loans"] += 1
            f["outstanding_balance_fen"] += loan.balance_fen
            outstanding_by_borrower[loan.subject_token] += loan.balance_fen
            if loan.overdue_days >= 1:
                f["overdue_loans"] += 1
                f["overdue_amount_fen"] += loan.balance_fen
            if loan.overdue_days > 90:
                f["overdue_90_loans"] += 1
                f["overdue_90_amount_fen"] += loan.balance_fen
        elif loan.status == "WRITTEN_OFF":
            f["written_off_loans"] += 1
            f["written_off_amount_fen"] += loan.balance_fen
    f["cumulative_borrowers"] = len(borrowers)
    f["current_borrowers"] = len(outstanding_by_borrower)
    ranked = sorted(outstanding_by_borrower.values(), reverse=True)
    total = f["outstanding_balance_fen"]
    figures: dict[str, int | None] = dict(f)
    figures["top1_borrower_share_bp"] = bp(sum(ranked[:1]), total)
    figures["top10_borrowers_share_bp"] = bp(sum(ranked[:10]), total)
    figures["loan_overdue_rate_bp"] = bp(f["overdue_loans"], f["outstanding_loans"])
    figures["amount_overdue_rate_bp"] = bp(f["overdue_amount_fen"], total)
    return {name: figures[name] for name in FIGURES}


def rates_of(totals: dict[str, int | None]) -> dict[str, int | None]:
    """The two overdue rates recomputed from (summed) counts."""
    return {
        "loan_overdue_rate_bp": bp(totals["overdue_loans"] or 0, totals["outstanding_loans"] or 0),
        "amount_overdue_rate_bp": bp(totals["overdue_amount_fen"] or 0, totals["outstanding_balance_fen"] or 0),
    }


def check_figures(figures: Any) -> dict[str, int | None]:
    """Exactly the 18 figures; counts non-negative integers; rates integers in
    0..10000 or null exactly when their denominator is zero; and the figures
    consistent with one another (every party checks the same things)."""
    if not isinstance(figures, dict) or set(figures) != set(FIGURES):
        missing = sorted(set(FIGURES) - set(figures or {})) if isinstance(figures, dict) else FIGURES
        extra = sorted(set(figures) - set(FIGURES)) if isinstance(figures, dict) else []
        raise InvalidInput(f"disclosure figures must be exactly the {len(FIGURES)} of SPEC §11 (missing {missing}, unknown {extra})")
    for name in COUNT_FIGURES:
        v = figures[name]
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= MAX_FIGURE:
            raise InvalidInput(f"disclosure figure {name} must be an integer 0..{MAX_FIGURE}, not {v!r}")
    for name in RATE_FIGURES:
        v = figures[name]
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 10_000):
            raise InvalidInput(f"disclosure figure {name} must be basis points 0..10000 or null, not {v!r}")
    g = figures
    rules = (
        (g["new_loans"] <= g["cumulative_loans"], "new_loans ≤ cumulative_loans"),
        (g["new_amount_fen"] <= g["cumulative_amount_fen"], "new_amount_fen ≤ cumulative_amount_fen"),
        (g["outstanding_loans"] + g["written_off_loans"] <= g["cumulative_loans"], "outstanding + written-off loans ≤ cumulative"),
        (g["overdue_loans"] <= g["outstanding_loans"], "overdue_loans ≤ outstanding_loans"),
        (g["overdue_90_loans"] <= g["overdue_loans"], "overdue_90_loans ≤ overdue_loans"),
        (g["overdue_amount_fen"] <= g["outstanding_balance_fen"], "overdue_amount_fen ≤ outstanding_balance_fen"),
        (g["overdue_90_amount_fen"] <= g["overdue_amount_fen"], "overdue_90_amount_fen ≤ overdue_amount_fen"),
        (g["current_borrowers"] <= g["cumulative_borrowers"], "current_borrowers ≤ cumulative_borrowers"),
        (g["current_borrowers"] <= g["outstanding_loans"], "current_borrowers ≤ outstanding_loans"),
        (g["cumulative_borrowers"] <= g["cumulative_loans"], "cumulative_borrowers ≤ cumulative_loans"),
    )
    for ok, rule in rules:
        if not ok:
            raise InvalidInput(f"disclosure figures are inconsistent: {rule} does not hold")
    expected = rates_of(g)
    for name, value in expected.items():
        if g[name] != value:
            raise InvalidInput(f"disclosure figure {name} is {g[name]!r}; its counts give {value!r}")
    total = g["outstanding_balance_fen"]
    for name in ("top1_borrower_share_bp", "top10_borrowers_share_bp"):
        if (g[name] is None) != (total == 0):
            raise InvalidInput(f"disclosure figure {name} must be null exactly when the outstanding balance is 0")
    if total and g["top1_borrower_share_bp"] > g["top10_borrowers_share_bp"]:
        raise InvalidInput("top1_borrower_share_bp exceeds top10_borrowers_share_bp")
    return {name: figures[name] for name in FIGURES}


@dataclass(frozen=True)
class Statement:
    member_id: str
    month: str
    credential_serial: int
    made_at_ms: int
    figures: dict[str, int | None]

    def to_json(self) -> dict[str, Any]:
        return {"credential_serial": self.credential_serial, "figures": dict(self.figures), "format": FORMAT,
                "made_at_ms": self.made_at_ms, "member_id": self.member_id, "month": self.month}

    def encode(self) -> bytes:
        return audit_entry.encode(self.to_json())


def parse_statement(body: bytes) -> Statement:
    """The exact bytes of a statement → Statement; refuses anything that is not
    the canonical encoding of a well-formed statement."""
    data = audit_entry.parse_canonical_statement(body, what="disclosure body", keys=_STATEMENT_KEYS, max_bytes=MAX_BODY_BYTES,
                                                 format_=FORMAT, prefix="disclosure",
                                                 canonical_rules="keys sorted, no white space, ASCII, integers")
    if not isinstance(data["month"], str):
        raise InvalidInput("disclosure month must be YYYY-MM")
    parse_month(data["month"])
    for name in ("credential_serial", "made_at_ms"):
        if isinstance(data[name], bool) or not isinstance(data[name], int) or data[name] < 0:
            raise InvalidInput(f"disclosure {name} must be a non-negative integer")
    return Statement(data["member_id"], data["month"], data["credential_serial"], data["made_at_ms"], check_figures(data["figures"]))


def sign(private_key: Any, statement: Statement) -> tuple[bytes, bytes]:
    body = statement.encode()
    return body, signing.sign(private_key, signing.DISCLOSURE, body)


def verify(public_key: bytes, body: bytes, signature: bytes, *, what: str) -> None:
    """Raise CryptoError unless ``signature`` is the key's over ``body``."""
    if len(signature) != signing.ED25519_SIGNATURE_SIZE:
        raise CryptoError(f"{what}: signature must be {signing.ED25519_SIGNATURE_SIZE} bytes")
    signing.verify(public_key, signing.DISCLOSURE, body, signature, what=what)
