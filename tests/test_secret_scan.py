"""The secret scanner used by the "gateway holds no secrets" e2e tests must
itself be able to fail: each planted secret, in each spelling and inside
each wrapping the gateway produces (a JSON log line, a hex request body, a
protobuf field in it), is found; a clean blob gives no hit."""
from __future__ import annotations

import base64
import json

import pytest

from alliance.v1 import alliance_pb2 as pb
from tests import secret_scan

KEY = bytes(range(100, 132))
P = 0xC5A1_7E3B_9D42_0F11_8A6C_D3E5_7B19_2F47_61AB_C0DE_F123_4567_89AB_CDEF_0123_4567
RAW_ID = "11010519491231002X"
SECRETS = {"key": secret_scan.byte_spellings(KEY), "p": secret_scan.int_spellings(P), "id": secret_scan.id_spellings(RAW_ID)}


def _body_with(consent_id: str = "C-1", ciphertext: bytes = b"") -> bytes:
    return pb.QueryRequestBody(query_id="ab" * 16, consent_id=consent_id, precheck_ciphertext=ciphertext).SerializeToString()


def _log_line(body: bytes) -> bytes:
    return b"2026-12-03 07:00:00 INFO alliance.gateway entry " + json.dumps({"seq": 4, "request_body": body.hex()}).encode()


@pytest.mark.parametrize("blob, what", [
    (b"...." + KEY + b"....", "key"),
    (KEY.hex().upper().encode(), "key"),
    (base64.urlsafe_b64encode(KEY).rstrip(b"="), "key"),
    (str(int.from_bytes(KEY, "big")).encode(), "key"),
    (f"p={P}".encode(), "p"),
    (json.dumps({"p": hex(P)}).encode(), "p"),
    (_log_line(_body_with(ciphertext=KEY)), "key"),           # hex request body → protobuf field → raw key
    (_log_line(_body_with(consent_id=RAW_ID)), "id"),         # an ID in a logged request body
    (_log_line(_body_with(consent_id=RAW_ID.lower())), "id"),
    (_log_line(_body_with(consent_id="110105491231002")), "id"),  # the 15-digit legacy spelling
    (json.dumps({"entry": _log_line(_body_with(consent_id=KEY.hex())).decode()}).encode(), "key"),  # nested
    (_log_line(pb.SignedQuery(body=_body_with(consent_id=base64.b64encode(RAW_ID.encode()).decode())).SerializeToString()), "id"),
])
def test_planted_secrets_are_found(blob: bytes, what: str) -> None:
    hits = secret_scan.find_secrets([("blob", blob)], SECRETS)
    assert f"{what} in blob" in hits


def test_a_clean_log_has_no_hit() -> None:
    clean = _log_line(_body_with(consent_id="CONSENT-2026-0001", ciphertext=bytes(512)))
    assert secret_scan.find_secrets([("log", clean + b"\nplain text, 12345\n")], SECRETS) == []
