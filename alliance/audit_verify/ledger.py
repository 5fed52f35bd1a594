"""Checks across entries of a v2 log that a single entry cannot settle:
query ids (one use each; a ``replayed_query_id`` refusal's original anywhere
in the log, or it is reported as unverified: a replica killed mid-query
leaves a reserved id without an entry) and daily quotas under the ``fanned_out`` rule
(docs/audit-log.md "Verification additions").

The deferred checks run in ``finish``, once the whole log was replayed; when
the replay stopped early (``complete=False``) those that look at later
entries are skipped rather than guessed."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

from alliance.policy import Policy
from alliance.audit_verify.fields import (
    SHANGHAI,
    STATE_GRACE_MS,
    Bad,
    day_start_ms,
)
from alliance.audit_verify.membership import Member, during
from alliance.audit_verify.v2_rules import QUOTA_LOOKAHEAD_MS, RECENT_MARGIN_MS

REPLAYED = "replayed_query_id"


@dataclass
class _QuotaRefusal:
    seq: int
    querier_id: str
    received_ms: int
    pool: str = "daily"


DAILY, MONITORING = "daily", "monitoring"  # SPEC §9: monitoring queries have their own daily quota


@dataclass
class Ledger:
    used: dict[str, int] = field(default_factory=dict)  # query id -> first entry accepted or fanned out with it
    originals: Counter[str] = field(default_factory=Counter)  # query id -> entries not refused as replays
    replays: list[tuple[int, str]] = field(default_factory=list)  # (seq, query id) of v2 replayed_query_id refusals
    fanned: dict[tuple[str, str, int], list[tuple[int, int]]] = field(default_factory=dict)  # (querier, pool, day) -> [(received, seq)]
    # the alliance policy as logged: [(time, Policy)], the defaults before any policy_changed entry
    policy: list[tuple[int, Policy]] = field(default_factory=lambda: [(0, Policy())])
    quota_refusals: list[_QuotaRefusal] = field(default_factory=list)
    newest_ms: int = 0
    deadline_ms: int = 0  # the largest deadline the log states

    def query_id(self, seq: int, query_id: str | None, *, used: bool, reason: str | None, v2: bool) -> None:
        """Every query entry, v1 and v2; only v2 entries are held to the rules."""
        if query_id is None:
            return
        if reason == REPLAYED:
            if v2:
                self.replays.append((seq, query_id))
            return
        self.originals[query_id] += 1
        if used:
            first = self.used.setdefault(query_id, seq)
            if first != seq and v2:
                raise Bad(f"query id {query_id!r} was already accepted or sent to members at entry {first}")

    def fanned_out(self, seq: int, querier_id: str, received_ms: int, pool: str = DAILY) -> None:
        self.fanned.setdefault((querier_id, pool, day_start_ms(received_ms)), []).append((received_ms, seq))

    def quota_refusal(self, seq: int, querier_id: str, received_ms: int, pool: str = DAILY) -> None:
        self.quota_refusals.append(_QuotaRefusal(seq, querier_id, received_ms, pool))

    def policy_during(self, start_ms: int, end_ms: int) -> set[Policy]:
        return during(self.policy, start_ms, end_ms)

    def _quotas(self, member: Member, pool: str, start_ms: int, end_ms: int) -> set[int | None]:
        if pool == MONITORING:
            return {p.monitoring_quota for p in self.policy_during(start_ms, end_ms)}
        return during(member.quota, start_ms, end_ms)

    def finish(self, members: dict[str, Member], *, complete: bool) -> tuple[list[tuple[int, str]], Counter[str]]:
        """(problems as (entry, message), refusals left unverified)."""
        problems: list[tuple[int, str]] = []
        unverified: Counter[str] = Counter()
        problems.extend(self._over_quota(members))
        if not complete:
            return problems, unverified
        for _seq, query_id in self.replays:
            if not self.originals[query_id]:
                # SPEC §12: a replica killed between reserving a query id and logging its entry leaves the
                # reservation without an entry; the client's retry on another replica is then refused as a
                # replay whose original the log cannot show. Never fanned out (checked per entry), so it
                # hides no answer: accepted as stated, and reported.
                unverified[REPLAYED] += 1
        for r in self.quota_refusals:
            verdict = self._quota_refusal_fits(r, members.get(r.querier_id))
            if verdict is None or (verdict is False and r.received_ms > self.newest_ms - self.deadline_ms - RECENT_MARGIN_MS):
                unverified["quota_exceeded"] += 1
            elif verdict is False:
                problems.append((r.seq, "reason quota_exceeded does not fit: the querier's fanned-out entries that day, "
                                        "up to 5 s after it, do not reach its quota"))
        return problems, unverified

    def _over_quota(self, members: dict[str, Member]) -> list[tuple[int, str]]:
        """A day on which a querier's fanned-out entries exceed the largest
        quota in force for it that day (the entry past it is named)."""
        problems = []
        for (querier_id, pool, day), uses in self.fanned.items():
            member = members.get(querier_id)
            if member is None:
                continue  # such an entry was already refused: only members' queries reach members
            quotas = self._quotas(member, pool, day - STATE_GRACE_MS, day_start_ms(day + 26 * 3600 * 1000) - 1)
            if None in quotas:
                continue  # a quota the log never stated
            largest = max(quotas)
            if len(uses) > largest:
                seq = sorted(s for _, s in uses)[largest]
                date = datetime.fromtimestamp(day / 1000, tz=SHANGHAI).date().isoformat()
                problems.append((seq, f"querier {querier_id} reached the members {len(uses)} times on {date} (Asia/Shanghai), "
                                      f"over the largest {pool} quota in force that day ({largest})"))
        return problems

    def _quota_refusal_fits(self, r: _QuotaRefusal, member: Member | None) -> bool | None:
        if member is None:
            return None
        quotas = self._quotas(member, r.pool, r.received_ms - STATE_GRACE_MS, r.received_ms)
        known = [q for q in quotas if q is not None]
        uses = self.fanned.get((r.querier_id, r.pool, day_start_ms(r.received_ms)), [])
        reached = sum(1 for received, _ in uses if received <= r.received_ms + QUOTA_LOOKAHEAD_MS)
        if known and reached >= min(known):
            return True
        return None if None in quotas else False
