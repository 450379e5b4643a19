"""The node's side of storage commitment (PS3.4 Annex J): the jobs that wait in
``committing`` for an archive's report, the SCP that takes the reports that come on an
association of the archive's own, and the deadline after which the node asks again.

A worker sends the N-ACTION (``delivery._commit``) after it has put the Transaction UID in the
journal; the report is then taken here, from any process of the node, even one restarted
after SIGKILL: the SCP looks the transaction up in the journal, records each instance's result
and moves the job before it acknowledges the report. A job whose report never comes is moved
to retry-wait with an alert when its deadline (its ``next_attempt``) passes: the retry stores
what is missing and asks again. A source is moved or deleted only once its job is done, so
never before every instance is committed.
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Callable
from contextlib import closing

from node.errors import ConfigError
from node.net.commitment import CommitmentListener, CommitmentResult
from node.service.delivery import commitment_verdict
from node.service.journal import InvalidTransition, Job, JobState, JournalStore
from node.service.observability import Metrics, log_transition
from node.service.settings import Config

log = logging.getLogger("node.service")

#: How often overdue commitments are looked for (seconds).
CHECK_EVERY = 2.0


class Commitments:
    def __init__(self, config: Config, metrics: Metrics,
                 backoff: Callable[[int, float, float], float]) -> None:
        """``backoff``: the retry delay of an attempt (node.backoff_seconds)."""
        self.config = config
        self.metrics = metrics
        self.backoff = backoff
        #: jobs a report made done: their after-action (move, delete) is the node loop's
        self.done: queue.SimpleQueue[Job] = queue.SimpleQueue()
        self._due = 0.0
        self.listener: CommitmentListener | None = None
        n = config.node
        if n.commitment_port and any(d.commitment for d in config.destinations.values()):
            tls = config.commitment_tls()
            self.listener = CommitmentListener(n.ae_title, n.commitment_port, n.commitment_host,
                                               resolve=self._resolve, on_result=self._record,
                                               tls=tls)
            log.info("storage commitment SCP %s on %s:%d", n.ae_title, n.commitment_host,
                     self.listener.port)

    def close(self) -> None:
        if self.listener is not None:
            self.listener.close()

    # --- reports that come to our SCP (its threads) -----------------------------------------

    def _resolve(self, transaction_uid: str):
        with closing(self.config.open_journal(create=False)) as journal:
            job = journal.by_commit_uid(transaction_uid)
            if job is None:
                return None
            try:
                dest = self.config.destination(job.destination)
            except ConfigError:
                return None
            return dest, journal.instance_uids(job.id)

    def _record(self, transaction_uid: str, report: CommitmentResult) -> None:
        with closing(self.config.open_journal(create=False)) as journal:
            job = journal.by_commit_uid(transaction_uid)
            if job is None:
                raise ValueError("no job waits for this transaction any more")
            verdict, message, rows = commitment_verdict(journal.instance_uids(job.id), report)
            journal.record_instances(job.id, rows)
            self.settle(journal, job, verdict, message)

    # --- the node loop ------------------------------------------------------------------------

    def step(self, journal: JournalStore) -> None:
        """Jobs whose report is overdue: retried with an alert (the retry asks again)."""
        now = time.monotonic()
        if now < self._due:
            return
        self._due = now + CHECK_EVERY
        for job in journal.committing_due(time.time()):
            timeout = self._timeout(job)
            self.settle(journal, job, JobState.RETRY_WAIT,
                        f"no storage commitment report for transaction {job.commit_uid} "
                        f"within {timeout:g} s; asking again", alert=True)

    def _timeout(self, job: Job) -> float:
        try:
            return self.config.destination(job.destination).commitment_timeout
        except ConfigError:
            return 0.0

    def settle(self, journal: JournalStore, job: Job, verdict: JobState, message: str,
               alert: bool = False) -> Job | None:
        """Move a committing job on (done, or retry-wait within the retry policy, else
        failed); None when it moved meanwhile (a report and its deadline at once)."""
        n = self.config.node
        waited = max(0.0, time.time() - job.updated)
        try:
            if verdict == JobState.DONE:
                moved = journal.transition(job.id, "done", last_error=None, error_class=None,
                                           alert=0)
                self.done.put(moved)
            elif job.attempts < n.max_attempts:
                delay = self.backoff(job.attempts, n.retry_base_seconds, n.retry_max_seconds)
                moved = journal.transition(job.id, "retry-wait", last_error=message,
                                           error_class="commitment", alert=int(alert),
                                           next_attempt=time.time() + delay)
            else:
                moved = journal.transition(job.id, "failed", last_error=f"gave up after "
                                           f"{job.attempts} attempts: {message}",
                                           error_class="commitment")
        except InvalidTransition:
            return None
        outcome = "committed" if verdict == JobState.DONE else (
            "timeout" if alert else "failed")
        self.metrics.commitments.labels(outcome).inc()
        if verdict == JobState.DONE:
            self.metrics.commit_seconds.observe(waited)
        log_transition(moved, job.state, moved.state, message or "every instance committed")
        if alert:
            log.error("ALERT job %d: %s", job.id, message,
                      extra={"fields": {"job": job.id, "alert": True}})
        return moved
