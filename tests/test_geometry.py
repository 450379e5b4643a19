"""Geometry rules of GUIDE section 3, on affines whose DICOM attributes are known by hand."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from support.niftigen import AXIAL_LAS, affine_from, rotation

from node.convert.geometry import choose_affine, volume_geometry


def test_ras_axial_to_lps():
    g = volume_geometry(affine_from(np.eye(3), (0.5, 0.7, 2.0), origin=(10, 20, 30)), 3)
    # i runs to patient Left in RAS (+x) = -x in LPS; j to Anterior = -y in LPS
    assert g.orientation == pytest.approx((-1, 0, 0, 0, -1, 0))
    assert g.pixel_spacing == pytest.approx((0.7, 0.5))  # row spacing (along j) first
    assert g.positions[0] == pytest.approx((-10, -20, 30))
    assert g.positions[2] == pytest.approx((-10, -20, 34))
    assert g.spacing_between_slices == pytest.approx(2.0)
    assert g.normal == pytest.approx((0, 0, 1))


def test_las_axial_has_positive_row_direction():
    g = volume_geometry(affine_from(AXIAL_LAS, origin=(0, 0, 0)), 2)
    assert g.orientation == pytest.approx((1, 0, 0, 0, -1, 0))


def test_slice_spacing_comes_from_positions_not_pixdim():
    affine = affine_from(rotation(25, 0, 0), (1, 1, 3))
    g = volume_geometry(affine, 4)
    steps = np.linalg.norm(np.diff(g.positions, axis=0), axis=1)
    assert steps == pytest.approx([3, 3, 3])
    assert g.spacing_between_slices == pytest.approx(3)
    assert not g.warnings


def test_sheared_stack_warns_and_skewed_plane_refuses():
    affine = affine_from(np.eye(3))
    affine[:3, 2] = [0.3, 0.0, 1.0]  # slices slide along x: gantry-tilt-like shear
    g = volume_geometry(affine, 3)
    assert any("sheared" in w for w in g.warnings)
    assert g.spacing_between_slices == pytest.approx(1.0)
    skewed = affine_from(np.eye(3))
    skewed[:3, 1] = [0.2, 1.0, 0.0]
    with pytest.raises(ValueError, match="not orthogonal"):
        volume_geometry(skewed, 3)


def _header(sform, qform):
    img = nib.Nifti1Image(np.zeros((2, 2, 2), np.int16), None)
    if sform is not None:
        img.set_sform(sform, code=1)
    if qform is not None:
        img.set_qform(qform, code=1)
    return img.header


def test_affine_choice_and_warnings():
    a = affine_from(np.eye(3), origin=(1, 2, 3))
    b = affine_from(np.eye(3), origin=(5, 2, 3))
    affine, warnings = choose_affine(_header(a, b))
    assert np.allclose(affine, a) and any("disagree" in w for w in warnings)
    affine, warnings = choose_affine(_header(None, b))
    assert np.allclose(affine, b) and not warnings
    _, warnings = choose_affine(_header(None, None))
    assert any("neither sform nor qform" in w for w in warnings)
