"""The association control PDUs (PS3.8 9.3.2-9.3.4, 9.3.8): A-ASSOCIATE-RQ encoded, and the
peer's A-ASSOCIATE-AC, A-ASSOCIATE-RJ and A-ABORT decoded.

Written here rather than taken from pynetdicom's ``pdu`` module for two reasons. A peer's
A-ASSOCIATE-AC is untrusted input: pynetdicom builds an object per item, so a 60 MB AC of
millions of tiny items took 870 MB and 28 s to decode, with no bound but the peer's patience.
Here every item is read with its length checked against what is left, the whole PDU is capped
(:data:`MAX_ASSOCIATE_AC`), and decoding is one linear pass. And pynetdicom imports pydicom,
which a push of DICOM files otherwise never needs: its start-up is the user's wait.

The encoder is byte-identical to pynetdicom's (``tests/test_association.py``).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"  # DICOM Application Context Name, PS3.7 A.2.1

#: The largest A-ASSOCIATE-AC we read. A real one is a few KB (128 contexts of ~80 bytes).
MAX_ASSOCIATE_AC = 1024**2
#: The most presentation context results we look at (PS3.8 9.3.2.2: at most 128 are proposed).
MAX_CONTEXT_ITEMS = 256
#: Characters of a peer-supplied name (implementation version, UID) that we keep.
_MAX_NAME = 64


class PduError(ValueError):
    """A PDU from the peer that is not what PS3.8 says it must be."""


def _ae(title: str) -> bytes:
    """An AE title field: 16 bytes, space padded (PS3.8 9.3.2)."""
    return title.encode("ascii")[:16].ljust(16, b" ")


def _item(item_type: int, body: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(body)) + body


def _uid(value: str) -> bytes:
    return value.encode("ascii")


def associate_rq(
    calling_ae: str, called_ae: str, proposed: Sequence[tuple[int, str, Sequence[str]]],
    max_pdu: int, implementation_uid: str, implementation_version: str,
) -> bytes:
    """The A-ASSOCIATE-RQ PDU (PS3.8 9.3.2): the application context, one presentation context
    item per (context ID, abstract syntax, transfer syntaxes), and the user information
    (maximum length, implementation class UID and version name, PS3.7 D.3.3)."""
    items = [_item(0x10, _uid(APPLICATION_CONTEXT))]
    for context_id, abstract, syntaxes in proposed:
        body = struct.pack(">BBBB", context_id, 0, 0, 0) + _item(0x30, _uid(abstract))
        body += b"".join(_item(0x40, _uid(s)) for s in syntaxes)
        items.append(_item(0x20, body))
    user = (_item(0x51, struct.pack(">I", max_pdu)) + _item(0x52, _uid(implementation_uid))
            + _item(0x55, implementation_version.encode("ascii")))
    items.append(_item(0x50, user))
    body = (struct.pack(">HH", 1, 0) + _ae(called_ae) + _ae(calling_ae) + bytes(32)
            + b"".join(items))
    return struct.pack(">BBI", 0x01, 0, len(body)) + body


@dataclass(frozen=True)
class ContextResult:
    """One presentation context result of an A-ASSOCIATE-AC (PS3.8 9.3.3.2)."""

    context_id: int
    result: int  # 0 acceptance, 1 user rejection, 2 no reason, 3 abstract syntax, 4 syntaxes
    transfer_syntax: str


@dataclass
class AssociateAccept:
    """What we use of an A-ASSOCIATE-AC."""

    contexts: list[ContextResult] = field(default_factory=list)
    max_pdu: int = 0  # the peer's maximum PDU length; 0 = no limit (PS3.8 D.1)
    implementation_uid: str = ""
    implementation_version: str = ""


def _items(data: bytes, start: int, end: int, what: str):
    """(type, body start, body end) for each item between ``start`` and ``end``: every length
    is checked against what is left, so a lying length is an error, never an over-read."""
    pos = start
    while pos < end:
        if pos + 4 > end:
            raise PduError(f"truncated item header in {what}")
        item_type, length = data[pos], struct.unpack_from(">H", data, pos + 2)[0]
        body = pos + 4
        if body + length > end:
            raise PduError(f"item 0x{item_type:02X} of {length} bytes overruns {what}")
        yield item_type, body, body + length
        pos = body + length


def _text(data: bytes, start: int, end: int) -> str:
    raw = data[start: min(end, start + _MAX_NAME)]
    return raw.rstrip(b"\0 ").decode("ascii", "replace")


def parse_associate_ac(pdu: bytes) -> AssociateAccept:
    """Decode an A-ASSOCIATE-AC (header included); PduError when it is malformed.

    Unknown items and sub-items are skipped (PS3.8 9.3.1: a receiver ignores reserved items
    it does not know); at most :data:`MAX_CONTEXT_ITEMS` context results are kept.
    """
    if len(pdu) > MAX_ASSOCIATE_AC + 6:
        raise PduError(f"A-ASSOCIATE-AC of {len(pdu)} bytes (at most {MAX_ASSOCIATE_AC})")
    if len(pdu) < 74 or pdu[0] != 0x02:
        raise PduError("not an A-ASSOCIATE-AC")
    (length,) = struct.unpack_from(">I", pdu, 2)
    if length != len(pdu) - 6:
        raise PduError("A-ASSOCIATE-AC length does not match its content")
    accept = AssociateAccept()
    for item_type, start, end in _items(pdu, 74, len(pdu), "A-ASSOCIATE-AC"):
        if item_type == 0x21:
            if end - start < 4:
                raise PduError("presentation context item too short")
            if len(accept.contexts) >= MAX_CONTEXT_ITEMS:
                raise PduError(f"more than {MAX_CONTEXT_ITEMS} presentation context results")
            syntax = ""
            for sub, s0, s1 in _items(pdu, start + 4, end, "presentation context item"):
                if sub == 0x40:
                    syntax = _text(pdu, s0, s1)
            accept.contexts.append(ContextResult(pdu[start], pdu[start + 2], syntax))
        elif item_type == 0x50:
            for sub, s0, s1 in _items(pdu, start, end, "user information item"):
                if sub == 0x51:
                    if s1 - s0 != 4:
                        raise PduError("maximum length sub-item is not 4 bytes")
                    (accept.max_pdu,) = struct.unpack_from(">I", pdu, s0)
                elif sub == 0x52:
                    accept.implementation_uid = _text(pdu, s0, s1)
                elif sub == 0x55:
                    accept.implementation_version = _text(pdu, s0, s1)
    return accept


_RJ_RESULTS = {1: "rejected (permanent)", 2: "rejected (transient)"}
_RJ_SOURCES = {
    1: "dul service-user",
    2: "dul service-provider (acse related)",
    3: "dul service-provider (presentation related)",
}
_RJ_REASONS = {
    1: {1: "no reason given", 2: "application context name not supported",
        3: "calling ae title not recognised", 7: "called ae title not recognised"},
    2: {1: "no reason given", 2: "protocol version not supported"},
    3: {1: "temporary congestion", 2: "local limit exceeded"},
}


@dataclass(frozen=True)
class AssociateReject:
    """An A-ASSOCIATE-RJ (PS3.8 9.3.4): result, source and reason, in numbers and words."""

    result: int
    source: int
    reason: int

    @property
    def transient(self) -> bool:
        return self.result == 2

    @property
    def words(self) -> str:
        result = _RJ_RESULTS.get(self.result)
        source = _RJ_SOURCES.get(self.source)
        reason = _RJ_REASONS.get(self.source, {}).get(self.reason)
        if result is None or source is None or reason is None:  # codes PS3.8 does not define
            return f"result {self.result}, source {self.source}, reason {self.reason}"
        return f"{reason} ({result}, source: {source})"


def parse_associate_rj(pdu: bytes) -> AssociateReject:
    if len(pdu) < 10:
        raise PduError("truncated A-ASSOCIATE-RJ")
    return AssociateReject(pdu[7], pdu[8], pdu[9])


_ABORT_SOURCES = {0: "dul service-user", 2: "dul service-provider"}
_ABORT_REASONS = {0: "no reason given", 1: "unrecognised pdu", 2: "unexpected pdu",
                  4: "unrecognised pdu parameter", 5: "unexpected pdu parameter",
                  6: "invalid pdu parameter value"}


def abort_reason(pdu: bytes) -> str:
    """The source and reason of an A-ABORT (PS3.8 9.3.8) in words; never raises."""
    if len(pdu) < 10:
        return "reason not given"
    source = _ABORT_SOURCES.get(pdu[8])
    if source is None:
        return "reason not given"
    if pdu[8] != 2:  # the reason field is significant only for the service provider
        return f"{source}: no reason given"
    return f"{source}: {_ABORT_REASONS.get(pdu[9], '(no value available)')}"
