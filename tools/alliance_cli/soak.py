"""`alliance bench --soak SECONDS` (SPEC §12 "Replicas"): sustained load
through two gateway replicas on one PostgreSQL database, one replica killed
with SIGKILL and restarted midway, then checks that nothing acknowledged was
lost.

Phases: build a local alliance (separate processes, mutual TLS; members on
SQLite, the gateway replicas on a throw-away PostgreSQL server or a fresh
database on ``--db``); measure capacity with a short closed loop; offer 80 %
of it as an open loop for SECONDS, every querier listing both replicas (half
of them the one that is killed first); sample each process's RSS; finally
read the log straight from the database (soak_log) and run the real `alliance
audit verify`. The verdict passes only when every acknowledged query is in
the log at its receipt's leaf index, errors stay under 0.1 %, no process's
RSS grew 50 MB or more after warm-up, and `audit verify` exits 0.

A query in flight on the killed replica after it had reserved its query id
is retried on the other replica with the same id and refused
`replayed_query_id` (answered at most once, SPEC §5.4): counted as
``interrupted_by_kill``, not as an error (a real client would ask again with
a new query id)."""
from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alliance import synthetic
from alliance.errors import AllianceError, UsageError
from alliance_cli import pg_throwaway, soak_log
from alliance_cli.bench_load import percentile
from alliance_cli.localnet import LocalAlliance
from alliance_member import book, book_status
from alliance_member.gateway_client import GatewayClient
from alliance_member.home import MemberHome
from alliance_member.querier import Consent, Querier, Subject, today_shanghai

LOAD_FRACTION = 0.8
MAX_ERROR_RATE = 0.001
MAX_RSS_DRIFT_MB = 50.0
DEFAULT_MEMBERS = 4
CONSENT = Consent("SOAK-CONSENT", hashlib.sha256(b"soak").digest())


class SoakFailed(AllianceError):
    """The soak ran but its verdict is a fail (exit 1); the report says why."""


def _clamp(x: float, lo: float, hi: float) -> float:
    return max(lo, min(hi, x))


# -- load --------------------------------------------------------------------

class TrackingClient(GatewayClient):
    """The real client; remembers, per thread, the replicas each call tried
    (one per attempt), so a failover is visible to the load generator."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tried = threading.local()

    def _stub_for(self, target: str):  # type: ignore[no-untyped-def]
        attempts = getattr(self.tried, "targets", None)
        if attempts is not None:
            attempts.append(target)
        return super()._stub_for(target)


@dataclass
class Outcome:
    querier: str
    targets: list[str]
    started: float
    latency_s: float = 0.0
    query_id: str = ""
    leaf_index: int = -1
    reason: str | None = None  # None: acknowledged

    @property
    def ok(self) -> bool:
        return self.reason is None

    @property
    def failed_over(self) -> bool:
        return len(set(self.targets)) > 1


class Subjects:
    """Every query a fresh subject (no §5.3 pin decides who is asked): the
    members' known subjects first, then valid subjects no book holds."""

    def __init__(self, dataset: synthetic.Dataset) -> None:
        self._known = [Subject(s.id_type, s.canonical_id) for s in dataset.subjects]
        self._seen = {(s.id_type, s.canonical_id) for s in self._known}
        self._rng = random.Random(12)
        self._lock = threading.Lock()
        self._buffer: list[Subject] = []

    def next(self) -> Subject:
        with self._lock:
            if self._known:
                return self._known.pop()
            while not self._buffer:
                for s in synthetic.unknown_subjects(self._rng, 256):
                    if (s.id_type, s.canonical_id) not in self._seen:
                        self._seen.add((s.id_type, s.canonical_id))
                        self._buffer.append(Subject(s.id_type, s.canonical_id))
            return self._buffer.pop()


class Load:
    def __init__(self, queriers: dict[str, tuple[Querier, TrackingClient]], subjects: Subjects) -> None:
        self.queriers = queriers
        self.names = sorted(queriers)
        self.subjects = subjects
        self.as_of = today_shanghai()
        self._n = 0
        self._lock = threading.Lock()

    def one(self) -> Outcome:
        with self._lock:
            name = self.names[self._n % len(self.names)]
            self._n += 1
        querier, client = self.queriers[name]
        client.tried.targets = targets = []
        out = Outcome(name, targets, time.monotonic())
        try:
            result = querier.query(self.subjects.next(), purpose="LOAN_APPROVAL", consent=CONSENT, as_of=self.as_of)
            out.query_id, out.leaf_index = result["query_id"], int(result["audit"]["leaf_index"])
        except AllianceError as exc:
            out.reason = getattr(exc, "reason", None) or type(exc).__name__
        except Exception as exc:  # noqa: BLE001 - a soak records every failure and carries on
            out.reason = f"{type(exc).__name__}: {exc}"[:200]
        out.latency_s = time.monotonic() - out.started
        return out

    def closed_loop(self, threads: int, seconds: float) -> tuple[list[Outcome], float]:
        stop = time.monotonic() + seconds
        results: list[Outcome] = []
        lock = threading.Lock()

        def run() -> None:
            while time.monotonic() < stop:
                out = self.one()
                with lock:
                    results.append(out)

        t0 = time.monotonic()
        workers = [threading.Thread(target=run, daemon=True) for _ in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        return results, time.monotonic() - t0

    def open_loop(self, rate: float, seconds: float, workers: int) -> "OpenLoop":
        return OpenLoop(self, rate, seconds, workers)


class OpenLoop:
    """Starts queries at a fixed rate whatever the answers do (an open loop),
    on a thread pool; ``lag`` is how late the latest start was."""

    def __init__(self, load: Load, rate: float, seconds: float, workers: int) -> None:
        self.load, self.rate, self.seconds = load, rate, seconds
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="soak")
        self.futures: list[Any] = []
        self.max_lag_s = 0.0
        self._abort = threading.Event()
        self.t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="soak-dispatch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        i = 0
        while True:
            at = self.t0 + i / self.rate
            if at - self.t0 >= self.seconds:
                return
            delay = at - time.monotonic()
            if delay > 0:
                if self._abort.wait(delay):
                    return
            else:
                self.max_lag_s = max(self.max_lag_s, -delay)
            self.futures.append(self.pool.submit(self.load.one))
            i += 1

    def finish(self) -> list[Outcome]:
        self._thread.join()
        self.pool.shutdown(wait=True)
        return [f.result() for f in self.futures]

    def abort(self) -> None:
        """Stop offering load (the run failed); queries in flight finish."""
        self._abort.set()
        self._thread.join()
        self.pool.shutdown(wait=True, cancel_futures=True)


# -- memory ------------------------------------------------------------------

def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


class RssSampler:
    """Samples every watched process's RSS; one series per process
    incarnation (a restarted replica is a new process)."""

    def __init__(self, interval_s: float, processes: Callable[[], dict[str, Any]]) -> None:
        self.interval_s = interval_s
        self.processes = processes
        self.series: dict[tuple[str, int], list[tuple[float, float]]] = {}
        self.serving_since: dict[int, float] = {}  # pid -> when a (re)started process began serving
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def start(self) -> "RssSampler":
        self._thread.start()
        return self

    def sample(self) -> None:
        now = time.monotonic()
        for name, process in self.processes().items():
            if process is None or process.poll() is not None:
                continue
            mb = rss_mb(process.pid)
            if mb is not None:
                self.series.setdefault((name, process.pid), []).append((now, mb))

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def drift(self, warm_from: float, warmup_s: float) -> list[dict[str, Any]]:
        """First vs last sample after warm-up, per process incarnation: a
        process restarted during the load gets its own warm-up from when it
        began serving (its start-up is not growth); one with fewer than two
        samples past its warm-up is judged on its samples since it served."""
        report = []
        for (name, pid), samples in self.series.items():
            since = max(warm_from, self.serving_since.get(pid, warm_from))
            used = [s for s in samples if s[0] >= since + warmup_s]
            if len(used) < 2:
                used = [s for s in samples if s[0] >= since] or samples[-1:]
            first, last = used[0][1], used[-1][1]
            report.append({"process": name, "pid": pid, "samples": len(used), "first_mb": round(first, 1),
                           "last_mb": round(last, 1), "drift_mb": round(last - first, 1),
                           "peak_mb": round(max(mb for _, mb in samples), 1)})
        return report


# -- the run -----------------------------------------------------------------

def run(seconds: int, *, members: int = DEFAULT_MEMBERS, db_url: str | None = None, concurrency: int = 4,
        echo: Callable[[str], None] = print) -> dict[str, Any]:
    if seconds < 2:
        raise UsageError("--soak needs at least 2 seconds (the kill is midway, the restart after it)")
    if not 3 <= members <= 50:
        raise UsageError(f"--soak takes 3 to 50 members (a querier and k = 2 others; all on this machine), not {members}")
    ids = [f"m{i:02d}" for i in range(members)]
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="alliance-soak-")))
        if db_url is None:
            echo("starting a throw-away PostgreSQL server…")
            server, database = stack.enter_context(pg_throwaway.throwaway_server()), "throw-away server (fsync off)"
        else:
            server, database = db_url, "the --db server"
        gateway_db = stack.enter_context(pg_throwaway.fresh_database(server))
        as_of = today_shanghai()
        dataset = synthetic.write_alliance_dataset(tmp / "data", ids, seed=12, as_of=as_of, book_date=as_of)  # fresh (SPEC §10)
        echo(f"starting 2 gateway replicas on one PostgreSQL database + {members} member processes (mutual TLS)…")
        net = stack.enter_context(LocalAlliance(tmp, ids, gateway_db_url=gateway_db, gateway_replicas=2))
        for mid in ids:
            for kind in ("loans", "flags", "scores"):
                book.import_book(net.members[mid].home, tmp / "data" / mid / f"{kind}.csv", kind)
            book_status.refresh(net.members[mid].home)  # SPEC §10: as `alliance member import` does
        result = _soak(net, dataset, seconds, concurrency=concurrency, echo=echo, database=database)
    return result


def _soak(net: LocalAlliance, dataset: synthetic.Dataset, seconds: int, *, concurrency: int,
          echo: Callable[[str], None], database: str) -> dict[str, Any]:
    killed, survivor = net.gateway_endpoints
    queriers: dict[str, tuple[Querier, TrackingClient]] = {}
    for i, mid in enumerate(net.member_ids):
        order = [killed, survivor] if i % 2 == 0 else [survivor, killed]
        client = TrackingClient(MemberHome(net.members[mid].home), target=",".join(order))
        queriers[mid] = (Querier(net.members[mid].home, client=client), client)
    load = Load(queriers, Subjects(dataset))
    try:
        for _ in range(2 * len(queriers)):  # channels, trust sync, mask pools
            load.one()
        loadavg_start = os.getloadavg()
        capacity_s = _clamp(seconds * 0.05, 3, 30)
        probe, wall = load.closed_loop(concurrency, capacity_s)
        capacity = sum(1 for o in probe if o.ok) / wall
        if capacity <= 0:
            raise SoakFailed(f"no query was answered while measuring capacity ({len(probe)} failed: "
                             f"{sorted({o.reason for o in probe})[:3]})")
        rate = LOAD_FRACTION * capacity
        echo(f"capacity: {capacity:.1f} queries/s ({concurrency} closed-loop queriers, {wall:.1f} s); "
             f"offering {rate:.1f} queries/s for {seconds} s")
        processes = lambda: {  # noqa: E731
            "gateway-1": net.gateway_process, "gateway-2": net.replica_processes[0],
            **{mid: m.process for mid, m in net.members.items()}}
        sampler = RssSampler(_clamp(seconds / 120, 0.5, 5), processes)
        sampler.sample()
        sampler.start()
        warmup_s = _clamp(seconds * 0.1, 1, 60)
        loop = load.open_loop(rate, seconds, workers=max(16, 4 * concurrency))
        down_s = _clamp(seconds * 0.05, 1, 10)
        try:
            time.sleep(max(0.0, loop.t0 + seconds / 2 - time.monotonic()))
            kill_at = time.monotonic()
            net.kill_gateway(0)
            echo(f"SIGKILLed gateway-1 at {kill_at - loop.t0:.1f} s; restarting it in {down_s:.0f} s")
            time.sleep(down_s)
            restart_at = time.monotonic()
            restarted = net.start_gateway(0)
            serving_at = time.monotonic()
            sampler.serving_since[restarted.pid] = serving_at
            echo(f"gateway-1 serving again at {serving_at - loop.t0:.1f} s")
            outcomes = loop.finish()
        except BaseException:
            loop.abort()
            raise
        finally:
            sampler.stop()
        loadavg_end = os.getloadavg()
        echo("load done; reading the log from the database and running `alliance audit verify`…")
        acked = [o for o in outcomes if o.ok]
        log = soak_log.check_log(net.gateway_db_url or "", [soak_log.Ack(o.querier, o.query_id, o.leaf_index) for o in acked])
        verify = _audit_verify(net)
    finally:
        for querier, _ in queriers.values():
            querier.close()
    # targets holds every gateway call of the query (trust syncs too); the client sticks to one replica
    # until it fails over, so a query that failed over is one whose calls went to both
    interrupted = [o for o in outcomes if o.reason == "replayed_query_id" and o.targets[:1] == [killed] and o.failed_over]
    errors = [o for o in outcomes if not o.ok and o not in interrupted]
    by_reason: dict[str, int] = {}
    for o in errors:
        by_reason[o.reason or ""] = by_reason.get(o.reason or "", 0) + 1
    latencies = sorted(o.latency_s * 1000 for o in acked)
    rss = sampler.drift(loop.t0, warmup_s)
    result: dict[str, Any] = {
        "seconds": seconds,
        "members": len(net.member_ids),
        "replicas": 2,
        "database": database,
        "capacity": {"seconds": round(wall, 1), "concurrency": concurrency, "queries": len(probe),
                     "queries_per_s": round(capacity, 2)},
        "offered_per_s": round(rate, 2),
        "load_fraction": LOAD_FRACTION,
        "queries": {
            "offered": len(outcomes), "acknowledged": len(acked), "errors": len(errors),
            "error_rate": round(len(errors) / max(1, len(outcomes)), 5), "errors_by_reason": by_reason,
            "interrupted_by_kill": len(interrupted),
            "failed_over": sum(1 for o in outcomes if o.failed_over),
            "achieved_per_s": round(len(acked) / seconds, 2),
            "max_start_lag_s": round(loop.max_lag_s, 2),
        },
        "latency_ms": {"p50": round(percentile(latencies, 50), 1), "p95": round(percentile(latencies, 95), 1),
                       "p99": round(percentile(latencies, 99), 1), "max": round(latencies[-1], 1) if latencies else None},
        "kill": {"replica": "gateway-1", "signal": "SIGKILL", "at_s": round(kill_at - loop.t0, 1),
                 "restarted_at_s": round(restart_at - loop.t0, 1), "serving_again_at_s": round(serving_at - loop.t0, 1),
                 "answered_while_down": sum(1 for o in acked if kill_at <= o.started + o.latency_s <= serving_at)},
        "log": log,
        "rss": rss,
        "rss_warmup_s": warmup_s,
        "audit_verify": verify,
        "loadavg": {"start": [round(x, 2) for x in loadavg_start], "end": [round(x, 2) for x in loadavg_end]},
    }
    result["failures"] = _verdict(result)
    result["pass"] = not result["failures"]
    return result


def _audit_verify(net: LocalAlliance) -> dict[str, Any]:
    assert net.auditor_home is not None
    done = subprocess.run([sys.executable, "-m", "alliance_cli.main", "--gateway", ",".join(net.gateway_endpoints), "audit",
                           "verify", "--home", str(net.auditor_home), "--json"], capture_output=True, text=True, timeout=1800)
    try:
        doc = json.loads(done.stdout)
    except ValueError:
        doc = {}
    out = {"exit_code": done.returncode, "ok": doc.get("ok") is True, "entries": doc.get("entries"),
           "refusals": doc.get("refusals"), "unverified_refusals": doc.get("unverified_refusals"),
           "witnessed_size": doc.get("witnessed_size")}
    if done.returncode != 0:
        out["error"] = (doc.get("reason") or done.stderr.strip().splitlines()[-1:] or ["no output"])
    return out


def _verdict(r: dict[str, Any]) -> list[str]:
    failures = soak_log.log_ok(r["log"])
    q = r["queries"]
    if q["error_rate"] >= MAX_ERROR_RATE:
        failures.append(f"{q['errors']} of {q['offered']} queries failed ({100 * q['error_rate']:.2f} %, limit "
                        f"{100 * MAX_ERROR_RATE:.1f} %): {q['errors_by_reason']}")
    if r["kill"]["answered_while_down"] == 0:
        failures.append("no query was answered while gateway-1 was down: the other replica did not carry the load")
    for p in r["rss"]:
        if p["drift_mb"] >= MAX_RSS_DRIFT_MB:
            failures.append(f"{p['process']} (pid {p['pid']}) RSS grew {p['drift_mb']} MB after warm-up "
                            f"(limit {MAX_RSS_DRIFT_MB:.0f} MB)")
    if r["audit_verify"]["exit_code"] != 0 or not r["audit_verify"]["ok"]:
        failures.append(f"audit verify exited {r['audit_verify']['exit_code']}: {r['audit_verify'].get('error')}")
    return failures


def summary_lines(r: dict[str, Any]) -> Iterator[str]:
    q, lat, log = r["queries"], r["latency_ms"], r["log"]
    yield (f"soak: {r['seconds']} s at {r['offered_per_s']} queries/s offered ({100 * r['load_fraction']:.0f} % of a measured "
           f"{r['capacity']['queries_per_s']}), {r['members']} members, 2 gateway replicas on PostgreSQL ({r['database']})")
    yield (f"  queries: {q['offered']} offered, {q['acknowledged']} acknowledged, {q['errors']} errors "
           f"({100 * q['error_rate']:.3f} %), {q['interrupted_by_kill']} interrupted by the kill (refused as replays), "
           f"{q['failed_over']} failed over; p50 {lat['p50']} ms, p99 {lat['p99']} ms")
    yield (f"  kill: gateway-1 SIGKILLed at {r['kill']['at_s']} s, serving again at {r['kill']['serving_again_at_s']} s; "
           f"{r['kill']['answered_while_down']} queries answered meanwhile")
    yield (f"  log: {log['entries']} entries, gap-free {log['gap_free']}, {log['acknowledged_found']}/{log['acknowledged']} "
           f"acknowledged queries found at their leaf index, {len(log['query_ids_fanned_out_twice'])} query ids fanned out twice")
    for p in r["rss"]:
        yield f"  RSS {p['process']} (pid {p['pid']}): {p['first_mb']} → {p['last_mb']} MB ({p['drift_mb']:+} MB)"
    yield f"  audit verify: exit {r['audit_verify']['exit_code']}"
    yield "PASS" if r["pass"] else "FAIL: " + "; ".join(r["failures"])
