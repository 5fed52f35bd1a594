"""SPEC §1 property 10 for members (§5.1, §6.1): a member's trust decisions
rest only on checkpoints signed by the pinned log key AND cosigned by
⌊m/2⌋+1 of the m sponsored active members of its last kept witnessed view,
its own cosignature not counting. Real keys, the real gateway service in
process, real C2SP cosignature/v1 lines.

In the fixture (tests/test_membership_feed.py) ma decides; its root is mb;
mq is sponsored by mb; mc was admitted by the operator alone. ma's witnesses
are therefore {ma, mb, mq}: m = 3, a quorum is 2, and both mb and mq must
cosign (ma's own cosignature never counts for ma)."""
from __future__ import annotations

import uuid

import pytest
from sqlalchemy import insert

from alliance import checkpoint, cosignature, witness_quorum
from alliance_gateway import schema
from alliance_member import feed as feed_mod
from alliance_member.feed_memo import FeedMemo
from tests.test_gateway_service import ca, gateway, members  # noqa: F401
from tests.test_membership_feed import _ca_cert, alliance, ask, issue, refused, status  # noqa: F401
from tests.test_membership_rpcs import ctx, sponsorship


def admit(service, members, newcomer, sponsor: str | None = "mb") -> None:  # type: ignore[no-untyped-def]
    """What `admin member add` does (registry row + credential_issued), and a
    logged sponsorship by ``sponsor``."""
    m = newcomer
    with service.engine.begin() as conn:
        conn.execute(insert(schema.members).values(
            member_id=m.member_id, name=m.member_id, role="member", status="active", endpoint=m.member_id,
            credential=m.credential.SerializeToString(), credential_serial=m.body.serial,
            fingerprint=m.body.member_fingerprint, ed25519_public_key=m.body.ed25519_public_key,
            paillier_n=m.body.paillier_n, tls_cert_sha256=m.body.tls_cert_sha256, daily_quota=3, updated_at_ms=0))
    issue(service, m)
    members[m.member_id] = m
    if sponsor is not None:
        service.PostSponsorship(sponsorship(members[sponsor], m), ctx(members, sponsor))


def fresh(ca, prefix: str):  # type: ignore[no-untyped-def]
    """A newly enrolled member with an id unused in this (possibly shared) database."""
    return ca.enrol(f"{prefix}{uuid.uuid4().hex[:8]}")


def plain_note(service) -> str:  # type: ignore[no-untyped-def]
    """What an operator holding the log key alone can show: a checkpoint of
    the current log, signed by the log key, without any cosignature."""
    return service.log.signed_checkpoint()[1]


def test_a_checkpoint_signed_by_the_log_key_alone_is_refused(alliance) -> None:  # type: ignore[no-untyped-def]
    service, _, feed, _, _, _ = alliance
    with pytest.raises(witness_quorum.NotWitnessed, match="cosigned by 0 of the 2"):
        feed.policy(plain_note(service))


def test_a_newly_sponsored_querier_waits_for_a_witness_quorum(alliance, ca) -> None:  # type: ignore[no-untyped-def]
    """mx is admitted and sponsored in the log; until a checkpoint covering
    that is cosigned by a quorum, ma refuses it `not_witnessed` (not
    `trusted`), while queriers already witnessed are answered meanwhile."""
    service, members, feed, member, source, _ = alliance
    mx = fresh(ca, "mx")
    admit(service, members, mx)
    source.cosigners = ()
    feed.refresh()
    assert feed.view().decide(mx.credential.SerializeToString()) == "trusted"  # the log-signed view says so...
    assert refused(member, mx) == "not_witnessed"                              # ...but no quorum vouched for it
    assert FeedMemo(feed).decide(mx.credential.SerializeToString()) == "not_witnessed"  # the querier's memoised feed too
    assert ask(member, members["mq"]).member_id == "ma"                        # ordinary queries do not wait
    source.cosigners = ("mb", "mq")
    feed.refresh()
    assert ask(member, mx).member_id == "ma"


def test_the_deciding_members_own_cosignature_does_not_count(alliance, ca) -> None:  # type: ignore[no-untyped-def]
    service, members, feed, member, source, _ = alliance
    mx = fresh(ca, "mx")
    admit(service, members, mx)
    source.cosigners = ("ma", "mb")  # two cosignatures, a quorum of 3 — if ma counted itself
    feed.refresh()
    assert refused(member, mx) == "not_witnessed"
    note, _ = source.witnessed_checkpoints()
    with pytest.raises(witness_quorum.NotWitnessed, match="cosigned by 1 of the 2"):
        feed.policy(note)


def test_cosignatures_of_unsponsored_or_inactive_members_do_not_count(alliance, ca) -> None:  # type: ignore[no-untyped-def]
    """md is sponsored but suspended, mc was admitted by the operator alone:
    neither is a witness of ma's kept view, so mb + mc + md (3 lines, a
    quorum of 5 if they were counted) are still only 1 of the 2 needed."""
    service, members, feed, member, source, _ = alliance
    md = fresh(ca, "md")
    admit(service, members, md)
    status(service, md.member_id, "member_suspended")
    feed.refresh()  # kept witnessed view (cosigned by mb and mq): ma, mb, mq eligible; mc unsponsored, md suspended
    kept = feed.witnessed_view()
    assert kept is not None and witness_quorum.eligible_witnesses(kept) == {"ma", "mb", "mq"}
    assert md.member_id in kept.members and "mc" in kept.members
    mx = fresh(ca, "mx")
    admit(service, members, mx)
    source.cosigners = ("mb", "mc", md.member_id)
    feed.refresh()
    assert refused(member, mx) == "not_witnessed"
    note, _ = source.witnessed_checkpoints()
    with pytest.raises(witness_quorum.NotWitnessed, match="cosigned by 1 of the 2"):
        feed.policy(note)


def test_the_quorum_is_counted_over_the_kept_witnessed_view_not_the_one_offered(alliance, ca) -> None:  # type: ignore[no-untyped-def]
    """In the part of the log it wants witnessed, the operator admits mx
    (sponsored by mb) and suspends mq, so that view's witnesses would be
    {ma, mb, mx} and mb + mx a quorum; ma still counts over its kept view
    {ma, mb, mq}, where mx is nobody and mq is needed."""
    service, members, feed, member, source, _ = alliance
    mx = fresh(ca, "mx")
    admit(service, members, mx)
    status(service, "mq", "member_suspended")
    source.cosigners = ("mb", mx.member_id)
    feed.refresh()
    assert refused(member, mx) == "not_witnessed"
    witnessed = feed.witnessed_checkpoint()
    assert witnessed is not None and witnessed[0].size < service.log.size()


def test_a_kept_witnessed_checkpoint_never_goes_back_and_is_a_prefix_of_the_latest(alliance) -> None:  # type: ignore[no-untyped-def]
    service, members, feed, _, source, _ = alliance
    first = feed.witnessed_checkpoint()
    assert first is not None
    status(service, "mc", "member_suspended")
    feed.refresh()
    second = feed.witnessed_checkpoint()
    assert second is not None and second[0].size > first[0].size
    verifier = checkpoint.parse_verifier_key(checkpoint.verifier_key("test/log", service.log.signing_key.public_key()))
    # the note kept carries the cosignatures that made it witnessed, verifiable by anyone
    signers = cosignature.cosigners_by_keys(second[1], checkpoint.open_checkpoint(second[1], verifier),
                                            {m: [members[m].body.ed25519_public_key] for m in ("mb", "mq")}, now_s=2**40)
    assert set(signers) == {"mb", "mq"}
    source.cosigners = ()
    status(service, "mc", "member_resumed")
    feed.refresh()
    assert feed.witnessed_checkpoint() == second


def test_required_is_a_majority_of_m_without_the_decider_capped_at_the_others() -> None:
    # independent values: ⌊m/2⌋+1 for m = 1..5, capped at m - 1 for a member deciding for itself
    assert [cosignature.required({f"m{i}" for i in range(m)}, "m0") for m in range(1, 6)] == [0, 1, 2, 3, 3]
    assert [cosignature.required({f"m{i}" for i in range(m)}) for m in range(1, 6)] == [1, 2, 2, 3, 3]
    assert cosignature.required({"a", "b", "c"}, "x") == 2  # a verifier outside the set excludes nobody


def test_a_fork_cosigned_by_a_quorum_but_not_a_prefix_of_the_latest_is_refused_and_alerted(alliance, gateway) -> None:  # type: ignore[no-untyped-def]
    """A witnessed checkpoint must be a prefix of the latest view the member
    proved; one that is not is evidence of a split view."""
    from alliance_member import alerts

    service, members, feed, _, source, _ = alliance
    real = source.witnessed_checkpoints

    def forked() -> tuple[str, list[str]]:
        note, _ = real()
        cp = checkpoint.open_checkpoint(note, checkpoint.parse_verifier_key(
            checkpoint.verifier_key("test/log", service.log.signing_key.public_key())))
        other = checkpoint.Checkpoint(cp.origin, cp.size, bytes(32), cp.extensions)
        signed = checkpoint.sign_checkpoint(other, "test/log", service.log.signing_key)
        lines = [cosignature.cosign(other, mid, members[mid].signing_key, 1) for mid in ("mb", "mq")]
        return cosignature.add_cosignatures(signed, lines), []

    source.witnessed_checkpoints = forked  # type: ignore[method-assign]
    status(service, "mc", "member_suspended")
    with pytest.raises(feed_mod.FeedError, match="not consistent|two different"):
        feed.refresh()
    assert alerts.list_alerts(feed.engine, kinds=("inconsistent_checkpoint",))


def test_member_reconcile_works_under_the_feeds_witnessed_checkpoint_not_the_latest(alliance, ca) -> None:  # type: ignore[no-untyped-def]
    """What `member reconcile` reconciles under: the checkpoint the feed kept
    with a quorum, even when the log (and the feed's latest view) moved past it."""
    from alliance_member import reconcile as rec

    service, members, feed, _, source, _ = alliance
    kept = feed.witnessed_checkpoint()
    source.cosigners = ("mb",)  # no quorum for anything newer
    status(service, "mc", "member_suspended")
    got = rec.witnessed_of(feed)
    assert got == kept and got is not None
    latest = checkpoint.Checkpoint.parse(service.log.signed_checkpoint()[1].split("\n\n")[0] + "\n")
    assert got[0].size < latest.size


def test_a_root_the_member_confirmed_out_of_band_needs_no_witness(alliance, ca) -> None:  # type: ignore[no-untyped-def]
    """A credential whose fingerprint ma confirmed itself (`share`/`install`)
    is trusted on the latest view (docs/audit-log.md: without it a founder
    could never hand the key to the first newcomers); one that only a
    sponsorship in the log vouches for waits for the witnesses."""
    from alliance import trust

    service, members, feed, member, source, _ = alliance
    mr, mx = fresh(ca, "mr"), fresh(ca, "mx")
    admit(service, members, mr, sponsor=None)
    admit(service, members, mx)
    feed_mod.add_root(feed.engine, mr.member_id, trust.fingerprint_of(mr.body), "share")
    source.cosigners = ()
    feed.refresh()
    assert ask(member, mr).member_id == "ma"
    assert refused(member, mx) == "not_witnessed"
    status(service, mr.member_id, "member_suspended")  # the latest view's refusals act at once, for roots too
    feed.refresh()
    assert refused(member, mr) == "member_inactive"
