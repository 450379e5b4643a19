"""Event receivers for tests, on loopback: a webhook receiver that checks signatures (and can
fail its first calls, or be slow), hostile HTTP peers (an endless answer, no answer, a
redirect elsewhere), an SMTP sink with STARTTLS and login (aiosmtpd), and Debian's rsyslog
with TLS (rsyslog-gnutls) as an audit collector."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from conftest import free_port


def check_signature(secret: bytes, body: bytes, header: str) -> bool:
    """The receiver's side of the scheme in README "Events"."""
    parts = dict(p.split("=", 1) for p in header.split(","))
    expected = hmac.new(secret, f"{parts['t']}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, parts["v1"])


class WebhookReceiver:
    """Takes POSTs; the first ``fail_first`` answer 500; each takes ``delay`` seconds."""

    def __init__(self, secret: bytes, fail_first: int = 0, delay: float = 0.0) -> None:
        self.secret, self.fail_first, self.delay = secret, fail_first, delay
        self.calls = 0
        self.received: list[dict] = []  # taken (2xx), in order
        self.bad_signatures = 0
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                time.sleep(receiver.delay)
                with receiver.lock:
                    receiver.calls += 1
                    failing = receiver.calls <= receiver.fail_first
                    if not check_signature(receiver.secret, body,
                                           self.headers["X-Dicom-Node-Signature"]):
                        receiver.bad_signatures += 1
                    elif not failing:
                        event = json.loads(body)
                        assert event["id"] == self.headers["X-Dicom-Node-Event"]
                        receiver.received.append(event)
                self.send_response(500 if failing else 204)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Listener:
    """A loopback TCP listener that counts connections and does ``behaviour`` with each:
    "silent" (never answers), "endless" (an HTTP 200 with a body that never ends),
    "redirect:<url>" (a 307 to another address)."""

    def __init__(self, behaviour: str) -> None:
        self.behaviour = behaviour
        self.connections = 0
        self.sent = 0
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(30)
            try:
                conn.recv(65536)
                if self.behaviour == "silent":
                    self.stop.wait(60)
                elif self.behaviour == "endless":
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2147483648\r\n\r\n")
                    block = b"x" * 65536
                    while not self.stop.is_set() and self.sent < 2 * 1024**3:
                        conn.sendall(block)
                        self.sent += len(block)
                elif self.behaviour.startswith("redirect:"):
                    target = self.behaviour.split(":", 1)[1]
                    conn.sendall(f"HTTP/1.1 307 Temporary Redirect\r\nLocation: {target}\r\n"
                                 "Content-Length: 0\r\n\r\n".encode())
            except OSError:
                pass

    def close(self) -> None:
        self.stop.set()
        self.sock.close()


class Rsyslog:
    """Debian's rsyslogd in the foreground, taking RFC 5425 syslog over TLS on a loopback
    port and writing each message's text, one per line, to ``log``."""

    def __init__(self, folder: Path, pki: dict[str, Path], port: int | None = None) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.log = folder / "audit.log"
        self.conf = folder / "rsyslog.conf"
        self.conf.write_text(f"""
global(workDirectory="{folder}" maxMessageSize="64k"
       defaultNetstreamDriver="gtls" defaultNetstreamDriverCAFile="{pki['ca']}"
       defaultNetstreamDriverCertFile="{pki['server']}"
       defaultNetstreamDriverKeyFile="{pki['server_key']}")
module(load="imtcp" streamDriver.name="gtls" streamDriver.mode="1"
       streamDriver.authMode="anon")
input(type="imtcp" port="{self.port}" address="127.0.0.1")
template(name="msgonly" type="string" string="%msg%\\n")
action(type="omfile" file="{self.log}" template="msgonly")
""")
        self.proc: subprocess.Popen | None = None

    def start(self) -> Rsyslog:
        self.proc = subprocess.Popen(
            ["rsyslogd", "-n", "-f", str(self.conf), "-i", str(self.folder / "rsyslogd.pid")],
            stdout=open(self.folder / "rsyslogd.out", "ab"), stderr=subprocess.STDOUT)  # noqa: SIM115
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.1)
        raise RuntimeError("rsyslogd did not listen: "
                           + (self.folder / "rsyslogd.out").read_text(errors="replace"))

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=15)
        self.proc = None

    def messages(self) -> list[str]:
        if not self.log.exists():
            return []
        return [line for line in self.log.read_text(errors="replace").splitlines() if line]
