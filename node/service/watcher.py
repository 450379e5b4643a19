"""Watched folders: find files that are complete, never trusting a single event.

Known traps (watchdog 7.1): a file renamed into place (rsync, atomic writers) arrives only as a
``moved`` event; the polling observer reports ``created`` while the file is still being written
and never ``closed``; an inotify queue overflow loses events with only a log line. So events only
*nominate* candidates; a candidate is taken once its size and mtime (and its sidecar's) have not
changed for ``settle_seconds`` and it can be opened; and every folder is rescanned periodically.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from node.convert.source import is_nifti, sidecar_of
from node.service.settings import WatchSettings

log = logging.getLogger("node.watch")

#: Names that are never complete files: hidden/dot files (rsync's ".name.XXXXXX"), partial
#: downloads and editor backups.
TEMPORARY = (".*", "*.part", "*.partial", "*.tmp", "*~", "*.crdownload", "*.swp")


def wanted(path: Path, watch: WatchSettings) -> bool:
    """Does ``path`` (inside ``watch.path``) name a file this watch should take?"""
    try:
        parts = path.relative_to(watch.path).parts
    except ValueError:
        return False
    if not parts or any(p.startswith(".") for p in parts[:-1]):
        return False
    if not watch.recursive and len(parts) > 1:
        return False
    name = path.name
    if any(fnmatch.fnmatch(name, p) for p in TEMPORARY + watch.ignore_patterns):
        return False
    return any(fnmatch.fnmatch(name.lower(), p.lower()) for p in watch.patterns)


def scan(watch: WatchSettings) -> Iterator[Path]:
    """Every wanted file under the watched folder now (the start-up and periodic rescan)."""
    if not watch.path.is_dir():
        return
    walker = os.walk(watch.path) if watch.recursive else [(str(watch.path), [], os.listdir(
        watch.path))]
    for folder, dirs, names in walker:
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            path = Path(folder) / name
            if not path.is_dir() and wanted(path, watch):  # intake decides what it is
                yield path


def _signature(path: Path) -> tuple | None:
    """Size, mtime and kind of the file itself (a link is not followed), and its sidecar's."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    sidecar = sidecar_of(path)
    try:
        sc = sidecar.stat() if sidecar is not None else None
        side = (sc.st_size, sc.st_mtime_ns) if sc is not None else None
    except OSError:
        side = None
    return (st.st_size, st.st_mtime_ns, side, stat.S_IFMT(st.st_mode))


def _readable(path: Path, sig: tuple) -> bool:
    """Can the complete file be opened now? Only a regular file is ever opened (without
    blocking): a FIFO, a device or a link goes on to intake, which refuses it with a reason."""
    if sig[3] != stat.S_IFREG:
        return True
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        try:
            os.read(fd, 1)
        finally:
            os.close(fd)
        return True
    except OSError:
        return False


def _expects_sidecar(path: Path, watch: WatchSettings, seen: set[Path]) -> bool:
    """Should a NIfTI without a sidecar wait for one? When the watch requires or expects
    sidecars, or (``sidecars = "auto"``) when other images in its folder have theirs, now or
    earlier (``seen``: folders whose images came with sidecars): a pipeline that writes the
    image first and the JSON a moment later must not lose it."""
    if watch.require_sidecar or watch.sidecars == "expected":
        return True
    if watch.sidecars != "auto":
        return False
    if path.parent in seen:
        return True
    try:
        names = {e.name for e in os.scandir(path.parent)}
    except OSError:
        return False
    for name in names:
        low = name.lower()
        if name != path.name and low.endswith((".nii", ".nii.gz")):
            stem = name[: -len(".nii.gz")] if low.endswith(".nii.gz") else name[:-4]
            if f"{stem}.json" in names:
                return True
    return False


@dataclass
class _Candidate:
    watch: WatchSettings
    signature: tuple
    stable_since: float
    first_seen: float


class Stabilizer:
    """Holds nominated files until they are complete; thread-safe (events come from threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._candidates: dict[Path, _Candidate] = {}
        self._taken: dict[Path, tuple] = {}  # path -> signature when taken (no re-take)
        self._with_sidecars: set[Path] = set()  # folders whose NIfTI came with sidecars

    def nominate(self, path: Path, watch: WatchSettings, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            if path not in self._candidates:
                sig = _signature(path)
                if sig is None or self._taken.get(path) == sig:
                    return
                self._candidates[path] = _Candidate(watch, sig, now, now)

    def ready(self, now: float | None = None) -> list[tuple[Path, WatchSettings, bool]]:
        """Files complete now: (path, watch, sidecar_missing_after_grace)."""
        now = time.monotonic() if now is None else now
        out = []
        with self._lock:
            for path, cand in list(self._candidates.items()):
                sig = _signature(path)
                if sig is None:
                    del self._candidates[path]  # gone (moved away, deleted)
                    continue
                if sig != cand.signature:
                    cand.signature, cand.stable_since = sig, now
                    continue
                if now - cand.stable_since < cand.watch.settle_seconds or not _readable(path, sig):
                    continue
                waiting = is_nifti(path) and sig[2] is None and _expects_sidecar(
                    path, cand.watch, self._with_sidecars)
                if waiting and now - cand.first_seen < cand.watch.sidecar_grace_seconds:
                    continue  # wait for the sidecar a while
                missing = cand.watch.require_sidecar and is_nifti(path) and sig[2] is None
                if waiting and not missing:
                    log.warning("%s: no BIDS sidecar arrived within %g s although one was "
                                "expected; sent without it", path.name,
                                cand.watch.sidecar_grace_seconds)
                del self._candidates[path]
                self._taken[path] = sig
                if is_nifti(path) and sig[2] is not None:
                    self._with_sidecars.add(path.parent)
                out.append((path, cand.watch, missing))
        return out

    def forget(self, path: Path) -> None:
        """Let ``path`` be taken again (its enqueue failed, or it left and came back)."""
        with self._lock:
            self._taken.pop(path, None)

    def prune(self) -> None:
        """Drop memories of files that are gone (moved to done/, deleted): bounded memory."""
        with self._lock:
            for path in [p for p in self._taken if not p.exists()]:
                del self._taken[path]

    def pending(self) -> int:
        with self._lock:
            return len(self._candidates)


class FolderWatcher:
    """watchdog observers for the configured folders, nominating into a Stabilizer."""

    def __init__(self, watches: tuple[WatchSettings, ...], stabilizer: Stabilizer,
                 on_orphan_sidecar: Callable[[Path, WatchSettings], None] | None = None,
                 ) -> None:
        self.watches = watches
        self.stabilizer = stabilizer
        self.on_orphan_sidecar = on_orphan_sidecar
        self._observers: list = []

    def start(self) -> None:
        from watchdog.events import FileSystemEventHandler
        from watchdog.observers import Observer
        from watchdog.observers.polling import PollingObserver

        for watch in self.watches:
            watch.path.mkdir(parents=True, exist_ok=True)
            nominate = self._nominator(watch)

            class Handler(FileSystemEventHandler):
                def on_any_event(self, event, nominate: Callable = nominate) -> None:
                    if event.is_directory:
                        return
                    if event.event_type == "moved":
                        nominate(Path(os.fsdecode(event.dest_path)))
                    elif event.event_type in ("created", "modified", "closed"):
                        nominate(Path(os.fsdecode(event.src_path)))

            observer = PollingObserver(timeout=1.0) if watch.polling else Observer()
            observer.schedule(Handler(), str(watch.path), recursive=watch.recursive)
            observer.daemon = True
            observer.start()
            self._observers.append(observer)

    def _nominator(self, watch: WatchSettings) -> Callable[[Path], None]:
        def nominate(path: Path) -> None:
            if path.name.lower().endswith(".json"):
                # a sidecar changed: its NIfTI is what is nominated
                stem = path.name[: -len(".json")]
                twins = [path.with_name(stem + ext) for ext in (".nii.gz", ".nii")]
                for twin in twins:
                    if twin.exists() and wanted(twin, watch):
                        self.stabilizer.nominate(twin, watch)
                if self.on_orphan_sidecar and path.exists() and not any(
                        t.exists() for t in twins):
                    self.on_orphan_sidecar(path, watch)  # its image may be gone already
                return
            if wanted(path, watch):
                self.stabilizer.nominate(path, watch)

        return nominate

    def rescan(self) -> int:
        self.stabilizer.prune()
        n = 0
        for watch in self.watches:
            for path in scan(watch):
                self.stabilizer.nominate(path, watch)
                n += 1
        return n

    def stop(self) -> None:
        for observer in self._observers:
            observer.stop()
        for observer in self._observers:
            observer.join(timeout=5)
