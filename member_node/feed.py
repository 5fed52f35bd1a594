"""The membership feed as a member follows it (SPEC §5.1): every membership
entry, each proven included in a checkpoint the member accepted, the
checkpoint's `membership <count>` equal to the entries held (so none was
withheld), each checkpoint proven consistent with the one kept before, and
the member's own roots. From these the trust rule (alliance/trust.py) decides
which peers the member answers, shares keys with and accepts keys from.

Two checkpoints are kept (SPEC §6.1; docs/audit-log.md "Witness quorum for
members"):

- the *latest*, signed by the log key pinned at join (``log_policy``): every
  entry is proven against it, its age decides ``feed_stale``, and whatever
  the view over all held entries refuses is refused at once;
- the *witnessed* one (:meth:`MembershipFeed.policy`): signed by the log key
  and cosigned by a witness quorum of the members eligible in the previously
  kept witnessed view, the deciding member not counting; proven consistent
  with the latest, its `membership <count>` equal to the entries held below
  it. A peer credential is trusted only when the view below it trusts it too
  (or it is one of the member's roots); else ``not_witnessed`` until the
  next witnessed checkpoint (alliance/witness_quorum.py)."""
from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import BigInteger, Column, Engine, Integer, LargeBinary, MetaData, String, Table, Text, func, insert, select, update

from alliance import audit_entry, checkpoint, db, merkle, trust, witness_quorum
from alliance.errors import AllianceError, CryptoError
from alliance.v1 import alliance_pb2 as pb

log = logging.getLogger("alliance.member.feed")

MAX_VIEW_AGE_S = 60.0        # older than this: refuse to answer (`feed_stale`)
REFRESH_INTERVAL_S = 4.0     # `member serve` refreshes at least every 5 s (SPEC §5.1)
FEED_STALE = "feed_stale"

metadata = MetaData()

# Membership entries in membership_seq order, as proven.
membership_feed = Table(
    "membership_feed",
    metadata,
    Column("membership_seq", BigInteger, primary_key=True, autoincrement=False),
    Column("seq", BigInteger, nullable=False, unique=True),  # leaf index
    Column("data", LargeBinary, nullable=False),
)

# One row: the checkpoint the view was proven against, and when.
feed_state = Table(
    "feed_state",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("checkpoint", Text, nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("membership_count", BigInteger, nullable=False),
    Column("verified_at_ms", BigInteger, nullable=False),
    Column("witnessed_at_ms", BigInteger, nullable=True),
)

# One row: the newest checkpoint with a witness quorum (SPEC §6.1) whose
# entries are all held; trust decisions rest on the view below it.
feed_witnessed = Table(
    "feed_witnessed",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("checkpoint", Text, nullable=False),   # the note with its cosignature lines
    Column("size", BigInteger, nullable=False),
    Column("membership_count", BigInteger, nullable=False),
    Column("accepted_at_ms", BigInteger, nullable=False),
)

# Fingerprints this member confirmed out of band (SPEC §5.1 roots).
trust_roots = Table(
    "trust_roots",
    metadata,
    Column("member_id", String(64), primary_key=True),
    Column("fingerprint", LargeBinary(32), primary_key=True),
    Column("source", String(16), nullable=False),  # install | share
    Column("added_at_ms", BigInteger, nullable=False),
)


def create_schema(engine: Engine) -> None:
    """The member database's schema, these tables included (alliance_member.store)."""
    from alliance_member import store

    store.create_schema(engine)


class FeedError(CryptoError):
    """The gateway's feed failed a check; the view is not moved."""


@dataclass(frozen=True)
class AcceptedCheckpoint:
    checkpoint: checkpoint.Checkpoint
    note: str
    witnessed_at_s: float | None = None  # when a witness quorum vouched for it, if the policy knows


CheckpointPolicy = Callable[[str], AcceptedCheckpoint]


def pinned_log_key(verifier: checkpoint.NoteVerifier) -> CheckpointPolicy:
    """The latest view's policy: the note must be signed by the log key
    pinned at join (the witness quorum is :meth:`MembershipFeed.policy`)."""

    def accept(note: str) -> AcceptedCheckpoint:
        return AcceptedCheckpoint(checkpoint.open_checkpoint(note, verifier), note)

    return accept


def membership_count(cp: checkpoint.Checkpoint) -> int:
    counts = [line.split(" ", 1)[1] for line in cp.extensions if line.startswith("membership ")]
    if len(counts) != 1 or not counts[0].isdigit():
        raise FeedError("the checkpoint does not carry exactly one `membership <count>` line")
    return int(counts[0])


# -- roots -------------------------------------------------------------------

def add_root(engine: Engine, member_id: str, fingerprint: bytes, source: str) -> None:
    """Record a fingerprint confirmed out of band (at `install` or `share`)."""
    create_schema(engine)
    with engine.begin() as conn:
        exists = conn.execute(select(trust_roots.c.member_id).where(
            trust_roots.c.member_id == member_id, trust_roots.c.fingerprint == fingerprint)).first()
        if exists is None:
            conn.execute(insert(trust_roots).values(member_id=member_id, fingerprint=fingerprint, source=source,
                                                    added_at_ms=int(time.time() * 1000)))


def load_roots(engine: Engine) -> list[trust.Root]:
    with engine.connect() as conn:
        return [(r.member_id, bytes(r.fingerprint)) for r in conn.execute(select(trust_roots))]


# -- the follower ------------------------------------------------------------

class FeedSource(Protocol):
    def membership(self, from_membership_seq: int, max_entries: int = 0) -> pb.ProvenEntries: ...
    def consistency_proof(self, first: int, second: int) -> list[bytes]: ...
    def witnessed_checkpoints(self) -> tuple[str, list[str]]: ...


class MembershipFeed:
    """Follows the feed into the member's database and keeps the trust view.

    ``own_fingerprints``: fingerprints of credentials this member requested
    (current, retired, pending rotation); any other credential in its name
    raises the `credential_in_my_name` alert. They are roots too: a member
    trusts itself."""

    def __init__(self, engine: Engine, source: Callable[[], FeedSource], policy: CheckpointPolicy, *, member_id: str,
                 own_fingerprints: Callable[[], Iterable[bytes]], clock: Callable[[], float] = time.time,
                 max_age_s: float = MAX_VIEW_AGE_S, on_kept: Callable[[str], None] | None = None) -> None:
        """``policy``: how the latest checkpoint is accepted (signed by the
        pinned log key); the witness quorum is :meth:`policy`. ``on_kept``
        gets each newly kept latest checkpoint (the member's witness never
        cosigns against it: witness.register_used)."""
        self.engine = engine
        self.source = source
        self.log_policy = policy
        self.on_kept = on_kept
        self.member_id = member_id
        self.own_fingerprints = own_fingerprints
        self.clock = clock
        self.max_age_s = max_age_s
        self._refresh_lock = threading.Lock()
        self._view_lock = threading.Lock()
        self._view: trust.TrustView | None = None
        self._view_key: tuple[Any, ...] | None = None
        self._witnessed_view: trust.TrustView | None = None
        self._witnessed_key: tuple[Any, ...] | None = None
        self._alerted: set[str] = set()
        create_schema(engine)

    # -- reading the feed ---------------------------------------------------

    def refresh(self) -> int:
        """Fetch and prove every membership entry past the ones held; returns
        how many were added. Raises FeedError (and moves nothing) on a gap, a
        bad proof, a count that does not match, or an inconsistent checkpoint."""
        from alliance_member import alerts

        with self._refresh_lock:
            state = self._state()
            kept = None if state is None else self.log_policy(state.checkpoint).checkpoint
            held = 0 if state is None else state.membership_count
            last_index = self._leaf_of(held - 1)
            src = self.source()
            expected, new, previous, accepted = held, [], kept, None
            while True:
                page = src.membership(expected, 0)
                accepted = self.log_policy(page.checkpoint)
                cp = accepted.checkpoint
                self._prove_consistent(src, previous, cp, alerts)
                previous = cp
                count = membership_count(cp)
                for e in page.entries:
                    if e.membership_seq != expected:
                        raise self._fail(f"gap in the membership feed: expected membership_seq {expected}, got {e.membership_seq}")
                    if e.index <= last_index or e.index >= cp.size:
                        raise self._fail(f"membership entry {expected} at leaf {e.index} is out of order or outside the tree")
                    entry = audit_entry.decode(bytes(e.data), index=e.index)
                    if entry["kind"] not in audit_entry.MEMBERSHIP_KINDS:
                        raise self._fail(f"the feed served a {entry['kind']} entry at leaf {e.index}")
                    if entry["v"] >= 2 and entry.get("membership_seq") != expected:
                        raise self._fail(f"entry at leaf {e.index} states membership_seq {entry.get('membership_seq')}, expected {expected}")
                    try:
                        merkle.verify_inclusion(merkle.leaf_hash(bytes(e.data)), e.index, cp.size, list(e.inclusion_proof), cp.root_hash)
                    except CryptoError as exc:
                        raise self._fail(f"membership entry {expected}: {exc}") from None
                    new.append((expected, e.index, bytes(e.data), entry))
                    expected, last_index = expected + 1, e.index
                if expected >= count or not page.entries:
                    break
            if expected != count:
                raise self._fail(f"the feed is incomplete: the checkpoint counts {count} membership entries, {expected} were served")
            now_ms = int(self.clock() * 1000)
            witnessed = None if accepted.witnessed_at_s is None else int(accepted.witnessed_at_s * 1000)
            values = dict(checkpoint=accepted.note, size=accepted.checkpoint.size, membership_count=count,
                          verified_at_ms=now_ms, witnessed_at_ms=witnessed)
            self._store(new, values)
            self._check_own_name([entry for *_, entry in new], alerts)
            if self.on_kept is not None and (kept is None or accepted.checkpoint.size > kept.size):
                self.on_kept(accepted.note)
            self._refresh_witnessed(src, accepted.checkpoint, alerts)
            return len(new)

    # -- the witnessed checkpoint (SPEC §6.1) --------------------------------

    def policy(self, note: str) -> AcceptedCheckpoint:
        """Accept ``note`` for trust decisions: signed by the pinned log key
        and cosigned by ⌊m/2⌋ + 1 of the m witnesses eligible in this
        member's last kept witnessed view (its latest view before it kept
        one), its own cosignature not counting. Raises NotWitnessed (a
        CryptoError) otherwise."""
        accepted = self.log_policy(note)
        latest = self.view()
        witnessed = self.witnessed_view()
        eligible = witness_quorum.eligible_witnesses(witnessed if witnessed is not None else latest)
        if witnessed is None:
            # Bootstrap: the latest view is signed by the operator alone, which could suspend, revoke or omit
            # this member's witnesses there (down to m = 1: no cosignature needed). Its roots, confirmed out of
            # band, stay witnesses whatever that view says; one the view holds no key for cannot cosign.
            eligible |= {mid for mid, _ in self.roots() if mid != self.member_id}
        witness_quorum.check_quorum(note, accepted.checkpoint, eligible=eligible, keys=witness_quorum.witness_keys(latest),
                                    deciding=self.member_id, now_s=int(self.clock()))
        return accepted

    def _refresh_witnessed(self, src: FeedSource, latest: checkpoint.Checkpoint, alerts: Any) -> None:
        """Keep the newest checkpoint the gateway shows with a witness quorum,
        once it is proven a prefix of the latest and all its membership
        entries are held. Checkpoints without a quorum are passed over (the
        view below the kept one keeps deciding); a quorum-cosigned checkpoint
        that is not a prefix of the latest is a fork (alert, FeedError)."""
        get = getattr(src, "witnessed_checkpoints", None)
        if get is None:
            return
        try:
            newest, per_witness = get()
        except CryptoError:
            raise
        except AllianceError as exc:  # the latest view moved; the witnessed one waits for the next refresh
            log.warning("witnessed checkpoints not read: %s", exc)
            return
        kept = self._witnessed_state()
        candidates = []
        for note in dict.fromkeys([newest, *per_witness]):
            try:
                candidates.append((self.log_policy(note).checkpoint, note))
            except CryptoError:
                continue  # not signed by the log key: proves nothing
        for cp, note in sorted(candidates, key=lambda c: -c[0].size):
            if kept is not None and cp.size <= kept.size:
                return
            if cp.size > latest.size:
                continue  # newer than the entries held; the next refresh gets there
            try:
                self.policy(note)
            except witness_quorum.NotWitnessed as exc:
                log.debug("witnessed checkpoint passed over: %s", exc)
                continue
            self._prove_consistent(src, cp, latest, alerts)
            count = membership_count(cp)
            with self.engine.connect() as conn:
                held = conn.execute(select(func.count()).select_from(membership_feed).where(membership_feed.c.seq < cp.size)).scalar()
            if held != count:
                raise self._fail(f"the witnessed checkpoint of size {cp.size} counts {count} membership entries; "
                                 f"{held} are held below it")
            values = dict(checkpoint=note, size=cp.size, membership_count=count, accepted_at_ms=int(self.clock() * 1000))
            with self.engine.begin() as conn:
                conn.execute(db.insert_ignoring_conflicts(self.engine, feed_witnessed).values(id=1, **values))
                conn.execute(update(feed_witnessed).where(feed_witnessed.c.id == 1, feed_witnessed.c.size < cp.size).values(**values))
            return

    def _witnessed_state(self) -> Any:
        with self.engine.connect() as conn:
            return conn.execute(select(feed_witnessed).where(feed_witnessed.c.id == 1)).first()

    def witnessed_checkpoint(self) -> tuple[checkpoint.Checkpoint, str] | None:
        """The kept witnessed checkpoint and its note (with the cosignatures),
        or None while this member has none."""
        row = self._witnessed_state()
        return None if row is None else (self.log_policy(row.checkpoint).checkpoint, row.checkpoint)

    def _store(self, new: list[tuple[int, int, bytes, dict[str, Any]]], values: dict[str, Any]) -> None:
        """Write the proven entries and the new state in one transaction.

        Another process on the same database (`member serve` beside a CLI
        command) may have stored some of the same entries first: those rows
        must then be byte-identical to ours (anything else is a fork, and
        nothing is written), and a newer state it stored is never rolled back."""
        with self.engine.begin() as conn:
            if new:
                conn.execute(db.insert_ignoring_conflicts(self.engine, membership_feed),
                             [{"membership_seq": m, "seq": i, "data": d} for m, i, d, _ in new])
                stored = {row.membership_seq: (row.seq, bytes(row.data)) for row in conn.execute(
                    select(membership_feed).where(membership_feed.c.membership_seq.between(new[0][0], new[-1][0])))}
                for m, i, d, _ in new:
                    if stored.get(m) != (i, d):
                        raise self._fail(f"membership entry {m} is stored differently by another process on this database")
            conn.execute(db.insert_ignoring_conflicts(self.engine, feed_state).values(id=1, **values))
            conn.execute(update(feed_state).where(feed_state.c.id == 1, feed_state.c.size <= values["size"]).values(**values))

    def _prove_consistent(self, src: FeedSource, kept: checkpoint.Checkpoint | None, cp: checkpoint.Checkpoint, alerts: Any) -> None:
        if kept is None or kept.size == 0:
            return
        if cp.size < kept.size:
            raise self._fail(f"the gateway showed checkpoint size {cp.size}, older than the kept {kept.size}")
        try:
            if cp.size == kept.size:
                if cp.root_hash != kept.root_hash:
                    raise CryptoError("two different checkpoints of the same size")
            else:
                merkle.verify_consistency(kept.size, cp.size, src.consistency_proof(kept.size, cp.size), kept.root_hash, cp.root_hash)
        except CryptoError as exc:
            message = f"the gateway's checkpoint of size {cp.size} is not consistent with the kept one of size {kept.size}: {exc}"
            alerts.raise_alert(self.engine, "inconsistent_checkpoint", message,
                               {"kept": self._state().checkpoint if self._state() else None, "shown": cp.body()})
            raise FeedError(message) from None

    def _fail(self, message: str) -> FeedError:
        log.error("membership feed refused: %s", message)
        return FeedError(message)

    def _check_own_name(self, entries: list[dict[str, Any]], alerts: Any) -> None:
        own = set(self.own_fingerprints())
        for entry in entries:
            if entry["kind"] != "credential_issued" or entry.get("member_id") != self.member_id:
                continue
            try:
                body = pb.CredentialBody.FromString(pb.Credential.FromString(bytes.fromhex(entry["credential"])).body)
                fp = trust.fingerprint_of(body)
            except Exception:  # noqa: BLE001
                fp = b""
            if fp not in own:
                alerts.raise_alert(
                    self.engine, "credential_in_my_name",
                    f"a credential was issued in this member's name ({self.member_id}) that it did not request: "
                    f"serial {entry.get('serial')}, log entry {entry.get('seq')}, fingerprint {fp.hex() or 'unreadable'}",
                    {"seq": entry.get("seq"), "serial": entry.get("serial"), "fingerprint": fp.hex()},
                )

    # -- the view ------------------------------------------------------------

    def _state(self) -> Any:
        with self.engine.connect() as conn:
            return conn.execute(select(feed_state).where(feed_state.c.id == 1)).first()

    def _leaf_of(self, membership_seq: int) -> int:
        """Leaf index of a held membership entry (-1 before the first). Read
        by number, not as "the newest row": another process on this database
        may have stored entries past the state this refresh started from."""
        if membership_seq < 0:
            return -1
        with self.engine.connect() as conn:
            seq = conn.execute(select(membership_feed.c.seq).where(membership_feed.c.membership_seq == membership_seq)).scalar()
        if seq is None:
            raise self._fail(f"membership entry {membership_seq} is counted by the kept state but not held")
        return int(seq)

    def age_s(self) -> float:
        """How old the view is: since its checkpoint was last proven (or
        witnessed, if the policy says so and that is earlier)."""
        state = self._state()
        if state is None:
            return float("inf")
        at = state.verified_at_ms if state.witnessed_at_ms is None else min(state.verified_at_ms, state.witnessed_at_ms)
        return self.clock() - at / 1000

    def stale(self) -> bool:
        return self.age_s() > self.max_age_s

    def roots(self) -> list[trust.Root]:
        return load_roots(self.engine) + [(self.member_id, fp) for fp in self.own_fingerprints()]

    def view(self) -> trust.TrustView:
        """The latest trust view: every entry held, the current roots;
        rebuilt only when either changed."""
        roots = sorted(set(self.roots()))
        with self.engine.connect() as conn:
            count = conn.execute(select(membership_feed.c.membership_seq).order_by(membership_feed.c.membership_seq.desc()).limit(1)).scalar()
        key = (count, hashlib.sha256(repr(roots).encode()).hexdigest())
        with self._view_lock:
            if self._view is None or key != self._view_key:
                self._view, self._view_key = self._replay(None, roots), key
            return self._view

    def witnessed_view(self) -> trust.TrustView | None:
        """The trust view below the kept witnessed checkpoint (None while
        there is none)."""
        row = self._witnessed_state()
        if row is None:
            return None
        roots = sorted(set(self.roots()))
        key = (int(row.size), hashlib.sha256(repr(roots).encode()).hexdigest())
        with self._view_lock:
            if self._witnessed_view is None or key != self._witnessed_key:
                self._witnessed_view, self._witnessed_key = self._replay(int(row.size), roots), key
            return self._witnessed_view

    def _replay(self, below: int | None, roots: list[trust.Root]) -> trust.TrustView:
        query = select(membership_feed.c.seq, membership_feed.c.data).order_by(membership_feed.c.membership_seq)
        if below is not None:
            query = query.where(membership_feed.c.seq < below)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return trust.replay([audit_entry.decode(bytes(r.data), index=r.seq) for r in rows], roots)

    @property
    def generation(self) -> tuple[Any, ...] | None:
        """Changes whenever the views may have: trust decisions cached under
        one generation are void under the next."""
        self.view()
        row = self._witnessed_state()
        return (self._view_key, None if row is None else int(row.size))

    def trust_decision(self, credential: bytes) -> str:
        """``"trusted"``, the latest view's reason, or ``not_witnessed``
        (alliance/witness_quorum.gated_decision); staleness not checked."""
        return witness_quorum.gated_decision(self.view(), self.witnessed_view(), credential)

    def decide(self, credential: bytes) -> str:
        """``"trusted"``, ``feed_stale``, ``not_witnessed`` or the trust rule's reason."""
        if self.stale():
            return FEED_STALE
        return self.trust_decision(credential)


class FeedRefresher:
    """`member serve`'s background thread: refresh every few seconds, log
    failures (the view then ages and turns stale after 60 s)."""

    def __init__(self, feed: MembershipFeed, interval_s: float = REFRESH_INTERVAL_S) -> None:
        self.feed = feed
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def refresh_once(self) -> bool:
        try:
            added = self.feed.refresh()
            if added:
                log.info("membership feed: %d new entr%s", added, "y" if added == 1 else "ies")
            return True
        except Exception as exc:  # noqa: BLE001 - the view ages instead; every failure is logged
            log.warning("membership feed not refreshed: %s", exc)
            return False

    def start(self) -> None:
        def run() -> None:
            while not self._stop.wait(self.interval_s):
                self.refresh_once()

        self._thread = threading.Thread(target=run, name="membership-feed", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
