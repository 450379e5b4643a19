"""Routing: which destinations a file goes to, in which form, and why (issue 23).

A route is a condition and a list of destinations, written in the config as a small
declarative language (``[[route]]`` tables), never Python: nothing that arrives in an inbox
(a file name, a sidecar) can make the node run code. A condition tests what a NIfTI pipeline
knows of a file before it is converted:

- its BIDS entities (``sub``, ``ses``, ``task``, ``acq``, ``run``, ``suffix``, ``desc``,
  ``space``, ... from the file name),
- its BIDS ``datatype`` folder (``anat``, ``func``, ``dwi``, or ``derivatives/<pipeline>/anat``
  for a derivative), matched as a glob (``derivatives/*``),
- keys of its BIDS sidecar (``sidecar.Manufacturer``),
- the ``object`` it is (``image``; ``seg`` for a label map; ``pmap`` for a parametric map;
  ``dicom`` for a DICOM file sent as it is),
- the ``watch`` folder it came from.

A value is an equality (a string or a number), a list (any of), or a table: ``{ in = [...] }``,
``{ regex = "..." }`` (searched), ``{ present = true|false }``, ``{ not = <value> }``. Routes
are tried in order; the first that matches decides, unless it says ``continue = true``, in
which case later ones add their destinations too. A route without ``when`` matches
everything (a fallback, last). A file that no route matches is quarantined with the reason.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: BIDS entities a condition may test (BIDS 1.9 appendix "Entities"), and the suffix.
ENTITIES = frozenset({
    "sub", "ses", "sample", "task", "tracksys", "acq", "ce", "trc", "stain", "rec", "dir",
    "run", "mod", "echo", "flip", "inv", "mt", "part", "proc", "hemi", "space", "split",
    "recording", "chunk", "seg", "res", "den", "label", "desc", "suffix"})
OBJECTS = ("image", "seg", "pmap", "dicom")
PRIORITIES = {"normal": 0, "urgent": 1}
#: The keys a condition may name besides the entities.
_OTHER_KEYS = ("datatype", "object", "watch", "sidecar")
#: What a route destination may say about the form its copy takes.
FORM_KEYS = ("iod", "compression", "labelmap", "results")
_ROUTE_KEYS = {"name", "when", "to", "continue", "priority", "profile"}
_TARGET_KEYS = {"destination", "profile", *FORM_KEYS}
#: A sidecar value longer than this is not searched by a regular expression (a hostile
#: sidecar must not make a route's pattern run for minutes).
_MAX_TESTED = 4096


class _Missing:
    def __repr__(self) -> str:
        return "(absent)"


MISSING = _Missing()


@dataclass(frozen=True)
class Test:
    """One condition on one fact of a file: ``key`` is an entity, ``datatype``, ``object``,
    ``watch`` or ``sidecar.<Key>``."""

    key: str
    any_of: tuple[Any, ...] = ()
    regex: re.Pattern[str] | None = None
    present: bool | None = None
    negate: bool = False
    glob: bool = False  # datatype and watch values are glob patterns

    def check(self, value: Any) -> bool:
        if self.present is not None:
            return (value is not MISSING) == self.present
        if value is MISSING:
            hit = False
        elif self.regex is not None:
            text = value if isinstance(value, str) else json.dumps(value)
            hit = len(text) <= _MAX_TESTED and self.regex.search(text) is not None
        else:
            hit = any(_same(value, want, self.glob) for want in self.any_of)
        return hit != self.negate

    def describe(self) -> str:
        if self.present is not None:
            return f"{self.key} is {'present' if self.present else 'absent'}"
        if self.regex is not None:
            what = f"matches /{self.regex.pattern}/"
        elif len(self.any_of) == 1:
            what = f"= {self.any_of[0]!r}"
        else:
            what = f"in {list(self.any_of)!r}"
        return f"{self.key} {'not ' if self.negate else ''}{what}"


def _same(value: Any, want: Any, glob: bool) -> bool:
    if isinstance(want, bool) or isinstance(value, bool):
        return value is want
    if isinstance(want, int | float) and isinstance(value, int | float):
        return float(value) == float(want)
    if isinstance(want, str) and isinstance(value, str):
        return fnmatch.fnmatchcase(value, want) if glob else value == want
    return False


@dataclass(frozen=True)
class Target:
    """One destination of a route, and the form its copy takes there."""

    destination: str
    profile: str | None = None
    iod: str | None = None
    compression: str | None = None
    labelmap: bool | None = None
    results: tuple[str, ...] | None = None

    def form(self) -> dict[str, Any]:
        """What this target sets of the destination's form (iod, compression, labelmap)."""
        return {k: getattr(self, k) for k in FORM_KEYS if getattr(self, k) is not None}


@dataclass(frozen=True)
class Route:
    name: str
    tests: tuple[Test, ...]
    targets: tuple[Target, ...]
    cont: bool = False
    priority: int = 0
    profile: str | None = None


@dataclass(frozen=True)
class Facts:
    """What routing knows of one file, before it is converted."""

    entities: dict[str, str]
    datatype: str
    object: str
    watch: Path
    sidecar: dict[str, Any] | None = None

    def value(self, key: str) -> Any:
        if key.startswith("sidecar."):
            if self.sidecar is None:
                return MISSING
            return self.sidecar.get(key[len("sidecar."):], MISSING)
        if key == "datatype":
            return self.datatype if self.datatype else MISSING
        if key == "object":
            return self.object
        if key == "watch":
            return str(self.watch)
        return self.entities.get(key, MISSING)


@dataclass(frozen=True)
class Chosen:
    """One job to make: a destination, the profile and the form of its copy."""

    destination: str
    profile: str
    form: dict[str, Any] = field(default_factory=dict)
    route: str = ""

    @property
    def form_text(self) -> str | None:
        """The form as the journal keeps it (canonical JSON), None when it is the
        destination's own."""
        return json.dumps(self.form, sort_keys=True) if self.form else None


@dataclass(frozen=True)
class Decision:
    """Where a file goes: its jobs, their priority, and the reasons, line by line."""

    chosen: tuple[Chosen, ...]
    priority: int
    why: tuple[str, ...]

    @property
    def refused(self) -> str | None:
        """The reason a file that goes nowhere is quarantined."""
        if self.chosen:
            return None
        return "no route: " + "; ".join(self.why)


def datatype_of(path: Path, root: Path) -> str:
    """The BIDS datatype folder of ``path`` inside the watched folder ``root``: ``anat``,
    ``func``... for raw data, ``derivatives/<pipeline>/<datatype>`` for a derivative; empty
    when the file is not in a BIDS layout."""
    path, root = Path(os.path.abspath(path)), Path(os.path.abspath(root))
    try:
        parts = path.relative_to(root).parts[:-1]
    except ValueError:
        parts = path.parts[1:-1]
    if "derivatives" in parts:
        i = len(parts) - 1 - parts[::-1].index("derivatives")
        rest = parts[i + 1:]
        pipeline = rest[0] if rest else ""
        inner = rest[-1] if len(rest) > 1 and not rest[-1].startswith(("sub-", "ses-")) else ""
        return "/".join(p for p in ("derivatives", pipeline, inner) if p)
    if parts and not parts[-1].startswith(("sub-", "ses-")):
        return parts[-1]
    return ""


def object_of(entities: dict[str, str], iod: str, nifti: bool) -> str:
    """What a file is: a DICOM file as it is, a label map (SEG), a parametric map, or an
    image. The profile's ``iod`` says so when it names seg or pmap; else the BIDS suffix."""
    if not nifti:
        return "dicom"
    if iod in ("seg", "pmap"):
        return iod
    suffix = entities.get("suffix", "")
    from node.convert.iods.seg import SEG_SUFFIXES
    from node.convert.source import MAP_SUFFIXES

    if suffix in SEG_SUFFIXES:
        return "seg"
    return "pmap" if suffix in MAP_SUFFIXES else "image"


def tests_sidecar(routes: tuple[Route, ...]) -> bool:
    return any(t.key.startswith("sidecar.") for r in routes for t in r.tests)


def decide(routes: tuple[Route, ...], facts: Facts, watch_profile: str,
           watch_priority: int = 0) -> Decision:
    """The routes in order: the first that matches decides; one with ``continue`` lets
    later ones add their destinations. Each destination once (the first route naming it
    gives its form)."""
    chosen: dict[str, Chosen] = {}
    why: list[str] = []
    priority = watch_priority
    for route in routes:
        failed = next((t for t in route.tests if not t.check(facts.value(t.key))), None)
        if failed is not None:
            why.append(f"route {route.name!r} does not match: it wants {failed.describe()}, "
                       f"the file has {failed.key} {facts.value(failed.key)!r}")
            continue
        reasons = ", ".join(t.describe() for t in route.tests) or "it matches every file"
        why.append(f"route {route.name!r} matches: {reasons}")
        priority = max(priority, route.priority)
        for target in route.targets:
            if target.destination in chosen:
                continue
            chosen[target.destination] = Chosen(
                target.destination, target.profile or route.profile or watch_profile,
                target.form(), route.name)
        if not route.cont:
            break
    return Decision(tuple(chosen.values()), priority, tuple(why))


# --- the config -----------------------------------------------------------------------------

def parse_routes(raw: Any, destinations: dict, profiles: dict | None,
                 watches: tuple[Path, ...]) -> tuple[Route, ...]:
    """``[[route]]`` tables, validated: every problem is a ValueError naming the route and
    the key, with the fix. A route that can never match (after one that takes every file
    and does not continue, or on a watch folder that is not watched) is an error too."""
    if not isinstance(raw, list):
        raise ValueError("routes are [[route]] tables (an array of tables)")
    routes = tuple(_route(i, r, destinations, profiles, watches) for i, r in enumerate(raw))
    names = [r.name for r in routes]
    for name in names:
        if names.count(name) > 1:
            raise ValueError(f"[[route]] {name!r}: two routes have this name; name them apart")
    for i, route in enumerate(routes[:-1]):
        if not route.tests and not route.cont:
            later = routes[i + 1]
            raise ValueError(
                f"[[route]] {later.name!r} can never match: route {route.name!r} before it "
                "has no condition and takes every file; move it last, or give it "
                "continue = true")
    return routes


def _route(i: int, raw: Any, destinations: dict, profiles: dict | None,
           watches: tuple[Path, ...]) -> Route:
    where = f"[[route]] #{i + 1}"
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: a route is a table")
    name = raw.get("name", f"#{i + 1}")
    if not isinstance(name, str) or not name:
        raise ValueError(f"{where}.name: write a text value")
    where = f"[[route]] {name!r}"
    unknown = sorted(set(raw) - _ROUTE_KEYS)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)} (a route has "
                         f"{', '.join(sorted(_ROUTE_KEYS))})")
    when = raw.get("when", {})
    if not isinstance(when, dict):
        raise ValueError(f"{where}.when: a table of conditions, e.g. "
                         'when = { datatype = "anat", suffix = "T1w" }')
    tests = tuple(_tests(where, when, watches))
    to = raw.get("to")
    if isinstance(to, str | dict):
        to = [to]
    if not isinstance(to, list) or not to:
        raise ValueError(f'{where}.to: the destinations, e.g. to = ["pacs", '
                         '{ destination = "research", iod = "enhanced" }]')
    profile = _profile(f"{where}.profile", raw.get("profile"), profiles)
    targets = tuple(_target(f"{where}.to[{j}]", t, destinations, profiles)
                    for j, t in enumerate(to))
    seen = [t.destination for t in targets]
    if len(set(seen)) != len(seen):
        raise ValueError(f"{where}.to: a destination is named twice; one copy per "
                         "destination (make another destination for a second form)")
    cont = raw.get("continue", False)
    if not isinstance(cont, bool):
        raise ValueError(f"{where}.continue: write true or false")
    priority = raw.get("priority", "normal")
    if priority not in PRIORITIES:
        raise ValueError(f'{where}.priority: write "normal" or "urgent", not {priority!r}')
    return Route(name, tests, targets, cont, PRIORITIES[priority], profile)


def _profile(where: str, value: Any, profiles: dict | None) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or (profiles is not None and value not in profiles):
        known = ", ".join(sorted(profiles or ()))
        raise ValueError(f"{where}: {value!r} is not a profile (known: {known})")
    return value


def _target(where: str, raw: Any, destinations: dict, profiles: dict | None) -> Target:
    from node.convert.profile import COMPRESSIONS, IODS

    if isinstance(raw, str):
        raw = {"destination": raw}
    if not isinstance(raw, dict):
        raise ValueError(f'{where}: a destination name, or a table like {{ destination = '
                         '"research", iod = "enhanced" }}')
    unknown = sorted(set(raw) - _TARGET_KEYS)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)} (a route's "
                         f"destination has {', '.join(sorted(_TARGET_KEYS))})")
    name = raw.get("destination")
    if name not in destinations:
        known = ", ".join(sorted(destinations)) or "none configured"
        raise ValueError(f"{where}: {name!r} is not a [destinations.NAME] (known: {known}); "
                         "add it, or fix the name")
    iod = raw.get("iod")
    if iod is not None and iod not in IODS:
        raise ValueError(f"{where}.iod: write one of {', '.join(IODS)}, not {iod!r}")
    compression = raw.get("compression")
    if compression is not None and compression not in COMPRESSIONS:
        raise ValueError(f"{where}.compression: write one of {', '.join(COMPRESSIONS)}, "
                         f"not {compression!r}")
    labelmap = raw.get("labelmap")
    if labelmap is not None and not isinstance(labelmap, bool):
        raise ValueError(f"{where}.labelmap: write true or false")
    results = None
    if "results" in raw:
        from node.convert.profile import check_results

        results = check_results(f"{where}.results", raw["results"])
    return Target(name, _profile(f"{where}.profile", raw.get("profile"), profiles), iod,
                  compression, labelmap, results)


def _tests(where: str, when: dict, watches: tuple[Path, ...]) -> list[Test]:
    out = []
    for key, value in when.items():
        if key == "sidecar":
            if not isinstance(value, dict) or not value:
                raise ValueError(f"{where}.when.sidecar: a table of sidecar keys, e.g. "
                                 'sidecar = { Manufacturer = "Siemens" }')
            out.extend(_test(f"{where}.when.sidecar.{k}", f"sidecar.{k}", v)
                       for k, v in value.items())
            continue
        if key not in ENTITIES and key not in _OTHER_KEYS:
            raise ValueError(
                f"{where}.when.{key}: not a condition this node knows: BIDS entities "
                f"({', '.join(sorted(ENTITIES))}), datatype, object, watch, or "
                "sidecar = { Key = ... }")
        test = _test(f"{where}.when.{key}", key, value)
        if key == "object":
            bad = [v for v in test.any_of if v not in OBJECTS]
            if bad or test.regex is not None or test.present is not None:
                raise ValueError(f"{where}.when.object: write one (or a list) of "
                                 f"{', '.join(OBJECTS)}, not {value!r}")
        if key == "watch":
            test = _watch_test(f"{where}.when.watch", test, watches)
        out.append(test)
    return out


def _watch_test(where: str, test: Test, watches: tuple[Path, ...]) -> Test:
    """A watch condition names a watched folder (its path as configured, or a glob)."""
    if test.regex is not None or test.present is not None:
        raise ValueError(f"{where}: write the watched folder's path (or a list of them)")
    wanted = []
    for value in test.any_of:
        if not isinstance(value, str):
            raise ValueError(f"{where}: write the watched folder's path, not {value!r}")
        hits = [str(w) for w in watches if fnmatch.fnmatchcase(str(w), value)
                or str(w).endswith("/" + value.strip("/")) or str(w) == value]
        if not hits:
            known = ", ".join(str(w) for w in watches) or "none"
            raise ValueError(f"{where}: {value!r} is not a watched folder, so this route can "
                             f"never match (watched: {known})")
        wanted.extend(hits)
    return Test(test.key, tuple(wanted), negate=test.negate)


def _test(where: str, key: str, value: Any) -> Test:
    glob = key in ("datatype", "watch")
    if isinstance(value, str | int | float | bool):
        return Test(key, (value,), glob=glob)
    if isinstance(value, list):
        if not value or not all(isinstance(v, str | int | float | bool) for v in value):
            raise ValueError(f"{where}: a list of values to match any of, e.g. "
                             '["T1w", "T2w"]')
        return Test(key, tuple(value), glob=glob)
    if not isinstance(value, dict) or len(value) != 1:
        raise ValueError(f'{where}: write a value, a list, or one of {{ in = [...] }}, '
                         '{ regex = "..." }, { present = true }, { not = ... }')
    (op, arg), = value.items()
    if op == "in":
        return _test(where, key, arg if isinstance(arg, list) else [arg])
    if op == "not":
        inner = _test(f"{where}.not", key, arg)
        return Test(key, inner.any_of, inner.regex, inner.present, not inner.negate, glob)
    if op == "present":
        if not isinstance(arg, bool):
            raise ValueError(f"{where}.present: write true or false")
        return Test(key, present=arg)
    if op == "regex":
        if not isinstance(arg, str):
            raise ValueError(f"{where}.regex: write the pattern as text")
        try:
            return Test(key, regex=re.compile(arg))
        except re.error as exc:
            raise ValueError(f"{where}.regex: {arg!r} is not a valid regular expression "
                             f"({exc})") from None
    raise ValueError(f'{where}: unknown operator {op!r}; write in, regex, present or not')


def facts_of(path: Path, watch_root: Path, profile_iod: str, sidecar: Path | None,
             read_sidecar: bool) -> Facts:
    """What routing knows of a file; its sidecar is read only when a route tests it (an
    unreadable one is an InputError: the file is quarantined with the reason)."""
    from node.convert.source import bids_entities, is_nifti, load_sidecar

    nifti = is_nifti(path)
    entities = bids_entities(path) if nifti else {}
    data = None
    if read_sidecar and sidecar is not None and sidecar.is_file():
        loaded = load_sidecar(sidecar)
        data = loaded if isinstance(loaded, dict) else None
    return Facts(entities, datatype_of(path, watch_root), object_of(entities, profile_iod, nifti),
                 watch_root, data)


def route(routes: tuple[Route, ...], path: Path, watch, profile_iod: str,
          sidecar: Path | None) -> Decision:
    """Where a file from ``watch`` goes. Without routes: the watch's destination, as before
    routing existed."""
    priority = PRIORITIES.get(getattr(watch, "priority", "normal"), 0)
    if not routes:
        return Decision((Chosen(watch.destination, watch.profile),), priority,
                        (f"no [[route]] in the config: the watch's destination "
                         f"{watch.destination!r}",))
    facts = facts_of(path, watch.path, profile_iod, sidecar, tests_sidecar(routes))
    return decide(routes, facts, watch.profile, priority)
