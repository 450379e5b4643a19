"""A float map becomes a Parametric Map (PS3.3 A.75), built with highdicom.

The values are stored as 32-bit floats, so nothing is quantised, and a Real World Value
Mapping (C.7.6.16.2.11) says what they mean, in UCUM units (the sidecar's ``Units``, else the
profile's ``units``, else "no units"). The window covers the 1st..99th percentile so the map
displays with contrast. A parametric map refers to the image series it was computed from
(highdicom requires it): that series' study and Frame of Reference are the map's.
"""

from __future__ import annotations

import warnings

import numpy as np
from pydicom.dataset import Dataset

from node.convert.geometry import VolumeGeometry
from node.convert.iods.frames import EQUIPMENT, frames, keep_laterality, spatial


def unit_code(units: str | None):
    """A UCUM unit as a code (PS3.16 CID 7181 uses UCUM itself as the coding scheme)."""
    from pydicom.sr.coding import Code

    if not units or units.strip() in ("1", "unitless", "a.u.", "arbitrary"):
        return Code("1", "UCUM", "no units")
    text = units.strip()[:16]
    return Code(text, "UCUM", text)


def parametric_map(values: np.ndarray, geometry: VolumeGeometry, source_images: list[Dataset],
                   units: str | None, label: str, series_uid: str, series_number: int,
                   sop_instance_uid: str, window: tuple[float, float]) -> Dataset:
    """The parametric map of a 3D float volume (x, y, z); NaN/Inf already replaced."""
    import highdicom as hd

    data = frames(values.astype(np.float32))
    lo, hi = float(data.min()), float(data.max())
    mapping = hd.pm.RealWorldValueMapping(
        lut_label=label[:16] or "values", lut_explanation=label[:64] or "values",
        unit=unit_code(units), value_range=(lo, hi), slope=1.0, intercept=0.0)
    center, width = window
    voi = hd.VOILUTTransformation(
        window_center=center, window_width=width,
        voi_lut_function="LINEAR_EXACT" if width < 1 else "LINEAR")  # PS3.3 C.11.2.1.3
    with warnings.catch_warnings():  # highdicom's advice on single-component names
        warnings.simplefilter("ignore", UserWarning)
        ds = hd.pm.ParametricMap(
            source_images=source_images, pixel_array=data, series_instance_uid=series_uid,
            series_number=series_number, sop_instance_uid=sop_instance_uid, instance_number=1,
            contains_recognizable_visual_features=False, real_world_value_mappings=[mapping],
            voi_lut_transformations=[voi], **EQUIPMENT, **spatial(geometry))
    keep_laterality(source_images, ds)
    return ds
