"""One DICOM association, driven synchronously by a service class user (PS3.8, PS3.7).

Why not pynetdicom's ``Association``: its state machine runs in two threads per association
(the DUL reading the socket, a reactor serving the DIMSE queue), polls in 1 ms steps and builds
every command set as a pydicom Dataset. Measured here on loopback against Orthanc, that costs
about 2 ms of CPU per C-STORE: one association reached half of DCMTK ``storescu``'s rate.
An SCU that sends one message and waits for its answer needs none of that machinery, so this
module does what storescu does: one blocking socket, one request at a time (no asynchronous
operations window is proposed, PS3.7 D.3.3.3), every wait bounded by a named timeout.

What is here: TCP/TLS set-up, the association's life (``node.net.pdu`` encodes and decodes
its control PDUs) and P-DATA-TF framing (PS3.8 9.3.5 and annex E); ``node.net.dimse`` holds the
command sets. The peer is untrusted: every PDU is capped by type (a P-DATA-TF at what we
announced, an A-ASSOCIATE-AC at 1 MB), a message's command set at 64 KB and its data set at
16 MB, and every wait by its timeout. Past a cap the association is aborted with a clear
failure; nothing the peer sends makes us allocate more.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import ssl
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import BinaryIO, NoReturn

from node import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from node.net.destination import Destination
from node.net.dimse import (
    DATA_SET_TYPE,
    MAX_COMMAND_BYTES,
    MAX_RESPONSE_DATASET_BYTES,
    NO_DATA_SET,
    Message,
    parse_command_set,
)
from node.net.pdu import (
    MAX_ASSOCIATE_AC,
    PduError,
    abort_reason,
    associate_rq,
    parse_associate_ac,
    parse_associate_rj,
)
from node.net.status import FailureKind, NetworkFailure, peer_text

log = logging.getLogger(__name__)

# PDU types, PS3.8 9.3.1
A_ASSOCIATE_RQ, A_ASSOCIATE_AC, A_ASSOCIATE_RJ = 0x01, 0x02, 0x03
P_DATA_TF, A_RELEASE_RQ, A_RELEASE_RP, A_ABORT = 0x04, 0x05, 0x06, 0x07
_RELEASE_RQ_PDU = b"\x05\x00\x00\x00\x00\x04\x00\x00\x00\x00"
_RELEASE_RP_PDU = b"\x06\x00\x00\x00\x00\x04\x00\x00\x00\x00"
_ABORT_PDU = b"\x07\x00\x00\x00\x00\x04\x00\x00\x00\x00"  # source: service user, no reason
#: The largest PDU we read when we announce "no limit" (max_pdu = 0): a response is small.
DEFAULT_LARGEST_PDU = 1024**2
#: The largest fragment we send, whatever the peer announces (a 4 GB "maximum" is not a
#: reason to read 4 GB of a file into memory).
LARGEST_FRAGMENT = 1024**2
_FLUSH_BYTES = 1024**2  # PDUs of one message are written in batches of about this size

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
        # never let OpenSSL prompt for a passphrase on the terminal (or hang without one):
        # the password comes from the environment variable the config names, or is empty
        def password() -> str:
            return os.environ.get(tls.key_password_env or "", "") if tls.key_password_env else ""

        try:
            ctx.load_cert_chain(tls.cert, tls.key, password=password)
        except (ssl.SSLError, OSError) as exc:
            hint = (f" (is ${tls.key_password_env} the key's passphrase?)"
                    if tls.key_password_env else
                    " (an encrypted key needs tls.key_password_env)")
            raise NetworkFailure(FailureKind.TLS, f"cannot load the client certificate and key "
                                 f"for {dest.address}: {exc}{hint}", transient=False) from None
    return ctx


def _connect(dest: Destination) -> socket.socket:
    """A TCP (and TLS) connection to ``dest`` with Nagle off; NetworkFailure saying why not.

    Nagle's algorithm is switched off: a C-STORE otherwise stalls on delayed ACKs for
    40-90 ms per instance.
    """
    where = dest.address
    tls = _tls_context(dest) if dest.tls is not None else None  # before any connection
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
    if tls is None:
        return sock
    try:
        return tls.wrap_socket(sock, server_hostname=dest.host)
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
            assoc._write(associate_rq(dest.calling_ae_title or calling_ae, dest.ae_title,
                                      numbered, dest.max_pdu, IMPLEMENTATION_CLASS_UID,
                                      IMPLEMENTATION_VERSION_NAME))
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
                f"{dest.address} aborted the association ({abort_reason(pdu)})",
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
            accept = parse_associate_ac(pdu)
        except PduError as exc:
            self._protocol_error(f"sent an A-ASSOCIATE-AC that cannot be read ({exc})")
        for result in accept.contexts:
            abstract, offered = proposed.get(result.context_id, ("", ()))
            if result.result == 0 and result.transfer_syntax in offered and all(
                c.id != result.context_id for c in self.contexts
            ):
                self.contexts.append(
                    AcceptedContext(result.context_id, abstract, result.transfer_syntax))
        self.peer_max_pdu = accept.max_pdu
        self.peer_implementation = peer_text(
            accept.implementation_version or accept.implementation_uid, 64)

    # -- data transfer

    def send(self, context_id: int, command: bytes, dataset: BinaryIO | None = None) -> None:
        """Send one DIMSE message: the command, then the data set read from ``dataset`` to its
        end, fragmented to the peer's maximum PDU length (PS3.8 9.3.5, E.2)."""
        # the peer's maximum is honoured up to what we would send anyway (PS3.8 D.1)
        limit = min(self.peer_max_pdu - 6, LARGEST_FRAGMENT) if self.peer_max_pdu > 6 else (
            LARGEST_FRAGMENT)
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
        message: Message | None = None
        late = f"no {waiting_for} from {self.dest.address} within {timeout:g} s"
        while True:
            pdu_type, pdu = self._read_pdu(deadline, late)
            if pdu_type == A_ABORT:
                self.close()
                raise NetworkFailure(
                    FailureKind.ABORTED,
                    f"{self.dest.address} aborted the association ({abort_reason(pdu)})",
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
                pdv_context, header = pdu[pos + 4], pdu[pos + 5]
                fragment = pdu[pos + 6: pos + 4 + length]
                pos += 4 + length
                if command or data:
                    if pdv_context != context_id:
                        self._protocol_error("changed presentation context within a message")
                else:
                    context_id = pdv_context
                if header & 0x01:
                    if command_done:
                        self._protocol_error("sent a command fragment after the last one")
                    command += fragment
                    command_done = bool(header & 0x02)
                    if len(command) > MAX_COMMAND_BYTES:
                        self._protocol_error(f"sent a command set over {MAX_COMMAND_BYTES} bytes")
                else:
                    if not command_done or not expects_data or data_done:
                        self._protocol_error("sent a data set fragment that was not announced")
                    data += fragment
                    data_done = bool(header & 0x02)
                    if len(data) > MAX_RESPONSE_DATASET_BYTES:
                        self._protocol_error(
                            f"sent a response data set over {MAX_RESPONSE_DATASET_BYTES} bytes")
                if command_done and not expects_data and message is None:
                    try:
                        fields = parse_command_set(bytes(command))
                    except ValueError as exc:
                        self._protocol_error(f"sent an invalid command set ({exc})")
                    message = Message(context_id, fields, None)
                    expects_data = message.us(DATA_SET_TYPE) not in (None, NO_DATA_SET)
            if message is not None and not expects_data:
                return message
            if message is not None and data_done:
                return Message(context_id, message.command, bytes(data))

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
        if pdu_type == P_DATA_TF:  # what we announced (PS3.8 D.1)
            # lenient by the 6 bytes of the PDV header that some peers count too
            largest = self.dest.max_pdu + 6 if self.dest.max_pdu else DEFAULT_LARGEST_PDU
        elif pdu_type == A_ASSOCIATE_AC:
            largest = MAX_ASSOCIATE_AC
        else:  # reject, release and abort PDUs have 4 bytes
            largest = 1024
        if not A_ASSOCIATE_RQ <= pdu_type <= A_ABORT or length > largest:
            self._protocol_error(f"sent an invalid PDU (type 0x{pdu_type:02X}, {length} bytes, "
                                 f"at most {largest} accepted)")
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
    """The A-ASSOCIATE-RJ's result, source and reason in words (PS3.8 9.3.4); codes that
    PS3.8 does not define are still a rejection, said in numbers."""
    try:
        reject = parse_associate_rj(pdu)
    except PduError:
        return NetworkFailure(FailureKind.REJECTED, f"{dest.address} rejected the association")
    return NetworkFailure(FailureKind.REJECTED, f"{dest.address} rejected the association: "
                          f"{reject.words}", transient=reject.transient)
