"""The series encoder writes exactly what pydicom.dcmwrite writes."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from niftigen import AXIAL_RAS, affine_from, ramp_data, write_nifti

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
