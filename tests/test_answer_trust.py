"""The querier counts an answer signature only from a member trusted in its
own view of the log (SPEC §5.1, §5.4): CA-valid and unpinned is not enough."""
from __future__ import annotations

from alliance import db
from alliance_member import store
from alliance_member.answer_trust import AnswerTrust
from tests.alliance_fixtures import NOW, LocalCA


class FakeFeed:
    def __init__(self, decisions: dict[bytes, str]) -> None:
        self.decisions = decisions
        self.generation: tuple[int, ...] = (1,)
        self.refreshed = 0

    def stale(self) -> bool:
        return False

    def refresh(self) -> int:
        self.refreshed += 1
        return 0

    def decide(self, credential: bytes) -> str:
        return self.decisions.get(credential, "not_in_log")


def test_only_members_trusted_in_the_feed_count(tmp_path) -> None:  # type: ignore[no-untyped-def]
    ca = LocalCA()
    good, minted = ca.enrol("lender-b"), ca.enrol("lender-x")  # both CA-signed: the operator holds the CA key
    creds = {m.member_id: m.credential for m in (good, minted)}
    engine = db.make_engine(db.sqlite_url(tmp_path / "q.db"))
    store.create_schema(engine)
    feed = FakeFeed({good.credential.SerializeToString(): "trusted", minted.credential.SerializeToString(): "not_sponsored"})
    trust = AnswerTrust(engine, ca.cert, lambda mid: creds[mid], clock=lambda: NOW.timestamp(), feed=feed)
    trust.sync()
    assert trust.answer_key("lender-b") is not None
    assert trust.answer_key("lender-x") is None
    # the view moves (say, lender-b is revoked in the log): decisions made before are forgotten
    feed.decisions[good.credential.SerializeToString()] = "member_inactive"
    feed.generation = (2,)
    trust.sync()
    assert trust.answer_key("lender-b") is None


def test_concurrent_reports_load_a_member_key_once_when_the_view_moves(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Every concurrent report misses at once after the view moves; one of
    them loads the credential, the others take what it found."""
    import threading
    import time

    ca = LocalCA()
    good = ca.enrol("lender-b")
    engine = db.make_engine(db.sqlite_url(tmp_path / "q.db"))
    store.create_schema(engine)
    feed = FakeFeed({good.credential.SerializeToString(): "trusted"})
    trust = AnswerTrust(engine, ca.cert, lambda mid: good.credential, clock=lambda: NOW.timestamp(), feed=feed)
    trust.sync()
    loads = []
    real_load = trust._load

    def slow_load(*args, **kwargs):  # type: ignore[no-untyped-def]
        loads.append(1)
        time.sleep(0.05)  # long enough for every thread to miss the cache
        return real_load(*args, **kwargs)

    trust._load = slow_load  # type: ignore[method-assign]
    start = threading.Barrier(8)
    keys = []

    def report() -> None:
        start.wait()
        keys.append(trust.answer_key("lender-b"))

    threads = [threading.Thread(target=report) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(loads) == 1 and len(keys) == 8 and all(k is not None and k == keys[0] for k in keys)
