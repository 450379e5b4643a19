"""Convert one NIfTI file into one DICOM series: the pure core of the product.

``convert_file`` takes a path, a profile and overrides and returns a :class:`ConvertedSeries`
whose datasets are produced lazily; it knows neither the network nor the journal.
``write_series`` puts a series on disk atomically (temporary folder, then rename), so a failed
conversion never leaves a half-written series that looks complete.
"""

from __future__ import annotations

import copy
import logging
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
from node.convert.derived import builder, find_source_image
from node.convert.diffusion import VolumeWeighting
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
    InstanceSlice,
    SeriesLayout,
    file_meta,
    frame_array,
    full_dataset,
    instance_slices,
    series_template,
)
from node.convert.iods.seg import SEG_NAMES
from node.convert.mapping import (
    Attributes,
    MappedValue,
)
from node.convert.options import ConversionOptions, StudyHook, options_from
from node.convert.part10 import SeriesEncoder, multiframe_bytes
from node.convert.pixels import PixelEncoding, PixelError, encode_pixels, encode_rgb
from node.convert.plan import SeriesPlan, choose_iod, is_colour, plan_series, standalone_study
from node.convert.profile import Profile, builtin_profile
from node.convert.source import NiftiSource, read_failure
from node.convert.study import apply as apply_study
from node.convert.uids import SeriesUids, make_uid
from node.errors import InputError

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


def convert_file(path: str | Path, profile: Profile | None = None,
                 options: ConversionOptions | None = None, **keywords) -> ConvertedSeries:
    """Read, validate and encode ``path``; raise InputError/MappingError for bad input.

    ``profile`` defaults to the built-in default profile. ``options`` (or the same as
    keywords, see ConversionOptions): the UID root under which every UID is made, the
    clinical exam the series joins and the study hook that reconciles it with the other
    series of its study; the object (``iod``, default the profile's: classic ``image``
    instances, one ``enhanced`` multi-frame instance, a ``seg`` of a label map or a ``pmap``
    of a float map, both referring to ``source_image``, given or found beside the file by its
    BIDS entities), its lossless ``compression``, and ``labelmap`` for a LABELMAP SEG.
    """
    opts = options_from(options, keywords)
    profile = profile or builtin_profile()
    iod = choose_iod(Path(path), opts.iod or profile.iod)
    plan = plan_series(path, profile, opts.replace(iod=iod))
    source, modality, uids = plan.source, plan.modality, plan.uids
    affine, warnings = choose_affine(source.image.header)
    warnings = list(plan.warnings) + warnings
    try:
        geometry = volume_geometry(affine, source.shape[2])
    except ValueError as exc:
        raise InputError(source.path, str(exc)) from None
    warnings += geometry.warnings
    colour = is_colour(source, profile)
    stored, encoding = _pixels(source, profile, colour, iod)
    warnings += encoding.warnings
    if not encoding.lossless and iod not in ("seg", "pmap"):
        warnings.append(
            f"values rescaled into int16: RescaleSlope {encoding.slope_ds}, "
            f"max error {encoding.max_abs_error:.3g}"
        )
    # last, once the input is known to be good: a journal remembers what the study was given
    attrs = _join_study(plan, opts.study or standalone_study, warnings)
    provenance = (
        f"Converted from NIfTI by {CONVERTER_NAME} {__version__}; source SHA-256 {source.sha256}"
    )
    if not profile.deidentify:
        provenance += f"; source file {source.path.name}"
    layout = SeriesLayout(n_slices=source.shape[2],
                          n_volumes=stored.shape[3] if colour else source.shape[3])
    template = series_template(attrs, modality, profile.derived, uids, geometry, encoding,
                               (*source.shape[:3], layout.n_volumes), provenance)
    build = _object_builder(plan, profile, opts.replace(iod=iod), colour, template, provenance)
    return ConvertedSeries(
        source=source, profile=profile, modality=modality, attributes=attrs, uids=uids,
        geometry=geometry, encoding=encoding, layout=layout, template=template, stored=stored,
        warnings=warnings, weighting=plan.weighting, iod=iod, compression=opts.compression,
        build=build, labelmap=opts.labelmap,
    )


def _pixels(source: NiftiSource, profile: Profile, colour: bool, iod: str
            ) -> tuple[np.ndarray, PixelEncoding]:
    """The voxels as stored in the DICOM and how they were encoded (node.convert.pixels)."""
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
    return stored, encoding


def _join_study(plan: SeriesPlan, study: StudyHook, warnings: list[str]) -> Attributes:
    """The series' attributes once its study has been reconciled: the values the study makes
    it carry, and a SeriesNumber distinct within the study when no source names one."""
    carried, number = study(plan.study, plan.uids.series, plan.series_number)
    attrs = apply_study(plan.attributes, carried)
    if number is not None and plan.series_number is None:
        attrs["SeriesNumber"] = MappedValue(number, "derived from the Series Instance UID "
                                            "(distinct within the study)", True)
    if ORIENTATION_UNKNOWN in warnings:  # the file says it; the DICOM says it too
        attrs["ImageComments"] = MappedValue(
            "Orientation unknown: the NIfTI had neither sform nor qform; position and "
            "orientation are made up from the voxel sizes", "derived from the NIfTI header")
    return attrs


def _object_builder(plan: SeriesPlan, profile: Profile, opts: ConversionOptions, colour: bool,
                    template: Dataset, provenance: str
                    ) -> Callable[[ConvertedSeries], Dataset] | None:
    """How the one multi-frame instance of a seg, pmap or colour enhanced series is made (on
    first use); None for classic images and grey enhanced ones (built from the series)."""
    source, iod = plan.source, opts.iod
    if iod in ("seg", "pmap"):
        if source.shape[3] > 1:
            raise InputError(source.path, f"a {iod} is made of a 3D volume; this file is 4D")
        for tries_left in (1, 0):  # the image may be moved (delivered) while it is found
            image = find_source_image(source.path, source.entities, opts.source_image,
                                      opts.source_folders)
            if image.resolve() == source.path.resolve():
                raise InputError(source.path, "a SEG or map cannot refer to itself: name the "
                                 "image it was made from with --source")
            try:
                referenced = convert_file(image, profile, ConversionOptions(
                    uid_root=opts.uid_root, modality=plan.modality, reference=opts.reference,
                    study=opts.study, iod="image"))
                break
            except InputError:
                if image.exists() or not tries_left:
                    raise
        return builder(iod, referenced, provenance, opts.labelmap)
    if iod == "enhanced" and colour:
        return _true_colour
    if iod == "enhanced" and plan.modality not in ENHANCED_SOP_CLASSES:
        raise InputError(source.path, "enhanced objects are MR or CT (Legacy Converted "
                         f"Enhanced); modality {plan.modality} stays a classic image")
    if iod == "enhanced" and (why := unknown_side(template)):
        raise InputError(source.path, why)
    return None
