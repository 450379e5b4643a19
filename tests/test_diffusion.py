"""DWI: .bval/.bvec next to the NIfTI become each instance's diffusion weighting, in LPS."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from support.judges import assert_dciodvfy_clean
from support.niftigen import affine_from, ramp_data, rotation, write_nifti

from node.convert.output import write_series
from node.convert.series import convert_file
from node.errors import InputError

BVALS = [0, 1000, 1000, 2000, 5]


def _dwi(folder: Path, axes: np.ndarray, bvals=BVALS, n_vectors=None) -> tuple[Path, Path]:
    n = len(bvals)
    path = write_nifti(folder / "sub-01_dwi.nii.gz", ramp_data((10, 9, 6, n), "int16"),
                       affine_from(axes, zooms=(2.0, 2.0, 2.5)))
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(3, n_vectors or n))
    vectors /= np.linalg.norm(vectors, axis=0)
    vectors[:, 0] = 0.0
    (folder / "sub-01_dwi.bval").write_text(" ".join(map(str, bvals)) + "\n")
    bvec = folder / "sub-01_dwi.bvec"
    bvec.write_text("\n".join(" ".join(f"{v:.6f}" for v in row) for row in vectors) + "\n")
    return path, bvec


def _world(nifti: Path, bvec: Path) -> np.ndarray:
    """FSL b-vectors in world (RAS) space: voxel axes, x flipped when det(affine) > 0."""
    a = nib.load(str(nifti)).affine[:3, :3]
    flip = np.array([-1.0 if np.linalg.det(a) > 0 else 1.0, 1.0, 1.0])[:, None]
    return (a / np.linalg.norm(a, axis=0)) @ (np.loadtxt(bvec) * flip)


OBLIQUE = rotation(0.5, -0.3, 0.7)
LAS = np.diag([-1.0, 1.0, 1.0]) @ rotation(0.2, 0.1, -0.4)  # det < 0: no FSL flip


@pytest.mark.peers  # dcm2niix and dciodvfy judge
@pytest.mark.parametrize("axes", [OBLIQUE, LAS], ids=["oblique-RAS", "oblique-LAS"])
def test_dcm2niix_reads_back_the_same_gradients(tmp_path, config, axes):
    path, bvec = _dwi(tmp_path / "in", axes)
    folder = write_series(convert_file(path, config.profile()), tmp_path / "dicom")
    b0, weighted = (pydicom.dcmread(folder / f"IM{n:06d}.dcm") for n in (1, 7))
    assert b0.DiffusionDirectionality == "NONE" and "DiffusionGradientOrientation" not in b0
    assert weighted.DiffusionDirectionality == "DIRECTIONAL"
    assert float(weighted.DiffusionBValue) == 1000.0
    assert_dciodvfy_clean(folder)
    back = tmp_path / "back"
    back.mkdir()
    import subprocess

    proc = subprocess.run(["dcm2niix", "-z", "n", "-f", "dwi", "-o", str(back), str(folder)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert np.loadtxt(back / "dwi.bval").tolist() == BVALS  # b-values exact
    source, result = _world(path, bvec), _world(back / "dwi.nii", back / "dwi.bvec")
    assert np.abs(source - result).max() < 1e-3, (source, result)  # directions, world space


def test_volume_and_vector_counts_must_match(tmp_path, config):
    path, _ = _dwi(tmp_path, OBLIQUE, n_vectors=4)
    with pytest.raises(InputError, match=r"sub-01_dwi\.bvec.*4 volume\(s\).*5"):
        convert_file(path, config.profile())


def test_a_bval_without_its_bvec_is_refused(tmp_path, config):
    path, bvec = _dwi(tmp_path, OBLIQUE)
    bvec.unlink()
    with pytest.raises(InputError, match="bvec.*missing"):
        convert_file(path, config.profile())


def test_other_gradients_make_another_series(tmp_path, config):
    path, _ = _dwi(tmp_path, OBLIQUE)
    first = convert_file(path, config.profile()).uids.series
    (tmp_path / "sub-01_dwi.bval").write_text("0 1000 1000 3000 5\n")
    assert convert_file(path, config.profile()).uids.series != first


@pytest.mark.peers  # dciodvfy
def test_enhanced_output_carries_the_weighting_in_the_mr_diffusion_group(tmp_path, config):
    from support.judges import dciodvfy

    path, _ = _dwi(tmp_path / "in", OBLIQUE)
    classic = convert_file(path, config.profile())
    series = convert_file(path, config.profile(), iod="enhanced")
    folder = write_series(series, tmp_path / "dicom")
    errors, _ = dciodvfy(folder / "IM000001.dcm")
    assert not errors, errors
    ds = pydicom.dcmread(folder / "IM000001.dcm")
    n_slices = 6
    for i, group in enumerate(ds.PerFrameFunctionalGroupsSequence):
        weighting = classic.weighting[i // n_slices]
        item = group.MRDiffusionSequence[0]
        assert float(item.DiffusionBValue) == weighting.b_value
        assert item.DiffusionDirectionality == weighting.directionality
        if weighting.direction is not None:
            found = item.DiffusionGradientDirectionSequence[0].DiffusionGradientOrientation
            assert np.allclose([float(v) for v in found], weighting.direction)
