"""A QA picture of a converted series: three planes of the DICOM as delivered beside the same
planes of the source NIfTI, so "did it arrive the right way round?" is answered at a glance.

Both volumes are placed in the patient by their own geometry, the DICOM by each frame's
ImagePositionPatient, ImageOrientationPatient and PixelSpacing (what a viewer uses, PS3.3
C.7.6.2), the NIfTI by its affine, and sampled on one patient-space grid through the centre,
in the radiological layout (the patient's right on the left of the screen) with the patient
direction letters on every edge. Both rows use the DICOM's window. Each panel also says where
its file's voxel rows run (``rows->L``): a conversion that mirrored the data disagrees with the
source in the picture and in that caption.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: Largest panel side in pixels: the PNG stays a few tens of KB.
PANEL = 160
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
_LETTERS = (("L", "R"), ("P", "A"), ("S", "I"))  # +x, -x / +y, -y / +z, -z in LPS


@dataclass(frozen=True)
class Placed:
    """A volume in the patient: values[i, j, k] sits at ``affine @ (i, j, k, 1)`` (LPS mm)."""

    values: np.ndarray
    affine: np.ndarray

    def sample(self, points: np.ndarray) -> np.ndarray:
        """Nearest-neighbour values at LPS points (..., 3); NaN outside the volume."""
        inverse = np.linalg.inv(self.affine)
        ijk = np.rint(points @ inverse[:3, :3].T + inverse[:3, 3]).astype(np.int64)
        shape = np.array(self.values.shape[:3])
        inside = np.all((ijk >= 0) & (ijk < shape), axis=-1)
        out = np.full(points.shape[:-1], np.nan, dtype=np.float64)
        idx = ijk[inside]
        out[inside] = self.values[idx[:, 0], idx[:, 1], idx[:, 2]]
        return out

    def axis_letter(self, axis: int) -> str:
        """The patient direction the volume's voxel axis runs towards (main component)."""
        v = self.affine[:3, axis]
        main = int(np.argmax(np.abs(v)))
        return _LETTERS[main][0 if v[main] > 0 else 1]


def placed_from_nifti(image) -> Placed:
    """The first volume of a NIfTI image, placed by its affine (RAS, turned to LPS)."""
    from node.convert.geometry import choose_affine

    affine, _ = choose_affine(image.header)
    data = np.asanyarray(image.dataobj)
    if data.dtype.names:  # RGB24: its luminance
        data = sum(data[c].astype(np.float64) for c in data.dtype.names[:3]) / 3
    while data.ndim > 3:
        data = data[..., 0]
    while data.ndim < 3:
        data = data[..., None]
    return Placed(np.asarray(data, dtype=np.float64), _RAS_TO_LPS @ affine)


def placed_from_dicom(datasets: Iterable) -> Placed:
    """One volume from DICOM frames, placed as a viewer places them: the frames of the first
    temporal position, ordered along the slice normal, real values through the rescale."""
    frames = []  # (position, orientation, spacing, real pixels)
    for ds in datasets:
        frames += list(_frames(ds))
    if not frames:
        raise ValueError("no image frames")
    orientation = frames[0][1]
    row, col = np.array(orientation[:3]), np.array(orientation[3:])
    normal = np.cross(row, col)
    first_positions: dict[float, tuple] = {}
    for frame in frames:  # one frame per position: the first volume
        first_positions.setdefault(round(float(np.dot(frame[0], normal)), 3), frame)
    ordered = [first_positions[d] for d in sorted(first_positions)]
    spacing_r, spacing_c = ordered[0][2]  # between rows, between columns
    affine = np.eye(4)
    affine[:3, 0] = row * spacing_c  # along a row: the column index
    affine[:3, 1] = col * spacing_r  # down a column: the row index
    if len(ordered) > 1:
        affine[:3, 2] = (ordered[-1][0] - ordered[0][0]) / (len(ordered) - 1)
    else:
        affine[:3, 2] = normal
    affine[:3, 3] = ordered[0][0]
    values = np.stack([f[3].T for f in ordered], axis=-1)  # (columns, rows, slices)
    return Placed(values.astype(np.float64), affine)


def _frames(ds):
    """(position, orientation, (row spacing, column spacing), real values) per frame."""
    pixels = _pixels(ds).astype(np.float64)
    if int(ds.get("SamplesPerPixel", 1)) == 3:  # colour: its luminance
        pixels = pixels.mean(axis=-1)
    slope, intercept = float(ds.get("RescaleSlope", 1) or 1), float(
        ds.get("RescaleIntercept", 0) or 0)
    if "PerFrameFunctionalGroupsSequence" in ds:
        shared = ds.SharedFunctionalGroupsSequence[0]
        pixels = pixels.reshape((-1, *pixels.shape[-2:]))
        for frame, group in zip(pixels, ds.PerFrameFunctionalGroupsSequence, strict=True):
            def find(keyword, group=group):
                return group.get(keyword) or shared.get(keyword)
            position = np.array([float(v) for v in
                                 find("PlanePositionSequence")[0].ImagePositionPatient])
            orientation = [float(v) for v in
                           find("PlaneOrientationSequence")[0].ImageOrientationPatient]
            spacing = [float(v) for v in find("PixelMeasuresSequence")[0].PixelSpacing]
            transform = find("PixelValueTransformationSequence")
            if transform:
                slope = float(transform[0].get("RescaleSlope", 1) or 1)
                intercept = float(transform[0].get("RescaleIntercept", 0) or 0)
            yield position, orientation, tuple(spacing), frame * slope + intercept
        return
    yield (np.array([float(v) for v in ds.ImagePositionPatient]),
           [float(v) for v in ds.ImageOrientationPatient],
           tuple(float(v) for v in ds.PixelSpacing), pixels * slope + intercept)


def _pixels(ds) -> np.ndarray:
    """The stored values: read straight from an uncompressed 8/16-bit greyscale Pixel Data
    (our own classic files: most of a preview's reading time), else through pydicom."""
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    bits = int(ds.get("BitsAllocated", 0))
    if (syntax is not None and not syntax.is_compressed and syntax.is_little_endian
            and bits in (8, 16) and int(ds.get("SamplesPerPixel", 1)) == 1
            and int(ds.get("NumberOfFrames", 1) or 1) == 1 and "PixelData" in ds):
        dtype = {8: "u1", 16: "<i2" if int(ds.PixelRepresentation) else "<u2"}[bits]
        return np.frombuffer(ds.PixelData, dtype=dtype, count=int(ds.Rows) * int(ds.Columns)
                             ).reshape(int(ds.Rows), int(ds.Columns))
    return ds.pixel_array


def _planes(reference: Placed) -> list[tuple[str, np.ndarray, tuple[str, str, str, str]]]:
    """Axial, coronal and sagittal sample grids (LPS points) through the volume's centre, in
    the radiological layout; with the letters of the (left, right, top, bottom) edges."""
    shape = np.array(reference.values.shape[:3]) - 1
    corners = np.array([[i, j, k, 1.0] for i in (0, shape[0]) for j in (0, shape[1])
                        for k in (0, shape[2])]) @ reference.affine.T
    lo, hi = corners[:, :3].min(axis=0), corners[:, :3].max(axis=0)
    centre = (lo + hi) / 2
    step = max(float(np.max(hi - lo)) / PANEL, 0.25)
    axes = [np.arange(lo[a], hi[a] + step / 2, step) for a in range(3)]
    x, y, z = axes
    top_down = z[::-1]  # the head at the top of the screen
    planes = []
    gx, gy = np.meshgrid(x, y)  # rows: y (A at the top), columns: x (R on the left)
    planes.append(("axial", np.stack([gx, gy, np.full_like(gx, centre[2])], -1),
                   ("R", "L", "A", "P")))
    gx, gz = np.meshgrid(x, top_down)
    planes.append(("coronal", np.stack([gx, np.full_like(gx, centre[1]), gz], -1),
                   ("R", "L", "S", "I")))
    gy, gz = np.meshgrid(y, top_down)
    planes.append(("sagittal", np.stack([np.full_like(gy, centre[0]), gy, gz], -1),
                   ("A", "P", "S", "I")))
    return planes


def montage(delivered: Placed, source: Placed, window: tuple[float, float]) -> bytes:
    """The PNG: the DICOM's three planes above the NIfTI's, windowed alike, lettered."""
    from PIL import Image, ImageDraw, ImageFont

    try:
        font = ImageFont.load_default(size=11)
    except TypeError:  # Pillow without FreeType sizes: the bitmap font
        font = ImageFont.load_default()
    center, width = window
    lo, hi = center - width / 2, center + width / 2
    planes = _planes(source)
    label_h = 14
    tiles = []
    for placed, title in ((delivered, "DICOM as delivered"), (source, "NIfTI source")):
        row = []
        for name, points, letters in planes:
            values = placed.sample(points)
            grey = np.clip((values - lo) / max(hi - lo, 1e-12), 0, 1) * 255
            grey = np.where(np.isnan(values), 0, grey).astype(np.uint8)
            tile = Image.fromarray(grey, mode="L")
            scale = PANEL / max(tile.width, tile.height)  # small volumes are enlarged too
            tile = tile.resize((max(1, round(tile.width * scale)),
                                max(1, round(tile.height * scale))), Image.Resampling.NEAREST)
            canvas = Image.new("L", (PANEL + 34, PANEL + 26 + label_h), 0)
            canvas.paste(tile, (12 + (PANEL - tile.width) // 2, 12 + (PANEL - tile.height) // 2))
            draw = ImageDraw.Draw(canvas)
            left, right, top, bottom = letters
            mid_y = 12 + PANEL // 2
            draw.text((1, mid_y - 6), left, fill=255, font=font)
            draw.text((PANEL + 14, mid_y - 6), right, fill=255, font=font)
            draw.text((12 + PANEL // 2 - 3, -1), top, fill=255, font=font)
            draw.text((12 + PANEL // 2 - 3, PANEL + 12), bottom, fill=255, font=font)
            caption = f"{name}: rows->{placed.axis_letter(0)} cols->{placed.axis_letter(1)}"
            draw.text((2, PANEL + 25), caption, fill=200, font=font)
            row.append(canvas)
        tiles.append((title, row))
    width_px = sum(t.width for t in tiles[0][1])
    height_px = sum(row[0].height + label_h for _, row in tiles)
    out = Image.new("L", (width_px, height_px), 0)
    draw = ImageDraw.Draw(out)
    y = 0
    for title, row in tiles:
        draw.text((4, y + 1), title, fill=255, font=font)
        y += label_h
        x = 0
        for tile in row:
            out.paste(tile, (x, y))
            x += tile.width
        y += row[0].height
    buffer = io.BytesIO()
    out.save(buffer, format="PNG", compress_level=6)  # optimize=True costs 10x the time
    return buffer.getvalue()


def preview_png(dicom_files: Iterable[Path], nifti_image) -> bytes:
    """The QA picture of a series from its DICOM files (as delivered) and its source."""
    datasets = _first_volume(dicom_files)
    delivered = placed_from_dicom(datasets)
    first = datasets[0]
    voi = first.get("SharedFunctionalGroupsSequence", [None])[0]
    if "WindowCenter" in first:
        window = (float(_first(first.WindowCenter)), float(_first(first.WindowWidth)))
    elif voi is not None and "FrameVOILUTSequence" in voi:
        item = voi.FrameVOILUTSequence[0]
        window = (float(_first(item.WindowCenter)), float(_first(item.WindowWidth)))
    else:
        lo, hi = np.nanpercentile(delivered.values, [1, 99])
        window = ((lo + hi) / 2, max(hi - lo, 1e-6))
    return montage(delivered, placed_from_nifti(nifti_image), window)


def _first_volume(files: Iterable[Path]) -> list:
    """The datasets of the series' first volume: files in instance order, read until a slice
    position comes back (a 4D run of 8,000 files costs the reading of its first volume)."""
    import pydicom

    out, seen = [], set()
    for path in files:
        ds = pydicom.dcmread(path)
        position = tuple(str(v) for v in ds.get("ImagePositionPatient", ()) or ())
        if position and position in seen:
            break
        seen.add(position)
        out.append(ds)
    return out


def _first(value):
    return value[0] if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue" \
        else value
