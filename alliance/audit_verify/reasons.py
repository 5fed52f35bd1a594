"""Refusal reasons the gateway logs, grouped by where its checks raise them,
and what each must fit (the message when it does not)."""
from __future__ import annotations

# Every reason the gateway can log (keys of gateway.service.REFUSALS; a test
# keeps the two in step). Grouped by where the gateway's checks raise them.
REASONS_BEFORE_PARSE = frozenset({"unauthenticated", "wrong_role", "unknown_member", "member_suspended", "member_revoked"})
PARSE_REASONS = frozenset({"malformed_request", "unknown_purpose", "missing_consent"})
REASONS_AFTER_SIGNATURE = frozenset(
    {"stale_timestamp", "token_mismatch", "foreign_key", "quota_exceeded", "too_few_members", "too_few_answers",
     "incomplete_precheck", "replayed_query_id", "answer_set_changed", "monitoring_disabled", "stale_book"}
)
# Refusals an entry may show members asked for (v2): raised after the fan-out, or listing who would have been
# asked (too_few_members, never sent). Every other refusal comes before any member is asked (gateway/service.py).
REASONS_WITH_MEMBERS_ASKED = frozenset({"too_few_answers", "incomplete_precheck", "answer_set_changed", "too_few_members"})
V2_ONLY_REASONS = frozenset({"replayed_query_id", "answer_set_changed", "monitoring_disabled", "stale_book"})  # refused in version 1 entries
KNOWN_REASONS = (REASONS_BEFORE_PARSE | PARSE_REASONS | REASONS_AFTER_SIGNATURE
                 | {"querier_mismatch", "stale_credential", "bad_signature"})
V1_REASONS = KNOWN_REASONS - V2_ONLY_REASONS

REASON_RULES = {
    "wrong_role": "the querier is a registered member",
    "unknown_member": "the querier is a registered member",
    "member_suspended": "the querier was not suspended at the time",
    "member_revoked": "the querier was not revoked at the time",
    "malformed_request": "the request parses and its mode matches, and every length stated as oversized is within its bound",
    "unknown_purpose": "the request does not fail for its purpose",
    "missing_consent": "the request does not fail for its consent",
    "querier_mismatch": "the request names the querier",
    "stale_credential": "the request names the querier's current credential",
    "stale_timestamp": "the request timestamp is within the freshness window of receipt (v1: 5 minutes; v2: rules.freshness_ms)",
    "foreign_key": "the request names the querier's own Paillier key",
    "quota_exceeded": "the querier had not used its daily quota",
    "too_few_members": "enough members were asked",
    "too_few_answers": "enough members answered, or too few were asked",
    "incomplete_precheck": "it is not a precheck with enough but not all answers",
    "replayed_query_id": "the request was never sent to members, and another entry has its query id",
    "answer_set_changed": "a pin was live and the members that answered are not exactly it less the querier",
    "monitoring_disabled": "it is a POST_LOAN_MONITORING request and the logged policy had monitoring off",
    "stale_book": ("the entry states the querier's latest logged book status and the logged max_book_age_days, "
                   "and by them the book was empty, absent or older than allowed on the day received"),
}
