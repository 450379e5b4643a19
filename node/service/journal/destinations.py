"""What the journal knows of each destination: whether an operator paused it (its jobs wait),
its latest echo, and its latest delivery outcome."""

from __future__ import annotations

import time

from node.service.journal.model import EchoRecord
from node.service.journal.runner import QueryRunner


class Destinations(QueryRunner):
    def pause(self, name: str, who: str) -> bool:
        """Stop claiming jobs for ``name`` (they wait); False when it was paused already."""
        with self._tx():
            return self._rowcount("pause", name=name, now=time.time(), who=who) == 1

    def resume(self, name: str) -> bool:
        """Claim its jobs again; False when it was not paused."""
        with self._tx():
            return self._rowcount("resume", name=name) == 1

    def paused(self) -> dict[str, tuple[float, str]]:
        """Paused destinations: since when, and by whom."""
        return {name: (at, who) for name, at, who in self._all("paused")}

    def record_echo(self, name: str, ok: bool, message: str,
                    latency_ms: float | None = None) -> None:
        """The latest echo; a change (down, or back) is an event in the same transaction."""
        with self._tx():
            before = self._one("echo_of", name=name)
            now = time.time()
            self._execute("record_echo", {"name": name, "now": now, "ok": int(ok),
                                          "message": message, "latency_ms": latency_ms})
            if before is not None and bool(before[0]) != ok:
                self._execute("record_event", {
                    "at": now, "kind": "destination.up" if ok else "destination.down",
                    "subject": name, "outcome": "ok" if ok else "failed",
                    "detail": message[:2000], "owner": None})

    def echoes(self) -> list[EchoRecord]:
        return [EchoRecord(n, c, bool(o), m) for n, c, o, m in self._all("echoes")]

    def echo_latencies(self) -> dict[str, float | None]:
        return dict(self._all("echo_latencies"))

    def last_outcomes(self) -> dict[str, tuple[float, str, str | None]]:
        """Per destination, its latest delivery outcome: (time, state, error)."""
        return {d: (u, s, e) for d, u, s, e in self._all("last_outcomes")}
