"""`alliance admin init / member / policy / auditor` (SPEC §7): the alliance operator.

Argument parsing and printing only; the work is in alliance_gateway.admin.
`admin db` is in db_cmds; main.py attaches the group to the root."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from alliance._internal.files import write_atomic
from alliance.errors import UsageError
from alliance_cli import output
from alliance_cli.options import DB, HOME, PASSPHRASE


def _ca_passphrase(passphrase_file: Path | None) -> bytes | None:
    from alliance import pki

    return pki.resolve_ca_passphrase(passphrase_file)


@click.group()
def admin() -> None:
    """Alliance operator: CA, members, quotas."""


@admin.command("init")
@HOME
@DB
@click.option("--gateway-home", type=click.Path(file_okay=False, path_type=Path), default=None, help="Gateway home (default: HOME/../gateway).")
@click.option("--name", "alliance_name", default="credit-alliance.example", show_default=True, help="Alliance name; the log origin is NAME/audit-log.")
@click.option("--listen", default="127.0.0.1:50051", show_default=True, help="Address the gateway listens on.")
@click.option("--endpoint", default=None, help="host:port members use to reach the gateway (default: --listen).")
@click.option("--host", "hosts", multiple=True, help="Extra host names for the gateway certificate.")
@click.option("--default-quota", type=click.IntRange(min=0), default=10_000, show_default=True,
              help="Daily query quota of a member admitted without --quota.")
@click.option("--k", "k_min", type=click.IntRange(min=2), default=2, show_default=True, help="Minimum members in any sum.")
@click.option("--deadline-ms", type=click.IntRange(min=50), default=2000, show_default=True,
              help="How long the gateway waits for members' answers, in milliseconds.")
@click.option("--local", is_flag=True, help="Local/demo alliance on one machine: localhost and 127.0.0.1 in every certificate.")
@PASSPHRASE
def admin_init(home: Path, db_url: str | None, gateway_home: Path | None, alliance_name: str, listen: str,
               endpoint: str | None, hosts: tuple[str, ...], default_quota: int, k_min: int, deadline_ms: int,
               local: bool, passphrase_file: Path | None) -> None:
    """Create the alliance CA, gateway and log keys, and the registry database.

    The CA key is encrypted with the passphrase from --passphrase-file or
    $ALLIANCE_CA_PASSPHRASE when one is given.

    \b
    Example:
      alliance admin init --home admin --gateway-home gw --listen 0.0.0.0:50051 \\
          --endpoint gw.example:50051 --passphrase-file ca-pass.txt
    """
    from alliance_gateway import admin as admin_ops

    passphrase = _ca_passphrase(passphrase_file)
    gateway_home = gateway_home or home.parent / "gateway"
    host = (endpoint or listen).rsplit(":", 1)[0]
    result = admin_ops.init_alliance(
        home, gateway_home, alliance_name=alliance_name, listen=listen, gateway_endpoint=endpoint or listen,
        hosts=tuple(dict.fromkeys((host, *hosts))), db_url=db_url,
        default_quota=default_quota, deadline_ms=deadline_ms, k_min=k_min, local=local, ca_passphrase=passphrase,
    )
    click.echo(f"alliance CA created in {result.admin_home} (keep this directory offline)"
               + ("; its key is encrypted with your passphrase" if passphrase else ""))
    click.echo(f"gateway home: {result.gateway_home}")
    click.echo(f"registry database: {result.db_url}")
    click.echo(f"log verifier key: {result.log_verifier}")


@admin.group("member")
def admin_member() -> None:
    """Admit and manage members."""


def _admin(home: Path, db_url: str | None, passphrase_file: Path | None = None, *, signs: bool = False):  # type: ignore[no-untyped-def]
    from alliance_gateway.admin import Admin

    return Admin(home, db_url=db_url, ca_passphrase=_ca_passphrase(passphrase_file) if signs else None)


def _check_out_folder(out_file: Path) -> None:
    """`--out` must be writable where it points before anything is issued:
    a credential is logged for good, so failing after it leaves a member
    registered whose bundle nobody has."""
    folder = out_file.parent
    if not folder.is_dir():
        raise UsageError(f"--out: folder {folder} does not exist; nothing was issued")


@admin_member.command("add")
@HOME
@DB
@click.option("--request", "request_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True, help="join-request.bin from `alliance member keygen`.")
@click.option("--out", "out_file", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Where to write the credential bundle.")
@click.option("--quota", type=click.IntRange(min=0), default=None, help="Daily query quota (default: the alliance default).")
@PASSPHRASE
def admin_member_add(home: Path, db_url: str | None, request_file: Path, out_file: Path, quota: int | None,
                     passphrase_file: Path | None) -> None:
    """Check a join request and issue the member's credential.

    Compare the fingerprint it prints with the one the member read out to
    you (`alliance member keygen` printed it) before handing the bundle over.

    \b
    Example:
      alliance admin member add --home admin --request join-request.bin --out lender-b.bundle
    """
    _check_out_folder(out_file)  # before the credential is issued and logged: a retry would find the member exists
    bundle = _admin(home, db_url, passphrase_file, signs=True).add(request_file.read_bytes(), daily_quota=quota, expected_role="member")
    write_atomic(out_file, bundle)
    click.echo(f"credential bundle written to {out_file}; hand it to the member for `alliance member join`")


@admin_member.command("list")
@HOME
@DB
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
@click.option("--wide", is_flag=True, help="One line per member (wider than 80 columns); fingerprints are never truncated.")
def admin_member_list(home: Path, db_url: str | None, as_json: bool, wide: bool) -> None:
    """List members and auditors, with their whole key fingerprints.

    \b
    Example:
      alliance admin member list --home admin
    """
    rows = _admin(home, db_url).list()
    if as_json:
        output.echo_json(rows)
    else:
        output.member_table(rows, wide=wide)


@admin_member.command("show")
@HOME
@DB
@click.argument("member_id")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def admin_member_show(home: Path, db_url: str | None, member_id: str, as_json: bool) -> None:
    """Show one member: status, quota, endpoint, whole key fingerprint.

    \b
    Example:
      alliance admin member show --home admin lender-b
    """
    row = _admin(home, db_url).show(member_id)
    if as_json:
        output.echo_json(row)
    else:
        output.key_values(row)


def _status_command(name: str, status: str, help_text: str, *, confirm: bool = False) -> None:
    def command(home: Path, db_url: str | None, member_id: str, yes: bool = False) -> None:
        admin_ = _admin(home, db_url)
        if confirm and not yes:
            current = admin_.show(member_id)  # an unknown member fails here, before any question
            if not sys.stdin.isatty():
                raise UsageError(f"{name} {member_id} cannot be undone: confirm with --yes when not at a terminal")
            if current["status"] != status:
                click.confirm(f"{name} {member_id} ({current['name']}) for good? This cannot be undone", abort=True,
                              err=True)
        admin_.set_status(member_id, status)
        click.echo(f"{member_id}: {status} (effective at the gateway within seconds)")

    command = click.argument("member_id")(command)
    if confirm:
        command = click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")(command)
    command = DB(HOME(command))
    admin_member.command(name, help=help_text)(command)


_status_command("suspend", "suspended", "Suspend a member: it can neither query nor be asked.\n\n"
                "\b\nExample:\n  alliance admin member suspend --home admin lender-b")
_status_command("resume", "active", "Resume a suspended member.\n\n"
                "\b\nExample:\n  alliance admin member resume --home admin lender-b")
_status_command("revoke", "revoked", "Revoke a member for good (asks first; --yes skips the question).\n\n"
                "\b\nExample:\n  alliance admin member revoke --home admin lender-b --yes", confirm=True)


@admin_member.command("set-quota", context_settings={"ignore_unknown_options": True})
@HOME
@DB
@click.argument("member_id")
@click.argument("daily_quota", type=click.IntRange(min=0))
def admin_member_set_quota(home: Path, db_url: str | None, member_id: str, daily_quota: int) -> None:
    """Set a member's daily query quota (DAILY_QUOTA queries a day, 0 stops it querying).

    \b
    Example:
      alliance admin member set-quota --home admin lender-b 20000
    """
    _admin(home, db_url).set_quota(member_id, daily_quota)
    click.echo(f"{member_id}: daily quota {daily_quota}")


@admin.group("policy")
def admin_policy() -> None:
    """The alliance policy: data freshness (reciprocity) and monitoring (SPEC §9, §10)."""


@admin_policy.command("show")
@HOME
@DB
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def admin_policy_show(home: Path, db_url: str | None, as_json: bool) -> None:
    """Show the policy in force.

    \b
    Example:
      alliance admin policy show --home admin
    """
    policy = _admin(home, db_url).policy_show().to_json()
    if as_json:
        output.echo_json(policy)
    else:
        output.key_values({k: ("on" if v is True else "off" if v is False else v) for k, v in policy.items()})


@admin_policy.command("set", context_settings={"ignore_unknown_options": True})
@HOME
@DB
@click.argument("key", type=click.Choice(["max_book_age_days", "monitoring", "monitoring_quota"]))
@click.argument("value")
def admin_policy_set(home: Path, db_url: str | None, key: str, value: str) -> None:
    """Change one policy setting; the change is logged (policy_changed).

    \b
    Examples:
      alliance admin policy set --home admin monitoring on
      alliance admin policy set --home admin max_book_age_days 14
      alliance admin policy set --home admin monitoring_quota 5000"""
    policy, seq = _admin(home, db_url).policy_set(key, value)
    shown = {True: "on", False: "off"}.get(getattr(policy, key), getattr(policy, key))  # type: ignore[call-overload]
    click.echo(f"{key} = {shown} (logged as entry {seq}; gateways apply it within seconds)")


@admin.group("auditor")
def admin_auditor() -> None:
    """Issue auditor credentials."""


@admin_auditor.command("add")
@HOME
@DB
@click.option("--request", "request_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
              help="join-request.bin from `alliance member keygen --role auditor`.")
@click.option("--out", "out_file", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Where to write the auditor's credential bundle.")
@PASSPHRASE
def admin_auditor_add(home: Path, db_url: str | None, request_file: Path, out_file: Path, passphrase_file: Path | None) -> None:
    """Issue an auditor credential from an auditor's join request.

    \b
    Example:
      alliance admin auditor add --home admin --request auditor/join-request.bin --out auditor.bundle
    """
    _check_out_folder(out_file)
    bundle = _admin(home, db_url, passphrase_file, signs=True).add(request_file.read_bytes(), expected_role="auditor")
    write_atomic(out_file, bundle)
    click.echo(f"auditor credential bundle written to {out_file}")
