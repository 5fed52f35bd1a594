"""The documented command-line path, end to end, as an operator and three
members would type it (SPEC §7): admin init, gateway serve, member keygen /
admin member add / member join, matching-key create / share / install,
member serve, import, query, precheck, screen — with the exit statuses."""
from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from datetime import date, datetime
from zoneinfo import ZoneInfo
from pathlib import Path

import pytest

from alliance import synthetic
from alliance_cli.localnet import free_port
from tests import independent
from tests.conftest import IN_CI, PG_URL, drop_pg_databases, pg_databases

pytestmark = pytest.mark.e2e
AS_OF = date(2026, 6, 30)
MEMBERS = ["bank-a", "bank-b", "bank-c"]


def run(*args: str, ok: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "alliance_cli.main", *args], capture_output=True, text=True, timeout=120)
    if ok:
        assert out.returncode == 0, f"{args}: {out.stderr}"
    return out


def serve(*args: str, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "alliance_cli.main", *args], stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def dbs(request):  # type: ignore[no-untyped-def]
    if request.param == "sqlite":
        yield {}
        return
    if not PG_URL:
        if IN_CI:
            pytest.fail("PostgreSQL is required under CI=true")
        pytest.skip("*** PostgreSQL not available: run ./dev test ***")
    urls, created = pg_databases(["gateway", *MEMBERS])
    yield urls
    drop_pg_databases(created)


def test_operator_and_members_from_the_command_line(tmp_path: Path, dbs: dict[str, str]) -> None:
    procs: list[subprocess.Popen] = []
    try:
        gw_port = free_port()
        admin, gw = tmp_path / "admin", tmp_path / "gw"
        init = ["admin", "init", "--home", str(admin), "--gateway-home", str(gw), "--listen", f"127.0.0.1:{gw_port}",
                "--name", "test.alliance", "--local"]
        run(*init, *(["--db", dbs["gateway"]] if dbs else []))
        assert (admin / "ca.key").exists() and not (gw / "ca.key").exists()
        assert run(*init, ok=False).returncode == 2  # never overwrites a CA
        procs.append(serve("gateway", "serve", "--home", str(gw), log=tmp_path / "gw.log"))
        fingerprints, homes = {}, {}
        for m in MEMBERS:
            home = tmp_path / m
            homes[m] = home
            port = free_port()
            out = run("member", "keygen", "--home", str(home), "--id", m, "--name", f"{m} Ltd", "--endpoint", f"127.0.0.1:{port}",
                      "--gateway", f"127.0.0.1:{gw_port}", *(["--db", dbs[m]] if dbs else []))
            fingerprints[m] = re.search(r"fingerprint: (\S+)", out.stdout).group(1)
            run("admin", "member", "add", "--home", str(admin), "--request", str(home / "join-request.bin"), "--out", str(tmp_path / f"{m}.bundle"))
            run("member", "join", "--home", str(home), "--bundle", str(tmp_path / f"{m}.bundle"))
        listing = json.loads(run("admin", "member", "list", "--home", str(admin), "--json").stdout)
        assert [r["member_id"] for r in listing] == MEMBERS and all(r["status"] == "active" for r in listing)
        assert {r["member_id"]: r["fingerprint"] for r in listing} == fingerprints
        check = re.search(r"check value: (\S+)", run("member", "matching-key", "create", "--home", str(homes["bank-a"])).stdout).group(1)
        _wait_for_port(gw_port)
        for m in MEMBERS[1:]:
            run("member", "matching-key", "share", "--home", str(homes["bank-a"]), "--to", m, "--fingerprint", fingerprints[m])
            bad = run("member", "matching-key", "install", "--home", str(homes[m]), "--from", "bank-a",
                      "--fingerprint", fingerprints[m], "--check-value", check, ok=False)
            assert bad.returncode == 4 and "fingerprint" in bad.stderr  # the sender's fingerprint must be confirmed
            run("member", "matching-key", "install", "--home", str(homes[m]), "--from", "bank-a",
                "--fingerprint", fingerprints["bank-a"], "--check-value", check)
        data = tmp_path / "data"
        today = datetime.now(ZoneInfo("Asia/Shanghai")).date()  # SPEC §10: the books are exported today, so fresh
        dataset = synthetic.write_alliance_dataset(data, MEMBERS, seed=11, as_of=AS_OF, book_date=today)
        for m in MEMBERS:
            for kind in ("loans", "flags", "scores"):
                out = run("member", "import", "--home", str(homes[m]), "--kind", kind, str(data / m / f"{kind}.csv"))
                if kind == "loans":  # the signed book status goes to the gateway after a loans import
                    loans = len(dataset.books[m].loans)
                    assert re.search(rf"^book status: book date {today}, {loans} loan\(s\); logged by the gateway at entry \d+$",
                                     out.stdout, re.M), out.stdout + out.stderr
            procs.append(serve("member", "serve", "--home", str(homes[m]), log=tmp_path / f"{m}.log"))
        listing = json.loads(run("admin", "member", "list", "--home", str(admin), "--json").stdout)
        assert {r["member_id"]: (r["book_date"], r["book_loans"]) for r in listing} == {
            m: (today.isoformat(), len(dataset.books[m].loans)) for m in MEMBERS}
        assert f"book as of {today}, {len(dataset.books['bank-a'].loans):,} loan(s)" in run(
            "admin", "member", "list", "--home", str(admin)).stdout
        for m in MEMBERS:
            _wait_for_port(int(json.loads((homes[m] / "member.json").read_text())["listen"].rsplit(":", 1)[1]))
        # one subject -> report, checked against the files
        s = max(dataset.subjects, key=lambda s: len(s.members))
        query = ["member", "query", "--home", str(homes["bank-a"]), "--id-type", s.id_type, "--id", s.canonical_id,
                 "--purpose", "LOAN_APPROVAL", "--consent-id", "C-9", "--consent-sha256", "cd" * 32, "--as-of", AS_OF.isoformat()]
        report = json.loads(_retry(lambda: run(*query, "--json")).stdout)
        assert report["members_asked"] == 2 and report["complete"] is True
        # SPEC §10: both answering books are dated today, and fresh for a report as of AS_OF (earlier)
        assert report["coverage"] == {"oldest_book_as_of": today.isoformat(), "stale_members": 0}
        expected = independent.expected_report(data, ["bank-b", "bank-c"], s.id_type, s.canonical_id, AS_OF)
        assert {k: v for k, v in report["report"].items() if k != "inquiries_30d"} == expected
        human = run(*query).stdout  # the human table: summary first, subject masked, own book excluded
        r = report["report"]
        first = human.splitlines()[0]
        if r["active_loans"]:
            assert first.startswith(f"borrows at {r['lenders_with_active_loans']} other lender"), first
            yuan = f"¥{r['outstanding_balance_fen'] // 100:,}.{r['outstanding_balance_fen'] % 100:02d} outstanding"
            assert yuan in first, first
        assert f"subject {s.id_type} {s.canonical_id[:6]}********{s.canonical_id[14:]}, as of {AS_OF}, purpose LOAN_APPROVAL" in human
        assert s.canonical_id not in human and "your own book is not included" in human
        assert "outstanding balance (¥)" in human
        assert f"coverage: oldest answering book as of {today}; no stale books" in human.splitlines()
        # precheck
        pre = json.loads(run("member", "precheck", *query[2:], "--amount", "1", "--json").stdout)
        assert set(pre) == {"query_id", "within_cap", "audit"} and pre["within_cap"] is True
        pre_human = run("member", "precheck", *query[2:], "--amount", "50000").stdout
        assert pre_human.startswith("yes: a new loan of ¥50,000.00 keeps ") and "within the cap of ¥1,000,000.00" in pre_human
        assert re.search(r"^query \S+$", pre_human, re.M)
        # screen: a CSV of subjects, one bad row that does not stop the batch
        subjects_csv = tmp_path / "subjects.csv"
        with subjects_csv.open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["id_type", "id_number"])
            for x in dataset.subjects[:5]:
                w.writerow([x.id_type, x.canonical_id])
            w.writerow(["RESIDENT_ID", "123"])
        out = run("member", "screen", "--home", str(homes["bank-a"]), "--input", str(subjects_csv), "--purpose", "LOAN_APPROVAL",
                  "--consent-id", "C-9", "--consent-sha256", "cd" * 32, "--as-of", AS_OF.isoformat(), ok=False)
        assert out.returncode == 3
        lines = [json.loads(line) for line in out.stdout.splitlines()]
        assert len(lines) == 6 and sum("error" in x for x in lines) == 1
        assert all(x["coverage"] == {"oldest_book_as_of": today.isoformat(), "stale_members": 0} for x in lines if "report" in x)
        assert out.stderr.strip().splitlines()[-1] == "5 screened, 1 failed, output in stdout"
        assert sorted(x["line"] for x in lines) == [2, 3, 4, 5, 6, 7]
        by_line = {x["line"]: x for x in lines}
        assert by_line[7]["error"].startswith(f"{subjects_csv}:7: id_number:") and by_line[7]["subject"] == "***"
        for i, subj in enumerate(dataset.subjects[:5]):
            assert by_line[i + 2]["subject"] == subj.canonical_id[:6] + "********" + subj.canonical_id[14:]
        # a bad --purpose or a bad file stops before the stream: one line, SPEC exit status
        bogus = run("member", "screen", "--home", str(homes["bank-a"]), "--input", str(subjects_csv), "--purpose", "BOGUS",
                    "--consent-id", "C-9", "--consent-sha256", "cd" * 32, ok=False)
        assert bogus.returncode == 2 and len(bogus.stderr.splitlines()) == 1 and "Traceback" not in bogus.stderr
        gbk = tmp_path / "gbk.csv"
        gbk.write_bytes(subjects_csv.read_bytes() + "RESIDENT_ID,张三\n".encode("gbk"))
        mixed = run("member", "screen", "--home", str(homes["bank-a"]), "--input", str(gbk), "--purpose", "LOAN_APPROVAL",
                    "--consent-id", "C-9", "--consent-sha256", "cd" * 32, "--as-of", AS_OF.isoformat(),
                    "--output", str(tmp_path / "screen.jsonl"), ok=False)
        assert mixed.returncode == 3 and "Traceback" not in mixed.stderr
        assert mixed.stderr.strip().splitlines()[-1] == f"5 screened, 2 failed, output in {tmp_path / 'screen.jsonl'}"
        got = {json.loads(x)["line"]: json.loads(x) for x in (tmp_path / "screen.jsonl").read_text().splitlines()}
        assert "not UTF-8" in got[8]["error"] and len(got) == 7
        for x, subj in zip(sorted((x for x in lines if "report" in x), key=lambda x: x["line"]), dataset.subjects[:5]):
            exp = independent.expected_report(data, ["bank-b", "bank-c"], subj.id_type, subj.canonical_id, AS_OF)
            assert {k: v for k, v in x["report"].items() if k != "inquiries_30d"} == exp
        # invalid import: exit 3, file:line: field: reason, nothing written
        bad = tmp_path / "bad.csv"
        rows = (data / "bank-a" / "loans.csv").read_text().splitlines()
        bad.write_text("\n".join([rows[0], rows[1].replace("ACTIVE", "OPEN", 1)]) + "\n")
        out = run("member", "import", "--home", str(homes["bank-a"]), "--kind", "loans", str(bad), ok=False)
        assert out.returncode == 3 and f"{bad}:2: status:" in out.stderr
        # SPEC §10: a book whose newest update is older than max_book_age_days may not query (exit 4), however
        # recently it was imported; it keeps answering
        old = tmp_path / "old.csv"
        cols = rows[0].split(",")
        first = next(r.split(",") for r in rows[1:] if r.split(",")[cols.index("opened_on")] <= "2026-01-05")
        first[cols.index("updated_on")] = "2026-01-05"
        old.write_text(rows[0] + "\n" + ",".join(first) + "\n")
        out = run("member", "import", "--home", str(homes["bank-a"]), "--kind", "loans", "--snapshot", "--allow-shrink", str(old))
        assert "book status: book date 2026-01-05, 1 loan(s); logged by the gateway" in out.stdout, out.stdout + out.stderr
        refused = run(*query, "--json", ok=False)
        assert refused.returncode == 4 and "stale_book" in refused.stderr and "stale since 2026-01-13" in refused.stderr, refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1
        other = json.loads(_retry(lambda: run("member", "query", "--home", str(homes["bank-b"]), *query[4:], "--json")).stdout)
        assert other["members_answered"] == 2  # bank-a still answers
        # bank-a's book (2026-01-05) is more than 7 days older than the report's as-of date: stale in coverage
        assert other["coverage"] == {"oldest_book_as_of": "2026-01-05", "stale_members": 1}
        # key rotation from the command line: endorsed by the current key, one pending at a time
        out = run("member", "rotate-keys", "--home", str(homes["bank-c"]))
        new_fingerprint = re.search(r"new fingerprint: (\S+)", out.stdout).group(1)
        assert new_fingerprint != fingerprints["bank-c"]
        assert run("member", "rotate-keys", "--home", str(homes["bank-c"]), ok=False).returncode == 2
        assert run("member", "rotate-keys", "--home", str(tmp_path / "nobody"), ok=False).returncode == 2
        run("admin", "member", "add", "--home", str(admin), "--request", str(homes["bank-c"] / "rotation" / "join-request.bin"),
            "--out", str(tmp_path / "bank-c.rotated.bundle"))
        run("member", "join", "--home", str(homes["bank-c"]), "--bundle", str(tmp_path / "bank-c.rotated.bundle"))
        shown = json.loads(run("admin", "member", "show", "--home", str(admin), "bank-c", "--json").stdout)
        assert shown["fingerprint"] == new_fingerprint and shown["status"] == "active"
        assert (shown["book_date"], shown["book_loans"]) == (today.isoformat(), len(dataset.books["bank-c"].loans))
        # an import while the gateway is unreachable succeeds and says the status could not be sent
        os.killpg(procs[0].pid, signal.SIGTERM)
        procs[0].wait(10)
        out = run("member", "import", "--home", str(homes["bank-b"]), "--kind", "loans", str(data / "bank-b" / "loans.csv"))
        assert out.returncode == 0 and "could not be sent to the gateway" in out.stderr and "sent again when" in out.stderr
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(10)


def _wait_for_port(port: int, timeout_s: float = 30) -> None:
    import socket

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise AssertionError(f"port {port} never opened")


def _retry(fn, attempts: int = 20):  # type: ignore[no-untyped-def]
    for _ in range(attempts - 1):
        try:
            return fn()
        except AssertionError:
            time.sleep(0.5)
    return fn()
