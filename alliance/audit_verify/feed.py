"""The complete membership feed (SPEC §5.1, §6.3; docs/audit-log.md
"Membership entries and ``membership_seq``"): membership entries are
numbered from 0 in log order over the whole log (v1 entries included), every
v2 membership entry states its number as ``membership_seq``, and every
checkpoint of a v2 log carries the extension line ``membership <count>``.

How the verifier reads the checkpoint line:
- it is required on a checkpoint whose leaves include the ``v2_started``
  entry, and checked whenever present (exactly one such line);
- a count *below* the membership entries among the leaves blames the first
  membership entry it does not account for (the one a member reading the
  feed against that checkpoint would never learn of);
- a count *above* it, or a missing, repeated or malformed line, blames the
  checkpoint itself: no entry is bad (``first_bad_entry`` null), and it is
  reported only when no entry is."""
from __future__ import annotations

import re
from typing import Any

from alliance import audit_entry
from alliance.audit_verify.fields import Bad
from alliance.checkpoint import Checkpoint

MEMBERSHIP_KINDS = frozenset(audit_entry.MEMBERSHIP_KINDS)
LINE_PREFIX = "membership "
_LINE = re.compile(r"membership (0|[1-9][0-9]{0,18})")


class Feed:
    """Membership numbers in log order, and the positions of the entries."""

    def __init__(self) -> None:
        self.positions: list[int] = []  # leaf index of membership entry number i

    def entry(self, seq: int, e: dict[str, Any]) -> None:
        """Number ``e`` (any kind, any version): a version 2 membership entry
        must state its number; no other entry may state one. The number is
        counted even when the entry is refused, so later entries are judged
        by their place in the log."""
        membership = e["kind"] in MEMBERSHIP_KINDS
        expected = len(self.positions)
        if membership:
            self.positions.append(seq)
        stated = e["membership_seq"] if "membership_seq" in e else _ABSENT
        if not membership or e["v"] < 2:
            if stated is not _ABSENT:
                what = "a version 1 entry" if membership else f"a {e['kind']} entry (not a membership entry)"
                raise Bad(f"{what} states membership_seq; only version 2 membership entries are numbered")
            return
        if stated is _ABSENT or isinstance(stated, bool) or not isinstance(stated, int):
            raise Bad(f"field 'membership_seq' is missing or has the wrong type (this is membership entry {expected})")
        if stated != expected:
            what = "a gap: membership entries are missing before it" if stated > expected else "a repeated or reordered number"
            raise Bad(f"membership_seq {stated} is not its membership index {expected} ({what})")

    def checkpoint_problem(self, signed: Checkpoint, *, v2: bool, complete: bool) -> tuple[int | None, str] | None:
        """(entry or None for the checkpoint itself, message) when the
        checkpoint's ``membership`` line does not match its leaves.
        ``complete``: every leaf was numbered (else only a count below the
        entries numbered so far can be judged)."""
        if not complete:
            below = self.checkpoint_problem(signed, v2=False, complete=True)
            return below if below is not None and below[0] is not None else None
        lines = [line for line in signed.extensions if line.startswith(LINE_PREFIX) or line == LINE_PREFIX.strip()]
        if not lines:
            if v2:
                return None, (f"checkpoint of size {signed.size}: a version 2 log's checkpoint must carry the line "
                              f"'membership <count>' ({len(self.positions)} membership entries)")
            return None
        if len(lines) > 1:
            return None, f"checkpoint of size {signed.size}: more than one 'membership' line"
        match = _LINE.fullmatch(lines[0])
        if match is None:
            return None, f"checkpoint of size {signed.size}: malformed line {lines[0]!r} (expected 'membership <count>')"
        count = int(match.group(1))
        if count < len(self.positions):
            return self.positions[count], (f"membership entry {count} is not accounted for by the checkpoint of size "
                                           f"{signed.size}: its line says 'membership {count}', its leaves hold "
                                           f"{len(self.positions)} membership entries")
        if count > len(self.positions):
            return None, (f"checkpoint of size {signed.size}: its line says 'membership {count}', but its leaves hold only "
                          f"{len(self.positions)} membership entries")
        return None


_ABSENT: Any = object()
