"""An integer label map becomes a DICOM Segmentation (PS3.3 A.51), built with highdicom.

Each label value present becomes one segment, numbered 1..n in value order, named from a
lookup table (a BIDS ``*_dseg.tsv`` beside the file, columns ``index`` and ``name``; else the
profile's ``labels``; else "label N"). BINARY segmentation with every frame kept
(``omit_empty_frames=False``): viewers that expect one frame per slice break otherwise. The
SEG refers to the image series it was drawn on and takes its study and Frame of Reference.

For a destination that takes it (its ``labelmap = true``), a LABELMAP segmentation instead:
Label Map Segmentation Storage (PS3.3 A.51, Supplement 243, 2024), one frame per slice whose
pixels are the segment numbers themselves: a fraction of a BINARY SEG's size for an atlas of
many labels. It is a different SOP class, which many archives do not know yet: hence BINARY
unless the destination says so.
"""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from node.convert.geometry import VolumeGeometry
from node.convert.iods.frames import EQUIPMENT, frames, spatial
from node.errors import InputError

LABELMAP_SEGMENTATION = "1.2.840.10008.5.1.4.1.1.66.7"
#: SOP class names pydicom does not know yet.
SEG_NAMES = {LABELMAP_SEGMENTATION: "Label Map Segmentation Storage"}
#: BIDS suffixes of label maps, which iod = "auto" makes into a SEG.
SEG_SUFFIXES = ("dseg", "mask", "probseg")
#: More segments than this is not a label map (a float or intensity image given as one).
MAX_SEGMENTS = 1000
MAX_TSV_BYTES = 1024**2


def label_names(nifti: Path, stem: str, profile_labels: dict[int, str]) -> dict[int, str]:
    """Segment names by label value: ``stem.tsv`` (BIDS dseg), else the profile's."""
    tsv = nifti.with_name(stem + ".tsv")
    if not tsv.is_file():
        return dict(profile_labels)
    if tsv.stat().st_size > MAX_TSV_BYTES:
        raise InputError(tsv, "too large for a label table")
    names: dict[int, str] = {}
    try:
        with open(tsv, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f, delimiter="\t"):
                index, name = (row.get("index") or "").strip(), (row.get("name") or "").strip()
                if index.isdigit() and name:
                    names[int(index)] = name
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(tsv, f"not a readable label table ({exc})") from None
    if not names:
        raise InputError(tsv, "no rows with an integer 'index' and a 'name' (BIDS dseg.tsv)")
    return names


def segmentation(labels: np.ndarray, geometry: VolumeGeometry, source_images: list[Dataset],
                 names: dict[int, str], series_uid: str, series_number: int,
                 sop_instance_uid: str, where: Path, labelmap: bool = False) -> Dataset:
    """The SEG of a 3D label map (x, y, z) of non-negative integers: BINARY, or LABELMAP."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    if labels.dtype.kind == "f":
        if not np.array_equal(labels, np.rint(labels)):
            raise InputError(where, "a segmentation needs integer labels; this map has "
                             "fractional values (use iod = \"pmap\" for a float map)")
        labels = labels.astype(np.int64)
    if labels.min() < 0:
        raise InputError(where, "a segmentation needs labels >= 0 (0 is background)")
    values = [int(v) for v in np.unique(labels) if v != 0]
    if not values:
        raise InputError(where, "the label map is empty (every voxel is 0)")
    if len(values) > MAX_SEGMENTS:
        raise InputError(where, f"{len(values)} distinct labels: not a label map")
    numbered = np.zeros(labels.shape, dtype=np.uint16)
    for number, value in enumerate(values, 1):
        numbered[labels == value] = number
    algorithm = hd.AlgorithmIdentificationSequence(
        name="label map converted from NIfTI", family=codes.cid7162.ArtificialIntelligence,
        version="unknown")
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number, segment_label=names.get(value, f"label {value}")[:64],
            segmented_property_category=codes.SCT.Tissue,
            segmented_property_type=codes.SCT.Tissue,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm)
        for number, value in enumerate(values, 1)
    ]
    with warnings.catch_warnings():  # highdicom's advice on single-component names
        warnings.simplefilter("ignore", UserWarning)
        ds = hd.seg.Segmentation(
            source_images=source_images, pixel_array=frames(numbered),
            segmentation_type=hd.seg.SegmentationTypeValues.LABELMAP if labelmap else (
                hd.seg.SegmentationTypeValues.BINARY),
            segment_descriptions=descriptions, series_instance_uid=series_uid,
            series_number=series_number, sop_instance_uid=sop_instance_uid, instance_number=1,
            omit_empty_frames=False, **EQUIPMENT, **spatial(geometry))
    return ds  # no Laterality: the Segmentation Series module does not take it
