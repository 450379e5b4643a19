"""Pixel encoding: the float rescale error bound, exact integers, and the 16-bit storage rules."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from node.convert.pixels import PixelError, encode_pixels


def decode(stored: np.ndarray, enc) -> np.ndarray:
    # what a reader computes from the DS text we write (PS3.3 C.11.1.1.2)
    return stored.astype(np.float64) * float(enc.slope_ds) + float(enc.intercept_ds)


@pytest.mark.parametrize(
    ("lo", "hi", "dtype"),
    [(-100.0, 100.0, "float32"), (0.0, 1e-6, "float64"), (1e6, 1e6 + 3.0, "float64"),
     (-3e4, 5e5, "float32"), (-1.0, 0.0, "float32"), (12345.678, 12345.679, "float64")],
)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_float_error_bound(lo, hi, dtype, seed):
    rng = np.random.default_rng(seed)
    data = rng.uniform(lo, hi, size=(17, 13, 5)).astype(dtype)
    data.flat[0], data.flat[1] = lo, hi  # the extremes are where rounding bites
    stored, enc = encode_pixels(nib.Nifti1Image(data, np.eye(4)))
    assert stored.dtype == np.dtype("<i2") and not enc.lossless
    error = np.abs(decode(stored, enc) - data.astype(np.float64))
    # proven bound: half a quantization step (plus float64 rounding of the decode)
    assert error.max() <= enc.max_abs_error * (1 + 1e-9) + 1e-12 * max(abs(lo), abs(hi))
    assert enc.max_abs_error == pytest.approx(float(enc.slope_ds) / 2)
    # the full int16 range is used, so the step is as fine as 16 bits allow
    assert stored.min() <= -32760 and stored.max() >= 32760


def test_integral_floats_stay_exact():
    data = np.arange(-500, 500, dtype=np.float32).reshape(10, 10, 10)
    stored, enc = encode_pixels(nib.Nifti1Image(data, np.eye(4)))
    assert enc.lossless and enc.slope == 1.0 and enc.intercept == 0.0
    assert np.array_equal(stored, data.astype(np.int16))


def test_constant_float_volume():
    data = np.full((4, 4, 2), 3.25, dtype=np.float32)
    stored, enc = encode_pixels(nib.Nifti1Image(data, np.eye(4)))
    assert np.allclose(decode(stored, enc), 3.25)


@pytest.mark.parametrize(
    ("dtype", "lo", "hi", "stored_dtype"),
    [("uint8", 0, 255, "<i2"), ("int8", -128, 127, "<i2"), ("uint16", 0, 65535, "<u2"),
     ("int32", -32768, 32767, "<i2"), ("int32", 70000, 130000, "<u2"), ("uint32", 0, 65535, "<u2")],
)
def test_integers_lossless_16_bit(dtype, lo, hi, stored_dtype):
    rng = np.random.default_rng(0)
    data = rng.integers(lo, hi, size=(9, 7, 3), endpoint=True).astype(dtype)
    data.flat[0], data.flat[1] = lo, hi
    stored, enc = encode_pixels(nib.Nifti1Image(data, np.eye(4)))
    assert enc.lossless and stored.dtype == np.dtype(stored_dtype)
    assert enc.pixel_representation == (1 if stored_dtype == "<i2" else 0)
    assert np.array_equal(decode(stored, enc), data.astype(np.float64))


def test_integers_beyond_16_bits_are_quantized_with_a_warning():
    data = np.array([-(2**30), 0, 2**30], dtype=np.int32).reshape(3, 1, 1)
    stored, enc = encode_pixels(nib.Nifti1Image(data, np.eye(4)))
    assert not enc.lossless and any("exceeds 16 bits" in w for w in enc.warnings)
    assert np.abs(decode(stored, enc) - data).max() <= enc.max_abs_error * (1 + 1e-9)


def test_scl_slope_is_kept_as_rescale_losslessly(tmp_path):
    from support.niftigen import AXIAL_RAS, affine_from, write_nifti

    data = np.arange(-100, 140, dtype=np.int16).reshape(8, 6, 5)
    path = write_nifti(tmp_path / "s.nii", data, affine_from(AXIAL_RAS), slope=0.1, inter=-3.0)
    stored, enc = encode_pixels(nib.load(str(path)))
    assert np.array_equal(stored, data)  # stored values untouched
    # scl_slope is a float32 in the header: the exact value the file defines is kept
    assert float(enc.slope_ds) == pytest.approx(float(np.float32(0.1)), rel=1e-13)
    assert enc.intercept_ds == "-3.0"


def test_window_is_robust_to_outliers():
    data = np.zeros((50, 50, 4), dtype=np.int16)
    data[:25] = 100
    data[0, 0, 0] = 30000  # a single hot voxel must not set the window
    _, enc = encode_pixels(nib.Nifti1Image(data, np.eye(4)))
    assert enc.window_width < 1000


def test_all_nan_is_an_error():
    data = np.full((3, 3, 3), np.nan, dtype=np.float32)
    with pytest.raises(PixelError, match="every voxel"):
        encode_pixels(nib.Nifti1Image(data, np.eye(4)))
