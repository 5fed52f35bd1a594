"""UDS-1 import into the member store (SPEC §2 import semantics), on SQLite
and PostgreSQL: all-or-nothing, --skip-invalid with a reject file, upserts,
duplicate keys in one file, --snapshot, raw IDs never stored, and a crash
midway leaving the store unchanged."""
from __future__ import annotations

import csv
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from alliance import db, identity, matching_key, synthetic, uds1
from alliance.errors import InvalidInput, UsageError
from alliance_member import importer, store

KEY = matching_key.MatchingKey(epoch=1, key=bytes(range(32)))
LOAN_HEADER = list(uds1.FIELDS["loans"])
PERSON = "11010519491231002X"  # GB 11643 example; check character X by hand
OTHER = "440524198001010013"


def loan(loan_id: str, id_number: str = PERSON, **over: str) -> dict[str, str]:
    row = {
        "loan_id": loan_id, "subject_type": "PERSON", "id_type": "RESIDENT_ID", "id_number": id_number,
        "product_type": "CONSUMER", "principal": "10000.00", "balance": "4000.00", "annual_rate": "12.5",
        "term_months": "12", "repayment_method": "EQUAL_INSTALLMENT", "opened_on": "2026-01-10",
        "due_on": "2027-01-10", "status": "ACTIVE", "overdue_days": "0", "overdue_amount": "0",
        "guarantee_type": "NONE", "updated_on": "2026-06-01",
    }
    row.update(over)
    return row


def write_loans(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=LOAN_HEADER)
        w.writeheader()
        w.writerows(rows)
    return path


@pytest.fixture
def engine(db_url):  # type: ignore[no-untyped-def]
    e = db.make_engine(db_url)
    store.create_schema(e)
    yield e
    e.dispose()


def count(engine, table="loans") -> int:  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(store.BOOK_TABLES[table])).scalar_one()


def test_valid_file_is_imported_with_tokens_not_ids(engine, tmp_path) -> None:
    path = write_loans(tmp_path / "loans.csv", [loan("L1"), loan("L2", OTHER, balance="0", status="SETTLED")])
    result = importer.import_file(engine, path, "loans", KEY)
    assert (result.rows_written, result.rows_rejected) == (2, 0)
    with engine.connect() as conn:
        rows = {r.loan_id: r for r in conn.execute(select(store.loans))}
    expected_token = identity.subject_token(KEY.key, "RESIDENT_ID", PERSON)
    assert bytes(rows["L1"].subject_token) == expected_token
    assert rows["L1"].balance_fen == 400_000 and rows["L1"].principal_fen == 1_000_000
    assert rows["L1"].masked_id == "110105********002X"
    with engine.connect() as conn:
        dump = "\n".join(repr(tuple(r)) for r in conn.execute(select(store.loans)))
    assert PERSON not in dump and OTHER not in dump


def test_one_invalid_row_rejects_the_whole_file(engine, tmp_path) -> None:
    importer.import_file(engine, write_loans(tmp_path / "a.csv", [loan("KEEP")]), "loans", KEY)
    bad = write_loans(tmp_path / "b.csv", [loan("L1"), loan("L2", balance="20000.00"), loan("L3", id_number=PERSON[:17] + "1")])
    seen: list[str] = []
    with pytest.raises(InvalidInput, match="2 invalid row"):
        importer.import_file(engine, bad, "loans", KEY, on_error=lambda e: seen.append(str(e)))
    assert any(e.startswith(f"{bad}:3: balance:") for e in seen), seen
    assert any(e.startswith(f"{bad}:4: id_number:") for e in seen), seen
    with engine.connect() as conn:
        assert [r.loan_id for r in conn.execute(select(store.loans.c.loan_id))] == ["KEEP"]


def test_skip_invalid_writes_valid_rows_and_a_reject_file(engine, tmp_path) -> None:
    path = write_loans(tmp_path / "loans.csv", [loan("L1"), loan("L2", term_months="0"), loan("L3")])
    result = importer.import_file(engine, path, "loans", KEY, skip_invalid=True, reject_path=tmp_path / "rej.csv")
    assert (result.rows_written, result.rows_rejected) == (2, 1)
    with (tmp_path / "rej.csv").open() as fh:
        rejects = list(csv.DictReader(fh))
    assert [r["loan_id"] for r in rejects] == ["L2"]
    assert ":3: term_months:" in rejects[0]["reject_reason"]
    assert count(engine) == 2


def test_duplicate_key_makes_the_later_row_invalid_within_and_across_chunks(engine, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(importer, "CHUNK_ROWS", 2)
    rows = [loan("L1"), loan("L2"), loan("L3"), loan("L1", balance="1.00"), loan("L4"), loan("L4")]
    path = write_loans(tmp_path / "loans.csv", rows)
    seen: list[str] = []
    with pytest.raises(InvalidInput):
        importer.import_file(engine, path, "loans", KEY, on_error=lambda e: seen.append(str(e)))
    assert f"{path}:5: loan_id: duplicate key: already given on line 2" in seen
    assert f"{path}:7: loan_id: duplicate key: already given on line 6" in seen
    assert count(engine) == 0


def test_rows_upsert_by_key(engine, tmp_path) -> None:
    importer.import_file(engine, write_loans(tmp_path / "a.csv", [loan("L1"), loan("L2")]), "loans", KEY)
    importer.import_file(engine, write_loans(tmp_path / "b.csv", [loan("L1", balance="123.45")]), "loans", KEY)
    with engine.connect() as conn:
        balances = dict(conn.execute(select(store.loans.c.loan_id, store.loans.c.balance_fen)).all())
    assert balances == {"L1": 12_345, "L2": 400_000}


def test_snapshot_removes_absent_records_and_refuses_skip_invalid(engine, tmp_path) -> None:
    importer.import_file(engine, write_loans(tmp_path / "a.csv", [loan("L1"), loan("L2"), loan("L3")]), "loans", KEY)
    result = importer.import_file(engine, write_loans(tmp_path / "b.csv", [loan("L2")]), "loans", KEY, snapshot=True,
                                  allow_shrink=True)
    assert result.rows_removed == 2
    with engine.connect() as conn:
        assert [r.loan_id for r in conn.execute(select(store.loans.c.loan_id))] == ["L2"]
    with pytest.raises(UsageError):
        importer.import_file(engine, tmp_path / "b.csv", "loans", KEY, snapshot=True, skip_invalid=True)


def _files(folder: Path) -> list[str]:
    """Files in ``folder`` other than the SQLite test database."""
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("test.db"))


def _loan_ids(engine) -> list[str]:  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        return sorted(conn.execute(select(store.loans.c.loan_id)).scalars())


def test_snapshot_guard_on_both_sides_of_20_percent(engine, tmp_path) -> None:
    ten = [f"L{i:02d}" for i in range(10)]
    importer.import_file(engine, write_loans(tmp_path / "all.csv", [loan(i) for i in ten]), "loans", KEY)
    # 3 of 10 = 30 % > 20 %: refused, saying how many, store untouched
    seven = write_loans(tmp_path / "seven.csv", [loan(i) for i in ten[:7]])
    with pytest.raises(InvalidInput, match=r"would remove 3 of 10 loans row\(s\)"):
        importer.import_file(engine, seven, "loans", KEY, snapshot=True)
    assert _loan_ids(engine) == ten
    # an empty file would leave the book empty: refused
    empty = write_loans(tmp_path / "empty.csv", [])
    with pytest.raises(InvalidInput, match="would remove 10 of 10 .*leaving the book empty"):
        importer.import_file(engine, empty, "loans", KEY, snapshot=True)
    assert _loan_ids(engine) == ten
    # 2 of 10 = exactly 20 %: allowed
    result = importer.import_file(engine, write_loans(tmp_path / "eight.csv", [loan(i) for i in ten[:8]]), "loans", KEY,
                                  snapshot=True)
    assert result.rows_removed == 2 and _loan_ids(engine) == ten[:8]
    # 1 of 8 = 12.5 %... then 2 of 7 = 28.6 % needs --allow-shrink
    result = importer.import_file(engine, seven, "loans", KEY, snapshot=True)
    assert result.rows_removed == 1
    five = write_loans(tmp_path / "five.csv", [loan(i) for i in ten[:5]])
    with pytest.raises(InvalidInput, match="would remove 2 of 7"):
        importer.import_file(engine, five, "loans", KEY, snapshot=True)
    result = importer.import_file(engine, five, "loans", KEY, snapshot=True, allow_shrink=True)
    assert result.rows_removed == 2 and _loan_ids(engine) == ten[:5]
    result = importer.import_file(engine, empty, "loans", KEY, snapshot=True, allow_shrink=True)
    assert result.rows_removed == 5 and _loan_ids(engine) == []


def test_dry_run_writes_nothing_and_reports_the_counts_of_the_real_import(engine, tmp_path) -> None:
    importer.import_file(engine, write_loans(tmp_path / "a.csv", [loan("L1"), loan("L2"), loan("L3"), loan("L4"), loan("L5")]),
                         "loans", KEY)
    snap = write_loans(tmp_path / "b.csv", [loan("L1", balance="1.00"), loan("L2"), loan("L3"), loan("L4"), loan("L6")])
    dry = importer.import_file(engine, snap, "loans", KEY, snapshot=True, dry_run=True)
    assert (dry.rows_read, dry.rows_written, dry.rows_rejected, dry.rows_removed) == (5, 5, 0, 1)
    assert not dry.committed and _loan_ids(engine) == ["L1", "L2", "L3", "L4", "L5"]
    with engine.connect() as conn:
        assert conn.execute(select(store.loans.c.balance_fen).where(store.loans.c.loan_id == "L1")).scalar_one() == 400_000
        assert conn.execute(select(func.count()).select_from(store.import_runs)).scalar_one() == 1
    real = importer.import_file(engine, snap, "loans", KEY, snapshot=True)
    assert (real.rows_read, real.rows_written, real.rows_rejected, real.rows_removed) == (5, 5, 0, 1)
    assert _loan_ids(engine) == ["L1", "L2", "L3", "L4", "L6"]
    # with --skip-invalid a dry run writes no reject file either
    bad = write_loans(tmp_path / "bad.csv", [loan("L7"), loan("L8", term_months="0")])
    dry = importer.import_file(engine, bad, "loans", KEY, skip_invalid=True, dry_run=True)
    assert (dry.rows_written, dry.rows_rejected, dry.reject_file) == (1, 1, None)
    assert _files(tmp_path) == ["a.csv", "b.csv", "bad.csv"]


def test_reject_file_rules(engine, tmp_path) -> None:
    path = write_loans(tmp_path / "loans.csv", [loan("L1"), loan("L2", term_months="0")])
    before = path.read_bytes()
    with pytest.raises(UsageError, match="is the input file"):
        importer.import_file(engine, path, "loans", KEY, skip_invalid=True, reject_path=path)
    (tmp_path / "link.csv").symlink_to(path)
    with pytest.raises(UsageError, match="is the input file"):
        importer.import_file(engine, path, "loans", KEY, skip_invalid=True, reject_path=tmp_path / "link.csv")
    with pytest.raises(UsageError, match="does not exist"):
        importer.import_file(engine, path, "loans", KEY, skip_invalid=True, reject_path=tmp_path / "missing" / "rej.csv")
    with pytest.raises(UsageError, match="needs --skip-invalid"):
        importer.import_file(engine, path, "loans", KEY, reject_path=tmp_path / "rej.csv")
    assert path.read_bytes() == before and count(engine) == 0
    assert _files(tmp_path) == ["link.csv", "loans.csv"]
    result = importer.import_file(engine, path, "loans", KEY, skip_invalid=True)
    assert result.reject_file == tmp_path / "loans.rejects.csv"
    assert _files(tmp_path) == ["link.csv", "loans.csv", "loans.rejects.csv"], "no temp file left"
    assert path.read_bytes() == before


def test_reject_file_is_not_left_half_written_when_the_import_fails(engine, tmp_path, monkeypatch) -> None:
    path = write_loans(tmp_path / "loans.csv", [loan("L1", term_months="0"), loan("L2")])
    rej = tmp_path / "rej.csv"
    rej.write_text("previous rejects\n")

    def boom(self):  # type: ignore[no-untyped-def]
        raise RuntimeError("disk gone")

    monkeypatch.setattr(importer._Upserter, "flush", boom)
    with pytest.raises(RuntimeError):
        importer.import_file(engine, path, "loans", KEY, skip_invalid=True, reject_path=rej)
    assert rej.read_text() == "previous rejects\n"
    assert _files(tmp_path) == ["loans.csv", "rej.csv"]


def test_flags_and_scores_upsert_by_subject(engine, tmp_path) -> None:
    flags = tmp_path / "flags.jsonl"
    flags.write_text(
        '{"id_type":"RESIDENT_ID","id_number":"%s","flag_type":"FRAUD","flagged_on":"2026-01-01","status":"ACTIVE"}\n'
        '{"id_type":"RESIDENT_ID","id_number":"%s","flag_type":"FRAUD","flagged_on":"2026-02-01","status":"CLEARED"}\n'
        % (PERSON, PERSON.lower())
    )
    seen: list[str] = []
    with pytest.raises(InvalidInput):
        importer.import_file(engine, flags, "flags", KEY, on_error=lambda e: seen.append(str(e)))
    assert any(":2: flag_type: duplicate key" in e for e in seen), "the lower-case x spelling is the same subject"
    scores = tmp_path / "scores.csv"
    scores.write_text(f"id_type,id_number,score,scored_on\nRESIDENT_ID,{PERSON},700,2026-01-01\n")
    importer.import_file(engine, scores, "scores", KEY)
    scores.write_text(f"scored_on,score,id_number,id_type\n2026-03-01,650,{PERSON[:6]}{PERSON[8:17]},RESIDENT_ID\n")
    importer.import_file(engine, scores, "scores", KEY)
    with engine.connect() as conn:
        assert conn.execute(select(store.scores.c.score)).scalars().all() == [650]


def test_import_killed_midway_leaves_the_store_unchanged(db_url, tmp_path) -> None:
    engine = db.make_engine(db_url)
    store.create_schema(engine)
    importer.import_file(engine, write_loans(tmp_path / "seed.csv", [loan("SEED")]), "loans", KEY)
    big = tmp_path / "big.csv"
    synthetic.write_loans_csv(big, 300_000, seed=3)
    script = (
        "import sys; from pathlib import Path; from alliance import db, matching_key; from alliance_member import importer;"
        "key = matching_key.MatchingKey(epoch=1, key=bytes(range(32)));"
        f"e = db.make_engine({db_url!r});"
        "importer.import_file(e, Path(sys.argv[1]), 'loans', key, on_progress=lambda n: print(n, flush=True))"
    )
    proc = subprocess.Popen([sys.executable, "-c", script, str(big)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    progressed = 0
    deadline = time.monotonic() + 120
    while progressed < 20_000 and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        progressed = int(line)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert progressed >= 20_000, "the import should have been killed midway, not before it started"
    with engine.connect() as conn:
        ids = conn.execute(select(store.loans.c.loan_id)).scalars().all()
    assert ids == ["SEED"]
    engine.dispose()


def test_a_reject_file_that_is_a_device_or_fifo_is_written_into_never_renamed_over(engine, tmp_path) -> None:
    """`--reject-file /dev/null` as root once replaced the device node with a
    plain file (a rename over it). A FIFO stands in for /dev/null here."""
    path = write_loans(tmp_path / "loans.csv", [loan("L1"), loan("L2", term_months="0")])
    fifo = tmp_path / "rejects.pipe"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        result = importer.import_file(engine, path, "loans", KEY, skip_invalid=True, reject_path=fifo)
        assert (result.rows_written, result.rows_rejected) == (1, 1)
        assert stat.S_ISFIFO(os.stat(fifo).st_mode)
        written = os.read(reader, 65536).decode()
    finally:
        os.close(reader)
    assert written.splitlines()[0].startswith("loan_id,") and ":3: term_months:" in written
    assert _files(tmp_path) == ["loans.csv", "rejects.pipe"], "no temp file left"
