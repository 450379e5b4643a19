"""DICOMweb as a client (PS3.18): STOW-RS stores (10.5), QIDO-RS counts a series' instances
and finds studies (10.6), and one QIDO-RS request is the "echo" that proves the server, the
path and the credentials.

The HTTP status of a STOW-RS request says little: servers answer 200 for a part they did not
store, or 400 for a request whose valid parts they stored. So every instance is reconciled
with the answer (PS3.18 10.5.3): it is delivered only when the server lists it in
ReferencedSOPSequence (0008,1199); FailedSOPSequence (0008,1198) gives the Failure Reason,
classified like a C-STORE status (PS3.4 B.2.3); an instance in neither is not delivered,
whatever the status code.

The spool's Part 10 files go out unchanged, streamed from disk in
``multipart/related; type="application/dicom"`` requests of a known length, batched by
``batch_bytes`` and ``batch_instances``: a series is never held in memory. This is why we do
not use dicomweb-client: its ``store_instances`` takes pydicom datasets, re-encodes each one
and builds the whole request in memory.

Rules the server's behaviour cannot bend: 413 splits the batch in halves (one instance alone:
a permanent failure); 429 and 503 are waited out as Retry-After asks (bounded: a long wait
goes back to the node's retry policy); one 401 refreshes an OAuth2 token and resends once;
redirects are not followed (credentials would follow them); an answer is read up to
:data:`ANSWER_CAP` bytes and every text from it is shown through ``peer_text``.
"""

from __future__ import annotations

import base64
import email.utils
import json
import logging
import os
import re
import ssl
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import httpx

from node import __version__
from node.errors import InputError
from node.net.destination import Destination
from node.net.files import UNCOMPRESSED, DicomFile, describe, open_checked
from node.net.pace import pace_of
from node.net.scu import EchoResult, InstanceResult, StoreReport, recorder
from node.net.status import FailureKind, NetworkFailure, Outcome, classify_status, peer_text

log = logging.getLogger("node.net")
# httpx logs every request at INFO (its URL and status): a line per batch in the node's log,
# and the token endpoint's exchanges; what matters is said by our own messages
logging.getLogger("httpx").setLevel(logging.WARNING)

USER_AGENT = f"dicom-node/{__version__}"
#: The most of a server's answer we read (a STOW-RS answer is ~300 bytes per instance).
ANSWER_CAP = 64 * 1024**2
#: The longest Retry-After we wait out inside one request; a longer one goes back to the
#: node's retry policy (the job waits in retry-wait, a push reports the instances not stored).
LONGEST_WAIT = 60.0
#: How many 429/503 answers one request waits out before giving up.
BUSY_TRIES = 5
_CHUNK = 1024**2
_UID = re.compile(r"^[0-9][0-9.]{0,63}$")
_REFERENCED, _FAILED = "00081199", "00081198"
_SOP_CLASS, _SOP_INSTANCE = "00081150", "00081155"
_WARNING_REASON, _FAILURE_REASON = "00081196", "00081197"
_JSON = "application/dicom+json"


# --- authentication ---------------------------------------------------------------------------

def _secret(dest: Destination, key: str, env: str | None) -> str:
    value = os.environ.get(env or "")
    if not value:
        raise NetworkFailure(FailureKind.REJECTED, f"{dest.name}: auth.{key}: the environment "
                             f"variable {env} is not set", transient=False)
    return value


@dataclass
class _Token:
    value: str
    renew_at: float  # time.monotonic() after which a new one is fetched


#: OAuth2 tokens of this process, by (token URL, client id): the node's worker processes and
#: a push's threads each ask once, not once per request.
_TOKENS: dict[tuple[str, str], _Token] = {}
_TOKEN_LOCK = threading.Lock()


class Login:
    """The Authorization header for a destination's requests (none, basic, bearer, OAuth2
    client credentials, RFC 6749 4.4). An OAuth2 token is renewed before it expires (at 80%
    of its lifetime, at least 10 s early), and :meth:`renew` fetches a new one after a 401."""

    def __init__(self, dest: Destination, client: httpx.Client) -> None:
        self.dest = dest
        self.client = client
        self.auth = dest.auth

    def header(self) -> dict[str, str]:
        kind = self.auth.kind
        if kind == "basic":
            password = _secret(self.dest, "password_env", self.auth.password_env)
            pair = f"{self.auth.username or ''}:{password}".encode()
            return {"Authorization": "Basic " + base64.b64encode(pair).decode("ascii")}
        if kind == "bearer":
            return {"Authorization": "Bearer "
                    + _secret(self.dest, "token_env", self.auth.token_env)}
        if kind == "oauth2":
            return {"Authorization": f"Bearer {self._token(renew=False)}"}
        return {}

    def renew(self) -> bool:
        """After a 401: a new OAuth2 token (True), or nothing that could help (False)."""
        if self.auth.kind != "oauth2":
            return False
        self._token(renew=True)
        return True

    def _token(self, renew: bool) -> str:
        key = (self.auth.token_url or "", self.auth.client_id or "")
        with _TOKEN_LOCK:
            token = _TOKENS.get(key)
            if token is None or renew or time.monotonic() >= token.renew_at:
                token = _TOKENS[key] = self._fetch_token()
            return token.value

    def _fetch_token(self) -> _Token:
        auth, dest = self.auth, self.dest
        secret = _secret(dest, "client_secret_env", auth.client_secret_env)
        form = {"grant_type": "client_credentials"} | ({"scope": auth.scope} if auth.scope
                                                         else {})
        try:
            rsp = self.client.post(auth.token_url or "", data=form,
                                   auth=(auth.client_id or "", secret),
                                   headers={"Accept": "application/json"})
        except httpx.HTTPError as exc:
            raise _failure(dest, exc, f"the token endpoint {auth.token_url}") from None
        if rsp.status_code != 200:
            raise NetworkFailure(FailureKind.REJECTED, f"{dest.name}: the token endpoint "
                                 f"{auth.token_url} refused the client credentials (HTTP "
                                 f"{rsp.status_code}): check auth.client_id and "
                                 f"{auth.client_secret_env}", transient=rsp.status_code >= 500)
        try:
            answer = json.loads(rsp.content[:65536])
            value = answer["access_token"]
            lifetime = float(answer.get("expires_in", 300))
            if not isinstance(value, str) or not 0 < len(value) <= 8192 or not value.isprintable():
                raise ValueError("access_token is not a token")
            if str(answer.get("token_type", "bearer")).lower() != "bearer":
                raise ValueError(f"token_type {peer_text(str(answer['token_type']), 40)}")
        except (ValueError, KeyError, TypeError) as exc:
            raise NetworkFailure(FailureKind.REJECTED, f"{dest.name}: the token endpoint "
                                 f"{auth.token_url} sent no usable token ({peer_text(str(exc))})",
                                 transient=False) from None
        lifetime = min(max(lifetime, 0.0), 86400.0)
        return _Token(value, time.monotonic() + min(lifetime * 0.8, max(lifetime - 10, 0)))


# --- requests --------------------------------------------------------------------------------

def client_for(dest: Destination) -> httpx.Client:
    """An HTTP client for ``dest``: TLS verified by default (its ``tls.ca`` or the system's
    CAs, an optional client certificate), timeouts from the destination, no redirects, and no
    proxy or CA taken from the environment (an environment variable is not a config)."""
    verify: Any = False  # plain http: no TLS, so nothing to load (a CA bundle costs ~0.1 s)
    tls = dest.tls
    if (dest.url or "").startswith("https:"):
        # the system's CAs (where a hospital installs its own), or the one in tls.ca
        verify = ssl.create_default_context(cafile=str(tls.ca) if tls and tls.ca else None)
        if tls is not None and not tls.verify:
            verify.check_hostname = False
            verify.verify_mode = ssl.CERT_NONE
        elif tls is not None:
            verify.check_hostname = tls.verify_hostname
        if tls is not None and tls.cert is not None:
            password = os.environ.get(tls.key_password_env) if tls.key_password_env else None
            verify.load_cert_chain(str(tls.cert), str(tls.key), password)
    timeout = httpx.Timeout(dest.network_timeout, connect=dest.connect_timeout)
    limits = httpx.Limits(max_connections=max(1, dest.max_associations) + 1)
    return httpx.Client(verify=verify, timeout=timeout, limits=limits,
                        follow_redirects=False, trust_env=False,
                        headers={"User-Agent": USER_AGENT})


@dataclass(frozen=True)
class Answer:
    status: int
    headers: httpx.Headers
    body: bytes
    note: str = ""  # why the body is not the whole answer (too long, cut short)


def _retry_after(value: str | None, attempt: int) -> float:
    """Seconds to wait from a Retry-After header (seconds or an HTTP date, RFC 9110 10.2.3);
    without one, 1, 2, 4 ... seconds."""
    if value:
        value = value.strip()
        if value.isdigit():
            return float(value)
        try:
            when = email.utils.parsedate_to_datetime(value)
            return max(0.0, when.timestamp() - time.time())
        except (TypeError, ValueError, IndexError, OverflowError):
            pass
    return float(2 ** min(attempt, 5))


def request(client: httpx.Client, login: Login, method: str, url: str, *,
            headers: dict[str, str] | None = None, params: dict[str, str] | None = None,
            body: Callable[[], Iterator[bytes]] | None = None) -> Answer:
    """One HTTP request under the rules (module docstring): ``body`` makes the request's
    content afresh for each try. NetworkFailure when no answer came."""
    dest = login.dest
    renewed = False
    for attempt in range(BUSY_TRIES + 2):
        sent = {**(headers or {}), **login.header()}
        try:
            with client.stream(method, url, headers=sent, params=params,
                               content=body() if body else None) as rsp:
                data, note = _read_capped(rsp)
        except httpx.HTTPError as exc:
            raise _failure(dest, exc, url) from None
        if rsp.status_code == 401 and not renewed and login.renew():
            renewed = True
            continue
        if rsp.status_code in (429, 503) and attempt < BUSY_TRIES:
            wait = _retry_after(rsp.headers.get("Retry-After"), attempt)
            if wait <= LONGEST_WAIT:
                log.info("%s: HTTP %d, waiting %.0f s as the server asks", dest.name,
                         rsp.status_code, wait)
                time.sleep(wait)
                continue
        return Answer(rsp.status_code, rsp.headers, data, note)
    raise AssertionError("unreachable")  # pragma: no cover - the loop always returns


def _read_capped(rsp: httpx.Response) -> tuple[bytes, str]:
    out = bytearray()
    try:
        for chunk in rsp.iter_bytes():
            out += chunk
            if len(out) > ANSWER_CAP:
                return bytes(out[:ANSWER_CAP]), f"the answer is over {ANSWER_CAP} bytes"
    except httpx.HTTPError as exc:  # cut short, or too slow: what came is not the answer
        why = peer_text(str(exc) or type(exc).__name__, 80)
        return bytes(out), f"the answer was cut short ({why})"
    return bytes(out), ""


def _failure(dest: Destination, exc: httpx.HTTPError, what: str) -> NetworkFailure:
    """An HTTP client error in the network's words (the same kinds as an association's)."""
    text = peer_text(str(exc) or type(exc).__name__, 160)
    if isinstance(exc, httpx.TimeoutException):
        return NetworkFailure(FailureKind.TIMEOUT, f"{what}: no answer in time ({text})")
    cause = exc.__context__ or exc.__cause__
    while cause is not None and not isinstance(cause, ssl.SSLError | OSError):
        cause = cause.__context__ or cause.__cause__
    if isinstance(cause, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY" in text:
        return NetworkFailure(FailureKind.TLS, f"{what}: the server's certificate is not "
                              f"trusted ({text}); set tls.ca to the CA that signed it",
                              transient=False)
    if isinstance(cause, ssl.SSLError) or "SSL" in text:
        return NetworkFailure(FailureKind.TLS, f"{what}: TLS failed ({text})")
    if isinstance(exc, httpx.ConnectError):
        if "Name or service not known" in text or "nodename" in text:
            return NetworkFailure(FailureKind.DNS, f"{what}: unknown host ({text})")
        return NetworkFailure(FailureKind.REFUSED, f"{what}: cannot connect ({text})")
    return NetworkFailure(FailureKind.NETWORK, f"{what}: {text}")


def _refused(dest: Destination, answer: Answer, what: str) -> NetworkFailure | None:
    """The answers that say the destination's settings are wrong (an operator must act):
    a refused login, no such service at this URL, a redirect."""
    code = answer.status
    if code in (401, 403):
        return NetworkFailure(FailureKind.REJECTED, f"{dest.address}: the server refused our "
                              f"credentials (HTTP {code}); check [destinations.{dest.name}]."
                              "auth", transient=False)
    if code in (404, 405):
        return NetworkFailure(FailureKind.REJECTED, f"{dest.address}: no {what} service here "
                              f"(HTTP {code}); check [destinations.{dest.name}].url",
                              transient=False)
    if 300 <= code < 400:
        where = peer_text(answer.headers.get("Location", "?"), 120)
        return NetworkFailure(FailureKind.REJECTED, f"{dest.address}: the server redirects to "
                              f"{where} (HTTP {code}); write that URL in "
                              f"[destinations.{dest.name}].url", transient=False)
    return None


# --- STOW-RS -------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Part:
    """One instance of a request: the file streamed as it is, or (a DICOM file without the
    Part 10 header) its bytes made here."""

    file: DicomFile
    size: int
    data: bytes | None = None
    checked: bool = False  # its structure walked (in the worker, while the other requests go)
    copy: Path | None = None  # re-encoded for a server that refused its transfer syntax

    def header(self, boundary: str) -> bytes:
        # (no transfer-syntax parameter: Orthanc's plugin then ignores the part, and a
        # Part 10 file names its transfer syntax itself, PS3.18 8.7.3.5)
        return f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode("ascii")

    def chunks(self) -> Iterator[bytes]:
        if self.data is not None:
            yield self.data
            return
        sent = 0
        with open(self.copy or self.file.path, "rb") as fp:
            while chunk := fp.read(min(_CHUNK, self.size - sent)):
                sent += len(chunk)
                yield chunk
        if sent != self.size:  # the request's length is promised: never send less or more
            raise OSError(f"{self.file.path} changed while it was sent")


def _sized(f: DicomFile) -> _Part:
    """``f`` as batching sees it: its size (InputError when it cannot be read)."""
    try:
        return _Part(f, f.path.stat().st_size)
    except OSError as exc:
        raise InputError(f.path, f"cannot read ({exc.strerror or exc})") from None


def _part(f: DicomFile) -> _Part:
    """``f`` ready to go: its structure checked (a malformed file fails alone, InputError),
    sent as it is when it is a Part 10 file, else given a file meta by pydicom."""
    fp, described = open_checked(f)
    try:
        fp.seek(0)
        part10 = fp.read(132)[128:132] == b"DICM"
        size = os.fstat(fp.fileno()).st_size
    finally:
        fp.close()
    if part10:
        return _Part(described, size, checked=True)
    from pydicom import dcmread

    try:
        ds = dcmread(f.path, force=True)
        out = BytesIO()
        ds.save_as(out, enforce_file_format=True)
    except Exception as exc:
        raise InputError(f.path, f"cannot be made a Part 10 file ({peer_text(str(exc), 120)})"
                         ) from None
    data = out.getvalue()
    return _Part(described, len(data), data, checked=True)


def _uncompressed(part: _Part, scratch: Path) -> _Part:
    """``part`` decompressed into Explicit VR Little Endian, written to ``scratch`` (not held
    in memory), keeping its SOP Instance UID and every pixel value: for a server that refused
    its compressed transfer syntax (Failure Reason 0xC122), as a DIMSE peer without the
    syntax gets it. InputError when pydicom cannot decode it."""
    from pydicom import dcmread

    f = part.file
    copy = scratch / f"{f.sop_instance_uid}.dcm"
    try:
        ds = dcmread(f.path)
        ds.decompress(generate_instance_uid=False)  # (the same instance, another encoding)
        ds.save_as(copy, enforce_file_format=True)
    except Exception as exc:
        raise InputError(f.path, f"the server does not take transfer syntax "
                         f"{f.transfer_syntax} and the file cannot be decompressed here "
                         f"({peer_text(str(exc), 120)})") from None
    return _Part(f, copy.stat().st_size, checked=True, copy=copy)


def batches(parts: Sequence[_Part], max_bytes: int, max_count: int) -> list[list[_Part]]:
    """Consecutive parts in requests of at most ``max_count`` instances and ``max_bytes``
    bytes of files (an instance larger than that goes alone)."""
    out: list[list[_Part]] = []
    current: list[_Part] = []
    size = 0
    for part in parts:
        if current and (len(current) >= max_count or size + part.size > max_bytes):
            out.append(current)
            current, size = [], 0
        current.append(part)
        size += part.size
    if current:
        out.append(current)
    return out


def _body(parts: Sequence[_Part], boundary: str) -> tuple[int, Callable[[], Iterator[bytes]]]:
    """The request body's length and a maker of its bytes (streamed, one file at a time)."""
    closing = f"--{boundary}--\r\n".encode("ascii")
    length = sum(len(p.header(boundary)) + p.size + 2 for p in parts) + len(closing)

    def produce() -> Iterator[bytes]:
        for part in parts:
            yield part.header(boundary)
            yield from part.chunks()
            yield b"\r\n"
        yield closing

    return length, produce


def _items(answer: dict, tag: str) -> list[dict]:
    element = answer.get(tag)
    if element is None:
        return []
    items = element.get("Value", []) if isinstance(element, dict) else None
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise ValueError(f"({tag[:4]},{tag[4:]}) is not a sequence")
    return items


def _value(item: dict, tag: str) -> Any:
    element = item.get(tag)
    if not isinstance(element, dict):
        return None
    values = element.get("Value")
    return values[0] if isinstance(values, list) and values else None


def _from_xml(body: bytes) -> dict:
    """A PS3.19 Native DICOM Model answer as the JSON model's shape (only what we read).
    No DTD is allowed (entity expansion is an attack, never a STOW-RS answer)."""
    from xml.etree import ElementTree

    if b"<!DOCTYPE" in body or b"<!ENTITY" in body:
        raise ValueError("an XML answer with a DTD")

    def local(tag: str) -> str:
        return tag.rsplit("}", 1)[-1]

    def convert(node) -> dict:
        out: dict = {}
        for attribute in node:
            if local(attribute.tag) != "DicomAttribute":
                continue
            tag = (attribute.get("tag") or "").upper()
            items = [convert(i) for i in attribute if local(i.tag) == "Item"]
            values = [v.text or "" for v in attribute if local(v.tag) == "Value"]
            out[tag] = {"Value": items} if items else {"Value": values}
        return out

    try:
        root = ElementTree.fromstring(body)
    except ElementTree.ParseError as exc:  # (a SyntaxError, not a ValueError)
        raise ValueError(f"unreadable XML ({exc})") from None
    if local(root.tag) != "NativeDicomModel":
        raise ValueError(f"XML that is not a DICOM data set ({peer_text(local(root.tag), 40)})")
    return convert(root)


def read_answer(body: bytes) -> dict[str, tuple[Outcome, int | None, str]]:
    """What a STOW-RS answer (DICOM JSON or XML, PS3.18 10.5.3) says of each SOP Instance
    UID: (outcome, reason code, meaning). ValueError when it cannot be read as one."""
    text = body.lstrip()
    if text[:1] in (b"{", b"["):
        answer = json.loads(text)
        if isinstance(answer, list) and len(answer) == 1:
            answer = answer[0]
    elif text[:1] == b"<":
        answer = _from_xml(text)
    else:
        raise ValueError("neither DICOM JSON nor XML" if text else "an empty answer")
    if not isinstance(answer, dict):
        raise ValueError("not a data set")
    said: dict[str, tuple[Outcome, int | None, str]] = {}
    for item in _items(answer, _REFERENCED):
        uid, code = _value(item, _SOP_INSTANCE), _code(_value(item, _WARNING_REASON))
        if isinstance(uid, str):
            said[uid.strip()] = ((Outcome.SUCCESS, None, "stored") if code is None else (
                Outcome.WARNING, code, f"stored with warning {classify_status(code)[1]}"))
    for item in _items(answer, _FAILED):
        uid, code = _value(item, _SOP_INSTANCE), _code(_value(item, _FAILURE_REASON))
        if not isinstance(uid, str):
            continue
        uid = uid.strip()
        if uid in said:  # listed as stored and as failed: not counted as stored
            said[uid] = (Outcome.TRANSIENT, code, "listed both as stored and as failed")
        elif code is None:
            said[uid] = (Outcome.TRANSIENT, None, "failed without a Failure Reason")
        else:
            outcome, meaning = classify_status(code)
            meaning = _STOW_REASONS.get(code, meaning)
            if outcome is Outcome.DUPLICATE:
                meaning += ": the archive holds this instance already"
            said[uid] = (outcome, code, f"Failure Reason {meaning}")
    return said


#: Failure Reasons a STOW-RS answer gives (PS3.18 10.5.3), in words that say what to do.
#: "Referenced Transfer Syntax not supported" (PS3.18 10.5.3)
_SYNTAX_REFUSED = 0xC122
_STOW_REASONS = {
    0xC122: "0xC122 Referenced Transfer Syntax not supported: the server does not take this "
            'encoding; set compression = "none" for this destination',
    0x0122: "0x0122 Referenced SOP Class not supported: the server does not take this kind of "
            'object; set an iod it takes (iod = "image" for classic images)',
    0x0110: "0x0110 Processing failure",
}


def _code(value: Any) -> int | None:
    if value is None or value == "":
        return None
    code = int(value.strip()) if isinstance(value, str) else value  # XML: decimal text
    if not isinstance(code, int) or isinstance(code, bool) or not 0 <= code <= 0xFFFF:
        raise ValueError(f"a reason code {peer_text(str(value), 20)}")
    return code


@dataclass
class _Sent:
    """What one request settled, and what is to be sent again instead."""

    results: list[InstanceResult]
    halves: list[list[_Part]]  # after a 413: the batch in two
    refused_syntax: list[_Part]  # compressed instances refused with 0xC122: sent decompressed


def _send_batch(client: httpx.Client, login: Login, parts: list[_Part], t0: float) -> _Sent:
    """POST one batch: a result for each instance it settles, and what to send again."""
    dest = login.dest
    boundary = uuid.uuid4().hex
    length, produce = _body(parts, boundary)
    headers = {"Content-Type": f'multipart/related; type="application/dicom"; '
                               f"boundary={boundary}",
               "Content-Length": str(length), "Accept": _JSON}
    answer = request(client, login, "POST", f"{dest.url}/studies", headers=headers,
                     body=produce)
    refused = _refused(dest, answer, "STOW-RS")
    if refused is not None:
        raise refused
    if answer.status == 413 and len(parts) > 1:
        half = len(parts) // 2
        return _Sent([], [parts[:half], parts[half:]], [])

    def result(part: _Part, outcome: Outcome, code: int | None, message: str) -> InstanceResult:
        return InstanceResult(part.file, outcome, code, f"HTTP {answer.status}: {message}",
                              time.monotonic() - t0)

    if answer.status == 413:
        return _Sent([result(parts[0], Outcome.PERMANENT, None, f"the server refuses a request of "
                       f"{length} bytes with this one instance as too large")], [], [])
    if answer.status == 415:
        return _Sent([result(p, Outcome.PERMANENT, None, "the server does not take "
                              "application/dicom") for p in parts], [], [])
    try:
        said = read_answer(answer.body)
        why = ""
    except Exception as exc:  # the server's bytes: whatever is wrong, nothing is confirmed
        said, why = {}, peer_text(str(exc) or type(exc).__name__, 100)
    if answer.note:
        said, why = {}, answer.note
    if answer.status in (429, 503):
        wait = peer_text(answer.headers.get("Retry-After", "-"), 40)
        why = f"the server is busy (Retry-After: {wait})"
    out, again = [], []
    for part in parts:
        uid = part.file.sop_instance_uid
        if uid in said and said[uid][1] == _SYNTAX_REFUSED and part.copy is None and (
                part.file.transfer_syntax not in UNCOMPRESSED):
            again.append(part)  # sent again decompressed (see _run_batch)
        elif uid in said:
            out.append(result(part, *said[uid]))
        elif why:
            out.append(result(part, Outcome.TRANSIENT, None, f"not counted as stored: {why}"))
        else:
            out.append(result(part, Outcome.TRANSIENT, None, "the server's answer does not "
                              "list this instance as stored: not counted as stored"))
    return _Sent(out, [], again)


def store(dest: Destination, calling_ae: str, files: Sequence[DicomFile],
          progress: Callable[[InstanceResult], None] | None = None) -> StoreReport:
    """STOW-RS every file, in batches, over up to ``dest.max_associations`` requests at once.
    Never raises for network trouble: every file gets exactly one InstanceResult; a failure
    of a whole request is also listed in ``failures``. ``calling_ae`` is not used (HTTP has
    no AE titles): the signature is :func:`node.net.scu.store`'s."""
    from concurrent.futures import ThreadPoolExecutor

    report = StoreReport(dest.address)
    t0 = time.monotonic()
    record, lock = recorder(report, progress)
    parts = []
    for f in files:
        try:
            parts.append(_sized(f))
        except InputError as exc:
            record(InstanceResult(describe(f), Outcome.PERMANENT, None, exc.reason,
                                  time.monotonic() - t0))
    most, most_bytes = dest.batch_instances, dest.batch_bytes
    if dest.max_instances_per_second:  # a request carries at most one second of the cap
        most = max(1, min(most, int(dest.max_instances_per_second)))
    if dest.max_bytes_per_second:
        most_bytes = max(1, min(most_bytes, int(dest.max_bytes_per_second)))
    work = deque(batches(parts, most_bytes, most))
    stop = threading.Event()
    pace = pace_of(dest)
    with client_for(dest) as client, tempfile.TemporaryDirectory(prefix="dicom-node-stow-") as tmp:
        login = Login(dest, client)

        def worker() -> None:
            while not stop.is_set():
                with lock:
                    if not work:
                        return
                    batch = work.popleft()
                pace.wait(len(batch), sum(p.size for p in batch))  # the rate cap, if any
                _run_batch(client, login, batch, t0, work, lock, record, report, Path(tmp))

        n = max(1, min(dest.max_associations, len(work)))
        with ThreadPoolExecutor(n, thread_name_prefix="stow-rs") as pool:
            futures = [pool.submit(worker) for _ in range(n)]
            try:
                for future in futures:
                    future.result()
            except KeyboardInterrupt:  # the requests in flight finish and are counted
                stop.set()
                report.interrupted = True
                for future in futures:
                    future.result()
    for batch in work:  # left by an interrupted push
        for part in batch:
            record(InstanceResult(part.file, Outcome.TRANSIENT, None,
                                  "not sent: the push was interrupted", time.monotonic() - t0))
    report.seconds = time.monotonic() - t0
    return report


def _run_batch(client: httpx.Client, login: Login, batch: list[_Part], t0: float,
               work: deque, lock: threading.Lock, record: Callable[[InstanceResult], None],
               report: StoreReport, scratch: Path) -> None:
    ready = []
    for part in batch:  # each file checked just before it goes, while other requests run
        try:
            ready.append(part if part.checked else _part(part.file))
        except InputError as exc:
            record(InstanceResult(describe(part.file), Outcome.PERMANENT, None, exc.reason,
                                  time.monotonic() - t0))
    if not ready:
        return
    batch = ready
    try:
        sent = _send_batch(client, login, batch, t0)
    except NetworkFailure as failure:
        with lock:
            if not any(f.message == failure.message for f in report.failures):
                report.failures.append(failure)
        outcome = Outcome.TRANSIENT if failure.transient else Outcome.PERMANENT
        for part in batch:
            record(InstanceResult(part.file, outcome, None, failure.message,
                                  time.monotonic() - t0))
        return
    except OSError as exc:  # a spool file changed or vanished while it was sent
        for part in batch:
            record(InstanceResult(part.file, Outcome.TRANSIENT, None, f"not sent: {exc}",
                                  time.monotonic() - t0))
        return
    for result in sent.results:
        record(result)
    instead = list(sent.halves)
    redone = []
    for part in sent.refused_syntax:
        try:
            redone.append(_uncompressed(part, scratch))
        except InputError as exc:
            record(InstanceResult(part.file, Outcome.PERMANENT, _SYNTAX_REFUSED, exc.reason,
                                  time.monotonic() - t0))
    if redone:
        instead.append(redone)
    with lock:  # first in line: a split batch, or the decompressed copies
        work.extendleft(reversed(instead))


# --- QIDO-RS and the echo -------------------------------------------------------------------

def _qido(client: httpx.Client, login: Login, path: str, params: dict[str, str],
          limit: int) -> list[dict]:
    """A QIDO-RS search (PS3.18 10.6): the matches as DICOM JSON objects, at most ``limit``
    (more is a NetworkFailure: the query was not narrow enough to trust)."""
    dest = login.dest
    answer = request(client, login, "GET", f"{dest.url}{path}", params=params,
                     headers={"Accept": _JSON})
    refused = _refused(dest, answer, "QIDO-RS")
    if refused is not None:
        raise refused
    if answer.status == 204:
        return []
    if answer.status != 200 or answer.note:
        raise NetworkFailure(FailureKind.NETWORK, f"{dest.address}{path}: QIDO-RS failed (HTTP "
                             f"{answer.status}{'; ' + answer.note if answer.note else ''})")
    try:
        found = json.loads(answer.body) if answer.body.strip() else []
        if not isinstance(found, list) or not all(isinstance(m, dict) for m in found):
            raise ValueError("not a list of data sets")
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise NetworkFailure(FailureKind.NETWORK, f"{dest.address}{path}: an unreadable "
                             f"QIDO-RS answer ({peer_text(str(exc), 80)})", transient=False
                             ) from None
    if len(found) > limit:
        raise NetworkFailure(FailureKind.NETWORK, f"{dest.address}{path}: more than {limit} "
                             "matches", transient=False)
    return found


def echo(dest: Destination, calling_ae: str = "") -> EchoResult:
    """A QIDO-RS search for one study: it proves the server answers DICOMweb at this URL and
    takes our credentials. NetworkFailure with the reason when it does not."""
    t0 = time.perf_counter()
    with client_for(dest) as client:
        login = Login(dest, client)
        answer = request(client, login, "GET", f"{dest.url}/studies", params={"limit": "1"},
                         headers={"Accept": _JSON})
    t1 = time.perf_counter()
    refused = _refused(dest, answer, "QIDO-RS")
    if refused is not None:
        raise refused
    if answer.status not in (200, 204):
        raise NetworkFailure(FailureKind.NETWORK, f"{dest.address}: QIDO-RS answered HTTP "
                             f"{answer.status}")
    server = peer_text(answer.headers.get("Server", ""), 60)
    return EchoResult(dest.address, 0.0, (t1 - t0) * 1000, 0,
                      f"HTTP {answer.status}" + (f", {server}" if server else ""), "QIDO-RS")


def series_instance_counts(dest: Destination, calling_ae: str,
                           series: Sequence[tuple[str, str]] | Any) -> dict[str, int | None]:
    """NumberOfSeriesRelatedInstances (0020,1209) per (study UID, series UID), by QIDO-RS at
    series level; where the server does not give it, the series' instances are counted
    (QIDO-RS at instance level). None where the server has no such series."""
    counts: dict[str, int | None] = {}
    with client_for(dest) as client:
        login = Login(dest, client)
        for study_uid, series_uid in series:
            counts[series_uid] = None
            if not (_UID.match(study_uid or "") and _UID.match(series_uid or "")):
                continue  # an empty or odd key would match other series (or another path)
            found = _qido(client, login, f"/studies/{study_uid}/series",
                          {"SeriesInstanceUID": series_uid, "includefield": "00201209"}, 1000)
            mine = [m for m in found if _value(m, "0020000E") == series_uid]
            if not mine:
                continue
            counts[series_uid] = _count(dest, _value(mine[0], "00201209"), series_uid)
            if counts[series_uid] is None:
                instances = _qido(client, login, f"/studies/{study_uid}/series/{series_uid}"
                                  "/instances", {"includefield": "00080018"}, 100_000)
                counts[series_uid] = len(instances)
    return counts


def _count(dest: Destination, value: Any, series_uid: str) -> int | None:
    try:
        count = int(str(value).strip()) if value not in (None, "") else None
    except ValueError:
        count = -1
    if count is not None and count < 0:
        log.warning("%s: the server answered an unreadable count for series %s; counting "
                    "its instances", dest.address, series_uid)
        return None
    return count


def find_studies(dest: Destination, calling_ae: str, keys: dict[str, str],
                 return_keys: Sequence[str]) -> list:
    """The studies matching ``keys`` (QIDO-RS at study level, PS3.18 10.6.1), as pydicom
    datasets with ``return_keys``. Every key must have a value: an empty key would match
    every study. NetworkFailure for a failed query or an unreadable answer."""
    from pydicom.dataset import Dataset

    from node.net.scu import MAX_STUDY_MATCHES

    if not keys or any(not str(v).strip() for v in keys.values()):
        raise ValueError("every query key needs a value")
    params = dict(keys) | {"includefield": ",".join(return_keys),
                           "limit": str(MAX_STUDY_MATCHES + 1)}
    with client_for(dest) as client:
        found = _qido(client, Login(dest, client), "/studies", params, MAX_STUDY_MATCHES)
    studies = []
    for match in found:
        try:
            studies.append(Dataset.from_json(match))
        except Exception as exc:  # the server's data: anything may be wrong with it
            raise NetworkFailure(FailureKind.NETWORK, f"{dest.address}: an unreadable QIDO-RS "
                                 f"match ({peer_text(str(exc), 80)})", transient=False) from None
    return studies
