"""The job queue: enqueue, claim under a lease, move between states, recover what a dead
process held, requeue; and what is read of jobs (pages, counts, history).

Every state write goes through :meth:`Queue.move`, which reads the job, checks the move
against :data:`~node.service.states.ALLOWED`, the fields that may change, and that the writer
still holds the job's lease; then writes what the move changes (the narrowest of the move
queries that covers it) in one transaction, only if the job is still as it was read (else it
reads the job again and checks again), adds one history line, and commits (on PostgreSQL
the write and its history line are one statement, atomic without a BEGIN and a COMMIT).
A process killed at any instant (SIGKILL included) leaves each job in its last committed
state.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from node.service.journal.model import (
    ACTIVE,
    MUTABLE_FIELDS,
    HistoryEntry,
    InvalidTransition,
    Job,
    owner_alive,
    owner_id,
)
from node.service.journal.runner import QueryRunner
from node.service.states import ALLOWED, STATES, JobState

#: The states from which a fresh drop of the same content queues the job again.
_ASK_AGAIN = frozenset({JobState.FAILED, JobState.CANCELLED})
#: How often a move is tried again when the job changed between its read and its write.
_TRIES = 5
#: How much of a detail or error a history line keeps.
_DETAIL_CAP = 2000
#: The move queries, narrowest first, and the fields each writes besides the state and the
#: time: a move uses the first that covers what it changes (a narrower write is cheaper; the
#: node makes three moves per job). move_job_content also changes what the job is made of.
_MOVES = (("move_hands", frozenset({"attempts", "owner", "lease_until"})),
          ("move_job", MUTABLE_FIELDS - {"source", "sidecar", "sha256", "size"}),
          ("move_job_content", MUTABLE_FIELDS))
_WRITTEN = {query: ("id", "updated", *sorted(written)) for query, written in _MOVES}


class _MovedMeanwhile(Exception):
    """The job changed between the read and the write of a move (a move reads before its
    transaction; its UPDATE checks the state, the hands and the time of the last change it
    read): the transaction is rolled back and the move made again on the job as it now is."""


class Queue(QueryRunner):
    # --- the one state write ----------------------------------------------------------------

    def _move(self, job: Job, target: JobState, *, holder: str | None = None,
              detail: str | None = None, attempt: int | None = None,
              **changes: object) -> Job:
        """In the move's transaction (see _move_tx), with ``job`` as read: check and write
        the move and its history line (nothing is written, and _MovedMeanwhile raised, when
        the job changed since it was read).

        ``holder``: the process that says it holds the job; refused when the job is active
        and held by another (its lease was taken over: a process that lost its lease records
        nothing). ``attempt``: the attempt the history line names (default: the job's)."""
        if target not in ALLOWED[job.state]:
            raise InvalidTransition(f"job {job.id}: {job.state.value} -> {target.value} is not "
                                    "an allowed move")
        if holder is not None and job.state in ACTIVE and job.owner != holder:
            raise InvalidTransition(f"job {job.id}: held by {job.owner}, not {holder}: the "
                                    "lease was lost")
        if not MUTABLE_FIELDS.issuperset(changes):
            unknown = ", ".join(sorted(set(changes) - MUTABLE_FIELDS))
            raise ValueError(f"job {job.id}: {unknown} cannot be changed")
        if target not in ACTIVE:
            changes.setdefault("lease_until", 0.0)
        now = time.time()
        moved = job._replace(state=target, updated=now, **changes)
        query = next(query for query, written in _MOVES if written.issuperset(changes))
        params = {name: getattr(moved, name) for name in _WRITTEN[query]}
        old, new = job.state.value, target.value
        note = detail if detail is not None else changes.get("last_error")
        params.update(state=new, from_state=old, from_owner=job.owner,
                      from_updated=job.updated,  # and the history line's:
                      line_attempt=moved.attempts if attempt is None else attempt,
                      line_owner=holder or changes.get("owner") or job.owner,
                      line_detail=note[:_DETAIL_CAP] if note else None)
        if self._execute(query, params).rowcount != 1:
            raise _MovedMeanwhile(job.id)  # moved since it was read: nothing is written
        if not self.moves_write_history:
            self._history(job.id, old, new, params["line_attempt"], params["line_owner"],
                          params["line_detail"], now)
        return moved

    def move(self, job_id: int, state: str | JobState, *, owner: str | None = None,
             detail: str | None = None, **changes: object) -> Job:
        """Move a job to ``state`` and change other fields, in one committed write with a line
        in its history; the job as it now is.

        ``owner``: the process that holds the job (a worker recording its step). Raises
        InvalidTransition when :data:`ALLOWED` has no such move from the job's state, when
        there is no such job, or when ``owner`` no longer holds the job. ValueError for an
        unknown state or a field that may not change.
        """
        try:
            target = JobState(state)
        except ValueError:
            raise ValueError(f"unknown state {state!r}") from None
        for _ in range(_TRIES):
            # read before the transaction: the write checks that the job is still as read, so
            # the engine's write lock is held only for the write and its history line
            job = self._job("job_to_move", id=job_id)
            if job is None:
                raise InvalidTransition(f"job {job_id}: no such job")
            try:
                with self._move_tx():
                    return self._move(job, target, holder=owner, detail=detail, **changes)
            except _MovedMeanwhile:
                continue  # read it again: the checks apply to the job as it is now
        raise InvalidTransition(f"job {job_id}: moved by others {_TRIES} times while this "
                                "move was made")

    #: The name the node and the operations have always used.
    transition = move

    def _history(self, job_id: int, old: str | None, new: str, attempt: int,
                 owner: str | None, detail: str | None, at: float | None = None) -> None:
        self._execute("insert_history", {
            "job_id": job_id, "at": time.time() if at is None else at, "from_state": old,
            "to_state": new, "attempt": attempt, "owner": owner,
            "detail": detail[:_DETAIL_CAP] if detail else None})

    # --- enqueue and claim ------------------------------------------------------------------

    def enqueue(
        self, source: Path, sha256: str, size: int, profile: str, destination: str,
        after: str = "move", sidecar: Path | None = None, key: str | None = None,
        memory: int = 0, form: str | None = None, priority: int = 0,
    ) -> tuple[Job, bool]:
        """Add a job unless one exists for the same ``key`` (content and everything that shapes
        the output, see ``intake.job_key``), or without a key for the same content,
        destination and profile.

        Returns (job, created). An existing failed or cancelled job for the content is queued
        again with the new path (a fresh drop of the same file is an operator asking again).
        ``form``: the route's form for the destination (JSON, see routing.Chosen);
        ``priority``: 1 for urgent.
        """
        with self._tx():
            if key is not None:
                found = self._job("latest_job_by_key", key=key)
            else:
                found = self._job("latest_job_by_content", sha256=sha256,
                                  destination=destination, profile=profile)
            if found is not None and found.state not in _ASK_AGAIN:
                return found, False
            if found is not None:
                try:  # (the row is locked by the read: nobody moves it meanwhile)
                    return self._move(found, JobState.QUEUED, detail="enqueued again",
                                      attempt=0, source=str(source),
                                      sidecar=str(sidecar) if sidecar else None, attempts=0,
                                      next_attempt=0.0, alert=0), True
                except _MovedMeanwhile:
                    return self.get(found.id), False  # type: ignore[return-value]
            now = time.time()
            (new_id,) = self._one(  # type: ignore[misc]
                "insert_job", source=str(source), sidecar=str(sidecar) if sidecar else None,
                sha256=sha256, size=size, profile=profile, destination=destination,
                after=after, state=JobState.QUEUED.value, now=now, key=key, memory=memory,
                form=form, priority=priority)
            self._history(new_id, None, JobState.QUEUED.value, 0, None, None, now)
        return self.get(new_id), True  # type: ignore[return-value]

    def claim(self, now: float | None = None, owner: str | None = None,
              lease_seconds: float = 60.0, memory: int | None = None,
              closed: Sequence[str] = (), full: Sequence[str] = ()) -> Job | None:
        """Take the most urgent, then oldest, due job (queued, or retry-wait whose time has
        come): -> converting, held by ``owner`` under a lease of ``lease_seconds`` (renewed by
        :meth:`renew`).

        ``memory``: the bytes left in the node's budget; when the job due first needs more,
        nothing is claimed (it waits for jobs in flight to finish, and keeps its turn).
        ``closed``: destinations outside their schedule (only urgent jobs of them are taken);
        ``full``: destinations at their cap of jobs at once (none of their jobs is taken)."""
        now = time.time() if now is None else now
        owner = owner or owner_id()
        with self._tx():
            job = self._job("next_due", now=now, **self._name_lists(closed=closed, full=full))
            if job is None or (memory is not None and job.memory > memory):
                return None
            try:  # (the row is locked by the read: nobody moves it meanwhile)
                return self._move(job, JobState.CONVERTING, attempts=job.attempts + 1,
                                  owner=owner, lease_until=now + lease_seconds)
            except _MovedMeanwhile:
                return None

    def siblings(self, job: Job) -> list[Job]:
        """The other jobs of the same file (same path and content): its other destinations."""
        return self._jobs("siblings", source=job.source, sha256=job.sha256, id=job.id)

    def renew(self, owner: str, lease_seconds: float = 60.0) -> int:
        """Extend the leases of the jobs ``owner`` holds, and its heartbeat as a node; how
        many jobs it holds."""
        now = time.time()
        with self._tx():
            held = self._rowcount("renew_leases", owner=owner, until=now + lease_seconds)
            self._execute("heartbeat", {"owner": owner, "now": now})
        return held

    def recover(self, now: float | None = None) -> list[Job]:
        """Jobs interrupted mid-step whose owner is gone go back to queued (their attempt is
        undone). Gone: its lease expired, or it was a process of this host that no longer
        exists (a node restarted after SIGKILL resumes at once). A live owner's jobs are never
        touched, so a second process beside a running node cannot take its work."""
        now = time.time() if now is None else now
        taken = []
        for candidate in self._jobs("active_jobs"):
            if candidate.lease_until >= now and owner_alive(candidate.owner):
                continue
            try:
                with self._tx():
                    job = self._job("job_to_move", id=candidate.id)
                    if job is None or (job.state, job.owner) != (candidate.state,
                                                                 candidate.owner):
                        continue  # it moved meanwhile: its holder is alive after all
                    self._move(job, JobState.QUEUED, detail="resumed: its owner is gone",
                               attempt=job.attempts, attempts=max(job.attempts - 1, 0),
                               owner=None)
            except _MovedMeanwhile:
                continue  # likewise
            taken.append(job)
        return taken

    def requeue(self, job_ids: Iterable[int] | None = None,
                states: Iterable[str] = ("failed",)) -> list[int]:
        """Operator retry: the given jobs (or all in ``states``) go back to queued; the ids
        moved. Jobs in other states are left as they are."""
        wanted = {JobState(s) for s in states}
        if not all(JobState.QUEUED in ALLOWED[s] for s in wanted):
            raise InvalidTransition(f"jobs in {sorted(wanted)} cannot be queued again")
        if job_ids is None:
            ids = sorted(j.id for s in wanted for j in self._jobs("jobs_in_state", state=s.value))
        else:
            ids = list(job_ids)
        moved = []
        for job_id in ids:
            try:
                with self._tx():
                    job = self._job("job_to_move", id=job_id)
                    if job is None or job.state not in wanted:
                        continue
                    self._move(job, JobState.QUEUED, detail="requeued by an operator",
                               attempt=0, attempts=0, next_attempt=0.0, alert=0)
            except _MovedMeanwhile:
                continue  # a node took it meanwhile (its retry came due): left to it
            moved.append(job_id)
        return moved

    def note(self, job_id: int, text: str) -> None:
        """A remark on a job that changes no state (e.g. a done job whose file stayed)."""
        with self._tx():
            job = self._job("job_to_move", id=job_id)
            if job is None:
                raise InvalidTransition(f"job {job_id}: no such job")
            self._execute("note_job", {"id": job_id, "text": text, "now": time.time()})
            self._history(job_id, None, job.state.value, 0, None, text)

    # --- per-instance results -----------------------------------------------------------------

    def record_instances(self, job_id: int, rows: Iterable[tuple[str, int | None, str]]) -> None:
        """Per-instance results (SOP Instance UID, status, outcome), latest wins."""
        with self._tx():
            for uid, status, outcome in rows:
                self._execute("record_instance", {"job_id": job_id, "uid": uid,
                                                  "status": status, "outcome": outcome})

    def count_timeout(self, job_id: int, sop_instance_uid: str) -> int:
        """One more time this instance was in flight when the peer fell silent; the total."""
        with self._tx():
            (count,) = self._one("count_timeout", job_id=job_id,  # type: ignore[misc]
                                 uid=sop_instance_uid)
        return int(count)

    def delivered_instances(self, job_id: int) -> set[str]:
        """Instances stored by an earlier attempt (and not reported uncommitted since)."""
        return {uid for (uid,) in self._all("delivered_instances", job_id=job_id)}

    def instance_uids(self, job_id: int) -> set[str]:
        """Every instance the job has a result for (what a commitment request listed)."""
        return {uid for (uid,) in self._all("job_instance_uids", job_id=job_id)}

    def by_commit_uid(self, transaction_uid: str) -> Job | None:
        """The job waiting in ``committing`` for this storage commitment transaction."""
        return self._job("job_by_commit_uid", uid=transaction_uid)

    def committing_due(self, now: float) -> list[Job]:
        """Jobs whose commitment report is overdue (its deadline is their next_attempt)."""
        return self._jobs("committing_due", now=now)

    # --- reading ------------------------------------------------------------------------------

    def get(self, job_id: int) -> Job | None:
        return self._job("job", id=job_id)

    def history(self, job_id: int) -> list[HistoryEntry]:
        """A job's timeline, oldest first."""
        return [HistoryEntry(*row) for row in self._all("history", job_id=job_id)]

    def find_by_source(self, sources: list[str]) -> Job | None:
        """The latest job for any of these source paths."""
        found = [j for s in sources if (j := self._job("latest_job_by_source", source=s))]
        return max(found, key=lambda j: j.id) if found else None

    def jobs(self, state: str | None = None, limit: int | None = None) -> list[Job]:
        return self._jobs("jobs_page", state=state, limit=int(limit) if limit else None)

    def backlog(self) -> dict[str, int]:
        """Jobs waiting to be sent (queued, retry-wait), per destination."""
        return {name: int(n) for name, n in self._all("backlog_by_destination")}

    def counts(self) -> dict[str, int]:
        return {state: 0 for state in STATES} | dict(self._all("count_by_state"))

    def oldest_waiting(self) -> Job | None:
        return self._job("oldest_waiting")

    def last_errors(self, n: int = 5) -> list[Job]:
        return self._jobs("last_errors", n=n)

    def alerts(self) -> list[Job]:
        return self._jobs("alerts")

    def find_jobs(self, state: str | None = None, destination: str | None = None,
                  text: str | None = None, limit: int = 50, offset: int = 0,
                  since: float | None = None, until: float | None = None
                  ) -> tuple[list[Job], int]:
        """A page of jobs, newest first, and how many match: by state, destination, a text
        found in the source path or the series UID, and when they were queued."""
        where = {"state": state or None, "destination": destination or None,
                 "text": text or None, "since": since, "until": until}
        (total,) = self._one("count_found", **where)  # type: ignore[misc]
        return self._jobs("find_jobs", **where, limit=limit, offset=offset), int(total)

    def done_per_bucket(self, since: float, bucket: float = 300.0) -> list[int]:
        """Jobs done in each ``bucket`` seconds since ``since`` (the dashboard's chart)."""
        n = max(1, int((time.time() - since) // bucket) + 1)
        counts = [0] * n
        for (at,) in self._all("done_since", since=since):
            counts[min(n - 1, int((at - since) // bucket))] += 1
        return counts
