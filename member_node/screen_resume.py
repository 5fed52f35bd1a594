"""`alliance member screen --resume` (SPEC §12): which subjects an earlier,
interrupted run already wrote to the output file, so a gateway restart in
the middle of a batch loses nothing and screens nobody twice.

Every output line carries the input ``line`` number and the masked
``subject``; a subject counts as done when both match the input row. A torn
last line (the process died mid-write) is cut off, so the file stays one
JSON object per line and that subject is screened again."""
from __future__ import annotations

import json
import os
from pathlib import Path

from alliance.errors import UsageError


def done_subjects(output: Path) -> dict[int, str]:
    """{input line: masked subject} already in ``output`` (empty if the file
    does not exist). Truncates a torn, newline-less last line in place."""
    return read_output(output)[0]


def read_output(output: Path) -> tuple[dict[int, str], int]:
    """As done_subjects, with how many of those lines are failures ("error")."""
    try:
        data = output.read_bytes()
    except FileNotFoundError:
        return {}, 0
    except OSError as exc:
        raise UsageError(f"--output {output}: {exc.strerror}") from None
    keep = data if data.endswith(b"\n") or not data else data[: data.rfind(b"\n") + 1]
    if len(keep) != len(data):
        with output.open("r+b") as fh:
            fh.truncate(len(keep))
            fh.flush()
            os.fsync(fh.fileno())
    done: dict[int, str] = {}
    failed: set[int] = set()
    for number, raw in enumerate(keep.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
            line, subject = record["line"], record["subject"]
            if not isinstance(line, int) or not isinstance(subject, str):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            raise UsageError(f"--resume: {output}:{number} is not a line written by `member screen`; "
                             "give a fresh --output or fix the file") from None
        if line in done and done[line] != subject:
            raise UsageError(f"--resume: {output} holds input line {line} twice with different subjects")
        done[line] = subject
        if "error" in record:
            failed.add(line)
    return done, len(failed)


def check_row(done: dict[int, str], line: int, masked_id: str, output: Path) -> bool:
    """True if the row at ``line`` is already in the output; refuses an output
    written from another input (same line, another subject)."""
    if line not in done:
        return False
    if done[line] != masked_id:
        raise UsageError(f"--resume: {output} has line {line} for subject {done[line]!r} but the input has {masked_id!r} "
                         "there: the output belongs to another input file")
    return True


def check_output_matches(done: dict[int, str], rows: object, output: Path) -> int:
    """Before anything is sent: every line in the output must be that same
    subject in the input. Returns how many input rows are already done."""
    seen = 0
    for row in rows:  # type: ignore[attr-defined]
        if check_row(done, row.line, row.masked_id, output):
            seen += 1
    if seen != len(done):
        missing = sorted(set(done) - {0})[:1]
        raise UsageError(f"--resume: {output} has lines the input does not have (e.g. line {missing[0] if missing else 0}): "
                         "the output belongs to another input file")
    return seen
