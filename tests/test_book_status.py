"""SPEC §10 reciprocity and data freshness: the signed book status, the
`stale_book` refusal on both sides of the age limit, the status inside every
answer (covered by the answer signature), coverage, and what `audit verify`
re-derives. Expectations are written out as dates, not computed by the code
under test."""
from __future__ import annotations

import os
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import delete, select

from alliance import audit_entry, book_status, db, paillier, protocol, signing
from alliance.audit_verify import STATE_GRACE_MS
from alliance.policy import Policy
from alliance.v1 import alliance_pb2 as pb
from alliance_gateway import schema
from alliance_gateway import peers as gateway_peers
from alliance_gateway.service import QueryFailure
from alliance_member import store
from alliance_member import book_status as member_book
from alliance_member.answer_trust import TrustedKey, answer_signature_valid
from tests.alliance_fixtures import LocalCA, log_book_status, signed_query
from tests.test_audit_verify import people  # noqa: F401 (fixture; shares the module's CA fixture `ca`)
from tests.test_audit_verify_v2 import V2LogBuilder, new_v2_log
from tests.test_gateway_service import _last_entry, ca, gateway, members, process  # noqa: F401 (fixtures)

SHANGHAI = ZoneInfo("Asia/Shanghai")


def today() -> date:
    return datetime.now(SHANGHAI).date()


# --------------------------------------------------------------------------
# The rule itself (alliance/book_status.py)


def _status(book_date: date | None, loans: int = 10) -> book_status.BookStatus:
    return book_status.BookStatus("ma", 1, book_date, loans, 0)


def test_a_book_exactly_max_age_days_old_is_fresh_and_one_day_more_is_stale() -> None:
    dated = date(2026, 12, 1)
    assert not book_status.is_stale(_status(dated), date(2026, 12, 8), 7)  # 7 days old: may query
    assert book_status.is_stale(_status(dated), date(2026, 12, 9), 7)  # 8 days old: stale
    assert not book_status.is_stale(_status(dated), date(2026, 12, 1), 7)
    assert not book_status.is_stale(_status(dated), date(2026, 12, 2), 1)
    assert book_status.is_stale(_status(dated), date(2026, 12, 3), 1)


def test_no_status_or_no_loans_is_stale() -> None:
    assert book_status.is_stale(None, date(2026, 12, 1), 7)
    assert book_status.is_stale(_status(None, loans=0), date(2026, 12, 1), 7)


def test_the_stale_message_says_since_when() -> None:
    msg = book_status.stale_message(_status(date(2026, 12, 1)), date(2026, 12, 20), 7)
    assert "stale since 2026-12-09" in msg and "2026-12-01" in msg and "19 days" in msg
    assert "no book status" in book_status.stale_message(None, date(2026, 12, 20), 7)
    assert "no loans" in book_status.stale_message(_status(None, loans=0), date(2026, 12, 20), 7)


def test_a_status_must_be_canonical_and_consistent() -> None:
    key = Ed25519PrivateKey.generate()
    body, sig = book_status.sign(key, book_status.BookStatus("ma", 3, date(2026, 12, 1), 5, 1_000))
    assert body == (b'{"book_date":"2026-12-01","credential_serial":3,"format":"alliance-book-status/1",'
                    b'"loans":5,"made_at_ms":1000,"member_id":"ma"}')
    assert book_status.parse(body).book_date == date(2026, 12, 1)
    for bad in (body.replace(b'"loans":5', b'"loans":0'),  # loans 0 with a date
                body.replace(b"2026-12-01", b"2026-13-01"),
                body.replace(b",", b", ", 1),  # not canonical
                body + b" "):
        with pytest.raises(Exception):
            book_status.parse(bad)
    book_status.verify(key.public_key().public_bytes_raw(), body, sig, what="t")
    with pytest.raises(Exception):
        book_status.verify(key.public_key().public_bytes_raw(), body.replace(b"12-01", b"12-02"), sig, what="t")


def test_coverage_is_the_oldest_date_and_the_stale_count_on_the_as_of_date() -> None:
    statuses = [_status(date(2026, 6, 25)), _status(date(2026, 6, 20)), None, _status(None, loans=0)]
    cov = book_status.coverage(statuses, date(2026, 6, 30), 7)
    # 06-25 is 5 days old (fresh), 06-20 is 10 days old (stale); no status and no loans count as stale
    assert cov.to_json() == {"oldest_book_as_of": "2026-06-20", "stale_members": 3}
    # as of an earlier day both books are "from the future": fresh
    assert book_status.coverage(statuses[:2], date(2026, 6, 1), 7).to_json() == {"oldest_book_as_of": "2026-06-20",
                                                                                 "stale_members": 0}
    assert book_status.coverage([], date(2026, 6, 1), 7).to_json() == {"oldest_book_as_of": None, "stale_members": 0}


# --------------------------------------------------------------------------
# The member's book date (member_node/book_status.py)


def _loan(i: int, updated_on: date) -> dict[str, Any]:
    return dict(loan_id=f"L{i}", subject_token=os.urandom(32), key_epoch=1, masked_id="x", subject_type="PERSON",
                id_type="RESIDENT_ID", product_type="CONSUMER", principal_fen=100, balance_fen=50, annual_rate_e4=1000,
                term_months=12, repayment_method="EQUAL_INSTALMENT", opened_on=date(2025, 1, 1), due_on=date(2026, 1, 1),
                status="ACTIVE", overdue_days=0, overdue_amount_fen=0, guarantee_type="NONE", updated_on=updated_on,
                import_run=1, import_line=i + 2)


def test_the_book_date_is_the_newest_updated_on_not_the_import_time_and_never_a_future_one(tmp_path: Path) -> None:
    engine = db.make_engine(db.sqlite_url(tmp_path / "m.db"))
    store.create_schema(engine)
    assert member_book.book_of(engine, date(2026, 12, 7)) == (None, 0)
    with engine.begin() as conn:
        conn.execute(store.loans.insert(), [_loan(0, date(2026, 5, 3)), _loan(1, date(2026, 6, 1)), _loan(2, date(2026, 4, 9))])
    # imported today (2026-12-07 here), yet the book is as of its newest update: stale under the default policy
    assert member_book.book_of(engine, date(2026, 12, 7)) == (date(2026, 6, 1), 3)
    with engine.begin() as conn:
        conn.execute(store.loans.insert(), [_loan(3, date(2027, 1, 1))])  # a future-dated row cannot make it fresh
    assert member_book.book_of(engine, date(2026, 12, 7)) == (date(2026, 6, 1), 4)
    assert member_book.book_of(engine, date(2027, 1, 1)) == (date(2027, 1, 1), 4)


# --------------------------------------------------------------------------
# The gateway's stale_book refusal (in process)


def _query(svc, members, who: str = "mq", kind: str = "query", **kwargs: Any) -> pb.GatewayQueryResponse:  # type: ignore[no-untyped-def]
    mode = pb.QUERY_MODE_PRECHECK if kind == "precheck" else pb.QUERY_MODE_REPORT
    pk = members[who].public_key
    enc_x = paillier.encode_ciphertext(pk, paillier.encrypt_signed(pk, 5, paillier.fresh_mask(pk))) if kind == "precheck" else b""
    return process(svc, members, signed_query(members[who], mode=mode, enc_x=enc_x, **kwargs), who, "member", kind)


def test_a_book_max_book_age_days_old_may_query_and_one_day_older_is_refused_stale_book(gateway) -> None:  # noqa: F811
    svc, _, members = gateway
    limit = Policy().max_book_age_days
    seq = log_book_status(svc.engine, members["mq"], book_date=today() - timedelta(days=limit))
    response = _query(svc, members)
    entry = audit_entry.decode(response.audit.entry, index=response.audit.leaf_index)
    assert entry["outcome"] == "accepted"
    assert entry["querier_book"] == {"seq": seq, "book_date": (today() - timedelta(days=limit)).isoformat(), "loans": 100,
                                     "max_book_age_days": limit, "judged_on": today().isoformat()}

    old = today() - timedelta(days=limit + 1)
    seq = log_book_status(svc.engine, members["mq"], book_date=old)
    for kind in ("query", "precheck"):
        with pytest.raises(QueryFailure) as info:
            _query(svc, members, kind=kind)
        assert info.value.reason == "stale_book" and info.value.exit_code == 4
        assert f"stale since {today().isoformat()}" in str(info.value) and old.isoformat() in str(info.value)
        logged = _last_entry(svc)
        assert (logged["kind"], logged["outcome"], logged["reason"]) == (kind, "refused", "stale_book")
        assert logged["querier_book"]["seq"] == seq and logged["members_asked"] == []
    # it keeps answering: another member's query still asks it
    assert "mq" in _query(svc, members, who="ma", subject=("RESIDENT_ID", "110105194912310038")).asked_member_ids


def test_no_loans_or_no_status_is_refused_stale_book(gateway) -> None:  # noqa: F811
    svc, _, members = gateway
    log_book_status(svc.engine, members["mq"], book_date=None, loans=0)
    with pytest.raises(QueryFailure) as info:
        _query(svc, members)
    assert info.value.reason == "stale_book" and "no loans" in str(info.value)
    with svc.engine.begin() as conn:
        conn.execute(delete(schema.book_status).where(schema.book_status.c.member_id == "mq"))
    with pytest.raises(QueryFailure) as info:
        _query(svc, members)
    assert info.value.reason == "stale_book" and "no book status" in str(info.value)
    assert _last_entry(svc)["querier_book"] == {"seq": None, "book_date": None, "loans": 0, "max_book_age_days": 7,
                                                "judged_on": today().isoformat()}


def test_the_policy_limit_applies(gateway) -> None:  # noqa: F811
    from alliance_gateway import policy_store

    svc, _, members = gateway
    log_book_status(svc.engine, members["mq"], book_date=today() - timedelta(days=10))
    with pytest.raises(QueryFailure):
        _query(svc, members)
    with svc.engine.begin() as conn:
        policy_store.store(conn, Policy(max_book_age_days=10), {"max_book_age_days": 10})
    svc.policy._loaded_at = float("-inf")
    assert _query(svc, members).members_answered == 3


class _Ctx:
    def __init__(self, member) -> None:  # type: ignore[no-untyped-def]
        self.peer = (member.member_id, "member", member.body.tls_cert_sha256)
        self.aborts: list[Any] = []

    def abort(self, code, details):  # type: ignore[no-untyped-def]
        self.aborts.append((code, details))
        raise RuntimeError(details)


def _post(svc, member, status: book_status.BookStatus, *, key=None, alter=None):  # type: ignore[no-untyped-def]
    body, sig = book_status.sign(key or member.signing_key, status)
    if alter is not None:
        body = alter(body)
    ctx = _Ctx(member)
    try:
        return svc.PostBookStatus(pb.SignedBookStatus(body=body, signature=sig), ctx), ctx
    except RuntimeError:
        return None, ctx


def test_post_book_status_logs_a_valid_status_and_refuses_a_forged_or_altered_one(gateway, monkeypatch) -> None:  # noqa: F811
    svc, _, members = gateway
    monkeypatch.setattr(gateway_peers, "peer_identity", lambda ctx: ctx.peer)
    mq = members["mq"]
    now_ms = int(datetime.now(SHANGHAI).timestamp() * 1000)
    stale = book_status.BookStatus("mq", mq.body.serial, today() - timedelta(days=30), 9, now_ms)
    with svc.engine.connect() as conn:
        before = conn.execute(select(schema.book_status).where(schema.book_status.c.member_id == "mq")).one()
    size = svc.log.size()
    forged, ctx = _post(svc, mq, stale, key=Ed25519PrivateKey.generate())
    assert forged is None and "does not verify" in ctx.aborts[0][1]
    altered, ctx = _post(svc, mq, book_status.BookStatus("mq", mq.body.serial, today() - timedelta(days=30), 9, now_ms),
                         alter=lambda b: b.replace(b'"loans":9', b'"loans":8'))
    assert altered is None and "does not verify" in ctx.aborts[0][1]
    other, ctx = _post(svc, mq, book_status.BookStatus("ma", mq.body.serial, today(), 9, now_ms))
    assert other is None and "its own" in ctx.aborts[0][1]
    future, ctx = _post(svc, mq, book_status.BookStatus("mq", mq.body.serial, today() + timedelta(days=2), 9, now_ms))
    assert future is None and "future" in ctx.aborts[0][1]
    old_time, ctx = _post(svc, mq, book_status.BookStatus("mq", mq.body.serial, today(), 9, now_ms - 600_000))
    assert old_time is None and "5 minutes" in ctx.aborts[0][1]
    assert svc.log.size() == size  # nothing refused was logged ...
    with svc.engine.connect() as conn:  # ... nor changed what the gateway judges by
        assert conn.execute(select(schema.book_status).where(schema.book_status.c.member_id == "mq")).one() == before
    assert _query(svc, members).members_answered == 3  # still judged by the fresh status

    logged, ctx = _post(svc, mq, stale)
    assert logged is not None and not ctx.aborts
    entry = audit_entry.decode(logged.entry.data, index=logged.entry.index)
    assert (entry["kind"], entry["member_id"], entry["book_date"], entry["loans"]) == (
        "book_status", "mq", (today() - timedelta(days=30)).isoformat(), 9)
    with pytest.raises(QueryFailure) as info:
        _query(svc, members)
    assert info.value.reason == "stale_book"


# --------------------------------------------------------------------------
# The status inside every answer, covered by the answer signature


def test_the_answer_carries_the_status_and_its_signature_covers_it(gateway, tmp_path: Path) -> None:  # noqa: F811
    svc, stubs, members = gateway
    key = members["ma"].signing_key
    status_body, _ = book_status.sign(key, book_status.BookStatus("ma", members["ma"].body.serial, date(2026, 12, 1), 4, 1))
    services = {mid: stub.handler.__self__ for mid, stub in stubs.items()}
    services["ma"].book_status = lambda: status_body
    response = _query(svc, members)
    receipt = next(r for r in response.answers if r.member_id == "ma")
    assert receipt.book_status == status_body
    entry = audit_entry.decode(response.audit.entry, index=response.audit.leaf_index)
    logged = next(a for a in entry["answers"] if a["member_id"] == "ma")
    assert logged["book_status"] == status_body.hex()
    digest = signing.sha256(bytes.fromhex(entry["request_body"]))
    trusted = TrustedKey("ma", members["ma"].body.serial, key.public_key(), 2**62)
    assert answer_signature_valid(trusted, response.query_id, digest, receipt)
    for tampered in (status_body.replace(b'"loans":4', b'"loans":5'), b""):
        forged = pb.AnswerReceipt()
        forged.CopyFrom(receipt)
        forged.book_status = tampered
        assert not answer_signature_valid(trusted, response.query_id, digest, forged)


def test_the_gateway_drops_an_answer_whose_status_does_not_match_its_signature(gateway) -> None:  # noqa: F811
    svc, stubs, members = gateway
    service = stubs["ma"].handler.__self__
    original = service.answer
    status_body, _ = book_status.sign(members["ma"].signing_key, book_status.BookStatus("ma", 1, date(2026, 12, 1), 4, 1))
    service.book_status = lambda: status_body

    def swap(request):  # type: ignore[no-untyped-def]
        response = original(request)
        response.book_status = status_body.replace(b"2026-12-01", b"2026-12-06")  # a fresher date, not signed
        return response

    stubs["ma"].handler = swap
    response = _query(svc, members)
    assert "ma" not in [r.member_id for r in response.answers]
    assert any(d["member_id"] == "ma" and "malformed_answer" in d["reason"] for d in _last_entry(svc)["dropped"])


# --------------------------------------------------------------------------
# audit verify re-derives stale_book (docs/audit-log.md "Book status")


class BookLogBuilder(V2LogBuilder):
    def shape(self, entry: dict[str, Any], *, querier_book: Any = None, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]
        entry = super().shape(entry, **kwargs)
        if querier_book is not None:
            entry["querier_book"] = querier_book
        return entry

    def book(self, member_id: str, book_date: date | None, loans: int = 10, *, key: Any = None) -> int:
        m = self.people[member_id]
        status = book_status.BookStatus(member_id, m.body.serial, book_date, loans, self.clock)
        body, sig = book_status.sign(key or m.signing_key, status)
        return self.append(lambda seq, when: {
            "v": 2, "kind": "book_status", "seq": seq, "time": when, "member_id": member_id,
            "credential_serial": m.body.serial, "book_date": book_date.isoformat() if book_date else None,
            "loans": loans, "body": body.hex(), "signature": sig.hex()})

    def day(self) -> date:
        return datetime.fromtimestamp((self.clock + 1000) / 1000, tz=SHANGHAI).date()

    def stated(self, seq: int | None, book_date: date | None, loans: int = 10, limit: int = 7) -> dict[str, Any]:
        return {"seq": seq, "book_date": book_date.isoformat() if book_date else None, "loans": loans,
                "max_book_age_days": limit, "judged_on": self.day().isoformat()}


@pytest.fixture
def bv(tmp_path: Path, ca: LocalCA, people) -> BookLogBuilder:  # type: ignore[no-untyped-def]  # noqa: F811
    return new_v2_log(BookLogBuilder(tmp_path / "gateway.db", ca, people))  # type: ignore[return-value]


def test_a_log_with_fresh_books_and_a_fitting_stale_book_refusal_verifies(bv: BookLogBuilder) -> None:
    fresh = bv.book("m1", bv.day() - timedelta(days=7))
    bv.query("m1", querier_book=bv.stated(fresh, bv.day() - timedelta(days=7)))
    old = bv.book("m2", bv.day() - timedelta(days=8))
    bv.query("m2", asked=[], outcome="refused", reason="stale_book", querier_book=bv.stated(old, bv.day() - timedelta(days=8)))
    bv.query("m3", asked=[], outcome="refused", reason="stale_book", querier_book=bv.stated(None, None, 0))
    result = bv.verify()
    assert result.refusals == {"stale_book": 2} and result.accepted == 1 and result.kinds["book_status"] == 2


def test_an_accepted_query_from_a_stale_book_is_named(bv: BookLogBuilder) -> None:
    old = bv.book("m1", bv.day() - timedelta(days=8))
    seq = bv.query("m1", querier_book=bv.stated(old, bv.day() - timedelta(days=8)))
    entry, message = bv.bad_entry()
    assert entry == seq and "whose book was stale" in message


def test_a_stale_book_refusal_that_does_not_fit_the_logged_status_is_named(bv: BookLogBuilder) -> None:
    fresh = bv.book("m1", bv.day() - timedelta(days=7))
    seq = bv.query("m1", asked=[], outcome="refused", reason="stale_book", querier_book=bv.stated(fresh, bv.day() - timedelta(days=7)))
    entry, message = bv.bad_entry()
    assert entry == seq and "stale_book does not fit" in message


def test_a_stale_book_refusal_stating_nothing_is_named(bv: BookLogBuilder) -> None:
    seq = bv.query("m1", asked=[], outcome="refused", reason="stale_book")
    assert bv.bad_entry()[0] == seq


def test_a_stated_status_that_is_not_the_latest_or_a_limit_not_the_policys_is_named(bv: BookLogBuilder) -> None:
    old = bv.book("m1", bv.day() - timedelta(days=30))
    bv.tick(STATE_GRACE_MS + 1000)
    bv.book("m1", bv.day())  # the latest, fresh one
    bv.tick(STATE_GRACE_MS + 1000)
    seq = bv.query("m1", asked=[], outcome="refused", reason="stale_book", querier_book=bv.stated(old, bv.day() - timedelta(days=30)))
    entry, message = bv.bad_entry()
    assert entry == seq and "not m1's latest" in message


def test_a_limit_that_is_not_the_logged_policys_is_named(bv: BookLogBuilder) -> None:
    old = bv.book("m1", bv.day() - timedelta(days=8))
    seq = bv.query("m1", querier_book=bv.stated(old, bv.day() - timedelta(days=8), limit=9))
    entry, message = bv.bad_entry()
    assert entry == seq and "max_book_age_days 9" in message


def test_an_accepted_query_stating_no_book_once_statuses_are_logged_is_named(bv: BookLogBuilder) -> None:
    bv.book("m2", bv.day())
    seq = bv.query("m1")
    entry, message = bv.bad_entry()
    assert entry == seq and "querier_book" in message


def test_a_book_status_with_a_bad_signature_is_named(bv: BookLogBuilder) -> None:
    seq = bv.book("m1", bv.day(), key=Ed25519PrivateKey.generate())
    entry, message = bv.bad_entry()
    assert entry == seq and "book status signature" in message


def test_an_answer_whose_book_status_was_altered_after_signing_is_named(bv: BookLogBuilder) -> None:
    fresh = bv.book("m1", bv.day())
    seq = bv.query("m1", querier_book=bv.stated(fresh, bv.day()))
    good = bv.verify()
    assert good.accepted == 1
    entry = bv.entry(seq)
    answer = entry["answers"][0]
    status, _ = book_status.sign(bv.people[answer["member_id"]].signing_key,
                                 book_status.BookStatus(answer["member_id"], 1, bv.day(), 3, 1))
    answer["book_status"] = status.hex()  # not covered by the answer's signature
    bv.set_data(seq, audit_entry.encode(entry))
    bv.rebuild_tree()
    bad, message = bv.bad_entry()
    assert bad == seq and "answer" in message


def test_protocol_answer_message_adds_a_fourth_part_only_with_a_status() -> None:
    body = pb.QueryRequestBody(query_id="q" * 32)
    three = protocol.answer_message(body, b"b", b"c")
    four = protocol.answer_message(body, b"b", b"c", b"s")
    assert four.startswith(three) and four[len(three):] == (32).to_bytes(4, "big") + signing.sha256(b"s")


def test_a_status_not_newer_than_the_logged_one_is_refused_and_nothing_is_logged(gateway, monkeypatch) -> None:  # noqa: F811
    """Within the 5 minutes, an older signed status posted again (by the
    operator, or two posts crossing) must not replace a newer book: the
    gateway logs a member's statuses only in the order they were made."""
    svc, _, members = gateway
    monkeypatch.setattr(gateway_peers, "peer_identity", lambda ctx: ctx.peer)
    mq = members["mq"]
    now_ms = int(datetime.now(SHANGHAI).timestamp() * 1000)
    older = book_status.BookStatus("mq", mq.body.serial, today() - timedelta(days=30), 9, now_ms - 60_000)
    newer = book_status.BookStatus("mq", mq.body.serial, today(), 9, now_ms)
    first, ctx = _post(svc, mq, newer)
    assert first is not None and not ctx.aborts
    size = svc.log.size()
    for status in (older, newer):  # an older one, and the very same one again
        again, ctx = _post(svc, mq, status)
        assert again is None and ctx.aborts[0][0] == grpc.StatusCode.FAILED_PRECONDITION and "stale_status" in ctx.aborts[0][1]
    assert svc.log.size() == size
    with svc.engine.connect() as conn:
        assert conn.execute(select(schema.book_status.c.seq).where(schema.book_status.c.member_id == "mq")).scalar() == first.entry.index
    assert _query(svc, members).members_answered == 3  # judged by the newer status still
