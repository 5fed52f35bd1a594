"""UDS-1 records (SPEC §2): the three kinds of file and their columns, the
record each valid row becomes, its upsert key, and the result and errors of
one row."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import NamedTuple, Union

KINDS = ("loans", "flags", "scores")

FIELDS: dict[str, tuple[str, ...]] = {
    "loans": (
        "loan_id", "subject_type", "id_type", "id_number", "product_type", "principal", "balance",
        "annual_rate", "term_months", "repayment_method", "opened_on", "due_on", "status",
        "overdue_days", "overdue_amount", "guarantee_type", "updated_on",
    ),
    "flags": ("id_type", "id_number", "flag_type", "flagged_on", "status"),
    "scores": ("id_type", "id_number", "score", "scored_on"),
}


@dataclass(frozen=True, slots=True)
class LoanRecord:
    loan_id: str
    subject_type: str
    id_type: str
    canonical_id: str
    product_type: str
    principal_fen: int
    balance_fen: int
    annual_rate_e4: int  # percent × 10^4: 7.25 % is 72500
    term_months: int
    repayment_method: str
    opened_on: date
    due_on: date
    status: str
    overdue_days: int
    overdue_amount_fen: int
    guarantee_type: str
    updated_on: date


@dataclass(frozen=True, slots=True)
class FlagRecord:
    id_type: str
    canonical_id: str
    flag_type: str
    flagged_on: date
    status: str


@dataclass(frozen=True, slots=True)
class ScoreRecord:
    id_type: str
    canonical_id: str
    score: int
    scored_on: date


Record = Union[LoanRecord, FlagRecord, ScoreRecord]


@dataclass(frozen=True, slots=True)
class RowError:
    path: str
    line: int
    field: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.field}: {self.reason}"


class RowResult(NamedTuple):
    """One data row: ``raw`` holds the values as written in the file (for a
    reject file), ``record`` is set exactly when ``errors`` is empty. A named
    tuple, not a frozen dataclass: it is built for every row, and a frozen
    dataclass costs about 1 µs more to build."""

    line: int
    raw: dict[str, str] | None
    record: Record | None
    errors: list[RowError]


def record_key(record: Record) -> tuple[str, ...]:
    """The upsert key (SPEC §2): loans by loan_id, flags by subject and flag
    type, scores by subject; subjects by their canonical ID."""
    if isinstance(record, LoanRecord):
        return ("loan", record.loan_id)
    if isinstance(record, FlagRecord):
        return (record.id_type, record.canonical_id, record.flag_type)
    return (record.id_type, record.canonical_id)
