"""Who is trusted (SPEC §5.1; docs/audit-log.md "Who is trusted"), replayed
from decoded membership entries in log order. Pure: no I/O, no clock, so a
member node, `audit verify` and tests run the very same rule.

A credential of member m with fingerprint f (always recomputed from the
credential's keys, never the field the CA wrote) is *trusted* when its
`credential_issued` entry is present and one of:

- (m, f) is a root of the deciding party (a member's: the members whose
  fingerprints it confirmed out of band at `install`/`share`, and itself; an
  auditor's: the founder named by `matching_key_created`);
- a `member_sponsored` entry for (m, f), signed by a sponsor whose current
  credential was trusted and active *at that entry's position*, exists
  (so every chain leads back to a root: sponsorships by untrusted members,
  mutual ones included, count for nothing);
- it rotates m's previous trusted credential and carries that credential's
  Ed25519 endorsement (pki.rotation_message).

and m's latest status is active. Only m's current credential is accepted;
an older one is ``superseded``."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from alliance import pki, signing
from alliance.errors import CryptoError
from alliance.v1 import alliance_pb2 as pb

TRUSTED = "trusted"
NOT_IN_LOG = "not_in_log"
NOT_SPONSORED = "not_sponsored"
MEMBER_INACTIVE = "member_inactive"
SUPERSEDED = "superseded"
REASONS = (NOT_IN_LOG, NOT_SPONSORED, MEMBER_INACTIVE, SUPERSEDED)

Root = tuple[str, bytes]  # (member id, fingerprint)

_STATUS = {"member_suspended": "suspended", "member_resumed": "active", "member_revoked": "revoked"}


def fingerprint_of(body: pb.CredentialBody) -> bytes:
    """SPEC §3 fingerprint recomputed from the keys the credential binds."""
    return pki.member_fingerprint(bytes(body.tls_public_key_der), bytes(body.ed25519_public_key),
                                  bytes(body.x25519_public_key), bytes(body.paillier_n))


@dataclass
class CredentialState:
    member_id: str
    digest: bytes               # SHA-256 of the exact credential bytes
    fingerprint: bytes          # recomputed
    body: pb.CredentialBody
    credential: pb.Credential
    seq: int                    # leaf index of its credential_issued entry
    trusted: bool = False
    how: str = ""               # root | sponsored | rotation


@dataclass
class MemberState:
    member_id: str
    credentials: list[CredentialState] = field(default_factory=list)
    status: str = "active"

    @property
    def current(self) -> CredentialState | None:
        return self.credentials[-1] if self.credentials else None


@dataclass
class TrustView:
    members: dict[str, MemberState]
    by_digest: dict[bytes, CredentialState]
    roots: frozenset[Root]
    problems: list[str]          # entries that did not count, and why (for logs and auditors)

    def decide(self, credential: bytes) -> str:
        """``"trusted"`` or the reason not: not_in_log, not_sponsored,
        member_inactive, superseded."""
        state = self.by_digest.get(signing.sha256(credential))
        if state is None:
            return NOT_IN_LOG
        member = self.members[state.member_id]
        if member.current is not state:
            return SUPERSEDED
        if not state.trusted:
            return NOT_SPONSORED
        if member.status != "active":
            return MEMBER_INACTIVE
        return TRUSTED

    def is_trusted_active(self, member_id: str) -> bool:
        m = self.members.get(member_id)
        return m is not None and m.status == "active" and m.current is not None and m.current.trusted

    def trusted_members(self) -> list[str]:
        return sorted(mid for mid in self.members if self.is_trusted_active(mid))


def replay(entries: Iterable[dict[str, Any]], roots: Iterable[Root] = (), *, founders_are_roots: bool = False) -> TrustView:
    """Replay the trust rule over decoded membership entries in log order.
    ``founders_are_roots``: the auditor's rule (each validly signed
    `matching_key_created` makes its founder's credential a root)."""
    root_set = {(mid, bytes(fp)) for mid, fp in roots}
    members: dict[str, MemberState] = {}
    by_digest: dict[bytes, CredentialState] = {}
    sponsored: set[Root] = set()
    problems: list[str] = []

    def trusted_active_key(member_id: str) -> bytes | None:
        m = members.get(member_id)
        if m is None or m.status != "active" or m.current is None or not m.current.trusted:
            return None
        return bytes(m.current.body.ed25519_public_key)

    for entry in entries:
        kind, seq = entry.get("kind"), entry.get("seq", -1)
        mid = entry.get("member_id")
        if kind == "credential_issued":
            try:
                raw = bytes.fromhex(entry["credential"])
                cred = pb.Credential.FromString(raw)
                body = pb.CredentialBody.FromString(cred.body)
                fp = fingerprint_of(body)
            except Exception as exc:  # noqa: BLE001 - a malformed credential counts for nothing
                problems.append(f"entry {seq}: unreadable credential ({exc})")
                continue
            if body.member_id != mid:
                problems.append(f"entry {seq}: credential for {body.member_id!r} logged as {mid!r}")
                continue
            consistent = bytes(body.member_fingerprint) == fp  # what a rotation endorsement covers
            member = members.setdefault(mid, MemberState(mid))
            state = CredentialState(mid, signing.sha256(raw), fp, body, cred, seq)
            # The previous *trusted* credential endorses a rotation (an untrusted one in between breaks nothing).
            previous = next((c for c in reversed(member.credentials) if c.trusted), None)
            if (mid, fp) in root_set:
                state.trusted, state.how = True, "root"
            elif previous is not None:
                # SPEC §5.1(b): a later credential of a member that already has a trusted one is trusted only
                # through a rotation its previous key endorsed; a sponsorship does not re-key a member (else one
                # colluding member could hand the CA's keys any member's identity, and its witness key).
                if consistent and _endorsed(previous, cred, body):
                    state.trusted, state.how = True, "rotation"
                elif (mid, fp) in sponsored:
                    problems.append(f"entry {seq}: a sponsored credential of {mid} with keys its trusted credential did not endorse")
            elif (mid, fp) in sponsored:
                state.trusted, state.how = True, "sponsored"
            member.credentials.append(state)
            by_digest.setdefault(state.digest, state)
            # A rotation does not lift a suspension; revocation is final.
        elif kind == "member_sponsored":
            sponsor = entry.get("sponsor_id")
            key = trusted_active_key(sponsor) if isinstance(sponsor, str) else None
            if key is None:
                problems.append(f"entry {seq}: sponsor {sponsor!r} was not trusted and active here")
                continue
            try:
                raw_body = bytes.fromhex(entry["sponsorship"])
                signing.verify(key, signing.SPONSORSHIP, raw_body, bytes.fromhex(entry["signature"]), what="sponsorship")
                body = pb.SponsorshipBody.FromString(raw_body)
            except Exception as exc:  # noqa: BLE001
                problems.append(f"entry {seq}: sponsorship does not verify ({exc})")
                continue
            fp = bytes(body.newcomer_fingerprint)
            if body.sponsor_id != sponsor or body.newcomer_id != mid or fp.hex() != entry.get("fingerprint"):
                problems.append(f"entry {seq}: sponsorship body does not match the entry")
                continue
            sponsored.add((mid, fp))
            if not _has_earlier_trusted(members.get(mid)):  # a sponsorship does not re-key a member (above)
                _mark(members.get(mid), fp, "sponsored")
        elif kind == "matching_key_created" and founders_are_roots:
            key = _current_key(members.get(mid))
            try:
                raw_body = bytes.fromhex(entry["statement"])
                if key is None:
                    raise CryptoError("founder has no credential")
                signing.verify(key, signing.MATCHING_KEY_CREATED, raw_body, bytes.fromhex(entry["signature"]), what="statement")
                body = pb.MatchingKeyCreatedBody.FromString(raw_body)
            except Exception as exc:  # noqa: BLE001
                problems.append(f"entry {seq}: matching_key_created does not verify ({exc})")
                continue
            fp = bytes(body.founder_fingerprint)
            current = members[mid].current
            if body.founder_id != mid or current is None or current.fingerprint != fp:
                problems.append(f"entry {seq}: founder statement does not match the founder's credential")
                continue
            root_set.add((mid, fp))
            _mark(members.get(mid), fp, "root")
        elif kind in _STATUS and isinstance(mid, str):
            member = members.setdefault(mid, MemberState(mid))
            if member.status != "revoked":
                member.status = _STATUS[kind]
    return TrustView(members, by_digest, frozenset(root_set), problems)


def _mark(member: MemberState | None, fp: bytes, how: str) -> None:
    """A confirmation reaches the member's *current* credential only: an old
    credential stays superseded."""
    if member is not None and member.current is not None and member.current.fingerprint == fp and not member.current.trusted:
        member.current.trusted, member.current.how = True, how


def _has_earlier_trusted(member: MemberState | None) -> bool:
    """Whether a credential before the member's current one is trusted."""
    return member is not None and any(c.trusted for c in member.credentials[:-1])


def _current_key(member: MemberState | None) -> bytes | None:
    if member is None or member.current is None:
        return None
    return bytes(member.current.body.ed25519_public_key)


def _endorsed(previous: CredentialState, cred: pb.Credential, body: pb.CredentialBody) -> bool:
    """Same keys re-issued, or new keys endorsed by the previous key."""
    try:
        decision, _ = pki.check_pin(pki.pin_from(previous.body), cred, body)
    except CryptoError:
        return False
    return decision in ("same", "rotated")
