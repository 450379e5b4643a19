"""Objects that display and read back: 2D images, small-range maps, non-image intents,
unknown orientation (issue "Clinical-grade objects", defects 1-6)."""

from __future__ import annotations

import io
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from conftest import run_node
from support.judges import assert_dciodvfy_clean, dcm2niix
from support.niftigen import AXIAL_RAS, affine_from, write_nifti

from node.convert.output import write_series
from node.convert.series import convert_file
from node.errors import InputError

RNG = np.random.default_rng(7)


def _fa_int16(folder: Path) -> tuple[Path, np.ndarray]:
    """FA stored as int16 with scl_slope ~3e-5: a real range below 1."""
    fa = RNG.random((12, 10, 4)) * 0.95
    stored = np.rint(fa / 3e-5).astype(np.int16)
    path = write_nifti(folder / "sub-01_FA.nii.gz", stored, affine_from(AXIAL_RAS),
                       slope=3e-5, inter=0.0)
    return path, stored * np.float64(np.float32(3e-5))


def _md_float(folder: Path) -> tuple[Path, np.ndarray]:
    """Mean diffusivity in mm2/s: values around 0.001."""
    md = (RNG.random((12, 10, 4)) * 0.002 + 0.0004).astype(np.float32)
    return write_nifti(folder / "sub-01_MD.nii.gz", md, affine_from(AXIAL_RAS)), md


def _window_covers(ds: pydicom.Dataset, real: np.ndarray) -> None:
    """The window written shows the data's 1st..99th percentile (LINEAR_EXACT bounds)."""
    lo, hi = np.percentile(real, [1, 99])
    center, width = float(ds.WindowCenter), float(ds.WindowWidth)
    span = hi - lo
    assert abs((center - width / 2) - lo) < 0.02 * span and abs((center + width / 2) - hi) < (
        0.02 * span), (center, width, lo, hi)


@pytest.mark.peers  # dciodvfy
@pytest.mark.parametrize("make", [_fa_int16, _md_float], ids=["FA-int16", "MD-float"])
def test_small_range_maps_get_a_valid_window_over_their_values(tmp_path, config, make):
    """Defects 2 and 3: a window width below 1 is LINEAR_EXACT (LINEAR needs >= 1), and it
    covers the real values' 1st..99th percentile, the same rule for integers and floats."""
    path, real = make(tmp_path)
    folder = write_series(convert_file(path, config.profile()), tmp_path / "out")
    ds = pydicom.dcmread(sorted(folder.glob("*.dcm"))[0])
    assert ds.VOILUTFunction == "LINEAR_EXACT" and float(ds.WindowWidth) < 1
    _window_covers(ds, real)
    assert_dciodvfy_clean(folder)


@pytest.mark.peers  # Orthanc renders it
def test_a_diffusivity_map_renders_with_contrast_in_orthanc(tmp_path, config, pacs):
    path, _ = _md_float(tmp_path)
    folder = write_series(convert_file(path, config.profile()), tmp_path / "out")
    from PIL import Image

    data = (folder / "IM000002.dcm").read_bytes()
    import json

    oid = json.loads(pacs.server.request("/instances", data=data, method="POST"))["ID"]
    png = np.asarray(Image.open(io.BytesIO(pacs.get_bytes(f"/instances/{oid}/rendered"))))
    assert png.std() > 20 and png.max() - png.min() > 100  # not flat grey, black or white


@pytest.mark.peers  # dcm2niix
def test_a_2d_image_converts_and_reads_back(tmp_path, config):
    """Defect 1: a pure 2D NIfTI (64x64, no third dimension) is one slice, not a crash; the
    other inputs of the batch are converted too."""
    data = np.arange(64 * 48, dtype=np.int16).reshape(64, 48)
    img = nib.Nifti1Image(data, affine_from(AXIAL_RAS))
    path = tmp_path / "sub-01_photo.nii.gz"
    nib.save(img, str(path))
    other = write_nifti(tmp_path / "sub-01_T1w.nii.gz", data[:, :, None].repeat(3, axis=2),
                        affine_from(AXIAL_RAS))
    proc = run_node("convert", path, other, "-o", tmp_path / "out")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    folder = tmp_path / "out" / "sub-01_photo"
    ds = pydicom.dcmread(folder / "IM000001.dcm")
    assert np.array_equal(ds.pixel_array, data.T)
    assert_dciodvfy_clean(folder)
    back = dcm2niix(folder, tmp_path / "back")
    assert np.array_equal(np.squeeze(np.asarray(back.dataobj)).shape, data.shape)
    assert (tmp_path / "out" / "sub-01_T1w" / "IM000003.dcm").exists()


@pytest.mark.parametrize("shape", [(8, 8, 4, 3), (8, 8, 4, 1, 3)])
def test_a_vector_field_is_refused_with_the_reason(tmp_path, shape):
    """Defect 4: a displacement field (intent VECTOR) is not an MR time series."""
    img = nib.Nifti1Image(np.zeros(shape, dtype=np.float32), affine_from(AXIAL_RAS))
    img.header.set_intent("vector")
    path = tmp_path / "sub-01_warp.nii.gz"
    nib.save(img, str(path))
    with pytest.raises(InputError, match="VECTOR"):
        convert_file(path)
    proc = run_node("convert", path, "-o", tmp_path / "out")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "sub-01_warp" in proc.stderr


def test_unknown_orientation_is_recorded_in_the_dicom(tmp_path, config):
    """Defect 6: neither sform nor qform: the warning, and the DICOM says it too."""
    path = write_nifti(tmp_path / "sub-01_T1w.nii.gz", np.ones((6, 5, 3), np.int16),
                       affine_from(AXIAL_RAS), sform=False, qform=False)
    series = convert_file(path, config.profile())
    ds = next(series.datasets())
    assert "Orientation unknown" in ds.ImageComments
    assert any("neither sform nor qform" in w for w in series.warnings)
    oriented = write_nifti(tmp_path / "ok" / "sub-01_T1w.nii.gz", np.ones((6, 5, 3), np.int16),
                           affine_from(AXIAL_RAS))
    assert "ImageComments" not in next(convert_file(oriented, config.profile()).datasets())


@pytest.mark.parametrize(("code", "words"), [
    (2006, "FSL_FNIRT_DISPLACEMENT_FIELD"), (2007, "FSL_CUBIC_SPLINE_COEFFICIENTS"),
    (2008, "FSL_DCT_COEFFICIENTS"), (2016, "FSL_TOPUP_CUBIC_SPLINE_COEFFICIENTS"),
    (1005, "SYMMATRIX"), (2002, "NODE_INDEX"), (3006, "CIFTI-2"),
    (4242, "an intent code no table knows (4242)"),
])
def test_every_non_image_intent_is_refused_by_name(tmp_path, code, words):
    """Not only VECTOR: FSL's warp and coefficient codes, CIFTI-2 and unknown codes too."""
    img = nib.Nifti1Image(np.zeros((8, 8, 4), dtype=np.float32), affine_from(AXIAL_RAS))
    img.header["intent_code"] = code
    path = tmp_path / f"sub-01_intent{code}.nii.gz"
    nib.save(img, str(path))
    with pytest.raises(InputError, match=re.escape(words)):
        convert_file(path)


@pytest.mark.parametrize("code", [0, 3, 5, 22, 1002, 2001, 2018])
def test_image_intents_convert(tmp_path, code):
    img = nib.Nifti1Image(np.ones((8, 8, 4), dtype=np.int16), affine_from(AXIAL_RAS))
    img.header["intent_code"] = code
    path = tmp_path / f"sub-01_intent{code}.nii.gz"
    nib.save(img, str(path))
    assert convert_file(path).layout.n_instances == 4
