"""Batched Ed25519 signature checks for the audit verifier.

Signature checks dominate the cost of verifying a log (about 125 µs each);
the replay collects them as jobs, and :class:`SignatureChecker` runs them in
batches: in this process for small logs, in a pool of worker processes for
large ones while the main process decodes and replays."""
from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
from collections.abc import Sequence


from alliance import signing

PARALLEL_MIN_JOBS = 20_000  # below this a worker pool costs more than it saves
JOBS_PER_CHUNK = 6_000

SignatureJob = tuple[int, tuple[bytes, ...], bytes, bytes, bool, str]
"""(entry index, candidate Ed25519 keys, prefixed message, signature,
expected validity, what to say when the outcome is not the expected one)."""


def _signature_valid(key: bytes, message: bytes, signature: bytes) -> bool:
    return signing.ed25519_valid(key, signature, message)


def check_signature_jobs(jobs: Sequence[SignatureJob]) -> list[tuple[int, str]]:
    """Verify a batch; return (entry index, complaint) for every job whose
    outcome is not the expected one. Top-level so worker processes can run it."""
    failures = []
    for index, keys, message, signature, expected, complaint in jobs:
        if any(_signature_valid(k, message, signature) for k in keys) != expected:
            failures.append((index, complaint))
    return failures


class SignatureChecker:
    """Collects signature jobs and checks them in batches: in this process
    for small logs, in a pool of worker processes for large ones (spawned, not
    forked, so a caller's gRPC threads are never duplicated)."""

    def __init__(self, workers: int | None, *, parallel_min_jobs: int = PARALLEL_MIN_JOBS,
                 jobs_per_chunk: int = JOBS_PER_CHUNK) -> None:
        self.workers = (os.cpu_count() or 1) if workers is None else max(1, workers)
        self.parallel_min_jobs = parallel_min_jobs
        self.jobs_per_chunk = jobs_per_chunk
        self.batch: list[SignatureJob] = []
        self.failures: list[tuple[int, str]] = []
        self.checked = 0
        self.pool: cf.ProcessPoolExecutor | None = None
        self.pending: set[cf.Future[list[tuple[int, str]]]] = set()

    def add(self, jobs: list[SignatureJob]) -> None:
        self.batch.extend(jobs)
        if len(self.batch) >= self.jobs_per_chunk and (
                self.pool is not None or self.checked + len(self.batch) >= self.parallel_min_jobs):
            self._dispatch()

    def _dispatch(self) -> None:
        batch, self.batch = self.batch, []
        self.checked += len(batch)
        if self.workers <= 1:
            self.failures.extend(check_signature_jobs(batch))
            return
        if self.pool is None:
            self.pool = cf.ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))
        for start in range(0, len(batch), self.jobs_per_chunk):
            while len(self.pending) >= 2 * self.workers:  # bound memory: at most two chunks queued per worker
                done, self.pending = cf.wait(self.pending, return_when=cf.FIRST_COMPLETED)
                for future in done:
                    self.failures.extend(future.result())
            self.pending.add(self.pool.submit(check_signature_jobs, batch[start : start + self.jobs_per_chunk]))

    def finish(self) -> list[tuple[int, str]]:
        try:
            if self.batch:
                batch, self.batch = self.batch, []
                self.checked += len(batch)
                if self.pool is None:
                    self.failures.extend(check_signature_jobs(batch))
                else:
                    self.pending.add(self.pool.submit(check_signature_jobs, batch))
            for future in cf.as_completed(self.pending):
                self.failures.extend(future.result())
            self.pending = set()
        finally:
            self.close()
        return self.failures

    def close(self) -> None:
        if self.pool is not None:
            for future in self.pending:
                future.cancel()
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None
