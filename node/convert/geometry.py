"""NIfTI affine -> DICOM Image Plane attributes (PS3.3 C.7.6.2).

NIfTI world coordinates are RAS+ (x to the patient's Right->Left is *negative*), DICOM's
patient coordinate system is LPS+ (PS3.3 C.7.6.2.1.1). The voxels are never reordered: slice k
of ``data[:, :, k]`` is written as the pixel matrix ``data[:, :, k].T`` (rows run along the
NIfTI j axis, columns along i) and the geometry describes that matrix truthfully, so any
viewer shows the anatomy where it is whatever the storage order.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: NIfTI RAS+ -> DICOM LPS+
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])

#: |cos| between the two in-plane axes above which the grid cannot be described by DICOM's
#: orthogonal Image Orientation (Patient); smaller values (float noise from resampling tools)
#: are written as they are.
MAX_INPLANE_SKEW = 1e-3
#: |sin| between the slice axis and the plane normal above which we warn about shear.
MAX_SLICE_SHEAR = 1e-3


@dataclass(frozen=True)
class VolumeGeometry:
    """The Image Plane attributes of every slice of one volume."""

    orientation: tuple[float, float, float, float, float, float]  # IOP: row dir, column dir
    pixel_spacing: tuple[float, float]  # (between rows, between columns) - row spacing first
    positions: np.ndarray  # (n_slices, 3) ImagePositionPatient of each slice, LPS mm
    normal: np.ndarray  # unit slice normal = row x column
    spacing_between_slices: float  # along the normal, from positions (not pixdim)
    slice_thickness: float
    warnings: list[str] = field(default_factory=list)

    def slice_location(self, k: int) -> float:
        """Slice Location (0020,1041): position of slice k along the normal."""
        return float(self.positions[k] @ self.normal)


#: Said as a warning, and written into the DICOM (ImageComments) so a reader of the series
#: knows too: the positions and orientation are made up from pixdim.
ORIENTATION_UNKNOWN = ("neither sform nor qform is set: position and orientation are unknown, "
                       "only voxel sizes (pixdim) are used")


def choose_affine(header) -> tuple[np.ndarray, list[str]]:
    """Pick the voxel->RAS affine like nibabel does (sform, else qform, else pixdim) and say why.

    When both sform and qform are set and disagree we keep the sform (the NIfTI-1 standard's
    "general affine"), but warn: ITK-based tools prefer the qform, so the same file lands in
    different places in different tools.
    """
    warnings: list[str] = []
    sform, scode = header.get_sform(coded=True)
    qform, qcode = header.get_qform(coded=True)
    if scode and scode > 0:
        affine = sform
        if qcode and qcode > 0 and not np.allclose(sform, qform, atol=1e-3):
            warnings.append(
                "sform and qform disagree; using the sform (ITK-based tools use the qform)"
            )
    elif qcode and qcode > 0:
        affine = qform
    else:
        affine = header.get_base_affine()
        warnings.append(ORIENTATION_UNKNOWN)
    return np.asarray(affine, dtype=np.float64), warnings


def volume_geometry(affine_ras: np.ndarray, n_slices: int) -> VolumeGeometry:
    """Image Plane attributes for the slices ``data[:, :, k].T``, k = 0..n_slices-1."""
    a = RAS_TO_LPS @ np.asarray(affine_ras, dtype=np.float64)
    col_vec, row_vec, slice_vec = a[:3, 0], a[:3, 1], a[:3, 2]
    di, dj, dk = (float(np.linalg.norm(v)) for v in (col_vec, row_vec, slice_vec))
    if min(di, dj, dk) <= 0:
        raise ValueError("affine has a zero-length voxel axis")
    u_row, u_col = col_vec / di, row_vec / dj  # along a row (i) / down a column (j)
    warnings: list[str] = []
    skew = abs(float(u_row @ u_col))
    if skew > MAX_INPLANE_SKEW:
        raise ValueError(
            f"the in-plane voxel axes are not orthogonal (cos={skew:.4f}); DICOM cannot "
            "describe a sheared pixel grid: resample the image first"
        )
    normal = np.cross(u_row, u_col)
    normal /= np.linalg.norm(normal)
    along = float(slice_vec @ normal)
    shear = float(np.linalg.norm(np.cross(slice_vec / dk, normal)))
    if shear > MAX_SLICE_SHEAR:
        warnings.append(
            f"slices are sheared (slice axis {np.degrees(np.arcsin(min(shear, 1))):.2f} deg "
            "off the plane normal): each slice is placed correctly but viewers that assume "
            "a regular stack may not"
        )
    ks = np.arange(n_slices, dtype=np.float64)
    positions = a[:3, 3][None, :] + ks[:, None] * slice_vec[None, :]
    return VolumeGeometry(
        orientation=(*(float(x) for x in u_row), *(float(x) for x in u_col)),
        pixel_spacing=(dj, di),
        positions=positions,
        normal=normal,
        spacing_between_slices=abs(along),
        slice_thickness=abs(along),
        warnings=warnings,
    )
