"""Journal helpers for tests: put a job in a state directly (to test a move from it), in the
spelling of the store's own engine."""

from __future__ import annotations

from node.service.journal import JobState


def force_state(journal, job_id: int, state: JobState) -> None:
    """Set a job's state behind the journal's back: the start of a move to be tested."""
    if journal.engine == "sqlite":
        journal.db.execute("UPDATE jobs SET state = ? WHERE id = ?", (state.value, job_id))
    else:
        journal.conn.execute("UPDATE jobs SET state = %s WHERE id = %s", (state.value, job_id))
