"""`alliance member query / precheck / screen` (SPEC §4, §7): asking the alliance.

Argument parsing and printing only; the work is in alliance_member.querier.
main.py attaches these commands to the member group."""
from __future__ import annotations

import json
import os
import sys
from datetime import date
from pathlib import Path

import click

from alliance.errors import AllianceError, InvalidInput, UsageError
from alliance_cli import output
from alliance_cli.options import DB, HOME
from alliance_cli.params import parse_day

PURPOSES = ("LOAN_APPROVAL", "CREDIT_LIMIT_REVIEW", "POST_LOAN_MONITORING")  # SPEC §4
PURPOSE_CHOICE = click.Choice(PURPOSES)


def _date(value: str | None) -> date | None:
    return None if value is None else parse_day(value, "--as-of")


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


@click.command("query")
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


@click.command("precheck")
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


@click.command("screen")
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
