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
        options = ConversionOptions(uid_root=uid_root, reference=reference, iod=dest.iod,
                                    compression=dest.compression, labelmap=dest.labelmap)
        gathered = gather(paths, Path(spool), profile, options, jobs)
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
