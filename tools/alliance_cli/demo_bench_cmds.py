"""`alliance demo` and `alliance bench` (SPEC §7, §8, §12): printing and
argument checks; the work is in alliance_cli.demo, .bench and .soak_cmd.
main.py attaches both commands to the root."""
from __future__ import annotations

from pathlib import Path

import click

from alliance.errors import UsageError
from alliance_cli import output


@click.command("demo")
@click.option("--data", "data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="One folder per member with loans.csv, flags.csv, scores.csv (replaces the synthetic data).")
@click.option("--keep-running", is_flag=True, help="Leave the alliance up until SIGTERM or SIGINT.")
@click.option("--state-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the endpoints and homes as JSON here once everything is serving (SPEC §7).")
@click.option("--home", "work_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where to build the alliance (default: a temporary directory).")
def demo_command(data_dir: Path | None, keep_running: bool, state_file: Path | None, work_dir: Path | None) -> None:
    """Build a throw-away local alliance and run example queries.

    \b
    Example:
      alliance demo
      alliance demo --data mydata --keep-running --state-file state.json
    """
    from alliance_cli import demo

    demo.run(data_dir=data_dir, keep_running=keep_running, state_file=state_file, work_dir=work_dir, echo=click.echo)


def _member_counts(text: str) -> list[int]:
    """--members: comma-separated counts, each at least 3 (a querier and k = 2 others)."""
    counts = []
    for part in text.split(","):
        part = part.strip()
        if not part.isdigit():
            raise UsageError(f"--members must be comma-separated whole numbers such as 5,10, not {text!r}")
        if int(part) < 3:
            raise UsageError(f"--members: {part} is too few; a query needs the querier and at least 2 other members (3 or more)")
        if int(part) > 200:
            raise UsageError(f"--members: {part} is more member processes than a benchmark on one machine should start (at most 200)")
        counts.append(int(part))
    return counts


@click.command("bench")
@click.option("--members", default="5,10", show_default=True, help="Comma-separated member counts, each at least 3.")
@click.option("--queries", type=click.IntRange(min=1), default=200, show_default=True,
              help="Queries in the concurrent phase, per member count.")
@click.option("--light-queries", type=click.IntRange(min=1), default=60, show_default=True,
              help="Queries in the light-load phase (an open loop at 2 queries/s).")
@click.option("--concurrency", type=click.IntRange(min=1), default=16, show_default=True,
              help="Closed-loop queriers in the concurrent phase.")
@click.option("--naive-queries", type=click.IntRange(min=1), default=10, show_default=True,
              help="Queries per phase for the naive baseline (concurrency 1, 60 s deadline).")
@click.option("--screen", "screen", type=click.IntRange(min=0), default=0, show_default=True,
              help="Also screen this many fresh subjects over one streamed call.")
@click.option("--masks", "mask_mode", type=click.Choice(["djn", "plain"]), default="djn", show_default=True,
              help="Member mask form: DJN short-exponent tables, or plain r^n for comparison.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON on stdout (SPEC §8 shape); progress goes to stderr.")
@click.option("--soak", "soak_s", type=click.IntRange(min=2), default=None, metavar="SECONDS",
              help="Instead: a soak test (SPEC §12) of SECONDS at 80 %% of measured capacity through two gateway replicas "
                   "on PostgreSQL, one SIGKILLed and restarted midway (one member count; default 4).")
@click.option("--db", "db_url", default=None, metavar="URL",
              help="--soak only: PostgreSQL server to create the replicas' database on (default: a throw-away server).")
def bench_command(members: str, queries: int, light_queries: int, concurrency: int, naive_queries: int, screen: int,
                  mask_mode: str, as_json: bool, soak_s: int | None, db_url: str | None) -> None:
    """Benchmark latency, throughput and CPU against the naive-phe baseline (SPEC §8).

    \b
    Example:
      alliance bench --members 5,10 --concurrency 16 --json
      alliance bench --members 10 --screen 100000
      alliance bench --soak 600 --json          # replicas under sustained load; exit 1 unless it passes
    """
    from alliance_cli.localnet import sigterm_stops_like_ctrl_c

    if soak_s is not None or db_url is not None:
        from alliance_cli import soak_cmd

        with sigterm_stops_like_ctrl_c():
            soak_cmd.run(soak_s, db_url=db_url, members=members, members_given=click.get_current_context()
                         .get_parameter_source("members") is not click.core.ParameterSource.DEFAULT,
                         concurrency=concurrency, as_json=as_json)
        return
    from alliance_cli import bench

    counts = _member_counts(members)
    with sigterm_stops_like_ctrl_c():
        results = bench.run(counts, queries=queries, light_queries=light_queries, concurrency=concurrency,
                            naive_queries=naive_queries, screen=screen, mask_mode=mask_mode,
                            echo=(lambda line: click.echo(line, err=True)) if as_json else click.echo)
    if as_json:
        output.echo_json(results)
