"""audit_entry.decode: one encoding per entry (SPEC §6, docs/audit-log.md).

Every reader of the log decodes each entry, so decode has a fast path; these
cases pin that no bytes but the canonical encoding pass it, with the slow
path's specific message."""
from __future__ import annotations

import pytest

from alliance import audit_entry
from alliance.errors import VerificationFailed

# Written by hand, not by encode(): keys sorted, no white space, ASCII.
CANONICAL = b'{"kind":"gateway_started","note":"caf\\u00e9","seq":7,"v":2}'


def test_the_canonical_bytes_decode_to_their_entry() -> None:
    assert audit_entry.decode(CANONICAL, index=7) == {"kind": "gateway_started", "note": "café", "seq": 7, "v": 2}
    assert audit_entry.decode(CANONICAL) == audit_entry.decode(CANONICAL, index=7)
    assert audit_entry.encode(audit_entry.decode(CANONICAL)) == CANONICAL


@pytest.mark.parametrize("data, index, message", [
    (b'{"kind":"gateway_started","note":"caf\\u00e9","seq":7, "v":2}', 7, "not the canonical encoding"),
    (b'{"note":"caf\\u00e9","kind":"gateway_started","seq":7,"v":2}', 7, "not the canonical encoding"),
    (b'{"kind":"gateway_started","note":"x","note":"caf\\u00e9","seq":7,"v":2}', 7, "not the canonical encoding"),
    (b'{"kind":"gateway_started","note":"caf\\u00E9","seq":7,"v":2}', 7, "not the canonical encoding"),
    ('{"kind":"gateway_started","note":"café","seq":7,"v":2}'.encode(), 7, "not canonical JSON"),
    (b'{"kind":"gateway_started","note":1.5,"seq":7,"v":2}', 7, "floats are not allowed"),
    (b'{"kind":"gateway_started","note":1e3,"seq":7,"v":2}', 7, "floats are not allowed"),
    (b'{"kind":"gateway_started","note":NaN,"seq":7,"v":2}', 7, "floats are not allowed"),
    (b'{"kind":"gateway_started","note":"caf\\u00e9","seq":7,"v":2}', 8, "sequence number 7 does not match"),
    (b'{"kind":"gateway_started","note":"caf\\u00e9","seq":"7","v":2}', 7, "sequence number 7 does not match"),
    (b'{"kind":"gateway_started","note":"caf\\u00e9","seq":true,"v":2}', 1, "sequence number True does not match"),
    (b'{"kind":"coffee","note":"caf\\u00e9","seq":7,"v":2}', 7, "unknown version or kind"),
    (b'{"kind":"gateway_started","note":"caf\\u00e9","seq":7,"v":3}', 7, "unknown version or kind"),
    (b'{"kind":"gateway_started","note":"caf\\u00e9","seq":7,"v":true}', 7, "unknown version or kind"),
    (b'[{"kind":"gateway_started","seq":7,"v":2}]', 7, "not a JSON object"),
    (b'{"kind":"gateway_started","seq":7,"v":2', 7, "not canonical JSON"),
    (b'{"kind":"gateway_started","note":' + b"[" * 5000 + b"]" * 5000 + b',"seq":7,"v":2}', 7, "nested too deeply"),
])
def test_any_other_bytes_are_refused_with_the_reason(data: bytes, index: int, message: str) -> None:
    with pytest.raises(VerificationFailed, match=message):
        audit_entry.decode(data, index=index)
