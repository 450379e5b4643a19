"""Coerce metadata values into valid DICOM values for their Value Representation (PS3.5 6.2).

Mapping sources (profiles, BIDS sidecars, file names, ``--set``) give JSON/TOML scalars,
lists or strings. Each is turned into what pydicom expects for the attribute's VR and checked
against the VR's rules *before* any file is written, so a bad value is reported with its source
instead of producing an invalid object (or a PACS rejection much later).
"""

from __future__ import annotations

import datetime as dt
import math
import re
from typing import Any

from pydicom import config as pydicom_config
from pydicom.datadict import dictionary_VM, dictionary_VR, tag_for_keyword
from pydicom.valuerep import format_number_as_ds, validate_value

DicomValue = str | int | float | list[str] | list[int] | list[float]

_ISO_DATE = re.compile(r"^(\d{4})-?(\d{2})-?(\d{2})$")
_ISO_TIME = re.compile(r"^(\d{2}):?(\d{2})(?::?(\d{2})(?:\.(\d+))?)?$")
_STRING_VRS = {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC",
               "UI", "UR", "UT"}
_INT_VRS = {"US", "SS", "UL", "SL", "UV", "SV"}
_FLOAT_VRS = {"FL", "FD"}


def keyword_vr(keyword: str) -> str:
    """The VR of a DICOM keyword; ValueError for an unknown keyword."""
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise ValueError(f"{keyword!r} is not a DICOM attribute keyword")
    return dictionary_VR(tag)


def is_multi_valued(keyword: str) -> bool:
    tag = tag_for_keyword(keyword)
    return tag is not None and dictionary_VM(tag) not in ("1",)


def _number(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a number")
    try:
        number = float(value) if isinstance(value, int | float) else float(str(value).strip())
    except OverflowError:
        raise ValueError("the number is too large") from None
    except ValueError:
        raise ValueError(f"{value!r} is not a number") from None
    if not math.isfinite(number):
        raise ValueError(f"{value!r} is not a finite number")
    return number


def _date(value: Any) -> str:
    text = str(value).strip()
    head = text.split("T")[0].split(" ")[0]
    m = _ISO_DATE.match(head)
    if not m:
        raise ValueError(f"{value!r} is not a date (YYYYMMDD or YYYY-MM-DD)")
    try:
        dt.date(int(m.group(1)), int(m.group(2)), int(m.group(3)))
    except ValueError:
        raise ValueError(f"{value!r} is not a valid calendar date") from None
    return m.group(1) + m.group(2) + m.group(3)


def _time(value: Any) -> str:
    text = str(value).strip()
    if "T" in text:
        text = text.split("T", 1)[1]
    text = re.sub(r"(Z|[+-]\d{2}:?\d{2})$", "", text)
    m = _ISO_TIME.match(text)
    if not m:
        raise ValueError(f"{value!r} is not a time (HH:MM:SS[.ffffff] or HHMMSS[.ffffff])")
    hh, mm, ss, frac = m.group(1), m.group(2), m.group(3) or "00", m.group(4)
    if int(hh) > 23 or int(mm) > 59 or int(ss) > 60:
        raise ValueError(f"{value!r} is not a valid time of day")
    return f"{hh}{mm}{ss}" + (f".{frac[:6]}" if frac else "")


def _one(vr: str, value: Any) -> Any:
    if vr == "DS":
        return format_number_as_ds(_number(value))
    if vr == "IS":
        number = _number(value)
        if number != int(number):
            raise ValueError(f"{value!r} is not a whole number")
        return str(int(number))
    if vr in _INT_VRS:
        number = _number(value)
        if number != int(number):
            raise ValueError(f"{value!r} is not a whole number")
        return int(number)
    if vr in _FLOAT_VRS:
        return _number(value)
    if vr == "DA":
        return _date(value)
    if vr == "TM":
        return _time(value)
    if vr in _STRING_VRS:
        if isinstance(value, dict | list):
            raise ValueError(f"{value!r} is not a single text value")
        if isinstance(value, bool):
            return "YES" if value else "NO"
        if isinstance(value, float) and value == int(value):
            value = int(value)
        return str(value).strip()
    raise ValueError(f"attributes of VR {vr} cannot be mapped from text")


#: Attributes whose values identify a patient: an error about one names the key and the
#: rule, never the value (it would reach logs, status and quarantine reasons).
PATIENT_ATTRIBUTES = frozenset({
    "PatientName", "PatientID", "PatientBirthDate", "PatientBirthTime", "PatientSex",
    "OtherPatientIDs", "OtherPatientNames", "PatientBirthName", "PatientMotherBirthName",
    "PatientAddress", "PatientTelephoneNumbers", "PatientAge", "PatientWeight", "PatientSize",
    "IssuerOfPatientID", "EthnicGroup", "PatientComments", "AccessionNumber",
})


def coerce(keyword: str, value: Any) -> DicomValue:
    """Return ``value`` as a valid value for ``keyword``; ValueError says why it is not.

    Lists (and backslash-separated strings) become multi-valued attributes where the VM allows.
    For a patient attribute the error never repeats the value.
    """
    try:
        return _coerce(keyword, value)
    except ValueError as exc:
        if keyword not in PATIENT_ATTRIBUTES:
            raise
        raise ValueError(_redacted(str(exc), value)) from None


def _redacted(message: str, value: Any) -> str:
    """``message`` with every rendering of ``value`` (and its items) replaced."""
    items = value if isinstance(value, list) else [value]
    if isinstance(value, str):
        items = [value, *value.split("\\")]
    for item in sorted({str(v) for v in items if str(v).strip()}, key=len, reverse=True):
        for shown in {repr(item), repr(item.strip()), f'"{item}"'}:  # values are quoted
            message = message.replace(shown, "the value")
        if len(item.strip()) >= 6:  # a long value may also stand unquoted
            message = message.replace(item.strip(), "the value")
    return message + " (the value is not shown: it is patient data)"


def _coerce(keyword: str, value: Any) -> DicomValue:
    vr = keyword_vr(keyword)
    if vr == "SQ":
        raise ValueError(f"{keyword} is a sequence and cannot be mapped from a single value")
    values = value if isinstance(value, list) else None
    if values is None and isinstance(value, str) and "\\" in value and vr in _STRING_VRS:
        values = value.split("\\")
    if values is not None:
        if not is_multi_valued(keyword) and len(values) != 1:
            raise ValueError(f"{keyword} takes one value, got {len(values)}")
        out = [_one(vr, v) for v in values]
        for v in out:
            validate_value(vr, v, pydicom_config.RAISE)
        return out[0] if len(out) == 1 and not is_multi_valued(keyword) else out
    result = _one(vr, value)
    validate_value(vr, result, pydicom_config.RAISE)
    return result
