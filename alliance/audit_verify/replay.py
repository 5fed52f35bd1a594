"""The contents check, in log order: each entry is handed to the membership
replay or the query rules; ``entry`` returns the signature jobs it needs.

A log becomes version 2 at its ``v2_started`` entry: entries before it are
version 1 and judged by the v1 rules; that entry and every later one are
version 2 and also judged by the v2 rules (size bounds, the membership time
rule, pins, query ids, quotas; docs/audit-log.md "Version 2 entries")."""
from __future__ import annotations

from collections import Counter
from typing import Any

from cryptography import x509

from alliance import audit_entry, signing
from alliance.audit_verify.fields import Bad, hex_field, time_ms
from alliance.audit_verify.fields import field as entry_field
from alliance.audit_verify.ledger import Ledger
from alliance.audit_verify.membership import Membership
from alliance.audit_verify.pins import Pins
from alliance.audit_verify.query_rules import V2, QueryRules
from alliance.audit_verify.signatures import SignatureJob
from alliance.audit_verify.sponsorship import Chains
from alliance.audit_verify.timeline import Timeline
from alliance.audit_verify.v2_rules import (
    GATEWAY_STARTED,
    NOT_MEMBERSHIP,
    POLICY_CHANGED,
    SUPPRESSED,
    V2_KINDS,
    V2_STARTED,
    check_gateway_started,
    check_policy_changed,
    check_size,
    parse_rules,
    parse_suppressed,
)


class Replay:
    """Membership state rebuilt from the log, and the checks of each entry
    against it. ``now_ms`` is the verifier's clock (membership times may not
    be more than 5 minutes ahead of it)."""

    def __init__(self, ca_cert: x509.Certificate, *, now_ms: int) -> None:
        self.membership = Membership(ca_cert)
        self.ledger = Ledger()
        self.chains = Chains(self.membership)
        self.queries = QueryRules(self.membership, self.ledger)
        self.queries.chains = self.chains
        self.now_ms = now_ms
        self.v2_started_at: int | None = None
        self.timeline: Timeline | None = None
        self.suppressed: Counter[str] = Counter()  # peer id -> requests rejected unlogged

    def entry(self, seq: int, e: dict[str, Any], size: int = 0) -> list[SignatureJob]:
        """``size``: the entry's length in bytes (bounded in v2)."""
        kind = e["kind"]
        self._check_version(e)
        v2 = self.v2_started_at is not None or kind == V2_STARTED
        if v2:
            check_size(e, size)
        jobs: list[SignatureJob] = []
        if kind == V2_STARTED:
            self._start_v2(seq, e)
        elif kind in audit_entry.QUERY_KINDS:
            jobs = self.queries.check(seq, e)
        elif kind == SUPPRESSED:
            peer, count = parse_suppressed(e)
            self.suppressed[peer] += count
        elif kind == "disclosure":  # SPEC §11: signed by the member's key of the time (monthly-report checks the rest)
            jobs = self._disclosure(seq, e)
        elif kind == "book_status":  # SPEC §10: signed by the member's credential it names; judged against by queries
            jobs = self.queries.books.book_status(seq, e)
        elif kind == GATEWAY_STARTED:
            check_gateway_started(e)
        elif kind == POLICY_CHANGED:
            self.ledger.policy.append((time_ms(e.get("time")), check_policy_changed(e)))
        elif kind == "member_sponsored":
            jobs = self.chains.sponsored(seq, e)
        elif kind == "matching_key_created":
            jobs = self.chains.matching_key_created(seq, e)
        else:
            self.membership.apply(seq, e)
            if kind == "credential_issued":
                self.chains.credential_issued(self.membership.members[e["member_id"]])
        if v2:
            when = time_ms(e.get("time"))
            self.ledger.newest_ms = max(self.ledger.newest_ms, when)
            assert self.timeline is not None and self.queries.v2 is not None
            deadline = e["rules"]["deadline_ms"] if kind in audit_entry.QUERY_KINDS else self.queries.v2.rules.deadline_ms
            self.ledger.deadline_ms = max(self.ledger.deadline_ms, deadline)
            self.timeline.add(seq, when, membership=kind not in NOT_MEMBERSHIP, deadline_ms=deadline)
        return jobs

    def _disclosure(self, seq: int, e: dict[str, Any]) -> list[SignatureJob]:
        member = self.membership.member(entry_field(e, "member_id", str))
        body, signature = hex_field(e, "body") or b"", hex_field(e, "signature") or b""
        return [(seq, (member.current.ed25519,), signing.DISCLOSURE + body, signature, True,
                 f"the disclosure signature of {member.member_id} does not verify with its key")]

    def _check_version(self, e: dict[str, Any]) -> None:
        kind, version = e["kind"], e["v"]
        if kind == V2_STARTED:
            if self.v2_started_at is not None:
                raise Bad(f"a second v2_started entry: the log became version 2 at entry {self.v2_started_at}")
            if version != audit_entry.FORMAT_VERSION_2:
                raise Bad('the v2_started entry must have "v": 2')
        elif self.v2_started_at is None:
            if version != audit_entry.FORMAT_VERSION:
                raise Bad(f'"v": {version} before the log\'s v2_started entry')
            if kind in V2_KINDS:
                raise Bad(f"a {kind} entry before the log's v2_started entry")
        elif version != audit_entry.FORMAT_VERSION_2:
            raise Bad(f'"v": {version} after the log\'s v2_started entry ({self.v2_started_at}): every later entry has "v": 2')

    def _start_v2(self, seq: int, e: dict[str, Any]) -> None:
        rules = parse_rules(e)
        self.v2_started_at = seq
        self.queries.v2 = V2(rules, Pins(rules.pin_ms))
        self.timeline = Timeline(rules.lock_timeout_ms, self.now_ms)

    def finish(self, *, complete: bool) -> list[tuple[int, str]]:
        """Problems found across entries, as (entry, message); ``complete``:
        every entry was replayed (checks that need later entries run only then)."""
        problems = list(self.timeline.problems) if self.timeline else []
        deferred, unverified = self.ledger.finish(self.membership.members, complete=complete)
        self.queries.unverified.update(unverified)
        return problems + deferred

    @property
    def accepted(self) -> int:
        return self.queries.accepted

    @property
    def refused(self) -> int:
        return self.queries.refused

    @property
    def refusals(self) -> Counter[str]:
        return self.queries.refusals

    @property
    def unverified(self) -> Counter[str]:
        return self.queries.unverified
