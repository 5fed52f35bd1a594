"""A member node's own checks (SPEC §5, §1 properties 4 and 5): it answers a
genuine query with exactly one fixed-width ciphertext and refuses — with an
error, never an encryption of zeros — forged, replayed, stale, re-keyed or
foreign-key requests, whatever the gateway does."""
from __future__ import annotations

import time
from datetime import date

import pytest

from alliance import db, paillier, protocol, report, signing
from alliance.errors import Refused
from alliance.v1 import alliance_pb2 as pb
from alliance_member import store
from alliance_member.service import MemberService, PeerTrust
from tests.alliance_fixtures import MK, SUBJECT, LocalCA, signed_query
from alliance import identity


@pytest.fixture(scope="module")
def ca() -> LocalCA:
    return LocalCA()


@pytest.fixture(scope="module")
def querier(ca):  # type: ignore[no-untyped-def]
    return ca.enrol("querier")


@pytest.fixture(scope="module")
def answerer(ca):  # type: ignore[no-untyped-def]
    return ca.enrol("answerer")


@pytest.fixture
def service(ca, answerer, tmp_path):  # type: ignore[no-untyped-def]
    engine = db.make_engine(db.sqlite_url(tmp_path / "m.db"))
    store.create_schema(engine)
    svc = MemberService(member_id="answerer", engine=engine, trust=PeerTrust(engine, ca.cert),
                        signing_key=answerer.signing_key, matching_key=lambda: MK, mask_pools=paillier.MaskPools(target=2))
    yield svc
    engine.dispose()


def ask(service, querier, query: pb.SignedQuery, credential: pb.Credential | None = None) -> pb.MemberQueryResponse:  # type: ignore[no-untyped-def]
    cred = credential or querier.credential
    return service.answer(pb.MemberQueryRequest(query=query, querier_credential=cred.SerializeToString()))


def test_genuine_query_gets_one_signed_fixed_width_ciphertext(service, querier, answerer) -> None:
    q = signed_query(querier)
    resp = ask(service, querier, q)
    assert len(resp.ciphertext) == querier.public_key.ciphertext_width == 512
    m = querier.private_key.decrypt(paillier.decode_ciphertext(querier.public_key, resp.ciphertext))
    assert m == 0  # unknown subject: all-zero figures
    body = pb.QueryRequestBody.FromString(q.body)
    signing.verify(answerer.keys.ed25519_key.public_key(), signing.MEMBER_ANSWER,
                   signing.member_answer_message(body.query_id, signing.sha256(q.body), signing.sha256(resp.ciphertext)),
                   resp.signature, what="answer")


def test_answer_size_does_not_depend_on_knowing_the_subject(service, querier) -> None:
    token = identity.subject_token(MK.key, *SUBJECT)
    with service.engine.begin() as conn:
        conn.execute(store.scores.insert().values(subject_token=token, key_epoch=1, masked_id="x", id_type="RESIDENT_ID",
                                                  score=720, scored_on=date(2026, 1, 1), import_run=1, import_line=2))
    known = ask(service, querier, signed_query(querier))
    unknown = ask(service, querier, signed_query(querier, subject=("RESIDENT_ID", "440524198001010013")))
    assert len(known.ciphertext) == len(unknown.ciphertext)
    sums = paillier.unpack(querier.private_key.decrypt(paillier.decode_ciphertext(querier.public_key, known.ciphertext)),
                           len(report.REPORT_FIELDS), 1)
    assert sums[report.FIELD_INDEX["score_sum"]] == 720 and sums[report.FIELD_INDEX["scored_lenders"]] == 1


def test_bad_signature_is_refused(service, querier) -> None:
    q = signed_query(querier)
    q.signature = bytes([q.signature[0] ^ 1]) + q.signature[1:]
    with pytest.raises(Refused) as exc:
        ask(service, querier, q)
    assert exc.value.reason == "bad_signature"


def test_gateway_cannot_forge_a_body(service, querier) -> None:
    """A gateway changing any signed field (here: the purpose) breaks the signature."""
    q = signed_query(querier)
    body = pb.QueryRequestBody.FromString(q.body)
    body.purpose = pb.PURPOSE_POST_LOAN_MONITORING
    q.body = body.SerializeToString()
    with pytest.raises(Refused) as exc:
        ask(service, querier, q)
    assert exc.value.reason == "bad_signature"


def test_stale_timestamp_is_refused(service, querier) -> None:
    with pytest.raises(Refused) as exc:
        ask(service, querier, signed_query(querier, timestamp_ms=int(time.time() * 1000) - 6 * 60 * 1000))
    assert exc.value.reason == "stale_timestamp"


def test_replayed_query_id_is_refused(service, querier) -> None:
    q = signed_query(querier)
    ask(service, querier, q)
    with pytest.raises(Refused) as exc:
        ask(service, querier, q)
    assert exc.value.reason == "replayed_query"


def test_foreign_paillier_key_is_refused(service, querier) -> None:
    gateway_pub, _ = paillier.generate_keypair(2048)
    with pytest.raises(Refused) as exc:
        ask(service, querier, signed_query(querier, fingerprint=gateway_pub.fingerprint()))
    assert exc.value.reason == "foreign_key"


def test_token_not_matching_its_hash_is_refused(service, querier) -> None:
    q = signed_query(querier)
    q.subject_token = bytes(32)
    with pytest.raises(Refused) as exc:
        ask(service, querier, q)
    assert exc.value.reason == "token_mismatch"


def test_token_of_another_epoch_is_an_error_not_zeros(service, querier) -> None:
    with pytest.raises(Refused) as exc:
        ask(service, querier, signed_query(querier, epoch=2))
    assert exc.value.reason == "epoch_mismatch"


def test_second_credential_in_a_known_members_name_is_refused(ca, service, querier) -> None:
    """The CA (operator) issues a credential in the querier's name with keys of
    its own; once the real one is pinned, the member refuses it."""
    ask(service, querier, signed_query(querier))  # pins the real credential
    impostor = ca.enrol("querier")
    with pytest.raises(Refused) as exc:
        ask(service, impostor, signed_query(impostor))
    assert exc.value.reason == "unpinned_credential"


def test_after_a_rotation_the_old_credential_is_refused_though_it_was_cached(ca, service, querier) -> None:
    """Pinning must not be bypassed by the verified-credential cache: once the
    rotated credential is pinned, the old one (old keys, perhaps stolen) is
    refused like any unendorsed credential."""
    ask(service, querier, signed_query(querier))  # pins and caches the first credential
    rotated = ca.rotate(querier)
    assert ask(service, rotated, signed_query(rotated)).ciphertext  # endorsed by the pinned key: accepted
    with pytest.raises(Refused) as exc:
        ask(service, querier, signed_query(querier))
    assert exc.value.reason == "unpinned_credential"


def test_credential_from_another_ca_is_refused(service, querier) -> None:
    stranger = LocalCA().enrol("querier-x")
    with pytest.raises(Refused) as exc:
        ask(service, stranger, signed_query(stranger))
    assert exc.value.reason == "bad_credential"


def test_precheck_answers_the_active_balance(service, querier) -> None:
    token = identity.subject_token(MK.key, *SUBJECT)
    with service.engine.begin() as conn:
        for i, (status, bal, opened) in enumerate([("ACTIVE", 12_345, date(2026, 1, 1)), ("ACTIVE", 5, date(2026, 7, 1)),
                                                   ("SETTLED", 0, date(2025, 1, 1))]):
            conn.execute(store.loans.insert().values(
                loan_id=f"L{i}", subject_token=token, key_epoch=1, masked_id="x", subject_type="PERSON", id_type="RESIDENT_ID",
                product_type="CONSUMER", principal_fen=10**7, balance_fen=bal, annual_rate_e4=0, term_months=12,
                repayment_method="BULLET", opened_on=opened, due_on=date(2027, 1, 1), status=status, overdue_days=0,
                overdue_amount_fen=0, guarantee_type="NONE", updated_on=opened, import_run=1, import_line=i + 2))
    resp = ask(service, querier, signed_query(querier, mode=pb.QUERY_MODE_PRECHECK))
    assert querier.private_key.decrypt(paillier.decode_ciphertext(querier.public_key, resp.ciphertext)) == 12_345


@pytest.mark.parametrize("as_of", [date(1, 1, 1), date(9999, 12, 31), date(1989, 12, 31)])
def test_an_absurd_report_date_is_a_malformed_request_not_a_crash(service, querier, as_of) -> None:  # type: ignore[no-untyped-def]
    """Day arithmetic near date.min overflowed inside the figures: every member
    failed with UNKNOWN. It is now refused up front, with the reason."""
    with pytest.raises(Refused) as exc:
        ask(service, querier, signed_query(querier, as_of=as_of))
    assert exc.value.reason == "malformed_request" and "outside" in str(exc.value)


@pytest.mark.parametrize("field, size", [("credential", 8193), ("body", 4097), ("signature", 65), ("subject_token", 33)])
def test_oversized_fields_are_refused_before_parsing(service, querier, field, size) -> None:  # type: ignore[no-untyped-def]
    """SPEC §5.4: the member bounds sizes itself, whatever the gateway did."""
    q = signed_query(querier)
    cred = querier.credential.SerializeToString()
    if field == "credential":
        cred = cred + b"\x00" * (size - len(cred))
    else:
        setattr(q, field, getattr(q, field) + b"\x00" * (size - len(getattr(q, field))))
    with pytest.raises(Refused) as exc:
        service.answer(pb.MemberQueryRequest(query=q, querier_credential=cred))
    assert exc.value.reason == "malformed_request"


def test_a_request_inside_the_gateway_window_is_fresh_at_the_member(service, querier) -> None:
    """The gateway's ±60 s is inside the members' ±5 min (SPEC §5.4)."""
    from alliance import log_rules
    assert log_rules.GATEWAY_FRESHNESS_MS < protocol.FRESHNESS_MS == log_rules.MEMBER_FRESHNESS_MS
    ask(service, querier, signed_query(querier, timestamp_ms=int(time.time() * 1000) - log_rules.GATEWAY_FRESHNESS_MS))


def test_alerts_are_durable_and_listed_newest_last(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from alliance_member import alerts
    engine = db.make_engine(db.sqlite_url(tmp_path / "a.db"))
    store.create_schema(engine)
    first = alerts.raise_alert(engine, "unlogged_answer", "answer q1 is not in the log", {"query_id": "q1"}, now_ms=1000)
    alerts.raise_alert(engine, "inconsistent_checkpoint", "two views", now_ms=2000)
    listed = alerts.list_alerts(engine)
    assert [(x.kind, x.raised_at_ms) for x in listed] == [("unlogged_answer", 1000), ("inconsistent_checkpoint", 2000)]
    assert listed[0].details == {"query_id": "q1"} and listed[0].id == first
    assert [x.kind for x in alerts.list_alerts(engine, since_ms=1500)] == ["inconsistent_checkpoint"]
    assert [x.kind for x in alerts.list_alerts(engine, after_id=first)] == ["inconsistent_checkpoint"]
