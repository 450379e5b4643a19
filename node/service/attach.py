"""Attach a converted series to the patient's clinical exam: find the exam, hand it to convert.

Two ways to name the exam (issue "The right patient, the right study"): a DICOM file or folder
of it (``--reference``), or a C-FIND at STUDY level (``--study-of KEY=VALUE,...``, or the
profile's ``reference = { query = ..., from = ... }`` for unattended delivery) to the
destination or its ``query_destination``. A query that cannot be made is the network's fault
(NetworkFailure: the node retries); no match or several matches are the input's (InputError:
refused, quarantined), never guessed.
"""

from __future__ import annotations

from pathlib import Path

from node.convert.profile import Profile
from node.convert.reference import REFERENCE_KEYWORDS, ReferenceStudy, reference_from_dataset
from node.errors import InputError
from node.net.destination import Destination
from node.net.remote import find_studies

#: What --study-of may name: one study by its accession number or UID, or a patient's study
#: on a day (PS3.4 C.6.2.1 Study level keys).
QUERY_KEYS = ("AccessionNumber", "StudyInstanceUID", "PatientID", "StudyDate")


def parse_study_of(spec: str) -> dict[str, str]:
    """``KEY=VALUE[,KEY=VALUE]`` as query keys; ValueError with the accepted forms."""
    keys: dict[str, str] = {}
    for part in spec.split(","):
        key, sep, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or key not in QUERY_KEYS or not value or "*" in value or "?" in value:
            raise ValueError(f"--study-of {spec!r}: write AccessionNumber=..., "
                             "StudyInstanceUID=..., or PatientID=...,StudyDate=YYYYMMDD "
                             "(exact values, no wildcards)")
        keys[key] = value
    if not ({"AccessionNumber", "StudyInstanceUID"} & set(keys)) and not (
            {"PatientID", "StudyDate"} <= set(keys)):
        raise ValueError(f"--study-of {spec!r}: a PatientID needs a StudyDate to name one "
                         "study (or use AccessionNumber or StudyInstanceUID)")
    return keys


def study_of(dest: Destination, calling_ae: str, keys: dict[str, str],
             where: Path | str | None = None) -> ReferenceStudy:
    """The one study that ``dest`` finds for ``keys``. InputError (naming ``where``) for no
    match or several; NetworkFailure when the query cannot be made."""
    shown = ",".join(f"{k}={v}" for k, v in keys.items() if not k.startswith("Patient"))
    shown = shown or "the PatientID and StudyDate given"  # no patient data in messages
    studies = find_studies(dest, calling_ae, keys, REFERENCE_KEYWORDS)
    uids = {str(ds.get("StudyInstanceUID", "")) for ds in studies}
    if not studies:
        raise InputError(where, f"no study matches {shown} at {dest.address}: nothing to "
                         "attach to (check the value, or the PACS)")
    if len(uids) > 1:
        raise InputError(where, f"{len(uids)} studies match {shown} at {dest.address}; one "
                         "is wanted, none is guessed: name it by StudyInstanceUID")
    how = "QIDO-RS" if dest.web else "C-FIND"
    return reference_from_dataset(studies[0], f"{how} {shown} at {dest.address}")


def profile_query(profile: Profile, source: Path, sidecar: dict,
                  entities: dict[str, str]) -> dict[str, str] | None:
    """The query keys the profile's ``reference`` rule makes for one input (None without a
    rule); InputError when the input lacks the value."""
    rule = profile.reference
    if rule is None:
        return None
    kind, _, spec = rule.source.partition(":")
    if kind == "sidecar":
        value = sidecar.get(spec)
    else:
        from node.convert.mapping import render_template

        value = render_template(spec, entities)
    if value in (None, "", []) or isinstance(value, dict | list):
        raise InputError(source, f"profile {profile.name} attaches to the exam by "
                         f"{rule.query} from {rule.source}, and this input has no such value")
    return {rule.query: str(value).strip()}


def exam_for(config, dest: Destination | None, reference: Path | None,
             study_of_spec: str | None) -> ReferenceStudy | None:
    """The clinical exam a command's series join: a DICOM file or folder (``--reference``),
    or the one study found by ``--study-of KEY=VALUE,...`` at ``dest`` (where the series
    go; default the configured destination), or its ``query_destination``. None without
    either. ValueError for a malformed ``--study-of``; InputError, NetworkFailure as
    :func:`study_of`."""
    from node.convert.reference import read_reference

    if reference is not None:
        return read_reference(reference)
    if study_of_spec is None:
        return None
    keys = parse_study_of(study_of_spec)
    target = config.query_destination(dest or config.destination(None))
    return study_of(target, target.calling_ae_title or config.node.ae_title, keys)
