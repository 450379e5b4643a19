"""DICOM networking as an SCU: C-ECHO, C-STORE and C-FIND (PS3.4, PS3.7, PS3.8) via pynetdicom.

This module sends any DICOM and knows nothing of NIfTI. Every wait is bounded by a named timeout
of the :class:`~node.config.Destination`; every failure is a :class:`NetworkFailure` that says
what happened in words an operator can act on (connection refused, DNS, timeout, rejection with
its decoded reason, abort, TLS) and whether trying again later can help.

Performance: Nagle's algorithm is switched off on every association socket we open (pynetdicom
never does), since a C-STORE otherwise stalls on delayed ACKs for 40-90 ms per instance.
Already encoded files are streamed as they are (pynetdicom's chunked send), never decoded and
re-encoded, unless the peer only accepts another uncompressed transfer syntax.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from node.config import Destination
from node.errors import InputError

#: PS3.8 9.3.2.2: at most 128 presentation contexts (odd IDs 1..255) per association.
MAX_CONTEXTS = 128
EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
UNCOMPRESSED = (EXPLICIT_LE, IMPLICIT_LE)
VERIFICATION = "1.2.840.10008.1.1"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"


class FailureKind(StrEnum):
    DNS = "dns"
    REFUSED = "connection refused"
    TIMEOUT = "timeout"
    REJECTED = "association rejected"
    ABORTED = "aborted"
    TLS = "tls"
    NETWORK = "network"
    NO_CONTEXT = "no accepted presentation context"


class NetworkFailure(Exception):
    """An association could not be used. ``transient``: trying again later may succeed."""

    def __init__(self, kind: FailureKind, message: str, transient: bool = True) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.transient = transient

    def __reduce__(self):
        return (self.__class__, (self.kind, self.message, self.transient))


class Outcome(StrEnum):
    """Per-instance result of a C-STORE, by status class (PS3.4 B.2.3, PS3.7 C)."""

    SUCCESS = "success"  # 0x0000
    WARNING = "warning"  # 0xB000, 0xB006, 0xB007: stored, with coercion or elements discarded
    DUPLICATE = "duplicate"  # 0x0111: the peer has it already
    TRANSIENT = "transient failure"  # may succeed later: out of resources, no response, abort
    PERMANENT = "permanent failure"  # resending cannot fix it: data/SOP class/context problems

    @property
    def delivered(self) -> bool:
        return self in (Outcome.SUCCESS, Outcome.WARNING, Outcome.DUPLICATE)


def classify_status(code: int | None) -> tuple[Outcome, str]:
    """Map a C-STORE response status to an outcome and a readable meaning.

    ``None`` is pynetdicom's empty status: timeout, abort or an invalid response. It is a
    failure, never a success.
    """
    from pynetdicom.status import STORAGE_SERVICE_CLASS_STATUS

    if code is None:
        return Outcome.TRANSIENT, "no response (DIMSE timeout, abort or invalid response)"
    meaning = STORAGE_SERVICE_CLASS_STATUS.get(code, (None, "unknown status"))[1] or (
        "Success" if code == 0 else "unknown status"
    )
    text = f"0x{code:04X} {meaning}"
    if code == 0x0000:
        return Outcome.SUCCESS, text
    if code in (0xB000, 0xB006, 0xB007) or 0xB000 <= code <= 0xBFFF:
        return Outcome.WARNING, text
    if code == 0x0111:
        return Outcome.DUPLICATE, text
    if 0xA700 <= code <= 0xA7FF or code in (0x0110, 0x0213):  # out of resources, processing
        return Outcome.TRANSIENT, text
    return Outcome.PERMANENT, text  # 0xA9xx, 0xCxxx, 0x0122 SOP class not supported, ...


@dataclass(frozen=True)
class DicomFile:
    """A Part 10 file ready to send, described by its file meta and identifying UIDs."""

    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    study_uid: str = ""
    series_uid: str = ""


def read_dicom_file(path: str | Path) -> DicomFile:
    """Describe a DICOM file without reading its pixel data; InputError if it is not DICOM."""
    from pydicom import dcmread
    from pydicom.errors import InvalidDicomError

    path = Path(path)
    try:
        ds = dcmread(
            path, stop_before_pixels=True,
            specific_tags=["SOPClassUID", "SOPInstanceUID", "StudyInstanceUID",
                           "SeriesInstanceUID"],
        )
    except InvalidDicomError:
        raise InputError(path, "neither NIfTI nor a DICOM Part 10 file") from None
    except Exception as exc:
        raise InputError(path, f"unreadable DICOM file ({exc})") from None
    meta = ds.file_meta
    sop_class = meta.get("MediaStorageSOPClassUID") or ds.get("SOPClassUID")
    sop_instance = meta.get("MediaStorageSOPInstanceUID") or ds.get("SOPInstanceUID")
    syntax = meta.get("TransferSyntaxUID")
    if not (sop_class and sop_instance and syntax):
        raise InputError(path, "DICOM file without SOP Class/Instance UID or transfer syntax")
    return DicomFile(
        path=path, sop_class_uid=str(sop_class), sop_instance_uid=str(sop_instance),
        transfer_syntax=str(syntax), study_uid=str(ds.get("StudyInstanceUID", "")),
        series_uid=str(ds.get("SeriesInstanceUID", "")),
    )


# --- associations -------------------------------------------------------------------------

def _tls_context(dest: Destination) -> ssl.SSLContext:
    tls = dest.tls
    assert tls is not None
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=tls.ca)
    if not tls.verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx.check_hostname = tls.verify_hostname
    if tls.cert:
        ctx.load_cert_chain(tls.cert, tls.key)
    return ctx


def _resolve(dest: Destination) -> str:
    try:
        infos = socket.getaddrinfo(dest.host, dest.port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise NetworkFailure(
            FailureKind.DNS, f"cannot resolve host {dest.host!r} ({exc.strerror})"
        ) from None
    return str(infos[0][4][0])


def _nodelay(event: Any) -> None:
    """EVT_CONN_OPEN: switch Nagle off on the association socket."""
    sock = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _wake_dimse(event: Any) -> None:
    """EVT_CONN_CLOSE/EVT_ABORTED: stop waiting for a DIMSE response that cannot come.

    pynetdicom waits the whole DIMSE timeout for a response even after the peer has closed
    the connection (pynetdicom issue #430 suggests this wake-up); a PACS that dies mid-push
    must not stall every remaining association for a minute.
    """
    event.assoc.dicom_node_lost = True  # seen by our send loop even while the reactor is held
    dimse = getattr(event.assoc, "dimse", None)
    if dimse is not None:
        dimse.msg_queue.put((None, None))


def _responses_for_the_caller(assoc: Any) -> None:
    """Keep DIMSE responses for the thread that asked, never the association's own reactor.

    pynetdicom pauses its reactor thread around send_c_store() with a checkpoint, but the pause
    has a window: the reactor can pass its checkpoint just before the pause and then take a fast
    response off the DIMSE queue ("Received unexpected C-STORE service message"), leaving
    send_c_store() waiting until a timeout (seen here as a 30 s stall about once in 250
    associations with Nagle off). As a pure SCU we never serve requests on our associations,
    so the reactor gets nothing from the queue; A-RELEASE/A-ABORT handling is unaffected.
    """
    dimse = assoc.dimse
    original = dimse.get_msg

    def get_msg(block: bool = False):
        if threading.current_thread() is assoc:
            return None, None
        return original(block)

    dimse.get_msg = get_msg


class _HeldCheckpoint:
    """Stands in for pynetdicom's reactor checkpoint (a threading.Event) and ignores set()."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def set(self) -> None:
        pass

    def clear(self) -> None:
        self.event.clear()

    def wait(self, timeout: float | None = None) -> bool:
        return self.event.wait(timeout)

    def is_set(self) -> bool:
        return self.event.is_set()


@contextmanager
def _reactor_held(assoc: Any) -> Iterator[None]:
    """Keep the association's reactor thread paused for a run of C-STOREs.

    pynetdicom pauses the reactor before and releases it after every DIMSE exchange; waiting for
    it to pause costs up to its 1 ms loop period per instance (about a fifth of a C-STORE's time
    on loopback). An SCU-only association needs nothing from the reactor meanwhile: aborts and
    closed connections reach us through EVT_ABORTED/EVT_CONN_CLOSE (``_wake_dimse``). Without the
    private attributes (another pynetdicom version) this does nothing.
    """
    original = getattr(assoc, "_reactor_checkpoint", None)
    if not isinstance(original, threading.Event) or not hasattr(assoc, "_is_paused"):
        yield
        return
    original.clear()
    deadline = time.monotonic() + 1.0
    while not assoc._is_paused and time.monotonic() < deadline:
        time.sleep(0.0001)
    time.sleep(0.003)  # a reactor that had just passed its checkpoint finishes its loop
    assoc._reactor_checkpoint = _HeldCheckpoint(original)
    try:
        yield
    finally:
        assoc._reactor_checkpoint = original
        original.set()


def _diagnose(dest: Destination, address: str, saw_abort: bool) -> NetworkFailure:
    """Why did an association fail before any answer? Probe the transport step by step."""
    where = dest.address
    try:
        sock = socket.create_connection((address, dest.port), timeout=dest.connect_timeout)
    except ConnectionRefusedError:
        return NetworkFailure(
            FailureKind.REFUSED, f"connection refused by {where} (is the PACS running?)"
        )
    except TimeoutError:
        return NetworkFailure(
            FailureKind.TIMEOUT, f"no TCP connection to {where} within {dest.connect_timeout:g} s"
        )
    except OSError as exc:
        return NetworkFailure(FailureKind.NETWORK, f"cannot connect to {where} ({exc.strerror})")
    with sock:
        if dest.tls is not None:
            try:
                with _tls_context(dest).wrap_socket(sock, server_hostname=dest.host):
                    pass
            except ssl.SSLCertVerificationError as exc:
                return NetworkFailure(
                    FailureKind.TLS,
                    f"TLS handshake with {where} failed: certificate not trusted "
                    f"({exc.verify_message})",
                    transient=False,
                )
            except (ssl.SSLError, OSError) as exc:
                return NetworkFailure(
                    FailureKind.TLS, f"TLS handshake with {where} failed ({exc})", transient=False
                )
    if saw_abort:
        return NetworkFailure(FailureKind.ABORTED, f"{where} aborted the association")
    return NetworkFailure(
        FailureKind.TIMEOUT,
        f"{where} accepted the connection but did not answer the association request "
        f"within {dest.acse_timeout:g} s",
    )


def open_association(
    dest: Destination,
    calling_ae: str,
    contexts: Sequence[tuple[str, Sequence[str]]],
) -> Any:
    """An established pynetdicom Association proposing ``contexts``; NetworkFailure otherwise."""
    from pynetdicom import AE, evt

    address = _resolve(dest)
    ae = AE(ae_title=dest.calling_ae_title or calling_ae)
    ae.connection_timeout = dest.connect_timeout
    ae.acse_timeout = dest.acse_timeout
    ae.dimse_timeout = dest.dimse_timeout
    ae.network_timeout = dest.network_timeout
    ae.maximum_pdu_size = dest.max_pdu
    for abstract, syntaxes in contexts:
        ae.add_requested_context(abstract, list(syntaxes))
    seen: dict[str, Any] = {}

    def on_acse(event: Any) -> None:
        primitive = event.primitive
        name = type(primitive).__name__
        if name == "A_ASSOCIATE" and getattr(primitive, "result", None) in (1, 2):
            seen["reject"] = primitive
        elif name == "A_ASSOCIATE" and getattr(primitive, "result", None) == 0:
            seen["accept"] = primitive
        elif name in ("A_ABORT", "A_P_ABORT"):
            seen["abort"] = primitive

    tls_args = (_tls_context(dest), dest.host) if dest.tls is not None else None
    assoc = ae.associate(
        address, dest.port, ae_title=dest.ae_title, tls_args=tls_args,
        evt_handlers=[
            (evt.EVT_CONN_OPEN, _nodelay), (evt.EVT_ACSE_RECV, on_acse),
            (evt.EVT_CONN_CLOSE, _wake_dimse), (evt.EVT_ABORTED, _wake_dimse),
        ],
    )
    if assoc.is_established:
        _responses_for_the_caller(assoc)
        return assoc
    if "reject" in seen:
        rj = seen["reject"]
        raise NetworkFailure(
            FailureKind.REJECTED,
            f"{dest.address} rejected the association: {rj.reason_str.lower()} "
            f"({rj.result_str.lower()}, source: {rj.source_str.lower()})",
            transient=rj.result == 2,
        )
    if "accept" in seen:
        proposed = ", ".join(sorted({a for a, _ in contexts}))
        raise NetworkFailure(
            FailureKind.NO_CONTEXT,
            f"{dest.address} accepted none of the proposed presentation contexts ({proposed})",
            transient=False,
        )
    raise _diagnose(dest, address, "abort" in seen)


# --- C-ECHO ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class EchoResult:
    destination: str
    association_ms: float
    echo_ms: float
    status: int


def echo(dest: Destination, calling_ae: str) -> EchoResult:
    """C-ECHO (PS3.4 A.4); NetworkFailure with the reason when it does not succeed."""
    t0 = time.perf_counter()
    assoc = open_association(dest, calling_ae, [(VERIFICATION, UNCOMPRESSED)])
    t1 = time.perf_counter()
    try:
        status = assoc.send_c_echo()
        t2 = time.perf_counter()
    finally:
        _close(assoc)
    if not status:
        raise NetworkFailure(FailureKind.TIMEOUT, f"{dest.address}: no response to C-ECHO")
    code = int(status.Status)
    if code != 0:
        raise NetworkFailure(
            FailureKind.NETWORK, f"{dest.address}: C-ECHO failed with status 0x{code:04X}"
        )
    return EchoResult(dest.address, (t1 - t0) * 1000, (t2 - t1) * 1000, code)


def _close(assoc: Any) -> None:
    if assoc.is_established and not getattr(assoc, "dicom_node_lost", False):
        assoc.release()
    else:
        assoc.abort()


# --- C-STORE --------------------------------------------------------------------------------

@dataclass(frozen=True)
class InstanceResult:
    file: DicomFile
    outcome: Outcome
    status: int | None
    message: str
    seconds: float = 0.0  # time from the start of the push until this instance's answer


@dataclass
class StoreReport:
    destination: str
    results: list[InstanceResult] = field(default_factory=list)
    failures: list[NetworkFailure] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def delivered(self) -> int:
        return sum(r.outcome.delivered for r in self.results)

    @property
    def failed(self) -> int:
        return len(self.results) - self.delivered

    @property
    def ok(self) -> bool:
        return self.failed == 0


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


def _accepted(assoc: Any) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for cx in assoc.accepted_contexts:
        out.setdefault(str(cx.abstract_syntax), set()).add(str(cx.transfer_syntax[0]))
    return out


def _send_one(
    assoc: Any, f: DicomFile, accepted: dict[str, set[str]], msg_id: int
) -> tuple[Outcome, int | None, str]:
    """Send one file in the best accepted form; (outcome, status code, meaning)."""
    syntaxes = accepted.get(f.sop_class_uid, set())
    if f.transfer_syntax in syntaxes:
        status = assoc.send_c_store(f.path, msg_id=msg_id)  # streamed as encoded
    elif syntaxes & set(UNCOMPRESSED) and f.transfer_syntax in UNCOMPRESSED:
        from pydicom import dcmread

        status = assoc.send_c_store(dcmread(f.path), msg_id=msg_id)  # re-encoded by pynetdicom
    elif syntaxes & set(UNCOMPRESSED):
        from pydicom import dcmread

        try:
            ds = dcmread(f.path)
            ds.decompress()
        except Exception as exc:
            return (Outcome.PERMANENT, None,
                    f"peer does not accept transfer syntax {f.transfer_syntax} and the file "
                    f"cannot be decompressed here ({exc})")
        status = assoc.send_c_store(ds, msg_id=msg_id)
    else:
        return (Outcome.PERMANENT, None,
                f"peer accepted no presentation context for SOP class {f.sop_class_uid}")
    code = int(status.Status) if status and "Status" in status else None
    outcome, text = classify_status(code)
    return outcome, code, text


def _store_share(
    dest: Destination, calling_ae: str, files: Sequence[DicomFile], t0: float,
    record: Callable[[InstanceResult], None], failures: list[NetworkFailure],
    stop: threading.Event | None,
) -> None:
    """One worker: its files over as many associations as the context groups need."""
    for group in plan_contexts(files):
        classes = {c for c, _ in group}
        todo = [f for f in files if f.sop_class_uid in classes]
        try:
            assoc = open_association(dest, calling_ae, group)
        except NetworkFailure as exc:
            failures.append(exc)
            outcome = Outcome.TRANSIENT if exc.transient else Outcome.PERMANENT
            for f in todo:
                record(InstanceResult(f, outcome, None, exc.message, time.monotonic() - t0))
            continue
        try:
            accepted = _accepted(assoc)
            with _reactor_held(assoc):
                _send_all(assoc, dest, todo, accepted, t0, record, failures, stop)
        finally:
            _close(assoc)


def _send_all(
    assoc: Any, dest: Destination, todo: Sequence[DicomFile], accepted: dict[str, set[str]],
    t0: float, record: Callable[[InstanceResult], None], failures: list[NetworkFailure],
    stop: Any,
) -> None:
    """C-STORE ``todo`` in order on one association; the rest fails as soon as it is lost."""
    lost_reason = f"association with {dest.address} was lost"
    for i, f in enumerate(todo):
        stopped = stop is not None and stop.is_set()
        if stopped or not assoc.is_established or getattr(assoc, "dicom_node_lost", False):
            reason = "stopped" if stopped else lost_reason
            for rest in todo[i:]:
                record(InstanceResult(rest, Outcome.TRANSIENT, None, reason,
                                      time.monotonic() - t0))
            if not stopped:
                failures.append(NetworkFailure(FailureKind.ABORTED, reason))
            return
        outcome, code, text = _send_one(assoc, f, accepted, (i % 65535) + 1)
        record(InstanceResult(f, outcome, code, text, time.monotonic() - t0))


def store(
    dest: Destination,
    calling_ae: str,
    files: Sequence[DicomFile],
    progress: Callable[[InstanceResult], None] | None = None,
    stop: threading.Event | None = None,
) -> StoreReport:
    """C-STORE every file, over up to ``dest.max_associations`` parallel associations.

    Parallel associations run in worker processes: pynetdicom's per-instance work is Python
    and would serialise on the GIL in threads. Never raises for network trouble: every file
    gets an InstanceResult, association-level problems are also listed in ``failures``.
    """
    report = StoreReport(dest.address)
    t0 = time.monotonic()

    def record(result: InstanceResult) -> None:
        report.results.append(result)
        if progress is not None:
            progress(result)

    n = max(1, min(dest.max_associations, len(files) // 50 + 1))
    if n == 1:
        _chunked_sending()
        _store_share(dest, calling_ae, list(files), t0, record, report.failures, stop)
    else:
        _store_parallel(dest, calling_ae, files, n, t0, record, report.failures, stop)
    report.seconds = time.monotonic() - t0
    return report


def _chunked_sending() -> None:
    from pynetdicom import _config

    _config.STORE_SEND_CHUNKED_DATASET = True  # stream files as encoded, no decode/re-encode


_worker_queue: Any = None
_worker_stop: Any = None


def _worker_init(results: Any, stop: Any) -> None:
    global _worker_queue, _worker_stop
    _worker_queue, _worker_stop = results, stop
    _chunked_sending()


class _StopFlag:
    """threading.Event-like view of a multiprocessing.Event for _store_share."""

    def __init__(self, event: Any) -> None:
        self._event = event

    def is_set(self) -> bool:
        return self._event.is_set()


def _store_worker(dest: Destination, calling_ae: str, files: list[DicomFile], t0: float):
    """In a worker process: send a share, streaming results back in small batches."""
    batch: list[InstanceResult] = []
    last = time.monotonic()

    def record(result: InstanceResult) -> None:
        nonlocal last
        batch.append(result)
        if len(batch) >= 32 or time.monotonic() - last > 0.2:
            _worker_queue.put(list(batch))
            batch.clear()
            last = time.monotonic()

    failures: list[NetworkFailure] = []
    _store_share(dest, calling_ae, files, t0, record, failures, _StopFlag(_worker_stop))
    if batch:
        _worker_queue.put(list(batch))
    return failures


def _store_parallel(
    dest: Destination, calling_ae: str, files: Sequence[DicomFile], n: int, t0: float,
    record: Callable[[InstanceResult], None], failures: list[NetworkFailure],
    stop: threading.Event | None,
) -> None:
    import multiprocessing as mp
    import queue as queue_mod
    from concurrent.futures import ProcessPoolExecutor, wait

    ctx = mp.get_context("spawn")  # no fork of a process that may hold threads and sockets
    results, stop_flag = ctx.Queue(), ctx.Event()
    shares = [list(files[i::n]) for i in range(n)]
    with ProcessPoolExecutor(n, mp_context=ctx, initializer=_worker_init,
                             initargs=(results, stop_flag)) as pool:
        futures = [pool.submit(_store_worker, dest, calling_ae, share, t0) for share in shares]
        pending = set(futures)
        while pending:
            if stop is not None and stop.is_set():
                stop_flag.set()
            try:
                for result in results.get(timeout=0.1):
                    record(result)
            except queue_mod.Empty:
                pass
            pending = {f for f in pending if not f.done()}
        while True:  # what arrived after the last worker finished
            try:
                for result in results.get(timeout=0.05):
                    record(result)
            except queue_mod.Empty:
                break
        wait(futures)
        for future in futures:
            failures.extend(future.result())


# --- C-FIND ---------------------------------------------------------------------------------

def series_instance_counts(
    dest: Destination, calling_ae: str, series: Iterable[tuple[str, str]]
) -> dict[str, int | None]:
    """NumberOfSeriesRelatedInstances per (study UID, series UID), asked with C-FIND at SERIES
    level of the Study Root information model (PS3.4 C.6.2); None where the peer has no match.
    """
    from pydicom.dataset import Dataset

    assoc = open_association(dest, calling_ae, [(STUDY_ROOT_FIND, UNCOMPRESSED)])
    counts: dict[str, int | None] = {}
    try:
        for study_uid, series_uid in series:
            query = Dataset()
            query.QueryRetrieveLevel = "SERIES"
            query.StudyInstanceUID = study_uid
            query.SeriesInstanceUID = series_uid
            query.NumberOfSeriesRelatedInstances = ""
            counts[series_uid] = None
            for status, identifier in assoc.send_c_find(query, STUDY_ROOT_FIND):
                if not status:
                    raise NetworkFailure(FailureKind.TIMEOUT, f"{dest.address}: no C-FIND response")
                if status.Status in (0xFF00, 0xFF01) and identifier is not None:
                    value = identifier.get("NumberOfSeriesRelatedInstances")
                    counts[series_uid] = int(value) if value not in (None, "") else None
    finally:
        _close(assoc)
    return counts
