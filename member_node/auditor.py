"""The auditor's tools behind `alliance audit` (SPEC §6, §7): fetch and keep
signed checkpoints, verify the whole log, prove one entry, watch for
credentials issued in a member's name, and report on members' querying.

The auditor trusts only what is in its home: the alliance CA certificate,
the log's verifier key (``log-verifier.txt``) and what it kept itself —
every checkpoint it ever accepted (``checkpoints/*.note``) and the leaf
hashes of the last tree it verified entry by entry
(``checkpoints/verified-leaves.bin``). Each new checkpoint must be
consistent with those, so the operator can neither roll the log back nor
show this auditor a fork without it being named. Verification itself is
pure and lives in :mod:`alliance.audit_verify`."""
from __future__ import annotations

import base64
import json
import statistics
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from cryptography import x509
from google.protobuf.message import DecodeError

from alliance import audit_entry, audit_verify, cosignature, merkle, pki, protocol
from alliance import checkpoint as tlog
from alliance._internal.files import write_atomic
from alliance.checkpoint import Checkpoint
from alliance.errors import CryptoError, InvalidInput, UsageError, VerificationFailed
from alliance.v1 import alliance_pb2 as pb
from alliance_member import witness_audit
from alliance_member.home import MemberHome

SHANGHAI = ZoneInfo("Asia/Shanghai")
CHECKPOINT_DIR = "checkpoints"
REJECTED_DIR = "rejected"
VERIFIED_LEAVES = "verified-leaves.bin"
VERIFIED_META = "verified.json"
SPIKE_FACTOR = 3


class LogSource(Protocol):
    """What the auditor needs from the gateway (GatewayClient provides it)."""

    def checkpoint(self) -> str: ...
    def entries(self, start: int, end: int) -> Iterable[Any]: ...  # items with .index and .data
    def inclusion_proof(self, index: int, tree_size: int) -> list[bytes]: ...
    def consistency_proof(self, first: int, second: int) -> list[bytes]: ...
    def close(self) -> None: ...


def connect(home: MemberHome) -> LogSource:
    """A mutual-TLS client for the gateway named in the home (replaced in tests)."""
    from alliance_member.gateway_client import GatewayClient

    return GatewayClient(home)


@contextmanager
def _source(home: MemberHome, client: LogSource | None) -> Iterator[LogSource]:
    if client is not None:
        yield client
        return
    source = connect(home)
    try:
        yield source
    finally:
        source.close()


# --------------------------------------------------------------------------
# What the auditor keeps


@dataclass(frozen=True)
class Kept:
    checkpoint: Checkpoint
    note: str
    path: Path


class AuditorState:
    """The auditor home: trust anchors, kept checkpoints, last verified tree."""

    def __init__(self, home: MemberHome | Path | str) -> None:
        self.home = home if isinstance(home, MemberHome) else MemberHome(Path(home))
        self.dir = self.home.path / CHECKPOINT_DIR
        for path, what in ((self.home.ca_cert, "the alliance CA certificate"), (self.home.log_verifier, "the log verifier key")):
            if not path.exists():
                raise UsageError(f"{self.home.path} is not an auditor home: {path.name} ({what}) is missing; "
                                 "run `alliance member keygen --role auditor` and `alliance member join` first")
        self.verifier = tlog.parse_verifier_key(self.home.log_verifier.read_text(encoding="utf-8"))
        self._ca_cert: x509.Certificate | None = None

    @property
    def ca_cert(self) -> x509.Certificate:
        if self._ca_cert is None:
            self._ca_cert = pki.load_cert_pem(self.home.ca_cert)
        return self._ca_cert

    def open(self, note: str) -> Checkpoint:
        """Check the log's signature on a checkpoint from the gateway."""
        try:
            return tlog.open_checkpoint(note, self.verifier)
        except CryptoError as exc:
            raise CryptoError(f"the gateway's checkpoint is not signed by the log key in {self.home.log_verifier}: {exc}") from None

    def kept(self) -> list[Kept]:
        """Every checkpoint kept so far, smallest first; each re-checked
        against the verifier key, so a planted file is refused loudly."""
        kept = []
        for path in sorted(self.dir.glob("*.note")) if self.dir.exists() else ():
            note = path.read_text(encoding="utf-8")
            try:
                kept.append(Kept(tlog.open_checkpoint(note, self.verifier), note, path))
            except CryptoError as exc:
                raise CryptoError(f"kept checkpoint {path} does not verify ({exc}); remove it if you did not put it there") from None
        return sorted(kept, key=lambda k: k.checkpoint.size)

    def keep(self, cp: Checkpoint, note: str) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / f"{cp.size:012d}-{cp.root_hash.hex()[:16]}.note"
        if not path.exists():
            write_atomic(path, note.encode("utf-8"))
        return path

    def reject(self, cp: Checkpoint | None, note: str, why: str) -> Path:
        """Keep a refused checkpoint as evidence: a signed checkpoint that
        contradicts a kept one proves the operator misbehaved."""
        folder = self.dir / REJECTED_DIR
        folder.mkdir(parents=True, exist_ok=True)
        stem = f"{cp.size:012d}-{cp.root_hash.hex()[:16]}" if cp else "unreadable"
        path = folder / f"{stem}.note"
        write_atomic(path, note.encode("utf-8"))
        write_atomic(folder / f"{stem}.why.txt", (why + "\n").encode("utf-8"))
        return path

    def trusted_leaves(self, kept: Sequence[Kept]) -> bytes | None:
        """Leaf hashes of the last verified tree, if intact and matching a
        kept checkpoint (otherwise ignored: they only sharpen fork reports)."""
        try:
            meta = json.loads((self.dir / VERIFIED_META).read_text(encoding="utf-8"))
            packed = (self.dir / VERIFIED_LEAVES).read_bytes()
            size, root = int(meta["size"]), bytes.fromhex(meta["root"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if len(packed) != size * merkle.HASH_SIZE or not any(k.checkpoint.size == size and k.checkpoint.root_hash == root for k in kept):
            return None
        if audit_verify.Tree.from_packed(packed).root() != root:
            return None
        return packed

    def save_verified(self, cp: Checkpoint, tree: audit_verify.Tree) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        write_atomic(self.dir / VERIFIED_LEAVES, tree.packed())
        write_atomic(self.dir / VERIFIED_META, json.dumps({"size": cp.size, "root": cp.root_hash.hex()}).encode())


def _relevant(kept: Sequence[Kept], size: int) -> list[Checkpoint]:
    """Kept checkpoints are mutually consistent (each was checked when kept),
    so checking a new one against the newest no larger than it, and every one
    at least as large, covers them all with few proofs."""
    smaller = [k.checkpoint for k in kept if k.checkpoint.size < size]
    return smaller[-1:] + [k.checkpoint for k in kept if k.checkpoint.size >= size]


def _fail(state: AuditorState, cp: Checkpoint | None, note: str, exc: VerificationFailed) -> VerificationFailed:
    path = state.reject(cp, note, str(exc))
    return VerificationFailed(f"{exc} (checkpoint kept as evidence in {path})", entry=exc.entry)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# --------------------------------------------------------------------------
# Commands


def checkpoint(home: MemberHome | Path | str, *, client: LogSource | None = None) -> dict[str, Any]:
    """Fetch the signed checkpoint, prove it consistent with the newest kept
    one (refusing a rollback or a fork, naming the first entry concerned), keep it."""
    state = AuditorState(home)
    with _source(state.home, client) as source:
        cp, note, kept = _current_checkpoint(state, source)
    previous = max((k.checkpoint.size for k in kept), default=None)
    return {
        "ok": True, "origin": cp.origin, "tree_size": cp.size, "root_hash": _b64(cp.root_hash),
        "previous_size": previous, "kept_checkpoints": len(state.kept()), "checkpoint": note,
    }


def _current_checkpoint(state: AuditorState, source: LogSource) -> tuple[Checkpoint, str, list[Kept]]:
    note = source.checkpoint()
    cp = state.open(note)
    kept = state.kept()
    trusted = state.trusted_leaves(kept)
    problem = audit_verify.check_history(cp, _relevant(kept, cp.size), source.consistency_proof,
                                         trusted=audit_verify.Tree.from_packed(trusted) if trusted else None)
    if problem is not None:
        raise _fail(state, cp, note, VerificationFailed(f"entry {problem[0]}: {problem[1]}", entry=problem[0]))
    state.keep(cp, note)
    return cp, note, kept


def verify(home: MemberHome | Path | str, *, client: LogSource | None = None, workers: int | None = None,
           witness_wait_s: float = 0.0, now_s: int | None = None) -> dict[str, Any]:
    """Everything of SPEC §6: the entries rebuild the signed tree, the signed
    checkpoint is consistent with every kept one, and every entry's contents
    check out; for a v2 log also §6.1: the log is witnessed (see
    :func:`_require_witnesses`). Raises VerificationFailed naming the first
    bad entry (InsufficientWitnesses, entry None, when nothing new is
    witnessed)."""
    state = AuditorState(home)
    membership: list[tuple[int, dict[str, Any]]] = []
    v2 = []

    def collect(seq: int, entry: dict[str, Any]) -> None:
        if entry["kind"] == "v2_started":
            v2.append(seq)
        if entry["kind"] in audit_entry.MEMBERSHIP_KINDS:
            membership.append((seq, entry))

    with _source(state.home, client) as source:
        witnessed = _witnessed_notes(source, witness_wait_s)
        note = source.checkpoint()
        cp = state.open(note)
        kept = state.kept()
        try:
            result = audit_verify.verify_log(
                ((e.index, e.data) for e in source.entries(0, cp.size)), cp, state.ca_cert,
                kept=_relevant(kept, cp.size), consistency_proof=source.consistency_proof,
                trusted_leaves=state.trusted_leaves(kept), workers=workers, on_entry=collect,
            )
        except VerificationFailed as exc:
            raise _fail(state, cp, note, exc) from None
        state.keep(cp, note)
        state.save_verified(cp, result.tree)
        witness_doc: dict[str, Any] = {}
        if v2:
            witness_doc = _require_witnesses(state, source, witnessed, cp, result.tree, membership,
                                             int(time.time()) if now_s is None else now_s)
    return {**result.to_json(), **witness_doc, "kept_checkpoints": len(state.kept()), "checkpoint": note}


WITNESSED_NOTE = "witnessed.note"


def _witnessed_notes(source: Any, wait_s: float) -> list[str] | None:
    """Every cosigned checkpoint the gateway shows (the newest cut, and each
    witness's newest). With ``wait_s``, first wait (polling) until the newest
    cut covers the log's current size and carries as many cosignatures as any
    checkpoint does, so a verify right after a query need not fail."""
    if not hasattr(source, "witnessed_checkpoints"):
        return None
    deadline = time.monotonic() + wait_s
    target = tlog.Checkpoint.parse(_text_of(source.checkpoint())).size if wait_s > 0 else 0
    while True:
        newest, per_witness = source.witnessed_checkpoints()
        if not newest:
            notes: list[str] = []
        else:
            notes = [newest, *per_witness]
            lines = [len(cosignature.signature_lines(n)) for n in notes]
            if tlog.Checkpoint.parse(_text_of(newest)).size >= target and lines[0] >= max(lines) and lines[0] > 1:
                return notes
        if time.monotonic() >= deadline:
            return notes
        time.sleep(0.5)


def _text_of(note: str) -> str:
    return note[:note.rfind("\n\n") + 1]


def _require_witnesses(state: AuditorState, source: Any, notes: list[str] | None, cp: Checkpoint,
                       tree: audit_verify.Tree, membership: list[tuple[int, dict[str, Any]]], now_s: int) -> dict[str, Any]:
    """SPEC §6.1 for the auditor. Every cosigned checkpoint shown must be
    consistent with the verified tree (otherwise someone was shown another
    log); the log counts as verified up to the newest checkpoint cosigned by
    a quorum ⌊m/2⌋ + 1 of the m sponsored members active in the last
    witnessed checkpoint this auditor kept. Bootstrap: on the first run
    (nothing kept) the m members are those active in the candidate
    checkpoint's own view (trust on first use, reported as
    "witness_bootstrap": true), as the first kept checkpoint already is."""
    path = state.dir / WITNESSED_NOTE
    kept_note = path.read_text(encoding="utf-8") if path.exists() else None
    kept_w = state.open(kept_note) if kept_note else None
    if kept_w is not None and (kept_w.size > tree.size or tree.root(kept_w.size) != kept_w.root_hash):
        raise witness_audit.SplitView(f"split_view: the kept witnessed checkpoint of size {kept_w.size} is not a prefix of the log")
    judged = witness_audit.judge(
        notes or [], state.verifier, tree_root=tree.root, tree_size=tree.size, consistency_proof=source.consistency_proof,
        membership=lambda size: witness_audit.sponsored_active(membership, size),
        kept_size=kept_w.size if kept_w else None, now_s=now_s)
    if judged.witnessed is not None and (kept_w is None or judged.witnessed.size > kept_w.size):
        witnessed, witnessed_note = judged.witnessed, judged.witnessed_note
        assert witnessed_note is not None
        state.keep(witnessed, witnessed_note)
        write_atomic(path, witnessed_note.encode("utf-8"))
    elif kept_w is not None and cp.size <= kept_w.size:
        witnessed = kept_w  # nothing new since the last witnessed checkpoint
    else:
        have = f"newest kept witnessed size {kept_w.size}" if kept_w else "no witnessed checkpoint kept yet"
        raise witness_audit.InsufficientWitnesses(
            f"no checkpoint newer than the {have} is cosigned by {judged.quorum} of the {len(judged.eligible)} "
            f"sponsored active members ({', '.join(judged.eligible) or 'none'}); the log has {cp.size} entries")
    later = list(range(witnessed.size, cp.size))
    return {
        "witnessed_size": witnessed.size,
        "not_yet_witnessed": {"count": len(later), "entries": later[:1000]},
        "witness_quorum": judged.quorum, "eligible_witnesses": judged.eligible,
        "witness_bootstrap": kept_w is None,
        "witnesses": judged.witnesses, "lagging_witnesses": judged.lagging,
    }


def prove(home: MemberHome | Path | str, seq: int, *, client: LogSource | None = None) -> dict[str, Any]:
    """Show that entry ``seq`` is in the log under a signed checkpoint
    consistent with everything kept: the entry, its leaf hash and its
    RFC 9162 inclusion proof, verified."""
    state = AuditorState(home)
    with _source(state.home, client) as source:
        cp, note, _ = _current_checkpoint(state, source)
        if not 0 <= seq < cp.size:
            raise InvalidInput(f"there is no entry {seq}: the log has {cp.size} entries (0..{cp.size - 1})")
        served = list(source.entries(seq, seq + 1))
        if len(served) != 1 or served[0].index != seq:
            raise VerificationFailed(f"entry {seq}: the gateway did not serve it", entry=seq)
        data = bytes(served[0].data)
        entry = audit_entry.decode(data, index=seq)
        leaf = merkle.leaf_hash(data)
        proof = source.inclusion_proof(seq, cp.size)
    try:
        merkle.verify_inclusion(leaf, seq, cp.size, proof, cp.root_hash)
    except merkle.ProofError as exc:
        raise VerificationFailed(f"entry {seq}: not in the signed tree ({exc})", entry=seq) from None
    return {
        "ok": True, "seq": seq, "tree_size": cp.size, "root_hash": _b64(cp.root_hash), "leaf_hash": leaf.hex(),
        "proof": [p.hex() for p in proof], "entry": entry, "checkpoint": note,
    }


def _verified_entries(state: AuditorState, source: LogSource, on_entry: Any) -> Checkpoint:
    """Fetch every entry, check the structure and history (not contents:
    that is `verify`), and hand each decoded entry to ``on_entry``."""
    note = source.checkpoint()
    cp = state.open(note)
    kept = state.kept()
    try:
        audit_verify.verify_log(
            ((e.index, e.data) for e in source.entries(0, cp.size)), cp, state.ca_cert,
            kept=_relevant(kept, cp.size), consistency_proof=source.consistency_proof,
            trusted_leaves=state.trusted_leaves(kept), contents=False, on_entry=on_entry,
        )
    except VerificationFailed as exc:
        raise _fail(state, cp, note, exc) from None
    state.keep(cp, note)
    return cp


# --------------------------------------------------------------------------
# watch: certificate-transparency style monitoring of one member's credentials


def watch(home: MemberHome | Path | str, member_id: str, expected_fingerprint: str | bytes | None = None, *,
          since: int = 0, client: LogSource | None = None) -> list[dict[str, Any]]:
    """Every credential issued in ``member_id``'s name (from entry ``since``
    on), each judged: ``alert`` is true when its fingerprint is not the
    expected one, when it changes the member's keys without the previous
    key's endorsement, or when the CA signature fails. As in certificate
    transparency, the member learns of any credential the CA issued for it."""
    pki.check_member_id(member_id)
    expected = _fingerprint(expected_fingerprint)
    state = AuditorState(home)
    found: list[tuple[int, dict[str, Any]]] = []

    def collect(seq: int, entry: dict[str, Any]) -> None:
        if entry["kind"] == "credential_issued" and entry.get("member_id") == member_id:
            found.append((seq, entry))

    with _source(state.home, client) as source:
        _verified_entries(state, source, collect)
    alerts, pin = [], None
    for seq, entry in found:
        alert, pin = _judge_credential(state.ca_cert, seq, entry, pin, expected)
        if seq >= since:
            alerts.append(alert)
    return alerts


def _fingerprint(value: str | bytes | None) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    return pki.parse_fingerprint(value)


def _judge_credential(ca_cert: x509.Certificate, seq: int, entry: dict[str, Any], pin: pki.Pin | None,
                      expected: bytes | None) -> tuple[dict[str, Any], pki.Pin | None]:
    alert = {
        "seq": seq, "time": entry.get("time"), "member_id": entry.get("member_id"), "name": entry.get("name"),
        "role": entry.get("role"), "serial": entry.get("serial"), "endpoint": entry.get("endpoint"),
        "fingerprint": None, "keys": None, "expected": None, "alert": False, "why": [],
    }
    try:
        cred = pb.Credential.FromString(bytes.fromhex(entry.get("credential", "")))
        when = datetime.strptime(entry["time"][:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc)
        body = pki.verify_credential(cred, ca_cert, now=int(when.timestamp()))
    except Exception as exc:  # noqa: BLE001 - whatever is wrong with it, the member must hear of it
        alert.update(alert=True, keys="invalid", why=[f"the credential does not verify under the alliance CA: {exc}"])
        return alert, pin
    alert["fingerprint"] = pki.format_fingerprint(body.member_fingerprint)
    try:
        alert["keys"], new_pin = pki.check_pin(pin, cred, body)
    except CryptoError as exc:
        alert.update(keys="unendorsed", alert=True)
        alert["why"].append(f"new keys not endorsed by the member's previous key: {exc}")
        new_pin = pin
    if expected is not None:
        alert["expected"] = body.member_fingerprint == expected
        if not alert["expected"]:
            alert["alert"] = True
            alert["why"].append(f"fingerprint {alert['fingerprint']} is not the expected {pki.format_fingerprint(expected)}")
    return alert, new_pin


# --------------------------------------------------------------------------
# report: who queried, why, what was refused, and unusual days


def report(home: MemberHome | Path | str, date_from: date, date_to: date, member: str | None = None, *,
           client: LogSource | None = None) -> list[dict[str, Any]]:
    """Per member over [date_from, date_to] (Asia/Shanghai days), from a log
    checked against a signed, consistent checkpoint: see :func:`report_rows`."""
    if date_to < date_from:
        raise UsageError(f"--to {date_to} is before --from {date_from}")
    state = AuditorState(home)
    queries: list[dict[str, Any]] = []

    def collect(_seq: int, entry: dict[str, Any]) -> None:
        if entry["kind"] in audit_entry.QUERY_KINDS:
            queries.append({**{k: entry.get(k) for k in ("querier_id", "received_at_ms", "outcome", "reason")},
                            "purpose": query_purpose(entry)})

    with _source(state.home, client) as source:
        _verified_entries(state, source, collect)
    return report_rows(queries, date_from, date_to, member)


UNREADABLE_REQUEST = "unreadable request"


def query_purpose(entry: dict[str, Any]) -> str:
    """The purpose a query entry records; for a request refused before the
    gateway parsed it (wrong role, unknown, suspended or revoked member…) the
    entry's ``purpose`` is null, so it is read from the logged request body.
    A body that does not parse, or was too large to be logged, is
    :data:`UNREADABLE_REQUEST`."""
    purpose = entry.get("purpose")
    if isinstance(purpose, str) and purpose:
        return purpose
    raw = entry.get("request_body")
    if isinstance(raw, str):
        try:
            body = pb.QueryRequestBody.FromString(bytes.fromhex(raw))
        except (ValueError, DecodeError):
            return UNREADABLE_REQUEST
        name = protocol.purpose_name(body.purpose)
        if name in protocol.PURPOSES:
            return name
    return UNREADABLE_REQUEST


def shanghai_date(ms: int) -> date:
    return datetime.fromtimestamp(ms / 1000, tz=SHANGHAI).date()


def report_rows(entries: Iterable[dict[str, Any]], date_from: date, date_to: date, member: str | None = None) -> list[dict[str, Any]]:
    """Pure aggregation over query/precheck entries. Per querying member:
    queries (accepted and refused) by purpose, refusals by reason, quota hits
    (refusals for quota_exceeded), and spike days — days whose volume exceeds
    3× the member's median daily volume, the median taken over the days in
    range on which it queried at all (counting idle days would make any
    activity a spike). An entry without a purpose is counted under the one
    its request body states, or :data:`UNREADABLE_REQUEST`."""
    per_member: dict[str, dict[str, Any]] = {}
    days: dict[str, Counter[date]] = defaultdict(Counter)
    for e in entries:
        querier = e.get("querier_id")
        if not isinstance(querier, str) or not isinstance(e.get("received_at_ms"), int):
            continue
        if member is not None and querier != member:
            continue
        day = shanghai_date(e["received_at_ms"])
        if not date_from <= day <= date_to:
            continue
        row = per_member.setdefault(querier, _empty_row(querier))
        row["queries"] += 1
        row["by_purpose"][query_purpose(e)] += 1
        if e.get("outcome") == "accepted":
            row["accepted"] += 1
        else:
            row["refused"] += 1
            row["refusals"][e.get("reason") or "?"] += 1
            row["quota_hits"] += e.get("reason") == "quota_exceeded"
        days[querier][day] += 1
    if member is not None and member not in per_member:
        per_member[member] = _empty_row(member)
    rows = []
    for member_id in sorted(per_member):
        row = per_member[member_id]
        volumes = days[member_id]
        median = statistics.median(volumes.values()) if volumes else 0
        row["by_purpose"] = dict(sorted(row["by_purpose"].items()))
        row["refusals"] = dict(sorted(row["refusals"].items()))
        row["active_days"] = len(volumes)
        row["median_daily"] = median
        row["spike_days"] = [{"date": d.isoformat(), "queries": n} for d, n in sorted(volumes.items()) if n > SPIKE_FACTOR * median]
        rows.append(row)
    return rows


def _empty_row(member_id: str) -> dict[str, Any]:
    return {"member_id": member_id, "queries": 0, "accepted": 0, "refused": 0, "by_purpose": Counter(),
            "refusals": Counter(), "quota_hits": 0}


CSV_COLUMNS = ("member_id", "queries", "accepted", "refused", *(f"purpose_{p}" for p in protocol.PURPOSES),
               "purpose_other", "quota_hits", "refusals", "active_days", "median_daily", "spike_days")


def csv_row(row: dict[str, Any]) -> dict[str, Any]:
    """One flat CSV record per member; maps as `key=count;key=count`."""
    other = sum(n for p, n in row["by_purpose"].items() if p not in protocol.PURPOSES)
    return {
        "member_id": row["member_id"], "queries": row["queries"], "accepted": row["accepted"], "refused": row["refused"],
        **{f"purpose_{p}": row["by_purpose"].get(p, 0) for p in protocol.PURPOSES}, "purpose_other": other,
        "quota_hits": row["quota_hits"], "refusals": ";".join(f"{k}={v}" for k, v in row["refusals"].items()),
        "active_days": row["active_days"], "median_daily": row["median_daily"],
        "spike_days": ";".join(f"{d['date']}={d['queries']}" for d in row["spike_days"]),
    }


__all__ = ["CSV_COLUMNS", "UNREADABLE_REQUEST", "AuditorState", "LogSource", "checkpoint", "connect", "csv_row", "prove",
           "query_purpose", "report", "report_rows", "verify", "watch"]
