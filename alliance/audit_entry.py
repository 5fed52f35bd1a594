"""Canonical byte encoding of audit log entries (SPEC §6; docs/audit-log.md).

An entry is a JSON object serialised canonically: keys sorted, no
insignificant white space, ASCII only (non-ASCII escaped as \\uXXXX), integers
only (no floats), byte strings as lowercase hex. The leaf hash is
SHA-256(0x00 || entry bytes). A verifier rebuilds the tree from the stored
bytes and re-parses them; ``decode`` refuses any entry whose bytes are not
exactly the canonical encoding of what they say, so two encodings of one
entry cannot both exist."""
from __future__ import annotations

import json
from typing import Any

from alliance.errors import InvalidInput, VerificationFailed

FORMAT_VERSION = 1
FORMAT_VERSION_2 = 2  # entries after a log's v2_started entry (and that entry itself)
FORMAT_VERSIONS = (FORMAT_VERSION, FORMAT_VERSION_2)

QUERY_KINDS = ("query", "precheck")
V1_MEMBERSHIP_KINDS = ("credential_issued", "member_suspended", "member_resumed", "member_revoked", "quota_changed")
# Every membership entry (SPEC §5.1 feed: numbered by membership_seq in v2).
MEMBERSHIP_KINDS = V1_MEMBERSHIP_KINDS + ("v2_started", "member_sponsored", "policy_changed", "matching_key_created")
OTHER_V2_KINDS = ("refusals_suppressed", "gateway_started")
V2_KINDS = ("v2_started", "member_sponsored", "policy_changed", "matching_key_created", "disclosure",
            "book_status") + OTHER_V2_KINDS  # only in "v": 2 entries
DISCLOSURE_KINDS = ("disclosure",)  # SPEC §11: a member's signed monthly figures (not a membership change)
BOOK_STATUS_KINDS = ("book_status",)  # SPEC §10: a member's signed book date and loan count (not a membership change)
KINDS = QUERY_KINDS + MEMBERSHIP_KINDS + OTHER_V2_KINDS + DISCLOSURE_KINDS + BOOK_STATUS_KINDS


def encode(entry: dict[str, Any]) -> bytes:
    _check_types(entry)
    return _dumps(entry)


def decode(data: bytes, *, index: int | None = None) -> dict[str, Any]:
    """The entry ``data`` encodes, refusing any bytes that are not its
    canonical encoding, an unknown version or kind, or (given ``index``) a
    ``seq`` other than its position. Every reader of the log (auditors,
    reconcile, the feed) runs this per entry, so the common case takes one
    parse and one dump; anything else goes the slow way, whose message is
    the one reported."""
    entry = _decode_common(data, index)
    if entry is not None:
        return entry
    try:
        entry = json.loads(data.decode("ascii"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise VerificationFailed(f"entry {index}: not canonical JSON ({exc})", entry=index) from exc
    except RecursionError:  # the gateway's bytes: nesting no entry has
        raise VerificationFailed(f"entry {index}: nested too deeply", entry=index) from None
    if not isinstance(entry, dict):
        raise VerificationFailed(f"entry {index}: not a JSON object", entry=index)
    try:
        canonical = encode(entry)
    except TypeError as exc:
        raise VerificationFailed(f"entry {index}: {exc}", entry=index) from exc
    except RecursionError:
        raise VerificationFailed(f"entry {index}: nested too deeply", entry=index) from None
    if canonical != data:
        raise VerificationFailed(f"entry {index}: bytes are not the canonical encoding", entry=index)
    if type(entry.get("v")) is not int or entry["v"] not in FORMAT_VERSIONS or entry.get("kind") not in KINDS:
        raise VerificationFailed(f"entry {index}: unknown version or kind", entry=index)
    if index is not None and (type(entry.get("seq")) is not int or entry["seq"] != index):  # True == 1 in Python
        raise VerificationFailed(f"entry {index}: sequence number {entry.get('seq')} does not match its position", entry=index)
    return entry


def _no_float(text: str) -> Any:
    raise ValueError(f"{text} is not an integer")


def _decode_common(data: bytes, index: int | None) -> dict[str, Any] | None:
    """A canonical, valid entry, or None to take the slow path. JSON parsed
    without floats or NaN holds only the types ``encode`` accepts, so a
    parse that re-encodes to the same bytes is canonical (no type walk)."""
    try:
        if not data.isascii():
            return None
        entry = json.loads(data, parse_float=_no_float, parse_constant=_no_float)
    except (ValueError, RecursionError):
        return None
    try:
        if (type(entry) is dict and (index is None or (type(entry.get("seq")) is int and entry["seq"] == index))
                and type(entry.get("v")) is int and entry["v"] in FORMAT_VERSIONS and entry.get("kind") in KINDS
                and _dumps(entry) == data):
            return entry
    except RecursionError:
        pass
    return None


def _dumps(entry: dict[str, Any]) -> bytes:
    return json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode("ascii")


def parse_canonical_statement(body: bytes, *, what: str, keys: set[str], max_bytes: int, format_: str,
                              prefix: str, canonical_rules: str = "keys sorted, no white space, ASCII") -> dict[str, Any]:
    """The exact bytes of a signed statement (book status, disclosure) → its
    JSON object, refusing anything but the canonical encoding of an object
    with exactly ``keys`` and ``"format": format_``. A signature covers
    bytes, so only one encoding may ever mean a given statement.
    ``what`` names the body in messages, ``prefix`` its fields."""
    if len(body) > max_bytes:
        raise InvalidInput(f"{what} is {len(body)} bytes; at most {max_bytes}")
    try:
        data = json.loads(body.decode("ascii"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidInput(f"{what} is not JSON: {exc}") from None
    if not isinstance(data, dict) or set(data) != keys:
        raise InvalidInput(f"{what} must hold exactly {sorted(keys)}")
    try:
        canonical = encode(data)
    except TypeError as exc:
        raise InvalidInput(f"{what}: {exc}") from None
    if canonical != body:
        raise InvalidInput(f"{what} is not canonical JSON ({canonical_rules})")
    if data["format"] != format_:
        raise InvalidInput(f"{prefix} format {data['format']!r} is not {format_!r}")
    if not isinstance(data["member_id"], str) or not data["member_id"]:
        raise InvalidInput(f"{prefix} member_id must be a non-empty string")
    return data


def _check_types(value: Any) -> None:
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return
    if isinstance(value, float):
        raise TypeError("floats are not allowed in audit entries")
    if isinstance(value, list):
        for item in value:
            _check_types(item)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError("audit entry keys must be strings")
            _check_types(item)
        return
    raise TypeError(f"audit entries hold JSON scalars, lists and objects, not {type(value).__name__}")
