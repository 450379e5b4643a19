"""``dicom-node route FILE`` (and ``convert --explain``): which route a file matches, which
destinations it would get, in which form, and why, without sending or writing anything."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

from node.errors import InputError
from node.service.operations import OperationError
from node.service.routing import PRIORITIES, Decision, facts_of, route, tests_sidecar
from node.service.settings import Config, WatchSettings


@dataclass(frozen=True)
class Copy:
    """One destination a file would go to, and how."""

    destination: str
    profile: str
    iod: str
    compression: str
    labelmap: bool
    by: str  # "route 'x'" or "its watch"
    schedule: str  # "open", "closed until Mon 19:00"

    def describe(self) -> str:
        form = f"iod {self.iod}, compression {self.compression}" + (
            ", labelmap" if self.labelmap else "")
        return (f"{self.destination}: profile {self.profile}, {form} ({self.by}); "
                f"schedule {self.schedule}")


@dataclass(frozen=True)
class RouteReport:
    path: Path
    watch: Path
    facts: list[str]
    why: tuple[str, ...]
    copies: tuple[Copy, ...]
    priority: str

    @property
    def refused(self) -> bool:
        return not self.copies

    def as_json(self) -> dict:
        out = dataclasses.asdict(self)
        out["path"], out["watch"] = str(self.path), str(self.watch)
        return out


def watch_of(config: Config, path: Path) -> WatchSettings:
    """The watched folder a file is in (the deepest), else a stand-in for the default one."""
    found = config.watch_for(path)
    if found is not None:
        return found
    if config.watches and not config.routes:
        return config.watches[0]
    return WatchSettings(path=path.parent, destination=config.node.default_destination or "",
                         profile=config.node.default_profile)


def explain_route(config: Config, path: Path, now: float | None = None) -> RouteReport:
    """What routing decides for ``path`` as if it were dropped into its watched folder now.
    An unreadable sidecar a route must test is an OperationError with the reason."""
    if not path.is_file():
        raise OperationError(path, "no such file")
    from node.convert.source import sidecar_of

    watch = watch_of(config, path)
    profile = config.profile(watch.profile)
    sidecar = sidecar_of(path)
    now = time.time() if now is None else now
    try:
        decision: Decision = route(config.routes, path, watch, profile.iod, sidecar)
        facts = facts_of(path, watch.path, profile.iod, sidecar, tests_sidecar(config.routes))
    except InputError as exc:
        raise OperationError(path, f"a route tests its sidecar, which cannot be used: "
                             f"{exc.message}") from None
    shown = [f"datatype {facts.datatype or '(none)'}", f"object {facts.object}"] + [
        f"{k}={v}" for k, v in facts.entities.items()]
    copies = []
    for chosen in decision.chosen:
        dest = config.destination(chosen.destination)
        dest = dataclasses.replace(dest, **chosen.form)
        prof = config.profile(chosen.profile)
        copies.append(Copy(chosen.destination, chosen.profile, dest.iod or prof.iod,
                           dest.compression, dest.labelmap,
                           f"route {chosen.route!r}" if chosen.route else "its watch",
                           config.policy(chosen.destination).schedule.describe(now)))
    level = {v: k for k, v in PRIORITIES.items()}[decision.priority]
    return RouteReport(path, watch.path, shown, decision.why, tuple(copies), level)
