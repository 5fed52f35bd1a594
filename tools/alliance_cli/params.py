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


def check_host_port(flag: str, value: str) -> None:
    """HOST:PORT given to ``flag`` with a port 1-65535; anything else is a usage error (exit 2)."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"{flag} must be host:port with a port 1-65535, not {value!r}")
