"""`alliance bench` (SPEC §8): the real thing — gateway and N member nodes as
separate processes over loopback mutual TLS — measured end to end from the
querier's side, and the naive baseline (phe defaults: every figure encrypted
separately with fresh randomness, no packing, no precomputation) run on the
same machine in the same invocation, one process per member, for a ratio."""
from __future__ import annotations

import hashlib
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import phe

from alliance import masks, report, synthetic
from alliance_cli.localnet import LocalAlliance
from alliance_member import book, book_status
from alliance_member.querier import Consent, Querier, Subject, today_shanghai

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
LIGHT_LOAD_QPS = 2


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a live process and its reaped children, from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    return sum(int(x) for x in fields[11:15]) / CLOCK_TICKS


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, round(q / 100 * (len(sorted_values) - 1))))
    return sorted_values[k]


def _latency_summary(latencies_s: list[float], wall_s: float) -> dict[str, float]:
    ms = sorted(x * 1000 for x in latencies_s)
    return {
        "queries": len(ms),
        "p50_ms": round(percentile(ms, 50), 2),
        "p95_ms": round(percentile(ms, 95), 2),
        "p99_ms": round(percentile(ms, 99), 2),
        "mean_ms": round(statistics.fmean(ms), 2),
        "queries_per_s": round(len(ms) / wall_s, 2),
    }


def run(member_counts: list[int], *, queries: int, concurrency: int, naive_queries: int, echo: Callable[[str], None],
        mask_mode: str = "djn") -> list[dict[str, Any]]:
    results = []
    os.environ["ALLIANCE_MASKS"] = mask_mode   # read by the member processes (alliance.masks.mode_from_env)
    mask_costs = masks.measure_costs()
    echo(f"masks ({mask_mode} in the members): plain r^n {mask_costs['plain_mask_ms']} ms CPU, DJN "
         f"{mask_costs['djn_mask_ms']} ms CPU (ℓ = {mask_costs['exponent_bits']} bits, w = {mask_costs['window_bits']}); "
         f"table {mask_costs['table_mib']} MiB built in {mask_costs['table_build_ms']} ms per querier key")
    for n in member_counts:
        echo(f"\n== {n} members ==")
        with tempfile.TemporaryDirectory(prefix="alliance-bench-") as tmp:
            ours = _bench_ours(Path(tmp), n, queries=queries, concurrency=concurrency, echo=echo)
        naive = _bench_naive(n, queries=naive_queries, concurrency=concurrency, echo=echo)
        ratio = {
            "p50_speedup": round(naive["sequential"]["p50_ms"] / ours["sequential"]["p50_ms"], 1),
            "throughput_speedup": round(ours["concurrent"]["queries_per_s"] / naive["concurrent"]["queries_per_s"], 1),
            "cpu_per_query_ratio": round(naive["cpu_ms_per_query"] / ours["cpu_ms_per_query"], 1),
        }
        echo(f"speed-up over naive: p50 ×{ratio['p50_speedup']}, throughput ×{ratio['throughput_speedup']}, "
             f"CPU per query ×{ratio['cpu_per_query_ratio']}")
        ours["mask_mode"] = mask_mode
        ours["masks"] = mask_costs
        results.append({"members": n, "ours": ours, "naive": naive, "speedup": ratio})
    return results


def _bench_ours(root: Path, n: int, *, queries: int, concurrency: int, echo: Callable[[str], None]) -> dict[str, Any]:
    ids = [f"m{i:02d}" for i in range(n)]
    as_of = today_shanghai()
    dataset = synthetic.write_alliance_dataset(root / "data", ids, seed=8, as_of=as_of, book_date=as_of)  # fresh books (SPEC §10)
    echo(f"starting gateway + {n} member processes (mutual TLS, SQLite)…")
    with LocalAlliance(root, ids, with_auditor=False) as alliance:
        for mid in ids:
            for kind in ("loans", "flags", "scores"):
                book.import_book(alliance.members[mid].home, root / "data" / mid / f"{kind}.csv", kind)
            book_status.refresh(alliance.members[mid].home)  # SPEC §10: as `alliance member import` does
        # SPEC §8: every query a fresh subject, so no §5.3 pin decides who is asked. Known subjects first
        # (members hold records for them), then valid subjects no book holds; the work per query is the same.
        seq_n = max(10, queries // 4)
        known = [Subject(s.id_type, s.canonical_id) for s in dataset.subjects]
        unknown = [Subject(s.id_type, s.canonical_id) for s in synthetic.unknown_subjects(random.Random(8), 5 + seq_n + queries)]
        fresh = iter(known + unknown)
        consent = Consent("BENCH-CONSENT", hashlib.sha256(b"bench").digest())
        querier = Querier(alliance.members[ids[0]].home)
        pids = [alliance.gateway_process.pid] + [m.process.pid for m in alliance.members.values()]

        def one(_: int) -> float:
            subject = next(fresh)  # atomic under the GIL: no subject is used twice
            start = time.perf_counter()
            querier.query(subject, purpose="LOAN_APPROVAL", consent=consent, as_of=as_of)
            return time.perf_counter() - start

        for i in range(5):  # warm up channels, mask pools and caches
            one(i)
        time.sleep(2.0)  # let the members' mask pools refill
        # Light load: an open loop at LIGHT_LOAD_QPS, well below capacity, so
        # masks are precomputed between queries as they would be in service.
        t0 = time.perf_counter()
        sequential = []
        for i in range(seq_n):
            time.sleep(max(0.0, t0 + i / LIGHT_LOAD_QPS - time.perf_counter()))
            sequential.append(one(i))
        seq_summary = _latency_summary(sequential, time.perf_counter() - t0)
        echo(f"ours, light load ({LIGHT_LOAD_QPS} queries/s offered): {_fmt(seq_summary)}")
        answerers = [m.process.pid for mid, m in alliance.members.items() if mid != ids[0]]  # the querier's own node is never asked

        def party_cpu() -> dict[str, float]:
            return {"querier": time.process_time(), "gateway": _cpu_seconds(alliance.gateway_process.pid),
                    "member": sum(_cpu_seconds(p) for p in answerers)}

        cpu0 = sum(_cpu_seconds(p) for p in pids) + time.process_time()
        parties0 = party_cpu()
        t0 = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            concurrent = list(pool.map(one, range(queries)))
        wall = time.perf_counter() - t0
        cpu = sum(_cpu_seconds(p) for p in pids) + time.process_time() - cpu0
        parties1 = party_cpu()
        # SPEC §8: querier and gateway per query, member per answer given
        per_party = {"querier": round((parties1["querier"] - parties0["querier"]) / queries * 1000, 2),
                     "gateway": round((parties1["gateway"] - parties0["gateway"]) / queries * 1000, 2),
                     "member": round((parties1["member"] - parties0["member"]) / (queries * len(answerers)) * 1000, 2)}
        echo(f"CPU per party: querier {per_party['querier']} ms/query, gateway {per_party['gateway']} ms/query, "
             f"member {per_party['member']} ms/answer")
        conc_summary = _latency_summary(concurrent, wall)
        echo(f"ours, {concurrency} concurrent: {_fmt(conc_summary)}; CPU {cpu / queries * 1000:.1f} ms/query (all processes)")
        security = _security_overhead(alliance, n)
        echo(f"security overhead: {security['signature_ms_per_query']} ms of Ed25519 work per query "
             f"({security['signatures_per_query']} signs/verifies), mutual-TLS handshake {security['tls_handshake_ms']} ms "
             "per new channel (channels are reused, so 0 per query after the first)")
        querier.close()
    return {"sequential": seq_summary, "concurrent": conc_summary, "cpu_ms_per_query": round(cpu / queries * 1000, 2),
            "cpu_ms_per_party": per_party, "security": security}


def _security_overhead(alliance: LocalAlliance, n: int) -> dict[str, float]:
    """What the trust layer costs per query: 1 querier signature, 1 + (n−1)
    verifications of it (gateway and members), n−1 answer signatures and n−1
    verifications of them at the gateway; and a fresh mutual-TLS handshake."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from alliance import pki, transport
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    key = Ed25519PrivateKey.generate()
    msg = os.urandom(300)
    rounds = 500
    # CPU time, not wall time: the members' mask refills may still be running.
    t0 = time.process_time()
    for _ in range(rounds):
        sig = key.sign(msg)
    sign_s = (time.process_time() - t0) / rounds
    public = key.public_key()
    t0 = time.process_time()
    for _ in range(rounds):
        public.verify(sig, msg)
    verify_s = (time.process_time() - t0) / rounds
    signs, verifies = 1 + (n - 1), 1 + (n - 1) + (n - 1)
    home = alliance.members[alliance.member_ids[0]].home
    handshakes = []
    for _ in range(10):
        channel = transport.gateway_channel(alliance.gateway_endpoint, pki.read_private_file(home / "tls.key"),
                                           (home / "tls.crt").read_bytes(), (home / "ca.crt").read_bytes())
        t0 = time.perf_counter()
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        handshakes.append(time.perf_counter() - t0)
        channel.close()
    return {
        "signatures_per_query": signs + verifies,
        "signature_ms_per_query": round((signs * sign_s + verifies * verify_s) * 1000, 3),
        "tls_handshake_ms": round(statistics.median(handshakes) * 1000, 2),
    }


# -- the naive baseline ---------------------------------------------------

_NAIVE_KEY: phe.PaillierPublicKey | None = None


def _naive_member_init(n: int) -> None:
    global _NAIVE_KEY
    _NAIVE_KEY = phe.PaillierPublicKey(n)


def _naive_member_answer(figures: list[int]) -> list[tuple[int, int]]:
    """A member the naive way: each figure its own encryption, fresh r each time."""
    assert _NAIVE_KEY is not None
    return [(c.ciphertext(be_secure=True), c.exponent) for c in (_NAIVE_KEY.encrypt(v) for v in figures)]


def _bench_naive(n: int, *, queries: int, concurrency: int, echo: Callable[[str], None]) -> dict[str, Any]:
    public, private = phe.generate_paillier_keypair(n_length=2048)
    figures = [[(i * 7 + j) % 5 for j in range(len(report.REPORT_FIELDS))] for i in range(n)]
    with ProcessPoolExecutor(max_workers=n, initializer=_naive_member_init, initargs=(public.n,)) as members:
        list(members.map(_naive_member_answer, figures))  # start the processes

        def one(_i: int) -> float:
            start = time.perf_counter()
            answers = list(members.map(_naive_member_answer, figures))
            totals = []
            for slot in range(len(report.REPORT_FIELDS)):
                acc = phe.EncryptedNumber(public, answers[0][slot][0], answers[0][slot][1])
                for member in answers[1:]:
                    acc = acc + phe.EncryptedNumber(public, member[slot][0], member[slot][1])
                totals.append(private.decrypt(acc))
            return time.perf_counter() - start

        t0 = time.perf_counter()
        sequential = [one(i) for i in range(queries)]
        seq_summary = _latency_summary(sequential, time.perf_counter() - t0)
        echo(f"naive, light load (1 at a time): {_fmt(seq_summary)}")
        cpu0 = _children_cpu(members) + time.process_time()
        t0 = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            concurrent = list(pool.map(one, range(queries)))
        wall = time.perf_counter() - t0
        cpu = _children_cpu(members) + time.process_time() - cpu0
    conc_summary = _latency_summary(concurrent, wall)
    echo(f"naive, {concurrency} concurrent: {_fmt(conc_summary)}; CPU {cpu / queries * 1000:.1f} ms/query")
    return {"sequential": seq_summary, "concurrent": conc_summary, "cpu_ms_per_query": round(cpu / queries * 1000, 2)}


def _children_cpu(pool: ProcessPoolExecutor) -> float:
    return sum(_cpu_seconds(p) for p in getattr(pool, "_processes", {}) or {})


def _fmt(s: dict[str, float]) -> str:
    return f"p50 {s['p50_ms']} ms, p95 {s['p95_ms']} ms, p99 {s['p99_ms']} ms, {s['queries_per_s']} queries/s"
