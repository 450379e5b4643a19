"""Synthetic NIfTI files for the tests: every orientation, dtype and header variant we support."""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path

import nibabel as nib
import numpy as np


def rotation(ax: float = 0.0, ay: float = 0.0, az: float = 0.0) -> np.ndarray:
    """Rotation matrix from angles in degrees about x, then y, then z."""
    a, b, c = np.radians([ax, ay, az])
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


def affine_from(axes: np.ndarray, zooms=(1.0, 1.0, 1.0), origin=(-10.0, 12.0, 5.0)) -> np.ndarray:
    """Affine whose voxel axis i points along axes[:, i] (RAS), scaled by zooms."""
    aff = np.eye(4)
    aff[:3, :3] = np.asarray(axes, dtype=float) * np.asarray(zooms, dtype=float)[None, :]
    aff[:3, 3] = origin
    return aff


# voxel axes (columns) in RAS for the standard orientations
AXIAL_RAS = np.eye(3)
AXIAL_LAS = np.diag([-1.0, 1.0, 1.0])  # negative determinant, radiological storage
SAGITTAL = np.array([[0, 0, 1], [1, 0, 0], [0, 1, 0]], dtype=float)  # i=A, j=S, k=R
CORONAL = np.array([[1, 0, 0], [0, 0, 1], [0, 1, 0]], dtype=float)  # i=R, j=S, k=A


def ramp_data(shape, dtype, lo=None, hi=None, seed=0) -> np.ndarray:
    """Distinct, non-symmetric values, so any flip or transpose changes the array."""
    rng = np.random.default_rng(seed)
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        lo = -100.0 if lo is None else lo
        hi = 100.0 if hi is None else hi
        return rng.uniform(lo, hi, size=shape).astype(dtype)
    info = np.iinfo(dtype)
    lo = max(info.min, -1000) if lo is None else lo
    hi = min(info.max, 1000) if hi is None else hi
    return rng.integers(lo, hi, size=shape, endpoint=True).astype(dtype)


def write_nifti(
    path: Path,
    data: np.ndarray,
    affine: np.ndarray,
    *,
    sform: bool = True,
    qform: bool = True,
    slope: float | None = None,
    inter: float | None = None,
    nifti2: bool = False,
    big_endian: bool = False,
    sidecar: dict | None = None,
) -> Path:
    cls = nib.Nifti2Image if nifti2 else nib.Nifti1Image
    header = cls.header_class(endianness=">" if big_endian else "<")
    img = cls(data, affine, header=header)
    img.set_data_dtype(data.dtype)
    img.header.set_data_shape(data.shape)
    img.update_header()
    img.set_sform(affine if sform else None, code=1 if sform else 0)
    img.set_qform(affine if qform else None, code=1 if qform else 0)
    if slope is not None:
        img.header.set_slope_inter(slope, inter or 0.0)
    if not sform and not qform:
        img.header.set_zooms(np.sqrt((affine[:3, :3] ** 2).sum(axis=0)).tolist() + list(
            img.header.get_zooms()[3:]))
    path.parent.mkdir(parents=True, exist_ok=True)
    # nibabel recomputes scl_* when it saves an array, so write the bytes ourselves
    if slope is not None:
        img.header["scl_slope"] = slope
        img.header["scl_inter"] = inter or 0.0
    offset = 544 if nifti2 else 352  # header + 4 bytes of "no extension" flag
    img.header["vox_offset"] = offset
    payload = io.BytesIO()
    img.header.write_to(payload)
    payload.write(b"\0" * (offset - payload.tell()))
    payload.write(data.astype(data.dtype.newbyteorder(">" if big_endian else "<")).tobytes("F"))
    raw = payload.getvalue()
    path.write_bytes(gzip.compress(raw, mtime=0) if path.name.endswith(".gz") else raw)
    if sidecar is not None:
        stem = path.name.split(".nii")[0]
        (path.parent / f"{stem}.json").write_text(json.dumps(sidecar))
    return path
