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
"logged before answered" is unchanged. If a batch's transaction fails, each
of its entries is written again on its own, so one entry's failure (its own
exception) never costs another its commit. Work functions must therefore be
restartable: they may be run twice, in a rolled-back and a fresh transaction,
and must keep no state from a rolled-back run."""
from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import Connection, Engine

T = TypeVar("T")

MAX_BATCH = 64  # entries per transaction: bounds how long the write lock is held


@dataclass(eq=False)
class _Pending(Generic[T]):
    work: Callable[[Connection], T]
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

    def __init__(self, engine: Engine, *, max_batch: int = MAX_BATCH, on_batch: Callable[[int], None] | None = None) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.engine = engine
        self.max_batch = max_batch
        self._on_batch = on_batch
        self._cond = threading.Condition()
        self._queue: list[_Pending[Any]] = []
        self._writing = False

    def run(self, work: Callable[[Connection], T]) -> T:
        item: _Pending[T] = _Pending(work)
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
                try:
                    self._write(batch)
                finally:
                    self._cond.acquire()
                    self._writing = False
                    self._cond.notify_all()

    def _write(self, batch: list[_Pending[Any]]) -> None:
        """Write ``batch`` in one transaction; on failure, each on its own."""
        if self._on_batch is not None:
            self._on_batch(len(batch))
        try:
            with self.engine.begin() as conn:
                results = [item.work(conn) for item in batch]
        except BaseException as exc:  # noqa: BLE001 - handed to its caller, never lost
            if len(batch) == 1:
                _finish(batch[0], error=exc)
                return
            for item in batch:
                self._write_alone(item)
            return
        for item, result in zip(batch, results):
            _finish(item, result=result)

    def _write_alone(self, item: _Pending[Any]) -> None:
        try:
            with self.engine.begin() as conn:
                result = item.work(conn)
        except BaseException as exc:  # noqa: BLE001 - handed to its caller
            _finish(item, error=exc)
        else:
            _finish(item, result=result)


def _finish(item: _Pending[Any], *, result: Any = None, error: BaseException | None = None) -> None:
    item.result, item.error, item.done = result, error, True
