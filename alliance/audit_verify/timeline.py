"""The membership time rule of a v2 log (docs/audit-log.md "Verification
additions"): a membership entry's time is taken under the log's append lock,
so it is not earlier than the previous membership entry's, not later than
the following entry's time plus deadline_ms + lock_timeout_ms + 5 s, and not
more than 5 minutes ahead of the verifier's clock. Applies from the
``v2_started`` entry (itself a membership entry) on."""
from __future__ import annotations

from dataclasses import dataclass

from alliance.audit_verify.fields import Bad, utc_timestamp
from alliance.audit_verify.v2_rules import MAX_AHEAD_OF_VERIFIER_MS, MEMBERSHIP_SLACK_MS


@dataclass
class _Seen:
    seq: int
    when_ms: int


class Timeline:
    def __init__(self, lock_timeout_ms: int, now_ms: int) -> None:
        self.lock_timeout_ms = lock_timeout_ms
        self.now_ms = now_ms
        self.previous_membership: _Seen | None = None
        self.pending: _Seen | None = None  # the last entry, when it is a membership entry
        self.problems: list[tuple[int, str]] = []  # for earlier entries, found by a later one

    def add(self, seq: int, when_ms: int, *, membership: bool, deadline_ms: int) -> None:
        """Each v2 entry in log order; ``deadline_ms`` is what this entry's
        request may have waited for members (its rules, or the log's)."""
        if self.pending is not None:
            latest = when_ms + deadline_ms + self.lock_timeout_ms + MEMBERSHIP_SLACK_MS
            if self.pending.when_ms > latest:
                self.problems.append((self.pending.seq, f"membership entry time {utc_timestamp(self.pending.when_ms)} is later "
                                                        f"than the following entry's time {utc_timestamp(when_ms)} plus "
                                                        f"deadline, lock timeout and 5 s"))
            self.pending = None
        if not membership:
            return
        previous = self.previous_membership
        if previous is not None and when_ms < previous.when_ms:
            raise Bad(f"membership entry time {utc_timestamp(when_ms)} is earlier than the previous membership entry's "
                      f"({previous.seq}, {utc_timestamp(previous.when_ms)})")
        if when_ms > self.now_ms + MAX_AHEAD_OF_VERIFIER_MS:
            raise Bad(f"membership entry time {utc_timestamp(when_ms)} is more than 5 minutes ahead of the verifier's clock "
                      f"({utc_timestamp(self.now_ms)})")
        self.previous_membership = self.pending = _Seen(seq, when_ms)
