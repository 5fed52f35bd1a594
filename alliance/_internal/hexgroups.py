"""Hex in groups of four, for values people read aloud to each other
(fingerprints, check values), and the forgiving inverse."""
from __future__ import annotations

import re

from alliance.errors import InvalidInput


def format_hex_groups(data: bytes) -> str:
    h = data.hex()
    return ":".join(h[i:i + 4] for i in range(0, len(h), 4))


def parse_hex_groups(text: str, size: int, what: str) -> bytes:
    """Inverse of format_hex_groups, tolerant of spaces, colons, dashes and case."""
    cleaned = re.sub(r"[\s:\-]", "", text).lower()
    try:
        value = bytes.fromhex(cleaned)
    except ValueError:
        raise InvalidInput(f"not a {what}: {text!r}") from None
    if len(value) != size:
        raise InvalidInput(f"a {what} is {size} bytes ({2 * size} hex digits), got {len(value)} bytes")
    return value
