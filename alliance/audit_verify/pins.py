"""Answering-set pins (SPEC §5.3; docs/audit-log.md "Answering-set pins"),
replayed in log order over v2 accepted entries, per subject token.

When no pin is live (none, or the entry was received at or after its
expiry) an accepted entry creates P = members_answered ∪ {querier}; when one
is live, the entry must have members_answered = P − {querier}. Either way the
expiry becomes max(expiry, received_at_ms + pin_ms)."""
from __future__ import annotations

from dataclasses import dataclass

from alliance.audit_verify.fields import Bad


@dataclass
class Pin:
    members: tuple[str, ...]  # sorted
    expiry_ms: int
    seq: int  # the entry that created it

    def less(self, querier_id: str) -> list[str]:
        return [m for m in self.members if m != querier_id]


class Pins:
    def __init__(self, pin_ms: int) -> None:
        self.pin_ms = pin_ms
        self.by_token: dict[str, Pin] = {}

    def live(self, token: str | None, at_ms: int) -> Pin | None:
        pin = self.by_token.get(token) if token is not None else None
        return pin if pin is not None and at_ms < pin.expiry_ms else None

    def take(self, seq: int, token: str, querier_id: str, answered: list[str], at_ms: int) -> Pin:
        """An accepted report or precheck: check it against the live pin, or
        create one; extend the expiry. Returns the pin it was judged under."""
        pin = self.live(token, at_ms)
        if pin is None:
            pin = Pin(tuple(sorted({*answered, querier_id})), at_ms + self.pin_ms, seq)
            self.by_token[token] = pin
        elif sorted(answered) != pin.less(querier_id):
            raise Bad(f"accepted over {', '.join(sorted(answered)) or 'no member'}, but the token is pinned (entry {pin.seq}) "
                      f"to {', '.join(pin.members)}: the report must be over exactly {', '.join(pin.less(querier_id))}")
        pin.expiry_ms = max(pin.expiry_ms, at_ms + self.pin_ms)
        return pin
