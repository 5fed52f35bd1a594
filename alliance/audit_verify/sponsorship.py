"""Sponsorship entries and the auditor's sponsorship chains (SPEC §5.1,
§6.3; docs/audit-log.md "Who is trusted" and "How the verifier reads the
sponsorship rules").

Entries:
- ``member_sponsored``: the ``SponsorshipBody`` parses and says what the
  entry copies (sponsor, newcomer, 32-byte fingerprint); the sponsor is a
  member holding a credential and active at the entry (within the registry's
  5 s grace, as for queries), and the signature verifies with its key of
  that time. A sponsorship by a member that is not *trusted* is still a
  valid entry (it is signed), but it sponsors nobody.
- ``matching_key_created``: the ``MatchingKeyCreatedBody`` parses and says
  what the entry copies; the founder is an active member whose current
  credential has the stated fingerprint, and the statement is signed with
  its key of that time; epochs increase.

Chains, replayed in log order (the auditor's view): the auditor's root is the
founder named by ``matching_key_created`` -- the first one in the log, and a
later one only when its founder is trusted at that point (an untrusted
member cannot make itself a root by logging a new epoch). A credential is
trusted from the point it becomes so:
- it is the founder's credential (root);
- a ``member_sponsored`` for (member, fingerprint) by a sponsor whose
  current credential is trusted and who is active *at that entry* (a chain
  back to the root; mutual sponsorships among untrusted members count for
  nothing); the sponsorship also covers a later credential with that
  fingerprint;
- it re-issues or rotates the member's previous trusted credential (the
  membership replay already refuses a rotation the previous key did not
  endorse, so every logged rotation is an endorsed one).
Trust stays with a credential (a new epoch does not take it away); status
entries decide whether its member is active.

An accepted v2 query or precheck logged after the first
``matching_key_created`` must name a trusted credential; before it no chain
can exist (an upgraded v1 alliance, or a new one before its founder logged
the key), and the requirement does not apply."""
from __future__ import annotations

from typing import Any

from alliance import signing
from alliance.audit_verify.fields import STATE_GRACE_MS, Bad, field, hex_field, time_ms
from alliance.audit_verify.membership import Credential, Member, Membership, during
from alliance.audit_verify.signatures import SignatureJob
from alliance.v1 import alliance_pb2 as pb

FINGERPRINT_BYTES = 32
CHECK_VALUE_BYTES = 8
MAX_STATEMENT_BYTES = 4096

Root = tuple[str, bytes]  # (member id, fingerprint)


def _body(e: dict[str, Any], name: str, message: type) -> Any:
    raw = hex_field(e, name) or b""
    if len(raw) > MAX_STATEMENT_BYTES:
        raise Bad(f"{name} is {len(raw)} bytes, over {MAX_STATEMENT_BYTES}")
    try:
        body = message.FromString(raw)
    except Exception:  # noqa: BLE001 - protobuf raises assorted errors on garbage
        raise Bad(f"{name} is not a {message.__name__}") from None
    if body.SerializeToString() != raw:
        raise Bad(f"{name} is not the canonical encoding of a {message.__name__}")
    return body, raw


class Chains:
    """The sponsorship chains as an auditor replays them from the log."""

    def __init__(self, membership: Membership) -> None:
        self.membership = membership
        self.trusted: set[int] = set()  # serials of trusted credentials
        self.vouched: set[Root] = set()  # (member, fingerprint) rooted or sponsored by a trusted member
        self.root: Root | None = None  # the founder of the newest epoch that counts
        self.roots_at: list[tuple[int, str]] = []  # (entry, founder id) each time the root was set
        self.required_from: int | None = None  # the first matching_key_created entry
        self.epoch = 0
        self.ignored: list[tuple[int, str]] = []  # valid entries that count for nothing, and why

    # -- state -----------------------------------------------------------------

    def is_trusted(self, cred: Credential) -> bool:
        return cred.serial in self.trusted

    def trusted_active(self, member: Member | None) -> bool:
        """At this point of the log: current credential trusted, member active."""
        return member is not None and member.status[-1][1] == "active" and self.is_trusted(member.current)

    def _vouch(self, root: Root, member: Member | None) -> None:
        self.vouched.add(root)
        if member is not None and member.current.body.member_fingerprint == root[1]:
            self.trusted.add(member.current.serial)

    def credential_issued(self, member: Member) -> None:
        """After the membership replay took a credential_issued entry."""
        cred = member.current
        previous = member.credentials[-2][1] if len(member.credentials) > 1 else None
        if (member.member_id, bytes(cred.body.member_fingerprint)) in self.vouched or (
                previous is not None and self.is_trusted(previous)):
            self.trusted.add(cred.serial)

    # -- entries ---------------------------------------------------------------

    def _signer(self, e: dict[str, Any], member_id: str, what: str) -> tuple[Member, int]:
        """A member holding a credential, active at the entry (registry grace)."""
        when = time_ms(e.get("time"))
        member = self.membership.members.get(member_id)
        if member is None or member.role != "member":
            raise Bad(f"{what} {member_id!r} is not a member holding a credential at this entry")
        if "active" not in during(member.status, when - STATE_GRACE_MS, when):
            raise Bad(f"{what} {member_id} was {member.status[-1][1]} at this entry, not active")
        return member, when

    def sponsored(self, seq: int, e: dict[str, Any]) -> list[SignatureJob]:
        sponsor_id = field(e, "sponsor_id", str)
        member_id = field(e, "member_id", str)
        fingerprint = hex_field(e, "fingerprint", size=FINGERPRINT_BYTES)
        signature = hex_field(e, "signature") or b""
        body, raw = _body(e, "sponsorship", pb.SponsorshipBody)
        signed = {"sponsor_id": body.sponsor_id, "member_id": body.newcomer_id,
                  "fingerprint": bytes(body.newcomer_fingerprint).hex()}
        for name, value in signed.items():
            if e[name] != value:
                raise Bad(f"{name} {e[name]!r} is not the signed sponsorship's {value!r}")
        sponsor, when = self._signer(e, sponsor_id, "sponsor")
        job = (seq, sponsor.keys_since(when - STATE_GRACE_MS), signing.SPONSORSHIP + raw, signature, True,
               f"the sponsorship signature does not verify with {sponsor_id}'s key")
        assert fingerprint is not None
        if not self.trusted_active(sponsor):
            self.ignored.append((seq, f"sponsor {sponsor_id} was not trusted here: the sponsorship of {member_id} counts for nothing"))
        elif sponsor_id != member_id:
            self._vouch((member_id, fingerprint), self.membership.members.get(member_id))
        return [job]

    def matching_key_created(self, seq: int, e: dict[str, Any]) -> list[SignatureJob]:
        member_id = field(e, "member_id", str)
        fingerprint = hex_field(e, "fingerprint", size=FINGERPRINT_BYTES)
        check_value = hex_field(e, "check_value", size=CHECK_VALUE_BYTES)
        epoch = field(e, "epoch", int)
        signature = hex_field(e, "signature") or b""
        body, raw = _body(e, "statement", pb.MatchingKeyCreatedBody)
        signed = {"member_id": body.founder_id, "fingerprint": bytes(body.founder_fingerprint).hex(),
                  "epoch": body.epoch, "check_value": bytes(body.check_value).hex()}
        for name, value in signed.items():
            if e[name] != value:
                raise Bad(f"{name} {e[name]!r} is not the signed statement's {value!r}")
        if epoch < 1 or epoch <= self.epoch:
            raise Bad(f"epoch {epoch} does not follow the log's newest matching key epoch {self.epoch}")
        founder, when = self._signer(e, member_id, "founder")
        assert fingerprint is not None and check_value is not None
        if bytes(founder.current.body.member_fingerprint) != fingerprint:
            raise Bad(f"fingerprint {fingerprint.hex()} is not that of {member_id}'s current credential")
        self.epoch = epoch
        job = (seq, founder.keys_since(when - STATE_GRACE_MS), signing.MATCHING_KEY_CREATED + raw, signature, True,
               f"the matching key statement's signature does not verify with {member_id}'s key")
        if self.root is None or self.trusted_active(founder):
            self.root = (member_id, fingerprint)
            self.roots_at.append((seq, member_id))
            self._vouch(self.root, founder)
            if self.required_from is None:
                self.required_from = seq
        else:
            self.ignored.append((seq, f"founder {member_id} was not trusted here: epoch {epoch} does not make it a root"))
        return [job]

    # -- queries ---------------------------------------------------------------

    def require_sponsored(self, querier_id: str, cred: Credential) -> None:
        """An accepted v2 query names a trusted credential (once a root exists)."""
        if self.required_from is None or self.is_trusted(cred):
            return
        root = self.root[0] if self.root else "?"
        raise Bad(f"querier {querier_id}'s credential serial {cred.serial} has no logged sponsorship chain to the founder "
                  f"{root} (not_sponsored), yet its query was accepted")
