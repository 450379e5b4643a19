"""Job states and the moves between them: the journal's vocabulary, importable without the
journal (and without sqlite3) by the console's parser and by anything that only names states.
"""

from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    """Where a job is. A delivery's verdict is the state it moves the job to."""

    QUEUED = "queued"
    CONVERTING = "converting"
    SENDING = "sending"
    COMMITTING = "committing"  # stored; waiting for the archive's storage commitment report
    DONE = "done"
    RETRY_WAIT = "retry-wait"
    FAILED = "failed"
    QUARANTINED = "quarantined"
    CANCELLED = "cancelled"  # by an operator (a quarantined input deleted, a job cancelled)


STATES = tuple(s.value for s in JobState)
_S = JobState
#: Every move a job may make; anything else is a bug and is refused.
ALLOWED: dict[JobState, frozenset[JobState]] = {
    _S.QUEUED: frozenset({_S.CONVERTING, _S.QUARANTINED, _S.CANCELLED}),
    _S.CONVERTING: frozenset({_S.SENDING, _S.RETRY_WAIT, _S.FAILED, _S.QUARANTINED, _S.QUEUED}),
    _S.SENDING: frozenset({_S.DONE, _S.RETRY_WAIT, _S.FAILED, _S.QUEUED, _S.COMMITTING}),
    _S.COMMITTING: frozenset({_S.DONE, _S.RETRY_WAIT, _S.FAILED, _S.QUEUED, _S.CANCELLED}),
    _S.RETRY_WAIT: frozenset({_S.CONVERTING, _S.QUEUED, _S.FAILED, _S.CANCELLED}),
    _S.FAILED: frozenset({_S.QUEUED, _S.CANCELLED}),
    _S.QUARANTINED: frozenset({_S.QUEUED, _S.CANCELLED}),
    _S.CANCELLED: frozenset({_S.QUEUED}),
    _S.DONE: frozenset(),
}
