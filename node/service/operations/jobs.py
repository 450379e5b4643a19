"""Operator actions on one job: release from quarantine, delete from quarantine, retry,
cancel. Each checks the job's state and moves it through the journal."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from node.convert.source import content_digest, is_nifti, nifti_stem
from node.service.operations import OperationError

if TYPE_CHECKING:
    from node.service.journal import Job, JournalStore


def delete_quarantined(journal: JournalStore, job_id: int) -> Job:
    """Delete a quarantined input for good: its files and reason go, the job is cancelled
    (the journal keeps its history)."""
    import shutil

    job = journal.get(job_id)
    if job is None or job.state != "quarantined":
        raise OperationError(None, f"job {job_id}: not in quarantine")
    if job.quarantine_path:
        shutil.rmtree(job.quarantine_path, ignore_errors=True)
    for other in _sharing(journal, job):  # the file's other destinations, quarantined with it
        journal.transition(other.id, "cancelled", last_error="deleted from quarantine by an "
                           "operator", quarantine_path=None)
    return journal.transition(job.id, "cancelled", last_error="deleted from quarantine by an "
                              "operator", quarantine_path=None)


def _sharing(journal: JournalStore, job: Job) -> list[Job]:
    """The other jobs of the same file quarantined in the same folder (a file refused for
    every destination of it): released or deleted together."""
    return [s for s in journal.siblings(job) if s.state == "quarantined"
            and s.quarantine_path == job.quarantine_path]


def release(journal: JournalStore, job_id: int) -> Job:
    """Put a quarantined input back where it came from and queue its content as it is now
    (the operator vouches for the file, fixed or not)."""
    import shutil

    job = journal.get(job_id)
    if job is None or job.state != "quarantined" or not job.quarantine_path:
        raise OperationError(None, f"job {job_id}: not in quarantine")
    folder = Path(job.quarantine_path)
    together = _sharing(journal, job)
    source = Path(job.source)
    gradients = [source.with_name(nifti_stem(source) + ext) for ext in (".bval", ".bvec")
                 ] if is_nifti(source) else []
    for original in (source, Path(job.sidecar) if job.sidecar else None, *gradients):
        if original is not None and (folder / original.name).exists():
            original.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(folder / original.name), original)
    shutil.rmtree(folder, ignore_errors=True)
    if not source.exists():
        raise OperationError(None, f"job {job.id}: {source} is missing from quarantine and its "
                             "original place")
    sidecar = Path(job.sidecar) if job.sidecar and Path(job.sidecar).exists() else None
    content = {"sha256": content_digest(source, sidecar), "size": source.stat().st_size}
    for other in together:
        journal.transition(other.id, "queued", attempts=0, next_attempt=0,
                           quarantine_path=None, **content)
    return journal.transition(job.id, "queued", attempts=0, next_attempt=0,
                              quarantine_path=None, **content)


def retry(journal: JournalStore, job_ids: Sequence[int] | None) -> tuple[list[int], list[int]]:
    """Queue failed or waiting jobs again (every failed one when ``job_ids`` is empty).

    Returns (requeued, refused): refused ids are unknown or in another state."""
    ids = journal.requeue(job_ids or None, states=("failed", "retry-wait"))
    return ids, sorted(set(job_ids or []) - set(ids))


def cancel(journal: JournalStore, job_id: int) -> Job:
    """Cancel a job that is waiting (queued, retry-wait), failed or quarantined; a job being
    converted or sent finishes first. ``retry`` or ``release`` bring it back."""
    job = journal.get(job_id)
    if job is None:
        raise OperationError(None, f"job {job_id}: no such job")
    if job.state not in ("queued", "retry-wait", "failed", "quarantined"):
        raise OperationError(None, f"job {job_id} is {job.state}: only a waiting, failed or "
                             "quarantined job can be cancelled")
    return journal.transition(job.id, "cancelled", last_error="cancelled by an operator")
