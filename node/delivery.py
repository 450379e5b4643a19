"""One delivery step: convert a job's source into the spool, send it, classify the outcome.

This is where conversion (pure) and sending (knows no NIfTI) meet. The node and the console
call :func:`deliver` and record the :class:`DeliveryResult` in the journal; nothing here writes
the journal except through the ``on_stage`` callback, which marks the start of sending.

Outcome classes (issue "The node"):
* ``delivered``: every instance was stored (success, warning or duplicate);
* ``retry``: transient trouble (connection refused, timeout, abort, empty status, a transient
  rejection, 0xA7xx out of resources). A permanent association rejection or a TLS trust
  problem is retried too, but flagged as an *alert*: an operator must fix the destination;
* ``failed``: resending cannot fix it (0xA9xx, 0xCxxx, no accepted presentation context,
  a configuration problem); data kept for an operator's ``retry``;
* ``quarantine``: the input itself is bad (bad NIfTI, bad mapping).
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from node.config import Config, Profile
from node.errors import ConfigError, InputError
from node.journal import Job
from node.network import (
    DicomFile,
    FailureKind,
    NetworkFailure,
    Outcome,
    describe,
    read_dicom_file,
    store,
)
from node.nifti import content_digest, is_nifti

EXPLICIT_LE = "1.2.840.10008.1.2.1"


class Verdict(StrEnum):
    DELIVERED = "delivered"
    RETRY = "retry"
    FAILED = "failed"
    QUARANTINE = "quarantine"


@dataclass(frozen=True)
class DeliveryResult:
    verdict: Verdict
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
    warnings: tuple[str, ...] = ()


#: Association failures that need an operator (shown as alerts) but may heal by themselves.
_ALERT_KINDS = (FailureKind.REJECTED, FailureKind.TLS)


def deliver(
    job: Job,
    config: Config,
    spool_root: Path,
    already: set[str] | None = None,
    on_stage: Callable[[str], None] | None = None,
) -> DeliveryResult:
    """Convert and send ``job``; instances in ``already`` (delivered before) are not resent.

    A NIfTI source is converted into the spool first; any other source is a DICOM file,
    sent as it is.
    """
    source = Path(job.source)
    if not source.is_file():
        return DeliveryResult(Verdict.FAILED, f"{source}: the source file is gone", "input")
    sidecar = Path(job.sidecar) if job.sidecar else None
    if sidecar is not None and not sidecar.is_file():
        return DeliveryResult(Verdict.FAILED, f"{sidecar}: the sidecar file is gone", "input")
    if content_digest(source, sidecar) != job.sha256:
        return DeliveryResult(
            Verdict.FAILED,
            f"{source}: the file changed after it was queued; its new content is a job of its own",
            "input",
        )
    try:
        profile = config.profile(job.profile)
        dest = config.destination(job.destination)
    except ConfigError as exc:
        return DeliveryResult(Verdict.FAILED, exc.message, "config")

    t0 = time.monotonic()
    spool = spool_root / f"job-{job.id}"
    try:
        batch = _convert(job, config, profile, spool) if is_nifti(source) else _dicom(source)
        if isinstance(batch, DeliveryResult):
            return batch
        t1 = time.monotonic()
        done = already or set()
        files = [f for f in batch.files if f.sop_instance_uid not in done]
        if on_stage is not None:
            on_stage("sending")
        one = dataclasses.replace(dest, max_associations=1)  # the node's parallelism is workers
        report = store(one, config.node.ae_title, files)
        t2 = time.monotonic()
    finally:
        shutil.rmtree(spool, ignore_errors=True)

    rows = [(r.file.sop_instance_uid, r.status, r.outcome.value) for r in report.results]
    delivered = len(done & {f.sop_instance_uid for f in batch.files}) + report.delivered
    common = dict(series_uid=batch.series_uid, study_uid=batch.study_uid,
                  instances=len(batch.files), delivered=delivered, instance_rows=rows,
                  convert_seconds=t1 - t0, send_seconds=t2 - t1, warnings=batch.warnings)
    if report.ok:
        return DeliveryResult(Verdict.DELIVERED, **common)
    permanent = [r for r in report.results if r.outcome == Outcome.PERMANENT]
    no_context = [f for f in report.failures if f.kind == FailureKind.NO_CONTEXT]
    if permanent or no_context:
        message = no_context[0].message if no_context else permanent[0].message
        return DeliveryResult(Verdict.FAILED, message, "permanent", **common)
    failure: NetworkFailure | None = report.failures[0] if report.failures else None
    if failure is not None:
        alert = failure.kind in _ALERT_KINDS and not failure.transient
        return DeliveryResult(Verdict.RETRY, failure.message, f"network:{failure.kind.value}",
                              alert=alert, **common)
    first = next(r for r in report.results if not r.outcome.delivered)
    return DeliveryResult(Verdict.RETRY, first.message, "transient", **common)


@dataclass(frozen=True)
class _Batch:
    """What one job sends: the instances of one series (all of it, or one DICOM file)."""

    files: list[DicomFile]
    series_uid: str
    study_uid: str
    warnings: tuple[str, ...] = ()


def _convert(job: Job, config: Config, profile: Profile, spool: Path) -> _Batch | DeliveryResult:
    """A NIfTI source, converted into the job's spool folder."""
    from node.convert import convert_file, instance_filename, write_series

    try:
        series = convert_file(Path(job.source), config, profile, sidecar=job.sidecar)
    except ConfigError as exc:
        return DeliveryResult(Verdict.FAILED, exc.message, "config")
    except InputError as exc:
        return DeliveryResult(Verdict.QUARANTINE, exc.message, "input")
    folder = write_series(series, spool, "series")
    files = [
        DicomFile(folder / instance_filename(n), series.sop_class_uid, series.uids.instance(n),
                  EXPLICIT_LE, series.uids.study, series.uids.series)
        for n in range(1, series.n_instances + 1)
    ]
    return _Batch(files, series.uids.series, series.uids.study, tuple(series.warnings))


def _dicom(source: Path) -> _Batch | DeliveryResult:
    """A DICOM file dropped into a watched folder: one instance, sent as it is."""
    try:
        f = describe(read_dicom_file(source))
    except InputError as exc:
        return DeliveryResult(Verdict.QUARANTINE, exc.message, "input")
    return _Batch([f], f.series_uid, f.study_uid)
