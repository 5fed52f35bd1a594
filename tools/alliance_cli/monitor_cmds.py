"""`alliance member monitor` and `alliance member alerts` (SPEC §9).

Argument parsing and printing only; the work is in alliance_member.monitoring
(re-screening, change rules), alliance_member.alerts (the alerts table) and
alliance_member.webhook (--webhook)."""
from __future__ import annotations

import json
import sys
import time
from datetime import datetime, time as dtime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import click

from alliance.errors import AllianceError, Unreachable, UsageError
from alliance_cli.params import parse_day

SHANGHAI = ZoneInfo("Asia/Shanghai")
HOME = click.option("--home", "home", type=click.Path(file_okay=False, path_type=Path), required=True, help="Directory holding keys and state.")
DB = click.option("--db", "db_url", default=None, metavar="URL", help="SQLAlchemy database URL (default: SQLite under --home).")
WEBHOOK = click.option("--webhook", default=None, metavar="URL",
                       help="POST each alert as JSON to URL (background, retried with back-off; never blocks).")


def _echo_outcomes(outcomes: list[Any], counts: dict[str, int], as_json: bool, started: str) -> None:
    from alliance_member.monitoring import outcome_json

    if as_json:
        click.echo(json.dumps({"run_at": started, "summary": counts, "subjects": [outcome_json(o) for o in outcomes]},
                              ensure_ascii=False))
        return
    for o in outcomes:
        if o.status == "unchanged":
            continue
        click.echo(f"{o.id_type} {o.masked_id or '?'}  {o.status}: {o.message}")
    click.echo(f"{started}: {counts['subjects']} subject(s) monitored: {counts['changed']} changed ({counts['alerts']} alert(s)), "
               f"{counts['unchanged']} unchanged, {counts['baseline']} first report, {counts['set_changed']} answer set changed "
               f"(stored, not compared), {counts['kept_earlier']} kept earlier report (retried next run), "
               f"{counts['failed']} failed" + (f", {counts['not_run']} not run" if counts["not_run"] else ""))


def register(member: click.Group) -> None:
    @member.command("monitor")
    @HOME
    @DB
    @click.option("--consent-id", required=True, help="Reference of the borrowers' authorisation for post-loan monitoring.")
    @click.option("--consent-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
                  help="The signed authorisation (give exactly one of --consent-file / --consent-sha256).")
    @click.option("--consent-sha256", default=None, help="SHA-256 (hex) of the signed authorisation.")
    @click.option("--watchlist", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
                  help="CSV with the header id_type,id_number to monitor instead of your own ACTIVE borrowers.")
    @click.option("--every", default=None, metavar="DURATION", help="Run again every DURATION (e.g. 24h, 30m) until interrupted.")
    @click.option("--balance-up-pct", type=click.IntRange(min=0), default=20, show_default=True,
                  help="Alert when the balance elsewhere rises by at least this per cent (and by --balance-up-yuan).")
    @click.option("--balance-up-yuan", default="50000", show_default=True,
                  help="Alert when the balance elsewhere rises by at least this many yuan (and by --balance-up-pct).")
    @WEBHOOK
    @click.option("--json", "as_json", is_flag=True, help="Print one JSON object per run.")
    def member_monitor(home: Path, db_url: str | None, consent_id: str, consent_file: Path | None, consent_sha256: str | None,
                       watchlist: Path | None, every: str | None, balance_up_pct: int, balance_up_yuan: str,
                       webhook: str | None, as_json: bool) -> None:
        """Re-screen your own ACTIVE borrowers (or a watchlist) and alert on changes.

        Purpose POST_LOAN_MONITORING. The last report per subject is kept in
        your database; an alert is raised for more lenders or active loans,
        a balance rise of at least --balance-up-pct AND --balance-up-yuan, a new
        overdue loan or a worse overdue bucket, a new write-off, a new fraud or
        malicious-default flag. Reports are compared only over the same
        answering members. Off unless the alliance enables monitoring.

        Every asked member sees that you queried each of these borrowers: a
        run tells every member which of its own borrowers also borrow from you.

        Exit 0 when every subject was checked (or kept its earlier report
        under SPEC §5.3); otherwise the status of the first failure.

        \b
        Example:
          alliance member monitor --home m --consent-id PLM-2026 --consent-file plm.pdf --every 24h
        """
        from alliance import uds1
        from alliance_member import monitoring
        from alliance_member.querier import Consent, Querier
        from alliance_member.webhook import Webhook, check_url

        consent = Consent.from_args(consent_id, file=consent_file, sha256_hex=consent_sha256)
        interval = monitoring.parse_every(every) if every is not None else None
        thresholds = monitoring.Thresholds(balance_up_pct, uds1.parse_yuan(balance_up_yuan, "--balance-up-yuan"))
        if webhook is not None:
            check_url(webhook)
        querier = Querier(home, db_url=db_url)
        hook = Webhook(webhook).listen() if webhook else None
        status = 0
        try:
            while True:
                started = datetime.now(SHANGHAI).isoformat(timespec="seconds")
                try:
                    monitoring.monitoring_enabled(querier.client)
                    outcomes = monitoring.run_once(querier, consent=consent, watchlist_path=watchlist, thresholds=thresholds)
                except Unreachable as exc:
                    if interval is None:
                        raise
                    click.echo(f"alliance: {started}: run failed, retried in {every}: {exc}", err=True)
                else:
                    counts = monitoring.summary(outcomes)
                    _echo_outcomes(outcomes, counts, as_json, started)
                    failed = [o for o in outcomes if o.exit_code]
                    status = failed[0].exit_code if failed else 0
                if interval is None:
                    break
                time.sleep(interval)
        except KeyboardInterrupt:
            status = 0
        finally:
            if hook is not None:
                hook.close()
            querier.close()
        if status:
            sys.exit(status)

    @member.command("alerts")
    @HOME
    @DB
    @click.option("--since", default=None, metavar="YYYY-MM-DD", help="Only alerts raised on or after this day (Asia/Shanghai).")
    @click.option("--kind", "kinds", multiple=True, help="Only alerts of this kind (repeatable), e.g. applied_elsewhere.")
    @click.option("--follow", is_flag=True, help="Keep printing new alerts as they are raised, until interrupted.")
    @click.option("--interval", type=click.FloatRange(min=0.05), default=1.0, hidden=True, help="--follow poll interval (s).")
    @click.option("--json", "as_json", is_flag=True, help="One JSON object per alert, one per line.")
    def member_alerts(home: Path, db_url: str | None, since: str | None, kinds: tuple[str, ...], follow: bool,
                      interval: float, as_json: bool) -> None:
        """List the alerts raised for your staff, newest last.

        applied_elsewhere (one of your ACTIVE borrowers applied for a loan
        elsewhere; the lender is never named), monitor_* (changes found by
        `member monitor`), and the node's security warnings.

        \b
        Example:
          alliance member alerts --home m --since 2026-06-01
          alliance member alerts --home m --follow --json
        """
        from alliance import db
        from alliance_member import store
        from alliance_member.alerts import list_alerts
        from alliance_member.home import MemberHome

        since_ms = 0
        if since is not None:
            day = parse_day(since, "--since")
            since_ms = int(datetime.combine(day, dtime(0, 0), tzinfo=SHANGHAI).timestamp() * 1000)
        member_home = MemberHome(home)
        if not (home / "member.json").exists():
            raise UsageError(f"{home} is not a member home (no member.json)")
        engine = db.make_engine(member_home.db_url(db_url))
        store.create_schema(engine)
        last_id = 0
        try:
            while True:
                for alert in list_alerts(engine, since_ms=since_ms, after_id=last_id, kinds=kinds):
                    last_id = alert.id
                    if as_json:
                        click.echo(json.dumps(alert.as_json(), ensure_ascii=False, sort_keys=True))
                    else:
                        at = alert.as_json()["raised_at"].replace("T", " ")
                        click.echo(f"{at}  #{alert.id}  {alert.kind}: {alert.message}")
                if not follow:
                    if not last_id and not as_json:
                        click.echo("no alerts" + (f" since {since}" if since else ""), err=True)
                    break
                sys.stdout.flush()
                time.sleep(interval)
        except KeyboardInterrupt:
            pass
        finally:
            engine.dispose()
