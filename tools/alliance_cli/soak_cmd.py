"""Printing for `alliance bench --soak` (the work is in alliance_cli.soak)."""
from __future__ import annotations

import click

from alliance.errors import UsageError
from alliance_cli import output, soak


def run(seconds: int | None, *, db_url: str | None, members: str, members_given: bool, concurrency: int,
        as_json: bool) -> None:
    if seconds is None:
        raise UsageError("--db is for --soak only (the other benchmarks run on SQLite)")
    count = soak.DEFAULT_MEMBERS
    if members_given:
        if not members.strip().isdigit():
            raise UsageError(f"--soak takes one member count (--members N), not {members!r}")
        count = int(members)
    # with --json, stdout is exactly one JSON document: progress goes to stderr
    result = soak.run(seconds, members=count, db_url=db_url, concurrency=concurrency,
                      echo=lambda line: click.echo(line, err=as_json))
    if as_json:
        output.echo_json(result)
    else:
        for line in soak.summary_lines(result):
            click.echo(line)
    if not result["pass"]:
        raise soak.SoakFailed("soak failed: " + "; ".join(result["failures"]))
