"""Metadata mapping profiles: what a converted series says, and where each value comes from.

The built-in profiles live in ``profiles.toml`` beside this module; a config file's
``[profiles.NAME]`` tables are merged over them key by key, and a profile may ``extends``
another. Validation raises ValueError naming the table and the key; the settings loader adds
the file name.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

MODALITIES = ("MR", "CT", "OT")
#: The profile used when none is named ([node].default_profile defaults to it).
DEFAULT_PROFILE = "bids-mr"

_PROFILE_KEYS = {
    "description", "extends", "modality", "derived", "nonfinite", "deidentify",
    "pseudonym_prefix", "pseudonym_secret", "pseudonym_secret_env", "date_shift_days",
    "static", "sidecar", "filename", "fallback", "pseudonyms", "identity", "reference",
    "same_frame_of_reference", "iod", "labels", "units", "rgb_last_dimension", "results",
}
#: The objects a NIfTI can become (issue "Clinical-grade objects"); "auto" makes a SEG of a
#: BIDS _dseg/_mask/_probseg file and an image of anything else.
IODS = ("image", "enhanced", "seg", "pmap", "auto")
#: Lossless encodings only: a clinical archive never gets lossy pixels from us.
COMPRESSIONS = ("none", "rle", "jpeg-ls", "jpeg2000")
IDENTITY_MODES = ("warn", "strict")
#: What ``reference = { query = ... }`` may query by (a C-FIND at STUDY level, PS3.4 C.6.2).
REFERENCE_KEYS = ("AccessionNumber", "StudyInstanceUID", "PatientID")

@dataclass(frozen=True)
class SidecarRule:
    """Where an attribute comes from in the sidecar: the first present key, times ``scale``."""

    keys: tuple[str, ...]
    scale: float | None = None


@dataclass(frozen=True)
class ReferenceRule:
    """How the node finds the clinical exam a series joins: a C-FIND for ``query`` (a Study
    level key) whose value comes from ``source`` ("sidecar:Key" or "filename:{template}")."""

    query: str
    source: str


@dataclass(frozen=True)
class Profile:
    """A metadata mapping profile (see ``node/convert/profiles.toml`` for the format)."""

    name: str
    description: str = ""
    modality: str = "MR"
    derived: bool = True
    nonfinite: str = "background"
    deidentify: bool = False
    pseudonym_prefix: str = "SUBJ"
    pseudonym_secret: str | None = field(default=None, repr=False)
    pseudonym_secret_env: str | None = None
    date_shift_days: int | None = None
    static: dict[str, Any] = field(default_factory=dict)
    sidecar: dict[str, SidecarRule] = field(default_factory=dict)
    filename: dict[str, str] = field(default_factory=dict)
    fallback: dict[str, str] = field(default_factory=dict)
    pseudonyms: dict[str, str] = field(default_factory=dict)
    #: "warn": identity sources that disagree are reported, the most authoritative one is
    #: used; "strict": they are refused (the node quarantines).
    identity: str = "warn"
    reference: ReferenceRule | None = None
    #: the NIfTI is in the reference exam's space (a segmentation drawn on its T1): the series
    #: shares the reference's FrameOfReferenceUID.
    same_frame_of_reference: bool = False
    iod: str = "image"
    #: segment names of a label map by value (a BIDS _dseg.tsv beside the file wins)
    labels: dict[int, str] = field(default_factory=dict)
    #: UCUM units of a parametric map's values (a sidecar's "Units" wins), e.g. "mm2/s"
    units: str | None = None
    #: a last dimension of 3 holds R, G, B (0..255): a colour image, not 3 volumes
    rgb_last_dimension: bool = False
    #: what a SEG also brings (node.convert.results): overlay, measurements, report
    results: tuple[str, ...] = ()

    def secret(self) -> str | None:
        """The pseudonym key: from the environment variable if set, else from the config."""
        if self.pseudonym_secret_env and os.environ.get(self.pseudonym_secret_env):
            return os.environ[self.pseudonym_secret_env]
        return self.pseudonym_secret or None


def builtin_profiles_raw() -> dict[str, Any]:
    text = resources.files("node.convert").joinpath("profiles.toml").read_text(encoding="utf-8")
    return tomllib.loads(text)


def builtin_profile(name: str = DEFAULT_PROFILE) -> Profile:
    """A built-in profile by name, as shipped (no config file merged in)."""
    return profiles_from_raw(builtin_profiles_raw()["profiles"])[name]


def merge_tables(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_tables(out[key], value)
        else:
            out[key] = value
    return out


def _sidecar_rule(where: str, keyword: str, spec: Any) -> SidecarRule:
    if isinstance(spec, str):
        return SidecarRule((spec,))
    if isinstance(spec, list) and spec and all(isinstance(s, str) for s in spec):
        return SidecarRule(tuple(spec))
    if isinstance(spec, dict) and set(spec) <= {"key", "scale"} and "key" in spec:
        keys = spec["key"]
        rule = _sidecar_rule(where, keyword, keys)
        scale = spec.get("scale")
        if scale is not None and (isinstance(scale, bool) or not isinstance(scale, int | float)):
            raise ValueError(f"{where}.{keyword}: scale must be a number")
        return SidecarRule(rule.keys, float(scale) if scale is not None else None)
    raise ValueError(
        f'{where}.{keyword}: write "Key", ["Key1", "Key2"] or {{ key = "Key", scale = 1000.0 }}'
    )


def _build_profile(name: str, raw: dict[str, Any]) -> Profile:
    """Validate one profile whose ``extends`` chain is already merged in."""
    from node.convert.vr import coerce, keyword_vr

    where = f"[profiles.{name}]"
    check_table(where, raw, _PROFILE_KEYS)
    modality = str(raw.get("modality", "MR")).upper()
    if modality not in MODALITIES:
        raise ValueError(f"{where}.modality: {modality!r} is not one of {', '.join(MODALITIES)}")
    nonfinite = raw.get("nonfinite", "background")
    if nonfinite not in ("background", "error"):
        raise ValueError(f'{where}.nonfinite: write "background" or "error", not {nonfinite!r}')
    identity = raw.get("identity", "warn")
    if identity not in IDENTITY_MODES:
        raise ValueError(f'{where}.identity: write "warn" or "strict", not {identity!r}')
    reference = _reference_rule(where, raw.get("reference"))
    iod = raw.get("iod", "image")
    if iod not in IODS:
        raise ValueError(f"{where}.iod: write one of {', '.join(IODS)}, not {iod!r}")
    labels = raw.get("labels", {})
    if isinstance(labels, str):  # a FreeSurfer-style colour table (FreeSurferColorLUT.txt)
        labels = freesurfer_lut(labels, where)
    if not isinstance(labels, dict) or not all(
            str(k).isdigit() and int(k) > 0 and isinstance(v, str) and v.strip()
            for k, v in labels.items()):
        raise ValueError(f'{where}.labels: a table of label value = "name", e.g. 1 = "tumour", '
                         "or the path of a FreeSurfer-style lookup table")
    results = check_results(f"{where}.results", raw.get("results", []))
    units = raw.get("units")
    if units is not None and (not isinstance(units, str) or not units.strip()):
        raise ValueError(f'{where}.units: a UCUM unit, e.g. "mm2/s" or "1"')
    for flag in ("derived", "deidentify", "same_frame_of_reference", "rgb_last_dimension"):
        if flag in raw and not isinstance(raw[flag], bool):
            raise ValueError(f"{where}.{flag}: write true or false")
    shift = raw.get("date_shift_days")
    if shift is not None and (isinstance(shift, bool) or not isinstance(shift, int)):
        raise ValueError(f"{where}.date_shift_days: write a whole number of days")
    tables: dict[str, dict[str, Any]] = {}
    for table in ("static", "sidecar", "filename", "fallback", "pseudonyms"):
        value = raw.get(table, {})
        if not isinstance(value, dict):
            raise ValueError(f"{where}.{table} must be a table")
        tables[table] = value
    for table in ("static", "sidecar", "filename", "fallback"):
        for keyword in tables[table]:
            try:
                keyword_vr(keyword)
            except ValueError as exc:
                raise ValueError(f"[profiles.{name}.{table}] {exc}") from None
    for keyword, value in tables["static"].items():
        try:
            coerce(keyword, value)
        except ValueError as exc:
            raise ValueError(f"[profiles.{name}.static] {keyword}: {exc}") from None
    for table in ("filename", "fallback"):
        for keyword, template in tables[table].items():
            if not isinstance(template, str):
                raise ValueError(f"[profiles.{name}.{table}] {keyword}: write a template string")
    return Profile(
        name=name,
        description=str(raw.get("description", "")),
        modality=modality,
        derived=raw.get("derived", True),
        nonfinite=nonfinite,
        deidentify=raw.get("deidentify", False),
        pseudonym_prefix=str(raw.get("pseudonym_prefix", "SUBJ")),
        pseudonym_secret=raw.get("pseudonym_secret"),
        pseudonym_secret_env=raw.get("pseudonym_secret_env"),
        date_shift_days=shift,
        static=dict(tables["static"]),
        sidecar={
            k: _sidecar_rule(f"[profiles.{name}.sidecar]", k, v)
            for k, v in tables["sidecar"].items()
        },
        filename=dict(tables["filename"]),
        fallback=dict(tables["fallback"]),
        pseudonyms={str(k): str(v) for k, v in tables["pseudonyms"].items()},
        identity=identity,
        reference=reference,
        same_frame_of_reference=raw.get("same_frame_of_reference", False),
        iod=iod,
        labels={int(k): str(v) for k, v in labels.items()},
        units=units,
        rgb_last_dimension=raw.get("rgb_last_dimension", False),
        results=results,
    )


#: What a SEG may bring besides itself (node.convert.results).
RESULT_KINDS = ("overlay", "measurements", "report")


def check_results(where: str, value: Any) -> tuple[str, ...]:
    """``results = ["overlay", "measurements", "report"]`` (a ValueError naming the key)."""
    if not isinstance(value, list) or not all(v in RESULT_KINDS for v in value):
        raise ValueError(f"{where}: a list of {', '.join(RESULT_KINDS)}, not {value!r}")
    return tuple(dict.fromkeys(value))


def freesurfer_lut(path: str, where: str = "labels") -> dict[int, str]:
    """Label names from a FreeSurfer-style lookup table: lines of ``index name R G B A``,
    ``#`` comments (FreeSurferColorLUT.txt); label 0 (unknown) is the background."""
    lut = os.path.expanduser(path)
    try:
        if os.path.getsize(lut) > 4 * 1024**2:
            raise ValueError(f"{where}: {path} is too large for a lookup table")
        with open(lut, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError as exc:
        raise ValueError(f"{where}: cannot read the lookup table {path} ({exc.strerror})") from None
    names: dict[int, str] = {}
    for line in lines:
        parts = line.split("#", 1)[0].split()
        if len(parts) >= 2 and parts[0].isdigit() and int(parts[0]) > 0:
            names[int(parts[0])] = parts[1]
    if not names:
        raise ValueError(f"{where}: {path} has no 'index name R G B A' lines")
    return names


def _reference_rule(where: str, raw: Any) -> ReferenceRule | None:
    if raw is None:
        return None
    check_table(f"{where}.reference", raw, {"query", "from"})
    query, source = raw.get("query"), raw.get("from")
    if query not in REFERENCE_KEYS:
        raise ValueError(f"{where}.reference.query: write one of {', '.join(REFERENCE_KEYS)}")
    if not isinstance(source, str) or not source.startswith(("sidecar:", "filename:")):
        raise ValueError(f'{where}.reference.from: write "sidecar:Key" or '
                         '"filename:{template}", for example "sidecar:AccessionNumber"')
    return ReferenceRule(query, source)


def _resolved_raw(name: str, all_raw: dict[str, Any], seen: tuple = ()) -> dict[str, Any]:
    """The profile's table merged over its ``extends`` chain (the child's keys win)."""
    raw = all_raw[name]
    parent = raw.get("extends")
    if parent is None:
        return raw
    if parent in seen or parent == name or parent not in all_raw:
        raise ValueError(f"[profiles.{name}]: extends {parent!r} is unknown or makes a cycle")
    base = _resolved_raw(parent, all_raw, (*seen, name))
    merged = merge_tables({k: v for k, v in base.items() if k != "description"}, raw)
    merged.pop("extends", None)
    return merged


def profiles_from_raw(tables: Any) -> dict[str, Profile]:
    """Every ``[profiles.NAME]`` table (built-ins already merged in), validated."""
    if not isinstance(tables, dict):
        raise ValueError("[profiles] must hold tables like [profiles.NAME]")
    profiles: dict[str, Profile] = {}
    for name, table in tables.items():
        if not isinstance(table, dict):
            raise ValueError(f"[profiles.{name}] must be a table")
        profiles[name] = _build_profile(name, _resolved_raw(name, tables))
    return profiles


def check_table(where: str, raw: Any, allowed: set[str]) -> None:
    """A table with only known keys, or a ValueError naming the table and the strangers."""
    if not isinstance(raw, dict):
        raise ValueError(f"{where} must be a table")
    unknown = set(raw) - allowed
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")


