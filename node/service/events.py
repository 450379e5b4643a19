"""Events that reach people and systems (issue 25): webhooks, email and DICOM audit messages,
each fed from the journal's outbox by a thread of its own.

A receiver's thread reads the events after its cursor (node.service.journal.outbox), sends
those it subscribes to, and moves its cursor only past what the receiver took: at least once,
in order per job, every event with a stable id. A receiver that is down waits with backoff in
its own thread, so it never slows the delivery of DICOM; its events wait in the journal (the
spool), up to a bound in count and age: past it the oldest are dropped, counted, and an
ALERT is logged and sent to the other receivers as ``receiver.overflow``.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import hmac
import json
import logging
import os
import random
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from node.net.notify import NotifyFailure, SyslogSender, TlsFiles, post, send_mail
from node.service.journal import JournalUnavailable
from node.service.journal.outbox import Cursor, Event

if TYPE_CHECKING:
    from node.service.settings import Config

log = logging.getLogger("node.service")

#: The JSON a webhook gets: this schema, at this version (README "Events").
SCHEMA = "dicom-node.event"
SCHEMA_VERSION = 1
KINDS = ("webhook", "email", "audit")
DEFAULT_EVENTS = {
    "webhook": ("job.done", "job.failed", "job.quarantined", "job.alert", "alert.*",
                "destination.*", "node.*", "operator.*", "receiver.*"),
    "email": ("job.failed", "job.quarantined", "job.alert", "receiver.overflow"),
    "audit": ("*",),
}


@dataclass(frozen=True)
class Receiver:
    """One ``[[webhook]]``, ``[[email]]`` or ``[[audit]]`` table."""

    kind: str
    name: str
    events: tuple[str, ...] = ()
    phi: bool = False
    max_pending: int = 100_000
    max_age_hours: float = 168.0
    timeout_seconds: float = 10.0
    retry_max_seconds: float = 60.0  # the longest wait between two tries while it fails
    url: str = ""  # webhook
    secret_env: str = ""  # webhook: the HMAC-SHA256 key's environment variable
    host: str = ""  # email, audit
    port: int = 0
    security: str = "starttls"  # email: starttls, tls or none
    username: str = ""
    password_env: str = ""
    sender: str = ""
    to: tuple[str, ...] = ()
    every_minutes: float = 15.0  # email: at most one mail this often
    transport: str = "tls"  # audit: tls (RFC 5425) or udp (RFC 5426)
    site: str = ""  # audit: AuditEnterpriseSiteID
    tls: TlsFiles | None = field(default=None, repr=False)

    @property
    def key(self) -> str:
        """Its cursor's name in the journal."""
        return f"{self.kind}:{self.name}"

    def wants(self, event: Event) -> bool:
        patterns = self.events or DEFAULT_EVENTS[self.kind]
        return any(fnmatch.fnmatchcase(event.type, p) for p in patterns)


def payload(event: Event, phi: bool, node_id: str = "") -> dict[str, Any]:
    """The JSON of an event (schema ``dicom-node.event`` version 1). Without ``phi`` no file
    path nor message text is included (either may name a patient): ids, states, UIDs and
    counts only."""
    data = {k: v for k, v in event.data.items() if k != "phi"}
    if phi:
        data.update({k: v for k, v in event.data.get("phi", {}).items() if v is not None})
    return {"schema": SCHEMA, "version": SCHEMA_VERSION, "id": event.id, "type": event.type,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(event.at))
            + f".{int(event.at % 1 * 1000):03d}Z", "node": node_id, "data": data}


def signature(secret: bytes, body: bytes, at: int) -> str:
    """``t=<unix time>,v1=<hex HMAC-SHA256 of "<t>." + body>``: the receiver recomputes it
    with the shared secret, and refuses a stale ``t`` (a replay)."""
    mac = hmac.new(secret, f"{at}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={at},v1={mac}"


class _Deliver:
    """How one kind of receiver takes a page of events; raises NotifyFailure."""

    def __init__(self, receiver: Receiver, config: Config, owner: str) -> None:
        self.receiver, self.config, self.owner = receiver, config, owner

    def deliver(self, journal, cursor: Cursor, events: list[Event]) -> Cursor:
        """One event at a time, the cursor moved past each one taken (and past those it
        does not subscribe to)."""
        skipped: list[Event] = []
        for event in events:
            message = self.message(event) if self.receiver.wants(event) else None
            if message is None:
                skipped.append(event)
                continue
            self.send(event, message)
            cursor = journal.advance(cursor, [*skipped, event], delivered=1)
            skipped = []
        return journal.advance(cursor, skipped, delivered=0) if skipped else cursor

    def message(self, event: Event) -> Any:
        return event

    def send(self, event: Event, message: Any) -> None:  # pragma: no cover - per kind
        raise NotImplementedError

    def close(self) -> None:
        pass


class _Webhook(_Deliver):
    def send(self, event: Event, message: Any) -> None:
        secret = os.environ.get(self.receiver.secret_env, "")
        if not secret:
            raise NotifyFailure(f"webhook {self.receiver.name}: the environment variable "
                                f"{self.receiver.secret_env} (its signing secret) is not set")
        body = json.dumps(payload(event, self.receiver.phi, self.owner),
                          separators=(",", ":")).encode()
        post(self.receiver.url, body, {
            "Content-Type": "application/json", "User-Agent": "dicom-node",
            "X-Dicom-Node-Event": event.id, "X-Dicom-Node-Event-Type": event.type,
            "X-Dicom-Node-Signature": signature(secret.encode(), body, int(time.time()))},
            self.receiver.timeout_seconds, self.receiver.tls)


class _Audit(_Deliver):
    def __init__(self, receiver: Receiver, config: Config, owner: str) -> None:
        from node.service.audit_messages import AuditContext

        super().__init__(receiver, config, owner)
        self.context = AuditContext(config.node.ae_title, receiver.site)
        self.sender = SyslogSender(receiver.host, receiver.port, receiver.transport,
                                   receiver.tls, receiver.timeout_seconds)

    def message(self, event: Event) -> Any:
        xml = self.context.message_for(event, self.receiver.phi)
        return None if xml is None else self.context.syslog_line(event, xml)

    def send(self, event: Event, message: Any) -> None:
        self.sender.send(message)

    def close(self) -> None:
        self.sender.close()


class _Email(_Deliver):
    """A summary of what it subscribes to, at most one mail per ``every_minutes``."""

    def __init__(self, receiver: Receiver, config: Config, owner: str) -> None:
        super().__init__(receiver, config, owner)
        self.last_mail = 0.0

    def deliver(self, journal, cursor: Cursor, events: list[Event]) -> Cursor:
        wanted = [e for e in events if self.receiver.wants(e)]
        if not wanted:
            return journal.advance(cursor, events, delivered=0)
        if time.monotonic() - self.last_mail < self.receiver.every_minutes * 60:
            first = events.index(wanted[0])  # the rest waits for the next mail
            return journal.advance(cursor, events[:first], delivered=0) if first else cursor
        r = self.receiver
        lines = [self._line(e) for e in wanted]
        send_mail(r.host, r.port, r.security, r.username or None,
                  os.environ.get(r.password_env) if r.password_env else None, r.sender, r.to,
                  f"dicom-node {self.owner}: {len(wanted)} event(s) need attention",
                  "\n".join(lines) + "\n", r.tls, r.timeout_seconds)
        self.last_mail = time.monotonic()
        return journal.advance(cursor, events, delivered=len(wanted))

    def _line(self, event: Event) -> str:
        data = payload(event, self.receiver.phi)["data"]
        shown = ", ".join(f"{k} {v}" for k, v in data.items() if v not in (None, ""))
        return f"{payload(event, False)['time']} {event.type} ({event.id}): {shown}"


_KINDS = {"webhook": _Webhook, "email": _Email, "audit": _Audit}


class Sender(threading.Thread):
    """One receiver's thread: reads the outbox, delivers, backs off while it fails."""

    poll_seconds = 0.5

    def __init__(self, config: Config, receiver: Receiver, owner: str,
                 stop: threading.Event) -> None:
        super().__init__(name=f"events-{receiver.key}", daemon=True)
        self.config, self.receiver, self.owner, self.stop = config, receiver, owner, stop
        self.failures = 0
        self.last_error: str | None = None
        self.idle_since = 0.0  # when it last found nothing to send (monotonic)

    def run(self) -> None:
        impl = _KINDS[self.receiver.kind](self.receiver, self.config, self.owner)
        journal = None
        try:
            while not self.stop.is_set():
                try:
                    if journal is None:
                        journal = self.config.open_journal(create=False)
                    busy = self.step(journal, impl)
                    if self.failures:
                        log.warning("events: %s takes events again", self.receiver.key)
                        journal.note_receiver(self.receiver.key, None)
                    self.failures, self.last_error = 0, None
                    if not busy:
                        self.idle_since = time.monotonic()
                    self.stop.wait(0 if busy else self.poll_seconds)
                except NotifyFailure as exc:
                    self._failed(journal, exc.message)
                except (JournalUnavailable, sqlite3.Error, OSError) as exc:
                    self._failed(None, f"the journal: {exc}")
                    if journal is not None:
                        journal.close()
                    journal = None
                except Exception as exc:  # a bug must not end the thread
                    log.exception("events: %s", self.receiver.key)
                    self._failed(None, f"internal error: {exc}")
        finally:
            impl.close()
            if journal is not None:
                journal.close()

    def _failed(self, journal, message: str) -> None:
        self.failures += 1
        if message != self.last_error:
            log.error("events: %s: %s; its events wait in the journal, retried with backoff",
                      self.receiver.key, message)
            self.last_error = message
            if journal is not None:
                with contextlib.suppress(JournalUnavailable, sqlite3.Error, OSError):
                    journal.note_receiver(self.receiver.key, message)
        delay = min(self.receiver.retry_max_seconds, 2 ** min(self.failures - 1, 10))
        self.stop.wait(delay * (0.5 + 0.5 * random.random()))

    def step(self, journal, impl: _Deliver) -> bool:
        cursor = self._bounded(journal, journal.cursor(self.receiver.key))
        events = journal.pending(cursor, limit=50)
        if not events:
            return False
        after = impl.deliver(journal, cursor, events)
        return after != cursor

    def _bounded(self, journal, cursor: Cursor) -> Cursor:
        """Past its bound (count or age) the receiver loses its oldest events: counted,
        logged as an ALERT and sent to the other receivers."""
        count, oldest = journal.backlog_of(cursor)
        if not count:
            return cursor
        r, now = self.receiver, time.time()
        cut = None
        if oldest is not None and now - oldest > r.max_age_hours * 3600:
            cut = now - r.max_age_hours * 3600
        if count > r.max_pending:
            keep_from = journal.time_keeping(cursor, r.max_pending)
            cut = max(cut or 0.0, keep_from or 0.0)
        if cut is None:
            return cursor
        after = journal.skip_to(cursor, cut, dropped=0)
        left, _ = journal.backlog_of(after)
        dropped = max(0, count - left)
        after = journal.advance(after, [], delivered=0, dropped=dropped,
                                error=f"over its bound: {dropped} event(s) dropped")
        log.error("ALERT events: %s: %d event(s) waited past its bound (max_pending %d, "
                  "max_age_hours %g) and were dropped; is the receiver down?", r.key,
                  dropped, r.max_pending, r.max_age_hours,
                  extra={"fields": {"alert": True, "receiver": r.key}})
        journal.record_event("receiver.overflow", r.key, "failed",
                             f"{dropped} event(s) dropped", self.owner)
        return after


class Events:
    """The node's receivers, one thread each (started by the node, stopped with it)."""

    def __init__(self, config: Config, owner: str) -> None:
        self.stop = threading.Event()
        self.senders = [Sender(config, r, owner, self.stop) for r in config.receivers]

    def start(self) -> None:
        for sender in self.senders:
            sender.start()

    def close(self, wait: float = 5.0) -> None:
        """Let each receiver take what is pending (the node's last events) for up to
        ``wait`` seconds, then stop; what is left goes after the next start."""
        asked = time.monotonic()
        deadline = asked + wait
        while time.monotonic() < deadline and any(
                s.is_alive() and s.idle_since <= asked for s in self.senders):
            time.sleep(0.05)
        self.stop.set()
        for sender in self.senders:
            sender.join(timeout=max(0.0, deadline - time.monotonic()))
