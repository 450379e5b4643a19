"""The ONE delivery step: prepare (convert into the spool), send, classify the outcome.

This is where conversion (pure) and sending (knows no NIfTI) meet. The node (one job at a
time, in a worker process) and ``push``/``ingest`` (many inputs over shared associations) use
the same three functions: :func:`prepare` turns an input into a :class:`Batch` of files,
:func:`send` stores batches and classifies each one into a :class:`DeliveryResult`, and
:func:`deliver` is both for one journal job. Nothing here writes the journal except through the
``on_stage`` callback, which marks the start of sending.

One vocabulary runs from the wire to the journal: each instance's C-STORE status has a class
(:class:`node.net.scu.Outcome`, PS3.7 C), and a delivery's verdict is the
:class:`~node.service.journal.JobState` it moves the job to:

* ``done``: every instance was stored (success, warning or duplicate);
* ``retry-wait``: transient trouble (connection refused, timeout, abort, empty status, a
  transient rejection, 0xA7xx out of resources). A permanent association rejection or a TLS
  trust problem is retried too, but flagged as an *alert*: an operator must fix the
  destination. After ``max_attempts`` the node makes it ``failed``;
* ``failed``: resending cannot fix it (0xA9xx, 0xCxxx, no accepted presentation context,
  a configuration problem); data kept for an operator's ``retry``;
* ``quarantined``: the input itself is bad (bad NIfTI, bad mapping).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from node.convert.options import ConversionOptions
from node.convert.profile import Profile
from node.convert.source import content_digest, is_nifti
from node.errors import ConfigError, DicomNodeError, InputError
from node.net.destination import Destination
from node.net.files import DicomFile, read_dicom_file
from node.net.remote import store
from node.net.scu import InstanceResult, StoreReport
from node.net.status import FailureKind, NetworkFailure, Outcome
from node.service.journal import Job, JobState, StateDirs
from node.service.routing import FORM_KEYS
from node.service.settings import Config


@dataclass(frozen=True)
class DeliveryResult:
    verdict: JobState  # the state this outcome moves the job to
    message: str = ""
    error_class: str | None = None
    alert: bool = False
    series_uid: str | None = None
    study_uid: str | None = None
    instances: int | None = None
    delivered: int = 0
    instance_rows: list[tuple[str, int | None, str]] = field(default_factory=list)
    convert_seconds: float = 0.0
    send_seconds: float = 0.0
    detail: str = ""  # an internal error's traceback, for the log (never the journal)
    timed_out: tuple[str, ...] = ()  # SOP Instance UIDs in flight when the peer fell silent
    warnings: tuple[str, ...] = ()


#: Association failures that need an operator (shown as alerts) but may heal by themselves.
_ALERT_KINDS = (FailureKind.REJECTED, FailureKind.TLS)


@dataclass(frozen=True)
class Batch:
    """What one input sends: the instances of one series (all of it, or one DICOM file)."""

    source: Path
    files: list[DicomFile]
    series_uid: str
    study_uid: str
    warnings: tuple[str, ...] = ()
    #: what chose the object when it is not a classic image (for a peer that refuses it)
    chosen_by: str = ""


def prepare(source: Path, profile: Profile | None, spool: Path, options: ConversionOptions,
            name: str = "series", check: bool = True) -> Batch:
    """Turn one input into files to send: a NIfTI is converted into ``spool/name`` (written
    atomically), a DICOM file is described as it is. Raises InputError for bad input,
    ConfigError for a bad profile.

    ``options``: how a NIfTI is converted (node.convert.options.ConversionOptions): its
    ``iod``, ``compression`` and ``labelmap`` are what the destination takes (its ``iod``
    overrides the profile's), its ``study`` reconciles the series with the other series of
    its study (a push batch's, or the journal's memory).

    ``check``: walk a DICOM file's whole structure now (the node: a malformed file is
    quarantined). ``push`` passes False: each file is checked as it is opened to be sent,
    while the peer stores the previous one, and a malformed one fails alone with its reason.
    """
    if not is_nifti(source):
        f = read_dicom_file(source, check=check)
        return Batch(source, [f], f.series_uid, f.study_uid)
    from pydicom.uid import ExplicitVRLittleEndian

    from node.convert.output import (
        instance_filename,
        wanted_results,
        write_results,
        write_series,
    )
    from node.convert.series import convert_file

    series = convert_file(source, profile, options)
    _check_room(spool, series)
    folder = write_series(series, spool, name)
    files = [
        DicomFile(folder / instance_filename(n), series.sop_class_uid, uid,
                  series.transfer_syntax, series.uids.study, series.uids.series)
        for n, uid in enumerate(series.instance_uids(), 1)
    ] + [DicomFile(r.path, r.sop_class_uid, r.sop_instance_uid, ExplicitVRLittleEndian,
                   series.uids.study, r.series_uid)
         for r in write_results(series, folder, wanted_results(series, options))]
    chosen_by = "" if series.iod == "image" else f'iod = "{series.iod}"' + (
        ", labelmap = true" if options.labelmap and series.iod == "seg" else "")
    return Batch(source, files, series.uids.series, series.uids.study, tuple(series.warnings),
                 chosen_by)


def _reference(source: Path, sidecar: Path | None, profile: Profile, config: Config,
               dest: Destination):
    """The clinical exam the profile's ``reference`` rule names for this input (a C-FIND to
    the destination or its query_destination), or None without a rule."""
    if profile.reference is None or not is_nifti(source):
        return None
    from node.convert.source import bids_entities, load_sidecar
    from node.service.attach import profile_query, study_of

    raw = load_sidecar(sidecar) if sidecar is not None else {}
    keys = profile_query(profile, source, raw, bids_entities(source))
    calling = dest.calling_ae_title or config.node.ae_title
    where = config.query_destination(dest)
    try:
        found = study_of(where, calling, keys or {}, source)
    except NetworkFailure:
        query_event(config, where.name, keys or {}, False)
        raise
    query_event(config, where.name, keys or {}, True)
    return found


def query_event(config: Config, destination: str, keys: dict, ok: bool) -> None:
    """A C-FIND or QIDO-RS the node made is an event (an audit collector's Query message;
    the keys, which name a patient, only for receivers with phi). Never fails a delivery."""
    import sqlite3

    from node.service.journal import JournalUnavailable

    try:
        journal = config.open_journal(create=False)
        try:
            journal.record_event("query.find", destination, "ok" if ok else "failed",
                                 json.dumps(keys, sort_keys=True, default=str))
        finally:
            journal.close()
    except (OSError, sqlite3.Error, JournalUnavailable):
        pass


def _preview(batch: Batch, source: Path, target: Path) -> None:
    """The job's QA picture, from the files about to be sent (kept with the job: the console
    shows it). Never a reason to fail a delivery."""
    import logging

    import nibabel as nib

    from node.convert.output import write_preview

    notes: list[str] = []
    if batch.files and not write_preview(batch.files[0].path.parent, nib.load(str(source)),
                                         target, notes):
        logging.getLogger(__name__).warning("%s: %s", source.name, notes[-1])


class NoSpace(DicomNodeError):
    """The spool's disk cannot hold a series now: a fault of the environment (retried)."""


def _check_room(spool: Path, series) -> None:
    """A series' size is known before it is written: refuse to start one that cannot fit,
    rather than fail half-way (NoSpace; the node retries, push says why)."""
    t = series.template
    pixel = int(t.BitsAllocated) // 8 * int(t.SamplesPerPixel)
    needed = series.layout.n_instances * (int(t.Rows) * int(t.Columns) * pixel + 8192)
    folder = spool
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise NoSpace(spool, f"the series needs about {needed} bytes and {free} are free on "
                      "the spool's disk")


def send(
    batches: Sequence[Batch], dest: Destination, calling_ae: str,
    already: set[str] | frozenset[str] = frozenset(),
    progress: Callable[[InstanceResult], None] | None = None,
) -> tuple[StoreReport, list[DeliveryResult]]:
    """C-STORE every batch's instances (those in ``already`` were delivered before and are
    not resent) over the destination's associations; one classified result per batch."""
    files = [f for b in batches for f in b.files if f.sop_instance_uid not in already]
    report = store(dest, calling_ae, files, progress)
    by_uid: dict[str, list[InstanceResult]] = {}
    for r in report.results:
        by_uid.setdefault(r.file.sop_instance_uid, []).append(r)
    results = []
    for b in batches:
        mine = [r for f in b.files for r in by_uid.get(f.sop_instance_uid, ())]
        results.append(classify(b, mine, report.failures, already, report.seconds))
    return report, results


def classify(
    batch: Batch, results: Sequence[InstanceResult], failures: Sequence[NetworkFailure],
    already: set[str] | frozenset[str] = frozenset(), seconds: float = 0.0,
) -> DeliveryResult:
    """The verdict for one batch from its instances' outcomes and the association failures.

    Done only when every instance of the batch was confirmed stored (now, or by an earlier
    attempt in ``already``): an instance with no answer at all is not delivered, whatever
    else succeeded."""
    rows = [(r.file.sop_instance_uid, r.status, r.outcome.value) for r in results]
    confirmed = {r.file.sop_instance_uid for r in results if r.outcome.delivered}
    uids = {f.sop_instance_uid for f in batch.files}
    delivered = len(uids & (already | confirmed))
    common = dict(series_uid=batch.series_uid, study_uid=batch.study_uid,
                  instances=len(batch.files), delivered=delivered, instance_rows=rows,
                  send_seconds=seconds, warnings=batch.warnings,
                  timed_out=tuple(r.file.sop_instance_uid for r in results if r.timed_out))
    if delivered == len(uids):
        return DeliveryResult(JobState.DONE, **common)
    # an association refused for good (wrong AE title, untrusted certificate) needs an
    # operator, but the files are fine: retried with backoff and shown as an ALERT
    alert = next((f for f in failures if f.kind in _ALERT_KINDS and not f.transient), None)
    if alert is not None:
        return DeliveryResult(JobState.RETRY_WAIT, alert.message, f"network:{alert.kind.value}",
                              alert=True, **common)
    # answered by the peer with a failure status, or not sendable at all (malformed, no
    # context for it): resending cannot help
    permanent = [r for r in results if r.outcome == Outcome.PERMANENT and (
        r.status is not None or not any(r.message == f.message for f in failures))]
    no_context = [f for f in failures if f.kind == FailureKind.NO_CONTEXT]
    if permanent or no_context:
        message = no_context[0].message if no_context else permanent[0].message
        if batch.chosen_by and (no_context or any(r.sop_class_refused for r in results)):
            message += f" (the series was made as {batch.chosen_by}; {_fix_for(batch)})"
        return DeliveryResult(JobState.FAILED, message, "permanent", **common)
    if failures:
        failure = failures[0]
        return DeliveryResult(JobState.RETRY_WAIT, failure.message,
                              f"network:{failure.kind.value}", **common)
    first = next((r for r in results if not r.outcome.delivered), None)
    message = first.message if first is not None else (
        f"{len(uids) - delivered} instance(s) of the series had no answer from the peer")
    return DeliveryResult(JobState.RETRY_WAIT, message, "transient", **common)


def _fix_for(batch: Batch) -> str:
    """The setting that makes a refused object one the destination takes."""
    if "labelmap" in batch.chosen_by:
        return "set labelmap = false for this destination: BINARY SEGs"
    return 'set an iod this destination takes: iod = "image" for classic images'


def _verify(batch: Batch, dest: Destination, calling_ae: str,
            result: DeliveryResult) -> DeliveryResult:
    """``verify = true``: done only when the PACS counts every instance of the series
    (C-FIND or QIDO-RS at series level); else retried (it may still be storing them)."""
    from node.net.remote import series_instance_counts

    try:
        count = series_instance_counts(dest, calling_ae, [(batch.study_uid, batch.series_uid)]
                                       ).get(batch.series_uid)
    except NetworkFailure as exc:
        return dataclasses.replace(result, verdict=JobState.RETRY_WAIT, error_class="verify",
                                   message=f"verify: {exc.message}")
    if count is not None and count >= len(batch.files):
        return result
    # which instances are missing is not known: none counts as delivered, all are resent
    rows = [(f.sop_instance_uid, None, "unverified") for f in batch.files]
    return dataclasses.replace(result, verdict=JobState.RETRY_WAIT, error_class="verify",
                               instance_rows=rows, delivered=0,
                               message=f"verify: the PACS counts {count or 0} of "
                               f"{len(batch.files)} instances of the series; all are sent "
                               "again")


def _commit(batch: Batch, dest: Destination, calling_ae: str, result: DeliveryResult,
            on_stage: Callable[..., None] | None) -> DeliveryResult:
    """Storage commitment of the whole series, every instance (also those an earlier attempt
    stored): the job moves to ``committing`` with the Transaction UID and the instances'
    C-STORE results in the journal *before* the N-ACTION goes, so a node killed at any
    instant takes the report after its restart, or asks again when it is overdue. The
    verdict when the report came on the request's association; else ``committing``."""
    from pydicom.uid import generate_uid

    from node.net.commitment import CommitmentRefused, request_commitment

    transaction = generate_uid()
    if on_stage is not None:
        on_stage("committing", commit_uid=transaction, instance_rows=result.instance_rows,
                 next_attempt=time.time() + dest.commitment_timeout,
                 series_uid=result.series_uid, study_uid=result.study_uid,
                 instances=result.instances, delivered=result.delivered)
    waiting = dataclasses.replace(result, instance_rows=[])  # recorded already
    try:
        report = request_commitment(dest, calling_ae, transaction,
                                    [(f.sop_class_uid, f.sop_instance_uid) for f in batch.files],
                                    linger=min(2.0, dest.commitment_timeout))
    except CommitmentRefused as exc:
        return dataclasses.replace(waiting, verdict=JobState.FAILED, message=exc.message,
                                   error_class="commitment")
    except NetworkFailure as exc:
        return dataclasses.replace(waiting, verdict=JobState.RETRY_WAIT,
                                   message=f"storage commitment: {exc.message}",
                                   error_class=f"network:{exc.kind.value}")
    if report is None:
        return dataclasses.replace(waiting, verdict=JobState.COMMITTING, message=(
            f"waiting for the storage commitment report of transaction {transaction}"))
    verdict, message, rows = commitment_verdict({f.sop_instance_uid for f in batch.files},
                                                report)
    return dataclasses.replace(waiting, verdict=verdict, message=message, instance_rows=rows,
                               error_class=None if verdict == JobState.DONE else "commitment")


def commitment_verdict(asked: set[str], report) -> tuple[JobState, str, list]:
    """A job's state from its storage commitment report (PS3.4 J.3.3), and a row per
    instance: done when every instance is committed; else retried, and the instances not
    committed are sent again (they are no longer counted as delivered) and committed again."""
    rows = [(uid, None, "committed") if uid in report.committed
            else (uid, report.failed.get(uid), "uncommitted") for uid in sorted(asked)]
    missing = sorted(asked - report.committed)
    if not missing:
        return JobState.DONE, "", rows
    return JobState.RETRY_WAIT, (f"{len(missing)} of {len(asked)} instance(s) not committed "
                                 f"(e.g. {missing[0]}: {report.describe(missing[0])}); sent "
                                 "again"), rows


def _changed_since_queued(job: Job, source: Path, sidecar: Path | None
                          ) -> DeliveryResult | None:
    """The failure to record when the source or its sidecar is gone or no longer what was
    queued (its new content is a job of its own); None when both are as queued."""
    if not source.is_file():
        return DeliveryResult(JobState.FAILED, f"{source}: the source file is gone", "input")
    if sidecar is not None and not sidecar.is_file():
        return DeliveryResult(JobState.FAILED, f"{sidecar}: the sidecar file is gone", "input")
    if content_digest(source, sidecar) != job.sha256:
        return DeliveryResult(
            JobState.FAILED,
            f"{source}: the file changed after it was queued; its new content is a job of its own",
            "input",
        )
    return None


def _done_folders(config: Config, source: Path, dirs: StateDirs) -> tuple[Path, ...]:
    """Where a SEG's image may be once delivered and moved: the same folder of the watch,
    or (a BIDS derivative) the raw dataset's, under each recent done/<date>/ (see
    Node._after_action), newest first; then those folders themselves (older nodes moved
    files there flat)."""
    import os

    from node.convert.derived import raw_folder

    days = dirs.recent_done()
    watch = config.watch_for(source)
    inside: list[Path] = []
    if watch is not None:
        root, file = Path(os.path.abspath(watch.path)), Path(os.path.abspath(source))
        inside = [Path(os.path.relpath(folder, root)) for folder in (file.parent, *raw_folder(file))
                  if folder.is_relative_to(root)]
    return tuple(d / rel for d in days for rel in inside) + days


def destination_for(job: Job, config: Config) -> Destination:
    """The destination as this job sends to it: in the form its route gave it (iod,
    compression, labelmap), and with its share of the destination's rate cap when several
    of its jobs may run at once."""
    dest = config.destination(job.destination)
    if job.form:
        form = json.loads(job.form)
        dest = dataclasses.replace(dest, **{k: tuple(form[k]) if k == "results" else form[k]
                                            for k in FORM_KEYS if k in form})
    share = config.policy(job.destination).share(config.node.workers)
    if share > 1 and (dest.max_instances_per_second or dest.max_bytes_per_second):
        dest = dataclasses.replace(dest,
                                   max_instances_per_second=dest.max_instances_per_second / share,
                                   max_bytes_per_second=dest.max_bytes_per_second / share)
    return dest


def deliver(
    job: Job,
    config: Config,
    spool_root: Path,
    already: set[str] | None = None,
    on_stage: Callable[..., None] | None = None,
    study=None,
    progress: Callable[[InstanceResult], None] | None = None,
) -> DeliveryResult:
    """One journal job: check the source is as queued, :func:`prepare`, :func:`send`.

    Instances in ``already`` (delivered by an earlier attempt) are not resent. The node's
    parallelism is its workers, so a job uses one association. ``study``: the journal's
    memory of the series' study (a StudyHook); a series that conflicts with it is
    quarantined with the reason. ``progress``: each instance's result as it comes (the node
    records confirmed ones at once: a node killed mid-series does not send them again)."""
    source = config.local_path(job.source)  # another node may have queued it
    sidecar = config.local_path(job.sidecar) if job.sidecar else None
    changed = _changed_since_queued(job, source, sidecar)
    if changed is not None:
        return changed
    try:
        profile = config.profile(job.profile)
        dest = destination_for(job, config)
    except ConfigError as exc:
        return DeliveryResult(JobState.FAILED, exc.message, "config")
    t0 = time.monotonic()
    spool = spool_root / f"job-{job.id}"
    try:
        try:
            reference = _reference(source, sidecar, profile, config, dest)
            batch = prepare(source, profile, spool, ConversionOptions(
                uid_root=config.node.uid_root, sidecar=sidecar, study=study,
                reference=reference, iod=dest.iod, compression=dest.compression,
                labelmap=dest.labelmap, results=dest.results,
                source_folders=_done_folders(config, source, StateDirs(spool_root.parent))))
        except ConfigError as exc:
            return DeliveryResult(JobState.FAILED, exc.message, "config")
        except NoSpace as exc:
            return DeliveryResult(JobState.RETRY_WAIT, exc.message, "disk")
        except InputError as exc:
            return DeliveryResult(JobState.QUARANTINED, exc.message, "input")
        except NetworkFailure as exc:  # the exam could not be looked up: try again later
            return DeliveryResult(JobState.RETRY_WAIT, f"finding the exam to attach to: "
                                  f"{exc.message}", "network")
        t1 = time.monotonic()
        if on_stage is not None:
            on_stage("sending")
        one = dataclasses.replace(dest, max_associations=1)
        _, (result,) = send([batch], one, config.node.ae_title, already or set(), progress)
        if result.verdict == JobState.DONE and dest.verify:
            result = _verify(batch, dest, config.node.ae_title, result)
        if result.verdict == JobState.DONE and dest.commitment:
            result = _commit(batch, dest, config.node.ae_title, result, on_stage)
        t2 = time.monotonic()
        if config.node.previews and is_nifti(source):  # after the send: never delays it
            _preview(batch, source, StateDirs(spool_root.parent).preview(job.id))
    finally:
        shutil.rmtree(spool, ignore_errors=True)
    return dataclasses.replace(result, convert_seconds=t1 - t0, send_seconds=t2 - t1)
