"""The rows of one UDS-1 file, validated and ready to bind (SPEC §2, §8).

The importer asks for a file's rows as plain tuples in the order of its
upsert (``COLUMNS``), each with its line, its raw values (for a reject file)
and its errors. Validation, tokens and the tuples are CPU work that does not
touch the database, so for a large file they run in a worker process while the
importer's process writes the previous rows: on two cores the two halves
overlap. Both ways run the same code (``prepared_rows``), in file order, and
the worker sends bounded batches through a pipe that blocks when the importer
falls behind, so memory stays flat whatever the file size.

The worker never touches the store. It runs in its own session, so a Ctrl-C
at the terminal interrupts only the importer, which rolls back and kills it;
if the importer dies, the worker's next write finds the pipe closed and it
exits."""
from __future__ import annotations

import hmac
import os
import pickle
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import IO, Any

from alliance import identity, uds1
from alliance.errors import AllianceError

try:
    import fcntl
except ImportError:  # not on Windows
    fcntl = None  # type: ignore[assignment]

# A row as the upsert binds it, in COLUMNS[kind] order.
Row = tuple[Any, ...]
# line, row (None when invalid), raw values (None when not needed), errors
Prepared = tuple[int, "Row | None", "dict[str, str] | None", "list[uds1.RowError]"]

# Files at least this large are validated in a worker process; below it,
# starting one (a fresh interpreter, about 0.3 s) costs more than it saves.
WORKER_MIN_BYTES = 8 << 20
BATCH_ROWS = 1000
# The worker may run this far ahead of the importer (Linux lets a pipe hold up
# to 1 MiB): it keeps validating while a chunk is being written to the store.
PIPE_BYTES = 1 << 20
_FRAME = struct.Struct("<I")

COLUMNS: dict[str, tuple[str, ...]] = {
    "loans": (
        "loan_id", "subject_token", "key_epoch", "masked_id", "subject_type", "id_type", "product_type",
        "principal_fen", "balance_fen", "annual_rate_e4", "term_months", "repayment_method", "opened_on",
        "due_on", "status", "overdue_days", "overdue_amount_fen", "guarantee_type", "updated_on",
        "import_run", "import_line",
    ),
    "flags": ("subject_token", "flag_type", "key_epoch", "masked_id", "id_type", "flagged_on", "status",
              "import_run", "import_line"),
    "scores": ("subject_token", "key_epoch", "masked_id", "id_type", "score", "scored_on", "import_run",
               "import_line"),
}


@dataclass(frozen=True)
class RowSpec:
    """Everything needed to turn a file into rows; sent to the worker as is."""

    path: Path
    kind: str
    display_name: str
    today: date
    key: bytes
    epoch: int
    run_id: int
    sqlite: bool  # SQLAlchemy keeps a SQLite Date as ISO text, so dates are bound as such
    keep_raw: bool  # raw values of valid rows too (a later duplicate goes to the reject file)


def rows(spec: RowSpec, *, worker: bool | None = None) -> Iterator[Prepared]:
    """The file's rows in file order; in a worker process when ``worker`` (by
    default: when the file is large)."""
    if worker is None:
        worker = spec.path.stat().st_size >= WORKER_MIN_BYTES
    return _rows_from_worker(spec) if worker else prepared_rows(spec)


def prepared_rows(spec: RowSpec) -> Iterator[Prepared]:
    make_row, key, epoch, run_id, sqlite, keep_raw = (
        _ROW_MAKERS[spec.kind], spec.key, spec.epoch, spec.run_id, spec.sqlite, spec.keep_raw
    )
    no_errors: list[uds1.RowError] = []
    for line, raw, record, errors in uds1.iter_rows(spec.path, spec.kind, today=spec.today,
                                                    display_name=spec.display_name, raw_of_valid_rows=keep_raw):
        if record is None:
            yield line, None, raw, errors
        else:
            yield line, make_row(record, key, epoch, run_id, line, sqlite), raw if keep_raw else None, no_errors


# --- the worker ------------------------------------------------------------


def _rows_from_worker(spec: RowSpec) -> Iterator[Prepared]:
    proc = subprocess.Popen(
        [sys.executable, "-P", "-m", "alliance_member.import_rows"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True,
    )
    try:
        assert proc.stdin is not None and proc.stdout is not None
        _enlarge_pipe(proc.stdout)
        proc.stdin.write(pickle.dumps(spec, protocol=pickle.HIGHEST_PROTOCOL))
        proc.stdin.close()
        while True:
            what, payload = _read_frame(proc.stdout)
            if what == "rows":
                yield from payload
            elif what == "error":
                raise payload
            else:
                break
        if proc.wait() != 0:
            raise RuntimeError(f"the import worker exited with status {proc.returncode}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                pipe.close()


def _enlarge_pipe(stream: IO[bytes]) -> None:
    """Best effort: where the pipe cannot grow, the worker only waits more."""
    set_size = getattr(fcntl, "F_SETPIPE_SZ", None) if fcntl is not None else None
    if set_size is not None:
        try:
            fcntl.fcntl(stream.fileno(), set_size, PIPE_BYTES)
        except OSError:
            pass


def _read_frame(stream: IO[bytes]) -> tuple[str, Any]:
    header = stream.read(_FRAME.size)
    if len(header) < _FRAME.size:
        raise RuntimeError("the import worker stopped before the end of the file (see its error above)")
    body = stream.read(_FRAME.unpack(header)[0])
    return pickle.loads(body)  # from our own child process  # noqa: S301


def _write_frame(stream: IO[bytes], what: str, payload: Any) -> None:
    body = pickle.dumps((what, payload), protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_FRAME.pack(len(body)) + body)


def _worker_main() -> None:
    out = sys.stdout.buffer
    spec: RowSpec = pickle.loads(sys.stdin.buffer.read())  # from the importer that started us  # noqa: S301
    batch: list[Prepared] = []
    try:
        for prepared in prepared_rows(spec):
            batch.append(prepared)
            if len(batch) >= BATCH_ROWS:
                _write_frame(out, "rows", batch)
                batch = []
        _write_frame(out, "rows", batch)
        _write_frame(out, "end", None)
        out.flush()
    except AllianceError as exc:  # a bad file (header, quoting, a huge line): the importer raises it
        _write_frame(out, "rows", batch)
        _write_frame(out, "error", exc)
        out.flush()


# --- rows ------------------------------------------------------------------


# "UDS1|" + id_type + "|", the HMAC message's prefix (SPEC §3), per id_type.
_TOKEN_PREFIXES = {id_type: b"UDS1|" + id_type.encode("ascii") + b"|" for id_type in identity.ID_TYPES}


def _token(key: bytes, id_type: str, canonical: str) -> bytes:
    """The subject token (SPEC §3) of a validated record. uds1's validation
    made ``canonical`` canonical, so identity.subject_token's form check is not
    repeated per row; the HMAC is the same (tests/test_import_rows.py compares
    them)."""
    return hmac.digest(key, _TOKEN_PREFIXES[id_type] + canonical.encode("ascii"), "sha256")


def _masked(canonical: str) -> str:
    """identity.masked_id of a canonical (18-character) ID."""
    return canonical[:6] + "********" + canonical[14:]


def _iso(day: date) -> str:
    """A date as SQLAlchemy stores it in SQLite: ISO text. A book repeats its
    dates endlessly (uds1 hands out the same date objects), so the text is
    remembered, within a bound."""
    text = _ISO_DATES.get(day)
    if text is None:
        text = day.isoformat()
        if len(_ISO_DATES) < 100_000:
            _ISO_DATES[day] = text
    return text


_ISO_DATES: dict[date, str] = {}


def _loan_row(r: uds1.LoanRecord, key: bytes, epoch: int, run_id: int, line: int, sqlite: bool) -> Row:
    canonical = r.canonical_id
    if sqlite:
        opened_on, due_on, updated_on = _iso(r.opened_on), _iso(r.due_on), _iso(r.updated_on)
    else:
        opened_on, due_on, updated_on = r.opened_on, r.due_on, r.updated_on
    return (
        r.loan_id, _token(key, r.id_type, canonical), epoch, canonical[:6] + "********" + canonical[14:],
        r.subject_type, r.id_type, r.product_type, r.principal_fen, r.balance_fen, r.annual_rate_e4,
        r.term_months, r.repayment_method, opened_on, due_on, r.status, r.overdue_days, r.overdue_amount_fen,
        r.guarantee_type, updated_on, run_id, line,
    )


def _flag_row(r: uds1.FlagRecord, key: bytes, epoch: int, run_id: int, line: int, sqlite: bool) -> Row:
    flagged_on = _iso(r.flagged_on) if sqlite else r.flagged_on
    return (_token(key, r.id_type, r.canonical_id), r.flag_type, epoch, _masked(r.canonical_id), r.id_type,
            flagged_on, r.status, run_id, line)


def _score_row(r: uds1.ScoreRecord, key: bytes, epoch: int, run_id: int, line: int, sqlite: bool) -> Row:
    scored_on = _iso(r.scored_on) if sqlite else r.scored_on
    return (_token(key, r.id_type, r.canonical_id), epoch, _masked(r.canonical_id), r.id_type, r.score,
            scored_on, run_id, line)


_ROW_MAKERS: dict[str, Callable[..., Row]] = {"loans": _loan_row, "flags": _flag_row, "scores": _score_row}


if __name__ == "__main__":
    try:
        _worker_main()
    except BrokenPipeError:  # the importer stopped reading (it failed, was interrupted or killed)
        os._exit(1)
