"""`alliance bench` (SPEC §8): the fixed `--json` shape, sane numbers, and the
naive baseline's crypto (alliance.naive). A short run with few queries on the
smallest alliance that can answer (a querier and k = 2 others): speed targets
are met in benchmarks, never asserted here."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from alliance import naive, paillier, report
from alliance.errors import CryptoError, SlotOverflow

from tests.test_paillier import keys  # noqa: F401 (the module-scoped 2048-bit key pair fixture)

PHASE_KEYS = {"queries", "p50_ms", "p95_ms", "p99_ms", "mean_ms", "queries_per_s"}
PARTIES = {"querier", "gateway", "member"}


def _check_side(side: dict, queries: int, light: int) -> None:
    assert {"sequential", "concurrent", "cpu_ms_per_query", "cpu_ms_per_party"} <= set(side)
    for phase, count in (("sequential", light), ("concurrent", queries)):
        s = side[phase]
        assert set(s) == PHASE_KEYS
        assert s["queries"] == count  # nothing refused
        assert 0 < s["p50_ms"] <= s["p95_ms"] <= s["p99_ms"] < 60_000
        assert s["queries_per_s"] > 0 and math.isfinite(s["mean_ms"])
    assert set(side["cpu_ms_per_party"]) == PARTIES
    assert all(v > 0 for v in side["cpu_ms_per_party"].values())
    # every party's CPU is inside the total (member is per answer, 2 answers per query here)
    assert side["cpu_ms_per_query"] >= side["cpu_ms_per_party"]["querier"] + side["cpu_ms_per_party"]["gateway"]


@pytest.mark.timeout(600)
def test_bench_json_shape_and_sane_numbers() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "alliance_cli.main", "bench", "--members", "3", "--queries", "6", "--light-queries", "3",
         "--concurrency", "2", "--naive-queries", "2", "--screen", "6", "--json"],
        capture_output=True, text=True, timeout=580,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads(out.stdout)  # stdout is the JSON document alone; progress went to stderr
    assert isinstance(results, list) and len(results) == 1
    r = results[0]
    assert r["members"] == 3
    assert {"members", "ours", "naive", "speedup", "screen"} <= set(r)
    _check_side(r["ours"], queries=6, light=3)
    _check_side(r["naive"], queries=2, light=2)
    assert r["naive"]["concurrency"] == 1 and r["naive"]["deadline_ms"] == 60_000
    assert set(r["speedup"]) == {"p50_speedup", "throughput_speedup", "cpu_per_query_ratio"}
    assert all(v > 0 for v in r["speedup"].values())
    # the naive member encrypts every figure with a fresh r^n: clearly more CPU per answer
    assert r["naive"]["cpu_ms_per_party"]["member"] > r["ours"]["cpu_ms_per_party"]["member"]
    assert set(r["screen"]) == {"subjects", "seconds", "subjects_per_s"}
    assert r["screen"]["subjects"] == 6 and r["screen"]["seconds"] > 0 and r["screen"]["subjects_per_s"] > 0
    assert "ours, light load" in out.stderr and "naive" in out.stderr
    # the querier's decryption floor is reported beside the mask costs: two 2048-bit
    # constant-time CRT exponentiations cost milliseconds, well above a DJN mask
    masks = r["ours"]["masks"]
    assert masks["decrypt_ms"] > masks["djn_mask_ms"] > 0 and "the querier's decryption" in out.stderr


def test_the_decryption_cost_is_measured_on_a_real_decryption(monkeypatch) -> None:
    from alliance import paillier
    from alliance_cli import bench

    calls = []
    real = paillier.PaillierPrivateKey.decrypt
    monkeypatch.setattr(paillier.PaillierPrivateKey, "decrypt", lambda self, c: calls.append(c) or real(self, c))
    assert bench.decrypt_cost_ms(paillier.generate_keypair(paillier.MIN_KEY_BITS)[1], rounds=3) > 0
    assert len(calls) == 4  # one warm-up, then the rounds timed


def test_naive_round_trip_slot_by_slot(keys) -> None:
    pk, sk = keys
    fields = len(report.REPORT_FIELDS)
    a = [(1 << 64) - 1 if i == 0 else i for i in range(fields)]
    b = [(1 << 64) - 1 if i == 0 else 7 for i in range(fields)]
    ca, cb = naive.encrypt_figures(pk, a), naive.encrypt_figures(pk, b)
    assert len(ca) == len(cb) == fields * pk.ciphertext_width  # fixed width, zeros included
    assert naive.encrypt_figures(pk, a) != ca  # fresh randomness every time
    total = naive.encode(pk, naive.add(pk, [naive.decode(pk, ca, fields), naive.decode(pk, cb, fields)]))
    assert naive.decrypt_figures(sk, total, fields, 2) == [x + y for x, y in zip(a, b)]
    with pytest.raises(SlotOverflow):
        naive.decrypt_figures(sk, total, fields, 1)  # slot 0 holds 2^65 − 2: not one figure below 2^64
    with pytest.raises(CryptoError):
        naive.decode(pk, ca[:-1], fields)
    with pytest.raises(SlotOverflow):
        naive.encrypt_figures(pk, [1 << 64])


def test_naive_is_off_unless_the_bench_sets_it(monkeypatch) -> None:
    monkeypatch.delenv(naive.ENV, raising=False)
    assert not naive.enabled()
    monkeypatch.setenv(naive.ENV, "naive")
    assert naive.enabled()
    assert paillier.FIGURE_BOUND == 1 << 64


def _children(pid: int) -> set[int]:
    """Every live descendant of ``pid`` (from /proc)."""
    import os

    parent_of: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parent_of[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, parent in parent_of.items() if parent in frontier} - found
        found |= frontier
    return found


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline") as f:
            return f.read().replace("\0", " ")
    except OSError:
        return ""  # gone meanwhile


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.e2e
def test_sigterm_during_a_bench_stops_every_process_it_started() -> None:
    """A SIGTERM (a CI timeout, `kill`) must not orphan the gateway and the
    member nodes: they would keep cutting witness checkpoints and refreshing
    feeds, and skew every later measurement on the box."""
    import signal
    import time

    proc = subprocess.Popen([sys.executable, "-m", "alliance_cli.main", "bench", "--members", "3", "--queries", "5000",
                             "--light-queries", "1", "--naive-queries", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 180
        started: set[int] = set()
        while len(started) < 4:  # the gateway and three members
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline, "the bench never started its processes"
            started = {p for p in _children(proc.pid) if " serve " in _cmdline(p)}
            time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        time.sleep(0.5)
        assert [p for p in started if _alive(p)] == [], "SIGTERM left processes the bench started running"
    finally:
        if proc.poll() is None:
            proc.kill()
