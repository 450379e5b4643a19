"""Diffusion weighting of a DWI series: FSL ``.bval``/``.bvec`` into the MR Diffusion attributes.

Beside ``dwi.nii.gz``, ``dwi.bval`` holds one b-value per volume (s/mm2) and ``dwi.bvec`` three
rows of one gradient component per volume, in FSL's convention: the vector is in the image's
voxel axes, with the first axis flipped when the affine's determinant is positive (so that it
reads as in a radiological, LAS-stored image). Each instance carries its volume's weighting in
patient (LPS) coordinates, as PS3.3 C.8.13.5.9 (MR Diffusion Macro) defines it:
DiffusionBValue (0018,9087), DiffusionDirectionality (0018,9075) and, when directional,
DiffusionGradientOrientation (0018,9089).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from node.convert.source import gradient_paths, nifti_stem
from node.errors import InputError

#: A b-value file or a b-vector file is a few KB; anything larger is not one.
MAX_GRADIENT_FILE_BYTES = 4 * 1024**2
#: b-values at or below this count as unweighted (b=0 volumes are often stored as 5 or 10).
B0_THRESHOLD = 0.0


@dataclass(frozen=True)
class VolumeWeighting:
    """One volume's diffusion weighting, in DICOM terms."""

    b_value: float
    direction: tuple[float, float, float] | None  # unit vector, LPS; None when not directional

    @property
    def directionality(self) -> str:
        """PS3.3 C.8.13.5.9.1: NONE for b=0, DIRECTIONAL with a gradient, else ISOTROPIC."""
        if self.b_value <= B0_THRESHOLD:
            return "NONE"
        return "DIRECTIONAL" if self.direction is not None else "ISOTROPIC"


def gradient_files(nifti: Path) -> tuple[Path, Path] | None:
    """``x.bval`` and ``x.bvec`` beside ``x.nii[.gz]`` when at least one exists."""
    if not gradient_paths(nifti):
        return None
    stem = nifti_stem(nifti)
    return nifti.with_name(stem + ".bval"), nifti.with_name(stem + ".bvec")


def _numbers(path: Path, rows: int) -> np.ndarray:
    try:
        if path.stat().st_size > MAX_GRADIENT_FILE_BYTES:
            raise InputError(path, "too large for a b-value or b-vector file")
        text = path.read_text(encoding="ascii")
        lines = [line.split() for line in text.splitlines() if line.strip()]
        table = np.array([[float(v) for v in line] for line in lines], dtype=float)
    except FileNotFoundError:
        raise InputError(path, "missing: a .bval needs its .bvec and a .bvec its .bval "
                         "(FSL convention)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(path, f"cannot read it ({exc})") from None
    except ValueError:
        raise InputError(path, f"not a table of numbers ({rows} row(s) of one value per "
                         "volume, separated by spaces)") from None
    if table.ndim != 2 or table.shape[0] != rows:
        if rows == 3 and table.ndim == 2 and table.shape[1] == 3:  # one vector per line
            table = table.T
        else:
            raise InputError(path, f"expected {rows} row(s) of one value per volume")
    if not np.all(np.isfinite(table)):
        raise InputError(path, "holds a value that is not a finite number")
    return table


def read_weighting(bval: Path, bvec: Path, n_volumes: int, affine: np.ndarray
                   ) -> list[VolumeWeighting]:
    """Each volume's weighting; InputError names the file when the counts disagree."""
    bvals = _numbers(bval, 1)[0]
    bvecs = _numbers(bvec, 3)
    for path, count in ((bval, bvals.size), (bvec, bvecs.shape[1])):
        if count != n_volumes:
            raise InputError(path, f"gives {count} volume(s) but the image has {n_volumes}; "
                             "they must match one to one")
    if np.any(bvals < 0):
        raise InputError(bval, "holds a negative b-value")
    rotation = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    flip = np.array([-1.0 if np.linalg.det(affine[:3, :3]) > 0 else 1.0, 1.0, 1.0])
    out = []
    for t in range(n_volumes):
        vector = bvecs[:, t] * flip  # voxel axes of the image as stored
        norm = float(np.linalg.norm(vector))
        if bvals[t] <= B0_THRESHOLD or norm < 1e-6:
            out.append(VolumeWeighting(float(bvals[t]), None))
            continue
        ras = rotation @ (vector / norm)
        lps = (-ras[0], -ras[1], ras[2])
        out.append(VolumeWeighting(float(bvals[t]), tuple(round(float(v), 6) + 0.0
                                                         for v in lps)))  # type: ignore[arg-type]
    return out
