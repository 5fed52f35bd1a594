"""What people see (issue 9): the report's summary line, the screening file
reader, and every command walked with bad arguments and bad files — exit
status per SPEC §7, one line on stderr, no traceback, input files untouched,
no half-made state left behind."""
from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from alliance import report as report_lib
from alliance.errors import InvalidInput
from alliance_cli.output import summary_line
from alliance_member.querier import Subject, screen_rows

PERSON = "11010519491231002X"
OTHER = "440524198001010013"


def blank_report(**over: int) -> dict:
    r = {name: 0 for name in report_lib.REPORT_FIELDS}
    r["average_score"] = None
    r["inquiries_30d"] = 0
    r.update(over)
    return r


# ------------------------------------------------------------------ summary line

def test_summary_line_for_a_subject_with_loans_overdue_and_flags() -> None:
    r = blank_report(lenders_with_active_loans=2, active_loans=5, outstanding_balance_fen=46_951_105,
                     lenders_with_overdue=1, overdue_loans=1, overdue_amount_fen=120_000, dpd_1_30=1,
                     lenders_flagging_fraud=2)
    assert summary_line(r) == ("borrows at 2 other lenders: 5 active loans, ¥469,511.05 outstanding; "
                               "1 loan 1–30 days overdue; flagged for fraud by 2 lenders")


def test_summary_line_for_an_unknown_subject() -> None:
    assert summary_line(blank_report()) == "no record at the other lenders: no loans, nothing overdue, no flags"


def test_summary_line_singular_buckets_write_offs_and_no_active_loans() -> None:
    r = blank_report(lenders_with_active_loans=1, active_loans=1, outstanding_balance_fen=5,
                     overdue_loans=3, dpd_31_60=1, dpd_91_plus=2, written_off_loans=1, written_off_amount_fen=100_000,
                     lenders_flagging_malicious_default=1, inquiries_30d=3)
    assert summary_line(r) == ("borrows at 1 other lender: 1 active loan, ¥0.05 outstanding; "
                               "1 loan 31–60 days overdue, 2 loans 91+ days overdue; 1 loan written off (¥1,000.00); "
                               "flagged for malicious default by 1 lender; 3 loan applications at other lenders in the last 30 days")
    assert summary_line(blank_report(settled_loans=2, loans_opened_90d=2)) == "no active loans at other lenders (2 settled loans)"
    assert summary_line(blank_report(active_loans=2, lenders_with_active_loans=1, outstanding_balance_fen=100)) == (
        "borrows at 1 other lender: 2 active loans, ¥1.00 outstanding; nothing overdue")


# ------------------------------------------------------------------ screening file

def test_screen_rows_checks_the_header_before_anything_is_read(tmp_path: Path) -> None:
    cases = {
        "empty.csv": (b"", "empty file"),
        "noheader.csv": (f"RESIDENT_ID,{PERSON}\n".encode(), "missing column(s) id_type, id_number"),
        "wrong.csv": (f"type,number\nRESIDENT_ID,{PERSON}\n".encode(), "missing column(s) id_type, id_number"),
        "gbkheader.csv": ("证件类型,id_number\n".encode("gbk"), ":1: byte 0x"),
    }
    for name, (body, message) in cases.items():
        path = tmp_path / name
        path.write_bytes(body)
        with pytest.raises(InvalidInput, match=message.replace("(", r"\(").replace(")", r"\)")):
            screen_rows(path)  # raises on the call, not on iteration


def test_screen_rows_report_a_bad_row_by_line_and_go_on(tmp_path: Path) -> None:
    path = tmp_path / "subjects.csv"
    path.write_bytes(b"\xef\xbb\xbfid_number,ID_TYPE\n" + f"{PERSON},RESIDENT_ID\n".encode()
                     + b"123,RESIDENT_ID\n" + "张三\xff,RESIDENT_ID\n".encode("gbk", errors="ignore") + b"\xb7\xa8,RESIDENT_ID\n"
                     + b"\n" + f"{OTHER.lower()},PASSPORT\n".encode() + f"{OTHER},RESIDENT_ID\n".encode())
    rows = list(screen_rows(path))
    assert [r.line for r in rows] == [2, 3, 4, 5, 7, 8]
    assert rows[0].subject == Subject("RESIDENT_ID", PERSON) and rows[0].masked_id == "110105********002X"
    assert isinstance(rows[1].subject, InvalidInput) and str(rows[1].subject).startswith(f"{path}:3: id_number:")
    assert rows[1].masked_id == "***"
    for row in rows[2:4]:
        assert isinstance(row.subject, InvalidInput) and f"{path}:{row.line}: byte 0x" in str(row.subject)
        assert "not UTF-8" in str(row.subject)
    assert isinstance(rows[4].subject, InvalidInput) and str(rows[4].subject).startswith(f"{path}:7: id_type:")
    assert OTHER not in str(rows[4].subject) and OTHER not in rows[4].masked_id
    assert rows[5].subject == Subject("RESIDENT_ID", OTHER)
