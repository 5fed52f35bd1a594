"""Witnesses (SPEC §6.1): the gateway cuts checkpoints and collects members'
cosignatures; a member never cosigns a checkpoint inconsistent with one it
cosigned or used (fork at the same size, rollback, bad proof), keeps the
evidence and alerts; a split view (two gateways on two databases sharing
the log key, each shown to one witness) is caught by the auditor and by a
witness that later sees the other view, and a view only a minority
cosigned is not accepted."""
from __future__ import annotations

import json
import multiprocessing
import subprocess
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import insert

from alliance import checkpoint as tlog
from alliance import cosignature, db, paillier
from alliance.errors import VerificationFailed
from alliance.v1 import alliance_pb2 as pb
from alliance_auditor import witness_audit
from alliance_gateway import audit_log, schema
from alliance_gateway.home import GatewayConfig
from alliance_gateway.registry import Registry
from alliance_gateway.service import GatewayService
from alliance_member import receipts
from alliance_member import witness
from alliance_member.home import MemberHome
from tests.alliance_fixtures import LocalCA

ORIGIN = "test/log"
IDS = ("ma", "mb", "mc")


class Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code


class Ctx:
    def __init__(self, peer: str) -> None:
        self.peer = peer

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise Aborted(code, details)


@pytest.fixture(scope="module")
def ca() -> LocalCA:
    return LocalCA()


@pytest.fixture(scope="module")
def members(ca):  # type: ignore[no-untyped-def]
    return {mid: ca.enrol(mid) for mid in IDS}


@pytest.fixture(scope="module")
def log_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def make_gateway(path: Path, members: dict, log_key: Ed25519PrivateKey) -> GatewayService:
    url = db.sqlite_url(path)
    engine = db.make_engine(url)
    schema.create_schema(engine)
    with engine.begin() as conn:
        audit_log.start_v2(conn, deadline_ms=800)
        for m in members.values():
            conn.execute(insert(schema.members).values(
                member_id=m.member_id, name=m.member_id, role="member", status="active", endpoint=m.member_id,
                credential=m.credential.SerializeToString(), credential_serial=m.body.serial,
                fingerprint=m.body.member_fingerprint, ed25519_public_key=m.body.ed25519_public_key,
                paillier_n=m.body.paillier_n, tls_cert_sha256=m.body.tls_cert_sha256, daily_quota=3, updated_at_ms=0))
    cfg = GatewayConfig(listen="", db_url=url, log_origin=ORIGIN, log_key_name=ORIGIN, registry_refresh_ms=0)
    svc = GatewayService(engine=engine, registry=Registry(engine, 0), config=cfg, member_stub=lambda ep: None,
                         log_reader=audit_log.LogReader(engine, origin=ORIGIN, key_name=ORIGIN, signing_key=log_key),
                         mask_pools=paillier.MaskPools(target=1))

    def require_active(context: Ctx, roles: tuple[str, ...], what: str) -> Any:
        record = svc.registry.get(context.peer)
        if record is None or record.status != "active":
            context.abort(grpc.StatusCode.PERMISSION_DENIED, f"{context.peer} may not {what}")
        return record

    svc._require_active = require_active  # type: ignore[method-assign]  # the TLS identity, without TLS
    return svc


def grow(svc: GatewayService, label: str, n: int = 1) -> int:
    """Append ``n`` entries (their content is the view's own) and cut."""
    for i in range(n):
        with svc.engine.begin() as conn:
            audit_log.append(conn, lambda seq, when, i=i: {"v": 2, "kind": "refusals_suppressed", "seq": seq, "time": when,
                                                            "peer_id": f"{label}-{i}", "role": "member", "count": 1,
                                                            "first_ms": 0, "last_ms": 0})
    return svc.cut_witness_checkpoint()


class Source:
    """A member's view of one gateway, in process (what GatewayClient does over TLS)."""

    def __init__(self, svc: GatewayService, member_id: str) -> None:
        self.svc, self.ctx, self.posts = svc, Ctx(member_id), 0

    def witness_checkpoint(self, old_size: int) -> tuple[str, list[bytes]]:
        r = self.svc.GetWitnessCheckpoint(pb.GetWitnessCheckpointRequest(old_size=old_size), self.ctx)
        return r.checkpoint, list(r.consistency_proof)

    def post_cosignature(self, note: str, line: str) -> None:
        self.posts += 1
        self.svc.PostCosignature(pb.PostCosignatureRequest(checkpoint=note, cosignature_line=line), self.ctx)

    def consistency_proof(self, first: int, second: int) -> list[bytes]:
        return self.svc.log.consistency_proof(first, second)

    def witnessed_checkpoints(self) -> tuple[str, list[str]]:
        r = self.svc.witnessed_checkpoints()
        return r.checkpoint, list(r.newest_per_witness)


def make_witness(tmp_path: Path, members: dict, log_key: Ed25519PrivateKey, mid: str, source: Any) -> tuple[witness.Witness, list]:
    alerts: list = []
    w = witness.Witness(MemberHome(tmp_path / mid), mid, members[mid].signing_key,
                        tlog.parse_verifier_key(tlog.verifier_key(ORIGIN, log_key.public_key())), source,
                        alert=lambda kind, message, details: alerts.append((kind, message, details)))
    return w, alerts


def keys(members: dict) -> dict[str, list[bytes]]:
    return {mid: [m.body.ed25519_public_key] for mid, m in members.items()}


@pytest.fixture
def g1(tmp_path, members, log_key):  # type: ignore[no-untyped-def]
    svc = make_gateway(tmp_path / "g1.db", members, log_key)
    grow(svc, "common", 3)
    return svc


def fork_of(tmp_path: Path, members: dict, log_key: Ed25519PrivateKey, name: str = "g2") -> GatewayService:
    svc = make_gateway(tmp_path / f"{name}.db", members, log_key)
    grow(svc, "common", 3)
    return svc


# --------------------------------------------------------------------------
# The gateway


def test_members_cosign_and_the_gateway_serves_the_lines(g1, members, log_key, tmp_path) -> None:
    for mid in ("ma", "mb"):
        w, alerts = make_witness(tmp_path, members, log_key, mid, Source(g1, mid))
        assert w.round() == "cosigned" and not alerts
        assert w.round() == "unchanged"  # the same checkpoint is not cosigned again at once
    newest, per_witness = Source(g1, "mc").witnessed_checkpoints()
    cp = tlog.open_checkpoint(newest, tlog.parse_verifier_key(tlog.verifier_key(ORIGIN, log_key.public_key())))
    assert cp.size == g1.log.size() and cp.extensions[0].startswith("membership ")
    signers = witness_audit.cosigners(newest, cp, keys(members), int(time.time()))
    assert set(signers) == {"ma", "mb"} and cosignature.has_quorum(signers, set(IDS))
    assert per_witness == [newest]
    # The log grew: a witness proves the new checkpoint from the size it cosigned.
    grow(g1, "more", 2)
    w, _ = make_witness(tmp_path, members, log_key, "ma", Source(g1, "ma"))
    assert w.round() == "cosigned"
    newest, per_witness = Source(g1, "mc").witnessed_checkpoints()
    assert len(per_witness) == 2  # ma's newest, mb's newest (older)


def test_gateway_refuses_foreign_lines_and_uncut_checkpoints(g1, members, log_key) -> None:
    size, note = g1.log.signed_checkpoint()
    cp = tlog.Checkpoint.parse(note[:note.rfind("\n\n") + 1])
    src = Source(g1, "ma")
    now = int(time.time())
    src.post_cosignature(note, cosignature.cosign(cp, "ma", members["ma"].signing_key, now))
    with pytest.raises(Aborted) as other_name:
        src.post_cosignature(note, cosignature.cosign(cp, "mb", members["mb"].signing_key, now))
    assert other_name.value.code == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(Aborted) as wrong_key:
        src.post_cosignature(note, cosignature.cosign(cp, "ma", Ed25519PrivateKey.generate(), now))
    assert wrong_key.value.code == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(Aborted) as bad_sig:
        line = cosignature.cosign(cp, "ma", members["ma"].signing_key, now)
        src.post_cosignature(note, cosignature.cosign(cp, "ma", members["ma"].signing_key, now + 1)[:-8] + line[-8:])
    assert bad_sig.value.code == grpc.StatusCode.INVALID_ARGUMENT
    with g1.engine.begin() as conn:
        audit_log.append(conn, lambda seq, when: {"v": 2, "kind": "refusals_suppressed", "seq": seq, "time": when,
                                                  "peer_id": "x", "role": "member", "count": 1, "first_ms": 0, "last_ms": 0})
    _, uncut = g1.log.signed_checkpoint()  # a valid log signature, but never cut for witnessing
    ucp = tlog.Checkpoint.parse(uncut[:uncut.rfind("\n\n") + 1])
    with pytest.raises(Aborted) as not_cut:
        src.post_cosignature(uncut, cosignature.cosign(ucp, "ma", members["ma"].signing_key, now))
    assert not_cut.value.code == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(Aborted) as ahead:
        src.witness_checkpoint(10_000)
    assert ahead.value.code == grpc.StatusCode.FAILED_PRECONDITION


# --------------------------------------------------------------------------
# A member never cosigns an inconsistent checkpoint


def _stopped(w: witness.Witness, alerts: list, source: Any) -> None:
    posts = source.posts
    assert w.round() == "stopped"
    assert source.posts == posts, "cosigned an inconsistent checkpoint"
    assert [a[0] for a in alerts] == ["inconsistent_checkpoint"]
    folder = w.home.path / "witness" / "evidence"
    assert len(list(folder.glob("*-held.note"))) == 1 and len(list(folder.glob("*-seen.note"))) == 1
    assert witness.stopped(w.home) is not None
    assert w.round() == "stopped" and source.posts == posts  # stays stopped


def test_fork_at_the_same_size_is_refused_and_alerted(g1, members, log_key, tmp_path) -> None:
    g2 = fork_of(tmp_path, members, log_key)
    grow(g1, "view-1", 2)
    grow(g2, "view-2", 2)
    assert g1.log.size() == g2.log.size()
    w, alerts = make_witness(tmp_path, members, log_key, "ma", Source(g1, "ma"))
    assert w.round() == "cosigned"
    w.source = Source(g2, "ma")
    w.check_others = False  # the witness's own check, not the cross-view one
    _stopped(w, alerts, w.source)


def test_rollback_to_another_prefix_is_refused_and_alerted(g1, members, log_key, tmp_path) -> None:
    g2 = fork_of(tmp_path, members, log_key)
    grow(g1, "view-1", 4)
    grow(g2, "view-2", 1)
    assert g2.log.size() < g1.log.size()
    w, alerts = make_witness(tmp_path, members, log_key, "ma", Source(g1, "ma"))
    assert w.round() == "cosigned"
    w.source, w.check_others = Source(g2, "ma"), False

    def from_zero(old_size: int, svc: GatewayService = g2) -> tuple[str, list[bytes]]:
        return Source(svc, "ma").witness_checkpoint(0)  # g2 cannot prove from g1's size; it serves its own smaller tree

    w.source.witness_checkpoint = from_zero  # type: ignore[method-assign]
    # A gateway that cannot prove the smaller tree a prefix: nothing cosigned, retried later.
    with pytest.raises(Exception):
        w.round()
    assert w.source.posts == 0 and not alerts
    # One that answers with a proof (here the other view's real one): the proof fails, the alarm is raised.
    w.source.consistency_proof = g1.log.consistency_proof  # type: ignore[method-assign]
    _stopped(w, alerts, w.source)


class Stale(Source):
    """An honest but lagging replica: an older checkpoint of the same log."""

    def __init__(self, svc: GatewayService, member_id: str, size: int) -> None:
        super().__init__(svc, member_id)
        self.size = size

    def witness_checkpoint(self, old_size: int) -> tuple[str, list[bytes]]:
        return self.svc.log.signed_checkpoint(self.size)[1], []


def test_an_old_prefix_is_refused_without_an_alarm(g1, members, log_key, tmp_path) -> None:
    old = g1.log.size()
    grow(g1, "more", 2)
    w, alerts = make_witness(tmp_path, members, log_key, "ma", Source(g1, "ma"))
    assert w.round() == "cosigned"
    stale = Stale(g1, "ma", old)
    w.source = stale
    assert w.round().startswith("refused") and stale.posts == 0 and not alerts and witness.stopped(w.home) is None


class BadProof(Source):
    def witness_checkpoint(self, old_size: int) -> tuple[str, list[bytes]]:
        note, proof = super().witness_checkpoint(old_size)
        return note, [bytes(32)] + proof[1:] if proof else [bytes(32)]


def test_a_bad_proof_is_refused_and_alerted(g1, members, log_key, tmp_path) -> None:
    w, alerts = make_witness(tmp_path, members, log_key, "ma", Source(g1, "ma"))
    assert w.round() == "cosigned"
    grow(g1, "more", 3)
    w.source, w.check_others = BadProof(g1, "ma"), False
    _stopped(w, alerts, w.source)


def test_never_cosigns_against_a_used_checkpoint(g1, members, log_key, tmp_path) -> None:
    g2 = fork_of(tmp_path, members, log_key)
    grow(g2, "view-2", 1)
    witness.register_used(MemberHome(tmp_path / "ma"), g2.log.signed_checkpoint()[1], "querier")  # a receipt from the other view
    grow(g1, "view-1", 3)
    w, alerts = make_witness(tmp_path, members, log_key, "ma", Source(g1, "ma"))
    w.check_others = False
    _stopped(w, alerts, w.source)


# --------------------------------------------------------------------------
# Split view: two gateways (two databases, one log key), one view per witness


def _judge(view: GatewayService, notes: list[str], members: dict, log_key: Ed25519PrivateKey,
           kept_size: int | None = None) -> witness_audit.Judgement:
    verifier = tlog.parse_verifier_key(tlog.verifier_key(ORIGIN, log_key.public_key()))
    size = view.log.size()
    return witness_audit.judge(
        notes, verifier, tree_root=lambda n: tlog.open_checkpoint(view.log.signed_checkpoint(n)[1], verifier).root_hash,
        tree_size=size, consistency_proof=view.log.consistency_proof,
        membership=lambda n: (set(IDS), keys(members)), kept_size=kept_size, now_s=int(time.time()))


def test_split_view_is_caught(g1, members, log_key, tmp_path) -> None:
    g2 = fork_of(tmp_path, members, log_key)
    grow(g1, "view-1", 3)
    grow(g2, "view-2", 3)
    wa, alerts_a = make_witness(tmp_path, members, log_key, "ma", Source(g1, "ma"))
    wb, _ = make_witness(tmp_path, members, log_key, "mb", Source(g2, "mb"))
    wa.check_others = wb.check_others = False
    assert wa.round() == "cosigned" and wb.round() == "cosigned"
    view1, view2 = g1.witnessed_checkpoints(), g2.witnessed_checkpoints()
    # An auditor shown one view, cosigned by one witness of three: no quorum, not accepted.
    only_b = _judge(g2, [view2.checkpoint, *view2.newest_per_witness], members, log_key)
    assert only_b.witnessed is None and only_b.quorum == 2
    # An auditor that sees both cosigned checkpoints: they cannot both be the log.
    with pytest.raises(witness_audit.SplitView):
        _judge(g2, [view2.checkpoint, view1.checkpoint], members, log_key)
    # A witness that later sees the other view's cosigned checkpoint raises the alarm.
    wa.source, wa.check_others = Source(g1, "ma"), True
    wa.source.witnessed_checkpoints = lambda: (view2.checkpoint, list(view2.newest_per_witness))  # type: ignore[method-assign]
    _stopped(wa, alerts_a, wa.source)


def test_quorum_is_over_the_kept_view_not_the_verified_one(g1, members, log_key, tmp_path) -> None:
    """A quorum of two (of ma, mb, mc) is met; the same cosigners are a
    minority when the verifier's kept view says five are active."""
    for mid in ("ma", "mb"):
        w, _ = make_witness(tmp_path, members, log_key, mid, Source(g1, mid))
        assert w.round() == "cosigned"
    view = g1.witnessed_checkpoints()
    assert _judge(g1, [view.checkpoint], members, log_key).witnessed is not None
    verifier = tlog.parse_verifier_key(tlog.verifier_key(ORIGIN, log_key.public_key()))
    five = set(IDS) | {"md", "me"}
    judged = witness_audit.judge(
        [view.checkpoint], verifier, tree_root=lambda n: tlog.open_checkpoint(g1.log.signed_checkpoint(n)[1], verifier).root_hash,
        tree_size=g1.log.size(), consistency_proof=g1.log.consistency_proof,
        membership=lambda n: (five if n == 1 else set(IDS), keys(members)), kept_size=1, now_s=int(time.time()))
    assert judged.witnessed is None and judged.quorum == 3


def test_sponsored_active_replays_membership(members) -> None:
    def issued(mid: str) -> dict[str, Any]:
        m = members[mid]
        return {"kind": "credential_issued", "member_id": mid, "role": "member", "credential": m.credential.SerializeToString().hex()}

    fp = {mid: members[mid].body.member_fingerprint.hex() for mid in IDS}
    entries = list(enumerate([issued("ma"), issued("mb"), issued("mc"), {"kind": "member_suspended", "member_id": "mc"}]))
    eligible, ks = witness_audit.sponsored_active(entries, 10)
    assert eligible == {"ma", "mb"} and set(ks) == set(IDS)
    assert witness_audit.sponsored_active(entries, 3)[0] == set(IDS)
    rooted = entries + [(4, {"kind": "matching_key_created", "member_id": "ma", "fingerprint": fp["ma"]}),
                        (5, {"kind": "member_sponsored", "member_id": "mb", "sponsor_id": "mc", "fingerprint": fp["mb"]})]
    assert witness_audit.sponsored_active(rooted, 10)[0] == {"ma"}  # mb's sponsor was not trusted
    rooted.append((6, {"kind": "member_sponsored", "member_id": "mb", "sponsor_id": "ma", "fingerprint": fp["mb"]}))
    assert witness_audit.sponsored_active(rooted, 10)[0] == {"ma", "mb"}


# --------------------------------------------------------------------------
# The querier's receipt checkpoints


def test_uncovered_receipt_checkpoints(g1, members, log_key, tmp_path) -> None:
    home = MemberHome(tmp_path / "mq")
    home.path.mkdir()
    home.log_verifier.write_text(tlog.verifier_key(ORIGIN, log_key.public_key()) + "\n")
    (home.path / "member.json").write_text(json.dumps({"member_id": "ma", "name": "a", "role": "member", "endpoint": "",
                                                        "listen": "", "gateway": ""}))
    verifier = tlog.parse_verifier_key(home.log_verifier.read_text())
    now = time.time()
    _, note = g1.log.signed_checkpoint()
    receipts.keep_receipt_checkpoint(home, tlog.open_checkpoint(note, verifier), note, now_ms=int((now - 400) * 1000))
    grow(g1, "later", 2)
    _, newer = g1.log.signed_checkpoint()
    receipts.keep_receipt_checkpoint(home, tlog.open_checkpoint(newer, verifier), newer, now_ms=int((now - 10) * 1000))
    proof = g1.log.consistency_proof
    # Nothing witnessed: the old receipt is uncovered, the recent one is still within its 5 minutes.
    assert [r["size"] for r in receipts.uncovered_receipt_checkpoints(home, None, now)] == [3 + 1]
    for mid in ("ma", "mb", "mc"):
        w, _ = make_witness(tmp_path, members, log_key, mid, Source(g1, mid))
        assert w.round() == "cosigned"
    witnessed = g1.witnessed_checkpoints().checkpoint
    assert receipts.uncovered_receipt_checkpoints(home, witnessed, now, consistency_proof=proof, witnesses=keys(members)) == []
    assert receipts.uncovered_receipt_checkpoints(home, witnessed, now + 400, consistency_proof=proof) == []
    # Without a quorum (only the member itself is not enough), or from another view: uncovered.
    only_self = {"ma": keys(members)["ma"], "md": [bytes(32)], "me": [bytes(32)]}
    assert receipts.uncovered_receipt_checkpoints(home, witnessed, now, consistency_proof=proof, witnesses=only_self)
    g2 = fork_of(tmp_path, members, log_key)
    grow(g2, "other", 5)
    g2.cut_witness_checkpoint()
    other = g2.witnessed_checkpoints().checkpoint
    bad = receipts.uncovered_receipt_checkpoints(home, other, now, consistency_proof=g2.log.consistency_proof)
    assert bad and "not consistent" in bad[0]["why"]
    g3 = fork_of(tmp_path, members, log_key, "g3")
    grow(g3, "same-size", 2)  # as large as the newest receipt's checkpoint, another root
    same_size = g3.witnessed_checkpoints().checkpoint
    assert tlog.open_checkpoint(same_size, verifier).size == tlog.open_checkpoint(newer, verifier).size
    bad = receipts.uncovered_receipt_checkpoints(home, same_size, now + 400, consistency_proof=g3.log.consistency_proof)
    assert bad and "not consistent" in bad[0]["why"]


def _receipt_home(tmp_path, log_key) -> MemberHome:  # type: ignore[no-untyped-def]
    home = MemberHome(tmp_path / "mq")
    home.path.mkdir()
    home.log_verifier.write_text(tlog.verifier_key(ORIGIN, log_key.public_key()) + "\n")
    (home.path / "member.json").write_text(json.dumps({"member_id": "ma", "name": "a", "role": "member", "endpoint": "",
                                                        "listen": "", "gateway": ""}))
    return home


def _witnessed_by_all(g, members, log_key, tmp_path) -> str:  # type: ignore[no-untyped-def]
    for mid in ("ma", "mb", "mc"):
        w, _ = make_witness(tmp_path, members, log_key, mid, Source(g, mid))
        assert w.round() == "cosigned"
    return g.witnessed_checkpoints().checkpoint


def test_receipt_checkpoints_a_witnessed_checkpoint_covers_are_forgotten(g1, members, log_key, tmp_path) -> None:
    """The file grew by a line per report for ever: once a quorum-witnessed
    checkpoint is proven to extend a run's receipts, they are dropped, with
    ONE proof per run (a run's receipts are prefixes of each other); later
    receipts and a line cut short by a crash stay."""
    home = _receipt_home(tmp_path, log_key)
    verifier = tlog.parse_verifier_key(home.log_verifier.read_text())
    old = int((time.time() - 400) * 1000)
    sizes = []
    for i in range(3):
        _, note = g1.log.signed_checkpoint()
        cp = tlog.open_checkpoint(note, verifier)
        receipts.keep_receipt_checkpoint(home, cp, note, run="run-1", now_ms=old)
        sizes.append(cp.size)
        grow(g1, f"batch{i}", 1)
    witnessed = _witnessed_by_all(g1, members, log_key, tmp_path)
    grow(g1, "after the witness", 2)
    _, later = g1.log.signed_checkpoint()  # beyond what is witnessed: must stay
    later_size = tlog.open_checkpoint(later, verifier).size
    receipts.keep_receipt_checkpoint(home, tlog.open_checkpoint(later, verifier), later, run="run-1", now_ms=old)
    with (home.path / receipts.RECEIPT_CHECKPOINTS).open("a") as fh:
        fh.write('{"size": 1, "ro')  # a line cut short by a crash
    proofs = []

    def proof(m: int, n: int) -> list[bytes]:
        proofs.append((m, n))
        return g1.log.consistency_proof(m, n)

    coverage = receipts.receipt_coverage(home, witnessed, time.time(), consistency_proof=proof, witnesses=keys(members))
    assert coverage.covered == {"run:run-1": max(sizes)} and len(proofs) == 1
    assert [r["size"] for r in coverage.uncovered] == [later_size]
    assert receipts.prune_receipt_checkpoints(home, coverage.covered) == len(sizes)
    assert [r["size"] for r in receipts.receipt_checkpoints(home)] == [later_size]
    assert '{"size": 1, "ro' in (home.path / receipts.RECEIPT_CHECKPOINTS).read_text()  # not ours to judge: kept
    assert receipts.prune_receipt_checkpoints(home, coverage.covered) == 0  # nothing more to drop


def test_a_fork_shown_to_another_run_is_reported_and_never_forgotten(g1, members, log_key, tmp_path) -> None:
    """The red team's case: run 1 proved a receipt on fork A and crashed
    before persisting it; run 2 was shown the witnessed view B. Proving only
    the largest receipt (run 2's) would call run 1's covered and delete the
    evidence. Each run is proven on its own: run 1's stays and is reported."""
    home = _receipt_home(tmp_path, log_key)
    verifier = tlog.parse_verifier_key(home.log_verifier.read_text())
    old = int((time.time() - 400) * 1000)
    g2 = fork_of(tmp_path, members, log_key)
    grow(g2, "fork A", 1)
    _, forked = g2.log.signed_checkpoint()
    receipts.keep_receipt_checkpoint(home, tlog.open_checkpoint(forked, verifier), forked, run="run-1", now_ms=old)
    grow(g1, "view B", 3)
    _, main = g1.log.signed_checkpoint()
    assert tlog.open_checkpoint(main, verifier).size > tlog.open_checkpoint(forked, verifier).size
    receipts.keep_receipt_checkpoint(home, tlog.open_checkpoint(main, verifier), main, run="run-2", now_ms=old)
    witnessed = _witnessed_by_all(g1, members, log_key, tmp_path)
    coverage = receipts.receipt_coverage(home, witnessed, time.time(), consistency_proof=g1.log.consistency_proof)
    assert list(coverage.covered) == ["run:run-2"]
    [bad] = coverage.uncovered
    assert bad["size"] == tlog.open_checkpoint(forked, verifier).size and "not consistent" in bad["why"]
    assert receipts.prune_receipt_checkpoints(home, coverage.covered) == 1
    assert [r.get("run") for r in receipts.receipt_checkpoints(home)] == ["run-1"]  # the fork's evidence stays


def _two_runs(g1, members, log_key, tmp_path):  # type: ignore[no-untyped-def]
    """A home with two runs' receipts (both prefixes of the witnessed checkpoint)."""
    home = _receipt_home(tmp_path, log_key)
    verifier = tlog.parse_verifier_key(home.log_verifier.read_text())
    old = int((time.time() - 400) * 1000)
    for run in ("run-1", "run-2"):
        grow(g1, run, 1)
        _, note = g1.log.signed_checkpoint()
        receipts.keep_receipt_checkpoint(home, tlog.open_checkpoint(note, verifier), note, run=run, now_ms=old)
    return home, _witnessed_by_all(g1, members, log_key, tmp_path)


def test_a_proof_the_gateway_refuses_fails_that_run_not_the_check(g1, members, log_key, tmp_path) -> None:
    """A gateway that answers GetConsistencyProof with an error for the forked
    run's size only must not turn the whole reconcile into "unreachable"."""
    from alliance.errors import Unreachable

    home, witnessed = _two_runs(g1, members, log_key, tmp_path)
    first = receipts.receipt_checkpoints(home)[0]["size"]

    def proof(m: int, n: int) -> list[bytes]:
        if m == first:
            raise Unreachable("the gateway did not answer")
        return g1.log.consistency_proof(m, n)

    coverage = receipts.receipt_coverage(home, witnessed, time.time(), consistency_proof=proof)
    assert list(coverage.covered) == ["run:run-2"]
    [bad] = coverage.uncovered
    assert bad["size"] == first and bad["verdict"] == "unproven" and "did not answer" in bad["why"]


def test_runs_beyond_one_checks_proofs_are_reported_not_checked_yet(g1, members, log_key, tmp_path) -> None:
    """More runs than one check proves: the rest are due and uncovered, so
    they are reported (reconcile exits 1), never silently passed over."""
    home, witnessed = _two_runs(g1, members, log_key, tmp_path)
    coverage = receipts.receipt_coverage(home, witnessed, time.time(), consistency_proof=g1.log.consistency_proof,
                                         max_proofs=1)
    assert list(coverage.covered) == ["run:run-1"]  # the oldest first
    assert [r["verdict"] for r in coverage.uncovered] == ["unchecked"]


def test_a_kept_checkpoint_that_cannot_be_read_is_never_replaced_by_trust_on_first_use(g1, log_key, tmp_path) -> None:
    from alliance_member.receipts import KeptCheckpoint

    home = _receipt_home(tmp_path, log_key)
    verifier = tlog.parse_verifier_key(home.log_verifier.read_text())
    home.checkpoint.write_text("not a checkpoint\n")
    kept = KeptCheckpoint(home, verifier)
    _, note = g1.log.signed_checkpoint()
    cp = tlog.open_checkpoint(note, verifier)
    for _ in range(2):  # the second try must fail as the first did, not trust what the gateway sends
        with pytest.raises(Exception):
            kept.prove_consistent(cp, note, g1.log.consistency_proof)
    assert home.checkpoint.read_text() == "not a checkpoint\n"


def test_a_line_cut_short_by_a_crash_does_not_swallow_the_next(tmp_path) -> None:
    home = MemberHome(tmp_path / "mq")
    home.path.mkdir()
    (home.path / receipts.RECEIPT_CHECKPOINTS).write_text('{"size": 3, "ro')
    receipts.keep_receipt_checkpoint(home, tlog.Checkpoint("test", 7, bytes(32), ()), "note", run="r")
    assert [r["size"] for r in receipts.receipt_checkpoints(home)] == [7]


def _append_receipts(home_dir: str, count: int, start_size: int) -> None:
    home = MemberHome(Path(home_dir))
    for i in range(count):
        cp = tlog.Checkpoint("test", start_size + i, bytes(32), ())
        receipts.keep_receipt_checkpoint(home, cp, f"note {start_size + i}")


def test_pruning_never_loses_a_receipt_another_process_appends_meanwhile(tmp_path) -> None:
    """`member serve`, CLI queries and `member reconcile` share the file: a
    line appended while it is being rewritten must land in the new file."""
    home = MemberHome(tmp_path / "mq")
    home.path.mkdir()
    ctx = multiprocessing.get_context("spawn")  # never fork a process that may hold locks in other threads
    writers = [ctx.Process(target=_append_receipts, args=(str(home.path), 300, 1000 * (k + 1))) for k in range(3)]
    for w in writers:
        w.start()
    rewrites = 0
    while any(w.is_alive() for w in writers):
        receipts.keep_receipt_checkpoint(home, tlog.Checkpoint("test", 1, bytes(32), ()), "covered", run="pruned")
        rewrites += receipts.prune_receipt_checkpoints(home, {"run:pruned": 1}) > 0  # the file is rewritten each time
    for w in writers:
        w.join()
        assert w.exitcode == 0
    assert rewrites > 10
    kept = sorted(r["size"] for r in receipts.receipt_checkpoints(home) if r.get("run") != "pruned")
    assert kept == sorted(s for k in range(3) for s in range(1000 * (k + 1), 1000 * (k + 1) + 300))


# --------------------------------------------------------------------------
# End to end with real processes


@pytest.mark.e2e
def test_end_to_end_cosignatures_appear_and_audit_requires_a_quorum(tmp_path_factory) -> None:
    from tests.conftest import running_alliance

    gen = running_alliance("sqlite", tmp_path_factory, ["lender-a", "lender-b", "lender-c", "lender-d"], date(2026, 6, 30))
    net, dataset = next(gen)
    try:
        def cli(*args: str) -> subprocess.CompletedProcess:
            return subprocess.run([sys.executable, "-m", "alliance_cli.main", *args], capture_output=True, text=True, timeout=120)

        from alliance_member.gateway_client import GatewayClient

        client = GatewayClient(MemberHome(net.auditor_home))
        deadline = time.monotonic() + 15
        signers: set[str] = set()
        verifier = tlog.parse_verifier_key((net.auditor_home / "log-verifier.txt").read_text())
        while time.monotonic() < deadline and len(signers) < 4:
            note, _ = client.witnessed_checkpoints()
            if note:
                cp = tlog.open_checkpoint(note, verifier)
                signers = {line.split(" ")[1] for line in cosignature.signature_lines(note)} - {cp.origin}
            time.sleep(0.5)
        client.close()
        assert signers == {"lender-a", "lender-b", "lender-c", "lender-d"}, "cosignatures did not appear within 15 s"
        out = cli("audit", "verify", "--home", str(net.auditor_home), "--json")
        assert out.returncode == 0, out.stdout + out.stderr
        doc = json.loads(out.stdout)
        assert doc["witnessed_size"] == doc["tree_size"] and doc["witness_quorum"] == 3
        assert set(doc["witnesses"]) == set(signers)
        assert all(w["newest_cosigned_size"] == doc["tree_size"] for w in doc["witnesses"].values())
        # Two of four witnesses gone: new entries can no longer gather a quorum of three.
        net.stop_member("lender-c")
        net.stop_member("lender-d")
        q = cli("member", "query", "--home", str(net.members["lender-a"].home), "--id-type", dataset.subjects[0].id_type,
                "--id", dataset.subjects[0].canonical_id, "--purpose", "LOAN_APPROVAL", "--consent-id", "C", "--consent-sha256", "00" * 32)
        assert q.returncode != 0  # too few answers: refused, and logged
        bad = cli("audit", "verify", "--home", str(net.auditor_home), "--json", "--witness-wait", "4")
        assert bad.returncode == 1, bad.stdout + bad.stderr
        result = json.loads(bad.stdout)
        assert result["ok"] is False and result["reason"] == "insufficient_witnesses" and result["first_bad_entry"] is None
    finally:
        gen.close()
