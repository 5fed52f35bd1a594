"""`alliance gateway serve` (SPEC §7). Argument parsing only; the work is
alliance_gateway.server. main.py attaches the group to the root."""
from __future__ import annotations

from pathlib import Path

import click

from alliance_cli.options import DB, HOME, METRICS_LISTEN


@click.group()
def gateway() -> None:
    """The alliance gateway."""


@gateway.command("serve")
@HOME
@DB
@click.option("--listen", default=None, metavar="HOST:PORT", help="Override the configured listen address.")
@METRICS_LISTEN
def gateway_serve(home: Path, db_url: str | None, listen: str | None, metrics_listen: str | None) -> None:
    """Run the gateway (needs the gateway home only, never the CA key).

    \b
    Example:
      alliance gateway serve --home gw --listen 0.0.0.0:50051 --metrics-listen 127.0.0.1:9101
    """
    from alliance_gateway.server import serve

    serve(home, db_url=db_url, listen=listen, on_ready=lambda port: click.echo(f"gateway serving on port {port}", err=True),
          metrics_listen=metrics_listen)
