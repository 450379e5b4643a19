"""What a push sends: the files under the paths it names (BIDS metadata left out), each
NIfTI converted into a spool and each DICOM file described as it is."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from node.convert.options import ConversionOptions
from node.convert.profile import Profile
from node.convert.source import NIFTI_SUFFIXES, is_nifti, nifti_stem
from node.errors import DicomNodeError, InputError
from node.service.operations.batch import reconcile_studies
from node.service.operations.processes import in_processes

_SKIP_NAMES = (".DS_Store", "DICOMDIR")


#: Files a BIDS dataset holds beside its images (BIDS 1.9, "Modality agnostic files" and
#: sidecars): pushed folders count them as ignored, never as failures.
_BIDS_NAMES = re.compile(
    r"^(dataset_description\.json|participants\.(tsv|json)|samples\.(tsv|json)|"
    r"(README|CHANGES|LICENSE|CITATION)(\.\w+)?|\.bidsignore|genetic_info\.json)$"
    r"|.*\.(tsv|tsv\.gz|bval|bvec)$|.*_(scans|sessions|events|physio|stim|channels)\.json$",
    re.IGNORECASE)


def walk(paths: Iterable[Path], ignored: list[Path] | None = None) -> Iterator[Path]:
    """Files under ``paths`` (folders recursively, sorted; hidden files and sidecars skipped).

    In folders, the files a BIDS dataset holds beside its images (dataset_description.json,
    participants.tsv, README, events, .bval/.bvec...) and JSON files without an image of the
    same name (BIDS inheritance) are collected in ``ignored``, not sent. A file named on the
    command line is always taken.
    """
    for path in paths:
        if path.is_dir():
            for child in sorted(path.rglob("*")):
                rel = child.relative_to(path)
                if child.is_file() and not any(p.startswith(".") for p in rel.parts):
                    if child.suffix.lower() == ".json" and _has_nifti_twin(child):
                        continue  # a BIDS sidecar travels with its NIfTI
                    if child.name in _SKIP_NAMES:
                        continue
                    if _BIDS_NAMES.match(child.name) or child.suffix.lower() == ".json":
                        if ignored is not None:
                            ignored.append(child)
                        continue
                    yield child
        else:
            yield path


def _has_nifti_twin(sidecar: Path) -> bool:
    stem = sidecar.name[: -len(".json")]
    return any(sidecar.with_name(stem + ext).exists() for ext in NIFTI_SUFFIXES)


def _prepare_or_error(path: Path, profile: Profile | None, spool: Path, name: str,
                      options: ConversionOptions, study=None):
    """Worker: a delivery Batch, or the DicomNodeError to report. ``study``: the StudyHook
    the push reconciled for this input, or the error refusing it."""
    from node.service.delivery import prepare

    if isinstance(study, DicomNodeError):
        return study
    try:
        return prepare(path, profile, spool, options.replace(study=study), name=name,
                       check=False)
    except DicomNodeError as exc:
        return exc


@dataclass
class Gathered:
    batches: list = field(default_factory=list)  # delivery.Batch, in input order
    problems: list[DicomNodeError] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    ignored: list[Path] = field(default_factory=list)  # BIDS metadata files in folders

    @property
    def files(self) -> list:
        return [f for b in self.batches for f in b.files]


def gather(paths: Iterable[Path], spool: Path, profile: Profile | Callable[[], Profile],
           options: ConversionOptions, jobs: int | None = None) -> Gathered:
    """Every input prepared for sending (NIfTI converted into ``spool`` in ``jobs`` processes,
    DICOM described as it is). Bad inputs are collected as problems, never raised.
    ``options``: how each NIfTI is converted (the clinical exam every series joins, and what
    the destination takes).

    ``profile`` may be a function that returns it: it is then called only when there is a
    NIfTI input (reading profiles loads pydicom, which a push of DICOM files never needs).
    """
    out = Gathered()
    nifti: list[tuple] = []
    for n, path in enumerate(walk(paths, out.ignored)):
        if not path.exists():
            out.problems.append(InputError(path, "no such file or folder"))
        elif is_nifti(path):
            nifti.append((path, spool, f"{n:05d}-{nifti_stem(path)}"))
        else:
            result = _prepare_or_error(path, None, spool, "series", options)
            (out.problems if isinstance(result, DicomNodeError) else out.batches).append(result)
    if nifti and callable(profile):
        profile = profile()
    studies = reconcile_studies([call[0] for call in nifti], profile,  # type: ignore[arg-type]
                                options) if nifti else []
    nifti = [(path, profile, spool, name, options, study)
             for (path, spool, name), study in zip(nifti, studies, strict=True)]
    for call, result in zip(nifti, in_processes(_prepare_or_error, nifti, jobs), strict=True):
        if isinstance(result, DicomNodeError):
            out.problems.append(result)
            continue
        out.warnings += [f"{call[0]}: {w}" for w in result.warnings]
        out.batches.append(result)
    return out
