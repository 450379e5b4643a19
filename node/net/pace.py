"""A rate cap on what one store sends (a destination's ``max_instances_per_second`` and
``max_bytes_per_second``): a migration must not saturate a PACS during clinic hours.

Each instance (or STOW-RS request) waits for its turn before it goes, so the arrivals at the
peer never exceed the cap, however fast the peer answers. Shared by the associations (or
requests) of one store; the node sends one job of a capped destination at a time unless its
``concurrency`` says otherwise, and then splits the cap between them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class Pace:
    """Turns for instances and bytes: ``wait(n, size)`` returns when ``n`` more instances of
    ``size`` bytes in all may go. No cap: it never waits."""

    def __init__(self, per_second: float = 0.0, bytes_per_second: float = 0.0,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.per_second = per_second
        self.bytes_per_second = bytes_per_second
        self._clock, self._sleep = clock, sleep
        self._lock = threading.Lock()
        self._next = 0.0  # the earliest time the next send may start

    @property
    def capped(self) -> bool:
        return self.per_second > 0 or self.bytes_per_second > 0

    def wait(self, count: int = 1, size: int = 0) -> float:
        """Block until these may go; the seconds waited. Turns are given in call order, and
        a send's own cost (count / rate, size / byte rate) delays the one after it."""
        if not self.capped:
            return 0.0
        cost = max(count / self.per_second if self.per_second > 0 else 0.0,
                   size / self.bytes_per_second if self.bytes_per_second > 0 else 0.0)
        with self._lock:
            now = self._clock()
            start = max(now, self._next)
            self._next = start + cost
        delay = start - now
        if delay > 0:
            self._sleep(delay)
        return delay


def pace_of(dest) -> Pace:
    return Pace(dest.max_instances_per_second, dest.max_bytes_per_second)
