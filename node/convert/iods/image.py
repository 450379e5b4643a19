"""Build the DICOM datasets of one series: MR Image, CT Image or Secondary Capture Image.

Each IOD's Type 1 attributes get a value and its Type 2 attributes are present (empty when no
source gives one), per PS3.3 A.4 (MR Image IOD), A.3 (CT Image IOD) and A.8.1 (SC Image IOD).
The per-series part is built once; each instance adds only what differs per slice.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    SecondaryCaptureImageStorage,
)
from pydicom.valuerep import format_number_as_ds

from node import CONVERTER_NAME, IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME, __version__
from node.convert.anatomy import may_be_paired
from node.convert.diffusion import VolumeWeighting
from node.convert.geometry import VolumeGeometry
from node.convert.mapping import Attributes
from node.convert.pixels import PixelEncoding
from node.convert.uids import SeriesUids

SOP_CLASSES: dict[str, UID] = {
    "MR": MRImageStorage,
    "CT": CTImageStorage,
    "OT": SecondaryCaptureImageStorage,
}
SOP_CLASS_NAMES: dict[UID, str] = {
    MRImageStorage: "MR Image Storage",
    CTImageStorage: "CT Image Storage",
    SecondaryCaptureImageStorage: "Secondary Capture Image Storage",
}

#: Type 2 attributes present in every series (PS3.3 C.7.1.1, C.7.2.1, C.7.3.1, C.7.5.1, ...).
_TYPE2_COMMON = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex",
    "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber",
    "SeriesNumber", "Manufacturer", "ContentDate", "ContentTime",
)
_TYPE2_BY_MODALITY = {
    # MR Image module C.8.3.1 (+ Patient Position, Type 2C for MR/CT in General Series)
    "MR": ("ScanOptions", "MRAcquisitionType", "RepetitionTime", "EchoTime", "EchoTrainLength",
           "PatientPosition", "SliceThickness", "PositionReferenceIndicator"),
    # CT Image module C.8.2.1
    "CT": ("KVP", "AcquisitionNumber", "PatientPosition", "SliceThickness",
           "PositionReferenceIndicator"),
    # SC: Patient Orientation (2C, required without Image Plane) is set from the geometry
    "OT": ("PositionReferenceIndicator",),
}


def _ds(value: float) -> str:
    return format_number_as_ds(float(value))


def _orientation_letters(vector: np.ndarray) -> str:
    """PS3.3 C.7.6.1.1.1: the patient direction(s) a vector points to, main one first."""
    letters = (("L", "R"), ("P", "A"), ("H", "F"))
    order = np.argsort(-np.abs(vector))
    out = ""
    for axis in order:
        if abs(vector[axis]) > 1e-3 and len(out) < 3:
            out += letters[axis][0] if vector[axis] > 0 else letters[axis][1]
    return out


@dataclass(frozen=True)
class SeriesLayout:
    """How many instances, in which order: slice k of volume t is instance t * nz + k + 1."""

    n_slices: int
    n_volumes: int

    @property
    def n_instances(self) -> int:
        return self.n_slices * self.n_volumes


#: Value 3 of Image Type when no source gives one: MR C.8.3.1.1.1 requires a value
#: ("OTHER" is a defined term), CT C.8.2.1.1.1 enumerates AXIAL/LOCALIZER.
_IMAGE_TYPE_VALUE3 = {"MR": "OTHER", "CT": "AXIAL"}


def _image_type(attrs: Attributes, modality: str, derived: bool) -> list[str]:
    mapped = attrs.get("ImageType")
    values = list(mapped.value) if mapped is not None and isinstance(mapped.value, list) else (
        [str(mapped.value)] if mapped is not None and mapped.value else []
    )
    if derived:
        # value 1 ORIGINAL/DERIVED, value 2 PRIMARY/SECONDARY (PS3.3 C.7.6.1.1.2)
        values = ["DERIVED", "SECONDARY", *values[2:]]
    elif len(values) < 2:
        values = ["ORIGINAL", "PRIMARY", *values[2:]]
    value3 = _IMAGE_TYPE_VALUE3.get(modality)
    if modality == "CT" and len(values) > 2 and values[2] not in ("AXIAL", "LOCALIZER"):
        values[2] = value3
    if value3 and len(values) < 3:
        values.append(value3)
    return values


def _deidentification_codes(dates_shifted: bool) -> list[Dataset]:
    """What was done, as PS3.15 E.1 asks it recorded (PS3.3 C.7.1.1,
    DeidentificationMethodCodeSequence; codes from CID 7050): the Basic Application
    Confidentiality Profile, and the Retain Longitudinal Temporal Information with Modified
    Dates Option when dates were shifted rather than removed."""
    codes = [("113100", "Basic Application Confidentiality Profile")]
    if dates_shifted:
        codes.append(("113107", "Retain Longitudinal Temporal Information Modified Dates Option"))
    out = []
    for value, meaning in codes:
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "DCM", meaning
        out.append(item)
    return out


def series_template(
    attrs: Attributes,
    modality: str,
    derived: bool,
    uids: SeriesUids,
    geometry: VolumeGeometry,
    encoding: PixelEncoding,
    shape: tuple[int, int, int, int],
    provenance: str,
) -> Dataset:
    """Everything that is the same for every instance of the series."""
    ds = Dataset()
    sop_class = SOP_CLASSES.get(modality, SecondaryCaptureImageStorage)
    for keyword in _TYPE2_COMMON + _TYPE2_BY_MODALITY.get(modality, ()):
        setattr(ds, keyword, "")
    for keyword, mapped in attrs.items():
        setattr(ds, keyword, mapped.value)
    if str(ds.get("PatientIdentityRemoved", "")) == "YES":
        ds.DeidentificationMethodCodeSequence = _deidentification_codes(
            str(ds.get("LongitudinalTemporalInformationModified", "")) == "MODIFIED")
    body_part = str(ds.get("BodyPartExamined", "") or "").upper()
    if "Laterality" not in ds and may_be_paired(body_part):
        ds.Laterality = ""
    if not ds.ContentDate and ds.StudyDate:
        ds.ContentDate, ds.ContentTime = ds.StudyDate, ds.StudyTime
    ds.SOPClassUID = sop_class
    ds.Modality = modality
    ds.ImageType = _image_type(attrs, modality, derived)
    ds.StudyInstanceUID = uids.study
    ds.SeriesInstanceUID = uids.series
    ds.FrameOfReferenceUID = uids.frame_of_reference
    if modality == "OT":
        ds.ConversionType = "WSD"  # SC Equipment module C.8.6.1: workstation
        ds.PatientOrientation = [
            _orientation_letters(np.array(geometry.orientation[:3])),
            _orientation_letters(np.array(geometry.orientation[3:])),
        ]

    # Image Plane (C.7.6.2): spacing between slices from positions, not pixdim
    ds.ImageOrientationPatient = [_ds(v) for v in geometry.orientation]
    ds.PixelSpacing = [_ds(v) for v in geometry.pixel_spacing]
    if not ds.get("SliceThickness"):
        ds.SliceThickness = _ds(geometry.slice_thickness)
    if shape[2] > 1:
        ds.SpacingBetweenSlices = _ds(geometry.spacing_between_slices)

    ds.Rows, ds.Columns = shape[1], shape[0]
    if encoding.samples_per_pixel == 3:
        # Image Pixel (C.7.6.3) of a colour SC image: 8-bit RGB, interleaved (C.7.6.3.1.3)
        ds.SamplesPerPixel = 3
        ds.PhotometricInterpretation = "RGB"
        ds.PlanarConfiguration = 0
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit = 7
        ds.PixelRepresentation = 0
    else:
        # Image Pixel (C.7.6.3): always 16 bits allocated and stored
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = encoding.pixel_representation
        ds.RescaleIntercept = encoding.intercept_ds
        ds.RescaleSlope = encoding.slope_ds
        if modality == "OT":
            ds.RescaleType = "US"  # Type 1C in SC's Modality LUT (C.11.1): unspecified units
        ds.WindowCenter = _ds(encoding.window_center)
        ds.WindowWidth = _ds(encoding.window_width)
        if encoding.window_width < 1:  # a small real range (FA, ADC): LINEAR needs width >= 1
            ds.VOILUTFunction = "LINEAR_EXACT"  # PS3.3 C.11.2.1.3.2

    # 4D: one series whose instances carry the volume index (C.7.6.1, C.8.3.1)
    if shape[3] > 1:
        ds.NumberOfTemporalPositions = shape[3]

    # provenance (GUIDE: converter name/version and the source's SHA-256)
    ds.DerivationDescription = provenance
    if not ds.get("SoftwareVersions"):
        ds.SoftwareVersions = f"{CONVERTER_NAME} {__version__}"
    if any(isinstance(v, str) and not v.isascii() for v in _string_values(ds)):
        ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8 (PS3.3 C.12.1.1.2)
    return ds


def _string_values(ds: Dataset) -> Iterator[str]:
    for elem in ds:
        value = elem.value
        if isinstance(value, str):
            yield value
        elif isinstance(value, list | tuple):
            yield from (v for v in value if isinstance(v, str))
        elif value is not None and elem.VR == "PN":
            yield str(value)


@dataclass(frozen=True)
class InstanceSlice:
    """What one instance adds to the series template: identity, position and pixels."""

    number: int
    sop_instance_uid: str
    position: tuple[str, str, str]  # DS text of ImagePositionPatient
    location: str  # DS text of SliceLocation
    acquisition_number: int | None
    temporal_position: int | None
    pixel_data: bytes
    diffusion: VolumeWeighting | None = None
    pixel_vr: str = "OW"  # 16-bit native pixel data is OW, 8-bit OB (PS3.5 8.2)

    def elements(self) -> list[tuple[int, str, str | bytes | tuple[float, ...]]]:
        """(tag, VR, value) in ascending tag order; text values are already VR-formatted,
        FD values are tuples of floats."""
        out: list[tuple[int, str, str | bytes | tuple[float, ...]]] = [
            (0x00080018, "UI", self.sop_instance_uid)]
        if self.diffusion is not None:  # MR Diffusion Macro attributes, PS3.3 C.8.13.5.9
            out.append((0x00189075, "CS", self.diffusion.directionality))
            out.append((0x00189087, "FD", (self.diffusion.b_value,)))
            if self.diffusion.direction is not None:
                out.append((0x00189089, "FD", tuple(self.diffusion.direction)))
        if self.acquisition_number is not None:
            out.append((0x00200012, "IS", str(self.acquisition_number)))
        out.append((0x00200013, "IS", str(self.number)))
        out.append((0x00200032, "DS", "\\".join(self.position)))
        if self.temporal_position is not None:
            out.append((0x00200100, "IS", str(self.temporal_position)))
        out.append((0x00201041, "DS", self.location))
        out.append((0x7FE00010, self.pixel_vr, self.pixel_data))
        return out


def instance_slices(
    template: Dataset,
    stored: np.ndarray,
    geometry: VolumeGeometry,
    uids: SeriesUids,
    layout: SeriesLayout,
    weighting: Sequence[VolumeWeighting] | None = None,
    pixels: bool = True,
) -> Iterator[InstanceSlice]:
    """Yield, per slice, only what differs from the template (without its pixels when
    ``pixels`` is false: a multi-frame instance takes them all at once, :func:`frame_array`).

    Slice k of volume t is the pixel matrix ``data[:, :, k, t].T`` (rows run along j).
    """
    colour = template.SamplesPerPixel == 3
    volumes = stored if colour else stored.reshape(stored.shape[:3] + (layout.n_volumes,),
                                                   order="F")
    dtype = template_dtype(template)
    positions = [tuple(_ds(v) for v in p) for p in geometry.positions]
    locations = [_ds(geometry.slice_location(k)) for k in range(layout.n_slices)]
    # CT's Type 2 AcquisitionNumber gets 1 for a 3D series; 4D numbers the volumes
    single_acquisition = 1 if template.get("AcquisitionNumber", None) == "" else None
    for t in range(layout.n_volumes):
        for k in range(layout.n_slices):
            number = t * layout.n_slices + k + 1
            four_d = layout.n_volumes > 1
            yield InstanceSlice(
                number=number,
                sop_instance_uid=uids.instance(number),
                position=positions[k],  # type: ignore[arg-type]
                location=locations[k],
                acquisition_number=t + 1 if four_d else single_acquisition,
                temporal_position=t + 1 if four_d else None,
                pixel_data=np.ascontiguousarray(
                    volumes[:, :, k, t].transpose(1, 0, 2) if colour else volumes[:, :, k, t].T,
                    dtype=dtype).tobytes() if pixels else b"",
                diffusion=weighting[t] if weighting else None,
                pixel_vr="OB" if colour else "OW",
            )


def frame_array(template: Dataset, stored: np.ndarray, layout: SeriesLayout) -> np.ndarray:
    """Every slice's pixels as frames in instance order, (t * n_slices + k, rows, columns):
    the same matrices :func:`instance_slices` gives one by one, in one transposing copy."""
    volumes = stored.reshape(stored.shape[:3] + (layout.n_volumes,), order="F")
    frames = np.ascontiguousarray(volumes.transpose(3, 2, 1, 0), dtype=template_dtype(template))
    return frames.reshape((-1, *frames.shape[2:]))


def full_dataset(template: Dataset, instance: InstanceSlice) -> Dataset:
    """The complete pydicom dataset of one instance, with its file meta."""
    ds = Dataset()
    ds.update(template)
    for tag, vr, value in instance.elements():
        ds.add_new(tag, vr, list(value) if isinstance(value, tuple) else value)
    ds.file_meta = file_meta(template.SOPClassUID, instance.sop_instance_uid)
    return ds


def template_dtype(template: Dataset) -> np.dtype:
    if template.BitsAllocated == 8:
        return np.dtype("u1")
    return np.dtype("<i2") if template.PixelRepresentation == 1 else np.dtype("<u2")


def file_meta(sop_class_uid: str, sop_instance_uid: str) -> FileMetaDataset:
    """Part 10 file meta information (PS3.10 7.1)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class_uid
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    return meta
