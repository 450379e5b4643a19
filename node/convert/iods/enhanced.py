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

import warnings
from collections.abc import Iterable

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
    frames = []
    for ds in classic:
        # value 3 is the image flavor of enhanced objects (PS3.3 C.8.16.1.3: VOLUME for a
        # converted volume) and value 4 the derived pixel contrast (C.8.16.1.4: NONE)
        ds.ImageType = [*list(ds.ImageType)[:2], "VOLUME", "NONE"]
        frames.append(ds)
    laterality = "Laterality" in frames[0]
    with warnings.catch_warnings():  # highdicom's advice on single-component names
        warnings.simplefilter("ignore", UserWarning)
        ds = cls(frames, series_instance_uid=series_uid, series_number=series_number,
                 sop_instance_uid=sop_instance_uid, instance_number=1)
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
    for keyword in _DANGLING:
        if keyword in ds:
            del ds[keyword]
    return ds
