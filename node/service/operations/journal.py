"""The journal's upkeep: bring its schema up to date (``dicom-node journal migrate``), copy a
SQLite journal into PostgreSQL (``journal migrate --to``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MigrationReport:
    location: str
    before: int  # the schema version found (0: a new journal)
    after: int
    applied: list[str]  # "0002_history_id", ...


def migrate_journal(config) -> MigrationReport:
    """Apply the migrations the config's journal lacks (made when missing), in one
    transaction. JournalError for a journal from a newer release."""
    from node.service.journal import SCHEMA_VERSION, open_journal_at

    store = open_journal_at(config.journal_location, schema="as-is")
    try:
        before = store.schema_state().version
        applied = store.migrate()
    finally:
        store.close()
    return MigrationReport(str(config.journal_location), before, SCHEMA_VERSION,
                           [f"{m.version:04d}_{m.name}" for m in applied])


def copy_journal(config, url: str) -> tuple[str, dict[str, int]]:
    """Copy the node's SQLite journal into the empty PostgreSQL journal at ``url``; the
    source and the rows copied per table."""
    from node.service.journal.postgres import copy_from_sqlite

    source = config.node.state_dir / "journal.sqlite"
    return str(source), copy_from_sqlite(source, url)
