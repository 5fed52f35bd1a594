"""UDS-1 rows (SPEC §2): the per-kind schemas (a parser per field, checks
that span fields, the record built), and the validation of one row's values.

A member's whole loan book passes through here on every import: almost every
row is valid, so a fast first pass parses it at C speed, and only a row in
doubt goes through the careful pass that collects every error. Every error a
row has is reported, each as ``file:line: field: reason``, so whoever fixes
the file fixes it in one pass.
"""
from __future__ import annotations

import dataclasses
import operator
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

from alliance import identity
from alliance.errors import InvalidIdNumber
from alliance.uds1.fields import (
    ANNUAL_RATE_MAX_E4, FLAG_STATUSES, FLAG_TYPES, GUARANTEE_TYPES, LOAN_STATUSES, PRODUCT_TYPES,
    REPAYMENT_METHODS, SCORE_RANGE, SUBJECT_TYPES, TERM_MONTHS_RANGE, _Bad, _date, _enum, _integer, _loan_id,
    _percent_e4, _percent_text, _principal, _range, _remembered, _yuan, _yuan_text,
)
from alliance.uds1.records import FIELDS, FlagRecord, LoanRecord, Record, RowError, RowResult, ScoreRecord

_ROW = "(row)"  # the field name of an error about the row as a whole

_SURROGATE_ESCAPES = re.compile("[\udc80-\udcff]")

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
