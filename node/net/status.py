"""Outcomes in the network's own words: why an association could not be used
(:class:`NetworkFailure`) and what a C-STORE status means (:class:`Outcome`, by status class,
PS3.4 B.2.3 and PS3.7 annex C).

Text that comes from the peer (an Error Comment, an implementation name, a reason) is untrusted:
:func:`peer_text` makes it one printable line of bounded length before it is shown or logged.
"""

from __future__ import annotations

from enum import StrEnum

#: Characters of peer-supplied text that we show or log.
PEER_TEXT_LIMIT = 200


def peer_text(raw: bytes | str, limit: int = PEER_TEXT_LIMIT) -> str:
    """Peer-supplied text made safe to print: control characters (newlines, escape codes)
    shown as ``\\xNN``, cut to ``limit`` characters with an ellipsis. A peer cannot forge a
    log line, drive a terminal or flood a log."""
    text = raw.decode("ascii", "replace") if isinstance(raw, bytes | bytearray) else raw
    text = text[: limit + 1]
    safe = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)
    return safe[:limit] + "..." if len(safe) > limit else safe


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


class Outcome(StrEnum):
    """Per-instance result of a C-STORE, by status class (PS3.4 B.2.3, PS3.7 C)."""

    SUCCESS = "success"  # 0x0000
    WARNING = "warning"  # 0xB000, 0xB006, 0xB007: stored, with coercion or elements discarded
    DUPLICATE = "duplicate"  # 0x0111: the peer has it already
    TRANSIENT = "transient failure"  # may succeed later: out of resources, no response, abort
    PERMANENT = "permanent failure"  # resending cannot fix it: data/SOP class/context problems

    @property
    def delivered(self) -> bool:
        return self in (Outcome.SUCCESS, Outcome.WARNING, Outcome.DUPLICATE)


def classify_status(code: int | None) -> tuple[Outcome, str]:
    """Map a C-STORE response status to an outcome and a readable meaning.

    ``None`` is a response without a status (or none at all: timeout, abort). It is a
    failure, never a success.
    """
    if code is None:
        return Outcome.TRANSIENT, "no response (DIMSE timeout, abort or invalid response)"
    if code == 0x0000:  # the common case needs no table (and no pynetdicom import)
        return Outcome.SUCCESS, "0x0000 Success"
    from pynetdicom.status import STORAGE_SERVICE_CLASS_STATUS

    meaning = STORAGE_SERVICE_CLASS_STATUS.get(code, (None, "unknown status"))[1] or (
        "Success" if code == 0 else "unknown status"
    )
    text = f"0x{code:04X} {meaning}"
    if code == 0x0000:
        return Outcome.SUCCESS, text
    if code in (0xB000, 0xB006, 0xB007) or 0xB000 <= code <= 0xBFFF:
        return Outcome.WARNING, text
    if code == 0x0111:
        return Outcome.DUPLICATE, text
    if 0xA700 <= code <= 0xA7FF or code in (0x0110, 0x0213):  # out of resources, processing
        return Outcome.TRANSIENT, text
    return Outcome.PERMANENT, text  # 0xA9xx, 0xCxxx, 0x0122 SOP class not supported, ...
