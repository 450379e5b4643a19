"""Resolve a mapping profile into DICOM attribute values for one source file.

Sources, later ones winning (issue "Converter core"): built-in defaults, the profile's static
values, the BIDS sidecar, BIDS entities of the file name, a reference DICOM of the clinical exam,
``--set`` overrides; then the profile's fallback templates fill what is still empty.

The patient's identity is the exception: PatientID, PatientName, PatientBirthDate, PatientSex
and IssuerOfPatientID (:data:`IDENTITY`) come together, as one group, from the most
authoritative source that names a PatientID (a reference DICOM, then the sidecar, then the
profile, then the file name), never one key from here and another from there. Sources that
disagree with the chosen one are reported, and refused under ``identity = "strict"``.

Each value is coerced and validated for its VR (:mod:`node.convert.vr`) and remembers where it
came from, so an error names the file and the key.

De-identification (``deidentify = true``) is applied here, where the sources are known: nothing
identifying from the sidecar or the file name can reach the output (PS3.15 Annex E's Basic
Profile spirit for the attributes we write).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
from dataclasses import dataclass
from typing import Any

from node import CONVERTER_NAME
from node.convert.profile import Profile
from node.convert.source import NiftiSource
from node.convert.vr import PATIENT_ATTRIBUTES, DicomValue, coerce, keyword_vr
from node.errors import ConfigError, MappingError

#: Attributes that identify a person, institution or visit. Under ``deidentify`` they are never
#: taken from the sidecar or the file name; PatientName/PatientID become the pseudonym.
IDENTIFYING = frozenset({
    "PatientName", "PatientID", "PatientBirthDate", "PatientBirthTime", "OtherPatientIDs",
    "OtherPatientNames", "PatientBirthName", "PatientMotherBirthName", "PatientAddress",
    "PatientTelephoneNumbers", "PatientAge", "PatientWeight", "PatientSize",
    "AccessionNumber", "InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName",
    "ReferringPhysicianName", "PerformingPhysicianName", "OperatorsName", "PhysiciansOfRecord",
    "NameOfPhysiciansReadingStudy", "RequestingPhysician", "StationName", "DeviceSerialNumber",
    "StudyID", "StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID",
})

#: Built-in defaults by modality: what a Type 1 attribute needs when no source gives a value.
_MR_DEFAULTS = {"ScanningSequence": "RM", "SequenceVariant": "NONE"}
_DEFAULTS: dict[str, dict[str, str]] = {"MR": _MR_DEFAULTS, "CT": {}, "OT": {}}

#: Defined terms of the MR code strings that dcm2niix writes into sidecars joined with "_"
#: ("GR_IR", "SK_SP_MP", "IR_PFP"); PS3.3 C.8.3.1. A value is split only when every part is a
#: known term, so a vendor term that itself holds "_" is never cut.
_JOINED_TERMS = {
    "ScanningSequence": {"SE", "IR", "GR", "EP", "RM"},
    "SequenceVariant": {"SK", "MTC", "SS", "TRSS", "SP", "MP", "OSP", "NONE"},
    "ScanOptions": {"PER", "RG", "CG", "PPG", "FC", "PFF", "PFP", "SP", "FS", "IR", "EP",
                    "SAT1", "SAT2", "SAT3", "SAT_GEMS", "FILTERED_GEMS"},
}


def split_joined(keyword: str, raw: Any) -> Any:
    """dcm2niix's ``"GR_IR"`` as ``["GR", "IR"]`` for the code strings it joins; the
    backslash form and JSON lists pass as they are."""
    terms = _JOINED_TERMS.get(keyword)
    if terms is None or not isinstance(raw, str) or "_" not in raw or "\\" in raw:
        return raw
    parts = _split_terms(raw.strip().upper(), terms)
    return parts if parts else raw


def _split_terms(text: str, terms: set[str]) -> list[str] | None:
    """``text`` as a sequence of known terms joined by "_" (terms may hold "_" themselves)."""
    if text in terms:
        return [text]
    pieces = text.split("_")
    for i in range(len(pieces) - 1, 0, -1):
        head = "_".join(pieces[:i])
        if head in terms:
            rest = _split_terms("_".join(pieces[i:]), terms)
            if rest is not None:
                return [head, *rest]
    return None


#: The Patient identity group (PS3.3 C.7.1.1): these keys come together from one source.
IDENTITY = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "IssuerOfPatientID")
#: Where an identity group can come from, the most authoritative first.
IDENTITY_SOURCES = ("reference", "sidecar", "profile", "file name")


_OPTIONAL = re.compile(r"\[([^\[\]]*)\]")
_FIELD = re.compile(r"\{(\w+)\}")


@dataclass(frozen=True)
class MappedValue:
    value: DicomValue
    source: str  # e.g. "sidecar sub-01_T1w.json:RepetitionTime"
    #: A stand-in rather than the attribute itself: a built-in default, a profile's static or
    #: fallback value, or a sidecar's substitute key (AcquisitionTime for StudyTime). Another
    #: series of the same study may replace it without a conflict (node.convert.study).
    weak: bool = False


Attributes = dict[str, MappedValue]


def render_template(template: str, values: dict[str, str]) -> str | None:
    """Fill ``{name}`` fields; ``[...]`` parts with a missing field are dropped.

    Returns None when a required (non-bracketed) field is missing.
    """

    def fill(text: str) -> str | None:
        missing = [f for f in _FIELD.findall(text) if not values.get(f)]
        if missing:
            return None
        return _FIELD.sub(lambda m: values[m.group(1)], text)

    def optional(m: re.Match[str]) -> str:
        return fill(m.group(1)) or ""

    return fill(_OPTIONAL.sub(optional, template))


def pseudonym(profile: Profile, kind: str, label: str) -> str:
    """Stable pseudonym: the profile's table first, else prefix + HMAC-SHA256(secret, label)."""
    if kind == "sub" and label in profile.pseudonyms:
        return profile.pseudonyms[label]
    secret = profile.secret()
    if not secret:
        env = profile.pseudonym_secret_env or "an environment variable"
        raise ConfigError(
            None,
            f"profile {profile.name!r} de-identifies but has no pseudonym key: set "
            f"{env} (or pseudonym_secret in the profile), or list the subject in "
            f"[profiles.{profile.name}.pseudonyms]",
        )
    digest = hmac.new(secret.encode(), f"{kind}:{label}".encode(), hashlib.sha256).hexdigest()
    prefix = profile.pseudonym_prefix if kind == "sub" else "S"
    return f"{prefix}{digest[:12].upper()}"


def _shift_date(value: str, days: int) -> str:
    day = dt.datetime.strptime(value[:8], "%Y%m%d").date() + dt.timedelta(days=days)
    return day.strftime("%Y%m%d")


class _Resolver:
    def __init__(self, source: NiftiSource, profile: Profile) -> None:
        self.source = source
        self.profile = profile
        self.attrs: Attributes = {}
        #: identity values by source (IDENTITY_SOURCES); one group is chosen at the end
        self.identity: dict[str, Attributes] = {k: {} for k in IDENTITY_SOURCES}

    def put(self, keyword: str, raw: Any, origin: str, error_path: Any, what: str,
            weak: bool = False, group: str | None = None) -> None:
        try:
            value = coerce(keyword, raw)
        except ValueError as exc:
            raise MappingError(error_path, f"{what} -> {keyword}: {exc}") from None
        target = self.identity[group] if group and keyword in IDENTITY else self.attrs
        target[keyword] = MappedValue(value, origin, weak)


def _entities(source: NiftiSource, profile: Profile) -> dict[str, str]:
    entities = dict(source.entities)
    if profile.deidentify:
        if "sub" in entities:
            entities["sub"] = pseudonym(profile, "sub", entities["sub"])
        if "ses" in entities:
            entities["ses"] = pseudonym(profile, "ses", entities["ses"])
    return entities


def resolve_attributes(
    source: NiftiSource,
    profile: Profile,
    overrides: dict[str, str] | None = None,
    modality: str | None = None,
    *,
    reference: dict[str, DicomValue] | None = None,
    warnings: list[str] | None = None,
) -> Attributes:
    """All mapped attributes for ``source`` under ``profile``; MappingError names the culprit.

    ``reference``: the Patient and General Study values of the clinical exam the series joins
    (:mod:`node.convert.reference`); they win over every source but ``--set``. Notes about
    the identity (sources that disagree) are appended to ``warnings``.
    """
    r = _Resolver(source, profile)
    modality = (modality or profile.modality).upper()
    for keyword, value in _DEFAULTS.get(modality, {}).items():
        r.put(keyword, value, "built-in default", None, "default", weak=True)
    for keyword, value in profile.static.items():
        r.put(keyword, value, f"profile {profile.name}", None, f"profile {profile.name} static",
              weak=True, group="profile")

    sidecar_name = source.sidecar_path.name if source.sidecar_path else "sidecar"
    for keyword, rule in profile.sidecar.items():
        if profile.deidentify and keyword in IDENTIFYING:
            continue
        key = next((k for k in rule.keys if source.sidecar.get(k) not in (None, "", [])), None)
        if key is None:
            continue
        raw = split_joined(keyword, source.sidecar[key])
        if rule.scale is not None:
            try:
                raw = _scaled(raw, rule.scale)
            except (ValueError, OverflowError) as exc:
                raise MappingError(
                    source.sidecar_path, f"key {key!r} -> {keyword}: {exc}"
                ) from None
        # a later key of the rule is a stand-in (AcquisitionDateTime for StudyDate)
        r.put(keyword, raw, f"sidecar {sidecar_name}:{key}", source.sidecar_path, f"key {key!r}",
              weak=key != rule.keys[0], group="sidecar")

    entities = _entities(source, profile)
    for keyword, template in profile.filename.items():
        if profile.deidentify and keyword in IDENTIFYING - {"PatientID", "PatientName", "StudyID"}:
            continue
        text = render_template(template, entities)
        if text:
            r.put(keyword, text, f"file name ({template})", source.path, f"file name {template!r}",
                  group="file name")

    for keyword, value in (reference or {}).items():
        if value not in ("", None, []):
            r.put(keyword, value, "reference DICOM", None, "reference", group="reference")

    if modality == "MR" and "RepetitionTime" not in r.attrs:
        tr = _header_repetition_ms(source)
        if tr is not None:  # a 4D file's time step: NIfTI pixdim[4] in its xyzt_units
            r.put("RepetitionTime", tr, "derived from the NIfTI header (pixdim[4])",
                  source.path, "pixdim[4]")

    for keyword, value in (overrides or {}).items():
        shown = f"--set {keyword}" if keyword in PATIENT_ATTRIBUTES else (
            f"--set {keyword}={value}")
        r.put(keyword, value, "--set", shown, "override")

    fallback_identity: Attributes = {}
    for keyword, template in profile.fallback.items():
        if keyword in r.attrs and r.attrs[keyword].value not in ("", []):
            continue
        if profile.deidentify and keyword in IDENTIFYING - {"PatientID", "PatientName"}:
            continue
        text = render_template(template, entities)
        if text:
            r.put(keyword, text, f"fallback ({template})", source.path, f"fallback {template!r}",
                  weak=True)
            if keyword in IDENTITY:
                fallback_identity[keyword] = r.attrs.pop(keyword)

    _choose_identity(r, fallback_identity, overrides or {}, warnings)
    if profile.deidentify:
        _deidentify(r, profile, entities, overrides or {})
    return r.attrs


def _filled(group: Attributes) -> Attributes:
    return {k: v for k, v in group.items() if v.value not in ("", None, [])}


def _choose_identity(r: _Resolver, fallback: Attributes, overrides: dict[str, str],
                     warnings: list[str] | None) -> None:
    """Put one identity group into ``r.attrs``: the most authoritative source that names a
    PatientID gives every identity key (a key it lacks stays empty, or takes the profile's
    fallback when the group is the file name's); ``--set`` keys win over it. Another source's
    differing value is a warning, or a MappingError under ``identity = "strict"``; a source
    whose values are not used is named, never silently mixed in (issue: mixed identity is a
    patient-merge hazard)."""
    groups = {name: _filled(r.identity[name]) for name in IDENTITY_SOURCES}
    chosen = next((name for name in IDENTITY_SOURCES if "PatientID" in groups[name]), None)
    if chosen is None and fallback.get("PatientID"):
        chosen = "file name"  # the profile explicitly derives one from the file
    group = dict(groups[chosen]) if chosen else {}
    if chosen == "file name" or chosen is None:
        for keyword, mapped in fallback.items():
            group.setdefault(keyword, mapped)
    notes: list[str] = []
    for name in IDENTITY_SOURCES:
        if name == chosen or not groups[name]:
            continue
        differ = [k for k, v in groups[name].items() if k in group and not group[k].weak
                  and _norm(v.value) != _norm(group[k].value)]
        unused = ", ".join(sorted(k for k in groups[name] if k not in group or group[k].weak))
        if differ:
            notes.append(f"the {name} gives a different {', '.join(differ)} than the {chosen}")
        elif unused:
            notes.append(f"the {name}'s {unused} not used: identity comes as one group from "
                         f"the {chosen or 'operator'}")
    conflicts = [n for n in notes if "different" in n]
    if conflicts and r.profile.identity == "strict":
        raise MappingError(r.source.path, "identity sources disagree (profile "
                           f"{r.profile.name} has identity = \"strict\"): "
                           + "; ".join(conflicts) + ". Make them agree, or name the patient "
                           "with --set PatientID=... (and PatientName=...)")
    if warnings is not None and chosen:
        warnings += [f"identity: {n}; the whole identity group comes from the {chosen}"
                     if "different" in n else f"identity: {n}" for n in notes]
    for keyword in IDENTITY:
        r.attrs.pop(keyword, None)
        if keyword in group:
            r.attrs[keyword] = group[keyword]
    for keyword in IDENTITY:
        if keyword in overrides:  # the operator's explicit word (applied before: re-apply)
            r.put(keyword, overrides[keyword], "--set", f"--set {keyword}", "override")


def _norm(value: DicomValue) -> str:
    """Identity values compared as a PACS would match them: case and padding aside."""
    text = "\\".join(map(str, value)) if isinstance(value, list) else str(value)
    return text.strip().upper()


def _header_repetition_ms(source: NiftiSource) -> float | None:
    """The volume repetition time of a 4D file in ms, from pixdim[4] and the time unit of
    xyzt_units (NIfTI-1: 8 s, 16 ms, 24 us); None for 3D or when not set."""
    if source.shape[3] <= 1:
        return None
    try:
        header = source.image.header
        step = float(header["pixdim"][4])
        unit = int(header["xyzt_units"]) & 0x38
    except (KeyError, IndexError, TypeError, ValueError):
        return None
    factor = {8: 1000.0, 16: 1.0, 24: 0.001}.get(unit)
    if factor is None or not step > 0 or step != step:
        return None
    return round(step * factor, 6)


def _scaled(raw: Any, scale: float) -> Any:
    if isinstance(raw, list):
        return [_scaled(v, scale) for v in raw]
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        try:
            raw = float(str(raw))
        except ValueError:
            raise ValueError(f"{raw!r} is not a number") from None
    return raw * scale


def _deidentify(r: _Resolver, profile: Profile, entities: dict[str, str], overrides: dict) -> None:
    """Pseudonymise the patient, shift or clear dates, clear the accession number."""
    attrs = r.attrs
    label = entities.get("sub")
    if label is None:
        # no subject in the file name: a pseudonym from the content keeps files apart
        label = pseudonym(profile, "sub", r.source.sha256)
    for keyword in ("PatientID", "PatientName"):
        if keyword not in overrides:
            attrs[keyword] = MappedValue(coerce(keyword, label), "pseudonym")
    for keyword in ("PatientBirthDate", "AccessionNumber"):
        attrs.pop(keyword, None)
    # Patient module C.7.1.1: say that identity was removed, and how (PS3.15 E.1)
    attrs["PatientIdentityRemoved"] = MappedValue("YES", "deidentify")
    method = f"{CONVERTER_NAME} profile {profile.name}: keyed pseudonyms, " + (
        "dates shifted" if profile.date_shift_days is not None else "dates removed"
    ) + ", identifying sidecar and file name values dropped"
    attrs["DeidentificationMethod"] = MappedValue(method[:64], "deidentify")
    # PS3.3 C.7.1.1: whether dates were kept shifted (MODIFIED) or removed (REMOVED)
    attrs["LongitudinalTemporalInformationModified"] = MappedValue(
        "MODIFIED" if profile.date_shift_days is not None else "REMOVED", "deidentify")
    for keyword in list(attrs):
        if keyword_vr(keyword) not in ("DA", "DT") or keyword in overrides:
            continue
        mapped = attrs[keyword]
        if profile.date_shift_days is None or not mapped.value:
            attrs.pop(keyword)
        else:
            shifted = _shift_date(str(mapped.value), profile.date_shift_days)
            value = shifted + str(mapped.value)[8:]
            attrs[keyword] = MappedValue(value, mapped.source + " (shifted)")


def value_of(attrs: Attributes, keyword: str, default: DicomValue = "") -> DicomValue:
    mapped = attrs.get(keyword)
    return mapped.value if mapped is not None else default
