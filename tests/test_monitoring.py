"""Post-loan monitoring (SPEC §9): each change rule on both sides of its
threshold, the monitor engine's bookkeeping (baseline, identical answering
sets only, answer_set_changed keeps the earlier report, a refusal stops the
run), the policy gate, and the own-borrower list. Expectations are written
out by hand, never computed with the code under test."""
from __future__ import annotations

from datetime import date

import pytest

from alliance import db
from alliance.errors import InvalidInput, Refused, Unreachable
from alliance_member import alerts, monitoring, store
from alliance_member.monitoring import Monitor, Subject, Thresholds, changes

ZERO = {
    "lenders_with_active_loans": 0, "active_loans": 0, "outstanding_balance_fen": 0, "loans_opened_30d": 0,
    "loans_opened_90d": 0, "lenders_with_overdue": 0, "overdue_loans": 0, "overdue_amount_fen": 0, "dpd_1_30": 0,
    "dpd_31_60": 0, "dpd_61_90": 0, "dpd_91_plus": 0, "written_off_loans": 0, "written_off_amount_fen": 0,
    "settled_loans": 0, "lenders_flagging_fraud": 0, "lenders_flagging_malicious_default": 0, "scored_lenders": 0,
    "score_sum": 0, "average_score": None, "inquiries_30d": 0,
}


def rep(**fields: object) -> dict[str, object]:
    return {**ZERO, **fields}


def rules(before: dict, after: dict, thresholds: Thresholds = Thresholds()) -> list[str]:
    return [c.rule for c in changes(before, after, thresholds)]


# ---------------------------------------------------------------- rules

def test_balance_up_19_percent_no_alert_20_percent_alert() -> None:
    base = rep(lenders_with_active_loans=1, active_loans=1, outstanding_balance_fen=100_000_000)  # ¥1,000,000.00
    assert rules(base, {**base, "outstanding_balance_fen": 119_000_000}) == []  # +¥190,000 = +19 %
    assert rules(base, {**base, "outstanding_balance_fen": 119_999_999}) == []  # one fen short of +20 %
    assert rules(base, {**base, "outstanding_balance_fen": 120_000_000}) == ["balance_up"]  # +¥200,000 = +20 %


def test_balance_up_49999_yuan_no_alert_50000_yuan_alert() -> None:
    base = rep(lenders_with_active_loans=1, active_loans=1, outstanding_balance_fen=10_000_000)  # ¥100,000.00
    assert rules(base, {**base, "outstanding_balance_fen": 14_999_900}) == []  # +¥49,999 (+49.999 %)
    assert rules(base, {**base, "outstanding_balance_fen": 14_999_999}) == []  # +¥49,999.99
    assert rules(base, {**base, "outstanding_balance_fen": 15_000_000}) == ["balance_up"]  # +¥50,000


def test_balance_thresholds_are_configurable() -> None:
    base = rep(outstanding_balance_fen=100_000_000)
    after = {**base, "outstanding_balance_fen": 110_000_000}  # +¥100,000 = +10 %
    assert rules(base, after) == []
    assert rules(base, after, Thresholds(balance_up_pct=10, balance_up_min_fen=100_000_00)) == ["balance_up"]
    assert rules(base, after, Thresholds(balance_up_pct=10, balance_up_min_fen=100_000_01)) == []
    assert rules(base, after, Thresholds(balance_up_pct=11, balance_up_min_fen=1)) == []


def test_balance_from_zero_needs_only_the_absolute_rise() -> None:
    assert rules(ZERO, rep(outstanding_balance_fen=4_999_999)) == []
    assert rules(ZERO, rep(outstanding_balance_fen=5_000_000)) == ["balance_up"]


def test_a_falling_balance_is_not_an_alert() -> None:
    assert rules(rep(outstanding_balance_fen=50_000_000), rep(outstanding_balance_fen=10_000_000)) == []


def test_more_lenders_and_more_active_loans() -> None:
    base = rep(lenders_with_active_loans=2, active_loans=3)
    assert rules(base, base) == []
    assert rules(base, {**base, "active_loans": 4}) == ["more_active_loans"]
    assert rules(base, {**base, "lenders_with_active_loans": 3, "active_loans": 4}) == ["more_lenders", "more_active_loans"]
    assert rules(base, {**base, "lenders_with_active_loans": 1, "active_loans": 2}) == []


def test_new_overdue_loan() -> None:
    base = rep(active_loans=2)
    assert rules(base, {**base, "overdue_loans": 1, "lenders_with_overdue": 1, "dpd_1_30": 1}) == ["new_overdue"]
    one = {**base, "overdue_loans": 1, "lenders_with_overdue": 1, "dpd_1_30": 1}
    assert rules(one, one) == []
    assert rules(one, {**one, "overdue_loans": 2, "dpd_1_30": 2}) == ["new_overdue"]


def test_worse_dpd_bucket_alerts_same_bucket_does_not() -> None:
    one = rep(active_loans=1, overdue_loans=1, lenders_with_overdue=1, dpd_1_30=1)
    assert rules(one, {**one, "dpd_1_30": 0, "dpd_31_60": 1}) == ["worse_dpd"]
    assert rules(one, {**one, "overdue_amount_fen": 12_345}) == []  # same bucket, more overdue money
    sixty = {**one, "dpd_1_30": 0, "dpd_61_90": 1}
    assert rules(sixty, {**sixty, "dpd_61_90": 0, "dpd_91_plus": 1}) == ["worse_dpd"]
    assert rules(sixty, {**sixty, "dpd_61_90": 0, "dpd_31_60": 1}) == []  # better is no alert


def test_new_write_off() -> None:
    base = rep(written_off_loans=1, written_off_amount_fen=100)
    assert rules(base, base) == []
    assert rules(base, {**base, "written_off_loans": 2, "written_off_amount_fen": 200}) == ["new_write_off"]


def test_new_fraud_and_malicious_default_flags() -> None:
    base = rep(lenders_flagging_fraud=1, lenders_flagging_malicious_default=0)
    assert rules(base, base) == []
    assert rules(base, {**base, "lenders_flagging_fraud": 2}) == ["new_fraud_flag"]
    assert rules(base, {**base, "lenders_flagging_malicious_default": 1}) == ["new_malicious_default_flag"]


# ---------------------------------------------------------------- the engine

TOKEN_A, TOKEN_B, TOKEN_C = b"\xaa" * 32, b"\xbb" * 32, b"\xcc" * 32
A = Subject(TOKEN_A, 1, "RESIDENT_ID", "110105********002X")
B = Subject(TOKEN_B, 1, "RESIDENT_ID", "440524********0013")
C = Subject(TOKEN_C, 1, "USCC", "91350100********3X")


@pytest.fixture
def engine(tmp_path):  # type: ignore[no-untyped-def]
    e = db.make_engine(db.sqlite_url(tmp_path / "m.db"))
    store.create_schema(e)
    yield e
    e.dispose()


class FakeAlliance:
    """Answers query_token from a script: token -> list of (report, answer set) or an exception, in order."""

    def __init__(self) -> None:
        self.script: dict[bytes, list] = {}
        self.asked: list[bytes] = []
        self.n = 0

    def __call__(self, token: bytes):  # type: ignore[no-untyped-def]
        self.asked.append(token)
        step = self.script[token].pop(0)
        if isinstance(step, Exception):
            raise step
        self.n += 1
        report, members = step
        return {"query_id": f"q-{self.n}", "report": report, "members_asked": len(members),
                "members_answered": len(members), "complete": True}, list(members)


def kinds(engine) -> list[str]:  # type: ignore[no-untyped-def]
    return [a.kind for a in alerts.list_alerts(engine)]


def test_first_run_is_a_baseline_then_each_change_is_an_alert(engine) -> None:  # type: ignore[no-untyped-def]
    fake = FakeAlliance()
    before = rep(lenders_with_active_loans=1, active_loans=1, outstanding_balance_fen=10_000_000)
    after = rep(lenders_with_active_loans=2, active_loans=2, outstanding_balance_fen=15_000_000,
                lenders_flagging_fraud=1)
    fake.script[TOKEN_A] = [(before, ["m1", "m2"]), (after, ["m2", "m1"])]
    mon = Monitor(engine, fake, as_of=date(2026, 6, 30))
    [first] = mon.run([A])
    assert first.status == "baseline" and kinds(engine) == []
    [second] = mon.run([A])
    assert second.status == "changed"
    assert second.rules == ["more_lenders", "more_active_loans", "balance_up", "new_fraud_flag"]
    assert kinds(engine) == ["monitor_more_lenders", "monitor_more_active_loans", "monitor_balance_up", "monitor_new_fraud_flag"]
    got = alerts.list_alerts(engine)
    assert all(a.details["masked_id"] == "110105********002X" and a.details["query_id"] == "q-2" for a in got)
    assert got[2].details["before"] == 10_000_000 and got[2].details["after"] == 15_000_000
    assert "110105********002X" in got[0].message and "m1" not in got[0].message


def test_unchanged_report_raises_nothing(engine) -> None:  # type: ignore[no-untyped-def]
    fake = FakeAlliance()
    r = rep(lenders_with_active_loans=2, active_loans=3, outstanding_balance_fen=77_700)
    fake.script[TOKEN_A] = [(r, ["m1", "m2"]), (dict(r), ["m1", "m2"])]
    mon = Monitor(engine, fake)
    mon.run([A])
    [o] = mon.run([A])
    assert o.status == "unchanged" and kinds(engine) == []


def test_a_different_answer_set_is_stored_but_not_compared(engine) -> None:  # type: ignore[no-untyped-def]
    fake = FakeAlliance()
    small = rep(lenders_with_active_loans=1, active_loans=1)
    big = rep(lenders_with_active_loans=3, active_loans=5)  # more, but over another set of members
    fake.script[TOKEN_A] = [(small, ["m1", "m2"]), (big, ["m1", "m2", "m3"]), (big, ["m1", "m2", "m3"]),
                            (rep(lenders_with_active_loans=3, active_loans=6), ["m1", "m2", "m3"])]
    mon = Monitor(engine, fake)
    mon.run([A])
    [o] = mon.run([A])
    assert o.status == "set_changed" and "answer set changed" in o.message and kinds(engine) == []
    stored = monitoring.stored_report(engine, TOKEN_A, 1)
    assert stored is not None and stored.answer_set == ["m1", "m2", "m3"] and stored.report["active_loans"] == 5
    assert mon.run([A])[0].status == "unchanged"  # compared against the new set's report
    assert mon.run([A])[0].rules == ["more_active_loans"]


def test_answer_set_changed_keeps_the_earlier_report_and_retries_next_run(engine) -> None:  # type: ignore[no-untyped-def]
    fake = FakeAlliance()
    first = rep(lenders_with_active_loans=1, active_loans=1)
    fake.script[TOKEN_A] = [(first, ["m1", "m2"]),
                            Unreachable("reports on this subject are pinned …", reason="answer_set_changed"),
                            (rep(lenders_with_active_loans=1, active_loans=2), ["m1", "m2"])]
    fake.script[TOKEN_B] = [(first, ["m1", "m2"]), (first, ["m1", "m2"]), (first, ["m1", "m2"])]
    mon = Monitor(engine, fake)
    mon.run([A, B])
    kept, other = mon.run([A, B])
    assert kept.status == "kept_earlier" and kept.exit_code == 0 and other.status == "unchanged"
    stored = monitoring.stored_report(engine, TOKEN_A, 1)
    assert stored is not None and stored.query_id == "q-1" and stored.report["active_loans"] == 1
    [retried, _] = mon.run([A, B])
    assert retried.status == "changed" and retried.rules == ["more_active_loans"]  # against the kept report


def test_other_too_few_answers_fail_that_subject_only(engine) -> None:  # type: ignore[no-untyped-def]
    fake = FakeAlliance()
    fake.script[TOKEN_A] = [Unreachable("only 1 member answered", reason="too_few_answers")]
    fake.script[TOKEN_B] = [(ZERO, ["m1", "m2"])]
    a, b = Monitor(engine, fake).run([A, B])
    assert (a.status, a.exit_code, b.status) == ("failed", 5, "baseline")
    assert monitoring.stored_report(engine, TOKEN_A, 1) is None


def test_a_refusal_stops_the_run(engine) -> None:  # type: ignore[no-untyped-def]
    fake = FakeAlliance()
    fake.script[TOKEN_A] = [(ZERO, ["m1", "m2"])]
    fake.script[TOKEN_B] = [Refused("daily quota of 10 reached", reason="quota_exceeded")]
    fake.script[TOKEN_C] = [(ZERO, ["m1", "m2"])]
    a, b, c = Monitor(engine, fake).run([A, B, C])
    assert (a.status, b.status, b.exit_code, c.status, c.exit_code) == ("baseline", "failed", 4, "not_run", 4)
    assert fake.asked == [TOKEN_A, TOKEN_B]


def _loan(token: bytes, loan_id: str, status: str, masked: str) -> dict[str, object]:
    return dict(loan_id=loan_id, subject_token=token, key_epoch=1, masked_id=masked, subject_type="PERSON",
                id_type="RESIDENT_ID", product_type="CONSUMER", principal_fen=100, balance_fen=100 if status == "ACTIVE" else 0,
                annual_rate_e4=1000, term_months=12, repayment_method="EQUAL_INSTALLMENT", opened_on=date(2026, 1, 1),
                due_on=date(2027, 1, 1), status=status, overdue_days=0, overdue_amount_fen=0, guarantee_type="NONE",
                updated_on=date(2026, 6, 1), import_run=1, import_line=2)


def test_own_borrowers_are_subjects_with_an_active_loan_of_the_current_epoch(engine) -> None:  # type: ignore[no-untyped-def]
    with engine.begin() as conn:
        conn.execute(store.loans.insert(), [
            _loan(TOKEN_A, "L1", "ACTIVE", "110105********002X"),
            _loan(TOKEN_A, "L2", "ACTIVE", "110105********002X"),  # two loans, one subject
            _loan(TOKEN_B, "L3", "SETTLED", "440524********0013"),  # settled only: not monitored
            _loan(TOKEN_C, "L4", "WRITTEN_OFF", "91350100********3X"),
        ])
        conn.execute(store.loans.insert(), [{**_loan(b"\xdd" * 32, "L5", "ACTIVE", "old"), "key_epoch": 0}])
    assert monitoring.own_borrowers(engine, 1) == [Subject(TOKEN_A, 1, "RESIDENT_ID", "110105********002X")]


def test_watchlist_rows_become_tokens_and_bad_rows_are_reported(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from alliance import identity

    path = tmp_path / "w.csv"
    path.write_text("id_type,id_number\nRESIDENT_ID,11010519491231002X\nRESIDENT_ID,11010519491231002Y\n", encoding="utf-8")
    subjects, bad = monitoring.watchlist(path, b"k" * 32, 3)
    assert subjects == [Subject(identity.subject_token(b"k" * 32, "RESIDENT_ID", "11010519491231002X"), 3, "RESIDENT_ID",
                                "110105********002X")]
    assert [line for line, _, _ in bad] == [3] and isinstance(bad[0][2], InvalidInput)


# ---------------------------------------------------------------- the policy gate

class PolicyClient:
    def __init__(self, policy: object) -> None:
        self._policy = policy

    def policy(self) -> object:
        return self._policy


def test_monitoring_refused_when_the_alliance_says_off() -> None:
    for policy in ({"monitoring": False}, {"monitoring": "off"}, {}):
        with pytest.raises(Refused) as exc:
            monitoring.monitoring_enabled(PolicyClient(policy))
        assert exc.value.reason == "monitoring_off" and exc.value.exit_code == 4
        assert str(exc.value) == ("monitoring is off: the alliance has not enabled it "
                                  "(alliance admin policy set monitoring on)")


def test_monitoring_allowed_when_the_alliance_says_on() -> None:
    assert monitoring.monitoring_enabled(PolicyClient({"monitoring": True}))
    assert monitoring.monitoring_enabled(PolicyClient({"monitoring": "on", "monitoring_quota": 100}))

    class Message:
        monitoring = True
    assert monitoring.monitoring_enabled(PolicyClient(Message()))


def test_parse_every() -> None:
    assert monitoring.parse_every("24h") == 86_400
    assert monitoring.parse_every("30m") == 1_800
    assert monitoring.parse_every("1d") == 86_400
    assert monitoring.parse_every("90s") == 90
    for bad in ("", "24", "h", "-1h", "1.5h", "0s"):
        with pytest.raises(Exception):
            monitoring.parse_every(bad)
