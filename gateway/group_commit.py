"""Group commit of the gateway's query log appends (SPEC §8: "batched log
appends"; screening and concurrent queries both go through it).

Every query is logged durably before it is answered (SPEC §6): one
transaction and, on SQLite, one ``synchronous=FULL`` fsync each. Concurrent
handlers used to queue on the database's write lock, where SQLite's busy
handler sleeps in steps of 1, 2, 5, 10 ms whatever the lock's real wait. Here
they queue in process instead: the first caller finds no commit running and
writes its own entry at once (light load: a batch of one, nothing added);
callers arriving meanwhile wait, and the next of them to run takes every
entry queued so far, writes them in one transaction, in arrival order, and
commits once. Log order is queue order and each entry's work sees the ones
before it in the batch (the §5.3 pins are settled in log order).

A caller returns only after the transaction holding its entry committed, so
"logged before answered" is unchanged. Failures are told apart by where they
happen:
- an entry's own work raises (a bad entry, a constraint): the transaction is
  rolled back, that caller gets its exception and the rest of the batch is
  written again without it, so one entry costs no other its commit. Work
  functions are therefore restartable: they may run again in a fresh
  transaction and must keep no state from a rolled-back run;
- the database fails (any driver error but a constraint or a bad value: a
  lock timeout, a lost or timed-out connection): every caller of the batch
  gets the error at once, as each would have on its own. Retrying entry by
  entry would pay a stuck replica's lock timeout once per entry, one after
  another, and blame whichever entry happened to be running;
- an entry waited longer than ``max_wait_s`` for its batch to start (a
  commit stuck behind a hung replica): it fails instead of being written
  late, as a lone append would have after its lock timeout. SPEC §6.3 bounds
  how far an entry's ``received_at_ms`` may lag the log's clock;
- COMMIT raises: the outcome is unknown (the server may have committed), so
  every caller gets the error and nothing is written again: a retry could
  log an entry twice.
Work must not call ``run`` itself (it would wait for its own batch).
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError

from alliance import log_rules

T = TypeVar("T")
log = logging.getLogger("alliance.gateway")

MAX_BATCH = 64  # entries per transaction: bounds how long the write lock is held
MAX_WAIT_S = log_rules.LOCK_TIMEOUT_MS / 1000  # what a lone append waited for the log's lock at most


@dataclass(eq=False)
class _Pending(Generic[T]):
    work: Callable[[Connection], T]
    queued_at: float = 0.0
    done: bool = False
    result: Any = None
    error: BaseException | None = None

    def outcome(self) -> T:
        if self.error is not None:
            raise self.error
        return self.result  # type: ignore[no-any-return]


class GroupCommit:
    """``run(work)``: run ``work(conn)`` in a transaction shared with the
    other callers waiting at the time, return its result once committed.
    ``on_batch(n)`` is told each transaction's size (a metric)."""

    def __init__(self, engine: Engine, *, max_batch: int = MAX_BATCH, max_wait_s: float = MAX_WAIT_S,
                 on_batch: Callable[[int], None] | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.engine = engine
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self._clock = clock
        self._on_batch = on_batch
        self._cond = threading.Condition()
        self._queue: list[_Pending[Any]] = []
        self._writing = False

    def run(self, work: Callable[[Connection], T]) -> T:
        item: _Pending[T] = _Pending(work, queued_at=self._clock())
        with self._cond:
            self._queue.append(item)
            while True:
                while self._writing and not item.done:
                    self._cond.wait()
                if item.done:
                    return item.outcome()
                self._writing = True
                batch, self._queue = self._queue[:self.max_batch], self._queue[self.max_batch:]
                self._cond.release()
                escaped: BaseException | None = None
                try:
                    self._write(batch)
                except BaseException as exc:  # noqa: BLE001 - settled below, so no waiter is stranded
                    escaped = exc
                finally:
                    self._cond.acquire()
                    self._writing = False
                    for pending in batch:
                        if not pending.done:
                            _finish(pending, error=escaped if isinstance(escaped, Exception)
                                    else LogCommitError("the log commit was interrupted; its outcome is unknown"))
                    self._cond.notify_all()
                if escaped is not None and not isinstance(escaped, Exception):
                    raise escaped  # KeyboardInterrupt and the like stay this thread's

    def _write(self, batch: list[_Pending[Any]]) -> None:
        """Write ``batch`` in one transaction; an entry whose work raises is
        failed alone and the others are written again without it."""
        now = self._clock()
        late = [pending for pending in batch if now - pending.queued_at > self.max_wait_s]
        if late:
            self._finish_all(late, LogCommitError(f"the query waited over {self.max_wait_s:g} s for the log; it was not logged"))
            batch = [pending for pending in batch if not pending.done]
        while batch:
            self._count(len(batch))
            try:
                conn = self.engine.connect()
            except Exception as exc:  # noqa: BLE001 - nothing was written
                self._finish_all(batch, exc)
                return
            try:
                failed, transaction = None, None
                try:
                    transaction = conn.begin()
                    results = []
                    for index, pending in enumerate(batch):
                        failed = index
                        results.append(pending.work(conn))
                    failed = None
                except Exception as exc:  # noqa: BLE001 - handed to its caller
                    _rollback_quietly(transaction)
                    if _database_failure(exc) or failed is None:
                        self._finish_all(batch, exc)  # the database, not the entry: fail the batch at once
                        return
                    self._finish_one(batch[failed], error=exc)
                    batch = batch[:failed] + batch[failed + 1:]
                    continue
                try:
                    transaction.commit()
                except Exception as exc:  # noqa: BLE001 - outcome unknown: never written again
                    self._finish_all(batch, exc)
                    return
            finally:
                conn.close()
            for pending, result in zip(batch, results):
                self._finish_one(pending, result=result)
            return

    def _count(self, entries: int) -> None:
        if self._on_batch is None:
            return
        try:
            self._on_batch(entries)
        except Exception:  # noqa: BLE001 - a metric never costs a commit
            log.exception("log batch metric failed")

    def _finish_one(self, pending: _Pending[Any], *, result: Any = None, error: BaseException | None = None) -> None:
        with self._cond:
            _finish(pending, result=result, error=error)
            self._cond.notify_all()

    def _finish_all(self, batch: list[_Pending[Any]], error: BaseException) -> None:
        with self._cond:
            for pending in batch:
                _finish(pending, error=error)
            self._cond.notify_all()


def _database_failure(exc: Exception) -> bool:
    """The database's failure, not the entry's: every driver error except a
    constraint or a bad value (IntegrityError, DataError), which only the
    entry that raised it causes."""
    return isinstance(exc, DBAPIError) and not isinstance(exc, (IntegrityError, DataError))


def _rollback_quietly(transaction: Any) -> None:
    """Roll back; a connection too broken to roll back is discarded on close."""
    if transaction is None:
        return
    try:
        transaction.rollback()
    except Exception:  # noqa: BLE001 - the error that matters is the one being handed over
        log.warning("log batch rollback failed", exc_info=True)


class LogCommitError(RuntimeError):
    """An entry failed by the group commit itself, not by its work or the
    database: it waited too long and was not written, or its batch was
    interrupted and its outcome is unknown."""


def _finish(item: _Pending[Any], *, result: Any = None, error: BaseException | None = None) -> None:
    item.result, item.error, item.done = result, error, True
