"""Version 2 entries (docs/audit-log.md "Version 2 entries"; SPEC §5.3, §5.4,
§6.3, §6.4): the rules a v2 log states, the size bounds, the ``oversized``
items of a refused over-long request, and the shape of a
``refusals_suppressed`` entry. Pure functions over decoded entries."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from alliance import audit_entry, log_rules
from alliance.errors import UsageError
from alliance.policy import Policy
from alliance.audit_verify.fields import Bad, field, time_ms

V2_STARTED = "v2_started"
SUPPRESSED = "refusals_suppressed"
GATEWAY_STARTED = "gateway_started"
POLICY_CHANGED = "policy_changed"
V2_KINDS = frozenset(audit_entry.V2_KINDS)  # only in "v": 2 entries
NOT_MEMBERSHIP = frozenset(audit_entry.KINDS) - frozenset(audit_entry.MEMBERSHIP_KINDS)
MIN_K = 2  # SPEC §4: no sum over fewer than two members

# The bounds the gateway enforces, from the one place both sides read them (alliance/log_rules.py).
QUOTA_RULE = log_rules.QUOTA_RULE
MAX_FRESHNESS_MS = log_rules.GATEWAY_FRESHNESS_MS  # SPEC §5.4: the gateway's window is ±60 s
MIN_PIN_MS = log_rules.PIN_MS  # SPEC §5.3: a pin lasts 24 hours after the latest report
MAX_DEADLINE_MS = 60_000  # bounds on the stated waits: they widen the slack of the time and quota rules
MAX_LOCK_TIMEOUT_MS = 60_000

MAX_BODY_BYTES = log_rules.MAX_BODY_BYTES
SIGNATURE_BYTES = log_rules.SIGNATURE_BYTES
TOKEN_BYTES = log_rules.TOKEN_BYTES
FIELD_BOUNDS = {  # field: (shortest, longest) allowed length in bytes
    "request_body": (0, MAX_BODY_BYTES),
    "request_signature": (SIGNATURE_BYTES, SIGNATURE_BYTES),
    "subject_token": (TOKEN_BYTES, TOKEN_BYTES),
}
ENTRY_BYTES = log_rules.MAX_ENTRY_BYTES
ENTRY_BYTES_PER_ASKED = log_rules.MAX_ENTRY_BYTES_PER_MEMBER
MAX_DETAIL_CHARS = log_rules.MAX_DETAIL_CHARS
MAX_DROPPED_REASON_CHARS = log_rules.MAX_DROP_REASON_CHARS

MEMBERSHIP_SLACK_MS = 5_000  # the "+ 5 s" of the membership time rule
MAX_AHEAD_OF_VERIFIER_MS = 5 * 60_000
QUOTA_LOOKAHEAD_MS = 5_000  # fanned-out entries received up to 5 s after a quota refusal count for it
RECENT_MARGIN_MS = 10_000  # quota refusals in the newest deadline_ms + 10 s are left unverified
SUPPRESSION_WINDOW_MS = log_rules.SUPPRESSED_FLUSH_MS  # one refusals_suppressed entry per peer per minute


@dataclass(frozen=True)
class Rules:
    """The rules of a ``v2_started`` entry."""

    freshness_ms: int
    quota: str
    deadline_ms: int
    lock_timeout_ms: int
    pin_ms: int


@dataclass(frozen=True)
class EntryRules:
    """The subset a v2 query entry states it was judged by."""

    freshness_ms: int
    quota: str
    deadline_ms: int


@dataclass(frozen=True)
class Oversized:
    field: str
    length: int
    sha256: str

    @property
    def over_bound(self) -> bool:
        shortest, longest = FIELD_BOUNDS[self.field]
        return not shortest <= self.length <= longest


def _positive(rules: dict[str, Any], name: str, lowest: int = 1, highest: int | None = None) -> int:
    value = field(rules, name, int)
    if value < lowest or (highest is not None and value > highest):
        raise Bad(f"rules.{name} {value} is outside {lowest}..{highest if highest is not None else ''}")
    return value


def _rules_object(e: dict[str, Any], keys: set[str]) -> dict[str, Any]:
    rules = field(e, "rules", dict)
    if set(rules) != keys:
        raise Bad(f"rules must hold exactly {', '.join(sorted(keys))}")
    if rules["quota"] != QUOTA_RULE:
        raise Bad(f"rules.quota {rules['quota']!r} is not {QUOTA_RULE!r}")
    return rules


def parse_rules(e: dict[str, Any]) -> Rules:
    """The rules of a ``v2_started`` entry, within the bounds SPEC v2 allows."""
    rules = _rules_object(e, {"freshness_ms", "quota", "deadline_ms", "lock_timeout_ms", "pin_ms"})
    return Rules(
        freshness_ms=_positive(rules, "freshness_ms", highest=MAX_FRESHNESS_MS), quota=QUOTA_RULE,
        deadline_ms=_positive(rules, "deadline_ms", highest=MAX_DEADLINE_MS),
        lock_timeout_ms=_positive(rules, "lock_timeout_ms", highest=MAX_LOCK_TIMEOUT_MS),
        pin_ms=_positive(rules, "pin_ms", lowest=MIN_PIN_MS),
    )


def parse_entry_rules(e: dict[str, Any], started: Rules) -> EntryRules:
    """A v2 query entry's rules: the log's freshness window and quota rule,
    and the deadline the gateway waited (its configuration may change)."""
    rules = _rules_object(e, {"freshness_ms", "quota", "deadline_ms"})
    freshness = field(rules, "freshness_ms", int)
    if freshness != started.freshness_ms:
        raise Bad(f"rules.freshness_ms {freshness} is not the log's {started.freshness_ms} (v2_started)")
    return EntryRules(freshness, QUOTA_RULE, _positive(rules, "deadline_ms", highest=MAX_DEADLINE_MS))


def parse_oversized(e: dict[str, Any]) -> list[Oversized]:
    """The ``oversized`` items: known fields, each once, sorted by field."""
    items = []
    for item in field(e, "oversized", list):
        if not isinstance(item, dict) or set(item) != {"field", "length", "sha256"}:
            raise Bad("an oversized item is not {field, length, sha256}")
        name = field(item, "field", str)
        if name not in FIELD_BOUNDS:
            raise Bad(f"oversized field {name!r} is not one with a bound ({', '.join(FIELD_BOUNDS)})")
        length = field(item, "length", int)
        digest = field(item, "sha256", str)
        if length < 0 or len(digest) != 64 or digest != digest.lower() or any(c not in "0123456789abcdef" for c in digest):
            raise Bad(f"oversized item for {name} needs a length ≥ 0 and a lowercase hex SHA-256")
        items.append(Oversized(name, length, digest))
    names = [i.field for i in items]
    if names != sorted(set(names)):
        raise Bad("oversized items must name each field once, sorted by field")
    return items


def parse_answer_set(e: dict[str, Any]) -> tuple[str, ...] | None:
    value = field(e, "answer_set", list, nullable=True)
    if value is None:
        return None
    if not all(isinstance(m, str) for m in value) or value != sorted(set(value)):
        raise Bad("answer_set must list distinct member ids, sorted")
    return tuple(value)


def size_bound(e: dict[str, Any]) -> int:
    asked = e.get("members_asked")
    return ENTRY_BYTES + ENTRY_BYTES_PER_ASKED * (len(asked) if isinstance(asked, list) else 0)


def check_size(e: dict[str, Any], size: int) -> None:
    """No v2 entry over 16384 bytes plus 1024 per member asked; bounded texts."""
    bound = size_bound(e)
    if size > bound:
        raise Bad(f"the entry is {size} bytes, over the v2 bound of {bound}")
    detail = e.get("detail")
    if isinstance(detail, str) and len(detail) > MAX_DETAIL_CHARS:
        raise Bad(f"detail is {len(detail)} characters, over {MAX_DETAIL_CHARS}")
    dropped = e.get("dropped")
    for d in dropped if isinstance(dropped, list) else ():  # its type is the query parser's to refuse
        reason = d.get("reason") if isinstance(d, dict) else None
        if not isinstance(reason, str) or len(reason) > MAX_DROPPED_REASON_CHARS:
            raise Bad(f"a dropped reason must be text of at most {MAX_DROPPED_REASON_CHARS} characters")


def parse_suppressed(e: dict[str, Any]) -> tuple[str, int]:
    """A ``refusals_suppressed`` entry: (peer id, count)."""
    peer = field(e, "peer_id", str)
    role = field(e, "role", str)
    count = field(e, "count", int)
    first, last = field(e, "first_ms", int), field(e, "last_ms", int)
    if not peer or role not in ("member", "auditor", "gateway"):
        raise Bad(f"refusals_suppressed names peer {peer!r} with role {role!r}")
    if count < 1:
        raise Bad(f"refusals_suppressed counts {count} requests; at least 1")
    if not first <= last < first + SUPPRESSION_WINDOW_MS:
        raise Bad(f"first_ms {first} and last_ms {last} do not span less than one minute, in order")
    if last > time_ms(e.get("time")):
        raise Bad("the suppressed requests end after the entry that counts them was written")
    return peer, count


def check_gateway_started(e: dict[str, Any]) -> None:
    """A ``gateway_started`` entry: ``pid`` ≥ 1, a ``host`` name, the
    process's ``deadline_ms`` (1..60000) and ``k_min`` ≥ 2."""
    pid = field(e, "pid", int)
    host = field(e, "host", str)
    if pid < 1:
        raise Bad(f"gateway_started pid {pid} is not a process id")
    if not host or len(host) > 255:
        raise Bad("gateway_started host must be a name of 1..255 characters")
    deadline = field(e, "deadline_ms", int)
    if not 1 <= deadline <= MAX_DEADLINE_MS:
        raise Bad(f"gateway_started deadline_ms {deadline} is outside 1..{MAX_DEADLINE_MS}")
    k_min = field(e, "k_min", int)
    if k_min < MIN_K:
        raise Bad(f"gateway_started k_min {k_min} is below {MIN_K}")


def check_policy_changed(e: dict[str, Any]) -> Policy:
    """A ``policy_changed`` entry states the whole valid policy after it (SPEC §9, §10)."""
    try:
        return Policy.from_json(field(e, "policy", dict))
    except (UsageError, TypeError) as exc:
        raise Bad(f"policy {e.get('policy')!r} is not a valid alliance policy: {exc}") from None
