"""Convert one NIfTI file into one DICOM series: the pure core of the product.

``convert_file`` takes a path, a profile and overrides and returns a :class:`ConvertedSeries`
whose datasets are produced lazily; it knows neither the network nor the journal.
``write_series`` puts a series on disk atomically (temporary folder, then rename), so a failed
conversion never leaves a half-written series that looks complete.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

from node import CONVERTER_NAME, __version__
from node.convert.diffusion import VolumeWeighting, gradient_files, read_weighting
from node.convert.geometry import (
    ORIENTATION_UNKNOWN,
    VolumeGeometry,
    choose_affine,
    volume_geometry,
)
from node.convert.iods.colour import true_colour_dataset
from node.convert.iods.enhanced import (
    ENHANCED_NAMES,
    ENHANCED_SOP_CLASSES,
    EnhancedInstance,
    enhanced_instance,
    unknown_side,
)
from node.convert.iods.image import (
    SOP_CLASS_NAMES,
    SOP_CLASSES,
    InstanceSlice,
    SeriesLayout,
    file_meta,
    frame_array,
    full_dataset,
    instance_slices,
    series_template,
)
from node.convert.iods.pmap import parametric_map
from node.convert.iods.seg import SEG_NAMES, SEG_SUFFIXES, label_names, segmentation
from node.convert.mapping import (
    Attributes,
    MappedValue,
    pseudonym,
    resolve_attributes,
    value_of,
)
from node.convert.part10 import SeriesEncoder, multiframe_bytes
from node.convert.pixels import PixelEncoding, PixelError, encode_pixels, encode_rgb
from node.convert.profile import Profile, builtin_profile
from node.convert.reference import ReferenceStudy
from node.convert.source import NiftiSource, bids_entities, load_source, read_failure
from node.convert.study import StudyValues, series_number
from node.convert.study import apply as apply_study
from node.convert.uids import SeriesUids, make_uid, series_uids
from node.errors import InputError, MappingError

log = logging.getLogger(__name__)


@dataclass
class ConvertedSeries:
    """One series made from one source; ``datasets()`` yields its instances in order."""

    source: NiftiSource
    profile: Profile
    modality: str
    attributes: Attributes
    uids: SeriesUids
    geometry: VolumeGeometry
    encoding: PixelEncoding
    layout: SeriesLayout
    template: Dataset
    stored: np.ndarray = field(repr=False)
    warnings: list[str] = field(default_factory=list)
    weighting: tuple[VolumeWeighting, ...] | None = None
    #: "image" (classic single-frame instances), "enhanced", "seg" or "pmap" (one instance)
    iod: str = "image"
    compression: str = "none"
    #: seg/pmap: builds the one multi-frame instance (called once, on first use)
    build: Callable[[ConvertedSeries], Dataset] | None = field(default=None, repr=False)
    _object: Dataset | None = field(default=None, repr=False)
    _syntax: str | None = field(default=None, repr=False)
    _enhanced: EnhancedInstance | None = field(default=None, repr=False)
    labelmap: bool = False  # a SEG is LABELMAP (Label Map Segmentation Storage)

    @property
    def single(self) -> bool:
        """One multi-frame instance rather than one instance per slice."""
        return self.iod != "image"

    def object(self) -> Dataset:
        """The multi-frame instance of an enhanced, seg or pmap series."""
        if self._object is None:
            self._object = (self.build(self) if self.build is not None
                            else self._legacy_enhanced().dataset())
        return self._object

    def _legacy_enhanced(self) -> EnhancedInstance:
        """The Legacy Converted Enhanced instance of a grey MR or CT series (made once)."""
        if self._enhanced is None:
            slices = instance_slices(self.template, self.stored, self.geometry, self.uids,
                                     self.layout, self.weighting, pixels=False)
            pixels = memoryview(frame_array(self.template, self.stored, self.layout)).cast("B")
            self._enhanced = enhanced_instance(self.modality, self.template, slices, pixels,
                                               self.layout.n_slices, self.layout.n_volumes,
                                               self.object_uid)
        return self._enhanced

    @property
    def sop_class_uid(self) -> str:
        if not self.single:
            return str(self.template.SOPClassUID)
        if self.build is None:  # known without building the instance
            return str(ENHANCED_SOP_CLASSES[self.modality])
        return str(self.object().SOPClassUID)

    @property
    def sop_class_name(self) -> str:
        uid = UID(self.sop_class_uid)
        return (SOP_CLASS_NAMES.get(uid) or ENHANCED_NAMES.get(uid) or SEG_NAMES.get(uid)
                or uid.name)

    @property
    def n_instances(self) -> int:
        return 1 if self.single else self.layout.n_instances

    @property
    def object_uid(self) -> str:
        """The SOP Instance UID of the one instance of an enhanced, seg or pmap series."""
        # a LABELMAP SEG is another SOP class than the BINARY one: another instance
        kind = "seg-labelmap" if self.labelmap and self.iod == "seg" else self.iod
        return make_uid(self.uids.root, kind, self.uids.series)

    def instance_uids(self) -> list[str]:
        """SOP Instance UIDs in instance order."""
        if self.single:
            return [self.object_uid]
        return [self.uids.instance(n) for n in range(1, self.layout.n_instances + 1)]

    @property
    def transfer_syntax(self) -> str:
        """How the files are encoded: lossless compression applies to image and enhanced
        objects; a SEG (1-bit) and a map (float) are always uncompressed. A codec that cannot
        take this series (OpenJPEG refuses images smaller than its resolution levels) falls
        back to RLE Lossless, which takes anything, with a warning."""
        if self.compression == "none" or self.iod in ("seg", "pmap"):
            return ExplicitVRLittleEndian
        if self._syntax is None:
            wanted = COMPRESSION_SYNTAXES[self.compression]
            try:
                part10_bytes(next(self.datasets()), wanted)
                self._syntax = wanted
            except Exception as exc:  # the codec's own refusal, whatever its type
                self._syntax = RLELossless
                self.warnings.append(f"{self.compression} cannot encode this series "
                                     f"({str(exc).splitlines()[0][:80]}); RLE Lossless used")
        return self._syntax

    def _slices(self) -> Iterator[InstanceSlice]:
        return instance_slices(self.template, self.stored, self.geometry, self.uids, self.layout,
                               self.weighting)

    def classic_datasets(self) -> Iterator[Dataset]:
        """The classic single-frame instances of the series (what ``image`` writes)."""
        return (full_dataset(self.template, s) for s in self._slices())

    def datasets(self) -> Iterator[Dataset]:
        """Complete pydicom datasets, one per instance, in instance order."""
        return iter([self.object()]) if self.single else self.classic_datasets()

    def encoded(self) -> Iterator[tuple[int, str, Part10]]:
        """(instance number, SOP Instance UID, Part 10 file) per instance, in order: its
        bytes, or (a multi-frame instance) the pieces of them to write in turn."""
        syntax = self.transfer_syntax
        if not self.single and syntax == ExplicitVRLittleEndian:
            encoder = SeriesEncoder(self.template, file_meta(self.template.SOPClassUID, ""))
            for instance in self._slices():
                yield instance.number, instance.sop_instance_uid, encoder.encode(instance)
            return
        if self.single and self.build is None and syntax == ExplicitVRLittleEndian:
            yield 1, self.object_uid, self._legacy_enhanced().pieces()
            return
        for number, ds in enumerate(self.datasets(), 1):
            if syntax == ExplicitVRLittleEndian and "PerFrameFunctionalGroupsSequence" in ds:
                try:  # thousands of functional-group items: encoded without pydicom's writer
                    yield number, str(ds.SOPInstanceUID), multiframe_bytes(ds)
                    continue
                except ValueError:
                    pass
            yield number, str(ds.SOPInstanceUID), part10_bytes(ds, syntax)


#: A Part 10 file: its bytes, or its pieces in order.
Part10 = bytes | list[bytes | bytearray | memoryview]

#: Lossless transfer syntaxes by the words a profile, destination or --compression uses.
COMPRESSION_SYNTAXES = {"rle": RLELossless, "jpeg-ls": JPEGLSLossless,
                        "jpeg2000": JPEG2000Lossless}


def part10_bytes(ds: Dataset, syntax: str = ExplicitVRLittleEndian) -> bytes:
    """A dataset as a Part 10 file, compressed losslessly when ``syntax`` says so (pydicom's
    encoders; the SOP Instance UID is kept: an encoding is not a new instance)."""
    from pydicom.filebase import DicomBytesIO

    if syntax != ExplicitVRLittleEndian:
        plain, ds = ds, Dataset()  # compress() sets values in place: copy the elements
        for element in plain:
            ds.add(copy.copy(element))
        ds.file_meta = copy.deepcopy(plain.file_meta)
        ds.compress(syntax, generate_instance_uid=False)
    else:
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    fp = DicomBytesIO()
    ds.save_as(fp, enforce_file_format=True)
    return fp.getvalue()


def _true_colour(series: ConvertedSeries) -> Dataset:
    """The Multi-frame True Color SC instance of a colour series."""
    slices = series._slices()
    series.stored = None  # type: ignore[assignment]
    return true_colour_dataset(series.template, slices, series.layout.n_slices,
                               series.layout.n_volumes, series.object_uid)


def standalone_study(values: StudyValues, series_uid: str, own_number: int | None
                     ) -> tuple[StudyValues, int | None]:
    """A series alone in its study: it carries its own values, and a SeriesNumber from its
    Series Instance UID."""
    return values, own_number if own_number is not None else series_number(series_uid, set())


def _mapping_digest(attrs: Attributes, modality: str, profile: Profile) -> str:
    payload = {k: v.value for k, v in sorted(attrs.items())}
    payload["_modality"] = modality
    payload["_derived"] = profile.derived
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


#: Given what a series says of its study, its Series Instance UID and its own SeriesNumber
#: (None when no source names one): the values its study makes it carry, and the
#: SeriesNumber it gets. Raises StudyConflict.
StudyHook = Callable[[StudyValues, str, int | None], tuple[StudyValues, int | None]]


@dataclass(frozen=True)
class SeriesPlan:
    """What a series will say, known from the header, the sidecar and the mapping alone
    (no voxel read): enough to reconcile it with the other series of its study."""

    source: NiftiSource
    modality: str
    attributes: Attributes
    uids: SeriesUids
    warnings: tuple[str, ...] = ()
    weighting: tuple[VolumeWeighting, ...] | None = None  # a DWI's .bval/.bvec, per volume

    @property
    def study(self) -> StudyValues:
        return StudyValues.of(self.uids.study, self.attributes)

    @property
    def series_number(self) -> int | None:
        """The SeriesNumber a source names, if any."""
        text = str(value_of(self.attributes, "SeriesNumber")).strip()
        return int(text) if text.lstrip("-").isdigit() else None


def plan_series(
    path: str | Path,
    profile: Profile | None = None,
    *,
    uid_root: str = "2.25",
    sidecar: str | Path | None = None,
    overrides: dict[str, str] | None = None,
    modality: str | None = None,
    reference: ReferenceStudy | None = None,
    iod: str = "image",
) -> SeriesPlan:
    """Read the header and the sidecar, resolve the mapping, make the UIDs."""
    profile = profile or builtin_profile()
    source = load_source(path, sidecar)
    modality = (modality or profile.modality).upper()
    notes: list[str] = []
    if is_colour(source, profile) and modality != "OT":
        notes.append(f"colour data: Secondary Capture, not {modality} (an {modality} image is "
                     "MONOCHROME2)")
        modality = "OT"
    if modality not in SOP_CLASSES:
        modality = "OT"
    attrs = resolve_attributes(source, profile, overrides, modality,
                               reference=reference.values if reference else None,
                               warnings=notes)
    if not str(value_of(attrs, "PatientID")).strip():
        # never an empty identity: a PACS files every such series under one patient ''
        raise MappingError(source.path, "no PatientID from any source (no sub- entity in the "
                           "file name, none in the sidecar or the profile): give --set "
                           "PatientID=..., a sidecar key PatientID, or a profile static or "
                           "fallback value")
    if reference is None and "StudyInstanceUID" in attrs:
        study_uid: str | None = str(value_of(attrs, "StudyInstanceUID"))
    else:
        study_uid = reference.study_uid if reference else None
    frame = reference.frame_of_reference_uid if (
        reference and profile.same_frame_of_reference) else None
    if reference and profile.same_frame_of_reference and not frame:
        raise MappingError(source.path, f"the profile says the NIfTI is in the reference's "
                           f"space, but the reference {reference.origin} has no single "
                           "FrameOfReferenceUID")
    weighting = _weighting(source) if modality == "MR" else None
    digest = _mapping_digest(attrs, modality, profile)
    if iod != "image":  # another object is another series (an encoding is not)
        digest = hashlib.sha256(f"{digest} {iod}".encode()).hexdigest()
    if weighting:  # other gradients make another series
        digest = hashlib.sha256((digest + repr(weighting)).encode()).hexdigest()
    uids = series_uids(
        uid_root,
        _study_key(source, profile, attrs),
        str(value_of(attrs, "StudyID")),
        source.sha256,
        digest,
        study_uid=study_uid,
        frame_of_reference_uid=frame,
    )
    return SeriesPlan(source, modality, attrs, uids, tuple(notes), weighting)


def _weighting(source: NiftiSource) -> tuple[VolumeWeighting, ...] | None:
    """The diffusion weighting per volume from ``.bval``/``.bvec`` beside the file, if any."""
    found = gradient_files(source.path)
    if found is None:
        return None
    affine, _ = choose_affine(source.image.header)
    return tuple(read_weighting(*found, source.shape[3], affine))


def _study_key(source: NiftiSource, profile: Profile, attrs: Attributes) -> str:
    """Who the study belongs to, for its UID: the file name's subject when it has one (so the
    series of one session share a study whichever carry a sidecar identity), else the
    PatientID."""
    sub = source.entities.get("sub")
    if sub and "{sub}" in profile.filename.get("PatientID", ""):
        return pseudonym(profile, "sub", sub) if profile.deidentify else sub
    return str(value_of(attrs, "PatientID"))


def convert_file(
    path: str | Path,
    profile: Profile | None = None,
    *,
    uid_root: str = "2.25",
    sidecar: str | Path | None = None,
    overrides: dict[str, str] | None = None,
    modality: str | None = None,
    reference: ReferenceStudy | None = None,
    study: StudyHook | None = None,
    iod: str | None = None,
    compression: str = "none",
    source_image: str | Path | None = None,
    labelmap: bool = False,
) -> ConvertedSeries:
    """Read, validate and encode ``path``; raise InputError/MappingError for bad input.

    ``profile`` defaults to the built-in default profile; ``uid_root`` is the organisation's
    UID root (PS3.5 9), under which every generated UID is made. ``reference`` is the clinical
    exam the series joins; ``study`` reconciles it with the other series of its study (a
    ``convert`` batch, the node's journal); without it the series stands alone.

    ``iod`` (default: the profile's) chooses the object: classic ``image`` instances, one
    ``enhanced`` multi-frame instance, a ``seg`` of a label map or a ``pmap`` of a float map
    (both refer to ``source_image``, the image they were drawn on or computed from: given, or
    found beside the file by its BIDS entities). ``compression`` is a lossless encoding.
    ``labelmap``: a SEG is LABELMAP rather than BINARY (for a destination that takes it).
    """
    profile = profile or builtin_profile()
    iod = choose_iod(Path(path), iod or profile.iod)
    plan = plan_series(path, profile, uid_root=uid_root, sidecar=sidecar, overrides=overrides,
                       modality=modality, reference=reference, iod=iod)
    source, modality, attrs, uids = plan.source, plan.modality, plan.attributes, plan.uids
    warnings_before = list(plan.warnings)
    affine, warnings = choose_affine(source.image.header)
    warnings = warnings_before + warnings
    try:
        geometry = volume_geometry(affine, source.shape[2])
    except ValueError as exc:
        raise InputError(source.path, str(exc)) from None
    warnings += geometry.warnings
    colour = is_colour(source, profile)
    if colour and iod not in ("image", "enhanced"):
        raise InputError(source.path, f"colour data are Secondary Capture images (classic, or "
                         f"multi-frame with enhanced); iod {iod!r} is not available for them")
    try:
        if colour:
            stored, encoding = encode_rgb(source.image, channels_last=not source.rgb)
        else:
            stored, encoding = encode_pixels(source.image, profile.nonfinite)  # type: ignore[arg-type]
    except PixelError as exc:
        raise InputError(source.path, str(exc)) from None
    except (OSError, EOFError, ValueError, zlib.error) as exc:
        raise read_failure(source.path, exc, "cannot read the voxel data") from None
    if stored.ndim < 3 and not colour:  # a 2D image: one slice, as its header shape says
        stored = stored.reshape(stored.shape + (1,) * (3 - stored.ndim))
    warnings += encoding.warnings
    if not encoding.lossless and iod not in ("seg", "pmap"):
        warnings.append(
            f"values rescaled into int16: RescaleSlope {encoding.slope_ds}, "
            f"max error {encoding.max_abs_error:.3g}"
        )

    # last, once the input is known to be good: a journal remembers what the study was given
    carried, number = (study or standalone_study)(plan.study, uids.series, plan.series_number)
    attrs = apply_study(attrs, carried)
    if number is not None and plan.series_number is None:
        attrs["SeriesNumber"] = MappedValue(number, "derived from the Series Instance UID "
                                            "(distinct within the study)", True)
    provenance = (
        f"Converted from NIfTI by {CONVERTER_NAME} {__version__}; source SHA-256 {source.sha256}"
    )
    if not profile.deidentify:
        provenance += f"; source file {source.path.name}"
    layout = SeriesLayout(n_slices=source.shape[2],
                          n_volumes=stored.shape[3] if colour else source.shape[3])
    shape = (*source.shape[:3], layout.n_volumes)
    if ORIENTATION_UNKNOWN in warnings:  # the file says it; the DICOM says it too
        attrs["ImageComments"] = MappedValue(
            "Orientation unknown: the NIfTI had neither sform nor qform; position and "
            "orientation are made up from the voxel sizes", "derived from the NIfTI header")
    template = series_template(
        attrs, modality, profile.derived, uids, geometry, encoding, shape, provenance
    )
    build = None
    if iod in ("seg", "pmap"):
        if source.shape[3] > 1:
            raise InputError(source.path, f"a {iod} is made of a 3D volume; this file is 4D")
        image = find_source_image(source.path, source.entities, source_image)
        if image.resolve() == source.path.resolve():
            raise InputError(source.path, "a SEG or map cannot refer to itself: name the image "
                             "it was made from with --source")
        referenced = convert_file(image, profile, uid_root=uid_root, modality=modality,
                                  reference=reference, study=study, iod="image")
        build = _builder(iod, referenced, provenance, labelmap)
    elif iod == "enhanced" and colour:
        build = _true_colour
    elif iod == "enhanced" and modality not in ENHANCED_SOP_CLASSES:
        raise InputError(source.path, "enhanced objects are MR or CT (Legacy Converted "
                         f"Enhanced); modality {modality} stays a classic image")
    elif iod == "enhanced" and (why := unknown_side(template)):
        raise InputError(source.path, why)
    return ConvertedSeries(
        source=source,
        profile=profile,
        modality=modality,
        attributes=attrs,
        uids=uids,
        geometry=geometry,
        encoding=encoding,
        layout=layout,
        template=template,
        stored=stored,
        warnings=warnings,
        weighting=plan.weighting,
        iod=iod,
        compression=compression,
        build=build,
        labelmap=labelmap,
    )


def is_colour(source: NiftiSource, profile: Profile) -> bool:
    """RGB24 voxels, or a last dimension of 3 that the profile says holds R, G, B."""
    return source.rgb or (profile.rgb_last_dimension and source.shape[3] == 3)


def choose_iod(path: Path, iod: str) -> str:
    """``auto``: a SEG of a BIDS label map (_dseg, _mask, _probseg), else a classic image."""
    if iod != "auto":
        return iod
    return "seg" if bids_entities(path).get("suffix") in SEG_SUFFIXES else "image"


#: BIDS suffixes that name something computed from an image rather than an image to refer to.
_DERIVED_SUFFIXES = set(SEG_SUFFIXES) | {"map", "FA", "MD", "ADC", "T1map", "T2map", "R1map",
                                         "R2map", "PDmap", "T2starmap", "statmap", "boldref"}
_SAME_SCAN = ("sub", "ses", "acq", "run", "rec", "ce")


def find_source_image(path: Path, entities: dict[str, str], given: str | Path | None) -> Path:
    """The image a SEG or map refers to: ``given``, else the one NIfTI beside ``path`` with the
    same subject, session, acquisition and run entities that is not itself derived."""
    if given is not None:
        given = Path(given)
        if not given.is_file():
            raise InputError(given, "no such source image (--source)")
        return given
    from node.convert.source import NIFTI_SUFFIXES

    same = {k: v for k, v in entities.items() if k in _SAME_SCAN}
    candidates = []
    if same.get("sub") and path.parent.is_dir():
        for other in sorted(path.parent.iterdir()):
            if other == path or not other.name.lower().endswith(NIFTI_SUFFIXES):
                continue
            theirs = bids_entities(other)
            if theirs.get("suffix") in _DERIVED_SUFFIXES or "desc" in theirs:
                continue
            if {k: v for k, v in theirs.items() if k in _SAME_SCAN} == same:
                candidates.append(other)
    if len(candidates) != 1:
        found = f"{len(candidates)} candidates beside it" if candidates else "none beside it"
        raise InputError(path, f"a SEG or parametric map refers to the image it was made from "
                         f"({found}): name it with --source IMAGE.nii.gz")
    return candidates[0]


def _builder(iod: str, referenced: ConvertedSeries, provenance: str, labelmap: bool = False
             ) -> Callable[[ConvertedSeries], Dataset]:
    """How the one SEG or parametric map instance of a series is made (on first use)."""

    def build(series: ConvertedSeries) -> Dataset:
        source_images = list(referenced.classic_datasets())
        number = int(value_of(series.attributes, "SeriesNumber", 1) or 1)
        volume = np.asarray(series.source.image.dataobj).reshape(series.source.shape[:3],
                                                                  order="F")
        if iod == "seg":
            names = label_names(series.source.path, series.source.stem, series.profile.labels)
            ds = segmentation(volume, series.geometry, source_images, names,
                              series.uids.series, number, series.object_uid, series.source.path,
                              labelmap)
        else:
            values = np.asarray(series.source.image.get_fdata(dtype=np.float32)).reshape(
                series.source.shape[:3], order="F")
            values = np.where(np.isfinite(values), values, 0.0)
            units = series.source.sidecar.get("Units") or series.profile.units
            label = str(value_of(series.attributes, "SeriesDescription") or "values")
            window = (series.encoding.window_center, series.encoding.window_width)
            ds = parametric_map(values, series.geometry, source_images,
                                units if isinstance(units, str) else None, label,
                                series.uids.series, number, series.object_uid, window)
        description = value_of(series.attributes, "SeriesDescription")
        if description:
            ds.SeriesDescription = str(description)
        ds.DerivationDescription = provenance
        return ds

    return build


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


def instance_filename(number: int) -> str:
    return f"IM{number:06d}.dcm"


def write_series(series: ConvertedSeries, out_dir: str | Path, name: str | None = None,
                 overwrite: bool = False) -> Path:
    """Write every instance under ``out_dir/name`` atomically; return the series folder.

    Files go to a hidden temporary folder next to the target, which is renamed into place only
    after the last instance is written and flushed. An existing folder is replaced only when it
    is provably our own earlier output of the same input (nothing but our instance files, whose
    provenance names this source's SHA-256), or with ``overwrite``; anything else is refused
    with the way out, so a folder of someone's files is never deleted.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(out_dir, "the output folder is a file: name a folder with -o")
    out_dir.mkdir(parents=True, exist_ok=True)
    name = name or series.source.stem
    if not name or name.startswith(".") or "/" in name or name in ("..", "."):
        name = f"series-{series.source.sha256[:12]}"  # an input named ".nii" or similar
    final = out_dir / name
    if final.exists() or final.is_symlink():
        ours = _earlier_output_of(final)
        if not overwrite and ours != series.source.sha256:
            why = ("holds the output of another input" if ours else
                   "exists and is not dicom-node's output")
            raise InputError(final, f"{why}; choose another -o, or pass --overwrite to "
                             "replace it")
        if not final.is_dir() or final.is_symlink():
            raise InputError(final, "exists and is not a folder; choose another -o")
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=out_dir))
    tmp.chmod(0o777 & ~_umask())  # as mkdir would: a PACS import user can read it
    try:
        for number, _uid, data in series.encoded():
            write_file(tmp / instance_filename(number), data)
        _fsync_dir(tmp)
        if final.exists():
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


_OURS = re.compile(r"^IM\d{6}\.dcm$")
#: The QA picture ``convert --preview`` writes into the series folder.
PREVIEW_NAME = "preview.png"
_PROVENANCE = re.compile(r"source SHA-256 ([0-9a-f]{64})")


def _earlier_output_of(folder: Path) -> str | None:
    """The source SHA-256 when ``folder`` holds nothing but a series we wrote (its files'
    provenance, PS3.3 C.7.6.1 DerivationDescription, names the source), else None."""
    from pydicom import dcmread

    try:
        if folder.is_symlink() or not folder.is_dir():
            return None
        names = sorted(e.name for e in os.scandir(folder) if e.name != PREVIEW_NAME)
        if not names or not all(_OURS.match(n) for n in names):
            return None
        ds = dcmread(folder / names[0], stop_before_pixels=True,
                     specific_tags=["DerivationDescription"])
    except Exception:  # unreadable or foreign: not provably ours
        return None
    found = _PROVENANCE.search(str(ds.get("DerivationDescription", "")))
    return found.group(1) if found else None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@dataclass(frozen=True)
class SeriesSummary:
    """What one conversion produced: enough to print, record or send."""

    source: Path
    series_uid: str
    sop_class_name: str
    n_instances: int
    folder: Path
    warnings: tuple[str, ...] = ()


def convert_to_folder(
    path: str | Path,
    out_dir: str | Path,
    profile: Profile | None = None,
    *,
    uid_root: str = "2.25",
    name: str | None = None,
    sidecar: str | Path | None = None,
    overrides: dict[str, str] | None = None,
    modality: str | None = None,
    overwrite: bool = False,
    reference: ReferenceStudy | None = None,
    study: StudyHook | None = None,
    iod: str | None = None,
    compression: str = "none",
    source_image: str | Path | None = None,
    preview: bool = False,
    labelmap: bool = False,
) -> SeriesSummary:
    """Convert one file and write its series atomically; a picklable result for worker pools.
    ``preview``: write the QA picture (:mod:`node.convert.preview`) into the series folder."""
    series = convert_file(path, profile, uid_root=uid_root, sidecar=sidecar,
                          overrides=overrides, modality=modality, reference=reference,
                          study=study, iod=iod, compression=compression,
                          source_image=source_image, labelmap=labelmap)
    folder = write_series(series, out_dir, name, overwrite)
    if preview:
        write_preview(folder, series.source.image, folder / PREVIEW_NAME, series.warnings)
    return SeriesSummary(
        source=Path(path),
        series_uid=series.uids.series,
        sop_class_name=series.sop_class_name,
        n_instances=series.n_instances,
        folder=folder,
        warnings=tuple(series.warnings),
    )


def write_preview(folder: Path, nifti_image, target: Path, warnings: list[str]) -> bool:
    """The QA picture of the series in ``folder`` (its DICOM files as written) beside its
    source; a picture that cannot be made is a warning, never a failed conversion."""
    from node.convert.preview import preview_png

    try:
        data = preview_png(sorted(folder.glob("IM*.dcm")), nifti_image)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.partial")
        tmp.write_bytes(data)
        tmp.replace(target)
        return True
    except Exception as exc:  # a QA picture is a help, not a condition of delivery
        warnings.append(f"no preview picture: {type(exc).__name__}: {str(exc)[:120]}")
        return False


def write_file(path: Path, data: Part10, chunk: int = 1 << 20) -> None:
    """Write a new file, a whole or in pieces, 1 MiB at a time: one write call of a whole
    enhanced instance (tens of MB) measured 7x slower here than the same bytes in pieces."""
    with open(path, "wb") as f:
        for piece in [data] if isinstance(data, bytes) else data:
            view = memoryview(piece)
            for start in range(0, len(view), chunk):
                f.write(view[start:start + chunk])


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
