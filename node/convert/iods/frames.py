"""What the multi-frame objects built with highdicom (SEG, parametric map) share: their frames
from a NIfTI volume and the spatial functional groups that place each frame in the patient.

Frame k is slice ``data[:, :, k].T``, exactly as a classic instance's pixels (rows run along
j), and its Plane Position, Plane Orientation and Pixel Measures come from the same
:class:`~node.convert.geometry.VolumeGeometry` (PS3.3 C.7.6.16.2.1-3), so a SEG or a map lies
in world space exactly where its NIfTI does, whatever the grid of the image it refers to.
"""

from __future__ import annotations

import numpy as np

from node import CONVERTER_NAME, __version__
from node.convert.geometry import VolumeGeometry

#: The General Equipment values of the objects we create (PS3.3 C.7.5.1).
EQUIPMENT = {"manufacturer": CONVERTER_NAME, "manufacturer_model_name": CONVERTER_NAME,
             "software_versions": __version__, "device_serial_number": "none"}


def frames(volume: np.ndarray) -> np.ndarray:
    """(x, y, z) -> (z, rows=y, columns=x): one frame per slice, as DICOM stores them."""
    return np.ascontiguousarray(np.asarray(volume).transpose(2, 1, 0))


def spatial(geometry: VolumeGeometry) -> dict:
    """highdicom's pixel_measures, plane_orientation and plane_positions for the volume."""
    from highdicom import PixelMeasuresSequence, PlaneOrientationSequence, PlanePositionSequence

    return {
        "pixel_measures": PixelMeasuresSequence(
            pixel_spacing=[float(v) for v in geometry.pixel_spacing],
            slice_thickness=float(geometry.slice_thickness),
            spacing_between_slices=float(geometry.spacing_between_slices),
        ),
        "plane_orientation": PlaneOrientationSequence(
            coordinate_system="PATIENT", image_orientation=[float(v) for v in
                                                            geometry.orientation]),
        "plane_positions": [
            PlanePositionSequence(coordinate_system="PATIENT",
                                  image_position=[float(v) for v in p])
            for p in geometry.positions
        ],
    }


def keep_laterality(source_images, ds) -> None:
    """General Series Laterality is Type 2C (PS3.3 C.7.3.1): present, empty = unknown, when
    the images it refers to have it so; highdicom drops empty values."""
    if source_images and "Laterality" in source_images[0] and "Laterality" not in ds:
        ds.Laterality = source_images[0].Laterality
