"""Benchmark `audit verify` on a large log (a measurement, not a timed test).

Builds a gateway database holding N query entries with K answering members
each (SPEC §6 format, written with the gateway's own ``audit_log.append`` and
``_query_entry``), every querier and member signature real Ed25519, then
times the auditor's full verification (structure, history and contents)
reading the entries straight from the database.

    .venv/bin/python tools/bench_audit.py --entries 100000 --members 10
    .venv/bin/python tools/bench_audit.py --db /tmp/audit-bench.db   # reuse a built log
    .venv/bin/python tools/bench_audit.py --append-cost [DB_URL ...]  # ms per committed append

Building 100,000 entries takes a few minutes (1.1 million signatures); the
database is kept for reruns."""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import select

from alliance import audit_entry, audit_verify, checkpoint, db, paillier, pki, protocol, signing
from alliance.v1 import alliance_pb2 as pb
from alliance_gateway import audit_log, schema
from alliance_gateway.service import _Context, _query_entry

ORIGIN = "bench.alliance/audit-log"
QUERY_SPACING_MS = 7_000  # 100,000 queries over about eight days


def _enrol(ca_key: Any, ca_cert: x509.Certificate, member_id: str, serial: int, start: datetime) -> tuple[pb.Credential, bytes, bytes]:
    """A real member credential; returns it with the Ed25519 private key
    (raw) and the Paillier key fingerprint."""
    keys = pki.generate_member_keys()
    pub, _ = paillier.generate_keypair(2048)
    request = pki.make_join_request(member_id=member_id, name=f"{member_id} lending", role="member",
                                    endpoint=f"127.0.0.1:{20000 + serial}", keys=keys, paillier_n=pub.to_bytes())
    body = pki.verify_join_request(request)
    tls = pki.issue_tls_certificate(ca_key, ca_cert, keys.tls_key.public_key(), member_id=member_id, role="member",
                                    not_before=start - timedelta(minutes=5), not_after=start + timedelta(days=365))
    cred = pki.issue_credential(ca_key=ca_key, join_body=body, tls_cert=tls, serial=serial,
                                not_before=int(start.timestamp()) - 300, not_after=int(start.timestamp()) + 365 * 86400)
    raw = keys.ed25519_key.private_bytes_raw()
    return cred, raw, pub.fingerprint()


def _queries(first: int, count: int, start_ms: int, members: list[tuple[str, int, bytes, bytes]]) -> list[tuple[int, dict[str, Any]]]:
    """Worker: ``count`` accepted queries, each asked of every other member,
    all answering, every signature real. Returns (receipt ms, entry fields)."""
    keys = {m: Ed25519PrivateKey.from_private_bytes(raw) for m, _, raw, _ in members}
    out = []
    for i in range(first, first + count):
        querier_id, serial, _, fingerprint = members[i % len(members)]
        received = start_ms + i * QUERY_SPACING_MS
        params = protocol.QueryParams(
            querier_id=querier_id, credential_serial=serial, subject_token=os.urandom(32), matching_key_epoch=1,
            purpose=protocol.PURPOSES[i % 3], consent_id=f"CONSENT-{i}", consent_sha256=os.urandom(32),
            as_of=date(2026, 6, 30), mode=pb.QUERY_MODE_REPORT, paillier_key_fingerprint=fingerprint, timestamp_ms=received - 120,
        )
        signed = protocol.build_signed_query(params, keys[querier_id])
        ctx = _Context(kind="query", peer_id=querier_id, query=signed, received_ms=received, body=protocol.parse_body(signed))
        ctx.asked = sorted(m for m, _, _, _ in members if m != querier_id)
        for m in ctx.asked:
            ciphertext = os.urandom(512)
            sig = signing.sign(keys[m], signing.MEMBER_ANSWER, protocol.answer_message(ctx.body, signed.body, ciphertext))
            ctx.receipts.append(pb.AnswerReceipt(member_id=m, ciphertext_sha256=signing.sha256(ciphertext), signature=sig))
        out.append((received, _query_entry(ctx, 0, "", "accepted", None, 2)))
    return out


def build(path: Path, entries: int, asked: int, workers: int) -> None:
    """Write the log: credentials first, then ``entries`` queries."""
    engine = db.make_engine(db.sqlite_url(path))
    schema.create_schema(engine)
    start = datetime.now(timezone.utc) - timedelta(days=20)
    ca_key, ca_cert = pki.create_ca("bench alliance CA")
    log_key = Ed25519PrivateKey.generate()
    members, credentials = [], []
    for serial in range(1, asked + 2):
        cred, raw, fp = _enrol(ca_key, ca_cert, f"lender-{serial:02d}", serial, start)
        members.append((f"lender-{serial:02d}", serial, raw, fp))
        credentials.append(cred)
    start_ms = int(start.timestamp() * 1000)
    with engine.begin() as conn:
        for n, cred in enumerate(credentials):
            body = pb.CredentialBody.FromString(cred.body)
            audit_log.append(conn, lambda seq, when, body=body, cred=cred: {
                "v": 1, "kind": "credential_issued", "seq": seq, "time": when, "member_id": body.member_id, "name": body.name,
                "role": "member", "serial": body.serial, "endpoint": body.endpoint, "fingerprint": body.member_fingerprint.hex(),
                "credential": cred.SerializeToString().hex(), "daily_quota": 100_000}, start_ms + n)
    query_start = start_ms + 60_000
    chunk = 1000
    started = time.perf_counter()
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_queries, i, min(chunk, entries - i), query_start, members) for i in range(0, entries, chunk)]
        for done, future in enumerate(futures, 1):
            with engine.begin() as conn:
                for received, fields in future.result():
                    audit_log.append(conn, lambda seq, when, fields=fields: {**fields, "seq": seq, "time": when}, received)
            if done % 10 == 0:
                print(f"  built {done * chunk:,} entries ({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    (path.parent / (path.name + ".keys.json")).write_text(json.dumps({
        "ca_cert": pki.cert_pem(ca_cert).decode(), "log_key": log_key.private_bytes_raw().hex()}))
    engine.dispose()


def _query_template(path: Path) -> dict[str, Any]:
    """A realistic query entry (10 signed answer receipts) from the built log."""
    if not path.exists():
        build(path, 1_000, 10, os.cpu_count() or 1)
    engine = db.make_engine(db.sqlite_url(path))
    with engine.connect() as conn:
        data = conn.execute(select(schema.log_entries.c.data).order_by(schema.log_entries.c.seq.desc()).limit(1)).scalar_one()
    engine.dispose()
    return audit_entry.decode(bytes(data))


def measure(path: Path, workers: int | None) -> dict[str, Any]:
    material = json.loads((path.parent / (path.name + ".keys.json")).read_text())
    ca_cert = x509.load_pem_x509_certificate(material["ca_cert"].encode())
    log_key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(material["log_key"]))
    engine = db.make_engine(db.sqlite_url(path))
    reader = audit_log.LogReader(engine, origin=ORIGIN, key_name=ORIGIN, signing_key=log_key)
    verifier = checkpoint.parse_verifier_key(checkpoint.verifier_key(ORIGIN, log_key.public_key()))
    size, note = reader.signed_checkpoint()
    cp = checkpoint.open_checkpoint(note, verifier)
    t = time.perf_counter()
    total_bytes = sum(len(d) for _, d in reader.entries(0, size))
    read_s = time.perf_counter() - t
    t = time.perf_counter()
    cpu0 = os.times()
    result = audit_verify.verify_log(reader.entries(0, size), cp, ca_cert, consistency_proof=reader.consistency_proof, workers=workers)
    wall = time.perf_counter() - t
    cpu1 = os.times()
    engine.dispose()
    return {
        "entries": result.entries, "bytes": total_bytes, "signatures_checked": result.signatures_checked,
        "workers": workers or os.cpu_count(), "cores": os.cpu_count(),
        "read_only_s": round(read_s, 2), "verify_s": round(wall, 2),
        "entries_per_s": round(result.entries / wall), "signatures_per_s": round(result.signatures_checked / wall),
        "cpu_main_s": round((cpu1.user - cpu0.user) + (cpu1.system - cpu0.system), 1),
        "cpu_workers_s": round((cpu1.children_user - cpu0.children_user) + (cpu1.children_system - cpu0.children_system), 1),
    }


def measure_append(db_url: str, template: dict[str, Any], sizes: list[int], samples: int) -> dict[str, Any]:
    """Cost of one durably committed append (its own transaction, as the
    gateway does per query) at growing log sizes: O(log n) means the cost
    barely moves from 1,000 to 100,000 entries."""
    engine = db.make_engine(db_url, durable=True)  # as the gateway opens its log
    schema.create_schema(engine)
    now_ms = 1_780_000_000_000
    built, out = 0, {}

    def build(seq: int, when: str) -> dict[str, Any]:
        return {**template, "seq": seq, "time": when}

    for size in sorted(sizes):
        while built < size:  # grow in bulk, 1,000 appends per transaction
            with engine.begin() as conn:
                for _ in range(min(1000, size - built)):
                    audit_log.append(conn, build, now_ms)
                    built += 1
        times = []
        for _ in range(samples):
            t = time.perf_counter()
            with engine.begin() as conn:
                audit_log.append(conn, build, now_ms)
            times.append(time.perf_counter() - t)
        built += samples
        times.sort()
        out[str(size)] = {"p50_ms": round(times[len(times) // 2] * 1000, 3),
                          "p95_ms": round(times[int(len(times) * 0.95)] * 1000, 3)}
    engine.dispose()
    return {"backend": engine.dialect.name, "entry_bytes": len(audit_entry.encode(build(0, audit_log.utc_timestamp(now_ms)))),
            "append_cost_by_log_size": out}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--members", type=int, default=10, help="members asked (and answering) per query")
    parser.add_argument("--db", type=Path, default=Path("/tmp/alliance-audit-bench.db"))
    parser.add_argument("--workers", type=int, nargs="*", default=[0], help="signature worker processes (0: all cores)")
    parser.add_argument("--rebuild", action="store_true")
    parser.add_argument("--append-cost", nargs="*", metavar="DB_URL",
                        help="measure the append cost instead (fresh databases; default a temporary SQLite file)")
    parser.add_argument("--append-sizes", type=int, nargs="*", default=[1_000, 100_000])
    args = parser.parse_args()
    if args.append_cost is not None:
        template = _query_template(args.db)
        with tempfile.TemporaryDirectory() as tmp:
            for url in args.append_cost or [db.sqlite_url(Path(tmp) / "append.db")]:
                print(json.dumps(measure_append(url, template, args.append_sizes, samples=300)))
        return
    if args.rebuild or not args.db.exists():
        args.db.unlink(missing_ok=True)
        print(f"building {args.entries:,} entries, {args.members} members per query, in {args.db} ...", file=sys.stderr)
        t = time.perf_counter()
        build(args.db, args.entries, args.members, os.cpu_count() or 1)
        print(f"built in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    for w in args.workers:
        print(json.dumps(measure(args.db, w or None)))


if __name__ == "__main__":
    main()
