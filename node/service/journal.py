"""The journal: every job and every state transition, durable in SQLite (WAL).

State lives here and only here. Each transition is one committed write before the next step
starts, so a node killed at any instant (SIGKILL included) resumes every job from its last
committed state: jobs found in ``converting`` or ``sending`` at start-up go back to ``queued``
(deterministic UIDs make the resend idempotent in the PACS).

States (:class:`JobState`; :data:`ALLOWED` is the whole table, and :meth:`Journal.transition`
refuses any other move)::

    queued -> converting -> sending -> done
      |          |             |-> retry-wait -> (due) converting ...
      |          |             '-> failed            (permanent, or attempts exhausted)
      '----------'-> quarantined (bad input)   failed/quarantined/retry-wait -> queued (operator)
    converting/sending -> queued: recovery after an interruption
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from enum import StrEnum
from pathlib import Path


class JobState(StrEnum):
    """Where a job is. A delivery's verdict is the state it moves the job to."""

    QUEUED = "queued"
    CONVERTING = "converting"
    SENDING = "sending"
    DONE = "done"
    RETRY_WAIT = "retry-wait"
    FAILED = "failed"
    QUARANTINED = "quarantined"


STATES = tuple(s.value for s in JobState)
_S = JobState
#: Every move a job may make; anything else is a bug and is refused.
ALLOWED: dict[JobState, frozenset[JobState]] = {
    _S.QUEUED: frozenset({_S.CONVERTING, _S.QUARANTINED}),
    _S.CONVERTING: frozenset({_S.SENDING, _S.RETRY_WAIT, _S.FAILED, _S.QUARANTINED, _S.QUEUED}),
    _S.SENDING: frozenset({_S.DONE, _S.RETRY_WAIT, _S.FAILED, _S.QUEUED}),
    _S.RETRY_WAIT: frozenset({_S.CONVERTING, _S.QUEUED, _S.FAILED}),
    _S.FAILED: frozenset({_S.QUEUED}),
    _S.QUARANTINED: frozenset({_S.QUEUED}),
    _S.DONE: frozenset(),
}


class InvalidTransition(ValueError):
    """A move the state table does not allow (or a job that does not exist)."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY,
    source TEXT NOT NULL,
    sidecar TEXT,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    profile TEXT NOT NULL,
    destination TEXT NOT NULL,
    after TEXT NOT NULL DEFAULT 'move',
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL DEFAULT 0,
    last_error TEXT,
    error_class TEXT,
    alert INTEGER NOT NULL DEFAULT 0,
    series_uid TEXT,
    study_uid TEXT,
    instances INTEGER,
    delivered INTEGER NOT NULL DEFAULT 0,
    quarantine_path TEXT,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state, next_attempt);
CREATE INDEX IF NOT EXISTS jobs_identity ON jobs(sha256, destination, profile);
CREATE TABLE IF NOT EXISTS instances (
    job_id INTEGER NOT NULL REFERENCES jobs(id),
    sop_instance_uid TEXT NOT NULL,
    status INTEGER,
    outcome TEXT NOT NULL,
    PRIMARY KEY (job_id, sop_instance_uid)
);
CREATE TABLE IF NOT EXISTS destinations (
    name TEXT PRIMARY KEY,
    checked REAL NOT NULL,
    ok INTEGER NOT NULL,
    message TEXT NOT NULL
);
"""


@dataclass(frozen=True)
class Job:
    id: int
    source: str
    sidecar: str | None
    sha256: str
    size: int
    profile: str
    destination: str
    after: str
    state: str
    attempts: int
    next_attempt: float
    last_error: str | None
    error_class: str | None
    alert: int
    series_uid: str | None
    study_uid: str | None
    instances: int | None
    delivered: int
    quarantine_path: str | None
    created: float
    updated: float

    def as_json(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


_COLUMNS = ", ".join(f.name for f in fields(Job))


class Journal:
    """A handle on the journal database; safe to open from several processes at once."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")  # a committed transition survives power loss
        self.db.execute("PRAGMA busy_timeout=30000")
        self.db.executescript(_SCHEMA)

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def _jobs(self, where: str = "", args: Iterable = ()) -> list[Job]:
        rows = self.db.execute(f"SELECT {_COLUMNS} FROM jobs {where}", tuple(args)).fetchall()
        return [Job(*row) for row in rows]

    def get(self, job_id: int) -> Job | None:
        found = self._jobs("WHERE id = ?", (job_id,))
        return found[0] if found else None

    # --- enqueue and claim ------------------------------------------------------------------

    def enqueue(
        self, source: Path, sha256: str, size: int, profile: str, destination: str,
        after: str = "move", sidecar: Path | None = None,
    ) -> tuple[Job, bool]:
        """Add a job unless this content already has one for the same destination and profile.

        Returns (job, created). An existing failed job for the content is re-queued with the
        new path (a fresh drop of the same file is an operator asking again).
        """
        now = time.time()
        with self._tx() as db:
            row = db.execute(
                "SELECT id, state FROM jobs WHERE sha256 = ? AND destination = ? AND profile = ? "
                "ORDER BY id DESC LIMIT 1", (sha256, destination, profile),
            ).fetchone()
            if row is not None and row[1] != "failed":
                return self.get(row[0]), False  # type: ignore[return-value]
            if row is not None:
                db.execute(
                    "UPDATE jobs SET source = ?, sidecar = ?, state = 'queued', attempts = 0, "
                    "next_attempt = 0, alert = 0, updated = ? WHERE id = ?",
                    (str(source), str(sidecar) if sidecar else None, now, row[0]),
                )
                return self.get(row[0]), True  # type: ignore[return-value]
            cur = db.execute(
                "INSERT INTO jobs (source, sidecar, sha256, size, profile, destination, after, "
                "state, created, updated) VALUES (?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?)",
                (str(source), str(sidecar) if sidecar else None, sha256, size, profile,
                 destination, after, now, now),
            )
            return self.get(int(cur.lastrowid)), True  # type: ignore[arg-type, return-value]

    def claim(self, now: float | None = None) -> Job | None:
        """Take the oldest due job (queued, or retry-wait whose time has come): -> converting."""
        now = time.time() if now is None else now
        with self._tx() as db:
            row = db.execute(
                "SELECT id FROM jobs WHERE state IN ('queued', 'retry-wait') AND next_attempt <= ?"
                " ORDER BY next_attempt, id LIMIT 1", (now,),
            ).fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE jobs SET state = 'converting', attempts = attempts + 1, updated = ? "
                "WHERE id = ?", (now, row[0]),
            )
        return self.get(row[0])

    def recover(self) -> list[Job]:
        """At start-up: jobs interrupted mid-step go back to queued (their attempt is undone)."""
        interrupted = self._jobs("WHERE state IN ('converting', 'sending')")
        with self._tx() as db:
            db.execute(
                "UPDATE jobs SET state = 'queued', attempts = MAX(attempts - 1, 0), updated = ? "
                "WHERE state IN ('converting', 'sending')", (time.time(),),
            )
        return interrupted

    # --- transitions ------------------------------------------------------------------------

    def transition(self, job_id: int, state: str, **values) -> Job:
        """Move a job to ``state`` and set other columns, in one committed write.

        Raises InvalidTransition when :data:`ALLOWED` has no such move from the job's state.
        """
        try:
            target = JobState(state)
        except ValueError:
            raise ValueError(f"unknown state {state!r}") from None
        values = {"state": target.value, "updated": time.time(), **values}
        assignments = ", ".join(f"{k} = ?" for k in values)
        with self._tx() as db:
            row = db.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise InvalidTransition(f"job {job_id}: no such job")
            if target not in ALLOWED[JobState(row[0])]:
                raise InvalidTransition(f"job {job_id}: {row[0]} -> {target.value} is not "
                                        "an allowed move")
            db.execute(f"UPDATE jobs SET {assignments} WHERE id = ?", (*values.values(), job_id))
        return self.get(job_id)  # type: ignore[return-value]

    def record_instances(self, job_id: int, rows: Iterable[tuple[str, int | None, str]]) -> None:
        """Per-instance results (SOP Instance UID, status, outcome), latest wins."""
        with self._tx() as db:
            db.executemany(
                "INSERT OR REPLACE INTO instances (job_id, sop_instance_uid, status, outcome) "
                "VALUES (?, ?, ?, ?)", [(job_id, *row) for row in rows],
            )

    def delivered_instances(self, job_id: int) -> set[str]:
        rows = self.db.execute(
            "SELECT sop_instance_uid FROM instances WHERE job_id = ? AND outcome IN "
            "('success', 'warning', 'duplicate')", (job_id,),
        ).fetchall()
        return {r[0] for r in rows}

    def requeue(self, job_ids: Iterable[int] | None = None, states=("failed",)) -> list[int]:
        """Operator retry: the given jobs (or all in ``states``) go back to queued."""
        if not all(JobState.QUEUED in ALLOWED[JobState(s)] for s in states):
            raise InvalidTransition(f"jobs in {states} cannot be queued again")
        jobs = self._jobs(
            f"WHERE state IN ({','.join('?' * len(states))})", states
        ) if job_ids is None else [j for j in (self.get(i) for i in job_ids) if j]
        ids = [j.id for j in jobs if j.state in states]
        with self._tx() as db:
            db.executemany(
                "UPDATE jobs SET state = 'queued', attempts = 0, next_attempt = 0, alert = 0, "
                "updated = ? WHERE id = ?", [(time.time(), i) for i in ids],
            )
        return ids

    # --- reading ----------------------------------------------------------------------------

    def jobs(self, state: str | None = None, limit: int | None = None) -> list[Job]:
        where = "WHERE state = ?" if state else ""
        tail = f" ORDER BY id{f' LIMIT {int(limit)}' if limit else ''}"
        return self._jobs(where + tail, (state,) if state else ())

    def counts(self) -> dict[str, int]:
        rows = self.db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
        return {state: 0 for state in STATES} | dict(rows)

    def oldest_waiting(self) -> Job | None:
        found = self._jobs("WHERE state IN ('queued', 'retry-wait') ORDER BY created LIMIT 1")
        return found[0] if found else None

    def last_errors(self, n: int = 5) -> list[Job]:
        return self._jobs("WHERE last_error IS NOT NULL ORDER BY updated DESC LIMIT ?", (n,))

    def alerts(self) -> list[Job]:
        return self._jobs("WHERE alert = 1 AND state = 'retry-wait' ORDER BY updated DESC")

    def record_echo(self, name: str, ok: bool, message: str) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO destinations (name, checked, ok, message) "
                "VALUES (?, ?, ?, ?)", (name, time.time(), int(ok), message),
            )

    def echoes(self) -> list[tuple[str, float, bool, str]]:
        rows = self.db.execute("SELECT name, checked, ok, message FROM destinations ORDER BY name")
        return [(n, c, bool(o), m) for n, c, o, m in rows.fetchall()]


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

    def create(self) -> None:
        for folder in (self.root, self.spool, self.quarantine, self.done):
            folder.mkdir(parents=True, exist_ok=True)


def open_journal(state_dir: Path) -> Journal:
    """The journal of the node whose state folder is ``state_dir``."""
    return Journal(StateDirs(state_dir).journal)
