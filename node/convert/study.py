"""One study, one set of study values: the rule that keeps a PACS from splitting or merging.

Every series that shares a StudyInstanceUID must carry the same Patient module (PS3.3 C.7.1.1)
and General Study module (C.7.2.1) values: a PACS files a study under the patient of whichever
series it saw first and shows the study's date, accession number and description from one of
them. :class:`StudyValues` is what one series says of its study; :func:`merge` reconciles two
of them (two series of one ``convert`` batch, or a new series with what the node's journal
remembers of the study). The rules:

* a series lacking a value takes the study's (a later series with fewer values takes them);
* a stand-in value (a profile default, AcquisitionTime standing in for StudyTime: ``weak``)
  yields to a real one, unless it was already sent; between two stand-ins the smaller wins,
  so the outcome does not depend on the order of the files;
* the identity group moves as a whole: a more authoritative source (reference DICOM, then
  sidecar, profile, file name; :data:`node.convert.mapping.IDENTITY_SOURCES`) wins over a
  less authoritative one, except over values already *sent*, which cannot be taken back;
* two real values that differ are a :class:`StudyConflict`: refused, never guessed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from node.convert.mapping import IDENTITY, IDENTITY_SOURCES, Attributes
from node.convert.uids import make_uid
from node.errors import MappingError

#: The values every series of a study carries alike: the Patient module's identity and the
#: General Study module (PS3.3 C.7.2.1) attributes a PACS shows at study level.
STUDY_KEYWORDS = IDENTITY + (
    "StudyDate", "StudyTime", "AccessionNumber", "StudyDescription",
    "ReferringPhysicianName", "StudyID",
)
#: Values that stand in for the start of the study: the earliest one is the study's.
_EARLIEST = ("StudyDate", "StudyTime")

#: Where an identity group came from, by its PatientID's recorded source (lower: better).
_RANKS = {"--set": 0, "reference": 0, "sidecar": 1, "profile": 2}
#: Rank of an identity derived from the file name (or a pseudonym of it).
FILE_NAME_RANK = IDENTITY_SOURCES.index("file name")


class StudyConflict(MappingError):
    """Two series of one study disagree on a study value: refused, never guessed."""


def _text(value) -> str:
    if isinstance(value, list | tuple):
        return "\\".join(str(v) for v in value)
    return "" if value is None else str(value)


def identity_rank(attrs: Attributes) -> int:
    """How authoritative this series' identity group is (0: an operator or a reference)."""
    mapped = attrs.get("PatientID")
    if mapped is None:
        return len(IDENTITY_SOURCES)
    for prefix, rank in _RANKS.items():
        if mapped.source.startswith(prefix):
            return rank
    return FILE_NAME_RANK


@dataclass(frozen=True)
class StudyValues:
    """What one series (or the journal's record of a study) says of its study."""

    study_uid: str
    values: dict[str, str] = field(default_factory=dict)  # keyword -> DICOM text, non-empty
    weak: frozenset[str] = frozenset()
    identity_rank: int = len(IDENTITY_SOURCES)
    sent: bool = False  # already delivered: nothing here can be taken back

    @classmethod
    def of(cls, study_uid: str, attrs: Attributes) -> StudyValues:
        values = {k: _text(attrs[k].value) for k in STUDY_KEYWORDS
                  if k in attrs and _text(attrs[k].value).strip()}
        weak = frozenset(k for k in values if attrs[k].weak)
        return cls(study_uid, values, weak, identity_rank(attrs))

    def as_json(self) -> dict:
        return {"values": self.values, "weak": sorted(self.weak),
                "identity_rank": self.identity_rank}

    @classmethod
    def from_json(cls, study_uid: str, raw: dict, sent: bool = True) -> StudyValues:
        return cls(study_uid, dict(raw.get("values", {})), frozenset(raw.get("weak", ())),
                   int(raw.get("identity_rank", len(IDENTITY_SOURCES))), sent)


def merge(known: StudyValues, new: StudyValues, where=None) -> StudyValues:
    """The study's values once ``new`` joins ``known`` (StudyConflict when they cannot agree).

    Symmetric and associative for unsent values, so a batch folds its series in any order.
    """
    values: dict[str, str] = {}
    weak: set[str] = set()
    conflicts: list[str] = []
    rank = min(known.identity_rank, new.identity_rank)
    skip: set[str] = set()
    if known.identity_rank != new.identity_rank and "PatientID" in known.values and (
            "PatientID" in new.values):
        better = known if known.identity_rank < new.identity_rank else new
        if better is new and known.sent and any(
                known.values.get(k) != new.values.get(k) for k in IDENTITY if k in known.values):
            conflicts.append("the patient identity (the study's earlier series were sent with "
                             f"one from the {_source_name(known.identity_rank)}, this series' "
                             f"{_source_name(new.identity_rank)} gives another)")
        else:
            for k in IDENTITY:  # the identity group moves as a whole
                if k in better.values:
                    values[k] = better.values[k]
            skip = set(IDENTITY)
    for k in STUDY_KEYWORDS:
        if k in skip or conflicts and k in IDENTITY:
            continue
        a, b = known.values.get(k), new.values.get(k)
        if a is None or b is None:
            value = a if b is None else b
            if value is not None:
                values[k] = value
                if k in (known.weak if b is None else new.weak):
                    weak.add(k)
            continue
        a_weak, b_weak = k in known.weak, k in new.weak
        if a == b:
            values[k] = a
            if a_weak and b_weak:
                weak.add(k)
        elif a_weak and not b_weak:
            if known.sent:  # the PACS has the stand-in already: the study keeps it
                values[k] = a
                weak.add(k)
            else:
                values[k] = b
        elif b_weak and not a_weak:
            values[k] = a
        elif a_weak and b_weak:
            values[k] = a if known.sent else min(a, b)
            weak.add(k)
        else:
            conflicts.append(k)
    if conflicts:
        raise StudyConflict(where, f"study {known.study_uid}: this series disagrees with the "
                            f"study's other series on {', '.join(conflicts)}; one study carries "
                            "one set of patient and study values (fix the sidecar or the "
                            "profile, or --set the values)")
    return StudyValues(known.study_uid, values, frozenset(weak), rank, known.sent or new.sent)


def _source_name(rank: int) -> str:
    return IDENTITY_SOURCES[rank] if rank < len(IDENTITY_SOURCES) else "operator"


def apply(attrs: Attributes, study: StudyValues) -> Attributes:
    """``attrs`` carrying the study's values (a series takes what its study says)."""
    from node.convert.mapping import MappedValue
    from node.convert.vr import coerce

    out = dict(attrs)
    for k in STUDY_KEYWORDS:
        value = study.values.get(k)
        current = _text(attrs[k].value) if k in attrs else ""
        if value is None:
            if k in IDENTITY and current and study.identity_rank < identity_rank(attrs):
                out.pop(k)  # the study's better identity group has no such value
            continue
        if value != current:
            out[k] = MappedValue(coerce(k, value), f"study {study.study_uid}: the value its "
                                 "other series carry", k in study.weak)
    return out


#: Numbers given when no source names a SeriesNumber: above what scanners use for the
#: clinical series of an exam (1-999), so a derived series never takes a clinical one's.
SERIES_NUMBER_FIRST, SERIES_NUMBER_SPAN = 1000, 9000


def series_number(series_uid: str, taken: set[int]) -> int:
    """A SeriesNumber derived from the Series Instance UID (stable across runs), moved on
    past the numbers ``taken`` by the study's other series (distinct within the study)."""
    start = int(make_uid("2.25", "series-number", series_uid).rsplit(".", 1)[1])
    for step in range(SERIES_NUMBER_SPAN):
        number = SERIES_NUMBER_FIRST + (start + step) % SERIES_NUMBER_SPAN
        if number not in taken:
            return number
    raise MappingError(None, "the study has no free SeriesNumber left")


@dataclass(frozen=True)
class KnownStudy:
    """A study as reconciled beforehand (one ``convert`` batch): the values its series carry
    and the SeriesNumber of each series that has none of its own. A picklable StudyHook."""

    values: StudyValues
    numbers: dict[str, int] = field(default_factory=dict)

    def __call__(self, own: StudyValues, series_uid: str, own_number: int | None
                 ) -> tuple[StudyValues, int | None]:
        return self.values, own_number if own_number is not None else self.numbers.get(
            series_uid)


@dataclass(frozen=True)
class Member:
    """One series of a batch, as :func:`reconcile` needs it."""

    where: object  # the input's path, for messages
    study: StudyValues
    series_uid: str
    series_number: int | None  # its own, when a source names one


def reconcile(members: list[Member]) -> list[KnownStudy | StudyConflict]:
    """Each batch member's study, reconciled with every other member of the same study (in
    any order, the same result); a study whose series cannot agree refuses all of them."""
    by_study: dict[str, list[int]] = {}
    for i, m in enumerate(members):
        by_study.setdefault(m.study.study_uid, []).append(i)
    out: list[KnownStudy | StudyConflict] = [None] * len(members)  # type: ignore[list-item]
    for indices in by_study.values():
        values = members[indices[0]].study
        try:
            for i in indices[1:]:
                values = merge(values, members[i].study, members[i].where)
        except StudyConflict as exc:
            others = len(indices) - 1
            for i in indices:
                out[i] = StudyConflict(members[i].where, f"{exc.reason}; all {others + 1} "
                                       "series of this study in the batch are refused")
            continue
        taken: set[int] = {n for i in indices if (n := members[i].series_number) is not None}
        numbers: dict[str, int] = {}
        for i in sorted(indices, key=lambda i: members[i].series_uid):
            m = members[i]
            if m.series_number is None and m.series_uid not in numbers:
                numbers[m.series_uid] = series_number(m.series_uid, taken)
                taken.add(numbers[m.series_uid])
        known = KnownStudy(values, numbers)
        for i in indices:
            out[i] = known
    return out
