"""`alliance`: one entry point for operators, members and auditors (SPEC §7).

This module only parses arguments and prints; the work is done by the
library (alliance, alliance_gateway, alliance_member). Errors are one line on
stderr with the exit status of SPEC §7: 2 usage, 3 invalid input, 4 refused,
5 alliance unreachable or too few answers."""
from __future__ import annotations

import logging
import os
import sys
from typing import Any

import click

from alliance.errors import AllianceError
from alliance_cli import admin_cmds, db_cmds, demo_bench_cmds, gateway_cmds, member_cmds, member_query_cmds, monitor_cmds
from alliance_cli.audit_cmds import audit
from alliance_cli.disclosure_cmds import audit_monthly_report, member_disclose
from alliance_cli.options import PASSPHRASE
from alliance_cli.params import check_host_port
from alliance_cli.reconcile_cmd import reconcile_command


class AllianceGroup(click.Group):
    """Turns every library error into one stderr line and its exit status."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except AllianceError as exc:
            click.echo(f"alliance: error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except BrokenPipeError:
            _stdout_gone()
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort, SystemExit, KeyboardInterrupt):
            raise
        except Exception as exc:  # noqa: BLE001 - the last line of defence: no traceback for users
            if os.environ.get("ALLIANCE_DEBUG"):
                raise
            problem = _database_problem(exc)
            if problem is not None:
                click.echo(f"alliance: error: {problem}", err=True)
                ctx.exit(5)
            click.echo(f"alliance: internal error: {type(exc).__name__}: {exc} (set ALLIANCE_DEBUG=1 for a traceback)", err=True)
            ctx.exit(1)


@click.group(cls=AllianceGroup)
@click.option("-v", "--verbose", is_flag=True, help="Log progress to stderr.")
@click.option("--gateway", "gateways", default=None, metavar="HOST:PORT[,HOST:PORT…]",
              help="Gateway replicas to use instead of the home's member.json (tried in order; an outage fails over "
                   "to the next). Also $ALLIANCE_GATEWAY.")
def cli(verbose: bool, gateways: str | None) -> None:
    """Credit alliance gateway: multi-lending reports without disclosure."""
    level = logging.DEBUG if os.environ.get("ALLIANCE_DEBUG") else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(message)s")
    if gateways is not None:
        for target in gateways.split(","):
            check_host_port("--gateway", target.strip())
        os.environ["ALLIANCE_GATEWAY"] = gateways  # read by every gateway client this command opens


# Each command group lives in its own module and is attached here (`--help` lists commands sorted by name).
cli.add_command(admin_cmds.admin)
cli.add_command(gateway_cmds.gateway)
cli.add_command(member_cmds.member)
cli.add_command(demo_bench_cmds.demo_command)
cli.add_command(demo_bench_cmds.bench_command)
cli.add_command(audit)
for _command in (member_query_cmds.member_query, member_query_cmds.member_precheck, member_query_cmds.member_screen,
                 reconcile_command, member_disclose):
    member_cmds.member.add_command(_command)
audit.add_command(audit_monthly_report)
monitor_cmds.register(member_cmds.member)
db_cmds.register(admin_cmds.admin, member_cmds.member, PASSPHRASE)


def _database_problem(exc: Exception) -> str | None:
    """A database that cannot be opened or reached (a `--db` URL of a server
    that is down, a SQLite file in a folder that is gone, a lock held too
    long) is the operator's to fix, not an internal error: one line, exit 5."""
    from sqlalchemy.exc import InterfaceError, OperationalError

    if not isinstance(exc, (OperationalError, InterfaceError)):
        return None
    reason = str(exc.orig if exc.orig is not None else exc).strip().splitlines()
    return f"the database cannot be used: {reason[0] if reason else type(exc).__name__} (check --db or the home's db_url)"


def _stdout_gone() -> None:
    """Whoever read stdout went away (`alliance admin member list | head -3`):
    stop quietly with the status of a tool SIGPIPE ended (128 + 13), not an
    "internal error"; stdout is pointed at /dev/null so that the final flush
    cannot fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    sys.exit(141)


def main() -> None:
    """Usage errors too are one line on stderr (SPEC §7), with where to find help."""
    try:
        code = cli.main(prog_name="alliance", standalone_mode=False)
        sys.stdout.flush()  # here, where a reader that went away is caught, not at interpreter exit
    except BrokenPipeError:
        _stdout_gone()
    except click.ClickException as exc:
        message = " ".join(exc.format_message().split())
        ctx = getattr(exc, "ctx", None)
        hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        click.echo(f"alliance: error: {message}{hint}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("alliance: error: aborted; nothing was changed", err=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
