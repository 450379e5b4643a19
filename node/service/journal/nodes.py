"""The node registry: every node process that has used the journal, its heartbeat, and
whether it said it stopped. Several nodes may share one PostgreSQL journal."""

from __future__ import annotations

import time

from node.service.journal.model import NodeEntry, owner_alive
from node.service.journal.runner import QueryRunner

_KEYS = ("owner", "pid", "host", "version", "started", "heartbeat", "stopped")


class NodeRegistry(QueryRunner):
    def register_node(self, owner: str, version: str) -> None:
        host, _, pid = owner.rpartition(":")
        with self._tx():
            self._execute("register_node", {"owner": owner, "pid": int(pid), "host": host,
                                            "version": version, "now": time.time()})

    def node_stopped(self, owner: str) -> None:
        with self._tx():
            self._execute("node_stopped", {"owner": owner, "now": time.time()})

    def nodes(self) -> list[NodeEntry]:
        """Every node that has used the journal, the most recently heard first."""
        return [NodeEntry(**dict(zip(_KEYS, row, strict=True)))  # type: ignore[typeddict-item]
                for row in self._all("nodes")]

    def running_nodes(self) -> list[NodeEntry]:
        """Nodes that have not said they stopped and whose process may still run, oldest
        first."""
        return sorted((n for n in self.nodes() if n["stopped"] is None
                       and owner_alive(n["owner"])), key=lambda n: n["started"])

    def jobs_held(self) -> dict[str, int]:
        """How many jobs each owner holds now (converting or sending)."""
        return dict(self._all("jobs_held"))
