"""Fuzzing with Hypothesis (issue 12): UDS-1 rows and whole files (CSV and
JSON Lines), identity numbers, and every RPC's request bytes at the gateway
and at a member node, random and mutated from valid messages.

Properties: never a crash or traceback, only a typed error (alliance.errors)
or a gRPC status through context.abort (never INTERNAL/UNKNOWN, which mean a
bug); the service still serves a valid request afterwards; nothing is
half-written (a failed import leaves the store exactly as it was).

Under CI=true every target runs at least 1,000 examples (profile "ci");
locally fewer (profile "dev"); HYPOTHESIS_PROFILE overrides."""
from __future__ import annotations

import csv
import io
import json
import os
import secrets
import time
import unicodedata
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st
from sqlalchemy import delete, func, insert, select

from alliance import book_status, db, identity, paillier, pki, report, signing, uds1
from alliance.errors import AllianceError, InvalidIdNumber, Refused
from alliance.v1 import alliance_pb2 as pb
from alliance_gateway import audit_log, schema
from alliance_gateway.home import GatewayConfig
from alliance_gateway.rate_limit import RefusalLimiter
from alliance_gateway.registry import Registry
from alliance_gateway.service import GatewayService
from alliance_member import importer, store
from alliance_member.service import MemberService, PeerTrust
from tests.alliance_fixtures import MK, SUBJECT, LocalCA, signed_query, log_book_status
from tests.conftest import _fresh_pg_database

pytestmark = pytest.mark.fuzz

_COMMON = dict(
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large,
                           HealthCheck.filter_too_much],
    # Two shared cores: a slow example is not a bug; a hang is caught by pytest-timeout.
    deadline=timedelta(seconds=5),
    print_blob=True,
)
settings.register_profile("ci", max_examples=1000, derandomize=True, database=None, **_COMMON)
settings.register_profile("dev", max_examples=int(os.environ.get("FUZZ_EXAMPLES", "100")), **_COMMON)
PROFILE = os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") == "true" else "dev")
FUZZ = settings(settings.get_profile(PROFILE))
# The gateway targets run once per backend; on PostgreSQL (the extra backend,
# for what SQLite stores and PostgreSQL refuses) a quarter of the examples.
FUZZ_PG = settings(FUZZ, max_examples=max(FUZZ.max_examples // 4, 25))

D = date(2026, 6, 30)

# -- mutation of bytes -----------------------------------------------------------------------


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes], max_ops: int = 4) -> bytes:
    """A valid sample with a few byte-level edits: flips, inserts, deletes,
    truncation, duplication, and splices of interesting bytes."""
    data = bytearray(draw(st.sampled_from(seeds)))
    interesting = [b"\x00", b"\xff", b"\x80", b"\r", b"\n", b"\r\n", b'"', b",", b"\xef\xbb\xbf", b"\xed\xa0\x80",
                   b"\\u0000", b"{", b"}", b"1e309", b"-", b"\xe3\x80\x80", b"\xef\xbc\x91", b"\x7f" * 9]
    for _ in range(draw(st.integers(1, max_ops))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "dup", "splice"]))
        pos = draw(st.integers(0, len(data)))
        if op == "flip" and data:
            pos = min(pos, len(data) - 1)
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[pos:pos + draw(st.integers(1, 16))]
        elif op == "truncate":
            del data[pos:]
        elif op == "dup":
            data[pos:pos] = data[pos:pos + draw(st.integers(1, 64))]
        else:
            data[pos:pos] = draw(st.sampled_from(interesting))
    return bytes(data)


def bytes_like(seeds: list[bytes], max_size: int = 400) -> st.SearchStrategy[bytes]:
    return st.one_of(st.binary(max_size=max_size), mutated(seeds))


# -- valid identity numbers --------------------------------------------------------------------

RESIDENT_TODAY = date(2026, 12, 1)


@st.composite
def resident_ids(draw: st.DrawFn) -> str:
    region = draw(st.from_regex(r"[1-8][0-9]{5}", fullmatch=True))
    birth = draw(st.dates(min_value=date(1900, 1, 1), max_value=date(2008, 12, 31)))
    seq = draw(st.from_regex(r"[0-9]{3}", fullmatch=True))
    first17 = region + birth.strftime("%Y%m%d") + seq
    return first17 + identity.resident_id_check_char(first17)


@st.composite
def legacy_resident_ids(draw: st.DrawFn) -> str:
    region = draw(st.from_regex(r"[1-8][0-9]{5}", fullmatch=True))
    birth = draw(st.dates(min_value=date(1900, 1, 1), max_value=date(1999, 12, 31)))
    seq = draw(st.from_regex(r"[0-9]{3}", fullmatch=True))
    return region + birth.strftime("%y%m%d") + seq


@st.composite
def usccs(draw: st.DrawFn) -> str:
    first17 = "".join(draw(st.lists(st.sampled_from(identity.USCC_ALPHABET), min_size=17, max_size=17)))
    return first17 + identity.uscc_check_char(first17)


# -- 1. identity numbers -------------------------------------------------------------------------

id_texts = st.one_of(
    st.text(max_size=40),
    st.from_regex(r"[0-9Xx ]{14,20}", fullmatch=True),
    st.from_regex(r"[0-9A-Za-z]{18}", fullmatch=True),
    resident_ids().map(lambda s: s[:-1] + "x" if s.endswith("X") else s),
    legacy_resident_ids(),
    usccs().map(str.lower),
    resident_ids().map(lambda s: unicodedata.normalize("NFKC", s).translate({ord(c): 0xFF10 + int(c) for c in "0123456789"})),
)


@FUZZ
@given(id_type=st.sampled_from(["RESIDENT_ID", "USCC", "PASSPORT", ""]), raw=id_texts)
def test_fuzz_identity_numbers(id_type: str, raw: str) -> None:
    """Any text: a canonical id or InvalidIdNumber; a canonical id is a fixed
    point, can be tokenised and masked."""
    try:
        canonical = identity.canonical_id(id_type, raw, today=RESIDENT_TODAY)
    except InvalidIdNumber:
        return
    assert len(canonical) == 18 and canonical.isascii() and canonical == canonical.upper()
    assert identity.canonical_id(id_type, canonical, today=RESIDENT_TODAY) == canonical
    assert len(identity.subject_token(MK.key, id_type, canonical)) == 32
    masked = identity.masked_id(canonical)
    assert masked[6:14] == "*" * 8


@st.composite
def one_substitution(draw: st.DrawFn) -> tuple[str, str, str]:
    id_type = draw(st.sampled_from(["RESIDENT_ID", "USCC"]))
    valid = draw(resident_ids() if id_type == "RESIDENT_ID" else usccs())
    alphabet = "0123456789X" if id_type == "RESIDENT_ID" else identity.USCC_ALPHABET
    pos = draw(st.integers(0, 17))
    if id_type == "RESIDENT_ID" and pos < 17:
        alphabet = "0123456789"
    char = draw(st.sampled_from([c for c in alphabet if c != valid[pos]]))
    return id_type, valid, valid[:pos] + char + valid[pos + 1:]


@FUZZ
@given(case=one_substitution())
def test_fuzz_identity_single_substitution_is_always_refused(case: tuple[str, str, str]) -> None:
    """MOD 11-2 and the USCC mod-31 check detect every single substituted
    character: a typo never canonicalises (into someone else's id)."""
    id_type, valid, typo = case
    assert identity.canonical_id(id_type, valid, today=RESIDENT_TODAY) == valid
    with pytest.raises(InvalidIdNumber):
        identity.canonical_id(id_type, typo, today=RESIDENT_TODAY)


@FUZZ
@given(legacy=legacy_resident_ids(), spaced=st.booleans())
def test_fuzz_legacy_15_digit_ids_upgrade(legacy: str, spaced: bool) -> None:
    raw = f" {legacy[:6]} {legacy[6:12]} {legacy[12:]} " if spaced else legacy
    try:
        canonical = identity.canonical_id("RESIDENT_ID", raw, today=RESIDENT_TODAY)
    except InvalidIdNumber:  # an impossible birth date (e.g. 19000229)
        return
    assert canonical[:17] == legacy[:6] + "19" + legacy[6:]
    assert canonical[17] == identity.resident_id_check_char(canonical[:17])


# -- 2. UDS-1 rows and files --------------------------------------------------------------------

money = st.one_of(st.integers(1, 10**9).map(lambda f: f"{f // 100}.{f % 100:02d}"), st.just("0.01"))


@st.composite
def valid_rows(draw: st.DrawFn, kind: str) -> dict[str, str]:
    person = draw(st.booleans())
    id_type = "RESIDENT_ID" if person else "USCC"
    id_number = draw(resident_ids() if person else usccs())
    if kind == "flags":
        return {"id_type": id_type, "id_number": id_number, "flag_type": draw(st.sampled_from(["FRAUD", "MALICIOUS_DEFAULT"])),
                "flagged_on": draw(st.dates(date(2000, 1, 1), date(2030, 1, 1))).isoformat(),
                "status": draw(st.sampled_from(["ACTIVE", "CLEARED"]))}
    if kind == "scores":
        return {"id_type": id_type, "id_number": id_number, "score": str(draw(st.integers(300, 900))),
                "scored_on": draw(st.dates(date(2000, 1, 1), date(2030, 1, 1))).isoformat()}
    principal = draw(st.integers(1, 10**12))
    status = draw(st.sampled_from(["ACTIVE", "SETTLED", "WRITTEN_OFF"]))
    balance = 0 if status == "SETTLED" else draw(st.integers(0, principal))
    overdue = draw(st.integers(0, 400)) if status == "ACTIVE" and balance > 0 else 0
    amount = draw(st.integers(1, balance)) if overdue else 0
    opened = draw(st.dates(date(2000, 1, 1), date(2030, 1, 1)))
    yuan = lambda fen: f"{fen // 100}.{fen % 100:02d}"  # noqa: E731
    return {
        "loan_id": draw(st.from_regex(r"[A-Za-z0-9._:-]{1,64}", fullmatch=True)),
        "subject_type": "PERSON" if person else "ORG", "id_type": id_type, "id_number": id_number,
        "product_type": draw(st.sampled_from(["CONSUMER", "BUSINESS", "AUTO", "EDUCATION", "MORTGAGE", "OTHER"])),
        "principal": yuan(principal), "balance": yuan(balance),
        "annual_rate": f"{draw(st.integers(0, 36))}.{draw(st.integers(0, 9999)):04d}" if draw(st.booleans()) else "36",
        "term_months": str(draw(st.integers(1, 360))),
        "repayment_method": draw(st.sampled_from(["EQUAL_INSTALLMENT", "EQUAL_PRINCIPAL", "INTEREST_FIRST", "BULLET", "REVOLVING"])),
        "opened_on": opened.isoformat(), "due_on": (opened + timedelta(days=draw(st.integers(0, 4000)))).isoformat(),
        "status": status, "overdue_days": str(overdue), "overdue_amount": yuan(amount),
        "guarantee_type": draw(st.sampled_from(["NONE", "GUARANTOR", "COLLATERAL", "INSURANCE", "MARGIN"])),
        "updated_on": draw(st.dates(date(2000, 1, 1), date(2030, 1, 1))).isoformat(),
    }


nasty_values = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["", " ", "0", "-0", "-1", "1e3", "NaN", "inf", "0.001", "1,000.00", "１２３", "2026-02-30", "2026-6-1",
                     "20260601", "9999-12-31", "0001-01-01", "99999999999999999999", "36.00001", "\x00", "\ud800"[:0] + "é",
                     "ACTIVE ", "active", "X" * 70, "1" * 400]),
)


def _near_valid(field: str) -> st.SearchStrategy[str]:
    """Values shaped like the field's own but out of range or impossible."""
    if field.endswith("_on"):
        return st.from_regex(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", fullmatch=True)
    if field in ("principal", "balance", "overdue_amount", "annual_rate"):
        return st.from_regex(r"-?[0-9]{0,16}(\.[0-9]{0,6})?", fullmatch=True)
    if field in ("term_months", "overdue_days", "score"):
        return st.from_regex(r"[0-9]{0,22}", fullmatch=True)
    if field == "id_number":
        return st.one_of(resident_ids(), usccs(), legacy_resident_ids(), st.from_regex(r"[0-9]{17}[0-9X]", fullmatch=True))
    return st.sampled_from(sorted({v for f in ("status", "flag_type", "id_type", "subject_type") for v in ("ACTIVE", "CLEARED",
                                   "SETTLED", "WRITTEN_OFF", "FRAUD", "MALICIOUS_DEFAULT", "RESIDENT_ID", "USCC", "PERSON", "ORG")}))


@st.composite
def mutated_rows(draw: st.DrawFn, kind: str) -> dict[str, Any]:
    row: dict[str, Any] = dict(draw(valid_rows(kind)))
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.sampled_from(["value", "drop", "extra", "json_type"]))
        name = draw(st.sampled_from(sorted(row) or ["x"]))
        if op == "value":
            row[name] = draw(st.one_of(nasty_values, _near_valid(name)))
        elif op == "drop":
            row.pop(name, None)
        elif op == "extra":
            row[draw(st.text(min_size=1, max_size=10))] = draw(nasty_values)
        else:
            row[name] = draw(st.one_of(st.integers(), st.floats(), st.none(), st.booleans(), st.lists(st.integers(), max_size=2)))
    return row


def _csv_bytes(kind: str, rows: list[dict[str, Any]]) -> bytes:
    names = list(uds1.FIELDS[kind])
    for r in rows:
        names += [k for k in r if k not in names]
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(names)
    for r in rows:
        w.writerow([str(r.get(n, "")) for n in names])
    return out.getvalue().encode("utf-8", errors="surrogatepass")


def _jsonl_bytes(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode("utf-8", errors="surrogatepass")


@st.composite
def uds1_files(draw: st.DrawFn) -> tuple[str, str, bytes]:
    kind = draw(st.sampled_from(uds1.KINDS))
    fmt = draw(st.sampled_from(["csv", "jsonl"]))
    rows = draw(st.lists(st.one_of(valid_rows(kind), mutated_rows(kind)), min_size=0, max_size=6))
    data = _csv_bytes(kind, rows) if fmt == "csv" else _jsonl_bytes(rows)
    how = draw(st.sampled_from(["as-is", "as-is", "bytes", "random"]))
    if how == "bytes":
        data = draw(mutated([data]))
    elif how == "random":
        data = draw(st.binary(max_size=300))
    return kind, fmt, data


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@FUZZ
@given(case=uds1_files())
def test_fuzz_uds1_rows(fuzz_dir: Path, case: tuple[str, str, bytes]) -> None:
    """Validation of any file: one RowResult per row (a record xor errors that
    name a field and line), or InvalidInput for the file; nothing else."""
    kind, fmt, data = case
    path = fuzz_dir / f"rows.{fmt}"
    path.write_bytes(data)
    try:
        for row in uds1.iter_rows(path, kind, today=RESIDENT_TODAY):
            assert (row.record is None) == bool(row.errors), row
            for err in row.errors:
                assert err.line == row.line and err.field and err.reason
                assert str(err).startswith(f"{path}:{row.line}: ")
    except AllianceError:
        pass


def _dump_book(engine) -> dict[str, list[tuple]]:  # type: ignore[no-untyped-def]
    out = {}
    with engine.connect() as conn:
        for name, table in {**store.BOOK_TABLES, "import_runs": store.import_runs}.items():
            out[name] = sorted(tuple(r) for r in conn.execute(select(table)))
    return out


@pytest.fixture(scope="module")
def book_engine(fuzz_dir: Path):  # type: ignore[no-untyped-def]
    engine = db.make_engine(db.sqlite_url(fuzz_dir / "book.db"))
    store.create_schema(engine)
    yield engine
    engine.dispose()


def _keep_small(engine) -> None:  # type: ignore[no-untyped-def]
    """Committed imports grow the book; comparing dumps of a big book would
    dominate the run, so it is emptied now and then (not mid-example)."""
    with engine.begin() as conn:
        if sum(conn.execute(select(func.count()).select_from(t)).scalar_one() for t in store.BOOK_TABLES.values()) > 60:
            for t in (*store.BOOK_TABLES.values(), store.import_runs):
                conn.execute(delete(t))


@pytest.mark.parametrize("fmt, data", [
    ("csv", b"id_type,id_number,flag_type,flagged_on,status\n\x80"),
    ("csv", b"id_type,id_number,flag_type,flagged_on,status\nRESIDENT_ID,\xff\xfe,FRAUD,2026-01-01,ACTIVE\n"),
    ("jsonl", b'{"id_type": "\\ud800", "id_number": "\x80"}\n'),
    ("jsonl", b'{"id_type": "RESIDENT_ID", "id_number": "\xff", "flag_type": "FRAUD", "flagged_on": "2026-01-01", "status": "ACTIVE"}\n'),
])
def test_reject_file_takes_bytes_that_are_not_utf8(tmp_path: Path, fmt: str, data: bytes) -> None:
    """Found by the fuzz: --skip-invalid on a row holding bytes that are not
    UTF-8 crashed with UnicodeEncodeError while writing the reject file. The
    reject file now holds those bytes as they were (or a JSON escape)."""
    engine = db.make_engine(db.sqlite_url(tmp_path / "b.db"))
    store.create_schema(engine)
    path = tmp_path / f"in.{fmt}"
    path.write_bytes(data)
    result = importer.import_file(engine, path, "flags", MK, today=RESIDENT_TODAY, skip_invalid=True,
                                  reject_path=tmp_path / f"rejects.{fmt}")
    assert result.committed and result.rows_rejected == 1 and result.rows_written == 0
    rejected = (tmp_path / f"rejects.{fmt}").read_bytes()
    assert b"reject_reason" in rejected and (b"\x80" in rejected or b"\xff" in rejected or b"\\ud800" in rejected)
    engine.dispose()


@FUZZ
@given(case=uds1_files(), mode=st.sampled_from(["default", "default", "skip_invalid", "snapshot", "dry_run"]))
def test_fuzz_import_is_all_or_nothing(fuzz_dir: Path, book_engine, case: tuple[str, str, bytes], mode: str) -> None:  # type: ignore[no-untyped-def]
    """An import of any file either commits or fails with a typed error and
    leaves the store exactly as it was; a dry run never changes it."""
    kind, fmt, data = case
    path = fuzz_dir / f"import.{fmt}"
    path.write_bytes(data)
    _keep_small(book_engine)
    before = _dump_book(book_engine)
    try:
        result = importer.import_file(book_engine, path, kind, MK, today=RESIDENT_TODAY,
                                      skip_invalid=mode == "skip_invalid", snapshot=mode == "snapshot",
                                      dry_run=mode == "dry_run", reject_path=fuzz_dir / "rejects.csv" if mode == "skip_invalid" else None)
    except AllianceError:
        assert _dump_book(book_engine) == before, "a failed import changed the store"
        return
    if mode == "dry_run":
        assert _dump_book(book_engine) == before, "a dry run changed the store"
    else:
        assert result.committed
        assert result.rows_rejected == 0 or mode == "skip_invalid"


# -- 3. RPCs in process -------------------------------------------------------------------------


class Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code}: {details}")
        self.code, self.details = code, details


class FakeContext:
    """What a handler sees of a mutual-TLS call: the peer's certificate, and
    abort() raising as grpc's does."""

    def __init__(self, cert_pem: bytes) -> None:
        self.cert_pem = cert_pem
        self.trailing: tuple = ()

    def auth_context(self) -> dict[str, list[bytes]]:
        return {"x509_pem_cert": [self.cert_pem]}

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise Aborted(code, details)

    def set_trailing_metadata(self, md: tuple) -> None:
        self.trailing = md

    def is_active(self) -> bool:
        return True

    def time_remaining(self) -> float:
        return 30.0

    def peer(self) -> str:
        return "ipv4:127.0.0.1:1"

    def invocation_metadata(self) -> tuple:
        return ()


BUG_CODES = (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)


def call_rpc(servicer: Any, method: Any, raw: list[bytes], context: FakeContext) -> str:
    """Deserialize as grpc would (a request that does not parse never reaches
    the handler), call the handler, drain a streamed response. Only a
    response or an abort with a non-bug status is allowed."""
    cls = getattr(pb, method.input_type.name)
    messages = []
    for b in raw:
        try:
            messages.append(cls.FromString(b))
        except DecodeError:
            return "undecodable"  # grpc answers INTERNAL "Exception deserializing request" without calling us
    handler = getattr(servicer, method.name)
    try:
        if method.client_streaming:
            result = handler(iter(messages), context)
        else:
            result = handler(messages[0], context)
        if method.server_streaming:
            for _ in result:
                pass
        if isinstance(result, pb.MemberQueryBatchResponse):  # AnswerBatch: each item's own status, never a bug's
            assert len(result.items) == len(messages[0].items), f"{method.name}: one result per item"
            bug_codes = {code.value[0] for code in BUG_CODES}
            assert not [i.error for i in result.items if i.error.code in bug_codes], f"{method.name}: {result}"
    except Aborted as exc:
        assert exc.code not in BUG_CODES, f"{method.name}: {exc}"
        outcome = f"{exc.code.name} {exc.details.split(':')[0][:40]}"
    else:
        outcome = "answered"
    event(f"{method.name}: {outcome}")
    return outcome


class SyncStub:
    """A member reached in process: Answer.future() runs it at once."""

    def __init__(self, service: MemberService, crashes: list[BaseException]) -> None:
        self.service, self.crashes = service, crashes
        self.Answer = self

    def future(self, request: pb.MemberQueryRequest, timeout: float) -> Future:
        fut: Future = Future()
        try:
            fut.set_result(self.service.answer(request))
        except Refused as exc:
            fut.set_exception(_RpcError(grpc.StatusCode.PERMISSION_DENIED, str(exc)))
        except Exception as exc:  # noqa: BLE001 - recorded: a member crash fails the test
            self.crashes.append(exc)
            fut.set_exception(_RpcError(grpc.StatusCode.INTERNAL, repr(exc)))
        return fut


class _RpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


def _gateway_cert_pem(ca: LocalCA) -> bytes:
    key = pki.generate_member_keys().tls_key
    now = datetime.now(timezone.utc)
    cert = pki.issue_tls_certificate(ca.key, ca.cert, key.public_key(), member_id="gateway", role="gateway",
                                     not_before=now - timedelta(minutes=5), not_after=now + timedelta(days=1))
    return cert.public_bytes(serialization.Encoding.PEM)


class Alliance:
    """A gateway (SQLite) with members mq (querier), ma, mb, mc answering in
    process, and an auditor."""

    def __init__(self, root: Path, gateway_db_url: str) -> None:
        self.ca = LocalCA()
        self.members = {mid: self.ca.enrol(mid) for mid in ("mq", "ma", "mb", "mc")}
        self.auditor = self.ca.enrol("aud", role="auditor")
        self.crashes: list[BaseException] = []
        self.engine = db.make_engine(gateway_db_url, durable=True)
        schema.create_schema(self.engine)
        with self.engine.begin() as conn:
            audit_log.start_v2(conn, deadline_ms=5000)
            for m in [*self.members.values(), self.auditor]:
                conn.execute(insert(schema.members).values(
                    member_id=m.member_id, name=m.member_id, role=pki.role_name(m.body.role), status="active",
                    endpoint=m.member_id, credential=m.credential.SerializeToString(), credential_serial=m.body.serial,
                    fingerprint=m.body.member_fingerprint, ed25519_public_key=m.body.ed25519_public_key,
                    paillier_n=m.body.paillier_n, tls_cert_sha256=m.body.tls_cert_sha256, daily_quota=10**9, updated_at_ms=0))
        for m in self.members.values():
            log_book_status(self.engine, m)  # SPEC §10: fresh books, so they may query
        self.member_services: dict[str, MemberService] = {}
        token = identity.subject_token(MK.key, *SUBJECT)
        for mid in ("ma", "mb", "mc"):
            mengine = db.make_engine(db.sqlite_url(root / f"{mid}.db"))
            store.create_schema(mengine)
            with mengine.begin() as conn:
                conn.execute(store.scores.insert().values(subject_token=token, key_epoch=1, masked_id="x", id_type="RESIDENT_ID",
                                                          score={"ma": 600, "mb": 700, "mc": 800}[mid], scored_on=date(2026, 1, 1),
                                                          import_run=1, import_line=2))
            self.member_services[mid] = MemberService(
                member_id=mid, engine=mengine, trust=PeerTrust(mengine, self.ca.cert), signing_key=self.members[mid].signing_key,
                matching_key=lambda: MK, mask_pools=paillier.MaskPools(target=4))
        stubs = {mid: SyncStub(svc, self.crashes) for mid, svc in self.member_services.items()}
        cfg = GatewayConfig(listen="", db_url="", log_origin="fuzz/log", log_key_name="fuzz/log", k_min=2, deadline_ms=5000,
                            registry_refresh_ms=0)
        self.gateway = GatewayService(
            engine=self.engine, registry=Registry(self.engine, 0), config=cfg, member_stub=lambda ep: stubs[ep],
            log_reader=audit_log.LogReader(self.engine, origin="fuzz/log", key_name="fuzz/log", signing_key=Ed25519PrivateKey.generate()),
            mask_pools=paillier.MaskPools(target=4), limiter=RefusalLimiter(rate=1e9, burst=10**9))
        self.gateway_cert_pem = _gateway_cert_pem(self.ca)
        q = self.members["mq"]
        # One Enc(x) for every fuzzed precheck: a fresh mask per example costs ~30 ms of powmod and finds nothing more.
        self.enc_x = paillier.encode_ciphertext(q.public_key, paillier.encrypt(q.public_key, 5, paillier.fresh_mask(q.public_key)))

    def context(self, who: str) -> FakeContext:
        if who == "gateway":
            return FakeContext(self.gateway_cert_pem)
        if who == "aud":
            return FakeContext(self.auditor.tls_cert_pem)
        return FakeContext(self.members[who].tls_cert_pem)

    def assert_still_serving(self) -> None:
        """A valid query still gets a correct report, and a valid member request an answer."""
        resp = self.gateway.Query(signed_query(self.members["mq"]), self.context("mq"))
        assert (resp.members_asked, resp.members_answered, resp.complete) == (3, 3, True)
        q = self.members["mq"]
        sums = paillier.unpack(q.private_key.decrypt(paillier.decode_ciphertext(q.public_key, resp.aggregate_ciphertext)),
                               len(report.REPORT_FIELDS), 3)
        assert sums[report.FIELD_INDEX["score_sum"]] == 2100 and sums[report.FIELD_INDEX["scored_lenders"]] == 3
        answer = self.member_services["ma"].Answer(
            pb.MemberQueryRequest(query=signed_query(q), querier_credential=q.credential.SerializeToString()),
            self.context("gateway"))
        assert answer.member_id == "ma" and len(answer.ciphertext) == q.public_key.ciphertext_width
        assert not self.crashes, self.crashes


def _alliance(tmp_path_factory: pytest.TempPathFactory, backend: str) -> Iterator[Alliance]:
    root = tmp_path_factory.mktemp(f"fuzz-alliance-{backend}")
    pg = _fresh_pg_database() if backend == "postgres" else None
    url = next(pg) if pg is not None else db.sqlite_url(root / "gateway.db")
    a = Alliance(root, url)
    a.fuzz_settings = FUZZ_PG if backend == "postgres" else FUZZ
    try:
        a.assert_still_serving()
        yield a
    finally:
        a.engine.dispose()
        for svc in a.member_services.values():
            svc.engine.dispose()
        if pg is not None:
            next(pg, None)  # drops the database


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def alliance_in_process(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Alliance]:
    """The gateway on both backends: PostgreSQL refuses what SQLite stores (e.g. NUL in text)."""
    yield from _alliance(tmp_path_factory, request.param)


@pytest.fixture(scope="module")
def member_alliance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Alliance]:
    yield from _alliance(tmp_path_factory, "sqlite")


GATEWAY_METHODS = list(pb.DESCRIPTOR.services_by_name["Gateway"].methods)
MEMBER_METHODS = list(pb.DESCRIPTOR.services_by_name["MemberNode"].methods)


def _valid_gateway_requests(a: Alliance) -> dict[str, list[bytes]]:
    q = a.members["mq"]
    share = pb.MatchingKeyShare(body=pb.MatchingKeyShareBody(sender_id="mq", recipient_id="ma").SerializeToString(),
                                signature=bytes(64))
    share.signature = signing.sign(q.signing_key, signing.MATCHING_KEY_SHARE, share.body)
    queries = [signed_query(q).SerializeToString(), signed_query(q, mode=pb.QUERY_MODE_PRECHECK).SerializeToString()]
    return {
        "Query": queries, "Precheck": queries, "Screen": queries,
        "GetMemberCredential": [pb.GetMemberCredentialRequest(member_id="ma").SerializeToString()],
        "PostKeyShare": [share.SerializeToString()],
        "FetchKeyShares": [pb.FetchKeySharesRequest().SerializeToString()],
        "GetCheckpoint": [pb.GetCheckpointRequest().SerializeToString()],
        "GetEntries": [pb.GetEntriesRequest(start=0, end=3).SerializeToString()],
        "GetInclusionProof": [pb.GetInclusionProofRequest(index=0, tree_size=2).SerializeToString()],
        "GetConsistencyProof": [pb.GetConsistencyProofRequest(first=1, second=2).SerializeToString()],
        # v2: statements signed by the caller, the feed, witnesses, reconciliation, policy, disclosures
        "PostSponsorship": [_signed_statement(pb.SignedSponsorship, signing.SPONSORSHIP, q, pb.SponsorshipBody(
            newcomer_id="ma", newcomer_fingerprint=bytes(32), sponsor_id="mq", time_ms=int(time.time() * 1000)))],
        "PostMatchingKeyCreated": [_signed_statement(pb.SignedMatchingKeyCreated, signing.MATCHING_KEY_CREATED, q,
                                                     pb.MatchingKeyCreatedBody(founder_id="mq", founder_fingerprint=bytes(32), epoch=2,
                                                                               check_value=bytes(8), time_ms=int(time.time() * 1000)))],
        "GetMembership": [pb.GetMembershipRequest(from_membership_seq=0, max_entries=5).SerializeToString()],
        "GetWitnessCheckpoint": [pb.GetWitnessCheckpointRequest(old_size=1).SerializeToString()],
        "PostCosignature": [pb.PostCosignatureRequest(checkpoint="x\n1\n" + "A" * 44 + "\n\n— x AAAA\n",
                                                      cosignature_line="— mq AAAA").SerializeToString()],
        "GetWitnessedCheckpoint": [pb.GetWitnessedCheckpointRequest().SerializeToString()],
        "GetQueryProofs": [pb.GetQueryProofsRequest(from_index=0, max_entries=5).SerializeToString()],
        "GetPolicy": [pb.GetPolicyRequest().SerializeToString()],
        "PostDisclosure": [_signed_statement(pb.SignedDisclosure, signing.DISCLOSURE, q, None, body=b'{"month":"2026-01"}')],
        "PostBookStatus": [_signed_statement(pb.SignedBookStatus, signing.BOOK_STATUS, q, None, body=book_status.BookStatus(
            "mq", q.body.serial, datetime.now(timezone.utc).date(), 3, int(time.time() * 1000)).encode())],
    }


def _signed_statement(cls, prefix: bytes, signer, body_msg, *, body: bytes = b"") -> bytes:  # type: ignore[no-untyped-def]
    """A statement message whose signature verifies with the signer's key (its contents need not make sense)."""
    raw = body or body_msg.SerializeToString()
    return cls(body=raw, signature=signing.sign(signer.signing_key, prefix, raw)).SerializeToString()


@pytest.mark.parametrize("method", GATEWAY_METHODS, ids=lambda m: m.name)
def test_fuzz_gateway_rpc_bytes(alliance_in_process: Alliance, method: Any) -> None:
    """Random and mutated request bytes for every Gateway RPC, from a member
    and from the auditor: a response or a typed status, never a bug."""
    a = alliance_in_process
    seeds = _valid_gateway_requests(a)[method.name]

    @a.fuzz_settings
    @given(raw=st.lists(bytes_like(seeds), min_size=1, max_size=3 if method.client_streaming else 1),
           who=st.sampled_from(["mq", "mq", "aud"]))
    def run(raw: list[bytes], who: str) -> None:
        call_rpc(a.gateway, method, raw, a.context(who))
        assert not a.crashes, a.crashes

    run()
    a.assert_still_serving()


@st.composite
def resigned_queries(draw: st.DrawFn, a: Alliance) -> pb.SignedQuery:
    """A valid query with some body fields replaced and the body re-signed by
    the querier's real key, so the fuzz reaches past the signature check."""
    q = a.members["mq"]
    mode = pb.QUERY_MODE_PRECHECK if draw(st.booleans()) else pb.QUERY_MODE_REPORT
    subject = draw(st.one_of(st.just(SUBJECT), resident_ids().map(lambda s: ("RESIDENT_ID", s))))
    signed = signed_query(q, mode=mode, subject=subject, enc_x=a.enc_x if mode == pb.QUERY_MODE_PRECHECK else b"")
    body = pb.QueryRequestBody.FromString(signed.body)
    now_ms = int(time.time() * 1000)
    edits = {
        # Values that depend on the clock or randomness are drawn as choices and made after, so replays draw alike.
        "query_id": st.one_of(st.text(max_size=40), st.sampled_from(["FRESH_UPPER", "FRESH", "FIXED"])),
        "querier_id": st.one_of(st.sampled_from(["ma", "aud", "", "mq "]), st.text(max_size=10)),
        "credential_serial": st.integers(0, 2**64 - 1),
        "subject_token_sha256": st.binary(max_size=40),
        "matching_key_epoch": st.integers(0, 2**32 - 1),
        "purpose": st.integers(-2**31, 2**31 - 1),
        "consent_id": st.text(max_size=140),
        "consent_sha256": st.binary(max_size=40),
        "as_of": st.one_of(st.sampled_from(["0001-01-01", "0001-02-15", "0001-03-30", "9999-12-31", "1989-12-31",
                                            "1990-01-01", "2199-12-31", "2200-01-01", "20260630", "2026-06-30T00"]),
                           st.dates().map(date.isoformat), st.text(max_size=12)),
        "mode": st.integers(-2**31, 2**31 - 1),
        "paillier_key_fingerprint": st.one_of(st.binary(max_size=40), st.just(a.members["ma"].public_key.fingerprint())),
        "timestamp_ms": st.one_of(st.integers(-400_000, 400_000).map(lambda d: ("NOW+", d)), st.integers(-2**63, 2**63 - 1)),
        "precheck_ciphertext": st.one_of(st.binary(max_size=600), st.binary(min_size=512, max_size=512),
                                         st.just(b"\xff" * 512), st.just(bytes(512))),
    }
    for name in draw(st.lists(st.sampled_from(sorted(edits)), max_size=3, unique=True)):
        value = draw(edits[name])
        if isinstance(value, tuple):  # ("NOW+", offset)
            value = now_ms + value[1]
        elif value in ("FRESH_UPPER", "FRESH", "FIXED") and name == "query_id":
            value = {"FRESH_UPPER": secrets.token_hex(16).upper(), "FRESH": secrets.token_hex(16), "FIXED": "ab" * 16}[value]
        setattr(body, name, value)
    note(str(body))
    body_bytes = body.SerializeToString()
    token = draw(st.one_of(st.just(signed.subject_token), st.binary(max_size=40)))
    return pb.SignedQuery(body=body_bytes, signature=signing.sign(q.signing_key, signing.QUERY_REQUEST, body_bytes),
                          subject_token=token)


def test_fuzz_gateway_resigned_queries(alliance_in_process: Alliance) -> None:
    """Signed queries with hostile field values reach every check past the
    signature, the fan-out and the log: only typed refusals or answers."""
    a = alliance_in_process

    @a.fuzz_settings
    @given(query=resigned_queries(a), rpc=st.sampled_from(["Query", "Precheck", "Screen"]))
    def run(query: pb.SignedQuery, rpc: str) -> None:
        method = pb.DESCRIPTOR.services_by_name["Gateway"].methods_by_name[rpc]
        size = a.gateway.log.size()
        outcomes[call_rpc(a.gateway, method, [query.SerializeToString()], a.context("mq"))] += 1
        assert not a.crashes, a.crashes
        assert a.gateway.log.size() <= size + 1, "one request, at most one log entry"

    outcomes: Counter[str] = Counter()
    run()
    a.assert_still_serving()
    print("gateway outcomes:", dict(outcomes.most_common()))
    # The fuzz must reach past the signature: answers and refusals of many kinds (fewer kinds from a short run).
    assert outcomes["answered"] >= 1 and len(outcomes) >= (5 if a.fuzz_settings.max_examples >= 250 else 2), outcomes


def _valid_member_requests(a: Alliance, method: str = "Answer") -> list[bytes]:
    q = a.members["mq"]
    items = [pb.MemberQueryRequest(query=signed_query(q, mode=mode), querier_credential=q.credential.SerializeToString())
             for mode in (pb.QUERY_MODE_REPORT, pb.QUERY_MODE_PRECHECK)]
    if method == "AnswerBatch":  # a batch of both, and one with the same query twice (a replay inside the batch)
        return [pb.MemberQueryBatch(items=items).SerializeToString(), pb.MemberQueryBatch(items=[items[0]] * 2).SerializeToString()]
    return [item.SerializeToString() for item in items]


@pytest.mark.parametrize("method", MEMBER_METHODS, ids=lambda m: m.name)
def test_fuzz_member_rpc_bytes(member_alliance: Alliance, method: Any) -> None:
    """Random and mutated MemberQueryRequest bytes, from the gateway and from
    a member (who may not ask): typed statuses only, never INTERNAL."""
    a = member_alliance
    seeds = _valid_member_requests(a, method.name)
    svc = a.member_services["ma"]

    @FUZZ
    @given(raw=bytes_like(seeds, max_size=600), who=st.sampled_from(["gateway", "gateway", "mq"]))
    def run(raw: bytes, who: str) -> None:
        call_rpc(svc, method, [raw], a.context(who))

    run()
    a.assert_still_serving()


def test_fuzz_member_resigned_queries(member_alliance: Alliance) -> None:
    """Re-signed hostile queries, with the real or a mangled credential, sent
    straight to a member as the gateway would."""
    a = member_alliance
    svc = a.member_services["mb"]
    method = pb.DESCRIPTOR.services_by_name["MemberNode"].methods_by_name["Answer"]
    batch_method = pb.DESCRIPTOR.services_by_name["MemberNode"].methods_by_name["AnswerBatch"]
    cred = a.members["mq"].credential.SerializeToString()
    other = [a.members["ma"].credential.SerializeToString(), a.auditor.credential.SerializeToString()]

    @FUZZ
    @given(query=resigned_queries(a),
           credential=st.one_of(st.just(cred), st.just(cred), st.sampled_from(other), mutated([cred], max_ops=2)),
           batched=st.booleans())
    def run(query: pb.SignedQuery, credential: bytes, batched: bool) -> None:
        request = pb.MemberQueryRequest(query=query, querier_credential=credential)
        if batched:  # the same item twice in one AnswerBatch: the second can only be refused
            outcomes["batch " + call_rpc(svc, batch_method, [pb.MemberQueryBatch(items=[request, request]).SerializeToString()],
                                         a.context("gateway"))] += 1
        else:
            outcomes[call_rpc(svc, method, [request.SerializeToString()], a.context("gateway"))] += 1

    outcomes: Counter[str] = Counter()
    run()
    a.assert_still_serving()
    print("member outcomes:", dict(outcomes.most_common()))
    assert outcomes["answered"] >= 1 and len(outcomes) >= 5, outcomes
