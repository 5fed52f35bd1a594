"""`alliance member disclose` and `alliance audit monthly-report` (SPEC §11).

Argument parsing and printing only: figures and statements in
alliance.disclosure, the member side in alliance_member.disclosure, the
report in alliance.monthly_report (+ _render) and alliance_auditor.monthly_report."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from alliance.errors import UsageError
from alliance_cli import output

MONTH = click.option("--month", required=True, metavar="YYYY-MM", help="The calendar month disclosed (as of its last day).")


def _month(value: str) -> str:
    from alliance import disclosure
    from alliance.errors import InvalidInput

    try:
        disclosure.parse_month(value)
    except InvalidInput as exc:
        raise UsageError(f"--month: {exc}") from None
    return value


@click.command("disclose")
@click.option("--home", "home", type=click.Path(file_okay=False, path_type=Path), required=True, help="Directory holding keys and state.")
@click.option("--db", "db_url", default=None, metavar="URL", help="SQLAlchemy database URL (default: SQLite under --home).")
@MONTH
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def member_disclose(home: Path, db_url: str | None, month: str, as_json: bool) -> None:
    """Compute this member's monthly figures (SPEC §11) from its own book,
    sign them and have the gateway log them. Run it in the first days of the
    next month; a later run for the same month supersedes the earlier one.

    \b
    Example:
      alliance member disclose --home m --month 2026-05
    """
    from alliance import disclosure
    from alliance_member import disclosure as member_disclosure

    result = member_disclosure.disclose(home, _month(month), db_url=db_url)
    if as_json:
        output.echo_json(result)
        return
    from alliance import monthly_report_render as render

    click.echo(f"disclosure of {result['member_id']} for {month} logged as entry {result['audit']['leaf_index']} "
               f"({result['audit']['time']})")
    for key in disclosure.FIGURES:
        click.echo(f"  {render.LABELS[key]:<28} {render.fmt(render.kind_of(key), result['figures'][key]):>22}")


@click.command("monthly-report")
@click.option("--home", "home", type=click.Path(file_okay=False, path_type=Path), required=True, help="The auditor home.")
@click.option("--db", "db_url", default=None, metavar="URL", hidden=True, help="Accepted for uniformity; the auditor keeps no database.")
@MONTH
@click.option("--html", "html_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the printable report (one self-contained HTML file) here.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON document.")
@click.option("--csv", "as_csv", is_flag=True, help="Print the per-member table as CSV.")
def audit_monthly_report(home: Path, db_url: str | None, month: str, html_file: Path | None, as_json: bool, as_csv: bool) -> None:
    """The alliance's monthly operations report, from the audit log alone:
    every disclosure's signature checked (exit 1 naming the entry when one
    fails), per-member figures, totals, change against the previous month,
    members who did not disclose, query activity, charts.

    \b
    Example:
      alliance audit monthly-report --home auditor --month 2026-11 --html report-2026-11.html
    """
    from alliance import monthly_report_render as render
    from alliance._internal.files import write_atomic
    from alliance_auditor import monthly_report

    if as_json and as_csv:
        raise UsageError("choose one of --json and --csv")
    if html_file is not None and not html_file.parent.exists():
        raise UsageError(f"--html: folder {html_file.parent} does not exist")
    report = monthly_report.build(home, _month(month))
    if html_file is not None:
        write_atomic(html_file, render.html(report).encode("utf-8"))
    if as_json:
        output.echo_json(report)
    elif as_csv:
        sys.stdout.write(render.csv_text(report))
    else:
        t = report["totals"]
        click.echo(f"{report['title']} {month}: {render.disclosed_sentence(report).rstrip('.')}"
                   + (f"; not disclosed: {', '.join(report['not_disclosed'])}" if report["not_disclosed"] else ""))
        if t:
            click.echo(f"  outstanding {render.fmt('fen', t['outstanding_balance_fen'])}, loan overdue rate "
                       f"{render.fmt('bp', t['loan_overdue_rate_bp'])}, amount overdue rate {render.fmt('bp', t['amount_overdue_rate_bp'])}")
        click.echo(f"  {report['disclosures_checked']} disclosure signature(s) checked")
        if html_file is not None:
            click.echo(f"  report written to {html_file}")
