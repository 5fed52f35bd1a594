"""Application alerts (SPEC §9): a member is asked every query, so it sees
when one of its own borrowers applies for a loan elsewhere. Nothing new goes
to the gateway and the answer never waits for this:

- the answer path hands over a small notice only after the answer was sent
  (a gRPC termination callback; `MemberService.Answer`), for every answered
  query whatever its purpose, so the answer path does the same work for
  every query;
- a bounded queue takes it without blocking (a full queue drops the notice
  and logs it);
- one background thread looks the subject up in the member's own book and,
  for a `LOAN_APPROVAL` query or precheck about a subject with an ACTIVE loan,
  records an ``applied_elsewhere`` alert: the masked id, the time, query or
  precheck. Never the querier: staff must not learn which lender was asked
  (the alert's message, details and log line carry no member id and no query
  id).
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from sqlalchemy import Engine, and_, bindparam, select

from alliance.v1 import alliance_pb2 as pb
from alliance_member import alerts, store

log = logging.getLogger("alliance.member.application_alerts")

KIND = "applied_elsewhere"
SHANGHAI = ZoneInfo("Asia/Shanghai")
DEFAULT_QUEUE = 10_000


@dataclass(frozen=True)
class AnswerNotice:
    """What the answer path hands over: no querier, no query id."""

    subject_token: bytes
    key_epoch: int
    purpose: int
    mode: int
    answered_at_ms: int
    # What the answer path's own read of the book showed: False means no
    # ACTIVE loan under this token, so there is nothing to look up; None
    # (not known) means look it up. The answer path reads every subject's
    # rows anyway, so passing this on changes no answer's work or timing.
    active_borrower: bool | None = None


_ACTIVE_LOAN_OF = select(store.loans.c.masked_id, store.loans.c.id_type).where(
    and_(store.loans.c.subject_token == bindparam("token"), store.loans.c.key_epoch == bindparam("epoch"),
         store.loans.c.status == "ACTIVE")
).limit(1)


class ApplicationAlerts:
    """The queue and the thread that turns answer notices into alerts."""

    def __init__(self, engine: Engine, *, maxsize: int = DEFAULT_QUEUE, start: bool = True) -> None:
        self.engine = engine
        self._queue: queue.Queue[AnswerNotice | None] = queue.Queue(maxsize=maxsize)
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="application-alerts", daemon=True)
        if start:
            self._thread.start()

    def submit(self, notice: AnswerNotice) -> None:
        """Never blocks: called from gRPC's completion thread."""
        try:
            self._queue.put_nowait(notice)
        except queue.Full:
            self.dropped += 1
            log.warning("application-alert queue full: a notice was dropped (%d so far)", self.dropped)

    def drain(self, timeout_s: float = 10.0) -> bool:
        """Wait until every notice taken so far is handled (tests, shutdown)."""
        end = time.monotonic() + timeout_s
        with self._queue.all_tasks_done:
            while self._queue.unfinished_tasks:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._queue.all_tasks_done.wait(left)
        return True

    def close(self, timeout_s: float = 5.0) -> None:
        try:
            self._queue.put(None, timeout=timeout_s)
        except queue.Full:
            return
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def _run(self) -> None:
        while True:
            notice = self._queue.get()
            try:
                if notice is None:
                    return
                self.handle(notice)
            except Exception:  # noqa: BLE001 - one bad notice must not stop the alerts
                log.exception("application alert failed")
            finally:
                self._queue.task_done()

    def handle(self, notice: AnswerNotice) -> int | None:
        """Record the alert if the notice calls for one; returns its id."""
        if notice.purpose != pb.PURPOSE_LOAN_APPROVAL:
            return None  # limit reviews and post-loan monitoring are not applications (SPEC §4, §9)
        if notice.active_borrower is False:
            return None  # the answer found no ACTIVE loan: not a current borrower of ours
        with self.engine.connect() as conn:
            row = conn.execute(_ACTIVE_LOAN_OF, {"token": notice.subject_token, "epoch": notice.key_epoch}).first()
        if row is None:
            return None  # not a current borrower of ours (unknown, or settled / written off only)
        what = "precheck" if notice.mode == pb.QUERY_MODE_PRECHECK else "query"
        at = datetime.fromtimestamp(notice.answered_at_ms / 1000, tz=SHANGHAI).isoformat(timespec="seconds")
        return alerts.raise_alert(
            self.engine, KIND,
            f"{row.id_type} {row.masked_id}, a borrower with an active loan here, applied for a loan elsewhere "
            f"(loan-approval {what} at {at})",
            {"masked_id": row.masked_id, "id_type": row.id_type, "mode": what, "at": at},
            now_ms=notice.answered_at_ms,
        )
