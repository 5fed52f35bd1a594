"""`alliance member keygen / rotate-keys / join / matching-key / sponsor /
serve / import` (SPEC §7): a member's keys, onboarding, node and book.

Argument parsing and printing only; the work is in alliance_member. The
member group's other commands live in member_query_cmds (query, precheck,
screen), monitor_cmds, reconcile_cmd, disclosure_cmds and db_cmds; main.py
attaches them."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from alliance.errors import AllianceError, UsageError
from alliance_cli import output
from alliance_cli.options import DB, HOME, METRICS_LISTEN
from alliance_cli.params import check_host_port


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


@click.group()
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
            check_host_port(flag, value)
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
