"""Import throughput and peak memory for a large loans file (SPEC §2, §8).

    .venv/bin/python tools/bench_import.py --rows 1000000 [--db URL]
"""
from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

from alliance import db, matching_key, synthetic
from alliance_member import importer, store


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

        t0 = time.perf_counter()
        result = importer.import_file(engine, path, "loans", matching_key.create(1), on_progress=progress)
        elapsed = time.perf_counter() - t0
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(f"imported {result.rows_written:,} rows in {elapsed:.1f}s = {result.rows_written / elapsed:,.0f} rows/s")
        print(f"peak RSS {peak / 1024:.0f} MiB (before import {rss_before / 1024:.0f} MiB); "
              f"max RSS at each 100k rows (MiB): {[round(s / 1024) for s in samples]}")


if __name__ == "__main__":
    main()
