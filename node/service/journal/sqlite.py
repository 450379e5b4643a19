"""The journal in SQLite: embedded, one machine (the default).

WAL mode, so readers never wait for the writer; ``synchronous=FULL``, so a committed
transition survives power loss. Every write runs under ``BEGIN IMMEDIATE``, which takes
SQLite's one write lock at once: a row read inside it cannot change until the commit, which is
what the queue's read-check-write needs.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from node.service.journal.migrations import SchemaState
from node.service.journal.model import JournalError
from node.service.journal.store import SchemaMode, Store

#: Columns and indexes that journals made before versions were recorded may lack; they are
#: added before such a journal is adopted at version 1.
_UNVERSIONED_COLUMNS = {
    "jobs": {"key": "TEXT", "owner": "TEXT", "lease_until": "REAL NOT NULL DEFAULT 0",
             "memory": "INTEGER NOT NULL DEFAULT 0"},
    "destinations": {"latency_ms": "REAL"},
}
_UNVERSIONED_INDEXES = ("CREATE INDEX IF NOT EXISTS jobs_key ON jobs(key)",
                        "CREATE INDEX IF NOT EXISTS jobs_updated ON jobs(updated)")


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on an exception): SQLite's one write
    lock, taken at once. A class rather than a generator: the node opens three per job."""

    __slots__ = ("db",)

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind, exc, tb) -> None:
        self.db.execute("ROLLBACK" if kind is not None else "COMMIT")


class SqliteStore(Store):
    engine = "sqlite"

    def __init__(self, path: str | Path, *, create: bool = True,
                 schema: SchemaMode | None = None) -> None:
        """Open the journal at ``path``. With ``create`` (a node, or a command that enqueues),
        make it when missing and bring its schema up to date; without, only read and write
        jobs in a journal that is current. ``schema`` says otherwise (Store._open_schema).

        Raises JournalError, with the file and the way out, when it is missing (and not to be
        created), is a folder, is not a journal (truncated, overwritten, damaged), is from a
        newer release, or (without ``create``) must be migrated first.
        """
        self.path = Path(path)
        self.location = str(self.path)
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
            self.db.execute("PRAGMA busy_timeout=30000")
            self.db.execute("PRAGMA synchronous=FULL")  # a committed transition survives
            if create:
                self.db.execute("PRAGMA journal_mode=WAL")  # kept in the file once set
            self._open_schema(schema or ("migrate" if create else "check"))
        except sqlite3.DatabaseError as exc:
            self._close_quietly()
            if "disk is full" in str(exc) or "disk I/O" in str(exc):
                raise
            raise JournalError(
                f"{self.path}: not a usable journal ({exc}). Keep the damaged file for "
                f"inspection (mv {self.path} {self.path}.damaged) and start the node again: it "
                "makes a new journal and re-enqueues what is still in the watched folders; "
                "quarantine/ and done/ keep their files") from None
        except BaseException:
            self._close_quietly()
            raise

    def _close_quietly(self) -> None:
        db = getattr(self, "db", None)
        if db is not None:
            db.close()

    def close(self) -> None:
        self.db.close()

    def _tx(self) -> _Transaction:
        return _Transaction(self.db)

    def _execute(self, name: str, params: dict[str, Any]) -> sqlite3.Cursor:
        return self.db.execute(self._sql[name], params)

    # --- schema ----------------------------------------------------------------------------

    def _schema_state(self) -> SchemaState:
        tables = {name for (name,) in self._all("table_names")}
        recorded = self.db.execute("PRAGMA user_version").fetchone()[0]
        if "schema_migrations" in tables:
            (logged,) = self._one("latest_migration")  # type: ignore[misc]
            return SchemaState(max(recorded, logged or 0))
        if "jobs" in tables:  # release 0.1.0 (user_version 1) or older (0)
            return SchemaState(recorded, unversioned=recorded <= 1)
        return SchemaState(recorded)

    def _lock_schema(self) -> None:
        pass  # BEGIN IMMEDIATE holds the one write lock

    def _run_script(self, sql: str) -> None:
        """Statement by statement: executescript() would commit the transaction first."""
        statement = ""
        for line in sql.splitlines(keepends=True):
            statement += line
            if sqlite3.complete_statement(statement):
                self.db.execute(statement)
                statement = ""
        rest = [s for s in statement.splitlines() if s.strip() and not s.strip().startswith("--")]
        if rest:
            raise JournalError(f"{self.path}: a migration ends in an unfinished statement")

    def _adopt_unversioned(self) -> None:
        for table, columns in _UNVERSIONED_COLUMNS.items():
            have = {row[1] for row in self.db.execute(f"PRAGMA table_info({table})")}
            for column, kind in columns.items():
                if column not in have:
                    self.db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
        for statement in _UNVERSIONED_INDEXES:
            self.db.execute(statement)

    def _mark_version(self, version: int) -> None:
        self.db.execute(f"PRAGMA user_version = {int(version)}")

    # --- maintenance -------------------------------------------------------------------------

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
