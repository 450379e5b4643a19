"""Where each attribute of a converted series comes from (``dicom-node convert --explain``):
the mapping's record when the value is the mapped one, else what dicom-node derived it from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from node.convert.series import ConvertedSeries


#: Where the attributes that no mapping gives come from (see :func:`explain`).
_FROM_HEADER = frozenset({
    "ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing", "SliceThickness",
    "SpacingBetweenSlices", "SliceLocation", "Rows", "Columns", "BitsAllocated", "BitsStored",
    "HighBit", "PixelRepresentation", "RescaleIntercept", "RescaleSlope", "RescaleType",
    "WindowCenter", "WindowWidth", "NumberOfTemporalPositions", "TemporalPositionIdentifier",
    "SamplesPerPixel", "PhotometricInterpretation", "PatientOrientation", "InstanceNumber",
    "AcquisitionNumber", "NumberOfFrames",
})


_GENERATED = frozenset({"StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID",
                        "FrameOfReferenceUID"})


@dataclass(frozen=True)
class Explained:
    """One attribute of a converted series: its value and where it came from."""

    tag: str  # "(gggg,eeee)"
    keyword: str
    value: str
    source: str


def explain(series: ConvertedSeries) -> list[Explained]:
    """Every attribute the first instance carries (pixel data aside), with its value and its
    source: the mapping's record (built-in default, profile static value, sidecar key,
    file-name entity, --set, fallback, pseudonym) when the value is the mapped one, else what
    dicom-node derived it from (the NIfTI header's geometry and intensities, a deterministic
    UID, the IOD's own rules). A newcomer finds where a tag comes from in one step."""
    ds = next(series.datasets())
    out = []
    for elem in ds:
        if elem.tag == 0x7FE00010:
            continue
        keyword = elem.keyword or "(private)"
        value = _text(elem.value)
        mapped = series.attributes.get(keyword)
        if mapped is not None and _text(mapped.value) == value:
            source = mapped.source
        elif keyword in _GENERATED:
            source = "generated: a deterministic UID (source SHA-256 and mapping)"
        elif keyword in _FROM_HEADER:
            source = "derived from the NIfTI header (geometry, data type, scaling)"
        elif keyword in ("DerivationDescription", "SoftwareVersions"):
            source = "provenance (converter, version, source SHA-256)"
        elif value == "":
            source = "empty: a Type 2 attribute with no value from any source"
        else:
            source = f"the {series.sop_class_name} IOD (dicom-node)"
        out.append(Explained(f"({elem.tag.group:04X},{elem.tag.element:04X})", keyword,
                             value, source))
    return out


def _text(value) -> str:
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return "" if value is None else str(value)
