"""Realistic synthetic UDS-1 data for ``alliance demo``, benchmarks and
end-to-end tests.

Everything written here is valid UDS-1 (tests/test_synthetic.py parses it all
back with uds1.iter_rows), and it is shaped to exercise what the report must
get right: borrowers shared by one, two or three members, every status and
every days-past-due bucket, active and cleared flags, loans opened inside the
30- and 90-day windows, records dated after the as-of date, and ID numbers
written in the spellings members really send (lower-case x, full-width
digits, spaces, 15-digit legacy numbers). Generation is deterministic in the
seed, so a failing end-to-end test can be replayed.
"""
from __future__ import annotations

import calendar
import csv
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import date, timedelta
from pathlib import Path

from alliance import identity, uds1
from alliance.uds1 import FlagRecord, LoanRecord, ScoreRecord

# County-level administrative codes (GB/T 2260). Subjects of a dataset come
# from the first list, unknown_subjects() from the second, so an "unknown"
# subject can never collide with a known one.
REGION_CODES = (
    "110105", "110108", "310104", "310115", "440305", "440106", "330106", "320102",
    "510107", "420106", "350102", "610113", "120101", "500103", "370202", "210102",
)
UNKNOWN_REGION_CODES = (
    "130102", "140105", "150102", "220102", "230103", "340102", "360102", "410105",
    "430102", "450103", "460105", "520102", "530102", "620102", "630102", "650102",
)
BIRTH_RANGE = (date(1950, 1, 1), date(2004, 12, 31))

_ORG_CODE_WEIGHTS = (3, 7, 9, 10, 5, 8, 4, 2)
_ORG_CODE_CHARS = "0123456789" * 3 + "ABCDEFGHJKLMNPQRTUWXY"  # mostly digits, as issued
_FULL_WIDTH = {c: c + 0xFEE0 for c in range(0x21, 0x7F)}
_DEFAULT_BENCH_AS_OF = date(2025, 6, 30)

# Days-past-due scenarios the report buckets (SPEC §4), and the other shapes
# every dataset must contain at least once.
_OVERDUE_BUCKETS = {"dpd_1_30": (1, 30), "dpd_31_60": (31, 60), "dpd_61_90": (61, 90), "dpd_91_plus": (91, 720)}
_FORCED_SCENARIOS = (*_OVERDUE_BUCKETS, "settled", "written_off", "opened_30d", "opened_90d", "after_as_of")
_RANDOM_SCENARIOS = (
    ("current", 50), ("settled", 18), ("written_off", 4), ("opened_30d", 5), ("opened_90d", 5),
    ("after_as_of", 3), ("dpd_1_30", 6), ("dpd_31_60", 3), ("dpd_61_90", 3), ("dpd_91_plus", 3),
)

# product: (principal range in yuan, terms in months, repayment methods, annual rate range in %, guarantees)
_PRODUCTS = {
    "CONSUMER": ((1_000, 50_000), (3, 6, 12, 24, 36), ("EQUAL_INSTALLMENT", "REVOLVING"), (7.2, 23.9),
                 ("NONE", "NONE", "INSURANCE")),
    "AUTO": ((50_000, 300_000), (12, 24, 36, 48, 60), ("EQUAL_INSTALLMENT", "EQUAL_PRINCIPAL"), (3.9, 12.0),
             ("COLLATERAL",)),
    "EDUCATION": ((5_000, 80_000), (12, 24, 36, 48), ("EQUAL_INSTALLMENT", "INTEREST_FIRST"), (4.0, 12.0),
                  ("NONE", "GUARANTOR")),
    "MORTGAGE": ((300_000, 2_000_000), (120, 240, 300, 360), ("EQUAL_INSTALLMENT", "EQUAL_PRINCIPAL"), (3.1, 4.9),
                 ("COLLATERAL",)),
    "OTHER": ((1_000, 100_000), (6, 12, 24), ("EQUAL_INSTALLMENT", "BULLET"), (6.0, 24.0), ("NONE", "GUARANTOR")),
    "BUSINESS": ((100_000, 3_000_000), (6, 12, 24, 36), ("INTEREST_FIRST", "BULLET", "EQUAL_INSTALLMENT"),
                 (3.5, 15.0), ("COLLATERAL", "GUARANTOR", "MARGIN", "INSURANCE")),
}
_PERSON_PRODUCTS = ("CONSUMER",) * 6 + ("AUTO", "AUTO", "EDUCATION", "MORTGAGE", "OTHER")
_ORG_PRODUCTS = ("BUSINESS",) * 5 + ("OTHER",)


@dataclass(frozen=True)
class Subject:
    id_type: str
    canonical_id: str
    members: tuple[str, ...] = ()  # members holding any record about it

    @property
    def subject_type(self) -> str:
        return identity.SUBJECT_TYPE_FOR_ID_TYPE[self.id_type]


@dataclass(frozen=True)
class MemberBook:
    """What one member's files hold, as the records uds1 parses them into, so
    tests can compute expected report figures independently of the product."""

    loans: tuple[LoanRecord, ...]
    flags: tuple[FlagRecord, ...]
    scores: tuple[ScoreRecord, ...]


@dataclass(frozen=True)
class Dataset:
    root: Path
    as_of: date
    members: tuple[str, ...]
    subjects: tuple[Subject, ...]
    books: dict[str, MemberBook]

    def shared_by(self, count: int) -> list[Subject]:
        """Subjects held by exactly ``count`` members."""
        return [s for s in self.subjects if len(s.members) == count]


# --- ID numbers ------------------------------------------------------------


def generate_resident_id(rng: random.Random, *, birth: date | None = None, region: str | None = None) -> str:
    """A valid GB 11643 number: region code, birth date (1950–2004 unless
    given), 3-digit sequence, check character."""
    if birth is None:
        birth = date.fromordinal(rng.randint(BIRTH_RANGE[0].toordinal(), BIRTH_RANGE[1].toordinal()))
    first17 = f"{region or rng.choice(REGION_CODES)}{birth:%Y%m%d}{rng.randint(1, 999):03d}"
    return first17 + identity.resident_id_check_char(first17)


def generate_uscc(rng: random.Random, *, region: str | None = None) -> str:
    """A valid GB 32100 code laid out as issued: registration authority 9
    (market regulation), category, region, 9-character organisation code with
    its own GB 11714 check character, USCC check character."""
    body = "".join(rng.choice(_ORG_CODE_CHARS) for _ in range(8))
    first17 = f"9{rng.choice('123')}{region or rng.choice(REGION_CODES)}{body}{_org_code_check(body)}"
    return first17 + identity.uscc_check_char(first17)


def _org_code_check(body: str) -> str:
    """GB 11714 check character of an 8-character organisation code body."""
    total = sum(int(c, 36) * w for c, w in zip(body, _ORG_CODE_WEIGHTS))
    value = 11 - total % 11
    return {10: "X", 11: "0"}.get(value, str(value))


def legacy_15(canonical18: str) -> str | None:
    """The 15-digit form of a resident ID born in 19xx, else None (15-digit
    numbers only ever carried a two-digit year of the 1900s)."""
    if len(canonical18) == 18 and canonical18[6:8] == "19":
        return canonical18[:6] + canonical18[8:17]
    return None


def variant_spellings(id_type: str, canonical: str) -> list[str]:
    """Other spellings that identity.canonical_id maps back to ``canonical``:
    lower case (when it has a letter), full-width, padded, grouped with spaces,
    and the 15-digit legacy form when there is one."""
    variants = []
    if canonical.lower() != canonical:
        variants.append(canonical.lower())
    variants.append(canonical.translate(_FULL_WIDTH))
    variants.append(f"  {canonical} ")
    if id_type == "RESIDENT_ID":
        variants.append(f"{canonical[:6]} {canonical[6:14]} {canonical[14:]}")
        legacy = legacy_15(canonical)
        if legacy:
            variants.append(legacy)
    else:
        variants.append(f"{canonical[:2]} {canonical[2:8]} {canonical[8:17]} {canonical[17]}")
    return variants


def unknown_subjects(rng: random.Random, n: int) -> list[Subject]:
    """Valid subjects that no dataset from write_alliance_dataset contains
    (their region codes are never used there), alternating person and org."""
    return [
        Subject("RESIDENT_ID", generate_resident_id(rng, region=rng.choice(UNKNOWN_REGION_CODES)))
        if i % 2 == 0
        else Subject("USCC", generate_uscc(rng, region=rng.choice(UNKNOWN_REGION_CODES)))
        for i in range(n)
    ]


# --- a whole alliance ------------------------------------------------------


def write_alliance_dataset(out_dir: Path, member_ids: Sequence[str], *, seed: int, people: int = 60,
                           orgs: int = 12, as_of: date, book_date: date | None = None) -> Dataset:
    """Write ``out_dir/<member>/{loans,flags,scores}.csv`` for each member and
    return what was written. The first persons carry the scenarios every
    dataset must contain (each DPD bucket, settled, written off, the 30/90-day
    windows, after as-of; with fewer than 9 persons organisations take the
    rest); person 0 has a check character X and a 19xx birth date, is held by
    up to three members and is written in every variant spelling.

    ``book_date``: the day the books were exported (SPEC §10 freshness):
    every ACTIVE loan opened by then was updated that day, as a lender's
    daily export refreshes balances and overdue days, so each member's book
    date is ``book_date``. None leaves each loan's own last-update date
    (on or before ``as_of``; a loan opened after it, on its opening day)."""
    if not member_ids:
        raise ValueError("write_alliance_dataset needs at least one member")
    rng = random.Random(seed)
    subjects = _distinct_subjects(rng, people, orgs)
    holders = _holders(rng, len(subjects), list(member_ids))
    books: dict[str, tuple[list[LoanRecord], list[FlagRecord], list[ScoreRecord]]] = {
        m: ([], [], []) for m in member_ids
    }
    forced = list(_FORCED_SCENARIOS)
    for index, (id_type, canonical) in enumerate(subjects):
        for member in holders[index]:
            loans, flags, scores = books[member]
            for number in range(3 if index == 0 else rng.choice((1, 1, 2, 3))):
                first = number == 0 and member == holders[index][0]
                scenario = forced.pop(0) if forced and first else _weighted(rng, _RANDOM_SCENARIOS)
                loan_id = f"LN-{member_ids.index(member)}-{len(loans) + 1:06d}"
                loans.append(_loan(rng, loan_id, id_type, canonical, scenario, as_of))
            flag = _FORCED_FLAGS[index] if index < len(_FORCED_FLAGS) else _random_flag(rng)
            if flag:
                flags.append(_flag(rng, id_type, canonical, as_of, *flag))
            if index < 2 or rng.random() < 0.7:
                scores.append(_score(rng, id_type, canonical, as_of, after_as_of=index == 1))
    if book_date is not None:
        for loans, _, _ in books.values():
            loans[:] = [replace(r, updated_on=book_date) if r.status == "ACTIVE" and r.opened_on <= book_date else r
                        for r in loans]
    for member in member_ids:
        _write_book(out_dir / member, books[member], rng, spell_all={subjects[0][1]} if subjects else set())
    subject_list = tuple(
        Subject(id_type, canonical, tuple(holders[i])) for i, (id_type, canonical) in enumerate(subjects)
    )
    return Dataset(
        root=out_dir,
        as_of=as_of,
        members=tuple(member_ids),
        subjects=subject_list,
        books={m: MemberBook(tuple(b[0]), tuple(b[1]), tuple(b[2])) for m, b in books.items()},
    )


def _distinct_subjects(rng: random.Random, people: int, orgs: int) -> list[tuple[str, str]]:
    """Persons first (person 0 with check character X and born in 19xx, so
    the lower-case x and 15-digit spellings both apply), then organisations;
    no number twice."""
    seen: set[str] = set()
    subjects: list[tuple[str, str]] = []
    while len(subjects) < people:
        number = generate_resident_id(rng)
        if number not in seen and (subjects or (number.endswith("X") and number[6:8] == "19")):
            seen.add(number)
            subjects.append(("RESIDENT_ID", number))
    while len(subjects) < people + orgs:
        number = generate_uscc(rng)
        if number not in seen:
            seen.add(number)
            subjects.append(("USCC", number))
    return subjects


def _holders(rng: random.Random, count: int, members: list[str]) -> list[list[str]]:
    """Which members hold each subject: subject 0 and 1 at up to three members,
    subject 2 at two, the rest at one, two or three (weighted to one)."""
    most = min(3, len(members))
    sizes = [most, most, min(2, most)] + [min(rng.choice((1, 1, 1, 2, 2, 3)), most) for _ in range(count - 3)]
    return [rng.sample(members, size) for size in sizes[:count]]


def _weighted(rng: random.Random, choices: Sequence[tuple[str, int]]) -> str:
    return rng.choices([c for c, _ in choices], weights=[w for _, w in choices])[0]


def _loan(rng: random.Random, loan_id: str, id_type: str, canonical: str, scenario: str, as_of: date) -> LoanRecord:
    """One loan consistent with every §2 rule, shaped by ``scenario``."""
    subject_type = identity.SUBJECT_TYPE_FOR_ID_TYPE[id_type]
    product = rng.choice(_PERSON_PRODUCTS if subject_type == "PERSON" else _ORG_PRODUCTS)
    (low, high), terms, methods, (rate_low, rate_high), guarantees = _PRODUCTS[product]
    principal = rng.randint(low // 100, high // 100) * 100 * 100 + rng.choice((0, 0, 0, rng.randint(1, 9999)))
    term = rng.choice(terms)
    method = rng.choice(methods)
    if method == "REVOLVING":
        term = 12
    status, balance, overdue_days, overdue_amount = "ACTIVE", _fraction(rng, principal, 0.05, 1.0), 0, 0
    if scenario == "settled":
        status, balance = "SETTLED", 0
    elif scenario == "written_off":
        status, balance = "WRITTEN_OFF", _fraction(rng, principal, 0.2, 0.9)
    elif scenario in _OVERDUE_BUCKETS:
        overdue_days = rng.randint(*_OVERDUE_BUCKETS[scenario])
        overdue_amount = _fraction(rng, balance, 0.02, 0.5 if overdue_days < 91 else 1.0)
    opened_on = _opened_on(rng, scenario, term, as_of, overdue_days)
    updated_on = opened_on if opened_on >= as_of else opened_on + timedelta(rng.randint(0, (as_of - opened_on).days))
    return LoanRecord(
        loan_id=loan_id, subject_type=subject_type, id_type=id_type, canonical_id=canonical,
        product_type=product, principal_fen=principal, balance_fen=balance,
        annual_rate_e4=rng.randint(int(rate_low * 10**4), int(rate_high * 10**4)) // 100 * 100,
        term_months=term, repayment_method=method, opened_on=opened_on, due_on=_add_months(opened_on, term),
        status=status, overdue_days=overdue_days, overdue_amount_fen=overdue_amount,
        guarantee_type=rng.choice(guarantees), updated_on=updated_on,
    )


def _opened_on(rng: random.Random, scenario: str, term: int, as_of: date, overdue_days: int) -> date:
    """Open dates: inside [D−29, D] or [D−89, D−30] for the window scenarios,
    after D for as-of filtering, otherwise at least 90 days before D (outside
    both windows), and for an overdue loan a month or more before it fell due."""
    if scenario == "opened_30d":
        return as_of - timedelta(rng.randint(0, 29))
    if scenario == "opened_90d":
        return as_of - timedelta(rng.randint(30, 89))
    if scenario == "after_as_of":
        return as_of + timedelta(rng.randint(1, 60))
    if scenario in ("settled", "written_off"):
        return as_of - timedelta(rng.randint(180, 2000))
    if overdue_days:
        return as_of - timedelta(max(90, overdue_days + rng.randint(30, 720)))
    return as_of - timedelta(rng.randint(90, max(90, min(term * 30 - 1, 1800))))


def _fraction(rng: random.Random, fen: int, low: float, high: float) -> int:
    """A share of ``fen`` between low and high, at least 1 fen and at most fen."""
    return max(1, min(fen, int(fen * rng.uniform(low, high))))


def _add_months(day: date, months: int) -> date:
    year, month = divmod(day.month - 1 + months, 12)
    year += day.year
    return date(year, month + 1, min(day.day, calendar.monthrange(year, month + 1)[1]))


# Subjects 0–3 are flagged by every member holding them: active fraud, active
# malicious default, cleared fraud, fraud raised after the as-of date.
_FORCED_FLAGS = (("FRAUD", "ACTIVE", False), ("MALICIOUS_DEFAULT", "ACTIVE", False),
                 ("FRAUD", "CLEARED", False), ("FRAUD", "ACTIVE", True))


def _random_flag(rng: random.Random) -> tuple[str, str, bool] | None:
    """About one (subject, member) pair in eight is flagged; one flag in ten is
    raised after the as-of date."""
    if rng.random() >= 0.12:
        return None
    return rng.choice(uds1.FLAG_TYPES), rng.choice(("ACTIVE", "ACTIVE", "ACTIVE", "CLEARED")), rng.random() < 0.1


def _flag(rng: random.Random, id_type: str, canonical: str, as_of: date, flag_type: str, status: str,
          after_as_of: bool) -> FlagRecord:
    flagged_on = as_of + timedelta(rng.randint(1, 30)) if after_as_of else as_of - timedelta(rng.randint(0, 720))
    return FlagRecord(id_type, canonical, flag_type, flagged_on, status)


def _score(rng: random.Random, id_type: str, canonical: str, as_of: date, *, after_as_of: bool) -> ScoreRecord:
    score = min(900, max(300, round(rng.gauss(640, 90))))
    scored_on = as_of + timedelta(rng.randint(1, 30)) if after_as_of else as_of - timedelta(rng.randint(0, 365))
    return ScoreRecord(id_type, canonical, score, scored_on)


# --- writing files ---------------------------------------------------------


def _write_book(folder: Path, book: tuple[list[LoanRecord], list[FlagRecord], list[ScoreRecord]],
                rng: random.Random, *, spell_all: set[str]) -> None:
    """Write one member's three files. IDs in ``spell_all`` cycle through every
    variant spelling; about one in six other rows uses a random variant."""
    folder.mkdir(parents=True, exist_ok=True)
    loans, flags, scores = book
    speller = _Speller(rng, spell_all)
    _write_csv(folder / "loans.csv", "loans", (_loan_row(r, speller(r.id_type, r.canonical_id)) for r in loans))
    _write_csv(folder / "flags.csv", "flags", (
        (r.id_type, speller(r.id_type, r.canonical_id), r.flag_type, r.flagged_on.isoformat(), r.status)
        for r in flags
    ))
    _write_csv(folder / "scores.csv", "scores", (
        (r.id_type, speller(r.id_type, r.canonical_id), str(r.score), r.scored_on.isoformat()) for r in scores
    ))


class _Speller:
    def __init__(self, rng: random.Random, spell_all: set[str]) -> None:
        self.rng, self.spell_all, self.turn = rng, spell_all, 0

    def __call__(self, id_type: str, canonical: str) -> str:
        if canonical in self.spell_all:
            variants = [canonical, *variant_spellings(id_type, canonical)]
            self.turn += 1
            return variants[self.turn % len(variants)]
        if self.rng.random() < 1 / 6:
            return self.rng.choice(variant_spellings(id_type, canonical))
        return canonical


def _loan_row(r: LoanRecord, spelled_id: str) -> tuple[str, ...]:
    return (
        r.loan_id, r.subject_type, r.id_type, spelled_id, r.product_type, _yuan(r.principal_fen),
        _yuan(r.balance_fen), _percent(r.annual_rate_e4), str(r.term_months), r.repayment_method,
        r.opened_on.isoformat(), r.due_on.isoformat(), r.status, str(r.overdue_days), _yuan(r.overdue_amount_fen),
        r.guarantee_type, r.updated_on.isoformat(),
    )


def _yuan(fen: int) -> str:
    return f"{fen // 100}.{fen % 100:02d}"


def _percent(e4: int) -> str:
    whole, fraction = divmod(e4, 10**4)
    return f"{whole}.{fraction:04d}".rstrip("0").rstrip(".")


def _write_csv(path: Path, kind: str, rows: Iterable[Sequence[str]]) -> None:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(uds1.FIELDS[kind])
        writer.writerows(rows)


# --- throughput benchmarks -------------------------------------------------


def write_loans_csv(path: Path, n_rows: int, *, seed: int, as_of: date = _DEFAULT_BENCH_AS_OF) -> None:
    """``n_rows`` valid loan rows for import benchmarks, written fast: the
    loan terms come from a few thousand realistic templates and the borrowers
    from a pool of about n/4 subjects (so many hold several loans); each row
    only adds a unique loan_id and a borrower."""
    rng = random.Random(seed)
    pool_size = max(1, min(n_rows // 4, 200_000))
    persons = [generate_resident_id(rng) for _ in range(pool_size - pool_size // 10)]
    orgs = [generate_uscc(rng) for _ in range(max(1, pool_size // 10))]
    templates = {
        id_type: [",".join(_loan_row(_loan(rng, "", id_type, "", _weighted(rng, _RANDOM_SCENARIOS), as_of), "")[4:])
                  for _ in range(2048)]
        for id_type in identity.ID_TYPES
    }
    heads = {"RESIDENT_ID": "PERSON,RESIDENT_ID", "USCC": "ORG,USCC"}
    random_index = rng.randrange
    with path.open("w", encoding="utf-8", newline="") as handle:
        handle.write(",".join(uds1.FIELDS["loans"]) + "\n")
        chunk = []
        for n in range(n_rows):
            id_type, pool = ("USCC", orgs) if n % 10 == 9 else ("RESIDENT_ID", persons)
            chunk.append(f"B{n:09d},{heads[id_type]},{pool[random_index(len(pool))]},"
                         f"{templates[id_type][random_index(2048)]}\n")
            if len(chunk) == 10_000:
                handle.write("".join(chunk))
                chunk.clear()
        handle.write("".join(chunk))
