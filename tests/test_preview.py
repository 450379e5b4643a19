"""The QA picture: the DICOM as delivered beside the NIfTI, placed by their own geometry. A
left-right flip must show, in the image and in the caption."""

from __future__ import annotations

import io
from pathlib import Path

import nibabel as nib
import numpy as np
from conftest import run_node
from PIL import Image
from support.niftigen import write_nifti

from node.convert.output import write_series
from node.convert.preview import PANEL, placed_from_dicom, placed_from_nifti, preview_png
from node.convert.series import convert_file

AFFINE = np.array([[3.0, 0, 0, -96], [0, 3.0, 0, -96], [0, 0, 3.0, -60], [0, 0, 0, 1]])


def _phantom() -> np.ndarray:
    """A head-like ellipsoid with a bright block on the patient's right (RAS +x... -x)."""
    data = np.zeros((64, 64, 40), np.int16)
    grid = np.indices(data.shape)
    r = ((grid[0] - 32) / 28.0) ** 2 + ((grid[1] - 32) / 30.0) ** 2 + ((grid[2] - 20) / 18.0) ** 2
    data[r < 1] = 300 + 5 * grid[1][r < 1]
    data[44:56, 20:32, 15:25] = 1000
    return data


def _rows(png: bytes) -> tuple[np.ndarray, np.ndarray]:
    """The DICOM row and the NIfTI row of the montage, their titles left out."""
    image = np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.float64)
    half = image.shape[0] // 2
    return image[16:half], image[half + 16:2 * half]


def _differ(a: np.ndarray, b: np.ndarray) -> float:
    """The share of pixels whose grey differs by more than a quarter of the range."""
    return float(np.mean(np.abs(a - b) > 64))


def _picture(tmp_path: Path, affine_of_delivered: np.ndarray) -> bytes:
    source = write_nifti(tmp_path / "src" / "sub-01_T1w.nii.gz", _phantom(), AFFINE)
    converted = write_nifti(tmp_path / "conv" / "sub-01_T1w.nii.gz", _phantom(),
                            affine_of_delivered)
    folder = write_series(convert_file(converted), tmp_path / "dicom")
    return preview_png(sorted(folder.glob("*.dcm")), nib.load(str(source)))


def test_a_correct_conversion_looks_like_its_source(tmp_path):
    png = _picture(tmp_path, AFFINE)
    assert len(png) < 60_000  # a few tens of KB
    dicom, nifti = _rows(png)
    assert dicom.shape[1] >= 3 * PANEL
    assert _differ(dicom, nifti) < 0.002  # the same picture


def test_a_left_right_flip_is_visible_in_the_image_and_the_letters(tmp_path):
    mirrored = AFFINE.copy()
    mirrored[0, 0], mirrored[0, 3] = -3.0, -96 + 63 * 3.0  # same box, x reversed
    png = _picture(tmp_path, mirrored)
    dicom, nifti = _rows(png)
    assert _differ(dicom, nifti) > 0.02  # the block sits on the other side
    folder = tmp_path / "dicom" / "sub-01_T1w"
    import pydicom

    delivered = placed_from_dicom([pydicom.dcmread(p) for p in sorted(folder.glob("*.dcm"))])
    source = placed_from_nifti(nib.load(str(tmp_path / "src" / "sub-01_T1w.nii.gz")))
    assert (delivered.axis_letter(0), source.axis_letter(0)) == ("L", "R")


def test_convert_preview_writes_the_picture_next_to_the_series(tmp_path):
    src = write_nifti(tmp_path / "sub-01_T1w.nii.gz", _phantom(), AFFINE)
    out = tmp_path / "out"
    for _ in range(2):  # converting again replaces its own output, picture and all
        proc = run_node("convert", src, "-o", out, "--preview")
        assert proc.returncode == 0, proc.stderr
    picture = out / "sub-01_T1w" / "preview.png"
    assert picture.is_file() and Image.open(picture).format == "PNG"
