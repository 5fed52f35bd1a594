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


def report_table(result: dict[str, Any]) -> None:
    r = result["report"]
    title = f"Alliance report — {result['members_answered']} of {result['members_asked']} members answered"
    if not result["complete"]:
        title += " (INCOMPLETE)"
    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for name, value in r.items():
        if name in FEN_FIELDS:
            table.add_row(name.removesuffix("_fen") + " (yuan)", yuan(value))
        else:
            table.add_row(name, "—" if value is None else str(value))
    console.print(table)
    audit = result.get("audit")
    console.print(f"query {result['query_id']}" + (f", audit log leaf {audit['leaf_index']}" if audit else ""))


def member_table(rows: list[dict[str, Any]]) -> None:
    table = Table(show_header=True, header_style="bold")
    for col in ("member_id", "name", "role", "status", "endpoint", "daily_quota", "fingerprint"):
        table.add_column(col)
    for row in rows:
        table.add_row(*(str(row[c]) for c in ("member_id", "name", "role", "status", "endpoint", "daily_quota", "fingerprint")))
    console.print(table)


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
    with path.open(encoding="utf-8-sig") as fh:
        total = max(0, sum(1 for _ in fh) - 1)
    with Progress(TextColumn(f"screening {path.name}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err_console, transient=True) as progress:
        task = progress.add_task("screen", total=total)
        yield lambda: progress.advance(task)
