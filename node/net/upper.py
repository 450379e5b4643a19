"""One DICOM association, driven synchronously by a service class user (PS3.8, PS3.7).

Why not pynetdicom's ``Association``: its state machine runs in two threads per association
(the DUL reading the socket, a reactor serving the DIMSE queue), polls in 1 ms steps and builds
every command set as a pydicom Dataset. Measured here on loopback against Orthanc, that costs
about 2 ms of CPU per C-STORE: one association reached half of DCMTK ``storescu``'s rate.
An SCU that sends one message and waits for its answer needs none of that machinery, so this
module does what storescu does: one blocking socket, one request at a time (no asynchronous
operations window is proposed, PS3.7 D.3.3.3), every wait bounded by a named timeout.

What comes from pynetdicom: the association PDUs (A-ASSOCIATE-RQ/AC/RJ, A-ABORT) are encoded
and decoded by ``pynetdicom.pdu``, and their reasons named by it. What is here: TCP/TLS set-up,
P-DATA-TF framing (PS3.8 9.3.5 and annex E) and DIMSE command sets, which are group 0000 in
Implicit VR Little Endian (PS3.7 6.3.1).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import BinaryIO, NoReturn

from pynetdicom import pdu as pdu_codecs
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
)
from pynetdicom.presentation import build_context

from node import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from node.net.destination import Destination

log = logging.getLogger(__name__)

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"  # DICOM Application Context Name, PS3.7 A.2.1

# PDU types, PS3.8 9.3.1
A_ASSOCIATE_RQ, A_ASSOCIATE_AC, A_ASSOCIATE_RJ = 0x01, 0x02, 0x03
P_DATA_TF, A_RELEASE_RQ, A_RELEASE_RP, A_ABORT = 0x04, 0x05, 0x06, 0x07
_RELEASE_RQ_PDU = b"\x05\x00\x00\x00\x00\x04\x00\x00\x00\x00"
_RELEASE_RP_PDU = b"\x06\x00\x00\x00\x00\x04\x00\x00\x00\x00"
_ABORT_PDU = b"\x07\x00\x00\x00\x00\x04\x00\x00\x00\x00"  # source: service user, no reason
_LARGEST_INCOMING_PDU = 64 * 1024**2  # when we announce "no limit": refuse garbage lengths
_UNLIMITED_FRAGMENT = 1024**2  # fragment size when the peer announces "no limit"
_FLUSH_BYTES = 1024**2  # PDUs of one message are written in batches of about this size

# Command set elements, PS3.7 E.1
GROUP_LENGTH = 0x00000000
AFFECTED_SOP_CLASS = 0x00000002
COMMAND_FIELD = 0x00000100
MESSAGE_ID = 0x00000110
MESSAGE_ID_RESPONDED_TO = 0x00000120
PRIORITY = 0x00000700
DATA_SET_TYPE = 0x00000800
STATUS = 0x00000900
ERROR_COMMENT = 0x00000902
AFFECTED_SOP_INSTANCE = 0x00001000
NO_DATA_SET = 0x0101  # CommandDataSetType: any other value means a data set follows
DATA_SET_PRESENT = 0x0001


class FailureKind(StrEnum):
    DNS = "dns"
    REFUSED = "connection refused"
    TIMEOUT = "timeout"
    REJECTED = "association rejected"
    ABORTED = "aborted"
    TLS = "tls"
    NETWORK = "network"
    NO_CONTEXT = "no accepted presentation context"


class NetworkFailure(Exception):
    """An association could not be used. ``transient``: trying again later may succeed."""

    def __init__(self, kind: FailureKind, message: str, transient: bool = True) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.transient = transient

    def __reduce__(self):
        return (self.__class__, (self.kind, self.message, self.transient))


# --- DIMSE command sets -----------------------------------------------------------------------

def _element(tag: int, value: int | str | bytes) -> bytes:
    if isinstance(value, str):  # UI: padded with NUL to an even length (PS3.5 6.2)
        raw = value.encode("ascii")
        raw += b"\0" * (len(raw) % 2)
    elif isinstance(value, int):  # US
        raw = struct.pack("<H", value)
    else:
        raw = value
    return struct.pack("<HHI", tag >> 16, tag & 0xFFFF, len(raw)) + raw


def command_set(fields: Sequence[tuple[int, int | str]]) -> bytes:
    """Encode a command set: ``fields`` in ascending tag order, preceded by its group length."""
    body = b"".join(_element(tag, value) for tag, value in fields)
    return _element(GROUP_LENGTH, struct.pack("<I", len(body))) + body


def parse_command_set(data: bytes) -> dict[int, bytes]:
    """The raw values of a command set by tag; ValueError if it is not one."""
    out: dict[int, bytes] = {}
    pos = 0
    while pos < len(data):
        if pos + 8 > len(data):
            raise ValueError("truncated command element")
        group, elem, length = struct.unpack_from("<HHI", data, pos)
        if group != 0 or pos + 8 + length > len(data):
            raise ValueError(f"element ({group:04X},{elem:04X}) is not a valid command element")
        out[elem] = data[pos + 8: pos + 8 + length]
        pos += 8 + length
    return out


@dataclass(frozen=True)
class Message:
    """A DIMSE message received from the peer: its command set and data set, still encoded."""

    context_id: int
    command: dict[int, bytes]
    dataset: bytes | None

    def us(self, tag: int) -> int | None:
        raw = self.command.get(tag & 0xFFFF)
        return struct.unpack("<H", raw[:2])[0] if raw and len(raw) >= 2 else None

    def text(self, tag: int) -> str:
        return self.command.get(tag & 0xFFFF, b"").rstrip(b"\0 ").decode("ascii", "replace")

    @property
    def status(self) -> int | None:
        return self.us(STATUS)


# --- the association --------------------------------------------------------------------------

@dataclass(frozen=True)
class AcceptedContext:
    id: int
    abstract_syntax: str
    transfer_syntax: str


def _tls_context(dest: Destination) -> ssl.SSLContext:
    tls = dest.tls
    assert tls is not None
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=tls.ca)
    if not tls.verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx.check_hostname = tls.verify_hostname
    if tls.cert:
        ctx.load_cert_chain(tls.cert, tls.key)
    return ctx


def _connect(dest: Destination) -> socket.socket:
    """A TCP (and TLS) connection to ``dest`` with Nagle off; NetworkFailure saying why not.

    Nagle's algorithm is switched off: a C-STORE otherwise stalls on delayed ACKs for
    40-90 ms per instance.
    """
    where = dest.address
    try:
        infos = socket.getaddrinfo(dest.host, dest.port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise NetworkFailure(
            FailureKind.DNS, f"cannot resolve host {dest.host!r} ({exc.strerror})"
        ) from None
    address = infos[0][4][0]
    try:
        sock = socket.create_connection((address, dest.port), timeout=dest.connect_timeout)
    except ConnectionRefusedError:
        raise NetworkFailure(
            FailureKind.REFUSED, f"connection refused by {where} (is the PACS running?)"
        ) from None
    except TimeoutError:
        raise NetworkFailure(
            FailureKind.TIMEOUT, f"no TCP connection to {where} within {dest.connect_timeout:g} s"
        ) from None
    except OSError as exc:
        raise NetworkFailure(
            FailureKind.NETWORK, f"cannot connect to {where} ({exc.strerror or exc})"
        ) from None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if dest.tls is None:
        return sock
    try:
        return _tls_context(dest).wrap_socket(sock, server_hostname=dest.host)
    except TimeoutError:
        sock.close()
        raise NetworkFailure(
            FailureKind.TIMEOUT, f"no TLS handshake with {where} within "
            f"{dest.connect_timeout:g} s"
        ) from None
    except ssl.SSLCertVerificationError as exc:
        sock.close()
        raise NetworkFailure(
            FailureKind.TLS,
            f"TLS handshake with {where} failed: certificate not trusted ({exc.verify_message})",
            transient=False,
        ) from None
    except (ssl.SSLError, OSError) as exc:
        sock.close()
        raise NetworkFailure(
            FailureKind.TLS, f"TLS handshake with {where} failed ({exc})", transient=False
        ) from None


def _associate_rq(
    calling_ae: str, called_ae: str, proposed: Sequence[tuple[int, str, Sequence[str]]],
    max_pdu: int,
) -> bytes:
    """The A-ASSOCIATE-RQ PDU (PS3.8 9.3.2), encoded by pynetdicom."""
    primitive = A_ASSOCIATE()
    primitive.application_context_name = APPLICATION_CONTEXT
    primitive.calling_ae_title = calling_ae
    primitive.called_ae_title = called_ae
    contexts = []
    for context_id, abstract, syntaxes in proposed:
        context = build_context(abstract, list(syntaxes))
        context.context_id = context_id
        contexts.append(context)
    primitive.presentation_context_definition_list = contexts
    length = MaximumLengthNotification()
    length.maximum_length_received = max_pdu
    implementation = ImplementationClassUIDNotification()
    implementation.implementation_class_uid = IMPLEMENTATION_CLASS_UID
    version = ImplementationVersionNameNotification()
    version.implementation_version_name = IMPLEMENTATION_VERSION_NAME
    primitive.user_information = [length, implementation, version]
    request = pdu_codecs.A_ASSOCIATE_RQ()
    request.from_primitive(primitive)
    return request.encode()


def _abort_reason(pdu: bytes) -> str:
    abort = pdu_codecs.A_ABORT_RQ()
    try:
        abort.decode(pdu)
        return f"{abort.source_str.lower()}: {abort.reason_str.lower()}"
    except Exception:  # a malformed A-ABORT still means the association is gone
        return "reason not given"


class Association:
    """An established association with one peer; use :meth:`open`, then send and receive.

    Not thread-safe: one association belongs to one thread. As a context manager it is
    released on a normal exit and aborted when an exception leaves the block.
    """

    def __init__(
        self, sock: socket.socket, dest: Destination, contexts: list[AcceptedContext],
        peer_max_pdu: int,
    ) -> None:
        self.dest = dest
        self.contexts = contexts
        self.peer_max_pdu = peer_max_pdu
        self._sock: socket.socket | None = sock
        self.lost = False  # the connection is gone or unusable; only abort() remains
        self.peer_implementation = ""  # its version name, else its class UID (PS3.7 D.3.3.2)

    # -- establishment

    @classmethod
    def open(
        cls, dest: Destination, calling_ae: str, proposed: Sequence[tuple[str, Sequence[str]]]
    ) -> Association:
        """Connect and negotiate ``proposed`` (abstract syntax, transfer syntaxes) contexts.

        Raises NetworkFailure: refused, DNS, timeout, rejected (with the decoded reason and
        source, PS3.8 9.3.4), aborted, TLS, or no proposed context accepted.
        """
        # context IDs are odd, 1..255 (PS3.8 9.3.2.2)
        numbered = [(2 * i + 1, a, s) for i, (a, s) in enumerate(proposed)]
        sock = _connect(dest)
        assoc = cls(sock, dest, [], 0)
        try:
            assoc._write(_associate_rq(dest.calling_ae_title or calling_ae, dest.ae_title,
                                       numbered, dest.max_pdu))
            pdu_type, pdu = assoc._read_pdu(
                time.monotonic() + dest.acse_timeout,
                f"{dest.address} accepted the connection but did not answer the association "
                f"request within {dest.acse_timeout:g} s",
            )
        except NetworkFailure:
            assoc.abort()
            raise
        if pdu_type == A_ASSOCIATE_RJ:
            assoc.close()
            raise _rejection(dest, pdu)
        if pdu_type == A_ABORT:
            assoc.close()
            raise NetworkFailure(
                FailureKind.ABORTED,
                f"{dest.address} aborted the association ({_abort_reason(pdu)})",
            )
        if pdu_type != A_ASSOCIATE_AC:
            assoc.abort()
            raise NetworkFailure(
                FailureKind.NETWORK,
                f"{dest.address} answered the association request with PDU type "
                f"0x{pdu_type:02X}",
            )
        assoc._accept(pdu, {cid: (abstract, syntaxes) for cid, abstract, syntaxes in numbered})
        if not assoc.contexts:
            assoc.release()
            offered = ", ".join(sorted({a for a, _ in proposed}))
            raise NetworkFailure(
                FailureKind.NO_CONTEXT,
                f"{dest.address} accepted none of the proposed presentation contexts ({offered})",
                transient=False,
            )
        log.debug("association with %s: %d of %d contexts accepted, peer max PDU %d",
                  dest.address, len(assoc.contexts), len(numbered), assoc.peer_max_pdu)
        return assoc

    def _accept(self, pdu: bytes, proposed: dict[int, tuple[str, Sequence[str]]]) -> None:
        """Take the accepted contexts from an A-ASSOCIATE-AC (PS3.8 9.3.3): only those we
        proposed, each with one of the transfer syntaxes we offered for it."""
        try:
            accept = pdu_codecs.A_ASSOCIATE_AC()
            accept.decode(pdu)
            primitive = accept.to_primitive()
        except Exception as exc:
            self._protocol_error(f"sent an A-ASSOCIATE-AC that cannot be read ({exc})")
        for result in primitive.presentation_context_definition_results_list:
            abstract, offered = proposed.get(result.context_id, ("", ()))
            syntax = str(result.transfer_syntax[0]) if result.transfer_syntax else ""
            if result.result == 0 and syntax in offered:
                self.contexts.append(AcceptedContext(result.context_id, abstract, syntax))
        for item in primitive.user_information or []:
            if isinstance(item, MaximumLengthNotification):
                self.peer_max_pdu = int(item.maximum_length_received or 0)
            elif isinstance(item, ImplementationVersionNameNotification):
                self.peer_implementation = str(item.implementation_version_name or "")
            elif isinstance(item, ImplementationClassUIDNotification) and not (
                self.peer_implementation
            ):
                self.peer_implementation = str(item.implementation_class_uid or "")

    # -- data transfer

    def send(self, context_id: int, command: bytes, dataset: BinaryIO | None = None) -> None:
        """Send one DIMSE message: the command, then the data set read from ``dataset`` to its
        end, fragmented to the peer's maximum PDU length (PS3.8 9.3.5, E.2)."""
        limit = self.peer_max_pdu - 6 if self.peer_max_pdu > 6 else _UNLIMITED_FRAGMENT
        pending: list[bytes] = [_pdv(context_id, 0x03, command)]  # a command set, whole
        size = len(pending[0])
        if dataset is not None:
            chunk = self._read_from(dataset, limit)
            while True:
                following = self._read_from(dataset, limit) if chunk else b""
                last = not following
                pending.append(_pdv(context_id, 0x02 if last else 0x00, chunk))
                size += len(pending[-1])
                if size >= _FLUSH_BYTES:
                    self._write(b"".join(pending))
                    pending, size = [], 0
                if last:
                    break
                chunk = following
        if pending:
            self._write(b"".join(pending))

    def _read_from(self, dataset: BinaryIO, size: int) -> bytes:
        try:
            return dataset.read(size)
        except OSError as exc:  # half a message is on the wire: the association is unusable
            self.abort()
            raise NetworkFailure(
                FailureKind.NETWORK, f"cannot read the data set to send ({exc}); association "
                "aborted"
            ) from None

    def receive(self, timeout: float, waiting_for: str) -> Message:
        """The next complete DIMSE message from the peer, within ``timeout`` seconds.

        An A-ABORT, A-RELEASE-RQ or closed connection instead raises NetworkFailure and leaves
        the association lost.
        """
        deadline = time.monotonic() + timeout
        command, data = bytearray(), bytearray()
        command_done = data_done = False
        context_id = 0
        expects_data = False
        late = f"no {waiting_for} from {self.dest.address} within {timeout:g} s"
        while True:
            pdu_type, pdu = self._read_pdu(deadline, late)
            if pdu_type == A_ABORT:
                self.close()
                raise NetworkFailure(
                    FailureKind.ABORTED,
                    f"{self.dest.address} aborted the association ({_abort_reason(pdu)})",
                )
            if pdu_type == A_RELEASE_RQ:
                self._write_quietly(_RELEASE_RP_PDU)
                self.close()
                raise NetworkFailure(
                    FailureKind.ABORTED, f"{self.dest.address} released the association early"
                )
            if pdu_type != P_DATA_TF:
                self._protocol_error(f"sent PDU type 0x{pdu_type:02X} during data transfer")
            pos = 6
            while pos < len(pdu):
                length = int.from_bytes(pdu[pos: pos + 4], "big") if pos + 6 <= len(pdu) else 0
                if length < 2 or pos + 4 + length > len(pdu):
                    self._protocol_error("sent a malformed P-DATA-TF PDU")
                context_id, header = pdu[pos + 4], pdu[pos + 5]
                fragment = pdu[pos + 6: pos + 4 + length]
                pos += 4 + length
                if header & 0x01:
                    command += fragment
                    command_done = bool(header & 0x02)
                else:
                    data += fragment
                    data_done = bool(header & 0x02)
            if command_done and not expects_data:
                try:
                    fields = parse_command_set(bytes(command))
                except ValueError as exc:
                    self._protocol_error(f"sent an invalid command set ({exc})")
                message = Message(context_id, fields, None)
                expects_data = message.us(DATA_SET_TYPE) not in (None, NO_DATA_SET)
                if not expects_data:
                    return message
            if expects_data and data_done:
                return Message(context_id, fields, bytes(data))

    # -- ending

    def release(self) -> None:
        """A-RELEASE (PS3.8 7.2): ask, wait up to the ACSE timeout for the answer, close."""
        if self.lost or self._sock is None:
            self.close()
            return
        try:
            self._write(_RELEASE_RQ_PDU)
            deadline = time.monotonic() + self.dest.acse_timeout
            while True:
                pdu_type, _ = self._read_pdu(deadline, "no A-RELEASE-RP")
                if pdu_type in (A_RELEASE_RP, A_ABORT):
                    break
                if pdu_type == A_RELEASE_RQ:  # release collision, PS3.8 7.2.2: we requested
                    self._write(_RELEASE_RP_PDU)
        except NetworkFailure:
            pass
        self.close()

    def abort(self) -> None:
        """A-ABORT (PS3.8 7.3) and close; never raises."""
        if self._sock is not None and not self.lost:
            self._write_quietly(_ABORT_PDU)
        self.close()

    def close(self) -> None:
        self.lost = True
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None

    def __enter__(self) -> Association:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.release()
        else:
            self.abort()

    # -- the socket

    def _write(self, data: bytes) -> None:
        if self.lost or self._sock is None:
            raise NetworkFailure(FailureKind.ABORTED, f"association with {self.dest.address} "
                                 "was lost")
        try:
            self._sock.settimeout(self.dest.network_timeout)
            self._sock.sendall(data)
        except TimeoutError:
            self.close()
            raise NetworkFailure(
                FailureKind.TIMEOUT, f"{self.dest.address} took no data for "
                f"{self.dest.network_timeout:g} s"
            ) from None
        except OSError as exc:
            self.close()
            raise NetworkFailure(
                FailureKind.ABORTED, f"connection to {self.dest.address} lost ({exc})"
            ) from None

    def _write_quietly(self, data: bytes) -> None:
        with contextlib.suppress(NetworkFailure):
            self._write(data)

    def _read_exact(self, n: int, deadline: float, late: str) -> bytes:
        assert self._sock is not None
        buf = bytearray()
        while len(buf) < n:
            remaining = deadline - time.monotonic()
            try:
                if remaining <= 0:
                    raise TimeoutError
                self._sock.settimeout(remaining)
                chunk = self._sock.recv(min(n - len(buf), 1024**2))
            except TimeoutError:
                self.abort()  # PS3.7 9.1.1: a DIMSE timeout ends the association
                raise NetworkFailure(FailureKind.TIMEOUT, late) from None
            except OSError as exc:
                self.close()
                raise NetworkFailure(
                    FailureKind.ABORTED, f"connection to {self.dest.address} lost ({exc})"
                ) from None
            if not chunk:
                self.close()
                raise NetworkFailure(
                    FailureKind.ABORTED, f"{self.dest.address} closed the connection"
                )
            buf += chunk
        return bytes(buf)

    def _read_pdu(self, deadline: float, late: str) -> tuple[int, bytes]:
        """One whole PDU (header included) and its type."""
        if self.lost or self._sock is None:
            raise NetworkFailure(FailureKind.ABORTED, f"association with {self.dest.address} "
                                 "was lost")
        header = self._read_exact(6, deadline, late)
        pdu_type = header[0]
        (length,) = struct.unpack_from(">I", header, 2)
        largest = _LARGEST_INCOMING_PDU
        if pdu_type == P_DATA_TF and self.dest.max_pdu:  # what we announced (PS3.8 D.1)
            largest = self.dest.max_pdu + 6  # lenient: some peers count the PDV header too
        if not A_ASSOCIATE_RQ <= pdu_type <= A_ABORT or length > largest:
            self._protocol_error(f"sent an invalid PDU (type 0x{pdu_type:02X}, {length} bytes)")
        return pdu_type, header + self._read_exact(length, deadline, late)

    def _protocol_error(self, what: str) -> NoReturn:
        self.abort()
        raise NetworkFailure(FailureKind.NETWORK, f"{self.dest.address} {what}; association "
                             "aborted")


def _pdv(context_id: int, header: int, fragment: bytes) -> bytes:
    """A P-DATA-TF PDU holding one presentation data value (PS3.8 9.3.5.1, E.2).

    ``header`` bit 0: command (1) or data set (0); bit 1: last fragment.
    """
    return struct.pack(">BBIIBB", P_DATA_TF, 0, len(fragment) + 6, len(fragment) + 2,
                       context_id, header) + fragment


def _rejection(dest: Destination, pdu: bytes) -> NetworkFailure:
    """The A-ASSOCIATE-RJ's result, source and reason in words (PS3.8 9.3.4)."""
    reject = pdu_codecs.A_ASSOCIATE_RJ()
    try:
        reject.decode(pdu)
        why = (f"{reject.reason_str.lower()} ({reject.result_str.lower()}, "
               f"source: {reject.source_str.lower()})")
    except Exception:  # unknown codes: still a rejection, said in numbers
        why = f"result {pdu[7]}, source {pdu[8]}, reason {pdu[9]}" if len(pdu) >= 10 else "?"
    return NetworkFailure(FailureKind.REJECTED, f"{dest.address} rejected the association: "
                          f"{why}", transient=reject.result == 2)
