"""Searching the gateway's files, database dump and process logs for secrets
in every usual spelling, after decoding what they carry (issue 12).

A blob is expanded before searching: every JSON object in it (a log line, an
audit-log entry) is walked, and every hex string in it (e.g. `request_body`)
is decoded to bytes, and those bytes parsed as a QueryRequestBody or
SignedQuery when they are one, recursively a few levels deep. Each secret is
searched as raw bytes, hex (lower and upper case), base64 (standard and
URL-safe, with and without padding) and, for integers, decimal."""
from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable, Iterator

from google.protobuf.message import DecodeError

_HEX_RUN = re.compile(rb"(?:[0-9a-fA-F]{2}){8,}")
_B64_RUN = re.compile(rb"[A-Za-z0-9+/_-]{16,}={0,2}")


def byte_spellings(b: bytes) -> list[bytes]:
    """Raw, hex lower/upper, base64 and URL-safe base64 (padded and not), decimal."""
    out = [b, b.hex().encode(), b.hex().upper().encode()]
    for enc in (base64.b64encode, base64.urlsafe_b64encode):
        padded = enc(b)
        out += [padded, padded.rstrip(b"=")]
    out.append(str(int.from_bytes(b, "big")).encode())
    return [s for s in dict.fromkeys(out) if len(s) >= 8]


def int_spellings(v: int) -> list[bytes]:
    return byte_spellings(v.to_bytes((v.bit_length() + 7) // 8, "big")) + [str(v).encode(), hex(v).encode()]


def id_spellings(canonical: str) -> list[bytes]:
    """A resident ID or USCC: as written, lower case, a 15-digit legacy form
    (for 19xx resident IDs), and hex/base64 of each."""
    forms = {canonical, canonical.lower()}
    if len(canonical) == 18 and canonical[6:8] == "19" and canonical[:17].isdigit():
        forms.add(canonical[:6] + canonical[8:17])
    out: list[bytes] = []
    for f in forms:
        out += byte_spellings(f.encode("ascii"))[:-1]  # not the decimal of the ASCII bytes
    return list(dict.fromkeys(out))


def _json_values(blob: bytes) -> Iterator[object]:
    """Every JSON value found in the blob: the whole blob, then each line."""
    candidates = [blob, *blob.splitlines()]
    for c in candidates:
        start = c.find(b"{")
        if start < 0:
            continue
        try:
            yield json.loads(c[start:])
        except (ValueError, UnicodeDecodeError):
            continue


def _strings(value: object) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield str(k)
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def _protobuf_fields(data: bytes) -> Iterator[bytes]:
    from alliance.v1 import alliance_pb2 as pb

    for cls in (pb.QueryRequestBody, pb.SignedQuery):
        msg = cls()
        try:
            msg.ParseFromString(data)
        except (DecodeError, RuntimeError):
            continue
        for _, value in msg.ListFields():
            if isinstance(value, bytes):
                yield value
            elif isinstance(value, str):
                yield value.encode("utf-8", "surrogatepass")
            elif isinstance(value, int):
                yield str(value).encode()


def expand(blob: bytes, depth: int = 3) -> list[bytes]:
    """The blob and everything decodable inside it (see the module docstring)."""
    found = [blob]
    if depth == 0:
        return found
    texts = [s.encode("utf-8", "surrogatepass") for v in _json_values(blob) for s in _strings(v)]
    found += texts
    inner: list[bytes] = []
    for text in [blob, *texts]:
        for run in _HEX_RUN.findall(text):
            try:
                inner.append(binascii.unhexlify(run))
            except binascii.Error:
                continue
        for run in _B64_RUN.findall(text) if len(text) < 1 << 20 else []:
            for dec in (base64.b64decode, base64.urlsafe_b64decode):
                try:
                    inner.append(dec(run + b"=" * (-len(run) % 4)))
                except (binascii.Error, ValueError):
                    continue
    for data in inner:
        found.append(data)
        for field in _protobuf_fields(data):
            found += expand(field, depth - 1)
    return found


def find_secrets(blobs: Iterable[tuple[str, bytes]], secrets: dict[str, list[bytes]]) -> list[str]:
    """Where each secret was seen, as "what in where" lines (empty: clean)."""
    hits = []
    for where, blob in blobs:
        haystack = b"\n\x00\n".join(expand(blob))  # one search per spelling, not one per piece
        for what, spellings in secrets.items():
            if any(sp in haystack for sp in spellings):
                hits.append(f"{what} in {where}")
    return hits
