"""When a destination takes bulk work, and at what pace (issue 23).

A destination's ``schedule`` is a list of windows, each ``"<days> [HH:MM-HH:MM]"`` in the
node's time zone ([node].timezone, default the system's): ``"mon-fri 19:00-07:00"`` is open on
Monday to Friday before 07:00 and from 19:00 (a range that ends before it starts wraps
around midnight, on each of the days named); ``"sat-sun"`` is open all weekend;
``"daily 22:00-06:00"``. Outside every window only urgent jobs of the destination are sent.
No schedule: always open.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_WINDOW = re.compile(r"^\s*(?P<days>[a-z,\-*]+)(?:\s+(?P<start>\d{1,2}:\d{2})\s*-\s*"
                     r"(?P<end>\d{1,2}:\d{2}))?\s*$")


@dataclass(frozen=True)
class Window:
    """Open on ``days`` (0 = Monday) from ``start`` to ``end`` (minutes of the day; an end
    at or before the start wraps past midnight of that day's time-of-day range)."""

    days: frozenset[int]
    start: int = 0
    end: int = 24 * 60
    text: str = ""

    def open_at(self, local: dt.datetime) -> bool:
        if local.weekday() not in self.days:
            return False
        minute = local.hour * 60 + local.minute
        if self.start < self.end:
            return self.start <= minute < self.end
        return minute >= self.start or minute < self.end


@dataclass(frozen=True)
class Schedule:
    windows: tuple[Window, ...] = ()
    zone: str = ""  # an IANA name; "" = the system's local time

    @property
    def always(self) -> bool:
        return not self.windows

    def _local(self, now: float) -> dt.datetime:
        tz = ZoneInfo(self.zone) if self.zone else None
        return dt.datetime.fromtimestamp(now, tz) if tz else dt.datetime.fromtimestamp(now)

    def is_open(self, now: float) -> bool:
        return self.always or any(w.open_at(self._local(now)) for w in self.windows)

    def next_change(self, now: float) -> float | None:
        """When the schedule next opens (if closed now) or closes (if open): the first
        minute boundary within 8 days at which it differs; None for "always"."""
        if self.always:
            return None
        state = self.is_open(now)
        t = now - now % 60 + 60
        for _ in range(8 * 24 * 60):  # bounded: a week and a day of minutes
            if self.is_open(t) != state:
                return t
            t += 60
        return None

    def describe(self, now: float) -> str:
        """"open" / "closed until Mon 19:00" / "open until 07:00" for the console."""
        if self.always:
            return "open (no schedule)"
        state = "open" if self.is_open(now) else "closed"
        change = self.next_change(now)
        if change is None:
            return state
        when = self._local(change)
        day = "" if when.date() == self._local(now).date() else when.strftime("%a ")
        return f"{state} until {day}{when:%H:%M}"


def _minutes(where: str, text: str) -> int:
    hours, _, minutes = text.partition(":")
    h, m = int(hours), int(minutes)
    if not (0 <= h <= 24 and 0 <= m < 60) or (h == 24 and m):
        raise ValueError(f"{where}: {text!r} is not a time of day (00:00-24:00)")
    return h * 60 + m


def _days(where: str, text: str) -> frozenset[int]:
    if text in ("daily", "*", "all"):
        return frozenset(range(7))
    out: set[int] = set()
    for part in text.split(","):
        first, _, last = part.partition("-")
        if first not in DAYS or (last and last not in DAYS):
            raise ValueError(f"{where}: {part!r}: days are {', '.join(DAYS)} (or daily), "
                             'ranges like "mon-fri", lists like "sat,sun"')
        a, b = DAYS.index(first), DAYS.index(last or first)
        out.update((a + i) % 7 for i in range((b - a) % 7 + 1))
    return frozenset(out)


def parse_schedule(where: str, value: object, zone: str = "") -> Schedule:
    """``schedule = ["mon-fri 19:00-07:00", "sat-sun"]``; a ValueError names the window."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ValueError(f'{where}: a list of windows, e.g. ["mon-fri 19:00-07:00", "sat-sun"]')
    windows = []
    for text in value:
        m = _WINDOW.match(text.lower())
        if m is None:
            raise ValueError(f'{where}: {text!r}: write "<days> HH:MM-HH:MM" or "<days>", '
                             'e.g. "mon-fri 19:00-07:00"')
        start = _minutes(where, m["start"]) if m["start"] else 0
        end = _minutes(where, m["end"]) if m["end"] else 24 * 60
        if m["start"] and start == end:
            raise ValueError(f"{where}: {text!r} opens and closes at the same time; leave "
                             "the hours out for a whole day")
        windows.append(Window(_days(where, m["days"]), start, end, text))
    return Schedule(tuple(windows), zone)


def check_zone(where: str, zone: str) -> str:
    if zone:
        try:
            ZoneInfo(zone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{where}: {zone!r} is not a time zone this machine knows "
                             '(an IANA name like "Europe/Berlin"; empty for the system\'s)'
                             ) from None
    return zone


@dataclass(frozen=True)
class DeliveryPolicy:
    """How a node delivers to one destination: when bulk jobs go, how many at once."""

    schedule: Schedule = Schedule()
    concurrency: int = 0  # at most this many of its jobs at once on a node; 0 = workers

    def share(self, workers: int) -> int:
        """How many jobs of the destination may run at once (a rate cap is split so)."""
        return self.concurrency or workers
