"""Voxel values -> 16-bit stored pixels plus the Modality LUT (RescaleSlope/Intercept).

PS3.3 C.7.6.3 (Image Pixel) and C.11.1 (Modality LUT): a reader computes
``real = stored * RescaleSlope + RescaleIntercept``. Our rules (GUIDE section 3):

* integer data keep their stored values (``dataobj.get_unscaled()``) and NIfTI's
  scl_slope/scl_inter become RescaleSlope/RescaleIntercept: lossless;
* integers beyond 16 bits whose *range* fits 16 bits are stored with an offset folded into the
  intercept: still lossless; wider ranges are quantized like floats, with a warning;
* floats whose finite values are all integral and fit 16 bits stay exact; other floats are
  mapped linearly onto int16 with slope = range / 65534, so the error is at most slope / 2;
* NaN/Inf are never passed on silently: replaced by the background (0 when inside the value
  range, else the minimum) with a warning that counts them, or refused, per the profile;
* the output is always 16 bits allocated and stored (MR and CT require 16 allocated bits,
  PS3.3 C.8.3.1 / C.8.2.1; a narrower BitsStored silently wraps values in some readers).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydicom.valuerep import format_number_as_ds

NonFinitePolicy = Literal["background", "error"]

_INT16 = (-32768, 32767)
_UINT16 = (0, 65535)


class PixelError(ValueError):
    """The voxel values cannot be encoded under the chosen policy."""


@dataclass(frozen=True)
class PixelEncoding:
    """How real voxel values are stored: ``real = stored * slope + intercept``."""

    dtype: np.dtype  # '<i2' or '<u2'
    slope: float
    intercept: float
    lossless: bool
    max_abs_error: float  # bound on |decoded - source| (0 when lossless)
    window_center: float
    window_width: float
    real_min: float
    real_max: float
    warnings: list[str] = field(default_factory=list)
    samples_per_pixel: int = 1  # 3: RGB, 8 bits per sample, stored (x, y, z, t, 3)

    @property
    def pixel_representation(self) -> int:
        """0 = unsigned, 1 = two's complement (PS3.3 C.7.6.3.1)."""
        return 1 if self.dtype.kind == "i" else 0

    @property
    def slope_ds(self) -> str:
        return format_number_as_ds(self.slope)

    @property
    def intercept_ds(self) -> str:
        return format_number_as_ds(self.intercept)


def _ds_float(value: float) -> float:
    """The float a reader gets back from our DS text (16 characters, PS3.5 6.2)."""
    return float(format_number_as_ds(float(value)))


def _percentiles(values: np.ndarray) -> tuple[float, float]:
    """The 1st and 99th percentile of a subsample (min and max when they coincide)."""
    flat = values.ravel(order="K")  # no copy for F-ordered volumes
    step = max(1, flat.size // 200_000)
    sample = flat[::step]
    lo, hi = (float(v) for v in np.percentile(sample, [1, 99]))
    if hi <= lo:
        lo, hi = float(sample.min()), float(sample.max())
    return lo, hi


def _window(lo: float, hi: float) -> tuple[float, float]:
    """Window center and width (real units) that show [lo, hi], the data's 1st..99th
    percentile, so the first view has contrast. The width may be below 1 (an FA or a
    diffusivity map): the template then writes VOILUTFunction LINEAR_EXACT, whose width need
    only be positive (PS3.3 C.11.2.1.3.2); LINEAR needs at least 1 (C.11.2.1.2.1). A constant
    image gets width 1."""
    width = hi - lo
    return (lo + hi) / 2.0, width if width > 0 else 1.0


def _fit_16(lo: float, hi: float) -> np.dtype | None:
    if lo >= _INT16[0] and hi <= _INT16[1]:
        return np.dtype("<i2")
    if lo >= _UINT16[0] and hi <= _UINT16[1]:
        return np.dtype("<u2")
    return None


def _scale_of(image: Any) -> tuple[float, float]:
    """NIfTI scl_slope/scl_inter as nibabel applies them (0 or NaN slope means unscaled)."""
    slope = getattr(image.dataobj, "slope", 1.0)
    inter = getattr(image.dataobj, "inter", 0.0)
    slope = 1.0 if slope is None or not np.isfinite(slope) or slope == 0 else float(slope)
    inter = 0.0 if inter is None or not np.isfinite(inter) else float(inter)
    return slope, inter


def _quantize(
    values: np.ndarray, lo: float, hi: float, warnings: list[str]
) -> tuple[np.ndarray, PixelEncoding]:
    """Map float values in [lo, hi] linearly onto int16; error <= slope / 2."""
    if hi == lo:
        slope, intercept = 1.0, _ds_float(lo)
    else:
        slope = _ds_float((hi - lo) / 65534.0)
        intercept = _ds_float(lo + 32767.0 * slope)
        # the DS text may have rounded the slope down a hair: widen until the range fits
        while (hi - intercept) / slope > 32767.4 or (lo - intercept) / slope < -32767.4:
            slope = _ds_float(slope * (1 + 1e-9))
    stored = np.empty(values.shape, dtype="<i2", order="F")
    # work volume by volume in float64 so a 4D file is never held as float64 whole
    vols = values.reshape(values.shape[:3] + (-1,), order="F")
    out = stored.reshape(stored.shape[:3] + (-1,), order="F")
    for t in range(vols.shape[3]):
        q = np.rint((vols[..., t].astype(np.float64) - intercept) / slope)
        out[..., t] = np.clip(q, *_INT16)
    center, width = _window(*_percentiles(values))
    return stored, PixelEncoding(
        dtype=np.dtype("<i2"),
        slope=slope,
        intercept=intercept,
        lossless=False,
        max_abs_error=slope / 2.0 if hi != lo else abs(intercept - lo),
        window_center=center,
        window_width=width,
        real_min=lo,
        real_max=hi,
        warnings=warnings,
    )


def _encode_integers(
    raw: np.ndarray, slope: float, inter: float
) -> tuple[np.ndarray, PixelEncoding]:
    lo, hi = int(raw.min()), int(raw.max())
    warnings: list[str] = []
    dtype = _fit_16(lo, hi)
    offset = 0
    if dtype is None and hi - lo <= _UINT16[1]:
        dtype, offset = np.dtype("<u2"), lo  # lossless: the offset goes into the intercept
    if dtype is None:
        warnings.append(
            f"integer range {lo}..{hi} exceeds 16 bits: values are quantized "
            "(max error reported by the converter)"
        )
        real = raw.astype(np.float64) * slope + inter
        return _quantize(real, float(real.min()), float(real.max()), warnings)
    stored = (raw - offset).astype(dtype) if offset else raw.astype(dtype, copy=False)
    intercept = _ds_float(inter + slope * offset)
    real_lo, real_hi = sorted((lo * slope + inter, hi * slope + inter))
    p_lo, p_hi = sorted(v * _ds_float(slope) + intercept for v in _percentiles(stored))
    center, width = _window(p_lo, p_hi)
    return stored, PixelEncoding(
        dtype=dtype,
        slope=_ds_float(slope),
        intercept=intercept,
        lossless=True,
        max_abs_error=0.0,
        window_center=center,
        window_width=width,
        real_min=real_lo,
        real_max=real_hi,
        warnings=warnings,
    )


def _replace_nonfinite(
    values: np.ndarray, policy: NonFinitePolicy, warnings: list[str]
) -> tuple[float, float]:
    """Replace NaN/Inf in place per policy; return the finite (min, max)."""
    bad = ~np.isfinite(values)
    count = int(np.count_nonzero(bad))
    finite = values[~bad] if count else values
    if finite.size == 0:
        raise PixelError("every voxel is NaN or Inf")
    lo, hi = float(finite.min()), float(finite.max())
    if count:
        if policy == "error":
            raise PixelError(f"{count} voxels are NaN or Inf (profile policy nonfinite = 'error')")
        background = 0.0 if lo <= 0.0 <= hi else lo
        values[bad] = background
        warnings.append(f"{count} NaN/Inf voxels replaced with the background value {background:g}")
    return lo, hi


def encode_pixels(
    image: Any, nonfinite: NonFinitePolicy = "background"
) -> tuple[np.ndarray, PixelEncoding]:
    """Read the image's voxels once and return (stored array x*y*z[*t], encoding).

    The stored array keeps NIfTI's (i, j, k, t) indexing, in little-endian 16-bit integers.
    """
    on_disk = image.header.get_data_dtype()
    slope, inter = _scale_of(image)
    if on_disk.kind in "biu":
        getter = getattr(image.dataobj, "get_unscaled", None)
        raw = np.asanyarray(getter() if getter else image.dataobj)
        if raw.dtype.kind == "b":
            raw = raw.astype(np.uint8)
        return _encode_integers(raw, slope, inter)

    work = np.float64 if on_disk.itemsize > 4 else np.float32
    values = np.asarray(image.get_fdata(dtype=work, caching="unchanged"))
    warnings: list[str] = []
    lo, hi = _replace_nonfinite(values, nonfinite, warnings)
    if _fit_16(lo, hi) is not None and np.array_equal(values, np.rint(values)):
        dtype = _fit_16(lo, hi)
        stored = values.astype(dtype)
        center, width = _window(*_percentiles(values))
        return stored, PixelEncoding(
            dtype=dtype,
            slope=1.0,
            intercept=0.0,
            lossless=True,
            max_abs_error=0.0,
            window_center=center,
            window_width=width,
            real_min=lo,
            real_max=hi,
            warnings=warnings,
        )
    return _quantize(values, lo, hi, warnings)


def encode_rgb(image: Any, channels_last: bool = False) -> tuple[np.ndarray, PixelEncoding]:
    """Colour voxels as 8-bit RGB samples, stored (x, y, z, t, 3): NIfTI RGB24, or (with
    ``channels_last``, a profile's choice) a last dimension of 3 holding R, G and B as
    integers 0..255."""
    data = np.asanyarray(image.dataobj)
    if data.dtype.names:
        rgb = np.stack([data[c] for c in ("R", "G", "B")], axis=-1)
    else:
        if data.shape[-1] != 3 or (data.ndim > 4 and data.shape[3] != 1):
            raise PixelError(f"a colour image needs a last dimension of 3, not {data.shape}")
        if not np.array_equal(data, np.rint(data)) or data.min() < 0 or data.max() > 255:
            raise PixelError("colour channels must be integers 0..255")
        rgb = data.reshape(data.shape[:3] + (3,))
    if rgb.ndim == 4:  # (x, y, z, 3) -> one volume
        rgb = rgb[:, :, :, None, :]
    while rgb.ndim < 5:  # a 2D colour image
        rgb = rgb[:, :, None]
    return np.asarray(rgb, dtype=np.uint8), PixelEncoding(
        dtype=np.dtype("u1"), slope=1.0, intercept=0.0, lossless=True, max_abs_error=0.0,
        window_center=127.5, window_width=256.0, real_min=0.0, real_max=255.0,
        samples_per_pixel=3)
