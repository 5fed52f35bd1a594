"""A member follows the membership feed and answers only queriers trusted in
its own proven view of the log (SPEC §5.1, §1 property 8), with real keys and
the real gateway service in process: a querier whose credential is not in the
log, has no sponsorship chain to a root, or is suspended or revoked gets no
answer; a feed that withholds an entry (a gap, a short count, an older
checkpoint) never becomes the view, and a view older than 60 s answers nobody;
a credential issued in the member's own name that it did not request raises
an alert."""
from __future__ import annotations

import time
from typing import Any

import pytest

from alliance import checkpoint, cosignature, db, paillier, signing, trust
from alliance.errors import Refused
from alliance.v1 import alliance_pb2 as pb
from alliance_gateway import audit_log
from alliance_member import alerts, feed as feed_mod, store
from alliance_member.service import MemberService, PeerTrust
from tests.alliance_fixtures import MK, signed_query
from tests.test_gateway_service import ca, gateway, members  # noqa: F401
from tests.test_membership_rpcs import FakeContext, ctx, sponsorship


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


class Source:
    """The gateway as the member's client sees it, with hooks to misbehave.
    ``cosigners``: the members whose cosignatures (C2SP cosignature/v1, by
    their real keys) the witness checkpoint carries (SPEC §6.1)."""

    def __init__(self, service, members, reader: str) -> None:  # type: ignore[no-untyped-def]
        self.service, self.members, self.reader = service, members, reader
        self.tamper: Any = None
        self.cosigners: tuple[str, ...] = ("mb", "mq")

    def witnessed_checkpoints(self) -> tuple[str, list[str]]:
        self.service.cut_witness_checkpoint()
        note = self.service.witnessed_checkpoints().checkpoint
        cp = checkpoint.Checkpoint.parse(note[:note.rfind("\n\n") + 1])
        now = int(time.time())
        lines = [cosignature.cosign(cp, mid, self.members[mid].signing_key, now) for mid in self.cosigners]
        return cosignature.add_cosignatures(note, lines), []

    def membership(self, from_membership_seq: int, max_entries: int = 0) -> pb.ProvenEntries:
        page = self.service.GetMembership(pb.GetMembershipRequest(from_membership_seq=from_membership_seq, max_entries=max_entries),
                                          ctx(self.members, self.reader))
        return self.tamper(page) if self.tamper else page

    def consistency_proof(self, first: int, second: int) -> list[bytes]:
        return list(self.service.GetConsistencyProof(pb.GetConsistencyProofRequest(first=first, second=second),
                                                     ctx(self.members, self.reader)).hashes)


def issue(service, m) -> None:  # type: ignore[no-untyped-def]
    """What `admin member add` logs (the fixture registered members without entries)."""
    with service.engine.begin() as conn:
        audit_log.append(conn, lambda seq, when: {
            "v": 2, "kind": "credential_issued", "seq": seq, "time": when, "member_id": m.member_id, "name": m.member_id,
            "role": "member", "serial": m.body.serial, "endpoint": m.member_id, "fingerprint": m.body.member_fingerprint.hex(),
            "credential": m.credential.SerializeToString().hex(), "daily_quota": 3})


def status(service, mid: str, kind: str) -> None:  # type: ignore[no-untyped-def]
    with service.engine.begin() as conn:
        audit_log.append(conn, lambda seq, when: {"v": 2, "kind": kind, "seq": seq, "time": when, "member_id": mid})


_CA: dict[str, Any] = {}


@pytest.fixture
def alliance(gateway, tmp_path, _ca_cert):  # type: ignore[no-untyped-def]
    """mq, ma, mb, mc in the log; ma is the answering member, its root is mb
    (it installed the key from mb); mb sponsored mq. mc is admitted by the
    operator alone."""
    service, _, members = gateway
    service._peer = lambda context: context.peer
    for mid in ("ma", "mb", "mc", "mq"):
        issue(service, members[mid])
    service.PostSponsorship(sponsorship(members["mb"], members["mq"]), ctx(members, "mb"))
    engine = db.make_engine(db.sqlite_url(tmp_path / "ma.db"))
    store.create_schema(engine)
    feed_mod.add_root(engine, "mb", trust.fingerprint_of(members["mb"].body), "install")
    clock = Clock()
    source = Source(service, members, "ma")
    verifier = checkpoint.parse_verifier_key(checkpoint.verifier_key("test/log", service.log.signing_key.public_key()))
    feed = feed_mod.MembershipFeed(engine, lambda: source, feed_mod.pinned_log_key(verifier), member_id="ma",
                                   own_fingerprints=lambda: {trust.fingerprint_of(members["ma"].body)}, clock=clock)
    member = MemberService(member_id="ma", engine=engine, trust=PeerTrust(engine, _CA["cert"], feed),
                           signing_key=members["ma"].signing_key, matching_key=lambda: MK, mask_pools=paillier.MaskPools(target=2))
    feed.refresh()
    yield service, members, feed, member, source, clock
    engine.dispose()


@pytest.fixture(autouse=True)
def _ca_cert(ca):  # type: ignore[no-untyped-def]
    _CA["cert"] = ca.cert


def ask(member: MemberService, querier) -> pb.MemberQueryResponse:  # type: ignore[no-untyped-def]
    """As the gateway (or an operator holding its certificate) would ask."""
    return member.answer(pb.MemberQueryRequest(query=signed_query(querier), querier_credential=querier.credential.SerializeToString()))


def refused(member: MemberService, querier) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(Refused) as exc:
        ask(member, querier)
    return exc.value.reason


def test_a_sponsored_querier_is_answered(alliance) -> None:  # type: ignore[no-untyped-def]
    _, members, _, member, _, _ = alliance
    assert ask(member, members["mq"]).member_id == "ma"
    assert ask(member, members["mb"]).member_id == "ma"  # the root itself


def test_a_credential_minted_outside_the_log_gets_no_answer(alliance, ca) -> None:  # type: ignore[no-untyped-def]
    _, _, _, member, _, _ = alliance
    assert refused(member, ca.enrol("ghost")) == "not_in_log"


def test_a_querier_admitted_by_the_operator_alone_gets_no_answer(alliance) -> None:  # type: ignore[no-untyped-def]
    _, members, _, member, _, _ = alliance
    assert refused(member, members["mc"]) == "not_sponsored"


def test_mutual_sponsorship_without_a_chain_to_a_root_gets_no_answer(alliance, ca) -> None:  # type: ignore[no-untyped-def]
    service, members, feed, member, _, _ = alliance
    x, y = ca.enrol("mx"), ca.enrol("my")
    from sqlalchemy import insert

    from alliance_gateway import schema
    with service.engine.begin() as conn:
        for m in (x, y):
            conn.execute(insert(schema.members).values(
                member_id=m.member_id, name=m.member_id, role="member", status="active", endpoint=m.member_id,
                credential=m.credential.SerializeToString(), credential_serial=m.body.serial,
                fingerprint=m.body.member_fingerprint, ed25519_public_key=m.body.ed25519_public_key,
                paillier_n=m.body.paillier_n, tls_cert_sha256=m.body.tls_cert_sha256, daily_quota=3, updated_at_ms=0))
    issue(service, x)
    issue(service, y)
    service.PostSponsorship(sponsorship(x, y), FakeContext(("mx", "member", x.body.tls_cert_sha256)))
    service.PostSponsorship(sponsorship(y, x), FakeContext(("my", "member", y.body.tls_cert_sha256)))
    feed.refresh()
    assert refused(member, x) == refused(member, y) == "not_sponsored"


@pytest.mark.parametrize("kind", ["member_suspended", "member_revoked"])
def test_a_querier_suspended_or_revoked_in_the_log_gets_no_answer(alliance, kind) -> None:  # type: ignore[no-untyped-def]
    service, members, feed, member, _, _ = alliance
    assert ask(member, members["mq"])  # cached as trusted...
    status(service, "mq", kind)
    feed.refresh()                     # ...until the feed moves
    assert refused(member, members["mq"]) == "member_inactive"


def test_a_second_credential_without_endorsement_is_refused_by_a_member_that_never_pinned_the_first(alliance, ca) -> None:  # type: ignore[no-untyped-def]
    service, members, feed, member, _, _ = alliance
    forged = ca.enrol("mq")  # the operator's keys in mq's name, never seen by ma before
    issue(service, forged)
    feed.refresh()
    assert refused(member, forged) == "not_sponsored"
    rotated = ca.rotate(members["mq"])  # a genuine rotation, endorsed by mq's key
    issue(service, rotated)
    feed.refresh()
    assert ask(member, rotated).member_id == "ma"


def _drop_kind(kind: str):  # type: ignore[no-untyped-def]
    def tamper(page: pb.ProvenEntries) -> pb.ProvenEntries:
        kept = [e for e in page.entries if f'"kind":"{kind}"' not in e.data.decode()]
        return pb.ProvenEntries(checkpoint=page.checkpoint, entries=kept)
    return tamper


def test_a_feed_that_omits_a_revocation_is_never_accepted_and_goes_stale(alliance) -> None:  # type: ignore[no-untyped-def]
    service, members, feed, member, source, clock = alliance
    status(service, "mq", "member_revoked")
    source.tamper = _drop_kind("member_revoked")
    with pytest.raises(feed_mod.FeedError, match="incomplete"):
        feed.refresh()  # the checkpoint's membership count gives it away
    status(service, "mc", "member_suspended")  # a later entry: now a gap in membership_seq
    with pytest.raises(feed_mod.FeedError, match="gap"):
        feed.refresh()
    clock.now += 61
    assert refused(member, members["mq"]) == "feed_stale"
    assert refused(member, members["mb"]) == "feed_stale"  # nobody is answered on a stale view
    source.tamper = None
    feed.refresh()
    assert refused(member, members["mq"]) == "member_inactive"


def test_an_entry_with_a_forged_membership_seq_fails_its_proof(alliance) -> None:  # type: ignore[no-untyped-def]
    service, members, feed, _, source, _ = alliance
    status(service, "mq", "member_revoked")
    status(service, "mc", "member_suspended")

    def renumber(page: pb.ProvenEntries) -> pb.ProvenEntries:
        entries = [e for e in page.entries if b"member_revoked" not in e.data]
        for e in entries:
            if b"member_suspended" in e.data:
                e.data = e.data.replace(b'"membership_seq":%d' % e.membership_seq, b'"membership_seq":%d' % (e.membership_seq - 1))
                e.membership_seq -= 1
        return pb.ProvenEntries(checkpoint=page.checkpoint, entries=entries)

    source.tamper = renumber
    with pytest.raises(feed_mod.FeedError):
        feed.refresh()


def test_an_older_or_forked_checkpoint_is_refused(alliance) -> None:  # type: ignore[no-untyped-def]
    service, members, feed, _, source, _ = alliance
    old_note = service.log.signed_checkpoint()[1]
    status(service, "mq", "member_revoked")
    feed.refresh()
    source.tamper = lambda page: pb.ProvenEntries(checkpoint=old_note, entries=[])
    with pytest.raises(feed_mod.FeedError, match="older"):
        feed.refresh()


def test_a_view_whose_checkpoint_was_witnessed_over_60_s_ago_is_stale(alliance) -> None:  # type: ignore[no-untyped-def]
    """The pluggable policy may say when a checkpoint was witnessed (§6.1);
    a checkpoint replayed from long ago then makes the view stale."""
    _, members, feed, member, _, clock = alliance
    inner = feed.log_policy
    feed.log_policy = lambda note: feed_mod.AcceptedCheckpoint(inner(note).checkpoint, note, witnessed_at_s=clock.now - 120)
    feed.refresh()
    assert refused(member, members["mq"]) == "feed_stale"


def test_a_view_older_than_60_s_answers_nobody(alliance) -> None:  # type: ignore[no-untyped-def]
    _, members, _, member, _, clock = alliance
    clock.now += 59
    assert ask(member, members["mq"])
    clock.now += 2
    assert refused(member, members["mq"]) == "feed_stale"


def test_a_credential_in_my_name_that_i_did_not_request_raises_an_alert(alliance, ca) -> None:  # type: ignore[no-untyped-def]
    service, members, feed, _, _, _ = alliance
    assert not alerts.list_alerts(feed.engine, kinds=("credential_in_my_name",))
    issue(service, ca.enrol("ma"))
    feed.refresh()
    raised = alerts.list_alerts(feed.engine, kinds=("credential_in_my_name",))
    assert len(raised) == 1 and "ma" in raised[0].message


def test_an_altered_entry_fails_its_inclusion_proof(alliance) -> None:  # type: ignore[no-untyped-def]
    """The gateway turns a revocation into a resumption on the way: same
    place, same count, only the proof gives it away."""
    service, members, feed, member, source, _ = alliance
    status(service, "mq", "member_revoked")

    def alter(page: pb.ProvenEntries) -> pb.ProvenEntries:
        for e in page.entries:
            e.data = e.data.replace(b'"kind":"member_revoked"', b'"kind":"member_resumed"')
        return page

    source.tamper = alter
    with pytest.raises(feed_mod.FeedError, match="inclusion|root|proof"):
        feed.refresh()
    assert feed.view().members["mq"].status == "active"  # the altered entry never became the view


def _assert_holds_the_whole_feed(feed: feed_mod.MembershipFeed, service: Any) -> None:
    """Gap-free rows and a state that counts them at the log's current size."""
    with feed.engine.connect() as conn:
        rows = conn.execute(feed_mod.select(feed_mod.membership_feed).order_by(feed_mod.membership_feed.c.membership_seq)).all()
        state = conn.execute(feed_mod.select(feed_mod.feed_state)).one()
    assert [r.membership_seq for r in rows] == list(range(len(rows)))
    assert state.membership_count == len(rows) and state.size == service.log.signed_checkpoint()[0]


def _second_follower(feed: feed_mod.MembershipFeed) -> feed_mod.MembershipFeed:
    """Another process on the same member database (`member serve` beside a
    CLI command): its own engine, its own in-process lock."""
    return feed_mod.MembershipFeed(db.make_engine(str(feed.engine.url)), feed.source, feed.log_policy, member_id=feed.member_id,
                                   own_fingerprints=feed.own_fingerprints, clock=feed.clock)


def test_two_processes_refreshing_one_database_both_succeed_and_agree(alliance) -> None:  # type: ignore[no-untyped-def]
    """Both proved the same new entries before either wrote (the race CI hit:
    UNIQUE constraint failed: membership_feed.seq); the second writer must
    keep the first one's rows, not crash, and not roll the state back."""
    service, members, feed, member, _, _ = alliance
    other = _second_follower(feed)
    status(service, "mq", "member_revoked")
    status(service, "mc", "member_suspended")
    real_store = feed._store
    feed._store = lambda new, values: (other.refresh(), real_store(new, values))[1]  # the other writes first
    feed.refresh()
    _assert_holds_the_whole_feed(feed, service)
    assert refused(member, members["mq"]) == "member_inactive"
    other.engine.dispose()


def test_another_process_storing_entries_between_our_reads_of_the_state_is_no_fork(alliance) -> None:  # type: ignore[no-untyped-def]
    """The race CI hit ("membership entry 15 at leaf 28 is out of order"):
    this follower read its state, another process then stored the next
    entries, and this one judged the order against the other's newest row
    instead of the entry its own state ends at. It must refresh cleanly."""
    service, members, feed, member, _, _ = alliance
    other = _second_follower(feed)
    status(service, "mq", "member_revoked")
    real_state = feed._state

    def state_then_the_other_process_stores() -> Any:
        state = real_state()
        feed._state = real_state
        other.refresh()
        return state

    feed._state = state_then_the_other_process_stores
    feed.refresh()
    _assert_holds_the_whole_feed(feed, service)
    assert refused(member, members["mq"]) == "member_inactive"
    other.engine.dispose()


def test_a_row_stored_differently_by_another_process_is_a_fork_and_nothing_is_written(alliance) -> None:  # type: ignore[no-untyped-def]
    service, _, feed, _, _, _ = alliance
    status(service, "mq", "member_revoked")
    with feed.engine.connect() as conn:
        before = conn.execute(feed_mod.select(feed_mod.feed_state)).one()
        held = before.membership_count
    real_store = feed._store

    def other_process_wrote_something_else(new, values):  # type: ignore[no-untyped-def]
        with feed.engine.begin() as conn:
            conn.execute(feed_mod.insert(feed_mod.membership_feed).values(membership_seq=held, seq=new[0][1], data=b"{}"))
        return real_store(new, values)

    feed._store = other_process_wrote_something_else
    with pytest.raises(feed_mod.FeedError, match="stored differently"):
        feed.refresh()
    with feed.engine.connect() as conn:
        assert conn.execute(feed_mod.select(feed_mod.feed_state)).one() == before
