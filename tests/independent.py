"""An independent re-implementation of what the tests check against: ID
canonicalisation and the SPEC §4 figures, computed straight from the UDS-1
CSV files with the standard library only. Deliberately shares no code with
the product, so a bug there cannot hide by agreeing with itself."""
from __future__ import annotations

import csv
import unicodedata
from collections import defaultdict
from datetime import date, timedelta
from pathlib import Path

WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
CHECK = "10X98765432"


def canonical(id_type: str, raw: str) -> str:
    text = "".join(unicodedata.normalize("NFKC", raw).split()).upper()
    if id_type == "RESIDENT_ID" and len(text) == 15:
        body = text[:6] + "19" + text[6:]
        text = body + CHECK[sum(int(c) * w for c, w in zip(body, WEIGHTS)) % 11]
    return text


def yuan_to_fen(text: str) -> int:
    whole, _, frac = text.strip().partition(".")
    return int(whole) * 100 + int((frac + "00")[:2])


def member_figures(member_dir: Path, id_type: str, canonical_id: str, as_of: date) -> dict[str, int]:
    """SPEC §4 figures of one member for one subject, from its CSV files."""
    f: dict[str, int] = defaultdict(int)
    d30, d90 = as_of - timedelta(days=29), as_of - timedelta(days=89)
    for row in _rows(member_dir / "loans.csv"):
        if row["id_type"].strip() != id_type or canonical(id_type, row["id_number"]) != canonical_id:
            continue
        opened = date.fromisoformat(row["opened_on"].strip())
        if opened > as_of:
            continue
        status = row["status"].strip()
        balance = yuan_to_fen(row["balance"])
        dpd = int(row["overdue_days"])
        f["loans_opened_30d"] += opened >= d30
        f["loans_opened_90d"] += opened >= d90
        if status == "ACTIVE":
            f["active_loans"] += 1
            f["outstanding_balance_fen"] += balance
            if dpd >= 1:
                f["overdue_loans"] += 1
                f["overdue_amount_fen"] += yuan_to_fen(row["overdue_amount"])
                bucket = "dpd_1_30" if dpd <= 30 else "dpd_31_60" if dpd <= 60 else "dpd_61_90" if dpd <= 90 else "dpd_91_plus"
                f[bucket] += 1
        elif status == "WRITTEN_OFF":
            f["written_off_loans"] += 1
            f["written_off_amount_fen"] += balance
        elif status == "SETTLED":
            f["settled_loans"] += 1
    f["lenders_with_active_loans"] = int(f["active_loans"] > 0)
    f["lenders_with_overdue"] = int(f["overdue_loans"] > 0)
    for row in _rows(member_dir / "flags.csv"):
        if row["id_type"].strip() != id_type or canonical(id_type, row["id_number"]) != canonical_id:
            continue
        if row["status"].strip() == "ACTIVE" and date.fromisoformat(row["flagged_on"].strip()) <= as_of:
            key = {"FRAUD": "lenders_flagging_fraud", "MALICIOUS_DEFAULT": "lenders_flagging_malicious_default"}[row["flag_type"].strip()]
            f[key] = 1
    for row in _rows(member_dir / "scores.csv"):
        if row["id_type"].strip() != id_type or canonical(id_type, row["id_number"]) != canonical_id:
            continue
        if date.fromisoformat(row["scored_on"].strip()) <= as_of:
            f["scored_lenders"] = 1
            f["score_sum"] = int(row["score"])
    return f


def expected_report(data_dir: Path, members: list[str], id_type: str, canonical_id: str, as_of: date) -> dict[str, object]:
    total: dict[str, int] = defaultdict(int)
    for m in members:
        for k, v in member_figures(data_dir / m, id_type, canonical_id, as_of).items():
            total[k] += v
    names = [
        "lenders_with_active_loans", "active_loans", "outstanding_balance_fen", "loans_opened_30d", "loans_opened_90d",
        "lenders_with_overdue", "overdue_loans", "overdue_amount_fen", "dpd_1_30", "dpd_31_60", "dpd_61_90", "dpd_91_plus",
        "written_off_loans", "written_off_amount_fen", "settled_loans", "lenders_flagging_fraud",
        "lenders_flagging_malicious_default", "scored_lenders", "score_sum",
    ]
    out: dict[str, object] = {n: total[n] for n in names}
    scored = total["scored_lenders"]
    # Half-up to one decimal, by hand: (2·10·sum + scored) // (2·scored) tenths.
    out["average_score"] = None if scored == 0 else ((20 * total["score_sum"] + scored) // (2 * scored)) / 10
    return out


def active_balance(data_dir: Path, members: list[str], id_type: str, canonical_id: str, as_of: date) -> int:
    total = 0
    for m in members:
        for row in _rows(data_dir / m / "loans.csv"):
            if (row["id_type"].strip() == id_type and canonical(id_type, row["id_number"]) == canonical_id
                    and row["status"].strip() == "ACTIVE" and date.fromisoformat(row["opened_on"].strip()) <= as_of):
                total += yuan_to_fen(row["balance"])
    return total


def _rows(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with path.open(encoding="utf-8-sig", newline="") as fh:
        return [{k: unicodedata.normalize("NFKC", v) for k, v in row.items()} for row in csv.DictReader(fh)]
