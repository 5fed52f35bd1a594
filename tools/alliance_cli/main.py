"""`alliance`: one entry point for operators, members and auditors (SPEC §7).

This module only parses arguments and prints; the work is done by the
library (alliance, alliance_gateway, alliance_member). Errors are one line on
stderr with the exit status of SPEC §7: 2 usage, 3 invalid input, 4 refused,
5 alliance unreachable or too few answers."""
from __future__ import annotations

import json
import logging
import os
import sys
from datetime import date
from pathlib import Path
from typing import Any

import click

from alliance._internal.files import write_atomic
from alliance.errors import AllianceError, InvalidInput, UsageError
from alliance_cli import output
from alliance_cli.params import parse_day

HOME = click.option("--home", "home", type=click.Path(file_okay=False, path_type=Path), required=True, help="Directory holding keys and state.")
DB = click.option("--db", "db_url", default=None, metavar="URL", help="SQLAlchemy database URL (default: SQLite under --home).")
METRICS_LISTEN = click.option(
    "--metrics-listen", default=None, metavar="HOST:PORT",
    help="Serve Prometheus metrics at http://HOST:PORT/metrics (plain HTTP: bind it to a private address). Off by default.")
PASSPHRASE = click.option(
    "--passphrase-file", "passphrase_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
    help="File holding the CA key's passphrase (default: $ALLIANCE_CA_PASSPHRASE; neither: the CA key is not encrypted).",
)


def _ca_passphrase(passphrase_file: Path | None) -> bytes | None:
    from alliance import pki

    return pki.resolve_ca_passphrase(passphrase_file)


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
            _check_host_port("--gateway", target.strip())
        os.environ["ALLIANCE_GATEWAY"] = gateways  # read by every gateway client this command opens


PURPOSES = ("LOAN_APPROVAL", "CREDIT_LIMIT_REVIEW", "POST_LOAN_MONITORING")  # SPEC §4
PURPOSE_CHOICE = click.Choice(PURPOSES)


def _check_host_port(flag: str, value: str) -> None:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"{flag} must be host:port with a port 1-65535, not {value!r}")


def _check_peer(flag: str, member_id: str, fingerprint: str) -> None:
    """A peer's id and fingerprint are checked before anything is sent: a
    typo is a clear error (2 for the id, 3 for the fingerprint), not a
    network failure or a refusal from afar."""
    from alliance import pki

    try:
        pki.check_member_id(member_id)
    except AllianceError as exc:
        raise UsageError(f"{flag}: {exc}") from None
    pki.parse_fingerprint(fingerprint)


def _date(value: str | None) -> date | None:
    return None if value is None else parse_day(value, "--as-of")


# ---------------------------------------------------------------- admin

@cli.group()
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


# ---------------------------------------------------------------- gateway

@cli.group()
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


# ---------------------------------------------------------------- member

@cli.group()
def member() -> None:
    """A member platform's node and tools."""


@member.command("keygen")
@HOME
@DB
@click.option("--id", "member_id", required=True, help="Member id, e.g. lender-a.")
@click.option("--name", required=True, help="Legal name of the platform.")
@click.option("--role", type=click.Choice(["member", "auditor"]), default="member", show_default=True,
              help="member (a lender) or auditor (reads the audit log only).")
@click.option("--endpoint", default="", help="host:port where the gateway reaches this member node  [required for --role member].")
@click.option("--listen", default=None, help="host:port the member node listens on (default: --endpoint).")
@click.option("--gateway", "gateway_endpoint", default="127.0.0.1:50051", show_default=True, help="host:port of the alliance gateway.")
def member_keygen(home: Path, db_url: str | None, member_id: str, name: str, role: str, endpoint: str,
                  listen: str | None, gateway_endpoint: str) -> None:
    """Create this member's keys and a join request; print the key fingerprint.

    Everything is checked before a key is written: a failed keygen leaves no files.

    \b
    Example:
      alliance member keygen --home m --id lender-a --name "Lender A" \\
          --endpoint a.example:7001 --gateway gw.example:50051
    """
    from alliance import pki
    from alliance_member import onboarding

    if role == "member" and not endpoint:
        raise UsageError("--endpoint is required for a member")
    for flag, value in (("--endpoint", endpoint), ("--listen", listen), ("--gateway", gateway_endpoint)):
        if value:
            _check_host_port(flag, value)
    try:
        pki.check_member_id(member_id)
    except AllianceError as exc:
        raise UsageError(f"--id: {exc}") from None
    result = onboarding.keygen(home, member_id=member_id, name=name, role=role, endpoint=endpoint,
                               listen=listen or endpoint, gateway=gateway_endpoint, db_url=db_url)
    click.echo(f"join request: {result.join_request}")
    click.echo(f"fingerprint: {result.fingerprint}")


@member.command("rotate-keys")
@HOME
def member_rotate_keys(home: Path) -> None:
    """Start a key rotation: new keys and a join request endorsed by the current key.

    \b
    Example:
      alliance member rotate-keys --home m
    """
    from alliance_member import onboarding

    result = onboarding.rotate_keys(home)
    click.echo(f"rotation request: {result.join_request} (give it to the admin for `alliance admin member add`)")
    click.echo(f"new fingerprint: {result.fingerprint}")
    click.echo("after `alliance member join`, restart `alliance member serve` so it uses the new keys")


@member.command("join")
@HOME
@click.option("--bundle", "bundle_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
              help="The credential bundle from `alliance admin member add`.")
def member_join(home: Path, bundle_file: Path) -> None:
    """Install the credential issued by the admin.

    \b
    Example:
      alliance member join --home m --bundle lender-a.bundle
    """
    from alliance_member import onboarding

    body = onboarding.join(home, bundle_file.read_bytes())
    click.echo(f"joined as {body.member_id} (credential serial {body.serial})")


@member.group("matching-key")
def member_matching_key() -> None:
    """The members-only key behind subject tokens."""


@member_matching_key.command("create")
@HOME
@click.option("--epoch", type=click.IntRange(min=1), default=1, show_default=True,
              help="Key epoch (a new epoch replaces the key alliance-wide).")
def matching_key_create(home: Path, epoch: int) -> None:
    """Founding member: create the matching key; publish its check value.

    \b
    Example:
      alliance member matching-key create --home m
    """
    from alliance import matching_key as mk_lib
    from alliance_member import onboarding

    mk = onboarding.create_matching_key(home, epoch=epoch)
    click.echo(f"matching key epoch {mk.epoch} created")
    click.echo(f"check value: {mk_lib.format_check_value(mk_lib.check_value(mk.key))}")
    from alliance_member.home import MemberHome

    if not MemberHome(home).is_joined():
        click.echo("not logged yet (this home has not joined): after `alliance member join`, "
                   "run `alliance member matching-key announce`")
        return
    entry = onboarding.announce_matching_key(home)
    click.echo(f"logged as matching_key_created (log entry {entry['seq']}, membership_seq {entry['membership_seq']})")


@member_matching_key.command("announce")
@HOME
def matching_key_announce(home: Path) -> None:
    """Founding member: log matching_key_created for the installed key (SPEC §6.4, after an upgrade).

    \b
    Example:
      alliance member matching-key announce --home m
    """
    from alliance_member import onboarding

    entry = onboarding.announce_matching_key(home)
    click.echo(f"logged as matching_key_created (log entry {entry['seq']}, membership_seq {entry['membership_seq']})")


@member_matching_key.command("share")
@HOME
@click.option("--to", "recipient_id", required=True, help="The newcomer's member id.")
@click.option("--fingerprint", required=True, help="The newcomer's fingerprint, confirmed out of band.")
def matching_key_share(home: Path, recipient_id: str, fingerprint: str) -> None:
    """Encrypt the matching key to a newcomer and hand it to the gateway to relay.

    \b
    Example:
      alliance member matching-key share --home m --to lender-d --fingerprint 3f2a:91c0:…:7e05
    """
    from alliance_member import onboarding

    _check_peer("--to", recipient_id, fingerprint)
    onboarding.share_matching_key(home, recipient_id=recipient_id, recipient_fingerprint=fingerprint)
    click.echo(f"sponsored {recipient_id} in the log, then shared the matching key with it")


@member.command("sponsor")
@HOME
@click.option("--to", "recipient_id", required=True, help="The member to vouch for.")
@click.option("--fingerprint", required=True, help="Its fingerprint, confirmed out of band.")
def member_sponsor(home: Path, recipient_id: str, fingerprint: str) -> None:
    """Vouch for a member whose fingerprint you confirmed out of band (SPEC §5.1).

    The sponsorship is signed with this member's key, logged by the gateway
    as a member_sponsored entry, and checked to be in the log. Used when
    upgrading from v1 (sponsor the peers you already pinned) or to vouch for
    a member you already know.

    \b
    Example:
      alliance member sponsor --home m --to lender-d --fingerprint 3f2a:91c0:…:7e05
    """
    from alliance_member import onboarding

    _check_peer("--to", recipient_id, fingerprint)
    _, entry = onboarding.sponsor(home, recipient_id=recipient_id, recipient_fingerprint=fingerprint)
    click.echo(f"sponsored {recipient_id} (log entry {entry['seq']}, membership_seq {entry['membership_seq']})")


@member_matching_key.command("install")
@HOME
@click.option("--from", "sender_id", required=True, help="Member id of the member who shared the key.")
@click.option("--fingerprint", required=True, help="The sender's fingerprint, confirmed out of band.")
@click.option("--check-value", required=True, help="The key's check value published by the founding member.")
def matching_key_install(home: Path, sender_id: str, fingerprint: str, check_value: str) -> None:
    """Newcomer: fetch, check and install the matching key.

    \b
    Example:
      alliance member matching-key install --home m --from lender-a --fingerprint 9c41:0b7e:…:d2a8 \\
          --check-value 4b9d:3189:ca05:6c1f
    """
    from alliance_member import onboarding

    _check_peer("--from", sender_id, fingerprint)
    mk = onboarding.install_matching_key(home, sender_id=sender_id, sender_fingerprint=fingerprint, check_value=check_value)
    click.echo(f"matching key epoch {mk.epoch} installed")


@member.command("serve")
@HOME
@DB
@click.option("--listen", default=None, metavar="HOST:PORT", help="Override the listen address given at keygen.")
@click.option("--webhook", default=None, metavar="URL",
              help="POST each alert (e.g. applied_elsewhere) as JSON to URL, from a background worker with retries; "
                   "never delays an answer.")
@METRICS_LISTEN
def member_serve(home: Path, db_url: str | None, listen: str | None, webhook: str | None, metrics_listen: str | None) -> None:
    """Run the member node: answers the gateway's questions from this member's book.

    After each answer is sent, a LOAN_APPROVAL query or precheck about one of
    your ACTIVE borrowers raises an applied_elsewhere alert (`member alerts`);
    the querier is never named.

    \b
    Example:
      alliance member serve --home m --listen 0.0.0.0:7001 --webhook https://alerts.example/hook
    """
    from alliance_member.server import serve

    if webhook is not None:
        from alliance_member.webhook import check_url

        check_url(webhook)
    serve(home, db_url=db_url, listen=listen, webhook=webhook, metrics_listen=metrics_listen)


@member.command("import")
@HOME
@DB
@click.option("--kind", type=click.Choice(["loans", "flags", "scores"]), required=True, help="Which UDS-1 file this is.")
@click.option("--skip-invalid", is_flag=True, help="Write valid rows; list invalid ones and write them to a reject file.")
@click.option("--reject-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="With --skip-invalid: where invalid rows go (default: FILE's name + .rejects); never the input, folder must exist.")
@click.option("--snapshot", is_flag=True, help="The file is the whole book of this kind: remove records absent from it.")
@click.option("--allow-shrink", is_flag=True, help="Let --snapshot remove more than 20 % of the book (or all of it).")
@click.option("--dry-run", is_flag=True, help="Validate and report what would change; write nothing.")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
def member_import(home: Path, db_url: str | None, kind: str, skip_invalid: bool, snapshot: bool,
                  reject_file: Path | None, allow_shrink: bool, dry_run: bool, file: Path) -> None:
    """Import a UDS-1 file (CSV or JSON Lines).

    \b
    Example:
      alliance member import --home m --kind loans loans.csv
      alliance member import --home m --kind loans --snapshot --dry-run loans.csv
    """
    from alliance_member import book

    if reject_file is not None and not skip_invalid:
        raise UsageError("--reject-file needs --skip-invalid (without it an invalid row rejects the whole file)")
    result = book.import_book(home, file, kind, db_url=db_url, skip_invalid=skip_invalid, snapshot=snapshot,
                              reject_file=reject_file, on_error=lambda e: click.echo(str(e), err=True),
                              progress=output.import_progress(file), dry_run=dry_run, allow_shrink=allow_shrink)
    click.echo(f"{file}: {result.rows_written} {kind} row(s) imported, {result.rows_rejected} rejected"
               + (f", {result.rows_removed} removed (snapshot)" if snapshot else ""))
    if dry_run:
        click.echo("(dry run: nothing written)")
    elif kind == "loans":  # SPEC §10: the book's date and loan count, signed, to the gateway (flags and scores do not change them)
        from alliance_member import book_status

        sent = book_status.refresh(home, db_url=db_url)
        if sent is not None:
            click.echo(sent.line(), err=not sent.sent)
    if result.rows_rejected:
        if result.reject_file is not None:
            click.echo(f"rejected rows written to {result.reject_file}", err=True)
        sys.exit(3)


def _query_options(f):  # type: ignore[no-untyped-def]
    for option in reversed([
        HOME,
        DB,
        click.option("--id-type", type=click.Choice(["RESIDENT_ID", "USCC"]), required=True,
                     help="RESIDENT_ID for a person, USCC for an organisation."),
        click.option("--id", "id_number", required=True, help="The subject's ID number (checked before anything is sent)."),
        click.option("--purpose", type=PURPOSE_CHOICE, required=True, help="Why the alliance is asked."),
        click.option("--consent-id", required=True, help="Reference of the borrower's signed authorisation."),
        click.option("--consent-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
                     help="The signed authorisation (give exactly one of --consent-file / --consent-sha256)."),
        click.option("--consent-sha256", default=None,
                     help="SHA-256 (hex) of the signed authorisation (exactly one of --consent-file / --consent-sha256)."),
        click.option("--as-of", default=None, help="YYYY-MM-DD (default: today in Asia/Shanghai)."),
        click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the table."),
    ]):
        f = option(f)
    return f


@member.command("query")
@_query_options
def member_query(home: Path, db_url: str | None, id_type: str, id_number: str, purpose: str, consent_id: str,
                 consent_file: Path | None, consent_sha256: str | None, as_of: str | None, as_json: bool) -> None:
    """Ask the alliance about one subject: one aggregated report.

    The report sums what the other members hold; your own book is not in it.

    \b
    Example:
      alliance member query --home m --id-type RESIDENT_ID --id 11010519491231002X \\
          --purpose LOAN_APPROVAL --consent-id C-1 --consent-file consent.pdf
    """
    from alliance import identity
    from alliance_member.querier import Consent, Querier, Subject, today_shanghai

    day = _date(as_of) or today_shanghai()
    consent = Consent.from_args(consent_id, file=consent_file, sha256_hex=consent_sha256)
    subject = Subject.parse(id_type, id_number)
    querier = Querier(home, db_url=db_url)
    try:
        result = querier.query(subject, purpose=purpose, consent=consent, as_of=day)
    finally:
        querier.close()
    if as_json:
        output.echo_json(result)
    else:
        output.report_table(result, subject=f"{id_type} {identity.masked_id(subject.canonical_id)}",
                            as_of=day.isoformat(), purpose=purpose)


@member.command("precheck")
@_query_options
@click.option("--amount", required=True, help="New loan amount in yuan, e.g. 50000 or 50000.00.")
def member_precheck(home: Path, db_url: str | None, id_type: str, id_number: str, purpose: str, consent_id: str,
                    consent_file: Path | None, consent_sha256: str | None, as_of: str | None, as_json: bool, amount: str) -> None:
    """Would a new loan keep the subject within the regulatory cap? yes / no.

    Counts your own active balance and every other member's; learns only yes or no.

    \b
    Example:
      alliance member precheck --home m --id-type RESIDENT_ID --id 11010519491231002X \\
          --purpose LOAN_APPROVAL --consent-id C-1 --consent-file consent.pdf --amount 50000
    """
    from alliance import identity, uds1
    from alliance_member.querier import CAP_FEN, MAX_AMOUNT_FEN, Consent, Querier, Subject, today_shanghai

    day = _date(as_of) or today_shanghai()
    consent = Consent.from_args(consent_id, file=consent_file, sha256_hex=consent_sha256)
    subject = Subject.parse(id_type, id_number)
    amount_fen = uds1.parse_yuan(amount, "--amount")
    if not 0 < amount_fen <= MAX_AMOUNT_FEN:
        raise InvalidInput("--amount must be more than 0 and at most 10^12 yuan")
    querier = Querier(home, db_url=db_url)
    try:
        result = querier.precheck(subject, amount_yuan=amount, purpose=purpose, consent=consent, as_of=day)
    finally:
        querier.close()
    if as_json:
        output.echo_json(result)
        return
    who = f"{id_type} {identity.masked_id(subject.canonical_id)}"
    cap = f"¥{output.yuan(CAP_FEN[id_type])}"
    if result["within_cap"]:
        click.echo(f"yes: a new loan of ¥{output.yuan(amount_fen)} keeps {who} within the cap of {cap} (as of {day})")
    else:
        click.echo(f"no: a new loan of ¥{output.yuan(amount_fen)} would take {who} over the cap of {cap} (as of {day})")
    click.echo(f"query {result['query_id']}")


@member.command("screen")
@HOME
@DB
@click.option("--input", "input_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
              help="UTF-8 CSV whose header names the columns id_type,id_number.")
@click.option("--purpose", type=PURPOSE_CHOICE, required=True, help="Why the subjects are screened.")
@click.option("--consent-id", required=True, help="Reference of the borrowers' signed authorisation.")
@click.option("--consent-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="The signed authorisation (give exactly one of --consent-file / --consent-sha256).")
@click.option("--consent-sha256", default=None,
              help="SHA-256 (hex) of the signed authorisation (exactly one of --consent-file / --consent-sha256).")
@click.option("--as-of", default=None, help="YYYY-MM-DD (default: today in Asia/Shanghai).")
@click.option("--output", "output_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write one JSON report per line here (default: stdout).")
@click.option("--resume", is_flag=True,
              help="Skip subjects already in --output (same input line and masked id) and append the rest.")
def member_screen(home: Path, db_url: str | None, input_file: Path, purpose: str, consent_id: str,
                  consent_file: Path | None, consent_sha256: str | None, as_of: str | None, output_file: Path | None,
                  resume: bool) -> None:
    """Screen a CSV of subjects: one report per subject, streamed.

    Each output line is a JSON object with the input "line", the masked
    "subject" and either the report or an "error"; a bad row does not stop the
    batch. A closing line on stderr says how many were screened and failed.

    \b
    Example:
      alliance member screen --home m --input applicants.csv --purpose LOAN_APPROVAL \\
          --consent-id BATCH-7 --consent-file batch7.pdf --output reports.jsonl
    """
    from alliance_member.querier import Consent, Querier, screen_rows

    day = _date(as_of)
    consent = Consent.from_args(consent_id, file=consent_file, sha256_hex=consent_sha256)
    if output_file is not None:
        if output_file.is_dir():
            raise UsageError(f"--output {output_file} is a folder")
        if not output_file.parent.is_dir():
            raise UsageError(f"--output: folder {output_file.parent} does not exist")
        if output_file.exists() and os.path.samefile(output_file, input_file):
            raise UsageError(f"--output {output_file} is the input file")
    rows = screen_rows(input_file)  # header checked here, before anything is sent
    masked: dict[int, str] = {}
    already: dict[int, str] = {}
    failed_before = 0
    if resume:
        from alliance_member import screen_resume

        if output_file is None:
            raise UsageError("--resume needs --output (the file an earlier run was writing)")
        already, failed_before = screen_resume.read_output(output_file)
        if already:
            screen_resume.check_output_matches(already, screen_rows(input_file), output_file)

    def subjects():  # type: ignore[no-untyped-def]
        for row in rows:
            if row.line in already:
                continue  # --resume: screened by an earlier run
            masked[row.line] = row.masked_id
            yield row.line, row.subject

    querier = Querier(home, db_url=db_url)
    done = failures = 0
    where = str(output_file) if output_file else "stdout"
    out = output_file.open("a" if resume else "w", encoding="utf-8") if output_file else sys.stdout
    try:
        with output.screen_progress(input_file) as advance:
            for line, result in querier.screen(subjects(), purpose=purpose, consent=consent, as_of=day):
                head = {"line": line, "subject": masked.pop(line, "")}
                if isinstance(result, AllianceError):
                    failures += 1
                    out.write(json.dumps({**head, "error": str(result), "exit_code": result.exit_code}, ensure_ascii=False) + "\n")
                else:
                    out.write(json.dumps({**head, **result}, ensure_ascii=False) + "\n")
                out.flush()
                done += 1
                advance()
    except AllianceError as exc:
        exc.args = (f"{exc} (after {done} subject(s); {done - failures} screened, {failures} failed, output in {where})",)
        raise
    finally:
        querier.close()
        if output_file:
            out.close()
    skipped = f", {len(already)} already in the output ({failed_before} of them failed)" if resume else ""
    click.echo(f"{done - failures} screened, {failures} failed{skipped}, output in {where}", err=True)
    if failures or failed_before:  # the batch's status covers every subject in the output
        sys.exit(3)


# ---------------------------------------------------------------- demo, bench

@cli.command("demo")
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


@cli.command("bench")
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
    if soak_s is not None or db_url is not None:
        from alliance_cli import soak_cmd

        soak_cmd.run(soak_s, db_url=db_url, members=members, members_given=click.get_current_context()
                     .get_parameter_source("members") is not click.core.ParameterSource.DEFAULT,
                     concurrency=concurrency, as_json=as_json)
        return
    from alliance_cli import bench

    counts = _member_counts(members)
    results = bench.run(counts, queries=queries, light_queries=light_queries, concurrency=concurrency,
                        naive_queries=naive_queries, screen=screen, mask_mode=mask_mode,
                        echo=(lambda line: click.echo(line, err=True)) if as_json else click.echo)
    if as_json:
        output.echo_json(results)


from alliance_cli.audit_cmds import audit; cli.add_command(audit)  # noqa: E402,E702
from alliance_cli.reconcile_cmd import reconcile_command; member.add_command(reconcile_command)  # noqa: E402,E702
from alliance_cli.disclosure_cmds import audit_monthly_report, member_disclose; member.add_command(member_disclose); audit.add_command(audit_monthly_report)  # noqa: E402,E702,E501
from alliance_cli import monitor_cmds; monitor_cmds.register(member)  # noqa: E402,E702
from alliance_cli import db_cmds; db_cmds.register(admin, member, PASSPHRASE)  # noqa: E402,E702


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
