"""Click options shared by several command modules (admin_cmds, gateway_cmds,
member_cmds, member_query_cmds) and the wiring in main.py."""
from __future__ import annotations

from pathlib import Path

import click

HOME = click.option("--home", "home", type=click.Path(file_okay=False, path_type=Path), required=True, help="Directory holding keys and state.")
DB = click.option("--db", "db_url", default=None, metavar="URL", help="SQLAlchemy database URL (default: SQLite under --home).")
METRICS_LISTEN = click.option(
    "--metrics-listen", default=None, metavar="HOST:PORT",
    help="Serve Prometheus metrics at http://HOST:PORT/metrics (plain HTTP: bind it to a private address). Off by default.")
PASSPHRASE = click.option(
    "--passphrase-file", "passphrase_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
    help="File holding the CA key's passphrase (default: $ALLIANCE_CA_PASSPHRASE; neither: the CA key is not encrypted).",
)
