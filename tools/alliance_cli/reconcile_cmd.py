"""`alliance member reconcile` (SPEC §6.2): every answer this member gave is in the log."""
from __future__ import annotations

from datetime import datetime, time as dtime
from pathlib import Path
from zoneinfo import ZoneInfo

import click

from alliance_cli import output
from alliance_cli.params import parse_day

SHANGHAI = ZoneInfo("Asia/Shanghai")


@click.command("reconcile")
@click.option("--home", "home", type=click.Path(file_okay=False, path_type=Path), required=True, help="Directory holding keys and state.")
@click.option("--db", "db_url", default=None, metavar="URL", help="SQLAlchemy database URL (default: SQLite under --home).")
@click.option("--since", "since", default=None, metavar="DATE", help="Only answers given on or after DATE (YYYY-MM-DD, Asia/Shanghai).")
@click.option("--min-age-s", "min_age_s", type=click.IntRange(min=0), default=60, show_default=True,
              help="Only answers at least this old (younger ones may not be committed yet).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def reconcile_command(ctx: click.Context, home: Path, db_url: str | None, since: str | None, min_age_s: int, as_json: bool) -> None:
    """Check that every answer this member gave is in the audit log.

    Exit 0 when every journalled answer is reconciled under a checkpoint
    cosigned by a witness quorum; exit 1 naming each answer missing from the
    log, with the nearest gateway restart before and after it (a crash
    between fan-out and commit, or an off-the-record query), each answer or
    receipt checkpoint still not witnessed after 5 minutes.

    \b
    Example:
      alliance member reconcile --home m --since 2026-06-01
    """
    from alliance_member.reconcile import reconcile_home

    since_ms = 0
    if since is not None:
        day = parse_day(since, "--since")
        since_ms = int(datetime.combine(day, dtime(0), tzinfo=SHANGHAI).timestamp() * 1000)
    result = reconcile_home(home, db_url=db_url, min_age_ms=min_age_s * 1000, since_ms=since_ms)
    if as_json:
        output.echo_json(result.as_json())
    else:
        witnessed = ("no witnessed checkpoint yet" if result.witnessed_size is None
                     else f"witnessed size {result.witnessed_size}")
        for late in result.not_witnessed:
            click.echo(f"  query {late['query_id']} answered at {late['answered_at']}: {late['why']}"
                       + (" for over 5 minutes" if late["overdue"] else " (pending)"))
        for r in result.uncovered_receipt_checkpoints:
            click.echo(f"  receipt checkpoint of size {r['size']} kept over 5 minutes ago is not covered: {r['why']}")
        if result.ok:
            click.echo(f"all {result.checked - len(result.not_witnessed)} answer(s) older than {min_age_s} s are in the audit log "
                       f"under a checkpoint cosigned by a witness quorum (log size {result.tree_size}, {witnessed}); "
                       f"{result.reconciled} reconciled and pruned from the journal")
        elif not result.missing:
            click.echo(f"every answer is in the audit log, but not all of it is witnessed after 5 minutes ({witnessed}): "
                       "the witnesses may be down, or the operator is showing this member a log they did not cosign")
        else:
            click.echo(f"{len(result.missing)} of {result.checked} answer(s) are NOT in the audit log:")
            for miss in result.missing:
                near = miss["nearest_restart"]
                before = f"entry {near['before']['seq']} at {near['before']['time']}" if near["before"] else "none read"
                after = f"entry {near['after']['seq']} at {near['after']['time']}" if near["after"] else "none yet"
                click.echo(f"  query {miss['query_id']} answered at {miss['answered_at']}; "
                           f"gateway restart before: {before}, after: {after}")
            click.echo("an answer right before a gateway restart is most likely a crash between fan-out and commit; "
                       "otherwise the operator obtained it off the record")
    if not result.ok:
        ctx.exit(1)
