"""Sending events to people and systems (issue 25): a webhook's HTTP POST, a mail over SMTP,
an audit message over syslog (RFC 5424, over TLS per RFC 5425 or UDP per RFC 5426).

Each receiver is outside our control, so each send is bounded: a connect and a total
deadline, at most :data:`MAX_ANSWER` bytes of an answer read, no redirect followed (a
receiver that redirects is a failure named as such, never a request to another address), no
proxy or CA taken from the environment. Every failure is a :class:`NotifyFailure` with a
one-line reason; the caller retries from its journal cursor.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import time
from dataclasses import dataclass
from pathlib import Path

#: The most of a receiver's answer we read (we need its status, not its body).
MAX_ANSWER = 64 * 1024


class NotifyFailure(Exception):
    """A receiver did not take what we sent; ``message`` says why, in one line."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class TlsFiles:
    """TLS towards a receiver: its CA (None: the system's), our client certificate, if asked."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None

    def context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca) if self.ca else None)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.cert:
            ctx.load_cert_chain(str(self.cert), str(self.key) if self.key else None)
        return ctx


def post(url: str, body: bytes, headers: dict[str, str], timeout: float,
         tls: TlsFiles | None = None) -> int:
    """POST ``body``; the status of a 2xx answer, else NotifyFailure. The whole exchange
    (connect, send, the answer's first :data:`MAX_ANSWER` bytes) ends within ``timeout``."""
    import httpx

    deadline = time.monotonic() + timeout
    verify: ssl.SSLContext | bool = (tls or TlsFiles()).context() if url.startswith(
        "https://") else False
    try:
        with httpx.Client(timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
                          follow_redirects=False, trust_env=False, verify=verify) as client, \
                client.stream("POST", url, content=body, headers=headers) as answer:
            read = 0
            for chunk in answer.iter_raw():
                read += len(chunk)
                if read >= MAX_ANSWER or time.monotonic() > deadline:
                    break  # its status is all we need: the rest is not read
            status = answer.status_code
    except httpx.TimeoutException:
        raise NotifyFailure(f"{url}: no answer within {timeout:g} s") from None
    except httpx.HTTPError as exc:
        raise NotifyFailure(f"{url}: {type(exc).__name__}: {exc}") from None
    except (OSError, ssl.SSLError) as exc:
        raise NotifyFailure(f"{url}: {exc}") from None
    if 300 <= status < 400:
        raise NotifyFailure(f"{url}: answered {status} (a redirect), which is not followed: "
                            "configure the address it points to")
    if not 200 <= status < 300:
        raise NotifyFailure(f"{url}: answered HTTP {status}")
    return status


def syslog_frame(message: bytes) -> bytes:
    """RFC 5425 section 4.3: octet counting, ``MSG-LEN SP SYSLOG-MSG``."""
    return str(len(message)).encode() + b" " + message


class SyslogSender:
    """One connection to a syslog collector: TLS (RFC 5425) or UDP (RFC 5426).

    TLS has no acknowledgement: a message written just before the collector went away is
    lost in its socket. So before each message the connection is checked: one the collector
    closed (readable, at its end) is opened again and the message sent before is sent again
    (at least once; the audit message's own time and ids tell a repeat)."""

    def __init__(self, host: str, port: int, transport: str, tls: TlsFiles | None,
                 timeout: float = 10.0) -> None:
        self.host, self.port, self.transport, self.tls = host, port, transport, tls
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._last: bytes | None = None  # the last message written
        self._unsure: bytes | None = None  # written, but the connection died after it

    def _open(self) -> socket.socket:
        address = (self.host, self.port)
        try:
            if self.transport == "udp":
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sock.settimeout(self.timeout)
                sock.connect(address)  # so a closed port on this host says so (ECONNREFUSED)
                return sock
            raw = socket.create_connection(address, timeout=self.timeout)
            return (self.tls or TlsFiles()).context().wrap_socket(raw, server_hostname=self.host)
        except (OSError, ssl.SSLError) as exc:
            raise NotifyFailure(f"syslog {self.host}:{self.port}: {exc}") from None

    def _closed_by_peer(self) -> bool:
        import select

        sock = self._sock
        if sock is None or self.transport == "udp":
            return False
        readable, _, _ = select.select([sock], [], [], 0)
        if not readable:
            return False
        try:
            return sock.recv(1) == b""
        except (OSError, ssl.SSLError):
            return True

    def send(self, message: bytes) -> None:
        if self._sock is not None and self._closed_by_peer():
            self.close()
            self._unsure = self._last
        if self._sock is None:
            self._sock = self._open()
        try:
            for m in (self._unsure, message):
                if m is None:
                    continue
                if self.transport == "udp":
                    self._sock.send(m)
                else:
                    self._sock.sendall(syslog_frame(m))
        except (OSError, ssl.SSLError) as exc:
            self.close()
            self._unsure = self._unsure or self._last
            raise NotifyFailure(f"syslog {self.host}:{self.port}: {exc}") from None
        self._unsure, self._last = None, message

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None


def send_mail(host: str, port: int, security: str, username: str | None,
              password: str | None, sender: str, to: tuple[str, ...], subject: str, text: str,
              tls: TlsFiles | None, timeout: float = 30.0) -> None:
    """One plain-text mail over SMTP: ``security`` "starttls", "tls" (implicit, port 465) or
    "none" (loopback only); login when a username is given."""
    import smtplib
    from email.message import EmailMessage

    mail = EmailMessage()
    mail["From"], mail["To"], mail["Subject"] = sender, ", ".join(to), subject
    mail.set_content(text)
    context = (tls or TlsFiles()).context()
    try:
        if security == "tls":
            client: smtplib.SMTP = smtplib.SMTP_SSL(host, port, timeout=timeout, context=context)
        else:
            client = smtplib.SMTP(host, port, timeout=timeout)
        with client:
            if security == "starttls":
                client.starttls(context=context)
            if username:
                client.login(username, password or "")
            client.send_message(mail)
    except (smtplib.SMTPException, OSError, ssl.SSLError) as exc:
        raise NotifyFailure(f"smtp {host}:{port}: {exc}") from None
