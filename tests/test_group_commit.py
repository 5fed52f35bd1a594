"""Group commit of the gateway's query log (gateway/group_commit.py, SPEC §8
"batched log appends"): entries queued while a commit runs share the next
transaction, in arrival order; one entry's failure costs no other its
commit; and at the gateway, every query of a batch is logged before it is
answered, with receipts that prove it, and pins settled in log order."""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, event, insert, select
from sqlalchemy.exc import IntegrityError, InterfaceError, InternalError, OperationalError

from alliance import audit_entry, checkpoint, db, identity, merkle, protocol
from alliance_gateway.group_commit import GroupCommit, LogCommitError
from alliance_gateway.metrics import GatewayMetrics
from alliance_gateway.service import QueryFailure
from tests.alliance_fixtures import signed_query
from tests.test_gateway_service import FakeStub, ca, gateway, members, process  # noqa: F401
from tests.test_gateway_v2 import _raise_quotas

_meta = MetaData()
_rows = Table("rows", _meta, Column("id", Integer, primary_key=True, autoincrement=True), Column("name", String(40), nullable=False))


@pytest.fixture
def engine(db_url):  # type: ignore[no-untyped-def]
    engine = db.make_engine(db_url, durable=True)
    _meta.create_all(engine)
    commits: list[int] = []
    event.listen(engine, "commit", lambda _conn: commits.append(1))
    yield engine, commits
    engine.dispose()


def _queued(committer: GroupCommit, n: int, timeout_s: float = 10.0) -> None:
    """Wait until ``n`` callers wait behind the running commit."""
    until = time.monotonic() + timeout_s
    while len(committer._queue) < n:
        assert time.monotonic() < until, f"only {len(committer._queue)} of {n} callers queued"
        time.sleep(0.005)


def _insert(name: str) -> Callable:  # type: ignore[type-arg]
    def work(conn):  # type: ignore[no-untyped-def]
        return conn.execute(insert(_rows).values(name=name).returning(_rows.c.id)).scalar_one()
    return work


def _names(engine) -> list[str]:  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        return [r.name for r in conn.execute(select(_rows.c.name).order_by(_rows.c.id))]


def _held_first(committer: GroupCommit, release: threading.Event) -> Callable:  # type: ignore[type-arg]
    def work(conn):  # type: ignore[no-untyped-def]
        assert release.wait(10)
        return _insert("first")(conn)
    return work


def test_callers_queued_behind_a_commit_share_one_transaction_in_arrival_order(engine) -> None:  # type: ignore[no-untyped-def]
    engine, commits = engine
    batches: list[int] = []
    committer, release = GroupCommit(engine, on_batch=batches.append), threading.Event()
    with ThreadPoolExecutor(8) as pool:
        first = pool.submit(committer.run, _held_first(committer, release))
        time.sleep(0.05)
        later = []
        for i in range(6):
            later.append(pool.submit(committer.run, _insert(f"q{i}")))
            _queued(committer, i + 1)  # one at a time, so arrival order is known
        commits_before = len(commits)
        release.set()
        ids = [first.result(10)] + [f.result(10) for f in later]
    assert _names(engine) == ["first", "q0", "q1", "q2", "q3", "q4", "q5"]
    assert ids == sorted(ids) and len(set(ids)) == 7  # each caller got its own row back
    assert len(commits) - commits_before == 2  # the held one, then the six together
    assert batches == [1, 6]


def test_the_gateway_metric_counts_entries_per_log_transaction() -> None:
    metrics = GatewayMetrics()
    for n in (1, 6):
        metrics.log_batch(n)
    sample = metrics.registry.get_sample_value
    assert sample("alliance_gateway_log_batch_entries_count") == 2 and sample("alliance_gateway_log_batch_entries_sum") == 7
    assert sample("alliance_gateway_log_batch_entries_bucket", {"le": "1.0"}) == 1
    assert sample("alliance_gateway_log_batch_entries_bucket", {"le": "4.0"}) == 1


def test_one_failing_entry_costs_no_other_its_commit(engine) -> None:  # type: ignore[no-untyped-def]
    engine, commits = engine
    committer, release = GroupCommit(engine), threading.Event()
    runs: list[str] = []

    def counted(name: str, fail: bool = False):  # type: ignore[no-untyped-def]
        def work(conn):  # type: ignore[no-untyped-def]
            runs.append(name)
            row = _insert(name)(conn)
            if fail:
                raise ValueError(f"{name} is broken")
            return row
        return work

    with ThreadPoolExecutor(8) as pool:
        first = pool.submit(committer.run, _held_first(committer, release))
        time.sleep(0.05)
        futures = {}
        for i, name in enumerate(["a", "bad", "c"]):
            futures[name] = pool.submit(committer.run, counted(name, fail=name == "bad"))
            _queued(committer, i + 1)
        release.set()
        first.result(10)
        with pytest.raises(ValueError, match="bad is broken"):
            futures["bad"].result(10)
        assert futures["a"].result(10) and futures["c"].result(10)
    # The shared transaction rolled back at the broken entry, then the rest
    # were written again without it: nothing of the failed run is kept.
    assert _names(engine) == ["first", "a", "c"]
    assert runs == ["a", "bad", "a", "c"]


def test_a_caller_beyond_one_batch_still_commits(engine) -> None:  # type: ignore[no-untyped-def]
    engine, commits = engine
    committer, release = GroupCommit(engine, max_batch=2), threading.Event()
    with ThreadPoolExecutor(8) as pool:
        first = pool.submit(committer.run, _held_first(committer, release))
        time.sleep(0.05)
        later = []
        for i in range(5):
            later.append(pool.submit(committer.run, _insert(f"q{i}")))
            _queued(committer, i + 1)
        commits_before = len(commits)
        release.set()
        first.result(10)
        for f in later:
            f.result(10)
    assert _names(engine) == ["first", "q0", "q1", "q2", "q3", "q4"]
    assert len(commits) - commits_before == 4  # first, then 2 + 2 + 1


def _batch_behind_held(committer: GroupCommit, works: list) -> list:  # type: ignore[type-arg]
    """Run ``works`` as one batch queued behind a held first commit; each
    caller's result, or its exception."""
    release = threading.Event()
    with ThreadPoolExecutor(len(works) + 1) as pool:
        first = pool.submit(committer.run, _held_first(committer, release))
        time.sleep(0.05)
        futures = []
        for i, work in enumerate(works):
            futures.append(pool.submit(committer.run, work))
            _queued(committer, i + 1)
        release.set()
        first.result(20)
        outcomes = []
        for f in futures:
            try:
                outcomes.append(f.result(20))
            except Exception as exc:  # noqa: BLE001 - the outcome under test
                outcomes.append(exc)
    return outcomes


def test_a_failing_metric_costs_no_commit(engine) -> None:  # type: ignore[no-untyped-def]
    engine, commits = engine

    def on_batch(n: int) -> None:
        raise RuntimeError("metric backend hiccup")

    outcomes = _batch_behind_held(GroupCommit(engine, on_batch=on_batch), [_insert("a"), _insert("b")])
    assert outcomes == [2, 3]
    assert _names(engine) == ["first", "a", "b"]


def test_a_commit_that_fails_is_never_written_again(engine) -> None:  # type: ignore[no-untyped-def]
    """COMMIT raising is ambiguous (the server may have committed): every
    caller of the batch gets the error and no entry is written twice."""
    engine, commits = engine
    real, armed = engine.dialect.do_commit, {"after": -1}

    def do_commit(dbapi_conn):  # type: ignore[no-untyped-def]
        real(dbapi_conn)
        armed["after"] -= 1
        if armed["after"] == 0:
            raise engine.dialect.loaded_dbapi.OperationalError("server closed the connection unexpectedly")

    engine.dialect.do_commit = do_commit
    armed["after"] = 2  # the held commit, then the [a, b] batch's
    outcomes = _batch_behind_held(GroupCommit(engine), [_insert("a"), _insert("b")])
    assert [type(o).__name__ for o in outcomes] == ["OperationalError", "OperationalError"]
    assert _names(engine) == ["first", "a", "b"]  # committed once, by the one COMMIT


@pytest.mark.parametrize("error", [OperationalError, InternalError, InterfaceError])
def test_a_database_error_fails_the_batch_at_once(engine, error) -> None:  # type: ignore[no-untyped-def]
    """A lock timeout, a lost or timed-out connection (PostgreSQL's
    idle-in-transaction timeout is an InternalError) is the database's, not
    an entry's: the batch fails together, never blaming the entry that
    happened to run, nor paying a lock timeout once per entry."""
    engine, commits = engine
    runs: list[str] = []

    def locked(name: str):  # type: ignore[no-untyped-def]
        def work(conn):  # type: ignore[no-untyped-def]
            runs.append(name)
            if name == "b":
                raise error("UPDATE log_head", {}, Exception("terminating connection due to idle-in-transaction timeout"))
            return _insert(name)(conn)
        return work

    outcomes = _batch_behind_held(GroupCommit(engine), [locked("a"), locked("b"), locked("c")])
    assert all(isinstance(o, error) for o in outcomes)
    assert runs == ["a", "b"]  # tried once, for all three
    assert _names(engine) == ["first"]


def test_an_entry_s_own_constraint_error_fails_it_alone(engine) -> None:  # type: ignore[no-untyped-def]
    engine, commits = engine

    def duplicate(conn):  # type: ignore[no-untyped-def]
        conn.execute(insert(_rows).values(id=1, name="clash"))  # "first" holds id 1

    outcomes = _batch_behind_held(GroupCommit(engine), [_insert("a"), duplicate, _insert("c")])
    assert isinstance(outcomes[1], IntegrityError) and outcomes[0] and outcomes[2]
    assert _names(engine) == ["first", "a", "c"]


def test_an_entry_that_waited_too_long_for_the_log_fails_unwritten(engine) -> None:  # type: ignore[no-untyped-def]
    """A batch stuck behind a hung replica: the entries queued meanwhile fail
    once they have waited longer than a lone append's lock timeout (SPEC
    §6.3 bounds how late an entry may be written), and are not written."""
    engine, commits = engine
    now = [100.0]
    committer = GroupCommit(engine, max_wait_s=5.0, clock=lambda: now[0])
    release = threading.Event()
    with ThreadPoolExecutor(3) as pool:
        first = pool.submit(committer.run, _held_first(committer, release))
        time.sleep(0.05)
        late = pool.submit(committer.run, _insert("late"))
        _queued(committer, 1)
        now[0] += 5.5
        release.set()
        first.result(20)
        with pytest.raises(LogCommitError, match="waited over 5 s"):
            late.result(20)
    assert committer.run(_insert("on time")) and _names(engine) == ["first", "on time"]


def test_an_interrupt_in_a_work_leaves_the_committer_usable(engine) -> None:  # type: ignore[no-untyped-def]
    engine, commits = engine
    committer = GroupCommit(engine)

    class Interrupt(BaseException):
        pass

    def interrupted(conn):  # type: ignore[no-untyped-def]
        _insert("lost")(conn)
        raise Interrupt()

    with pytest.raises(Interrupt):
        committer.run(interrupted)
    assert committer.run(_insert("after")) and _names(engine) == ["after"]


def test_a_lone_caller_commits_at_once(engine) -> None:  # type: ignore[no-untyped-def]
    engine, commits = engine
    committer = GroupCommit(engine)
    assert committer.run(_insert("only")) == 1
    assert _names(engine) == ["only"] and len(commits) == 1


# -- at the gateway ------------------------------------------------------------

def _hold_log(svc, release: threading.Event) -> list:  # type: ignore[no-untyped-def]
    """The next query's log write waits for ``release``; returns the
    transaction (connection) each later write ran in."""
    calls: list = []
    write, held = svc._write_query, [False]

    def wrapped(conn, ctx, *args):  # type: ignore[no-untyped-def]
        if not held[0]:
            held[0] = True
            assert release.wait(20)
        calls.append((id(conn), ctx.body.query_id))
        return write(conn, ctx, *args)

    svc._write_query = wrapped
    return calls


def _behind_held_commit(pool, svc, members, queries):  # type: ignore[no-untyped-def]
    """Send queries[0], whose log write _hold_log holds, then the others one
    at a time, each queued behind it before the next is sent (so their
    arrival order is known); returns (first future, the others' futures)."""
    first = pool.submit(process, svc, members, queries[0], "mq", "member", "query")
    until = time.monotonic() + 20
    while not svc.log_commits._writing:  # queries[0] is in its held write (a fixed sleep lost this race on a loaded CI box)
        assert time.monotonic() < until, "the first query never reached its log write"
        time.sleep(0.005)
    rest = []
    for i, q in enumerate(queries[1:]):
        rest.append(pool.submit(process, svc, members, q, "mq", "member", "query"))
        _queued(svc.log_commits, i + 1, timeout_s=20)
    return first, rest


def test_concurrent_queries_are_logged_together_and_each_receipt_proves_its_entry(gateway) -> None:  # type: ignore[no-untyped-def]
    svc, _, members = gateway
    _raise_quotas(svc)
    release = threading.Event()
    calls = _hold_log(svc, release)
    queries = [signed_query(members["mq"], subject=_subject(i)) for i in range(5)]
    size_before = svc.log.size()
    verifier = checkpoint.parse_verifier_key(checkpoint.verifier_key(svc.log.key_name, svc.log.signing_key.public_key()))
    with ThreadPoolExecutor(5) as pool:
        first, rest = _behind_held_commit(pool, svc, members, queries)
        release.set()
        responses = [first.result(20)] + [f.result(20) for f in rest]
    # The four queued queries went in one transaction, in arrival order.
    batch = [qid for conn_id, qid in calls if conn_id == calls[-1][0]]
    assert batch == [r.query_id for r in responses[1:]]
    assert svc.log.size() == size_before + 5
    for resp in responses:
        receipt = resp.audit
        entry = audit_entry.decode(receipt.entry, index=receipt.leaf_index)
        assert entry["query_id"] == resp.query_id and entry["outcome"] == "accepted"
        cp = checkpoint.open_checkpoint(receipt.checkpoint, verifier)
        merkle.verify_inclusion(merkle.leaf_hash(receipt.entry), receipt.leaf_index, cp.size,
                                list(receipt.inclusion_proof), cp.root_hash)
    assert [r.audit.leaf_index for r in responses] == list(range(size_before, size_before + 5))


def test_pins_are_settled_in_log_order_within_one_batch(gateway) -> None:  # type: ignore[no-untyped-def]
    """Two reports on one subject, over different answering sets, committed
    in one transaction: the first pins the set, the second is refused."""
    svc, stubs, members = gateway
    _raise_quotas(svc)
    release = threading.Event()
    _hold_log(svc, release)
    other = signed_query(members["mq"], subject=_subject(7))
    full, partial = signed_query(members["mq"]), signed_query(members["mq"])
    with ThreadPoolExecutor(3) as pool:
        held = pool.submit(process, svc, members, other, "mq", "member", "query")
        time.sleep(0.1)
        first = pool.submit(process, svc, members, full, "mq", "member", "query")
        _queued(svc.log_commits, 1, timeout_s=20)
        answering = stubs["mc"]
        stubs["mc"] = FakeStub(None)  # mc no longer answers: the second report has another set
        try:
            second = pool.submit(process, svc, members, partial, "mq", "member", "query")
            _queued(svc.log_commits, 2, timeout_s=20)
        finally:
            stubs["mc"] = answering
        release.set()
        held.result(20)
        assert first.result(20).members_answered == 3
        with pytest.raises(QueryFailure) as exc:
            second.result(20)
    assert exc.value.reason == "answer_set_changed"
    last, before = _entries(svc)[-2:][::-1]
    assert (before["query_id"], before["outcome"]) == (protocol.parse_body(full).query_id, "accepted")
    assert (last["query_id"], last["outcome"], last["reason"]) == (protocol.parse_body(partial).query_id, "refused", "answer_set_changed")
    assert last["answer_set"] == before["answer_set"] == ["ma", "mb", "mc", "mq"]


def _subject(i: int) -> tuple[str, str]:
    first17 = f"1101051949123{100 + i:03d}"[:17].ljust(17, "0")
    return ("RESIDENT_ID", first17 + identity.resident_id_check_char(first17))


def _entries(svc) -> list[dict]:  # type: ignore[no-untyped-def]
    return [audit_entry.decode(data, index=seq) for seq, data in svc.log.entries(0, svc.log.size())]


def test_an_ambiguous_log_commit_never_logs_a_query_twice(gateway) -> None:  # type: ignore[no-untyped-def]
    """The batch's COMMIT went through but raised (a connection lost during
    COMMIT): its queries fail, and none is logged a second time (SPEC §5.4:
    one entry per query id; §12: the log stays duplicate-free)."""
    svc, _, members = gateway
    _raise_quotas(svc)
    engine, real, armed = svc.engine, svc.engine.dialect.do_commit, {"after": -1}

    def do_commit(dbapi_conn):  # type: ignore[no-untyped-def]
        real(dbapi_conn)
        armed["after"] -= 1
        if armed["after"] == 0:
            raise engine.dialect.loaded_dbapi.OperationalError("server closed the connection unexpectedly")

    release = threading.Event()
    calls = _hold_log(svc, release)
    queries = [signed_query(members["mq"], subject=_subject(i)) for i in range(3)]
    outcomes: list = []
    with ThreadPoolExecutor(3) as pool:
        first, rest = _behind_held_commit(pool, svc, members, queries)
        armed["after"] = 2  # the held query's COMMIT, then the batch's
        engine.dialect.do_commit = do_commit
        try:
            release.set()
            first.result(20)
            for f in rest:
                try:
                    outcomes.append(f.result(20))
                except Exception as exc:  # noqa: BLE001 - the outcome under test
                    outcomes.append(exc)
        finally:
            engine.dialect.do_commit = real
    assert len({conn_id for conn_id, _ in calls[-2:]}) == 1  # the two went in one transaction
    assert all(isinstance(o, Exception) for o in outcomes)
    query_ids = [e["query_id"] for e in _entries(svc) if e["kind"] == "query"]
    assert len(query_ids) == len(set(query_ids))
    assert {protocol.parse_body(q).query_id for q in queries} <= set(query_ids)  # committed, once
