"""Push: gather NIfTI and DICOM inputs, convert what needs converting, send, summarise.

The console's ``dicom-node push`` is a thin shell over :func:`gather` and :func:`summarise`;
sending is :func:`node.network.store`. NIfTI inputs are converted into a spool folder (the
caller's, usually temporary) and sent from there as files, the same way as DICOM inputs.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from node.config import Config, Profile
from node.convert import SeriesSummary, convert_to_folder
from node.errors import DicomNodeError, InputError
from node.network import DicomFile, StoreReport, read_dicom_file
from node.nifti import NIFTI_SUFFIXES, is_nifti, nifti_stem

_SKIP_NAMES = (".DS_Store", "DICOMDIR")


def walk(paths: Iterable[Path]) -> Iterator[Path]:
    """Files under ``paths`` (folders recursively, sorted; hidden files and sidecars skipped)."""
    for path in paths:
        if path.is_dir():
            for child in sorted(path.rglob("*")):
                rel = child.relative_to(path)
                if child.is_file() and not any(p.startswith(".") for p in rel.parts):
                    if child.suffix.lower() == ".json" and _has_nifti_twin(child):
                        continue  # a BIDS sidecar travels with its NIfTI
                    if child.name not in _SKIP_NAMES:
                        yield child
        else:
            yield path


def _has_nifti_twin(sidecar: Path) -> bool:
    stem = sidecar.name[: -len(".json")]
    return any(sidecar.with_name(stem + ext).exists() for ext in NIFTI_SUFFIXES)


@dataclass
class Gathered:
    files: list[DicomFile] = field(default_factory=list)
    problems: list[DicomNodeError] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def gather(
    paths: Iterable[Path], spool: Path, config: Config, profile: Profile, jobs: int | None = None
) -> Gathered:
    """Describe every DICOM input and convert every NIfTI input into ``spool``.

    NIfTI inputs are converted in ``jobs`` processes (default: one per core; conversion is
    CPU-bound), and their series are then described from the files like any DICOM input.
    Bad inputs are collected as problems (the rest goes on), never raised.
    """
    out = Gathered()
    nifti: list[tuple[Path, str]] = []
    for n, path in enumerate(walk(paths)):
        if not path.exists():
            out.problems.append(InputError(path, "no such file or folder"))
        elif is_nifti(path):
            nifti.append((path, f"{n:05d}-{nifti_stem(path)}"))
        else:
            try:
                out.files.append(read_dicom_file(path))
            except DicomNodeError as exc:
                out.problems.append(exc)
    for path, result in _convert_all(nifti, spool, config, profile, jobs):
        if isinstance(result, DicomNodeError):
            out.problems.append(result)
            continue
        out.warnings += [f"{path}: {w}" for w in result.warnings]
        out.files += [read_dicom_file(p) for p in sorted(result.folder.iterdir())]
    return out


def _convert_or_error(
    path: Path, spool: Path, name: str, config: Config, profile: Profile
) -> SeriesSummary | DicomNodeError:
    try:
        return convert_to_folder(path, spool, config, profile, name=name)
    except DicomNodeError as exc:
        return exc


def _convert_all(
    nifti: list[tuple[Path, str]], spool: Path, config: Config, profile: Profile,
    jobs: int | None,
) -> list[tuple[Path, SeriesSummary | DicomNodeError]]:
    """Each NIfTI input with its converted series (or why not), in input order."""
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(nifti)))
    if jobs == 1:
        return [(path, _convert_or_error(path, spool, name, config, profile))
                for path, name in nifti]
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        futures = [(path, pool.submit(_convert_or_error, path, spool, name, config, profile))
                   for path, name in nifti]
        return [(path, future.result()) for path, future in futures]


@dataclass
class SeriesReport:
    series_uid: str
    study_uid: str
    instances: int = 0
    sent: int = 0
    warnings: int = 0
    failed: int = 0
    seconds: float = 0.0
    messages: list[str] = field(default_factory=list)
    verified_count: int | None = None

    def as_json(self) -> dict:
        out = {
            "series_uid": self.series_uid, "study_uid": self.study_uid,
            "instances": self.instances, "sent": self.sent, "warnings": self.warnings,
            "failed": self.failed, "seconds": round(self.seconds, 3),
        }
        if self.messages:
            out["messages"] = self.messages
        if self.verified_count is not None:
            out["pacs_instances"] = self.verified_count
        return out


def summarise(report: StoreReport) -> list[SeriesReport]:
    """Per-series counts in first-seen order; distinct failure messages kept (at most 5)."""
    series: dict[str, SeriesReport] = {}
    for result in report.results:
        f = result.file
        s = series.setdefault(f.series_uid, SeriesReport(f.series_uid, f.study_uid))
        s.instances += 1
        s.seconds = max(s.seconds, result.seconds)
        if result.outcome.delivered:
            s.sent += 1
            if result.outcome.value == "warning":
                s.warnings += 1
                _note(s, result.message)
        else:
            s.failed += 1
            _note(s, result.message)
    return list(series.values())


def _note(summary: SeriesReport, message: str) -> None:
    if message not in summary.messages and len(summary.messages) < 5:
        summary.messages.append(message)
