#!/usr/bin/env python3
"""Benchmark: how many jobs per second the journal can hand out and close, on SQLite and on
PostgreSQL, with 1 and 4 worker processes: each cycle is a claim (SELECT ... FOR UPDATE SKIP
LOCKED in PostgreSQL), a transition to sending, and one to done with its instance count, every
step committed. Target (issue "Past one machine"): at least 500 jobs/s on PostgreSQL, so the
journal is never the bottleneck (one node delivers about 15 volumes/s).

PostgreSQL is a private cluster started here (Debian's postgresql, as the tests do), unless
``--url`` names one.

    .venv/bin/python scripts/bench_journal.py [--jobs 2000] [--url postgresql://...]
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "scripts"))


def fill(location, n: int) -> None:
    from node.service.pgjournal import open_journal_at

    journal = open_journal_at(location)
    try:
        for i in range(n):
            journal.enqueue(Path(f"/in/{i}.nii"), f"{i:064x}", 1, "bids-mr", "pacs",
                            key=f"k{i}")
    finally:
        journal.close()


def work(location, owner: str, counter) -> None:
    from node.service.pgjournal import open_journal_at

    journal = open_journal_at(location)
    try:
        while True:
            job = journal.claim(owner=owner)
            if job is None:
                return
            journal.transition(job.id, "sending", owner=owner)
            journal.transition(job.id, "done", owner=owner, delivered=1, instances=1)
            with counter.get_lock():
                counter.value += 1
    finally:
        journal.close()


def run(location, n: int, workers: int) -> float:
    fill(location, n)
    counter = multiprocessing.Value("i", 0)
    procs = [multiprocessing.Process(target=work, args=(location, f"bench{w}:{w}", counter))
             for w in range(workers)]
    t0 = time.perf_counter()
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    seconds = time.perf_counter() - t0
    if counter.value != n:
        raise SystemExit(f"{counter.value} of {n} jobs done")
    return n / seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--url", help="an empty PostgreSQL database (default: start one)")
    args = parser.parse_args()
    multiprocessing.set_start_method("spawn")
    cluster = None
    if not args.url:
        from pgserver import Cluster

        cluster = Cluster(fsync=True)  # durable commits, as a production server
    try:
        print(f"{args.jobs} jobs per run: claim, sending, done; each step committed")
        results = {}
        for workers in (1, 4):
            work_dir = Path(tempfile.mkdtemp(prefix="bench-journal-"))
            results[("SQLite", workers)] = run(work_dir / "journal.sqlite", args.jobs, workers)
            url = args.url if args.url else cluster.fresh_database(f"bench{workers}")
            results[("PostgreSQL", workers)] = run(url, args.jobs, workers)
        for (backend, workers), rate in results.items():
            print(f"{backend:<11} {workers} worker(s): {rate:8.0f} jobs/s")
        best = max(rate for (backend, _), rate in results.items() if backend == "PostgreSQL")
        print(f"\nPostgreSQL, best: {best:.0f} jobs/s  (target >= 500 jobs/s)")
    finally:
        if cluster is not None:
            cluster.destroy()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
