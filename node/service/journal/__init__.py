"""The journal: every job and every state transition, durable; the one place state lives.

Each transition is one committed write before the next step starts, so a node killed at any
instant (SIGKILL included) resumes every job from its last committed state: jobs found in
``converting`` or ``sending`` whose owner is gone go back to ``queued`` (deterministic UIDs make
the resend idempotent in the PACS).

States (:class:`JobState`; :data:`ALLOWED` is the whole table, and ``move()`` refuses any other
move)::

    queued -> converting -> sending -> done
      |          |             |-> retry-wait -> (due) converting ...
      |          |             '-> failed            (permanent, or attempts exhausted)
      '----------'-> quarantined (bad input)   failed/quarantined/retry-wait -> queued (operator)
    converting/sending -> queued: recovery after an interruption
    queued/retry-wait/failed/quarantined -> cancelled (operator) -> queued (operator)

The package, one concern a module: ``model`` (the typed data and errors), ``store`` (the
:class:`JournalStore` interface), ``queue``, ``studies``, ``destinations``, ``audit``,
``nodes`` (the parts), ``migrations``, ``sqlite`` and ``postgres`` (the two engines, each with
its own SQL in ``sql/`` and ``migrations/``), ``dirs`` (the state folder and its lock).
"""

from __future__ import annotations

from pathlib import Path

from node.service.journal.dirs import NodeLock, StateDirs
from node.service.journal.migrations import SCHEMA_VERSION, Migration, SchemaState, migrations
from node.service.journal.model import (
    ACTIVE,
    AuditEntry,
    EchoRecord,
    HistoryEntry,
    InvalidTransition,
    Job,
    JournalError,
    JournalUnavailable,
    NodeEntry,
    owner_alive,
    owner_id,
)
from node.service.journal.sqlite import SqliteStore
from node.service.journal.store import JournalStore, SchemaMode
from node.service.states import ALLOWED, STATES, JobState

#: The embedded journal by the name it has always had (``Journal(path)``).
Journal = SqliteStore

__all__ = [
    "ACTIVE", "ALLOWED", "SCHEMA_VERSION", "STATES", "AuditEntry", "EchoRecord", "HistoryEntry",
    "InvalidTransition", "Job", "JobState", "Journal", "JournalError", "JournalStore",
    "JournalUnavailable", "Migration", "NodeEntry", "NodeLock", "SchemaMode", "SchemaState",
    "SqliteStore", "StateDirs", "is_url", "migrations", "open_journal", "open_journal_at",
    "owner_alive", "owner_id",
]


def is_url(location: str | Path) -> bool:
    return str(location).startswith(("postgresql://", "postgres://"))


def open_journal_at(location: str | Path, *, create: bool = True,
                    schema: SchemaMode | None = None) -> JournalStore:
    """The journal at ``location``: a postgresql:// URL, or the path of a SQLite file.

    ``create``: make it if missing and bring its schema up to date (a node at start, a command
    that enqueues); without, refuse a journal that is missing or must be migrated first (a
    console request, a read-only command). ``schema`` says otherwise (Store._open_schema)."""
    if is_url(location):
        from node.service.journal.postgres import PostgresStore

        return PostgresStore(str(location), create=create, schema=schema)
    return SqliteStore(location, create=create, schema=schema)


def open_journal(state_dir: Path, *, create: bool = True) -> JournalStore:
    """The SQLite journal of the node whose state folder is ``state_dir``."""
    return SqliteStore(StateDirs(state_dir).journal, create=create)
