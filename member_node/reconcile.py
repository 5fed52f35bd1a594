"""Member reconciliation (SPEC §1 property 9, §6.2): every answer this member
gave is in the log, and the member checks it itself.

- ``journal_answer``: the answer path writes one journal row (query id,
  SHA-256 of the request body, SHA-256 of the ciphertext, time) in the same
  transaction as its replay row, so no answer leaves without one.
- ``reconcile``: reads, with ``GetQueryProofs``, the entries of queries that
  asked this member and the ``gateway_started`` entries, each proven included
  in a checkpoint accepted by ``accept_checkpoint`` and consistent with the
  member's kept checkpoint and with its witnessed checkpoint (SPEC §6.1: the
  newest one its membership feed accepted with a witness quorum), and
  matches every journalled answer older than ``min_age_ms``. Only an entry
  below the witnessed checkpoint reconciles an answer (and prunes it); an
  answer logged only above it is ``not_witnessed`` — pending for 5 minutes,
  then a failure. Answers not in the log at all are reported with the
  nearest gateway restart before and after, so a person can tell a crash
  between fan-out and commit from an off-the-record answer.
- ``reconcile_home`` also fails on a receipt checkpoint kept by the querier
  more than 5 minutes ago that no consistent witnessed checkpoint covers.
- ``Reconciler``: what ``member serve`` runs every 15 minutes; it raises an
  ``unlogged_answer`` alert for each answer missing from the log.

The matching itself (``entry_reconciles``, ``nearest_restart``) is pure, in
``reconcile_match``."""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import Connection, Engine, delete, insert, select

from alliance import audit_entry, checkpoint, db, merkle, signing
from alliance._internal.files import write_atomic
from alliance.errors import AllianceError, CryptoError, Unreachable, VerificationFailed
from alliance.v1 import alliance_pb2 as pb
from alliance_member import alerts, receipt_checkpoints, store
from alliance_member.reconcile_match import (
    JournalRow,
    OwnSignatures,
    Restart,
    entry_reconciles,
    format_utc,
    nearest_restart,
    parse_time_ms,
)

log = logging.getLogger("alliance.member.reconcile")

MIN_AGE_MS = 60_000  # answers younger than this may not be committed yet (SPEC §6.2: "older than one minute")
WITNESS_GRACE_MS = 300_000  # an answer logged but still above the witnessed checkpoint after this fails (SPEC §6.1)
INTERVAL_S = 15 * 60  # `member serve` runs reconcile this often
FIRST_RUN_S = 60
MARK_MARGIN_MS = 60_000  # clock steps between a mark and an answer
PAGE_ENTRIES = 256
ALERT_KIND = "unlogged_answer"
RUN_BUDGET_S = 600.0  # a run reads ~1,000 pages a minute; one the gateway keeps open longer did not complete
STALL_RUNS = 4  # runs in a row that could not complete (an hour at INTERVAL_S): alert `reconcile_failed`

_j = store.answer_journal.c
_marks = store.reconcile_marks.c


# ---------------------------------------------------------------------------
# The journal (the answer path)


def journal_answer(conn: Connection, query_id: str, request_body: bytes, ciphertext: bytes, now_ms: int) -> None:
    """Record an answer; call inside the transaction that remembers the query id."""
    conn.execute(_JOURNAL, _journal_row(query_id, request_body, ciphertext, now_ms))


def journal_rows(conn: Connection, answers: list[tuple[str, bytes, bytes]], now_ms: int) -> None:
    """Record a batch's answers (query id, request body, ciphertext) in one
    statement; call inside the transaction that remembers their query ids."""
    db.execute_rows(conn, _JOURNAL, [_journal_row(query_id, body, ciphertext, now_ms) for query_id, body, ciphertext in answers])


def _journal_row(query_id: str, request_body: bytes, ciphertext: bytes, now_ms: int) -> dict[str, object]:
    return {"query_id": query_id, "request_sha256": signing.sha256(request_body),
            "ciphertext_sha256": signing.sha256(ciphertext), "answered_at_ms": now_ms}


_JOURNAL = insert(store.answer_journal)  # built once (the answer path)


# ---------------------------------------------------------------------------
# Checkpoints: acceptance and the member's kept checkpoint


def accept_checkpoint(note: str, verifier: checkpoint.NoteVerifier) -> checkpoint.Checkpoint:
    """A page's checkpoint: signed by the pinned log key. Entries proven in it
    reconcile an answer only below the witnessed checkpoint (``read_log``)."""
    return checkpoint.open_checkpoint(note, verifier)


Witnessed = tuple[checkpoint.Checkpoint, str]  # a checkpoint accepted with a witness quorum, and its note


ConsistencyProof = Callable[[int, int], list[bytes]]


def keep_consistent(path: Path, cp: checkpoint.Checkpoint, note: str, verifier: checkpoint.NoteVerifier,
                    consistency_proof: ConsistencyProof) -> None:
    """Prove ``cp`` consistent with the member's kept checkpoint (the file the
    querier keeps too) and keep the newer of the two. A fork raises CryptoError."""
    if path.exists():
        old = accept_checkpoint(path.read_text(encoding="utf-8"), verifier)
        if old.size == cp.size:
            if old.root_hash != cp.root_hash:
                raise CryptoError("audit log fork: two different checkpoints of the same size")
            return
        if old.size > cp.size:
            if cp.size > 0:
                merkle.verify_consistency(cp.size, old.size, consistency_proof(cp.size, old.size), cp.root_hash, old.root_hash)
            return
        if old.size > 0:
            merkle.verify_consistency(old.size, cp.size, consistency_proof(old.size, cp.size), old.root_hash, cp.root_hash)
    write_atomic(path, note.encode("utf-8"))


# ---------------------------------------------------------------------------
# Reading the log


class ProofSource(Protocol):
    def query_proofs(self, from_index: int, max_entries: int) -> pb.ProvenEntries: ...
    def consistency_proof(self, first: int, second: int) -> list[bytes]: ...


class GatewayProofSource:
    """GetQueryProofs and GetConsistencyProof over a member's GatewayClient."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def query_proofs(self, from_index: int, max_entries: int) -> pb.ProvenEntries:
        return self.client._call("GetQueryProofs",
                                 pb.GetQueryProofsRequest(from_index=from_index, max_entries=max_entries))

    def consistency_proof(self, first: int, second: int) -> list[bytes]:
        return self.client.consistency_proof(first, second)


@dataclass
class LogView:
    """What a run read: which journalled answers an entry accounts for (by
    query id: below the witnessed checkpoint, or only at or above it), the
    restarts, and the first checkpoint's size and when it was read. Entries
    are matched as they are read and then dropped: between two runs a member
    answering 100 queries a second is asked in 90,000 entries."""

    reconciled: set[str] = field(default_factory=set)
    unwitnessed: set[str] = field(default_factory=set)  # logged only at or above the witnessed size
    restarts: list[Restart] = field(default_factory=list)
    first_size: int | None = None
    first_read_ms: int = 0
    size: int = 0


def read_log(source: ProofSource, member_id: str, start: int, verifier: checkpoint.NoteVerifier, kept: Path,
             clock: Callable[[], float] = time.time, *, witnessed: Witnessed | None = None,
             journal: dict[str, JournalRow] | None = None, own: OwnSignatures | None = None,
             budget_s: float = RUN_BUDGET_S) -> LogView:
    """Every entry served from ``start`` on, each proven included in its page's
    accepted checkpoint, each checkpoint consistent with the kept one and with
    ``witnessed``; each query entry matched against the ``journal`` row of
    its query id (``entry_reconciles``, signatures checked by ``own``). Query
    entries at or above the witnessed size (all of them without one) count
    apart: nothing a witness quorum vouched for. An entry that does not
    concern this member is an error: the gateway must never serve it. The
    read ends at the first page's checkpoint (the log when the run began),
    and fails as Unreachable after ``budget_s``."""
    from alliance_member.witness import check_consistent

    view = LogView()
    index = start
    witnessed_size = witnessed[0].size if witnessed is not None else 0
    journal = journal or {}
    deadline = time.monotonic() + budget_s
    for pages, page in enumerate(_pages(source, start), 1):
        if time.monotonic() > deadline:  # a gateway trickling pages must not keep a run (and its alerts) open for ever
            raise Unreachable(f"the gateway served {pages - 1} pages of the log in {budget_s:.0f} s without reaching "
                              f"entry {view.first_size}; reconcile did not complete")
        cp = accept_checkpoint(page.checkpoint, verifier)
        keep_consistent(kept, cp, page.checkpoint, verifier, source.consistency_proof)
        if witnessed is not None:  # a fork between what the witnesses saw and what this member is shown: Inconsistent
            check_consistent(witnessed[0], witnessed[1], cp, page.checkpoint, source.consistency_proof)
        if view.first_size is None:
            view.first_size, view.first_read_ms = cp.size, int(clock() * 1000)
        view.size = max(view.size, cp.size)
        for proven in page.entries:
            if not index <= proven.index < cp.size:
                raise CryptoError(f"GetQueryProofs served entry {proven.index} out of order (expected ≥ {index}, < {cp.size})")
            data = bytes(proven.data)
            merkle.verify_inclusion(merkle.leaf_hash(data), proven.index, cp.size, list(proven.inclusion_proof), cp.root_hash)
            entry = audit_entry.decode(data, index=proven.index)
            index = proven.index + 1
            if entry.get("kind") == "gateway_started":
                view.restarts.append(Restart(proven.index, parse_time_ms(entry.get("time")), str(entry.get("time")),
                                             entry.get("pid"), entry.get("host")))
            elif entry.get("kind") in audit_entry.QUERY_KINDS and _may_ask(entry.get("members_asked"), member_id):
                row = journal.get(str(entry.get("query_id")))
                if row is not None and own is not None and entry_reconciles(entry, row, member_id, own):
                    (view.reconciled if proven.index < witnessed_size else view.unwitnessed).add(row.query_id)
            else:
                raise CryptoError(f"GetQueryProofs served entry {proven.index} ({entry.get('kind')}), which did not ask {member_id}")
        if view.first_size is not None and index >= view.first_size:  # the log when the run began; later: next run
            break
    return view


def _may_ask(asked: Any, member_id: str) -> bool:
    """A query entry lists this member, or is malformed (it then accounts for
    nothing, ``entry_reconciles``, but must not stop the run)."""
    return not isinstance(asked, list) or member_id in asked


def _pages(source: ProofSource, start: int) -> Iterator[pb.ProvenEntries]:
    index = start
    while True:
        page = source.query_proofs(index, PAGE_ENTRIES)
        yield page
        if not page.entries:
            return
        index = page.entries[-1].index + 1


# ---------------------------------------------------------------------------
# One run


@dataclass
class Result:
    checked: int
    reconciled: int
    missing: list[dict[str, Any]]
    tree_size: int
    not_witnessed: list[dict[str, Any]] = field(default_factory=list)  # logged, not yet below a witnessed checkpoint
    uncovered_receipt_checkpoints: list[dict[str, Any]] = field(default_factory=list)
    witnessed_size: int | None = None

    @property
    def overdue(self) -> list[dict[str, Any]]:
        """Answers still not witnessed WITNESS_GRACE_MS after they were given."""
        return [r for r in self.not_witnessed if r.get("overdue")]

    @property
    def ok(self) -> bool:
        return not self.missing and not self.overdue and not self.uncovered_receipt_checkpoints

    def as_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "checked": self.checked, "reconciled": self.reconciled, "missing": self.missing,
                "not_witnessed": self.not_witnessed, "uncovered_receipt_checkpoints": self.uncovered_receipt_checkpoints,
                "witnessed_size": self.witnessed_size, "tree_size": self.tree_size}


def reconcile(engine: Engine, *, member_id: str, public_key: Ed25519PublicKey | bytes, source: ProofSource,
              verifier: checkpoint.NoteVerifier, kept: Path, witnessed: Witnessed | None, min_age_ms: int = MIN_AGE_MS,
              since_ms: int = 0, clock: Callable[[], float] = time.time,
              signing_key: Ed25519PrivateKey | None = None) -> Result:
    """Check every journalled answer at least ``min_age_ms`` old (and answered
    at or after ``since_ms``) against the log under ``witnessed`` (the
    member's newest checkpoint accepted with a witness quorum, None while it
    has none); prune the reconciled ones. ``signing_key`` (the member's own)
    only makes checking its signatures cheaper (``OwnSignatures``)."""
    own = OwnSignatures(public_key, signing_key)
    now_ms = int(clock() * 1000)
    with engine.connect() as conn:
        rows = [JournalRow(r.query_id, bytes(r.request_sha256), bytes(r.ciphertext_sha256), r.answered_at_ms)
                for r in conn.execute(select(store.answer_journal)
                                      .where(_j.answered_at_ms <= now_ms - min_age_ms, _j.answered_at_ms >= since_ms)
                                      .order_by(_j.answered_at_ms, _j.query_id))]
        start, mark_at = _start_index(conn, min((r.answered_at_ms for r in rows), default=now_ms))
    view = read_log(source, member_id, start, verifier, kept, clock, witnessed=witnessed,
                    journal={row.query_id: row for row in rows}, own=own)
    reconciled, missing, pending = [], [], []
    for row in rows:
        if row.query_id in view.reconciled:
            reconciled.append(row.query_id)
        elif row.query_id in view.unwitnessed:
            pending.append({"query_id": row.query_id, "answered_at": format_utc(row.answered_at_ms),
                            "overdue": now_ms - row.answered_at_ms > WITNESS_GRACE_MS,
                            "why": "logged, but not yet below a checkpoint cosigned by a witness quorum"
                                   + ("" if witnessed is not None else " (this member has no witnessed checkpoint yet)")})
        else:
            missing.append({"query_id": row.query_id, "answered_at": format_utc(row.answered_at_ms),
                            "nearest_restart": nearest_restart(view.restarts, row.answered_at_ms)})
    with engine.begin() as conn:
        if reconciled:
            for i in range(0, len(reconciled), 500):
                conn.execute(delete(store.answer_journal).where(_j.query_id.in_(reconciled[i:i + 500])))
        if view.first_size is not None:
            conn.execute(delete(store.reconcile_marks).where(_marks.observed_at_ms == view.first_read_ms))
            conn.execute(insert(store.reconcile_marks).values(observed_at_ms=view.first_read_ms, tree_size=view.first_size))
        if mark_at is not None:  # marks older than the one this run started from are never needed again
            conn.execute(delete(store.reconcile_marks).where(_marks.observed_at_ms < mark_at))
    return Result(checked=len(rows), reconciled=len(reconciled), missing=missing, tree_size=view.size, not_witnessed=pending,
                  witnessed_size=witnessed[0].size if witnessed is not None else None)


def _start_index(conn: Connection, oldest_answer_ms: int) -> tuple[int, int | None]:
    """Where to start reading: the largest log size observed (after reading)
    before the oldest answer to check, less a margin. Any entry for that answer
    was committed after the answer, so after the observation: its index is at
    least that size. Also the oldest journal row still kept counts, so a run
    with --since never lets a later run skip an older unreconciled answer."""
    oldest_kept = conn.execute(select(_j.answered_at_ms).order_by(_j.answered_at_ms).limit(1)).scalar()
    bound = min(oldest_answer_ms, oldest_kept if oldest_kept is not None else oldest_answer_ms) - MARK_MARGIN_MS
    row = conn.execute(select(_marks.observed_at_ms, _marks.tree_size).where(_marks.observed_at_ms <= bound)
                       .order_by(_marks.observed_at_ms.desc()).limit(1)).first()
    return (0, None) if row is None else (int(row.tree_size), int(row.observed_at_ms))


# ---------------------------------------------------------------------------
# From a member home (CLI and `member serve`)


def reconcile_home(home_dir: Path, *, db_url: str | None = None, min_age_ms: int = MIN_AGE_MS, since_ms: int = 0,
                   engine: Engine | None = None, client: Any = None) -> Result:
    from alliance import pki
    from alliance_member.gateway_client import GatewayClient
    from alliance_member.home import MemberHome

    home = MemberHome(home_dir)
    cfg = home.config()
    if cfg.role != "member":
        from alliance.errors import UsageError
        raise UsageError(f"{home_dir} is an {cfg.role} home; only members answer queries")
    home.require_joined()
    own = pki.verify_credential(home.credential.read_bytes(), pki.load_cert_pem(home.ca_cert))
    verifier = checkpoint.parse_verifier_key(home.log_verifier.read_text(encoding="utf-8").strip())
    if engine is None and db_url is None and cfg.db_url is None and not home.default_db.exists():
        return Result(checked=0, reconciled=0, missing=[], tree_size=0)  # this node never answered: nothing to check, nothing to create
    owns_engine = engine is None
    if engine is None:
        engine = db.make_engine(home.db_url(db_url))
        store.create_schema(engine)
    owns_client = client is None
    client = client or GatewayClient(home)
    try:
        witnessed = _witnessed(home, client, engine)
        result = reconcile(engine, member_id=cfg.member_id, public_key=bytes(own.ed25519_public_key),
                           source=GatewayProofSource(client), verifier=verifier, kept=home.checkpoint,
                           witnessed=witnessed, min_age_ms=min_age_ms, since_ms=since_ms,
                           signing_key=_own_signing_key(home))
        coverage = receipt_checkpoints.receipt_coverage(
            home, witnessed[1] if witnessed is not None else None, time.time(), consistency_proof=client.consistency_proof)
        result.uncovered_receipt_checkpoints = coverage.uncovered
        try:  # proven prefixes of a witnessed checkpoint: nothing more to keep them for
            dropped = receipt_checkpoints.prune_receipt_checkpoints(home, coverage.covered)
        except OSError as exc:  # best effort: never at the cost of the reconcile result and its alerts
            log.warning("could not forget covered receipt checkpoints: %s", exc)
        else:
            if dropped:
                log.info("forgot %d receipt checkpoint(s) a witnessed checkpoint covers", dropped)
        return result
    finally:
        if owns_client:
            client.close()
        if owns_engine:
            engine.dispose()


def _own_signing_key(home: Any) -> Ed25519PrivateKey | None:
    """The member's answer-signing key, if this process can read it; without
    it reconcile verifies every signature (slower, same verdicts)."""
    from alliance import pki

    try:
        return pki.load_ed25519_private_pem(home.signing_key)
    except (OSError, ValueError, TypeError, AllianceError, UnsupportedAlgorithm) as exc:
        log.info("reconcile verifies each own signature in full: cannot read the signing key (%s)", exc)
        return None


def _witnessed(home: Any, client: Any, engine: Engine) -> Witnessed | None:
    from alliance_member import onboarding

    return witnessed_of(onboarding.open_feed(home, client, engine=engine))


def witnessed_of(feed: Any) -> Witnessed | None:
    """The member's newest checkpoint with a witness quorum, which its
    membership feed, brought up to date, keeps (MembershipFeed.policy) —
    never the latest log-signed one."""
    feed.refresh()
    return feed.witnessed_checkpoint()


class Reconciler:
    """`member serve`'s background check: every ``interval_s``, reconcile and
    raise one `unlogged_answer` alert per answer missing from the log."""

    def __init__(self, home_dir: Path, engine: Engine, *, db_url: str | None = None, interval_s: float = INTERVAL_S,
                 first_run_s: float = FIRST_RUN_S, min_age_ms: int = MIN_AGE_MS) -> None:
        self.home_dir, self.engine, self.db_url, self.min_age_ms = home_dir, engine, db_url, min_age_ms
        self.interval_s, self.first_run_s = interval_s, first_run_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._alerted: set[str] = set()
        self._failed_runs = 0  # runs in a row that failed, for whatever reason
        self._failures_alerted: set[str] = set()  # alerted in this run of failures

    def run_once(self) -> Result | None:
        try:
            result = reconcile_home(self.home_dir, db_url=self.db_url, engine=self.engine, min_age_ms=self.min_age_ms)
        except (CryptoError, VerificationFailed) as exc:  # a log that does not verify, or an entry not canonical
            self._failed(f"member reconcile could not verify the log: {exc}")
            return None
        except AllianceError as exc:  # e.g. the gateway unreachable: try again next run, alert once it lasts
            log.warning("member reconcile did not run: %s", exc)
            self._failed(f"member reconcile has not completed in {STALL_RUNS} runs in a row: {exc}", at_once=False,
                         key="stalled")
            return None
        except Exception as exc:  # noqa: BLE001 - a bug, or log content nothing anticipated: a person must look
            log.exception("member reconcile failed")
            self._failed(f"member reconcile failed: {type(exc).__name__}: {exc}")
            return None
        self._failed_runs, self._failures_alerted = 0, set()
        for miss in result.missing:
            if miss["query_id"] in self._alerted:
                continue
            alerts.raise_alert(self.engine, ALERT_KIND,
                               f"answer to query {miss['query_id']} given at {miss['answered_at']} is not in the audit log",
                               miss)
            self._alerted.add(miss["query_id"])
        for late in result.overdue:
            if "w:" + late["query_id"] not in self._alerted:
                alerts.raise_alert(self.engine, "not_witnessed",
                                   f"answer to query {late['query_id']} given at {late['answered_at']} is logged but no "
                                   "checkpoint cosigned by a witness quorum covers it after 5 minutes", late)
                self._alerted.add("w:" + late["query_id"])
        for r in result.uncovered_receipt_checkpoints:
            # Per verdict: a receipt first alerted as unwitnessed (the gateway stalled the witnesses)
            # is alerted again when it is found inconsistent; that one is a fork, not an outage.
            key = f"r:{r['verdict']}:{r['size']}:{r['root']}"
            if key not in self._alerted:
                kind = "inconsistent_checkpoint" if r["verdict"] == receipt_checkpoints.INCONSISTENT else "not_witnessed"
                alerts.raise_alert(self.engine, kind,
                                   f"the receipt checkpoint of size {r['size']} is not covered by a consistent witnessed "
                                   f"checkpoint after 5 minutes: {r['why']}", r)
                self._alerted.add(key)
        log.info("reconcile: %d checked, %d reconciled, %d missing", result.checked, result.reconciled, len(result.missing))
        return result

    def _failed(self, message: str, *, at_once: bool = True, key: str | None = None) -> None:
        """One `reconcile_failed` alert per failure while runs keep failing
        (not one every 15 minutes); a failure that may pass (the gateway
        unreachable) only once STALL_RUNS runs in a row could not complete."""
        self._failed_runs += 1
        key = key or message
        if (at_once or self._failed_runs >= STALL_RUNS) and key not in self._failures_alerted:
            alerts.raise_alert(self.engine, "reconcile_failed", message)
            self._failures_alerted.add(key)

    def start(self) -> None:
        def loop() -> None:
            wait = self.first_run_s
            while not self._stop.wait(wait):
                try:
                    self.run_once()
                except Exception:  # noqa: BLE001 - the thread must outlive any one failure
                    log.exception("member reconcile failed")
                wait = self.interval_s

        self._thread = threading.Thread(target=loop, name="member-reconcile", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
