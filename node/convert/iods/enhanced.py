"""One multi-frame instance per series: Legacy Converted Enhanced MR/CT Image (PS3.3 A.51, A.70).

The standard's route for data converted from elsewhere. The instance is what highdicom's
legacy converter (``highdicom.legacy``) makes of the classic instances we would write,
attribute for attribute (``tests/test_iods.py`` converts the same series with highdicom and
compares every element), but built here directly from the series template and its slices:
highdicom needs the classic datasets of every frame and its 22 MB table of the standard in
each process, which made ``enhanced`` twice as slow as ``image``. Where the two differ, on
purpose:

- Plane Orientation is written per frame (see :func:`_frame_groups`), the frames stay in
  instance order (slice fastest) and the Dimension Index says so: In-Stack Position Number,
  and for 4D (fMRI, DWI) Temporal Position Index, in a ``3D_TEMPORAL`` organisation;
- a DWI's weighting is in each frame's MR Diffusion functional group (C.8.13.5.9), where
  enhanced readers look for it;
- the contributing equipment is dicom-node, and the classic instances are not referenced as
  a series (they are never stored); each frame still names its classic source instance
  (Conversion Source Attributes, C.7.6.16.2.25), whose UID ``image`` output would carry;
- Body Part Examined stays in General Series beside its Frame Anatomy code.

The per-frame functional groups, thousands of small items, are encoded straight to bytes
(Explicit VR Little Endian, PS3.5 7.1.2, 7.5); the rest is a pydicom dataset.
"""

from __future__ import annotations

import copy
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from io import BytesIO

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.uid import UID, generate_uid

from node import CONVERTER_NAME, __version__
from node.convert.anatomy import anatomic_regions
from node.convert.iods.image import InstanceSlice, file_meta
from node.convert.iods.legacy_iod import IOD_KEYWORDS

LEGACY_ENHANCED_MR = UID("1.2.840.10008.5.1.4.1.1.4.4")
LEGACY_ENHANCED_CT = UID("1.2.840.10008.5.1.4.1.1.2.2")
ENHANCED_SOP_CLASSES = {"MR": LEGACY_ENHANCED_MR, "CT": LEGACY_ENHANCED_CT}
ENHANCED_NAMES = {LEGACY_ENHANCED_MR: "Legacy Converted Enhanced MR Image Storage",
                  LEGACY_ENHANCED_CT: "Legacy Converted Enhanced CT Image Storage"}

#: Classic attributes with a functional group of their own (or a value per frame): never
#: copied as they are to the top level or the Unassigned Shared Converted Attributes.
_IN_GROUPS = frozenset({
    "PixelSpacing", "SliceThickness", "SpacingBetweenSlices", "ImageOrientationPatient",
    "ImagePositionPatient", "WindowCenter", "WindowWidth", "VOILUTFunction",
    "WindowCenterWidthExplanation", "RescaleIntercept", "RescaleSlope", "RescaleType",
    "SliceLocation", "InstanceNumber", "AcquisitionNumber", "AcquisitionDate",
    "AcquisitionTime", "AcquisitionDateTime", "TemporalPositionIdentifier", "ImageType",
    "DiffusionBValue", "DiffusionDirectionality", "DiffusionGradientOrientation",
    "SOPInstanceUID", "SOPClassUID", "PixelData", "ContentDate", "ContentTime"})
#: The Image Frame Type values of a converted volume (C.8.16.1: VOLUME, NONE; C.8.13.3).
_FRAME_TYPE = {"PixelPresentation": "MONOCHROME", "VolumetricProperties": "VOLUME",
               "VolumeBasedCalculationTechnique": "NONE"}
_FRAME_TYPE_SEQUENCE = {"MR": "MRImageFrameTypeSequence", "CT": "CTImageFrameTypeSequence"}
_SUFFIX = " (enhanced conversion)"  # as highdicom names the series
_RESCALE_TYPE = {"MR": "US", "CT": "HU"}  # C.7.6.16.2.9: CT values are Hounsfield units


@dataclass
class EnhancedInstance:
    """A Legacy Converted Enhanced instance: its dataset without the per-frame groups and the
    pixels, each frame's functional groups already encoded, and the frames' pixels."""

    head: Dataset
    frame_groups: list[bytes]
    pixels: bytes | bytearray | memoryview
    _dataset: Dataset | None = field(default=None, repr=False)

    def pieces(self) -> list[bytes | bytearray | memoryview]:
        """The Part 10 file, Explicit VR Little Endian, in pieces to be written one after
        the other (the pixels are not copied once more to join them)."""
        fp = DicomBytesIO()
        self.head.save_as(fp, enforce_file_format=True)
        items = b"".join(struct.pack("<HHI", 0xFFFE, 0xE000, len(g)) + g
                         for g in self.frame_groups)
        size = len(self.pixels)
        vr = b"OB" if self.head.BitsAllocated <= 8 else b"OW"  # PS3.5 8.2
        return [fp.getvalue(), struct.pack("<HH2s2xI", 0x5200, 0x9230, b"SQ", len(items)),
                items, struct.pack("<HH2s2xI", 0x7FE0, 0x0010, vr, size + size % 2),
                self.pixels, b"\x00" * (size % 2)]

    def part10(self) -> bytes:
        return b"".join(self.pieces())

    def dataset(self) -> Dataset:
        """The whole instance as pydicom reads it back (for compression, previews, tests)."""
        if self._dataset is None:
            self._dataset = dcmread(BytesIO(self.part10()))
        return self._dataset


def enhanced_instance(modality: str, template: Dataset, slices: Iterable[InstanceSlice],
                      pixels: bytes | bytearray | memoryview, n_slices: int, n_volumes: int,
                      sop_instance_uid: str) -> EnhancedInstance:
    """The Legacy Converted Enhanced instance of a series, from its classic template, its
    slices in instance order (slice k of volume t is frame t * n_slices + k + 1) and their
    pixels, frame after frame."""
    head = _head(modality, template, n_slices, n_volumes, sop_instance_uid)
    groups = []
    orientation = _sequence(0x00209116, _element(0x00200037, "DS", _text(
        template.ImageOrientationPatient)))
    acquired = _acquisition_datetime(template)
    for instance in slices:
        groups.append(_frame_groups(instance, n_slices, n_volumes, orientation, acquired,
                                    template.SOPClassUID))
    if len(groups) != n_slices * n_volumes:
        raise ValueError(f"{len(groups)} frames where {n_slices * n_volumes} were due")
    return EnhancedInstance(head, groups, pixels)


def _head(modality: str, template: Dataset, n_slices: int, n_volumes: int,
          sop_instance_uid: str) -> Dataset:
    """Everything but the per-frame functional groups and the pixels."""
    in_iod = IOD_KEYWORDS[modality]
    ds, unassigned = Dataset(), Dataset()
    for element in template:
        keyword = element.keyword
        if keyword in _IN_GROUPS or not keyword:
            continue
        # a copy: values set here must not change the classic template
        (ds if keyword in in_iod else unassigned).add(copy.copy(element))
    sop_class = ENHANCED_SOP_CLASSES[modality]
    ds.SOPClassUID, ds.SOPInstanceUID, ds.InstanceNumber = sop_class, sop_instance_uid, 1
    # enhanced Image Type (PS3.3 C.8.16.1): value 2 is PRIMARY only, value 3 the image
    # flavor (VOLUME for a converted volume), value 4 the derived pixel contrast (NONE)
    image_type = [str(template.ImageType[0]), "PRIMARY", "VOLUME", "NONE"]
    ds.ImageType = image_type
    for keyword, value in _FRAME_TYPE.items():
        setattr(ds, keyword, value)
    ds.ContentDate, ds.ContentTime = content_datetime(template)
    description = str(template.get("SeriesDescription") or "")
    if description and len(description) + len(_SUFFIX) <= 64:  # LO: 64 characters
        ds.SeriesDescription = description + _SUFFIX  # told apart from the classic series
    acquired = _acquisition_datetime(template)
    if acquired:
        ds.AcquisitionDateTime = acquired
    if "ContentQualification" not in ds:
        ds.ContentQualification = "RESEARCH"  # C.8.13.1: converted research data
    ds.ContributingEquipmentSequence = [_conversion_equipment()]
    ds.AcquisitionContextSequence = []  # Type 2 (C.7.6.14): nothing known of it
    if ds.PhotometricInterpretation == "MONOCHROME2":
        ds.PresentationLUTShape = "IDENTITY"  # Type 1C (C.8.13.1, C.8.15.2)
    _dimensions(ds, n_volumes)
    ds.SharedFunctionalGroupsSequence = [_shared_groups(modality, template, image_type,
                                                         unassigned)]
    if "FrameAnatomySequence" in ds.SharedFunctionalGroupsSequence[0]:
        ds.pop("Laterality", None)
    ds.NumberOfFrames = n_slices * n_volumes
    ds.file_meta = file_meta(sop_class, sop_instance_uid)
    return ds


def _shared_groups(modality: str, template: Dataset, image_type: list[str],
                   unassigned: Dataset) -> Dataset:
    shared = Dataset()
    frame_type = Dataset()
    frame_type.FrameType = image_type
    for keyword, value in _FRAME_TYPE.items():
        setattr(frame_type, keyword, value)
    setattr(shared, _FRAME_TYPE_SEQUENCE[modality], [frame_type])
    anatomy = _frame_anatomy(template)
    if anatomy is not None:
        shared.FrameAnatomySequence = [anatomy]
        # General Series Laterality is for when no Frame Laterality is sent (C.7.3.1, 2C)
        unassigned.pop("Laterality", None)
    if len(unassigned):
        shared.UnassignedSharedConvertedAttributesSequence = [unassigned]
    measures = Dataset()
    for keyword in ("SliceThickness", "SpacingBetweenSlices", "PixelSpacing"):
        if keyword in template:
            measures[keyword] = template[keyword]
    shared.PixelMeasuresSequence = [measures]
    if "WindowCenter" in template:
        voi = Dataset()
        for keyword in ("WindowCenter", "WindowWidth", "WindowCenterWidthExplanation",
                        "VOILUTFunction"):
            if keyword in template:
                voi[keyword] = template[keyword]
        shared.FrameVOILUTSequence = [voi]
    if "RescaleSlope" in template:
        transform = Dataset()
        transform.RescaleIntercept = template.RescaleIntercept
        transform.RescaleSlope = template.RescaleSlope
        transform.RescaleType = template.get("RescaleType") or _RESCALE_TYPE[modality]
        shared.PixelValueTransformationSequence = [transform]
    return shared


def _dimensions(ds: Dataset, n_volumes: int) -> None:
    """The Dimension Index (C.7.6.17): In-Stack Position Number, and Temporal Position Index
    for 4D, both in the Frame Content of each frame."""
    organization = generate_uid(entropy_srcs=[str(ds.SOPInstanceUID), "dimensions"])
    item = Dataset()
    item.DimensionOrganizationUID = organization
    ds.DimensionOrganizationSequence = [item]
    dimensions = [(0x00209057, "In-Stack Position Number")]
    if n_volumes > 1:
        dimensions.append((0x00209128, "Temporal Position Index"))
    index = []
    for pointer, label in dimensions:
        item = Dataset()
        item.DimensionOrganizationUID = organization
        item.DimensionIndexPointer = pointer
        item.FunctionalGroupPointer = 0x00209111  # Frame Content Sequence
        item.DimensionDescriptionLabel = label
        index.append(item)
    ds.DimensionIndexSequence = index
    ds.DimensionOrganizationType = "3D_TEMPORAL" if n_volumes > 1 else "3D"


def _frame_groups(instance: InstanceSlice, n_slices: int, n_volumes: int, orientation: bytes,
                  acquired: str, classic_sop_class: str) -> bytes:
    """One frame's functional groups, encoded, in tag order.

    Plane Orientation is per frame although every frame has the same (valid either way,
    PS3.3 C.7.6.16, and what Philips writes, so enhanced readers take it). It matters to
    dcm2niix (1.0.20220720, Debian's): when it has the orientation before the first frame's
    position it re-sorts a file's frames by position alone (it reads a Dimension Index only
    from Philips, Canon and Bruker files), which scrambles the volumes of a 4D run; with the
    orientation per frame it keeps the stored order, slice fastest, as the Dimension Index
    says (tested: 3D and 4D, several orientations, voxel for voxel).
    """
    t, k = divmod(instance.number - 1, n_slices)
    out = []
    weighting = instance.diffusion
    if weighting is not None:  # MR Diffusion (C.8.13.5.9)
        diffusion = [_element(0x00189075, "CS", weighting.directionality.encode())]
        if weighting.directionality == "DIRECTIONAL" and weighting.direction is not None:
            diffusion.append(_sequence(0x00189076, _element(
                0x00189089, "FD", struct.pack("<3d", *weighting.direction))))
        diffusion.append(_element(0x00189087, "FD", struct.pack("<d", weighting.b_value)))
        out.append(_sequence(0x00189117, b"".join(diffusion)))
    indices = struct.pack("<2L", k + 1, t + 1) if n_volumes > 1 else struct.pack("<L", k + 1)
    content = [
        _element(0x00189074, "DT", acquired.encode()) if acquired else b"",
        _element(0x00209056, "SH", b"1"),  # Stack ID
        _element(0x00209057, "UL", struct.pack("<L", k + 1)),  # In-Stack Position Number
        _element(0x00209128, "UL", struct.pack("<L", t + 1)) if n_volumes > 1 else b"",
        # Frame Acquisition Number is US (Type 3): past 65535 volumes it is left out
        _element(0x00209156, "US", struct.pack("<H", number)) if (
            number := instance.acquisition_number or 1) <= 0xFFFF else b"",
        _element(0x00209157, "UL", indices),  # Dimension Index Values
    ]
    out.append(_sequence(0x00209111, b"".join(content)))
    out.append(_sequence(0x00209113, _element(0x00200032, "DS",
                                              "\\".join(instance.position).encode())))
    out.append(orientation)
    unassigned = [_element(0x00200013, "IS", str(instance.number).encode())]
    if instance.temporal_position is not None:
        unassigned.append(_element(0x00200100, "IS", str(instance.temporal_position).encode()))
    unassigned.append(_element(0x00201041, "DS", instance.location.encode()))
    out.append(_sequence(0x00209171, b"".join(unassigned)))
    out.append(_sequence(0x00209172, _element(0x00081150, "UI", classic_sop_class.encode())
                         + _element(0x00081155, "UI", instance.sop_instance_uid.encode())))
    return b"".join(out)


def _element(tag: int, vr: str, data: bytes) -> bytes:
    """One short-length Explicit VR Little Endian element, padded to even length (PS3.5 7.1.2,
    6.2: UI with NUL, text with a space)."""
    if len(data) % 2:
        data += b"\x00" if vr == "UI" else b" "
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr.encode(), len(data)) + data


def _sequence(tag: int, *items: bytes) -> bytes:
    """A sequence of defined length whose items have defined lengths (PS3.5 7.5)."""
    body = b"".join(struct.pack("<HHI", 0xFFFE, 0xE000, len(i)) + i for i in items)
    return struct.pack("<HH2s2xI", tag >> 16, tag & 0xFFFF, b"SQ", len(body)) + body


def _text(values) -> bytes:
    return "\\".join(str(v) for v in values).encode()


def content_datetime(template: Dataset) -> tuple[str, str]:
    """Content Date and Time, Type 1 here (C.7.6.16): the classic images' when they have both,
    else the acquisition's, else now (when these pixels were made, as highdicom says)."""
    for date, time in (("ContentDate", "ContentTime"), ("AcquisitionDate", "AcquisitionTime")):
        if template.get(date) and template.get(time):
            return str(template[date].value), str(template[time].value)
    now = datetime.now()
    return now.strftime("%Y%m%d"), now.strftime("%H%M%S")


def _acquisition_datetime(template: Dataset) -> str:
    if template.get("AcquisitionDateTime"):
        return str(template.AcquisitionDateTime)
    if template.get("AcquisitionDate"):
        return str(template.AcquisitionDate) + str(template.get("AcquisitionTime") or "")
    return ""


def _conversion_equipment() -> Dataset:
    """Who made the enhanced object (C.7.5.1 Contributing Equipment; DCM 109106)."""
    purpose = Dataset()
    purpose.CodeValue, purpose.CodingSchemeDesignator = "109106", "DCM"
    purpose.CodeMeaning = "Enhanced Multi-frame Conversion Equipment"
    item = Dataset()
    item.Manufacturer = CONVERTER_NAME
    item.ManufacturerModelName = CONVERTER_NAME
    item.SoftwareVersions = __version__
    item.ContributionDescription = "Legacy Converted Enhanced instance made from NIfTI"
    item.PurposeOfReferenceCodeSequence = [purpose]
    return item


def unknown_side(template: Dataset) -> str | None:
    """Why the series cannot be an enhanced object, or None: a paired body part (KNEE,
    BREAST) with no Laterality has no valid Frame Laterality (Type 1: R, L, U or B)."""
    part = str(template.get("BodyPartExamined") or "").upper()
    code = anatomic_regions().get(part)
    if code is not None and code[3] and not template.get("Laterality"):
        return (f"{part} is a paired body part and an enhanced object must say which side "
                "(Frame Laterality, PS3.3 C.7.6.16.2.8): set Laterality (R, L or B), or use "
                "iod image")
    return None


def _frame_anatomy(template: Dataset) -> Dataset | None:
    """Frame Anatomy (C.7.6.16.2.8), required when Body Part Examined has a code in PS3.16
    Annex L: that code, and the laterality (U for an unpaired part)."""
    part = str(template.get("BodyPartExamined") or "").upper()
    code = anatomic_regions().get(part)
    if code is None:
        return None
    scheme, value, meaning, paired = code
    region = Dataset()
    region.CodeValue, region.CodingSchemeDesignator, region.CodeMeaning = value, scheme, meaning
    anatomy = Dataset()
    anatomy.AnatomicRegionSequence = [region]
    anatomy.FrameLaterality = str(template.get("Laterality") or "") or (
        "U" if not paired else "")
    return anatomy
