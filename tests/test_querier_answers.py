"""The querier trusts the gateway for nothing it can check itself (SPEC §5.4,
§6): it counts only answer signatures that verify under the pinned keys of
members it trusts (k = 2; every asked member for a precheck), the logged
entry must list exactly the answers the response carries, and every
receipt's checkpoint is proven consistent with the newest one it kept, however
soon after the last query it arrives and whether it is newer or older.

A malicious gateway is played by a wrapper around the querier's real client
that holds the log's signing key (and, for the impostor test, the CA key): it
can log and sign whatever it likes, with valid inclusion and consistency
proofs for the tree it made up. Expected values come from the members' own
key files and the synthetic data, never from the code under test."""
from __future__ import annotations

import hashlib
import json
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import create_engine, select

from alliance import audit_entry, checkpoint, merkle, paillier, pki, signing, synthetic
from alliance.errors import CryptoError, InvalidInput
from alliance.v1 import alliance_pb2 as pb
from alliance_gateway import schema
from alliance_gateway.home import AdminHome, GatewayHome
from alliance_member import receipts
from alliance_member.querier import Consent, Querier, Subject
from tests import independent
from tests.conftest import running_alliance

pytestmark = pytest.mark.e2e

MEMBERS = ["lender-a", "lender-b", "lender-c", "lender-d"]
QUERIER = "lender-a"
OTHERS = MEMBERS[1:]
AS_OF = date(2026, 6, 30)
CONSENT = Consent("CONSENT-Q-1", hashlib.sha256(b"signed authorisation").digest())


@pytest.fixture(scope="module")
def alliance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, synthetic.Dataset]]:
    yield from running_alliance("sqlite", tmp_path_factory, MEMBERS, AS_OF)


class MaliciousGateway:
    """The querier's GatewayClient, with a gateway that may rewrite its
    responses: ``forge`` re-logs the receipt's entry edited at will, in a
    tree of the real entries before it (or edited ones), signed with the real
    log key, and serves proofs from that tree."""

    def __init__(self, real: Any, net: Any) -> None:
        self.real = real
        home = GatewayHome(net.gateway_home)
        cfg = home.config()
        self.origin, self.key_name = cfg.log_origin, cfg.log_key_name
        self.log_key = pki.load_ed25519_private_pem(home.log_key)
        self.db_url = cfg.db_url
        self.rewrite: Callable[[pb.SignedQuery, pb.GatewayQueryResponse], pb.GatewayQueryResponse] | None = None
        self.tree: merkle.MemoryNodeStore | None = None
        self.credentials: dict[str, pb.Credential] = {}
        self.proof_calls: list[tuple[int, int]] = []
        self.on_proof: Callable[[], None] | None = None  # runs once, inside the next proof RPC

    # -- the GatewayClient surface the querier uses ---------------------------

    def query(self, signed: pb.SignedQuery) -> pb.GatewayQueryResponse:
        return self._maybe(signed, self.real.query(signed))

    def precheck(self, signed: pb.SignedQuery) -> pb.GatewayQueryResponse:
        return self._maybe(signed, self.real.precheck(signed))

    def screen(self, requests: Any, timeout_s: float | None = None) -> Iterator[pb.GatewayQueryResponse]:
        yield from self.real.screen(requests, timeout_s)

    def member_credential(self, member_id: str) -> pb.Credential:
        return self.credentials.get(member_id) or self.real.member_credential(member_id)

    def consistency_proof(self, first: int, second: int) -> list[bytes]:
        self.proof_calls.append((first, second))
        if self.on_proof is not None:
            hook, self.on_proof = self.on_proof, None
            hook()
        if self.tree is not None and second <= self.tree.size:
            return self.tree.consistency_proof(first, second)
        return self.real.consistency_proof(first, second)

    def close(self) -> None:
        self.real.close()

    def _maybe(self, signed: pb.SignedQuery, response: pb.GatewayQueryResponse) -> pb.GatewayQueryResponse:
        return self.rewrite(signed, response) if self.rewrite else response

    # -- forging ---------------------------------------------------------------

    def logged_entries(self, end: int) -> list[bytes]:
        engine = create_engine(self.db_url)
        try:
            with engine.connect() as conn:
                rows = conn.execute(select(schema.log_entries.c.data).where(schema.log_entries.c.seq < end)
                                    .order_by(schema.log_entries.c.seq)).all()
        finally:
            engine.dispose()
        return [bytes(r.data) for r in rows]

    def forge(self, response: pb.GatewayQueryResponse, edit_entry: Callable[[dict], None] = lambda e: None,
              edit_prefix: Callable[[list[bytes]], None] = lambda p: None) -> pb.GatewayQueryResponse:
        """``response`` re-logged at its own index with its entry (and, if
        asked, the entries before it) edited, under a fresh signed checkpoint."""
        seq = response.audit.leaf_index
        prefix = self.logged_entries(seq)
        assert len(prefix) == seq
        edit_prefix(prefix)
        entry = audit_entry.decode(response.audit.entry)
        edit_entry(entry)
        tree = merkle.MemoryNodeStore()
        for data in [*prefix, audit_entry.encode(entry)]:
            tree.append(merkle.leaf_hash(data))
        self.tree = tree
        r = pb.GatewayQueryResponse()
        r.CopyFrom(response)
        r.audit.entry = audit_entry.encode(entry)
        r.audit.tree_size = seq + 1
        r.audit.checkpoint = checkpoint.sign_checkpoint(checkpoint.Checkpoint(self.origin, seq + 1, tree.root()), self.key_name, self.log_key)
        del r.audit.inclusion_proof[:]
        r.audit.inclusion_proof.extend(tree.inclusion_proof(seq, seq + 1))
        r.audit.consistency_from = 0  # the forger serves proofs from its own tree, on request
        del r.audit.consistency_proof[:]
        return r


@pytest.fixture
def home_copy(alliance, tmp_path: Path) -> Path:  # type: ignore[no-untyped-def]
    """A copy of the querier's home: a forged (but log-signed) checkpoint it
    keeps must not fork the other tests' view of the log."""
    net, _ = alliance
    dest = tmp_path / "querier-home"
    # the live node writes its witness state atomically (temporary file, then rename): a temporary file
    # listed by copytree may be gone when it is copied, and is never state the copy needs
    shutil.copytree(net.members[QUERIER].home, dest, ignore=shutil.ignore_patterns(".*.tmp"))
    return dest


@pytest.fixture
def evil(alliance, home_copy: Path) -> Iterator[tuple[Querier, MaliciousGateway]]:  # type: ignore[no-untyped-def]
    net, _ = alliance
    q = Querier(home_copy)
    gw = MaliciousGateway(q.client, net)
    q.client = gw  # type: ignore[assignment]
    yield q, gw
    q.close()


def _subject(dataset: synthetic.Dataset) -> synthetic.Subject:
    """A subject at least two of the other members hold, so a report is not all zeros."""
    return next(s for s in dataset.subjects if len([m for m in s.members if m != QUERIER]) >= 2)


def _expected(dataset: synthetic.Dataset, s: synthetic.Subject) -> dict:
    return independent.expected_report(dataset.root, OTHERS, s.id_type, s.canonical_id, AS_OF)


def _figures(result: dict) -> dict:
    return {k: v for k, v in result["report"].items() if k != "inquiries_30d"}


def _member_keys(net: Any) -> dict[str, Any]:
    """Each member's Ed25519 public key, from its own home (not from the gateway)."""
    return {m: pki.MemberKeys.load(net.members[m].home).ed25519_key.public_key() for m in MEMBERS}


def _independent_valid(net: Any, signed: pb.SignedQuery, response: pb.GatewayQueryResponse) -> int:
    keys, digest, valid = _member_keys(net), hashlib.sha256(signed.body).digest(), 0
    qid = pb.QueryRequestBody.FromString(signed.body).query_id
    for r in response.answers:
        parts = (qid.encode(), digest, r.ciphertext_sha256) + ((hashlib.sha256(r.book_status).digest(),) if r.book_status else ())
        msg = b"alliance/v1/member-answer\x00" + b"".join(len(p).to_bytes(4, "big") + p for p in parts)
        try:
            keys[r.member_id].verify(r.signature, msg)
            valid += 1
        except Exception:  # noqa: BLE001
            pass
    return valid


def _status_hash(answer: dict) -> bytes:
    status = bytes.fromhex(answer.get("book_status", ""))
    return hashlib.sha256(status).digest() if status else b""


def _garble(entry: dict, members: list[str]) -> None:
    for a in entry["answers"]:
        if a["member_id"] in members:
            sig = bytearray(bytes.fromhex(a["signature"]))
            sig[5] ^= 0x40
            a["signature"] = bytes(sig).hex()


def _mirror_answers(entry: dict, r: pb.GatewayQueryResponse) -> None:
    """Make the response carry exactly the answers the (forged) entry lists."""
    del r.answers[:]
    for a in entry["answers"]:
        r.answers.add(member_id=a["member_id"], ciphertext_sha256=bytes.fromhex(a["ciphertext_sha256"]),
                      signature=bytes.fromhex(a["signature"]), book_status=bytes.fromhex(a.get("book_status", "")))


def _forging(gw: MaliciousGateway, edit: Callable[[dict], None]) -> None:
    def rewrite(signed: pb.SignedQuery, response: pb.GatewayQueryResponse) -> pb.GatewayQueryResponse:
        forged = gw.forge(response, edit_entry=edit)
        _mirror_answers(json.loads(forged.audit.entry), forged)
        return forged

    gw.rewrite = rewrite


class _NoDecrypt:
    """Stands in for the querier's Paillier private key and counts decryptions."""

    def __init__(self, q: Querier) -> None:
        self.calls = 0
        self._key = q.private_key
        q.private_key = self  # type: ignore[assignment]

    def decrypt(self, c: Any) -> Any:
        self.calls += 1
        return self._key.decrypt(c)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._key, name)


# -- answer signatures ----------------------------------------------------------


def test_a_report_with_k_valid_signatures_is_read(alliance, evil) -> None:  # type: ignore[no-untyped-def]
    net, dataset = alliance
    q, gw = evil
    s = _subject(dataset)
    subject = Subject(s.id_type, s.canonical_id)
    signed, _ = q._signed(subject, "LOAN_APPROVAL", CONSENT, AS_OF, pb.QUERY_MODE_REPORT)
    real = q.client.query(signed)
    assert _independent_valid(net, signed, real) == 3
    assert _figures(q.read_report(signed, real)) == _expected(dataset, s)

    # One answer's signature garbled, and logged so: 2 = k valid ones remain, the report is read.
    _forging(gw, lambda e: _garble(e, ["lender-d"]))
    signed, _ = q._signed(subject, "LOAN_APPROVAL", CONSENT, AS_OF, pb.QUERY_MODE_REPORT)
    forged = gw.query(signed)
    assert _independent_valid(net, signed, forged) == 2 and forged.members_answered == 3
    assert _figures(q.read_report(signed, forged)) == _expected(dataset, s)


def test_every_receipt_checkpoint_names_the_querier_run_that_proved_it(alliance, evil, home_copy) -> None:  # type: ignore[no-untyped-def]
    """`member reconcile` proves one receipt per run (receipt_checkpoints.py):
    that is only sound if a line's run is the KeptCheckpoint that proved it."""
    _, dataset = alliance
    q, _ = evil
    s = _subject(dataset)
    before = len(receipts.receipt_checkpoints(home_copy))
    for _ in range(2):
        q.query(Subject(s.id_type, s.canonical_id), purpose="LOAN_APPROVAL", consent=CONSENT, as_of=AS_OF)
    new = receipts.receipt_checkpoints(home_copy)[before:]
    assert len(new) == 2 and [r["run"] for r in new] == [q._checkpoints.run] * 2
    other = Querier(home_copy)
    try:
        assert other._checkpoints.run != q._checkpoints.run  # another process, another run
    finally:
        other.close()


@pytest.mark.parametrize("how", ["garbled", "other_key", "swapped", "short"])
def test_fewer_than_k_valid_signatures_is_refused_before_decrypting(alliance, evil, how: str) -> None:  # type: ignore[no-untyped-def]
    net, dataset = alliance
    q, gw = evil
    s = _subject(dataset)
    stranger = Ed25519PrivateKey.generate()

    def edit(entry: dict) -> None:
        by_id = {a["member_id"]: a for a in entry["answers"]}
        if how == "garbled":
            _garble(entry, ["lender-c", "lender-d"])
        elif how == "other_key":  # well-formed signatures over the right message, by a key that is not the member's
            qid = pb.QueryRequestBody.FromString(bytes.fromhex(entry["request_body"])).query_id
            digest = hashlib.sha256(bytes.fromhex(entry["request_body"])).digest()
            for m in ("lender-c", "lender-d"):
                by_id[m]["signature"] = stranger.sign(signing.MEMBER_ANSWER + signing.member_answer_message(
                    qid, digest, bytes.fromhex(by_id[m]["ciphertext_sha256"]), _status_hash(by_id[m]))).hex()
        elif how == "swapped":  # lender-b's valid signature in the other receipts
            for m in ("lender-c", "lender-d"):
                by_id[m]["signature"] = by_id["lender-b"]["signature"]
        else:
            for m in ("lender-c", "lender-d"):
                by_id[m]["signature"] = by_id[m]["signature"][:64]

    _forging(gw, edit)
    spy = _NoDecrypt(q)
    signed, _ = q._signed(Subject(s.id_type, s.canonical_id), "LOAN_APPROVAL", CONSENT, AS_OF, pb.QUERY_MODE_REPORT)
    forged = gw.query(signed)
    assert _independent_valid(net, signed, forged) == 1 and forged.members_answered == 3
    with pytest.raises(CryptoError, match="valid answer signature"):
        q.read_report(signed, forged)
    assert spy.calls == 0


def test_a_precheck_needs_a_valid_signature_from_every_asked_member(alliance, evil) -> None:  # type: ignore[no-untyped-def]
    net, dataset = alliance
    q, gw = evil
    s = _subject(dataset)
    subject = Subject(s.id_type, s.canonical_id)
    ok = q.precheck(subject, amount_yuan="1.00", purpose="LOAN_APPROVAL", consent=CONSENT, as_of=AS_OF)
    assert ok["within_cap"] in (True, False)
    _forging(gw, lambda e: _garble(e, ["lender-b"]))
    with pytest.raises(CryptoError, match="every asked member"):
        q.precheck(subject, amount_yuan="1.00", purpose="LOAN_APPROVAL", consent=CONSENT, as_of=AS_OF)


def test_an_impostor_credential_minted_by_the_ca_does_not_count(alliance, evil) -> None:  # type: ignore[no-untyped-def]
    """The operator mints new CA-signed credentials for lender-c and lender-d
    (keys it holds, no endorsement by the members' pinned keys), serves them,
    and signs their answers with those keys: the pins refuse them."""
    net, dataset = alliance
    q, gw = evil
    s = _subject(dataset)
    subject = Subject(s.id_type, s.canonical_id)
    assert q.query(subject, purpose="LOAN_APPROVAL", consent=CONSENT, as_of=AS_OF)["members_answered"] == 3  # pins the real keys
    admin = AdminHome(net.admin_home)
    ca_key, ca_cert = pki.load_private_pem(admin.ca_key), pki.load_cert_pem(admin.ca_cert)
    impostor_keys = {}
    for i, m in enumerate(("lender-c", "lender-d")):
        keys = pki.generate_member_keys()
        real_body = pb.CredentialBody.FromString(q.client.real.member_credential(m).body)
        req = pki.make_join_request(member_id=m, name=f"{m} impostor", role="member", endpoint="127.0.0.1:9", keys=keys,
                                    paillier_n=bytes(real_body.paillier_n))
        now = datetime.now(timezone.utc)
        tls = pki.issue_tls_certificate(ca_key, ca_cert, keys.tls_key.public_key(), member_id=m, role="member",
                                        not_before=now - timedelta(minutes=5), not_after=now + timedelta(days=1))
        gw.credentials[m] = pki.issue_credential(ca_key=ca_key, join_body=pki.verify_join_request(req), tls_cert=tls,
                                                 serial=9000 + i, not_before=int(now.timestamp()) - 60,
                                                 not_after=int(now.timestamp()) + 86400)
        assert pki.verify_credential(gw.credentials[m], ca_cert).member_id == m  # CA-valid: only the pin stops it
        impostor_keys[m] = keys.ed25519_key

    def edit(entry: dict) -> None:
        body = bytes.fromhex(entry["request_body"])
        qid = pb.QueryRequestBody.FromString(body).query_id
        for a in entry["answers"]:
            if a["member_id"] in impostor_keys:
                a["signature"] = impostor_keys[a["member_id"]].sign(signing.MEMBER_ANSWER + signing.member_answer_message(
                    qid, hashlib.sha256(body).digest(), bytes.fromhex(a["ciphertext_sha256"]), _status_hash(a))).hex()

    _forging(gw, edit)
    spy = _NoDecrypt(q)
    with pytest.raises(CryptoError, match="1 valid answer signature"):
        q.query(subject, purpose="LOAN_APPROVAL", consent=CONSENT, as_of=AS_OF)
    assert spy.calls == 0


# -- the logged entry against the response ----------------------------------------


def _tamper_response_only(r: pb.GatewayQueryResponse, how: str) -> None:
    if how == "dropped_receipt":
        del r.answers[-1]
        r.members_answered -= 1
        r.complete = False
    elif how == "other_signature":
        sig = bytearray(r.answers[0].signature)
        sig[0] ^= 1
        r.answers[0].signature = bytes(sig)
    elif how == "other_ciphertext_hash":
        r.answers[1].ciphertext_sha256 = hashlib.sha256(b"another ciphertext").digest()
    elif how == "extra_asked":  # the response claims one more member was asked (and did not answer)
        r.asked_member_ids.append("lender-x")
        r.members_asked += 1
        r.complete = False


@pytest.mark.parametrize("how", ["dropped_receipt", "other_signature", "other_ciphertext_hash", "extra_asked"])
def test_the_logged_answers_must_be_the_response_answers(alliance, evil, how: str) -> None:  # type: ignore[no-untyped-def]
    net, dataset = alliance
    q, gw = evil
    s = _subject(dataset)
    signed, _ = q._signed(Subject(s.id_type, s.canonical_id), "LOAN_APPROVAL", CONSENT, AS_OF, pb.QUERY_MODE_REPORT)
    response = q.client.query(signed)
    logged = json.loads(response.audit.entry)
    r = pb.GatewayQueryResponse()
    r.CopyFrom(response)
    _tamper_response_only(r, how)
    assert r.audit == response.audit
    assert sorted((a["member_id"], a["ciphertext_sha256"], a["signature"]) for a in logged["answers"]) != sorted(
        (a.member_id, a.ciphertext_sha256.hex(), a.signature.hex()) for a in r.answers) or how == "extra_asked"
    spy = _NoDecrypt(q)
    with pytest.raises(CryptoError, match="logged"):
        q.read_report(signed, r)
    assert spy.calls == 0
    assert _figures(q.read_report(signed, response)) == _expected(dataset, s)  # the untouched one reads fine


def test_a_logged_entry_listing_an_extra_answer_is_refused(alliance, evil) -> None:  # type: ignore[no-untyped-def]
    net, dataset = alliance
    q, gw = evil
    s = _subject(dataset)

    def rewrite(signed: pb.SignedQuery, response: pb.GatewayQueryResponse) -> pb.GatewayQueryResponse:
        def edit(entry: dict) -> None:
            entry["answers"].append(dict(entry["answers"][0], member_id="lender-x"))
            entry["members_answered"].append("lender-x")
        return gw.forge(response, edit_entry=edit)  # the response still carries the three real receipts

    gw.rewrite = rewrite
    with pytest.raises(CryptoError, match="logged answers differ"):
        q.query(Subject(s.id_type, s.canonical_id), purpose="LOAN_APPROVAL", consent=CONSENT, as_of=AS_OF)


# -- checkpoints ----------------------------------------------------------------


def _fork_first_entry(prefix: list[bytes]) -> None:
    entry = audit_entry.decode(prefix[0])
    entry["time"] = "1999-01-01T00:00:00.000Z"
    prefix[0] = audit_entry.encode(entry)


def test_a_forked_checkpoint_is_refused_even_seconds_after_the_last(alliance, evil) -> None:  # type: ignore[no-untyped-def]
    """The old 'pending' hole: a newer checkpoint within 5 s of the last
    proven one was kept unproven. Now every receipt's checkpoint is proven."""
    net, dataset = alliance
    q, gw = evil
    s = _subject(dataset)
    subject = Subject(s.id_type, s.canonical_id)
    first = q.query(subject, purpose="LOAN_APPROVAL", consent=CONSENT, as_of=AS_OF)
    kept_size = checkpoint.open_checkpoint(first["audit"]["checkpoint"], q.verifier).size
    gw.rewrite = lambda signed, response: gw.forge(response, edit_prefix=_fork_first_entry)
    spy = _NoDecrypt(q)
    with pytest.raises(CryptoError, match="consisten|root"):
        q.query(subject, purpose="LOAN_APPROVAL", consent=CONSENT, as_of=AS_OF)
    assert spy.calls == 0
    assert gw.proof_calls and gw.proof_calls[-1][0] == kept_size
    gw.rewrite = None
    assert _figures(q.query(subject, purpose="LOAN_APPROVAL", consent=CONSENT, as_of=AS_OF)) == _expected(dataset, s)


def test_an_older_checkpoint_must_be_proven_a_prefix(alliance, evil) -> None:  # type: ignore[no-untyped-def]
    net, dataset = alliance
    q, gw = evil
    s = _subject(dataset)
    subject = Subject(s.id_type, s.canonical_id)

    def ask() -> tuple[pb.SignedQuery, pb.GatewayQueryResponse]:
        signed, _ = q._signed(subject, "LOAN_APPROVAL", CONSENT, AS_OF, pb.QUERY_MODE_REPORT)
        return signed, q.client.query(signed)

    older, older_forked, newer = ask(), ask(), ask()
    assert older[1].audit.tree_size < older_forked[1].audit.tree_size < newer[1].audit.tree_size
    q.read_report(*newer)  # kept: the newest
    forked = gw.forge(older_forked[1], edit_prefix=_fork_first_entry)
    gw.tree = None  # proofs come from the real log: the fork's root is not a prefix of it
    spy = _NoDecrypt(q)
    with pytest.raises(CryptoError):
        q.read_report(older_forked[0], forked)
    assert spy.calls == 0
    assert gw.proof_calls[-1] == (older_forked[1].audit.tree_size, newer[1].audit.tree_size)
    assert _figures(q.read_report(*older)) == _expected(dataset, s)  # a real older checkpoint is proven a prefix


def test_a_normal_sequence_of_queries_proves_each_checkpoint_once(alliance, evil) -> None:  # type: ignore[no-untyped-def]
    net, dataset = alliance
    q, gw = evil
    subjects = [s for s in dataset.subjects if len([m for m in s.members if m != QUERIER]) >= 1][:4]
    sizes = []
    rpcs_before = len(gw.proof_calls)
    for s in subjects:
        result = q.query(Subject(s.id_type, s.canonical_id), purpose="LOAN_APPROVAL", consent=CONSENT, as_of=AS_OF)
        assert _figures(result) == _expected(dataset, s)
        sizes.append(checkpoint.open_checkpoint(result["audit"]["checkpoint"], q.verifier).size)
    assert sizes == sorted(sizes) and len(set(sizes)) == len(sizes)
    # each receipt carried the proof from the previous receipt's size (the querier's hint): no extra round trip
    assert len(gw.proof_calls) == rpcs_before
    lines = [(i, Subject(s.id_type, s.canonical_id)) for i, s in enumerate(subjects)]
    before = len(gw.proof_calls)
    screened = list(q.screen(lines, purpose="LOAN_APPROVAL", consent=CONSENT, as_of=AS_OF))
    assert [i for i, _ in screened] == list(range(len(subjects)))
    for (i, result), s in zip(screened, subjects):
        assert isinstance(result, dict), result
        assert _figures(result) == _expected(dataset, s)
    assert len(gw.proof_calls) == before  # each streamed receipt carried the proof from the size the querier holds (gateway _StreamProofs)
    # the gateway works on several subjects of a stream at once, so the last answer need not carry the newest checkpoint
    newest = max((r["audit"]["checkpoint"] for _, r in screened), key=lambda c: checkpoint.open_checkpoint(c, q.verifier).size)
    q.close()
    assert (q.home.checkpoint).read_text(encoding="utf-8") == newest


def test_screening_decrypts_on_other_threads_after_the_checks_and_keeps_the_order(alliance, evil, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """SPEC §8 "querier decryption across cores": each streamed report is
    checked in stream order, then decrypted on a worker thread; reports and
    bad rows still come out in order, each with its own figures."""
    _, dataset = alliance
    q, _ = evil
    subjects = [s for s in dataset.subjects if len([m for m in s.members if m != QUERIER]) >= 1][4:10]
    threads: list[str] = []
    real = paillier.PaillierPrivateKey.decrypt
    monkeypatch.setattr(paillier.PaillierPrivateKey, "decrypt",
                        lambda self, c: threads.append(threading.current_thread().name) or real(self, c))
    bad = InvalidInput("not a valid identity number")
    lines: list[tuple[int, Any]] = [(i, Subject(s.id_type, s.canonical_id)) for i, s in enumerate(subjects)]
    lines.insert(3, (99, bad))
    screened = list(q.screen(lines, purpose="LOAN_APPROVAL", consent=CONSENT, as_of=AS_OF))
    assert sorted(i for i, _ in screened) == sorted(i for i, _ in lines) and (99, bad) in screened
    reports = [(i, r) for i, r in screened if i != 99]
    assert [i for i, _ in reports] == list(range(len(subjects)))
    for (i, result), s in zip(reports, subjects):
        assert isinstance(result, dict), result
        assert _figures(result) == _expected(dataset, s)
    assert len(threads) == len(subjects) and all(t.startswith("screen-decrypt") for t in threads)


def test_a_screen_signs_each_request_just_before_its_turn_however_far_the_transport_reads_ahead(evil, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """gRPC pulls a request stream as far ahead as flow control allows; a
    screen of 100,000 subjects then signed thousands of requests long before
    the gateway reached them, they aged past its 60 s freshness window, the
    refusals tripped the per-peer refusal limit and the whole screen was cut
    off (found by `alliance bench --screen 100000`). Here the transport reads
    every request it can get while the gateway is slow: no more than
    SCREEN_AHEAD are ever made and unanswered, and each is answered within a
    moment of being signed."""
    import queue
    import random
    import time

    from alliance.errors import Unreachable
    from alliance_member import querier as querier_mod

    q, gw = evil
    pulled: list[float] = []
    unanswered: list[int] = []
    ages_ms: list[int] = []

    def greedy_transport(requests: Any, timeout_s: float | None = None) -> Iterator[pb.GatewayQueryResponse]:
        read: queue.Queue = queue.Queue()

        def read_ahead() -> None:
            for r in requests:
                pulled.append(time.monotonic())
                read.put(r)
            read.put(None)

        threading.Thread(target=read_ahead, daemon=True).start()
        time.sleep(0.3)  # the gateway is busy; the transport keeps reading
        answered = 0
        while (r := read.get(timeout=10)) is not None:
            body = pb.QueryRequestBody.FromString(r.body)
            unanswered.append(len(pulled) - answered)
            ages_ms.append(int(time.time() * 1000) - body.timestamp_ms)
            answered += 1
            time.sleep(0.01)  # the gateway's pace: 100 subjects a second
            yield pb.GatewayQueryResponse(query_id=body.query_id, error=pb.QueryError(
                reason="too_few_answers", message="busy", exit_code=5))

    monkeypatch.setattr(gw, "screen", greedy_transport)
    lines = [(i, Subject("RESIDENT_ID", synthetic.generate_resident_id(random.Random(i)))) for i in range(300)]
    screened = list(q.screen(lines, purpose="LOAN_APPROVAL", consent=CONSENT, as_of=AS_OF))
    assert [i for i, _ in screened] == list(range(300))
    assert all(isinstance(r, Unreachable) and r.reason == "too_few_answers" for _, r in screened)
    assert len(pulled) == 300
    assert max(unanswered) <= querier_mod.SCREEN_AHEAD, max(unanswered)
    assert max(ages_ms) < 1_500, max(ages_ms)  # reading everything first: the last one 3.3 s old


def test_the_querier_keeps_the_gateways_next_wave_waiting() -> None:
    """The gateway reads a stream's next SCREEN_WAVE requests together once
    that many of its SCREEN_IN_FLIGHT places are free; with fewer ahead,
    it would read them one by one and each member would be asked for one
    or two subjects per call."""
    from alliance_gateway import screen_rpcs
    from alliance_member import querier as querier_mod

    assert querier_mod.SCREEN_AHEAD_MIN >= screen_rpcs.SCREEN_IN_FLIGHT + screen_rpcs.SCREEN_WAVE
    assert querier_mod.ScreenAhead().limit() == querier_mod.SCREEN_AHEAD_MIN  # before any answer


def test_a_screen_keeps_ahead_only_as_many_requests_as_the_last_20_seconds_answered() -> None:
    """A request is signed when made; the gateway refuses one older than
    60 s. At 100 answers a second the querier may keep 64 ahead (0.64 s);
    at one a second only the floor of 24 (24 s), not 64 (64 s: stale)."""
    from alliance_member.querier import ScreenAhead

    now = [1000.0]
    ahead = ScreenAhead(low=24, high=64, horizon_s=20.0, clock=lambda: now[0])
    assert [ahead.acquire(timeout=0) for _ in range(25)] == [True] * 24 + [False]
    for _ in range(64):  # a fast gateway: 100 answers a second
        ahead.release()
        now[0] += 0.01
    assert ahead.limit() == 64
    assert sum(ahead.acquire(timeout=0) for _ in range(70)) == 64
    now[0] += 21  # nothing answered for longer than the horizon
    assert ahead.limit() == 24 and not ahead.acquire(timeout=0)
    for _ in range(64):  # a slow gateway: one answer a second
        ahead.release()
        now[0] += 1.0
    assert ahead.limit() == 24  # 20 answers within the horizon: the floor


def test_a_screen_waiting_for_a_place_wakes_on_an_answer() -> None:
    from alliance_member.querier import ScreenAhead

    ahead = ScreenAhead(low=1, high=1)
    assert ahead.acquire(timeout=0)
    got: list[bool] = []
    waiter = threading.Thread(target=lambda: got.append(ahead.acquire(timeout=10)))
    waiter.start()
    time.sleep(0.05)
    ahead.release()
    waiter.join(5)
    assert got == [True]


@pytest.mark.parametrize("how", ["ends", "breaks"])
def test_a_screen_the_gateway_cuts_short_reports_what_it_got_then_fails(evil, monkeypatch, how: str) -> None:  # type: ignore[no-untyped-def]
    """A gateway that closes the stream as if done after 10 of 40 subjects
    must not pass for a finished screen (`member screen` would print "10
    screened, 0 failed" and exit 0); one whose stream breaks must still hand
    over the 10 answers it gave, so a resume does not ask them again."""
    import random

    from alliance.errors import Unreachable

    q, gw = evil

    def short(requests: Any, timeout_s: float | None = None) -> Iterator[pb.GatewayQueryResponse]:
        for n, r in enumerate(requests):
            if n == 10:
                if how == "breaks":
                    raise Unreachable("UNAVAILABLE: the gateway went away")
                return
            yield pb.GatewayQueryResponse(query_id=pb.QueryRequestBody.FromString(r.body).query_id,
                                          error=pb.QueryError(reason="too_few_answers", message="busy", exit_code=5))

    monkeypatch.setattr(gw, "screen", short)
    lines: list[tuple[int, Any]] = [(i, Subject("RESIDENT_ID", synthetic.generate_resident_id(random.Random(i))))
                                    for i in range(40)]
    lines.insert(10, (100, InvalidInput("line 100: not a valid identity number")))  # read before the cut
    got: list[int] = []
    with pytest.raises(Unreachable, match="went away" if how == "breaks" else "ended the screen early"):
        for line, _ in q.screen(lines, purpose="LOAN_APPROVAL", consent=CONSENT, as_of=AS_OF):
            got.append(line)
    assert got == list(range(10)) + [100]


def test_concurrent_queries_each_prove_their_checkpoint(alliance, evil) -> None:  # type: ignore[no-untyped-def]
    """One Querier shared by threads (as `alliance bench` does): the kept
    checkpoint moves under each query, which then proves against the moved
    one; every report is read and the kept checkpoint is the newest."""
    from concurrent.futures import ThreadPoolExecutor

    net, dataset = alliance
    q, gw = evil
    from alliance_member import receipts as receipts_mod  # where the querier proves consistency

    subjects = [s for s in dataset.subjects if len([m for m in s.members if m != QUERIER]) >= 1][:8]
    proven: list[tuple[int, int]] = []
    real_verify = receipts_mod.merkle.verify_consistency

    def counting(size1, size2, proof, root1, root2):  # type: ignore[no-untyped-def]
        real_verify(size1, size2, proof, root1, root2)
        proven.append((size1, size2))

    receipts_mod.merkle.verify_consistency = counting  # the proof may come with the receipt or by RPC: count both
    kept_before = q._checkpoints.size()
    try:
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda s: q.query(Subject(s.id_type, s.canonical_id), purpose="LOAN_APPROVAL",
                                                      consent=CONSENT, as_of=AS_OF), subjects))
    finally:
        receipts_mod.merkle.verify_consistency = real_verify
    for result, s in zip(results, subjects):
        assert _figures(result) == _expected(dataset, s)
    sizes = [checkpoint.open_checkpoint(r["audit"]["checkpoint"], q.verifier).size for r in results]
    # Every receipt's checkpoint is proven consistent with the kept one, or has the size of one already kept
    # (then its root is compared): receipts that share a tree size (group commit) need no second proof.
    # Only a first checkpoint ever, with nothing kept, may be trusted on first use.
    unproven = set(sizes) - {kept_before} - {size for pair in proven for size in pair}
    assert len(unproven) <= (1 if kept_before == 0 else 0), (sorted(sizes), proven)
    assert proven
    q.close()
    assert checkpoint.open_checkpoint(q.home.checkpoint.read_text(encoding="utf-8"), q.verifier).size == max(sizes)


def test_a_checkpoint_proven_against_a_kept_one_that_moved_meanwhile_is_proven_again(alliance, evil) -> None:  # type: ignore[no-untyped-def]
    """While query A's proof RPC is in flight, query B moves the kept
    checkpoint. A's checkpoint extends the old kept one but forks from B's:
    A must be proven against B's and refused."""
    net, dataset = alliance
    q, gw = evil
    s = _subject(dataset)
    subject = Subject(s.id_type, s.canonical_id)

    def ask() -> tuple[pb.SignedQuery, pb.GatewayQueryResponse]:
        signed, _ = q._signed(subject, "LOAN_APPROVAL", CONSENT, AS_OF, pb.QUERY_MODE_REPORT)
        return signed, q.client.query(signed)

    q.read_report(*ask())  # kept: K0
    b, a = ask(), ask()
    seq_b = b[1].audit.leaf_index

    def fork_after_k0(prefix: list[bytes]) -> None:  # B's entry rewritten: A's tree keeps K0 but not B's checkpoint
        entry = audit_entry.decode(prefix[seq_b])
        entry["time"] = "1999-01-01T00:00:00.000Z"
        prefix[seq_b] = audit_entry.encode(entry)

    forged_a = gw.forge(a[1], edit_prefix=fork_after_k0)

    def b_arrives() -> None:
        tree, gw.tree = gw.tree, None  # B's own proof comes from the real log
        q.read_report(*b)
        gw.tree = tree

    gw.on_proof = b_arrives
    with pytest.raises(CryptoError):
        q.read_report(a[0], forged_a)
    assert gw.on_proof is None and forged_a.audit.tree_size > b[1].audit.tree_size
    assert gw.proof_calls[-1][0] == b[1].audit.tree_size  # A was proven again, against B's checkpoint


def test_a_garbled_carried_consistency_proof_is_refused(alliance, evil) -> None:  # type: ignore[no-untyped-def]
    """The proof the receipt carries is verified like one asked for."""
    from alliance import merkle as _merkle

    net, dataset = alliance
    q, gw = evil
    s = _subject(dataset)
    subject = Subject(s.id_type, s.canonical_id)
    q.query(subject, purpose="LOAN_APPROVAL", consent=CONSENT, as_of=AS_OF)  # the querier keeps a checkpoint
    signed, _ = q._signed(subject, "LOAN_APPROVAL", CONSENT, AS_OF, pb.QUERY_MODE_REPORT)
    response = gw.real.query(signed)
    assert response.audit.consistency_from == signed.known_tree_size > 0 and response.audit.consistency_proof
    response.audit.consistency_proof[0] = bytes(32)
    with pytest.raises(_merkle.ProofError):
        q.read_report(signed, response)


# -- SPEC §10: the book status inside every answer ----------------------------------


def test_every_answer_carries_a_book_status_and_the_report_its_coverage(alliance, evil) -> None:  # type: ignore[no-untyped-def]
    net, dataset = alliance
    q, _ = evil
    s = _subject(dataset)
    signed, _ = q._signed(Subject(s.id_type, s.canonical_id), "LOAN_APPROVAL", CONSENT, AS_OF, pb.QUERY_MODE_REPORT)
    response = q.client.query(signed)
    today = datetime.now(ZoneInfo("Asia/Shanghai")).date().isoformat()  # the fixture's books are exported today
    for r in response.answers:
        status = json.loads(r.book_status)
        assert (status["member_id"], status["book_date"], status["loans"]) == (
            r.member_id, today, len(dataset.books[r.member_id].loans))
    assert _independent_valid(net, signed, response) == 3
    assert q.read_report(signed, response)["coverage"] == {"oldest_book_as_of": today, "stale_members": 0}


@pytest.mark.parametrize("how", ["older", "fresher"])
def test_a_book_status_altered_by_the_gateway_breaks_its_answer_signature(alliance, evil, how: str) -> None:  # type: ignore[no-untyped-def]
    net, dataset = alliance
    q, gw = evil
    s = _subject(dataset)

    def edit(entry: dict) -> None:  # the gateway rewrites two members' book dates in the log and the receipts alike
        for a in entry["answers"]:
            if a["member_id"] in ("lender-c", "lender-d"):
                status = json.loads(bytes.fromhex(a["book_status"]))
                status["book_date"] = "2020-01-01" if how == "older" else "2099-01-01"
                a["book_status"] = json.dumps(status, sort_keys=True, separators=(",", ":")).encode().hex()

    _forging(gw, edit)
    spy = _NoDecrypt(q)
    signed, _ = q._signed(Subject(s.id_type, s.canonical_id), "LOAN_APPROVAL", CONSENT, AS_OF, pb.QUERY_MODE_REPORT)
    forged = gw.query(signed)
    assert _independent_valid(net, signed, forged) == 1 and forged.members_answered == 3
    with pytest.raises(CryptoError, match="1 valid answer signature"):
        q.read_report(signed, forged)
    assert spy.calls == 0
