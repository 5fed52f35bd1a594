"""The auditor's side of the tamper-evident log (SPEC §6, §7 `alliance audit`).

A real log is built without network: a SQLite database with the gateway's
schema, entries appended with the gateway's own ``audit_log.append`` and
``service._query_entry`` (so the format is the gateway's, not a copy),
credentials issued by a real CA, queries signed with real Ed25519 keys over
real QueryRequestBody bytes and real member answer signatures. Then the
database is tampered with and the verifier must fail and name the entry."""
from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import delete, select, update

from alliance import audit_entry, audit_verify, checkpoint, db, merkle, pki, protocol, signing
from alliance.errors import Unreachable, VerificationFailed
from alliance.v1 import alliance_pb2 as pb
from alliance_auditor import activity_report, log_source
from alliance_auditor import verify as audit_verify_client
from alliance_auditor import watch as credential_watch
from alliance_gateway import audit_log, schema
from alliance_gateway.service import REFUSALS, QueryFailure, _Context, _query_entry
from tests.alliance_fixtures import MK, NOW, EnrolledMember, LocalCA, signed_query

ORIGIN = "test.alliance/audit-log"
T0 = int(NOW.timestamp() * 1000) + 60_000
MEMBERS = ("m1", "m2", "m3", "m4")


@pytest.fixture(scope="module")
def ca() -> LocalCA:
    return LocalCA()


@pytest.fixture(scope="module")
def people(ca: LocalCA) -> dict[str, EnrolledMember]:
    enrolled = {m: ca.enrol(m) for m in MEMBERS}
    enrolled["aud"] = ca.enrol("aud", role="auditor")
    return enrolled


# --------------------------------------------------------------------------
# Building a real log


class LogBuilder:
    """Appends entries exactly as the gateway and admin do, one second apart."""

    def __init__(self, path: Path, ca: LocalCA, people: dict[str, EnrolledMember]) -> None:
        self.engine = db.make_engine(f"sqlite:///{path}")
        schema.create_schema(self.engine)
        self.ca, self.people = ca, people
        self.log_key = Ed25519PrivateKey.generate()
        self.reader = audit_log.LogReader(self.engine, origin=ORIGIN, key_name=ORIGIN, signing_key=self.log_key)
        self.verifier = checkpoint.parse_verifier_key(checkpoint.verifier_key(ORIGIN, self.log_key.public_key()))
        self.clock = T0
        self.status: dict[str, str] = {}
        self.version = 1  # the "v" of membership entries (tests/test_audit_verify_v2.py writes version 2 logs)

    def tick(self, ms: int = 1000) -> int:
        self.clock += ms
        return self.clock

    def append(self, build: Any, ms: int | None = None) -> int:
        with self.engine.begin() as conn:
            seq, _ = audit_log.append(conn, build, ms if ms is not None else self.tick())
        return seq

    # -- membership, as gateway/admin.py writes it ---------------------------

    def issue(self, member: EnrolledMember | pb.Credential, daily_quota: int | None = 1000) -> int:
        cred = member if isinstance(member, pb.Credential) else member.credential
        body = pb.CredentialBody.FromString(cred.body)
        self.status[body.member_id] = "active"
        quota = {} if daily_quota is None else {"daily_quota": daily_quota}  # None: a log written before the field existed
        return self.append(lambda seq, when: {
            "v": self.version, "kind": "credential_issued", "seq": seq, "time": when, "member_id": body.member_id, "name": body.name,
            "role": pki.role_name(body.role), "serial": body.serial, "endpoint": body.endpoint,
            "fingerprint": body.member_fingerprint.hex(), "credential": cred.SerializeToString().hex(), **quota,
        })

    def set_status(self, member_id: str, kind: str) -> int:
        self.status[member_id] = {"member_suspended": "suspended", "member_resumed": "active", "member_revoked": "revoked"}[kind]
        return self.append(lambda seq, when: {"v": self.version, "kind": kind, "seq": seq, "time": when, "member_id": member_id})

    def set_quota(self, member_id: str, quota: int) -> int:
        return self.append(lambda seq, when: {"v": self.version, "kind": "quota_changed", "seq": seq, "time": when,
                                              "member_id": member_id, "daily_quota": quota})

    # -- queries, as gateway/service.py writes them ---------------------------

    def query(self, querier: str, *, kind: str = "query", answer: tuple[str, ...] | None = None, asked: list[str] | None = None,
              outcome: str = "accepted", reason: str | None = None, signed: pb.SignedQuery | None = None,
              parsed: bool = True, forge_answer: str | None = None, k_min: int = 2, inquiries_30d: int = 0,
              subject: str | None = None, **v2: Any) -> int:
        """``v2``: what a version 2 builder's ``shape`` takes (answer_set, oversized, ...)."""
        received = self.tick()
        q = self.people[querier]
        if signed is None:
            mode = pb.QUERY_MODE_PRECHECK if kind == "precheck" else pb.QUERY_MODE_REPORT
            signed = signed_query(q, mode=mode, timestamp_ms=received - 150, subject=("RESIDENT_ID", subject or _subject(received)))
        ctx = _Context(kind=kind, peer_id=querier, query=signed, received_ms=received)
        if parsed:
            ctx.body = protocol.parse_body(signed)
        if asked is None:
            asked = self.default_asked(querier, ctx)
        answering = [m for m in asked if answer is None or m in answer]
        if ctx.body is not None and asked:
            ctx.asked = list(asked)
            for m in answering:
                ciphertext = os.urandom(512)  # stands in for the member's Paillier ciphertext: only its hash is logged
                key = Ed25519PrivateKey.generate() if m == forge_answer else self.people[m].signing_key
                sig = signing.sign(key, signing.MEMBER_ANSWER, protocol.answer_message(ctx.body, signed.body, ciphertext))
                ctx.receipts.append(pb.AnswerReceipt(member_id=m, ciphertext_sha256=signing.sha256(ciphertext), signature=sig))
            ctx.dropped = [{"member_id": m, "reason": "deadline_exceeded"} for m in asked if m not in answering]
        ctx.inquiries_30d = inquiries_30d
        failure = QueryFailure(reason, f"refused: {reason}") if reason else None
        return self.append(lambda seq, when: self.shape(_query_entry(ctx, seq, when, outcome, failure, k_min), **v2), received)

    def default_asked(self, querier: str, ctx: _Context) -> list[str]:
        """Every active member but the querier, as the v1 gateway asks."""
        return sorted(m for m, s in self.status.items() if s == "active" and m != querier and self.people[m].body.role == pb.ROLE_MEMBER)

    def shape(self, entry: dict[str, Any]) -> dict[str, Any]:
        return entry  # version 1: the gateway's entry as it is

    # -- reading and tampering -------------------------------------------------

    def size(self) -> int:
        return self.reader.size()

    def signed(self, size: int | None = None) -> tuple[checkpoint.Checkpoint, str]:
        _, note = self.reader.signed_checkpoint(size)
        return checkpoint.open_checkpoint(note, self.verifier, origin=ORIGIN), note

    def data(self, seq: int) -> bytes:
        return self.reader.entry(seq)

    def entry(self, seq: int) -> dict[str, Any]:
        return audit_entry.decode(self.data(seq), index=seq)

    def set_data(self, seq: int, data: bytes) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(schema.log_entries).where(schema.log_entries.c.seq == seq).values(data=data))

    def delete(self, seq: int) -> None:
        with self.engine.begin() as conn:
            conn.execute(delete(schema.log_entries).where(schema.log_entries.c.seq == seq))

    def rebuild_tree(self, size: int | None = None) -> None:
        """What an operator rewriting history would do: truncate to ``size``
        and recompute every stored node from the entries as they now are."""
        with self.engine.begin() as conn:
            if size is not None:
                conn.execute(delete(schema.log_entries).where(schema.log_entries.c.seq >= size))
                conn.execute(update(schema.log_head).values(size=size))
            datas = [bytes(d) for d in conn.execute(select(schema.log_entries.c.data).order_by(schema.log_entries.c.seq)).scalars()]
            conn.execute(delete(schema.log_nodes))
            store = merkle.MemoryNodeStore()
            for d in datas:
                store.append(merkle.leaf_hash(d))
            rows = [{"level": lv, "idx": ix, "hash": h} for (lv, ix), h in store._nodes.items()]
            conn.execute(schema.log_nodes.insert(), rows)
        self.reader.drop_caches()

    def verify(self, **kwargs: Any) -> audit_verify.VerifyResult:
        cp = kwargs.pop("signed", None) or self.signed()[0]
        return audit_verify.verify_log(self.reader.entries(0, cp.size), cp, self.ca.cert,
                                       consistency_proof=self.reader.consistency_proof, **kwargs)

    def bad_entry(self, **kwargs: Any) -> tuple[int | None, str]:
        with pytest.raises(VerificationFailed) as info:
            self.verify(**kwargs)
        return info.value.entry, str(info.value)


def _subject(seed: int) -> str:
    """A valid resident ID number per query, so subject tokens differ."""
    from alliance import identity

    base = f"110105{19500101 + seed % 28:08d}{seed % 1000:03d}"
    for check in "0123456789X":
        try:
            identity.canonical_id("RESIDENT_ID", base + check)
            return base + check
        except Exception:  # noqa: BLE001 - try the next check character
            continue
    raise AssertionError("no valid check character")


def _unsigned_query(member: EnrolledMember, received: int, **overrides: Any) -> pb.SignedQuery:
    params = dict(querier_id=member.member_id, credential_serial=member.body.serial, subject_token=os.urandom(32),
                  matching_key_epoch=MK.epoch, purpose="LOAN_APPROVAL", consent_id="C-7", consent_sha256=b"\x07" * 32,
                  as_of=date(2026, 6, 30), mode=pb.QUERY_MODE_REPORT, paillier_key_fingerprint=member.public_key.fingerprint(),
                  timestamp_ms=received)
    params.update(overrides)
    return protocol.build_signed_query(protocol.QueryParams(**params), member.signing_key)


@dataclass
class Standard:
    """Named positions in the standard log."""

    accepted: int
    accepted_partial: int
    precheck: int
    too_few: int
    bad_sig: int
    no_consent: int
    suspended: int
    after_resume: int
    stale: int
    second_accepted: int
    quota: int
    wrong_role: int
    last: int


def standard_log(b: LogBuilder) -> Standard:
    """Every kind of entry, accepted and refused, with real signatures."""
    for m in (*MEMBERS, "aud"):
        b.issue(b.people[m])
    b.set_quota("m1", 2)
    accepted = b.query("m1")
    accepted_partial = b.query("m2", answer=("m1", "m3"))
    precheck = b.query("m3", kind="precheck")
    too_few = b.query("m1", answer=("m2",), outcome="refused", reason="too_few_answers")
    forged = protocol.build_signed_query(
        protocol.QueryParams(**{**_params(b.people["m4"], b.clock + 1000)}), Ed25519PrivateKey.generate())
    bad_sig = b.query("m4", signed=forged, asked=[], outcome="refused", reason="bad_signature")
    no_consent = b.query("m2", signed=_unsigned_query(b.people["m2"], b.clock + 1000, consent_id=""), parsed=False,
                         asked=[], outcome="refused", reason="missing_consent")
    b.set_status("m4", "member_suspended")
    suspended = b.query("m4", parsed=False, asked=[], outcome="refused", reason="member_suspended")
    b.set_status("m4", "member_resumed")
    b.tick(6000)
    after_resume = b.query("m4")
    stale = b.query("m1", signed=_unsigned_query(b.people["m1"], b.clock - 600_000), asked=[], outcome="refused",
                    reason="stale_timestamp")
    second = b.query("m1")
    quota = b.query("m1", outcome="refused", reason="quota_exceeded")
    wrong_role = b.query("aud", parsed=False, asked=[], outcome="refused", reason="wrong_role")
    last = b.query("m2", inquiries_30d=0)
    return Standard(accepted, accepted_partial, precheck, too_few, bad_sig, no_consent, suspended, after_resume, stale,
                    second, quota, wrong_role, last)


def _params(member: EnrolledMember, ts: int) -> dict[str, Any]:
    return dict(querier_id=member.member_id, credential_serial=member.body.serial, subject_token=os.urandom(32),
                matching_key_epoch=1, purpose="CREDIT_LIMIT_REVIEW", consent_id="C-9", consent_sha256=b"\x09" * 32,
                as_of=date(2026, 6, 30), mode=pb.QUERY_MODE_REPORT, paillier_key_fingerprint=member.public_key.fingerprint(),
                timestamp_ms=ts)


@pytest.fixture
def b(tmp_path: Path, ca: LocalCA, people: dict[str, EnrolledMember]) -> LogBuilder:
    return LogBuilder(tmp_path / "gateway.db", ca, people)


@pytest.fixture
def log(b: LogBuilder) -> tuple[LogBuilder, Standard]:
    return b, standard_log(b)


# --------------------------------------------------------------------------
# A sound log verifies


# The v2 reasons the gateway is adding to REFUSALS (docs/audit-log.md "Version 2 entries"); once it has them
# this union changes nothing and the test is the plain equality again.
V2_REASONS = {"replayed_query_id", "answer_set_changed"}


def test_the_refusal_reasons_are_the_gateways() -> None:
    assert audit_verify.KNOWN_REASONS == set(REFUSALS) | V2_REASONS


def test_a_sound_log_verifies(log: tuple[LogBuilder, Standard]) -> None:
    b, s = log
    result = b.verify()
    assert result.entries == result.tree_size == b.size() == s.last + 1
    assert result.accepted == 6 and result.refused == 7
    assert result.refusals == {"too_few_answers": 1, "bad_signature": 1, "missing_consent": 1, "member_suspended": 1,
                               "stale_timestamp": 1, "quota_exceeded": 1, "wrong_role": 1}
    assert result.unverified_refusals == {}
    # 6 accepted querier signatures + answers, plus the refusals' signature checks
    assert result.signatures_checked > 6 + 15
    out = result.to_json()
    assert out["ok"] is True and out["entries"] == s.last + 1


def test_signature_checks_in_worker_processes_name_the_same_entry(log: tuple[LogBuilder, Standard],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    b, s = log
    b.query("m3", forge_answer="m1")
    monkeypatch.setattr(audit_verify, "PARALLEL_MIN_JOBS", 1)
    monkeypatch.setattr(audit_verify, "JOBS_PER_CHUNK", 4)
    entry, message = b.bad_entry(workers=2)
    assert entry == s.last + 1 and "answer signature of m1" in message


# --------------------------------------------------------------------------
# Tampering with stored entries


def _offset(data: bytes, marker: str, k: int) -> int:
    if marker == "<first>":
        return 0
    if marker == "<last>":
        return len(data) - 1
    return data.index(marker.encode()) + len(marker) + k


BYTE_CASES = [
    ("accepted", '"request_signature":"', 5),
    ("accepted", '"request_signature":"', 127),
    ("accepted", '"signature":"', 0),  # inside a member's answer signature
    ("accepted_partial", '"ciphertext_sha256":"', 40),
    ("accepted", '"time":"', 3),  # the year
    ("precheck", '"time":"', 20),  # the milliseconds
    ("too_few", '"outcome":"', 0),
    ("bad_sig", '"request_body":"', 30),
    ("quota", '"reason":"', 2),
    ("last", '"seq":', 0),
    ("last", "<first>", 0),
    ("last", "<last>", 0),
    ("credential", '"credential":"', 200),
    ("credential", '"fingerprint":"', 10),
    ("quota_change", '"daily_quota":', 0),
]


@pytest.mark.parametrize("canonical", [True, False], ids=["still-canonical", "garbled"])
@pytest.mark.parametrize(("which", "marker", "k"), BYTE_CASES)
def test_changing_any_byte_of_an_entry_is_named(log: tuple[LogBuilder, Standard], which: str, marker: str, k: int,
                                                canonical: bool) -> None:
    b, s = log
    seq = {"credential": 1, "quota_change": 5}.get(which) or getattr(s, which)
    data = bytearray(b.data(seq))
    at = _offset(bytes(data), marker, k)
    old = chr(data[at])
    if canonical:  # a plausible edit that keeps the bytes canonical JSON: only the tree can tell
        data[at] = ord({"0": "1", "9": "8", "f": "e", "a": "b"}.get(old, "0" if old.isdigit() or old in "abcdef" else old.swapcase()))
        if data[at] == ord(old):
            data[at] = ord("x")
    else:
        data[at] = (data[at] + 0x41) % 256 or 1
    assert bytes(data) != b.data(seq)
    b.set_data(seq, bytes(data))
    entry, message = b.bad_entry()
    assert entry == seq, message
    assert message.startswith(f"entry {seq}: ")


def test_deleting_an_entry_is_named(log: tuple[LogBuilder, Standard]) -> None:
    b, s = log
    b.delete(s.precheck)
    entry, message = b.bad_entry()
    assert entry == s.precheck and "missing" in message


def test_deleting_the_last_entry_is_named(log: tuple[LogBuilder, Standard]) -> None:
    b, s = log
    b.delete(s.last)
    entry, message = b.bad_entry()
    assert entry == s.last and "missing" in message


def test_deleting_an_entry_and_renumbering_the_rest_is_named(log: tuple[LogBuilder, Standard]) -> None:
    """The operator closes the gap: every later entry re-encoded with seq - 1
    and the last row dropped. All bytes canonical, every seq matches: only the
    signed tree shows it."""
    b, s = log
    gone, n = s.accepted_partial, b.size()
    for seq in range(gone, n - 1):
        e = b.entry(seq + 1)
        e["seq"] = seq
        b.set_data(seq, audit_entry.encode(e))
    b.delete(n - 1)
    entry, message = b.bad_entry()
    assert entry == gone, message


def test_swapping_two_entries_is_named(log: tuple[LogBuilder, Standard]) -> None:
    b, s = log
    first, second = b.data(s.accepted), b.data(s.precheck)
    b.set_data(s.accepted, second)
    b.set_data(s.precheck, first)
    entry, message = b.bad_entry()
    assert entry == s.accepted and "sequence number" in message


def test_swapping_two_entries_with_their_seq_rewritten_is_named(log: tuple[LogBuilder, Standard]) -> None:
    b, s = log
    one, two = b.entry(s.accepted), b.entry(s.accepted_partial)
    one["seq"], two["seq"] = two["seq"], one["seq"]
    b.set_data(s.accepted, audit_entry.encode(two))
    b.set_data(s.accepted_partial, audit_entry.encode(one))
    entry, message = b.bad_entry()
    assert entry == s.accepted and "signed checkpoint commits to" in message


def test_a_rewritten_log_with_a_fresh_tree_still_breaks_the_signatures(log: tuple[LogBuilder, Standard]) -> None:
    """An operator who rewrites an entry *and* re-signs a tree over it cannot
    forge the members' signatures: the content check names the entry."""
    b, s = log
    e = b.entry(s.accepted)
    e["purpose"] = "POST_LOAN_MONITORING"  # what the querier did not sign
    b.set_data(s.accepted, audit_entry.encode(e))
    b.rebuild_tree()
    entry, message = b.bad_entry()
    assert entry == s.accepted and "purpose" in message


# --------------------------------------------------------------------------
# History: rollback and fork


def test_rolling_the_log_back_is_named(log: tuple[LogBuilder, Standard]) -> None:
    b, s = log
    kept, _ = b.signed()
    b.rebuild_tree(size=s.stale)
    entry, message = b.bad_entry(kept=[kept])
    assert entry == s.stale and "rollback" in message


def test_a_fork_of_the_same_size_is_named_exactly_with_the_verified_leaves(log: tuple[LogBuilder, Standard]) -> None:
    b, s = log
    first = b.verify()
    kept, _ = b.signed()
    e = b.entry(s.accepted_partial)
    e["dropped"][0]["reason"] = "unavailable: connection reset"  # harmless-looking, self-consistent rewrite
    b.set_data(s.accepted_partial, audit_entry.encode(e))
    b.rebuild_tree()
    forked, _ = b.signed()
    assert forked.size == kept.size and forked.root_hash != kept.root_hash
    b.verify()  # on its own the forked log is self-consistent ...
    entry, message = b.bad_entry(kept=[kept], trusted_leaves=first.tree.packed())  # ... but not with what we kept
    assert entry == s.accepted_partial and "fork" in message and "same size" in message


def test_a_fork_without_verified_leaves_names_the_first_entry_not_covered(log: tuple[LogBuilder, Standard]) -> None:
    b, s = log
    early, _ = b.signed(s.accepted)  # kept when the log had s.accepted entries
    kept, _ = b.signed()
    e = b.entry(s.precheck)
    e["k_min"] = 3  # still true of this precheck: all three asked members answered
    b.set_data(s.precheck, audit_entry.encode(e))
    b.rebuild_tree()
    entry, message = b.bad_entry(kept=[early, kept])
    assert entry == s.accepted and "at or after entry" in message


def test_two_signed_checkpoints_of_one_size_are_a_fork(b: LogBuilder) -> None:
    for m in MEMBERS:
        b.issue(b.people[m])
    one, _ = b.signed()
    other = checkpoint.Checkpoint(ORIGIN, one.size, os.urandom(32))
    note = checkpoint.sign_checkpoint(other, ORIGIN, b.log_key)  # the log key signed both
    two = checkpoint.open_checkpoint(note, b.verifier)
    problem = audit_verify.check_history(two, [one], b.reader.consistency_proof)
    assert problem is not None and "fork" in problem[1]


def test_an_extension_of_a_kept_checkpoint_is_accepted(log: tuple[LogBuilder, Standard]) -> None:
    b, s = log
    early, _ = b.signed(s.accepted)
    same, _ = b.signed()
    b.query("m3")
    assert b.verify(kept=[early, same]).tree_size == s.last + 2


# --------------------------------------------------------------------------
# Contents: every accepted query checks out, every refusal fits


def test_an_accepted_query_with_a_bad_member_signature_is_named(log: tuple[LogBuilder, Standard]) -> None:
    b, s = log
    bad = b.query("m2", forge_answer="m4")
    b.query("m3")
    entry, message = b.bad_entry()
    assert entry == bad and "answer signature of m4 does not verify" in message


def test_an_accepted_query_not_signed_by_the_querier_is_named(log: tuple[LogBuilder, Standard]) -> None:
    b, s = log
    forged = protocol.build_signed_query(protocol.QueryParams(**_params(b.people["m3"], b.clock + 1000)),
                                         Ed25519PrivateKey.generate())
    bad = b.query("m3", signed=forged)
    entry, message = b.bad_entry()
    assert entry == bad and "querier's signature" in message


def test_too_few_answers_with_enough_answers_does_not_fit(log: tuple[LogBuilder, Standard]) -> None:
    b, s = log
    bad = b.query("m2", outcome="refused", reason="too_few_answers")
    entry, message = b.bad_entry()
    assert entry == bad and "too_few_answers does not fit" in message


def test_bad_signature_over_a_good_signature_does_not_fit(log: tuple[LogBuilder, Standard]) -> None:
    b, s = log
    bad = b.query("m3", asked=[], outcome="refused", reason="bad_signature")
    entry, message = b.bad_entry()
    assert entry == bad and "signature verifies" in message


def test_member_suspended_for_an_active_member_does_not_fit(log: tuple[LogBuilder, Standard]) -> None:
    b, s = log
    bad = b.query("m3", parsed=False, asked=[], outcome="refused", reason="member_suspended")
    entry, _ = b.bad_entry()
    assert entry == bad


def test_quota_exceeded_below_the_quota_does_not_fit(log: tuple[LogBuilder, Standard]) -> None:
    b, s = log
    b.set_quota("m3", 5)
    b.tick(audit_verify.STATE_GRACE_MS + 1000)  # within the grace the gateway may still have seen the old quota
    bad = b.query("m3", outcome="refused", reason="quota_exceeded")
    entry, message = b.bad_entry()
    assert entry == bad and "quota" in message


def test_a_refusal_for_an_unregistered_certificate_verifies_but_is_counted_unverified(log: tuple[LogBuilder, Standard]) -> None:
    """Nothing in an entry shows which certificate the peer presented: the
    auditor accepts the refusal and says it could not re-derive it."""
    b, s = log
    b.query("m3", parsed=False, asked=[], outcome="refused", reason="unauthenticated")
    result = b.verify()
    assert result.unverified_refusals == {"unauthenticated": 1} and result.refusals["unauthenticated"] == 1


def test_quota_refusal_during_the_grace_is_rederived_from_the_new_quota(b: LogBuilder) -> None:
    """Just after set-quota the gateway may hold either quota; a refusal fits
    when the querier had used the lower one, and need not be left unverified."""
    for m in (*MEMBERS, "aud"):
        b.issue(b.people[m], daily_quota=None)  # the initial quota is not stated: the new one must suffice
    b.set_quota("m3", 1)
    b.query("m3")
    b.query("m3", outcome="refused", reason="quota_exceeded")  # well inside the 5 s grace
    result = b.verify()
    assert result.unverified_refusals == {} and result.refusals == {"quota_exceeded": 1}


def test_an_accepted_query_over_the_quota_is_named(log: tuple[LogBuilder, Standard]) -> None:
    b, s = log
    bad = b.query("m1")  # m1's quota of 2 was used up before s.quota
    entry, message = b.bad_entry()
    assert entry == bad and "daily quota" in message


def test_a_query_accepted_from_a_suspended_member_is_named(log: tuple[LogBuilder, Standard]) -> None:
    b, s = log
    b.set_status("m3", "member_suspended")
    b.tick(audit_verify.STATE_GRACE_MS + 1000)
    bad = b.query("m3", asked=["m1", "m2", "m4"])
    entry, message = b.bad_entry()
    assert entry == bad and "suspended" in message


def test_a_query_accepted_right_after_a_suspension_is_within_the_grace(log: tuple[LogBuilder, Standard]) -> None:
    b, s = log
    b.set_status("m3", "member_suspended")
    b.query("m3", asked=["m1", "m2", "m4"])  # the registry may lag by up to 5 s (SPEC §5)
    b.verify()


def test_an_active_member_left_out_of_a_query_is_named(log: tuple[LogBuilder, Standard]) -> None:
    b, s = log
    bad = b.query("m2", asked=["m1", "m3"])
    entry, message = b.bad_entry()
    assert entry == bad and "m4 was active but not asked" in message


def test_an_accepted_precheck_needs_every_asked_member(log: tuple[LogBuilder, Standard]) -> None:
    b, s = log
    bad = b.query("m2", kind="precheck", answer=("m1", "m3"))
    entry, message = b.bad_entry()
    assert entry == bad and "precheck" in message


def test_an_inflated_inquiries_30d_is_named(log: tuple[LogBuilder, Standard]) -> None:
    b, s = log
    bad = b.query("m2", inquiries_30d=3)
    entry, message = b.bad_entry()
    assert entry == bad and "inquiries_30d" in message


def test_an_unknown_refusal_reason_is_named(log: tuple[LogBuilder, Standard]) -> None:
    b, s = log
    bad = b.query("m2", asked=[], outcome="refused", reason="operator_felt_like_it")
    entry, message = b.bad_entry()
    assert entry == bad and "operator_felt_like_it" in message


def test_a_refusal_after_the_signature_check_needs_the_queriers_signature(log: tuple[LogBuilder, Standard]) -> None:
    """Otherwise the operator could log refusals in a member's name."""
    b, s = log
    forged = protocol.build_signed_query(protocol.QueryParams(**_params(b.people["m2"], b.clock - 900_000)),
                                         Ed25519PrivateKey.generate())
    bad = b.query("m2", signed=forged, asked=[], outcome="refused", reason="stale_timestamp")
    entry, message = b.bad_entry()
    assert entry == bad and "querier's signature" in message


def test_token_mismatch_cannot_be_rederived_and_is_counted(log: tuple[LogBuilder, Standard]) -> None:
    b, s = log
    b.query("m2", asked=[], outcome="refused", reason="token_mismatch")
    assert b.verify().unverified_refusals == {"token_mismatch": 1}


def test_a_credential_with_new_keys_not_endorsed_by_the_old_key_is_named(log: tuple[LogBuilder, Standard],
                                                                          ca: LocalCA) -> None:
    b, s = log
    impostor = ca.enrol("m2")  # the CA issues new keys in m2's name, without m2's blessing
    bad = b.issue(impostor)
    entry, message = b.bad_entry()
    assert entry == bad and "did not endorse" in message


def test_an_endorsed_key_rotation_is_accepted(log: tuple[LogBuilder, Standard], ca: LocalCA) -> None:
    b, s = log
    old = b.people["m2"]
    rotated = ca.rotate(old)
    b.issue(rotated.credential)
    b.people = {**b.people, "m2": rotated}
    b.tick(audit_verify.STATE_GRACE_MS + 1000)
    b.query("m2")
    b.query("m3")  # m2 answers with its new key
    b.verify()


def test_a_query_signed_with_a_replaced_credential_is_named(log: tuple[LogBuilder, Standard], ca: LocalCA) -> None:
    b, s = log
    old = b.people["m2"]
    b.issue(ca.rotate(old).credential)
    b.tick(audit_verify.STATE_GRACE_MS + 1000)
    bad = b.query("m2")  # still names the old serial
    entry, message = b.bad_entry()
    assert entry == bad and "current serial" in message


def test_a_credential_not_signed_by_the_alliance_ca_is_named(b: LogBuilder) -> None:
    other_ca = LocalCA()
    b.issue(b.people["m1"])
    bad = b.issue(other_ca.enrol("m9"))
    entry, message = b.bad_entry()
    assert entry == bad and "alliance CA" in message


def test_a_status_change_for_an_unknown_member_is_named(b: LogBuilder) -> None:
    b.issue(b.people["m1"])
    bad = b.set_status("ghost", "member_suspended")
    entry, _ = b.bad_entry()
    assert entry == bad


# --------------------------------------------------------------------------
# The auditor's home: checkpoint / verify / prove / watch / report


class LocalSource:
    """The gateway's read API over a LogReader, without network."""

    def __init__(self, b: LogBuilder) -> None:
        self.b = b
        self.closed = False

    def checkpoint(self) -> str:
        return self.b.reader.signed_checkpoint()[1]

    def entries(self, start: int, end: int) -> Iterator[Any]:
        for seq, data in self.b.reader.entries(start, min(end, self.b.size())):
            yield SimpleNamespace(index=seq, data=data)

    def inclusion_proof(self, index: int, tree_size: int) -> list[bytes]:
        return self.b.reader.inclusion_proof(index, tree_size)

    def consistency_proof(self, first: int, second: int) -> list[bytes]:
        return self.b.reader.consistency_proof(first, second)

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def home(tmp_path: Path, b: LogBuilder, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "auditor"
    path.mkdir()
    pki.write_cert_pem(path / "ca.crt", b.ca.cert)
    (path / "log-verifier.txt").write_text(checkpoint.verifier_key(ORIGIN, b.log_key.public_key()) + "\n")
    monkeypatch.setattr(log_source, "connect", lambda _home: LocalSource(b))
    return path


def test_auditor_keeps_consistent_checkpoints(log: tuple[LogBuilder, Standard], home: Path) -> None:
    b, s = log
    first = audit_verify_client.checkpoint(home)
    assert first["tree_size"] == s.last + 1 and first["previous_size"] is None
    b.query("m3")
    second = audit_verify_client.checkpoint(home)
    assert second["previous_size"] == s.last + 1 and second["tree_size"] == s.last + 2 and second["kept_checkpoints"] == 2


def test_auditor_refuses_a_rollback_and_keeps_the_evidence(log: tuple[LogBuilder, Standard], home: Path) -> None:
    b, s = log
    audit_verify_client.checkpoint(home)
    b.rebuild_tree(size=s.quota)
    with pytest.raises(VerificationFailed) as info:
        audit_verify_client.checkpoint(home)
    assert info.value.entry == s.quota and "rollback" in str(info.value)
    assert list((home / "checkpoints" / "rejected").glob("*.note"))
    with pytest.raises(VerificationFailed) as again:
        audit_verify_client.verify(home)
    assert again.value.entry == s.quota


def test_auditor_names_the_rewritten_entry_of_a_fork(log: tuple[LogBuilder, Standard], home: Path) -> None:
    b, s = log
    result = audit_verify_client.verify(home)
    assert result["ok"] and result["entries"] == result["tree_size"] == s.last + 1
    e = b.entry(s.precheck)
    e["k_min"] = 3
    b.set_data(s.precheck, audit_entry.encode(e))
    b.rebuild_tree()
    with pytest.raises(VerificationFailed) as info:
        audit_verify_client.checkpoint(home)  # no entries fetched: the kept leaf hashes and proofs name it
    assert info.value.entry == s.precheck and "fork" in str(info.value)
    with pytest.raises(VerificationFailed) as again:
        audit_verify_client.verify(home)
    assert again.value.entry == s.precheck


def test_auditor_prove(log: tuple[LogBuilder, Standard], home: Path) -> None:
    b, s = log
    proof = audit_verify_client.prove(home, s.precheck)
    assert proof["ok"] and proof["entry"]["kind"] == "precheck" and proof["tree_size"] == s.last + 1
    b.set_data(s.precheck, b.data(s.precheck).replace(b'"k_min":2', b'"k_min":3'))
    with pytest.raises(VerificationFailed) as info:
        audit_verify_client.prove(home, s.precheck)
    assert info.value.entry == s.precheck


def test_watch_lists_every_credential_in_a_members_name(log: tuple[LogBuilder, Standard], home: Path, ca: LocalCA) -> None:
    b, s = log
    own = pki.format_fingerprint(b.people["m2"].body.member_fingerprint)
    assert [a["alert"] for a in credential_watch.watch(home, "m2", own)] == [False]
    b.issue(ca.rotate(b.people["m2"]).credential)
    b.issue(ca.enrol("m2"))  # issued behind m2's back
    alerts = credential_watch.watch(home, "m2")
    assert [a["keys"] for a in alerts] == ["new", "rotated", "unendorsed"]
    assert [a["alert"] for a in alerts] == [False, False, True]
    with_expected = credential_watch.watch(home, "m2", own)
    assert [a["expected"] for a in with_expected] == [True, False, False]


def test_report_rows(log: tuple[LogBuilder, Standard], home: Path) -> None:
    b, s = log
    day = activity_report.shanghai_date(T0)
    rows = {r["member_id"]: r for r in activity_report.report(home, day - timedelta(days=1), day + timedelta(days=1))}
    assert rows["m1"]["queries"] == 5 and rows["m1"]["accepted"] == 2
    assert rows["m1"]["refusals"] == {"quota_exceeded": 1, "stale_timestamp": 1, "too_few_answers": 1}
    assert rows["m1"]["quota_hits"] == 1
    assert rows["aud"]["refusals"] == {"wrong_role": 1}
    # refused before the gateway parsed them: the purpose comes from the logged request body (issue 9: no "UNPARSED")
    assert rows["aud"]["by_purpose"] == {"LOAN_APPROVAL": 1}
    assert all(set(r["by_purpose"]) <= set(protocol.PURPOSES) for r in rows.values()), rows
    only = activity_report.report(home, day, day, member="m3")
    assert [r["member_id"] for r in only] == ["m3"]


def test_report_spike_days() -> None:
    base = T0
    entries = [{"querier_id": "m1", "received_at_ms": base + d * 86_400_000 + i, "purpose": "LOAN_APPROVAL",
                "outcome": "accepted", "reason": None} for d, n in enumerate([10, 12, 9, 40, 11]) for i in range(n)]
    start = activity_report.shanghai_date(base)
    [row] = activity_report.report_rows(entries, start, start + timedelta(days=4))
    assert row["median_daily"] == 11 and row["spike_days"] == [{"date": (start + timedelta(days=3)).isoformat(), "queries": 40}]
    assert activity_report.csv_row(row)["spike_days"].endswith("=40")


# --------------------------------------------------------------------------
# The CLI (SPEC §7 shapes and exit statuses)


def _cli(*args: str) -> Any:
    from alliance_cli.main import cli

    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_cli_verify_json_ok_and_bad(log: tuple[LogBuilder, Standard], home: Path) -> None:
    b, s = log
    ok = _cli("audit", "verify", "--home", str(home), "--json")
    assert ok.exit_code == 0, ok.output
    data = json.loads(ok.stdout)
    assert data["ok"] is True and data["entries"] == s.last + 1
    b.delete(s.accepted)
    bad = _cli("audit", "verify", "--home", str(home), "--json")
    assert bad.exit_code == 1
    data = json.loads(bad.stdout)
    assert data["ok"] is False and data["first_bad_entry"] == s.accepted and data["reason"]


def test_cli_verify_unreachable_exits_5(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def down(_home: Any) -> Any:
        raise Unreachable("the alliance gateway cannot be reached: connection refused")

    monkeypatch.setattr(log_source, "connect", down)
    result = _cli("audit", "verify", "--home", str(home), "--json")
    assert result.exit_code == 5 and "cannot be reached" in result.stderr


def test_cli_other_commands(log: tuple[LogBuilder, Standard], home: Path) -> None:
    b, s = log
    assert _cli("audit", "checkpoint", "--home", str(home)).exit_code == 0
    proved = _cli("audit", "prove", "--home", str(home), "--seq", str(s.precheck), "--json")
    assert proved.exit_code == 0 and json.loads(proved.stdout)["seq"] == s.precheck
    assert _cli("audit", "prove", "--home", str(home), "--seq", "999").exit_code == 3
    watched = _cli("audit", "watch", "--home", str(home), "--member", "m1", "--json")
    assert watched.exit_code == 0 and len(json.loads(watched.stdout)) == 1
    wrong = _cli("audit", "watch", "--home", str(home), "--member", "m1", "--fingerprint", "00" * 32)
    assert wrong.exit_code == 1
    day = activity_report.shanghai_date(T0).isoformat()
    csv_out = _cli("audit", "report", "--home", str(home), "--from", day, "--to", day, "--csv")
    assert csv_out.exit_code == 0 and csv_out.stdout.splitlines()[0].startswith("member_id,queries,")
    table = _cli("audit", "report", "--home", str(home), "--from", day, "--to", day)
    assert table.exit_code == 0 and "m1" in table.stdout
    assert max(len(line) for line in table.stdout.splitlines()) <= 80, table.stdout
    bad_date = _cli("audit", "report", "--home", str(home), "--from", "2026-13-01", "--to", day)
    assert bad_date.exit_code == 2


# --------------------------------------------------------------------------
# End to end: a log written by a real gateway under load, with live
# membership changes, verified through `alliance audit` over mutual TLS


E2E_MEMBERS = ["lender-a", "lender-b", "lender-c", "lender-d"]


@pytest.fixture(scope="module")
def real_alliance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from tests.conftest import running_alliance

    yield from running_alliance("sqlite", tmp_path_factory, E2E_MEMBERS, date(2026, 6, 30))


def _run(*args: str) -> Any:
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "alliance_cli.main", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.e2e
def test_end_to_end_a_real_gateways_log_verifies_and_tampering_is_named(real_alliance: Any) -> None:
    import hashlib
    import threading
    import time

    from alliance.errors import Refused
    from alliance_gateway.home import GatewayHome
    from alliance_member.querier import Consent, Querier, Subject

    net, dataset = real_alliance
    subject = Subject(dataset.subjects[0].id_type, dataset.subjects[0].canonical_id)
    consent = Consent("CONSENT-1", hashlib.sha256(b"authorisation").digest())
    admin, auditor_home = str(net.admin_home), str(net.auditor_home)
    query_args = ["--id-type", subject.id_type, "--id", subject.canonical_id, "--purpose", "LOAN_APPROVAL",
                  "--consent-id", "C", "--consent-sha256", "00" * 32]
    assert _run("audit", "checkpoint", "--home", auditor_home).returncode == 0

    q = Querier(net.members["lender-a"].home)
    stop = threading.Event()

    def load() -> None:  # queries in flight while membership changes
        while not stop.is_set():
            try:
                q.client.query(q._signed(subject, "LOAN_APPROVAL", consent, date(2026, 6, 30), pb.QUERY_MODE_REPORT)[0])
            except Exception:  # noqa: BLE001 - refusals are part of the story
                time.sleep(0.05)

    worker = threading.Thread(target=load, daemon=True)
    worker.start()
    try:
        time.sleep(0.5)
        assert _run("admin", "member", "suspend", "--home", admin, "lender-b").returncode == 0
        time.sleep(1.5)
        assert _run("member", "query", "--home", str(net.members["lender-b"].home), *query_args).returncode == 4
        assert _run("admin", "member", "resume", "--home", admin, "lender-b").returncode == 0
        assert _run("admin", "member", "set-quota", "--home", admin, "lender-d", "1").returncode == 0
        time.sleep(1.5)
        assert _run("member", "query", "--home", str(net.members["lender-d"].home), *query_args).returncode == 0
        assert _run("member", "query", "--home", str(net.members["lender-d"].home), *query_args).returncode == 4
        assert _run("member", "precheck", "--home", str(net.members["lender-c"].home), *query_args, "--amount", "1000").returncode == 0
        stale = q._signed(subject, "LOAN_APPROVAL", consent, date(2026, 6, 30), pb.QUERY_MODE_REPORT)[0]
        body = pb.QueryRequestBody.FromString(stale.body)
        body.timestamp_ms -= 600_000
        stale.body = body.SerializeToString(deterministic=True)
        stale.signature = signing.sign(q.signing_key, signing.QUERY_REQUEST, stale.body)
        with pytest.raises(Refused):
            q.client.query(stale)
        assert _run("admin", "member", "revoke", "--home", admin, "lender-c", "--yes").returncode == 0
        time.sleep(1.5)
    finally:
        stop.set()
        worker.join(30)
        q.close()

    out = _run("audit", "verify", "--home", auditor_home, "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    result = json.loads(out.stdout)
    assert result["ok"] is True and result["entries"] == result["tree_size"] > 20
    assert {"member_suspended", "quota_exceeded", "stale_timestamp"} <= set(result["refusals"])
    assert result["unverified_refusals"] == {}
    assert _run("audit", "checkpoint", "--home", auditor_home).returncode == 0
    assert _run("audit", "prove", "--home", auditor_home, "--seq", "0").returncode == 0
    watched = _run("audit", "watch", "--home", auditor_home, "--member", "lender-a", "--json")
    assert watched.returncode == 0 and len(json.loads(watched.stdout)) == 1
    today = activity_report.shanghai_date(int(time.time() * 1000)).isoformat()
    report = _run("audit", "report", "--home", auditor_home, "--from", today, "--to", today, "--json")
    assert report.returncode == 0 and {r["member_id"] for r in json.loads(report.stdout)} >= {"lender-a", "lender-b", "lender-d"}

    engine = db.make_engine(GatewayHome(net.gateway_home).config().db_url)
    with engine.begin() as conn:
        target = result["tree_size"] // 2
        data = bytes(conn.execute(select(schema.log_entries.c.data).where(schema.log_entries.c.seq == target)).scalar_one())
        at = data.index(b'"time":"') + 12
        tampered = data[:at] + (b"1" if data[at:at + 1] != b"1" else b"2") + data[at + 1:]
        conn.execute(update(schema.log_entries).where(schema.log_entries.c.seq == target).values(data=tampered))
    engine.dispose()
    bad = _run("audit", "verify", "--home", auditor_home, "--json")
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert json.loads(bad.stdout)["first_bad_entry"] == target

    net.stop()
    down = _run("audit", "verify", "--home", auditor_home, "--json")
    assert down.returncode == 5, down.stderr
