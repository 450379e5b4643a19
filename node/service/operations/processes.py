"""Running work in processes: conversion is CPU-bound, so a batch uses every core."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any


def in_processes(fn: Callable[..., Any], calls: Sequence[tuple], jobs: int | None) -> list:
    """``[fn(*args) for args in calls]``, in ``jobs`` processes (default: one per core).

    Conversion is CPU-bound, so a batch uses every core; a single call runs in this process.
    Results come back in the order of ``calls``.
    """
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(calls)))
    if jobs == 1:
        return [fn(*args) for args in calls]
    pool = ProcessPoolExecutor(max_workers=jobs, initializer=_ignore_sigint)
    try:
        futures = [pool.submit(fn, *args) for args in calls]
        return [future.result() for future in futures]
    except KeyboardInterrupt:  # Ctrl-C: stop now, not after every conversion has run
        pool.shutdown(wait=False, cancel_futures=True)
        for proc in list(getattr(pool, "_processes", {}).values()):
            proc.terminate()
        raise
    finally:
        pool.shutdown(wait=True)


def _ignore_sigint() -> None:
    """Conversion workers leave Ctrl-C to the parent (no traceback from each of them)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
