"""A node's state folder: where its journal, spool, quarantine, done and preview folders are,
and the lock that lets one node at a time use it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class StateDirs:
    root: Path

    @property
    def journal(self) -> Path:
        return self.root / "journal.sqlite"

    @property
    def spool(self) -> Path:
        return self.root / "spool"

    @property
    def quarantine(self) -> Path:
        return self.root / "quarantine"

    @property
    def done(self) -> Path:
        return self.root / "done"

    @property
    def previews(self) -> Path:
        """Each job's QA picture, job-N.png (made at conversion, beside the spool)."""
        return self.root / "previews"

    def recent_done(self, days: int = 7) -> tuple[Path, ...]:
        """The done/<date> folders of the last ``days`` days, newest first, whether they
        exist yet or not (a SEG's image delivered and moved while the SEG is converted is
        found there)."""
        import datetime as dt

        today = dt.date.today()
        return tuple(self.done / (today - dt.timedelta(days=n)).isoformat()
                     for n in range(days))

    def preview(self, job_id: int) -> Path:
        return self.previews / f"job-{int(job_id)}.png"

    def create(self) -> None:
        for folder in (self.root, self.spool, self.quarantine, self.done):
            folder.mkdir(parents=True, exist_ok=True)


class NodeLock:
    """One node per state folder: an exclusive ``flock`` on ``node.lock``, released by the
    kernel when the process ends (even by SIGKILL). The file holds the holder's pid."""

    def __init__(self, state_dir: Path) -> None:
        self.path = StateDirs(state_dir).root / "node.lock"
        self._fd: int | None = None

    def acquire(self) -> int | None:
        """Take the lock; None when taken, else the pid of the process that holds it."""
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            try:
                holder = int(os.read(fd, 32).decode().strip() or 0)
            except ValueError:
                holder = 0
            os.close(fd)
            return holder or -1
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
