"""Import throughput and peak memory for a large loans file (SPEC §2, §8).

    .venv/bin/python tools/bench_import.py --rows 1000000 [--db URL]

Reports wall-clock seconds and rows/s, the CPU seconds spent (importer and
its validation worker, so a busy machine can be told from a slow import), and
peak RSS of the importing process and of the worker; their sum bounds the
import's memory.
"""
from __future__ import annotations

import argparse
import os
import resource
import tempfile
import threading
import time
from pathlib import Path

from alliance import db, matching_key, synthetic
from alliance_member import importer, store


def _cpu_seconds(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


class _ChildPeakRss:
    """Peak RSS (VmHWM, KiB) of this process's children, read from /proc while
    they run: getrusage's figure for children counts the parent's pages they
    had between fork and exec."""

    def __init__(self) -> None:
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> "_ChildPeakRss":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _watch(self) -> None:
        while not self._stop.wait(0.2):
            for pid in self._children():
                try:
                    status = Path(f"/proc/{pid}/status").read_text()
                except OSError:
                    continue
                for line in status.splitlines():
                    if line.startswith("VmHWM:"):
                        self.peak_kib = max(self.peak_kib, int(line.split()[1]))

    @staticmethod
    def _children() -> list[str]:
        pids = []
        for task in Path(f"/proc/{os.getpid()}/task").iterdir():
            try:
                pids += (task / "children").read_text().split()
            except OSError:
                pass
        return pids


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--db", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "loans.csv"
        t0 = time.perf_counter()
        synthetic.write_loans_csv(path, args.rows, seed=1)
        print(f"wrote {args.rows:,} rows ({path.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - t0:.1f}s")
        engine = db.make_engine(args.db or db.sqlite_url(Path(tmp) / "member.db"))
        store.create_schema(engine)
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        samples: list[int] = []

        def progress(n: int) -> None:
            if n % 100_000 == 0:
                samples.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)

        cpu_self, cpu_children = _cpu_seconds(resource.RUSAGE_SELF), _cpu_seconds(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        with _ChildPeakRss() as worker:
            result = importer.import_file(engine, path, "loans", matching_key.create(1), on_progress=progress)
        elapsed = time.perf_counter() - t0
        cpu_self = _cpu_seconds(resource.RUSAGE_SELF) - cpu_self
        cpu_children = _cpu_seconds(resource.RUSAGE_CHILDREN) - cpu_children
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        worker_peak = worker.peak_kib
        print(f"imported {result.rows_written:,} rows in {elapsed:.1f}s = {result.rows_written / elapsed:,.0f} rows/s "
              f"({engine.dialect.name})")
        print(f"CPU {cpu_self + cpu_children:.1f}s: importer {cpu_self:.1f}s, validation worker {cpu_children:.1f}s")
        print(f"peak RSS {peak / 1024:.0f} MiB (before import {rss_before / 1024:.0f} MiB), "
              f"worker {worker_peak / 1024:.0f} MiB, together at most {(peak + worker_peak) / 1024:.0f} MiB; "
              f"max RSS at each 100k rows (MiB): {[round(s / 1024) for s in samples]}")


if __name__ == "__main__":
    main()
