"""SPEC §6.2 against an operator who shapes its own log: reconcile must still
report every answer given off the record, and `member serve` must alert when
it cannot read the log, whatever the served entries hold.

The operator here holds the log key and serves any entries it likes, each
proven in a checkpoint it signs (an in-memory RFC 6962 tree). Found by a
red-team review of the streaming reconcile: one entry with ``"answers": 5``
made every run raise TypeError, which `member serve` only logged, so no
`unlogged_answer` alert was ever raised again."""
from __future__ import annotations

import os
import types
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import select

from alliance import audit_entry, checkpoint, db, merkle, signing
from alliance.errors import CryptoError, Unreachable, VerificationFailed
from alliance.v1 import alliance_pb2 as pb
from alliance_member import reconcile as rec
from alliance_member import store

LOG_KEY = Ed25519PrivateKey.generate()
VERIFIER = checkpoint.parse_verifier_key(checkpoint.verifier_key("test/log", LOG_KEY.public_key()))
MA = Ed25519PrivateKey.generate()


class OperatorLog:
    """The operator's own log: any entries, proven against checkpoints it signs."""

    def __init__(self, entries: list[dict[str, Any]]) -> None:
        self.data = [audit_entry.encode({"v": 2, **e, "seq": i}) for i, e in enumerate(entries)]
        self.tree = merkle.MemoryNodeStore()
        for d in self.data:
            self.tree.append(merkle.leaf_hash(d))

    def query_proofs(self, from_index: int, max_entries: int) -> pb.ProvenEntries:
        n = self.tree.size
        note = checkpoint.sign_checkpoint(checkpoint.Checkpoint("test/log", n, self.tree.root()), "test/log", LOG_KEY)
        return pb.ProvenEntries(checkpoint=note, entries=[
            pb.ProvenEntry(index=i, data=self.data[i], inclusion_proof=self.tree.inclusion_proof(i, n))
            for i in range(from_index, min(n, from_index + max_entries))])

    def consistency_proof(self, first: int, second: int) -> list[bytes]:
        return self.tree.consistency_proof(first, second)

    def witnessed(self) -> rec.Witnessed:
        note = self.query_proofs(0, 0).checkpoint
        return checkpoint.open_checkpoint(note, VERIFIER), note


def _entry(qid: str, body: bytes, ct: bytes, asked: tuple[str, ...] = ("ma", "mb"), **kw: Any) -> dict[str, Any]:
    """A query entry holding ma's real answer (its signature over the message)."""
    msg = signing.member_answer_message(qid, signing.sha256(body), signing.sha256(ct))
    e = {"kind": "query", "query_id": qid, "request_body": body.hex(), "members_asked": list(asked),
         "answers": [{"member_id": "ma", "ciphertext_sha256": signing.sha256(ct).hex(),
                      "signature": signing.sign(MA, signing.MEMBER_ANSWER, msg).hex()}],
         "dropped": []}
    return {**e, **kw}


def _row(qid: str, body: bytes, ct: bytes) -> rec.JournalRow:
    return rec.JournalRow(qid, signing.sha256(body), signing.sha256(ct), 0)


@pytest.fixture
def engine(tmp_path):  # type: ignore[no-untyped-def]
    e = db.make_engine(db.sqlite_url(tmp_path / "m.db"))
    store.create_schema(e)
    yield e
    e.dispose()


def test_the_operator_log_reconciles_a_well_formed_answer(tmp_path, engine) -> None:  # type: ignore[no-untyped-def]
    """The control: the harness's entries do reconcile, so each refusal below
    is the odd field's doing."""
    with engine.begin() as conn:
        rec.journal_answer(conn, "q0", b"b0", b"c0", 0)
    log = OperatorLog([_entry("q0", b"b0", b"c0")])
    result = rec.reconcile(engine, member_id="ma", public_key=MA.public_key(), source=log, verifier=VERIFIER,
                           kept=tmp_path / "kept.txt", witnessed=log.witnessed(), min_age_ms=0, signing_key=MA)
    assert result.ok and result.reconciled == 1


def test_an_odd_entry_does_not_stop_the_checks_of_later_entries(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Entries are matched as they are read: an entry for a journalled answer
    with "answers": 5, then one that did not ask the member. The run must
    still fail on the second (CryptoError: an alert), not stop at the first."""
    log = OperatorLog([_entry("q0", b"b0", b"c0", answers=5), _entry("other", b"x", b"y", asked=("mb", "mc"))])
    with pytest.raises(CryptoError, match="did not ask ma"):
        rec.read_log(log, "ma", 0, VERIFIER, tmp_path / "kept.txt",
                     journal={"q0": _row("q0", b"b0", b"c0")}, own=rec.OwnSignatures(MA.public_key()))


@pytest.mark.parametrize("odd", [
    {"answers": 5}, {"answers": True}, {"answers": [], "dropped": 7}, {"answers": [], "dropped": "ma"},
    {"members_asked": "ma,mb"}, {"members_asked": 5}, {"members_asked": True}, {"members_asked": None},
    {"request_body": 7}, {"request_body": None},
])
def test_an_odd_entry_accounts_for_nothing_and_hides_nothing(tmp_path, engine, odd) -> None:  # type: ignore[no-untyped-def]
    assert not rec.entry_reconciles(_entry("q0", b"b0", b"c0", **odd), _row("q0", b"b0", b"c0"), "ma",
                                    rec.OwnSignatures(MA.public_key()))
    with engine.begin() as conn:
        rec.journal_answer(conn, "q0", b"b0", b"c0", 0)
        rec.journal_answer(conn, "off", b"b9", b"c9", 0)  # answered off the record
    log = OperatorLog([_entry("q0", b"b0", b"c0", **odd)])
    result = rec.reconcile(engine, member_id="ma", public_key=MA.public_key(), source=log, verifier=VERIFIER,
                           kept=tmp_path / "kept.txt", witnessed=log.witnessed(), min_age_ms=0)
    assert sorted(m["query_id"] for m in result.missing) == ["off", "q0"]


@pytest.mark.parametrize("field", ["request_body", "signature", "ciphertext_sha256"])
def test_hex_an_auditor_refuses_accounts_for_nothing(field: str) -> None:
    """`audit verify` refuses hex that is not lowercase; so does reconcile."""
    body, ct = b"\xab\xcd", b"\xef"
    entry = _entry("q0", body, ct)
    answer = entry["answers"][0]
    own = rec.OwnSignatures(MA.public_key(), MA)
    assert rec.entry_reconciles(entry, _row("q0", body, ct), "ma", own)
    if field == "request_body":
        odd = {**entry, field: entry[field].upper()}
    else:
        odd = {**entry, "answers": [{**answer, field: answer[field].upper()}]}
    assert odd != entry
    assert not rec.entry_reconciles(odd, _row("q0", body, ct), "ma", own)


@pytest.mark.parametrize("exc", [
    VerificationFailed("entry 3: bytes are not the canonical encoding", entry=3),
    CryptoError("audit log fork"),
    TypeError("'int' object is not iterable"),
])
def test_the_reconciler_alerts_when_the_log_cannot_be_read(tmp_path, engine, monkeypatch, exc) -> None:  # type: ignore[no-untyped-def]
    """A non-canonical entry (VerificationFailed) or anything unforeseen used
    to be only logged: reconcile 'did not run', every 15 minutes, with no
    alert however many answers were given off the record meanwhile."""
    def fail(*args: Any, **kw: Any) -> None:
        raise exc

    monkeypatch.setattr(rec, "reconcile_home", fail)
    assert rec.Reconciler(tmp_path, engine).run_once() is None
    with engine.connect() as conn:
        assert [r.kind for r in conn.execute(select(store.alerts))] == ["reconcile_failed"]


def _scripted_reconciler(tmp_path, engine, monkeypatch, outcome: list[Exception | None]) -> rec.Reconciler:  # type: ignore[no-untyped-def]
    """A Reconciler whose runs play ``outcome`` in order: an exception the
    run raises, or None for a run that completes."""
    def run(*args: Any, **kw: Any) -> rec.Result:
        exc = outcome.pop(0)
        if exc is not None:
            raise exc
        return rec.Result(checked=0, reconciled=0, missing=[], tree_size=0)

    monkeypatch.setattr(rec, "reconcile_home", run)
    return rec.Reconciler(tmp_path, engine)


def test_a_lasting_failure_is_alerted_once_per_run_of_failures(tmp_path, engine, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Not one alert every 15 minutes for ever: once while the same failure
    lasts, a different one alerts too, and after a run that completes the
    same failure alerts again."""
    outcome: list[Exception | None] = []
    reconciler = _scripted_reconciler(tmp_path, engine, monkeypatch, outcome)
    fork, other = CryptoError("audit log fork: two different checkpoints of the same size"), TypeError("odd")
    outcome.extend([fork, fork, fork, other, fork, None, fork])
    for _ in range(7):
        reconciler.run_once()
    with engine.connect() as conn:
        messages = [r.message for r in conn.execute(select(store.alerts).order_by(store.alerts.c.id))]
    assert len(messages) == 3 and "fork" in messages[0] and "TypeError" in messages[1] and "fork" in messages[2]


class TricklingLog(OperatorLog):
    """Serves one entry per page, slowly, and logs a new entry for the
    member every time it serves one: a run that reads to the end of the log
    would never end."""

    def __init__(self, entries: list[dict[str, Any]], delay_s: float) -> None:
        super().__init__(entries)
        self.delay_s, self.pages = delay_s, 0

    def query_proofs(self, from_index: int, max_entries: int) -> pb.ProvenEntries:
        import time

        self.pages += 1
        time.sleep(self.delay_s)
        page = super().query_proofs(from_index, 1)
        more = audit_entry.encode({"v": 2, **_entry(f"new{self.pages}", b"b", b"c"), "seq": self.tree.size})
        self.data.append(more)
        self.tree.append(merkle.leaf_hash(more))
        return page


def test_a_run_reads_the_log_as_it_was_when_it_began(tmp_path, engine) -> None:  # type: ignore[no-untyped-def]
    with engine.begin() as conn:
        rec.journal_answer(conn, "q0", b"b0", b"c0", 0)
    log = TricklingLog([_entry("q0", b"b0", b"c0"), _entry("q1", b"b1", b"c1"), _entry("q2", b"b2", b"c2")], 0.0)
    view = rec.read_log(log, "ma", 0, VERIFIER, tmp_path / "kept.txt", journal={"q0": _row("q0", b"b0", b"c0")},
                        own=rec.OwnSignatures(MA.public_key()), budget_s=5)  # reading on would fail after 5 s
    assert view.first_size == 3 and log.pages == 3 and view.unwitnessed == {"q0"}  # no witnessed checkpoint given


def test_a_gateway_that_trickles_pages_cannot_keep_a_run_open(tmp_path, engine) -> None:  # type: ignore[no-untyped-def]
    """Each page just under the client's timeout, for ever: the run gives up
    after its budget as a run that could not complete (so the stall alert
    comes), instead of never returning and never alerting."""
    log = TricklingLog([_entry(f"q{i}", b"b", b"c") for i in range(50)], 0.02)
    with pytest.raises(Unreachable, match="reconcile did not complete"):
        rec.read_log(log, "ma", 0, VERIFIER, tmp_path / "kept.txt", budget_s=0.2)
    assert log.pages < 20


def test_a_gateway_that_keeps_reconcile_from_running_is_alerted_after_an_hour(tmp_path, engine, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """An unreachable gateway is retried quietly; four runs in a row (an hour)
    that could not complete raise one alert, and a run that completes resets
    the count."""
    outcome: list[Exception | None] = []
    reconciler = _scripted_reconciler(tmp_path, engine, monkeypatch, outcome)

    def kinds() -> list[str]:
        with engine.connect() as conn:
            return [r.kind for r in conn.execute(select(store.alerts))]

    down = Unreachable("the gateway did not answer")
    outcome.extend([down] * (rec.STALL_RUNS - 1) + [None] + [down] * (rec.STALL_RUNS - 1))
    for _ in range(2 * rec.STALL_RUNS - 1):
        reconciler.run_once()
    assert kinds() == []
    outcome.extend([down, down])
    reconciler.run_once()
    assert kinds() == ["reconcile_failed"]
    reconciler.run_once()
    assert kinds() == ["reconcile_failed"]  # once, not every run after


SECT163K1 = b"""-----BEGIN PRIVATE KEY-----
MGMCAQAwEAYHKoZIzj0CAQYFK4EEAAEETDBKAgEBBBUCulyHCwg0MahJhntWLyRS
GfOteCihLgMsAAQE9l8y2da+ieIHSRU7ynQ0b8VIDcwESuMBROA/PBwBwEQ1/30j
WWOfw6g=
-----END PRIVATE KEY-----
"""


@pytest.mark.parametrize("content", [SECT163K1, b"garbage", b""])
def test_an_unloadable_signing_key_only_means_full_verification(tmp_path, content: bytes) -> None:
    """reconcile needs only the credential's public key; the signing key is a
    shortcut, and a key file cryptography cannot load must not fail the run."""
    path = tmp_path / "ed25519.key"
    path.write_bytes(content)
    os.chmod(path, 0o600)
    assert rec._own_signing_key(types.SimpleNamespace(signing_key=path)) is None
    assert rec._own_signing_key(types.SimpleNamespace(signing_key=tmp_path / "missing.key")) is None
