"""Bad inputs of every kind the converter must refuse with one clear line: each maker writes
one into a folder; :data:`BAD` pairs it with words its error must contain."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np

from support.niftigen import AXIAL_RAS, affine_from, ramp_data, write_nifti

GOOD = ramp_data((8, 8, 4), "int16")


def _good(path: Path, **kw) -> Path:
    return write_nifti(path, GOOD, affine_from(AXIAL_RAS), **kw)


def _header_with(path: Path, **fields) -> Path:
    """A .nii whose header fields are changed after writing (data left as written)."""
    _good(path)
    img = nib.load(str(path))
    header = img.header.copy()
    for key, value in fields.items():
        header[key] = value
    raw = bytearray(path.read_bytes())
    buf = __import__("io").BytesIO()
    header.write_to(buf)
    raw[: len(buf.getvalue())] = buf.getvalue()
    path.write_bytes(bytes(raw))
    return path


def make_not_nifti(d: Path) -> Path:
    p = d / "notes.nii"
    p.write_text("this is a text file, not an image\n" * 20)
    return p


def make_empty(d: Path) -> Path:
    p = d / "empty.nii.gz"
    p.write_bytes(b"")
    return p


def make_truncated(d: Path) -> Path:
    p = _good(d / "truncated.nii")
    p.write_bytes(p.read_bytes()[:-100])
    return p


def make_truncated_gzip(d: Path) -> Path:
    p = _good(d / "truncated.nii.gz")
    p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])
    return p


def make_corrupt_gzip(d: Path) -> Path:
    p = _good(d / "corrupt.nii.gz")
    raw = bytearray(p.read_bytes())
    for i in range(60, len(raw) - 20, 7):
        raw[i] ^= 0x5A
    p.write_bytes(bytes(raw))
    return p


def make_dims_mismatch(d: Path) -> Path:
    return _header_with(d / "dims.nii", dim=[3, 8, 8, 9, 1, 1, 1, 1])


def make_dims_mismatch_gz(d: Path) -> Path:
    p = _header_with(d / "dimsgz.nii", dim=[3, 8, 8, 9, 1, 1, 1, 1])
    out = d / "dimsgz.nii.gz"
    out.write_bytes(gzip.compress(p.read_bytes()))
    p.unlink()
    return out


def make_absurd_size(d: Path) -> Path:
    return _header_with(d / "absurd.nii", dim=[3, 32000, 32000, 32000, 1, 1, 1, 1])


def make_5d(d: Path) -> Path:
    return write_nifti(d / "fived.nii", ramp_data((4, 4, 3, 2, 2), "int16"), affine_from(AXIAL_RAS))


def make_bad_json(d: Path) -> Path:
    p = _good(d / "sub-01_T1w.nii.gz")
    (d / "sub-01_T1w.json").write_text('{"RepetitionTime": 2.3,,}')
    return p


def make_bad_sidecar_value(d: Path) -> Path:
    return _good(d / "sub-02_T1w.nii.gz", sidecar={"RepetitionTime": "two seconds"})


def make_rgba(d: Path) -> Path:
    """RGBA32: RGB24 is a colour image now (test_iods), an alpha channel is refused."""
    rgba = np.zeros((4, 4, 3), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1"), ("A", "u1")])
    img = nib.Nifti1Image(rgba, np.eye(4))
    p = d / "rgba.nii"
    nib.save(img, str(p))
    return p


def make_complex(d: Path) -> Path:
    img = nib.Nifti1Image(np.ones((4, 4, 3), dtype=np.complex64), np.eye(4))
    p = d / "complex.nii"
    nib.save(img, str(p))
    return p


def make_too_wide(d: Path) -> Path:
    """NIfTI-2 allows 70,000 columns; DICOM's Rows and Columns are 16-bit."""
    p = d / "wide.nii"
    nib.save(nib.Nifti2Image(np.zeros((70000, 2, 1), np.int16), np.eye(4)), str(p))
    return p


BAD = {
    "not-nifti": (make_not_nifti, "not a readable NIfTI"),
    "empty": (make_empty, "empty"),
    "truncated": (make_truncated, "truncated"),
    "truncated-gzip": (make_truncated_gzip, ""),
    "corrupt-gzip": (make_corrupt_gzip, ""),
    "dims-mismatch": (make_dims_mismatch, "truncated or wrong header"),
    "dims-mismatch-gz": (make_dims_mismatch_gz, "truncated or wrong header"),
    "absurd-size": (make_absurd_size, "limit"),
    "5d": (make_5d, "5D"),
    "sidecar-invalid-json": (make_bad_json, "not valid JSON"),
    "sidecar-unmappable-value": (make_bad_sidecar_value, "RepetitionTime"),
    "rgba": (make_rgba, "alpha"),
    "complex": (make_complex, "complex"),
    "too-wide": (make_too_wide, "at most 65535"),
}
