"""Uniform Disclosure Schema v1: streaming validation of member files (SPEC §2).

A member's whole loan book passes through here on every import, so rows are
read one at a time from the file (memory stays flat whatever its size) and each
rule is a cheap string test: no regex where a character-class test will do, no
Decimal where an integer parse suffices, and never a float for money.

Every error a row has is reported, each as ``file:line: field: reason``, so
whoever fixes the file fixes it in one pass. Errors about the file as a whole
(wrong suffix, bad header, broken CSV quoting) raise InvalidInput instead.

Where each rule lives:

- fields   single values: money (``parse_yuan``), percentages, dates, codes, limits
- records  kinds and columns, the record types, ``record_key``, RowResult/RowError
- rows     per-kind schemas, checks across fields, the two-pass row validation
- files    ``iter_rows``: CSV/JSONL reading, UTF-8 and bad bytes, line numbers

Callers use this package (``uds1.parse_yuan``, ``uds1.iter_rows``, ...); the
names below are its public API.
"""
from __future__ import annotations

from alliance.uds1.fields import (
    ANNUAL_RATE_MAX_E4, FLAG_STATUSES, FLAG_TYPES, GUARANTEE_TYPES, LOAN_STATUSES, PRINCIPAL_LIMIT_FEN,
    PRINCIPAL_MIN_FEN, PRODUCT_TYPES, REPAYMENT_METHODS, SCORE_RANGE, SUBJECT_TYPES, TERM_MONTHS_RANGE, FieldError,
    parse_date, parse_percent_e4, parse_yuan,
)
from alliance.uds1.files import MAX_LINE_CHARS, iter_rows
from alliance.uds1.records import (
    FIELDS, KINDS, FlagRecord, LoanRecord, Record, RowError, RowResult, ScoreRecord, record_key,
)
from alliance.uds1.rows import CrossCheck, Parser

__all__ = [
    "KINDS", "FIELDS", "LoanRecord", "FlagRecord", "ScoreRecord", "Record", "RowError", "RowResult",
    "record_key", "FieldError", "parse_yuan", "parse_percent_e4", "parse_date", "iter_rows", "Parser", "CrossCheck",
    "SUBJECT_TYPES", "PRODUCT_TYPES", "REPAYMENT_METHODS", "LOAN_STATUSES", "GUARANTEE_TYPES", "FLAG_TYPES",
    "FLAG_STATUSES", "PRINCIPAL_MIN_FEN", "PRINCIPAL_LIMIT_FEN", "ANNUAL_RATE_MAX_E4", "TERM_MONTHS_RANGE",
    "SCORE_RANGE", "MAX_LINE_CHARS",
]
