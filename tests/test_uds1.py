"""UDS-1 validation (SPEC §2): one test per rule, from a valid base row with one
field changed, checking the field, the reason and the ``file:line:`` prefix."""
from __future__ import annotations

import csv
import itertools
import json
import random
import tracemalloc
from datetime import date
from pathlib import Path

import pytest

from alliance import uds1
from alliance.errors import InvalidInput
from alliance.uds1 import fields as uds1_fields, files as uds1_files, rows as uds1_rows
from alliance.uds1 import FIELDS, FlagRecord, LoanRecord, RowError, ScoreRecord, iter_rows, record_key

TODAY = date(2025, 6, 30)
PERSON_ID = "11010519491231002X"  # check character hand-verified in test_identity.py
ORG_ID = "91350100M000100Y43"

BASE_LOAN = {
    "loan_id": "CL-2024:0001.a_b",
    "subject_type": "PERSON",
    "id_type": "RESIDENT_ID",
    "id_number": PERSON_ID,
    "product_type": "CONSUMER",
    "principal": "10000.00",
    "balance": "5000.50",
    "annual_rate": "7.25",
    "term_months": "12",
    "repayment_method": "EQUAL_INSTALLMENT",
    "opened_on": "2024-01-15",
    "due_on": "2025-01-15",
    "status": "ACTIVE",
    "overdue_days": "45",
    "overdue_amount": "880.10",
    "guarantee_type": "NONE",
    "updated_on": "2024-06-30",
}
BASE_FLAG = {"id_type": "RESIDENT_ID", "id_number": PERSON_ID, "flag_type": "FRAUD", "flagged_on": "2024-03-01",
             "status": "ACTIVE"}
BASE_SCORE = {"id_type": "USCC", "id_number": ORG_ID, "score": "712", "scored_on": "2024-05-20"}
BASES = {"loans": BASE_LOAN, "flags": BASE_FLAG, "scores": BASE_SCORE}


def write_csv(path: Path, rows: list[dict[str, str]], columns: tuple[str, ...] | list[str]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow([row.get(c, "") for c in columns])
    return path


def write_jsonl(path: Path, objects: list[object]) -> Path:
    path.write_text("".join(json.dumps(o, ensure_ascii=False) + "\n" for o in objects), encoding="utf-8")
    return path


def rows_of(path: Path, kind: str) -> list[uds1.RowResult]:
    return list(iter_rows(path, kind, today=TODAY))


def one_row(tmp_path: Path, kind: str, fmt: str = "csv", **changes: str) -> uds1.RowResult:
    row = {**BASES[kind], **changes}
    if fmt == "csv":
        path = write_csv(tmp_path / f"{kind}.csv", [row], FIELDS[kind])
    else:
        path = write_jsonl(tmp_path / f"{kind}.jsonl", [row])
    [result] = rows_of(path, kind)
    return result


def only_error(result: uds1.RowResult, field: str, line: int = 2) -> RowError:
    """The row's single error, which must be about ``field``, with the prefix."""
    assert result.record is None
    assert [e.field for e in result.errors] == [field], [str(e) for e in result.errors]
    error = result.errors[0]
    assert error.line == line
    assert str(error).startswith(f"{error.path}:{line}: {field}: ")
    return error


# --- a valid row of each kind ----------------------------------------------


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_valid_loan_parses_to_integers_and_dates(tmp_path: Path, fmt: str) -> None:
    result = one_row(tmp_path, "loans", fmt)
    assert result.errors == []
    assert result.line == (2 if fmt == "csv" else 1)
    assert result.raw == BASE_LOAN
    assert result.record == LoanRecord(
        loan_id="CL-2024:0001.a_b", subject_type="PERSON", id_type="RESIDENT_ID", canonical_id=PERSON_ID,
        product_type="CONSUMER", principal_fen=1_000_000, balance_fen=500_050, annual_rate_e4=72_500,
        term_months=12, repayment_method="EQUAL_INSTALLMENT", opened_on=date(2024, 1, 15),
        due_on=date(2025, 1, 15), status="ACTIVE", overdue_days=45, overdue_amount_fen=88_010,
        guarantee_type="NONE", updated_on=date(2024, 6, 30),
    )


def test_valid_flag_and_score(tmp_path: Path) -> None:
    assert one_row(tmp_path, "flags").record == FlagRecord("RESIDENT_ID", PERSON_ID, "FRAUD", date(2024, 3, 1),
                                                           "ACTIVE")
    assert one_row(tmp_path, "scores").record == ScoreRecord("USCC", ORG_ID, 712, date(2024, 5, 20))


def test_org_loan(tmp_path: Path) -> None:
    result = one_row(tmp_path, "loans", subject_type="ORG", id_type="USCC", id_number="91350100m000100y43",
                     product_type="BUSINESS")
    assert result.errors == []
    assert result.record is not None and result.record.canonical_id == ORG_ID


def test_records_are_frozen(tmp_path: Path) -> None:
    record = one_row(tmp_path, "loans").record
    with pytest.raises(AttributeError):
        record.balance_fen = 0  # type: ignore[union-attr,misc]
    assert type(record) is LoanRecord and hash(record) == hash(LoanRecord(*[getattr(record, f) for f in
                                                                         LoanRecord.__slots__]))


# --- one test per rule: loans ----------------------------------------------

LOAN_RULES = [
    # (field, bad value, other changes, words the reason must contain)
    ("loan_id", "", {}, "is empty"),
    ("loan_id", "L" * 65, {}, "65 characters long, at most 64"),
    ("loan_id", "L/1", {}, "'/' is not allowed"),
    ("loan_id", "L 1", {}, "' ' is not allowed"),
    ("loan_id", "贷款1", {}, "'贷' is not allowed"),
    ("subject_type", "PEOPLE", {}, "must be one of PERSON, ORG"),
    ("subject_type", "person", {}, "must be upper case: 'PERSON'"),
    ("id_type", "PASSPORT", {}, "must be one of RESIDENT_ID, USCC"),
    ("id_type", "USCC", {"id_number": ORG_ID}, "USCC is for subject_type ORG, but subject_type is PERSON"),
    ("id_number", "110105194912310029", {}, "check character '9' does not match"),
    ("id_number", "110101199002301236", {}, "birth date 19900230 is not a real date"),
    ("id_number", "110101209901011239", {}, "birth date 20990101 is in the future"),
    ("id_number", "11010519491231002", {}, "must be 18 characters (or 15 digits for a legacy resident ID), got 17"),
    ("id_number", "", {}, "is empty"),
    ("product_type", "PAYDAY", {}, "must be one of CONSUMER, BUSINESS, AUTO, EDUCATION, MORTGAGE, OTHER"),
    ("principal", "0.00", {"balance": "0", "overdue_days": "0", "overdue_amount": "0"}, "must be at least 0.01"),
    ("principal", "1000000000000", {}, "must be less than 1000000000000"),
    ("principal", "-100.00", {}, "without a sign"),
    ("principal", "1e4", {}, "no sign, exponent or separators"),
    ("principal", "10,000.00", {}, "no sign, exponent or separators"),
    ("principal", "10000.001", {}, "has 3 decimals, at most 2"),
    ("principal", "", {}, "is empty"),
    ("balance", "10000.01", {}, "10000.01 is more than principal 10000.00"),
    ("balance", "-1", {}, "without a sign"),
    ("balance", "1000.00", {"status": "SETTLED", "overdue_days": "0", "overdue_amount": "0"},
     "must be 0 when status is SETTLED"),
    ("annual_rate", "36.0001", {}, "must be between 0 and 36, got 36.0001"),
    ("annual_rate", "7.12345", {}, "has 5 decimals, at most 4"),
    ("annual_rate", "7%", {}, "a percentage such as 7.25"),
    ("term_months", "0", {}, "must be between 1 and 360, got 0"),
    ("term_months", "361", {}, "must be between 1 and 360, got 361"),
    ("term_months", "12.0", {}, "must be a whole number"),
    ("repayment_method", "BALLOON", {}, "must be one of EQUAL_INSTALLMENT"),
    ("opened_on", "2024/01/15", {}, "must be a date as YYYY-MM-DD, got '2024/01/15'"),
    ("opened_on", "20240115", {}, "must be a date as YYYY-MM-DD"),
    ("opened_on", "2024-1-15", {}, "must be a date as YYYY-MM-DD"),
    ("opened_on", "2024-W03-1", {}, "must be a date as YYYY-MM-DD"),
    ("opened_on", "2023-02-29", {}, "2023-02-29 is not a real date"),
    ("due_on", "2024-01-14", {}, "2024-01-14 is before opened_on 2024-01-15"),
    ("due_on", "2024-13-01", {}, "is not a real date"),
    ("status", "CLOSED", {}, "must be one of ACTIVE, SETTLED, WRITTEN_OFF"),
    ("overdue_days", "-1", {}, "must be a whole number"),
    ("overdue_days", "1.5", {}, "must be a whole number"),
    ("overdue_days", "3", {"status": "WRITTEN_OFF"}, "must be 0 unless status is ACTIVE (status is WRITTEN_OFF)"),
    ("overdue_amount", "5000.51", {}, "5000.51 is more than balance 5000.50"),
    ("overdue_amount", "10.00", {"overdue_days": "0"}, "must be 0 when overdue_days is 0"),
    ("overdue_amount", "0.00", {}, "must be more than 0 when overdue_days is 45"),
    ("overdue_amount", "1.5.0", {}, "an amount in yuan"),
    ("guarantee_type", "PLEDGE", {}, "must be one of NONE, GUARANTOR, COLLATERAL, INSURANCE, MARGIN"),
    ("updated_on", "30/06/2024", {}, "must be a date as YYYY-MM-DD"),
]


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
@pytest.mark.parametrize(("field", "value", "others", "reason"), LOAN_RULES,
                         ids=[f"{r[0]}={r[1]!r}"[:40] for r in LOAN_RULES])
def test_loan_rule(tmp_path: Path, fmt: str, field: str, value: str, others: dict[str, str], reason: str) -> None:
    result = one_row(tmp_path, "loans", fmt, **{**others, field: value})
    error = only_error(result, field, line=2 if fmt == "csv" else 1)
    assert reason in error.reason
    assert error.path == str(tmp_path / f"loans.{fmt}")


def test_settled_loan_with_overdue_days_is_invalid_on_both_counts(tmp_path: Path) -> None:
    result = one_row(tmp_path, "loans", status="SETTLED")
    assert [e.field for e in result.errors] == ["balance", "overdue_days"]


def test_org_with_resident_id_names_the_mismatch(tmp_path: Path) -> None:
    error = only_error(one_row(tmp_path, "loans", subject_type="ORG"), "id_type")
    assert error.reason == "RESIDENT_ID is for subject_type PERSON, but subject_type is ORG"


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"principal": "0.01", "balance": "0.01", "overdue_amount": "0.01"}, (1, 1, 1)),
        ({"principal": "999999999999.99", "balance": "0", "overdue_days": "0", "overdue_amount": "0"},
         (99_999_999_999_999, 0, 0)),
        ({"principal": "10000", "balance": "5000.5", "overdue_amount": "007.1"}, (1_000_000, 500_050, 710)),
    ],
)
def test_amount_edges_are_valid(tmp_path: Path, changes: dict[str, str], expected: tuple[int, int, int]) -> None:
    record = one_row(tmp_path, "loans", **changes).record
    assert record is not None
    assert (record.principal_fen, record.balance_fen, record.overdue_amount_fen) == expected


@pytest.mark.parametrize(("text", "e4"), [("0", 0), ("36", 360_000), ("7.1234", 71_234), ("7.2", 72_000),
                                          ("0.0001", 1)])
def test_rate_edges_are_valid(tmp_path: Path, text: str, e4: int) -> None:
    record = one_row(tmp_path, "loans", annual_rate=text).record
    assert record is not None and record.annual_rate_e4 == e4


@pytest.mark.parametrize("term", ["1", "360", "012"])
def test_term_edges_are_valid(tmp_path: Path, term: str) -> None:
    record = one_row(tmp_path, "loans", term_months=term).record
    assert record is not None and record.term_months == int(term)


def test_settled_and_written_off_loans_are_valid(tmp_path: Path) -> None:
    assert one_row(tmp_path, "loans", status="SETTLED", balance="0", overdue_days="0",
                   overdue_amount="0").errors == []
    assert one_row(tmp_path, "loans", status="WRITTEN_OFF", overdue_days="0", overdue_amount="0").errors == []


def test_every_error_of_a_row_is_reported_in_field_order(tmp_path: Path) -> None:
    result = one_row(tmp_path, "loans", guarantee_type="X", loan_id="", principal="abc", opened_on="2024-02-30")
    assert [e.field for e in result.errors] == ["loan_id", "principal", "opened_on", "guarantee_type"]
    assert result.raw is not None and result.raw["principal"] == "abc"


# --- flags and scores ------------------------------------------------------

FLAG_RULES = [
    ("flag_type", "OVERDUE", "must be one of FRAUD, MALICIOUS_DEFAULT"),
    ("flagged_on", "2024-3-1", "must be a date as YYYY-MM-DD"),
    ("status", "SETTLED", "must be one of ACTIVE, CLEARED"),
    ("id_type", "PASSPORT", "must be one of RESIDENT_ID, USCC"),
    ("id_number", "110105194912310021", "check character '1' does not match"),
]
SCORE_RULES = [
    ("score", "299", "must be between 300 and 900, got 299"),
    ("score", "901", "must be between 300 and 900, got 901"),
    ("score", "700.5", "must be a whole number"),
    ("score", "", "is empty"),
    ("scored_on", "2024-02-30", "is not a real date"),
    ("id_number", "91350100M000100Y4I", "character 'I' is not allowed in a USCC"),
]


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
@pytest.mark.parametrize(("field", "value", "reason"), FLAG_RULES)
def test_flag_rule(tmp_path: Path, fmt: str, field: str, value: str, reason: str) -> None:
    error = only_error(one_row(tmp_path, "flags", fmt, **{field: value}), field, line=2 if fmt == "csv" else 1)
    assert reason in error.reason


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
@pytest.mark.parametrize(("field", "value", "reason"), SCORE_RULES)
def test_score_rule(tmp_path: Path, fmt: str, field: str, value: str, reason: str) -> None:
    error = only_error(one_row(tmp_path, "scores", fmt, **{field: value}), field, line=2 if fmt == "csv" else 1)
    assert reason in error.reason


@pytest.mark.parametrize("score", ["300", "900"])
def test_score_edges_are_valid(tmp_path: Path, score: str) -> None:
    record = one_row(tmp_path, "scores", score=score).record
    assert record is not None and record.score == int(score)


def test_cleared_malicious_default_flag(tmp_path: Path) -> None:
    record = one_row(tmp_path, "flags", flag_type="MALICIOUS_DEFAULT", status="CLEARED").record
    assert record == FlagRecord("RESIDENT_ID", PERSON_ID, "MALICIOUS_DEFAULT", date(2024, 3, 1), "CLEARED")


# --- NFKC and trimming -----------------------------------------------------


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_full_width_and_padded_values_are_normalised(tmp_path: Path, fmt: str) -> None:
    result = one_row(
        tmp_path, "loans", fmt,
        loan_id="\u3000ＣＬ－１\u3000",
        id_number="１１０１０５４９１２３１００２",  # full-width legacy 15-digit number
        principal="１００００.００",
        balance=" 5000.50 ",
        status="ＡＣＴＩＶＥ",
        opened_on="２０２４－０１－１５",
        term_months="\t12\t",
    )
    assert result.errors == []
    record = result.record
    assert record is not None
    assert (record.loan_id, record.canonical_id, record.principal_fen, record.balance_fen, record.status,
            record.opened_on, record.term_months) == ("CL-1", PERSON_ID, 1_000_000, 500_050, "ACTIVE",
                                                      date(2024, 1, 15), 12)
    assert result.raw is not None and result.raw["status"] == "ＡＣＴＩＶＥ"  # raw keeps what the file said


def test_digits_of_other_scripts_are_not_numbers(tmp_path: Path) -> None:
    # U+0661 ARABIC-INDIC DIGIT ONE survives NFKC; int() would accept it.
    error = only_error(one_row(tmp_path, "loans", term_months="\u0661\u0662"), "term_months")
    assert "whole number" in error.reason


def test_superscript_digits_become_digits_under_nfkc(tmp_path: Path) -> None:
    record = one_row(tmp_path, "loans", term_months="1²").record
    assert record is not None and record.term_months == 12


# --- CSV files -------------------------------------------------------------


def test_column_order_is_free(tmp_path: Path) -> None:
    columns = list(reversed(FIELDS["loans"]))
    [result] = rows_of(write_csv(tmp_path / "loans.csv", [BASE_LOAN], columns), "loans")
    assert result.errors == [] and result.record == one_row(tmp_path, "loans").record


def test_header_names_are_normalised(tmp_path: Path) -> None:
    columns = [f" {c} " for c in FIELDS["scores"][:-1]] + ["ｓｃｏｒｅｄ＿ｏｎ"]
    path = tmp_path / "scores.csv"
    with path.open("w", encoding="utf-8", newline="") as handle:
        csv.writer(handle).writerows([columns, list(BASE_SCORE.values())])
    [result] = rows_of(path, "scores")
    assert result.errors == [] and result.raw == BASE_SCORE


def test_unknown_and_missing_columns_reject_the_whole_file(tmp_path: Path) -> None:
    columns = [c for c in FIELDS["loans"] if c != "balance"] + ["borrower_name"]
    path = write_csv(tmp_path / "loans.csv", [BASE_LOAN], columns)
    with pytest.raises(InvalidInput) as info:
        rows_of(path, "loans")
    message = str(info.value)
    assert message.startswith(f"{path}:1: ")
    assert "unknown column(s) 'borrower_name'" in message and "missing column(s) 'balance'" in message


def test_repeated_column_rejects_the_file(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "scores.csv", [BASE_SCORE], list(FIELDS["scores"]) + ["score"])
    with pytest.raises(InvalidInput, match="repeated column\\(s\\) 'score'"):
        rows_of(path, "scores")


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "flags.csv"
    path.write_bytes(b"")
    with pytest.raises(InvalidInput, match="empty; expected a header row"):
        rows_of(path, "flags")


def test_header_only_file_has_no_rows(tmp_path: Path) -> None:
    assert rows_of(write_csv(tmp_path / "flags.csv", [], FIELDS["flags"]), "flags") == []


def test_bom_is_tolerated(tmp_path: Path) -> None:
    path = tmp_path / "scores.csv"
    path.write_bytes(b"\xef\xbb\xbf" + ("id_type,id_number,score,scored_on\nUSCC," + ORG_ID + ",712,2024-05-20\n").encode())
    [result] = rows_of(path, "scores")
    assert result.errors == [] and result.line == 2


def test_line_numbers_are_physical_lines(tmp_path: Path) -> None:
    score = ",".join(BASE_SCORE.values())
    text = (
        "id_type,id_number,score,scored_on\r\n"  # 1
        f"{score}\r\n"  # 2
        "\r\n"  # 3: blank
        ",,,\r\n"  # 4: a spreadsheet's empty row
        f'USCC,"{ORG_ID}\n",712,2024-05-20\r\n'  # 5–6: a quoted value spanning two lines
        f"{score.replace('712', '1000')}\r\n"  # 7
        "USCC,only three\r\n"  # 8
    )
    path = tmp_path / "scores.csv"
    path.write_bytes(text.encode())
    results = rows_of(path, "scores")
    assert [r.line for r in results] == [2, 5, 7, 8]
    assert results[1].errors == []  # the newline is trimmed away
    assert str(results[2].errors[0]).startswith(f"{path}:7: score: must be between 300 and 900")
    assert str(results[3].errors[0]) == f"{path}:8: (row): has 2 values, the header has 4 columns"


def test_malformed_csv_rejects_the_file_naming_the_line(tmp_path: Path) -> None:
    path = tmp_path / "scores.csv"
    path.write_text(f"id_type,id_number,score,scored_on\nUSCC,{ORG_ID},712,2024-05-20\nUSCC,\"unterminated\n")
    results = iter_rows(path, "scores", today=TODAY)
    assert next(results).errors == []
    with pytest.raises(InvalidInput, match=f"^{path}:3: malformed CSV"):
        next(results)


def test_bytes_that_are_not_utf8_are_a_row_error_naming_field_and_line(tmp_path: Path) -> None:
    path = tmp_path / "loans.csv"
    write_csv(path, [BASE_LOAN, {**BASE_LOAN, "loan_id": "GBK", "product_type": "@@"}, BASE_LOAN], FIELDS["loans"])
    path.write_bytes(path.read_bytes().replace(b"@@", "消费".encode("gbk")))
    first, second, third = rows_of(path, "loans")
    assert first.errors == [] and third.errors == []
    error = only_error(second, "product_type", line=3)
    assert "not valid UTF-8 (byte 0xCF)" in error.reason


def test_header_that_is_not_utf8_rejects_the_file(tmp_path: Path) -> None:
    path = tmp_path / "scores.csv"
    path.write_bytes("id_type,id_number,score,评分日期\n".encode("gbk"))
    with pytest.raises(InvalidInput, match="header is not valid UTF-8"):
        rows_of(path, "scores")


def test_absurdly_long_line_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(uds1_files, "MAX_LINE_CHARS", 200)  # where _lines looks it up
    path = write_csv(tmp_path / "scores.csv", [BASE_SCORE, {**BASE_SCORE, "score": "9" * 500}], FIELDS["scores"])
    results = iter_rows(path, "scores", today=TODAY)
    assert next(results).errors == []
    with pytest.raises(InvalidInput, match=":3: line is longer than 200 characters"):
        next(results)


def test_display_name_prefixes_errors(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "scores.csv", [{**BASE_SCORE, "score": "1"}], FIELDS["scores"])
    [result] = iter_rows(path, "scores", today=TODAY, display_name="book/scores.csv")
    assert str(result.errors[0]) == "book/scores.csv:2: score: must be between 300 and 900, got 1"


def test_suffix_is_case_insensitive(tmp_path: Path) -> None:
    [result] = rows_of(write_csv(tmp_path / "SCORES.CSV", [BASE_SCORE], FIELDS["scores"]), "scores")
    assert result.errors == []


@pytest.mark.parametrize("name", ["loans.txt", "loans.json", "loans.xlsx", "loans"])
def test_unsupported_suffix_is_refused_at_once(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text("")
    with pytest.raises(InvalidInput, match="unsupported file type"):
        iter_rows(path, "loans")


def test_unknown_kind_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="unknown UDS-1 kind 'limits'"):
        iter_rows(tmp_path / "x.csv", "limits")
    with pytest.raises(InvalidInput, match="no such file"):
        iter_rows(tmp_path / "absent.csv", "loans")


# --- JSON Lines ------------------------------------------------------------


def test_jsonl_rows_blank_lines_and_ndjson(tmp_path: Path) -> None:
    path = tmp_path / "scores.ndjson"
    path.write_text("\n" + json.dumps(BASE_SCORE) + "\n  \n" + json.dumps(BASE_SCORE) + "\n", encoding="utf-8")
    results = rows_of(path, "scores")
    assert [r.line for r in results] == [2, 4] and all(r.errors == [] for r in results)


def test_jsonl_bom_and_crlf(tmp_path: Path) -> None:
    path = tmp_path / "scores.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(BASE_SCORE).encode() + b"\r\n")
    [result] = rows_of(path, "scores")
    assert result.errors == []


@pytest.mark.parametrize("number", [712, 712.0, 1e3])
def test_jsonl_number_is_refused(tmp_path: Path, number: float) -> None:
    path = write_jsonl(tmp_path / "scores.jsonl", [{**BASE_SCORE, "score": number}])
    [result] = rows_of(path, "scores")
    error = only_error(result, "score", line=1)
    assert error.reason == f'must be a JSON string such as "{number}", not the JSON number {number} (UDS-1: every value is a string)'
    assert "money" not in error.reason, "a score is not money"
    assert result.raw is not None and result.raw["score"] == json.dumps(number)


def test_jsonl_term_months_as_number_gets_the_string_message_not_the_money_one(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "loans.jsonl", [{**BASE_LOAN, "term_months": 12}])
    [result] = rows_of(path, "loans")
    error = only_error(result, "term_months", line=1)
    assert error.reason == 'must be a JSON string such as "12", not the JSON number 12 (UDS-1: every value is a string)'


def test_jsonl_money_as_number_is_refused(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "loans.jsonl", [{**BASE_LOAN, "principal": 10000.0, "balance": 5000.5}])
    [result] = rows_of(path, "loans")
    assert [e.field for e in result.errors] == ["principal", "balance"]
    assert all("floats are not money" in e.reason for e in result.errors)


@pytest.mark.parametrize(("value", "kind"), [(True, "true"), (None, "null"), ({"v": "712"}, "an object"),
                                             (["712"], "an array")])
def test_jsonl_other_non_strings_are_refused(tmp_path: Path, value: object, kind: str) -> None:
    [result] = rows_of(write_jsonl(tmp_path / "scores.jsonl", [{**BASE_SCORE, "score": value}]), "scores")
    assert only_error(result, "score", line=1).reason == f"must be a JSON string, got {kind}"


def test_jsonl_missing_and_unknown_keys_are_row_errors(tmp_path: Path) -> None:
    row = {k: v for k, v in BASE_SCORE.items() if k != "scored_on"} | {"name": "张三"}
    [result] = rows_of(write_jsonl(tmp_path / "scores.jsonl", [row]), "scores")
    assert {(e.field, e.reason) for e in result.errors} == {("name", "is not a UDS-1 field"),
                                                             ("scored_on", "is missing")}


def test_jsonl_repeated_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "scores.jsonl"
    path.write_text(json.dumps(BASE_SCORE)[:-1] + ', "score": "800"}\n', encoding="utf-8")
    [result] = rows_of(path, "scores")
    assert only_error(result, "score", line=1).reason == "appears more than once in the object"


@pytest.mark.parametrize(("line", "reason"), [
    ('["USCC"]', "must be a JSON object, got an array"),
    ('"USCC"', "must be a JSON object, got a string"),
    ("{'id_type': 'USCC'}", "not valid JSON: Expecting property name enclosed in double quotes at column 2"),
    ("id_type,id_number", "not valid JSON: Expecting value at column 1"),
    ('{"id_type": "USCC"} {}', "not valid JSON: Extra data at column 21"),
])
def test_jsonl_line_that_is_not_an_object(tmp_path: Path, line: str, reason: str) -> None:
    path = tmp_path / "scores.jsonl"
    path.write_text(json.dumps(BASE_SCORE) + "\n" + line + "\n", encoding="utf-8")
    first, second = rows_of(path, "scores")
    assert first.errors == []
    assert second.raw is None and second.record is None
    assert [str(e) for e in second.errors] == [f"{path}:2: (row): {reason}"]


def test_jsonl_bytes_that_are_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "flags.jsonl"
    path.write_bytes(json.dumps({**BASE_FLAG, "status": "@@"}).encode().replace(b"@@", b"\xb2\xe2"))
    [result] = rows_of(path, "flags")
    assert "not valid UTF-8 (byte 0xB2)" in only_error(result, "status", line=1).reason


# --- single values and keys ------------------------------------------------


def test_parse_yuan() -> None:
    assert uds1.parse_yuan("1234.56", "amount") == 123_456
    assert uds1.parse_yuan("1234.5", "amount") == 123_450
    assert uds1.parse_yuan("1234", "amount") == 123_400
    assert uds1.parse_yuan("0", "amount") == 0
    for bad in ["1.", ".5", ".50", ".00", "1.234", "+1", "-1", "1e3", "NaN", "1 000", "0x10", "1_000", "1.-5", ""]:
        with pytest.raises(uds1.FieldError) as info:
            uds1.parse_yuan(bad, "--amount")
        assert info.value.field == "--amount" and str(info.value).startswith("--amount: ")
        assert isinstance(info.value, InvalidInput)


@pytest.mark.parametrize(("fast", "decimals"), [(uds1_fields._yuan, 2), (uds1_fields._percent_e4, 4)])
def test_fast_number_paths_agree_with_the_general_parser(fast: object, decimals: int) -> None:
    """The shortcut for the usual spellings must accept exactly what the
    general decimal parser accepts, with the same value."""
    rng = random.Random(decimals)
    samples = ["0.00", "1.00", ".00", "00.00", "1.0", "10", "1.23", "1.2345", "1234.56", "9" * 15 + ".99",
               "9" * 16 + ".99", "1.-5", "-1.00", "+1.00", "1.2.3", "٣.00", "1,00.00"]
    samples += ["".join(rng.choice("0123456789.-+e ,٣") for _ in range(rng.randint(0, 8))) for _ in range(20000)]
    for text in samples:
        try:
            expected: object = uds1_fields._decimal_scaled(text, decimals, "x")
        except ValueError:
            expected = ValueError
        try:
            got: object = fast(text)  # type: ignore[operator]
        except ValueError:
            got = ValueError
        assert got == expected, text


def test_parse_percent_e4_and_date() -> None:
    assert uds1.parse_percent_e4("7.25", "rate") == 72_500
    assert uds1.parse_percent_e4("23.9999", "rate") == 239_999
    with pytest.raises(InvalidInput):
        uds1.parse_percent_e4("7.00001", "rate")
    assert uds1.parse_date("2024-02-29", "as_of") == date(2024, 2, 29)
    with pytest.raises(InvalidInput, match="as_of: 2023-02-29 is not a real date"):
        uds1.parse_date("2023-02-29", "as_of")


def test_record_key() -> None:
    loan = LoanRecord("L1", "PERSON", "RESIDENT_ID", PERSON_ID, "CONSUMER", 1, 0, 0, 1, "BULLET", TODAY, TODAY,
                      "SETTLED", 0, 0, "NONE", TODAY)
    assert record_key(loan) == ("loan", "L1")
    assert record_key(FlagRecord("USCC", ORG_ID, "FRAUD", TODAY, "ACTIVE")) == ("USCC", ORG_ID, "FRAUD")
    assert record_key(ScoreRecord("USCC", ORG_ID, 700, TODAY)) == ("USCC", ORG_ID)


def test_row_error_str() -> None:
    assert str(RowError("a/loans.csv", 7, "balance", "too big")) == "a/loans.csv:7: balance: too big"


def test_fields_are_in_spec_order() -> None:
    assert FIELDS["flags"] == ("id_type", "id_number", "flag_type", "flagged_on", "status")
    assert FIELDS["scores"] == ("id_type", "id_number", "score", "scored_on")
    assert FIELDS["loans"][:4] == ("loan_id", "subject_type", "id_type", "id_number")
    assert [f for f in LoanRecord.__slots__] == [
        "canonical_id" if f == "id_number" else f"{f}_fen" if f in ("principal", "balance", "overdue_amount")
        else "annual_rate_e4" if f == "annual_rate" else f
        for f in FIELDS["loans"]
    ]


# --- fast and careful passes agree ------------------------------------------


def test_results_do_not_depend_on_what_was_seen_before(tmp_path: Path) -> None:
    """Values already seen are looked up, others parsed: forgetting everything
    must not change any result, valid or not."""
    rows = [{**BASE_LOAN, "loan_id": f"L{i}", "opened_on": f"2019-03-{i + 1:02d}", "term_months": str(i + 1),
             "annual_rate": f"{i}.5", "overdue_days": str(i), "overdue_amount": "1.00" if i else "0"}
            for i in range(20)]
    rows += [{**BASE_LOAN, "loan_id": "bad", "term_months": "0", "opened_on": "2019-02-30"}]
    path = write_csv(tmp_path / "loans.csv", rows, FIELDS["loans"])
    warm = rows_of(path, "loans")
    for schema in uds1_rows._SCHEMAS.values():
        for parse in schema.parsers:
            if getattr(parse, "__name__", "") == "parse_and_remember":
                parse.known.clear()  # type: ignore[union-attr]
    cold = rows_of(path, "loans")
    assert cold == warm
    assert sum(1 for r in cold if r.errors) == 1


# --- streaming -------------------------------------------------------------


def test_iter_rows_is_lazy(tmp_path: Path) -> None:
    """Rows come out before the rest of the file is read: the broken end of
    this file is only reached when the iterator gets there."""
    path = tmp_path / "scores.csv"
    lines = ["id_type,id_number,score,scored_on"] + [",".join(BASE_SCORE.values())] * 5000 + ['USCC,"broken']
    path.write_text("\n".join(lines) + "\n")
    results = iter_rows(path, "scores", today=TODAY)
    assert iter(results) is results
    first = list(itertools.islice(results, 3))
    assert [r.line for r in first] == [2, 3, 4]
    with pytest.raises(InvalidInput, match=":5002: malformed CSV"):
        list(results)


def test_the_file_is_opened_only_when_iterated(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "scores.csv", [BASE_SCORE], FIELDS["scores"])
    results = iter_rows(path, "scores", today=TODAY)
    path.write_text(path.read_text() + ",".join(BASE_SCORE.values()) + "\n")
    assert len(list(results)) == 2


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_memory_stays_flat(tmp_path: Path, fmt: str) -> None:
    n = 12_000
    row = {**BASE_LOAN}
    path = tmp_path / f"loans.{fmt}"
    with path.open("w", encoding="utf-8", newline="") as handle:
        if fmt == "csv":
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(FIELDS["loans"])
            writer.writerows([f"L{i}" if f == "loan_id" else row[f] for f in FIELDS["loans"]] for i in range(n))
        else:
            handle.writelines(json.dumps({**row, "loan_id": f"L{i}"}) + "\n" for i in range(n))
    size = path.stat().st_size
    assert size > 1_500_000
    tracemalloc.start()
    try:
        count = sum(1 for r in iter_rows(path, "loans", today=TODAY) if r.record is not None)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == n
    assert peak < 500_000, f"peak {peak} bytes while reading a {size}-byte file"


def test_row_result_shape() -> None:
    result = uds1.RowResult(3, {"a": "b"}, None, [])
    assert (result.line, result.raw, result.record, result.errors) == (3, {"a": "b"}, None, [])


def test_a_jsonl_row_with_an_empty_key_names_it(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Found by the fuzzer: an empty JSON key must be reported by a visible name, not an empty field."""
    from alliance import uds1 as _uds1
    path = tmp_path / "rows.jsonl"
    path.write_text('{"loan_id": "L1", "": "PERSON"}\n', encoding="utf-8")
    errors = [e for row in _uds1.iter_rows(path, "loans") for e in row.errors]
    assert any(e.field == '""' and e.reason == "is not a UDS-1 field" for e in errors)
    assert all(e.field for e in errors)
