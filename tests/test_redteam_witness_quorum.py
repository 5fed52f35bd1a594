"""Red team, SPEC §1 properties 8 and 10 for members (§5.1, §6.1): attacks
on a member's witness quorum by a malicious operator (CA key, log key,
gateway database), alone or with one colluding member.

Fixture (tests/test_membership_feed.py): ma decides; its root is mb (ma
installed the matching key from mb); mb sponsored mq; mc was admitted by the
operator alone. ma's witnesses are {ma, mb, mq}: both mb and mq must cosign.

A fork is a second log signed with the same (operator-held) log key: the
real log's leaves up to a point, then entries only the victim is shown."""
from __future__ import annotations

import time
from typing import Any

import pytest
from sqlalchemy import insert, select

from alliance import checkpoint, cosignature, db, signing, trust, witness_quorum
from alliance.v1 import alliance_pb2 as pb
from alliance_gateway import audit_log, schema
from alliance_member import feed as feed_mod, store
from alliance_member.service import MemberService, PeerTrust
from alliance import paillier
from tests.alliance_fixtures import MK
from tests.test_gateway_service import ca, gateway, members  # noqa: F401
from tests.test_membership_feed import _CA, _ca_cert, alliance, ask, issue, refused, status  # noqa: F401
from tests.test_membership_rpcs import sponsorship


# -- an operator's fork ------------------------------------------------------

def fork_of(service, tmp_path, name: str = "fork"):  # type: ignore[no-untyped-def]
    """A copy of the real log (same leaves, same log key) the operator can
    extend with entries nobody but its victim sees."""
    engine = db.make_engine(db.sqlite_url(tmp_path / f"{name}.db"))
    schema.create_schema(engine)
    tables = (schema.log_entries, schema.log_nodes, schema.membership_index, schema.log_meta)
    with service.engine.connect() as src, engine.begin() as dst:
        for table in tables:
            rows = [dict(r._mapping) for r in src.execute(select(table))]
            if rows:
                dst.execute(insert(table), rows)
        size = src.execute(select(schema.log_head.c.size)).scalar_one()
        dst.execute(schema.log_head.update().values(size=size))
    reader = audit_log.LogReader(engine, origin=service.log.origin, key_name=service.log.key_name,
                                 signing_key=service.log.signing_key)
    return engine, reader


def fork_status(engine, mid: str, kind: str) -> None:  # type: ignore[no-untyped-def]
    with engine.begin() as conn:
        audit_log.append(conn, lambda seq, when: {"v": 2, "kind": kind, "seq": seq, "time": when, "member_id": mid})


class ForkSource:
    """What the operator serves its victim: GetMembership, consistency
    proofs and witnessed checkpoints of the fork, cosigned by ``cosigners``
    ((member id, Ed25519 private key): real members' keys for colluders,
    the operator's own keys otherwise)."""

    def __init__(self, engine, reader) -> None:  # type: ignore[no-untyped-def]
        self.engine, self.reader = engine, reader
        self.cosigners: list[tuple[str, Any]] = []

    def membership(self, from_membership_seq: int, max_entries: int = 0) -> pb.ProvenEntries:
        size, note = self.reader.signed_checkpoint()
        mi, le = schema.membership_index.c, schema.log_entries.c
        with self.engine.connect() as conn:
            rows = conn.execute(select(mi.membership_seq, mi.seq, le.data).join(schema.log_entries, le.seq == mi.seq)
                                .where(mi.membership_seq >= from_membership_seq, mi.seq < size).order_by(mi.membership_seq)).all()
        return pb.ProvenEntries(checkpoint=note, entries=[
            pb.ProvenEntry(index=r.seq, data=bytes(r.data), inclusion_proof=self.reader.inclusion_proof(r.seq, size),
                           membership_seq=r.membership_seq) for r in rows])

    def consistency_proof(self, first: int, second: int) -> list[bytes]:
        return self.reader.consistency_proof(first, second)

    def witnessed_checkpoints(self) -> tuple[str, list[str]]:
        _, note = self.reader.signed_checkpoint()
        cp = checkpoint.Checkpoint.parse(note[:note.rfind("\n\n") + 1])
        now = int(time.time())
        lines = [cosignature.cosign(cp, mid, key, now) for mid, key in self.cosigners]
        return cosignature.add_cosignatures(note, lines), []


def victim_feed(service, members, tmp_path, source, name: str = "victim"):  # type: ignore[no-untyped-def]
    """A freshly installed node of ma (root mb), that has kept nothing yet."""
    engine = db.make_engine(db.sqlite_url(tmp_path / f"{name}.db"))
    store.create_schema(engine)
    feed_mod.add_root(engine, "mb", trust.fingerprint_of(members["mb"].body), "install")
    verifier = checkpoint.parse_verifier_key(checkpoint.verifier_key("test/log", service.log.signing_key.public_key()))
    feed = feed_mod.MembershipFeed(engine, lambda: source, feed_mod.pinned_log_key(verifier), member_id="ma",
                                   own_fingerprints=lambda: {trust.fingerprint_of(members["ma"].body)})
    member = MemberService(member_id="ma", engine=engine, trust=PeerTrust(engine, _CA["cert"], feed),
                           signing_key=members["ma"].signing_key, matching_key=lambda: MK, mask_pools=paillier.MaskPools(target=2))
    return feed, member


# -- attack 1: the bootstrap quorum is taken from a view the operator controls --

def test_a_fresh_member_does_not_keep_a_fork_that_nobody_cosigned(alliance, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Operator alone. mq is revoked in the real log (say, for abuse) and
    the operator, colluding with mq, wants a newly installed member ma to
    keep answering it. ma has kept no witnessed checkpoint yet, so its quorum
    is counted over its *latest* view -- which the operator signs alone.
    The operator shows ma a fork in which ma's witnesses mb (its root) and mq
    are suspended: m = 1, so a checkpoint with no cosignature at all is
    "witnessed"; ma keeps it, and from then on counts its quorum over that
    kept view (still m = 1). The fork then resumes mb and mq -- and never
    revokes mq: ma answers a member revoked in the real log, although no
    witness ever cosigned anything of the fork.

    Refusing needs ma's own roots (confirmed out of band) to be witnesses at
    bootstrap, whatever the operator's latest view says about them."""
    service, members, _, _, _, _ = alliance
    engine, reader = fork_of(service, tmp_path)
    status(service, "mq", "member_revoked")           # the real, public log
    fork_status(engine, "mb", "member_suspended")      # only the victim sees these
    fork_status(engine, "mq", "member_suspended")
    source = ForkSource(engine, reader)                # no cosignature at all
    feed, member = victim_feed(service, members, tmp_path, source)
    feed.refresh()
    fork_status(engine, "mb", "member_resumed")
    fork_status(engine, "mq", "member_resumed")
    feed.refresh()
    assert feed.witnessed_checkpoint() is None, "a fork that no witness cosigned was kept as witnessed"
    assert refused(member, members["mq"]) == "not_witnessed"


def test_a_fresh_member_still_bootstraps_when_its_root_cosigns(alliance, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The honest path the fix must keep: a fresh member whose witnesses
    (its root mb, and mq) cosign keeps the real log as witnessed."""
    service, members, _, _, source, _ = alliance
    feed, member = victim_feed(service, members, tmp_path, source, "honest")
    feed.refresh()
    assert feed.witnessed_checkpoint() is not None
    assert ask(member, members["mq"]).member_id == "ma"


# -- attack 2: a colluding member's sponsorship re-keys another member ----------

def _impersonate(service, members, ca, victim_id: str, colluder_id: str):  # type: ignore[no-untyped-def]
    """The CA mints a credential in ``victim_id``'s name with the operator's
    keys, logs it, and the colluding member sponsors its fingerprint."""
    forged = ca.enrol(victim_id)
    issue(service, forged)
    body = sponsorship(members[colluder_id], forged)
    with service.engine.begin() as conn:
        audit_log.append(conn, lambda seq, when: {
            "v": 2, "kind": "member_sponsored", "seq": seq, "time": when, "sponsor_id": colluder_id,
            "member_id": victim_id, "fingerprint": forged.body.member_fingerprint.hex(),
            "sponsorship": body.body.hex(), "signature": body.signature.hex()})
    return forged


def test_a_sponsorship_does_not_re_key_a_member_that_already_has_a_trusted_credential(alliance, ca) -> None:  # type: ignore[no-untyped-def]
    """Operator + one colluding member (mq). SPEC §5.1(b): "a later
    credential for the same id is trusted only through an unbroken chain of
    logged key rotations, each endorsed by the previous key". The trust rule
    instead trusts *any* credential whose (id, fingerprint) a trusted member
    sponsored: the CA mints a credential in mb's name with the operator's
    keys, mq sponsors it, and every member's view makes it mb's current,
    trusted credential (mb's real one is `superseded`). The operator then
    queries as mb, and its key counts as mb's witness key (attack 3)."""
    service, members, feed, member, _, _ = alliance
    forged = _impersonate(service, members, ca, "mb", "mq")
    feed.refresh()
    assert feed.view().decide(forged.credential.SerializeToString()) != trust.TRUSTED
    assert refused(member, forged) in ("not_sponsored", "not_witnessed", "unpinned_credential")


def test_the_operator_cannot_cosign_a_fork_as_a_member_it_re_keyed(alliance, ca, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Operator + one colluding member (mq), split view. In a fork shown
    only to ma, the operator logs a credential in mb's name with its own
    keys and has mq sponsor it. ma counts its quorum over its kept witnessed
    view ({mb, mq} needed) but takes the witnesses' *keys* from its latest
    view -- the fork -- where mb now has the operator's key. mq's real
    cosignature plus the operator's cosignature "as mb" make a quorum: ma
    keeps the fork as witnessed although the real mb never saw it (and never
    got its credential_in_my_name alert)."""
    service, members, feed, _, _, _ = alliance
    assert feed.witnessed_checkpoint() is not None        # ma kept the real log, cosigned by mb and mq
    engine, reader = fork_of(service, tmp_path)
    forged = ca.enrol("mb")
    body = sponsorship(members["mq"], forged)
    with engine.begin() as conn:
        audit_log.append(conn, lambda seq, when: {
            "v": 2, "kind": "credential_issued", "seq": seq, "time": when, "member_id": "mb", "name": "mb",
            "role": "member", "serial": forged.body.serial, "endpoint": "mb", "fingerprint": forged.body.member_fingerprint.hex(),
            "credential": forged.credential.SerializeToString().hex(), "daily_quota": 3})
        audit_log.append(conn, lambda seq, when: {
            "v": 2, "kind": "member_sponsored", "seq": seq, "time": when, "sponsor_id": "mq", "member_id": "mb",
            "fingerprint": forged.body.member_fingerprint.hex(), "sponsorship": body.body.hex(), "signature": body.signature.hex()})
    fork = ForkSource(engine, reader)
    fork.cosigners = [("mq", members["mq"].signing_key), ("mb", forged.signing_key)]
    feed.source = lambda: fork
    before = feed.witnessed_checkpoint()
    try:
        feed.refresh()
    except feed_mod.FeedError:
        pass
    assert feed.witnessed_checkpoint() == before, "a fork cosigned by the operator as mb was kept as witnessed"
    note, _ = fork.witnessed_checkpoints()
    with pytest.raises(witness_quorum.NotWitnessed):
        feed.policy(note)
