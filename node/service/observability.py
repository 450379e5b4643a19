"""What the node tells the people who run it: log lines (plain or JSON, never a patient
attribute), Prometheus metrics and the /healthz endpoint."""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import threading
import time
from pathlib import Path

from node.service.journal import Job

log = logging.getLogger("node.service")


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def safe(text: object) -> str:
    """A name or message from outside (a file name, a peer's text) as one printable line:
    control characters (newline, escape codes) shown as ``\\xNN``, so nobody forges a log
    line or drives the operator's terminal with a file name."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", str(text))


class JsonFormatter(logging.Formatter):
    """One JSON object per line; job fields travel in ``extra={"fields": {...}}``. A
    traceback goes into the object too, so every line stays JSON."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(),
               "level": record.levelname.lower(), "logger": record.name,
               "message": record.getMessage()}
        out.update(getattr(record, "fields", {}))
        if record.exc_info:
            out["traceback"] = self.formatException(record.exc_info)
        elif getattr(record, "traceback", None):
            out["traceback"] = record.traceback
        return json.dumps(out)


class PlainFormatter(logging.Formatter):
    """``time LEVEL message``, one line per record: control characters in the message are
    escaped (a traceback, our own text, follows on its own lines)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        record.message = safe(record.message)
        text = super().formatMessage(record)
        if getattr(record, "traceback", None):  # a worker's traceback: our own text
            text += "\n" + record.traceback.rstrip()
        return text


def _known_noise(record: logging.LogRecord) -> bool:
    """watchdog 6/7 logs an ERROR when an inotify emitter is stopped with the observer, at
    every shutdown; it means nothing to an operator."""
    return not (record.name.startswith("watchdog") and "thread is inactive" in record.getMessage())


def setup_service_logging(fmt: str, verbose: int = 0) -> None:
    """Every record of the node, its workers and the libraries it uses, in one format: the
    root logger gets the handler, so a library's line is JSON too when the node's are."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else PlainFormatter())
    handler.addFilter(_known_noise)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    ours = logging.getLogger("node")
    ours.handlers[:] = []
    ours.propagate = True
    ours.setLevel(logging.DEBUG if verbose else logging.INFO)
    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)
    logging.captureWarnings(True)


def log_transition(job: Job, old: str, new: str, detail: str = "") -> None:
    """One line per job transition. Paths and UIDs only: no patient attributes."""
    fields = {"job": job.id, "from": old, "to": new, "source": safe(job.source),
              "destination": job.destination, "attempt": job.attempts}
    if detail:
        fields["detail"] = safe(detail)
    log.info("job %d %s: %s -> %s%s", job.id, safe(Path(job.source).name), old, new,
             f" ({safe(detail)})" if detail else "", extra={"fields": fields})


# --- metrics and health -----------------------------------------------------------------------

#: Connections the health and metrics endpoint serves at once, and how long one may idle.
MAX_CONNECTIONS = 32
REQUEST_TIMEOUT = 5.0


class Metrics:
    """Prometheus metrics (prometheus-client) and the /healthz + /metrics HTTP endpoint."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.jobs = Gauge("dicom_node_jobs", "Jobs by state", ["state"], registry=self.registry)
        self.instances = Counter("dicom_node_instances_sent", "Instances delivered",
                                 registry=self.registry)
        self.failures = Counter("dicom_node_failures", "Delivery failures by class", ["cls"],
                                registry=self.registry)
        self.convert_seconds = Histogram("dicom_node_conversion_seconds",
                                         "Conversion latency per job", registry=self.registry)
        self.delivery_seconds = Histogram("dicom_node_delivery_seconds",
                                          "Send latency per job", registry=self.registry)
        self.commitments = Counter("dicom_node_commitments", "Storage commitment outcomes "
                                   "(committed, failed, timeout)", ["result"],
                                   registry=self.registry)
        self.commit_seconds = Histogram("dicom_node_commitment_seconds", "From the N-ACTION "
                                        "to the report that every instance is committed",
                                        registry=self.registry)
        self.heartbeat = time.monotonic()
        self._server = None

    def serve(self, port: int, host: str = "127.0.0.1", health=None) -> int:
        """Serve /healthz and /metrics on ``host:port``; returns the port.

        Bounded like any server facing a network: at most :data:`MAX_CONNECTIONS` at once
        (more are closed at once), and a connection that sends no complete request within
        :data:`REQUEST_TIMEOUT` seconds is closed, so idle connections cannot pile up threads.
        """
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        metrics = self

        def default_health() -> dict:
            age = time.monotonic() - metrics.heartbeat
            return {"ok": age < 30, "loop_age_seconds": round(age, 1)}

        self._server = _bounded_server(MAX_CONNECTIONS)((host, port), _handler(
            lambda: generate_latest(metrics.registry), CONTENT_TYPE_LATEST,
            health or default_health))
        threading.Thread(target=self._server.serve_forever, daemon=True,
                         name="metrics").start()
        return self._server.server_address[1]

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


def _handler(metrics_body, metrics_type: str, report):
    """The request handler of /metrics (``metrics_body()``) and /healthz (``report()``)."""
    from http.server import BaseHTTPRequestHandler

    class Handler(BaseHTTPRequestHandler):
        timeout = REQUEST_TIMEOUT  # applied to the socket by StreamRequestHandler

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            if self.path == "/metrics":
                body, ctype, code = metrics_body(), metrics_type, 200
            elif self.path == "/healthz":
                state = report()
                body = json.dumps(state).encode()
                ctype, code = "application/json", 200 if state["ok"] else 503
            else:
                body, ctype, code = b"not found\n", "text/plain", 404
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    return Handler


def _bounded_server(limit: int):
    """A threading HTTP server that serves at most ``limit`` connections at once and closes
    any more at once (so idle connections cannot pile up threads)."""
    from http.server import ThreadingHTTPServer

    slots = threading.BoundedSemaphore(limit)

    class Server(ThreadingHTTPServer):
        daemon_threads = True

        def process_request(self, request, client_address) -> None:
            if not slots.acquire(blocking=False):
                self.shutdown_request(request)  # over the limit: closed at once
                return
            super().process_request(request, client_address)

        def process_request_thread(self, request, client_address) -> None:
            try:
                super().process_request_thread(request, client_address)
            finally:
                slots.release()

    return Server
