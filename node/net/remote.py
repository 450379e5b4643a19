"""What a destination is asked, whatever it speaks: DIMSE (``node.net.scu``) for a host, port
and AE title, DICOMweb (``node.net.dicomweb``) for a ``url``. The service layer asks here and
never needs to know which."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from node.net import scu
from node.net.destination import Destination
from node.net.files import DicomFile
from node.net.scu import EchoResult, InstanceResult, StoreReport


def echo(dest: Destination, calling_ae: str) -> EchoResult:
    """C-ECHO, or a QIDO-RS request that proves the server and the credentials."""
    if dest.web:
        from node.net import dicomweb

        return dicomweb.echo(dest, calling_ae)
    return scu.echo(dest, calling_ae)


def store(dest: Destination, calling_ae: str, files: Sequence[DicomFile],
          progress: Callable[[InstanceResult], None] | None = None) -> StoreReport:
    """C-STORE, or STOW-RS: one InstanceResult per file, classified the same way."""
    if dest.web:
        from node.net import dicomweb

        return dicomweb.store(dest, calling_ae, files, progress)
    return scu.store(dest, calling_ae, files, progress)


def series_instance_counts(dest: Destination, calling_ae: str,
                           series: Iterable[tuple[str, str]]) -> dict[str, int | None]:
    """C-FIND or QIDO-RS at series level: how many instances the destination holds."""
    if dest.web:
        from node.net import dicomweb

        return dicomweb.series_instance_counts(dest, calling_ae, list(series))
    return scu.series_instance_counts(dest, calling_ae, series)


def find_studies(dest: Destination, calling_ae: str, keys: dict[str, str],
                 return_keys: Sequence[str]) -> list:
    """C-FIND or QIDO-RS at study level: the studies matching ``keys``."""
    if dest.web:
        from node.net import dicomweb

        return dicomweb.find_studies(dest, calling_ae, keys, return_keys)
    return scu.find_studies(dest, calling_ae, keys, return_keys)
