"""Decoding entries and reading their fields, for the audit verifier.

Pure helpers shared by the replay: canonical decoding (fast path), typed
field access that raises :class:`Bad` naming the field, and the time
formats and day boundaries the gateway uses."""
from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any
from zoneinfo import ZoneInfo

from alliance import protocol

STATE_GRACE_MS = 5_000  # SPEC §5: suspensions take effect within 5 s
CREDENTIAL_SLACK_S = protocol.FRESHNESS_MS // 1000  # clock skew tolerated on credential validity
SHANGHAI = ZoneInfo("Asia/Shanghai")
INQUIRY_WINDOW_MS = 720 * 3600 * 1000  # inquiries_30d, as the gateway counts it

_TIME_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z")


class Bad(Exception):
    """The entry being replayed breaks a rule; the message says which."""


def day_start_ms(ms: int) -> int:
    local = datetime.fromtimestamp(ms / 1000, tz=SHANGHAI)
    return int(local.replace(hour=0, minute=0, second=0, microsecond=0).timestamp() * 1000)


def utc_timestamp(ms: int) -> str:
    """The gateway's `time` format: RFC 3339 UTC with milliseconds."""
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def time_ms(text: Any) -> int:
    if not isinstance(text, str) or not _TIME_RE.fullmatch(text):
        raise Bad(f"time {text!r} is not RFC 3339 UTC with milliseconds")
    try:
        dt = datetime.strptime(text[:-5], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc)
    except ValueError:
        raise Bad(f"time {text!r} is not a valid date and time") from None
    return int(dt.timestamp()) * 1000 + int(text[-4:-1])


def field(entry: dict[str, Any], name: str, kind: type | tuple[type, ...], *, nullable: bool = False) -> Any:
    value = entry.get(name)
    if value is None and nullable:
        return None
    if name not in entry or isinstance(value, bool) or not isinstance(value, kind):
        raise Bad(f"field {name!r} is missing or has the wrong type")
    return value


def hex_field(entry: dict[str, Any], name: str, *, size: int | None = None, nullable: bool = False) -> bytes | None:
    text = field(entry, name, str, nullable=nullable)
    if text is None:
        return None
    try:
        data = bytes.fromhex(text)
    except ValueError:
        data = None
    if data is None or data.hex() != text:  # the canonical form: lowercase, no spaces
        raise Bad(f"field {name!r} is not lowercase hex")
    if size is not None and len(data) != size:
        raise Bad(f"field {name!r} must be {size} bytes, not {len(data)}")
    return data


def member_ids(entry: dict[str, Any], name: str) -> list[str]:
    ids = field(entry, name, list)
    if not all(isinstance(m, str) for m in ids):
        raise Bad(f"field {name!r} must list member ids")
    if len(set(ids)) != len(ids):
        raise Bad(f"field {name!r} names a member twice")
    return ids
