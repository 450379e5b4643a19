"""How one NIfTI file becomes a series, besides the file and its profile: one object, so the
planning, the conversion and the writing of a series take the same options and no keyword
list is repeated (and drifts) between them."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # annotations only: a push of DICOM files loads no DICOM library
    from node.convert.reference import ReferenceStudy
    from node.convert.study import StudyValues

#: Given what a series says of its study, its Series Instance UID and its own SeriesNumber
#: (None when no source names one): the values its study makes it carry, and the
#: SeriesNumber it gets. Raises StudyConflict.
StudyHook = Callable[["StudyValues", str, int | None], tuple["StudyValues", int | None]]


@dataclass(frozen=True)
class ConversionOptions:
    """Everything but the file and the profile that shapes a conversion.

    ``uid_root``: the organisation's UID root (PS3.5 9), under which every UID is made.
    ``sidecar``: the BIDS sidecar, when not the one beside the file. ``overrides``: --set
    values. ``modality``: MR, CT or OT, over the profile's. ``reference``: the clinical exam
    the series joins. ``study``: reconciles the series with the other series of its study (a
    batch's, the node's journal); without it the series stands alone. ``iod``: image,
    enhanced, seg, pmap or auto (default: the profile's). ``compression``: a lossless
    encoding. ``source_image``: the image a SEG or map refers to (``source_folders``: where
    else to look for it). ``labelmap``: a SEG is LABELMAP rather than BINARY.
    """

    uid_root: str = "2.25"
    sidecar: str | Path | None = None
    overrides: Mapping[str, str] | None = None
    modality: str | None = None
    reference: ReferenceStudy | None = None
    study: StudyHook | None = None
    iod: str | None = None
    compression: str = "none"
    source_image: str | Path | None = None
    labelmap: bool = False
    source_folders: tuple[Path, ...] = ()  # where else a SEG's image may be (the node's done/)
    results: tuple[str, ...] = ()  # what a SEG also brings: overlay, measurements, report

    def replace(self, **changes: Any) -> ConversionOptions:
        return dataclasses.replace(self, **changes)


def options_from(options: ConversionOptions | None, keywords: dict[str, Any]
                 ) -> ConversionOptions:
    """``options`` with ``keywords`` over it (the functions that take options also take them
    as keywords, as they always have); a TypeError names an unknown keyword."""
    base = options or ConversionOptions()
    return dataclasses.replace(base, **keywords) if keywords else base
