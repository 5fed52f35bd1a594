"""What people see (issue 9): the report's summary line, the screening file
reader, and every command walked with bad arguments and bad files — exit
status per SPEC §7, one line on stderr, no traceback, input files untouched,
no half-made state left behind."""
from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from alliance import report as report_lib
from alliance.errors import InvalidInput
from alliance_cli.output import summary_line
from alliance_member.querier import Subject, screen_rows

PERSON = "11010519491231002X"
OTHER = "440524198001010013"


def blank_report(**over: int) -> dict:
    r = {name: 0 for name in report_lib.REPORT_FIELDS}
    r["average_score"] = None
    r["inquiries_30d"] = 0
    r.update(over)
    return r


# ------------------------------------------------------------------ summary line

def test_summary_line_for_a_subject_with_loans_overdue_and_flags() -> None:
    r = blank_report(lenders_with_active_loans=2, active_loans=5, outstanding_balance_fen=46_951_105,
                     lenders_with_overdue=1, overdue_loans=1, overdue_amount_fen=120_000, dpd_1_30=1,
                     lenders_flagging_fraud=2)
    assert summary_line(r) == ("borrows at 2 other lenders: 5 active loans, ¥469,511.05 outstanding; "
                               "1 loan 1–30 days overdue; flagged for fraud by 2 lenders")


def test_summary_line_for_an_unknown_subject() -> None:
    assert summary_line(blank_report()) == "no record at the other lenders: no loans, nothing overdue, no flags"


def test_summary_line_singular_buckets_write_offs_and_no_active_loans() -> None:
    r = blank_report(lenders_with_active_loans=1, active_loans=1, outstanding_balance_fen=5,
                     overdue_loans=3, dpd_31_60=1, dpd_91_plus=2, written_off_loans=1, written_off_amount_fen=100_000,
                     lenders_flagging_malicious_default=1, inquiries_30d=3)
    assert summary_line(r) == ("borrows at 1 other lender: 1 active loan, ¥0.05 outstanding; "
                               "1 loan 31–60 days overdue, 2 loans 91+ days overdue; 1 loan written off (¥1,000.00); "
                               "flagged for malicious default by 1 lender; 3 loan applications at other lenders in the last 30 days")
    assert summary_line(blank_report(settled_loans=2, loans_opened_90d=2)) == "no active loans at other lenders (2 settled loans)"
    assert summary_line(blank_report(active_loans=2, lenders_with_active_loans=1, outstanding_balance_fen=100)) == (
        "borrows at 1 other lender: 2 active loans, ¥1.00 outstanding; nothing overdue")


# ------------------------------------------------------------------ screening file

def test_screen_rows_checks_the_header_before_anything_is_read(tmp_path: Path) -> None:
    cases = {
        "empty.csv": (b"", "empty file"),
        "noheader.csv": (f"RESIDENT_ID,{PERSON}\n".encode(), "missing column(s) id_type, id_number"),
        "wrong.csv": (f"type,number\nRESIDENT_ID,{PERSON}\n".encode(), "missing column(s) id_type, id_number"),
        "gbkheader.csv": ("证件类型,id_number\n".encode("gbk"), ":1: byte 0x"),
    }
    for name, (body, message) in cases.items():
        path = tmp_path / name
        path.write_bytes(body)
        with pytest.raises(InvalidInput, match=message.replace("(", r"\(").replace(")", r"\)")):
            screen_rows(path)  # raises on the call, not on iteration


def test_screen_rows_report_a_bad_row_by_line_and_go_on(tmp_path: Path) -> None:
    path = tmp_path / "subjects.csv"
    path.write_bytes(b"\xef\xbb\xbfid_number,ID_TYPE\n" + f"{PERSON},RESIDENT_ID\n".encode()
                     + b"123,RESIDENT_ID\n" + "张三\xff,RESIDENT_ID\n".encode("gbk", errors="ignore") + b"\xb7\xa8,RESIDENT_ID\n"
                     + b"\n" + f"{OTHER.lower()},PASSPORT\n".encode() + f"{OTHER},RESIDENT_ID\n".encode())
    rows = list(screen_rows(path))
    assert [r.line for r in rows] == [2, 3, 4, 5, 7, 8]
    assert rows[0].subject == Subject("RESIDENT_ID", PERSON) and rows[0].masked_id == "110105********002X"
    assert isinstance(rows[1].subject, InvalidInput) and str(rows[1].subject).startswith(f"{path}:3: id_number:")
    assert rows[1].masked_id == "***"
    for row in rows[2:4]:
        assert isinstance(row.subject, InvalidInput) and f"{path}:{row.line}: byte 0x" in str(row.subject)
        assert "not UTF-8" in str(row.subject)
    assert isinstance(rows[4].subject, InvalidInput) and str(rows[4].subject).startswith(f"{path}:7: id_type:")
    assert OTHER not in str(rows[4].subject) and OTHER not in rows[4].masked_id
    assert rows[5].subject == Subject("RESIDENT_ID", OTHER)


# ------------------------------------------------------------------ the walker

LOAN_HEADER = "loan_id,subject_type,id_type,id_number,product_type,principal,balance,annual_rate,term_months," \
              "repayment_method,opened_on,due_on,status,overdue_days,overdue_amount,guarantee_type,updated_on"


def loan_line(loan_id: str, status: str = "ACTIVE") -> str:
    return (f"{loan_id},PERSON,RESIDENT_ID,{PERSON},CONSUMER,10000.00,4000.00,12.5,12,EQUAL_INSTALLMENT,"
            f"2026-01-10,2027-01-10,{status},0,0,NONE,2026-06-01")


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "alliance_cli.main", *args], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=timeout, env={**__import__("os").environ, "COLUMNS": "80"})


def snapshot_tree(root: Path) -> dict[str, str]:
    """Every file under root with its SHA-256 (SQLite's -wal/-shm aside)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not p.name.endswith(("-wal", "-shm", "-journal"))}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("walk")
    home, admin = root / "m", root / "admin"
    assert cli("member", "keygen", "--home", str(home), "--id", "lender-a", "--name", "Lender A",
               "--endpoint", "127.0.0.1:7001").returncode == 0
    assert cli("member", "matching-key", "create", "--home", str(home)).returncode == 0
    assert cli("admin", "init", "--local", "--home", str(admin), "--gateway-home", str(root / "gw")).returncode == 0
    assert cli("admin", "member", "add", "--home", str(admin), "--request", str(home / "join-request.bin"),
               "--out", str(root / "a.bundle")).returncode == 0
    data = root / "data"
    data.mkdir()
    (data / "loans.csv").write_text("\n".join([LOAN_HEADER, *(loan_line(f"L{i}") for i in range(10))]) + "\n")
    assert cli("member", "import", "--home", str(home), "--kind", "loans", str(data / "loans.csv")).returncode == 0
    (data / "empty.csv").write_text("")
    (data / "header-only.csv").write_text(LOAN_HEADER + "\n")
    (data / "truncated.csv").write_text("\n".join([LOAN_HEADER, loan_line("L0")]) + "\n")
    (data / "bad-row.csv").write_text("\n".join([LOAN_HEADER, loan_line("L1"), loan_line("L2", status="OPEN")]) + "\n")
    (data / "loans.txt").write_text(LOAN_HEADER + "\n")
    import json
    row = dict(zip(LOAN_HEADER.split(","), loan_line("J1").split(",")))
    (data / "number.jsonl").write_text(json.dumps({**row, "term_months": 12}) + "\n")
    (data / "s-empty.csv").write_text("")
    (data / "s-noheader.csv").write_text(f"RESIDENT_ID,{PERSON}\n")
    (data / "s-wrong.csv").write_text(f"type,number\nRESIDENT_ID,{PERSON}\n")
    (data / "s-gbk.csv").write_bytes("证件类型,号码\n".encode("gbk"))
    (data / "s-ok.csv").write_text(f"id_type,id_number\nRESIDENT_ID,{PERSON}\n")
    (data / "consent.pdf").write_bytes(b"%PDF-1.4 consent")
    (data / "garbage.bin").write_bytes(b"\x00garbage")
    demo = data / "demo"
    for mid in ("lender-a", "lender-b", "lender-c"):
        (demo / mid).mkdir(parents=True)
    (demo / "lender-b" / "loans.csv").write_text("\n".join([LOAN_HEADER, loan_line("B1", status="OPEN")]) + "\n")
    (data / "demo2" / "lender-a").mkdir(parents=True)
    # a joined member without a matching key, and a joined auditor; no gateway runs
    joined, aud = root / "b", root / "aud"
    assert cli("member", "keygen", "--home", str(joined), "--id", "lender-b", "--name", "Lender B",
               "--endpoint", "127.0.0.1:7002").returncode == 0
    assert cli("admin", "member", "add", "--home", str(admin), "--request", str(joined / "join-request.bin"),
               "--out", str(root / "b.bundle")).returncode == 0
    assert cli("member", "join", "--home", str(joined), "--bundle", str(root / "b.bundle")).returncode == 0
    gone = root / "c"  # a revoked member
    assert cli("member", "keygen", "--home", str(gone), "--id", "lender-c", "--name", "Lender C",
               "--endpoint", "127.0.0.1:7003").returncode == 0
    assert cli("admin", "member", "add", "--home", str(admin), "--request", str(gone / "join-request.bin"),
               "--out", str(root / "c.bundle")).returncode == 0
    assert cli("admin", "member", "revoke", "--home", str(admin), "lender-c", "--yes").returncode == 0
    # a node that never answered has nothing to reconcile: exit 0, and no database is made for it
    assert cli(*DEAD_GATEWAY, "member", "reconcile", "--home", str(joined)).returncode == 0
    assert not (joined / "member.db").exists()
    # then its database exists, as after any use; now reconcile needs the gateway
    from alliance import db
    from alliance_member import store
    engine = db.make_engine(db.sqlite_url(joined / "member.db"))
    store.create_schema(engine)
    engine.dispose()
    assert cli(*DEAD_GATEWAY, "member", "reconcile", "--home", str(joined)).returncode == 5
    assert cli("member", "keygen", "--home", str(aud), "--id", "auditor-1", "--name", "Auditor", "--role", "auditor").returncode == 0
    assert cli("admin", "auditor", "add", "--home", str(admin), "--request", str(aud / "join-request.bin"),
               "--out", str(root / "aud.bundle")).returncode == 0
    assert cli("member", "join", "--home", str(aud), "--bundle", str(root / "aud.bundle")).returncode == 0
    # join requests the admin has not acted on yet
    assert cli("member", "keygen", "--home", str(root / "d"), "--id", "lender-d", "--name", "Lender D",
               "--endpoint", "127.0.0.1:7004").returncode == 0
    assert cli("member", "keygen", "--home", str(root / "aud2"), "--id", "auditor-2", "--name", "Auditor 2",
               "--role", "auditor").returncode == 0
    return {"root": root, "home": home, "admin": admin, "data": data, "joined": joined, "auditor": aud, "gateway": root / "gw"}


DEAD_GATEWAY = ["--gateway", "127.0.0.1:1"]  # nothing listens on port 1: "unreachable", exit 5
FPR = ":".join(["3f2a"] * 16)


# (name, args, exit status, text stderr must hold, several stderr lines allowed: per-row errors)
def walk_cases(w: dict[str, Path]) -> list[tuple[str, list[str], int, str, bool]]:
    h, d, a = str(w["home"]), w["data"], str(w["admin"])
    imp = ["member", "import", "--home", h, "--kind", "loans"]
    q = ["--home", h, "--id-type", "RESIDENT_ID", "--id", PERSON, "--consent-id", "C-1"]
    scr = ["member", "screen", "--home", h, "--purpose", "LOAN_APPROVAL", "--consent-id", "C-1",
           "--consent-file", str(d / "consent.pdf")]
    return [
        ("reject file is the input", [*imp, "--skip-invalid", "--reject-file", str(d / "bad-row.csv"), str(d / "bad-row.csv")], 2, "is the input file", False),
        ("reject file in a missing folder", [*imp, "--skip-invalid", "--reject-file", str(d / "nope" / "r.csv"), str(d / "bad-row.csv")], 2, "does not exist", False),
        ("reject file without --skip-invalid", [*imp, "--reject-file", str(d / "r.csv"), str(d / "bad-row.csv")], 2, "needs --skip-invalid", False),
        ("snapshot with skip-invalid", [*imp, "--snapshot", "--skip-invalid", str(d / "truncated.csv")], 2, "cannot be combined", False),
        ("snapshot of an empty file", [*imp, "--snapshot", str(d / "empty.csv")], 3, "empty", False),
        ("snapshot of a header-only file", [*imp, "--snapshot", str(d / "header-only.csv")], 3, "would remove 10 of 10", False),
        ("snapshot of a truncated file", [*imp, "--snapshot", str(d / "truncated.csv")], 3, "would remove 9 of 10", False),
        ("dry-run snapshot is guarded too", [*imp, "--snapshot", "--dry-run", str(d / "truncated.csv")], 3, "would remove 9 of 10", False),
        ("import a missing file", [*imp, str(d / "missing.csv")], 3, "no such file", False),
        ("import a .txt", [*imp, str(d / "loans.txt")], 3, "unsupported file type", False),
        ("import an invalid row", [*imp, str(d / "bad-row.csv")], 3, f"{d / 'bad-row.csv'}:3: status:", True),
        ("JSONL term_months as a number", [*imp, str(d / "number.jsonl")], 3, 'term_months: must be a JSON string such as "12"', True),
        ("import --kind bogus", [*imp[:-1], "bogus", str(d / "truncated.csv")], 2, "bogus", False),
        ("keygen with an invalid id", ["member", "keygen", "--home", str(w["root"] / "k1"), "--id", "Lender A!", "--name", "X",
                                       "--endpoint", "127.0.0.1:7002"], 2, "invalid member id", False),
        ("keygen without --endpoint", ["member", "keygen", "--home", str(w["root"] / "k2"), "--id", "lender-x", "--name", "X"], 2, "--endpoint", False),
        ("keygen with a bad endpoint", ["member", "keygen", "--home", str(w["root"] / "k3"), "--id", "lender-x", "--name", "X",
                                        "--endpoint", "nohost"], 2, "host:port", False),
        ("keygen over existing keys", ["member", "keygen", "--home", h, "--id", "lender-a", "--name", "X", "--endpoint", "127.0.0.1:7001"], 2, "already holds", False),
        ("bench --members abc", ["bench", "--members", "abc"], 2, "--members", False),
        ("bench --members 0", ["bench", "--members", "0"], 2, "too few", False),
        ("bench --members 1", ["bench", "--members", "1"], 2, "too few", False),
        ("bench --members 5,x", ["bench", "--members", "5,x"], 2, "--members", False),
        ("screen --purpose BOGUS", [*scr[:5], "BOGUS", *scr[6:], "--input", str(d / "s-ok.csv")], 2, "BOGUS", False),
        ("screen an empty file", [*scr, "--input", str(d / "s-empty.csv")], 3, "empty file", False),
        ("screen without header", [*scr, "--input", str(d / "s-noheader.csv")], 3, "missing column", False),
        ("screen a wrong header", [*scr, "--input", str(d / "s-wrong.csv")], 3, "missing column", False),
        ("screen a GBK file", [*scr, "--input", str(d / "s-gbk.csv")], 3, "not UTF-8", False),
        ("screen --output into a missing folder", [*scr, "--input", str(d / "s-ok.csv"), "--output", str(d / "nope" / "o.jsonl")], 2, "does not exist", False),
        ("screen --output over the input", [*scr, "--input", str(d / "s-ok.csv"), "--output", str(d / "s-ok.csv")], 2, "is the input", False),
        ("screen with both consents", [*scr, "--consent-sha256", "ab" * 32, "--input", str(d / "s-ok.csv")], 2, "exactly one", False),
        ("screen a missing file", [*scr, "--input", str(d / "missing.csv")], 2, "does not exist", False),
        ("screen before joining", [*scr, "--input", str(d / "s-ok.csv")], 2, "has not joined", False),
        ("query --purpose BOGUS", ["member", "query", *q, "--purpose", "BOGUS", "--consent-sha256", "ab" * 32], 2, "BOGUS", False),
        ("query a bad id", ["member", "query", *q[:5], "123", *q[6:], "--purpose", "LOAN_APPROVAL", "--consent-sha256", "ab" * 32], 3, "", False),
        ("query without consent", ["member", "query", *q, "--purpose", "LOAN_APPROVAL"], 2, "exactly one of --consent-file and --consent-sha256", False),
        ("query a bad consent hash", ["member", "query", *q, "--purpose", "LOAN_APPROVAL", "--consent-sha256", "xyz"], 3, "64 hex", False),
        ("query a bad --as-of", ["member", "query", *q, "--purpose", "LOAN_APPROVAL", "--consent-sha256", "ab" * 32, "--as-of", "2026-13-01"], 2, "YYYY-MM-DD", False),
        ("query before joining", ["member", "query", *q, "--purpose", "LOAN_APPROVAL", "--consent-sha256", "ab" * 32], 2, "has not joined", False),
        ("precheck --amount abc", ["member", "precheck", *q, "--purpose", "LOAN_APPROVAL", "--consent-sha256", "ab" * 32, "--amount", "abc"], 3, "--amount", False),
        ("precheck --amount 0", ["member", "precheck", *q, "--purpose", "LOAN_APPROVAL", "--consent-sha256", "ab" * 32, "--amount", "0"], 3, "--amount", False),
        ("join with a garbage bundle", ["member", "join", "--home", h, "--bundle", str(d / "garbage.bin")], 3, "", False),
        ("admin member add a garbage request", ["admin", "member", "add", "--home", a, "--request", str(d / "garbage.bin"),
                                                "--out", str(d / "x.bundle")], 3, "", False),
        ("admin init twice", ["admin", "init", "--home", a], 2, "refusing to overwrite", False),
        ("revoke without --yes, not at a terminal", ["admin", "member", "revoke", "--home", a, "lender-a"], 2, "--yes", False),
        ("revoke an unknown member", ["admin", "member", "revoke", "--home", a, "nobody", "--yes"], 3, "nobody", False),
        ("demo --data with a bad file", ["demo", "--data", str(d / "demo"), "--home", str(w["root"] / "demo-home")], 3,
         f"{d / 'demo' / 'lender-b' / 'loans.csv'}:2: status:", True),
        ("demo --data with too few members", ["demo", "--data", str(d / "demo2")], 2, "at least 3", False),
        *more_walk_cases(w),
    ]


def more_walk_cases(w: dict[str, Path]) -> list[tuple[str, list[str], int, str, bool]]:
    """audit *, matching-key *, rotate-keys, set-quota, sponsor, reconcile, admin policy, admin/member db upgrade, gateway serve."""
    h, a, b, aud, gw = str(w["home"]), str(w["admin"]), str(w["joined"]), str(w["auditor"]), str(w["gateway"])
    nohome = str(w["root"] / "nohome")
    rep = ["audit", "report", "--home", aud, "--from", "2026-06-01", "--to", "2026-06-30"]
    return [
        ("audit checkpoint on a member home", ["audit", "checkpoint", "--home", h], 2, "not an auditor home", False),
        ("audit verify in a missing home", ["audit", "verify", "--home", nohome], 2, "not an auditor home", False),
        ("audit verify, gateway unreachable", [*DEAD_GATEWAY, "audit", "verify", "--home", aud], 5, "cannot be reached", False),
        ("audit verify --json, gateway unreachable", [*DEAD_GATEWAY, "audit", "verify", "--home", aud, "--json"], 5, "cannot be reached", False),
        ("audit checkpoint, gateway unreachable", [*DEAD_GATEWAY, "audit", "checkpoint", "--home", aud], 5, "cannot be reached", False),
        ("audit prove --seq -1", ["audit", "prove", "--home", aud, "--seq", "-1"], 2, "--seq", False),
        ("audit prove without --seq", ["audit", "prove", "--home", aud], 2, "--seq", False),
        ("audit prove, gateway unreachable", [*DEAD_GATEWAY, "audit", "prove", "--home", aud, "--seq", "0"], 5, "cannot be reached", False),
        ("audit watch a bad fingerprint", [*DEAD_GATEWAY, "audit", "watch", "--home", aud, "--member", "lender-a",
                                           "--fingerprint", "xyz"], 3, "not a fingerprint", False),
        ("audit watch, gateway unreachable", [*DEAD_GATEWAY, "audit", "watch", "--home", aud, "--member", "lender-a"], 5, "cannot be reached", False),
        ("audit report --to before --from", [*rep[:7], "2026-05-01"], 2, "is before", False),
        ("audit report a bad --from", [*rep[:5], "2026-6-1", *rep[6:]], 2, "YYYY-MM-DD", False),
        ("audit report --json --csv", [*rep, "--json", "--csv"], 2, "choose one", False),
        ("audit report on a member home", [*rep[:3], h, *rep[4:]], 2, "not an auditor home", False),
        ("audit report, gateway unreachable", [*DEAD_GATEWAY, *rep], 5, "cannot be reached", False),
        ("matching-key create over the installed key", ["member", "matching-key", "create", "--home", h], 2, "epoch 1 is installed", False),
        ("matching-key create --epoch 0", ["member", "matching-key", "create", "--home", h, "--epoch", "0"], 2, "--epoch", False),
        ("matching-key create in a missing home", ["member", "matching-key", "create", "--home", nohome], 2, "not an initialised member home", False),
        ("matching-key announce before joining", ["member", "matching-key", "announce", "--home", h], 2, "has not joined", False),
        ("matching-key announce without a key", ["member", "matching-key", "announce", "--home", b], 2, "holds no matching key", False),
        ("matching-key share without a key", [*DEAD_GATEWAY, "member", "matching-key", "share", "--home", b, "--to", "lender-a",
                                              "--fingerprint", FPR], 2, "holds no matching key", False),
        ("matching-key share before joining", [*DEAD_GATEWAY, "member", "matching-key", "share", "--home", h, "--to", "lender-b",
                                               "--fingerprint", FPR], 2, "has not joined", False),
        ("matching-key share a bad fingerprint", [*DEAD_GATEWAY, "member", "matching-key", "share", "--home", h, "--to", "lender-b",
                                                  "--fingerprint", "xyz"], 3, "not a fingerprint", False),
        ("matching-key install a bad check value", [*DEAD_GATEWAY, "member", "matching-key", "install", "--home", b, "--from", "lender-a",
                                                    "--fingerprint", FPR, "--check-value", "x"], 3, "not a check value", False),
        ("matching-key install a bad --from", [*DEAD_GATEWAY, "member", "matching-key", "install", "--home", b, "--from", "Lender A!",
                                               "--fingerprint", FPR, "--check-value", "4b9d:3189:ca05:6c1f"], 2, "--from", False),
        ("matching-key install, gateway unreachable", [*DEAD_GATEWAY, "member", "matching-key", "install", "--home", b, "--from", "lender-a",
                                                       "--fingerprint", FPR, "--check-value", "4b9d:3189:ca05:6c1f"], 5, "cannot be reached", False),
        ("rotate-keys before joining", ["member", "rotate-keys", "--home", h], 2, "has not joined", False),
        ("rotate-keys in a missing home", ["member", "rotate-keys", "--home", nohome], 2, "", False),
        ("resume an active member", ["admin", "member", "resume", "--home", a, "lender-a"], 2, "already active", False),
        ("revoke a revoked member", ["admin", "member", "revoke", "--home", a, "lender-c", "--yes"], 2, "already revoked", False),
        ("suspend a revoked member", ["admin", "member", "suspend", "--home", a, "lender-c"], 4, "revocation is final", False),
        ("set-quota of an unknown member", ["admin", "member", "set-quota", "--home", a, "nobody", "5"], 3, "nobody", False),
        ("set-quota -5", ["admin", "member", "set-quota", "--home", a, "lender-a", "-5"], 2, "-5 is not in the range", False),
        ("set-quota abc", ["admin", "member", "set-quota", "--home", a, "lender-a", "abc"], 2, "abc", False),
        ("set-quota in a missing home", ["admin", "member", "set-quota", "--home", nohome, "lender-a", "5"], 2, "not an initialised admin home", False),
        ("sponsor before joining", [*DEAD_GATEWAY, "member", "sponsor", "--home", h, "--to", "lender-b", "--fingerprint", FPR], 2, "has not joined", False),
        ("sponsor a bad fingerprint", [*DEAD_GATEWAY, "member", "sponsor", "--home", b, "--to", "lender-a", "--fingerprint", "xyz"], 3, "not a fingerprint", False),
        ("sponsor a bad --to", [*DEAD_GATEWAY, "member", "sponsor", "--home", b, "--to", "Bad Id!", "--fingerprint", FPR], 2, "--to", False),
        ("sponsor, gateway unreachable", [*DEAD_GATEWAY, "member", "sponsor", "--home", b, "--to", "lender-a", "--fingerprint", FPR], 5, "cannot be reached", False),
        ("reconcile a bad --since", ["member", "reconcile", "--home", b, "--since", "2026-13-01"], 2, "YYYY-MM-DD", False),
        ("reconcile in a missing home", ["member", "reconcile", "--home", nohome], 2, "not an initialised member home", False),
        ("reconcile before joining", ["member", "reconcile", "--home", h], 2, "has not joined", False),
        ("reconcile an auditor home", ["member", "reconcile", "--home", aud], 2, "only members", False),
        ("reconcile, gateway unreachable", [*DEAD_GATEWAY, "member", "reconcile", "--home", b], 5, "cannot be reached", False),
        ("policy set monitoring maybe", ["admin", "policy", "set", "--home", a, "monitoring", "maybe"], 2, "on or off", False),
        ("policy set max_book_age_days -3", ["admin", "policy", "set", "--home", a, "max_book_age_days", "-3"], 2, "-3", False),
        ("policy set monitoring_quota 1e9", ["admin", "policy", "set", "--home", a, "monitoring_quota", "1e9"], 2, "1e9", False),
        ("policy set an unknown key", ["admin", "policy", "set", "--home", a, "bogus", "1"], 2, "bogus", False),
        ("policy show in a missing home", ["admin", "policy", "show", "--home", nohome], 2, "not an initialised admin home", False),
        ("db upgrade in a missing home", ["admin", "db", "upgrade", "--home", nohome], 2, "not an initialised admin home", False),
        ("db upgrade in a member home", ["admin", "db", "upgrade", "--home", h], 2, "not an initialised admin home", False),
        ("db upgrade with a missing passphrase file", ["admin", "db", "upgrade", "--home", a, "--passphrase-file",
                                                       str(w["root"] / "nopass.txt")], 3, "no such file", False),
        ("member db upgrade in a missing home", ["member", "db", "upgrade", "--home", nohome], 2, "not an initialised member home", False),
        ("member db upgrade a bad --db", ["member", "db", "upgrade", "--home", h, "--db", "no-such-scheme"], 2,
         "not a database URL", False),
        ("gateway serve a missing home", ["gateway", "serve", "--home", nohome], 2, "not an initialised gateway home", False),
        ("gateway serve a member home", ["gateway", "serve", "--home", h], 2, "not an initialised gateway home", False),
        ("gateway serve --listen without a port", ["gateway", "serve", "--home", gw, "--listen", "nohost"], 2, "host:port", False),
        ("gateway serve --listen port 99999", ["gateway", "serve", "--home", gw, "--listen", "127.0.0.1:99999"], 2, "0-65535", False),
        ("gateway serve --listen an unknown host", ["gateway", "serve", "--home", gw, "--listen", "no-such-host.invalid:5000"], 2,
         "does not resolve", False),
        ("gateway serve on a port in use", ["gateway", "serve", "--home", gw, "--listen", f"127.0.0.1:{w['busy_port']}"], 2, "in use", False),
        ("alerts in a missing home", ["member", "alerts", "--home", nohome], 2, "not a member home", False),
        ("alerts with a bad --since", ["member", "alerts", "--home", b, "--since", "2026-13-01"], 2, "YYYY-MM-DD", False),
        ("disclose a bad month", ["member", "disclose", "--home", b, "--month", "2026-13"], 2, "YYYY-MM", False),
        ("disclose in a missing home", ["member", "disclose", "--home", nohome, "--month", "2026-11"], 2,
         "not an initialised member home", False),
        ("monthly-report a bad month", ["audit", "monthly-report", "--home", aud, "--month", "26-1"], 2, "YYYY-MM", False),
        ("monthly-report in a missing home", ["audit", "monthly-report", "--home", nohome, "--month", "2026-11"], 2,
         "not an auditor home", False),
        ("monitor a bad consent digest", ["member", "monitor", "--home", b, "--consent-id", "C", "--consent-sha256", "zz"], 3,
         "64 hex digits", False),
        ("monitor a bad --every", ["member", "monitor", "--home", b, "--consent-id", "C", "--consent-sha256", "ab" * 32,
                                   "--every", "soon"], 2, "--every", False),
        ("monitor in a missing home", ["member", "monitor", "--home", nohome, "--consent-id", "C", "--consent-sha256", "ab" * 32],
         2, "not an initialised member home", False),
        ("admin member add --out into a missing folder", ["admin", "member", "add", "--home", a, "--request",
                                                          str(w["root"] / "d" / "join-request.bin"), "--out",
                                                          str(w["root"] / "nope" / "d.bundle")], 2, "nothing was issued", False),
        ("admin auditor add --out into a missing folder", ["admin", "auditor", "add", "--home", a, "--request",
                                                           str(w["root"] / "aud2" / "join-request.bin"), "--out",
                                                           str(w["root"] / "nope" / "aud2.bundle")], 2, "nothing was issued", False),
        ("keygen --home is a file", ["member", "keygen", "--home", str(w["data"] / "consent.pdf"), "--id", "lender-x", "--name", "X",
                                     "--endpoint", "127.0.0.1:7002"], 2, "is a file", False),
        ("--db of a server that is down", ["admin", "member", "list", "--home", a, "--db", "postgresql://u:pw@127.0.0.1:1/x"], 5,
         "the database cannot be used", False),
        ("--db in a missing folder", ["member", "alerts", "--home", b, "--db", f"sqlite:///{w['root']}/nodir/m.db"], 5,
         "the database cannot be used", False),
        ("--db of an unknown kind", ["member", "import", "--home", h, "--kind", "loans", "--db", "bogus://x",
                                     str(w["data"] / "truncated.csv")], 2, "unsupported database kind", False),
        ("gateway serve on a port in use (localhost)", ["gateway", "serve", "--home", gw, "--listen", f"localhost:{w['busy_port']}"], 2,
         "in use", False),
    ]


@pytest.mark.timeout(1200)  # some 170 CLI processes, one after another: minutes on a loaded 2-core machine
def test_every_command_with_bad_arguments_and_bad_files(world: dict[str, Path]) -> None:
    import socket

    failures = []
    busy = socket.socket()  # a port in use for `gateway serve`
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    world = {**world, "busy_port": busy.getsockname()[1]}  # type: ignore[dict-item]
    for name, args, code, needle, several in walk_cases(world):
        before = snapshot_tree(world["root"])
        try:  # a server that starts instead of failing is killed and reported, not waited for
            out = cli(*args, timeout=30 if "serve" in args else 120)
        except subprocess.TimeoutExpired:
            failures.append(f"{name}: still running after 30 s instead of failing")
            continue
        after = snapshot_tree(world["root"])
        lines = out.stderr.strip().splitlines()
        problems = []
        if out.returncode != code:
            problems.append(f"exit {out.returncode}, expected {code}")
        if "Traceback" in out.stdout + out.stderr or "internal error" in out.stdout + out.stderr:
            problems.append("traceback / internal error")
        if not several and (len(lines) != 1 or not lines[0].startswith("alliance: error: ")):
            problems.append(f"{len(lines)} stderr lines, not one error line")
        if several and not lines[-1].startswith("alliance: error:"):
            problems.append("last stderr line is not the error")
        if needle and needle not in out.stderr:
            problems.append(f"stderr lacks {needle!r}")
        if after != before:
            changed = sorted(set(after.items()) ^ set(before.items()))
            problems.append(f"files changed: {changed}")
        if problems:
            failures.append(f"{name}: {'; '.join(problems)}\n    stderr: {out.stderr.strip()[:300]}")
    busy.close()
    assert not failures, "\n".join(failures)
    for k in ("k1", "k2", "k3"):
        assert not (world["root"] / k).exists(), f"failed keygen left {k} behind"


# ------------------------------------------------------------------ help

def command_tree():  # type: ignore[no-untyped-def]
    """Every command reachable from `alliance`, found by walking the click group tree (no hand list)."""
    import click

    from alliance_cli.main import cli as root

    def walk(cmd, path):  # type: ignore[no-untyped-def]
        yield path, cmd
        if isinstance(cmd, click.Group):
            for name, sub in sorted(cmd.commands.items()):
                if not sub.hidden:
                    yield from walk(sub, [*path, name])

    return list(walk(root, []))


def test_the_walk_finds_every_command_group_and_leaf() -> None:
    paths = {" ".join(p) for p, _ in command_tree()}
    for expected in ("admin init", "admin member set-quota", "admin db upgrade", "member db upgrade", "admin auditor add", "gateway serve",
                     "member matching-key install", "member sponsor", "member reconcile", "audit report", "demo", "bench"):
        assert expected in paths


def test_every_command_help_has_an_example_and_every_option_a_description() -> None:
    """`alliance … --help` for every command: an Example that runs this very
    command, a description for every option, required options marked."""
    import click
    from click.testing import CliRunner

    from alliance_cli.main import cli as root

    runner = CliRunner()
    failures = []
    for path, cmd in command_tree():
        name = " ".join(["alliance", *path])
        result = runner.invoke(root, [*path, "--help"], prog_name="alliance", terminal_width=80)
        text = result.output
        problems = []
        if result.exit_code != 0 or not text.startswith(f"Usage: {name}"):
            problems.append(f"--help exit {result.exit_code}: {text[:200]!r}")
        if not (cmd.help or "").strip():
            problems.append("no description")
        if not isinstance(cmd, click.Group):
            example = text.partition("Example")[2]
            if not example:
                problems.append("no Example")
            elif f"{name} " not in example:
                problems.append(f"the Example does not run `{name}`")
        ctx = click.Context(cmd, info_name=name)
        for param in cmd.params:
            if not isinstance(param, click.Option) or param.hidden or param.name == "help":
                continue
            record = param.get_help_record(ctx)
            if not (param.help or "").strip():
                problems.append(f"{param.opts[0]} has no description")
            elif param.opts[0] not in text:
                problems.append(f"{param.opts[0]} missing from --help")
            if param.required and (record is None or "required" not in record[1]):
                problems.append(f"{param.opts[0]} is required but not marked")
        if problems:
            failures.append(f"{name}: {'; '.join(problems)}")
    assert not failures, "\n".join(failures)


# ------------------------------------------------------------------ audit report: the purpose of every query

def test_audit_report_reads_the_purpose_of_a_request_refused_before_parsing(capsys: pytest.CaptureFixture[str]) -> None:
    """A query refused before the gateway parsed it (wrong role, unknown,
    suspended member) is logged with purpose null but its request body: the
    report shows the purpose the body states, or "unreadable request"."""

    from alliance.v1 import alliance_pb2 as pb
    from alliance_cli import audit_cmds
    from alliance_auditor import activity_report

    t0 = 1_782_000_000_000  # 2026-06-21 in Asia/Shanghai
    day = activity_report.shanghai_date(t0)
    body = pb.QueryRequestBody(query_id="ab" * 16, purpose=pb.PURPOSE_CREDIT_LIMIT_REVIEW).SerializeToString().hex()
    no_purpose = pb.QueryRequestBody(query_id="cd" * 16).SerializeToString().hex()

    def entry(i: int, **over: object) -> dict:
        return {"querier_id": "lender-a", "received_at_ms": t0 + i, "purpose": None, "outcome": "refused",
                "reason": "member_suspended", "request_body": None, **over}

    entries = [entry(0, purpose="LOAN_APPROVAL", outcome="accepted", reason=None),
               entry(1, request_body=body), entry(2, request_body=body),
               entry(3, request_body="00ff" * 8),          # not a QueryRequestBody
               entry(4, request_body="zz"),                # not even hex
               entry(5, request_body=no_purpose),          # parses, names no purpose
               entry(6)]                                   # too large to log: no body at all
    [row] = activity_report.report_rows(entries, day, day)
    assert row["by_purpose"] == {"CREDIT_LIMIT_REVIEW": 2, "LOAN_APPROVAL": 1, "unreadable request": 4}
    assert "UNPARSED" not in repr(row)
    assert activity_report.csv_row(row)["purpose_CREDIT_LIMIT_REVIEW"] == 2 and activity_report.csv_row(row)["purpose_other"] == 4
    # what `alliance audit report` prints
    capsys.readouterr()
    audit_cmds._report_table([row], day.isoformat(), day.isoformat())
    text = capsys.readouterr().out
    assert "by purpose  CREDIT_LIMIT_REVIEW 2, LOAN_APPROVAL 1, unreadable request 4" in text, text
    assert all(len(line) <= 80 for line in text.splitlines())


# ------------------------------------------------------------------ import --dry-run, as printed

def test_dry_run_prints_the_summary_of_the_real_import_and_writes_nothing(tmp_path: Path) -> None:
    """SPEC §2: `--dry-run` prints the same summary as the real import that
    follows, then `(dry run: nothing written)`; the book is untouched."""
    import sqlite3

    from click.testing import CliRunner

    from alliance import matching_key
    from alliance_cli.main import cli as root
    from alliance_member.home import MemberConfig, MemberHome

    home = MemberHome(tmp_path / "m")
    home.path.mkdir()
    home.write_config(MemberConfig("lender-a", "Lender A", "member", "127.0.0.1:1", "127.0.0.1:1", "127.0.0.1:2"))
    matching_key.save(home.matching_key, matching_key.MatchingKey(epoch=1, key=bytes(range(32))))
    first = tmp_path / "first.csv"
    first.write_text("\n".join([LOAN_HEADER, *(loan_line(f"L{i}") for i in range(5))]) + "\n")
    runner = CliRunner()
    imp = ["member", "import", "--home", str(home.path), "--kind", "loans"]
    assert runner.invoke(root, [*imp, str(first)]).exit_code == 0

    def book() -> list[tuple]:
        with sqlite3.connect(home.path / "member.db") as conn:
            return conn.execute("SELECT loan_id, balance_fen, status FROM loans ORDER BY loan_id").fetchall()

    before = book()
    assert before == [(f"L{i}", 400_000, "ACTIVE") for i in range(5)]
    # the whole book again: L0 settled, L4 gone (1 of 5 = 20 %: allowed), L5 new
    snap = tmp_path / "snap.csv"
    settled = loan_line("L0", status="SETTLED").replace(",4000.00,", ",0.00,")
    snap.write_text("\n".join([LOAN_HEADER, settled, *(loan_line(f"L{i}") for i in (1, 2, 3, 5))]) + "\n")
    summary = f"{snap}: 5 loans row(s) imported, 0 rejected, 1 removed (snapshot)"
    dry = runner.invoke(root, [*imp, "--snapshot", "--dry-run", str(snap)])
    assert dry.exit_code == 0, dry.output
    assert dry.output.splitlines() == [summary, "(dry run: nothing written)"]
    assert book() == before
    real = runner.invoke(root, [*imp, "--snapshot", str(snap)])
    assert real.exit_code == 0, real.output
    assert real.output.splitlines() == [summary]
    assert book() == [("L0", 0, "SETTLED"), *((f"L{i}", 400_000, "ACTIVE") for i in (1, 2, 3, 5))]


# ------------------------------------------------------------------ admin member list at 80 columns

def test_member_list_shows_every_fingerprint_whole_at_80_columns(world: dict[str, Path]) -> None:
    """Issue 9: the one thing an operator compares by phone is never cut,
    and the table fits 80 columns; `--wide` gives one line per member."""
    import json

    listing = json.loads(cli("admin", "member", "list", "--home", str(world["admin"]), "--json").stdout)
    fingerprints = {r["member_id"]: r["fingerprint"] for r in listing}
    assert set(fingerprints) == {"lender-a", "lender-b", "lender-c", "auditor-1"}
    assert all(len(f.replace(":", "")) == 64 for f in fingerprints.values())  # SHA-256, whole
    out = cli("admin", "member", "list", "--home", str(world["admin"]))
    assert out.returncode == 0 and out.stderr == ""
    lines = out.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80, out.stdout
    for mid, fpr in fingerprints.items():
        at = next(i for i, line in enumerate(lines) if line.startswith(f"{mid}  ("))
        block = lines[at + 1:at + 4]
        first = next(line for line in block if line.startswith("  fingerprint "))
        second = block[block.index(first) + 1]
        assert f"{first.split()[-1]}:{second.strip()}" == fpr, (mid, block)
    wide = cli("admin", "member", "list", "--home", str(world["admin"]), "--wide").stdout.splitlines()
    assert wide[0].split()[:4] == ["member_id", "name", "role", "status"]
    for mid, fpr in fingerprints.items():
        [row] = [line for line in wide[1:] if line.startswith(mid + " ")]
        assert row.endswith(fpr)
    for mid, fpr in fingerprints.items():  # `admin member show` too: the fingerprint whole on one line
        shown = cli("admin", "member", "show", "--home", str(world["admin"]), mid)
        assert shown.returncode == 0 and any(fpr in line for line in shown.stdout.splitlines()), shown.stdout
        assert max(len(line) for line in shown.stdout.splitlines()) <= 80, shown.stdout


def test_a_reader_that_goes_away_is_no_internal_error(world: dict[str, Path]) -> None:
    """`alliance admin member list | head -3`: the pipe's reader is gone before
    the table is written; the command stops quietly (128 + SIGPIPE), with no
    "internal error" and no traceback."""
    import os

    for args in (["admin", "member", "list", "--home", str(world["admin"])],
                 ["admin", "member", "list", "--home", str(world["admin"]), "--json"],
                 ["member", "import", "--help"]):
        proc = subprocess.Popen([sys.executable, "-m", "alliance_cli.main", *args], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env={**os.environ, "COLUMNS": "80"})
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()  # no reader left: the first write fails with EPIPE
        err = proc.stderr.read().decode()
        proc.wait(60)
        assert err == "", (args, err)
        assert proc.returncode == 141, (args, proc.returncode)


def test_the_human_report_starts_with_the_whole_summary_line(capsys: pytest.CaptureFixture[str]) -> None:
    """SPEC §7: a one-line summary, not folded at 80 columns (as `alliance
    member query … | head -1` or a narrow terminal would otherwise get it)."""
    from alliance_cli import output

    r = blank_report(lenders_with_active_loans=2, active_loans=5, outstanding_balance_fen=46_951_105,
                     lenders_with_overdue=1, overdue_loans=1, overdue_amount_fen=120_000, dpd_1_30=1,
                     lenders_flagging_fraud=2)
    expected = ("borrows at 2 other lenders: 5 active loans, ¥469,511.05 outstanding; "
                "1 loan 1–30 days overdue; flagged for fraud by 2 lenders")
    assert len(expected) > 80
    capsys.readouterr()
    output.report_table({"report": r, "complete": True, "members_asked": 2, "members_answered": 2, "query_id": "ab" * 16,
                         "audit": None}, subject="RESIDENT_ID 110105********002X", as_of="2026-06-30", purpose="LOAN_APPROVAL")
    lines = capsys.readouterr().out.splitlines()
    assert lines[:3] == [expected, "subject RESIDENT_ID 110105********002X, as of 2026-06-30, purpose LOAN_APPROVAL",
                         "2 of 2 other members answered; your own book is not included"]
    assert lines[-1] == f"query {'ab' * 16}"
