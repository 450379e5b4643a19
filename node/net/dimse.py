"""DIMSE messages (PS3.7): command sets encoded and parsed, and the rule that makes a
response an acknowledgement of one request.

Command sets are group 0000 in Implicit VR Little Endian (PS3.7 6.3.1). Everything parsed here
comes from the peer: a value is used only when its length is what PS3.7 E.1 says.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from node.net.status import peer_text

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

# Command Field values, PS3.7 E.1-1
C_STORE_RQ, C_STORE_RSP = 0x0001, 0x8001
C_FIND_RQ, C_FIND_RSP = 0x0020, 0x8020
C_ECHO_RQ, C_ECHO_RSP = 0x0030, 0x8030

#: The largest command set we accept from a peer; a real response is about 200 bytes.
MAX_COMMAND_BYTES = 64 * 1024
#: The largest data set we accept in a response (a C-FIND identifier is a few KB).
MAX_RESPONSE_DATASET_BYTES = 16 * 1024**2


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
        """A text value (UI, LO) as one safe, bounded line (it comes from the peer)."""
        return peer_text(self.command.get(tag & 0xFFFF, b"").rstrip(b"\0 "))

    @property
    def status(self) -> int | None:
        return self.us(STATUS)


@dataclass(frozen=True)
class Request:
    """What a response must echo to acknowledge a request (PS3.7 9.3.1.2, 9.3.2.2, 9.3.5.2)."""

    context_id: int
    command_field: int  # of the request; the response's is this with bit 15 set
    message_id: int
    sop_class_uid: str
    sop_instance_uid: str | None = None  # C-STORE only


def mismatch(response: Message, request: Request) -> str | None:
    """Why ``response`` is not the answer to ``request``, or None when it is.

    A response acknowledges a request only when its command field is the request's response,
    it names the request's message ID, its affected SOP class (and for C-STORE, SOP instance)
    are the request's, and it came on the request's presentation context. Anything else is a
    confused or hostile peer: success must never be counted from it.
    """
    def us(tag: int) -> int | None:
        raw = response.command.get(tag & 0xFFFF)
        return struct.unpack("<H", raw)[0] if raw is not None and len(raw) == 2 else None

    def ui(tag: int) -> str | None:
        raw = response.command.get(tag & 0xFFFF)
        return raw.rstrip(b"\0 ").decode("ascii", "replace") if raw is not None else None

    expected = request.command_field | 0x8000
    if (field := us(COMMAND_FIELD)) != expected:
        shown = "none" if field is None else f"0x{field:04X}"
        return f"a response with command field {shown} where 0x{expected:04X} was due"
    if (answered := us(MESSAGE_ID_RESPONDED_TO)) != request.message_id:
        return (f"an answer to message {answered} while message {request.message_id} "
                "was waiting")
    if response.context_id != request.context_id:
        return (f"a response on presentation context {response.context_id} for a request on "
                f"context {request.context_id}")
    # PS3.7 9.3.1.2: a response may leave out the affected SOP class and instance (U(=)); when
    # it gives them, they must be the request's
    sop_class = ui(AFFECTED_SOP_CLASS)
    if sop_class is not None and sop_class != request.sop_class_uid:
        return "a response for another SOP class"
    instance = ui(AFFECTED_SOP_INSTANCE)
    if request.sop_instance_uid is not None and instance is not None and (
        instance != request.sop_instance_uid
    ):
        return "a response for another SOP instance"
    if us(STATUS) is None:
        return "a response without a status"
    return None
