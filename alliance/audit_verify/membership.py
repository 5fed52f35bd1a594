"""Membership replayed from the log itself (the operator's database is never
consulted): credentials checked against the alliance CA and, on re-issue,
against the member's previous key (SPEC §5 rotation); status and quota
histories kept as (time ms, value) in log order.

The registry the gateway consults lags the log by up to ``STATE_GRACE_MS``
(SPEC §5: status changes take effect within 5 s), so checks that depend on
membership state accept any state in effect during that window
(:func:`during`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cryptography import x509

from alliance import paillier, pki
from alliance.audit_verify.fields import Bad, hex_field, time_ms
from alliance.audit_verify.fields import field as entry_field
from alliance.errors import AllianceError, CryptoError
from alliance.v1 import alliance_pb2 as pb


@dataclass(eq=False)  # identity hashing: kept in sets of credentials in effect
class Credential:
    member_id: str
    role: str
    serial: int
    ed25519: bytes
    paillier_fingerprint: bytes | None
    not_before: int
    not_after: int
    body: pb.CredentialBody
    seq: int


@dataclass
class Member:
    """One member as the log says it was. Histories are (time ms, value) in
    log order; the gateway's registry may lag them by STATE_GRACE_MS."""

    member_id: str
    role: str
    first_ms: int
    credentials: list[tuple[int, Credential]] = field(default_factory=list)
    status: list[tuple[int, str]] = field(default_factory=list)
    quota: list[tuple[int, int | None]] = field(default_factory=list)
    accepted_by_day: dict[int, int] = field(default_factory=dict)

    @property
    def current(self) -> Credential:
        return self.credentials[-1][1]

    @property
    def bad_answer(self) -> str:
        return f"the answer signature of {self.member_id} does not verify"

    def keys_since(self, start_ms: int) -> tuple[bytes, ...]:
        """Ed25519 keys of the credentials in effect from start_ms on."""
        if len(self.credentials) == 1:
            return (self.credentials[0][1].ed25519,)
        return tuple(dict.fromkeys(c.ed25519 for c in during(self.credentials, start_ms)))

    def accepted_since(self, day_start_ms: int) -> int:
        return sum(n for day, n in self.accepted_by_day.items() if day >= day_start_ms)


def during(history: list[tuple[int, Any]], start_ms: int, end_ms: int | None = None) -> set[Any]:
    """Values in effect at some moment of [start_ms, end_ms] (open-ended when
    end_ms is None): the value at start_ms and every later change."""
    values: set[Any] = set()
    for when, value in reversed(history):
        if end_ms is not None and when > end_ms:
            continue
        values.add(value)
        if when <= start_ms:
            break
    return values


class Membership:
    """Members, their credentials (by serial), status and quota, as the log
    has said so far. ``apply`` replays one membership entry."""

    def __init__(self, ca_cert: x509.Certificate) -> None:
        self.ca_cert = ca_cert
        self.members: dict[str, Member] = {}
        self.by_serial: dict[int, Credential] = {}

    def apply(self, seq: int, e: dict[str, Any]) -> None:
        kind = e["kind"]
        when = time_ms(e.get("time"))
        member_id = entry_field(e, "member_id", str)
        if kind == "credential_issued":
            self._credential_issued(seq, e, when, member_id)
        elif kind == "quota_changed":
            quota = entry_field(e, "daily_quota", int)
            if quota < 0:
                raise Bad(f"daily quota {quota} is negative")
            self.member(member_id).quota.append((when, quota))
        else:
            self._status_change(kind, when, member_id)

    def member(self, member_id: str) -> Member:
        member = self.members.get(member_id)
        if member is None:
            raise Bad(f"member {member_id!r} has no credential_issued entry before this one")
        return member

    def _credential_issued(self, seq: int, e: dict[str, Any], when: int, member_id: str) -> None:
        """CA-signed, matching its entry, unique serial, and a re-issue with
        new keys endorsed by the member's previous key (SPEC §5)."""
        raw = hex_field(e, "credential") or b""
        try:
            cred = pb.Credential.FromString(raw)
            body = pki.verify_credential(cred, self.ca_cert, now=when // 1000)
        except AllianceError as exc:
            raise Bad(f"credential for {member_id!r} is not valid under the alliance CA: {exc}") from None
        except Exception:  # noqa: BLE001 - protobuf raises assorted errors on garbage
            raise Bad(f"credential for {member_id!r} is not a Credential") from None
        role = pki.role_name(body.role)
        expected = {"member_id": body.member_id, "name": body.name, "role": role, "serial": body.serial,
                    "endpoint": body.endpoint, "fingerprint": body.member_fingerprint.hex()}
        for name, value in expected.items():
            if e.get(name) != value:
                raise Bad(f"{name} {e.get(name)!r} differs from the credential's {value!r}")
        if body.serial in self.by_serial:
            raise Bad(f"credential serial {body.serial} was already issued at entry {self.by_serial[body.serial].seq}")
        member = self.members.get(member_id)
        if member is not None:
            if member.status[-1][1] == "revoked":
                raise Bad(f"a credential was issued to {member_id}, which was revoked; revocation is final")
            try:
                pki.check_pin(pki.pin_from(member.current.body), cred, body)
            except CryptoError as exc:
                raise Bad(f"the CA issued {member_id} a credential with new keys that its previous key did not endorse ({exc})") from None
        fingerprint = None
        if body.paillier_n:
            fingerprint = paillier.PaillierPublicKey.from_bytes(body.paillier_n).fingerprint()
        credential = Credential(member_id, role, body.serial, bytes(body.ed25519_public_key), fingerprint,
                                body.not_before, body.not_after, body, seq)
        if member is None:
            member = self.members[member_id] = Member(member_id, role, when)
            member.quota.append((when, e["daily_quota"] if isinstance(e.get("daily_quota"), int) else None))
        member.role = role
        member.credentials.append((when, credential))
        member.status.append((when, "active"))  # the registry (re)activates on issue
        self.by_serial[body.serial] = credential

    def _status_change(self, kind: str, when: int, member_id: str) -> None:
        allowed_from = {"member_suspended": {"active"}, "member_resumed": {"suspended"},
                        "member_revoked": {"active", "suspended"}}[kind]
        member = self.member(member_id)
        now = member.status[-1][1]
        if now not in allowed_from:
            raise Bad(f"{kind.replace('_', ' ')} while the member is {now}")
        member.status.append((when, {"member_suspended": "suspended", "member_resumed": "active", "member_revoked": "revoked"}[kind]))
