"""A peer that takes our associations: where it is, who it is, how long to wait for it.

Plain data, validated when the settings are loaded (``node.service.settings``); the network
layer only reads it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_AE_TITLE = re.compile(r"^[ -~]{1,16}$")


@dataclass(frozen=True)
class TlsSettings:
    """TLS for an association (PS3.15 B.1): verify the peer by default, optional client cert."""

    ca: Path | None = None  # CA bundle to verify the peer; None = the system's
    cert: Path | None = None  # our client certificate (PEM), when the peer requires one
    key: Path | None = field(default=None, repr=False)
    key_password_env: str | None = None  # environment variable holding the key's passphrase
    verify_hostname: bool = True
    verify: bool = True


@dataclass(frozen=True)
class Destination:
    """A peer that accepts C-ECHO/C-STORE/C-FIND from us. Timeouts in seconds."""

    name: str
    host: str
    port: int
    ae_title: str
    calling_ae_title: str | None = None  # default: [node].ae_title
    max_pdu: int = 1024**2  # largest PDU we accept and announce; 0 = "no limit" (1 MiB read)
    connect_timeout: float = 10.0
    acse_timeout: float = 30.0
    dimse_timeout: float = 60.0
    network_timeout: float = 60.0
    max_associations: int = 2
    transfer_syntaxes: tuple[str, ...] = ()  # extra ones to propose; uncompressed always
    tls: TlsSettings | None = None
    query_destination: str | None = None  # the destination that answers C-FIND for this one
    iod: str | None = None  # the object this PACS takes (overrides the profile's)
    compression: str = "none"  # lossless encoding of what is sent: none, rle, jpeg-ls, ...
    labelmap: bool = False  # it takes Label Map Segmentation Storage: SEGs are LABELMAP

    @property
    def address(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


def check_ae_title(where: str, value: Any) -> str:
    """AE titles: 1-16 characters of the default repertoire, no backslash (PS3.5 6.2 AE)."""
    if not isinstance(value, str) or not _AE_TITLE.match(value) or not value.strip() or (
        "\\" in value
    ):
        raise ValueError(f"{where}: AE title {value!r} must be 1-16 printable characters")
    return value.strip()
