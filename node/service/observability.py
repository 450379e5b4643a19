"""What the node tells the people who run it: log lines (plain or JSON, never a patient
attribute), Prometheus metrics and the /healthz endpoint."""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import time
from pathlib import Path

from node.service.journal import Job

log = logging.getLogger("node.service")


class JsonFormatter(logging.Formatter):
    """One JSON object per line; job fields travel in ``extra={"job": {...}}``."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(),
               "level": record.levelname.lower(), "logger": record.name,
               "message": record.getMessage()}
        out.update(getattr(record, "fields", {}))
        return json.dumps(out)


def setup_service_logging(fmt: str, verbose: int = 0) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(
        "%(asctime)s %(levelname)s %(message)s"))
    root = logging.getLogger("node")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)


def log_transition(job: Job, old: str, new: str, detail: str = "") -> None:
    """One line per job transition. Paths and UIDs only: no patient attributes."""
    fields = {"job": job.id, "from": old, "to": new, "source": job.source,
              "destination": job.destination, "attempt": job.attempts}
    if detail:
        fields["detail"] = detail
    log.info("job %d %s: %s -> %s%s", job.id, Path(job.source).name, old, new,
             f" ({detail})" if detail else "", extra={"fields": fields})


# --- metrics and health -----------------------------------------------------------------------

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
        self.heartbeat = time.monotonic()
        self._server = None

    def serve(self, port: int) -> int:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        metrics = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                if self.path == "/metrics":
                    body, ctype, code = generate_latest(metrics.registry), CONTENT_TYPE_LATEST, 200
                elif self.path == "/healthz":
                    age = time.monotonic() - metrics.heartbeat
                    ok = age < 30
                    body = json.dumps({"ok": ok, "loop_age_seconds": round(age, 1)}).encode()
                    ctype, code = "application/json", 200 if ok else 503
                else:
                    body, ctype, code = b"not found\n", "text/plain", 404
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self._server.server_address[1]

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
