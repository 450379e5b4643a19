#!/usr/bin/env python3
"""Benchmark: how many job cycles per second the journal can hand out and close, on SQLite
and on PostgreSQL, with 1 and 3 worker processes (3 nodes sharing one journal): each cycle is
a claim (SELECT ... FOR UPDATE SKIP LOCKED in PostgreSQL), a move to sending, and a move to
done with its instance count, every step committed. Target (issue "One journal, two
stores"): at least as fast as the release before, and at least 500 cycles/s on PostgreSQL
with 3 nodes, so the journal is never the bottleneck (one node delivers about 15 volumes/s).

``--baseline DIR`` measures the code in DIR too (a checkout of another revision, e.g.
``git worktree add /tmp/base f854158``), in the same run, interleaved with this checkout's
runs so that the machine's drift falls on both; the table then has a ratio column.

PostgreSQL is a private, durable cluster started here (Debian's postgresql, fsync on, as the
tests start theirs); every run gets a fresh database and a fresh SQLite file. Durable commits
are bound by the disk's fsync, which on a shared VM varies 4x from one minute to the next;
``--no-fsync`` (the SQLite file on tmpfs, PostgreSQL with fsync off) measures what the code
itself costs per cycle, which is what a change to the journal can make better or worse.

    .venv/bin/python scripts/bench_journal.py [--jobs 2000] [--workers 1,3] [--repeat 5]
                                              [--baseline DIR] [--no-fsync]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "scripts"))


def _open(location):
    """The journal at ``location``, in whichever release is on the path (the one before the
    journal package opened it through node.service.pgjournal)."""
    try:
        from node.service.journal import open_journal_at
    except ImportError:
        from node.service.pgjournal import open_journal_at
    return open_journal_at(location)


def fill(location, n: int) -> None:
    journal = _open(location)
    try:
        for i in range(n):
            journal.enqueue(Path(f"/in/{i}.nii"), f"{i:064x}", 1, "bids-mr", "pacs",
                            key=f"k{i}")
    finally:
        journal.close()


def work(location, owner: str, counter) -> None:
    journal = _open(location)
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


def run_once(location: str, n: int, workers: int) -> float:
    """In this process: fill a fresh journal, work it off with ``workers`` processes; the
    cycles per second."""
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


def measure(code: Path, location: str, n: int, workers: int) -> float:
    """One run in a child process whose ``node`` package is the one in ``code``."""
    env = {**os.environ, "PYTHONPATH": str(code)}
    out = subprocess.run([sys.executable, __file__, "--run", location, "--jobs", str(n),
                          "--workers", str(workers)], env=env, capture_output=True, text=True,
                         timeout=1800, cwd=code)
    if out.returncode != 0:
        raise SystemExit(f"run in {code} failed:\n{out.stderr[-2000:]}")
    return float(json.loads(out.stdout.strip().splitlines()[-1])["rate"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--workers", default="1,3", help="worker counts, e.g. 1,3")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each (median kept)")
    parser.add_argument("--baseline", type=Path, help="a checkout of another revision")
    parser.add_argument("--no-fsync", action="store_true",
                        help="SQLite on tmpfs, PostgreSQL with fsync off: the code's own cost")
    parser.add_argument("--run", metavar="LOCATION", help=argparse.SUPPRESS)
    args = parser.parse_args()
    multiprocessing.set_start_method("spawn")
    workers = [int(w) for w in args.workers.split(",")]
    if args.run:
        print(json.dumps({"rate": run_once(args.run, args.jobs, workers[0])}))
        return 0
    from support.pgserver import Cluster

    codes = {"this": ROOT} | ({"baseline": args.baseline.resolve()} if args.baseline else {})
    cluster = Cluster(fsync=not args.no_fsync)  # durable commits, as a production server
    scratch = "/dev/shm" if args.no_fsync else None  # tmpfs: an fsync costs nothing
    rates: dict[tuple[str, str, int], list[float]] = {}
    try:
        print(f"{args.jobs} jobs per run: claim, sending, done; each step committed"
              f"{' (no fsync: the code alone)' if args.no_fsync else ' (durable)'}; "
              f"median of {args.repeat}")
        k = 0
        for _ in range(args.repeat):
            for w in workers:
                for engine in ("SQLite", "PostgreSQL"):
                    for label, code in codes.items():  # interleaved: drift falls on both
                        k += 1
                        location = (cluster.fresh_database(f"bench{k}") if engine == "PostgreSQL"
                                    else str(Path(tempfile.mkdtemp(prefix="bench-journal-",
                                                                   dir=scratch))
                                             / "journal.sqlite"))
                        rates.setdefault((engine, label, w), []).append(
                            measure(code, location, args.jobs, w))
    finally:
        cluster.destroy()
    print(f"{'engine':<11} {'workers':>7} {'this':>10}" + (
        f" {'baseline':>10} {'ratio':>7}" if args.baseline else ""))
    for engine in ("SQLite", "PostgreSQL"):
        for w in workers:
            this = statistics.median(rates[(engine, "this", w)])
            line = f"{engine:<11} {w:>7} {this:>8.0f}/s"
            if args.baseline:
                base = statistics.median(rates[(engine, "baseline", w)])
                line += f" {base:>8.0f}/s {this / base:>6.2f}x"
            print(line)
    best = statistics.median(rates[("PostgreSQL", "this", max(workers))])
    print(f"\nPostgreSQL, {max(workers)} workers: {best:.0f} cycles/s  (target >= 500/s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
