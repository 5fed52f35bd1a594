"""UDS-1 files (SPEC §2): streaming validation of a member's .csv, .jsonl or
.ndjson file, row by row (memory stays flat whatever its size), with physical
line numbers; reading as UTF-8 (bad bytes reported against their field and
line), the line-length limit, CSV headers and JSON objects.

Errors about the file as a whole (wrong suffix, bad header, broken CSV
quoting) raise InvalidInput; errors of a row are in its RowResult.
"""
from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

from alliance import identity
from alliance.errors import InvalidInput
from alliance.uds1.records import KINDS, RowResult
from alliance.uds1.rows import _SCHEMAS, _clean, _RowBuilder, _undecodable

# One physical line longer than this is refused rather than read into memory.
MAX_LINE_CHARS = 1 << 20


def iter_rows(path: Path, kind: str, *, today: date | None = None,
              display_name: str | None = None, raw_of_valid_rows: bool = True) -> Iterator[RowResult]:
    """Validate a UDS-1 file row by row, lazily: one RowResult per data row,
    with physical line numbers (a CSV header is line 1). ``today`` bounds birth
    dates in resident IDs (default: today in Asia/Shanghai, fixed for the whole
    file). The kind and suffix are checked at once; the header and rows as the
    iterator advances. Without ``raw_of_valid_rows`` a valid row's ``raw`` may
    be None (an invalid row always has it): the importer needs raw values only
    for a reject file, and building them for a valid CSV row costs a dict."""
    if kind not in _SCHEMAS:
        raise InvalidInput(f"unknown UDS-1 kind {kind!r}; expected one of {', '.join(KINDS)}")
    name = display_name if display_name is not None else str(path)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        reader = _csv_rows
    elif suffix in (".jsonl", ".ndjson"):
        reader = _jsonl_rows
    else:
        raise InvalidInput(f"{name}: unsupported file type {path.suffix!r}; UDS-1 files are .csv, .jsonl or .ndjson")
    if not path.is_file():
        raise InvalidInput(f"{name}: no such file")
    return reader(path, _RowBuilder(kind, name, today or identity.shanghai_today()), raw_of_valid_rows)


def _open_text(path: Path, newline: str) -> io.TextIOWrapper:
    """UTF-8 with an optional BOM; bad bytes become lone surrogates so they can
    be reported against the field and line they are in."""
    return open(path, encoding="utf-8-sig", errors="surrogateescape", newline=newline)


def _lines(handle: io.TextIOWrapper, name: str) -> Iterator[str]:
    """Physical lines, each read with a size limit so that one absurdly long
    line is refused instead of held in memory."""
    number = 0
    while line := handle.readline(MAX_LINE_CHARS + 1):
        number += 1
        if len(line) > MAX_LINE_CHARS:
            raise InvalidInput(f"{name}:{number}: line is longer than {MAX_LINE_CHARS} characters")
        yield line


def _csv_rows(path: Path, rows: _RowBuilder, raw_of_valid_rows: bool) -> Iterator[RowResult]:
    name = rows.path_name
    with _open_text(path, newline="") as handle:
        reader = csv.reader(_lines(handle, name), strict=True)
        try:
            header = next(reader, None)
            if header is None:
                raise InvalidInput(f"{name}: the file is empty; expected a header row")
            columns = _csv_columns(header, rows.schema.fields, name)
            order = [columns.index(field) for field in rows.schema.fields]
            in_schema_order = columns == list(rows.schema.fields)
            width = len(columns)
            last_line = reader.line_num
            for row in reader:
                line, last_line = last_line + 1, reader.line_num
                if (not row or not row[0].strip()) and not "".join(row).strip():
                    continue  # a blank line, or a spreadsheet's row of empty cells: no data to import
                if len(row) != width:
                    yield rows.row_error(line, f"has {len(row)} values, the header has {width} columns",
                                         dict(zip(columns, row)))
                    continue
                raw = dict(zip(columns, row)) if raw_of_valid_rows else None
                result = rows.build(line, raw, row if in_schema_order else [row[i] for i in order])
                yield result if raw is not None or result.record is not None else result._replace(
                    raw=dict(zip(columns, row)))
        except csv.Error as exc:
            raise InvalidInput(f"{name}:{reader.line_num}: malformed CSV: {exc}") from None


def _csv_columns(header: list[str], fields: tuple[str, ...], name: str) -> list[str]:
    """The header's column names, normalised; InvalidInput naming every
    unknown, missing or repeated column."""
    names = [_clean(h) for h in header]
    if any(_undecodable(n) for n in names):
        raise InvalidInput(f"{name}:1: the header is not valid UTF-8; UDS-1 files must be saved as UTF-8")
    problems = []
    repeated = sorted({n for n in names if names.count(n) > 1})
    unknown = [n for n in names if n not in fields]
    missing = [f for f in fields if f not in names]
    if unknown:
        problems.append("unknown column(s) " + ", ".join(map(repr, unknown)))
    if missing:
        problems.append("missing column(s) " + ", ".join(map(repr, missing)))
    if repeated:
        problems.append("repeated column(s) " + ", ".join(map(repr, repeated)))
    if problems:
        raise InvalidInput(f"{name}:1: " + "; ".join(problems) + f" (expected: {', '.join(fields)})")
    return names


_JSON_NUMBER = "must be a JSON string (numbers are refused: floats are not money)"
_MONEY_FIELDS = frozenset({"principal", "balance", "overdue_amount"})


def _json_number_problem(field: str, value: object) -> str:
    """A JSON number where UDS-1 wants a string: the money reason only for money."""
    if field in _MONEY_FIELDS:
        return _JSON_NUMBER
    return f"must be a JSON string such as \"{value}\", not the JSON number {value} (UDS-1: every value is a string)"


class _RepeatedKeys(dict):
    """A JSON object that gave a key more than once (``repeated``): refused,
    where json would silently keep the last value."""

    repeated: list[str]


def _json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) == len(pairs):
        return obj
    flagged = _RepeatedKeys(obj)
    flagged.repeated = sorted({key for key, _ in pairs if sum(1 for k, _ in pairs if k == key) > 1})
    return flagged


# One decoder for all lines: json.loads with a hook builds a new one per call.
_JSON_DECODER = json.JSONDecoder(object_pairs_hook=_json_object)


def _jsonl_rows(path: Path, rows: _RowBuilder, raw_of_valid_rows: bool) -> Iterator[RowResult]:
    fields = rows.schema.fields
    decode = _JSON_DECODER.decode
    with _open_text(path, newline="\n") as handle:
        for line, text in enumerate(_lines(handle, rows.path_name), start=1):
            if text.isspace():
                continue
            try:
                obj = decode(text)
            except json.JSONDecodeError as exc:
                yield rows.row_error(line, f"not valid JSON: {exc.msg} at column {exc.colno}")
                continue
            if type(obj) is dict and len(obj) == len(fields):
                try:
                    texts = [obj[field] for field in fields]
                    "".join(texts)  # TypeError unless every value is a string
                except (KeyError, TypeError):
                    pass
                else:
                    yield rows.build(line, obj, texts)
                    continue
            yield _json_row_with_problems(rows, line, obj)


def _json_row_with_problems(rows: _RowBuilder, line: int, obj: object) -> RowResult:
    """A line that is not exactly one JSON object of string values with the
    schema's keys: every key and value problem, reported by field."""
    if not isinstance(obj, dict):
        return rows.row_error(line, f"must be a JSON object, got {_json_kind(obj)}")
    fields = rows.schema.fields
    raw = {k: v if isinstance(v, str) else json.dumps(v, ensure_ascii=False) for k, v in obj.items()}
    problems = {key: "appears more than once in the object" for key in getattr(obj, "repeated", ())}
    for key in obj:
        if key not in fields:
            problems[key or '""'] = "is not a UDS-1 field"  # an empty key is named as such, never as an empty field
    texts = []
    for field in fields:
        value = obj.get(field)
        texts.append(value if isinstance(value, str) else "")
        if field not in obj:
            problems[field] = "is missing"
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            problems[field] = _json_number_problem(field, value)
        elif not isinstance(value, str):
            problems[field] = f"must be a JSON string, got {_json_kind(value)}"
    return rows.build(line, raw, texts, problems)


def _json_kind(value: object) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, (int, float)):
        return "a number"
    return "a string"
