"""SPEC §1 property 9, §6.2: every answer a member gave is in the log, and the
member checks it itself (`member reconcile`), reading only the entries of
queries that asked it (GetQueryProofs).

In process: a real GatewayService and four real MemberServices (answers over
fake stubs), so each case is exact — a normal sequence reconciles; an answer
given off the record, an entry the operator un-indexed, an entry that names
another ciphertext are all caught; a late answer reconciles by its drop;
GetQueryProofs never serves an entry that did not ask the caller. Then with
real mutual-TLS servers: the operator calls a member's Answer directly with
the gateway's certificate, and `member serve`'s Reconciler raises the alert."""
from __future__ import annotations

import threading
import time
from datetime import date
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import delete, insert, select, update

from alliance import audit_entry, checkpoint, cosignature, db, paillier, signing, witness_quorum
from alliance.errors import CryptoError, Refused
from alliance.v1 import alliance_pb2 as pb
from alliance_gateway import audit_log, schema
from alliance_gateway.home import GatewayConfig
from alliance_gateway.reconcile_rpcs import log_gateway_started, query_proofs
from alliance_gateway.registry import Registry
from alliance_gateway.service import GatewayService
from alliance_member import reconcile as rec
from alliance_member import store
from alliance_member.service import MemberService, PeerTrust
from tests.alliance_fixtures import MK, LocalCA, signed_query, log_book_status

MEMBERS = ("mq", "ma", "mb", "mc")


class Stub:
    """A member's Answer.future, in process; ``delay_s`` answers late."""

    def __init__(self, service: MemberService) -> None:
        self.service, self.delay_s = service, 0.0
        self.Answer = self

    def future(self, request: pb.MemberQueryRequest, timeout: float) -> Future:
        fut: Future = Future()

        def run() -> None:
            try:
                resp = self.service.answer(request)
                if self.delay_s:
                    time.sleep(self.delay_s)
                if fut.set_running_or_notify_cancel():
                    fut.set_result(resp)
            except Refused as exc:
                fut.set_exception(exc)

        threading.Thread(target=run, daemon=True).start()
        return fut


class Alliance:
    def __init__(self, root: Path, db_url: str, ca: LocalCA, members: dict[str, Any]) -> None:
        self.members = members
        self.engine = db.make_engine(db_url)
        schema.create_schema(self.engine)
        with self.engine.begin() as conn:
            audit_log.start_v2(conn, deadline_ms=600)
            for m in members.values():
                conn.execute(insert(schema.members).values(
                    member_id=m.member_id, name=m.member_id, role="member", status="active", endpoint=m.member_id,
                    credential=m.credential.SerializeToString(), credential_serial=m.body.serial,
                    fingerprint=m.body.member_fingerprint, ed25519_public_key=m.body.ed25519_public_key,
                    paillier_n=m.body.paillier_n, tls_cert_sha256=m.body.tls_cert_sha256, daily_quota=1000, updated_at_ms=0))
        for m in members.values():
            log_book_status(self.engine, m)  # SPEC §10: fresh books, so they may query
        self.services: dict[str, MemberService] = {}
        self.stubs: dict[str, Stub] = {}
        for mid in MEMBERS:
            e = db.make_engine(db.sqlite_url(root / f"{mid}.db"))
            store.create_schema(e)
            self.services[mid] = MemberService(member_id=mid, engine=e, trust=PeerTrust(e, ca.cert),
                                               signing_key=members[mid].signing_key, matching_key=lambda: MK,
                                               mask_pools=paillier.MaskPools(target=2))
            self.stubs[mid] = Stub(self.services[mid])
        log_key = Ed25519PrivateKey.generate()
        self.verifier = checkpoint.parse_verifier_key(checkpoint.verifier_key("test/log", log_key.public_key()))
        cfg = GatewayConfig(listen="", db_url=db_url, log_origin="test/log", log_key_name="test/log", k_min=2,
                            deadline_ms=600, registry_refresh_ms=0)
        self.gateway = GatewayService(engine=self.engine, registry=Registry(self.engine, 0), config=cfg,
                                      member_stub=lambda ep: self.stubs[ep],
                                      log_reader=audit_log.LogReader(self.engine, origin="test/log", key_name="test/log",
                                                                     signing_key=log_key),
                                      mask_pools=paillier.MaskPools(target=2))
        self.root = root
        self.n = 0

    def query(self, querier: str = "mq", *, mode: int = pb.QUERY_MODE_REPORT) -> str:
        """One query on a fresh subject (no §5.3 pin decides who is asked); returns its query id."""
        self.n += 1
        subject = ("RESIDENT_ID", _valid_id(self.n))
        q = signed_query(self.members[querier], subject=subject, mode=mode)
        kind = "precheck" if mode == pb.QUERY_MODE_PRECHECK else "query"
        self.gateway.process(q, querier, "member", kind, self.members[querier].body.tls_cert_sha256)
        return pb.QueryRequestBody.FromString(q.body).query_id

    def source(self, member_id: str) -> "LocalSource":
        return LocalSource(self, member_id)

    def witnessed(self, member_id: str, cosigners: tuple[str, ...] | None = None) -> rec.Witnessed:
        """A witness checkpoint of the log as it is now, cosigned (C2SP
        cosignature/v1, real keys) by ``cosigners`` (default: every other
        member) and accepted the way the member's feed accepts one: log key
        and a quorum of the four members, the member itself not counting."""
        self.gateway.cut_witness_checkpoint()
        note = self.gateway.witnessed_checkpoints().checkpoint
        cp = checkpoint.open_checkpoint(note, self.verifier)
        who = cosigners if cosigners is not None else tuple(m for m in MEMBERS if m != member_id)
        note = cosignature.add_cosignatures(note, [cosignature.cosign(cp, m, self.members[m].signing_key, int(time.time()))
                                                   for m in who])
        witness_quorum.check_quorum(note, cp, eligible=set(MEMBERS), deciding=member_id, now_s=int(time.time()),
                                    keys={m: [self.members[m].body.ed25519_public_key] for m in MEMBERS})
        return cp, note

    def reconcile(self, member_id: str, **kw: Any) -> rec.Result:
        kw.setdefault("min_age_ms", 0)
        if "witnessed" not in kw:
            kw["witnessed"] = self.witnessed(member_id)
        return rec.reconcile(self.services[member_id].engine, member_id=member_id,
                             public_key=bytes(self.members[member_id].body.ed25519_public_key),
                             source=self.source(member_id), verifier=self.verifier,
                             kept=self.root / f"{member_id}-checkpoint.txt", **kw)

    def journal(self, member_id: str) -> list[str]:
        with self.services[member_id].engine.connect() as conn:
            return [r.query_id for r in conn.execute(select(store.answer_journal.c.query_id))]

    def log(self) -> list[dict[str, Any]]:
        size = self.gateway.log.size()
        return [audit_entry.decode(self.gateway.log.entry(i), index=i) for i in range(size)]


def _valid_id(n: int) -> str:
    """A distinct, valid resident id for subject number n."""
    import random

    from alliance import synthetic

    return synthetic.generate_resident_id(random.Random(n))


class LocalSource:
    """GetQueryProofs and consistency proofs of the in-process gateway."""

    def __init__(self, alliance: Alliance, member_id: str) -> None:
        self.a, self.member_id = alliance, member_id

    def query_proofs(self, from_index: int, max_entries: int) -> pb.ProvenEntries:
        return query_proofs(self.a.engine, self.a.gateway.log, self.member_id, from_index, max_entries)

    def consistency_proof(self, first: int, second: int) -> list[bytes]:
        return self.a.gateway.log.consistency_proof(first, second)


@pytest.fixture(scope="module")
def ca() -> LocalCA:
    return LocalCA()


@pytest.fixture(scope="module")
def members(ca):  # type: ignore[no-untyped-def]
    return {mid: ca.enrol(mid) for mid in MEMBERS}


@pytest.fixture
def alliance(tmp_path, db_url, ca, members):  # type: ignore[no-untyped-def]
    a = Alliance(tmp_path, db_url, ca, members)
    yield a
    a.engine.dispose()


def test_a_normal_sequence_reconciles_and_is_pruned(alliance) -> None:  # type: ignore[no-untyped-def]
    a = alliance
    log_gateway_started(a.engine, deadline_ms=600, k_min=2)
    ids = [a.query("mq") for _ in range(3)] + [a.query("ma"), a.query("mq", mode=pb.QUERY_MODE_PRECHECK)]
    for mid in ("ma", "mb", "mc"):
        expected = len([1 for i, q in enumerate(ids) if not (i == 3 and mid == "ma")])
        assert len(a.journal(mid)) == expected
        result = a.reconcile(mid)
        assert result.as_json()["ok"] is True and result.missing == []
        assert result.checked == result.reconciled == expected
        assert a.journal(mid) == []  # reconciled rows are pruned
        again = a.reconcile(mid)
        assert again.ok and again.checked == 0


def test_answers_younger_than_the_minimum_age_are_not_checked(alliance) -> None:  # type: ignore[no-untyped-def]
    a = alliance
    a.query("mq")
    result = a.reconcile("ma", min_age_ms=rec.MIN_AGE_MS)
    assert result.ok and result.checked == 0 and len(a.journal("ma")) == 1
    assert a.reconcile("ma", since_ms=int(time.time() * 1000) + 60_000).checked == 0  # --since after it


def test_an_answer_given_off_the_record_is_missing_with_the_nearest_restarts(alliance) -> None:  # type: ignore[no-untyped-def]
    """The operator asks a member directly (no entry) between two restarts."""
    a = alliance
    a.query("mq")
    before = log_gateway_started(a.engine, deadline_ms=600, k_min=2)
    time.sleep(0.01)
    off = signed_query(a.members["mq"], subject=("RESIDENT_ID", _valid_id(900)))
    a.services["mb"].answer(pb.MemberQueryRequest(query=off, querier_credential=a.members["mq"].credential.SerializeToString()))
    time.sleep(0.01)
    after = log_gateway_started(a.engine, deadline_ms=600, k_min=2)
    a.query("mq")
    result = a.reconcile("mb")
    off_id = pb.QueryRequestBody.FromString(off.body).query_id
    assert not result.ok and result.checked == 3 and result.reconciled == 2
    assert [m["query_id"] for m in result.missing] == [off_id]
    near = result.missing[0]["nearest_restart"]
    assert near["before"]["seq"] == before and near["after"]["seq"] == after
    assert a.journal("mb") == [off_id]  # a missing answer stays journalled
    assert a.reconcile("mb").missing[0]["query_id"] == off_id  # and is reported again
    assert a.reconcile("ma").ok  # the other members are unaffected


def test_an_entry_the_operator_stops_serving_is_missing(alliance) -> None:  # type: ignore[no-untyped-def]
    a = alliance
    first, second = a.query("mq"), a.query("mq")
    seq = next(e["seq"] for e in a.log() if e.get("query_id") == second)
    with a.engine.begin() as conn:
        conn.execute(delete(schema.asked_index).where(schema.asked_index.c.seq == seq, schema.asked_index.c.member_id == "mc"))
    result = a.reconcile("mc")
    assert [m["query_id"] for m in result.missing] == [second] and result.reconciled == 1
    assert a.reconcile("mb").ok


def test_an_entry_naming_another_ciphertext_does_not_reconcile(alliance) -> None:  # type: ignore[no-untyped-def]
    """The log says ma answered something other than what ma answered."""
    a = alliance
    qid = a.query("mq")
    with a.services["ma"].engine.begin() as conn:
        conn.execute(update(store.answer_journal).where(store.answer_journal.c.query_id == qid)
                     .values(ciphertext_sha256=signing.sha256(b"what ma really sent")))
    result = a.reconcile("ma")
    assert [m["query_id"] for m in result.missing] == [qid]


def _only_journal_row(a: Alliance, member_id: str) -> rec.JournalRow:
    """The one answer ``member_id`` has journalled."""
    with a.services[member_id].engine.connect() as conn:
        r = conn.execute(select(store.answer_journal)).one()
    return rec.JournalRow(r.query_id, bytes(r.request_sha256), bytes(r.ciphertext_sha256), r.answered_at_ms)


def test_entry_reconciles_needs_digest_member_and_own_signature(alliance) -> None:  # type: ignore[no-untyped-def]
    a = alliance
    qid = a.query("mq")
    entry = next(e for e in a.log() if e.get("query_id") == qid)
    row = _only_journal_row(a, "ma")
    key = bytes(a.members["ma"].body.ed25519_public_key)
    assert rec.entry_reconciles(entry, row, "ma", key)

    def changed(**kw: Any) -> dict[str, Any]:
        return {**entry, **kw}

    mine = next(x for x in entry["answers"] if x["member_id"] == "ma")
    others = [x for x in entry["answers"] if x["member_id"] != "ma"]
    assert not rec.entry_reconciles(changed(answers=others + [{**mine, "ciphertext_sha256": "00" * 32}]), row, "ma", key)
    assert not rec.entry_reconciles(changed(answers=others + [{**mine, "signature": "00" * 64}]), row, "ma", key)
    assert not rec.entry_reconciles(changed(answers=others), row, "ma", key)  # neither answer nor drop
    assert not rec.entry_reconciles(changed(members_asked=[m for m in entry["members_asked"] if m != "ma"]), row, "ma", key)
    assert not rec.entry_reconciles(changed(request_body=entry["request_body"][:-2] + "00"), row, "ma", key)
    assert not rec.entry_reconciles(changed(query_id="f" * 32), row, "ma", key)
    assert not rec.entry_reconciles(entry, row, "mb", bytes(a.members["mb"].body.ed25519_public_key))
    # an answer listed with another ciphertext never counts, even beside a drop
    assert not rec.entry_reconciles(changed(answers=others + [{**mine, "ciphertext_sha256": "00" * 32}],
                                            dropped=[{"member_id": "ma", "reason": "deadline_exceeded"}]), row, "ma", key)
    assert rec.entry_reconciles(changed(answers=others, dropped=[{"member_id": "ma", "reason": "deadline_exceeded"}]),
                                row, "ma", key)


def test_own_signatures_by_re_signing_agree_with_verification(alliance, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """With its signing key a member recognises its own deterministic
    signature without verifying it; a changed status, other bytes, or a key
    that is not the credential's never pass that way."""
    from alliance import book_status

    a = alliance

    def status_of(member_id: str, loans: int) -> bytes:
        m = a.members[member_id]
        return book_status.sign(m.signing_key, book_status.BookStatus(member_id, m.body.serial, date.today(), loans,
                                                                      int(time.time() * 1000)))[0]

    a.services["ma"].book_status = lambda: status_of("ma", 100)  # SPEC §10: the answer carries it, signed over
    qid = a.query("mq")
    entry = next(e for e in a.log() if e.get("query_id") == qid)
    row = _only_journal_row(a, "ma")
    key = bytes(a.members["ma"].body.ed25519_public_key)
    own = rec.OwnSignatures(key, a.members["ma"].signing_key)
    mine = next(x for x in entry["answers"] if x["member_id"] == "ma")
    others = [x for x in entry["answers"] if x["member_id"] != "ma"]
    assert mine["book_status"], "the answer carries the member's book status (SPEC §10)"

    def with_mine(**kw: Any) -> dict[str, Any]:
        return {**entry, "answers": others + [{**mine, **kw}]}

    verified: list[bytes] = []
    real_verify = signing.verify
    monkeypatch.setattr(signing, "verify", lambda *args, **kw: (verified.append(args[3]), real_verify(*args, **kw))[1])
    assert rec.entry_reconciles(entry, row, "ma", own)
    assert verified == []  # recognised by its bytes, not verified
    # the gateway swaps in another status under the member's signature: no longer its answer
    assert not rec.entry_reconciles(with_mine(book_status=status_of("ma", 1).hex()), row, "ma", own)
    assert not rec.entry_reconciles(with_mine(book_status=""), row, "ma", own)
    assert not rec.entry_reconciles(with_mine(signature="00" * 64), row, "ma", own)
    assert not rec.entry_reconciles(with_mine(signature=mine["signature"][:-2]), row, "ma", own)
    assert len(verified) == 4  # each fell back to a full verification, which refused it
    # a signing key that is not the credential's is never used: its signature is not ours
    foreign = rec.OwnSignatures(key, a.members["mb"].signing_key)
    assert foreign.signing_key is None
    status = bytes.fromhex(mine["book_status"])
    message = signing.member_answer_message(row.query_id, row.request_sha256, row.ciphertext_sha256, signing.sha256(status))
    by_mb = signing.sign(a.members["mb"].signing_key, signing.MEMBER_ANSWER, message).hex()
    assert not rec.entry_reconciles(with_mine(signature=by_mb), row, "ma", foreign)
    assert not rec.entry_reconciles(with_mine(signature=by_mb), row, "ma", rec.OwnSignatures(key, a.members["ma"].signing_key))
    # and a run given the key reconciles as one without it
    result = a.reconcile("ma", signing_key=a.members["ma"].signing_key)
    assert result.ok and result.reconciled == 1


def test_reconcile_matches_entries_as_it_reads_them_and_keeps_none(alliance, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Between two 15-minute runs a busy member is asked in ~90,000 entries;
    holding them all parsed would take gigabytes. Peak memory of a run stays
    below the entries' own bytes (pages of 4 here, so a run reads 76)."""
    import tracemalloc

    a = alliance
    a.query("mq")
    assert a.reconcile("ma").reconciled == 1  # warm: compiled statements, kept checkpoint
    for _ in range(300):
        a.query("mq")
    witnessed = a.witnessed("ma")
    size = a.gateway.log.size()
    entry_bytes = sum(len(a.gateway.log.entry(i)) for i in range(size))
    monkeypatch.setattr(rec, "PAGE_ENTRIES", 4)
    tracemalloc.start()
    try:
        result = a.reconcile("ma", witnessed=witnessed)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result.ok and result.reconciled == 300
    assert peak < entry_bytes, f"peak {peak} bytes while reading {entry_bytes} bytes of entries"  # kept: ~4x


def test_a_late_answer_reconciles_by_its_logged_drop(alliance) -> None:  # type: ignore[no-untyped-def]
    a = alliance
    a.stubs["mc"].delay_s = 1.0
    qid = a.query("mq")
    entry = next(e for e in a.log() if e.get("query_id") == qid)
    assert entry["dropped"] == [{"member_id": "mc", "reason": "deadline_exceeded"}]
    time.sleep(0.6)  # mc's answer (journalled before the delay) is long done
    result = a.reconcile("mc")
    assert result.ok and result.reconciled == 1


def test_get_query_proofs_serves_only_entries_that_asked_the_caller(alliance) -> None:  # type: ignore[no-untyped-def]
    a = alliance
    log_gateway_started(a.engine, deadline_ms=600, k_min=2)
    a.query("mq")
    a.query("mc")  # asks mq, ma, mb: not mc
    a.query("ma")
    log_gateway_started(a.engine, deadline_ms=600, k_min=2)
    entries = a.log()
    for mid in MEMBERS:
        page = query_proofs(a.engine, a.gateway.log, mid, 0, 0)
        cp = checkpoint.open_checkpoint(page.checkpoint, a.verifier)
        served = [audit_entry.decode(p.data, index=p.index) for p in page.entries]
        expected = [e["seq"] for e in entries if e["kind"] == "gateway_started"
                    or (e["kind"] in ("query", "precheck") and mid in e["members_asked"])]
        assert [e["seq"] for e in served] == expected
        for e in served:
            assert e["kind"] == "gateway_started" or mid in e["members_asked"]
        for p in page.entries:
            from alliance import merkle
            merkle.verify_inclusion(merkle.leaf_hash(p.data), p.index, cp.size, list(p.inclusion_proof), cp.root_hash)
    mc_served = {e.index for e in query_proofs(a.engine, a.gateway.log, "mc", 0, 0).entries}
    mc_query = next(e["seq"] for e in entries if e.get("querier_id") == "mc")
    assert mc_query not in mc_served
    assert not any(e["kind"] in audit_entry.MEMBERSHIP_KINDS for e in entries if e["seq"] in mc_served)


def test_get_query_proofs_pages_by_count_and_bytes(alliance) -> None:  # type: ignore[no-untyped-def]
    a = alliance
    for _ in range(5):
        a.query("mq")
    all_seqs = [p.index for p in query_proofs(a.engine, a.gateway.log, "ma", 0, 0).entries]
    assert len(all_seqs) == 5
    assert [p.index for p in query_proofs(a.engine, a.gateway.log, "ma", 0, 2).entries] == all_seqs[:2]
    assert [p.index for p in query_proofs(a.engine, a.gateway.log, "ma", all_seqs[2], 2).entries] == all_seqs[2:4]
    one = query_proofs(a.engine, a.gateway.log, "ma", 0, 0, page_bytes=1)
    assert [p.index for p in one.entries] == all_seqs[:1]  # at least one entry, whatever the bound
    # and the reader pages through them all
    old = rec.PAGE_ENTRIES
    rec.PAGE_ENTRIES = 2
    try:
        assert a.reconcile("ma").reconciled == 5
    finally:
        rec.PAGE_ENTRIES = old


def test_a_served_entry_that_did_not_ask_the_member_is_refused(alliance) -> None:  # type: ignore[no-untyped-def]
    """A gateway that serves other members' queries is caught, not trusted."""
    a = alliance
    a.query("mc")  # does not ask mc

    class Leaky(LocalSource):
        def query_proofs(self, from_index: int, max_entries: int) -> pb.ProvenEntries:
            return query_proofs(self.a.engine, self.a.gateway.log, "ma", from_index, max_entries)

    with pytest.raises(CryptoError, match="did not ask mc"):
        rec.read_log(Leaky(a, "mc"), "mc", 0, a.verifier, a.root / "leaky.txt")


def test_a_forked_log_is_refused(alliance, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Entries are proven against a checkpoint consistent with the kept one."""
    a = alliance
    a.query("mq")
    kept = a.root / "ma-checkpoint.txt"
    a.reconcile("ma")
    assert kept.exists()
    other_key = Ed25519PrivateKey.generate()
    # a checkpoint by another key is refused outright
    with pytest.raises(CryptoError):
        rec.accept_checkpoint(checkpoint.sign_checkpoint(checkpoint.Checkpoint("test/log", 3, bytes(32)), "test/log", other_key),
                              a.verifier)
    # a log-signed checkpoint of the same size with another root is a fork
    cp = rec.accept_checkpoint(kept.read_text(), a.verifier)
    forged = checkpoint.sign_checkpoint(checkpoint.Checkpoint("test/log", cp.size, bytes(32), cp.extensions), "test/log",
                                        a.gateway.log.signing_key)
    with pytest.raises(CryptoError, match="fork"):
        rec.keep_consistent(kept, rec.accept_checkpoint(forged, a.verifier), forged, a.verifier, a.gateway.log.consistency_proof)


def test_a_later_run_still_reads_entries_logged_before_the_last_mark(alliance) -> None:  # type: ignore[no-untyped-def]
    """A run that checked nothing (answers too young) still records how far it
    read; the next run must not start past an answer's entry because of it."""
    a = alliance
    qid = a.query("mq")
    assert a.reconcile("ma", min_age_ms=rec.MIN_AGE_MS).checked == 0
    with a.services["ma"].engine.connect() as conn:
        assert conn.execute(select(store.reconcile_marks)).all()  # a mark past the entry exists
    result = a.reconcile("ma")
    assert result.ok and result.reconciled == 1, result.missing
    assert qid not in a.journal("ma")


def test_a_tampered_entry_fails_its_inclusion_proof(alliance) -> None:  # type: ignore[no-untyped-def]
    a = alliance
    a.query("mq")

    class Tampering(LocalSource):
        def query_proofs(self, from_index: int, max_entries: int) -> pb.ProvenEntries:
            page = super().query_proofs(from_index, max_entries)
            for p in page.entries:
                e = audit_entry.decode(p.data, index=p.index)
                if e["kind"] == "query":
                    e["purpose"] = "POST_LOAN_MONITORING"
                    p.data = audit_entry.encode(e)
            return page

    with pytest.raises(CryptoError):
        rec.read_log(Tampering(a, "ma"), "ma", 0, a.verifier, a.root / "t.txt")


def test_a_checkpoint_inconsistent_with_the_kept_one_is_refused(alliance) -> None:  # type: ignore[no-untyped-def]
    """The kept checkpoint is of a smaller tree the served one does not extend."""
    a = alliance
    a.query("mq")
    a.query("mq")
    size, note = a.gateway.log.signed_checkpoint()
    kept = a.root / "kept.txt"
    fake = checkpoint.Checkpoint("test/log", size - 1, bytes(32), checkpoint.open_checkpoint(note, a.verifier).extensions)
    kept.write_text(checkpoint.sign_checkpoint(fake, "test/log", a.gateway.log.signing_key))
    with pytest.raises(CryptoError):
        rec.read_log(a.source("ma"), "ma", 0, a.verifier, kept)


# ---------------------------------------------------------------------------
# SPEC §6.1/§6.2: answers are reconciled only under a witnessed checkpoint


def test_an_answer_logged_above_the_witnessed_checkpoint_is_not_reconciled_until_witnessed(alliance) -> None:  # type: ignore[no-untyped-def]
    a = alliance
    before = a.witnessed("ma")          # cosigned before the query was logged
    qid = a.query("mq")
    result = a.reconcile("ma", witnessed=before)
    assert result.reconciled == 0 and result.missing == []
    assert [r["query_id"] for r in result.not_witnessed] == [qid] and result.ok  # pending: given moments ago
    assert a.journal("ma") == [qid]                                               # not pruned
    late = a.reconcile("ma", witnessed=before, clock=lambda: time.time() + 6 * 60)
    assert not late.ok and [r["query_id"] for r in late.overdue] == [qid]         # still unwitnessed after 5 minutes
    assert late.as_json()["not_witnessed"][0]["overdue"] is True
    result = a.reconcile("ma")          # a checkpoint cosigned after it
    assert result.ok and result.reconciled == 1 and result.not_witnessed == [] and a.journal("ma") == []


def test_without_a_witnessed_checkpoint_nothing_reconciles(alliance) -> None:  # type: ignore[no-untyped-def]
    """A member whose feed has no checkpoint with a quorum (e.g. the operator
    shows it only log-signed ones) reconciles nothing, and fails after 5 minutes."""
    a = alliance
    qid = a.query("mq")
    result = a.reconcile("mb", witnessed=None)
    assert result.reconciled == 0 and [r["query_id"] for r in result.not_witnessed] == [qid]
    assert "no witnessed checkpoint" in result.not_witnessed[0]["why"] and a.journal("mb") == [qid]
    assert not a.reconcile("mb", witnessed=None, clock=lambda: time.time() + 6 * 60).ok


def test_a_witnessed_checkpoint_not_consistent_with_the_log_shown_is_refused(alliance) -> None:  # type: ignore[no-untyped-def]
    """The witnesses cosigned one log, the member is shown another: a fork."""
    a = alliance
    a.query("mq")
    cp, _ = a.witnessed("ma")
    other = checkpoint.Checkpoint(cp.origin, cp.size, bytes(32), cp.extensions)
    note = checkpoint.sign_checkpoint(other, "test/log", a.gateway.log.signing_key)
    note = cosignature.add_cosignatures(note, [cosignature.cosign(other, m, a.members[m].signing_key, int(time.time()))
                                               for m in ("mb", "mc", "mq")])
    with pytest.raises(CryptoError, match="two different checkpoints|not a prefix"):
        a.reconcile("ma", witnessed=(other, note))


def test_the_test_witness_helper_needs_a_quorum_without_the_member_itself(alliance) -> None:  # type: ignore[no-untyped-def]
    """Four members: a quorum is 3, of the three others."""
    a = alliance
    with pytest.raises(witness_quorum.NotWitnessed):
        a.witnessed("ma", cosigners=("ma", "mb", "mc"))
    assert a.witnessed("ma", cosigners=("mb", "mc", "mq"))


def test_a_receipt_first_alerted_unwitnessed_is_alerted_again_as_a_fork(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The red team's laundering: stall the witnesses so a forked receipt is
    alerted as a witness outage, then let the fork's verdict be suppressed
    as a repeat. Alerts are per verdict, and a fork is its own kind."""
    from alliance_member import alerts

    engine = db.make_engine(db.sqlite_url(tmp_path / "m.db"))
    store.create_schema(engine)
    item = {"size": 5, "root": "ab" * 32, "at_ms": 0}
    unwitnessed = {**item, "why": "no witnessed checkpoint", "verdict": "not_witnessed"}
    forked = {**item, "why": "not consistent with the witnessed checkpoint of size 9", "verdict": "inconsistent"}
    results = iter([rec.Result(0, 0, [], 9, uncovered_receipt_checkpoints=[r]) for r in (unwitnessed, forked, forked)])
    monkeypatch.setattr(rec, "reconcile_home", lambda *a, **k: next(results))
    reconciler = rec.Reconciler(tmp_path, engine)
    for _ in range(3):
        reconciler.run_once()
    assert [a.kind for a in alerts.list_alerts(engine)] == ["not_witnessed", "inconsistent_checkpoint"]
