"""Results a radiologist can read in any PACS viewer (issue 26), made from a SEG series:

- ``overlay``: an RGB Secondary Capture series, one instance per slice of the image the SEG
  was made from, each slice's grey values in that image's first window with every segment
  blended in its colour and a legend burnt in the top-left corner; placed exactly like the
  image's slices (ImagePositionPatient, ImageOrientationPatient, PixelSpacing and the Frame of
  Reference copied), ``BurnedInAnnotation`` YES, ImageType DERIVED\\SECONDARY (PS3.3 A.8.1);
- ``measurements``: a Comprehensive 3D SR with TID 1500 (Measurement Report): per segment its
  volume in mm3 and ml (voxel count x voxel volume), referencing the SEG segment and the
  image series (highdicom's ``sr`` module);
- ``report``: an Encapsulated PDF (PS3.3 A.45.1): the three-plane QA picture of the image,
  the source file's name and SHA-256, the measurements and the converter version.

Each is a series of its own in the study of the SEG, with UIDs made from the SEG's series
UID, so a second conversion makes the same objects.
"""

from __future__ import annotations

import datetime as dt
import io
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from node import __version__
from node.convert.uids import make_uid
from node.errors import InputError

if TYPE_CHECKING:
    from node.convert.series import ConvertedSeries

RESULTS = ("overlay", "measurements", "report")
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"
#: How much of a segment's colour a pixel under it takes (the rest is the image's grey).
ALPHA = 0.5
#: Distinct colours for segments 1, 2, ... (sRGB), when the SEG recommends none.
PALETTE = ((255, 64, 64), (64, 200, 64), (64, 128, 255), (255, 200, 0), (200, 64, 255),
           (0, 220, 220), (255, 128, 0), (255, 0, 160), (160, 255, 64), (128, 128, 255))
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
#: Attributes the result objects take from the image they show (patient, study, equipment).
_COPIED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "PatientAge",
           "StudyInstanceUID", "StudyDate", "StudyTime", "StudyID", "AccessionNumber",
           "ReferringPhysicianName", "StudyDescription", "IssuerOfPatientID",
           "PatientIdentityRemoved", "DeidentificationMethod")


@dataclass(frozen=True)
class Segment:
    number: int
    label: str
    colour: tuple[int, int, int]
    voxels: int
    outside: int  # labelled voxels outside the image's field of view

    def volume_mm3(self, voxel_mm3: float) -> float:
        return self.voxels * voxel_mm3


@dataclass(frozen=True)
class MapStatistics:
    """A parametric map's values within each segment: (mean, sd, min, max, voxels)."""

    name: str  # the map's file name
    quantity: str  # its BIDS suffix (T1map, ADC, ...)
    units: str
    per_segment: dict[int, tuple[float, float, float, float, int]]


@dataclass(frozen=True)
class Results:
    """What was made, with the lines the QA report and ``convert --explain`` show."""

    datasets: list[Dataset]
    segments: list[Segment]
    voxel_mm3: float
    notes: list[str]
    maps: list[MapStatistics] = ()  # type: ignore[assignment]


def _labels(series: ConvertedSeries) -> tuple[np.ndarray, np.ndarray]:
    """The SEG's segment numbers per voxel (0 = none) and the label map's affine (LPS)."""
    from node.convert.geometry import choose_affine

    data = np.asarray(series.source.image.dataobj).reshape(series.source.shape[:3], order="F")
    values = [int(v) for v in np.unique(data) if v != 0]
    numbered = np.zeros(data.shape, dtype=np.uint16)
    for number, value in enumerate(values, 1):
        numbered[data == value] = number
    affine, _ = choose_affine(series.source.image.header)
    return numbered, _RAS_TO_LPS @ affine


def _slice_points(ds: Dataset) -> np.ndarray:
    """The LPS position of every pixel of a single-frame image (rows, columns, 3)."""
    position = np.array([float(v) for v in ds.ImagePositionPatient])
    row_dir = np.array([float(v) for v in ds.ImageOrientationPatient[:3]])
    col_dir = np.array([float(v) for v in ds.ImageOrientationPatient[3:]])
    dr, dc = (float(v) for v in ds.PixelSpacing)  # row spacing, column spacing
    r = np.arange(int(ds.Rows))[:, None, None]
    c = np.arange(int(ds.Columns))[None, :, None]
    return position + c * dc * row_dir + r * dr * col_dir


def _sample(labels: np.ndarray, affine: np.ndarray, points: np.ndarray, fill=0) -> np.ndarray:
    """Nearest value at each point; ``fill`` outside the volume."""
    inverse = np.linalg.inv(affine)
    ijk = np.rint(points @ inverse[:3, :3].T + inverse[:3, 3]).astype(np.int64)
    inside = np.all((ijk >= 0) & (ijk < np.array(labels.shape)), axis=-1)
    out = np.full(points.shape[:-1], fill, dtype=labels.dtype if fill == 0 else np.float64)
    idx = ijk[inside]
    out[inside] = labels[idx[:, 0], idx[:, 1], idx[:, 2]]
    return out


def _window(ds: Dataset, pixels: np.ndarray) -> tuple[float, float]:
    """The image's first window (as a viewer first shows it), in stored values' units."""
    slope = float(ds.get("RescaleSlope", 1) or 1)
    inter = float(ds.get("RescaleIntercept", 0) or 0)
    if "WindowCenter" in ds:
        return float(_first(ds.WindowCenter)), float(_first(ds.WindowWidth))
    lo, hi = np.percentile(pixels * slope + inter, [1, 99])
    return (lo + hi) / 2, max(hi - lo, 1.0)


def _first(value):
    """The first of a multi-valued attribute (a window may come with others)."""
    return value[0] if hasattr(value, "__len__") and not isinstance(value, str) else value


def grey_of(ds: Dataset) -> np.ndarray:
    """A single-frame image as 8-bit grey in its first window (PS3.3 C.11.2.1.2, linear)."""
    pixels = ds.pixel_array.astype(np.float64)
    slope = float(ds.get("RescaleSlope", 1) or 1)
    inter = float(ds.get("RescaleIntercept", 0) or 0)
    center, width = _window(ds, pixels)
    value = pixels * slope + inter
    grey = (value - (center - 0.5)) / max(width - 1, 1) + 0.5
    return np.rint(np.clip(grey, 0, 1) * 255).astype(np.uint8)


def blend(grey: np.ndarray, segments: np.ndarray, colours: dict[int, tuple[int, int, int]]
          ) -> np.ndarray:
    """RGB: grey where no segment is, else (1 - ALPHA) grey + ALPHA colour, rounded."""
    rgb = np.repeat(grey[..., None], 3, axis=-1).astype(np.float64)
    for number, colour in colours.items():
        mask = segments == number
        rgb[mask] = (1 - ALPHA) * rgb[mask] + ALPHA * np.array(colour, dtype=np.float64)
    return np.rint(rgb).astype(np.uint8)


def _legend(rgb: np.ndarray, segments: list[Segment]) -> np.ndarray:
    """The segments' colours and names in the top-left corner (burnt in)."""
    from PIL import Image, ImageDraw, ImageFont

    image = Image.fromarray(rgb, mode="RGB")
    draw = ImageDraw.Draw(image)
    try:
        font = ImageFont.load_default(size=10)
    except TypeError:
        font = ImageFont.load_default()
    for i, s in enumerate(segments):
        y = 2 + 12 * i
        draw.rectangle((2, y, 10, y + 8), fill=s.colour)
        draw.text((13, y - 2), s.label[:24], fill=(255, 255, 255), font=font)
    return np.asarray(image)


def legend_box(segments: list[Segment]) -> tuple[int, int]:
    """(rows, columns) of the corner the legend may cover."""
    return 4 + 12 * len(segments), 13 + 6 * max((len(s.label[:24]) for s in segments), default=0)


def _base(image: Dataset, sop_class: str, series_uid: str, number: int, uid: str,
          description: str, modality: str) -> Dataset:
    ds = Dataset()
    for keyword in _COPIED:
        if keyword in image:
            setattr(ds, keyword, getattr(image, keyword))
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex",
                    "StudyDate", "StudyTime", "StudyID", "AccessionNumber",
                    "ReferringPhysicianName"):
        if keyword not in ds:
            setattr(ds, keyword, "")
    now = dt.datetime.now()
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, uid
    ds.Modality, ds.SeriesInstanceUID = modality, series_uid
    ds.SeriesNumber, ds.InstanceNumber = number, 1
    ds.SeriesDescription = description[:64]
    ds.ContentDate, ds.ContentTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.Manufacturer = "dicom-node"
    ds.SoftwareVersions = __version__
    ds.SpecificCharacterSet = image.get("SpecificCharacterSet", "ISO_IR 192")
    return ds


def _meta(ds: Dataset) -> Dataset:
    from pydicom.dataset import FileMetaDataset

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = (ds.SOPClassUID,
                                                                      ds.SOPInstanceUID)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    return ds


def overlay(series: ConvertedSeries, images: list[Dataset], segments: list[Segment],
            labels: np.ndarray, affine: np.ndarray) -> list[Dataset]:
    """One RGB Secondary Capture instance per image slice, placed as that slice."""
    root, seg_series = series.uids.root, series.uids.series
    out_series = make_uid(root, "overlay-series", seg_series)
    colours = {s.number: s.colour for s in segments}
    out = []
    for n, image in enumerate(images, 1):
        rgb = blend(grey_of(image), _sample(labels, affine, _slice_points(image)), colours)
        rgb = _legend(rgb, segments)
        ds = _base(image, SECONDARY_CAPTURE, out_series, _series_number(series, 1),
                   make_uid(root, f"overlay-{n}", seg_series), "Overlay: "
                   + str(image.get("SeriesDescription", "segmentation")), "OT")
        ds.InstanceNumber = n
        ds.ConversionType = "WSD"  # workstation: made by software
        ds.ImageType = ["DERIVED", "SECONDARY"]
        ds.BurnedInAnnotation = "YES"
        ds.PatientOrientation = image.get("PatientOrientation", "")
        ds.Laterality = image.get("Laterality", "")  # Type 2C in General Series
        if "BodyPartExamined" in image:
            ds.BodyPartExamined = image.BodyPartExamined
        for keyword in ("FrameOfReferenceUID", "ImagePositionPatient", "ImageOrientationPatient",
                        "PixelSpacing", "SliceThickness", "PositionReferenceIndicator"):
            if keyword in image:
                setattr(ds, keyword, getattr(image, keyword))
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
        ds.Rows, ds.Columns = rgb.shape[:2]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.PixelData = rgb.tobytes()
        ref = Dataset()
        ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = (image.SOPClassUID,
                                                                   image.SOPInstanceUID)
        ds.SourceImageSequence = [ref]
        ds.DerivationDescription = ("the image in its first window with each segment of "
                                    f"SEG {series.object_uid} blended ({ALPHA:g}) in its "
                                    "colour, and a legend")[:1024]
        out.append(_meta(ds))
    return out


def _series_number(series: ConvertedSeries, offset: int) -> int:
    from node.convert.mapping import value_of

    base = int(value_of(series.attributes, "SeriesNumber", 1) or 1)
    return base * 10 + offset


def _map_measurements(maps: list[MapStatistics], number: int) -> list:
    """A map's mean, SD, min and max in one segment (TID 1419's derivation modifiers)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from node.convert.iods.pmap import unit_code

    out = []
    for m in maps:
        if number not in m.per_segment:
            continue
        name = hd.sr.CodedConcept(m.quantity[:16], "99DCMNODE", f"{m.quantity} ({m.name})"[:64])
        values = m.per_segment[number][:4]
        for derivation, value in zip((codes.SCT.Mean, codes.SCT.StandardDeviation,
                                      codes.SCT.Minimum, codes.SCT.Maximum), values,
                                     strict=True):
            out.append(hd.sr.Measurement(name=name, value=value, unit=unit_code(m.units),
                                         derivation=derivation))
    return out


def measurements(series: ConvertedSeries, seg: Dataset, images: list[Dataset],
                 segments: list[Segment], voxel_mm3: float,
                 maps: list[MapStatistics] = ()) -> Dataset:  # type: ignore[assignment]
    """TID 1500 with one volumetric ROI group per segment: its volume in mm3 and in ml, and
    each map's mean, SD, min and max within it."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    ml = hd.sr.CodedConcept("ml", "UCUM", "milliliter")
    groups = []
    for s in segments:
        groups.append(hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=make_uid(series.uids.root, f"tracking-{s.number}", series.uids.series),
                identifier=f"segment {s.number}: {s.label}"[:64]),
            referenced_segment=hd.sr.ReferencedSegment(
                sop_class_uid=seg.SOPClassUID, sop_instance_uid=seg.SOPInstanceUID,
                segment_number=s.number,
                source_series=hd.sr.SourceSeriesForSegmentation(images[0].SeriesInstanceUID)),
            measurements=[
                hd.sr.Measurement(name=codes.SCT.Volume, value=s.volume_mm3(voxel_mm3),
                                  unit=codes.UCUM.CubicMillimeter),
                hd.sr.Measurement(name=codes.SCT.Volume, value=s.volume_mm3(voxel_mm3) / 1000,
                                  unit=ml),
                *_map_measurements(list(maps), s.number),
            ]))
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=make_uid(series.uids.root, "device", "dicom-node"), name="dicom-node"))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=codes.LN.CTUnspecifiedBodyRegion
        if series.modality == "CT" else hd.sr.CodedConcept("363679005", "SCT",
                                                            "Imaging procedure"),
        imaging_measurements=groups)
    sr = hd.sr.Comprehensive3DSR(
        evidence=[seg, *images], content=report,
        series_instance_uid=make_uid(series.uids.root, "sr-series", series.uids.series),
        series_number=_series_number(series, 2),
        sop_instance_uid=make_uid(series.uids.root, "sr", series.uids.series),
        instance_number=1, manufacturer="dicom-node", is_complete=True)
    sr.SeriesDescription = "Measurements of the segmentation"
    sr.SoftwareVersions = __version__
    return sr


def report_pdf(series: ConvertedSeries, images: list[Dataset], segments: list[Segment],
               voxel_mm3: float, notes: list[str], picture: bytes | None,
               maps: list[MapStatistics] = ()) -> bytes:  # type: ignore[assignment]
    """One A4 page (150 dpi) as a PDF: what was converted, from what, and what it measures."""
    from PIL import Image, ImageDraw, ImageFont

    page = Image.new("RGB", (1240, 1754), "white")
    draw = ImageDraw.Draw(page)

    def font(size: int):
        try:
            return ImageFont.load_default(size=size)
        except TypeError:
            return ImageFont.load_default()

    y = 60
    draw.text((60, y), "dicom-node QA report: segmentation", fill="black", font=font(34))
    y += 60
    source = series.source
    lines = [f"Source file: {source.path.name}", f"SHA-256: {source.sha256}",
             f"Image: {images[0].get('SeriesDescription', '')} ({len(images)} slices)",
             f"Converter: dicom-node {__version__}",
             f"Voxel volume: {voxel_mm3:.4g} mm3"]
    for line in lines:
        draw.text((60, y), line, fill="black", font=font(20))
        y += 32
    if picture is not None:
        shot = Image.open(io.BytesIO(picture)).convert("RGB")
        scale = min(1120 / shot.width, 700 / shot.height)
        shot = shot.resize((int(shot.width * scale), int(shot.height * scale)))
        page.paste(shot, (60, y + 10))
        y += shot.height + 40
    columns = (90, 200, 560, 720, 900)  # segment, label, voxels, mm3, ml
    for x, title in zip(columns, ("Segment", "Label", "Voxels", "Volume mm3", "Volume ml"),
                        strict=True):
        draw.text((x, y), title, fill="black", font=font(20))
    y += 34
    for s in segments:
        draw.rectangle((60, y + 4, 76, y + 20), fill=s.colour)
        cells = (str(s.number), s.label[:30], str(s.voxels), f"{s.volume_mm3(voxel_mm3):.1f}",
                 f"{s.volume_mm3(voxel_mm3) / 1000:.3f}")
        for x, cell in zip(columns, cells, strict=True):
            draw.text((x, y), cell, fill="black", font=font(20))
        y += 30
    for m in maps:
        y += 10
        draw.text((60, y), f"{m.quantity} ({m.name}, {m.units}): mean, SD, min, max",
                  fill="black", font=font(20))
        y += 30
        for s in segments:
            if s.number in m.per_segment:
                mean, sd, lo, hi, n = m.per_segment[s.number]
                draw.text((90, y), f"{s.number} {s.label[:30]}: {mean:.4g}, {sd:.4g}, {lo:.4g}, "
                          f"{hi:.4g} ({n} voxels)", fill="black", font=font(18))
                y += 26
    for note in notes:
        draw.text((60, y + 10), f"Note: {note}"[:110], fill=(160, 0, 0), font=font(18))
        y += 28
    out = io.BytesIO()
    page.save(out, format="PDF", resolution=150.0)
    return out.getvalue()


def encapsulated_pdf(series: ConvertedSeries, image: Dataset, pdf: bytes) -> Dataset:
    """PS3.3 A.45.1 Encapsulated PDF IOD."""
    ds = _base(image, ENCAPSULATED_PDF,
               make_uid(series.uids.root, "pdf-series", series.uids.series),
               _series_number(series, 3), make_uid(series.uids.root, "pdf", series.uids.series),
               "QA report of the segmentation", "DOC")
    ds.ConversionType = "WSD"
    ds.BurnedInAnnotation = "YES"
    ds.DocumentTitle = "dicom-node QA report"
    ds.ConceptNameCodeSequence = []
    ds.AcquisitionDateTime = ds.ContentDate + ds.ContentTime
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocument = pdf + (b"\0" if len(pdf) % 2 else b"")
    ds.EncapsulatedDocumentLength = len(pdf)
    return _meta(ds)


def make_results(series: ConvertedSeries, which: tuple[str, ...]) -> Results:
    """The results of a SEG series: ``which`` of overlay, measurements, report."""
    import warnings

    with warnings.catch_warnings():  # highdicom's advice on single-component names
        warnings.simplefilter("ignore", UserWarning)
        return _make(series, which)


def _make(series: ConvertedSeries, which: tuple[str, ...]) -> Results:
    referenced = getattr(series.build, "referenced", None)
    if series.iod != "seg" or referenced is None:
        raise InputError(series.source.path, "results (overlay, measurements, report) are made "
                         "from a SEG of a label map and the image it was made from")
    seg = series.object()
    images = list(referenced.classic_datasets())[:referenced.layout.n_slices]  # 1st volume
    labels, affine = _labels(series)
    voxel_mm3 = float(abs(np.linalg.det(affine[:3, :3])))
    names = {int(d.SegmentNumber): str(d.SegmentLabel) for d in seg.SegmentSequence}
    inside = np.zeros(labels.shape, dtype=bool)
    image_affine = _image_affine(images)
    ijk = np.indices(labels.shape).reshape(3, -1).T
    world = ijk @ affine[:3, :3].T + affine[:3, 3]
    vox = np.rint(world @ np.linalg.inv(image_affine)[:3, :3].T
                  + np.linalg.inv(image_affine)[:3, 3])
    shape = (int(images[0].Columns), int(images[0].Rows), len(images))
    inside = np.all((vox >= -0.5) & (vox <= np.array(shape) - 0.5), axis=1).reshape(labels.shape)
    segments, notes = [], []
    for number in sorted(names):
        mask = labels == number
        outside = int(np.count_nonzero(mask & ~inside))
        segments.append(Segment(number, names[number], PALETTE[(number - 1) % len(PALETTE)],
                                int(np.count_nonzero(mask)), outside))
        if outside:
            notes.append(f"segment {number} ({names[number]}): {outside} of its voxels lie "
                         "outside the image's field of view (measured, not shown)")
        if np.count_nonzero(mask) == 1:
            notes.append(f"segment {number} ({names[number]}) is a single voxel")
    maps = map_statistics(series, referenced, labels, affine, segments, notes)
    made: list[Dataset] = []
    if "overlay" in which:
        made += overlay(series, images, segments, labels, affine)
    if "measurements" in which:
        made.append(measurements(series, seg, images, segments, voxel_mm3, maps))
    if "report" in which:
        made.append(encapsulated_pdf(series, images[0], report_pdf(
            series, images, segments, voxel_mm3, notes, _picture(referenced), maps)))
    return Results(made, segments, voxel_mm3, notes, maps)


def _maps_beside(series: ConvertedSeries, referenced: ConvertedSeries) -> list:
    """Quantitative maps of the same scan (sub, ses, acq, run) beside the SEG or its image."""
    from node.convert.derived import _SAME_SCAN
    from node.convert.source import MAP_SUFFIXES, NIFTI_SUFFIXES, bids_entities

    same = {k: v for k, v in series.source.entities.items() if k in _SAME_SCAN}
    found = {}
    for folder in {series.source.path.parent, referenced.source.path.parent}:
        for path in sorted(folder.iterdir()):
            if not path.name.lower().endswith(NIFTI_SUFFIXES):
                continue
            theirs = bids_entities(path)
            if theirs.get("suffix") in MAP_SUFFIXES and same and {
                    k: v for k, v in theirs.items() if k in _SAME_SCAN} == same:
                found[path.name] = path
    return list(found.values())


def map_statistics(series: ConvertedSeries, referenced: ConvertedSeries, labels: np.ndarray,
                   affine: np.ndarray, segments: list[Segment], notes: list[str]
                   ) -> list[MapStatistics]:
    """Mean, SD, min and max of each map within each segment (the map sampled at each
    labelled voxel's centre, nearest voxel; NaN and voxels outside the map left out). A map
    without units (its sidecar's "Units" or the profile's ``units``) is not reported: its
    numbers could be read in the wrong unit; the notes say so."""
    import nibabel as nib

    from node.convert.geometry import choose_affine
    from node.convert.source import bids_entities, load_sidecar, sidecar_of

    out = []
    for path in _maps_beside(series, referenced):
        sidecar = sidecar_of(path)
        meta = load_sidecar(sidecar) if sidecar is not None and sidecar.is_file() else {}
        units = meta.get("Units") if isinstance(meta, dict) else None
        units = units if isinstance(units, str) and units.strip() else series.profile.units
        if not units:
            notes.append(f"map {path.name} has no units (a sidecar \"Units\" or the profile's "
                         "units): its statistics are not reported")
            continue
        image = nib.load(str(path))
        values = np.asarray(image.dataobj, dtype=np.float64)
        if values.ndim != 3:
            notes.append(f"map {path.name} is not a 3D volume: not measured")
            continue
        map_affine = _RAS_TO_LPS @ choose_affine(image.header)[0]
        stats = {}
        for s in segments:
            ijk = np.argwhere(labels == s.number)
            world = ijk @ affine[:3, :3].T + affine[:3, 3]
            sampled = _sample(values, map_affine, world, fill=np.nan)
            sampled = sampled[np.isfinite(sampled)]
            if sampled.size:
                stats[s.number] = (float(sampled.mean()), float(sampled.std(ddof=0)),
                                   float(sampled.min()), float(sampled.max()), int(sampled.size))
            else:
                notes.append(f"map {path.name}: segment {s.number} lies outside it")
        out.append(MapStatistics(path.name, bids_entities(path).get("suffix", "map"),
                                 units.strip(), stats))
    return out


def _image_affine(images: list[Dataset]) -> np.ndarray:
    """The image series' voxel (column, row, slice) -> LPS mm affine."""
    first, last = images[0], images[-1]
    row_dir = np.array([float(v) for v in first.ImageOrientationPatient[:3]])
    col_dir = np.array([float(v) for v in first.ImageOrientationPatient[3:]])
    dr, dc = (float(v) for v in first.PixelSpacing)
    p0 = np.array([float(v) for v in first.ImagePositionPatient])
    p1 = np.array([float(v) for v in last.ImagePositionPatient])
    step = (p1 - p0) / max(len(images) - 1, 1) if len(images) > 1 else np.cross(
        row_dir, col_dir) * float(first.get("SliceThickness", 1) or 1)
    out = np.eye(4)
    out[:3, 0], out[:3, 1], out[:3, 2], out[:3, 3] = row_dir * dc, col_dir * dr, step, p0
    return out


def _picture(referenced: ConvertedSeries) -> bytes | None:
    """The three-plane QA picture of the image (DICOM as made above its NIfTI)."""
    from node.convert.preview import montage, placed_from_dicom, placed_from_nifti

    try:
        datasets = list(referenced.classic_datasets())
        delivered = placed_from_dicom(datasets)
        return montage(delivered, placed_from_nifti(referenced.source.image),
                       _window(datasets[0], datasets[0].pixel_array))
    except Exception:  # the picture is a courtesy: the report goes without it
        return None
