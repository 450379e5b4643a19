"""The audit log: every operator action (console or CLI), who did it, on what, and how it
ended, kept with the jobs it touched."""

from __future__ import annotations

import time

from node.service.journal.model import AuditEntry
from node.service.journal.runner import QueryRunner

_KEYS = ("id", "at", "who", "via", "action", "target", "result")


class AuditLog(QueryRunner):
    def audit(self, who: str, via: str, action: str, target: str, result: str) -> None:
        """Record one operator action (lengths capped: a name or a target is not a store)."""
        with self._tx():
            self._execute("audit", {"now": time.time(), "who": who[:200], "via": via,
                                    "action": action, "target": target[:500],
                                    "result": result[:1000]})

    def audit_log(self, limit: int = 100, offset: int = 0) -> list[AuditEntry]:
        """The latest actions first."""
        return [AuditEntry(**dict(zip(_KEYS, row, strict=True)))  # type: ignore[typeddict-item]
                for row in self._all("audit_log", limit=limit, offset=offset)]
