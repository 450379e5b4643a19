"""``dicom-node push``: prepare, send over the destination's associations (the node's own
:func:`~node.service.delivery.send`), summarise per series, and optionally verify."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from node.convert.options import ConversionOptions
from node.convert.profile import Profile
from node.errors import DicomNodeError
from node.service.operations.gather import Gathered, gather


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
    committed: int | None = None  # None: commitment not asked

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
        if self.committed is not None:
            out["committed"] = self.committed
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
    committed: bool | None = None  # None: not asked; True: every instance committed
    commit_error: str | None = None

    @property
    def exit_ok(self) -> bool:
        return self.report.ok and self.verified is not False and self.committed is not False


def push(
    paths: Sequence[Path], dest, calling_ae: str, profile: Profile | Callable[[], Profile],
    uid_root: str, *,
    jobs: int | None = None, verify: bool = False,
    on_gathered: Callable[[Gathered], Callable | None] | None = None,
    reference=None, commit: bool = False, listen: tuple | None = None,
    overrides: dict[str, str] | None = None, modality: str | None = None,
) -> PushResult:
    """Prepare every input, send them all over the destination's associations (the same
    :func:`~node.service.delivery.send` as the node), then optionally verify by C-FIND.

    ``on_gathered`` sees what was prepared before sending (warnings, problems, the count) and
    may return a per-instance progress callback. ``commit``: then ask the destination to
    commit each series (storage commitment), with our SCP at ``listen`` (host, port) for a
    report that comes on an association of the archive's (host, port[, (cert, key, CA)]).
    ``overrides`` and ``modality``: as convert's --set and --modality, for NIfTI inputs.
    """
    from node.service.delivery import send

    with tempfile.TemporaryDirectory(prefix="dicom-node-push-") as spool:
        options = ConversionOptions(uid_root=uid_root, reference=reference, iod=dest.iod,
                                    compression=dest.compression, labelmap=dest.labelmap,
                                    overrides=overrides or None, modality=modality)
        gathered = gather(paths, Path(spool), profile, options, jobs)
        progress = on_gathered(gathered) if on_gathered else None
        report, outcomes = send(gathered.batches, dest, calling_ae, progress=progress)
    result = PushResult(report, summarise(report, outcomes), gathered.problems,
                        ignored=len(gathered.ignored))
    if verify and result.series and not report.interrupted:
        verify_series(result, dest, calling_ae)
    elif verify:
        result.verified = True  # nothing was sent, nothing is missing
    if commit and not report.interrupted:
        commit_series(result, dest, calling_ae, listen)
    return result


def commit_series(result: PushResult, dest, calling_ae: str, listen: tuple | None) -> None:
    """Storage commitment (PS3.4 J) of what each series delivered: one N-ACTION per series,
    then its report, on the request's association or at our SCP on ``listen``, within the
    destination's ``commitment_timeout``. Committed only what a report names as committed."""
    from pydicom.uid import generate_uid

    from node.net.commitment import CommitmentListener, request_commitment
    from node.net.status import NetworkFailure

    delivered: dict[str, list[tuple[str, str]]] = {}
    tls = listen[2] if listen is not None and len(listen) > 2 else None
    for r in result.report.results:
        if r.outcome.delivered:
            delivered.setdefault(r.file.series_uid, []).append(
                (r.file.sop_class_uid, r.file.sop_instance_uid))
    listener = None
    try:
        if listen is not None and listen[1]:
            listener = CommitmentListener(calling_ae, listen[1], listen[0], tls=tls)
        ok = True
        for s in result.series:
            instances = delivered.get(s.series_uid, [])
            s.committed = 0
            if not instances:
                ok = False
                continue
            transaction = generate_uid()
            asked = {uid for _, uid in instances}
            if listener is not None:
                listener.expect(transaction, dest, asked)
            outcome = request_commitment(dest, calling_ae, transaction, instances,
                                         linger=2.0 if listener is not None
                                         else dest.commitment_timeout)
            if outcome is None and listener is not None:
                outcome = listener.wait(transaction, dest.commitment_timeout)
            if outcome is None:
                _note(s, f"no storage commitment report within {dest.commitment_timeout:g} s"
                      + ("" if listener is not None else "; an archive that reports on an "
                         "association of its own needs [node].commitment_port"))
                ok = False
                continue
            s.committed = len(outcome.committed)
            for uid in sorted(asked - outcome.committed)[:3]:
                _note(s, f"{uid}: {outcome.describe(uid)}")
            ok &= s.committed == s.instances
        result.committed = ok
    except NetworkFailure as exc:
        result.commit_error, result.committed = exc.message, False
    except OSError as exc:  # our SCP's port
        result.commit_error, result.committed = (
            f"the storage commitment SCP cannot listen on {listen[0]}:{listen[1]} ({exc}); "
            "change [node].commitment_port" if listen else str(exc)), False
    finally:
        if listener is not None:
            listener.close()


def verify_series(result: PushResult, dest, calling_ae: str) -> None:
    """Ask the PACS (C-FIND) how many instances each pushed series has; complete or not."""
    from node.net.remote import series_instance_counts
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
