"""Human output: tables and progress bars (rich). Machine output is --json."""
from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

console = Console()
err_console = Console(stderr=True)

FEN_FIELDS = ("outstanding_balance_fen", "overdue_amount_fen", "written_off_amount_fen")


def echo_json(data: Any) -> None:
    """One JSON document on stdout, as every `--json` flag promises (SPEC §7)."""
    click.echo(json.dumps(data, ensure_ascii=False, indent=2))


def yuan(fen: int) -> str:
    return f"{fen // 100:,}.{fen % 100:02d}"


# Human labels for the report figures of SPEC §4 (the JSON keeps the names).
FIELD_LABELS = {
    "lenders_with_active_loans": "lenders with active loans",
    "active_loans": "active loans",
    "outstanding_balance_fen": "outstanding balance (¥)",
    "loans_opened_30d": "loans opened, last 30 days",
    "loans_opened_90d": "loans opened, last 90 days",
    "lenders_with_overdue": "lenders with an overdue loan",
    "overdue_loans": "overdue loans",
    "overdue_amount_fen": "overdue amount (¥)",
    "dpd_1_30": "overdue 1–30 days",
    "dpd_31_60": "overdue 31–60 days",
    "dpd_61_90": "overdue 61–90 days",
    "dpd_91_plus": "overdue 91+ days",
    "written_off_loans": "written-off loans",
    "written_off_amount_fen": "written-off amount (¥)",
    "settled_loans": "settled loans",
    "lenders_flagging_fraud": "lenders flagging fraud",
    "lenders_flagging_malicious_default": "lenders flagging malicious default",
    "scored_lenders": "lenders holding a score",
    "score_sum": "sum of scores",
    "average_score": "average score",
    "inquiries_30d": "loan applications, last 30 days",
}

_DPD = (("dpd_1_30", "1–30"), ("dpd_31_60", "31–60"), ("dpd_61_90", "61–90"), ("dpd_91_plus", "91+"))


def _n(count: int, one: str, many: str | None = None) -> str:
    return f"{count:,} {one if count == 1 else (many or one + 's')}"


def summary_line(r: dict[str, Any]) -> str:
    """One line a loan officer can act on (SPEC §7), e.g. "borrows at 2 other
    lenders: 5 active loans, ¥469,511.05 outstanding; 1 loan 1–30 days
    overdue; flagged for fraud by 2 lenders"."""
    parts: list[str] = []
    if r["active_loans"]:
        parts.append(f"borrows at {_n(r['lenders_with_active_loans'], 'other lender')}: "
                     f"{_n(r['active_loans'], 'active loan')}, ¥{yuan(r['outstanding_balance_fen'])} outstanding")
    overdue = [f"{_n(r[key], 'loan')} {days} days overdue" for key, days in _DPD if r[key]]
    if overdue:
        parts.append(", ".join(overdue))
    if r["written_off_loans"]:
        parts.append(f"{_n(r['written_off_loans'], 'loan')} written off (¥{yuan(r['written_off_amount_fen'])})")
    if r["lenders_flagging_fraud"]:
        parts.append(f"flagged for fraud by {_n(r['lenders_flagging_fraud'], 'lender')}")
    if r["lenders_flagging_malicious_default"]:
        parts.append(f"flagged for malicious default by {_n(r['lenders_flagging_malicious_default'], 'lender')}")
    if r.get("inquiries_30d"):
        parts.append(f"{_n(r['inquiries_30d'], 'loan application')} at other lenders in the last 30 days")
    if not r["active_loans"]:
        history = r["settled_loans"] or r["written_off_loans"] or r["scored_lenders"] or r["loans_opened_90d"]
        if not parts and not history:
            return "no record at the other lenders: no loans, nothing overdue, no flags"
        lead = "no active loans at other lenders"
        if r["settled_loans"]:
            lead += f" ({_n(r['settled_loans'], 'settled loan')})"
        parts.insert(0, lead)
    elif not overdue:
        parts.insert(1, "nothing overdue")
    return "; ".join(parts)


def report_table(result: dict[str, Any], *, subject: str = "", as_of: str = "", purpose: str = "") -> None:
    r = result["report"]
    lines = []
    if not result["complete"]:
        lines.append(f"INCOMPLETE: only {result['members_answered']} of {result['members_asked']} members answered")
    lines.append(summary_line(r))
    ident = ", ".join(x for x in (f"subject {subject}" if subject else "", f"as of {as_of}" if as_of else "",
                                  f"purpose {purpose}" if purpose else "") if x)
    if ident:
        lines.append(ident)
    lines.append(f"{result['members_answered']} of {result['members_asked']} other members answered; "
                 "your own book is not included")
    if result.get("coverage") is not None:  # SPEC §10
        lines.append(coverage_line(result["coverage"]))
    for line in lines:  # never folded at the terminal's width: the summary is one line (SPEC §7), for `| head -1` too
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    table = Table(show_header=True, header_style="bold")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for name, value in r.items():
        label = FIELD_LABELS.get(name, name)
        if name in FEN_FIELDS:
            table.add_row(label, yuan(value))
        else:
            table.add_row(label, "—" if value is None else f"{value:,}" if isinstance(value, int) else str(value))
    console.print(table)
    audit = result.get("audit")
    console.print(f"query {result['query_id']}" + (f", audit log leaf {audit['leaf_index']}" if audit else ""),
                  markup=False, highlight=False, soft_wrap=True)


def coverage_line(c: dict[str, Any]) -> str:
    """SPEC §10 coverage in one line, from the answers' signed book statuses."""
    oldest = (f"oldest answering book as of {c['oldest_book_as_of']}" if c.get("oldest_book_as_of")
              else "no answering member stated a book date")
    stale = c.get("stale_members", 0)
    return f"coverage: {oldest}; " + ("no stale books" if not stale else f"{stale} answering member(s) with a stale book")


def book_line(r: dict[str, Any]) -> str:
    """SPEC §10: a member's latest logged book status, for operators."""
    if r.get("book_loans") is None:
        return "book: no status logged yet"
    if r.get("book_date") is None:
        return "book: no loans imported"
    return f"book as of {r['book_date']}, {r['book_loans']:,} loan(s)"


def member_table(rows: list[dict[str, Any]], *, wide: bool = False) -> None:
    """Members for an operator at 80 columns: one block per member, the
    fingerprint whole on two lines of 8 groups (read out by phone, never
    truncated). ``wide``: one line per member, as long as it needs to be."""
    if not rows:
        click.echo("no members yet")
        return
    if wide:
        cols = ("member_id", "name", "role", "status", "daily_quota", "book_date", "book_loans", "endpoint", "fingerprint")
        cells = [[str(r[c]) for c in cols] for r in rows]
        widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
        click.echo("  ".join(c.ljust(w) for c, w in zip(cols, widths)).rstrip())
        for row in cells:
            click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())
        return
    for i, r in enumerate(rows):
        if i:
            click.echo("")
        click.echo(f"{r['member_id']}  ({r['role']}, {r['status']})  {r['name']}")
        details = f"quota {r['daily_quota']:,}/day" if isinstance(r["daily_quota"], int) else f"quota {r['daily_quota']}"
        if r.get("endpoint"):
            details += f"  endpoint {r['endpoint']}"
        click.echo(f"  {details}")
        groups = str(r["fingerprint"]).split(":")
        half = (len(groups) + 1) // 2
        click.echo(f"  fingerprint {':'.join(groups[:half])}")
        if groups[half:]:
            click.echo(f"              {':'.join(groups[half:])}")
        if r.get("role") == "member":
            click.echo(f"  {book_line(r)}")


def key_values(row: dict[str, Any]) -> None:
    for key, value in row.items():
        console.print(f"[bold]{key}[/bold]: {value}")


@contextmanager
def import_progress(path: Path) -> Iterator[Callable[[int], None]]:
    """A progress bar on a terminal (rows read; bytes unknown for streams)."""
    if not sys.stderr.isatty():
        yield lambda _n: None
        return
    with Progress(TextColumn(f"importing {path.name}"), BarColumn(), TextColumn("{task.completed:,} rows"),
                  TimeElapsedColumn(), console=err_console, transient=True) as progress:
        task = progress.add_task("import", total=None)
        yield lambda n: progress.update(task, completed=n)


@contextmanager
def screen_progress(path: Path) -> Iterator[Callable[[], None]]:
    if not sys.stderr.isatty():
        yield lambda: None
        return
    with path.open("rb") as fh:  # bytes: a line that is not UTF-8 is reported by the reader, not here
        total = max(0, sum(1 for _ in fh) - 1)
    with Progress(TextColumn(f"screening {path.name}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err_console, transient=True) as progress:
        task = progress.add_task("screen", total=total)
        yield lambda: progress.advance(task)
