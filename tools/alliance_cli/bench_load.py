"""Load shapes and measurements for `alliance bench` (SPEC §8): an open loop
at a fixed offered rate, closed-loop queriers, latency summaries, refusal
counting and CPU time per process from /proc."""
from __future__ import annotations

import os
import statistics
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from alliance.errors import AllianceError

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
MAX_REFUSED_FRACTION = 0.001  # SPEC §8: the bench fails if more than 0.1 % of queries are refused


def cpu_seconds(pid: int) -> float:
    """utime + stime of a live process and its reaped children, from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    return sum(int(x) for x in fields[11:15]) / CLOCK_TICKS


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank on the sorted values (NaN when there are none)."""
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, round(q / 100 * (len(sorted_values) - 1))))
    return sorted_values[k]


def latency_summary(latencies_s: list[float], wall_s: float) -> dict[str, float]:
    """The SPEC §8 keys of one phase: queries answered, p50/p95/p99/mean (ms), queries/s."""
    ms = sorted(x * 1000 for x in latencies_s)
    return {
        "queries": len(ms),
        "p50_ms": round(percentile(ms, 50), 2),
        "p95_ms": round(percentile(ms, 95), 2),
        "p99_ms": round(percentile(ms, 99), 2),
        "mean_ms": round(statistics.fmean(ms), 2) if ms else float("nan"),
        "queries_per_s": round(len(ms) / wall_s, 2) if wall_s > 0 else 0.0,
    }


@dataclass
class Phase:
    """What one phase measured: latencies of answered queries, refusals."""

    latencies_s: list[float] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def run_one(self, query: Callable[[], object]) -> None:
        start = time.perf_counter()
        try:
            query()
        except AllianceError as exc:
            with self._lock:
                self.refused.append(f"{type(exc).__name__}: {exc}"[:300])
            return
        elapsed = time.perf_counter() - start
        with self._lock:
            self.latencies_s.append(elapsed)

    def summary(self) -> dict[str, float]:
        return latency_summary(self.latencies_s, self.wall_s)


def open_loop(query: Callable[[], object], count: int, rate_per_s: float, *, max_in_flight: int = 32) -> Phase:
    """``count`` queries offered at ``rate_per_s`` whatever the answers' pace
    (a query is sent on schedule even while earlier ones are in flight, up to
    ``max_in_flight``; with 1, the next waits for the previous one)."""
    phase = Phase()
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_in_flight) as pool:
        slots = threading.Semaphore(max_in_flight)
        for i in range(count):
            time.sleep(max(0.0, t0 + i / rate_per_s - time.perf_counter()))
            slots.acquire()

            def task() -> None:
                try:
                    phase.run_one(query)
                finally:
                    slots.release()

            pool.submit(task)
    phase.wall_s = time.perf_counter() - t0
    return phase


def closed_loop(query: Callable[[], object], count: int, concurrency: int) -> Phase:
    """``concurrency`` queriers, each sending its next query as soon as its
    previous one is answered, until ``count`` queries were sent."""
    phase = Phase()
    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(lambda _i: phase.run_one(query), range(count)))
    phase.wall_s = time.perf_counter() - t0
    return phase


class CpuMeter:
    """CPU seconds per party over an interval: the querier is this process
    (``time.process_time``), the others are read from /proc."""

    def __init__(self, gateway_pid: int, member_pids: Iterable[int], answering_pids: Iterable[int]) -> None:
        self.gateway_pid = gateway_pid
        self.member_pids = list(member_pids)
        self.answering_pids = list(answering_pids)
        self._start = self._now()

    def _now(self) -> dict[str, float]:
        members = {p: cpu_seconds(p) for p in self.member_pids}
        return {
            "querier": time.process_time(),
            "gateway": cpu_seconds(self.gateway_pid),
            "member": sum(members[p] for p in self.answering_pids),
            "all_members": sum(members.values()),
        }

    def restart(self) -> None:
        self._start = self._now()

    def per_query(self, queries: int, answers: int) -> tuple[float, dict[str, float]]:
        """(CPU ms per query over every process, {querier, gateway: ms per
        query; member: ms per answer given}) since the start (SPEC §8)."""
        now = self._now()
        d = {k: now[k] - self._start[k] for k in now}
        total = d["querier"] + d["gateway"] + d["all_members"]
        per_party = {
            "querier": round(d["querier"] / max(1, queries) * 1000, 2),
            "gateway": round(d["gateway"] / max(1, queries) * 1000, 2),
            "member": round(d["member"] / max(1, answers) * 1000, 2),
        }
        return round(total / max(1, queries) * 1000, 2), per_party


def check_refusals(what: str, sent: int, refused: list[str]) -> None:
    """SPEC §8: more than 0.1 % refused fails the bench (with the first reasons)."""
    if sent and len(refused) > MAX_REFUSED_FRACTION * sent:
        reasons = "; ".join(sorted(set(refused))[:3])
        raise BenchFailed(f"{what}: {len(refused)} of {sent} queries refused (more than 0.1 %): {reasons}")


class BenchFailed(AllianceError):
    exit_code = 1
