"""Versioned schema migrations, applied once.

Each engine has its own files, ``migrations/<engine>/NNNN_what.sql``; both engines have the
same numbers, so a journal's version means the same on both. A journal records every migration
applied to it in ``schema_migrations``; it is brought up to date only by a writer that is
allowed to (``dicom-node journal migrate``, or a node at start with ``[node] auto_migrate``),
never by a console request or a read-only command: those refuse a journal that is behind,
naming the command that brings it up to date. A journal from a newer release is refused with
both version numbers. Journals made by release 0.1.0, which recorded only a number, are
adopted at version 1.
"""

from __future__ import annotations

import re
import time
from abc import abstractmethod
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from node.service.journal.model import JournalError
from node.service.journal.runner import QueryRunner

_HERE = Path(__file__).parent / "migrations"
_FILE = re.compile(r"^(\d{4})_(\w+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path

    @property
    def sql(self) -> str:
        return self.path.read_text(encoding="utf-8")


@cache
def migrations(engine: str) -> tuple[Migration, ...]:
    """The migrations of ``engine``, in order; numbered 1, 2, ... without a gap."""
    found = []
    for path in sorted((_HERE / engine).glob("*.sql")):
        match = _FILE.match(path.name)
        if match is None:
            raise ValueError(f"{path}: a migration is named NNNN_what.sql")
        found.append(Migration(int(match[1]), match[2], path))
    if [m.version for m in found] != list(range(1, len(found) + 1)):
        raise ValueError(f"{_HERE / engine}: migrations must be numbered 1, 2, ... without gaps")
    return tuple(found)


#: The schema this dicom-node writes and reads (the same number for both engines).
SCHEMA_VERSION = len(migrations("sqlite"))


@dataclass(frozen=True)
class SchemaState:
    """What a journal's schema is: the version it records (0 for an empty database), and
    whether its tables predate recorded versions (release 0.1.0 and earlier)."""

    version: int
    unversioned: bool = False

    @property
    def current(self) -> bool:
        return self.version == SCHEMA_VERSION and not self.unversioned


class Migrations(QueryRunner):
    """The migration side of a store; the engine says how its version is read and kept."""

    @abstractmethod
    def _schema_state(self) -> SchemaState:
        """Read the journal's schema version without writing anything."""

    @abstractmethod
    def _lock_schema(self) -> None:
        """Inside a transaction: one migrator at a time (several nodes may start at once)."""

    @abstractmethod
    def _run_script(self, sql: str) -> None:
        """Inside a transaction: run a migration file's statements."""

    @abstractmethod
    def _adopt_unversioned(self) -> None:
        """Inside a transaction: bring tables made before versions were recorded to
        version 1 (columns and indexes added since)."""

    @abstractmethod
    def _mark_version(self, version: int) -> None:
        """Inside a transaction: keep the number that release 0.1.0 reads up to date, so an
        older dicom-node refuses this journal instead of misreading it."""

    def schema_state(self) -> SchemaState:
        return self._schema_state()

    def check_schema(self) -> None:
        """Refuse a journal from a newer release, or one that must be migrated first."""
        state = self._schema_state()
        if state.version > SCHEMA_VERSION:
            raise JournalError(
                f"{self.location}: the journal's schema is version {state.version}, newer than "
                f"this dicom-node's ({SCHEMA_VERSION}): upgrade dicom-node")
        if state.version == 0 and not state.unversioned:
            raise JournalError(f"{self.location}: the journal has no tables yet: start the "
                               "node, or run `dicom-node journal migrate`")
        if not state.current:
            raise JournalError(
                f"{self.location}: the journal's schema is version {state.version}, this "
                f"dicom-node needs {SCHEMA_VERSION}: run `dicom-node journal migrate` (or "
                "start the node with [node] auto_migrate = true)")

    def migrate(self) -> list[Migration]:
        """Apply what is missing, in one transaction; the migrations applied (none, and
        nothing written, when the journal is current). JournalError for a journal from a
        newer release."""
        if self._schema_state().current:
            return []
        with self._tx():
            self._lock_schema()
            state = self._schema_state()  # another process may have migrated meanwhile
            if state.current:
                return []
            if state.version > SCHEMA_VERSION:
                self.check_schema()
            self._execute("create_migration_log", {})
            version = state.version
            if state.unversioned:
                self._adopt_unversioned()
                version = max(version, 1)
                self._execute("record_migration", {"version": 1, "name": "adopted",
                                                   "now": time.time()})
            applied = []
            for migration in migrations(self.engine)[version:]:
                self._run_script(migration.sql)
                self._execute("record_migration", {"version": migration.version,
                                                   "name": migration.name, "now": time.time()})
                applied.append(migration)
            self._mark_version(SCHEMA_VERSION)
        return applied
