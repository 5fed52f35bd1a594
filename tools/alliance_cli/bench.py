"""`alliance bench` (SPEC §8): the gateway and N member nodes as separate
processes over loopback mutual TLS, measured end to end from the querier's
side; then the same processes and protocol with the naive baseline's crypto
(alliance.naive: phe defaults, a fresh encryption per figure, no packing, no
precomputation), a 60 s deadline and one querier at a time, for the ratios.

Every query is about a fresh subject (no §5.3 pin decides who is asked), the
quota is raised for the run, every v2 check is on (trust gate, witnesses,
receipts with inclusion and consistency proofs, answer journal), and the
bench fails when more than 0.1 % of the queries are refused."""
from __future__ import annotations

import contextlib
import hashlib
import os
import random
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from alliance import masks, naive, paillier, report, synthetic
from alliance.errors import AllianceError
from alliance_cli.bench_load import CpuMeter, check_refusals, closed_loop, open_loop
from alliance_cli.localnet import LocalAlliance
from alliance_member import book, book_status
from alliance_member.querier import Consent, Querier, Subject, today_shanghai

LIGHT_LOAD_QPS = 2          # SPEC §8 "sequential": an open loop offering 2 queries/s
NAIVE_DEADLINE_MS = 60_000  # SPEC §8: the naive baseline runs with a 60 s deadline, concurrency 1
BENCH_QUOTA = 10_000_000    # "quotas are raised for the run"
WITNESS_INTERVAL_S = 10.0   # the production witness cadence (SPEC §6.1), not the tests' 1 s
WARM_UP_QUERIES = 5


def run(member_counts: list[int], *, queries: int, light_queries: int, concurrency: int, naive_queries: int,
        screen: int = 0, echo: Callable[[str], None], mask_mode: str = "djn") -> list[dict[str, Any]]:
    """One object per member count, in the fixed SPEC §8 shape."""
    results = []
    os.environ["ALLIANCE_MASKS"] = mask_mode   # read by the member processes (alliance.masks.mode_from_env)
    pk, sk = paillier.generate_keypair(paillier.MIN_KEY_BITS)  # one 2048-bit key for both measurements
    # The bench's members answer one querier key, so their tables take the widest window (alliance.masks.budget).
    mask_costs = masks.measure_costs(pk, window_bits=masks.TableBudget().window())
    mask_costs["decrypt_ms"] = decrypt_cost_ms(sk)
    echo(f"masks ({mask_mode} in the members): plain r^n {mask_costs['plain_mask_ms']} ms CPU, DJN "
         f"{mask_costs['djn_mask_ms']} ms CPU (ℓ = {mask_costs['exponent_bits']} bits, w = {mask_costs['window_bits']}); "
         f"table {mask_costs['table_mib']} MiB built in {mask_costs['table_build_ms']} ms per querier key; "
         f"the querier's decryption {mask_costs['decrypt_ms']} ms CPU")
    for n in member_counts:
        echo(f"\n== {n} members (gateway + {n} member processes, mutual TLS, SQLite) ==")
        ours, screened = _measure(n, naive_crypto=False, light_queries=light_queries, queries=queries,
                                  concurrency=concurrency, screen=screen, echo=echo)
        ours["mask_mode"] = mask_mode
        ours["masks"] = mask_costs
        baseline, _ = _measure(n, naive_crypto=True, light_queries=naive_queries, queries=naive_queries,
                               concurrency=1, screen=0, echo=echo)
        ratio = {
            "p50_speedup": _ratio(baseline["sequential"]["p50_ms"], ours["sequential"]["p50_ms"]),
            "throughput_speedup": _ratio(ours["concurrent"]["queries_per_s"], baseline["concurrent"]["queries_per_s"]),
            "cpu_per_query_ratio": _ratio(baseline["cpu_ms_per_query"], ours["cpu_ms_per_query"]),
        }
        echo(f"speed-up over naive: p50 ×{ratio['p50_speedup']}, throughput ×{ratio['throughput_speedup']}, "
             f"CPU per query ×{ratio['cpu_per_query_ratio']}")
        result: dict[str, Any] = {"members": n, "ours": ours, "naive": baseline, "speedup": ratio}
        if screened is not None:
            result["screen"] = screened
        results.append(result)
    return results


def decrypt_cost_ms(sk: paillier.PaillierPrivateKey, rounds: int = 50) -> float:
    """CPU per report decryption (CRT, constant-time powmods) under ``sk``:
    a floor under the querier's CPU per query. Its powmods release the GIL,
    so GIL-sampling profilers do not see it; measured here directly."""
    pk = sk.public_key
    c = paillier.encrypt(pk, paillier.pack([1] * len(report.REPORT_FIELDS)), paillier.fresh_mask(pk))
    sk.decrypt(c)
    t0 = time.process_time()
    for _ in range(rounds):
        sk.decrypt(c)
    return round((time.process_time() - t0) / rounds * 1000, 2)


def _ratio(a: float, b: float) -> float:
    return round(a / b, 1) if b > 0 else float("nan")


@contextlib.contextmanager
def _crypto_env(naive_crypto: bool) -> Iterator[None]:
    """The member and gateway processes (and this process's querier) read
    ALLIANCE_CRYPTO at start (alliance.naive)."""
    before = os.environ.pop(naive.ENV, None)
    if naive_crypto:
        os.environ[naive.ENV] = naive.NAIVE
    try:
        yield
    finally:
        os.environ.pop(naive.ENV, None)
        if before is not None:
            os.environ[naive.ENV] = before


def _fresh_subjects(dataset: synthetic.Dataset, count: int, seed: int) -> Iterator[Subject]:
    """Subjects the members hold first, then valid subjects no book holds (the
    work per query is the same); never one twice."""
    seen: set[Subject] = set()
    rng = random.Random(seed)
    for s in dataset.subjects:
        subject = Subject(s.id_type, s.canonical_id)
        if subject not in seen:
            seen.add(subject)
            yield subject
    while True:
        for s in synthetic.unknown_subjects(rng, max(64, count)):
            subject = Subject(s.id_type, s.canonical_id)
            if subject not in seen:
                seen.add(subject)
                yield subject


def _measure(n: int, *, naive_crypto: bool, light_queries: int, queries: int, concurrency: int, screen: int,
             echo: Callable[[str], None]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    label = "naive" if naive_crypto else "ours"
    ids = [f"m{i:02d}" for i in range(n)]
    as_of = today_shanghai()
    with tempfile.TemporaryDirectory(prefix="alliance-bench-") as tmp, _crypto_env(naive_crypto):
        root = Path(tmp)
        dataset = synthetic.write_alliance_dataset(root / "data", ids, seed=8, as_of=as_of, book_date=as_of)  # fresh books (SPEC §10)
        echo(f"{label}: starting gateway + {n} member processes…")
        with LocalAlliance(root, ids, with_auditor=False, default_quota=BENCH_QUOTA, witness_interval_s=WITNESS_INTERVAL_S,
                           deadline_ms=NAIVE_DEADLINE_MS if naive_crypto else 2000) as alliance:
            for mid in ids:
                for kind in ("loans", "flags", "scores"):
                    book.import_book(alliance.members[mid].home, root / "data" / mid / f"{kind}.csv", kind)
                book_status.refresh(alliance.members[mid].home)  # SPEC §10: as `alliance member import` does
            subjects = _fresh_subjects(dataset, WARM_UP_QUERIES + light_queries + queries + screen, seed=8)
            consent = Consent("BENCH-CONSENT", hashlib.sha256(b"bench").digest())
            querier = Querier(alliance.members[ids[0]].home)
            answered: list[int] = []
            subjects_lock = threading.Lock()

            def one() -> None:
                with subjects_lock:  # a generator is not thread-safe: no subject is used twice
                    subject = next(subjects)
                answered.append(querier.query(subject, purpose="LOAN_APPROVAL", consent=consent, as_of=as_of)["members_answered"])

            try:
                warm = closed_loop(one, WARM_UP_QUERIES, 1)  # channels, caches, the members' first mask tables
                check_refusals(f"{label}, warm-up", WARM_UP_QUERIES, warm.refused)
                if not naive_crypto:
                    time.sleep(2.0)  # the members' mask pools refill, as they would between queries in service
                sequential = open_loop(one, light_queries, LIGHT_LOAD_QPS, max_in_flight=1 if naive_crypto else 32)
                check_refusals(f"{label}, light load", light_queries, sequential.refused)
                echo(f"{label}, light load ({LIGHT_LOAD_QPS} queries/s offered"
                     f"{', one at a time' if naive_crypto else ''}): {_fmt(sequential.summary())}")
                meter = CpuMeter(alliance.gateway_process.pid, [m.process.pid for m in alliance.members.values()],
                                 [m.process.pid for mid, m in alliance.members.items() if mid != ids[0]])
                del answered[:]
                concurrent = closed_loop(one, queries, concurrency)
                check_refusals(f"{label}, concurrent", queries, concurrent.refused)
                cpu, per_party = meter.per_query(queries, sum(answered))
                echo(f"{label}, {concurrency} concurrent: {_fmt(concurrent.summary())}; CPU {cpu} ms/query (all processes)")
                echo(f"{label}, CPU per party: querier {per_party['querier']} ms/query, gateway {per_party['gateway']} ms/query, "
                     f"member {per_party['member']} ms/answer")
                out: dict[str, Any] = {"sequential": sequential.summary(), "concurrent": concurrent.summary(),
                                       "cpu_ms_per_query": cpu, "cpu_ms_per_party": per_party,
                                       "concurrency": concurrency, "deadline_ms": NAIVE_DEADLINE_MS if naive_crypto else 2000}
                if screen:
                    meter.restart()
                    screened = _screen(querier, subjects, screen, consent, as_of, echo)
                    cpu, per_party = meter.per_query(screened["subjects"], screened["subjects"] * (n - 1))
                    echo(f"screening, CPU {cpu} ms/subject (all processes): querier {per_party['querier']}, gateway "
                         f"{per_party['gateway']} ms/subject, member {per_party['member']} ms/answer")
                else:
                    screened = None
                if not naive_crypto:
                    out["security"] = _security_overhead(alliance, n)
            finally:
                querier.close()
    return out, screened


def _screen(querier: Querier, subjects: Iterator[Subject], count: int, consent: Consent, as_of: Any,
            echo: Callable[[str], None]) -> dict[str, Any]:
    """SPEC §8 screening: ``count`` fresh subjects over one streamed call."""
    refused: list[str] = []
    done = 0
    t0 = time.perf_counter()
    rows = ((i + 1, next(subjects)) for i in range(count))
    for _line, result in querier.screen(rows, purpose="LOAN_APPROVAL", consent=consent, as_of=as_of):
        done += 1
        if isinstance(result, AllianceError):
            refused.append(f"{type(result).__name__}: {result}"[:300])
    seconds = time.perf_counter() - t0
    check_refusals("screening", count, refused)
    out = {"subjects": done, "seconds": round(seconds, 2), "subjects_per_s": round(done / seconds, 2) if seconds > 0 else 0.0}
    echo(f"screening: {done} subjects in {out['seconds']} s ({out['subjects_per_s']} subjects/s)")
    return out


def _security_overhead(alliance: LocalAlliance, n: int) -> dict[str, float]:
    """What the trust layer costs per query: 1 querier signature, 1 + (n−1)
    verifications of it (gateway and members), n−1 answer signatures and n−1
    verifications of them at the gateway; and a fresh mutual-TLS handshake."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from alliance import pki, signing, transport
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    key = Ed25519PrivateKey.generate()
    msg = os.urandom(300)
    rounds = 500
    # CPU time, not wall time: the members' mask refills may still be running.
    t0 = time.process_time()
    for _ in range(rounds):
        sig = key.sign(msg)
    sign_s = (time.process_time() - t0) / rounds
    public = key.public_key().public_bytes_raw()
    t0 = time.process_time()
    for _ in range(rounds):
        signing.ed25519_valid(public, sig, msg)  # the rule every party applies
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


def _fmt(s: dict[str, float]) -> str:
    return f"p50 {s['p50_ms']} ms, p95 {s['p95_ms']} ms, p99 {s['p99_ms']} ms, {s['queries_per_s']} queries/s"
