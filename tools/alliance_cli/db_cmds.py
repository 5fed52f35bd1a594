"""`alliance admin db upgrade` and `alliance member db upgrade` (SPEC §6.4,
§12). Argument parsing and printing only: the schema work is
alliance.migrations, called by alliance_gateway.admin and alliance_member.store."""
from __future__ import annotations

from pathlib import Path

import click

from alliance.migrations import UpgradeResult

HOME = click.option("--home", "home", type=click.Path(path_type=Path), required=True, help="Directory holding keys and state.")
DB = click.option("--db", "db_url", default=None, metavar="URL", help="SQLAlchemy database URL (default: SQLite under --home).")


def describe(kind: str, result: UpgradeResult) -> str:
    """One line on what the schema upgrade did."""
    if result.created:
        return f"{kind} database: created at the current schema (revision {result.after})"
    if not result.changed:
        return f"{kind} database: already up to date (revision {result.after})"
    source = "the previous release's schema" if result.stamped_baseline else f"revision {result.before}"
    return f"{kind} database: upgraded from {source} to revision {result.after} (applied {', '.join(result.applied)})"


def register(admin: click.Group, member: click.Group, passphrase: click.Option) -> None:  # type: ignore[type-arg]
    @admin.group("db")
    def admin_db() -> None:
        """The gateway database: registry and audit log."""

    @admin_db.command("upgrade")
    @HOME
    @DB
    @passphrase
    def admin_db_upgrade(home: Path, db_url: str | None, passphrase_file: Path | None) -> None:
        """Bring the gateway database to this release's schema (SPEC §12), then
        a v1 log to v2 (SPEC §6.4): a `v2_started` entry after which the v2
        rules apply. Stop the gateways first; safe to run twice.

        \b
        Example:
          alliance admin db upgrade --home admin --passphrase-file ca-pass.txt
        """
        from alliance import pki
        from alliance_gateway.admin import Admin

        admin_ = Admin(home, db_url=db_url, ca_passphrase=pki.resolve_ca_passphrase(passphrase_file), check_schema=False)
        result = admin_.upgrade_db()
        click.echo(describe("gateway", result["schema"]))
        if result["already_v2"]:
            click.echo(f"log: already v2, its v2_started entry is {result['v2_started_seq']}")
        else:
            click.echo(f"log: upgraded, v2_started logged as entry {result['v2_started_seq']}; v2 rules apply from here on")
        if result["gateway_certificate_reissued"]:
            click.echo("the gateway certificate was reissued with the reserved gateway name; restart `alliance gateway serve`")

    @member.group("db")
    def member_db() -> None:
        """The member database: book, journal, alerts, membership feed."""

    @member_db.command("upgrade")
    @HOME
    @DB
    def member_db_upgrade(home: Path, db_url: str | None) -> None:
        """Bring this member's database to this release's schema (SPEC §12); a
        database made by the previous release keeps every row. Stop `member
        serve` first; safe to run twice.

        \b
        Example:
          alliance member db upgrade --home m
        """
        from alliance_member import store

        click.echo(describe("member", store.upgrade_db(home, db_url)))
