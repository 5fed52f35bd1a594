"""`alliance demo`: a throw-away local alliance (gateway + 3 members over
mutual TLS, SQLite), synthetic or given UDS-1 data, example queries, a
precheck on both sides of the cap, an application alert, a monitoring run,
each member's disclosure and the monthly report (written to a file it
names), and an audit verification."""
from __future__ import annotations

import hashlib
import json
import random
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from alliance import identity, pki, synthetic, uds1
from alliance._internal.files import write_atomic
from alliance.errors import AllianceError, InvalidInput, UsageError
from alliance.policy import Policy
from alliance_cli import output
from alliance_cli.localnet import LocalAlliance
from alliance_member import book, book_status
from alliance_member.querier import Consent, Querier, Subject, today_shanghai

DEMO_MEMBERS = ["lender-a", "lender-b", "lender-c"]
KINDS = ("loans", "flags", "scores")


def run(*, data_dir: Path | None, keep_running: bool, state_file: Path | None, work_dir: Path | None,
        echo: Callable[[str], None]) -> None:
    tmp = None
    if work_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="alliance-demo-")
        work_dir = Path(tmp.name)
    work_dir.mkdir(parents=True, exist_ok=True)
    as_of = today_shanghai()
    dataset = None
    if data_dir is not None:
        member_ids = sorted(p.name for p in data_dir.iterdir() if p.is_dir())
        if len(member_ids) < 3:
            raise UsageError(f"--data {data_dir}: needs one folder per member, at least 3 (found {len(member_ids)})")
        for mid in member_ids:
            try:
                pki.check_member_id(mid)
            except InvalidInput as exc:
                raise InvalidInput(f"--data {data_dir}: folder {mid!r} is not a member id ({exc})") from None
        _check_data(data_dir, member_ids)
    else:
        member_ids = DEMO_MEMBERS
        data_dir = work_dir / "data"
        # exported today, so every member's book is fresh (SPEC §10: only fresh books may query)
        dataset = synthetic.write_alliance_dataset(data_dir, member_ids, seed=2016, as_of=as_of, book_date=as_of)
    echo(f"building a local alliance in {work_dir}: gateway + {len(member_ids)} members (mutual TLS, SQLite)")
    alliance = LocalAlliance(work_dir, member_ids)
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        alliance.start()
        echo(f"gateway on {alliance.gateway_endpoint}; matching key handed over member to member (check value {alliance.check_value})")
        book_dates: dict[str, Any] = {}
        for mid in member_ids:
            for kind in KINDS:
                path = data_dir / mid / f"{kind}.csv"
                if path.exists():
                    result = book.import_book(alliance.members[mid].home, path, kind, on_error=_print_error)
                    echo(f"  {mid}: imported {result.rows_written} {kind}")
                    if kind == "loans":  # SPEC §10: the signed book status, as `alliance member import` sends it
                        sent = book_status.refresh(alliance.members[mid].home)
                        if sent is not None:
                            echo(f"  {mid}: {sent.line()}")
                            book_dates[mid] = sent.status.book_date
        if dataset is None:
            _let_given_books_query(alliance, book_dates, as_of, echo)
        if state_file is not None:
            write_atomic(state_file, json.dumps(alliance.state(), indent=2).encode())
            echo(f"state written to {state_file}")
        if dataset is not None:
            _example_queries(alliance, dataset, as_of, echo)
            _monitoring(alliance, as_of, echo)
            _disclosure(alliance, as_of, echo, report_dir=None if tmp is not None else work_dir)
            _audit(alliance, echo)
        if keep_running:
            echo("alliance running; SIGTERM or Ctrl-C stops it")
            stop.wait()
    finally:
        alliance.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if tmp is not None:
            tmp.cleanup()
    echo("demo finished; every process stopped")


def _let_given_books_query(alliance: LocalAlliance, book_dates: dict[str, Any], today: Any, echo: Callable[[str], None]) -> None:
    """SPEC §10 in a throw-away alliance over given files: books older than
    the default `max_book_age_days` would be refused `stale_book`, so the
    demo raises the limit to the oldest given book's age (logged, like any
    policy change) and says so. A member without loans stays unable to query."""
    ages = [(today - d).days for d in book_dates.values() if d is not None]
    limit = Policy().max_book_age_days
    if not ages or max(ages) <= limit:
        return
    from alliance_gateway.admin import Admin

    days = min(max(ages), 3650)
    Admin(alliance.admin_home).policy_set("max_book_age_days", str(days))
    echo(f"operator: `alliance admin policy set max_book_age_days {days}` (the given books are up to {max(ages)} days old; "
         f"logged as policy_changed)")
    time.sleep(1.2)  # the gateway re-reads the policy within a second


def _print_error(error: object) -> None:
    print(error, file=sys.stderr)


def _check_data(data_dir: Path, member_ids: list[str]) -> None:
    """Validate every given file before any process starts, printing each
    invalid row as file:line: field: reason (SPEC §2)."""
    bad_rows = bad_files = 0
    for mid in member_ids:
        for kind in KINDS:
            path = data_dir / mid / f"{kind}.csv"
            if not path.exists():
                continue
            rows_bad_here = 0
            for row in uds1.iter_rows(path, kind, display_name=str(path)):
                if row.errors:
                    rows_bad_here += 1
                    for err in row.errors:
                        _print_error(err)
            bad_rows += rows_bad_here
            bad_files += bool(rows_bad_here)
    if bad_rows:
        raise InvalidInput(f"--data {data_dir}: {bad_rows} invalid row(s) in {bad_files} file(s); nothing was started")


def _example_queries(alliance: LocalAlliance, dataset: "synthetic.Dataset", as_of, echo: Callable[[str], None]) -> None:  # type: ignore[no-untyped-def]
    querier_id = alliance.member_ids[0]
    consent = Consent("DEMO-CONSENT-0001", hashlib.sha256(b"borrower's signed authorisation (demo)").digest())
    querier = Querier(alliance.members[querier_id].home)
    try:
        person = max((s for s in dataset.subjects if s.id_type == "RESIDENT_ID"), key=lambda s: len(s.members))
        org = max((s for s in dataset.subjects if s.id_type == "USCC"), key=lambda s: len(s.members))
        unknown = synthetic.unknown_subjects(random.Random(7), 1)[0]
        for label, subject in ((f"a person known to {len(person.members)} lenders", person),
                               (f"an organisation known to {len(org.members)} lenders", org),
                               ("an applicant nobody knows", unknown)):
            echo(f"\n{querier_id} asks about {label} ({subject.id_type} {subject.canonical_id[:6]}…):")
            result = querier.query(Subject(subject.id_type, subject.canonical_id), purpose="LOAN_APPROVAL", consent=consent, as_of=as_of)
            output.report_table(result, subject=f"{subject.id_type} {identity.masked_id(subject.canonical_id)}",
                                as_of=as_of.isoformat(), purpose="LOAN_APPROVAL")
        for amount in ("10000", "990000"):
            result = querier.precheck(Subject(person.id_type, person.canonical_id), amount_yuan=amount,
                                      purpose="LOAN_APPROVAL", consent=consent, as_of=as_of)
            echo(f"precheck: a new loan of {amount} yuan keeps the subject within the 1,000,000-yuan cap? "
                 + ("yes" if result["within_cap"] else "no"))
    finally:
        querier.close()


def _monitoring(alliance: LocalAlliance, as_of, echo: Callable[[str], None]) -> None:  # type: ignore[no-untyped-def]
    """SPEC §9 in brief: the application alerts the queries above raised at
    the other members, and one monitoring run of the querier's borrowers."""
    import time

    from alliance import db
    from alliance_member import alerts, monitoring

    querier_id = alliance.member_ids[0]
    deadline = time.monotonic() + 5
    shown = None
    while shown is None and time.monotonic() < deadline:
        for mid in alliance.member_ids[1:]:
            from alliance_member.home import MemberHome

            engine = db.make_engine(MemberHome(alliance.members[mid].home).db_url(alliance.members[mid].db_url))
            try:
                got = alerts.list_alerts(engine, kinds=("applied_elsewhere",))
            finally:
                engine.dispose()
            if got:
                shown = (mid, got[-1])
                break
        else:
            time.sleep(0.2)
    if shown is not None:
        echo(f"\n{shown[0]} alert (`alliance member alerts`): {shown[1].message} — the lender asked is not named")
    consent = Consent("DEMO-MONITORING-0001", hashlib.sha256(b"post-loan monitoring authorisation (demo)").digest())
    from alliance_gateway.admin import Admin

    Admin(alliance.admin_home).policy_set("monitoring", "on")  # SPEC §9: off unless the alliance enables it (logged)
    echo("\noperator: `alliance admin policy set monitoring on` (logged as policy_changed)")
    time.sleep(1.2)  # the gateway re-reads the policy within a second
    querier = Querier(alliance.members[querier_id].home)
    try:
        monitoring.monitoring_enabled(querier.client)
        outcomes = monitoring.run_once(querier, consent=consent, as_of=as_of)
    except AllianceError as exc:
        echo(f"monitoring run: {exc}")
        return
    finally:
        querier.close()
    counts = monitoring.summary(outcomes)
    echo(f"{querier_id} monitoring run (`alliance member monitor`): {counts['subjects']} active borrower(s) re-screened "
         f"(POST_LOAN_MONITORING), {counts['baseline']} first report(s) kept, {counts['alerts']} alert(s); "
         "every asked member learns which of its borrowers are also yours")


def _disclosure(alliance: LocalAlliance, as_of, echo: Callable[[str], None], *, report_dir: Path | None) -> None:  # type: ignore[no-untyped-def]
    """SPEC §11 in brief: every member discloses last month's figures (signed,
    logged), and the auditor builds the monthly report from the log alone,
    written to a file that outlives the demo (under --home, else in the
    system's temporary folder), whose name is printed."""
    from alliance import monthly_report_render as render
    from alliance_auditor import monthly_report
    from alliance_member import disclosure as member_disclosure

    if alliance.auditor_home is None:
        return
    month = f"{as_of.year - (as_of.month == 1)}-{(as_of.month - 2) % 12 + 1:02d}"  # the month before as_of's
    for mid in alliance.member_ids:
        result = member_disclosure.disclose(alliance.members[mid].home, month)
        f = result["figures"]
        echo(("\n" if mid == alliance.member_ids[0] else "")
             + f"{mid} discloses {month} (`alliance member disclose`): {f['outstanding_loans']} loans outstanding, "
             f"¥{output.yuan(f['outstanding_balance_fen'])}; loan overdue rate {render.fmt('bp', f['loan_overdue_rate_bp'])} "
             f"(signed, logged as entry {result['audit']['leaf_index']})")
    report = monthly_report.build(alliance.auditor_home, month)
    page = render.html(report).encode("utf-8")
    if report_dir is not None:
        path = report_dir / f"monthly-report-{month}.html"
        write_atomic(path, page)
    else:
        fd, name = tempfile.mkstemp(prefix=f"alliance-demo-monthly-report-{month}-", suffix=".html")
        with open(fd, "wb") as fh:
            fh.write(page)
        path = Path(name)
    echo(f"monthly report (`alliance audit monthly-report`): {render.disclosed_sentence(report).rstrip('.')}; "
         f"{report['disclosures_checked']} signature(s) checked; written to {path}")


def _audit(alliance: LocalAlliance, echo: Callable[[str], None]) -> None:
    try:
        from alliance_auditor import verify as audit_verify_client
    except ImportError:
        return
    if alliance.auditor_home is None:
        return
    try:
        result = audit_verify_client.verify(alliance.auditor_home)
    except AllianceError as exc:
        echo(f"audit verify FAILED: {exc}")
        raise
    echo(f"\naudit verify: ok — {result['entries']} log entries, checkpoint size {result['tree_size']} verified")
