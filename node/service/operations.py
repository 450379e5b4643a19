"""What an operator can ask for, as library functions the console (and the node) call.

``dicom-node`` only parses arguments, calls one function here and renders what it returns:
push, convert a batch, release from quarantine, requeue, ingest a tree. Bad input is returned
or raised as a :class:`~node.errors.DicomNodeError` (one line naming the file and the reason),
never printed here.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from node.convert.profile import Profile
from node.convert.source import NIFTI_SUFFIXES, content_digest, is_nifti, nifti_stem
from node.errors import DicomNodeError, InputError

if TYPE_CHECKING:
    from node.service.journal import Job, Journal

_SKIP_NAMES = (".DS_Store", "DICOMDIR")
#: Files a BIDS dataset holds beside its images (BIDS 1.9, "Modality agnostic files" and
#: sidecars): pushed folders count them as ignored, never as failures.
_BIDS_NAMES = re.compile(
    r"^(dataset_description\.json|participants\.(tsv|json)|samples\.(tsv|json)|"
    r"(README|CHANGES|LICENSE|CITATION)(\.\w+)?|\.bidsignore|genetic_info\.json)$"
    r"|.*\.(tsv|tsv\.gz|bval|bvec)$|.*_(scans|sessions|events|physio|stim|channels)\.json$",
    re.IGNORECASE)


class OperationError(DicomNodeError):
    """An operator's request that cannot be done as asked (unknown job, wrong state)."""


# --- running work in processes ------------------------------------------------------------

def in_processes(fn: Callable[..., Any], calls: Sequence[tuple], jobs: int | None) -> list:
    """``[fn(*args) for args in calls]``, in ``jobs`` processes (default: one per core).

    Conversion is CPU-bound, so a batch uses every core; a single call runs in this process.
    Results come back in the order of ``calls``.
    """
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(calls)))
    if jobs == 1:
        return [fn(*args) for args in calls]
    pool = ProcessPoolExecutor(max_workers=jobs, initializer=_ignore_sigint)
    try:
        futures = [pool.submit(fn, *args) for args in calls]
        return [future.result() for future in futures]
    except KeyboardInterrupt:  # Ctrl-C: stop now, not after every conversion has run
        pool.shutdown(wait=False, cancel_futures=True)
        for proc in list(getattr(pool, "_processes", {}).values()):
            proc.terminate()
        raise
    finally:
        pool.shutdown(wait=True)


def _ignore_sigint() -> None:
    """Conversion workers leave Ctrl-C to the parent (no traceback from each of them)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


# --- convert ------------------------------------------------------------------------------

def _convert_one(path: Path, out_dir: Path, profile: Profile, uid_root: str, name: str,
                 sidecar: Path | None, overrides: dict[str, str] | None, modality: str | None,
                 overwrite: bool = False, reference=None, study=None, options=None):
    """Worker: a SeriesSummary, or the DicomNodeError to report (never raises for bad input)."""
    from node.convert.series import convert_to_folder

    if isinstance(study, DicomNodeError):
        return study
    try:
        return convert_to_folder(path, out_dir, profile, uid_root=uid_root, name=name,
                                 sidecar=sidecar, overrides=overrides, modality=modality,
                                 overwrite=overwrite, reference=reference, study=study,
                                 **(options or {}))
    except DicomNodeError as exc:
        return exc


def reconcile_studies(inputs: Sequence[Path], profile: Profile, uid_root: str, *,
                      sidecar: Path | None = None, overrides: dict[str, str] | None = None,
                      modality: str | None = None, reference=None,
                      iod: str | None = None) -> list:
    """Per input, the study it joins (a picklable StudyHook) or the error that refuses it.

    Every series of one study carries one set of patient and study values, whatever the order
    of the files: the batch is planned first (headers and sidecars only), then each study is
    reconciled (node.convert.study), then converted.
    """
    from node.convert.series import choose_iod, plan_series
    from node.convert.study import Member, reconcile

    members, slots, out = [], [], []
    for path in inputs:
        try:
            plan = plan_series(path, profile, uid_root=uid_root, sidecar=sidecar,
                               overrides=overrides, modality=modality, reference=reference,
                               iod=choose_iod(Path(path), iod or profile.iod))
        except DicomNodeError as exc:
            out.append(exc)
            continue
        members.append(Member(path, plan.study, plan.uids.series, plan.series_number))
        slots.append(len(out))
        out.append(None)
    for slot, known in zip(slots, reconcile(members), strict=True):
        out[slot] = known
    return out


def unique_names(paths: Iterable[Path]) -> list[str]:
    """One output folder name per input: its NIfTI stem, made unique with ``_2``, ``_3``..."""
    used: set[str] = set()
    names = []
    for path in paths:
        stem = name = nifti_stem(path)
        n = 1
        while name in used:
            n += 1
            name = f"{stem}_{n}"
        used.add(name)
        names.append(name)
    return names


def convert_batch(
    inputs: Sequence[Path], out_dir: Path, profile: Profile, uid_root: str, *,
    sidecar: Path | None = None, overrides: dict[str, str] | None = None,
    modality: str | None = None, jobs: int | None = None, overwrite: bool = False,
    reference=None, iod: str | None = None, compression: str = "none",
    source_image: Path | None = None, preview: bool = False, labelmap: bool = False,
) -> list:
    """Convert each input into ``out_dir/<name>``: a SeriesSummary or a DicomNodeError each.

    ``reference``: the clinical exam (node.convert.reference.ReferenceStudy) every series
    joins. The series of one study are reconciled first (:func:`reconcile_studies`).
    """
    studies = reconcile_studies(inputs, profile, uid_root, sidecar=sidecar,
                                overrides=overrides, modality=modality, reference=reference,
                                iod=iod)
    options = {"iod": iod, "compression": compression, "source_image": source_image,
               "preview": preview, "labelmap": labelmap}
    calls = [(path, out_dir, profile, uid_root, name, sidecar, overrides, modality, overwrite,
              reference, study, options)
             for path, name, study in zip(inputs, unique_names(inputs), studies, strict=True)]
    return in_processes(_convert_one, calls, jobs)


def explain(path: Path, profile: Profile, uid_root: str, *, sidecar: Path | None = None,
            overrides: dict[str, str] | None = None, modality: str | None = None,
            reference=None) -> list:
    """What ``convert`` would write for ``path``, attribute by attribute, and from where."""
    from node.convert.series import convert_file, explain

    return explain(convert_file(path, profile, uid_root=uid_root, sidecar=sidecar,
                                overrides=overrides, modality=modality, reference=reference))


# --- push ---------------------------------------------------------------------------------

def walk(paths: Iterable[Path], ignored: list[Path] | None = None) -> Iterator[Path]:
    """Files under ``paths`` (folders recursively, sorted; hidden files and sidecars skipped).

    In folders, the files a BIDS dataset holds beside its images (dataset_description.json,
    participants.tsv, README, events, .bval/.bvec...) and JSON files without an image of the
    same name (BIDS inheritance) are collected in ``ignored``, not sent. A file named on the
    command line is always taken.
    """
    for path in paths:
        if path.is_dir():
            for child in sorted(path.rglob("*")):
                rel = child.relative_to(path)
                if child.is_file() and not any(p.startswith(".") for p in rel.parts):
                    if child.suffix.lower() == ".json" and _has_nifti_twin(child):
                        continue  # a BIDS sidecar travels with its NIfTI
                    if child.name in _SKIP_NAMES:
                        continue
                    if _BIDS_NAMES.match(child.name) or child.suffix.lower() == ".json":
                        if ignored is not None:
                            ignored.append(child)
                        continue
                    yield child
        else:
            yield path


def _has_nifti_twin(sidecar: Path) -> bool:
    stem = sidecar.name[: -len(".json")]
    return any(sidecar.with_name(stem + ext).exists() for ext in NIFTI_SUFFIXES)


def _prepare_or_error(path: Path, profile: Profile | None, uid_root: str, spool: Path,
                      name: str, study=None, reference=None, iod: str | None = None,
                      compression: str = "none", labelmap: bool = False):
    """Worker: a delivery Batch, or the DicomNodeError to report."""
    from node.service.delivery import prepare

    if isinstance(study, DicomNodeError):
        return study
    try:
        return prepare(path, profile, uid_root, spool, name=name, check=False, study=study,
                       reference=reference, iod=iod, compression=compression,
                       labelmap=labelmap)
    except DicomNodeError as exc:
        return exc


@dataclass
class Gathered:
    batches: list = field(default_factory=list)  # delivery.Batch, in input order
    problems: list[DicomNodeError] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    ignored: list[Path] = field(default_factory=list)  # BIDS metadata files in folders

    @property
    def files(self) -> list:
        return [f for b in self.batches for f in b.files]


def gather(paths: Iterable[Path], spool: Path, profile: Profile | Callable[[], Profile],
           uid_root: str, jobs: int | None = None, reference=None, iod: str | None = None,
           compression: str = "none", labelmap: bool = False) -> Gathered:
    """Every input prepared for sending (NIfTI converted into ``spool`` in ``jobs`` processes,
    DICOM described as it is). Bad inputs are collected as problems, never raised.
    ``reference``: the clinical exam (ReferenceStudy) every NIfTI series joins.

    ``profile`` may be a function that returns it: it is then called only when there is a
    NIfTI input (reading profiles loads pydicom, which a push of DICOM files never needs).
    """
    out = Gathered()
    nifti: list[tuple] = []
    for n, path in enumerate(walk(paths, out.ignored)):
        if not path.exists():
            out.problems.append(InputError(path, "no such file or folder"))
        elif is_nifti(path):
            nifti.append((path, uid_root, spool, f"{n:05d}-{nifti_stem(path)}"))
        else:
            result = _prepare_or_error(path, None, uid_root, spool, "series")
            (out.problems if isinstance(result, DicomNodeError) else out.batches).append(result)
    if nifti and callable(profile):
        profile = profile()
    studies = reconcile_studies([call[0] for call in nifti], profile, uid_root,
                                reference=reference, iod=iod) if nifti else []
    nifti = [(path, profile, *rest, study, reference, iod, compression, labelmap)
             for (path, *rest), study in zip(nifti, studies, strict=True)]
    for call, result in zip(nifti, in_processes(_prepare_or_error, nifti, jobs), strict=True):
        if isinstance(result, DicomNodeError):
            out.problems.append(result)
            continue
        out.warnings += [f"{call[0]}: {w}" for w in result.warnings]
        out.batches.append(result)
    return out


@dataclass
class SeriesReport:
    series_uid: str
    study_uid: str
    instances: int = 0
    sent: int = 0
    warnings: int = 0
    failed: int = 0
    seconds: float = 0.0
    messages: list[str] = field(default_factory=list)
    verified_count: int | None = None

    def as_json(self) -> dict:
        out = {
            "series_uid": self.series_uid, "study_uid": self.study_uid,
            "instances": self.instances, "sent": self.sent, "warnings": self.warnings,
            "failed": self.failed, "seconds": round(self.seconds, 3),
        }
        if self.messages:
            out["messages"] = self.messages
        if self.verified_count is not None:
            out["pacs_instances"] = self.verified_count
        return out


def summarise(report, outcomes: Sequence = ()) -> list[SeriesReport]:
    """Per-series counts in first-seen order; distinct failure messages kept (at most 5).
    ``outcomes`` (delivery.DeliveryResult per series) may say more of a failure than its
    instances do (what chose an object the peer does not take): that message replaces
    theirs."""
    series: dict[str, SeriesReport] = {}
    for result in report.results:
        f = result.file
        s = series.setdefault(f.series_uid, SeriesReport(f.series_uid, f.study_uid))
        s.instances += 1
        s.seconds = max(s.seconds, result.seconds)
        if result.outcome.delivered:
            s.sent += 1
            if result.outcome.value == "warning":
                s.warnings += 1
                _note(s, result.message)
        else:
            s.failed += 1
            _note(s, result.message)
    for outcome in outcomes:
        s = series.get(outcome.series_uid or "")
        if s is not None and outcome.message and s.failed:
            s.messages = [outcome.message if outcome.message.startswith(m) else m
                          for m in s.messages]
    return list(series.values())


def _note(summary: SeriesReport, message: str) -> None:
    if message not in summary.messages and len(summary.messages) < 5:
        summary.messages.append(message)


@dataclass
class PushResult:
    report: Any  # node.net.scu.StoreReport
    series: list[SeriesReport]
    problems: list[DicomNodeError]
    verified: bool | None = None  # None: not asked
    verify_error: str | None = None
    ignored: int = 0  # BIDS metadata files found in folders, not sent

    @property
    def exit_ok(self) -> bool:
        return self.report.ok and self.verified is not False


def push(
    paths: Sequence[Path], dest, calling_ae: str, profile: Profile | Callable[[], Profile],
    uid_root: str, *,
    jobs: int | None = None, verify: bool = False,
    on_gathered: Callable[[Gathered], Callable | None] | None = None,
    reference=None,
) -> PushResult:
    """Prepare every input, send them all over the destination's associations (the same
    :func:`~node.service.delivery.send` as the node), then optionally verify by C-FIND.

    ``on_gathered`` sees what was prepared before sending (warnings, problems, the count) and
    may return a per-instance progress callback.
    """
    from node.service.delivery import send

    with tempfile.TemporaryDirectory(prefix="dicom-node-push-") as spool:
        gathered = gather(paths, Path(spool), profile, uid_root, jobs, reference,
                          dest.iod, dest.compression, dest.labelmap)
        progress = on_gathered(gathered) if on_gathered else None
        report, outcomes = send(gathered.batches, dest, calling_ae, progress=progress)
    result = PushResult(report, summarise(report, outcomes), gathered.problems,
                        ignored=len(gathered.ignored))
    if verify and result.series and not report.interrupted:
        verify_series(result, dest, calling_ae)
    elif verify:
        result.verified = True  # nothing was sent, nothing is missing
    return result


def verify_series(result: PushResult, dest, calling_ae: str) -> None:
    """Ask the PACS (C-FIND) how many instances each pushed series has; complete or not."""
    from node.net.scu import series_instance_counts
    from node.net.status import NetworkFailure

    ok = True
    try:
        counts = series_instance_counts(
            dest, calling_ae, [(s.study_uid, s.series_uid) for s in result.series])
    except NetworkFailure as exc:
        result.verify_error = exc.message
        counts, ok = {}, False
    for s in result.series:
        s.verified_count = counts.get(s.series_uid)
        ok &= s.verified_count is not None and s.verified_count >= s.instances
    result.verified = ok


# --- the journal: what is going on ---------------------------------------------------------

def status_report(journal: Journal, config, now: float | None = None) -> dict:
    """Everything ``dicom-node status`` shows, as data: counts, the oldest waiting job,
    alerts, last errors, each destination's health, and which node runs.

    A destination's health is its last C-ECHO *and* its latest delivery outcome: a PACS that
    answers echoes while refusing every store is not healthy.
    """
    import time

    now = time.time() if now is None else now
    oldest = journal.oldest_waiting()
    outcomes = journal.last_outcomes()
    destinations = []
    echoes = {n: (c, ok, m) for n, c, ok, m in journal.echoes()}
    paused = journal.paused()
    latencies = journal.echo_latencies()
    for name in sorted(set(echoes) | set(outcomes) | set(config.destinations)):
        checked, echo_ok, message = echoes.get(name, (None, None, None))
        last = outcomes.get(name)
        delivering = None if last is None else last[1] == "done"
        ok = echo_ok is not False and delivering is not False
        destinations.append({
            "name": name, "ok": ok if (echo_ok is not None or last) else None,
            "checked": checked, "echo_ok": echo_ok, "message": message,
            "last_delivery": None if last is None else {
                "at": last[0], "state": last[1], "error": last[2]},
            "paused": name in paused, "latency_ms": latencies.get(name),
        })
    nodes = journal.running_nodes()
    return {
        "config": str(config.path) if config.path else None,
        "journal": str(journal.path),
        "nodes": [{**n, "heartbeat_age": round(now - n["heartbeat"], 1)} for n in nodes],
        "counts": journal.counts(),
        "oldest_waiting": oldest.as_json() if oldest else None,
        "alerts": [{"job": j.id, "error": j.last_error} for j in journal.alerts()],
        "last_errors": [{"job": j.id, "state": j.state, "error": j.last_error}
                        for j in journal.last_errors()],
        "destinations": destinations,
    }


def delete_quarantined(journal: Journal, job_id: int) -> Job:
    """Delete a quarantined input for good: its files and reason go, the job is cancelled
    (the journal keeps its history)."""
    import shutil

    job = journal.get(job_id)
    if job is None or job.state != "quarantined":
        raise OperationError(None, f"job {job_id}: not in quarantine")
    if job.quarantine_path:
        shutil.rmtree(job.quarantine_path, ignore_errors=True)
    return journal.transition(job.id, "cancelled", last_error="deleted from quarantine by an "
                              "operator", quarantine_path=None)


# --- the journal: operator actions --------------------------------------------------------

def release(journal: Journal, job_id: int) -> Job:
    """Put a quarantined input back where it came from and queue its content as it is now
    (the operator vouches for the file, fixed or not)."""
    import shutil

    job = journal.get(job_id)
    if job is None or job.state != "quarantined" or not job.quarantine_path:
        raise OperationError(None, f"job {job_id}: not in quarantine")
    folder = Path(job.quarantine_path)
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
    return journal.transition(job.id, "queued", sha256=content_digest(source, sidecar),
                              size=source.stat().st_size, attempts=0, next_attempt=0,
                              quarantine_path=None)


def retry(journal: Journal, job_ids: Sequence[int] | None) -> tuple[list[int], list[int]]:
    """Queue failed or waiting jobs again (every failed one when ``job_ids`` is empty).

    Returns (requeued, refused): refused ids are unknown or in another state."""
    ids = journal.requeue(job_ids or None, states=("failed", "retry-wait"))
    return ids, sorted(set(job_ids or []) - set(ids))


@dataclass
class IngestResult:
    job_ids: list[int]
    states: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return set(self.states) <= {"done"}


def ingest(
    config, directory: Path, destination: str, profile: str, *, enqueue_only: bool = False,
    on_enqueue: Callable[[int, int], None] | None = None,
    on_enqueued: Callable[[int, int | None], None] | None = None,
    on_deliver: Callable[[int, int], None] | None = None,
    poll_seconds: float = 0.5,
) -> IngestResult:
    """Archive mode: enqueue every wanted file under ``directory`` (kept where it is), then
    deliver until those jobs are finished. Resumable: content already in the journal is not
    enqueued twice, and a second run picks up what is left.

    Beside a running node (it holds the state folder's lock) ingest only enqueues, and waits
    while that node delivers: nothing is reset or worked twice. ``on_enqueued(n, pid)`` says
    how many jobs there are and which node delivers them (None: this process).
    """

    from node.service.journal import NodeLock
    from node.service.node import Node
    from node.service.settings import WatchSettings
    from node.service.watcher import scan

    tree = WatchSettings(path=directory.resolve(), destination=destination, profile=profile,
                         after="keep")  # an archive is read, never moved or deleted
    probe = NodeLock(config.node.state_dir)
    holder = probe.acquire()
    probe.release()
    node = Node(config, watch=False, deliver=holder is None and not enqueue_only)
    node.install_signals()
    files = list(scan(tree))
    job_ids: list[int] = []
    for i, path in enumerate(files, 1):
        if node.stopping.is_set():
            break
        job = node.enqueue_file(path, tree)
        if job is not None:
            job_ids.append(job.id)
        if on_enqueue:
            on_enqueue(i, len(files))
    if on_enqueued:
        on_enqueued(len(job_ids), holder)
    result = IngestResult(job_ids)
    finished = ("done", "failed", "quarantined", "cancelled")

    def count() -> int:
        done = sum(node.journal.get(i).state in finished for i in job_ids)
        if on_deliver:
            on_deliver(done, len(job_ids))
        return done

    if enqueue_only or node.stopping.is_set():
        node.shutdown()
        return result
    if holder is not None:  # the running node delivers; we watch the journal
        try:
            while not node.stopping.is_set() and count() < len(job_ids):
                node.stopping.wait(poll_seconds)
        finally:
            node.shutdown()
    else:
        node.run(until=lambda: count() == len(job_ids))
    journal = node.config.open_journal()
    try:
        states = [journal.get(i).state for i in job_ids]
    finally:
        journal.close()
    result.states = {s: states.count(s) for s in sorted(set(states))}
    return result


# --- operator actions, audited (the CLI and the web console alike) ------------------------

def operator_name() -> str:
    """Who acts at the command line: the OS user (the console uses its login)."""
    import getpass

    try:
        return getpass.getuser()
    except Exception:  # no name for this uid (a container): its number
        return f"uid {os.getuid()}"


def audited(journal: Journal, who: str, via: str, action: str, target: str,
            act: Callable[[], Any]) -> Any:
    """Run one operator action and record it (who, what, when, the result) in the journal's
    audit log, whether it succeeds or not."""
    try:
        result = act()
    except DicomNodeError as exc:
        journal.audit(who, via, action, target, f"refused: {exc.reason}")
        raise
    journal.audit(who, via, action, target, "ok" if result is None else _describe(result))
    return result


def _describe(result: Any) -> str:
    if hasattr(result, "state") and hasattr(result, "id"):  # a journal Job
        return f"job {result.id} is {result.state}"
    if isinstance(result, tuple) and len(result) == 2:
        done, refused = result
        return f"requeued {list(done)}" + (f", refused {list(refused)}" if refused else "")
    return str(result)


def cancel(journal: Journal, job_id: int) -> Job:
    """Cancel a job that is waiting (queued, retry-wait), failed or quarantined; a job being
    converted or sent finishes first. ``retry`` or ``release`` bring it back."""
    job = journal.get(job_id)
    if job is None:
        raise OperationError(None, f"job {job_id}: no such job")
    if job.state not in ("queued", "retry-wait", "failed", "quarantined"):
        raise OperationError(None, f"job {job_id} is {job.state}: only a waiting, failed or "
                             "quarantined job can be cancelled")
    return journal.transition(job.id, "cancelled", last_error="cancelled by an operator")


def pause(journal: Journal, config, name: str, who: str) -> str:
    """Stop sending to a destination: its jobs wait (queued) until it is resumed."""
    config.destination(name)  # a ConfigError for a name that is not configured
    return "paused" if journal.pause(name, who) else "was paused already"


def resume(journal: Journal, config, name: str) -> str:
    config.destination(name)
    return "resumed" if journal.resume(name) else "was not paused"


def echo_now(journal: Journal, config, name: str) -> str:
    """C-ECHO a destination now and record it as the node's own echoes are recorded."""
    from node.net.scu import echo
    from node.net.status import NetworkFailure

    dest = config.destination(name)
    try:
        result = echo(dest, config.node.ae_title)
    except NetworkFailure as exc:
        journal.record_echo(name, False, exc.message)
        raise OperationError(None, f"echo {name}: {exc.message}") from None
    journal.record_echo(name, True, f"{result.echo_ms:.1f} ms", result.echo_ms)
    return f"echo {name}: ok in {result.echo_ms:.1f} ms"


def node_report(journal: Journal, config, now: float) -> list[dict]:
    """Every node that has used the journal: its id, pid, version, heartbeat age, the jobs it
    holds now, and whether it is gone (silent longer than [node].node_gone_seconds)."""
    rows = journal.db.execute(
        "SELECT owner, pid, host, version, started, heartbeat, stopped FROM nodes "
        "ORDER BY heartbeat DESC").fetchall()
    held = dict(journal.db.execute(
        "SELECT owner, count(*) FROM jobs WHERE state IN ('converting', 'sending') "
        "GROUP BY owner").fetchall())
    out = []
    for owner, pid, host, version, started, heartbeat, stopped in rows:
        age = now - heartbeat
        out.append({"node": host, "owner": owner, "pid": pid, "version": version,
                    "started": started, "heartbeat_age": round(age, 1),
                    "stopped": stopped is not None, "jobs_in_hand": held.get(owner, 0),
                    "gone": stopped is None and age > config.node.node_gone_seconds})
    return out
