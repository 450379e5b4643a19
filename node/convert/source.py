"""Reading a NIfTI source: the image header, its BIDS sidecar and the BIDS entities of its name.

Everything a user can get wrong about an input file is checked here, before any voxel is read
or any output written: the header must describe data that the file actually holds (so a header
claiming terabytes is refused before memory is allocated), the data type must be one we can
represent, and the sidecar must be a JSON object.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from node.errors import InputError

if TYPE_CHECKING:
    import numpy as np

#: Largest uncompressed voxel payload we accept (bytes). Above this a header is taken as corrupt
#: or hostile: 24 GiB machines convert 8 GiB volumes comfortably, nothing real is larger.
MAX_DATA_BYTES = 8 * 1024**3

_GZIP_MAGIC = b"\x1f\x8b"
_SUPPORTED_KINDS = "biuf"  # bool, signed, unsigned, float; complex and structured (RGB) are refused
_ENTITY_RE = re.compile(r"^([A-Za-z0-9]+)-([A-Za-z0-9+.]+)$")


@dataclass(frozen=True)
class NiftiSource:
    """One NIfTI file with what belongs to it, ready for conversion.

    ``image`` is nibabel's lazy image: the voxel data are only read when the pixel encoder asks.
    ``shape`` is always 4D (x, y, z, t); a 3D file has t == 1.
    """

    path: Path
    image: Any  # nibabel.Nifti1Image | nibabel.Nifti2Image
    shape: tuple[int, int, int, int]
    sha256: str
    sidecar: dict[str, Any] = field(default_factory=dict)
    sidecar_path: Path | None = None
    entities: dict[str, str] = field(default_factory=dict)

    @property
    def stem(self) -> str:
        return nifti_stem(self.path)

    @property
    def rgb(self) -> bool:
        """RGB24 voxels (NIfTI datatype 128)."""
        return self.image.header.get_data_dtype().names == RGB_FIELDS


def nifti_stem(path: Path) -> str:
    """File name without ``.nii`` / ``.nii.gz``."""
    name = path.name
    for ext in (".nii.gz", ".nii"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return path.stem


def default_sidecar_path(path: Path) -> Path:
    """The BIDS sidecar of ``x.nii.gz`` is ``x.json`` in the same folder."""
    return path.with_name(nifti_stem(path) + ".json")


NIFTI_SUFFIXES = (".nii", ".nii.gz")
#: BIDS suffixes of quantitative maps (BIDS "anat" parametric maps, DWI and perfusion
#: derivatives): such a file is a parametric map, and a SEG's measurements cover it.
MAP_SUFFIXES = frozenset({
    "T1map", "T2map", "T2starmap", "R1map", "R2map", "R2starmap", "PDmap", "MTRmap",
    "MTsat", "UNIT1", "T1rho", "MWFmap", "MTVmap", "Chimap", "S0map", "M0map", "TB1map",
    "RB1map", "FA", "MD", "ADC", "cbf", "att"})


def is_nifti(path: Path) -> bool:
    """Named like a NIfTI file. Other inputs (push, watched folders) are taken as DICOM."""
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def sidecar_of(path: Path) -> Path | None:
    """Where the BIDS sidecar of an input would be: ``x.json`` for a NIfTI, none for DICOM."""
    return default_sidecar_path(path) if is_nifti(path) else None


def bids_entities(path: Path) -> dict[str, str]:
    """Parse ``sub-01_ses-02_acq-mprage_run-1_T1w`` into entities plus ``suffix``.

    Non-BIDS names give an empty dict (the mapping then falls back to its other sources).
    """
    entities: dict[str, str] = {}
    parts = nifti_stem(path).split("_")
    for i, part in enumerate(parts):
        m = _ENTITY_RE.match(part)
        if m:
            entities.setdefault(m.group(1), m.group(2))
        elif i == len(parts) - 1 and part.isalnum() and entities:
            entities["suffix"] = part
    return entities


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def gradient_paths(path: Path) -> list[Path]:
    """The FSL ``.bval``/``.bvec`` beside a NIfTI (a DWI's diffusion weighting) that exist."""
    if not is_nifti(path):
        return []
    stem = nifti_stem(path)
    return [p for p in (path.with_name(stem + ".bval"), path.with_name(stem + ".bvec"))
            if p.is_file()]


def content_digest(path: Path, sidecar: Path | None = None) -> str:
    """SHA-256 of a job's inputs: the file, then its sidecar when there is one, then its
    ``.bval``/``.bvec``.

    The same NIfTI with another sidecar (or gradients) converts to other DICOM, so it is other
    content.
    """
    h = hashlib.sha256()
    for part in (path, sidecar, *gradient_paths(path)):
        if part is None:
            continue
        with open(part, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
        h.update(b"\x00sidecar\x00")
    return h.hexdigest()


def _gzip_isize(path: Path) -> int:
    """Uncompressed size mod 2**32 from the gzip trailer (RFC 1952 section 2.3.1)."""
    with open(path, "rb") as f:
        f.seek(-4, os.SEEK_END)
        return int.from_bytes(f.read(4), "little")


def _gzip_length(path: Path, enough: int) -> int:
    """Decompressed length of a gzip file, counted up to ``enough`` bytes (all members)."""
    n = 0
    try:
        with gzip.open(path, "rb") as f:
            while n < enough and (block := f.read(1 << 20)):
                n += len(block)
    except (EOFError, gzip.BadGzipFile, zlib.error, OSError):
        pass  # what was counted is what the file holds
    return n


def _gzip_problem(path: Path) -> str | None:
    """Why a gzip file cannot be decompressed to its end, or None if it can."""
    try:
        with gzip.open(path, "rb") as f:
            while f.read(1 << 20):
                pass
    except EOFError:
        return "truncated gzip stream (the file ends before the compressed data does)"
    except (gzip.BadGzipFile, zlib.error, OSError) as exc:
        return f"corrupt gzip stream ({exc})"
    return None


def read_failure(path: Path, exc: BaseException, what: str) -> InputError:
    """An InputError for a failed read: a gzip problem when there is one, else ``what``.

    The gzip stream is only decompressed to its end on this (error) path, so good files are
    not read twice.
    """
    with open(path, "rb") as f:
        gz = f.read(2) == _GZIP_MAGIC
    problem = _gzip_problem(path) if gz else None
    return InputError(path, problem or f"{what} ({exc})")


def _load_header_only(path: Path) -> Any:
    import nibabel as nib

    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises many types for foreign files
        raise read_failure(path, exc, "not a readable NIfTI file") from None
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise InputError(path, f"not a NIfTI-1/2 image (nibabel read it as {type(img).__name__})")
    return img


#: NIfTI-1 intent codes (nifti1.h) whose voxels are not image intensities: each voxel is a
#: vector, matrix, point or shape, and slicing it into MR images would make nonsense (a
#: displacement field would become a "time series"). Refused with the reason.
NON_IMAGE_INTENTS = {
    1004: "a general matrix per voxel (GENMATRIX)", 1005: "a symmetric matrix per voxel "
    "(SYMMATRIX, e.g. a diffusion tensor)", 1006: "a displacement vector per voxel (DISPVECT)",
    1007: "a vector per voxel (VECTOR, e.g. a displacement or warp field)",
    1008: "a point set (POINTSET)", 1009: "a triangle mesh (TRIANGLE)",
    1010: "a quaternion per voxel (QUATERN)", 2003: "an RGB vector per voxel (RGB_VECTOR)",
    2004: "an RGBA vector per voxel (RGBA_VECTOR)", 2005: "a shape (SHAPE)",
}


NON_IMAGE_INTENTS |= {
    2002: "node indices of a surface (NODE_INDEX)",
    # FSL's own codes (fsl's nifti1.h): warps and spline coefficients, not images
    2006: "a displacement field (FSL_FNIRT_DISPLACEMENT_FIELD)",
    2007: "cubic spline coefficients of a warp (FSL_CUBIC_SPLINE_COEFFICIENTS)",
    2008: "DCT coefficients of a warp (FSL_DCT_COEFFICIENTS)",
    2009: "quadratic spline coefficients of a warp (FSL_QUADRATIC_SPLINE_COEFFICIENTS)",
    2016: "cubic spline coefficients of a field (FSL_TOPUP_CUBIC_SPLINE_COEFFICIENTS)",
    2017: "quadratic spline coefficients of a field (FSL_TOPUP_QUADRATIC_SPLINE_COEFFICIENTS)",
}
#: Intent codes whose voxels are image values: none, the statistics (2-24: t, z, p ... maps),
#: estimate, label, NeuroNames label, dimensionless, time series, and FSL's topup field map
#: (2018, Hz on the voxel grid). Any other code, including CIFTI-2's (3000-3012, grayordinates
#: rather than voxels) and codes no table knows, is refused with its name.
IMAGE_INTENTS = frozenset({0, *range(2, 25), 1001, 1002, 1003, 1011, 2001, 2018})


def _check_intent(path: Path, header: Any) -> None:
    try:
        code = int(header["intent_code"])
    except (KeyError, TypeError, ValueError):
        return
    if code in IMAGE_INTENTS:
        return
    if code in NON_IMAGE_INTENTS:
        what = NON_IMAGE_INTENTS[code]
    elif 3000 <= code <= 3099:
        what = f"CIFTI-2 data (intent {code}: grayordinates or parcels, not a voxel grid)"
    else:
        import nibabel.nifti1

        label = nibabel.nifti1.intent_codes.label.get(code)
        what = (f"'{label}' data (intent code {code})" if label
                else f"data of an intent code no table knows ({code})")
    raise InputError(path, f"the header's intent says it holds {what}, not image "
                     "intensities; DICOM images cannot carry it")


def _effective_shape(path: Path, header: Any) -> tuple[int, int, int, int]:
    dim = [int(d) for d in header["dim"]]
    ndim = dim[0]
    if not 1 <= ndim <= 7:
        raise InputError(path, f"header dim[0]={ndim} is not a valid number of dimensions")
    dims = dim[1 : ndim + 1]
    if any(d < 1 for d in dims):
        raise InputError(path, f"header has a non-positive dimension {dims}")
    while len(dims) > 3 and dims[-1] == 1:
        dims.pop()
    if len(dims) > 4:
        raise InputError(path, f"{len(dims)}D data {dims} is not supported (3D or 4D only)")
    dims += [1] * (4 - len(dims))
    if max(dims[:2]) > 0xFFFF:
        raise InputError(path, f"a slice of {dims[0]} x {dims[1]} voxels: DICOM Rows and Columns "
                         "are 16-bit (at most 65535, PS3.3 C.7.6.3)")
    return dims[0], dims[1], dims[2], dims[3]


#: The field names nibabel gives NIfTI's RGB24 voxels.
RGB_FIELDS = ("R", "G", "B")


def _check_dtype(path: Path, dtype: np.dtype) -> None:
    import numpy as np

    if dtype.names == RGB_FIELDS and all(dtype[n] == np.dtype("u1") for n in RGB_FIELDS):
        return  # RGB24 (NIfTI datatype 128): a colour image, Secondary Capture
    if dtype.fields is not None or dtype.names:
        raise InputError(path, f"structured data ({dtype}) is not supported: only RGB24 "
                         "(three 8-bit channels) is; drop an alpha channel first")
    if dtype.kind == "c":
        raise InputError(path, f"complex data ({dtype}) is not supported yet")
    if dtype.kind not in _SUPPORTED_KINDS:
        raise InputError(path, f"data type {dtype} is not supported")


def _check_size(path: Path, img: Any, shape: tuple[int, ...], dtype: np.dtype) -> None:
    """Refuse a header whose data the file cannot hold, before anything is allocated."""
    import numpy as np  # here: the file-name helpers above serve the console without numpy

    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if nbytes > MAX_DATA_BYTES:
        raise InputError(
            path,
            f"header claims {nbytes / 1024**3:.1f} GiB of voxel data (dims {list(shape)}), "
            f"over the {MAX_DATA_BYTES // 1024**3} GiB limit; the header is probably corrupt",
        )
    offset = int(img.dataobj.offset)
    expected = offset + nbytes
    with open(path, "rb") as f:
        gz = f.read(2) == _GZIP_MAGIC
    actual = _gzip_isize(path) if gz else path.stat().st_size
    if gz and expected >= 2**32:
        return  # ISIZE is modulo 2**32: only the absolute limit above applies
    if gz and actual < expected:  # ISIZE counts only the last member of a multi-member file
        actual = _gzip_length(path, expected)
    if actual < expected:
        raise InputError(
            path,
            f"header dims {list(shape)} need {expected} bytes but the "
            f"{'decompressed ' if gz else ''}file holds {actual}: truncated or wrong header",
        )


#: The largest sidecar read: real ones are a few KB.
MAX_SIDECAR_BYTES = 16 * 1024**2


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number (JSON has no NaN or Infinity)")


def load_sidecar(path: Path) -> dict[str, Any]:
    """The sidecar's JSON object. Everything wrong with it is an InputError (quarantine),
    never an internal error retried for hours: size, encoding, syntax, NaN/Infinity, numbers
    too long to read, nesting too deep."""
    try:
        if path.stat().st_size > MAX_SIDECAR_BYTES:
            raise InputError(path, f"sidecar is larger than {MAX_SIDECAR_BYTES} bytes")
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise InputError(path, f"cannot read sidecar ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise InputError(path, "sidecar is not UTF-8 text") from None
    try:
        data = json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise InputError(
            path, f"sidecar is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except RecursionError:
        raise InputError(path, "sidecar JSON is nested too deeply") from None
    except ValueError as exc:  # NaN/Infinity, an integer of thousands of digits
        raise InputError(path, f"sidecar is not usable JSON: {str(exc)[:120]}") from None
    if not isinstance(data, dict):
        raise InputError(path, "sidecar must be a JSON object")
    return data


def load_source(path: str | Path, sidecar: str | Path | None = None) -> NiftiSource:
    """Open ``path`` lazily and validate it; read its sidecar (given, or the BIDS default).

    Raises :class:`InputError` naming the file and the reason for anything that makes the
    file unconvertible.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, "no such file")
    if not path.is_file():
        raise InputError(path, "not a regular file")
    try:
        size = path.stat().st_size
        if size == 0:
            raise InputError(path, "file is empty (0 bytes)")
        digest = sha256_file(path)
    except OSError as exc:
        raise InputError(path, f"cannot read file ({exc.strerror})") from None

    img = _load_header_only(path)
    header = img.header
    _check_intent(path, header)
    shape = _effective_shape(path, header)
    dtype = header.get_data_dtype()
    _check_dtype(path, dtype)
    _check_size(path, img, shape, dtype)

    sidecar_path = Path(sidecar) if sidecar is not None else default_sidecar_path(path)
    if sidecar is not None and not sidecar_path.exists():
        raise InputError(sidecar_path, "sidecar given with --sidecar does not exist")
    data = load_sidecar(sidecar_path) if sidecar_path.exists() else {}
    return NiftiSource(
        path=path,
        image=img,
        shape=shape,
        sha256=digest,
        sidecar=data,
        sidecar_path=sidecar_path if sidecar_path.exists() else None,
        entities=bids_entities(path),
    )
