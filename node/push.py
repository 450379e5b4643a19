"""Push: gather NIfTI and DICOM inputs, convert what needs converting, send, summarise.

The console's ``dicom-node push`` is a thin shell over :func:`gather` and :func:`summarise`;
sending is :func:`node.network.store`. NIfTI inputs are converted into a spool folder (the
caller's, usually temporary) and sent from there as files, the same way as DICOM inputs.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from node.config import Config, Profile
from node.errors import DicomNodeError, InputError
from node.network import DicomFile, StoreReport, read_dicom_file
from node.nifti import NIFTI_SUFFIXES, is_nifti

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
    converted: list[tuple[Path, str]] = field(default_factory=list)  # (NIfTI, series UID)


def gather(paths: Iterable[Path], spool: Path, config: Config, profile: Profile) -> Gathered:
    """Describe every DICOM input and convert every NIfTI input into ``spool``.

    Bad inputs are collected as problems (the rest goes on), never raised.
    """
    from node.convert import convert_file, instance_filename, write_series

    out = Gathered()
    for n, path in enumerate(walk(paths)):
        try:
            if not path.exists():
                raise InputError(path, "no such file or folder")
            if is_nifti(path):
                series = convert_file(path, config, profile)
                folder = write_series(series, spool, f"{n:05d}-{series.source.stem}")
                out.warnings += [f"{path}: {w}" for w in series.warnings]
                out.converted.append((path, series.uids.series))
                for number in range(1, series.n_instances + 1):
                    out.files.append(DicomFile(
                        path=folder / instance_filename(number),
                        sop_class_uid=series.sop_class_uid,
                        sop_instance_uid=series.uids.instance(number),
                        transfer_syntax="1.2.840.10008.1.2.1",
                        study_uid=series.uids.study,
                        series_uid=series.uids.series,
                    ))
            else:
                out.files.append(read_dicom_file(path))
        except DicomNodeError as exc:
            out.problems.append(exc)
    return out


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
