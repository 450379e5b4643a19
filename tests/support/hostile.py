"""A hostile (or just broken) DICOM peer: a small TCP server on a free loopback port that
answers wrongly on purpose, one scenario per server.

It parses what the node sends with pynetdicom's PDU classes (an independent reader) and answers
with bytes made here, so each scenario can bend exactly one rule. Every wait is bounded, and the
server stops with the test.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import MaximumLengthNotification

IMPLEMENTATION_UID = "1.2.826.0.1.3680043.9.7433.1.1"


def element(tag: int, value: int | str | bytes, vr_us: bool = False) -> bytes:
    """One Implicit VR Little Endian command element (US as 2 bytes, UI/LO padded)."""
    if isinstance(value, int):
        raw = struct.pack("<H", value)
    elif isinstance(value, str):
        raw = value.encode("latin-1")
        raw += b"\0" * (len(raw) % 2)
    else:
        raw = value
    return struct.pack("<HHI", tag >> 16, tag & 0xFFFF, len(raw)) + raw


def command(*fields: tuple[int, int | str | bytes]) -> bytes:
    body = b"".join(element(t, v) for t, v in fields)
    return element(0x00000000, struct.pack("<I", len(body))) + body


def pdv_pdu(context_id: int, header: int, fragment: bytes) -> bytes:
    """A P-DATA-TF with one PDV (header bit 0 command, bit 1 last)."""
    return struct.pack(">BBIIBB", 4, 0, len(fragment) + 6, len(fragment) + 2, context_id,
                       header) + fragment


@dataclass
class Request:
    """What the node asked in one DIMSE message."""

    context_id: int
    command_field: int
    message_id: int
    sop_class: str
    sop_instance: str


def store_rsp(req: Request, status: int = 0, *, field: int = 0x8001, message_id: int | None = None,
              sop_instance: str | None = None, comment: bytes | None = None) -> bytes:
    fields: list[tuple[int, int | str | bytes]] = [
        (0x00000002, req.sop_class), (0x00000100, field),
        (0x00000120, req.message_id if message_id is None else message_id),
        (0x00000800, 0x0101), (0x00000900, status)]
    if comment is not None:
        fields.append((0x00000902, comment))
    fields.append((0x00001000, req.sop_instance if sop_instance is None else sop_instance))
    return command(*fields)


@dataclass
class Peer:
    """The server side of one connection, with helpers for the usual steps."""

    sock: socket.socket
    proposed: dict[int, tuple[str, list[str]]] = field(default_factory=dict)

    def read_exact(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("closed")
            buf += chunk
        return buf

    def read_pdu(self) -> tuple[int, bytes]:
        header = self.read_exact(6)
        (length,) = struct.unpack(">I", header[2:])
        return header[0], header + self.read_exact(length)

    def read_associate_rq(self) -> A_ASSOCIATE_RQ:
        kind, pdu = self.read_pdu()
        assert kind == 1, kind
        rq = A_ASSOCIATE_RQ()
        rq.decode(pdu)
        for ctx in rq.to_primitive().presentation_context_definition_list:
            self.proposed[ctx.context_id] = (str(ctx.abstract_syntax),
                                            [str(s) for s in ctx.transfer_syntax])
        return rq

    def accept_bytes(self, rq: A_ASSOCIATE_RQ, max_pdu: int = 16384) -> bytes:
        """A correct A-ASSOCIATE-AC accepting every context in its first transfer syntax."""
        primitive = rq.to_primitive()
        primitive.result = 0
        for ctx in primitive.presentation_context_definition_list:
            ctx.result = 0
            ctx.transfer_syntax = [ctx.transfer_syntax[0]]
        primitive.presentation_context_definition_results_list = (
            primitive.presentation_context_definition_list)
        length = MaximumLengthNotification()
        length.maximum_length_received = max_pdu
        primitive.user_information = [length] + [
            i for i in primitive.user_information
            if type(i).__name__ == "ImplementationClassUIDNotification"]
        ac = A_ASSOCIATE_AC()
        ac.from_primitive(primitive)
        return ac.encode()

    def accept(self, max_pdu: int = 16384) -> A_ASSOCIATE_RQ:
        rq = self.read_associate_rq()
        self.sock.sendall(self.accept_bytes(rq, max_pdu))
        return rq

    def read_request(self) -> Request | None:
        """The next DIMSE request (its data set read and dropped); None on release."""
        cmd = b""
        while True:
            kind, pdu = self.read_pdu()
            if kind == 5:  # A-RELEASE-RQ
                self.sock.sendall(b"\x06\x00\x00\x00\x00\x04\x00\x00\x00\x00")
                return None
            if kind != 4:
                return None
            pos, last_data = 6, False
            ctx = 0
            while pos < len(pdu):
                (length,) = struct.unpack_from(">I", pdu, pos)
                ctx, header = pdu[pos + 4], pdu[pos + 5]
                if header & 1:
                    cmd += pdu[pos + 6: pos + 4 + length]
                elif header & 2:
                    last_data = True
                pos += 4 + length
            if cmd and (last_data or _no_data(cmd)):
                values = _parse(cmd)
                return Request(ctx, _us(values, 0x0100), _us(values, 0x0110),
                               _ui(values, 0x0002), _ui(values, 0x1000))

    def send_command(self, context_id: int, cmd: bytes) -> None:
        self.sock.sendall(pdv_pdu(context_id, 0x03, cmd))


def _parse(cmd: bytes) -> dict[int, bytes]:
    out, pos = {}, 0
    while pos + 8 <= len(cmd):
        _, elem, length = struct.unpack_from("<HHI", cmd, pos)
        out[elem] = cmd[pos + 8: pos + 8 + length]
        pos += 8 + length
    return out


def _us(values: dict[int, bytes], elem: int) -> int:
    return struct.unpack("<H", values.get(elem, b"\0\0")[:2])[0]


def _ui(values: dict[int, bytes], elem: int) -> str:
    return values.get(elem, b"").rstrip(b"\0 ").decode("ascii", "replace")


def _no_data(cmd: bytes) -> bool:
    return _us(_parse(cmd), 0x0800) == 0x0101


class HostilePeer:
    """A loopback server running ``scenario(peer)`` for each connection, in threads."""

    def __init__(self, scenario: Callable[[Peer], None]) -> None:
        self.scenario = scenario
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(8)
        self.server.settimeout(0.2)
        self.port = self.server.getsockname()[1]
        self.stopping = threading.Event()
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.server.accept()
            except (TimeoutError, OSError):
                continue
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        conn.settimeout(30)
        with conn:
            try:
                self.scenario(Peer(conn))
            except (ConnectionError, TimeoutError, OSError):
                pass  # the node hung up on us: that is often the point
            except BaseException as exc:  # a bug in the scenario must show in the test
                self.errors.append(exc)
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=5)
        self.server.close()


def trickle(sock: socket.socket, data: bytes, seconds_per_byte: float, limit: float) -> None:
    """Send ``data`` a byte at a time (a slowloris), for at most ``limit`` seconds."""
    end = time.monotonic() + limit
    for b in data:
        if time.monotonic() > end:
            return
        sock.sendall(bytes([b]))
        time.sleep(seconds_per_byte)
