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

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pydicom.uid import UID

from node.convert.iods.image import InstanceSlice, full_dataset

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


def enhanced_dataset(modality: str, template: Dataset, slices: Iterable[InstanceSlice],
                     n_slices: int, n_volumes: int, series_uid: str, series_number: int,
                     sop_instance_uid: str) -> Dataset:
    """The Legacy Converted Enhanced instance of a series, from its template and its slices in
    instance order (slice k of volume t is frame t * n_slices + k + 1).

    highdicom converts the first two classic instances: two frames are enough for it to tell
    what every frame shares from what each frame has of its own (position, instance number,
    slice location). The other frames are made here from that prototype and each slice's own
    values, without building their classic datasets: as fast as classic output, and a 4D run
    of 8,000 frames is never 8,000 datasets in memory.
    """
    from highdicom.legacy import LegacyConvertedEnhancedCTImage, LegacyConvertedEnhancedMRImage

    cls = LegacyConvertedEnhancedMRImage if modality == "MR" else LegacyConvertedEnhancedCTImage
    slices = iter(slices)
    head = list(itertools.islice(slices, 2))
    frames = []
    for instance in head:
        ds = full_dataset(template, instance)
        # value 3 is the image flavor of enhanced objects (PS3.3 C.8.16.1.3: VOLUME for a
        # converted volume) and value 4 the derived pixel contrast (C.8.16.1.4: NONE)
        ds.ImageType = [*list(ds.ImageType)[:2], "VOLUME", "NONE"]
        frames.append(ds)
    laterality = "Laterality" in frames[0]
    with warnings.catch_warnings():  # highdicom's advice on single-component names
        warnings.simplefilter("ignore", UserWarning)
        ds = cls(frames, series_instance_uid=series_uid, series_number=series_number,
                 sop_instance_uid=sop_instance_uid, instance_number=1)
    del frames
    _in_instance_order(ds, [s.sop_instance_uid for s in head])
    _orientation_per_frame(ds)
    _more_frames(ds, len(head), slices, n_slices * n_volumes)
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


def _orientation_per_frame(ds: Dataset) -> None:
    """Plane Orientation in every frame's functional groups rather than the shared ones.

    Both places are valid (PS3.3 C.7.6.16: a macro is shared or per frame), and per frame is
    what Philips scanners write, so every enhanced reader takes it. It matters to dcm2niix
    (1.0.20220720, Debian's): when it has the orientation before the first frame's position it
    re-sorts the frames of a file by position alone (a vendor's Dimension Index is read only
    from Philips, Canon and Bruker files), which scrambles the volumes of a 4D run; with the
    orientation per frame it keeps the stored order, slice fastest, as our Dimension Index
    says (tested: 3D and 4D, every orientation, read back voxel for voxel). The item is one
    object for all frames, so 8,000 frames cost no extra memory.
    """
    shared = ds.SharedFunctionalGroupsSequence[0]
    orientation = shared.get("PlaneOrientationSequence")
    if orientation is None:
        return
    del shared.PlaneOrientationSequence
    for group in ds.PerFrameFunctionalGroupsSequence:
        group.PlaneOrientationSequence = orientation


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


#: Converted attributes that differ from frame to frame (or from volume to volume): highdicom
#: may call one shared when the two prototype frames agree on it.
_PER_FRAME = ("InstanceNumber", "SliceLocation", "TemporalPositionIdentifier",
              "DiffusionBValue", "DiffusionDirectionality", "DiffusionGradientOrientation")


def _more_frames(ds: Dataset, made: int, slices: Iterator[InstanceSlice], total: int) -> None:
    """Frames ``made + 1 .. total``: the last prototype frame's functional groups, copied, with
    each slice's own position, indices, weighting and pixels."""
    proto = list(ds.PerFrameFunctionalGroupsSequence)
    shared_groups = ds.SharedFunctionalGroupsSequence[0].get(
        "UnassignedSharedConvertedAttributesSequence")
    if shared_groups and total > made:
        shared = shared_groups[0]
        for keyword in _PER_FRAME:
            if keyword in shared:
                for group in proto:
                    setattr(group.UnassignedPerFrameConvertedAttributesSequence[0], keyword,
                            shared[keyword].value)
                del shared[keyword]
    frame_bytes = len(ds.PixelData) // made
    pixels = bytearray(frame_bytes * total)  # filled in place: no second copy
    pixels[:len(ds.PixelData)] = ds.PixelData
    ds.PixelData = b""
    groups = list(proto)
    template = proto[-1]
    for number, instance in enumerate(slices, made):
        group = _frame_copy(template)
        content = group.FrameContentSequence[0]
        content.FrameAcquisitionNumber = instance.acquisition_number or 1
        position = group.get("PlanePositionSequence")
        if position:  # per frame (a single-slice run keeps it shared: all frames alike)
            position[0].ImagePositionPatient = list(instance.position)
        unassigned = group.UnassignedPerFrameConvertedAttributesSequence[0]
        unassigned.InstanceNumber = instance.number
        if "SliceLocation" in unassigned:
            unassigned.SliceLocation = instance.location
        if instance.temporal_position is not None:
            unassigned.TemporalPositionIdentifier = instance.temporal_position
        weighting = instance.diffusion
        if weighting is not None:
            unassigned.DiffusionDirectionality = weighting.directionality
            unassigned.DiffusionBValue = weighting.b_value
            if weighting.direction is not None:
                unassigned.DiffusionGradientOrientation = list(weighting.direction)
            elif "DiffusionGradientOrientation" in unassigned:
                del unassigned.DiffusionGradientOrientation
        source = group.get("ConversionSourceAttributesSequence")
        if source:
            source[0].ReferencedSOPInstanceUID = instance.sop_instance_uid
        groups.append(group)
        pixels[number * frame_bytes:(number + 1) * frame_bytes] = instance.pixel_data
    if len(groups) != total:
        raise ValueError(f"{len(groups)} frames where {total} were due")
    ds.PerFrameFunctionalGroupsSequence = groups
    ds.NumberOfFrames = len(groups)
    ds.PixelData = bytes(pixels)


#: Functional groups of a frame of its own; the others are the same objects in every frame:
#: 8,000 frames of a 4D run then cost a few dozen MB, not hundreds.
_COPIED = ("FrameContentSequence", "UnassignedPerFrameConvertedAttributesSequence",
           "ConversionSourceAttributesSequence", "PlanePositionSequence")


def _frame_copy(group: Dataset) -> Dataset:
    """A frame's functional groups: its own copies of the groups that differ per frame (one
    level of items, element by element: far cheaper than deepcopy), the others shared."""
    out = Dataset()
    for element in group:
        if element.keyword in _COPIED:
            out[element.tag] = DataElement(element.tag, "SQ",
                                           [_item_copy(item) for item in element.value])
        else:
            out[element.tag] = element
    return out


def _item_copy(item: Dataset) -> Dataset:
    out = Dataset()
    for element in item:
        out.add(copy.copy(element))
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
