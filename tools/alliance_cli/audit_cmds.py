"""`alliance audit checkpoint / verify / prove / watch / report` (SPEC §6, §7).

Argument parsing and printing only; the work is in alliance_auditor
(network and the auditor's home) and alliance.audit_verify (pure checks).
Library errors reach the top-level group, which prints one line on stderr
and exits with the SPEC §7 status (1 bad log, 2 usage, 3 invalid input,
4 refused, 5 unreachable)."""
from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Any

import click

from alliance.errors import UsageError, VerificationFailed
from alliance_cli import output
from alliance_cli.params import parse_day

HOME = click.option("--home", "home", type=click.Path(file_okay=False, path_type=Path), required=True,
                    help="The auditor home (from `alliance member keygen --role auditor` and `member join`).")
DB = click.option("--db", "db_url", default=None, metavar="URL", hidden=True,
                  help="Accepted for uniformity; the auditor keeps no database.")
JSON = click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")


@click.group("audit")
def audit() -> None:
    """Auditor's tools: check the tamper-evident log without trusting the operator."""


@audit.command("checkpoint")
@HOME
@DB
@JSON
def audit_checkpoint(home: Path, db_url: str | None, as_json: bool) -> None:
    """Fetch the signed checkpoint, prove it extends the ones kept, keep it.

    \b
    Example:
      alliance audit checkpoint --home auditor
    """
    from alliance_auditor import verify as audit_verify_client

    result = audit_verify_client.checkpoint(home)
    if as_json:
        output.echo_json(result)
        return
    since = "first checkpoint kept" if result["previous_size"] is None else f"consistent with kept size {result['previous_size']}"
    click.echo(f"checkpoint {result['origin']}: size {result['tree_size']}, root {result['root_hash']} ({since}; "
               f"{result['kept_checkpoints']} kept)")


@audit.command("verify")
@HOME
@DB
@JSON
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Processes for signature checks (default: all cores).")
@click.option("--witness-wait", "witness_wait", type=click.FloatRange(min=0), default=30.0, show_default=True,
              help="Seconds to wait for the newest checkpoint to gather its witnesses' cosignatures (SPEC §6.1).")
def audit_verify_cmd(home: Path, db_url: str | None, as_json: bool, workers: int | None, witness_wait: float) -> None:
    """Rebuild the tree from every entry, check it against the signed and kept
    checkpoints, and check every entry's signatures and reasons (SPEC §6).
    Exit 0 when all is well, 1 naming the first bad entry, 5 when unreachable.

    \b
    Example:
      alliance audit verify --home auditor --json
    """
    from alliance_auditor import verify as audit_verify_client

    try:
        result = audit_verify_client.verify(home, workers=workers, witness_wait_s=witness_wait)
    except VerificationFailed as exc:
        if not as_json:
            raise
        reason = getattr(exc, "reason", None)
        output.echo_json({"ok": False, "first_bad_entry": exc.entry, "reason": reason or str(exc),
                          **({"detail": str(exc)} if reason else {})})
        click.echo(f"alliance: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    if as_json:
        result.pop("checkpoint", None)
        output.echo_json(result)
        return
    refusals = ", ".join(f"{k} {v}" for k, v in result["refusals"].items()) or "none"
    click.echo(f"audit log OK: {result['entries']} entries, checkpoint size {result['tree_size']} root {result['root_hash']}")
    click.echo(f"  {result['accepted']} accepted and {result['refused']} refused queries (refusals: {refusals}); "
               f"{result['signatures_checked']} signatures checked in {result['seconds']:.1f} s")
    if "witnessed_size" in result:
        pending = result["not_yet_witnessed"]["count"]
        click.echo(f"  witnessed up to size {result['witnessed_size']} (quorum {result['witness_quorum']} of "
                   f"{len(result['eligible_witnesses'])}); {pending} later entr{'y' if pending == 1 else 'ies'} not yet witnessed")
        for mid, w in result["witnesses"].items():
            click.echo(f"  witness {mid}: newest cosigned size {w['newest_cosigned_size']}"
                       + (" (more than 5 minutes behind)" if mid in result["lagging_witnesses"] else ""))
    if result["unverified_refusals"]:
        click.echo("  refusal reasons the log cannot show, accepted as stated: "
                   + ", ".join(f"{k} {v}" for k, v in result["unverified_refusals"].items()))


@audit.command("prove")
@HOME
@DB
@JSON
@click.option("--seq", type=click.IntRange(min=0), required=True, help="Sequence number (leaf index) of the entry.")
def audit_prove(home: Path, db_url: str | None, as_json: bool, seq: int) -> None:
    """Prove that entry SEQ is in the log under the current signed checkpoint.

    \b
    Example:
      alliance audit prove --home auditor --seq 1042
    """
    from alliance_auditor import verify as audit_verify_client

    result = audit_verify_client.prove(home, seq)
    if as_json:
        output.echo_json(result)
        return
    click.echo(f"entry {seq} ({result['entry']['kind']}, {result['entry'].get('time')}) is in the log of "
               f"{result['tree_size']} entries, root {result['root_hash']}")
    click.echo(f"leaf hash {result['leaf_hash']}; inclusion proof of {len(result['proof'])} hashes verified")


@audit.command("watch")
@HOME
@DB
@JSON
@click.option("--member", "member_id", required=True, help="Member id whose credentials to watch.")
@click.option("--fingerprint", default=None, help="The member's own key fingerprint: any other is an alert.")
@click.option("--since", type=click.IntRange(min=0), default=0, help="Only credentials from this entry on.")
def audit_watch(home: Path, db_url: str | None, as_json: bool, member_id: str, fingerprint: str | None, since: int) -> None:
    """List every credential issued in a member's name (as certificate
    transparency monitors do). Exit 1 when any is an alert.

    \b
    Example:
      alliance audit watch --home auditor --member lender-a --fingerprint 3f2a:91c0:…:7e05
    """
    from alliance_auditor import watch as credential_watch

    alerts = credential_watch.watch(home, member_id, fingerprint, since=since)
    if as_json:
        output.echo_json(alerts)
    elif not alerts:
        click.echo(f"no credential issued in the name of {member_id}" + (f" since entry {since}" if since else ""))
    for a in [] if as_json else alerts:
        flag = "ALERT" if a["alert"] else "ok"
        click.echo(f"[{flag}] entry {a['seq']} {a['time']}: credential serial {a['serial']} for {a['member_id']} "
                   f"({a['role']}, {a['keys']} keys), fingerprint {a['fingerprint']}")
        for why in a["why"]:
            click.echo(f"        {why}")
    if any(a["alert"] for a in alerts):
        click.echo(f"alliance: error: credential(s) in the name of {member_id} need attention", err=True)
        sys.exit(1)


@audit.command("report")
@HOME
@DB
@click.option("--from", "date_from", required=True, help="First day, YYYY-MM-DD (Asia/Shanghai).")
@click.option("--to", "date_to", required=True, help="Last day, YYYY-MM-DD (inclusive).")
@click.option("--member", default=None, help="Only this member.")
@JSON
@click.option("--csv", "as_csv", is_flag=True, help="One CSV row per member.")
def audit_report(home: Path, db_url: str | None, date_from: str, date_to: str, member: str | None, as_json: bool,
                 as_csv: bool) -> None:
    """Per member: queries by purpose, refusals by reason, quota hits, and
    days whose volume exceeds 3x the member's median.

    A refused request the gateway could not read (its body does not parse)
    is counted under the purpose "unreadable request".

    \b
    Example:
      alliance audit report --home auditor --from 2026-06-01 --to 2026-06-30 --csv
    """
    from alliance_auditor import activity_report

    if as_json and as_csv:
        raise UsageError("choose one of --json and --csv")
    rows = activity_report.report(home, parse_day(date_from, "--from"), parse_day(date_to, "--to"), member)
    if as_json:
        output.echo_json(rows)
    elif as_csv:
        writer = csv.DictWriter(sys.stdout, fieldnames=activity_report.CSV_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(activity_report.csv_row(r) for r in rows)
    else:
        _report_table(rows, date_from, date_to)


def _report_table(rows: list[dict[str, Any]], date_from: str, date_to: str) -> None:
    """One block per member, every line within 80 columns (long lists wrap)."""
    import textwrap

    if not rows:
        click.echo(f"no queries between {date_from} and {date_to}")
        return
    click.echo(f"Audit report {date_from} .. {date_to} (Asia/Shanghai days)")

    def field(label: str, items: list[str]) -> None:
        text = ", ".join(items) or "none"
        for line in textwrap.wrap(text, width=80, initial_indent=f"  {label:<12}", subsequent_indent=" " * 14,
                                  break_on_hyphens=False):
            click.echo(line)

    for r in rows:
        click.echo("")
        head = (f"{r['member_id']}: {r['queries']:,} queries, {r['accepted']:,} accepted, "
                f"{r['quota_hits']:,} quota hits, median {r['median_daily']:g}/day")
        for line in textwrap.wrap(head, width=80, subsequent_indent="  ", break_on_hyphens=False):
            click.echo(line)
        field("by purpose", [f"{k} {v:,}" for k, v in r["by_purpose"].items()])
        field("refusals", [f"{k} {v:,}" for k, v in r["refusals"].items()])
        field("busy days", [f"{d['date']} ({d['queries']:,} > 3x median)" for d in r["spike_days"]])
