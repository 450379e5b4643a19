"""A converted series on disk: written atomically into its folder (a temporary folder, then a
rename), never over someone else's files, with its QA picture; and the picklable summary a
worker pool returns."""

from __future__ import annotations

import io
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from node.convert.options import ConversionOptions, options_from
from node.convert.profile import Profile
from node.convert.series import ConvertedSeries, Part10, convert_file
from node.errors import InputError


def instance_filename(number: int) -> str:
    return f"IM{number:06d}.dcm"


def write_series(series: ConvertedSeries, out_dir: str | Path, name: str | None = None,
                 overwrite: bool = False) -> Path:
    """Write every instance under ``out_dir/name`` atomically; return the series folder.

    Files go to a hidden temporary folder next to the target, which is renamed into place only
    after the last instance is written and flushed. An existing folder is replaced only when it
    is provably our own earlier output of the same input (nothing but our instance files, whose
    provenance names this source's SHA-256), or with ``overwrite``; anything else is refused
    with the way out, so a folder of someone's files is never deleted.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(out_dir, "the output folder is a file: name a folder with -o")
    out_dir.mkdir(parents=True, exist_ok=True)
    name = name or series.source.stem
    if not name or name.startswith(".") or "/" in name or name in ("..", "."):
        name = f"series-{series.source.sha256[:12]}"  # an input named ".nii" or similar
    final = out_dir / name
    if final.exists() or final.is_symlink():
        ours = _earlier_output_of(final)
        if not overwrite and ours != series.source.sha256:
            why = ("holds the output of another input" if ours else
                   "exists and is not dicom-node's output")
            raise InputError(final, f"{why}; choose another -o, or pass --overwrite to "
                             "replace it")
        if not final.is_dir() or final.is_symlink():
            raise InputError(final, "exists and is not a folder; choose another -o")
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=out_dir))
    tmp.chmod(0o777 & ~_umask())  # as mkdir would: a PACS import user can read it
    try:
        for number, _uid, data in series.encoded():
            write_file(tmp / instance_filename(number), data)
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


_OURS = re.compile(r"^(IM|RS)\d{6}\.dcm$")


#: The QA picture ``convert --preview`` writes into the series folder.
PREVIEW_NAME = "preview.png"


_PROVENANCE = re.compile(r"source SHA-256 ([0-9a-f]{64})")


def _earlier_output_of(folder: Path) -> str | None:
    """The source SHA-256 when ``folder`` holds nothing but a series we wrote (its files'
    provenance, PS3.3 C.7.6.1 DerivationDescription, names the source), else None."""
    from pydicom import dcmread

    try:
        if folder.is_symlink() or not folder.is_dir():
            return None
        names = sorted(e.name for e in os.scandir(folder) if e.name != PREVIEW_NAME)
        if not names or not all(_OURS.match(n) for n in names):
            return None
        ds = dcmread(folder / names[0], stop_before_pixels=True,
                     specific_tags=["DerivationDescription"])
    except Exception:  # unreadable or foreign: not provably ours
        return None
    found = _PROVENANCE.search(str(ds.get("DerivationDescription", "")))
    return found.group(1) if found else None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@dataclass(frozen=True)
class SeriesSummary:
    """What one conversion produced: enough to print, record or send."""

    source: Path
    series_uid: str
    sop_class_name: str
    n_instances: int
    folder: Path
    warnings: tuple[str, ...] = ()


def convert_to_folder(path: str | Path, out_dir: str | Path, profile: Profile | None = None,
                      options: ConversionOptions | None = None, *, name: str | None = None,
                      overwrite: bool = False, preview: bool = False,
                      **keywords) -> SeriesSummary:
    """Convert one file and write its series atomically; a picklable result for worker pools.
    ``options`` (or the same as keywords): see ConversionOptions. ``preview``: write the QA
    picture (:mod:`node.convert.preview`) into the series folder."""
    opts = options_from(options, keywords)
    series = convert_file(path, profile, opts)
    folder = write_series(series, out_dir, name, overwrite)
    write_results(series, folder, wanted_results(series, opts))
    if preview:
        write_preview(folder, series.source.image, folder / PREVIEW_NAME, series.warnings)
    return SeriesSummary(
        source=Path(path),
        series_uid=series.uids.series,
        sop_class_name=series.sop_class_name,
        n_instances=series.n_instances,
        folder=folder,
        warnings=tuple(series.warnings),
    )


@dataclass(frozen=True)
class WrittenResult:
    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    series_uid: str


def wanted_results(series: ConvertedSeries, options: ConversionOptions) -> tuple[str, ...]:
    """What to make besides the series: asked for (options), or the profile's for a SEG."""
    if options.results:
        return options.results
    return series.profile.results if series.iod == "seg" else ()


def write_results(series: ConvertedSeries, folder: Path, which: tuple[str, ...]
                  ) -> list[WrittenResult]:
    """The results of a SEG series (node.convert.results) as RS000001.dcm, ... beside its
    instances; nothing for another kind of series (a warning on it says so)."""
    if not which:
        return []
    if series.iod != "seg":
        series.warnings.append(f"results ({', '.join(which)}) are made from a SEG only; "
                               f"this series is {series.iod!r}")
        return []
    from node.convert.results import make_results

    made = make_results(series, which)
    series.warnings.extend(made.notes)
    out = []
    for number, ds in enumerate(made.datasets, 1):
        path = folder / f"RS{number:06d}.dcm"
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        write_file(path, buffer.getvalue())
        out.append(WrittenResult(path, str(ds.SOPClassUID), str(ds.SOPInstanceUID),
                                 str(ds.SeriesInstanceUID)))
    _fsync_dir(folder)
    return out


def write_preview(folder: Path, nifti_image, target: Path, warnings: list[str]) -> bool:
    """The QA picture of the series in ``folder`` (its DICOM files as written) beside its
    source; a picture that cannot be made is a warning, never a failed conversion."""
    from node.convert.preview import preview_png

    try:
        data = preview_png(sorted(folder.glob("IM*.dcm")), nifti_image)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.partial")
        tmp.write_bytes(data)
        tmp.replace(target)
        return True
    except Exception as exc:  # a QA picture is a help, not a condition of delivery
        warnings.append(f"no preview picture: {type(exc).__name__}: {str(exc)[:120]}")
        return False


def write_file(path: Path, data: Part10, chunk: int = 1 << 20) -> None:
    """Write a new file, a whole or in pieces, 1 MiB at a time: one write call of a whole
    enhanced instance (tens of MB) measured 7x slower here than the same bytes in pieces."""
    with open(path, "wb") as f:
        for piece in [data] if isinstance(data, bytes) else data:
            view = memoryview(piece)
            for start in range(0, len(view), chunk):
                f.write(view[start:start + chunk])


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
