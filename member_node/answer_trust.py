"""Which members' answers a querier counts, and with what key (SPEC §5.4).

The querier decrypts only a sum backed by at least k valid answer signatures
from members it trusts. Every "is this member trusted, and what is its Ed25519
key?" decision goes through :meth:`AnswerTrust.answer_key`, so trust can be
tightened in one place (log-gated trust of §5.1 will extend :meth:`_admit`).

Today a member is trusted when its credential verifies against the alliance
CA, is a member (not auditor) credential for that member id, and passes the
pin rules shared with this member's own node (``PeerTrust``: the same
``pinned_credentials`` table, so the querier and the serving node never pin
two different credentials for one peer). Unknown members' credentials are
fetched from the gateway once; each credential is parsed and verified once
and its key object cached, so the per-query cost is one Ed25519 verification
per answer."""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import Engine, select
from sqlalchemy.exc import IntegrityError

from alliance import signing
from alliance.errors import AllianceError
from alliance.v1 import alliance_pb2 as pb
from alliance_member import store
from alliance_member.service import PeerTrust

log = logging.getLogger("alliance.querier")

# After a credential could not be trusted (or fetched), ask the gateway again
# no sooner than this: a misbehaving gateway must not cost an RPC per answer.
REFETCH_AFTER_S = 30.0


@dataclass(frozen=True)
class TrustedKey:
    member_id: str
    serial: int
    key: Ed25519PublicKey
    not_after: int


class AnswerTrust:
    """Trusted answer keys by member id, verified once and cached."""

    def __init__(self, engine: Engine, ca_cert, fetch: Callable[[str], pb.Credential],  # type: ignore[no-untyped-def]
                 *, clock: Callable[[], float] = time.time, feed: Any = None) -> None:
        self.engine = engine
        self.peers = PeerTrust(engine, ca_cert)
        self.fetch = fetch
        self.clock = clock
        self.feed = feed  # alliance_member.feed.MembershipFeed: §5.1 log-gated trust (None: CA and pins only)
        self._generation: Any = None
        self._keys: dict[str, TrustedKey] = {}
        self._refused_at: dict[str, float] = {}  # member id -> when its credential was last refused / re-fetched
        self._lock = threading.Lock()
        self._load_locks = [threading.Lock() for _ in range(16)]  # one loader per member id at a time (striped)

    # -- the decision ---------------------------------------------------------

    def answer_key(self, member_id: str) -> TrustedKey | None:
        """The key this querier checks ``member_id``'s answers with, or None
        when the member is not trusted (its answers then count for nothing)."""
        now = self.clock()
        cached, refused_at = self._cached(member_id, now)
        if cached is not None:
            return cached
        if refused_at is not None and now - refused_at < REFETCH_AFTER_S:
            return None
        with self._loading(member_id):
            # Concurrent reports all miss at once when the view moves: one
            # thread loads, the others take what it found (single flight).
            cached, refused_at = self._cached(member_id, now)
            if cached is not None:
                return cached
            if refused_at is not None and now - refused_at < REFETCH_AFTER_S:
                return None
            trusted = self._load(member_id, now, pinned_first=True)
            with self._lock:
                if trusted is None:
                    self._keys.pop(member_id, None)
                    self._refused_at[member_id] = now
                else:
                    self._keys[member_id] = trusted
                    self._refused_at.pop(member_id, None)
        return trusted

    def _cached(self, member_id: str, now: float) -> tuple[TrustedKey | None, float | None]:
        with self._lock:
            cached = self._keys.get(member_id)
            return (cached if cached is not None and now < cached.not_after else None), self._refused_at.get(member_id)

    def _loading(self, member_id: str) -> threading.Lock:
        # A fixed set of stripes, not a lock per id: member ids come from the
        # gateway's response, and a hostile gateway must not grow this at will.
        return self._load_locks[hash(member_id) % len(self._load_locks)]

    def refresh(self, member_id: str) -> TrustedKey | None:
        """A signature failed under the cached key: the member may have
        rotated its keys. Fetch its current credential from the gateway (at
        most every REFETCH_AFTER_S) and accept it only under the pin rules
        (endorsed by the pinned key). Returns the new key, or None."""
        now = self.clock()
        with self._lock:
            last = self._refused_at.get(member_id)
            if last is not None and now - last < REFETCH_AFTER_S:
                return None
            self._refused_at[member_id] = now  # rate-limits re-fetching whatever the outcome
            old = self._keys.get(member_id)
        trusted = self._load(member_id, now, pinned_first=False)
        if trusted is None or (old is not None and trusted.serial == old.serial):
            return None
        with self._lock:
            self._keys[member_id] = trusted
        return trusted

    def sync(self) -> None:
        """Once per report: bring this querier's view of the membership feed
        up to date when it is stale (SPEC §5.1: a view more than 60 s old
        decides nothing) and forget every trust decision the view made
        before it moved."""
        if self.feed is None:
            return
        if self.feed.stale():
            try:
                self.feed.refresh()
            except AllianceError as exc:
                log.warning("membership feed not refreshed: %s", exc)
        generation = self.feed.generation
        with self._lock:
            if generation != self._generation:
                self._keys.clear()
                self._refused_at.clear()
                self._generation = generation

    def _admit(self, body: pb.CredentialBody, member_id: str, credential: bytes) -> bool:
        """Rules beyond the CA and the pins: a member credential for that id,
        trusted in this member's own view of the log (SPEC §5.1: in the log,
        sponsored by a chain to one of its roots, active)."""
        if body.member_id != member_id or body.role != pb.ROLE_MEMBER:
            return False
        if self.feed is not None:
            decision = self.feed.decide(credential)
            if decision != "trusted":
                log.warning("answers of %s are not counted: %s", member_id, decision)
                return False
        return True

    # -- credentials ----------------------------------------------------------

    def _load(self, member_id: str, now: float, *, pinned_first: bool) -> TrustedKey | None:
        body, credential = None, b""
        if pinned_first:  # the credential this member already pinned: no RPC (an expired one falls through)
            pinned = self._pinned_credential(member_id)
            if pinned is not None:
                try:
                    body, credential = self._verify(pinned, int(now)), pinned
                except AllianceError:
                    body = None
        if body is None:
            try:
                credential = self.fetch(member_id).SerializeToString()
                body = self._verify(credential, int(now))
            except AllianceError as exc:
                log.warning("answers of %s are not counted: %s", member_id, exc)
                return None
        if not self._admit(body, member_id, credential):
            log.warning("answers of %s are not counted: its credential is for %s (role %s)", member_id, body.member_id, body.role)
            return None
        return TrustedKey(member_id, body.serial, Ed25519PublicKey.from_public_bytes(bytes(body.ed25519_public_key)), body.not_after)

    def _verify(self, credential: bytes, now_s: int) -> pb.CredentialBody:
        try:
            return self.peers.verify(credential, now_s)
        except IntegrityError:  # this member's node pinned the same peer at the same moment: check against its pin
            return self.peers.verify(credential, now_s)

    def _pinned_credential(self, member_id: str) -> bytes | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(store.pinned_credentials.c.credential).where(store.pinned_credentials.c.member_id == member_id)
            ).first()
        return None if row is None else bytes(row.credential)


def answer_signature_valid(trusted: TrustedKey, query_id: str, request_digest: bytes, receipt: pb.AnswerReceipt) -> bool:
    if len(receipt.ciphertext_sha256) != 32 or len(receipt.signature) != signing.ED25519_SIGNATURE_SIZE:
        return False
    return signing.ed25519_valid(trusted.key, receipt.signature, signing.MEMBER_ANSWER + signing.member_answer_message(
        query_id, request_digest, receipt.ciphertext_sha256,
        signing.sha256(receipt.book_status) if receipt.book_status else b""))  # SPEC §10: the status is covered
