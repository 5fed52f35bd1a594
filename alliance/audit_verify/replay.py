"""The contents check, in log order: each entry is handed to the membership
replay or the query rules; ``entry`` returns the signature jobs it needs."""
from __future__ import annotations

from collections import Counter
from typing import Any

from cryptography import x509

from alliance import audit_entry
from alliance.audit_verify.membership import Membership
from alliance.audit_verify.query_rules import QueryRules
from alliance.audit_verify.signatures import SignatureJob


class Replay:
    """Membership state rebuilt from the log, and the checks of each entry
    against it."""

    def __init__(self, ca_cert: x509.Certificate) -> None:
        self.membership = Membership(ca_cert)
        self.queries = QueryRules(self.membership)

    def entry(self, seq: int, e: dict[str, Any]) -> list[SignatureJob]:
        if e["kind"] in audit_entry.QUERY_KINDS:
            return self.queries.check(seq, e)
        self.membership.apply(seq, e)
        return []

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
