"""SPEC §12 "Replicas" and §5.4 (replays), end to end on PostgreSQL: two
`alliance gateway serve` processes on one database, real queriers listing
both endpoints, concurrent queries through both, one replica SIGKILLed
mid-load. The log is read independently, straight from the database, and
compared with what the queriers were acknowledged; `alliance audit verify`
is the real command line."""
from __future__ import annotations

import hashlib
import json
import random
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from sqlalchemy import create_engine, text

from alliance import synthetic
from alliance.errors import AllianceError, Refused
from alliance.v1 import alliance_pb2 as pb
from alliance_cli.localnet import LocalAlliance
from alliance_member.gateway_client import GatewayClient
from alliance_member.home import MemberHome
from alliance_member.querier import Consent, Querier, Subject, today_shanghai
from tests.conftest import IN_CI, PG_URL, drop_pg_databases, import_fresh_loans, pg_databases

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

MEMBERS = ["lender-a", "lender-b", "lender-c", "lender-d"]
CONSENT = Consent("CONSENT-REPLICA-1", hashlib.sha256(b"signed authorisation").digest())
THREADS = 4


class RecordingClient(GatewayClient):
    """A real GatewayClient that remembers, per thread, which replicas each
    call went to (one entry per attempt), so a failover is seen."""

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.attempts = threading.local()

    def _stub_for(self, target: str):  # type: ignore[no-untyped-def]
        tried = getattr(self.attempts, "targets", None)
        if tried is not None:
            tried.append(target)
        return super()._stub_for(target)


@dataclass
class Outcome:
    querier: str
    query_id: str
    targets: list[str]
    leaf_index: int | None = None
    error: AllianceError | None = None
    finished: float = 0.0


@dataclass
class Load:
    outcomes: list[Outcome] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _subjects(n: int) -> Iterator[Subject]:
    seen: set[tuple[str, str]] = set()
    rng = random.Random(1212)
    while len(seen) < n:
        for s in synthetic.unknown_subjects(rng, n):
            if (s.id_type, s.canonical_id) not in seen:
                seen.add((s.id_type, s.canonical_id))
                yield Subject(s.id_type, s.canonical_id)


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalAlliance]:
    if not PG_URL:
        if IN_CI:
            pytest.fail("PostgreSQL is required under CI=true")
        pytest.skip("*** PostgreSQL not available: run ./dev test ***")
    urls, created = pg_databases(["gateway"])
    alliance = LocalAlliance(tmp_path_factory.mktemp("replicas"), MEMBERS, gateway_db_url=urls["gateway"], gateway_replicas=2,
                             deadline_ms=5000)  # a busy shared machine: no member dropped for lateness
    try:
        alliance.start()
        work = tmp_path_factory.mktemp("replica-books")
        for member in alliance.members.values():  # SPEC §10: fresh books, or every query is refused stale_book
            import_fresh_loans(member.home, work)
        yield alliance
    finally:
        alliance.stop()
        drop_pg_databases(created)


def _log(net: LocalAlliance) -> tuple[int, list[tuple[int, dict]]]:
    """(log_head size, every stored entry) read from the database, not through any gateway."""
    engine = create_engine(net.gateway_db_url)
    try:
        with engine.connect() as conn:
            size = conn.execute(text("SELECT size FROM log_head WHERE id = 1")).scalar_one()
            rows = conn.execute(text("SELECT seq, data FROM log_entries ORDER BY seq")).all()
    finally:
        engine.dispose()
    return size, [(r.seq, json.loads(bytes(r.data))) for r in rows]


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "alliance_cli.main", *args], capture_output=True, text=True, timeout=timeout)


def test_replicas_survive_a_sigkill_mid_load(net: LocalAlliance) -> None:  # noqa: PLR0915 - one scenario, checked in full
    gw1, gw2 = net.gateway_endpoints
    orders = {"lender-a": [gw1, gw2], "lender-b": [gw2, gw1], "lender-c": [gw1, gw2]}  # lender-a/c: first the one killed
    clients = {m: RecordingClient(MemberHome(net.members[m].home), target=",".join(t)) for m, t in orders.items()}
    queriers = {m: Querier(net.members[m].home, client=clients[m]) for m in orders}
    subjects = _subjects(10_000)
    subject_lock = threading.Lock()
    load = Load()
    stop = threading.Event()
    names = list(orders)

    def one(member: str) -> Outcome:
        with subject_lock:
            subject = next(subjects)
        clients[member].attempts.targets = tried = []
        out = Outcome(member, "", tried)
        try:
            result = queriers[member].query(subject, purpose="LOAN_APPROVAL", consent=CONSENT)
            out.query_id, out.leaf_index = result["query_id"], result["audit"]["leaf_index"]
        except AllianceError as exc:
            out.error = exc
        out.finished = time.monotonic()
        return out

    def worker(i: int) -> None:
        n = 0
        while not stop.is_set():
            out = one(names[(i + n) % len(names)])
            n += 1
            with load.lock:
                load.outcomes.append(out)

    def acked_through(endpoint: str) -> int:
        with load.lock:
            return sum(1 for o in load.outcomes if o.error is None and o.targets[-1:] == [endpoint])

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(THREADS)]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 40
        while (acked_through(gw1) < 8 or acked_through(gw2) < 8) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert acked_through(gw1) >= 8 and acked_through(gw2) >= 8, "both replicas answer before the kill"
        net.kill_gateway(0)  # SIGKILL, mid-load: queries are in flight on it
        killed_at = time.monotonic()
        with load.lock:
            before_kill = len(load.outcomes)
        while time.monotonic() < deadline + 10:
            with load.lock:
                after = [o for o in load.outcomes[before_kill:] if o.error is None]
            if len(after) >= 15 and {o.querier for o in after} == set(names):
                break
            time.sleep(0.2)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    outcomes = load.outcomes
    acked = [o for o in outcomes if o.error is None]
    after_kill = [o for o in acked if o.finished > killed_at]
    # The other replica keeps answering, and every querier fails over: lender-a and lender-c list the dead one first.
    assert {o.querier for o in after_kill} == set(names)
    assert all(o.targets[-1] == gw2 for o in after_kill if o.targets[0] == gw1 and len(set(o.targets)) > 1)

    # A failed query is only one the kill interrupted after the dead replica had reserved its id: retried on the
    # other replica with the same id, it is refused as a replay (answered at most once), never fanned out again.
    failed = [o for o in outcomes if o.error is not None]
    for o in failed:
        assert isinstance(o.error, Refused) and o.error.reason == "replayed_query_id" and o.targets == [gw1, gw2], (o, o.error)

    size, entries = _log(net)
    # gap-free, duplicate-free, and the head agrees with the rows
    assert [seq for seq, _ in entries] == list(range(size))
    assert all(e["seq"] == seq for seq, e in entries)
    by_seq = dict(entries)
    for o in acked:  # every acknowledged query is in the log at its receipt's leaf index
        e = by_seq[o.leaf_index]
        assert (e["kind"], e["query_id"], e["querier_id"], e["outcome"]) == ("query", o.query_id, o.querier, "accepted")
    queries = [e for _, e in entries if e["kind"] == "query"]
    assert len({o.query_id for o in acked}) == len(acked)
    fanned: dict[str, int] = {}
    for e in queries:
        if e["members_asked"] or e["outcome"] == "accepted":
            fanned[e["query_id"]] = fanned.get(e["query_id"], 0) + 1
    assert max(fanned.values()) == 1, "a query id asked members at most once"
    for e in queries:
        if e["reason"] == "replayed_query_id":
            assert e["members_asked"] == [] and e["answers"] == []
    refused = [e for e in queries if e["outcome"] != "accepted"]
    assert all(e["reason"] == "replayed_query_id" for e in refused), [e["reason"] for e in refused]
    assert sum(1 for e in queries if e["outcome"] == "accepted") >= len(acked)
    assert sum(1 for _, e in entries if e["kind"] == "gateway_started") == 2

    # A new client whose first endpoint is the dead replica still gets answers: it fails over, same request.
    fresh = RecordingClient(MemberHome(net.members["lender-a"].home), target=f"{gw1},{gw2}")
    fresh.attempts.targets = tried = []
    lone = Querier(net.members["lender-a"].home, client=fresh).query(next(subjects), purpose="LOAN_APPROVAL", consent=CONSENT)
    assert tried[:2] == [gw1, gw2]
    assert _log(net)[1][lone["audit"]["leaf_index"]][1]["query_id"] == lone["query_id"]
    fresh.close()

    _an_orphaned_reservation_is_refused_as_a_replay(net, queriers["lender-c"], next(subjects))
    _replay_is_refused_on_the_other_replica(net, queriers["lender-b"], next(subjects))

    # Every replica's checkpoints are consistent: the auditor keeps one from each in turn, each proven against the last.
    sizes = []
    for endpoint in (gw1, gw2, gw1):
        out = _cli("--gateway", endpoint, "audit", "checkpoint", "--home", str(net.auditor_home), "--json")
        assert out.returncode == 0, out.stderr
        sizes.append(json.loads(out.stdout)["tree_size"])
    assert sizes == sorted(sizes) and sizes[0] >= size

    verify = _cli("--gateway", f"{gw2},{gw1}", "audit", "verify", "--home", str(net.auditor_home), "--json")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    report = json.loads(verify.stdout)
    assert report["ok"] is True
    assert report["entries"] >= size
    # the replays whose original a killed replica never logged are reported, not hidden (at least the staged one)
    orphans = sum(1 for o in failed) + 1
    assert report["unverified_refusals"].get("replayed_query_id", 0) >= 1
    assert report["refusals"]["replayed_query_id"] >= orphans
    for q in queriers.values():
        q.close()


def _replay_is_refused_on_the_other_replica(net: LocalAlliance, querier: Querier, subject: Subject) -> None:
    """SPEC §5.4: the same signed query (same id) sent to a second replica
    after a first one answered it is refused `replayed_query_id`, logged but
    never fanned out: no member answers it a second time."""
    gw1, gw2 = net.gateway_endpoints
    net.start_gateway(0)  # the killed replica back, so each replica gets the query once
    signed, _ = querier._signed(subject, "LOAN_APPROVAL", CONSENT, today_shanghai(), pb.QUERY_MODE_REPORT)
    query_id = pb.QueryRequestBody.FromString(signed.body).query_id
    home = MemberHome(net.members["lender-b"].home)
    with GatewayClient(home, target=gw1) as first, GatewayClient(home, target=gw2) as second:
        report = querier.read_report(signed, first.query(signed))
        with pytest.raises(Refused) as refused:
            second.query(signed)
    assert refused.value.reason == "replayed_query_id"
    entries = [e for _, e in _log(net)[1] if e.get("query_id") == query_id]
    assert [(e["outcome"], e["reason"], len(e["members_asked"])) for e in entries] == [
        ("accepted", None, 3), ("refused", "replayed_query_id", 0)]
    assert entries[0]["seq"] == report["audit"]["leaf_index"]
    for m in ("lender-a", "lender-c", "lender-d"):  # each asked member answered it exactly once
        engine = create_engine(f"sqlite:///{net.members[m].home / 'member.db'}")
        try:
            with engine.connect() as conn:
                n = conn.execute(text("SELECT count(*) FROM answer_journal WHERE query_id = :q"), {"q": query_id}).scalar_one()
        finally:
            engine.dispose()
        assert n == 1, m


def _an_orphaned_reservation_is_refused_as_a_replay(net: LocalAlliance, querier: Querier, subject: Subject) -> None:
    """The moment the kill can land in, made certain: the dead replica had
    reserved the query id (a committed row) and never logged the query. The
    client's retry (same signed request) on the live replica is refused
    `replayed_query_id`, never fanned out, and the log stays verifiable."""
    signed, _ = querier._signed(subject, "LOAN_APPROVAL", CONSENT, today_shanghai(), pb.QUERY_MODE_REPORT)
    query_id = pb.QueryRequestBody.FromString(signed.body).query_id
    engine = create_engine(net.gateway_db_url)
    try:
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO query_ids (query_id, querier_id, reserved_at_ms) VALUES (:q, 'lender-c', :t)"),
                         {"q": query_id, "t": int(time.time() * 1000)})
    finally:
        engine.dispose()
    with pytest.raises(Refused) as refused:
        querier.client.query(signed)  # lender-c lists the dead replica first: fails over, same query id
    assert refused.value.reason == "replayed_query_id"
    entries = [e for _, e in _log(net)[1] if e.get("query_id") == query_id]
    assert [(e["outcome"], e["reason"], e["members_asked"]) for e in entries] == [("refused", "replayed_query_id", [])]
