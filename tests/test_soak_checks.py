"""The soak's verdict pieces on hand-made inputs (no processes): its own
reading of the log, the RSS drift rule and the pass/fail lines."""
from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import create_engine, text

from alliance_cli import soak, soak_log


def _db(tmp_path: Path, entries: list[dict], head: int | None = None) -> str:
    url = f"sqlite:///{tmp_path / 'gw.db'}"
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE log_head (id INTEGER PRIMARY KEY, size INTEGER)"))
        conn.execute(text("CREATE TABLE log_entries (seq INTEGER, data BLOB)"))
        conn.execute(text("INSERT INTO log_head VALUES (1, :n)"), {"n": len(entries) if head is None else head})
        for e in entries:
            conn.execute(text("INSERT INTO log_entries VALUES (:s, :d)"), {"s": e["seq"], "d": json.dumps(e).encode()})
    engine.dispose()
    return url


def _q(seq: int, qid: str, *, outcome: str = "accepted", reason: str | None = None, asked: list[str] | None = None,
       querier: str = "m00") -> dict:
    return {"seq": seq, "kind": "query", "query_id": qid, "querier_id": querier, "outcome": outcome, "reason": reason,
            "members_asked": ["m01", "m02"] if asked is None else asked}


def test_a_sound_log_with_a_replay_passes(tmp_path: Path) -> None:
    entries = [{"seq": 0, "kind": "gateway_started"}, _q(1, "a"), _q(2, "a", outcome="refused", reason="replayed_query_id", asked=[]),
               _q(3, "b", querier="m01")]
    r = soak_log.check_log(_db(tmp_path, entries), [soak_log.Ack("m00", "a", 1), soak_log.Ack("m01", "b", 3)])
    assert (r["entries"], r["gap_free"], r["acknowledged_found"], r["replay_refusals"], r["gateway_started"]) == (4, True, 2, 1, 1)
    assert soak_log.log_ok(r) == []


def test_gaps_missing_acknowledgements_and_double_fan_outs_are_named(tmp_path: Path) -> None:
    entries = [_q(0, "a"), _q(2, "b"), _q(3, "b", outcome="refused", reason="too_few_answers"), _q(4, "c")]
    acks = [soak_log.Ack("m00", "a", 0), soak_log.Ack("m00", "c", 3), soak_log.Ack("m01", "b", 2), soak_log.Ack("m00", "z", 9)]
    r = soak_log.check_log(_db(tmp_path, entries, head=5), acks)
    assert r["gaps"] == [1] and r["gap_free"] is False
    assert r["acknowledged_found"] == 1  # c is at 4, not 3; b's querier is m00, not m01; z is nowhere
    assert r["acknowledged_missing"] == [{"query_id": "c", "leaf_index": 3}, {"query_id": "b", "leaf_index": 2},
                                         {"query_id": "z", "leaf_index": 9}]
    assert r["query_ids_fanned_out_twice"] == ["b"]
    problems = soak_log.log_ok(r)
    assert len(problems) == 3 and "3 acknowledged queries are not in the log" in problems[1]


def test_a_replay_that_reached_the_members_counts_as_a_second_fan_out(tmp_path: Path) -> None:
    entries = [_q(0, "a", outcome="refused", reason="replayed_query_id", asked=["m01"])]
    assert soak_log.check_log(_db(tmp_path, entries), [])["query_ids_fanned_out_twice"] == ["a"]


def test_rss_drift_is_first_to_last_after_each_incarnations_warm_up() -> None:
    sampler = soak.RssSampler(1.0, dict)
    sampler.series = {
        ("gateway-1", 10): [(0.0, 50.0), (5.0, 80.0), (20.0, 90.0), (30.0, 95.0)],  # warm from 0 + 10 s: 90 → 95
        ("gateway-1", 11): [(40.0, 30.0), (41.0, 60.0), (52.0, 70.0), (60.0, 71.0)],  # restarted, served from 41 s: 70 → 71
        ("m00", 12): [(0.0, 60.0), (30.0, 61.0)],  # one sample past warm-up: judged on all since warm_from
    }
    sampler.serving_since[11] = 41.0
    drift = {(d["process"], d["pid"]): d for d in sampler.drift(warm_from=0.0, warmup_s=10.0)}
    assert (drift[("gateway-1", 10)]["first_mb"], drift[("gateway-1", 10)]["drift_mb"]) == (90.0, 5.0)
    assert (drift[("gateway-1", 11)]["first_mb"], drift[("gateway-1", 11)]["drift_mb"], drift[("gateway-1", 11)]["peak_mb"]) == (70.0, 1.0, 71.0)
    assert (drift[("m00", 12)]["samples"], drift[("m00", 12)]["drift_mb"]) == (2, 1.0)


def _result(**over: object) -> dict:
    r = {"log": {"gap_free": True, "duplicate_seqs": 0, "misnumbered": [], "acknowledged": 10, "acknowledged_found": 10,
                 "acknowledged_missing": [], "query_ids_fanned_out_twice": [], "gaps": []},
         "queries": {"errors": 0, "offered": 2000, "error_rate": 0.0, "errors_by_reason": {}},
         "kill": {"answered_while_down": 5}, "rss": [{"process": "m00", "pid": 1, "drift_mb": 3.0}],
         "audit_verify": {"exit_code": 0, "ok": True}}
    r.update(over)
    return r


def test_the_verdict_names_each_failed_criterion() -> None:
    assert soak._verdict(_result()) == []
    assert soak._verdict(_result(queries={"errors": 1, "offered": 2000, "error_rate": 0.0005, "errors_by_reason": {"x": 1}})) == []
    failing = _result(queries={"errors": 2, "offered": 2000, "error_rate": 0.001, "errors_by_reason": {"too_few_answers": 2}},
                      rss=[{"process": "gateway-2", "pid": 7, "drift_mb": 50.0}], kill={"answered_while_down": 0},
                      audit_verify={"exit_code": 1, "ok": False, "error": "entry 3: bad"})
    lines = soak._verdict(failing)
    assert len(lines) == 4
    assert "2 of 2000 queries failed" in lines[0] and "gateway-2" in lines[2] and "exited 1" in lines[3]
