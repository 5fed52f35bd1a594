"""A member's witness quorum (SPEC §5.1, §6.1; docs/audit-log.md "Witness
quorum for members"), as pure functions over trust views (alliance/trust.py).

A member's trust decisions rest on checkpoints signed by the log key pinned
at join *and* cosigned (C2SP ``cosignature/v1``, alliance/cosignature.py) by
⌊m/2⌋ + 1 of the m witnesses eligible in the member's last kept witnessed
view — the members trusted and active in it under the member's own roots,
i.e. sponsored by a chain back to what it confirmed out of band — its own
cosignature not counting. Cosignatures are checked against every key of an
eligible member's trusted credentials (a rotation endorsed by the previous
key adds one; nothing the operator signs alone does).

:func:`gated_decision` combines the two views a member keeps:

- the *latest* view (every membership entry proven in checkpoints signed by
  the log key, refreshed every few seconds): anything it refuses is refused
  at once, so suspensions, revocations and rotations act without waiting
  for witnesses (a refusal cannot be abused through a fork);
- the *witnessed* view (the entries below the last kept checkpoint with a
  quorum): a credential is trusted only when it is trusted there too, or
  when it is one of the deciding member's roots (a fingerprint it confirmed
  out of band: the log then only says the credential is present and
  active, and the latest view already said so). Otherwise ``not_witnessed``:
  the admission is in the log, but no witness quorum has vouched for that
  part of the log yet (the next witnessed checkpoint settles it)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from alliance import cosignature, signing, trust
from alliance.checkpoint import Checkpoint
from alliance.errors import CryptoError

NOT_WITNESSED = "not_witnessed"


class NotWitnessed(CryptoError):
    """A checkpoint without a witness quorum was offered for a trust decision."""

    reason = NOT_WITNESSED


def eligible_witnesses(view: trust.TrustView) -> frozenset[str]:
    """The m witnesses of a view: members whose current credential is trusted
    (in the log, sponsored by a chain to a root) and active."""
    return frozenset(view.trusted_members())


def witness_keys(view: trust.TrustView) -> dict[str, list[bytes]]:
    """Every Ed25519 key of every trusted credential, by member."""
    return {mid: [bytes(c.body.ed25519_public_key) for c in m.credentials if c.trusted]
            for mid, m in view.members.items() if any(c.trusted for c in m.credentials)}


def check_quorum(note: str, cp: Checkpoint, *, eligible: frozenset[str] | set[str], keys: Mapping[str, Sequence[bytes]],
                 deciding: str | None, now_s: int) -> set[str]:
    """The eligible witnesses (other than ``deciding``) whose cosignatures on
    ``note`` verify; raises NotWitnessed when they are fewer than
    :func:`cosignature.required`. ``note`` must already have passed the
    log-key check that produced ``cp``."""
    eligible = frozenset(eligible)
    signers = cosignature.cosigners_by_keys(note, cp, {m: keys.get(m, ()) for m in eligible}, now_s=now_s)
    counted = (set(signers) & eligible) - {deciding}
    need = cosignature.required(eligible, deciding)
    if len(counted) < need:
        others = sorted(eligible - {deciding})
        raise NotWitnessed(
            f"checkpoint of size {cp.size} is cosigned by {len(counted)} of the {need} witness(es) it needs "
            f"(⌊m/2⌋+1 of the m = {len(eligible)} sponsored active members, not counting {deciding or 'the verifier'}; "
            f"witnesses: {', '.join(others) or 'none'}; cosigned by: {', '.join(sorted(counted)) or 'none'})")
    return counted


def gated_decision(latest: trust.TrustView, witnessed: trust.TrustView | None, credential: bytes) -> str:
    """``"trusted"``, the latest view's reason, or ``not_witnessed``."""
    decision = latest.decide(credential)
    if decision != trust.TRUSTED:
        return decision
    if witnessed is not None and witnessed.decide(credential) == trust.TRUSTED:
        return trust.TRUSTED
    state = latest.by_digest.get(signing.sha256(credential))
    if state is not None and state.how == "root":
        return trust.TRUSTED
    return NOT_WITNESSED
