"""What is going on: the status report and the node report, as data (the CLI and the
console render them)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from node.service.journal import JournalStore


def status_report(journal: JournalStore, config, now: float | None = None) -> dict:
    """Everything ``dicom-node status`` shows, as data: counts, the oldest waiting job,
    alerts, last errors, each destination's health, and which node runs.

    A destination's health is its last C-ECHO *and* its latest delivery outcome: a PACS that
    answers echoes while refusing every store is not healthy.
    """
    import time

    now = time.time() if now is None else now
    oldest = journal.oldest_waiting()
    outcomes = journal.last_outcomes()
    destinations = []
    echoes = {n: (c, ok, m) for n, c, ok, m in journal.echoes()}
    paused = journal.paused()
    latencies = journal.echo_latencies()
    backlog = journal.backlog()
    for name in sorted(set(echoes) | set(outcomes) | set(config.destinations)):
        checked, echo_ok, message = echoes.get(name, (None, None, None))
        last = outcomes.get(name)
        delivering = None if last is None else last[1] == "done"
        ok = echo_ok is not False and delivering is not False
        destinations.append({
            "name": name, "ok": ok if (echo_ok is not None or last) else None,
            "checked": checked, "echo_ok": echo_ok, "message": message,
            "last_delivery": None if last is None else {
                "at": last[0], "state": last[1], "error": last[2]},
            "paused": name in paused, "latency_ms": latencies.get(name),
            **_delivery_policy(config, name, now), "backlog": backlog.get(name, 0),
        })
    nodes = journal.running_nodes()
    return {
        "config": str(config.path) if config.path else None,
        "journal": journal.location,
        "nodes": [{**n, "heartbeat_age": round(now - n["heartbeat"], 1)} for n in nodes],
        "counts": journal.counts(),
        "oldest_waiting": oldest.as_json() if oldest else None,
        "alerts": [{"job": j.id, "error": j.last_error} for j in journal.alerts()],
        "last_errors": [{"job": j.id, "state": j.state, "error": j.last_error}
                        for j in journal.last_errors()],
        "destinations": destinations,
        "receivers": _receivers(journal, config, now),
    }


def _receivers(journal: JournalStore, config, now: float) -> list[dict]:
    """Each event receiver: what waits for it, what it has had, what it lost, its last error
    (an ALERT when events were dropped past its bound)."""
    known = {c.name: c for c in journal.cursors()}
    out = []
    for r in config.receivers:
        cursor = known.get(r.key)
        if cursor is None:
            out.append({"name": r.key, "backlog": 0, "oldest_age": None, "delivered": 0,
                        "dropped": 0, "last_error": None})
            continue
        count, oldest = journal.backlog_of(cursor)
        out.append({"name": r.key, "backlog": count,
                    "oldest_age": None if oldest is None else round(now - oldest, 1),
                    "delivered": cursor.delivered, "dropped": cursor.dropped,
                    "last_error": cursor.last_error})
    return out


def _delivery_policy(config, name: str, now: float) -> dict:
    """A destination's schedule state, cap and rate cap, as the console and status show them."""
    policy = config.policy(name)
    dest = config.destinations.get(name)
    return {"schedule": policy.schedule.describe(now),
            "schedule_open": policy.schedule.is_open(now),
            "concurrency": policy.share(config.node.workers),
            "rate": {"instances_per_second": dest.max_instances_per_second,
                     "bytes_per_second": dest.max_bytes_per_second} if dest else None}


def node_report(journal: JournalStore, config, now: float) -> list[dict]:
    """Every node that has used the journal: its id, pid, version, heartbeat age, the jobs it
    holds now, and whether it is gone (silent longer than [node].node_gone_seconds)."""
    held = journal.jobs_held()
    out = []
    for n in journal.nodes():
        age = now - n["heartbeat"]
        out.append({"node": n["host"], "owner": n["owner"], "pid": n["pid"],
                    "version": n["version"], "started": n["started"],
                    "heartbeat_age": round(age, 1), "stopped": n["stopped"] is not None,
                    "jobs_in_hand": held.get(n["owner"], 0),
                    "gone": n["stopped"] is None and age > config.node.node_gone_seconds})
    return out
