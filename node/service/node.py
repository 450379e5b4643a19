"""The node: watch -> journal -> convert -> send -> record, unattended, for weeks.

:class:`Node` owns the loop. Files found complete by the watcher are hashed and enqueued;
due jobs are claimed from the journal and delivered by worker processes (conversion is
CPU-bound); every result is recorded in the journal before anything else happens to the job
(after-action, quarantine, backoff). SIGTERM/SIGINT stop taking work, let in-flight jobs
finish for up to ``shutdown_seconds`` and exit 0; anything interrupted (even by SIGKILL) is
resumed from the journal at the next start.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import random
import shutil
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor
from concurrent.futures import wait as futures_wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

from node.convert.source import content_digest, default_sidecar_path, sidecar_of
from node.service.delivery import DeliveryResult, deliver
from node.service.journal import Job, JobState, Journal, StateDirs
from node.service.observability import Metrics, log_transition, setup_service_logging
from node.service.settings import Config, WatchSettings

log = logging.getLogger("node.service")


# --- the worker side --------------------------------------------------------------------------

_worker_logging = False


def warm_up() -> int:
    """Run once per worker at node start: import what a delivery needs before work arrives."""
    import node.convert.series  # noqa: F401
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


def _deliver_in_worker(job: Job, config: Config, state_root: str, already: set[str]):
    """Runs in a worker process: marks 'sending' in the journal itself, then delivers."""
    global _worker_logging
    if not _worker_logging:
        setup_service_logging(config.node.log_format)
        _worker_logging = True
    dirs = StateDirs(Path(state_root))

    def on_stage(stage: str) -> None:
        journal = Journal(dirs.journal)
        try:
            moved = journal.transition(job.id, stage)
        finally:
            journal.close()
        log_transition(moved, job.state, stage)

    return deliver(job, config, dirs.spool, already, on_stage)


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


class Node:
    """The long-running service; also drives ``ingest`` (no watchers, stop when drained)."""

    def __init__(self, config: Config, watch: bool = True) -> None:
        self.config = config
        self.dirs = StateDirs(config.node.state_dir)
        self.dirs.create()
        self.journal = Journal(self.dirs.journal)
        self.stopping = threading.Event()
        self.metrics = Metrics()
        self.watching = watch
        self._pool: ProcessPoolExecutor | None = None
        self._inflight: dict[int, _InFlight] = {}
        self._echo_due = 0.0
        from node.service.watcher import FolderWatcher, Stabilizer

        self.stabilizer = Stabilizer()
        self.watcher = FolderWatcher(config.watches, self.stabilizer) if watch else None

    # the pieces ------------------------------------------------------------------------------

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            import multiprocessing as mp

            self._pool = ProcessPoolExecutor(self.config.node.workers,
                                             mp_context=mp.get_context("spawn"),
                                             initializer=die_with_parent)
        return self._pool

    def enqueue_file(self, path: Path, watch: WatchSettings, sidecar_missing: bool = False):
        """Hash and enqueue one complete file (or quarantine it when its sidecar never came)."""
        sidecar = sidecar_of(path)
        if sidecar is not None and not sidecar.exists():
            sidecar = None
        try:
            size = path.stat().st_size
            digest = content_digest(path, sidecar)
        except OSError as exc:
            log.warning("%s: cannot read (%s); will try again at the next scan", path,
                        exc.strerror)
            self.stabilizer.forget(path)
            return None
        job, created = self.journal.enqueue(
            path, digest, size, watch.profile, watch.destination, watch.after, sidecar
        )
        if not created:
            log.info("%s: same content as job %d (%s), not sent again", path.name, job.id,
                     job.state, extra={"fields": {"job": job.id, "source": str(path)}})
            if job.state == "done":
                self._after_action(job, path, sidecar, watch.after)
            return job
        log_transition(job, "new", "queued")
        if sidecar_missing:
            expected = default_sidecar_path(path).name
            self._quarantine(job, f"no BIDS sidecar {expected} arrived within "
                             f"{watch.sidecar_grace_seconds:g} s and this watch requires one; "
                             "add the sidecar next to the file and release it")
        return job

    def _claim_and_submit(self) -> None:
        while len(self._inflight) < self.config.node.workers and not self.stopping.is_set():
            job = self.journal.claim()
            if job is None:
                return
            log_transition(job, "queued" if job.attempts <= 1 else "retry-wait", "converting")
            already = self.journal.delivered_instances(job.id)
            future = self._executor().submit(_deliver_in_worker, job, self.config,
                                             str(self.dirs.root), already)
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
                        result = DeliveryResult(JobState.RETRY_WAIT, f"internal error: {exc}",
                                                "crash")
                    self._record(self.journal.get(job_id) or flight.job, result)
            if not self._inflight or time.monotonic() >= deadline:
                return
            time.sleep(0.05)

    def _record(self, job: Job, result: DeliveryResult) -> None:
        """Commit the outcome first, then act on it (move, quarantine, schedule)."""
        n = self.config.node
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
        if result.verdict == JobState.DONE:
            done = self.journal.transition(job.id, "done", delivered=result.delivered,
                                           last_error=None, error_class=None, alert=0, **ident)
            log_transition(done, job.state, "done", f"{result.delivered} instances")
            self._after_action(done, Path(done.source),
                               Path(done.sidecar) if done.sidecar else None, done.after)
            return
        self.metrics.failures.labels(result.error_class or "unknown").inc()
        if result.verdict == JobState.QUARANTINED:
            self._quarantine(job, result.message)
            return
        if result.verdict == JobState.RETRY_WAIT and job.attempts < n.max_attempts:
            delay = backoff_seconds(job.attempts, n.retry_base_seconds, n.retry_max_seconds)
            waiting = self.journal.transition(
                job.id, "retry-wait", next_attempt=time.time() + delay,
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
        failed = self.journal.transition(job.id, "failed", last_error=message,
                                         error_class=result.error_class,
                                         delivered=result.delivered, **ident)
        log_transition(failed, job.state, "failed", message)

    def _quarantine(self, job: Job, reason: str) -> None:
        """Move the source and its sidecar aside with a reason file; the node goes on."""
        folder = self.dirs.quarantine / f"job-{job.id}"
        folder.mkdir(parents=True, exist_ok=True)
        for path in (Path(job.source), Path(job.sidecar) if job.sidecar else None):
            if path is not None and path.exists():
                shutil.move(str(path), folder / path.name)
        (folder / f"{Path(job.source).name}.reason.txt").write_text(
            f"{reason}\n\nSource: {job.source}\nSHA-256: {job.sha256}\n"
            "Fix the file (or the profile), then: dicom-node quarantine release "
            f"{job.id}\n"
        )
        moved = self.journal.transition(job.id, "quarantined", last_error=reason,
                                        error_class="input", quarantine_path=str(folder))
        log_transition(moved, job.state, "quarantined", reason)

    def _after_action(self, job: Job, source: Path, sidecar: Path | None, after: str) -> None:
        """What happens to a delivered source (and its sidecar): move, delete or keep."""
        files = [source] + ([sidecar] if sidecar else [])
        if after == "keep":
            return
        if after == "delete":
            for f in files:
                f.unlink(missing_ok=True)
            return
        target = self.dirs.done / dt.date.today().isoformat()
        target.mkdir(parents=True, exist_ok=True)
        for f in files:
            if f.exists():
                dest = target / f.name
                if dest.exists():
                    dest = target / f"job-{job.id}-{f.name}"
                shutil.move(str(f), dest)

    def _echo_destinations(self) -> None:
        from node.net.scu import echo
        from node.net.status import NetworkFailure

        def run() -> None:
            journal = Journal(self.dirs.journal)
            try:
                for name, dest in self.config.destinations.items():
                    try:
                        r = echo(dest, self.config.node.ae_title)
                        journal.record_echo(name, True, f"{r.echo_ms:.1f} ms")
                    except NetworkFailure as exc:
                        journal.record_echo(name, False, exc.message)
                        log.warning("echo %s: %s", name, exc.message)
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
        for job in self.journal.recover():
            log_transition(job, job.state, "queued", "resumed after an interruption")
        if self.config.node.metrics_port:
            port = self.metrics.serve(self.config.node.metrics_port)
            log.info("health and metrics on http://127.0.0.1:%d/healthz and /metrics", port)
        pool = self._executor()  # spawn and warm the workers now, not when the first file lands
        for _ in range(self.config.node.workers):
            pool.submit(warm_up)
        if self.watcher is not None:
            self.watcher.start()
            n = self.watcher.rescan()
            log.info("watching %s; %d files present at start-up",
                     ", ".join(str(w.path) for w in self.config.watches) or "nothing", n)

    def step(self) -> None:
        """One pass of the loop: enqueue complete files, start due jobs, record results."""
        now = time.monotonic()
        self.metrics.heartbeat = now
        for path, watch, missing in self.stabilizer.ready():
            try:
                self.enqueue_file(path, watch, missing)
            except Exception:  # a bug must not stop the node; the next rescan tries again
                log.exception("%s: could not enqueue", path)
                self.stabilizer.forget(path)
        self._claim_and_submit()
        self._collect()
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
                self.step()
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
        self.metrics.stop()
        self.journal.close()
        log.info("stopped (pid %d)", os.getpid())
