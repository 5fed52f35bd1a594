"""Uniform Disclosure Schema v1: streaming validation of member files (SPEC §2).

A member's whole loan book passes through here on every import, so rows are
read one at a time from the file (memory stays flat whatever its size) and each
rule is a cheap string test: no regex where a character-class test will do, no
Decimal where an integer parse suffices, and never a float for money.

Every error a row has is reported, each as ``file:line: field: reason``, so
whoever fixes the file fixes it in one pass. Errors about the file as a whole
(wrong suffix, bad header, broken CSV quoting) raise InvalidInput instead.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import operator
import re
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, NamedTuple, TypeVar, Union

from alliance import identity
from alliance.errors import InvalidIdNumber, InvalidInput

KINDS = ("loans", "flags", "scores")

FIELDS: dict[str, tuple[str, ...]] = {
    "loans": (
        "loan_id", "subject_type", "id_type", "id_number", "product_type", "principal", "balance",
        "annual_rate", "term_months", "repayment_method", "opened_on", "due_on", "status",
        "overdue_days", "overdue_amount", "guarantee_type", "updated_on",
    ),
    "flags": ("id_type", "id_number", "flag_type", "flagged_on", "status"),
    "scores": ("id_type", "id_number", "score", "scored_on"),
}

SUBJECT_TYPES = ("PERSON", "ORG")
PRODUCT_TYPES = ("CONSUMER", "BUSINESS", "AUTO", "EDUCATION", "MORTGAGE", "OTHER")
REPAYMENT_METHODS = ("EQUAL_INSTALLMENT", "EQUAL_PRINCIPAL", "INTEREST_FIRST", "BULLET", "REVOLVING")
LOAN_STATUSES = ("ACTIVE", "SETTLED", "WRITTEN_OFF")
GUARANTEE_TYPES = ("NONE", "GUARANTOR", "COLLATERAL", "INSURANCE", "MARGIN")
FLAG_TYPES = ("FRAUD", "MALICIOUS_DEFAULT")
FLAG_STATUSES = ("ACTIVE", "CLEARED")

PRINCIPAL_MIN_FEN = 1
PRINCIPAL_LIMIT_FEN = 10**12 * 100  # principal must be strictly below 10^12 yuan
ANNUAL_RATE_MAX_E4 = 36 * 10**4
TERM_MONTHS_RANGE = (1, 360)
SCORE_RANGE = (300, 900)

# One physical line longer than this is refused rather than read into memory.
MAX_LINE_CHARS = 1 << 20
_MAX_INT_DIGITS = 15
_SHOWN_VALUE_CHARS = 40
_ROW = "(row)"  # the field name of an error about the row as a whole

_LOAN_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
_SURROGATE_ESCAPES = re.compile("[\udc80-\udcff]")


@dataclass(frozen=True, slots=True)
class LoanRecord:
    loan_id: str
    subject_type: str
    id_type: str
    canonical_id: str
    product_type: str
    principal_fen: int
    balance_fen: int
    annual_rate_e4: int  # percent × 10^4: 7.25 % is 72500
    term_months: int
    repayment_method: str
    opened_on: date
    due_on: date
    status: str
    overdue_days: int
    overdue_amount_fen: int
    guarantee_type: str
    updated_on: date


@dataclass(frozen=True, slots=True)
class FlagRecord:
    id_type: str
    canonical_id: str
    flag_type: str
    flagged_on: date
    status: str


@dataclass(frozen=True, slots=True)
class ScoreRecord:
    id_type: str
    canonical_id: str
    score: int
    scored_on: date


Record = Union[LoanRecord, FlagRecord, ScoreRecord]
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RowError:
    path: str
    line: int
    field: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.field}: {self.reason}"


class RowResult(NamedTuple):
    """One data row: ``raw`` holds the values as written in the file (for a
    reject file), ``record`` is set exactly when ``errors`` is empty. A named
    tuple, not a frozen dataclass: it is built for every row, and a frozen
    dataclass costs about 1 µs more to build."""

    line: int
    raw: dict[str, str] | None
    record: Record | None
    errors: list[RowError]


class FieldError(InvalidInput):
    """A value that breaks a rule, for callers that parse single values (for
    example the CLI's ``--amount``)."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class _Bad(ValueError):
    """Internal: why a value is invalid; the row loop adds the field name."""


def record_key(record: Record) -> tuple[str, ...]:
    """The upsert key (SPEC §2): loans by loan_id, flags by subject and flag
    type, scores by subject; subjects by their canonical ID."""
    if isinstance(record, LoanRecord):
        return ("loan", record.loan_id)
    if isinstance(record, FlagRecord):
        return (record.id_type, record.canonical_id, record.flag_type)
    return (record.id_type, record.canonical_id)


# --- single values ---------------------------------------------------------


def parse_yuan(text: str, field: str) -> int:
    """An amount in yuan (digits, optionally '.' and 1–2 decimals) as integer fen."""
    try:
        return _yuan(text)
    except _Bad as exc:
        raise FieldError(field, str(exc)) from None


def parse_percent_e4(text: str, field: str) -> int:
    """A percentage with at most 4 decimals as an integer count of 1/10^4 percent."""
    try:
        return _percent_e4(text)
    except _Bad as exc:
        raise FieldError(field, str(exc)) from None


def parse_date(text: str, field: str) -> date:
    """A strict ``YYYY-MM-DD`` date (date.fromisoformat alone also takes
    ``20240105`` and week dates)."""
    try:
        return _date(text)
    except _Bad as exc:
        raise FieldError(field, str(exc)) from None


def _yuan(text: str) -> int:
    # Fast path for the usual spelling with exactly two decimals ("1234.56").
    if text[-3:-2] == "." and len(text) > 3:
        digits = text[:-3] + text[-2:]
        if digits.isdigit() and digits.isascii() and len(digits) <= _MAX_INT_DIGITS + 2:
            return int(digits)
    return _decimal_scaled(text, 2, "an amount in yuan such as 1234.56")


def _percent_e4(text: str) -> int:
    whole, dot, fraction = text.partition(".")
    if 0 < len(fraction) <= 4 and whole.isdigit() and fraction.isdigit() and text.isascii() and len(whole) <= 3:
        return int(whole) * 10**4 + int(fraction) * 10 ** (4 - len(fraction))
    return _decimal_scaled(text, 4, "a percentage such as 7.25")


def _decimal_scaled(text: str, decimals: int, example: str) -> int:
    whole, dot, fraction = text.partition(".")
    if (
        whole.isdigit() and whole.isascii() and len(whole) <= _MAX_INT_DIGITS
        and (not dot or (0 < len(fraction) <= decimals and fraction.isdigit() and fraction.isascii()))
    ):
        return int(whole) * 10**decimals + (int(fraction.ljust(decimals, "0")) if dot else 0)
    raise _Bad(_decimal_problem(text, decimals, example))


def _decimal_problem(text: str, decimals: int, example: str) -> str:
    """The most specific explanation of why ``text`` is not a plain decimal."""
    whole, dot, fraction = text.partition(".")
    if not text:
        return f"is empty; expected {example}"
    if text[0] in "+-":
        return f"must be {example} without a sign, got {_shown(text)}"
    if dot and whole.isdigit() and fraction.isdigit() and len(fraction) > decimals:
        return f"has {len(fraction)} decimals, at most {decimals} allowed: {_shown(text)}"
    if whole.isdigit() and whole.isascii() and len(whole) > _MAX_INT_DIGITS:
        return f"is too large: {_shown(text)}"
    return (f"must be {example} (digits and at most {decimals} decimals, no sign, exponent or separators), "
            f"got {_shown(text)}")


def _integer(text: str) -> int:
    if text.isdigit() and text.isascii() and len(text) <= _MAX_INT_DIGITS:
        return int(text)
    if not text:
        raise _Bad("is empty; expected a whole number")
    if text.isdigit() and text.isascii():
        raise _Bad(f"is too large: {_shown(text)}")
    raise _Bad(f"must be a whole number (digits only), got {_shown(text)}")


def _parse_date(text: str) -> date:
    """A strict YYYY-MM-DD date."""
    if len(text) == 10 and text[4] == "-" and text[7] == "-" and text.isascii():
        digits = text[:4] + text[5:7] + text[8:]
        if digits.isdigit():
            try:
                return date.fromisoformat(text)
            except ValueError:
                raise _Bad(f"{text} is not a real date") from None
    if not text:
        raise _Bad("is empty; expected a date as YYYY-MM-DD")
    raise _Bad(f"must be a date as YYYY-MM-DD, got {_shown(text)}")


def _remembered(parse: Callable[[str], T]) -> Callable[[str], T]:
    """``parse``, remembering what it accepted in ``.known`` for the fast pass
    (see _fast_parser). For fields with few distinct values (dates, rates,
    terms): a book repeats them endlessly. Bounded, so memory stays flat
    whatever the input."""
    known: dict[str, T] = {}

    def parse_and_remember(text: str) -> T:
        value = parse(text)
        if len(known) < _MAX_REMEMBERED:
            known[text] = value
        return value

    parse_and_remember.known = known  # type: ignore[attr-defined]
    return parse_and_remember


_MAX_REMEMBERED = 100_000
_date = _remembered(_parse_date)


def _shown(text: str) -> str:
    """A value quoted for an error message, cut short if it is long."""
    if len(text) > _SHOWN_VALUE_CHARS:
        return repr(text[:_SHOWN_VALUE_CHARS] + "…")
    return repr(text)


def _range(parse: Callable[[str], int], low: int, high: int, unit: Callable[[int], str] = str) -> Callable[[str], int]:
    """``parse`` restricted to low ≤ value ≤ high."""

    def parse_in_range(text: str) -> int:
        value = parse(text)
        if low <= value <= high:
            return value
        raise _Bad(f"must be between {unit(low)} and {unit(high)}, got {text}")

    return parse_in_range


def _enum(allowed: Sequence[str]) -> Callable[[str], str]:
    choices = frozenset(allowed)
    listed = ", ".join(allowed)

    def parse_enum(text: str) -> str:
        if text in choices:
            return text
        if text.upper() in choices:
            raise _Bad(f"must be upper case: {text.upper()!r}")
        if not text:
            raise _Bad(f"is empty; expected one of {listed}")
        raise _Bad(f"must be one of {listed}; got {_shown(text)}")

    parse_enum.known = {choice: choice for choice in allowed}  # type: ignore[attr-defined]
    return parse_enum


def _loan_id(text: str) -> str:
    if _LOAN_ID.fullmatch(text):
        return text
    if not text:
        raise _Bad("is empty")
    if len(text) > 64:
        raise _Bad(f"is {len(text)} characters long, at most 64 allowed")
    bad = next(c for c in text if not (c.isascii() and (c.isalnum() or c in "._:-")))
    raise _Bad(f"character {bad!r} is not allowed (only A-Z, a-z, 0-9 and . _ : -)")


def _principal(text: str) -> int:
    fen = _yuan(text)
    if fen < PRINCIPAL_MIN_FEN:
        raise _Bad(f"must be at least 0.01, got {text}")
    if fen >= PRINCIPAL_LIMIT_FEN:
        raise _Bad(f"must be less than 1000000000000 (10^12 yuan), got {text}")
    return fen


def _yuan_text(fen: int) -> str:
    return f"{fen // 100}.{fen % 100:02d}"


def _percent_text(e4: int) -> str:
    whole, fraction = divmod(e4, 10**4)
    return f"{whole}.{fraction:04d}".rstrip("0").rstrip(".")


# --- rows ------------------------------------------------------------------

Parser = Callable[[str], object]
CrossCheck = Callable[[list], list[tuple[str, str]]]


@dataclass(frozen=True, slots=True)
class _Schema:
    """Per-field parsers in FIELDS order (None marks id_number, which depends
    on id_type), the checks that span fields, and the record they build: the
    record's attributes are in FIELDS order, so parsed values map by position."""

    fields: tuple[str, ...]
    parsers: tuple[Parser | None, ...]
    cross_check: CrossCheck
    make_record: Callable[..., Any]

    @property
    def id_type_index(self) -> int:
        """id_number always follows id_type, and its parser is None."""
        index = self.fields.index("id_type")
        assert self.fields[index + 1] == "id_number" and self.parsers[index + 1] is None
        return index

    @property
    def field_order(self) -> dict[str, int]:
        return {field: i for i, field in enumerate(self.fields)}


def _loan_cross_check(values: list) -> list[tuple[str, str]]:
    (_, subject_type, id_type, _, _, principal, balance, _, _, _, opened_on, due_on, status,
     overdue_days, overdue_amount, _, _) = values
    errors = []
    if subject_type is not None and id_type is not None and identity.SUBJECT_TYPE_FOR_ID_TYPE[id_type] != subject_type:
        errors.append(("id_type", f"{id_type} is for subject_type {identity.SUBJECT_TYPE_FOR_ID_TYPE[id_type]}, "
                                  f"but subject_type is {subject_type}"))
    if balance is not None:
        if principal is not None and balance > principal:
            errors.append(("balance", f"{_yuan_text(balance)} is more than principal {_yuan_text(principal)}"))
        if status == "SETTLED" and balance != 0:
            errors.append(("balance", f"must be 0 when status is SETTLED, got {_yuan_text(balance)}"))
    if opened_on is not None and due_on is not None and due_on < opened_on:
        errors.append(("due_on", f"{due_on} is before opened_on {opened_on}"))
    if overdue_days is not None and overdue_days > 0 and status is not None and status != "ACTIVE":
        errors.append(("overdue_days", f"must be 0 unless status is ACTIVE (status is {status}), got {overdue_days}"))
    if overdue_amount is not None:
        if balance is not None and overdue_amount > balance:
            errors.append(("overdue_amount",
                           f"{_yuan_text(overdue_amount)} is more than balance {_yuan_text(balance)}"))
        if overdue_days == 0 and overdue_amount != 0:
            errors.append(("overdue_amount",
                           f"must be 0 when overdue_days is 0, got {_yuan_text(overdue_amount)}"))
        if overdue_days is not None and overdue_days > 0 and overdue_amount == 0:
            errors.append(("overdue_amount", f"must be more than 0 when overdue_days is {overdue_days}"))
    return errors


def _fast_constructor(frozen: type) -> Callable[..., Any]:
    """Builds instances of a frozen slotted dataclass about five times faster.

    A frozen dataclass's __init__ sets each field through
    object.__setattr__, 2 µs for a LoanRecord: a fifth of the whole per-row
    budget. A mutable twin with the same slots is built instead and then given
    the frozen class, which CPython allows because the memory layouts are
    identical; the result is an ordinary, immutable instance of ``frozen``."""
    twin = dataclasses.make_dataclass(
        frozen.__name__, [(f.name, f.type) for f in dataclasses.fields(frozen)], slots=True
    )
    assert twin.__slots__ == frozen.__slots__

    def make(*values: Any) -> Any:
        record = twin(*values)
        record.__class__ = frozen
        return record

    return make


def _no_cross_check(values: list) -> list[tuple[str, str]]:
    return []


_SCHEMAS = {
    "loans": _Schema(
        FIELDS["loans"],
        (
            _loan_id, _enum(SUBJECT_TYPES), _enum(identity.ID_TYPES), None, _enum(PRODUCT_TYPES),
            _principal, _yuan, _remembered(_range(_percent_e4, 0, ANNUAL_RATE_MAX_E4, _percent_text)),
            _remembered(_range(_integer, *TERM_MONTHS_RANGE)), _enum(REPAYMENT_METHODS), _date, _date,
            _enum(LOAN_STATUSES), _remembered(_integer), _yuan, _enum(GUARANTEE_TYPES), _date,
        ),
        _loan_cross_check,
        _fast_constructor(LoanRecord),
    ),
    "flags": _Schema(
        FIELDS["flags"],
        (_enum(identity.ID_TYPES), None, _enum(FLAG_TYPES), _date, _enum(FLAG_STATUSES)),
        _no_cross_check,
        _fast_constructor(FlagRecord),
    ),
    "scores": _Schema(
        FIELDS["scores"],
        (_enum(identity.ID_TYPES), None, _remembered(_range(_integer, *SCORE_RANGE)), _date),
        _no_cross_check,
        _fast_constructor(ScoreRecord),
    ),
}


def _fast_parser(parse: Parser | None) -> Parser:
    """The parser for the first pass over a row. Where every value a parser
    has accepted is in a dict (``parse.known``: enums, dates seen before), the
    dict lookup stands in for it at C speed; a miss raises KeyError, and the
    row goes through the careful pass, which parses it properly. id_number
    passes through as it is (``str`` returns its str argument itself) and is
    canonicalised once id_type is known."""
    if parse is None:
        return str
    known = getattr(parse, "known", None)
    return known.__getitem__ if known is not None else parse


def _validate(schema: _Schema, fast_parsers: Sequence[Parser], id_type_index: int,
              cleaned: Sequence[str], today: date) -> tuple[Record | None, list[tuple[str, str]]]:
    """Parse one row (values in schema.fields order, already normalised).

    Almost every row is valid, so the first pass parses all fields in one
    C-level map under one ``try``. Any doubt (an invalid value, a value the
    fast parsers have not seen) sends the row to the careful pass, which parses
    field by field and collects every error. Both passes accept exactly the
    same rows and produce the same values."""
    try:
        values = list(map(operator.call, fast_parsers, cleaned))
        values[id_type_index + 1] = identity.canonical_id(values[id_type_index], values[id_type_index + 1],
                                                          today=today)
    except (_Bad, InvalidIdNumber, KeyError):
        values, errors = _parse_each(schema, id_type_index, cleaned, today)
    else:
        errors = []
    errors += schema.cross_check(values)
    if errors:
        return None, errors
    return schema.make_record(*values), errors


def _parse_each(schema: _Schema, id_type_index: int, cleaned: Sequence[str],
                today: date) -> tuple[list, list[tuple[str, str]]]:
    """The careful pass: each field parsed on its own, every error kept, None
    standing in for a value that failed."""
    values: list = []
    errors: list[tuple[str, str]] = []
    for field, parse, text in zip(schema.fields, schema.parsers, cleaned):
        try:
            if parse is not None:
                values.append(parse(text))
            else:
                id_type = values[id_type_index]
                values.append(identity.canonical_id(id_type, text, today=today) if id_type else None)
        except (_Bad, InvalidIdNumber) as exc:
            errors.append((field, str(exc)))
            values.append(None)
    return values, errors


def _clean(value: str) -> str:
    """NFKC and trim."""
    return unicodedata.normalize("NFKC", value).strip()


def _undecodable(value: str) -> str | None:
    """Why ``value`` is not text, or None. Files are decoded with
    surrogateescape, so bytes that are not UTF-8 arrive as lone surrogates."""
    match = _SURROGATE_ESCAPES.search(value)
    if match is None:
        return None
    byte = ord(match.group()) - 0xDC00
    return f"is not valid UTF-8 (byte 0x{byte:02X}); UDS-1 files must be saved as UTF-8, not GBK or GB18030"


class _RowBuilder:
    """Turns the text values of one row into a RowResult. Problems the reader
    already found with a field (missing key, JSON number, bytes that are not
    UTF-8) are reported instead of the parser's complaint about that field."""

    def __init__(self, kind: str, path_name: str, today: date) -> None:
        self.schema = _SCHEMAS[kind]
        self.id_type_index = self.schema.id_type_index
        self.fast_parsers = tuple(_fast_parser(parse) for parse in self.schema.parsers)
        self.field_order = self.schema.field_order
        self.path_name = path_name
        self.today = today

    def build(self, line: int, raw: dict[str, str] | None, texts: Sequence[str],
              problems: dict[str, str] | None = None) -> RowResult:
        if "".join(texts).isascii():  # ASCII is already NFKC: the common case stays cheap
            cleaned = list(map(str.strip, texts))
        else:
            cleaned = [_clean(text) for text in texts]
            problems = self._undecodable_fields(texts, problems)
        record, errors = _validate(self.schema, self.fast_parsers, self.id_type_index, cleaned, self.today)
        if problems:
            errors = [(f, r) for f, r in errors if f not in problems] + list(problems.items())
            record = None
        if not errors:
            return RowResult(line, raw, record, [])
        errors.sort(key=lambda error: self.field_order.get(error[0], -1))
        return RowResult(line, raw, None, [RowError(self.path_name, line, f, r) for f, r in errors])

    def row_error(self, line: int, reason: str, raw: dict[str, str] | None = None) -> RowResult:
        return RowResult(line, raw, None, [RowError(self.path_name, line, _ROW, reason)])

    def _undecodable_fields(self, texts: Sequence[str], problems: dict[str, str] | None) -> dict[str, str] | None:
        found = {field: why for field, text in zip(self.schema.fields, texts) if (why := _undecodable(text))}
        return {**found, **problems} if problems else found


# --- files -----------------------------------------------------------------


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
