"""One multi-frame instance per series: Legacy Converted Enhanced MR/CT Image (PS3.3 A.51, A.70).

The standard's route for data converted from elsewhere: the classic instances we would write
are handed to highdicom's legacy converter, which builds the shared and per-frame functional
groups (pixel measures, plane position, plane orientation, frame content). Its automatic
dimension is spatial only (or the instance number when positions repeat), so the Dimension
Index is written here: In-Stack Position Number for a 3D volume, and In-Stack Position Number
plus Temporal Position Index for 4D (fMRI, DWI), which is what lets dcm2niix rebuild 4D.

The classic instances that served as input are never stored, so the references highdicom
makes to them are removed (dciodvfy: "does not reference instances").
"""

from __future__ import annotations

import copy
import itertools
import warnings
from collections.abc import Iterable, Iterator

from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pydicom.uid import UID

LEGACY_ENHANCED_MR = UID("1.2.840.10008.5.1.4.1.1.4.4")
LEGACY_ENHANCED_CT = UID("1.2.840.10008.5.1.4.1.1.2.2")
ENHANCED_SOP_CLASSES = {"MR": LEGACY_ENHANCED_MR, "CT": LEGACY_ENHANCED_CT}
ENHANCED_NAMES = {LEGACY_ENHANCED_MR: "Legacy Converted Enhanced MR Image Storage",
                  LEGACY_ENHANCED_CT: "Legacy Converted Enhanced CT Image Storage"}

_FRAME_CONTENT = Tag(0x00209111)
_IN_STACK_POSITION = Tag(0x00209057)
_TEMPORAL_POSITION_INDEX = Tag(0x00209128)
#: References to the classic instances highdicom converted; we never store those.
_DANGLING = ("ReferencedSeriesSequence", "SourceImageSequence", "ReferencedImageSequence")


def enhanced_dataset(modality: str, classic: Iterable[Dataset], n_slices: int,
                     n_volumes: int, series_uid: str, series_number: int,
                     sop_instance_uid: str) -> Dataset:
    """The Legacy Converted Enhanced instance made of a series' classic instances, given in
    instance order (slice k of volume t is frame t * n_slices + k + 1)."""
    from highdicom.legacy import LegacyConvertedEnhancedCTImage, LegacyConvertedEnhancedMRImage

    cls = LegacyConvertedEnhancedMRImage if modality == "MR" else LegacyConvertedEnhancedCTImage
    classic = iter(classic)
    frames = []
    for ds in itertools.islice(classic, n_slices):  # the first volume goes through highdicom
        # value 3 is the image flavor of enhanced objects (PS3.3 C.8.16.1.3: VOLUME for a
        # converted volume) and value 4 the derived pixel contrast (C.8.16.1.4: NONE)
        ds.ImageType = [*list(ds.ImageType)[:2], "VOLUME", "NONE"]
        frames.append(ds)
    laterality = "Laterality" in frames[0]
    with warnings.catch_warnings():  # highdicom's advice on single-component names
        warnings.simplefilter("ignore", UserWarning)
        ds = cls(frames, series_instance_uid=series_uid, series_number=series_number,
                 sop_instance_uid=sop_instance_uid, instance_number=1)
    _in_instance_order(ds, [str(f.SOPInstanceUID) for f in frames])
    del frames
    if n_volumes > 1:
        _more_volumes(ds, classic, n_slices, n_volumes)
    if laterality and "Laterality" not in ds:
        ds.Laterality = ""  # Type 2C: empty is "unknown" (highdicom drops empty values)
    organization = ds.DimensionOrganizationSequence[0].DimensionOrganizationUID
    dimensions = [(_IN_STACK_POSITION, "In-Stack Position Number")]
    if n_volumes > 1:
        dimensions.append((_TEMPORAL_POSITION_INDEX, "Temporal Position Index"))
    index = []
    for pointer, label in dimensions:
        item = Dataset()
        item.DimensionOrganizationUID = organization
        item.DimensionIndexPointer = pointer
        item.FunctionalGroupPointer = _FRAME_CONTENT
        item.DimensionDescriptionLabel = label
        index.append(item)
    ds.DimensionIndexSequence = index
    for i, group in enumerate(ds.PerFrameFunctionalGroupsSequence):
        t, k = divmod(i, n_slices)
        content = group.FrameContentSequence[0]
        content.StackID = "1"
        content.InStackPositionNumber = k + 1
        if n_volumes > 1:
            content.TemporalPositionIndex = t + 1
        content.DimensionIndexValues = [k + 1, t + 1] if n_volumes > 1 else [k + 1]
    _diffusion_groups(ds)
    for keyword in _DANGLING:
        if keyword in ds:
            del ds[keyword]
    return ds


def _in_instance_order(ds: Dataset, uids: list[str]) -> None:
    """Put the frames back in the order of the classic instances they came from (highdicom
    sorts a volume by position, which may reverse it): frame t * n_slices + k is slice k of
    volume t, as the Dimension Index written here says."""
    rank = {uid: n for n, uid in enumerate(uids)}
    groups = list(ds.PerFrameFunctionalGroupsSequence)
    order = [rank[str(g.ConversionSourceAttributesSequence[0].ReferencedSOPInstanceUID)]
             for g in groups]
    if order == sorted(order):
        return
    size = len(ds.PixelData) // len(groups)
    pixels = [ds.PixelData[i * size:(i + 1) * size] for i in range(len(groups))]
    by_rank = sorted(range(len(groups)), key=order.__getitem__)
    ds.PerFrameFunctionalGroupsSequence = [groups[i] for i in by_rank]
    ds.PixelData = b"".join(pixels[i] for i in by_rank)


#: What differs between the classic instances of two volumes at one slice position.
_PER_VOLUME = ("InstanceNumber", "TemporalPositionIdentifier", "DiffusionBValue",
               "DiffusionDirectionality", "DiffusionGradientOrientation")


def _more_volumes(ds: Dataset, classic: Iterator[Dataset], n_slices: int,
                  n_volumes: int) -> None:
    """Volumes 2..n of a 4D series, appended to the enhanced instance highdicom made of the
    first: the instances of one slice position differ only in their indices, their pixels and
    a DWI's weighting, so volume 1's functional groups are copied and those values set. This
    keeps a 64x64x40x200 run from holding 8,000 classic datasets at once (highdicom would)."""
    first = list(ds.PerFrameFunctionalGroupsSequence)
    shared_groups = ds.SharedFunctionalGroupsSequence[0].get(
        "UnassignedSharedConvertedAttributesSequence")
    if shared_groups:  # constant within the first volume, not across volumes: per frame
        shared = shared_groups[0]
        for keyword in _PER_VOLUME:
            if keyword in shared:
                for group in first:
                    setattr(group.UnassignedPerFrameConvertedAttributesSequence[0], keyword,
                            shared[keyword].value)
                del shared[keyword]
    groups = list(first)
    frame_bytes = len(ds.PixelData) // n_slices
    pixels = bytearray(frame_bytes * n_slices * n_volumes)  # filled in place: no second copy
    pixels[:len(ds.PixelData)] = ds.PixelData
    ds.PixelData = b""
    for number, instance in enumerate(classic, n_slices):
        t, k = divmod(number, n_slices)
        group = _frame_copy(first[k])
        group.FrameContentSequence[0].FrameAcquisitionNumber = t + 1
        unassigned = group.UnassignedPerFrameConvertedAttributesSequence[0]
        for keyword in _PER_VOLUME:
            if keyword in instance:
                setattr(unassigned, keyword, instance[keyword].value)
        source = group.get("ConversionSourceAttributesSequence")
        if source:
            source[0].ReferencedSOPInstanceUID = instance.SOPInstanceUID
        groups.append(group)
        pixels[number * frame_bytes:(number + 1) * frame_bytes] = instance.PixelData
    if len(groups) != n_slices * n_volumes:
        raise ValueError(f"{len(groups)} frames where {n_slices * n_volumes} were due")
    ds.PerFrameFunctionalGroupsSequence = groups
    ds.NumberOfFrames = len(groups)
    ds.PixelData = bytes(pixels)


#: Functional groups of a frame that differ between volumes; the others (plane position,
#: ...) are the same objects in every volume's frame at that position: 8,000 frames of a
#: 4D run then cost a few dozen MB, not hundreds.
_COPIED = ("FrameContentSequence", "UnassignedPerFrameConvertedAttributesSequence",
           "ConversionSourceAttributesSequence")


def _frame_copy(group: Dataset) -> Dataset:
    out = Dataset()
    for element in group:
        if element.keyword in _COPIED:
            out[element.tag] = copy.deepcopy(element)
        else:
            out[element.tag] = element
    return out


def _diffusion_groups(ds: Dataset) -> None:
    """A DWI's weighting into the MR Diffusion functional group of each frame (PS3.3
    C.8.13.5.9), where enhanced readers look for it, rather than among the converted
    attributes that have no home (highdicom puts a value shared by every frame of the volume
    it saw among the shared ones)."""
    keywords = ("DiffusionBValue", "DiffusionDirectionality", "DiffusionGradientOrientation")
    shared_groups = ds.SharedFunctionalGroupsSequence[0].get(
        "UnassignedSharedConvertedAttributesSequence")
    shared = shared_groups[0] if shared_groups else Dataset()
    found = False
    for group in ds.PerFrameFunctionalGroupsSequence:
        unassigned = group.get("UnassignedPerFrameConvertedAttributesSequence")
        own = unassigned[0] if unassigned else Dataset()
        values = {k: (own if k in own else shared)[k].value for k in keywords
                  if k in own or k in shared}
        if "DiffusionBValue" not in values:
            continue
        found = True
        item = Dataset()
        item.DiffusionBValue = values["DiffusionBValue"]
        item.DiffusionDirectionality = values.get("DiffusionDirectionality", "NONE")
        if item.DiffusionDirectionality == "DIRECTIONAL" and (
                "DiffusionGradientOrientation" in values):
            direction = Dataset()
            direction.DiffusionGradientOrientation = values["DiffusionGradientOrientation"]
            item.DiffusionGradientDirectionSequence = [direction]
        group.MRDiffusionSequence = [item]
        for keyword in keywords:
            if keyword in own:
                del own[keyword]
    if found:
        for keyword in keywords:
            if keyword in shared:
                del shared[keyword]
