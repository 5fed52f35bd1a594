"""End to end: a gateway and four member nodes as separate processes over
mutual TLS, built through the real onboarding path, fed synthetic UDS-1
files; every report figure is checked against sums computed independently
from those files (tests/independent.py). Runs on SQLite and PostgreSQL."""
from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from alliance import synthetic
from alliance.errors import Unreachable
from alliance.v1 import alliance_pb2 as pb
from alliance_cli.localnet import LocalAlliance
from alliance_member.querier import Consent, Querier, Subject
from tests import independent
from tests.conftest import running_alliance

pytestmark = pytest.mark.e2e

MEMBERS = ["lender-a", "lender-b", "lender-c", "lender-d"]
QUERIER = "lender-a"
OTHERS = MEMBERS[1:]
AS_OF = date(2026, 6, 30)
CONSENT = Consent("CONSENT-2026-0001", hashlib.sha256(b"signed authorisation").digest())


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def alliance(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalAlliance, synthetic.Dataset]]:
    yield from running_alliance(request.param, tmp_path_factory, MEMBERS, AS_OF)


@pytest.fixture(scope="module")
def querier(alliance: tuple[LocalAlliance, synthetic.Dataset]) -> Iterator[Querier]:
    net, _ = alliance
    q = Querier(net.members[QUERIER].home)
    yield q
    q.close()


def _subjects(dataset: synthetic.Dataset) -> list[synthetic.Subject]:
    """People and organisations held by 0 (only the querier), 1, 2 and 3 other members."""
    picked: list[synthetic.Subject] = []
    for id_type in ("RESIDENT_ID", "USCC"):
        by_count: dict[int, synthetic.Subject] = {}
        for s in dataset.subjects:
            if s.id_type == id_type:
                by_count.setdefault(len([m for m in s.members if m != QUERIER]), s)
        picked += list(by_count.values())
    return picked


def test_reports_match_independent_sums(alliance, querier) -> None:
    net, dataset = alliance
    subjects = _subjects(dataset)
    assert {s.id_type for s in subjects} == {"RESIDENT_ID", "USCC"}
    assert len(subjects) >= 6
    for s in subjects:
        result = querier.query(Subject(s.id_type, s.canonical_id), purpose="LOAN_APPROVAL", consent=CONSENT, as_of=AS_OF)
        expected = independent.expected_report(dataset.root, OTHERS, s.id_type, s.canonical_id, AS_OF)
        got = {k: v for k, v in result["report"].items() if k != "inquiries_30d"}
        assert got == expected, f"{s.id_type} {s.canonical_id} held by {s.members}"
        assert result["members_asked"] == 3 and result["members_answered"] == 3 and result["complete"] is True
        assert result["audit"] is not None and result["audit"]["leaf_index"] >= 0


def test_report_is_nonzero_for_a_rich_subject(alliance, querier) -> None:
    """Guards the test above against comparing zeros with zeros."""
    net, dataset = alliance
    rich = max(dataset.subjects, key=lambda s: len([m for m in s.members if m != QUERIER]))
    result = querier.query(Subject(rich.id_type, rich.canonical_id), purpose="LOAN_APPROVAL", consent=CONSENT, as_of=AS_OF)
    assert result["report"]["lenders_with_active_loans"] + result["report"]["settled_loans"] + result["report"]["written_off_loans"] > 0


def test_unknown_subjects_get_an_all_zero_report(alliance, querier) -> None:
    for s in synthetic.unknown_subjects(random.Random(5), 2):
        result = querier.query(Subject(s.id_type, s.canonical_id), purpose="CREDIT_LIMIT_REVIEW", consent=CONSENT, as_of=AS_OF)
        assert result["members_answered"] == 3
        assert all(v in (0, None) for k, v in result["report"].items() if k != "inquiries_30d")
        assert result["report"]["average_score"] is None


def test_variant_spellings_give_the_same_report(alliance, querier) -> None:
    net, dataset = alliance
    person = dataset.subjects[0]  # check character X, born 19xx: every variant applies
    canonical = querier.query(Subject.parse(person.id_type, person.canonical_id), purpose="LOAN_APPROVAL", consent=CONSENT, as_of=AS_OF)
    variants = {
        "15-digit": person.canonical_id[:6] + person.canonical_id[8:17],
        "lower-case x": person.canonical_id.lower(),
        "full-width": "".join(chr(ord(c) + 0xFEE0) for c in person.canonical_id),
        "padded": f"  {person.canonical_id[:6]} {person.canonical_id[6:14]} {person.canonical_id[14:]}  ",
    }
    assert person.canonical_id.endswith("X") and person.canonical_id[6:8] == "19"
    for label, spelling in variants.items():
        result = querier.query(Subject.parse(person.id_type, spelling), purpose="LOAN_APPROVAL", consent=CONSENT, as_of=AS_OF)
        assert {k: v for k, v in result["report"].items() if k != "inquiries_30d"} == {
            k: v for k, v in canonical["report"].items() if k != "inquiries_30d"}, label


def test_precheck_on_both_sides_of_the_cap(alliance, querier) -> None:
    net, dataset = alliance
    for s in _subjects(dataset)[:3] + [s for s in _subjects(dataset) if s.id_type == "USCC"][:1]:
        total = independent.active_balance(dataset.root, MEMBERS, s.id_type, s.canonical_id, AS_OF)
        cap = 100_000_000 if s.id_type == "RESIDENT_ID" else 500_000_000
        headroom = cap - total  # fen; a loan of exactly this keeps the subject at the cap
        subject = Subject(s.id_type, s.canonical_id)
        at_cap = querier.precheck(subject, amount_yuan=f"{headroom // 100}.{headroom % 100:02d}", purpose="LOAN_APPROVAL", consent=CONSENT, as_of=AS_OF)
        over = headroom + 1
        above = querier.precheck(subject, amount_yuan=f"{over // 100}.{over % 100:02d}", purpose="LOAN_APPROVAL", consent=CONSENT, as_of=AS_OF)
        assert at_cap["within_cap"] is True, s
        assert above["within_cap"] is False, s


def test_inquiries_30d_counts_other_queriers(alliance) -> None:
    net, dataset = alliance
    s = dataset.subjects[5]
    subject = Subject(s.id_type, s.canonical_id)
    others = [Querier(net.members[m].home) for m in ("lender-b", "lender-c")]
    try:
        before = others[0].query(subject, purpose="LOAN_APPROVAL", consent=CONSENT, as_of=AS_OF)["report"]["inquiries_30d"]
        others[1].query(subject, purpose="LOAN_APPROVAL", consent=CONSENT, as_of=AS_OF)
        after = others[0].query(subject, purpose="LOAN_APPROVAL", consent=CONSENT, as_of=AS_OF)["report"]["inquiries_30d"]
    finally:
        for q in others:
            q.close()
    assert after == before + 1 or (after == before and before >= 1)


def test_cli_query_json_shape(alliance) -> None:
    net, dataset = alliance
    s = dataset.subjects[0]
    env = {**os.environ}
    out = subprocess.run(
        [sys.executable, "-m", "alliance_cli.main", "member", "query", "--home", str(net.members[QUERIER].home),
         "--id-type", s.id_type, "--id", s.canonical_id.lower(), "--purpose", "LOAN_APPROVAL",
         "--consent-id", "C-1", "--consent-sha256", "ab" * 32, "--as-of", AS_OF.isoformat(), "--json"],
        capture_output=True, text=True, env=env, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert set(data) >= {"query_id", "members_asked", "members_answered", "complete", "report", "audit"}
    assert isinstance(data["members_asked"], int) and isinstance(data["complete"], bool)
    assert set(data["audit"]) == {"leaf_index", "checkpoint"}
    expected = independent.expected_report(dataset.root, OTHERS, s.id_type, s.canonical_id, AS_OF)
    assert {k: v for k, v in data["report"].items() if k != "inquiries_30d"} == expected


def test_cli_refusals_have_exit_codes(alliance) -> None:
    net, dataset = alliance
    s = dataset.subjects[0]
    base = [sys.executable, "-m", "alliance_cli.main", "member", "query", "--home", str(net.members[QUERIER].home),
            "--id-type", s.id_type, "--consent-id", "C-1", "--consent-sha256", "ab" * 32]
    bad_id = subprocess.run(base + ["--id", s.canonical_id[:17] + ("1" if s.canonical_id[17] != "1" else "2"), "--purpose", "LOAN_APPROVAL"],
                            capture_output=True, text=True, timeout=60)
    assert bad_id.returncode == 3 and "check" in bad_id.stderr and "Traceback" not in bad_id.stderr
    bad_purpose = subprocess.run(base + ["--id", s.canonical_id, "--purpose", "MARKETING"], capture_output=True, text=True, timeout=60)
    assert bad_purpose.returncode == 2 and "purpose" in bad_purpose.stderr.lower()  # a choice at the CLI: usage


def test_gateway_holds_no_secrets(alliance) -> None:
    """SPEC §1 properties 1–3: nothing in the gateway's home or database (or
    the admin home) is a raw ID, a member's private key (Paillier, Ed25519,
    X25519, TLS) or the matching key, in any usual spelling."""
    net, dataset = alliance
    from cryptography.hazmat.primitives import serialization

    from alliance import matching_key, paillier, pki

    mk = matching_key.load(net.members[QUERIER].home / "matching-key.json")
    secrets_to_find: dict[str, list[bytes]] = {"matching key": _spellings(mk.key)}
    for m in MEMBERS:
        sk = paillier.PaillierPrivateKey.from_json_bytes((net.members[m].home / "paillier.key").read_bytes())
        for name in ("p", "q"):
            v = getattr(sk, name)
            secrets_to_find[f"{m} Paillier {name}"] = _spellings(v.to_bytes((v.bit_length() + 7) // 8, "big")) + [str(v).encode()]
        keys = pki.MemberKeys.load(net.members[m].home)
        raw = serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        secrets_to_find[f"{m} Ed25519 key"] = _spellings(keys.ed25519_key.private_bytes(*raw))
        secrets_to_find[f"{m} X25519 key"] = _spellings(keys.x25519_key.private_bytes(*raw))
        secrets_to_find[f"{m} TLS key"] = _spellings(keys.tls_key.private_numbers().private_value.to_bytes(32, "big"))
    raw_ids = [s.canonical_id.encode() for s in dataset.subjects]
    blobs = [p.read_bytes() for home in (net.gateway_home, net.admin_home) for p in home.rglob("*") if p.is_file()]
    blobs.append(_dump_database(net))
    for blob in blobs:
        for what, spellings in secrets_to_find.items():
            assert not any(sp in blob for sp in spellings), f"{what} found in the gateway's files"
        for raw in raw_ids:
            assert raw not in blob, "a raw ID number is in the gateway's files"
    assert len(blobs) > 5


def test_gateway_logs_and_logged_requests_hold_no_secrets(alliance, querier) -> None:
    """Issue 12: beyond stored files, the gateway's process log (LocalAlliance
    writes logs/gateway.log) and every audit-log entry, with its hex
    `request_body` decoded to the QueryRequestBody it carries, hold no raw ID
    (as written, lower case, 15-digit, hex, base64) and no secret key (raw,
    hex, base64, URL-safe base64, decimal)."""
    net, dataset = alliance
    from cryptography.hazmat.primitives import serialization

    from alliance import audit_entry, matching_key, paillier, pki
    from alliance_gateway.home import GatewayHome
    from tests import secret_scan

    # A precheck and a report first, so both kinds of request body are in the log.
    s = dataset.subjects[7]
    querier.query(Subject(s.id_type, s.canonical_id), purpose="LOAN_APPROVAL", consent=CONSENT, as_of=AS_OF)
    querier.precheck(Subject(s.id_type, s.canonical_id), amount_yuan="1000.00", purpose="LOAN_APPROVAL", consent=CONSENT, as_of=AS_OF)

    mk = matching_key.load(net.members[QUERIER].home / "matching-key.json")
    found: dict[str, list[bytes]] = {"matching key": secret_scan.byte_spellings(mk.key)}
    raw = serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    for m in MEMBERS:
        sk = paillier.PaillierPrivateKey.from_json_bytes((net.members[m].home / "paillier.key").read_bytes())
        for name in ("p", "q"):
            found[f"{m} Paillier {name}"] = secret_scan.int_spellings(getattr(sk, name))
        keys = pki.MemberKeys.load(net.members[m].home)
        found[f"{m} Ed25519 key"] = secret_scan.byte_spellings(keys.ed25519_key.private_bytes(*raw))
        found[f"{m} X25519 key"] = secret_scan.byte_spellings(keys.x25519_key.private_bytes(*raw))
        found[f"{m} TLS key"] = secret_scan.int_spellings(keys.tls_key.private_numbers().private_value)
    found["a raw ID number"] = [sp for subj in dataset.subjects for sp in secret_scan.id_spellings(subj.canonical_id)]

    log_dir = net.log_dir or net.root / "logs"
    gateway_logs = sorted(log_dir.glob("gateway*.log"))
    assert gateway_logs and all(p.stat().st_size > 0 for p in gateway_logs), f"no gateway log in {log_dir}"
    blobs = [(str(p), p.read_bytes()) for p in gateway_logs]

    url = GatewayHome(net.gateway_home).config().db_url
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    bodies = 0
    with engine.connect() as conn:
        for seq, data in conn.execute(text("SELECT seq, data FROM log_entries ORDER BY seq")):
            data = bytes(data)
            entry = audit_entry.decode(data, index=seq)
            if entry.get("request_body"):
                body = pb.QueryRequestBody.FromString(bytes.fromhex(entry["request_body"]))
                assert len(body.query_id) == 32  # the hex really decodes to a request
                bodies += 1
            blobs.append((f"log entry {seq}", data))
    engine.dispose()
    assert bodies >= 2, "too few logged request bodies to mean anything"
    hits = secret_scan.find_secrets(blobs, found)
    assert hits == [], f"secrets in the gateway's logs: {hits[:5]}"


def _spellings(b: bytes) -> list[bytes]:
    from tests import secret_scan

    return secret_scan.byte_spellings(b)


def _dump_database(net: LocalAlliance) -> bytes:
    from alliance_gateway.home import GatewayHome
    url = GatewayHome(net.gateway_home).config().db_url
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    chunks = []
    with engine.connect() as conn:
        for table in ("members", "key_shares", "inquiries", "log_entries", "log_nodes", "log_head"):
            for row in conn.execute(text(f"SELECT * FROM {table}")):
                chunks.append(repr(tuple(row)).encode())
                chunks.extend(bytes(v) for v in row if isinstance(v, (bytes, memoryview)))
    engine.dispose()
    return b"\n".join(chunks)


def test_dead_member_does_not_stall_and_precheck_refuses(alliance, querier) -> None:
    """Runs last in this module: freezes lender-d (SIGSTOP), so its calls hang
    rather than fail fast, then stops it."""
    net, dataset = alliance
    s = dataset.subjects[9]  # not asked about before: a pinned subject would refuse a smaller set (§5.3)
    subject = Subject(s.id_type, s.canonical_id)
    frozen = net.members["lender-d"].process
    os.kill(frozen.pid, signal.SIGSTOP)
    try:
        start = time.monotonic()
        result = querier.query(subject, purpose="LOAN_APPROVAL", consent=CONSENT, as_of=AS_OF)
        elapsed = time.monotonic() - start
    finally:
        os.kill(frozen.pid, signal.SIGCONT)
        net.stop_member("lender-d")
    assert result["members_asked"] == 3 and result["members_answered"] == 2 and result["complete"] is False
    assert elapsed < 2.0 + 1.5, f"query took {elapsed:.1f}s with a 2s member deadline"
    expected = independent.expected_report(dataset.root, ["lender-b", "lender-c"], s.id_type, s.canonical_id, AS_OF)
    assert {k: v for k, v in result["report"].items() if k != "inquiries_30d"} == expected
    # The subject is now pinned to the members that answered, so a precheck on it asks them only (§5.3);
    # on a subject never asked about, lender-d is asked and, being down, makes the precheck fail.
    querier.precheck(subject, amount_yuan="1.00", purpose="LOAN_APPROVAL", consent=CONSENT, as_of=AS_OF)
    other = dataset.subjects[10]
    with pytest.raises(Unreachable):
        querier.precheck(Subject(other.id_type, other.canonical_id), amount_yuan="1.00", purpose="LOAN_APPROVAL",
                         consent=CONSENT, as_of=AS_OF)


def _audit_verify(home: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "alliance_cli.main", "audit", "verify", "--home", str(home), "--json"],
                          capture_output=True, text=True, timeout=120)


def test_audit_verify_cli_ok_then_names_a_tampered_entry(alliance, querier) -> None:
    """SPEC §7: exit 0 / "ok": true on a sound log; exit 1 with the first bad
    entry after one byte of a stored entry changes; exit 5 when unreachable."""
    net, dataset = alliance
    s = synthetic.unknown_subjects(random.Random(12), 1)[0]  # never pinned: lender-d is down by now (§5.3)
    querier.query(Subject(s.id_type, s.canonical_id), purpose="LOAN_APPROVAL", consent=CONSENT, as_of=AS_OF)
    ok = _audit_verify(net.auditor_home)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["ok"] is True
    from alliance_gateway.home import GatewayHome
    url = GatewayHome(net.gateway_home).config().db_url
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.begin() as conn:
        seq, data = conn.execute(text("SELECT seq, data FROM log_entries WHERE seq = 3")).one()
        original = bytes(data)
        tampered = original.replace(b'"time":"', b'"time":"1', 1)[:len(original)]
        assert tampered != original
        conn.execute(text("UPDATE log_entries SET data = :d WHERE seq = 3"), {"d": tampered})
    try:
        bad = _audit_verify(net.auditor_home)
        assert bad.returncode == 1, bad.stdout + bad.stderr
        result = json.loads(bad.stdout)
        assert result["ok"] is False and result["first_bad_entry"] == 3 and result["reason"]
    finally:
        with engine.begin() as conn:
            conn.execute(text("UPDATE log_entries SET data = :d WHERE seq = 3"), {"d": original})
        engine.dispose()
    unreachable = net.root / "auditor-offline"
    import shutil
    shutil.copytree(net.auditor_home, unreachable)
    cfg = json.loads((unreachable / "member.json").read_text())
    from alliance_cli.localnet import free_port
    cfg["gateway"] = f"127.0.0.1:{free_port()}"
    (unreachable / "member.json").write_text(json.dumps(cfg))
    assert _audit_verify(unreachable).returncode == 5


def test_the_querier_refuses_a_report_the_log_does_not_vouch_for(alliance, querier: Querier) -> None:  # type: ignore[no-untyped-def]
    """SPEC §6: a query is never answered before it is logged, and the querier
    checks that: no receipt, a receipt for another request, a proof that does
    not lead to the signed root, or a response for another query id, and the
    report is refused rather than shown."""
    from alliance.errors import CryptoError
    from alliance.v1 import alliance_pb2 as pb

    net, dataset = alliance
    s = synthetic.unknown_subjects(random.Random(11), 1)[0]  # never pinned: lender-d is down by now (§5.3)
    subject = Subject(s.id_type, s.canonical_id)

    def fresh() -> tuple[pb.SignedQuery, pb.GatewayQueryResponse]:
        signed, _ = querier._signed(subject, "LOAN_APPROVAL", CONSENT, AS_OF, pb.QUERY_MODE_REPORT)
        return signed, querier.client.query(signed)

    signed, response = fresh()
    report = querier.read_report(signed, response)  # the untouched response reads fine
    assert report["audit"]["leaf_index"] == response.audit.leaf_index

    tampered = []
    r = pb.GatewayQueryResponse(); r.CopyFrom(response); r.ClearField("audit")
    tampered.append(("no receipt", r, "without an audit receipt"))
    other_signed, other = fresh()
    r = pb.GatewayQueryResponse(); r.CopyFrom(response); r.audit.CopyFrom(other.audit)
    tampered.append(("another request's receipt", r, "not this request"))
    r = pb.GatewayQueryResponse(); r.CopyFrom(response); r.audit.entry = b"[1, 2]"
    tampered.append(("entry not an object", r, "not this request"))
    r = pb.GatewayQueryResponse(); r.CopyFrom(response); r.audit.entry = b"\xff{"
    tampered.append(("entry not JSON", r, "not JSON"))
    r = pb.GatewayQueryResponse(); r.CopyFrom(response)
    if r.audit.inclusion_proof:
        r.audit.inclusion_proof[0] = bytes(32)
        tampered.append(("forged inclusion proof", r, ""))
    r = pb.GatewayQueryResponse(); r.CopyFrom(response); r.audit.leaf_index += 1
    tampered.append(("wrong leaf index", r, ""))
    r = pb.GatewayQueryResponse(); r.CopyFrom(other)
    tampered.append(("response for another query", r, "another query id"))
    assert len(tampered) == 7
    for label, bad, message in tampered:
        with pytest.raises(CryptoError, match=message or None):
            querier.read_report(signed, bad)
            pytest.fail(f"{label}: the report was read")
