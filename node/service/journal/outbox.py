"""The outbox (issue 25): every event a receiver may subscribe to, read in order from the
journal, from a cursor per receiver that moves only once the receiver has the event.

Three streams, each with its own ids: a job's history lines (written in the same statement or
transaction as the move they record, so no state change is without its event and no event
without its change), operator actions (the audit table) and the rest (``events``: a node
started or stopped, a destination down or back, a console login, a refused access). An
event's id is its stream and row id (``history:42``): stable, so a receiver drops duplicates.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from node.service.journal.runner import QueryRunner

STREAMS = ("history", "audit", "event")


@dataclass(frozen=True)
class Event:
    """One event as receivers get it: ``id`` stable across retries and restarts."""

    stream: str
    seq: int
    at: float
    type: str
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.stream}:{self.seq}"


@dataclass(frozen=True)
class Cursor:
    """Where a receiver is in each stream, and what it has had."""

    name: str
    history_id: int = 0
    audit_id: int = 0
    event_id: int = 0
    delivered: int = 0
    dropped: int = 0
    last_error: str | None = None
    updated: float = 0.0

    def position(self, stream: str) -> int:
        return getattr(self, f"{stream}_id")


def _job_event(row: tuple) -> Event:
    (seq, at, job_id, from_state, to_state, attempt, owner, detail, source, destination,
     profile, series_uid, study_uid, instances, delivered, error_class, priority, alert) = row
    kind = "job.queued" if from_state is None else f"job.{to_state}"
    if to_state == "retry-wait" and alert:
        kind = "job.alert"  # a retry that needs an operator (a refused association, TLS)
    return Event("history", int(seq), float(at), kind, {
        "job": int(job_id), "from": from_state, "state": to_state, "attempt": attempt,
        "node": owner, "destination": destination, "profile": profile,
        "series_uid": series_uid, "study_uid": study_uid, "instances": instances,
        "delivered": delivered, "error_class": error_class,
        "priority": "urgent" if priority else "normal", "alert": bool(alert),
        # patient data may hide in a path or a message: given only to receivers with phi
        "phi": {"source": source, "detail": detail}})


def _audit_event(row: tuple) -> Event:
    seq, at, who, via, action, target, result = row
    return Event("audit", int(seq), float(at), f"operator.{action}", {
        "who": who, "via": via, "action": action, "target": target, "result": result})


def _other_event(row: tuple) -> Event:
    seq, at, kind, subject, outcome, detail, owner = row
    return Event("event", int(seq), float(at), kind, {
        "subject": subject, "outcome": outcome, "node": owner, "phi": {"detail": detail}})


_READ = {"history": ("history_after", _job_event), "audit": ("audit_after", _audit_event),
         "event": ("events_after", _other_event)}


class Outbox(QueryRunner):
    #: PostgreSQL: ids are taken when a statement runs and seen when it commits, so a reader
    #: could pass an id that commits a moment later; reading only rows this old leaves such
    #: a single-statement move time to commit. SQLite has one writer: nothing to wait for.
    read_lag_seconds: float = 0.0

    def record_event(self, kind: str, subject: str | None = None, outcome: str = "ok",
                     detail: str | None = None, owner: str | None = None) -> None:
        """An event that is not a job's move nor an operator action."""
        with self._tx():
            self._execute("record_event", {
                "at": time.time(), "kind": kind, "subject": subject and subject[:500],
                "outcome": outcome, "detail": detail and detail[:2000], "owner": owner})

    def cursor(self, name: str) -> Cursor:
        """The receiver's cursor; a receiver seen for the first time starts at the end."""
        row = self._one("receiver", name=name)
        if row is None:
            with self._tx():
                self._execute("add_receiver", {"name": name, "now": time.time()})
            row = self._one("receiver", name=name)
        return Cursor(*row)  # type: ignore[misc]

    def cursors(self) -> list[Cursor]:
        return [Cursor(*row) for row in self._all("receivers")]

    def pending(self, cursor: Cursor, limit: int = 100) -> list[Event]:
        """The next events after the cursor, in time order across the streams (each stream
        in id order)."""
        before = time.time() - self.read_lag_seconds
        out: list[Event] = []
        for stream, (query, make) in _READ.items():
            out.extend(make(row) for row in self._all(
                query, after=cursor.position(stream), before=before, limit=limit))
        out.sort(key=lambda e: (e.at, STREAMS.index(e.stream), e.seq))
        return out[:limit]

    def advance(self, cursor: Cursor, events: list[Event], delivered: int,
                dropped: int = 0, error: str | None = None) -> Cursor:
        """Past these events (delivered, or filtered out, or dropped over the bound)."""
        moved = {f"{s}_id": max([cursor.position(s)] + [e.seq for e in events
                                                         if e.stream == s]) for s in STREAMS}
        with self._tx():
            self._execute("advance_receiver", {
                "name": cursor.name, **moved, "delivered": delivered, "dropped": dropped,
                "last_error": error, "now": time.time()})
        return self.cursor(cursor.name)

    def note_receiver(self, name: str, error: str | None) -> None:
        with self._tx():
            self._execute("note_receiver", {"name": name, "last_error": error and error[:500],
                                            "now": time.time()})

    def backlog_of(self, cursor: Cursor) -> tuple[int, float | None]:
        """How many events wait for the receiver, and the time of the oldest."""
        count, oldest = self._one("pending_counts", history_id=cursor.history_id,  # type: ignore[misc]
                                  audit_id=cursor.audit_id, event_id=cursor.event_id)
        return int(count), (float(oldest) if count else None)

    def time_keeping(self, cursor: Cursor, keep: int) -> float | None:
        """The time up to which events are dropped so that the newest ``keep`` remain."""
        row = self._one("pending_time_at", history_id=cursor.history_id,
                        audit_id=cursor.audit_id, event_id=cursor.event_id, keep=keep)
        return None if row is None else float(row[0])

    def skip_to(self, cursor: Cursor, at: float, dropped: int) -> Cursor:
        """Over its bound: the receiver loses what happened up to ``at`` (counted)."""
        history_id, audit_id, event_id = self._one("id_at_or_before", at=at)  # type: ignore[misc]
        with self._tx():
            self._execute("advance_receiver", {
                "name": cursor.name, "history_id": history_id, "audit_id": audit_id,
                "event_id": event_id, "delivered": 0, "dropped": dropped,
                "last_error": cursor.last_error, "now": time.time()})
        return self.cursor(cursor.name)
