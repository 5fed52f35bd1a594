"""The querying member's side (SPEC §4, §5): make the subject token, sign the
request, decrypt only the alliance-wide sum, check every slot, and check that
the query is in the audit log it was promised to be in."""
from __future__ import annotations

import csv
import hashlib
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from alliance import book_status, checkpoint, db, identity, matching_key, naive, paillier, pki, protocol, report, signing, uds1
from alliance.errors import AllianceError, CryptoError, InvalidInput, Unreachable, UsageError
from alliance.v1 import alliance_pb2 as pb
from alliance_member import answer_checks, onboarding, receipts, store
from alliance_member.answer_trust import AnswerTrust, answer_signature_valid
from alliance_member.feed_memo import FeedMemo
from alliance_member.gateway_client import GatewayClient
from alliance_member.home import MemberHome

log = logging.getLogger("alliance.querier")

SHANGHAI = ZoneInfo("Asia/Shanghai")
# Interim Measures (2016): total outstanding borrowing cap per subject, in fen.
CAP_FEN = {"RESIDENT_ID": 1_000_000 * 100, "USCC": 5_000_000 * 100}
MAX_AMOUNT_FEN = 10**12 * 100


def today_shanghai() -> date:
    return datetime.now(SHANGHAI).date()


@dataclass(frozen=True)
class Subject:
    id_type: str
    canonical_id: str

    @classmethod
    def parse(cls, id_type: str, raw: str) -> "Subject":
        if id_type not in identity.ID_TYPES:
            raise InvalidInput(f"--id-type must be one of {', '.join(identity.ID_TYPES)}, not {id_type!r}")
        return cls(id_type, identity.canonical_id(id_type, raw))


@dataclass(frozen=True)
class Consent:
    consent_id: str
    sha256: bytes

    @classmethod
    def from_args(cls, consent_id: str, *, file: Path | None, sha256_hex: str | None) -> "Consent":
        if (file is None) == (sha256_hex is None):
            raise UsageError("give exactly one of --consent-file and --consent-sha256")
        if file is not None:
            try:
                digest = hashlib.sha256(file.read_bytes()).digest()
            except OSError as exc:
                raise InvalidInput(f"--consent-file: {exc.strerror}: {file}") from None
        else:
            try:
                digest = bytes.fromhex(sha256_hex or "")
            except ValueError:
                digest = b""
            if len(digest) != 32:
                raise InvalidInput("--consent-sha256 must be 64 hex digits")
        return cls(consent_id, digest)


class Querier:
    """A member home that asks the alliance."""

    def __init__(self, home_dir: Path, *, db_url: str | None = None, client: GatewayClient | None = None) -> None:
        self.home = MemberHome(home_dir)
        self.config = self.home.config()
        if self.config.role != "member":
            raise UsageError(f"{home_dir} is an {self.config.role} home; only members query")
        if not self.home.matching_key.exists():
            raise UsageError(f"{home_dir} has no matching key yet (run `alliance member matching-key install`)")
        if not self.home.is_joined():
            raise UsageError(f"{home_dir} has not joined the alliance yet (run `alliance member join`)")
        self.credential = pki.verify_credential(self.home.credential.read_bytes(), pki.load_cert_pem(self.home.ca_cert))
        self.signing_key = pki.load_ed25519_private_pem(self.home.signing_key)
        self.private_key = paillier.PaillierPrivateKey.from_json_bytes(pki.read_private_file(self.home.paillier_key))
        self.public_key = self.private_key.public_key
        self.matching_key = matching_key.load(self.home.matching_key)
        self.verifier = checkpoint.parse_verifier_key(self.home.log_verifier.read_text(encoding="utf-8").strip())
        self._db_url = db_url
        self._engine = None
        self._checkpoints = receipts.KeptCheckpoint(self.home, self.verifier)  # the newest proven checkpoint
        self.client = client or GatewayClient(self.home)
        self._trust: AnswerTrust | None = None
        self._trust_lock = threading.Lock()
        self.naive_baseline = naive.enabled()  # SPEC §8 bench baseline only: a phe ciphertext per figure

    def close(self) -> None:
        self._checkpoints.close()
        self.client.close()

    @property
    def trust(self) -> AnswerTrust:
        """Whose answer signatures count, and with what key (SPEC §5.4)."""
        with self._trust_lock:
            if self._trust is None:
                # the member's own view of the membership feed, shared with its node (SPEC §5.1)
                feed = onboarding.open_feed(self.home, self.client, engine=self.engine())
                self._trust = AnswerTrust(self.engine(), pki.load_cert_pem(self.home.ca_cert), self.client.member_credential,
                                          feed=FeedMemo(feed))
            return self._trust

    # -- requests -----------------------------------------------------------

    def _signed(self, subject: Subject, purpose: str, consent: Consent, as_of: date, mode: int, enc_x: bytes = b"") -> tuple[pb.SignedQuery, bytes]:
        token = identity.subject_token(self.matching_key.key, subject.id_type, subject.canonical_id)
        return self._signed_token(token, purpose, consent, as_of, mode, enc_x), token

    def _signed_token(self, token: bytes, purpose: str, consent: Consent, as_of: date, mode: int, enc_x: bytes = b"") -> pb.SignedQuery:
        """A request is built from the subject token alone (the raw id never leaves this method's caller)."""
        signed = protocol.build_signed_query(
            protocol.QueryParams(
                querier_id=self.config.member_id,
                credential_serial=self.credential.serial,
                subject_token=token,
                matching_key_epoch=self.matching_key.epoch,
                purpose=purpose,
                consent_id=consent.consent_id,
                consent_sha256=consent.sha256,
                as_of=as_of,
                mode=mode,
                paillier_key_fingerprint=self.public_key.fingerprint(),
                timestamp_ms=int(time.time() * 1000),
                precheck_ciphertext=enc_x,
            ),
            self.signing_key,
        )
        signed.known_tree_size = self._checkpoints.size()  # so the receipt carries our consistency proof
        return signed

    def query(self, subject: Subject, *, purpose: str, consent: Consent, as_of: date | None = None) -> dict[str, Any]:
        signed, _ = self._signed(subject, purpose, consent, as_of or today_shanghai(), pb.QUERY_MODE_REPORT)
        return self.read_report(signed, self.client.query(signed))

    def query_token(self, token: bytes, *, purpose: str, consent: Consent, as_of: date | None = None) -> tuple[dict[str, Any], list[str]]:
        """A report on a subject known only by its token under the current
        matching key (the member's own borrowers: its book keeps tokens and
        masked ids, never raw ids), with the ids of the members whose figures
        the report sums (its answering set, SPEC §5.3, §9)."""
        if len(token) != 32:
            raise InvalidInput("a subject token is 32 bytes")
        signed = self._signed_token(token, purpose, consent, as_of or today_shanghai(), pb.QUERY_MODE_REPORT)
        response = self.client.query(signed)
        result = self.read_report(signed, response)
        return result, sorted(r.member_id for r in response.answers)

    def read_report(self, signed: pb.SignedQuery, response: pb.GatewayQueryResponse) -> dict[str, Any]:
        return self._checked(signed, response)()

    def _checked(self, signed: pb.SignedQuery, response: pb.GatewayQueryResponse) -> Callable[[], dict[str, Any]]:
        """Every check of a report (receipt, answer signatures); returns what
        then decrypts it and builds the report, to run now or, screening, on
        another core. Nothing is decrypted before the checks have passed."""
        audit = self.check_receipt(signed, response)
        statuses: dict[str, book_status.BookStatus | None] = {}
        summed = self.check_answers(signed, response, statuses=statuses)

        def decrypted() -> dict[str, Any]:
            if self.naive_baseline:
                sums = naive.decrypt_figures(self.private_key, response.aggregate_ciphertext, len(report.REPORT_FIELDS), summed)
            else:
                m = self.private_key.decrypt(paillier.decode_ciphertext(self.public_key, response.aggregate_ciphertext))
                sums = paillier.unpack(m, len(report.REPORT_FIELDS), summed)
            report.check_plausible(sums, response.members_answered)
            return {
                "query_id": response.query_id,
                "members_asked": response.members_asked,
                "members_answered": response.members_answered,
                "complete": response.complete,
                "report": report.build_report(sums, inquiries_30d=response.inquiries_30d),
                "audit": audit,
                "coverage": answer_checks.coverage_of(signed, response, statuses).to_json(),
            }
        return decrypted

    def check_answers(self, signed: pb.SignedQuery, response: pb.GatewayQueryResponse, *, every_asked: bool = False,
                      statuses: dict[str, "book_status.BookStatus | None"] | None = None) -> int:
        """Before anything is decrypted (SPEC §5.4): the receipts match the
        logged entry exactly, and at least k of them (every asked member's,
        for a precheck) carry a valid answer signature by a member this
        querier trusts, under that member's pinned key. Returns the number of
        summands (every receipt: the aggregate covers them all)."""
        summed = answer_checks.check_answer_count(response)
        receipts.check_entry_answers(response)
        self.trust.sync()
        query_id = response.query_id
        request_digest = signing.sha256(signed.body)
        valid = 0
        for receipt in response.answers:
            if receipt.member_id == self.config.member_id:  # a querier never answers itself: not a summand it can vouch for
                continue
            trusted = self.trust.answer_key(receipt.member_id)
            if trusted is None:
                continue
            if not answer_signature_valid(trusted, query_id, request_digest, receipt):
                trusted = self.trust.refresh(receipt.member_id)  # a key rotation since we pinned it?
                if trusted is None or not answer_signature_valid(trusted, query_id, request_digest, receipt):
                    log.warning("query %s: answer receipt of %s has no valid signature", query_id, receipt.member_id)
                    continue
            valid += 1
            if statuses is not None:  # SPEC §10: only a status its member's valid signature covers counts
                statuses[receipt.member_id] = answer_checks.answer_status(receipt)
        needed = len(response.asked_member_ids) if every_asked else answer_checks.MIN_SUMMANDS
        if valid < needed:
            raise CryptoError(f"gateway response: {valid} valid answer signature(s) from trusted members; "
                              f"{'every asked member' if every_asked else 'at least'} {needed} required")
        return summed

    def precheck(self, subject: Subject, *, amount_yuan: str, purpose: str, consent: Consent, as_of: date | None = None) -> dict[str, Any]:
        as_of = as_of or today_shanghai()
        amount_fen = uds1.parse_yuan(amount_yuan, "amount")
        if not 0 < amount_fen <= MAX_AMOUNT_FEN:
            raise InvalidInput("--amount must be more than 0 and at most 10^12 yuan")
        token = identity.subject_token(self.matching_key.key, subject.id_type, subject.canonical_id)
        own = store.active_balance_fen(self.engine(), token, self.matching_key.epoch, as_of)
        x = CAP_FEN[subject.id_type] - amount_fen - own
        enc_x = paillier.encode_ciphertext(
            self.public_key, paillier.encrypt_signed(self.public_key, x, paillier.fresh_mask(self.public_key))
        )
        signed, _ = self._signed(subject, purpose, consent, as_of, pb.QUERY_MODE_PRECHECK, enc_x)
        response = self.client.precheck(signed)
        audit = self.check_receipt(signed, response)
        if not response.complete or response.members_answered != response.members_asked:
            raise CryptoError("gateway returned a precheck over an incomplete set of members")
        self.check_answers(signed, response, every_asked=True)
        within = paillier.precheck_within_cap(self.private_key, paillier.decode_ciphertext(self.public_key, response.aggregate_ciphertext))
        return {"query_id": response.query_id, "within_cap": within, "audit": audit}

    def screen(self, subjects: Iterable[tuple[int, Subject | AllianceError]], *, purpose: str, consent: Consent,
               as_of: date | None = None) -> Iterator[tuple[int, dict[str, Any] | AllianceError]]:
        """One report per subject over one streamed call. Bad input rows
        yield their error and do not stop the batch."""
        as_of = as_of or today_shanghai()
        sent: dict[str, tuple[int, pb.SignedQuery]] = {}
        errors: list[tuple[int, AllianceError]] = []

        broken: list[BaseException] = []
        # gRPC pulls a request stream ahead as far as flow control lets it, thousands of requests
        # beyond what the gateway works on; each is signed with its time, and one older than the
        # gateway's freshness window (±60 s, SPEC §5.4) is refused. So a request is made only
        # while few enough are unanswered (ScreenAhead): it is signed shortly before its turn.
        ahead = ScreenAhead()
        finished = threading.Event()
        exhausted = threading.Event()  # every input row was read (and every subject sent)

        def requests() -> Iterator[pb.SignedQuery]:
            # An exception here would reach gRPC as "Exception iterating
            # requests!": keep it, end the stream cleanly, raise it after.
            try:
                for line, subject in subjects:
                    if isinstance(subject, AllianceError):
                        errors.append((line, subject))
                        continue
                    while not ahead.acquire(timeout=0.5):
                        if finished.is_set():  # the stream ended (an error, or the caller stopped)
                            return
                    signed, _ = self._signed(subject, purpose, consent, as_of, pb.QUERY_MODE_REPORT)
                    sent[pb.QueryRequestBody.FromString(signed.body).query_id] = (line, signed)
                    yield signed
                exhausted.set()
            except Exception as exc:  # noqa: BLE001 - re-raised below, after the answers already given
                broken.append(exc)

        # SPEC §8: decryption spread over cores. Each report is checked here,
        # in stream order; its decryption (GIL-free powmods) then runs on a
        # worker while the next one is checked. Results leave in input order.
        window: deque[tuple[int, Future[dict[str, Any]] | dict[str, Any] | AllianceError]] = deque()
        stream_error: AllianceError | None = None
        with ThreadPoolExecutor(SCREEN_DECRYPT_WORKERS, thread_name_prefix="screen-decrypt") as pool:
            try:
                try:
                    for response in self.client.screen(requests()):
                        ahead.release()
                        while errors:  # bad rows the request thread met so far, in order
                            window.append(errors.pop(0))
                        line, signed = sent.pop(response.query_id, (0, None))
                        if signed is None:
                            raise CryptoError(f"gateway answered an unknown query id {response.query_id!r}")
                        if response.HasField("error"):
                            window.append((line, _error_from_query_error(response.error)))
                        else:
                            try:
                                window.append((line, pool.submit(self._checked(signed, response))))
                            except AllianceError as exc:
                                window.append((line, exc))
                        while window and (len(window) > 2 * SCREEN_DECRYPT_WORKERS or _settled(window[0][1])):
                            yield _outcome(window.popleft())
                except AllianceError as exc:  # the stream broke: the reports already received still count
                    stream_error = exc
                if stream_error is None and not broken and (sent or not exhausted.is_set()):
                    # The gateway closed the stream as if done: never a silently shorter batch.
                    stream_error = Unreachable(f"the gateway ended the screen early: {len(sent)} subject(s) sent were "
                                               "not answered" + ("" if exhausted.is_set() else ", and the rest were not sent"))
                while errors:
                    window.append(errors.pop(0))
                while window:
                    yield _outcome(window.popleft())
            finally:
                finished.set()
                for _, item in window:  # the caller stopped early: decryptions not started are not needed
                    if isinstance(item, Future):
                        item.cancel()
        if broken:
            raise broken[0]
        if stream_error is not None:
            raise stream_error

    def engine(self):  # type: ignore[no-untyped-def]
        if self._engine is None:
            self._engine = db.make_engine(self.home.db_url(self._db_url))
            store.create_schema(self._engine)
        return self._engine

    # -- audit receipt ------------------------------------------------------

    def check_receipt(self, signed: pb.SignedQuery, response: pb.GatewayQueryResponse) -> dict[str, Any]:
        """The query must be in the log before it is answered: check the
        signed checkpoint, that the logged entry holds exactly our request,
        its inclusion proof, and consistency with the newest checkpoint we
        kept."""
        receipt = response.audit
        cp, carried = receipts.check_logged(signed, response, self.verifier)
        self.prove_consistent(cp, receipt.checkpoint, carried=carried)
        receipts.keep_receipt_checkpoint(self.home, cp, receipt.checkpoint, run=self._checkpoints.run)
        return {"leaf_index": receipt.leaf_index, "checkpoint": receipt.checkpoint}

    def prove_consistent(self, cp: checkpoint.Checkpoint, note: str, *,
                         carried: tuple[int, list[bytes]] | None = None) -> None:
        """Prove ``cp`` consistent with the newest checkpoint this querier
        kept (SPEC §6), whatever its size and however soon after the last
        one: a newer one must extend the kept one (and is kept instead), an
        older one must be a prefix of it (:class:`receipts.KeptCheckpoint`)."""
        self._checkpoints.prove_consistent(cp, note, lambda first, second: self.client.consistency_proof(first, second),
                                           carried=carried)


SCREEN_DECRYPT_WORKERS = max(1, os.cpu_count() or 1)
# Requests of a screen made but not yet answered (ScreenAhead). The gateway
# works on 16 of a stream at once and reads the next 8 together once 8 places
# are free (gateway/screen_rpcs.py), so at least 24 keep its next wave waiting
# on the wire; up to 64 keep it there even while this process is slow to make
# requests (2,000-subject screens at 10 members: 32 → 64 took the mean member
# call from 5.2 to 8.4 subjects). Never more than SCREEN_AHEAD_S worth of
# answers at the rate they came back, so at a steady pace a request is about
# that old when the gateway reaches it, inside its ±60 s freshness window. A
# request already made cannot be re-signed: if the gateway's pace for this
# stream falls more than threefold at once (and below about one subject a
# second; 0.5 with a fixed 32), the last requests made may be refused
# `stale_timestamp`, each as its own subject's error (the stream goes on, and
# `member screen --resume` asks them again).
SCREEN_AHEAD_MIN = 24
SCREEN_AHEAD = 64
SCREEN_AHEAD_S = 20.0


class ScreenAhead:
    """How many requests of a screen may be made and not yet answered:
    the answers of the last SCREEN_AHEAD_S seconds (about the rate times
    that long), within [SCREEN_AHEAD_MIN, SCREEN_AHEAD]. ``acquire`` before
    making a request, ``release`` on each answer. Thread-safe."""

    def __init__(self, low: int = SCREEN_AHEAD_MIN, high: int = SCREEN_AHEAD, horizon_s: float = SCREEN_AHEAD_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.low, self.high, self.horizon_s, self._clock = low, high, horizon_s, clock
        self._unanswered = 0
        self._answered: deque[float] = deque(maxlen=high)  # times of recent answers; more than `high` never matter
        self._changed = threading.Condition()

    def limit(self) -> int:
        with self._changed:
            return self._limit()

    def _limit(self) -> int:
        since = self._clock() - self.horizon_s
        while self._answered and self._answered[0] < since:
            self._answered.popleft()
        return max(self.low, len(self._answered))

    def acquire(self, timeout: float) -> bool:
        """One more request may be made; False after ``timeout`` seconds without a place."""
        with self._changed:
            if self._unanswered >= self._limit():
                self._changed.wait(timeout)
                if self._unanswered >= self._limit():
                    return False
            self._unanswered += 1
            return True

    def release(self) -> None:
        with self._changed:
            self._unanswered = max(0, self._unanswered - 1)
            self._answered.append(self._clock())
            self._changed.notify()


def _settled(item: Future[dict[str, Any]] | dict[str, Any] | AllianceError) -> bool:
    return not isinstance(item, Future) or item.done()


def _outcome(entry: tuple[int, Future[dict[str, Any]] | dict[str, Any] | AllianceError]) -> tuple[int, dict[str, Any] | AllianceError]:
    """A screened line's report or error (a decryption's AllianceError is the
    line's; anything else is a bug and propagates, as before)."""
    line, item = entry
    if not isinstance(item, Future):
        return line, item
    try:
        return line, item.result()
    except AllianceError as exc:
        return line, exc


def _error_from_query_error(err: pb.QueryError) -> AllianceError:
    from alliance.errors import Refused

    if err.exit_code == 5:
        return Unreachable(err.message, reason=err.reason)
    if err.exit_code == 3:
        return InvalidInput(err.message)
    return Refused(err.message, reason=err.reason)


SCREEN_COLUMNS = ("id_type", "id_number")


@dataclass(frozen=True)
class ScreenRow:
    """One subject of a screening file: its line, a masked id for the output
    (never the raw number) and the parsed subject or why the row is bad."""

    line: int
    masked_id: str
    subject: Subject | AllianceError


def read_screen_csv(path: Path) -> Iterator[tuple[int, Subject | AllianceError]]:
    """Subjects to screen: a UTF-8 CSV with id_type and id_number columns.

    The file and its header are checked now (InvalidInput, before any query
    is sent); rows are read lazily, and a bad row (an invalid ID, bytes that
    are not UTF-8) yields its error with its line number without stopping."""
    rows = screen_rows(path)
    return ((r.line, r.subject) for r in rows)


def screen_rows(path: Path) -> Iterator[ScreenRow]:
    """As read_screen_csv, with each row's masked id; header checked eagerly."""
    try:
        fh = path.open("rb")
    except OSError as exc:
        raise InvalidInput(f"{path}: {exc.strerror}") from None
    bad_bytes: dict[int, str] = {}
    lines = _decoded_lines(fh, bad_bytes)
    reader = csv.reader(lines)
    try:
        header = next(reader, None)
    except csv.Error as exc:
        fh.close()
        raise InvalidInput(f"{path}:1: not a CSV header: {exc}") from None
    if bad_bytes.get(1):
        fh.close()
        raise InvalidInput(f"{path}:1: {bad_bytes[1]}")
    if header is None or not any(h.strip() for h in header):
        fh.close()
        raise InvalidInput(f"{path}: empty file; expected a header line id_type,id_number")
    names = [identity.normalize_text(h).lower() for h in header]
    missing = [c for c in SCREEN_COLUMNS if c not in names]
    if missing:
        fh.close()
        raise InvalidInput(
            f"{path}:1: missing column(s) {', '.join(missing)}; the first line must be the header id_type,id_number"
        )
    idx = {c: names.index(c) for c in SCREEN_COLUMNS}
    return _screen_rows(path, fh, reader, idx, bad_bytes)


def _decoded_lines(fh: Any, bad: dict[int, str]) -> Iterator[str]:
    """Decode line by line so that one undecodable byte spoils only its line."""
    for number, raw in enumerate(fh, start=1):
        if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            bad[number] = (f"byte 0x{raw[exc.start]:02x} at column {exc.start + 1} is not UTF-8 "
                           "(save the file as UTF-8; GBK is not accepted)")
            yield raw.decode("utf-8", errors="replace")


def _screen_rows(path: Path, fh: Any, reader: Any, idx: dict[str, int], bad_bytes: dict[int, str]) -> Iterator[ScreenRow]:
    with fh:
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                yield ScreenRow(reader.line_num, "", InvalidInput(f"{path}:{reader.line_num}: not valid CSV: {exc}"))
                continue
            line = reader.line_num
            if not any(cell.strip() for cell in row):
                continue  # blank line
            raw_type = row[idx["id_type"]] if idx["id_type"] < len(row) else ""
            raw_id = row[idx["id_number"]] if idx["id_number"] < len(row) else ""
            if line in bad_bytes:
                yield ScreenRow(line, "", InvalidInput(f"{path}:{line}: {bad_bytes.pop(line)}"))
                continue
            try:
                subject = Subject.parse(identity.normalize_text(raw_type), raw_id)
            except AllianceError as exc:
                field = "id_type" if identity.normalize_text(raw_type) not in identity.ID_TYPES else "id_number"
                yield ScreenRow(line, _mask_raw(raw_id), InvalidInput(f"{path}:{line}: {field}: {exc}"))
                continue
            yield ScreenRow(line, identity.masked_id(subject.canonical_id), subject)


def _mask_raw(raw: str) -> str:
    """A masked form of an id that failed to parse (never echo it whole)."""
    text = identity.normalize_text(raw)
    if len(text) <= 8:
        return "*" * len(text)
    return text[:4] + "*" * (len(text) - 8) + text[-4:]
