"""A DICOMweb server that misbehaves on purpose, for tests: an HTTP proxy on loopback in front
of Orthanc's DICOMweb plugin, which forwards every request (logged in to Orthanc itself) and
can, as a test asks, answer 413 to large requests, 429/503 with Retry-After, drop instances
from a STOW-RS answer or list none, cut an answer short, answer slowly, and demand OAuth2
bearer tokens that it issues itself at ``/token`` (client credentials, RFC 6749 4.4) and
that expire.

What the node records is then compared with what Orthanc holds (its REST API), never with
what this proxy said.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Faults:
    too_large: int | None = None  # requests with more bytes get 413
    busy: list[int] = field(default_factory=list)  # statuses answered first (429/503), in turn
    retry_after: str = "1"
    drop: int = 0  # STOW-RS: instances removed from ReferencedSOPSequence (from the start)
    drop_times: int | None = None  # in this many answers only (None: every answer)
    list_none: bool = False  # STOW-RS: 200 with both sequences empty (Orthanc stored them)
    truncate: bool = False  # STOW-RS: the answer cut in half (its Content-Length promised more)
    slow: float = 0.0  # seconds to wait before answering
    refuse_compressed: bool = False  # STOW-RS: 0xC122 for parts in a compressed syntax
    lie: bool = False  # STOW-RS: 200 listing every part as stored, and nothing forwarded
    client_id: str | None = None  # OAuth2: demand bearer tokens issued to this client
    client_secret: str = ""
    token_seconds: float = 60.0  # how long an issued token is good for


class FaultProxy:
    """``FaultProxy(orthanc).url`` is a DICOMweb base URL; ``faults`` may change between
    requests; ``requests`` lists (method, path, bytes in, status out)."""

    def __init__(self, orthanc, tls: dict | None = None) -> None:
        """``tls``: serve HTTPS with ``{"cert": ..., "key": ...}`` (a hospital's TLS front;
        Debian's Orthanc 1.10 crashes on its own HTTPS connections)."""
        self.orthanc = orthanc
        self.scheme = "https" if tls else "http"
        self.faults = Faults()
        self.requests: list[tuple[str, str, int, int]] = []
        self.tokens: dict[str, float] = {}  # token -> expiry (time.monotonic())
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                proxy._handle(self)

            def do_POST(self) -> None:
                proxy._handle(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if tls:
            import ssl

            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(str(tls["cert"]), str(tls["key"]))
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.server.server_address[1]}/dicom-web"

    @property
    def token_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.server.server_address[1]}/token"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def revoke(self) -> None:
        """Every token issued so far stops working (as after a key rotation)."""
        with self.lock:
            self.tokens.clear()

    def statuses(self, method: str = "POST") -> list[int]:
        return [status for m, _, _, status in self.requests if m == method]

    # --- the handler --------------------------------------------------------------------

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        f = self.faults
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        if h.path == "/token":
            return self._token(h, body)
        status, headers, answer = self._answer(h, body, f)
        if f.slow:
            time.sleep(f.slow)
        with self.lock:
            self.requests.append((h.command, h.path, len(body), status))
        promised = len(answer)
        if f.truncate and h.command == "POST" and status < 300:
            answer = answer[: len(answer) // 2]
        h.send_response(status)
        for key, value in headers.items():
            h.send_header(key, value)
        h.send_header("Content-Length", str(promised))
        h.send_header("Connection", "close" if f.truncate else "keep-alive")
        h.end_headers()
        h.wfile.write(answer)
        if f.truncate:
            h.close_connection = True

    def _answer(self, h, body: bytes, f: Faults) -> tuple[int, dict, bytes]:
        if f.client_id is not None and not self._bearer_ok(h.headers.get("Authorization", "")):
            return 401, {"WWW-Authenticate": "Bearer"}, b""
        with self.lock:
            busy = f.busy.pop(0) if f.busy else None
        if busy is not None:
            return busy, {"Retry-After": f.retry_after}, b""
        if f.too_large is not None and len(body) > f.too_large:
            return 413, {}, b""
        if f.lie and h.command == "POST":
            listed = [{"00081155": {"vr": "UI", "Value": [uid]}}
                      for uid in _instance_uids(h.headers["Content-Type"], body)]
            return 200, {"Content-Type": "application/dicom+json"}, json.dumps(
                {"00081199": {"vr": "SQ", "Value": listed}}).encode()
        refused: list[dict] = []
        if f.refuse_compressed and h.command == "POST":
            body, refused = _without_compressed(h.headers["Content-Type"], body)
        status, headers, answer = self._forward(h, body)
        if refused:  # what the server refused is listed beside what it stored
            stow = json.loads(answer) if answer.strip() else {}
            stow["00081198"] = {"vr": "SQ", "Value": [
                *stow.get("00081198", {}).get("Value", []), *refused]}
            answer = json.dumps(stow).encode()
            status = 202 if stow.get("00081199", {}).get("Value") else 409
        with self.lock:
            dropping = f.drop and f.drop_times != 0
            if dropping and f.drop_times is not None and h.command == "POST":
                f.drop_times -= 1
        if h.command == "POST" and (dropping or f.list_none) and answer.strip():
            stow = json.loads(answer)
            refs = stow.get("00081199", {}).get("Value", [])
            stow["00081199"] = {"vr": "SQ", "Value": [] if f.list_none else refs[f.drop:]}
            answer = json.dumps(stow).encode()
        return status, headers, answer

    def _forward(self, h, body: bytes) -> tuple[int, dict, bytes]:
        """The request as Orthanc answers it (logged in with Orthanc's own password)."""
        login = base64.b64encode(f"dicom-node:{self.orthanc.password}".encode()).decode()
        headers = {"Authorization": f"Basic {login}"}
        for key in ("Content-Type", "Accept"):
            if h.headers.get(key):
                headers[key] = h.headers[key]
        request = urllib.request.Request(self.orthanc.url + h.path, data=body or None,
                                         method=h.command, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=60) as rsp:
                status, answer, kind = rsp.status, rsp.read(), rsp.headers.get("Content-Type")
        except urllib.error.HTTPError as exc:
            status, answer, kind = exc.code, exc.read(), exc.headers.get("Content-Type")
        return status, {"Content-Type": kind} if kind else {}, answer

    def _bearer_ok(self, header: str) -> bool:
        token = header.removeprefix("Bearer ").strip()
        with self.lock:
            expiry = self.tokens.get(token)
        return expiry is not None and time.monotonic() < expiry

    def _token(self, h, body: bytes) -> None:
        """The token endpoint: client credentials in HTTP basic (RFC 6749 2.3.1)."""
        f = self.faults
        expected = base64.b64encode(f"{f.client_id}:{f.client_secret}".encode()).decode()
        form = dict(p.split("=", 1) for p in body.decode().split("&") if "=" in p)
        if (h.headers.get("Authorization") != f"Basic {expected}"
                or form.get("grant_type") != "client_credentials"):
            status, answer = 401, b'{"error": "invalid_client"}'
        else:
            token = secrets.token_urlsafe(24)
            with self.lock:
                self.tokens[token] = time.monotonic() + f.token_seconds
            status, answer = 200, json.dumps({"access_token": token, "token_type": "Bearer",
                                              "expires_in": f.token_seconds}).encode()
        with self.lock:
            self.requests.append((h.command, h.path, len(body), status))
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(answer)))
        h.end_headers()
        h.wfile.write(answer)


def _without_compressed(content_type: str, body: bytes) -> tuple[bytes, list[dict]]:
    """The multipart body without its parts in a compressed transfer syntax, and a
    FailedSOPSequence item (Failure Reason 0xC122) for each of them."""
    import io

    import pydicom

    boundary = content_type.split("boundary=")[1].split(";")[0].strip().strip('"').encode()
    kept, refused = [], []
    for chunk in body.split(b"--" + boundary)[1:-1]:
        head, _, data = chunk.partition(b"\r\n\r\n")
        data = data[:-2]  # the CRLF before the next boundary
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        if ds.file_meta.TransferSyntaxUID.is_compressed:
            refused.append({"00081150": {"vr": "UI", "Value": [str(ds.SOPClassUID)]},
                            "00081155": {"vr": "UI", "Value": [str(ds.SOPInstanceUID)]},
                            "00081197": {"vr": "US", "Value": [0xC122]}})
        else:
            kept.append(head + b"\r\n\r\n" + data)
    out = b"".join(b"--" + boundary + part + b"\r\n" for part in kept)
    return out + b"--" + boundary + b"--\r\n", refused


def _instance_uids(content_type: str, body: bytes) -> list[str]:
    import io

    import pydicom

    boundary = content_type.split("boundary=")[1].split(";")[0].strip().strip('"').encode()
    uids = []
    for chunk in body.split(b"--" + boundary)[1:-1]:
        data = chunk.partition(b"\r\n\r\n")[2][:-2]
        uids.append(str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
                        .SOPInstanceUID))
    return uids
