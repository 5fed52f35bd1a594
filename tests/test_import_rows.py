"""The importer's row preparation (member_node/import_rows.py): a large file is
validated in a worker process, a small one in the importer's own. Both must
give exactly the same import (SPEC §2): counts, errors, reject file and stored
rows, including duplicates across chunks, bad files and an interrupted
import; and the stored token and masked ID must be identity's."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from alliance import db, identity, matching_key, uds1
from alliance.errors import InvalidInput
from alliance_member import import_rows, importer, store
from tests.test_import import engine, loan  # noqa: F401 - the fixture and the row builder

KEY = matching_key.MatchingKey(epoch=3, key=bytes(range(100, 132)))
PERSON = "11010519491231002X"  # GB 11643 example; check character X by hand
OTHER = "440524198001010013"
ORG = "91350100M000100Y43"  # GB 32100 example


def mixed_rows() -> list[dict[str, str]]:
    """Valid rows, invalid ones, spellings to canonicalise and duplicates both
    within one chunk and across chunks (CHUNK_ROWS is set to 3)."""
    return [
        loan("L1"),
        loan("L2", OTHER.replace("0013", "0014")),  # bad check character
        loan("L3", "440524 19800101 0013"),
        loan("L4", ORG, subject_type="ORG", id_type="USCC", product_type="BUSINESS"),
        loan("L1", balance="1.00"),  # repeats L1 from an earlier chunk
        loan("L5", principal="１２.３０", balance="  12.30 "),
        loan("L5"),  # repeats L5 in the same chunk
        loan("L6", term_months="0", status="SETTLED"),
        loan("L7", PERSON.lower()),
    ]


def write_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    header = list(uds1.FIELDS["loans"])
    lines = [",".join(header)] + [",".join(row[f] for f in header) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_jsonl(path: Path, rows: list[dict[str, str]]) -> Path:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


def stored(engine: Any, kind: str = "loans") -> list[tuple[Any, ...]]:
    table = store.BOOK_TABLES[kind]
    with engine.connect() as conn:
        rows = conn.execute(select(table).order_by(*table.primary_key.columns)).all()
    return [tuple(bytes(v) if isinstance(v, memoryview) else v for v in row) for row in rows]


def _import(db_url: str, folder: Path, path: Path, worker: bool, monkeypatch: pytest.MonkeyPatch,
            **options: Any) -> tuple[Any, list[str], list[tuple[Any, ...]], str | None]:
    """One import in a fresh database; the run id and import lines are the
    same in both, so stored rows compare exactly."""
    monkeypatch.setattr(import_rows, "WORKER_MIN_BYTES", 0 if worker else 1 << 60)
    monkeypatch.setattr(importer, "CHUNK_ROWS", 3)
    url = db_url if "sqlite" not in db_url else db.sqlite_url(folder / f"{worker}.db")
    engine = db.make_engine(url)
    store.create_schema(engine)
    with engine.begin() as conn:  # start from an empty book (PostgreSQL shares one database per test)
        for table in store.BOOK_TABLES.values():
            conn.execute(table.delete())
        conn.execute(store.import_runs.delete())
    errors: list[str] = []
    (folder / str(worker)).mkdir()
    reject = folder / str(worker) / f"rejects{path.suffix}"
    try:
        result: Any = importer.import_file(engine, path, "loans", KEY, on_error=lambda e: errors.append(str(e)),
                                           reject_path=reject if options.get("skip_invalid") else None, **options)
    except InvalidInput as exc:
        result = str(exc)
    run = list(store.loans.columns).index(store.loans.c.import_run)
    rows = [row[:run] + row[run + 1:] for row in stored(engine)]  # a PostgreSQL sequence is not reset
    engine.dispose()
    rejected = reject.read_text(encoding="utf-8") if reject.exists() else None
    if isinstance(result, importer.ImportResult):
        result.reject_file = None if result.reject_file is None else Path(result.reject_file.name)
    return result, errors, rows, rejected


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
@pytest.mark.parametrize("skip_invalid", [False, True])
def test_worker_and_in_process_imports_are_the_same(db_url, tmp_path, monkeypatch, suffix, skip_invalid) -> None:
    folder = tmp_path / "files"
    folder.mkdir()
    write = write_csv if suffix == ".csv" else write_jsonl
    path = write(folder / f"loans{suffix}", mixed_rows())
    in_process = _import(db_url, folder, path, False, monkeypatch, skip_invalid=skip_invalid)
    in_worker = _import(db_url, folder, path, True, monkeypatch, skip_invalid=skip_invalid)
    if skip_invalid:
        assert in_worker[2] and in_worker[3]  # rows were written and rejects kept
    else:
        assert "4 invalid row(s) out of 9" in str(in_worker[0]) and in_worker[2] == []
    assert str(in_process[0]) == str(in_worker[0])
    assert in_process[1:] == in_worker[1:]
    first = 2 if suffix == ".csv" else 1  # the line of the first row: a CSV file has a header
    assert f"{path}:{first + 4}: loan_id: duplicate key: already given on line {first}" in in_worker[1]
    assert f"{path}:{first + 6}: loan_id: duplicate key: already given on line {first + 5}" in in_worker[1]


def test_worker_reports_a_bad_file_as_the_importer_would(engine, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(import_rows, "WORKER_MIN_BYTES", 0)
    bad_header = tmp_path / "loans.csv"
    bad_header.write_text("loan_id,colour\nL1,red\n")
    with pytest.raises(InvalidInput, match=r"loans\.csv:1: unknown column\(s\) 'colour'"):
        importer.import_file(engine, bad_header, "loans", KEY)
    broken = write_csv(tmp_path / "broken.csv", [loan("L1"), loan("L2")])
    broken.write_text(broken.read_text() + 'L3,"unterminated\n')
    with pytest.raises(InvalidInput, match="malformed CSV"):
        importer.import_file(engine, broken, "loans", KEY)
    assert stored(engine) == []


def _children() -> list[str]:
    pids = []
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        pids += (task / "children").read_text().split()
    return pids


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
def test_interrupted_import_in_worker_mode_leaves_nothing_behind(engine, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(import_rows, "WORKER_MIN_BYTES", 0)
    path = write_csv(tmp_path / "loans.csv", [loan(f"L{i}") for i in range(30_000)])  # more than the pipe holds
    before = _children()

    def interrupt(n: int) -> None:
        if n >= 2000:
            raise KeyboardInterrupt

    try:
        importer.import_file(engine, path, "loans", KEY, on_progress=interrupt)
    except KeyboardInterrupt:
        # Checked while the exception, and with it the importer's frame, is alive.
        assert _children() == before, "the worker process was not ended"
    else:
        pytest.fail("the import was not interrupted")
    assert stored(engine) == []


@pytest.mark.parametrize("worker", [False, True])
def test_stored_token_and_mask_are_identitys(engine, tmp_path, monkeypatch, worker) -> None:
    monkeypatch.setattr(import_rows, "WORKER_MIN_BYTES", 0 if worker else 1 << 60)
    loans = write_csv(tmp_path / "loans.csv", [
        loan("P1", PERSON.lower()), loan("P2", "440524800101001"),  # 15-digit legacy number
        loan("O1", ORG.lower(), subject_type="ORG", id_type="USCC", product_type="BUSINESS"),
    ])
    importer.import_file(engine, loans, "loans", KEY)
    flags = tmp_path / "flags.csv"
    flags.write_text(f"id_type,id_number,flag_type,flagged_on,status\nUSCC,{ORG},FRAUD,2026-02-03,ACTIVE\n")
    importer.import_file(engine, flags, "flags", KEY)
    scores = tmp_path / "scores.csv"
    scores.write_text(f"id_type,id_number,score,scored_on\nRESIDENT_ID,{OTHER},712,2026-03-04\n")
    importer.import_file(engine, scores, "scores", KEY)

    def expected(id_type: str, canonical: str) -> tuple[bytes, str]:
        return identity.subject_token(KEY.key, id_type, canonical), identity.masked_id(canonical)

    with engine.connect() as conn:
        got = {r.loan_id: (bytes(r.subject_token), r.masked_id, r.key_epoch, r.opened_on)
               for r in conn.execute(select(store.loans))}
        flag = conn.execute(select(store.flags)).one()
        score = conn.execute(select(store.scores)).one()
    assert got["P1"][:2] == expected("RESIDENT_ID", PERSON)
    assert got["P2"][:2] == expected("RESIDENT_ID", "440524198001010013")
    assert got["O1"][:2] == expected("USCC", ORG)
    assert {v[2] for v in got.values()} == {3}
    assert str(got["P1"][3]) == "2026-01-10"  # read back as a date by SQLAlchemy on both backends
    assert (bytes(flag.subject_token), flag.masked_id) == expected("USCC", ORG)
    assert str(flag.flagged_on) == "2026-02-03" and flag.key_epoch == 3
    assert (bytes(score.subject_token), score.masked_id, score.score) == (*expected("RESIDENT_ID", OTHER), 712)
    assert str(score.scored_on) == "2026-03-04"


# Money, written out by hand: fen are yuan × 100, exactly.
@pytest.mark.parametrize(("text", "fen"), [
    ("0.01", 1), ("0.10", 10), ("0.1", 10), ("1", 100), ("12.30", 1230), ("12.3", 1230),
    ("999999999999.99", 99_999_999_999_999), ("0", 0), ("0.00", 0), ("007.50", 750),
])
def test_money_parses_to_exact_fen(text: str, fen: int) -> None:
    assert uds1.parse_yuan(text, "balance") == fen


@pytest.mark.parametrize("text", [
    "1e3", "1E3", "1.005", "12.", ".5", "-1.00", "+1.00", "1,000.00", "1 000.00", "12.3O", "", "NaN", "inf",
    "٣.٠٠",  # Arabic-Indic digits are digits to str.isdigit, not to UDS-1
    "1234567890123456.00",
])
def test_money_refuses_what_is_not_plain_yuan(text: str) -> None:
    with pytest.raises(uds1.FieldError):
        uds1.parse_yuan(text, "balance")


def test_money_in_a_row_is_trimmed_and_nfkc_normalised(tmp_path) -> None:
    path = write_csv(tmp_path / "loans.csv", [
        loan("A", principal="１２.３０", balance="  12.30 ", overdue_days="1", overdue_amount="\u300012.30"),
        loan("B", principal="999999999999.99", balance="0.01", overdue_days="1", overdue_amount="0.01"),
        loan("C", principal="1000000000000.00", balance="1e3", overdue_amount="1.005"),
        loan("D", principal="0.00"),
    ])
    results = list(uds1.iter_rows(path, "loans", today=identity.shanghai_today()))
    a, b, c, d = results
    assert a.errors == [] and (a.record.principal_fen, a.record.balance_fen, a.record.overdue_amount_fen) == (
        1230, 1230, 1230)
    assert b.errors == [] and (b.record.principal_fen, b.record.balance_fen) == (99_999_999_999_999, 1)
    assert [e.field for e in c.errors] == ["principal", "balance", "overdue_amount"]
    assert "10^12" in c.errors[0].reason and "1e3" in c.errors[1].reason and "3 decimals" in c.errors[2].reason
    assert [e.field for e in d.errors] == ["principal"] and "at least 0.01" in d.errors[0].reason


def test_raw_of_valid_rows_is_kept_unless_asked_not_to(tmp_path) -> None:
    path = write_csv(tmp_path / "loans.csv", [loan("A"), loan("B", term_months="0")])
    today = identity.shanghai_today()
    kept = list(uds1.iter_rows(path, "loans", today=today))
    lean = list(uds1.iter_rows(path, "loans", today=today, raw_of_valid_rows=False))
    assert kept[0].raw == loan("A") and lean[0].raw is None
    assert kept[1].raw == lean[1].raw == loan("B", term_months="0")
    assert [r.record for r in kept] == [r.record for r in lean]
    assert [r.errors for r in kept] == [r.errors for r in lean]
