"""What a verification returns, and how the first problem is chosen."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from alliance.audit_verify.tree import Tree, b64
from alliance.errors import VerificationFailed

STRUCTURE, DECODE, TREE, CONTENT = 0, 1, 2, 3  # message order when one entry has several problems


@dataclass
class VerifyResult:
    """What a successful verification saw (``to_json`` for the CLI)."""

    origin: str
    tree_size: int
    root_hash: bytes
    entries: int
    kinds: dict[str, int]
    accepted: int
    refused: int
    refusals: dict[str, int]
    unverified_refusals: dict[str, int]
    signatures_checked: int
    kept_checkpoints: int
    seconds: float
    tree: Tree = field(repr=False)
    suppressed_refusals: dict[str, int] = field(default_factory=dict)  # peer id -> requests rejected unlogged (v2)

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": True,
            "origin": self.origin,
            "tree_size": self.tree_size,
            "root_hash": b64(self.root_hash),
            "entries": self.entries,
            "kinds": dict(sorted(self.kinds.items())),
            "accepted": self.accepted,
            "refused": self.refused,
            "refusals": dict(sorted(self.refusals.items())),
            "unverified_refusals": dict(sorted(self.unverified_refusals.items())),
            "suppressed_refusals": dict(sorted(self.suppressed_refusals.items())),
            "signatures_checked": self.signatures_checked,
            "kept_checkpoints": self.kept_checkpoints,
            "seconds": round(self.seconds, 3),
        }


class Problems:
    """Every problem found, by entry index; the smallest index is reported."""

    def __init__(self) -> None:
        self.items: list[tuple[int, int, str]] = []  # (index, priority, message)
        self.checkpoint: str | None = None  # a problem of the signed checkpoint itself, blaming no entry

    def add(self, index: int, priority: int, message: str) -> None:
        self.items.append((index, priority, message))

    @property
    def first_index(self) -> int | None:
        return min((i for i, _, _ in self.items), default=None)

    def raise_first(self) -> None:
        """The first bad entry's problems; else the checkpoint's (entry None)."""
        if not self.items:
            if self.checkpoint is not None:
                raise VerificationFailed(self.checkpoint, entry=None)
            return
        first = self.first_index
        messages = list(dict.fromkeys(m for _, _, m in sorted(x for x in self.items if x[0] == first)))
        raise VerificationFailed(f"entry {first}: " + "; ".join(messages), entry=first)
