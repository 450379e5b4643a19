"""Every supported orientation, header variant and dtype, judged by dciodvfy and dcm2niix."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from support.judges import assert_dciodvfy_clean, assert_same_image, dcm2niix
from support.niftigen import (
    AXIAL_LAS,
    AXIAL_RAS,
    CORONAL,
    SAGITTAL,
    affine_from,
    ramp_data,
    rotation,
    write_nifti,
)

from node.convert.output import write_series
from node.convert.series import convert_file

pytestmark = pytest.mark.peers  # Orthanc, DCMTK, dciodvfy, dcm2niix


@dataclass
class Case:
    name: str
    axes: np.ndarray = field(default_factory=lambda: AXIAL_RAS)
    zooms: tuple = (1.0, 1.0, 1.0)
    shape: tuple = (12, 14, 6)
    dtype: str = "int16"
    kw: dict = field(default_factory=dict)
    data_kw: dict = field(default_factory=dict)
    modality: str = "MR"


CASES = [
    Case("axial-ras", AXIAL_RAS),
    Case("axial-las-negative-determinant", AXIAL_LAS),
    Case("sagittal", SAGITTAL),
    Case("coronal", CORONAL),
    Case("oblique-two-axes", rotation(20, 30), zooms=(0.9, 1.1, 2.5)),
    Case("oblique-las", rotation(-15, 0, 25) @ AXIAL_LAS, zooms=(1.2, 1.2, 3.0)),
    Case("anisotropic", AXIAL_RAS, zooms=(0.5, 0.8, 4.0)),
    Case("sform-only", rotation(10, 0, 0), kw={"qform": False}),
    Case("qform-only", rotation(0, 12, 0), kw={"sform": False}),
    Case("no-sform-no-qform", kw={"sform": False, "qform": False}),
    Case("uint8", dtype="uint8"),
    Case("int8", dtype="int8"),
    Case("uint16-full-range", dtype="uint16", data_kw={"lo": 0, "hi": 65535}),
    Case("int32-fits-int16", dtype="int32"),
    Case("int32-wide-range-offset", dtype="int32", data_kw={"lo": 100_000, "hi": 150_000}),
    Case("uint32", dtype="uint32", data_kw={"lo": 0, "hi": 60_000}),
    Case("float32", dtype="float32"),
    Case("float64", dtype="float64", data_kw={"lo": -0.003, "hi": 0.004}),
    Case("int16-scl-slope-inter", kw={"slope": 0.25, "inter": -7.5}),
    Case("4d-int16", shape=(10, 12, 5, 4)),
    Case("4d-float32", dtype="float32", shape=(10, 12, 5, 3), axes=rotation(0, 20, 0)),
    Case("big-endian", kw={"big_endian": True}, axes=SAGITTAL),
    Case("nifti2", kw={"nifti2": True}, axes=CORONAL),
    Case("ct", modality="CT", data_kw={"lo": -1024, "hi": 3000}),
    Case("secondary-capture", modality="OT", axes=rotation(5, 5, 5)),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_roundtrip_through_judges(case: Case, tmp_path: Path, config) -> None:
    data = ramp_data(case.shape, case.dtype, **case.data_kw)
    affine = affine_from(case.axes, case.zooms)
    path = write_nifti(tmp_path / f"sub-01_{case.name.replace('-', '')}.nii.gz", data, affine,
                       **case.kw)
    series = convert_file(path, config.profile(), modality=case.modality)
    folder = write_series(series, tmp_path / "dicom")
    assert len(list(folder.glob("*.dcm"))) == int(np.prod(case.shape[2:]))

    assert_dciodvfy_clean(folder)
    result = dcm2niix(folder, tmp_path / "back")
    source = nib.load(str(path))
    tol = series.encoding.max_abs_error * (1 + 1e-6)
    if series.encoding.lossless:
        # float32 scl_slope/scl_inter in dcm2niix's output: allow their rounding only
        tol = 1e-6 * max(1.0, float(np.abs(source.get_fdata()).max()))
    else:
        tol += 1e-6 * max(1.0, abs(series.encoding.intercept))
    assert_same_image(source, result, value_tol=tol)
