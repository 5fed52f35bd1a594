"""Application alerts and the webhook (SPEC §9): a LOAN_APPROVAL query or
precheck about one of the member's ACTIVE borrowers raises an
`applied_elsewhere` alert only after the answer has been sent, never naming
the querier, and never for a settled-only borrower or another purpose; the
webhook retries with back-off and never blocks answering."""
from __future__ import annotations

import dataclasses
import json
import threading
import time
from datetime import date
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from alliance import db, identity, paillier
from alliance.v1 import alliance_pb2 as pb
from alliance_member import alerts, service as service_mod, store
from alliance_member.application_alerts import AnswerNotice, ApplicationAlerts
from alliance_member.service import MemberService, PeerTrust
from alliance_member.webhook import Webhook
from tests.alliance_fixtures import MK, SUBJECT, LocalCA, signed_query

SETTLED_SUBJECT = ("RESIDENT_ID", "440524198001010013")
UNKNOWN_SUBJECT = ("RESIDENT_ID", "110101199003070011")


@pytest.fixture(scope="module")
def ca() -> LocalCA:
    return LocalCA()


@pytest.fixture(scope="module")
def querier(ca):  # type: ignore[no-untyped-def]
    return ca.enrol("lender-q")


@pytest.fixture(scope="module")
def answerer(ca):  # type: ignore[no-untyped-def]
    return ca.enrol("answerer")


def _loan(subject: tuple[str, str], loan_id: str, status: str) -> dict[str, object]:
    return dict(loan_id=loan_id, subject_token=identity.subject_token(MK.key, *subject), key_epoch=1,
                masked_id=subject[1][:6] + "********" + subject[1][14:], subject_type="PERSON", id_type=subject[0],
                product_type="CONSUMER", principal_fen=500_000, balance_fen=300_000 if status == "ACTIVE" else 0,
                annual_rate_e4=1200, term_months=12, repayment_method="EQUAL_INSTALLMENT", opened_on=date(2026, 1, 5),
                due_on=date(2027, 1, 5), status=status, overdue_days=0, overdue_amount_fen=0, guarantee_type="NONE",
                updated_on=date(2026, 6, 1), import_run=1, import_line=2)


class Node:
    def __init__(self, service: MemberService, alerts_worker: ApplicationAlerts) -> None:
        self.service, self.worker, self.engine = service, alerts_worker, service.engine


@pytest.fixture
def node(ca, answerer, tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    monkeypatch.setattr(service_mod, "peer_identity", lambda context: ("gateway", "gateway", b""))
    engine = db.make_engine(db.sqlite_url(tmp_path / "m.db"))
    store.create_schema(engine)
    with engine.begin() as conn:
        conn.execute(store.loans.insert(), [_loan(SUBJECT, "L-1", "ACTIVE"), _loan(SUBJECT, "L-0", "SETTLED"),
                                            _loan(SETTLED_SUBJECT, "L-2", "SETTLED")])
    worker = ApplicationAlerts(engine)
    svc = MemberService(member_id="answerer", engine=engine, trust=PeerTrust(engine, ca.cert),
                        signing_key=answerer.signing_key, matching_key=lambda: MK, mask_pools=paillier.MaskPools(target=2),
                        after_answer=worker.submit)
    yield Node(svc, worker)
    worker.close()
    engine.dispose()


class FakeContext:
    """What gRPC gives a servicer: callbacks run when the RPC has terminated,
    i.e. once the answer has been sent."""

    def __init__(self) -> None:
        self.callbacks: list = []

    def add_callback(self, callback) -> bool:  # type: ignore[no-untyped-def]
        self.callbacks.append(callback)
        return True

    def abort(self, code, details):  # type: ignore[no-untyped-def]
        raise RuntimeError(f"{code}: {details}")

    def sent(self) -> None:
        for callback in self.callbacks:
            callback()


def answer(node: Node, querier, query: pb.SignedQuery) -> FakeContext:  # type: ignore[no-untyped-def]
    ctx = FakeContext()
    response = node.service.Answer(pb.MemberQueryRequest(query=query, querier_credential=querier.credential.SerializeToString()), ctx)
    assert len(response.ciphertext) == 512
    ctx.sent()
    assert node.worker.drain(10)
    return ctx


def test_loan_approval_query_about_an_active_borrower_raises_an_alert(node, querier) -> None:  # type: ignore[no-untyped-def]
    answer(node, querier, signed_query(querier))
    [alert] = alerts.list_alerts(node.engine)
    assert alert.kind == "applied_elsewhere"
    assert alert.details["masked_id"] == "110105********002X" and alert.details["mode"] == "query"
    assert alert.details["id_type"] == "RESIDENT_ID" and alert.details["at"].endswith("+08:00")
    assert "110105********002X" in alert.message


def test_loan_approval_precheck_raises_an_alert_too(node, querier) -> None:  # type: ignore[no-untyped-def]
    answer(node, querier, signed_query(querier, mode=pb.QUERY_MODE_PRECHECK))
    [alert] = alerts.list_alerts(node.engine)
    assert alert.kind == "applied_elsewhere" and alert.details["mode"] == "precheck" and "precheck" in alert.message


def test_the_alert_does_not_name_the_querier(node, querier) -> None:  # type: ignore[no-untyped-def]
    query = signed_query(querier)
    answer(node, querier, query)
    [alert] = alerts.list_alerts(node.engine)
    shown = json.dumps(alert.as_json(), ensure_ascii=False)
    assert "lender-q" not in shown
    assert pb.QueryRequestBody.FromString(query.body).query_id not in shown  # nor a query id to look it up by


def test_no_alert_for_a_settled_only_borrower(node, querier) -> None:  # type: ignore[no-untyped-def]
    answer(node, querier, signed_query(querier, subject=SETTLED_SUBJECT))
    answer(node, querier, signed_query(querier, subject=UNKNOWN_SUBJECT))  # unknown here
    assert alerts.list_alerts(node.engine) == []


@pytest.mark.parametrize("batched", [False, True])
def test_the_answer_tells_the_alerts_what_its_own_read_of_the_book_showed(node, querier, batched) -> None:  # type: ignore[no-untyped-def]
    """The notice carries whether the answer's read found an ACTIVE loan, so
    the worker skips its lookup for everyone else; a borrower with only
    settled loans, or a stranger, is not a current borrower. Both call sites."""
    handed: list = []
    node.service.after_answer = handed.append
    subjects = [SUBJECT, SETTLED_SUBJECT, UNKNOWN_SUBJECT]
    requests = [pb.MemberQueryRequest(query=signed_query(querier, subject=s), querier_credential=querier.credential.SerializeToString())
                for s in subjects]
    ctx = FakeContext()
    if batched:
        node.service.AnswerBatch(pb.MemberQueryBatch(items=requests), ctx)
    else:
        for request in requests:
            node.service.Answer(request, ctx)
    ctx.sent()
    tokens = [identity.subject_token(MK.key, *s) for s in subjects]
    assert [(n.subject_token, n.active_borrower) for n in handed] == list(zip(tokens, [True, False, False]))


def test_a_notice_that_found_no_active_loan_raises_no_alert_even_for_a_borrower(node) -> None:  # type: ignore[no-untyped-def]
    """The answer-time view decides (a loan imported after the answer does
    not turn it into an alert); an unknown view (None) is looked up."""
    token = identity.subject_token(MK.key, *SUBJECT)
    notice = AnswerNotice(token, 1, pb.PURPOSE_LOAN_APPROVAL, pb.QUERY_MODE_REPORT, 0, active_borrower=False)
    assert node.worker.handle(notice) is None
    assert node.worker.handle(dataclasses.replace(notice, active_borrower=None)) is not None
    assert [a.kind for a in alerts.list_alerts(node.engine)] == ["applied_elsewhere"]


@pytest.mark.parametrize("purpose", ["CREDIT_LIMIT_REVIEW", "POST_LOAN_MONITORING"])
def test_no_alert_for_another_purpose(node, querier, purpose) -> None:  # type: ignore[no-untyped-def]
    answer(node, querier, signed_query(querier, purpose=purpose))
    answer(node, querier, signed_query(querier, purpose=purpose, mode=pb.QUERY_MODE_PRECHECK))
    assert alerts.list_alerts(node.engine) == []


def test_nothing_is_recorded_before_the_answer_is_sent(node, querier) -> None:  # type: ignore[no-untyped-def]
    ctx = FakeContext()
    node.service.Answer(pb.MemberQueryRequest(query=signed_query(querier), querier_credential=querier.credential.SerializeToString()), ctx)
    assert node.worker.drain(10)
    assert alerts.list_alerts(node.engine) == [] and len(ctx.callbacks) == 1
    ctx.sent()
    assert node.worker.drain(10)
    assert [a.kind for a in alerts.list_alerts(node.engine)] == ["applied_elsewhere"]


def test_the_answer_does_not_wait_for_a_blocked_alert_worker(node, querier, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    release, entered = threading.Event(), threading.Event()
    real = node.worker.handle

    def blocked(notice):  # type: ignore[no-untyped-def]
        entered.set()
        release.wait(30)
        return real(notice)

    monkeypatch.setattr(node.worker, "handle", blocked)
    first = FakeContext()
    node.service.Answer(pb.MemberQueryRequest(query=signed_query(querier), querier_credential=querier.credential.SerializeToString()), first)
    first.sent()
    assert entered.wait(10)  # the worker is now stuck inside the alert work
    started = time.monotonic()
    for _ in range(3):
        ctx = FakeContext()
        resp = node.service.Answer(pb.MemberQueryRequest(query=signed_query(querier), querier_credential=querier.credential.SerializeToString()), ctx)
        ctx.sent()
        assert len(resp.ciphertext) == 512
    assert time.monotonic() - started < 5  # answered while the worker is blocked
    assert alerts.list_alerts(node.engine) == []
    release.set()
    assert node.worker.drain(10)
    assert len(alerts.list_alerts(node.engine)) == 4


def test_a_full_alert_queue_drops_instead_of_blocking(tmp_path) -> None:  # type: ignore[no-untyped-def]

    engine = db.make_engine(db.sqlite_url(tmp_path / "q.db"))
    store.create_schema(engine)
    worker = ApplicationAlerts(engine, maxsize=2, start=False)
    notice = AnswerNotice(b"\0" * 32, 1, pb.PURPOSE_LOAN_APPROVAL, pb.QUERY_MODE_REPORT, 0)
    submitter = threading.Thread(target=lambda: [worker.submit(notice) for _ in range(5)], daemon=True)
    submitter.start()
    submitter.join(5)
    assert not submitter.is_alive() and worker.dropped == 3  # never blocked, 3 of 5 dropped


# ---------------------------------------------------------------- webhook

class Receiver:
    """A local HTTP endpoint on 127.0.0.1 answering a scripted status per request."""

    def __init__(self, statuses: list[int], *, hang: threading.Event | None = None) -> None:
        self.statuses, self.hang = list(statuses), hang
        self.hits: list[tuple[float, bytes, str]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.hits.append((time.monotonic(), body, self.headers["Content-Type"]))
                if outer.hang is not None:
                    outer.hang.wait(30)
                status = outer.statuses.pop(0) if outer.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_webhook_retries_with_exponential_back_off_then_delivers() -> None:
    rx = Receiver([503, 500, 200])
    hook = Webhook(rx.url, base_delay_s=0.2, attempts=5)
    try:
        assert hook.submit({"id": 7, "kind": "applied_elsewhere"})
        assert hook.flush(15)
    finally:
        hook.close()
        rx.close()
    assert len(rx.hits) == 3 and hook.delivered == 1 and hook.failed == 0
    assert {body for _, body, _ in rx.hits} == {b'{"id": 7, "kind": "applied_elsewhere"}'}
    assert rx.hits[0][2] == "application/json"
    gap1, gap2 = rx.hits[1][0] - rx.hits[0][0], rx.hits[2][0] - rx.hits[1][0]
    assert 0.2 <= gap1 < 0.4 + 0.3  # base delay
    assert 0.4 <= gap2 < 0.8 + 0.3  # doubled


def test_webhook_gives_up_on_a_client_error_without_retrying() -> None:
    rx = Receiver([400])
    hook = Webhook(rx.url, base_delay_s=0.05, attempts=5)
    try:
        hook.submit({"id": 1})
        assert hook.flush(10)
    finally:
        hook.close()
        rx.close()
    assert len(rx.hits) == 1 and hook.failed == 1


def test_webhook_posts_every_raised_alert(tmp_path) -> None:  # type: ignore[no-untyped-def]
    engine = db.make_engine(db.sqlite_url(tmp_path / "w.db"))
    store.create_schema(engine)
    rx = Receiver([])
    hook = Webhook(rx.url, base_delay_s=0.05).listen()
    try:
        alert_id = alerts.raise_alert(engine, "monitor_new_write_off", "RESIDENT_ID 110105********002X: a new write-off",
                                      {"masked_id": "110105********002X"}, now_ms=1_780_000_000_000)
        assert hook.flush(10)
    finally:
        hook.close()
        rx.close()
    [(_, body, _)] = rx.hits
    doc = json.loads(body)
    assert doc["id"] == alert_id and doc["kind"] == "monitor_new_write_off"
    assert doc["details"] == {"masked_id": "110105********002X"} and doc["raised_at_ms"] == 1_780_000_000_000
    assert doc["raised_at"] == "2026-05-29T04:26:40+08:00"
    alerts.raise_alert(engine, "after_close", "not posted")
    assert len(rx.hits) == 1


def test_a_hung_webhook_never_blocks_answering(node, querier) -> None:  # type: ignore[no-untyped-def]
    hang = threading.Event()
    rx = Receiver([], hang=hang)
    hook = Webhook(rx.url, max_queue=2, timeout_s=20).listen()
    try:
        started = time.monotonic()
        for _ in range(6):
            answer(node, querier, signed_query(querier))  # each raises an alert → the webhook's queue
        assert time.monotonic() - started < 10
        assert len(alerts.list_alerts(node.engine)) == 6  # every alert stored whatever the webhook does
        assert hook.dropped >= 3  # 1 in flight, 2 queued, the rest dropped (and logged)
    finally:
        hang.set()
        hook.close(5)
        rx.close()
