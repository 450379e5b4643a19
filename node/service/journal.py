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
    queued/retry-wait/failed/quarantined -> cancelled (operator) -> queued (operator)
"""

from __future__ import annotations

import os
import socket
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path

from node.errors import DicomNodeError
from node.service.states import ALLOWED, STATES, JobState  # noqa: F401 - the vocabulary

#: The journal's schema, in both backends: the tables above with every added column. Older
#: journals are brought to it when opened; a newer one is refused.
SCHEMA_VERSION = 1


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
CREATE TABLE IF NOT EXISTS instance_timeouts (
    job_id INTEGER NOT NULL,
    sop_instance_uid TEXT NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (job_id, sop_instance_uid)
);
CREATE TABLE IF NOT EXISTS history (
    job_id INTEGER NOT NULL,
    at REAL NOT NULL,
    from_state TEXT,
    to_state TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    owner TEXT,
    detail TEXT
);
CREATE INDEX IF NOT EXISTS history_job ON history(job_id, at);
CREATE TABLE IF NOT EXISTS nodes (
    owner TEXT PRIMARY KEY,
    pid INTEGER NOT NULL,
    host TEXT NOT NULL,
    version TEXT NOT NULL,
    started REAL NOT NULL,
    heartbeat REAL NOT NULL,
    stopped REAL
);
CREATE TABLE IF NOT EXISTS studies (
    study_uid TEXT PRIMARY KEY,
    study_values TEXT NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS study_series (
    study_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    series_number INTEGER,
    PRIMARY KEY (study_uid, series_uid)
);
CREATE TABLE IF NOT EXISTS paused (
    name TEXT PRIMARY KEY,
    at REAL NOT NULL,
    who TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    who TEXT NOT NULL,
    via TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    result TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS history_done ON history(to_state, at);
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
    key: str | None = None  # content + what shapes the output + destination (intake.job_key)
    owner: str | None = None  # "host:pid" of the process that holds (or last held) the job
    lease_until: float = 0.0  # the owner's claim is good until then; renewed by heartbeats
    memory: int = 0  # estimated peak bytes to convert it (intake.MEMORY_FACTOR x voxels)

    def as_json(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


_COLUMNS = ", ".join(f.name for f in fields(Job))
#: Columns added after the first release, with their definitions: opened journals get them.
_ADDED_COLUMNS = {"key": "TEXT", "owner": "TEXT", "lease_until": "REAL NOT NULL DEFAULT 0",
                  "memory": "INTEGER NOT NULL DEFAULT 0"}
ACTIVE = (JobState.CONVERTING.value, JobState.SENDING.value)


class JournalError(DicomNodeError):
    """The journal cannot be used as it is (missing, damaged, not a database); the message
    says which file and what to do."""

    def __init__(self, reason: str) -> None:
        super().__init__(None, reason)


def owner_id(pid: int | None = None, node_id: str | None = None) -> str:
    """This process as a lease owner: "node:pid" (the node id is the host name unless
    [node].node_id names it)."""
    return f"{node_id or socket.gethostname()}:{os.getpid() if pid is None else pid}"


def owner_alive(owner: str | None) -> bool:
    """Whether a lease owner can still be working: another host's owner is taken as alive
    (its lease expires instead); on this host, its process must exist."""
    if not owner or ":" not in owner:
        return False
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname():
        return True
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError):
        return False
    except PermissionError:
        return True
    return True


class Journal:
    """A handle on the journal database; safe to open from several processes at once.

    SQLite here; :class:`node.service.pgjournal.PgJournal` is the same journal in PostgreSQL
    for several nodes (its connection translates the few SQLite-only spellings below).
    """

    #: Row locking of a claim: none in SQLite (BEGIN IMMEDIATE serializes the writers),
    #: FOR UPDATE SKIP LOCKED in PostgreSQL (nodes claim different jobs at once).
    _LOCK_ROW = ""
    #: Per destination, its latest outcome: SQLite takes the bare columns from the row that
    #: holds the MAX (one pass).
    _LATEST_OUTCOMES = (
        "SELECT destination, MAX(updated), state, last_error FROM jobs "
        "WHERE state IN ('done', 'retry-wait', 'failed') GROUP BY destination")

    def __init__(self, path: str | Path, *, create: bool = True) -> None:
        """Open (and with ``create``, make) the journal at ``path``.

        Raises JournalError, with the file and the way out, when it is missing (and not to be
        created), is a folder, or is not a journal (truncated, overwritten, damaged).
        """
        self.path = Path(path)
        if self.path.is_dir():
            raise JournalError(f"{self.path}: is a folder, not a journal file; move it away "
                               "or point [node].state_dir elsewhere")
        if not create and not self.path.is_file():
            raise JournalError(f"{self.path}: no journal here (has a node run with this "
                               "state_dir? check --config and [node].state_dir)")
        try:
            if create:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            # a committed transition survives power loss
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.execute("PRAGMA busy_timeout=30000")
            self.db.executescript(_SCHEMA)
            have = {row[1] for row in self.db.execute("PRAGMA table_info(jobs)")}
            for column, kind in _ADDED_COLUMNS.items():
                if column not in have:
                    self.db.execute(f"ALTER TABLE jobs ADD COLUMN {column} {kind}")
            self.db.execute("CREATE INDEX IF NOT EXISTS jobs_key ON jobs(key)")
            self.db.execute("CREATE INDEX IF NOT EXISTS jobs_updated ON jobs(updated)")
            have = {row[1] for row in self.db.execute("PRAGMA table_info(destinations)")}
            if "latency_ms" not in have:
                self.db.execute("ALTER TABLE destinations ADD COLUMN latency_ms REAL")
            # the schema's version, as the PostgreSQL journal records it (schema_version)
            version = self.db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise JournalError(f"{self.path}: the journal's schema is version {version}, "
                                   f"newer than this dicom-node's ({SCHEMA_VERSION}): "
                                   "upgrade dicom-node")
            if version < SCHEMA_VERSION:
                self.db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except sqlite3.DatabaseError as exc:
            if "disk is full" in str(exc) or "disk I/O" in str(exc):
                raise
            raise JournalError(
                f"{self.path}: not a usable journal ({exc}). Keep the damaged file for "
                f"inspection (mv {self.path} {self.path}.damaged) and start the node again: it "
                "makes a new journal and re-enqueues what is still in the watched folders; "
                "quarantine/ and done/ keep their files") from None

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
        after: str = "move", sidecar: Path | None = None, key: str | None = None,
        memory: int = 0,
    ) -> tuple[Job, bool]:
        """Add a job unless one exists for the same ``key`` (content and everything that shapes
        the output, see ``intake.job_key``), or without a key for the same content,
        destination and profile.

        Returns (job, created). An existing failed job for the content is re-queued with the
        new path (a fresh drop of the same file is an operator asking again).
        """
        now = time.time()
        with self._tx() as db:
            if key is not None:
                row = db.execute("SELECT id, state FROM jobs WHERE key = ? ORDER BY id DESC "
                                 "LIMIT 1", (key,)).fetchone()
            else:
                row = db.execute(
                    "SELECT id, state FROM jobs WHERE sha256 = ? AND destination = ? AND "
                    "profile = ? ORDER BY id DESC LIMIT 1", (sha256, destination, profile),
                ).fetchone()
            if row is not None and row[1] not in ("failed", "cancelled"):
                return self.get(row[0]), False  # type: ignore[return-value]
            if row is not None:
                db.execute(
                    "UPDATE jobs SET source = ?, sidecar = ?, state = 'queued', attempts = 0, "
                    "next_attempt = 0, alert = 0, updated = ? WHERE id = ?",
                    (str(source), str(sidecar) if sidecar else None, now, row[0]),
                )
                self._history(db, row[0], row[1], "queued", 0, None, "enqueued again")
                return self.get(row[0]), True  # type: ignore[return-value]
            new_id = self._insert_id(
                db,
                "INSERT INTO jobs (source, sidecar, sha256, size, profile, destination, after, "
                "state, created, updated, key, memory) VALUES (?, ?, ?, ?, ?, ?, ?, 'queued', ?, "
                "?, ?, ?)",
                (str(source), str(sidecar) if sidecar else None, sha256, size, profile,
                 destination, after, now, now, key, memory),
            )
            self._history(db, new_id, None, "queued", 0, None, None)
            return self.get(new_id), True  # type: ignore[return-value]

    @staticmethod
    def _insert_id(db, sql: str, args: tuple) -> int:
        """Insert one row; its id."""
        return int(db.execute(sql, args).lastrowid)

    @staticmethod
    def _history(db, job_id: int, old: str | None, new: str, attempt: int, owner: str | None,
                 detail: str | None) -> None:
        db.execute("INSERT INTO history (job_id, at, from_state, to_state, attempt, owner, "
                   "detail) VALUES (?, ?, ?, ?, ?, ?, ?)",
                   (job_id, time.time(), old, new, attempt, owner,
                    detail[:2000] if detail else None))

    def history(self, job_id: int) -> list[tuple[float, str | None, str, int, str | None,
                                                  str | None]]:
        """A job's timeline: (time, from, to, attempt, owner, detail), oldest first."""
        return self.db.execute(
            "SELECT at, from_state, to_state, attempt, owner, detail FROM history "
            "WHERE job_id = ? ORDER BY at, rowid", (job_id,)).fetchall()  # id in PostgreSQL

    def claim(self, now: float | None = None, owner: str | None = None,
              lease_seconds: float = 60.0, memory: int | None = None) -> Job | None:
        """Take the oldest due job (queued, or retry-wait whose time has come): -> converting,
        held by ``owner`` under a lease of ``lease_seconds`` (renewed by :meth:`renew`).

        ``memory``: the bytes left in the node's budget; when the oldest due job needs more,
        nothing is claimed (it waits for jobs in flight to finish, and keeps its turn)."""
        now = time.time() if now is None else now
        owner = owner or owner_id()
        with self._tx() as db:
            row = db.execute(
                "SELECT id, state, attempts, memory FROM jobs WHERE state IN ('queued', "
                "'retry-wait') AND next_attempt <= ? AND destination NOT IN "
                "(SELECT name FROM paused) ORDER BY next_attempt, id LIMIT 1" + self._LOCK_ROW,
                (now,),
            ).fetchone()
            if row is None or (memory is not None and row[3] > memory):
                return None
            db.execute(
                "UPDATE jobs SET state = 'converting', attempts = attempts + 1, updated = ?, "
                "owner = ?, lease_until = ? WHERE id = ?",
                (now, owner, now + lease_seconds, row[0]),
            )
            self._history(db, row[0], row[1], "converting", row[2] + 1, owner, None)
        return self.get(row[0])

    def renew(self, owner: str, lease_seconds: float = 60.0) -> int:
        """Extend the leases of the jobs ``owner`` holds; also its heartbeat. Returns how many."""
        now = time.time()
        with self._tx() as db:
            n = db.execute(
                "UPDATE jobs SET lease_until = ? WHERE owner = ? AND state IN "
                "('converting', 'sending')", (now + lease_seconds, owner)).rowcount
            db.execute("UPDATE nodes SET heartbeat = ? WHERE owner = ?", (now, owner))
        return n

    def recover(self, now: float | None = None) -> list[Job]:
        """Jobs interrupted mid-step whose owner is gone go back to queued (their attempt is
        undone). Gone: its lease expired, or it was a process of this host that no longer
        exists (a node restarted after SIGKILL resumes at once). A live owner's jobs are never
        touched, so a second process beside a running node cannot take its work."""
        now = time.time() if now is None else now
        candidates = self._jobs("WHERE state IN ('converting', 'sending')")
        taken = []
        with self._tx() as db:
            for job in candidates:
                if job.lease_until >= now and owner_alive(job.owner):
                    continue
                moved = db.execute(
                    "UPDATE jobs SET state = 'queued', attempts = MAX(attempts - 1, 0), "
                    "updated = ?, owner = NULL, lease_until = 0 WHERE id = ? AND state = ? "
                    "AND COALESCE(owner, '') = ?",
                    (now, job.id, job.state, job.owner or "")).rowcount
                if moved:
                    self._history(db, job.id, job.state, "queued", job.attempts, job.owner,
                                  "resumed: its owner is gone")
                    taken.append(job)
        return taken

    # --- transitions ------------------------------------------------------------------------

    def transition(self, job_id: int, state: str, *, owner: str | None = None,
                   detail: str | None = None, **values) -> Job:
        """Move a job to ``state`` and set other columns, in one committed write, with a line
        in its history.

        Raises InvalidTransition when :data:`ALLOWED` has no such move from the job's state,
        or when ``owner`` is given and no longer holds the job (its lease was taken over):
        a process that lost its lease records nothing.
        """
        try:
            target = JobState(state)
        except ValueError:
            raise ValueError(f"unknown state {state!r}") from None
        values = {"state": target.value, "updated": time.time(), **values}
        if target.value not in ACTIVE:
            values.setdefault("lease_until", 0.0)
        assignments = ", ".join(f"{k} = ?" for k in values)
        with self._tx() as db:
            row = db.execute("SELECT state, owner, attempts, last_error FROM jobs WHERE id = ?",
                             (job_id,)).fetchone()
            if row is None:
                raise InvalidTransition(f"job {job_id}: no such job")
            if target not in ALLOWED[JobState(row[0])]:
                raise InvalidTransition(f"job {job_id}: {row[0]} -> {target.value} is not "
                                        "an allowed move")
            if owner is not None and row[0] in ACTIVE and row[1] != owner:
                raise InvalidTransition(f"job {job_id}: held by {row[1]}, not {owner}: the "
                                        "lease was lost")
            db.execute(f"UPDATE jobs SET {assignments} WHERE id = ?", (*values.values(), job_id))
            note = detail if detail is not None else values.get("last_error")
            self._history(db, job_id, row[0], target.value, row[2], owner or row[1], note)
        return self.get(job_id)  # type: ignore[return-value]

    def find_by_source(self, sources: list[str]) -> Job | None:
        """The latest job for any of these source paths."""
        marks = ",".join("?" * len(sources))
        found = self._jobs(f"WHERE source IN ({marks}) ORDER BY id DESC LIMIT 1", sources)
        return found[0] if found else None

    def note(self, job_id: int, text: str) -> None:
        """A remark on a job that changes no state (e.g. a done job whose file stayed)."""
        with self._tx() as db:
            db.execute("UPDATE jobs SET last_error = ?, updated = ? WHERE id = ?",
                       (text, time.time(), job_id))
            self._history(db, job_id, None, self.get(job_id).state, 0, None, text)

    def record_instances(self, job_id: int, rows: Iterable[tuple[str, int | None, str]]) -> None:
        """Per-instance results (SOP Instance UID, status, outcome), latest wins."""
        with self._tx() as db:
            db.executemany(
                "INSERT OR REPLACE INTO instances (job_id, sop_instance_uid, status, outcome) "
                "VALUES (?, ?, ?, ?)", [(job_id, *row) for row in rows],
            )

    def count_timeout(self, job_id: int, sop_instance_uid: str) -> int:
        """One more time this instance was in flight when the peer fell silent; the total."""
        with self._tx() as db:
            db.execute(
                "INSERT INTO instance_timeouts (job_id, sop_instance_uid, count) VALUES "
                "(?, ?, 1) ON CONFLICT (job_id, sop_instance_uid) DO UPDATE SET count = "
                "count + 1", (job_id, sop_instance_uid))
            return db.execute("SELECT count FROM instance_timeouts WHERE job_id = ? AND "
                              "sop_instance_uid = ?", (job_id, sop_instance_uid)).fetchone()[0]

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
            for j in jobs:
                if j.id in ids:
                    self._history(db, j.id, j.state, "queued", 0, None, "requeued by an operator")
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

    def reconcile_study(self, values, series_uid: str, own_number: int | None = None):
        """What a series joining ``values.study_uid`` must carry, and its SeriesNumber: the
        study's remembered values merged with its own in one transaction (two workers never
        both think they are first). StudyConflict (nothing recorded) when they disagree.

        ``values`` is a node.convert.study.StudyValues; what was remembered counts as sent.
        """
        import json

        from node.convert.study import StudyValues, merge, series_number

        uid = values.study_uid
        with self._tx() as db:
            row = db.execute("SELECT study_values FROM studies WHERE study_uid = ?",
                             (uid,)).fetchone()
            merged = values if row is None else merge(
                StudyValues.from_json(uid, json.loads(row[0])), values)
            db.execute("INSERT OR REPLACE INTO studies VALUES (?, ?, ?)",
                       (uid, json.dumps(merged.as_json(), sort_keys=True), time.time()))
            found = db.execute("SELECT series_number FROM study_series WHERE study_uid = ? AND "
                               "series_uid = ?", (uid, series_uid)).fetchone()
            if own_number is not None:  # a source named it: others must keep clear of it
                number = own_number
                db.execute("INSERT OR REPLACE INTO study_series VALUES (?, ?, ?)",
                           (uid, series_uid, number))
            elif found is not None:
                number = found[0]
            else:
                taken = {n for (n,) in db.execute(
                    "SELECT series_number FROM study_series WHERE study_uid = ?", (uid,))}
                number = series_number(series_uid, taken)
                db.execute("INSERT INTO study_series VALUES (?, ?, ?)", (uid, series_uid, number))
        return merged, number

    def record_echo(self, name: str, ok: bool, message: str,
                    latency_ms: float | None = None) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO destinations (name, checked, ok, message, latency_ms) "
                "VALUES (?, ?, ?, ?, ?)", (name, time.time(), int(ok), message, latency_ms),
            )

    # --- operators: paused destinations, the audit log -----------------------------------

    def pause(self, name: str, who: str) -> bool:
        """Stop claiming jobs for ``name`` (they wait); False when it was paused already."""
        with self._tx() as db:
            cur = db.execute("INSERT OR IGNORE INTO paused VALUES (?, ?, ?)",
                             (name, time.time(), who))
            return cur.rowcount == 1

    def resume(self, name: str) -> bool:
        with self._tx() as db:
            return db.execute("DELETE FROM paused WHERE name = ?", (name,)).rowcount == 1

    def paused(self) -> dict[str, tuple[float, str]]:
        rows = self.db.execute("SELECT name, at, who FROM paused").fetchall()
        return {name: (at, who) for name, at, who in rows}

    def audit(self, who: str, via: str, action: str, target: str, result: str) -> None:
        """One operator action (console or CLI), kept with the jobs it touched."""
        with self._tx() as db:
            db.execute("INSERT INTO audit (at, who, via, action, target, result) "
                       "VALUES (?, ?, ?, ?, ?, ?)",
                       (time.time(), who[:200], via, action, target[:500], result[:1000]))

    def audit_log(self, limit: int = 100, offset: int = 0) -> list[dict]:
        rows = self.db.execute("SELECT id, at, who, via, action, target, result FROM audit "
                               "ORDER BY id DESC LIMIT ? OFFSET ?", (limit, offset)).fetchall()
        keys = ("id", "at", "who", "via", "action", "target", "result")
        return [dict(zip(keys, row, strict=True)) for row in rows]

    def find_jobs(self, state: str | None = None, destination: str | None = None,
                  text: str | None = None, limit: int = 50, offset: int = 0,
                  since: float | None = None, until: float | None = None
                  ) -> tuple[list[Job], int]:
        """A page of jobs, newest first, and how many match: by state, destination, a text
        found in the source path or the series UID, and when they were queued."""
        where, args = [], []
        if since is not None:
            where.append("created >= ?")
            args.append(since)
        if until is not None:
            where.append("created < ?")
            args.append(until)
        if state:
            where.append("state = ?")
            args.append(state)
        if destination:
            where.append("destination = ?")
            args.append(destination)
        if text:
            where.append("(instr(source, ?) > 0 OR instr(coalesce(series_uid, ''), ?) > 0)")
            args += [text, text]
        clause = ("WHERE " + " AND ".join(where)) if where else ""
        total = self.db.execute(f"SELECT count(*) FROM jobs {clause}", args).fetchone()[0]
        jobs = self._jobs(f"{clause} ORDER BY id DESC LIMIT ? OFFSET ?", [*args, limit, offset])
        return jobs, int(total)

    def done_per_bucket(self, since: float, bucket: float = 300.0) -> list[int]:
        """Jobs done in each ``bucket`` seconds since ``since`` (the dashboard's chart)."""
        n = max(1, int((time.time() - since) // bucket) + 1)
        counts = [0] * n
        rows = self.db.execute("SELECT at FROM history WHERE to_state = 'done' AND at >= ?",
                               (since,)).fetchall()
        for (at,) in rows:
            counts[min(n - 1, int((at - since) // bucket))] += 1
        return counts

    # --- nodes -------------------------------------------------------------------------------

    def register_node(self, owner: str, version: str) -> None:
        now = time.time()
        host, _, pid = owner.rpartition(":")
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO nodes (owner, pid, host, version, started, "
                       "heartbeat, stopped) VALUES (?, ?, ?, ?, ?, ?, NULL)",
                       (owner, int(pid), host, version, now, now))

    def node_stopped(self, owner: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE nodes SET stopped = ? WHERE owner = ?", (time.time(), owner))

    def running_nodes(self) -> list[dict]:
        """Nodes that have not said they stopped and whose process may still run."""
        rows = self.db.execute("SELECT owner, pid, host, version, started, heartbeat FROM nodes "
                               "WHERE stopped IS NULL ORDER BY started").fetchall()
        keys = ("owner", "pid", "host", "version", "started", "heartbeat")
        return [dict(zip(keys, row, strict=True)) for row in rows if owner_alive(row[0])]

    def last_outcomes(self) -> dict[str, tuple[float, str, str | None]]:
        """Per destination, its latest delivery outcome: (time, state, error)."""
        rows = self.db.execute(self._LATEST_OUTCOMES).fetchall()  # one pass, not n^2
        return {d: (u, s, e) for d, u, s, e in rows}

    # --- maintenance ---------------------------------------------------------------------

    def integrity_check(self) -> list[str]:
        """SQLite's own check (PRAGMA integrity_check): an empty list when all is well."""
        rows = [r[0] for r in self.db.execute("PRAGMA integrity_check").fetchall()]
        return [] if rows == ["ok"] else rows

    def backup(self, target: Path) -> None:
        """A consistent copy while nodes run (SQLite's online backup API)."""
        target = Path(target)
        if target.exists():
            raise JournalError(f"{target}: exists already; name a new file")
        out = sqlite3.connect(target)
        try:
            self.db.backup(out)
        finally:
            out.close()

    def echoes(self) -> list[tuple[str, float, bool, str]]:
        rows = self.db.execute("SELECT name, checked, ok, message FROM destinations ORDER BY name")
        return [(n, c, bool(o), m) for n, c, o, m in rows.fetchall()]

    def echo_latencies(self) -> dict[str, float | None]:
        rows = self.db.execute("SELECT name, latency_ms FROM destinations").fetchall()
        return dict(rows)


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

    def preview(self, job_id: int) -> Path:
        return self.previews / f"job-{int(job_id)}.png"

    def create(self) -> None:
        for folder in (self.root, self.spool, self.quarantine, self.done):
            folder.mkdir(parents=True, exist_ok=True)


def open_journal(state_dir: Path, *, create: bool = True) -> Journal:
    """The journal of the node whose state folder is ``state_dir``; read-only commands pass
    ``create=False`` and get a JournalError naming the path when there is none."""
    return Journal(StateDirs(state_dir).journal, create=create)


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
