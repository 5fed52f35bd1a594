"""AnswerBatch (SPEC §8 "many subjects per member call"): each item gets
exactly the checks and the answer of a single Answer, one bad item spoils no
other, a refused item leaves no journal or replay row, alerts follow the
sent response, and an oversized batch is refused as a whole."""
from __future__ import annotations

import time
from datetime import date
from typing import Any

import grpc
import pytest
from sqlalchemy import select

from alliance import db, identity, log_rules, paillier, protocol, report, signing
from alliance.v1 import alliance_pb2 as pb
from alliance_member import metrics as member_metrics
from alliance_member import service as service_mod
from alliance_member import store
from alliance_member.service import MemberService, PeerTrust
from tests.alliance_fixtures import MK, SUBJECT, signed_query
from tests.test_member_service import answerer, ca, querier  # noqa: F401 (module-scoped fixtures)

OTHER = ("RESIDENT_ID", "440524198001010013")  # a settled-only borrower
UNKNOWN = ("RESIDENT_ID", "110101199003077774")
AS_OF = date(2026, 6, 30)


@pytest.fixture(scope="module")
def outsider(ca):  # type: ignore[no-untyped-def]
    """CA-signed, but not trusted in the member's view of the log (SPEC §5.1)."""
    return ca.enrol("outsider")


class Feed:
    """The member's view of the membership feed: trusts everyone but ``untrusted``."""

    def __init__(self, untrusted: bytes) -> None:
        self.untrusted = untrusted
        self.generation = 1

    def stale(self) -> bool:
        return False

    def view(self) -> Any:
        return None

    def trust_decision(self, credential: bytes) -> str:
        return "not_sponsored" if credential == self.untrusted else "trusted"


class Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code}: {details}")
        self.code, self.details = code, details


class Context:
    """A gateway's call: callbacks run once the response has been sent."""

    def __init__(self) -> None:
        self.callbacks: list = []

    def add_callback(self, callback) -> bool:  # type: ignore[no-untyped-def]
        self.callbacks.append(callback)
        return True

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise Aborted(code, details)

    def sent(self) -> None:
        for callback in self.callbacks:
            callback()


def _loan(subject: tuple[str, str], loan_id: str, status: str, balance: int) -> dict[str, object]:
    return dict(loan_id=loan_id, subject_token=identity.subject_token(MK.key, *subject), key_epoch=1,
                masked_id=subject[1][:6] + "********" + subject[1][14:], subject_type="PERSON", id_type=subject[0],
                product_type="CONSUMER", principal_fen=500_000, balance_fen=balance, annual_rate_e4=1200, term_months=12,
                repayment_method="EQUAL_INSTALLMENT", opened_on=date(2026, 1, 5), due_on=date(2027, 1, 5), status=status,
                overdue_days=0, overdue_amount_fen=0, guarantee_type="NONE", updated_on=date(2026, 6, 1), import_run=1, import_line=2)


@pytest.fixture
def node(ca, answerer, outsider, db_url, monkeypatch):  # type: ignore[no-untyped-def]
    """A member node on SQLite and on PostgreSQL (the batch's one transaction must hold on both)."""
    monkeypatch.setattr(service_mod, "peer_identity", lambda context: ("gateway", "gateway", b""))
    engine = db.make_engine(db_url)
    store.create_schema(engine)
    with engine.begin() as conn:
        conn.execute(store.loans.insert(), [_loan(SUBJECT, "L-1", "ACTIVE", 300_000), _loan(SUBJECT, "L-2", "ACTIVE", 125_000),
                                            _loan(SUBJECT, "L-3", "SETTLED", 0), _loan(OTHER, "L-4", "SETTLED", 0)])
        conn.execute(store.scores.insert().values(subject_token=identity.subject_token(MK.key, *SUBJECT), key_epoch=1, masked_id="x",
                                                  id_type="RESIDENT_ID", score=720, scored_on=date(2026, 1, 1), import_run=1, import_line=3))
    notices: list = []
    svc = MemberService(member_id="answerer", engine=engine,
                        trust=PeerTrust(engine, ca.cert, Feed(outsider.credential.SerializeToString())),
                        signing_key=answerer.signing_key, matching_key=lambda: MK, mask_pools=paillier.MaskPools(target=2),
                        after_answer=notices.append, metrics=member_metrics.MemberMetrics())
    svc.notices = notices  # type: ignore[attr-defined]
    yield svc
    engine.dispose()


def item(who, query: pb.SignedQuery) -> pb.MemberQueryRequest:  # type: ignore[no-untyped-def]
    return pb.MemberQueryRequest(query=query, querier_credential=who.credential.SerializeToString())


def batch(node: MemberService, items: list[pb.MemberQueryRequest]) -> pb.MemberQueryBatchResponse:
    ctx = Context()
    response = node.AnswerBatch(pb.MemberQueryBatch(items=items), ctx)
    assert node.notices == []  # type: ignore[attr-defined] # nothing handed over before the response is sent
    ctx.sent()
    return response


def figures(querier, answer: pb.MemberQueryResponse, count: int = len(report.REPORT_FIELDS)) -> list[int]:  # type: ignore[no-untyped-def]
    assert len(answer.ciphertext) == querier.public_key.ciphertext_width == 512  # fixed width, one ciphertext
    return paillier.unpack(querier.private_key.decrypt(paillier.decode_ciphertext(querier.public_key, answer.ciphertext)), count, 1)


def journal(node: MemberService) -> dict[str, bytes]:
    with node.engine.connect() as conn:
        rows = conn.execute(select(store.answer_journal.c.query_id, store.answer_journal.c.ciphertext_sha256)).all()
        seen = set(conn.scalars(select(store.seen_queries.c.query_id)))
    assert seen == {r.query_id for r in rows}  # every answer's replay row, and no other
    return {r.query_id: bytes(r.ciphertext_sha256) for r in rows}


def qid(query: pb.SignedQuery) -> str:
    return pb.QueryRequestBody.FromString(query.body).query_id


def count(node: MemberService, outcome: str, reason: str) -> float:
    return node.metrics.registry.get_sample_value("alliance_member_answers_total", {"outcome": outcome, "reason": reason}) or 0.0


def test_a_batch_of_valid_queries_gets_each_its_own_signed_answer(node, querier, answerer) -> None:  # type: ignore[no-untyped-def]
    queries = [signed_query(querier, subject=SUBJECT, as_of=AS_OF), signed_query(querier, subject=OTHER, as_of=AS_OF),
               signed_query(querier, subject=UNKNOWN, as_of=AS_OF), signed_query(querier, mode=pb.QUERY_MODE_PRECHECK, as_of=AS_OF)]
    response = batch(node, [item(querier, q) for q in queries])
    assert [r.WhichOneof("result") for r in response.items] == ["answer"] * 4
    answers = [r.answer for r in response.items]
    f = report.FIELD_INDEX
    # Computed by hand from the book above: two ACTIVE loans (300,000 + 125,000 fen), one SETTLED, a score of 720.
    subject = figures(querier, answers[0])
    assert (subject[f["lenders_with_active_loans"]], subject[f["active_loans"]], subject[f["outstanding_balance_fen"]]) == (1, 2, 425_000)
    assert (subject[f["settled_loans"]], subject[f["scored_lenders"]], subject[f["score_sum"]]) == (1, 1, 720)
    assert subject[f["overdue_loans"]] == subject[f["written_off_loans"]] == 0
    other = figures(querier, answers[1])
    assert other[f["settled_loans"]] == 1 and sum(other) == 1
    assert figures(querier, answers[2]) == [0] * len(report.REPORT_FIELDS)
    assert figures(querier, answers[3], 1) == [425_000]  # precheck: the active balance
    for q, a in zip(queries, answers):
        assert a.member_id == "answerer"
        body = pb.QueryRequestBody.FromString(q.body)
        signing.verify(answerer.keys.ed25519_key.public_key(), signing.MEMBER_ANSWER,
                       protocol.answer_message(body, q.body, a.ciphertext, a.book_status), a.signature, what="answer")
    assert journal(node) == {qid(q): signing.sha256(a.ciphertext) for q, a in zip(queries, answers)}
    assert len(node.notices) == 4  # type: ignore[attr-defined] # one application-alert notice per answered item
    assert count(node, "answered", "none") == 4


def test_one_bad_item_spoils_no_other_and_leaves_no_row(node, querier, outsider) -> None:  # type: ignore[no-untyped-def]
    earlier = signed_query(querier, subject=OTHER)
    node.answer(item(querier, earlier))  # a single Answer, before the batch
    valid = signed_query(querier)
    gateway_pub, _ = paillier.generate_keypair(2048)
    items = [
        item(querier, valid),
        item(querier, valid),  # the same query id again in the batch: a replay
        item(querier, signed_query(querier, fingerprint=gateway_pub.fingerprint())),
        item(outsider, signed_query(outsider)),
        item(querier, signed_query(querier, timestamp_ms=int(time.time() * 1000) - 6 * 60 * 1000)),
        item(querier, earlier),  # answered by the single call: a replay
        item(querier, signed_query(querier, epoch=2)),
        item(querier, signed_query(querier, subject=OTHER)),
    ]
    response = batch(node, items)
    outcome = [(r.error.reason, r.error.code) if r.WhichOneof("result") == "error" else "answer" for r in response.items]
    denied = grpc.StatusCode.PERMISSION_DENIED.value[0]
    assert outcome == ["answer", ("replayed_query", denied), ("foreign_key", denied), ("not_sponsored", denied),
                       ("stale_timestamp", denied), ("replayed_query", denied),
                       ("epoch_mismatch", grpc.StatusCode.FAILED_PRECONDITION.value[0]), "answer"]
    # the single call's status details, so the gateway's drop reasons stay the same
    assert response.items[1].error.message == f"replayed_query: query id {qid(valid)} was already answered (replay)"
    assert response.items[3].error.message.startswith("not_sponsored: querier credential outsider")
    assert figures(querier, response.items[7].answer)[report.FIELD_INDEX["settled_loans"]] == 1
    rows = journal(node)  # the single answer and the batch's two answers; nothing of the refused items
    assert set(rows) == {qid(earlier), qid(valid), qid(items[7].query)}
    assert (rows[qid(valid)], rows[qid(items[7].query)]) == (signing.sha256(response.items[0].answer.ciphertext),
                                                             signing.sha256(response.items[7].answer.ciphertext))
    assert len(node.notices) == 2  # type: ignore[attr-defined] # the batch's answered items (answer() hands over none)
    assert count(node, "answered", "none") == 2
    assert (count(node, "refused", "replayed_query"), count(node, "refused", "foreign_key"), count(node, "refused", "not_sponsored"),
            count(node, "refused", "stale_timestamp"), count(node, "refused", "epoch_mismatch")) == (2, 1, 1, 1, 1)


def test_the_same_query_content_twice_gets_different_ciphertexts(node, querier) -> None:  # type: ignore[no-untyped-def]
    a, b = signed_query(querier), signed_query(querier)  # same subject, date, purpose: only the query ids differ
    assert qid(a) != qid(b)
    response = batch(node, [item(querier, a), item(querier, b)])
    first, second = response.items[0].answer, response.items[1].answer
    assert first.ciphertext != second.ciphertext  # a fresh single-use mask each
    assert figures(querier, first) == figures(querier, second)


def test_an_oversized_batch_is_refused_whole(node, querier) -> None:  # type: ignore[no-untyped-def]
    q = item(querier, signed_query(querier))
    with pytest.raises(Aborted) as exc:
        node.AnswerBatch(pb.MemberQueryBatch(items=[q] * (log_rules.MAX_BATCH_ITEMS + 1)), Context())
    assert exc.value.code == grpc.StatusCode.INVALID_ARGUMENT and exc.value.details.startswith("malformed_request")
    big = pb.MemberQueryRequest(query=q.query, querier_credential=b"x" * (log_rules.MAX_BATCH_BYTES // 2 + 1))
    with pytest.raises(Aborted) as exc:
        node.AnswerBatch(pb.MemberQueryBatch(items=[big, big]), Context())
    assert exc.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert journal(node) == {} and node.notices == []  # type: ignore[attr-defined]
    # the largest batch allowed is answered
    full = batch(node, [item(querier, signed_query(querier)) for _ in range(log_rules.MAX_BATCH_ITEMS)])
    assert [r.WhichOneof("result") for r in full.items] == ["answer"] * log_rules.MAX_BATCH_ITEMS
    assert len(journal(node)) == log_rules.MAX_BATCH_ITEMS


def test_a_peer_without_the_gateway_role_is_refused_for_every_item(node, querier, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(service_mod, "peer_identity", lambda context: ("querier", "member", b""))
    with pytest.raises(Aborted) as exc:
        node.AnswerBatch(pb.MemberQueryBatch(items=[item(querier, signed_query(querier))] * 2), Context())
    assert exc.value.code == grpc.StatusCode.PERMISSION_DENIED and exc.value.details.startswith("wrong_role: ")
    assert journal(node) == {} and count(node, "refused", "wrong_role") == 2


def test_a_concurrent_answer_of_the_same_id_makes_the_item_a_replay(node, querier, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Another call answers an id between the batch's replay check and its
    insert: the batch's transaction is redone and that item refused, the others answered."""
    from alliance_member import answer_batch

    racing, other = signed_query(querier), signed_query(querier, subject=OTHER)
    real = node.ciphertext
    raced: list[bool] = []

    def ciphertext_then_race(admitted, facts):  # type: ignore[no-untyped-def]
        if not raced and admitted.body.query_id == qid(racing):
            raced.append(True)
            node.answer(item(querier, racing))  # a separate transaction (SQLite: a second connection; no lock held yet)
        return real(admitted, facts)

    monkeypatch.setattr(node, "ciphertext", ciphertext_then_race)
    response = answer_batch.answer_batch(node, pb.MemberQueryBatch(items=[item(querier, racing), item(querier, other)]))[0]
    assert response.items[0].error.reason == "replayed_query"
    assert response.items[1].WhichOneof("result") == "answer"
    assert set(journal(node)) == {qid(racing), qid(other)}
