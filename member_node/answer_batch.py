"""AnswerBatch (SPEC §8 "many subjects per member call"): many queries per
gRPC call, with the book written in one transaction instead of one per answer.

Each item gets exactly what a single Answer gives it (MemberService.admit,
.ciphertext, .signed are the same code): every check, one fixed-width
ciphertext under a fresh single-use mask, a signed answer with the book
status, its seen_queries and answer_journal rows. A refused item leaves no row.

Why no SAVEPOINTs: the stdlib sqlite3 driver does not open a transaction
before a SAVEPOINT, so releasing the first savepoint would commit on its own
and the batch would silently stop being one transaction. Instead every item
is validated before anything is written: replays inside the batch are
refused from the batch itself, replays of earlier answers from one SELECT
of the batch's ids, and only then are the rows of the answered items
inserted. A concurrent writer of the same id (another call answering that
id between our SELECT and INSERT) makes the INSERT fail on its primary key:
the whole transaction rolls back and is redone, and the SELECT then sees the
other answer, so that item is refused as a replay and nothing is lost."""
from __future__ import annotations

import logging
import time

import grpc
from sqlalchemy import Connection, bindparam, select
from sqlalchemy.exc import IntegrityError

from alliance import db, log_rules
from alliance.errors import Refused
from alliance.v1 import alliance_pb2 as pb
from alliance_member import store
from alliance_member.application_alerts import AnswerNotice
from alliance_member.reconcile import journal_rows
from alliance_member.service import (_REMEMBER, INTERNAL_DETAILS, Admitted, MemberService, has_active_loan, refusal_code,
                                     refusal_details, replay_refusal)

log = logging.getLogger("alliance.member")

_TRANSACTION_ATTEMPTS = 3
# Built once (the answer path binds parameters only).
_SEEN_ONE = select(store.seen_queries.c.query_id).where(store.seen_queries.c.query_id == bindparam("id"))
_SEEN_AMONG = select(store.seen_queries.c.query_id).where(store.seen_queries.c.query_id.in_(bindparam("ids", expanding=True)))
# What one item ended with: None (answered), its refusal, or the bug that failed it.
Outcome = Refused | Exception | None


def check_batch_bounds(request: pb.MemberQueryBatch, context: grpc.ServicerContext) -> None:
    """SPEC §5.4 applies per item; the batch as a whole is bounded too, so
    one call cannot hold the member's book (one transaction) for long."""
    count, size = len(request.items), request.ByteSize()
    if count > log_rules.MAX_BATCH_ITEMS or size > log_rules.MAX_BATCH_BYTES:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                      f"malformed_request: a batch of {count} items and {size} bytes exceeds "
                      f"{log_rules.MAX_BATCH_ITEMS} items or {log_rules.MAX_BATCH_BYTES} bytes")


def answer_batch(service: MemberService, request: pb.MemberQueryBatch
                 ) -> tuple[pb.MemberQueryBatchResponse, list[AnswerNotice], list[Outcome]]:
    """The response (position i answers item i), the notices of the
    answered items (for the application alerts, once sent) and each item's outcome."""
    now_ms = int(service.clock() * 1000)
    items = list(request.items)
    outcomes: list[Outcome] = [None] * len(items)
    admitted: list[tuple[int, Admitted]] = []
    in_batch: set[str] = set()
    for i, item in enumerate(items):
        try:
            a = service.admit(item, now_ms)
            if a.body.query_id in in_batch:  # the same id twice in one batch: the second is a replay
                raise replay_refusal(a.body.query_id)
            in_batch.add(a.body.query_id)
            admitted.append((i, a))
        except Refused as exc:
            outcomes[i] = exc
        except Exception as exc:  # noqa: BLE001 - a bug costs this item, never the batch
            log.exception("internal error checking a batched query")
            outcomes[i] = exc
    ciphertexts: dict[int, tuple[bytes, bool]] = {}
    if admitted:
        try:
            ciphertexts = _write(service, admitted, outcomes, now_ms)
        except Exception as exc:  # noqa: BLE001 - the book could not be written: no admitted item is answered
            log.exception("internal error writing a batch of answers")
            for i, _ in admitted:
                outcomes[i] = exc
            ciphertexts = {}
    response = pb.MemberQueryBatchResponse()
    notices: list[AnswerNotice] = []
    by_index = dict(admitted)
    for i, outcome in enumerate(outcomes):
        slot = response.items.add()
        if i in ciphertexts and outcome is None:
            try:  # signed only now: the rows are committed
                ciphertext, borrower = ciphertexts[i]
                answer, notice = service.signed(by_index[i], ciphertext, now_ms, active_borrower=borrower)
            except Exception as exc:  # noqa: BLE001
                log.exception("internal error signing a batched answer")
                outcomes[i] = outcome = exc
            else:
                slot.answer.CopyFrom(answer)
                notices.append(notice)
                continue
        if isinstance(outcome, Refused):
            log.warning("refused a batched query: %s (%s)", outcome, outcome.reason)
            slot.error.reason, slot.error.message, slot.error.code = outcome.reason, refusal_details(outcome), refusal_code(outcome).value[0]
        else:
            slot.error.reason, slot.error.message, slot.error.code = "internal", INTERNAL_DETAILS, grpc.StatusCode.INTERNAL.value[0]
    return response, notices, outcomes


def _write(service: MemberService, admitted: list[tuple[int, Admitted]], outcomes: list[Outcome],
           now_ms: int) -> dict[int, tuple[bytes, bool]]:
    """One transaction for the whole batch: refuse replays of earlier
    answers, compute each ciphertext, then insert the answered items' rows.
    Returns each answered item's ciphertext and whether its subject has an
    ACTIVE loan here (for the application alerts)."""
    for attempt in range(1, _TRANSACTION_ATTEMPTS + 1):
        ciphertexts: dict[int, tuple[bytes, bool]] = {}
        refused: dict[int, Outcome] = {}
        try:
            with service.engine.begin() as conn:
                ids = [a.body.query_id for _, a in admitted]
                seen = set(conn.scalars(_SEEN_ONE, {"id": ids[0]}) if len(ids) == 1 else conn.scalars(_SEEN_AMONG, {"ids": ids}))
                facts = _facts(conn, [a for i, a in admitted if a.body.query_id not in seen])
                for i, a in admitted:
                    if a.body.query_id in seen:
                        refused[i] = replay_refusal(a.body.query_id)
                        continue
                    try:
                        subject = facts[(a.epoch, bytes(a.query.subject_token))]
                        ciphertexts[i] = (service.ciphertext(a, subject), has_active_loan(subject))  # a fresh mask each
                    except Refused as exc:
                        refused[i] = exc
                    except Exception as exc:  # noqa: BLE001 - a bug costs this item
                        log.exception("internal error answering a batched query")
                        refused[i] = exc
                answered = [(a, ciphertexts[i][0]) for i, a in admitted if i in ciphertexts]
                if answered:
                    db.execute_rows(conn, _REMEMBER, [{"query_id": a.body.query_id, "seen_at_ms": now_ms} for a, _ in answered])
                    journal_rows(conn, [(a.body.query_id, a.query.body, ct) for a, ct in answered], now_ms)  # SPEC §6.2
                service.prune_seen(conn, now_ms)
        except IntegrityError:
            if attempt == _TRANSACTION_ATTEMPTS:
                raise
            log.info("a batched query id was answered concurrently; redoing the batch's transaction")
            time.sleep(0.005 * attempt)
            continue
        for i, outcome in refused.items():
            outcomes[i] = outcome
        return ciphertexts
    raise AssertionError("unreachable")


def _facts(conn: Connection, admitted: list[Admitted]) -> dict[tuple[int, bytes], store.Facts]:
    """Every subject of the batch, read in three statements per matching-key
    epoch (one epoch, unless the key was rotated while the batch was checked)."""
    out: dict[tuple[int, bytes], store.Facts] = {}
    for epoch in {a.epoch for a in admitted}:
        tokens = [bytes(a.query.subject_token) for a in admitted if a.epoch == epoch]
        out.update({(epoch, t): f for t, f in store.subjects_facts(conn, tokens, epoch).items()})
    return out
