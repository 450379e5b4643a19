"""The series encoder writes exactly what pydicom.dcmwrite writes."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from support.niftigen import AXIAL_RAS, affine_from, ramp_data, write_nifti

from node.convert.series import convert_file


@pytest.mark.parametrize("modality", ["MR", "CT", "OT"])
@pytest.mark.parametrize("shape", [(6, 5, 3), (6, 5, 3, 2)])
def test_encoded_bytes_equal_dcmwrite(tmp_path, config, modality, shape):
    path = write_nifti(tmp_path / "sub-01_bold.nii.gz", ramp_data(shape, "float32"),
                       affine_from(AXIAL_RAS),
                       sidecar={"PatientName": "Müller^Jörg", "PatientID": "01"})
    series = convert_file(path, config.profile(), modality=modality)
    encoded = list(series.encoded())
    datasets = list(series.datasets())
    assert len(encoded) == len(datasets) == int(np.prod(shape[2:]))
    assert datasets[0].SpecificCharacterSet == "ISO_IR 192"
    for (number, uid, data), ds in zip(encoded, datasets, strict=True):
        buf = io.BytesIO()
        pydicom.dcmwrite(buf, ds, enforce_file_format=True)
        assert data == buf.getvalue()
        assert number == ds.InstanceNumber and uid == ds.SOPInstanceUID
        back = pydicom.dcmread(io.BytesIO(data))
        assert back.PatientName == "Müller^Jörg"
        assert np.array_equal(back.pixel_array, ds.pixel_array)


def test_multiframe_fast_path_writes_what_pydicom_writes(tmp_path):
    """Enhanced (3D, 4D) and SEG instances: the functional groups encoded by hand are byte
    for byte pydicom's encoding of the same dataset."""
    from support.niftigen import rotation

    from node.convert.part10 import multiframe_bytes
    from node.convert.series import part10_bytes

    affine = affine_from(rotation(0.2, 0.1, 0.3), zooms=(1.0, 1.2, 2.0))
    t1 = write_nifti(tmp_path / "sub-01_T1w.nii.gz", ramp_data((12, 10, 5), "int16"), affine)
    bold = write_nifti(tmp_path / "sub-01_bold.nii.gz", ramp_data((12, 10, 5, 3), "int16"),
                       affine)
    labels = np.zeros((12, 10, 5), np.int16)
    labels[2:6, 3:7, 1:4] = 2
    dseg = write_nifti(tmp_path / "sub-01_desc-x_dseg.nii.gz", labels, affine)
    for series in (convert_file(t1, iod="enhanced"), convert_file(bold, iod="enhanced"),
                   convert_file(dseg, iod="seg", source_image=t1)):
        ds = series.object()
        assert multiframe_bytes(ds) == part10_bytes(ds)
