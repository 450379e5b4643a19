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


#: The ways a DICOMweb server can ask us who we are.
AUTH_KINDS = ("none", "basic", "bearer", "oauth2")


@dataclass(frozen=True)
class WebAuth:
    """How a DICOMweb destination is logged in to (HTTP, RFC 7617 basic; RFC 6750 bearer;
    RFC 6749 4.4 OAuth2 client credentials). Secrets are never in the config: only the names
    of the environment variables that hold them."""

    kind: str = "none"
    username: str | None = None  # basic
    password_env: str | None = None  # basic: the variable holding the password
    token_env: str | None = None  # bearer: the variable holding the token
    token_url: str | None = None  # oauth2: the token endpoint
    client_id: str | None = None  # oauth2
    client_secret_env: str | None = None  # oauth2: the variable holding the client secret
    scope: str | None = None  # oauth2, optional

    @property
    def secret_envs(self) -> tuple[tuple[str, str], ...]:
        """(config key, environment variable) of each secret this kind needs."""
        key = {"basic": "password_env", "bearer": "token_env",
               "oauth2": "client_secret_env"}.get(self.kind)
        return ((key, getattr(self, key)),) if key else ()


@dataclass(frozen=True)
class Destination:
    """A peer that accepts C-ECHO/C-STORE/C-FIND from us, or, with ``url``, a DICOMweb
    server that takes STOW-RS and answers QIDO-RS (PS3.18). Timeouts in seconds."""

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
    results: tuple[str, ...] = ()  # a SEG also brings: overlay, measurements, report
    verify: bool = False  # the node counts each series at the PACS (C-FIND / QIDO-RS) after sending
    max_instances_per_second: float = 0.0  # a rate cap on what one store sends; 0 = none
    max_bytes_per_second: float = 0.0  # the same in bytes of files
    commitment: bool = False  # ask for storage commitment (PS3.4 J) after sending
    commitment_timeout: float = 60.0  # seconds to wait for the archive's commitment report
    url: str | None = None  # a DICOMweb base URL (http(s)://host:port/dicom-web): STOW-RS
    auth: WebAuth = field(default_factory=WebAuth)  # DICOMweb only
    batch_bytes: int = 16 * 1024**2  # DICOMweb: the most bytes of files in one STOW-RS request
    batch_instances: int = 50  # DICOMweb: the most instances in one STOW-RS request (small
    # requests let the server store one while the next arrives: 352 instances to Orthanc
    # in 0.85 s in batches of 200, 0.72-0.77 s in batches of 25 to 88)

    @property
    def address(self) -> str:
        return self.url if self.url else f"{self.ae_title}@{self.host}:{self.port}"

    @property
    def web(self) -> bool:
        """A DICOMweb destination (STOW-RS and QIDO-RS instead of DIMSE)."""
        return self.url is not None


def check_ae_title(where: str, value: Any) -> str:
    """AE titles: 1-16 characters of the default repertoire, no backslash (PS3.5 6.2 AE)."""
    if not isinstance(value, str) or not _AE_TITLE.match(value) or not value.strip() or (
        "\\" in value
    ):
        raise ValueError(f"{where}: AE title {value!r} must be 1-16 printable characters")
    return value.strip()
