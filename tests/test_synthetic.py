"""Synthetic UDS-1 data: valid, deterministic, and covering every shape the
report has to get right (SPEC §4)."""
from __future__ import annotations

import csv
import random
from datetime import date, timedelta
from pathlib import Path

import pytest

from alliance import identity, synthetic, uds1
from alliance.synthetic import Dataset

AS_OF = date(2025, 6, 30)
MEMBERS = ("alpha-bank", "beta_credit", "gamma")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    return synthetic.write_alliance_dataset(tmp_path_factory.mktemp("alliance"), MEMBERS, seed=42, as_of=AS_OF)


def parsed(path: Path, kind: str) -> list[uds1.RowResult]:
    return list(uds1.iter_rows(path, kind, today=AS_OF))


def id_column(path: Path) -> list[str]:
    with path.open(encoding="utf-8", newline="") as handle:
        return [row["id_number"] for row in csv.DictReader(handle)]


def all_loans(dataset: Dataset) -> list[uds1.LoanRecord]:
    return [loan for book in dataset.books.values() for loan in book.loans]


# --- ID numbers ------------------------------------------------------------


def test_generated_resident_ids_are_valid() -> None:
    rng = random.Random(1)
    for _ in range(2000):
        number = synthetic.generate_resident_id(rng)
        assert identity.canonical_id("RESIDENT_ID", number, today=AS_OF) == number
        assert number[:6] in synthetic.REGION_CODES
        assert date(1950, 1, 1) <= date(int(number[6:10]), int(number[10:12]), int(number[12:14])) <= date(2004, 12, 31)


def test_generated_resident_id_with_given_birth_date() -> None:
    number = synthetic.generate_resident_id(random.Random(2), birth=date(1988, 2, 29))
    assert number[6:14] == "19880229"
    assert identity.canonical_id("RESIDENT_ID", number, today=AS_OF) == number


def test_generated_usccs_are_valid_with_a_valid_organisation_code() -> None:
    rng = random.Random(3)
    for _ in range(2000):
        code = synthetic.generate_uscc(rng)
        assert identity.canonical_id("USCC", code) == code
        # GB 11714 organisation code in characters 9–17: weights 3 7 9 10 5 8 4 2,
        # check 11 − Σ mod 11 with 10 → X and 11 → 0 (letters valued A=10 … Z=35).
        body, check = code[8:16], code[16]
        value = 11 - sum(int(c, 36) * w for c, w in zip(body, (3, 7, 9, 10, 5, 8, 4, 2))) % 11
        assert check == {10: "X", 11: "0"}.get(value, str(value))


def test_legacy_15() -> None:
    # 11010519491231002X (hand-checked in test_identity.py) ↔ 110105 491231 002.
    assert synthetic.legacy_15("11010519491231002X") == "110105491231002"
    assert synthetic.legacy_15("110101200401011234") is None


@pytest.mark.parametrize("seed", range(20))
def test_variant_spellings_canonicalise_back(seed: int) -> None:
    rng = random.Random(seed)
    for id_type, number in (("RESIDENT_ID", synthetic.generate_resident_id(rng)), ("USCC", synthetic.generate_uscc(rng))):
        variants = synthetic.variant_spellings(id_type, number)
        assert number not in variants and len(set(variants)) == len(variants)
        for variant in variants:
            assert identity.canonical_id(id_type, variant, today=AS_OF) == number


def test_variant_spellings_of_a_resident_id_with_x() -> None:
    variants = synthetic.variant_spellings("RESIDENT_ID", "11010519491231002X")
    assert "11010519491231002x" in variants
    assert "１１０１０５１９４９１２３１００２Ｘ" in variants
    assert "110105491231002" in variants
    assert any(v != v.strip() for v in variants)


# --- the alliance dataset --------------------------------------------------


def test_every_file_is_valid_and_matches_the_returned_books(dataset: Dataset) -> None:
    for member in MEMBERS:
        book = dataset.books[member]
        for kind, expected in (("loans", book.loans), ("flags", book.flags), ("scores", book.scores)):
            results = parsed(dataset.root / member / f"{kind}.csv", kind)
            assert [str(e) for r in results for e in r.errors] == []
            assert [r.record for r in results] == list(expected)


def test_keys_are_unique_per_member_file(dataset: Dataset) -> None:
    for book in dataset.books.values():
        for records in (book.loans, book.flags, book.scores):
            keys = [uds1.record_key(r) for r in records]
            assert len(keys) == len(set(keys))


def test_subjects_are_listed_with_the_members_holding_them(dataset: Dataset) -> None:
    assert len(dataset.subjects) == 60 + 12
    assert sum(s.id_type == "USCC" for s in dataset.subjects) == 12
    assert len({s.canonical_id for s in dataset.subjects}) == 72
    for subject in dataset.subjects:
        holders = {m for m, book in dataset.books.items()
                   if any(r.canonical_id == subject.canonical_id for r in book.loans)}
        assert holders == set(subject.members)
    assert {len(dataset.shared_by(n)) > 0 for n in (1, 2, 3)} == {True}


def test_every_status_and_every_overdue_bucket(dataset: Dataset) -> None:
    loans = all_loans(dataset)
    assert {loan.status for loan in loans} == {"ACTIVE", "SETTLED", "WRITTEN_OFF"}
    overdue = [loan.overdue_days for loan in loans if loan.status == "ACTIVE" and loan.overdue_days >= 1]
    for low, high in ((1, 30), (31, 60), (61, 90), (91, 10**6)):
        assert any(low <= days <= high for days in overdue), (low, high)
    assert any(loan.subject_type == "ORG" for loan in loans)


def test_loans_opened_inside_the_windows_and_after_as_of(dataset: Dataset) -> None:
    opened = [loan.opened_on for loan in all_loans(dataset)]
    assert any(AS_OF - timedelta(29) <= day <= AS_OF for day in opened)
    assert any(AS_OF - timedelta(89) <= day < AS_OF - timedelta(29) for day in opened)
    assert any(day > AS_OF for day in opened)


def test_flags_of_both_types_active_and_cleared_and_after_as_of(dataset: Dataset) -> None:
    flags = [f for book in dataset.books.values() for f in book.flags]
    active = {(f.flag_type, f.status) for f in flags if f.flagged_on <= AS_OF}
    assert {("FRAUD", "ACTIVE"), ("MALICIOUS_DEFAULT", "ACTIVE"), ("FRAUD", "CLEARED")} <= active
    assert any(f.flagged_on > AS_OF for f in flags)


def test_scores_in_range_some_after_as_of(dataset: Dataset) -> None:
    scores = [s for book in dataset.books.values() for s in book.scores]
    assert all(300 <= s.score <= 900 for s in scores)
    assert any(s.scored_on > AS_OF for s in scores) and any(s.scored_on <= AS_OF for s in scores)
    scored_subjects = {(s.id_type, s.canonical_id) for s in scores}
    assert any(len([s for s in scores if s.canonical_id == cid]) >= 2 for _, cid in scored_subjects)


def test_files_use_variant_spellings(dataset: Dataset) -> None:
    written = [number for member in MEMBERS for kind in uds1.KINDS
               for number in id_column(dataset.root / member / f"{kind}.csv")]
    canonical = {s.canonical_id for s in dataset.subjects}
    assert any(n.endswith("x") for n in written)
    assert any(not n.isascii() for n in written)
    assert any(len(n) == 15 for n in written)
    assert any(n != n.strip() for n in written)
    assert sum(n in canonical for n in written) > len(written) / 2


def test_same_seed_same_files(tmp_path: Path, dataset: Dataset) -> None:
    again = synthetic.write_alliance_dataset(tmp_path, MEMBERS, seed=42, as_of=AS_OF)
    for member in MEMBERS:
        for kind in uds1.KINDS:
            assert (tmp_path / member / f"{kind}.csv").read_bytes() == (
                dataset.root / member / f"{kind}.csv").read_bytes()
    assert again.subjects == dataset.subjects


def test_other_seed_other_data(tmp_path: Path, dataset: Dataset) -> None:
    other = synthetic.write_alliance_dataset(tmp_path, MEMBERS, seed=43, as_of=AS_OF)
    assert other.subjects != dataset.subjects


@pytest.mark.parametrize("members", [("solo",), ("m1", "m2", "m3", "m4", "m5")])
def test_other_member_counts(tmp_path: Path, members: tuple[str, ...]) -> None:
    data = synthetic.write_alliance_dataset(tmp_path, members, seed=5, people=20, orgs=3, as_of=AS_OF)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(members)
    for member in members:
        for kind in uds1.KINDS:
            assert all(r.errors == [] for r in parsed(tmp_path / member / f"{kind}.csv", kind))
    assert max(len(s.members) for s in data.subjects) == min(3, len(members))


def test_unknown_subjects_are_valid_and_unknown(dataset: Dataset) -> None:
    unknown = synthetic.unknown_subjects(random.Random(9), 40)
    known = {s.canonical_id for s in dataset.subjects}
    assert {s.id_type for s in unknown} == {"RESIDENT_ID", "USCC"}
    for subject in unknown:
        assert identity.canonical_id(subject.id_type, subject.canonical_id, today=AS_OF) == subject.canonical_id
        assert subject.canonical_id not in known and subject.members == ()


# --- the benchmark file ----------------------------------------------------


def test_write_loans_csv_rows_are_valid_and_unique(tmp_path: Path) -> None:
    path = tmp_path / "loans.csv"
    synthetic.write_loans_csv(path, 3000, seed=8)
    results = parsed(path, "loans")
    assert len(results) == 3000
    assert [str(e) for r in results for e in r.errors] == []
    records = [r.record for r in results if r.record is not None]
    assert len({r.loan_id for r in records}) == 3000
    assert {r.id_type for r in records} == {"RESIDENT_ID", "USCC"}
    assert {r.status for r in records} == {"ACTIVE", "SETTLED", "WRITTEN_OFF"}
    assert len({r.canonical_id for r in records}) < 3000  # borrowers hold several loans


def test_write_loans_csv_is_deterministic(tmp_path: Path) -> None:
    synthetic.write_loans_csv(tmp_path / "a.csv", 500, seed=8)
    synthetic.write_loans_csv(tmp_path / "b.csv", 500, seed=8)
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()


def test_write_loans_csv_with_no_rows(tmp_path: Path) -> None:
    synthetic.write_loans_csv(tmp_path / "empty.csv", 0, seed=1)
    assert parsed(tmp_path / "empty.csv", "loans") == []
