"""Deterministic UIDs (PS3.5 chapter 9).

The same input bytes and mapping give the same Study, Series, SOP Instance and Frame of
Reference UIDs on every run and machine, so a resend is idempotent in any PACS. Under the root
``2.25`` the suffix is the integer of a name-based (version 5) UUID of the parts (PS3.5 B.2,
ISO/IEC 9834-8); under an organisation's root it is pydicom's SHA-512-derived decimal cut to the
64-character limit. Neither ever emits a leading zero in a component.

(pydicom's ``generate_uid(None, entropy_srcs)`` ignores the entropy and returns a random UUID,
so the 2.25 case cannot go through it.)
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from pydicom.uid import UID, generate_uid

UUID_ROOT = "2.25"
_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:dicom-node:uid")


def make_uid(root: str, *parts: str) -> UID:
    """A UID under ``root`` that depends only on ``root`` and ``parts``."""
    if root == UUID_ROOT:
        return UID(f"{UUID_ROOT}.{uuid.uuid5(_NAMESPACE, chr(31).join(parts)).int}")
    return generate_uid(root.rstrip(".") + ".", entropy_srcs=[root, *parts])




@dataclass(frozen=True)
class SeriesUids:
    """The UIDs of one converted series; instance UIDs follow from the series UID."""

    root: str
    study: str
    series: str
    frame_of_reference: str

    def instance(self, number: int) -> str:
        return make_uid(self.root, "instance", self.series, str(number))


def series_uids(
    root: str, patient_id: str, study_id: str, content_digest: str, mapping_digest: str,
    study_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
) -> SeriesUids:
    """UIDs for one series.

    * Study: from the study identity (PatientID + StudyID), so all series of one session share
      a study; with no PatientID, from the content, so unrelated files never merge.
    * Frame of reference: one per study identity, since the series of one session share the
      scanner's patient space (GUIDE: one FrameOfReferenceUID per NIfTI space); or the
      reference exam's, when the NIfTI is in its space.
    * Series: from the source bytes and the resolved mapping.
    """
    identity = (
        ("patient", patient_id, "study", study_id) if patient_id else ("content", content_digest)
    )
    study = study_uid or make_uid(root, "study", *identity)
    return SeriesUids(
        root=root,
        study=study,
        series=make_uid(root, "series", study, content_digest, mapping_digest),
        frame_of_reference=frame_of_reference_uid or make_uid(root, "frame-of-reference", study),
    )
