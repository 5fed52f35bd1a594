"""Parsing of command-line values shared by every command group."""
from __future__ import annotations

from datetime import date

from alliance.errors import UsageError


def parse_day(value: str, flag: str) -> date:
    """A strict YYYY-MM-DD date given to ``flag``; anything else is a usage error (exit 2)."""
    try:
        if len(value) != 10:
            raise ValueError
        return date.fromisoformat(value)
    except ValueError:
        raise UsageError(f"{flag} must be a date YYYY-MM-DD, not {value!r}") from None
