"""The report rules of SPEC §4 pinned on every edge, with hand-made books and
expectations written out by hand here (never computed by the code under
test): the 30d/90d windows are calendar days inclusive of D ([D−29, D] and
[D−89, D]); records dated after D are ignored and records dated exactly D
count; the DPD buckets are 1–30, 31–60, 61–90, 91+; average_score rounds
half-up to one decimal; the querier's own k ≥ 2 check; check_plausible.

Issue 12: before these tests, mutants that shift a window by a day, use `<`
for `<=` in the DPD buckets, skip records dated exactly D or truncate the
average passed every test."""
from __future__ import annotations

import csv
from datetime import date, timedelta
from pathlib import Path

import pytest

from alliance import db, identity, paillier, report
from alliance.errors import AllianceError, CryptoError
from alliance.report import FlagFacts, LoanFacts, ScoreFacts
from alliance.v1 import alliance_pb2 as pb
from alliance_member import answer_checks, importer, store
from alliance_member.service import MemberService, PeerTrust
from tests.alliance_fixtures import MK, SUBJECT, LocalCA, signed_query

D = date(2026, 6, 30)
# Written out by hand (June has 30 days, May 31, April 30):
D_PLUS_1 = date(2026, 7, 1)
D_MINUS_29 = date(2026, 6, 1)   # first day of the 30d window
D_MINUS_30 = date(2026, 5, 31)  # first day outside it
D_MINUS_89 = date(2026, 4, 2)   # first day of the 90d window
D_MINUS_90 = date(2026, 4, 1)   # first day outside it
LONG_AGO = date(2025, 1, 1)


def test_hand_written_dates_are_what_they_claim() -> None:
    """Guards the literals above (plain date arithmetic, not the code under test)."""
    assert (D - D_MINUS_29).days == 29 and (D - D_MINUS_30).days == 30
    assert (D - D_MINUS_89).days == 89 and (D - D_MINUS_90).days == 90
    assert (D_PLUS_1 - D).days == 1


def figures(loans=(), flags=(), score=None, as_of=D) -> dict[str, int]:  # type: ignore[no-untyped-def]
    values = report.member_figures(list(loans), list(flags), score, as_of)
    assert len(values) == len(report.REPORT_FIELDS)
    return dict(zip(report.REPORT_FIELDS, values))


def zeros(**nonzero: int) -> dict[str, int]:
    out = dict.fromkeys(report.REPORT_FIELDS, 0)
    out.update(nonzero)
    return out


def active(opened_on: date, balance_fen: int = 10_000, overdue_days: int = 0, overdue_amount_fen: int = 0) -> LoanFacts:
    return LoanFacts("ACTIVE", balance_fen, opened_on, overdue_days, overdue_amount_fen)


# -- windows and the as-of date ------------------------------------------------


@pytest.mark.parametrize(
    "opened_on, in_30d, in_90d",
    [
        (D, 1, 1),
        (D_MINUS_29, 1, 1),
        (D_MINUS_30, 0, 1),
        (D_MINUS_89, 0, 1),
        (D_MINUS_90, 0, 0),
        (LONG_AGO, 0, 0),
    ],
    ids=["D", "D-29", "D-30", "D-89", "D-90", "long-ago"],
)
def test_opened_window_edges(opened_on: date, in_30d: int, in_90d: int) -> None:
    got = figures([active(opened_on, balance_fen=12_345)])
    assert got == zeros(lenders_with_active_loans=1, active_loans=1, outstanding_balance_fen=12_345,
                        loans_opened_30d=in_30d, loans_opened_90d=in_90d)


@pytest.mark.parametrize("status", ["ACTIVE", "SETTLED", "WRITTEN_OFF"])
def test_windows_count_loans_of_any_status(status: str) -> None:
    loan = LoanFacts(status, 0 if status == "SETTLED" else 500, D_MINUS_29, 0, 0)
    got = figures([loan])
    assert (got["loans_opened_30d"], got["loans_opened_90d"]) == (1, 1)


@pytest.mark.parametrize("status", ["ACTIVE", "SETTLED", "WRITTEN_OFF"])
def test_a_loan_opened_after_d_is_ignored_entirely(status: str) -> None:
    loan = LoanFacts(status, 0 if status == "SETTLED" else 99_999, D_PLUS_1, 45 if status == "ACTIVE" else 0,
                     1_000 if status == "ACTIVE" else 0)
    assert figures([loan]) == zeros()


def test_a_loan_opened_on_d_counts_everywhere() -> None:
    got = figures([active(D, balance_fen=7_000, overdue_days=3, overdue_amount_fen=700)])
    assert got == zeros(lenders_with_active_loans=1, active_loans=1, outstanding_balance_fen=7_000,
                        loans_opened_30d=1, loans_opened_90d=1, lenders_with_overdue=1, overdue_loans=1,
                        overdue_amount_fen=700, dpd_1_30=1)


def test_as_of_moves_the_windows() -> None:
    """The same loan, seen from D and from the day after: D−29 leaves the 30d window."""
    loan = active(D_MINUS_29)
    assert figures([loan], as_of=D)["loans_opened_30d"] == 1
    assert figures([loan], as_of=D_PLUS_1)["loans_opened_30d"] == 0
    assert figures([active(D_PLUS_1)], as_of=D_PLUS_1)["active_loans"] == 1


# -- days past due ---------------------------------------------------------------


@pytest.mark.parametrize(
    "overdue_days, bucket",
    [(0, None), (1, "dpd_1_30"), (30, "dpd_1_30"), (31, "dpd_31_60"), (60, "dpd_31_60"),
     (61, "dpd_61_90"), (90, "dpd_61_90"), (91, "dpd_91_plus"), (5000, "dpd_91_plus")],
)
def test_dpd_bucket_edges(overdue_days: int, bucket: str | None) -> None:
    amount = 0 if overdue_days == 0 else 321
    got = figures([active(LONG_AGO, balance_fen=1_000, overdue_days=overdue_days, overdue_amount_fen=amount)])
    expected = zeros(lenders_with_active_loans=1, active_loans=1, outstanding_balance_fen=1_000)
    if bucket is not None:
        expected.update(lenders_with_overdue=1, overdue_loans=1, overdue_amount_fen=321, **{bucket: 1})
    assert got == expected


def test_every_bucket_in_one_book() -> None:
    days = [1, 30, 31, 60, 61, 90, 91, 0]
    loans = [active(LONG_AGO, balance_fen=100 * (i + 1), overdue_days=d, overdue_amount_fen=0 if d == 0 else i + 1)
             for i, d in enumerate(days)]
    got = figures(loans)
    assert got == zeros(lenders_with_active_loans=1, active_loans=8, outstanding_balance_fen=3_600,
                        lenders_with_overdue=1, overdue_loans=7, overdue_amount_fen=28,
                        dpd_1_30=2, dpd_31_60=2, dpd_61_90=2, dpd_91_plus=1)


# -- written off, settled --------------------------------------------------------


def test_written_off_and_settled() -> None:
    loans = [
        LoanFacts("WRITTEN_OFF", 90_000, LONG_AGO, 0, 0),
        LoanFacts("WRITTEN_OFF", 10_001, D, 0, 0),
        LoanFacts("WRITTEN_OFF", 55_555, D_PLUS_1, 0, 0),  # after D: ignored
        LoanFacts("SETTLED", 0, LONG_AGO, 0, 0),
        LoanFacts("SETTLED", 0, D_MINUS_30, 0, 0),
        LoanFacts("SETTLED", 0, D_PLUS_1, 0, 0),  # after D: ignored
    ]
    got = figures(loans)
    assert got == zeros(written_off_loans=2, written_off_amount_fen=100_001, settled_loans=2,
                        loans_opened_30d=1, loans_opened_90d=2)


# -- flags and scores ------------------------------------------------------------


@pytest.mark.parametrize("flag_type, field", [("FRAUD", "lenders_flagging_fraud"),
                                              ("MALICIOUS_DEFAULT", "lenders_flagging_malicious_default")])
@pytest.mark.parametrize("status, flagged_on, counted", [
    ("ACTIVE", D, 1), ("ACTIVE", LONG_AGO, 1), ("ACTIVE", D_PLUS_1, 0), ("CLEARED", D, 0), ("CLEARED", LONG_AGO, 0),
])
def test_flags(flag_type: str, field: str, status: str, flagged_on: date, counted: int) -> None:
    got = figures(flags=[FlagFacts(flag_type, status, flagged_on)])
    assert got == (zeros(**{field: 1}) if counted else zeros())


def test_both_flag_types_at_once_count_once_each() -> None:
    got = figures(flags=[FlagFacts("FRAUD", "ACTIVE", D), FlagFacts("MALICIOUS_DEFAULT", "ACTIVE", D_MINUS_90)])
    assert got == zeros(lenders_flagging_fraud=1, lenders_flagging_malicious_default=1)


@pytest.mark.parametrize("scored_on, counted", [(D, True), (LONG_AGO, True), (D_PLUS_1, False)])
def test_score_dates(scored_on: date, counted: bool) -> None:
    got = figures(score=ScoreFacts(733, scored_on))
    assert got == (zeros(scored_lenders=1, score_sum=733) if counted else zeros())


def test_no_records_give_all_zeros() -> None:
    assert figures() == zeros()


# -- average_score ------------------------------------------------------------------


def _report(scores: list[int]) -> dict:
    sums = [0] * len(report.REPORT_FIELDS)
    sums[report.FIELD_INDEX["scored_lenders"]] = len(scores)
    sums[report.FIELD_INDEX["score_sum"]] = sum(scores)
    return report.build_report(sums, inquiries_30d=0)


@pytest.mark.parametrize(
    "scores, average",
    [
        ([700], 700.0),
        ([700, 701], 700.5),                 # exact half of a unit: one decimal holds it
        ([700, 700, 701], 700.3),            # 700.333… rounds down
        ([700, 701, 701], 700.7),            # 700.666… rounds up (truncation says 700.6)
        ([700, 700, 700, 701], 700.3),       # 700.25: a true tie rounds half-up (banker's and truncation say 700.2)
        ([700, 700, 700, 703], 700.8),       # 700.75: tie, half-up (truncation says 700.7)
        ([300, 301, 301, 301], 300.8),       # 300.75
        ([899, 900, 900, 900], 899.8),       # 899.75
        ([650] * 19 + [651], 650.1),         # 650.05: the smallest tie, half-up (truncation and float round say 650.0)
        ([650] * 39 + [653], 650.1),         # 650.075 rounds up
        ([650] * 39 + [651], 650.0),         # 650.025 rounds down
        ([900, 899, 899], 899.3),            # 899.333…
        ([300, 300, 301], 300.3),
        ([301, 301, 300], 300.7),
    ],
)
def test_average_score_rounds_half_up_to_one_decimal(scores: list[int], average: float) -> None:
    got = _report(scores)["average_score"]
    assert isinstance(got, float) and got == average


def test_average_score_is_null_with_no_scorer() -> None:
    got = _report([])
    assert got["average_score"] is None and got["scored_lenders"] == 0 and got["score_sum"] == 0


def test_build_report_carries_every_figure_and_the_inquiries() -> None:
    sums = list(range(1, len(report.REPORT_FIELDS) + 1))
    got = report.build_report(sums, inquiries_30d=4)
    assert [got[name] for name in report.REPORT_FIELDS] == sums
    assert got["inquiries_30d"] == 4
    with pytest.raises(ValueError):
        report.build_report(sums[:-1], inquiries_30d=0)


# -- check_plausible -------------------------------------------------------------------


@pytest.mark.parametrize("field", report.PER_MEMBER_FLAGS)
def test_check_plausible_refuses_a_per_member_figure_above_the_members_summed(field: str) -> None:
    sums = [0] * len(report.REPORT_FIELDS)
    sums[report.FIELD_INDEX[field]] = 3
    report.check_plausible(sums, 3)  # exactly the members summed: fine
    with pytest.raises(CryptoError, match=field):
        report.check_plausible(sums, 2)


def test_check_plausible_lets_loan_counts_exceed_the_members() -> None:
    sums = [0] * len(report.REPORT_FIELDS)
    for name in report.REPORT_FIELDS:
        if name not in report.PER_MEMBER_FLAGS:
            sums[report.FIELD_INDEX[name]] = 10**6
    report.check_plausible(sums, 2)


def test_per_member_flags_are_exactly_the_lender_counts() -> None:
    assert set(report.PER_MEMBER_FLAGS) == {"lenders_with_active_loans", "lenders_with_overdue", "lenders_flagging_fraud",
                                            "lenders_flagging_malicious_default", "scored_lenders"}


# -- the member node, from an imported book to its answer ---------------------------------

OTHER = ("RESIDENT_ID", "440524198001010013")
LOAN_HEADER = ["loan_id", "subject_type", "id_type", "id_number", "product_type", "principal", "balance", "annual_rate",
               "term_months", "repayment_method", "opened_on", "due_on", "status", "overdue_days", "overdue_amount",
               "guarantee_type", "updated_on"]


def _loan(loan_id: str, opened_on: date, status: str, balance: str, overdue_days: int = 0, overdue_amount: str = "0",
          subject: tuple[str, str] = SUBJECT) -> list[str]:
    return [loan_id, "PERSON", subject[0], subject[1], "CONSUMER", "100000.00", balance, "12.5", "24", "EQUAL_INSTALLMENT",
            opened_on.isoformat(), "2030-01-01", status, str(overdue_days), overdue_amount, "NONE", "2026-06-30"]


BOOK_LOANS = [
    _loan("L-after", D_PLUS_1, "ACTIVE", "1000.00", 5, "10.00"),   # after D: ignored
    _loan("L-d", D, "ACTIVE", "100.00"),
    _loan("L-d29", D_MINUS_29, "ACTIVE", "200.00", 1, "1.00"),
    _loan("L-d30", D_MINUS_30, "ACTIVE", "300.00", 30, "2.00"),
    _loan("L-d89", D_MINUS_89, "ACTIVE", "400.00", 31, "3.00"),
    _loan("L-d90", D_MINUS_90, "ACTIVE", "500.00", 60, "4.00"),
    _loan("L-61", LONG_AGO, "ACTIVE", "600.00", 61, "5.00"),
    _loan("L-90", LONG_AGO, "ACTIVE", "700.00", 90, "6.00"),
    _loan("L-91", LONG_AGO, "ACTIVE", "800.00", 91, "7.00"),
    _loan("L-wo", date(2026, 6, 15), "WRITTEN_OFF", "900.00"),
    _loan("L-wo-after", D_PLUS_1, "WRITTEN_OFF", "50.00"),          # after D: ignored
    _loan("L-set", date(2026, 3, 1), "SETTLED", "0"),
    _loan("L-other", D, "ACTIVE", "123.00", 7, "1.00", subject=OTHER),  # another subject
]
BOOK_FLAGS = [
    [SUBJECT[0], SUBJECT[1], "FRAUD", D.isoformat(), "ACTIVE"],
    [SUBJECT[0], SUBJECT[1], "MALICIOUS_DEFAULT", D_PLUS_1.isoformat(), "ACTIVE"],  # after D
    [OTHER[0], OTHER[1], "FRAUD", LONG_AGO.isoformat(), "CLEARED"],
    [OTHER[0], OTHER[1], "MALICIOUS_DEFAULT", D.isoformat(), "ACTIVE"],
]
BOOK_SCORES = [
    [SUBJECT[0], SUBJECT[1], "700", D.isoformat()],
    [OTHER[0], OTHER[1], "800", D_PLUS_1.isoformat()],  # after D
]
# Worked out by hand from the book above, for SUBJECT at D:
EXPECTED_SUBJECT = zeros(
    lenders_with_active_loans=1,
    active_loans=8,                         # L-d … L-91
    outstanding_balance_fen=360_000,        # 100+200+…+800 yuan
    loans_opened_30d=3,                     # L-d, L-d29, L-wo
    loans_opened_90d=5,                     # + L-d30, L-d89
    lenders_with_overdue=1,
    overdue_loans=7,
    overdue_amount_fen=2_800,               # 1+2+…+7 yuan
    dpd_1_30=2, dpd_31_60=2, dpd_61_90=2, dpd_91_plus=1,
    written_off_loans=1, written_off_amount_fen=90_000,
    settled_loans=1,
    lenders_flagging_fraud=1,
    lenders_flagging_malicious_default=0,   # raised on D+1
    scored_lenders=1, score_sum=700,
)
EXPECTED_OTHER = zeros(lenders_with_active_loans=1, active_loans=1, outstanding_balance_fen=12_300, loans_opened_30d=1,
                       loans_opened_90d=1, lenders_with_overdue=1, overdue_loans=1, overdue_amount_fen=100, dpd_1_30=1,
                       lenders_flagging_malicious_default=1)


def _write(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


@pytest.fixture(scope="module")
def member_node(tmp_path_factory):  # type: ignore[no-untyped-def]
    """A member node with the hand-made book imported through the real importer."""
    tmp = tmp_path_factory.mktemp("book")
    ca = LocalCA()
    querier, answerer = ca.enrol("querier"), ca.enrol("answerer")
    engine = db.make_engine(db.sqlite_url(tmp / "m.db"))
    store.create_schema(engine)
    for kind, header, rows in [("loans", LOAN_HEADER, BOOK_LOANS),
                               ("flags", ["id_type", "id_number", "flag_type", "flagged_on", "status"], BOOK_FLAGS),
                               ("scores", ["id_type", "id_number", "score", "scored_on"], BOOK_SCORES)]:
        result = importer.import_file(engine, _write(tmp / f"{kind}.csv", header, rows), kind, MK, today=D)
        assert result.committed and result.rows_written == len(rows)
    svc = MemberService(member_id="answerer", engine=engine, trust=PeerTrust(engine, ca.cert), signing_key=answerer.signing_key,
                        matching_key=lambda: MK, mask_pools=paillier.MaskPools(target=2))
    yield svc, querier
    engine.dispose()


def _member_answer(member_node, subject, as_of: date = D) -> dict[str, int]:  # type: ignore[no-untyped-def]
    svc, querier = member_node
    q = signed_query(querier, subject=subject, as_of=as_of)
    resp = svc.answer(pb.MemberQueryRequest(query=q, querier_credential=querier.credential.SerializeToString()))
    m = querier.private_key.decrypt(paillier.decode_ciphertext(querier.public_key, resp.ciphertext))
    return dict(zip(report.REPORT_FIELDS, paillier.unpack(m, len(report.REPORT_FIELDS), 1)))


def test_member_node_answers_the_hand_made_book(member_node) -> None:  # type: ignore[no-untyped-def]
    assert _member_answer(member_node, SUBJECT) == EXPECTED_SUBJECT


def test_member_node_keeps_subjects_apart(member_node) -> None:  # type: ignore[no-untyped-def]
    assert _member_answer(member_node, OTHER) == EXPECTED_OTHER


def test_member_node_the_day_after(member_node) -> None:  # type: ignore[no-untyped-def]
    """At D+1 the records dated D+1 count and D−29 has left the 30d window."""
    got = _member_answer(member_node, SUBJECT, as_of=D_PLUS_1)
    assert got == {**EXPECTED_SUBJECT,
                   "active_loans": 9, "outstanding_balance_fen": 460_000,
                   "loans_opened_30d": 4,   # L-after, L-d, L-wo, L-wo-after (L-d29 now D−30)
                   "loans_opened_90d": 6,   # + L-d29, L-d30 (L-d89 is now D+1−90: out)
                   "overdue_loans": 8, "overdue_amount_fen": 3_800, "dpd_1_30": 3,
                   "written_off_loans": 2, "written_off_amount_fen": 95_000,
                   "lenders_flagging_malicious_default": 1}


# -- the querier's own k >= 2 check ---------------------------------------------------------


def _fake_response(answering: list[str], asked: list[str] | None = None, members_answered: int | None = None,
                   members_asked: int | None = None) -> pb.GatewayQueryResponse:
    asked = asked if asked is not None else answering
    return pb.GatewayQueryResponse(
        query_id="q-1",
        members_asked=len(asked) if members_asked is None else members_asked,
        members_answered=len(answering) if members_answered is None else members_answered,
        complete=len(answering) == len(asked),
        asked_member_ids=asked,
        answers=[pb.AnswerReceipt(member_id=m) for m in answering],
    )


def _check_count(response: pb.GatewayQueryResponse) -> int:
    return answer_checks.check_answer_count(response)


@pytest.mark.parametrize("answering", [[], ["mb"]])
def test_querier_refuses_a_sum_over_fewer_than_two_members(answering: list[str]) -> None:
    with pytest.raises(AllianceError):
        _check_count(_fake_response(answering, asked=["mb", "mc", "md"]))


def test_querier_accepts_two_or_more_receipts() -> None:
    assert _check_count(_fake_response(["mb", "mc"], asked=["mb", "mc", "md"])) == 2
    assert _check_count(_fake_response(["mb", "mc", "md"])) == 3


def test_querier_counts_receipts_not_the_gateways_claim() -> None:
    """A gateway claiming two answers with one receipt (or one member twice) is refused."""
    with pytest.raises(AllianceError):
        _check_count(_fake_response(["mb"], asked=["mb", "mc"], members_answered=2))
    with pytest.raises(AllianceError):
        _check_count(_fake_response(["mb", "mb"], asked=["mb", "mc"]))
    # Above k, too: the claim must equal the receipts, and each member counts once.
    with pytest.raises(AllianceError):
        _check_count(_fake_response(["mb", "mc"], asked=["mb", "mc", "md"], members_answered=3))
    with pytest.raises(AllianceError):
        _check_count(_fake_response(["mb", "mc", "mc"], asked=["mb", "mc", "md"]))


def test_querier_refuses_receipts_from_members_not_asked() -> None:
    with pytest.raises(AllianceError):
        _check_count(_fake_response(["mb", "mx"], asked=["mb", "mc"]))
    with pytest.raises(AllianceError):
        _check_count(_fake_response(["mb", "mc"], asked=["mb", "mc"], members_asked=3))
