"""The node: watch -> journal -> convert -> send -> record, unattended, for weeks.

:class:`Node` owns the loop. Files found complete by the watcher are hashed and enqueued;
due jobs are claimed from the journal and delivered by worker processes (conversion is
CPU-bound); every result is recorded in the journal before anything else happens to the job
(after-action, quarantine, backoff). SIGTERM/SIGINT stop taking work, let in-flight jobs
finish for up to ``shutdown_seconds`` and exit 0; anything interrupted (even by SIGKILL) is
resumed from the journal at the next start.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import errno
import hashlib
import logging
import os
import queue
import random
import shutil
import signal
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor
from concurrent.futures import wait as futures_wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

from node import __version__
from node.convert.source import default_sidecar_path, gradient_paths
from node.service.delivery import DeliveryResult, deliver
from node.service.intake import Identified, Intake, identify
from node.service.journal import (
    InvalidTransition,
    Job,
    JobState,
    JournalUnavailable,
    NodeLock,
    StateDirs,
    owner_id,
)
from node.service.observability import Metrics, log_transition, safe, setup_service_logging
from node.service.settings import Config, WatchSettings

log = logging.getLogger("node.service")


# --- the worker side --------------------------------------------------------------------------

_worker_logging = False


def warm_up() -> int:
    """Run once per worker at node start: import what a delivery needs before work arrives."""
    import node.convert.output  # noqa: F401 - and with it node.convert.series
    import node.net.scu  # noqa: F401 - with it, pynetdicom's PDU codecs

    return os.getpid()


def die_with_parent() -> None:
    """Worker initializer: a worker must not outlive a node killed with SIGKILL (Linux).

    Otherwise an orphan could go on sending while the restarted node resumes the same job.
    """
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _worker_init() -> None:
    """Worker initializer: die with the parent, and leave SIGINT/SIGTERM to it.

    Ctrl-C on a terminal, or systemd signalling the whole process group, would otherwise
    kill a worker mid-delivery (a traceback each, and the job failing as "worker process
    died"); the parent drains its workers instead.
    """
    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _deliver_in_worker(job: Job, config: Config, state_root: str, already: set[str],
                       owner: str):
    """Runs in a worker process: marks 'sending' in the journal itself (only while ``owner``
    still holds the job), then delivers. A bug is returned as its traceback, logged once by
    the node."""
    global _worker_logging
    if not _worker_logging:
        setup_service_logging(config.node.log_format)
        _worker_logging = True
    dirs = StateDirs(Path(state_root))

    def on_stage(stage: str, instance_rows=None, **changes) -> None:
        """A step begins: sending; or committing, with its Transaction UID and the
        instances' results, committed before the N-ACTION goes."""
        confirmed.flush()  # what was confirmed before goes first: results never go backwards
        journal = config.open_journal(create=False)
        try:
            if instance_rows:
                journal.record_instances(job.id, instance_rows)
            moved = journal.transition(job.id, stage, owner=owner, **changes)
        finally:
            journal.close()
        log_transition(moved, state[0], stage)
        state[0] = moved.state

    state = [job.state]  # the step before, as the log line names it

    def study(values, series_uid: str, own_number):
        """The journal remembers each study's values across jobs (one set per study)."""
        journal = config.open_journal(create=False)
        try:
            return journal.reconcile_study(values, series_uid, own_number)
        finally:
            journal.close()

    confirmed = _ConfirmedInstances(config, job.id)
    try:
        return deliver(job, config, dirs.spool, already, on_stage, study, confirmed.add)
    except InvalidTransition as exc:  # the lease was lost: another process has the job
        return DeliveryResult(JobState.RETRY_WAIT, str(exc), "lease")
    except JournalUnavailable as exc:  # the shared journal is away: try again later
        return DeliveryResult(JobState.RETRY_WAIT, str(exc), "journal")
    except (OSError, sqlite3.OperationalError) as exc:
        if not _disk_full(exc):
            raise
        # a fault of the environment, not of the input: retried when there is room
        return DeliveryResult(JobState.RETRY_WAIT, f"no space left on the state folder's "
                              f"disk ({exc})", "disk")
    except Exception as exc:
        import traceback

        return DeliveryResult(JobState.FAILED, "internal error (a bug in dicom-node; the "
                              f"traceback is in the log): {type(exc).__name__}: {exc}",
                              "internal", detail=traceback.format_exc(limit=12))
    finally:
        confirmed.close()


class _ConfirmedInstances:
    """Instances the peer confirmed, written to the journal as they come (at most
    ``every`` seconds apart, and before the worker ends): a node killed mid-series resumes
    without sending them again, to this destination or (a fan-out) to any other."""

    every = 0.25

    def __init__(self, config: Config, job_id: int) -> None:
        self.config, self.job_id = config, job_id
        self.rows: list[tuple[str, int | None, str]] = []
        self.flushed = time.monotonic()
        self.lock = threading.Lock()

    def add(self, result) -> None:
        if not result.outcome.delivered:
            return
        with self.lock:
            self.rows.append((result.file.sop_instance_uid, result.status,
                              result.outcome.value))
        if time.monotonic() - self.flushed >= self.every:
            self.flush()

    def flush(self) -> None:
        """Write what is pending (from whichever thread sends: a journal is opened and
        closed here, as a SQLite connection belongs to the thread that opened it)."""
        with self.lock:
            rows, self.rows = self.rows, []
            self.flushed = time.monotonic()
        if rows:
            journal = self.config.open_journal(create=False)
            try:
                journal.record_instances(self.job_id, rows)
            finally:
                journal.close()

    def close(self) -> None:
        # on failure the node records every result again when the worker's verdict arrives
        with contextlib.suppress(OSError, sqlite3.Error, JournalUnavailable):
            self.flush()


def _disk_full(exc: BaseException) -> bool:
    """Is this the disk (or quota) running out, as OSError or as SQLite says it?"""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return isinstance(exc, sqlite3.OperationalError) and (
        "disk is full" in str(exc) or "disk I/O error" in str(exc))


def backoff_seconds(attempt: int, base: float, cap: float, rng: random.Random = random) -> float:
    """Exponential backoff with jitter: base * 2^(attempt-1), capped, times U(0.5, 1)."""
    delay = min(cap, base * 2 ** max(0, attempt - 1))
    return delay * (0.5 + 0.5 * rng.random())


# --- the node ---------------------------------------------------------------------------------

@dataclass
class _InFlight:
    job: Job
    future: Future
    started: float = field(default_factory=time.monotonic)


def _half_the_memory() -> int:
    """The default memory_limit: half of this machine's memory (or of the container's)."""
    try:
        limit = int(Path("/sys/fs/cgroup/memory.max").read_text().strip())
    except (OSError, ValueError):
        limit = 0
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return (min(limit, total) if limit else total) // 2


class NodeStartError(Exception):
    """The node cannot start as configured; the message says what to change."""


class NodeBusy(NodeStartError):
    """Another live process runs a node on this state folder."""

    def __init__(self, pid: int, state_dir: Path) -> None:
        who = f"pid {pid}" if pid > 0 else "another process"
        super().__init__(f"{state_dir}: a node is already running here ({who}); stop it first, "
                         "or give this one its own [node].state_dir")
        self.pid = pid


class Node:
    """The long-running service; also drives ``ingest`` (no watchers, stop when drained).

    It holds the state folder's lock while it runs (one node per state folder), and every job
    it claims under a lease that its heartbeat renews: a second process never takes a job a
    live node holds, and a node that died loses its jobs to the next one that starts.
    """

    def __init__(self, config: Config, watch: bool = True, deliver: bool = True) -> None:
        """``deliver=False``: only enqueue (``ingest`` beside a running node, which delivers);
        such a Node takes no lock and starts no workers."""
        self.config = config
        self.dirs = StateDirs(config.node.state_dir)
        self.dirs.create()
        self.lock = NodeLock(config.node.state_dir)
        if deliver:
            holder = self.lock.acquire()
            if holder is not None:
                raise NodeBusy(holder, config.node.state_dir)
        self.journal = config.open_journal_at_start()
        self.owner = owner_id(node_id=config.node.node_id or None)
        self.stopping = threading.Event()
        self.metrics = Metrics()
        self.watching = watch
        self.intake = Intake()
        self.degraded: str | None = None  # why intake and sending are paused (disk full...)
        self.memory_limit = config.node.memory_limit or _half_the_memory()
        self._pool: ProcessPoolExecutor | None = None
        self._inflight: dict[int, _InFlight] = {}
        self._echo_due = 0.0
        self._renew_due = 0.0
        #: the wall clock schedules are read on (a test gives its own)
        self.clock: Callable[[], float] = time.time
        from node.service.commitments import Commitments

        try:
            self.commitments = (Commitments(config, self.metrics, backoff_seconds) if deliver
                                else None)
        except OSError as exc:
            self.lock.release()
            why = exc.strerror or exc
            raise NodeStartError(f"[node].commitment_port {config.node.commitment_port}: the "
                                 f"storage commitment SCP cannot listen there ({why}); "
                                 "choose a free port") from None
        from node.service.events import Events

        self.events = Events(config, self.owner) if deliver and config.receivers else None
        from node.service.watcher import FolderWatcher, Stabilizer

        self.stabilizer = Stabilizer()
        self._orphans: queue.SimpleQueue = queue.SimpleQueue()
        self.watcher = FolderWatcher(
            config.watches, self.stabilizer,
            lambda path, w: self._orphans.put((path, w))) if watch else None

    # the pieces ------------------------------------------------------------------------------

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            import multiprocessing as mp

            self._pool = ProcessPoolExecutor(self.config.node.workers,
                                             mp_context=mp.get_context("spawn"),
                                             initializer=_worker_init)
        return self._pool

    def enqueue_file(self, path: Path, watch: WatchSettings, sidecar_missing: bool = False):
        """Identify, hash and enqueue one complete file now (``ingest``; the node's loop does
        the same through its intake thread)."""
        profile = self.config.profile(watch.profile)
        return self._enqueue(identify(path, watch, profile, sidecar_missing,
                                      self.memory_limit, self.config.routes,
                                      self.config.profile))

    def _enqueue(self, found: Identified):
        """The jobs of an identified file, one per destination its route names (or
        quarantine, or a warning when it is refused); the first of them."""
        path, watch = found.path, found.watch
        if found.refused is not None:
            return self._refused(found)
        jobs, created = [], []
        for chosen, key in found.jobs:
            job, new = self.journal.enqueue(
                path, found.digest, found.size, chosen.profile, chosen.destination,
                watch.after, found.sidecar, key=key, memory=found.memory,
                form=chosen.form_text, priority=found.priority)
            jobs.append(job)
            if new:
                created.append(job)
                log_transition(job, "new", "queued", f"to {chosen.destination}" + (
                    f" ({chosen.form_text}, route {chosen.route!r})" if chosen.route else ""))
            else:
                log.info("%s: same content, profile and destination as job %d (%s), not "
                         "sent again", safe(path.name), job.id, job.state,
                         extra={"fields": {"job": job.id, "source": safe(path)}})
        if not created and all(j.state == "done" for j in jobs):
            self._after_action(jobs[0], path, found.sidecar, watch.after)
        if created and found.sidecar_missing:
            expected = default_sidecar_path(path).name
            self._quarantine(created, f"no BIDS sidecar {expected} arrived within "
                             f"{watch.sidecar_grace_seconds:g} s and this watch requires one; "
                             "add the sidecar next to the file and release it")
        return jobs[0]

    def _refused(self, found: Identified):
        """A file that is no job: left in place with a warning, or a quarantined job."""
        path, watch, reason = found.path, found.watch, found.refused.reason
        if not found.refused.quarantine:
            log.warning("%s: %s; left where it is", safe(path), reason)
            if reason.startswith("cannot read"):  # may pass: try again at the next scan
                self.stabilizer.forget(path)
            return None
        ident = hashlib.sha256(os.fsencode(path) + str(found.size).encode()).hexdigest()
        job, created = self.journal.enqueue(
            path, f"refused:{ident}", found.size, watch.profile,
            watch.destination, watch.after, None)
        if created:
            log_transition(job, "new", "queued")
            self._quarantine(job, f"{path}: {reason}")
        return job

    def held_back(self) -> tuple[list[str], list[str]]:
        """Destinations whose schedule is closed now (only their urgent jobs go) and those
        with as many jobs in flight on this node as their ``concurrency`` allows."""
        now = self.clock()
        closed = [name for name, p in self.config.policies.items()
                  if not p.schedule.is_open(now)]
        busy: dict[str, int] = {}
        for flight in self._inflight.values():
            busy[flight.job.destination] = busy.get(flight.job.destination, 0) + 1
        full = [name for name, p in self.config.policies.items()
                if p.concurrency and busy.get(name, 0) >= p.concurrency]
        return closed, full

    def _claim_and_submit(self) -> None:
        while len(self._inflight) < self.config.node.workers and not self.stopping.is_set():
            in_use = sum(f.job.memory for f in self._inflight.values())
            closed, full = self.held_back()
            job = self.journal.claim(owner=self.owner,
                                     lease_seconds=self.config.node.lease_seconds,
                                     memory=self.memory_limit - in_use if self._inflight
                                     else None, closed=closed, full=full)
            if job is None:
                return
            log_transition(job, "queued" if job.attempts <= 1 else "retry-wait", "converting")
            already = self.journal.delivered_instances(job.id)
            future = self._executor().submit(_deliver_in_worker, job, self.config,
                                             str(self.dirs.root), already, self.owner)
            self._inflight[job.id] = _InFlight(job, future)

    def _collect(self, wait: float = 0.0) -> None:
        deadline = time.monotonic() + wait
        while True:
            for job_id, flight in list(self._inflight.items()):
                if flight.future.done():
                    del self._inflight[job_id]
                    try:
                        result = flight.future.result()
                    except BrokenProcessPool:
                        self._pool = None
                        result = DeliveryResult(JobState.RETRY_WAIT, "worker process died", "crash")
                    except Exception as exc:  # a bug in a worker must not stop the node
                        log.exception("job %d: worker error", job_id)
                        result = DeliveryResult(JobState.FAILED, f"internal error: {exc}",
                                                "internal")
                    self._record(self.journal.get(job_id) or flight.job, result)
            if not self._inflight or time.monotonic() >= deadline:
                return
            time.sleep(0.05)

    def _record(self, job: Job, result: DeliveryResult) -> None:
        """Commit the outcome first, then act on it (move, quarantine, schedule); nothing when
        this node lost the job's lease to another process."""
        try:
            self._record_owned(job, result)
        except InvalidTransition as exc:
            log.warning("job %d: not recorded: %s", job.id, exc)

    def _record_owned(self, job: Job, result: DeliveryResult) -> None:
        n = self.config.node
        result = self._poisoned_instance(job, result)
        if result.error_class == "internal":  # a bug: its traceback once, at ERROR
            log.error("job %d: %s", job.id, result.message,
                      extra={"fields": {"job": job.id}, "traceback": result.detail})
        self.journal.record_instances(job.id, result.instance_rows)
        ident = {k: getattr(result, k) for k in ("series_uid", "study_uid", "instances")
                 if getattr(result, k) is not None}
        for warning in result.warnings:
            log.warning("job %d: %s", job.id, warning)
        if result.convert_seconds:
            self.metrics.convert_seconds.observe(result.convert_seconds)
        if result.send_seconds:
            self.metrics.delivery_seconds.observe(result.send_seconds)
        sent_now = sum(1 for _, _, o in result.instance_rows
                       if o in ("success", "warning", "duplicate"))
        self.metrics.instances.inc(sent_now)
        if result.verdict == JobState.COMMITTING:  # its report comes to our SCP
            log.info("job %d: %s", job.id, result.message, extra={"fields": {"job": job.id}})
            return
        if result.verdict == JobState.DONE:
            done = self.journal.transition(job.id, "done", owner=self.owner,
                                           delivered=result.delivered,
                                           last_error=None, error_class=None, alert=0, **ident)
            log_transition(done, job.state, "done", f"{result.delivered} instances")
            self._source_done(done)
            return
        self.metrics.failures.labels(result.error_class or "unknown").inc()
        if result.verdict == JobState.QUARANTINED:
            self._quarantine(job, result.message)
            return
        if result.verdict == JobState.RETRY_WAIT and job.attempts < n.max_attempts:
            delay = backoff_seconds(job.attempts, n.retry_base_seconds, n.retry_max_seconds)
            waiting = self.journal.transition(
                job.id, "retry-wait", owner=self.owner, next_attempt=time.time() + delay,
                last_error=result.message, error_class=result.error_class,
                alert=int(result.alert), delivered=result.delivered, **ident)
            log_transition(waiting, job.state, "retry-wait",
                           f"in {delay:.0f} s: {result.message}")
            if result.alert:
                log.error("ALERT job %d: %s: an operator must fix the destination; retrying "
                          "with backoff", job.id, result.message,
                          extra={"fields": {"job": job.id, "alert": True}})
            return
        message = result.message if result.verdict == JobState.FAILED else (
            f"gave up after {job.attempts} attempts: {result.message}")
        failed = self.journal.transition(job.id, "failed", owner=self.owner, last_error=message,
                                         error_class=result.error_class,
                                         delivered=result.delivered, **ident)
        log_transition(failed, job.state, "failed", message)

    #: How often one instance may leave the peer silent before it counts as the problem.
    INSTANCE_TIMEOUTS = 3

    def _poisoned_instance(self, job: Job, result: DeliveryResult) -> DeliveryResult:
        """An instance that keeps timing out while the peer stores the rest of its series is
        a problem with that instance, not the peer: the job fails for good, with the reason,
        instead of retrying it for hours."""
        for uid in result.timed_out:
            count = self.journal.count_timeout(job.id, uid)
            if count >= self.INSTANCE_TIMEOUTS and result.delivered > 0:
                return dataclasses.replace(
                    result, verdict=JobState.FAILED, error_class="instance",
                    message=f"instance {uid} left the peer silent {count} times while it "
                    f"stored {result.delivered} other instance(s) of this series: it cannot "
                    "take this instance (see the PACS's log); the job is failed, not retried")
        return result

    def _quarantine(self, jobs: Job | list[Job], reason: str) -> None:
        """Move the source and its sidecar aside with a reason file; the node goes on.

        ``jobs``: one job, or all the jobs of one file (its destinations), quarantined
        together. When other jobs of the file still need it (another destination is still
        being sent to), a copy goes aside and the file stays. A file that cannot be moved (a
        read-only inbox) stays where it is, and the reason file says so; the jobs are
        quarantined all the same."""
        jobs = jobs if isinstance(jobs, list) else [jobs]
        job = jobs[0]
        folder = self.dirs.quarantine / f"job-{job.id}"
        folder.mkdir(parents=True, exist_ok=True)
        ours = {j.id for j in jobs}
        others = [s for s in self.journal.siblings(job) if s.id not in ours
                  and s.state not in ("done", "cancelled", "quarantined")]
        stayed = [f"a copy: the file stays for job(s) {', '.join(str(o.id) for o in others)} "
                  "(its other destinations)"] if others else []
        source = self.config.local_path(job.source)
        for path in (source, self.config.local_path(job.sidecar) if job.sidecar else None,
                     *gradient_paths(source)):
            if path is not None and job.after == "keep":  # an archive is never changed
                stayed.append(f"{path} stays where it is (after = \"keep\")")
            elif path is not None and (path.exists() or path.is_symlink()):
                try:
                    (shutil.copy2 if others else shutil.move)(str(path), folder / path.name)
                except OSError as exc:
                    stayed.append(f"{path} could not be moved here ({exc.strerror}); it is "
                                  "still in the inbox")
        (folder / f"{safe(Path(job.source).name)}.reason.txt").write_text(
            f"{safe(reason)}\n\nSource: {safe(job.source)}\nSHA-256: {safe(job.sha256)}\n"
            + "".join(f"{safe(s)}\n" for s in stayed)
            + "Fix the file (or the profile), then: dicom-node quarantine release "
            f"{job.id}\n"
        )
        for one in jobs:
            moved = self.journal.transition(one.id, "quarantined", last_error=reason,
                                            error_class="input", quarantine_path=str(folder))
            log_transition(moved, one.state, "quarantined", reason)

    def _source_done(self, job: Job) -> None:
        """A job is done: its file is moved or deleted once every destination of it is done
        (its other jobs: routed to several destinations)."""
        waiting = [s for s in self.journal.siblings(job) if s.state not in ("done", "cancelled")]
        if waiting:
            log.info("job %d: done; %s stays for job(s) %s (%s)", job.id,
                     safe(Path(job.source).name), ", ".join(str(s.id) for s in waiting),
                     ", ".join(f"{s.destination}: {s.state}" for s in waiting),
                     extra={"fields": {"job": job.id}})
            return
        self._after_action(job, self.config.local_path(job.source),
                           self.config.local_path(job.sidecar) if job.sidecar else None,
                           job.after)

    def _after_action(self, job: Job, source: Path, sidecar: Path | None, after: str) -> None:
        """What happens to a delivered source (and its sidecar): move, delete or keep.

        The delivery is done whatever happens here: a file that cannot be moved or deleted
        (a read-only inbox) is a warning on the done job, never a crash.
        """
        files = [source] + ([sidecar] if sidecar else []) + gradient_paths(source)
        if after == "keep":
            return
        try:
            if after == "delete":
                for f in files:
                    f.unlink(missing_ok=True)
                return
            target = self.dirs.done / dt.date.today().isoformat() / self._in_watch(source)
            target.mkdir(parents=True, exist_ok=True)
            for f in files:
                if f.exists():
                    dest = target / f.name
                    if dest.exists():
                        dest = target / f"job-{job.id}-{f.name}"
                    shutil.move(str(f), dest)
        except OSError as exc:
            note = (f"delivered, but the source could not be {after}d ({exc.strerror}): "
                    "it stays in the inbox; see after = \"keep\" for read-only folders")
            log.warning("job %d %s: %s", job.id, safe(source.name), note,
                        extra={"fields": {"job": job.id}})
            self.journal.note(job.id, note)

    def _in_watch(self, source: Path) -> Path:
        """Where a file sits inside its watched folder (``sub-01/anat``), kept under done/ so
        a BIDS tree stays one (and a SEG delivered later finds its image there)."""
        watch = self.config.watch_for(source)
        if watch is None:
            return Path()
        return Path(os.path.relpath(source.parent, os.path.abspath(watch.path)))

    def _late_sidecar(self, sidecar: Path, watch: WatchSettings) -> None:
        """A sidecar whose image was already delivered without it: say so, and move it to
        the image (so the inbox does not keep it for ever). Its metadata is not in the PACS:
        drop image and sidecar again to send them together."""
        if not sidecar.exists():
            return
        stem = sidecar.name[: -len(".json")]
        job = self.journal.find_by_source([str(sidecar.with_name(stem + ext))
                                           for ext in (".nii.gz", ".nii")])
        if job is None or job.state != "done":
            return
        log.warning("%s: arrived after its image was delivered without it (job %d); the "
                    "series lacks its metadata: drop image and sidecar again to resend",
                    safe(sidecar.name), job.id, extra={"fields": {"job": job.id}})
        self.journal.note(job.id, f"its sidecar {sidecar.name} arrived after delivery")
        if watch.after == "keep":
            return
        try:
            if watch.after == "delete":
                sidecar.unlink()
            else:
                target = self.dirs.done / dt.date.today().isoformat()
                target.mkdir(parents=True, exist_ok=True)
                shutil.move(str(sidecar), target / f"job-{job.id}-{sidecar.name}")
        except OSError as exc:
            log.warning("%s: cannot move it (%s)", safe(sidecar.name), exc.strerror)

    def _echo_destinations(self) -> None:
        from node.net.remote import echo
        from node.net.status import NetworkFailure

        def run() -> None:
            try:
                journal = self.config.open_journal(create=False)
            except (sqlite3.Error, OSError) as exc:
                log.warning("echo: the journal cannot be opened now (%s)", exc)
                return
            try:
                for name, dest in self.config.destinations.items():
                    try:
                        r = echo(dest, self.config.node.ae_title)
                        journal.record_echo(name, True, f"{r.echo_ms:.1f} ms", r.echo_ms)
                    except NetworkFailure as exc:
                        journal.record_echo(name, False, exc.message)
                        log.warning("echo %s: %s", name, exc.message)
            except (sqlite3.Error, OSError) as exc:  # disk full: the next echo records it
                log.warning("echo: not recorded (%s)", exc)
            finally:
                journal.close()

        threading.Thread(target=run, daemon=True, name="echo").start()

    def _update_gauges(self) -> None:
        for state, count in self.journal.counts().items():
            self.metrics.jobs.labels(state).set(count)

    # the loop --------------------------------------------------------------------------------

    def install_signals(self) -> None:
        def stop(signum, _frame) -> None:
            log.info("signal %s: finishing in-flight jobs, taking no new work",
                     signal.Signals(signum).name)
            self.stopping.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)

    def start(self) -> None:
        node_id = self.owner.rpartition(":")[0]
        gone = time.time() - self.config.node.node_gone_seconds
        twins = [n for n in self.journal.running_nodes() if n["host"] == node_id
                 and n["owner"] != self.owner and n["heartbeat"] > gone]
        if twins:  # two live nodes with one id could not tell their leases apart
            raise NodeStartError(
                f"node id {node_id!r} is in use by a live node ({twins[0]['owner']}, heartbeat "
                f"{time.time() - twins[0]['heartbeat']:.0f} s ago) in the shared journal; give "
                "this node its own [node].node_id")
        self.journal.register_node(self.owner, __version__)
        for receiver in self.config.receivers:  # a new receiver hears from this start on
            self.journal.cursor(receiver.key)
        self.journal.record_event("node.started", self.owner, detail=f"dicom-node {__version__}",
                                  owner=self.owner)
        if self.events is not None:
            self.events.start()
        for job in self.journal.recover():
            log_transition(job, job.state, "queued", "resumed after an interruption")
        n = self.config.node
        if n.metrics_port and self.watching:  # ingest serves none: a node may hold the port
            try:
                port = self.metrics.serve(n.metrics_port, n.metrics_host, self.health)
            except OSError as exc:
                raise NodeStartError(f"[node].metrics_port {n.metrics_port} on "
                                     f"{n.metrics_host}: {exc.strerror}; choose a free port "
                                     "or 0 to switch /healthz and /metrics off") from None
            log.info("health and metrics on http://%s:%d/healthz and /metrics",
                     n.metrics_host, port)
        pool = self._executor()  # spawn and warm the workers now, not when the first file lands
        for _ in range(self.config.node.workers):
            pool.submit(warm_up)
        if self.watcher is not None:
            self.watcher.start()
            n = self.watcher.rescan()
            log.info("watching %s; %d files present at start-up",
                     ", ".join(str(w.path) for w in self.config.watches) or "nothing", n)

    def health(self) -> dict:
        """What /healthz says: the loop's age and whether the node is degraded, and why."""
        age = time.monotonic() - self.metrics.heartbeat
        out = {"ok": age < 30 and self.degraded is None, "loop_age_seconds": round(age, 1)}
        if self.degraded:
            out["degraded"] = self.degraded
        return out

    def step(self) -> None:
        """One pass of the loop: hand settled files to intake, enqueue what intake
        identified, start due jobs, record results. Journal writes that fail for want of disk
        space put the node in a degraded state (see :meth:`_guarded_step`)."""
        now = time.monotonic()
        self.metrics.heartbeat = now
        if now >= self._renew_due:
            self.journal.renew(self.owner, self.config.node.lease_seconds)
            self._renew_due = now + self.config.node.lease_seconds / 4
            for job in self.journal.recover():  # leases of other, dead processes
                log_transition(job, job.state, "queued", "resumed: its owner is gone")
        if self._low_on_space():
            return
        for path, watch, missing in self.stabilizer.ready():
            self.intake.submit(path, watch, self.config.profile(watch.profile), missing,
                               self.memory_limit, self.config.routes, self.config.profile)
        identified = self.intake.done()
        for i, found in enumerate(identified):
            try:
                self._enqueue(found)
            except (sqlite3.OperationalError, OSError):
                for left in identified[i:]:  # not in the journal: taken again at a rescan
                    self.stabilizer.forget(left.path)
                raise
            except Exception:  # a bug must not stop the node; the next rescan tries again
                log.exception("%s: could not enqueue", safe(found.path))
                self.stabilizer.forget(found.path)
        self._claim_and_submit()
        self._collect()
        if self.commitments is not None:
            self.commitments.step(self.journal)
            while not self.commitments.done.empty():  # done by a report to our SCP
                self._source_done(self.commitments.done.get_nowait())
        while not self._orphans.empty():
            self._late_sidecar(*self._orphans.get_nowait())
        if self.watching and now >= self._echo_due:
            self._echo_due = now + self.config.node.echo_interval_seconds
            self._echo_destinations()

    def run(self, until: Callable[[], bool] | None = None, tick: float = 0.2) -> int:
        """Loop until SIGTERM/SIGINT, or until ``until()`` says the work asked for is done
        (``ingest``: its jobs are finished)."""
        self.start()
        next_scan = time.monotonic() + self.config.node.rescan_seconds
        next_gauges = 0.0
        try:
            while not self.stopping.is_set():
                self._guarded_step()
                now = time.monotonic()
                if self.watcher is not None and now >= next_scan:
                    self.watcher.rescan()
                    next_scan = now + self.config.node.rescan_seconds
                if now >= next_gauges:
                    self._update_gauges()
                    next_gauges = now + 2.0
                if until is not None and until():
                    break
                self.idle(tick)
        finally:
            self.shutdown()
        return 0

    def _guarded_step(self) -> None:
        """A step; when the disk is full (the journal cannot commit, a spool or quarantine
        write fails), stop intake and sending, report degraded, and try again with backoff.
        Every committed state is kept; the node resumes by itself when space returns."""
        try:
            self.step()
        except JournalUnavailable as exc:  # PostgreSQL restarting, a partition: back off
            if self.degraded is None:
                log.error("degraded: %s; intake and sending pause until it is back", exc)
            self.degraded = f"the journal database is unreachable ({exc})"
            self._journal_backoff = min(30.0, max(1.0, getattr(self, "_journal_backoff", 0.5)
                                              * 2))
            self.stopping.wait(self._journal_backoff)
            return
        except (sqlite3.OperationalError, OSError) as exc:
            if not _disk_full(exc):
                raise
            if self.degraded is None:
                log.error("degraded: no space left for the journal or the spool (%s); intake "
                          "and sending are paused until there is room", exc)
            self.degraded = f"no space left on the state folder's disk ({exc})"
            self.stopping.wait(2.0)
            return
        if self.degraded is not None and self.degraded.startswith("the journal database"):
            log.warning("recovered: the journal database is back")
            self.degraded, self._journal_backoff = None, 0.5
        if self.degraded is not None and not self._low_on_space() and (
                self._free_bytes() > max(self.config.node.min_free_bytes, self._margin())):
            log.warning("recovered: space is back, intake and sending resume")
            self.degraded = None

    def _margin(self) -> int:
        """Free space that counts as "back" after a full disk: 8 MiB, or a tenth of a small
        disk, so that the node does not flap between degraded and recovered."""
        try:
            return min(8 * 1024**2, shutil.disk_usage(self.dirs.root).total // 10)
        except OSError:
            return 8 * 1024**2

    def _free_bytes(self) -> int:
        try:
            return shutil.disk_usage(self.dirs.root).free
        except OSError:
            return 0

    def _low_on_space(self) -> bool:
        """Below ``min_free_bytes`` on the state folder: degraded, no new work."""
        try:
            free = shutil.disk_usage(self.dirs.root).free
        except OSError:
            return False
        if free >= self.config.node.min_free_bytes:
            return False
        if self.degraded is None:
            log.error("degraded: %d bytes free in %s, below [node].min_free_bytes %d; intake "
                      "and sending are paused until there is room", free, self.dirs.root,
                      self.config.node.min_free_bytes)
        self.degraded = (f"{free} bytes free in {self.dirs.root}, below min_free_bytes "
                         f"{self.config.node.min_free_bytes}")
        self._collect()  # results of jobs in flight are still recorded when they can be
        return True

    def idle(self, tick: float) -> None:
        """Sleep until a job finishes, a signal arrives, or ``tick`` passes."""
        if self._inflight:
            futures_wait([f.future for f in self._inflight.values()], timeout=tick,
                         return_when=FIRST_COMPLETED)
        else:
            self.stopping.wait(tick)

    def shutdown(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()
        if self._inflight:
            log.info("waiting up to %g s for %d in-flight job(s)",
                     self.config.node.shutdown_seconds, len(self._inflight))
            self._collect(wait=self.config.node.shutdown_seconds)
        for flight in self._inflight.values():  # still running: resumed at the next start
            log.info("job %d is still running; it resumes from the journal at the next start",
                     flight.job.id)
        if self._pool is not None:
            self._pool.shutdown(wait=not self._inflight, cancel_futures=True)
            if self._inflight:
                for proc in list(getattr(self._pool, "_processes", {}).values()):
                    proc.kill()
        if self.commitments is not None:
            self.commitments.close()
        if self.events is not None:
            with contextlib.suppress(sqlite3.Error, OSError, JournalUnavailable):
                self.journal.record_event("node.stopped", self.owner, owner=self.owner)
            self.events.close(wait=3.0)  # what is left goes after the next start
        self.metrics.stop()
        self.intake.close()
        with contextlib.suppress(sqlite3.Error):
            self.journal.node_stopped(self.owner)
        self.journal.close()
        self.lock.release()
        log.info("stopped (pid %d)", os.getpid())
