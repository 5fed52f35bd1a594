"""The signed query of SPEC §5: building it (querier), and the checks that
gateway and members both apply to it. Each check raises Refused with a
machine-readable reason that ends up in the audit log."""
from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import date

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf.message import DecodeError

from alliance import log_rules, signing
from alliance.errors import CryptoError, Refused
from alliance.v1 import alliance_pb2 as pb

FRESHNESS_MS = 5 * 60 * 1000
AS_OF_EARLIEST = date(1990, 1, 1)  # a report date outside this range is a malformed request
AS_OF_LATEST = date(2199, 12, 31)
PURPOSES = ("LOAN_APPROVAL", "CREDIT_LIMIT_REVIEW", "POST_LOAN_MONITORING")
MODES = {"report": pb.QUERY_MODE_REPORT, "precheck": pb.QUERY_MODE_PRECHECK}
_QUERY_ID = re.compile(r"^[0-9a-f]{32}$")
_CONSENT_ID = re.compile(r"^[\x21-\x7e]{1,128}$")
MAX_BODY_BYTES = log_rules.MAX_BODY_BYTES  # SPEC §5.4; a precheck's Enc(x) is inside the body


def new_query_id() -> str:
    return secrets.token_hex(16)


def purpose_value(name: str) -> int:
    if name not in PURPOSES:
        raise Refused(f"unknown purpose {name!r}; allowed: {', '.join(PURPOSES)}", reason="unknown_purpose")
    return pb.Purpose.Value("PURPOSE_" + name)


def purpose_name(value: int) -> str:
    try:
        return pb.Purpose.Name(value).removeprefix("PURPOSE_")
    except ValueError:
        return f"UNKNOWN({value})"


def mode_name(value: int) -> str:
    return {pb.QUERY_MODE_REPORT: "query", pb.QUERY_MODE_PRECHECK: "precheck"}.get(value, "invalid")


@dataclass(frozen=True)
class QueryParams:
    querier_id: str
    credential_serial: int
    subject_token: bytes
    matching_key_epoch: int
    purpose: str
    consent_id: str
    consent_sha256: bytes
    as_of: date
    mode: int
    paillier_key_fingerprint: bytes
    timestamp_ms: int
    precheck_ciphertext: bytes = b""
    query_id: str = ""


def build_signed_query(params: QueryParams, signing_key: Ed25519PrivateKey) -> pb.SignedQuery:
    body = pb.QueryRequestBody(
        query_id=params.query_id or new_query_id(),
        querier_id=params.querier_id,
        credential_serial=params.credential_serial,
        subject_token_sha256=signing.sha256(params.subject_token),
        matching_key_epoch=params.matching_key_epoch,
        purpose=purpose_value(params.purpose),
        consent_id=params.consent_id,
        consent_sha256=params.consent_sha256,
        as_of=params.as_of.isoformat(),
        mode=params.mode,
        paillier_key_fingerprint=params.paillier_key_fingerprint,
        timestamp_ms=params.timestamp_ms,
        precheck_ciphertext=params.precheck_ciphertext,
    )
    body_bytes = body.SerializeToString(deterministic=True)
    return pb.SignedQuery(
        body=body_bytes,
        signature=signing.sign(signing_key, signing.QUERY_REQUEST, body_bytes),
        subject_token=params.subject_token,
    )


def parse_body(query: pb.SignedQuery) -> pb.QueryRequestBody:
    """Parse and shape-check the signed body (no signature check here)."""
    if len(query.body) > MAX_BODY_BYTES:
        raise Refused(f"request body of {len(query.body)} bytes exceeds {MAX_BODY_BYTES}", reason="malformed_request")
    body = pb.QueryRequestBody()
    try:
        body.ParseFromString(query.body)
    except DecodeError as exc:
        raise Refused(f"request body is not a QueryRequestBody: {exc}", reason="malformed_request") from None
    if not _QUERY_ID.match(body.query_id):
        raise Refused("query_id must be 32 lowercase hex characters", reason="malformed_request")
    if body.mode not in MODES.values():
        raise Refused("request mode must be report or precheck", reason="malformed_request")
    if purpose_name(body.purpose) not in PURPOSES:
        raise Refused(f"unknown purpose {purpose_name(body.purpose)}", reason="unknown_purpose")
    if not _CONSENT_ID.match(body.consent_id) or len(body.consent_sha256) != 32:
        raise Refused("a consent reference and the SHA-256 of the signed authorisation are required", reason="missing_consent")
    if len(body.subject_token_sha256) != 32 or len(body.paillier_key_fingerprint) != 32:
        raise Refused("token hash and key fingerprint must be 32 bytes", reason="malformed_request")
    try:
        as_of = date.fromisoformat(body.as_of)
    except ValueError:
        raise Refused(f"as_of {body.as_of!r} is not a YYYY-MM-DD date", reason="malformed_request") from None
    if len(body.as_of) != 10:
        raise Refused(f"as_of {body.as_of!r} is not a YYYY-MM-DD date", reason="malformed_request")
    if not AS_OF_EARLIEST <= as_of <= AS_OF_LATEST:  # day arithmetic near date.min/max would overflow in every member
        raise Refused(f"as_of {body.as_of} is outside {AS_OF_EARLIEST}..{AS_OF_LATEST}", reason="malformed_request")
    if (body.mode == pb.QUERY_MODE_PRECHECK) != bool(body.precheck_ciphertext):
        raise Refused("a precheck carries Enc(x); a report query does not", reason="malformed_request")
    return body


def check_token(query: pb.SignedQuery, body: pb.QueryRequestBody) -> None:
    if len(query.subject_token) != 32 or signing.sha256(query.subject_token) != body.subject_token_sha256:
        raise Refused("subject token does not match the hash in the signed body", reason="token_mismatch")


def check_fresh(body: pb.QueryRequestBody, now_ms: int, *, window_ms: int = FRESHNESS_MS) -> None:
    """Members allow ±5 minutes; the gateway ±60 s (SPEC §5.4), so a request
    the gateway accepts is never stale at a member."""
    if abs(now_ms - body.timestamp_ms) > window_ms:
        raise Refused(
            f"request timestamp is {abs(now_ms - body.timestamp_ms) // 1000}s away from now (limit {window_ms // 1000}s)",
            reason="stale_timestamp",
        )


def verify_query_signature(query: pb.SignedQuery, ed25519_public_key: bytes) -> None:
    try:
        signing.verify(ed25519_public_key, signing.QUERY_REQUEST, query.body, query.signature, what="query request")
    except CryptoError as exc:
        raise Refused(str(exc), reason="bad_signature") from None


def answer_message(body: pb.QueryRequestBody, body_bytes: bytes, ciphertext: bytes, book_status: bytes = b"") -> bytes:
    """What a member signs for its answer (signing.member_answer_message);
    ``book_status``: the exact bytes of the status the answer carries (SPEC §10)."""
    return signing.member_answer_message(body.query_id, signing.sha256(body_bytes), signing.sha256(ciphertext),
                                         signing.sha256(book_status) if book_status else b"")
