"""Objects derived from another image (a SEG of a label map, a parametric map of a float
map): which image they refer to, and how their one multi-frame instance is built from it
(highdicom, node.convert.iods.seg and .pmap)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from pydicom.dataset import Dataset

from node.convert.iods.pmap import parametric_map
from node.convert.iods.seg import SEG_SUFFIXES, label_names, segmentation
from node.convert.mapping import value_of
from node.convert.source import bids_entities
from node.errors import InputError

if TYPE_CHECKING:
    from node.convert.series import ConvertedSeries


#: BIDS suffixes that name something computed from an image rather than an image to refer to.
_DERIVED_SUFFIXES = set(SEG_SUFFIXES) | {"map", "FA", "MD", "ADC", "T1map", "T2map", "R1map",
                                         "R2map", "PDmap", "T2starmap", "statmap", "boldref"}


_SAME_SCAN = ("sub", "ses", "acq", "run", "rec", "ce")


def find_source_image(path: Path, entities: dict[str, str], given: str | Path | None,
                      folders: tuple[Path, ...] = ()) -> Path:
    """The image a SEG or map refers to: ``given``, else the one NIfTI with the same subject,
    session, acquisition and run entities that is not itself derived, looked for beside
    ``path``; then, for a BIDS derivative (``<root>/derivatives/<pipeline>/sub-01/anat/``),
    in the raw dataset's folder (``<root>/sub-01/anat/``); then in ``folders`` in order (the
    node's done folders: the image may have been delivered and moved before its SEG came)."""
    if given is not None:
        given = Path(given)
        if not given.is_file():
            raise InputError(given, "no such source image (--source)")
        return given
    same = {k: v for k, v in entities.items() if k in _SAME_SCAN}
    places = [path.parent, *raw_folder(path), *folders]
    found: list[Path] = []
    for folder in places:
        found = _candidates(folder, path, same)
        if found:
            break
    if len(found) != 1:
        where = f"{len(found)} candidates in {found[0].parent}" if found else "none beside it"
        raise InputError(path, f"a SEG or parametric map refers to the image it was made from "
                         f"({where}): name it with --source IMAGE.nii.gz")
    return found[0]


def raw_folder(path: Path) -> list[Path]:
    """A BIDS derivative's raw-data folder: derivatives/<pipeline>/<rest> -> <rest>."""
    parts = path.parent.parts
    if "derivatives" not in parts:
        return []
    i = len(parts) - 1 - parts[::-1].index("derivatives")
    if i + 2 > len(parts):
        return []
    return [Path(*parts[:i], *parts[i + 2:])]


def _candidates(folder: Path, path: Path, same: dict[str, str]) -> list[Path]:
    from node.convert.source import NIFTI_SUFFIXES

    if not same.get("sub") or not folder.is_dir():
        return []
    out = []
    for other in sorted(folder.iterdir()):
        if other == path or not other.name.lower().endswith(NIFTI_SUFFIXES):
            continue
        theirs = bids_entities(other)
        if theirs.get("suffix") in _DERIVED_SUFFIXES or "desc" in theirs:
            continue
        if {k: v for k, v in theirs.items() if k in _SAME_SCAN} == same:
            out.append(other)
    return out


def builder(iod: str, referenced: ConvertedSeries, provenance: str, labelmap: bool = False
             ) -> Callable[[ConvertedSeries], Dataset]:
    """How the one SEG or parametric map instance of a series is made (on first use)."""

    def build(series: ConvertedSeries) -> Dataset:
        source_images = list(referenced.classic_datasets())
        number = int(value_of(series.attributes, "SeriesNumber", 1) or 1)
        volume = np.asarray(series.source.image.dataobj).reshape(series.source.shape[:3],
                                                                  order="F")
        if iod == "seg":
            names = label_names(series.source.path, series.source.stem, series.profile.labels)
            ds = segmentation(volume, series.geometry, source_images, names,
                              series.uids.series, number, series.object_uid, series.source.path,
                              labelmap)
        else:
            values = np.asarray(series.source.image.get_fdata(dtype=np.float32)).reshape(
                series.source.shape[:3], order="F")
            values = np.where(np.isfinite(values), values, 0.0)
            units = series.source.sidecar.get("Units") or series.profile.units
            label = str(value_of(series.attributes, "SeriesDescription") or "values")
            window = (series.encoding.window_center, series.encoding.window_width)
            ds = parametric_map(values, series.geometry, source_images,
                                units if isinstance(units, str) else None, label,
                                series.uids.series, number, series.object_uid, window)
        description = value_of(series.attributes, "SeriesDescription")
        if description:
            ds.SeriesDescription = str(description)
        ds.DerivationDescription = provenance
        return ds

    build.referenced = referenced  # type: ignore[attr-defined] - the results use its slices
    return build
