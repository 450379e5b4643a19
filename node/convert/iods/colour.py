"""A colour series as one instance: Multi-frame True Color Secondary Capture (PS3.3 A.8.5).

What ``enhanced`` means for RGB data, since Legacy Converted Enhanced objects are MR or CT
and grey. Built from the classic Secondary Capture template and slices (the same pixels, the
same identity), with the modules the multi-frame IOD adds:

- Multi-frame (C.7.6.6) and SC Multi-frame Vector (C.8.6.4): Frame Increment Pointer names
  the Slice Location Vector (and, for 4D, a Frame Label Vector saying which volume);
- SC Multi-frame Image (C.8.6.3): Burned In Annotation NO (a converted volume has none);
- Multi-frame Functional Groups (C.7.6.16, as this IOD allows them, A.8.5.4): Pixel Measures
  and Plane Orientation shared, Plane Position per frame, so each frame lies in the patient
  where its NIfTI slice does; and the Frame of Reference they are in (C.7.4.1).

Frames run slice fastest: frame t * n_slices + k + 1 is slice k of volume t.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

from pydicom.dataset import Dataset
from pydicom.uid import UID

from node.convert.iods.enhanced import content_datetime
from node.convert.iods.image import InstanceSlice, file_meta

MULTIFRAME_TRUE_COLOUR_SC = UID("1.2.840.10008.5.1.4.1.1.7.4")

#: Image Plane attributes of the classic template: their multi-frame home is the functional
#: groups, and SC Multi-frame has no Image Plane module.
_PLANE = ("ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing", "SliceThickness",
          "SpacingBetweenSlices", "SliceLocation")
_SLICE_LOCATION_VECTOR = 0x00182005
_FRAME_LABEL_VECTOR = 0x00182002


def true_colour_dataset(template: Dataset, slices: Iterable[InstanceSlice], n_slices: int,
                        n_volumes: int, sop_instance_uid: str) -> Dataset:
    """The Multi-frame True Color SC instance of a colour series, from its classic template
    (8-bit RGB, interleaved) and its slices in instance order."""
    ds = Dataset()
    for element in template:  # copies: values set here must not change the template
        if element.keyword not in _PLANE:
            ds.add(copy.copy(element))
    ds.SOPClassUID = MULTIFRAME_TRUE_COLOUR_SC
    ds.SOPInstanceUID = sop_instance_uid
    ds.InstanceNumber = 1
    ds.BurnedInAnnotation = "NO"
    ds.ContentDate, ds.ContentTime = content_datetime(template)  # Type 1 here (C.7.6.16)
    ds.PositionReferenceIndicator = template.get("PositionReferenceIndicator", "")

    measures = Dataset()
    measures.PixelSpacing = template.PixelSpacing
    measures.SliceThickness = template.SliceThickness
    if "SpacingBetweenSlices" in template:
        measures.SpacingBetweenSlices = template.SpacingBetweenSlices
    orientation = Dataset()
    orientation.ImageOrientationPatient = template.ImageOrientationPatient
    shared = Dataset()
    shared.PixelMeasuresSequence = [measures]
    shared.PlaneOrientationSequence = [orientation]
    ds.SharedFunctionalGroupsSequence = [shared]

    groups, locations, labels, pixels = [], [], [], []
    for instance in slices:
        t, k = divmod(instance.number - 1, n_slices)
        position = Dataset()
        position.ImagePositionPatient = list(instance.position)
        group = Dataset()
        group.PlanePositionSequence = [position]
        groups.append(group)
        locations.append(instance.location)
        labels.append(f"volume {t + 1} slice {k + 1}")
        pixels.append(instance.pixel_data)
    if len(groups) != n_slices * n_volumes:
        raise ValueError(f"{len(groups)} frames where {n_slices * n_volumes} were due")
    ds.PerFrameFunctionalGroupsSequence = groups
    ds.NumberOfFrames = len(groups)
    ds.SliceLocationVector = locations
    pointers = [_SLICE_LOCATION_VECTOR]
    if n_volumes > 1:
        ds.FrameLabelVector = labels
        pointers.append(_FRAME_LABEL_VECTOR)
    ds.FrameIncrementPointer = pointers if len(pointers) > 1 else pointers[0]
    data = b"".join(pixels)
    ds.PixelData = data + (b"\x00" if len(data) % 2 else b"")
    ds["PixelData"].VR = "OB"
    ds.file_meta = file_meta(ds.SOPClassUID, ds.SOPInstanceUID)
    return ds

