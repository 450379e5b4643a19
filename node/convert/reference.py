"""The clinical exam a converted series joins: its Patient and General Study values.

A research result is useful to a clinician beside the patient's own exam. Given a DICOM file
of that exam (``--reference``), or the answer of a C-FIND at STUDY level (``--study-of``, made
by the service layer), the new series copies the Patient module (PS3.3 C.7.1.1), the General
Study module (C.7.2.1) and the Patient Study module (C.7.2.2) with the StudyInstanceUID, so a
PACS shows it inside the existing study under the existing patient. The Frame of Reference
(C.7.4.1) is shared only when the profile says the NIfTI is in that exam's space.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from node.errors import InputError

#: What a series takes from the exam it joins.
REFERENCE_KEYWORDS = (
    "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex",
    "StudyInstanceUID", "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID",
    "AccessionNumber", "StudyDescription", "PatientAge", "PatientSize", "PatientWeight",
)
#: A reference folder is one exam: at most this many files are looked at.
MAX_REFERENCE_FILES = 5000


@dataclass(frozen=True)
class ReferenceStudy:
    """The exam's values (DICOM text by keyword), its Frame of Reference, and where they
    came from (for messages)."""

    values: dict[str, str]
    frame_of_reference_uid: str | None
    origin: str

    @property
    def study_uid(self) -> str:
        return self.values["StudyInstanceUID"]


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value)


def reference_from_dataset(ds: Any, origin: str, frame_of_reference_uid: str | None = None
                           ) -> ReferenceStudy:
    """The exam named by a pydicom dataset (a file of it, or a C-FIND identifier)."""
    values = {k: _text(ds.get(k)) for k in REFERENCE_KEYWORDS if _text(ds.get(k)).strip()}
    if "StudyInstanceUID" not in values:
        raise InputError(origin, "the reference has no StudyInstanceUID")
    if "PatientID" not in values:
        raise InputError(origin, "the reference has no PatientID: it cannot name the patient")
    frame = frame_of_reference_uid or _text(ds.get("FrameOfReferenceUID")) or None
    return ReferenceStudy(values, frame, origin)


def read_reference(path: str | Path) -> ReferenceStudy:
    """The exam of a DICOM file, or of a folder of one exam's files (all must share one
    StudyInstanceUID; the Frame of Reference is kept only when they share one)."""
    from pydicom import dcmread
    from pydicom.errors import InvalidDicomError

    path = Path(path)
    if not path.exists():
        raise InputError(path, "no such reference file or folder")
    files = [path] if path.is_file() else _files_under(path)
    studies: dict[str, Any] = {}
    frames: set[str] = set()
    for f in files:
        try:
            ds = dcmread(f, stop_before_pixels=True, force=path.is_file())
        except (InvalidDicomError, OSError, ValueError, EOFError):
            if path.is_file():
                raise InputError(f, "the reference is not a readable DICOM file") from None
            continue  # a folder may hold other files (DICOMDIR readers' notes, ...)
        uid = _text(ds.get("StudyInstanceUID"))
        if uid:
            studies.setdefault(uid, ds)
            frames.add(_text(ds.get("FrameOfReferenceUID")))
    if not studies:
        raise InputError(path, "not a DICOM file of an exam (no StudyInstanceUID found)"
                         if path.is_file() else
                         "no DICOM file with a StudyInstanceUID in the reference folder")
    if len(studies) > 1:
        raise InputError(path, f"the reference holds {len(studies)} studies; name one exam "
                         "(a file, or a folder of one study)")
    frame = frames.pop() if len(frames) == 1 else None
    ds = next(iter(studies.values()))
    return reference_from_dataset(ds, str(path), frame or None)


def _files_under(folder: Path) -> list[Path]:
    out: list[Path] = []
    for root, dirs, names in os.walk(folder):
        dirs.sort()
        for name in sorted(names):
            if not name.startswith("."):
                out.append(Path(root) / name)
                if len(out) >= MAX_REFERENCE_FILES:
                    return out
    return out
