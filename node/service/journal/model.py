"""The journal's plain data: a job, a line of its history, an audit entry, a node; the errors
the journal raises. Typed, so a job is never a loosely indexed row (issue 20)."""

from __future__ import annotations

import os
import socket
from typing import NamedTuple, TypedDict

from node.errors import DicomNodeError
from node.service.states import JobState


class Job(NamedTuple):
    """One NIfTI file (with its sidecar) for one destination and profile, as the journal holds
    it. Built only by the stores (:meth:`from_row`); changed only by ``move()``, which returns
    the job as it now is. Immutable; a NamedTuple rather than a frozen dataclass because the
    node builds two per step and this is ten times cheaper to build (bench_journal)."""

    id: int
    source: str
    sidecar: str | None
    sha256: str
    size: int
    profile: str
    destination: str
    after: str
    state: JobState
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
    owner: str | None = None  # "node:pid" of the process that holds (or last held) the job
    lease_until: float = 0.0  # the owner's claim is good until then; renewed by heartbeats
    memory: int = 0  # estimated peak bytes to convert it (intake.MEMORY_FACTOR x voxels)
    commit_uid: str | None = None  # the storage commitment transaction it waits for
    form: str | None = None  # its route's form for the destination (JSON); None: the destination's
    priority: int = 0  # 1 = urgent: claimed first, sent even outside its destination's schedule

    @classmethod
    def from_row(cls, names: tuple[str, ...], row) -> Job:
        """A job from a result row, by column name: a journal whose table has its columns in
        another order (added by a migration) or has more of them reads the same. The row's
        state text becomes a JobState, or fails (ValueError) for a state no release knows."""
        if names == JOB_FIELDS:
            values = list(row)
        else:
            by_name = dict(zip(names, row, strict=True))
            values = [by_name[name] for name in JOB_FIELDS if name in by_name]
        values[_STATE] = JobState(values[_STATE])
        return cls(*values)

    def as_json(self) -> dict:
        return self._asdict()


JOB_FIELDS: tuple[str, ...] = Job._fields
_STATE = JOB_FIELDS.index("state")
#: What ``move()`` may change besides the state. Profile, destination and key never change;
#: the content (sha256, size) only when an operator releases a repaired file from quarantine.
MUTABLE_FIELDS = frozenset({
    "source", "sidecar", "sha256", "size", "attempts", "next_attempt", "last_error",
    "error_class", "alert", "series_uid", "study_uid", "instances", "delivered",
    "quarantine_path", "owner", "lease_until", "commit_uid"})
#: The states in which a job is held by an owner under a lease.
ACTIVE = frozenset({JobState.CONVERTING, JobState.SENDING})


class HistoryEntry(NamedTuple):
    """One line of a job's timeline (a tuple, so templates and callers may unpack it)."""

    at: float
    from_state: str | None
    to_state: str
    attempt: int
    owner: str | None
    detail: str | None


class AuditEntry(TypedDict):
    """One operator action (console or CLI); a dict, so it is JSON as it is."""

    id: int
    at: float
    who: str
    via: str
    action: str
    target: str
    result: str


class NodeEntry(TypedDict):
    """A node that has used the journal (the node registry)."""

    owner: str
    pid: int
    host: str
    version: str
    started: float
    heartbeat: float
    stopped: float | None


class EchoRecord(NamedTuple):
    """The latest C-ECHO (or DICOMweb probe) of a destination."""

    name: str
    checked: float
    ok: bool
    message: str


class InvalidTransition(ValueError):
    """A move the state table does not allow (or a job that does not exist)."""


class JournalError(DicomNodeError):
    """The journal cannot be used as it is (missing, damaged, not a database, a schema to
    migrate or from a newer release); the message says which journal and what to do."""

    def __init__(self, reason: str) -> None:
        super().__init__(None, reason)


class JournalUnavailable(JournalError, OSError):
    """The database cannot be reached now (restarting, a partition): a running node retries
    with backoff and loses nothing; a command says so in one line (a JournalError)."""

    def __reduce__(self):
        return (self.__class__, (self.reason,))


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
