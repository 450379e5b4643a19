"""DICOM services as an SCU: C-ECHO, C-STORE and C-FIND (PS3.4, PS3.7) over
:class:`node.net.upper.Association`.

This module sends any DICOM and knows nothing of NIfTI. Every wait is bounded by a named
timeout of the :class:`~node.net.destination.Destination`; every failure is a
:class:`NetworkFailure` that says what happened in words an operator can act on (connection
refused, DNS, timeout, rejection with its decoded reason, abort, TLS) and whether trying again
later can help.

Performance: already encoded files are streamed from disk as they are, never decoded and
re-encoded, unless the peer only accepts another uncompressed transfer syntax. While the peer
stores one instance, the next file is opened and the series of the sent one is read, so our
work overlaps the peer's. Several associations run in threads: per instance there is little
Python work left to contend for the GIL.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from io import BytesIO
from typing import BinaryIO

from node.net.destination import Destination
from node.net.dimse import (
    AFFECTED_SOP_CLASS,
    AFFECTED_SOP_INSTANCE,
    C_ECHO_RQ,
    C_FIND_RQ,
    C_STORE_RQ,
    COMMAND_FIELD,
    DATA_SET_PRESENT,
    DATA_SET_TYPE,
    ERROR_COMMENT,
    MESSAGE_ID,
    NO_DATA_SET,
    PRIORITY,
    Message,
    Request,
    command_set,
    mismatch,
)
from node.net.files import (
    IMPLICIT_LE,
    UNCOMPRESSED,
    DicomFile,
    _payload,
    _Unsendable,
    describe,
)
from node.net.pace import Pace, pace_of
from node.net.status import FailureKind, NetworkFailure, Outcome, classify_status, peer_text
from node.net.upper import Association

log = logging.getLogger("node.net")

#: PS3.8 9.3.2.2: at most 128 presentation contexts (odd IDs 1..255) per association.
MAX_CONTEXTS = 128
VERIFICATION = "1.2.840.10008.1.1"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"


# --- C-ECHO ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class EchoResult:
    destination: str
    association_ms: float
    echo_ms: float
    status: int
    implementation: str = ""  # what the peer says it runs
    service: str = "C-ECHO"  # or "QIDO-RS" (a DICOMweb destination: no association)


def echo(dest: Destination, calling_ae: str) -> EchoResult:
    """C-ECHO (PS3.4 A.4, PS3.7 9.3.5); NetworkFailure with the reason when it does not succeed."""
    t0 = time.perf_counter()
    with Association.open(dest, calling_ae, [(VERIFICATION, UNCOMPRESSED)]) as assoc:
        t1 = time.perf_counter()
        request = Request(assoc.contexts[0].id, C_ECHO_RQ, 1, VERIFICATION)
        assoc.send(request.context_id, command_set([
            (AFFECTED_SOP_CLASS, VERIFICATION), (COMMAND_FIELD, C_ECHO_RQ), (MESSAGE_ID, 1),
            (DATA_SET_TYPE, NO_DATA_SET),
        ]))
        response = assoc.receive(dest.dimse_timeout, "C-ECHO response")
        _check(assoc, response, request)
        code = response.status
        t2 = time.perf_counter()
    if code != 0:
        raise NetworkFailure(FailureKind.NETWORK,
                             f"{dest.address}: C-ECHO failed with status 0x{code:04X}")
    return EchoResult(dest.address, (t1 - t0) * 1000, (t2 - t1) * 1000, code,
                      assoc.peer_implementation)


def _check(assoc: Association, response: Message, request: Request) -> None:
    """Abort and raise when ``response`` does not acknowledge ``request`` (see
    :func:`node.net.dimse.mismatch`): a confused peer's success is never counted."""
    problem = mismatch(response, request)
    if problem is not None:
        assoc.abort()
        raise NetworkFailure(FailureKind.NETWORK, f"{assoc.dest.address} sent {problem}; "
                             "association aborted")


# --- C-STORE --------------------------------------------------------------------------------

@dataclass(frozen=True)
class InstanceResult:
    file: DicomFile
    outcome: Outcome
    status: int | None
    message: str
    seconds: float = 0.0  # time from the start of the push until this instance's answer
    timed_out: bool = False  # it was in flight when the peer stopped answering
    sop_class_refused: bool = False  # the peer takes no instance of its SOP class


@dataclass
class StoreReport:
    destination: str
    results: list[InstanceResult] = field(default_factory=list)
    failures: list[NetworkFailure] = field(default_factory=list)
    seconds: float = 0.0
    interrupted: bool = False  # stopped by the user (Ctrl-C) before every file was sent

    @property
    def delivered(self) -> int:
        return sum(r.outcome.delivered for r in self.results)

    @property
    def failed(self) -> int:
        return len(self.results) - self.delivered

    @property
    def ok(self) -> bool:
        return self.failed == 0


def recorder(report: StoreReport, progress: Callable[[InstanceResult], None] | None
             ) -> tuple[Callable[[InstanceResult], None], threading.Lock]:
    """The one way a store's threads add an instance's result to ``report`` (and tell
    ``progress``), and the lock they share."""
    lock = threading.Lock()

    def record(result: InstanceResult) -> None:
        with lock:
            report.results.append(result)
            if progress is not None:
                progress(result)

    return record, lock


Context = tuple[str, tuple[str, ...]]  # (abstract syntax, transfer syntaxes)


def plan_contexts(files: Iterable[DicomFile], extra: Sequence[str] = ()) -> list[list[Context]]:
    """Presentation contexts for these files, split into groups of at most 128.

    Per SOP class: one context per transfer syntax the files use (so they can be streamed as
    they are), and one with the uncompressed syntaxes as a fallback the peer can always take.
    """
    wanted: dict[str, set[str]] = {}
    for f in files:
        wanted.setdefault(f.sop_class_uid, set()).add(f.transfer_syntax)
    contexts: list[Context] = []
    for sop_class in sorted(wanted):
        for syntax in sorted(wanted[sop_class] | set(extra)):
            contexts.append((sop_class, (syntax,)))
        contexts.append((sop_class, UNCOMPRESSED))
    groups: list[list[Context]] = []
    for context in contexts:  # keep a SOP class's contexts together
        if not groups or len(groups[-1]) >= MAX_CONTEXTS or (
            groups[-1][-1][0] != context[0] and len(groups[-1]) + 1 + len(wanted[context[0]])
            > MAX_CONTEXTS
        ):
            groups.append([])
        groups[-1].append(context)
    return groups


def _store_rq(f: DicomFile, message_id: int) -> bytes:
    """C-STORE-RQ command set (PS3.7 9.3.1.1), priority medium."""
    return command_set([
        (AFFECTED_SOP_CLASS, f.sop_class_uid), (COMMAND_FIELD, C_STORE_RQ),
        (MESSAGE_ID, message_id), (PRIORITY, 0), (DATA_SET_TYPE, DATA_SET_PRESENT),
        (AFFECTED_SOP_INSTANCE, f.sop_instance_uid),
    ])


Recorder = Callable[[InstanceResult], None]


class _Pending:
    """The files of one context group that no association has taken yet (shared by threads)."""

    def __init__(self, files: Iterable[DicomFile], stop: threading.Event | None = None) -> None:
        self._files = deque(files)
        self._stop = stop

    def take(self) -> DicomFile | None:
        """The next file, or None when none is left or the push was stopped."""
        if self._stop is not None and self._stop.is_set():
            return None
        try:
            return self._files.popleft()  # atomic: each file goes to one association
        except IndexError:
            return None

    def give_back(self, f: DicomFile) -> None:
        self._files.appendleft(f)

    def drain(self) -> list[DicomFile]:
        out = list(self._files)
        self._files.clear()
        return out


@dataclass
class _Opening:
    """Associations of one push are opened one after the other, through this.

    A peer then sees them arrive as from separate clients, and one that limits its
    associations accepts up to its limit instead of rejecting a whole burst. When the first
    attempt fails (peer down, unreachable, TLS), the others do not wait the same timeouts again.
    """

    lock: threading.Lock = field(default_factory=threading.Lock)
    opened: int = 0
    failed: bool = False


def _association_worker(
    dest: Destination, calling_ae: str, group: list[Context], pending: _Pending, t0: float,
    record: Recorder, failures: list[NetworkFailure], opening: _Opening, pace: Pace,
) -> None:
    """One association: take files from ``pending`` until none is left or it is lost."""
    with opening.lock:
        if opening.failed and not opening.opened:
            return  # the peer refused our first association: its failure stands for all
        try:
            assoc = Association.open(dest, calling_ae, group)
        except NetworkFailure as exc:
            failures.append(exc)
            opening.failed = True
            return
        opening.opened += 1
    with assoc:
        _send_all(assoc, pending, t0, record, failures, pace)


def _send_all(
    assoc: Association, pending: _Pending, t0: float, record: Recorder,
    failures: list[NetworkFailure], pace: Pace | None = None,
) -> None:
    """C-STORE files from ``pending`` on one association until none is left or it is lost.

    While the peer stores an instance we read its series and open the next file, so on
    two or more cores our work hides behind the peer's. A file opened but not yet sent when
    the association is lost goes back to ``pending`` for another association.
    """
    def prepare(f: DicomFile | None) -> tuple[int, BinaryIO, DicomFile] | _Unsendable | None:
        if f is None:
            return None
        try:
            return _payload(f, assoc.contexts)
        except _Unsendable as exc:
            return exc

    dimse_timeout = assoc.dest.dimse_timeout
    message_id = 0
    following = pending.take()
    ahead = prepare(following)
    try:
        while following is not None:
            f, payload = following, ahead
            following = ahead = None
            if not isinstance(payload, tuple):
                record(InstanceResult(describe(f), Outcome.PERMANENT, None, str(payload),
                                      time.monotonic() - t0,
                                      sop_class_refused=getattr(payload, "sop_class_refused",
                                                                False)))
                following = pending.take()
                ahead = prepare(following)
                continue
            message_id = message_id % 65535 + 1
            context_id, dataset, f = payload  # f now knows its study and series
            try:
                if pace is not None and pace.capped:  # the destination's rate cap
                    pace.wait(1, _size(f))
                with dataset:
                    assoc.send(context_id, _store_rq(f, message_id), dataset)
                following = pending.take()  # opened and checked while the peer stores
                ahead = prepare(following)
                response = assoc.receive(dimse_timeout, "C-STORE response")
            except NetworkFailure as exc:  # the association is lost with it
                failures.append(exc)
                record(InstanceResult(f, Outcome.TRANSIENT, None, exc.message,
                                      time.monotonic() - t0,
                                      timed_out=exc.kind == FailureKind.TIMEOUT))
                break
            problem = mismatch(response, Request(context_id, C_STORE_RQ, message_id,
                                                 f.sop_class_uid, f.sop_instance_uid))
            if problem is not None:  # a confused or hostile peer: nothing is acknowledged
                assoc.abort()
                lost = f"{assoc.dest.address} sent {problem}; association aborted"
                failures.append(NetworkFailure(FailureKind.NETWORK, lost))
                record(InstanceResult(f, Outcome.TRANSIENT, None, lost, time.monotonic() - t0))
                break
            code = response.status
            outcome, text = classify_status(code)
            if comment := response.text(ERROR_COMMENT):
                text = f"{text}: {comment}"
            record(InstanceResult(f, outcome, code, text, time.monotonic() - t0))
    finally:
        if isinstance(ahead, tuple):
            ahead[1].close()
        if following is not None:
            pending.give_back(following)


def store(
    dest: Destination,
    calling_ae: str,
    files: Sequence[DicomFile],
    progress: Callable[[InstanceResult], None] | None = None,
) -> StoreReport:
    """C-STORE every file, over up to ``dest.max_associations`` parallel associations.

    The associations take files from one shared list, so when one is refused or lost the
    others send its part. Never raises for network trouble: every file gets exactly one
    InstanceResult; association-level problems are also listed in ``failures``.
    """
    from concurrent.futures import ThreadPoolExecutor

    report = StoreReport(dest.address)
    t0 = time.monotonic()
    record, lock = recorder(report, progress)
    n = max(1, min(dest.max_associations, len(files) // 50 + 1))
    stop = threading.Event()
    pace = pace_of(dest)
    for group in plan_contexts(files, dest.transfer_syntaxes):
        classes = {c for c, _ in group}
        pending = _Pending((f for f in files if f.sop_class_uid in classes), stop)
        if stop.is_set():
            _not_sent(pending, record, t0, "not sent: the push was interrupted")
            continue
        opening = _Opening()
        with ThreadPoolExecutor(n, thread_name_prefix="c-store") as pool:
            futures = [pool.submit(_association_worker, dest, calling_ae, group, pending, t0,
                                   record, report.failures, opening, pace)
                       for _ in range(n)]
            try:
                for future in futures:
                    future.result()  # a bug in a thread is raised here, never lost
            except KeyboardInterrupt:
                # Ctrl-C: every association finishes the C-STORE in flight (its answer is
                # counted), takes no new file and is released; then we say what arrived
                stop.set()
                report.interrupted = True
                for future in futures:
                    future.result()
        if stop.is_set():
            _not_sent(pending, record, t0, "not sent: the push was interrupted")
            continue
        last = report.failures[-1] if report.failures else None
        for f in pending.drain():  # left when every association was refused or lost
            outcome = Outcome.PERMANENT if last and not last.transient else Outcome.TRANSIENT
            record(InstanceResult(describe(f), outcome, None,
                                  last.message if last else "not sent", time.monotonic() - t0))
    report.seconds = time.monotonic() - t0
    return report


def _size(f: DicomFile) -> int:
    try:
        return f.path.stat().st_size
    except OSError:
        return 0


def _not_sent(pending: _Pending, record: Recorder, t0: float, why: str) -> None:
    for f in pending.drain():
        record(InstanceResult(f, Outcome.TRANSIENT, None, why, time.monotonic() - t0))


# --- C-FIND ---------------------------------------------------------------------------------

def _find(assoc: Association, query, message_id: int, max_matches: int) -> list[bytes]:
    """One C-FIND (PS3.4 C.4.1) on ``assoc``'s first context: the encoded identifier of each
    match, at most ``max_matches`` (more is a NetworkFailure). The whole answer must come
    within the DIMSE timeout, so a peer trickling pending responses cannot hold us."""
    from pynetdicom.dsutils import encode

    dest = assoc.dest
    context = assoc.contexts[0]
    implicit = context.transfer_syntax == IMPLICIT_LE
    request = Request(context.id, C_FIND_RQ, message_id, STUDY_ROOT_FIND)
    assoc.send(context.id, command_set([
        (AFFECTED_SOP_CLASS, STUDY_ROOT_FIND), (COMMAND_FIELD, C_FIND_RQ),
        (MESSAGE_ID, message_id), (PRIORITY, 0), (DATA_SET_TYPE, DATA_SET_PRESENT),
    ]), BytesIO(encode(query, implicit, True) or b""))
    deadline = time.monotonic() + dest.dimse_timeout
    matches: list[bytes] = []
    for _ in range(max_matches + 1):
        left = max(0.001, deadline - time.monotonic())
        response = assoc.receive(left, "C-FIND response")
        _check(assoc, response, request)
        status = response.status
        if status in (0x0000, 0xFE00):  # success or cancelled: the final response
            return matches
        if status not in (0xFF00, 0xFF01):  # a failure (PS3.4 C.4.1.1.4)
            comment = response.text(ERROR_COMMENT)
            raise NetworkFailure(
                FailureKind.NETWORK, f"{dest.address}: C-FIND failed with status "
                f"0x{status:04X}{f' ({comment})' if comment else ''}", transient=False,
            )
        if response.dataset:
            matches.append(response.dataset)
    assoc.abort()
    raise NetworkFailure(FailureKind.NETWORK, f"{dest.address} sent more than {max_matches} "
                         "C-FIND matches; aborted")


def series_instance_counts(
    dest: Destination, calling_ae: str, series: Iterable[tuple[str, str]]
) -> dict[str, int | None]:
    """NumberOfSeriesRelatedInstances per (study UID, series UID), asked with C-FIND at SERIES
    level of the Study Root information model (PS3.4 C.6.2); None where the peer has no match.
    """
    from pydicom.dataset import Dataset

    counts: dict[str, int | None] = {}
    with Association.open(dest, calling_ae, [(STUDY_ROOT_FIND, UNCOMPRESSED)]) as assoc:
        implicit = assoc.contexts[0].transfer_syntax == IMPLICIT_LE
        for n, (study_uid, series_uid) in enumerate(series, 1):
            counts[series_uid] = None
            if not series_uid:  # unknown: an empty key would match every series (PS3.4 C.2.2)
                continue
            query = Dataset()
            query.QueryRetrieveLevel = "SERIES"
            query.StudyInstanceUID = study_uid
            query.SeriesInstanceUID = series_uid
            query.NumberOfSeriesRelatedInstances = ""
            for dataset in _find(assoc, query, n % 65535 + 1, 1000):
                counts[series_uid] = _instance_count(dest, dataset, implicit, series_uid)
    return counts


#: The most studies a --study-of query may match; one is wanted, two already refuse.
MAX_STUDY_MATCHES = 50


def find_studies(dest: Destination, calling_ae: str, keys: dict[str, str],
                 return_keys: Sequence[str]) -> list:
    """The studies matching ``keys`` (C-FIND at STUDY level, Study Root, PS3.4 C.6.2.1), as
    pydicom datasets with ``return_keys``. Every key must have a value: an empty key would
    match every study. NetworkFailure for a failed query or an unreadable answer."""
    from pydicom.dataset import Dataset
    from pynetdicom.dsutils import decode

    if not keys or any(not str(v).strip() for v in keys.values()):
        raise ValueError("every query key needs a value")
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    for keyword in return_keys:
        setattr(query, keyword, "")
    for keyword, value in keys.items():
        setattr(query, keyword, value)
    with Association.open(dest, calling_ae, [(STUDY_ROOT_FIND, UNCOMPRESSED)]) as assoc:
        implicit = assoc.contexts[0].transfer_syntax == IMPLICIT_LE
        found = _find(assoc, query, 1, MAX_STUDY_MATCHES)
    studies = []
    for dataset in found:
        try:
            ds = decode(BytesIO(dataset), implicit, True)
            for elem in ds:  # read every value now: the identifier is the peer's
                _ = elem.value
        except Exception as exc:
            raise NetworkFailure(FailureKind.NETWORK, f"{dest.address}: an unreadable C-FIND "
                                 f"answer ({peer_text(str(exc), 80)})", transient=False) from None
        studies.append(ds)
    return studies


def _instance_count(dest: Destination, dataset: bytes, implicit: bool,
                    series_uid: str) -> int | None:
    """NumberOfSeriesRelatedInstances from a C-FIND identifier; None (unverified, with a
    warning) when the peer's answer cannot be read as a count."""
    from pynetdicom.dsutils import decode

    try:
        value = decode(BytesIO(dataset), implicit, True).get("NumberOfSeriesRelatedInstances")
        if value in (None, ""):
            return None
        count = int(str(value).strip())
        if count < 0:
            raise ValueError(count)
        return count
    except Exception as exc:  # the identifier is the peer's: anything may be wrong with it
        log.warning("%s: the PACS answered an unreadable count for series %s (%s); "
                    "the series is unverified", dest.address, series_uid,
                    peer_text(str(exc), 80))
        return None
