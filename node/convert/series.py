"""Convert one NIfTI file into one DICOM series: the pure core of the product.

``convert_file`` takes a path, a profile and overrides and returns a :class:`ConvertedSeries`
whose datasets are produced lazily; it knows neither the network nor the journal.
``write_series`` puts a series on disk atomically (temporary folder, then rename), so a failed
conversion never leaves a half-written series that looks complete.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from node import CONVERTER_NAME, __version__
from node.convert.geometry import VolumeGeometry, choose_affine, volume_geometry
from node.convert.iods.image import (
    SOP_CLASS_NAMES,
    SOP_CLASSES,
    InstanceSlice,
    SeriesLayout,
    file_meta,
    full_dataset,
    instance_slices,
    series_template,
)
from node.convert.mapping import Attributes, resolve_attributes, value_of
from node.convert.part10 import SeriesEncoder
from node.convert.pixels import PixelEncoding, PixelError, encode_pixels
from node.convert.profile import Profile, builtin_profile
from node.convert.source import NiftiSource, load_source, read_failure
from node.convert.uids import SeriesUids, series_uids
from node.errors import InputError

log = logging.getLogger(__name__)


@dataclass
class ConvertedSeries:
    """One series made from one source; ``datasets()`` yields its instances in order."""

    source: NiftiSource
    profile: Profile
    modality: str
    attributes: Attributes
    uids: SeriesUids
    geometry: VolumeGeometry
    encoding: PixelEncoding
    layout: SeriesLayout
    template: Dataset
    stored: np.ndarray = field(repr=False)
    warnings: list[str] = field(default_factory=list)

    @property
    def sop_class_uid(self) -> str:
        return str(self.template.SOPClassUID)

    @property
    def sop_class_name(self) -> str:
        return SOP_CLASS_NAMES.get(self.template.SOPClassUID, str(self.template.SOPClassUID))

    @property
    def n_instances(self) -> int:
        return self.layout.n_instances

    def _slices(self) -> Iterator[InstanceSlice]:
        return instance_slices(self.template, self.stored, self.geometry, self.uids, self.layout)

    def datasets(self) -> Iterator[Dataset]:
        """Complete pydicom datasets, one per instance, in instance order."""
        return (full_dataset(self.template, s) for s in self._slices())

    def encoded(self) -> Iterator[tuple[int, str, bytes]]:
        """(instance number, SOP Instance UID, Part 10 bytes) per instance, in order."""
        encoder = SeriesEncoder(self.template, file_meta(self.template.SOPClassUID, ""))
        for instance in self._slices():
            yield instance.number, instance.sop_instance_uid, encoder.encode(instance)


def _mapping_digest(attrs: Attributes, modality: str, profile: Profile) -> str:
    payload = {k: v.value for k, v in sorted(attrs.items())}
    payload["_modality"] = modality
    payload["_derived"] = profile.derived
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def convert_file(
    path: str | Path,
    profile: Profile | None = None,
    *,
    uid_root: str = "2.25",
    sidecar: str | Path | None = None,
    overrides: dict[str, str] | None = None,
    modality: str | None = None,
) -> ConvertedSeries:
    """Read, validate and encode ``path``; raise InputError/MappingError for bad input.

    ``profile`` defaults to the built-in default profile; ``uid_root`` is the organisation's
    UID root (PS3.5 9), under which every generated UID is made.
    """
    profile = profile or builtin_profile()
    source = load_source(path, sidecar)
    modality = (modality or profile.modality).upper()
    if modality not in SOP_CLASSES:
        modality = "OT"
    attrs = resolve_attributes(source, profile, overrides, modality)

    affine, warnings = choose_affine(source.image.header)
    try:
        geometry = volume_geometry(affine, source.shape[2])
    except ValueError as exc:
        raise InputError(source.path, str(exc)) from None
    warnings += geometry.warnings
    try:
        stored, encoding = encode_pixels(source.image, profile.nonfinite)  # type: ignore[arg-type]
    except PixelError as exc:
        raise InputError(source.path, str(exc)) from None
    except (OSError, EOFError, ValueError, zlib.error) as exc:
        raise read_failure(source.path, exc, "cannot read the voxel data") from None
    warnings += encoding.warnings
    if not encoding.lossless:
        warnings.append(
            f"values rescaled into int16: RescaleSlope {encoding.slope_ds}, "
            f"max error {encoding.max_abs_error:.3g}"
        )

    uids = series_uids(
        uid_root,
        str(value_of(attrs, "PatientID")),
        str(value_of(attrs, "StudyID")),
        source.sha256,
        _mapping_digest(attrs, modality, profile),
        study_uid=str(value_of(attrs, "StudyInstanceUID")) or None,
    )
    provenance = (
        f"Converted from NIfTI by {CONVERTER_NAME} {__version__}; source SHA-256 {source.sha256}"
    )
    if not profile.deidentify:
        provenance += f"; source file {source.path.name}"
    layout = SeriesLayout(n_slices=source.shape[2], n_volumes=source.shape[3])
    template = series_template(
        attrs, modality, profile.derived, uids, geometry, encoding, source.shape, provenance
    )
    return ConvertedSeries(
        source=source,
        profile=profile,
        modality=modality,
        attributes=attrs,
        uids=uids,
        geometry=geometry,
        encoding=encoding,
        layout=layout,
        template=template,
        stored=stored,
        warnings=warnings,
    )


def instance_filename(number: int) -> str:
    return f"IM{number:06d}.dcm"


def write_series(series: ConvertedSeries, out_dir: str | Path, name: str | None = None) -> Path:
    """Write every instance under ``out_dir/name`` atomically; return the series folder.

    Files go to a hidden temporary folder next to the target, which is renamed into place only
    after the last instance is written and flushed. An existing folder of the same name is
    replaced (same input and mapping give the same UIDs, so this is a clean rewrite).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / (name or series.source.stem)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=out_dir))
    try:
        for number, _uid, data in series.encoded():
            (tmp / instance_filename(number)).write_bytes(data)
        _fsync_dir(tmp)
        if final.exists():
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


@dataclass(frozen=True)
class SeriesSummary:
    """What one conversion produced: enough to print, record or send."""

    source: Path
    series_uid: str
    sop_class_name: str
    n_instances: int
    folder: Path
    warnings: tuple[str, ...] = ()


def convert_to_folder(
    path: str | Path,
    out_dir: str | Path,
    profile: Profile | None = None,
    *,
    uid_root: str = "2.25",
    name: str | None = None,
    sidecar: str | Path | None = None,
    overrides: dict[str, str] | None = None,
    modality: str | None = None,
) -> SeriesSummary:
    """Convert one file and write its series atomically; a picklable result for worker pools."""
    series = convert_file(path, profile, uid_root=uid_root, sidecar=sidecar,
                          overrides=overrides, modality=modality)
    folder = write_series(series, out_dir, name)
    return SeriesSummary(
        source=Path(path),
        series_uid=series.uids.series,
        sop_class_name=series.sop_class_name,
        n_instances=series.n_instances,
        folder=folder,
        warnings=tuple(series.warnings),
    )


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
