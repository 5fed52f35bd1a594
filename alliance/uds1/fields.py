"""UDS-1 single values (SPEC §2): money in yuan as integer fen, percentages,
strict dates, whole numbers, codes (enums) and loan IDs, with the limits they
are checked against.

Each rule is a cheap string test: no regex where a character-class test will
do, no Decimal where an integer parse suffices, and never a float for money.
The private parsers raise _Bad (the row loop in rows.py adds the field name);
the public parse_* functions raise FieldError for callers that parse one value
(for example the CLI's ``--amount``).
"""
from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from datetime import date
from typing import TypeVar

from alliance.errors import InvalidInput

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

_MAX_INT_DIGITS = 15
_SHOWN_VALUE_CHARS = 40

_LOAN_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")

T = TypeVar("T")


class FieldError(InvalidInput):
    """A value that breaks a rule, for callers that parse single values (for
    example the CLI's ``--amount``)."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class _Bad(ValueError):
    """Internal: why a value is invalid; the row loop adds the field name."""


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
