"""The v2 rules the gateway enforces and `audit verify` re-derives (SPEC §5.3,
§5.4, §6.3, §6.4; docs/audit-log.md "Version 2 entries"). One place, so the
two sides cannot drift apart."""
from __future__ import annotations

from typing import Any

# §5.4 bounds, checked before anything is parsed or logged.
MAX_BODY_BYTES = 4096
SIGNATURE_BYTES = 64
TOKEN_BYTES = 32
MAX_CREDENTIAL_BYTES = 8192
# SPEC §8 AnswerBatch (gateway -> member): items per call, and bytes per call.
# 64 items of the largest valid request (body, credential, signature, token,
# framing: < 12.5 KiB) fit in 1 MiB, well inside gRPC's 4 MB message limit.
MAX_BATCH_ITEMS = 64
MAX_BATCH_BYTES = 1 << 20
MAX_ENTRY_BYTES = 16384
MAX_ENTRY_BYTES_PER_MEMBER = 1024
MAX_DETAIL_CHARS = 512
MAX_DROP_REASON_CHARS = 300

# §5.4: narrower than the members' ±5 minutes, so a request the gateway
# accepts is never stale at a member.
GATEWAY_FRESHNESS_MS = 60_000
MEMBER_FRESHNESS_MS = 300_000
LOCK_TIMEOUT_MS = 5_000
QUOTA_RULE = "fanned_out"
PIN_MS = 24 * 3600 * 1000  # §5.3: a pin lasts 24 h after the latest report on its token

# §5.4 refusal rate limit per peer and replica.
REFUSALS_PER_S = 20
REFUSAL_BURST = 100
SUPPRESSED_FLUSH_MS = 60_000


def max_entry_bytes(members_asked: int) -> int:
    return MAX_ENTRY_BYTES + MAX_ENTRY_BYTES_PER_MEMBER * members_asked


def started_rules(deadline_ms: int) -> dict[str, Any]:
    """The `rules` of a `v2_started` entry."""
    return {
        "freshness_ms": GATEWAY_FRESHNESS_MS,
        "quota": QUOTA_RULE,
        "deadline_ms": deadline_ms,
        "lock_timeout_ms": LOCK_TIMEOUT_MS,
        "pin_ms": PIN_MS,
    }


def query_rules(deadline_ms: int) -> dict[str, Any]:
    """The `rules` every v2 query entry states it was judged by."""
    return {"freshness_ms": GATEWAY_FRESHNESS_MS, "quota": QUOTA_RULE, "deadline_ms": deadline_ms}


def fanned_out(members_asked: list[str], reason: str | None) -> bool:
    """Whether a query entry used a quota slot: it reached the members."""
    return bool(members_asked) and reason != "too_few_members"
