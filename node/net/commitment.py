"""Storage Commitment Push Model as the SCU (PS3.4 Annex J): ask an archive to commit to
keeping instances (N-ACTION, J.3.2), and take its answer (N-EVENT-REPORT, J.3.3), on the same
association or on one the archive opens to us (:class:`CommitmentListener`).

Only a report that names a transaction we started, from the archive we asked (its AE title
and address), counts; of it only the instances we asked about; and each transaction is
settled once. An instance is committed only when the report lists it in
ReferencedSOPSequence: one in FailedSOPSequence is failed with its Failure Reason (J.3.3:
0x0110 processing failure, 0x0112 no such object instance, 0x0213 resource limitation, 0x0122
SOP class not supported, 0x0119 class/instance conflict, 0x0131 duplicate transaction UID),
and one in neither is not committed.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from io import BytesIO

from node.net.destination import Destination
from node.net.dimse import (
    AFFECTED_SOP_CLASS,
    AFFECTED_SOP_INSTANCE,
    COMMAND_FIELD,
    DATA_SET_PRESENT,
    DATA_SET_TYPE,
    MESSAGE_ID,
    MESSAGE_ID_RESPONDED_TO,
    NO_DATA_SET,
    STATUS,
    Request,
    command_set,
    mismatch,
)
from node.net.files import IMPLICIT_LE, UNCOMPRESSED
from node.net.status import FailureKind, NetworkFailure, peer_text
from node.net.upper import Association

log = logging.getLogger("node.net")

STORAGE_COMMITMENT = "1.2.840.10008.1.20.1"  # Storage Commitment Push Model SOP Class
STORAGE_COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"  # its well-known SOP Instance
N_ACTION_RQ = 0x0130
N_EVENT_REPORT_RQ, N_EVENT_REPORT_RSP = 0x0100, 0x8100
REQUESTED_SOP_CLASS = 0x00000003
REQUESTED_SOP_INSTANCE = 0x00001001
EVENT_TYPE_ID = 0x00001002
ACTION_TYPE_ID = 0x00001008
#: The most instances one report may name (a flood is not read to the end).
MAX_REPORTED = 100_000

FAILURE_REASONS = {0x0110: "processing failure", 0x0112: "no such object instance",
                   0x0213: "resource limitation", 0x0122: "SOP class not supported",
                   0x0119: "class/instance conflict", 0x0131: "duplicate transaction UID"}


class CommitmentRefused(NetworkFailure):
    """The archive refused the N-ACTION itself (no storage commitment there): resending
    cannot help; the fix is the destination's settings."""


@dataclass(frozen=True)
class CommitmentResult:
    """What a report said of the instances of one transaction."""

    transaction_uid: str
    committed: frozenset[str]
    failed: dict[str, int] = field(default_factory=dict)  # SOP Instance UID: Failure Reason

    def describe(self, uid: str) -> str:
        if uid in self.committed:
            return "committed"
        if uid in self.failed:
            code = self.failed[uid]
            return f"not committed: 0x{code:04X} {FAILURE_REASONS.get(code, 'failure')}"
        return "not committed: the report did not name it"


def read_report(dataset, transaction_uid: str, asked: set[str]) -> CommitmentResult:
    """The result of ``transaction_uid`` from a report's Event Information (a pydicom
    Dataset). ValueError when it names another transaction or cannot be read; instances
    we did not ask about are left out (and logged)."""
    if str(dataset.get("TransactionUID", "")).strip() != transaction_uid:
        raise ValueError("a report for another transaction")
    committed, failed, strangers = set(), {}, 0
    for keyword in ("ReferencedSOPSequence", "FailedSOPSequence"):
        items = dataset.get(keyword) or []
        if len(items) > MAX_REPORTED:
            raise ValueError(f"a report naming over {MAX_REPORTED} instances")
        for item in items:
            uid = str(item.get("ReferencedSOPInstanceUID", "")).strip()
            if uid not in asked:
                strangers += 1
            elif keyword == "ReferencedSOPSequence":
                committed.add(uid)
            else:
                reason = item.get("FailureReason")
                failed[uid] = int(reason) if reason is not None else 0x0110
    if strangers:
        log.warning("storage commitment %s: the report names %d instance(s) not asked about; "
                    "ignored", transaction_uid, strangers)
    return CommitmentResult(transaction_uid, frozenset(committed - set(failed)), failed)


def _encode(dataset, implicit: bool) -> bytes:
    from pynetdicom.dsutils import encode

    return encode(dataset, implicit, True) or b""


def request_commitment(dest: Destination, calling_ae: str, transaction_uid: str,
                       instances: Sequence[tuple[str, str]], linger: float = 2.0
                       ) -> CommitmentResult | None:
    """Send the N-ACTION for ``instances`` ((SOP class, SOP instance) pairs) under
    ``transaction_uid``; then wait up to ``linger`` seconds for the report on the same
    association. The result when it came there, else None (it will come to the listener).

    Raises CommitmentRefused when the archive refuses the request (no such service), and
    NetworkFailure when the request could not be made."""
    from pydicom.dataset import Dataset

    request = Dataset()
    request.TransactionUID = transaction_uid
    request.ReferencedSOPSequence = []
    for sop_class, sop_instance in instances:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = sop_instance
        request.ReferencedSOPSequence.append(item)
    try:
        assoc = Association.open(dest, calling_ae, [(STORAGE_COMMITMENT, UNCOMPRESSED)])
    except NetworkFailure as exc:
        if exc.kind == FailureKind.NO_CONTEXT:
            raise CommitmentRefused(FailureKind.NO_CONTEXT, f"{dest.address} does not offer "
                                    "storage commitment (it accepted no Storage Commitment "
                                    "Push Model context); set commitment = false for this "
                                    "destination", transient=False) from None
        raise
    with assoc:
        context = assoc.contexts[0]
        implicit = context.transfer_syntax == IMPLICIT_LE
        assoc.send(context.id, command_set([
            (REQUESTED_SOP_CLASS, STORAGE_COMMITMENT), (COMMAND_FIELD, N_ACTION_RQ),
            (MESSAGE_ID, 1), (DATA_SET_TYPE, DATA_SET_PRESENT),
            (REQUESTED_SOP_INSTANCE, STORAGE_COMMITMENT_INSTANCE), (ACTION_TYPE_ID, 1),
        ]), BytesIO(_encode(request, implicit)))
        asked = {u for _, u in instances}
        early = None  # a report may come before the N-ACTION's response (DCMTK #732)
        for _ in range(4):
            try:
                response = assoc.receive(dest.dimse_timeout, "N-ACTION response")
            except NetworkFailure as exc:
                if exc.kind != FailureKind.ABORTED:
                    raise
                # how an archive that serves no commitment to us answers (Orthanc without
                # AllowStorageCommitment): a refusal, not a network fault
                raise CommitmentRefused(FailureKind.REJECTED, f"{exc.message} when asked for "
                                        "storage commitment: it does not serve it to us (in "
                                        "Orthanc: AllowStorageCommitment for this modality); "
                                        "set commitment = false for this destination, or "
                                        "allow it there", transient=False) from None
            if response.us(COMMAND_FIELD) != N_EVENT_REPORT_RQ:
                break
            early = _answer_report(assoc, dest, response, transaction_uid, asked) or early
        problem = mismatch(response, Request(context.id, N_ACTION_RQ, 1, STORAGE_COMMITMENT))
        if problem is not None:
            assoc.abort()
            raise NetworkFailure(FailureKind.NETWORK, f"{dest.address} sent {problem}; "
                                 "association aborted")
        if response.status != 0x0000:
            raise CommitmentRefused(FailureKind.REJECTED, f"{dest.address} refused the storage "
                                    f"commitment request (status 0x{response.status:04X}); set "
                                    "commitment = false for this destination if it offers "
                                    "none", transient=False)
        if early is not None:
            return early
        return _report_on(assoc, dest, transaction_uid, asked, linger)


def _report_on(assoc: Association, dest: Destination, transaction_uid: str, asked: set[str],
               linger: float) -> CommitmentResult | None:
    """A report that comes on our association within ``linger`` s (answered), else None."""
    deadline = time.monotonic() + linger
    for _ in range(64):  # bounded: a peer sending other messages cannot hold us
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        try:
            message = assoc.receive(left, "N-EVENT-REPORT")
        except NetworkFailure:
            return None  # no report here (a timeout, or the archive released): it comes later
        if message.us(COMMAND_FIELD) != N_EVENT_REPORT_RQ:
            continue  # not a report: not for us to answer
        result = _answer_report(assoc, dest, message, transaction_uid, asked)
        if result is not None:
            return result
    return None


def _answer_report(assoc: Association, dest: Destination, message, transaction_uid: str,
                   asked: set[str]) -> CommitmentResult | None:
    """Read an N-EVENT-REPORT that came on our association and answer it (success only for
    a readable report of our transaction)."""
    from pynetdicom.dsutils import decode

    context = next((c for c in assoc.contexts if c.id == message.context_id), None)
    implicit = context is not None and context.transfer_syntax == IMPLICIT_LE
    try:
        if message.dataset is None:
            raise ValueError("a report without Event Information")
        result = read_report(decode(BytesIO(message.dataset), implicit, True),
                             transaction_uid, asked)
        status = 0x0000
    except Exception as exc:  # the archive's data: anything may be wrong with it
        log.warning("%s: an unusable storage commitment report (%s)", dest.address,
                    peer_text(str(exc), 100))
        result, status = None, 0x0110
    assoc.send(message.context_id, command_set([
        (AFFECTED_SOP_CLASS, STORAGE_COMMITMENT), (COMMAND_FIELD, N_EVENT_REPORT_RSP),
        (MESSAGE_ID_RESPONDED_TO, message.us(MESSAGE_ID) or 0),
        (DATA_SET_TYPE, NO_DATA_SET), (STATUS, status),
        (AFFECTED_SOP_INSTANCE, STORAGE_COMMITMENT_INSTANCE),
        (EVENT_TYPE_ID, message.us(EVENT_TYPE_ID) or 1),
    ]))
    return result


# --- reports on associations the archive opens --------------------------------------------

@dataclass
class _Waiting:
    dest: Destination
    addresses: frozenset[str]
    asked: set[str]
    done: threading.Event = field(default_factory=threading.Event)
    result: CommitmentResult | None = None


def _addresses(dest: Destination) -> frozenset[str]:
    """The addresses the archive's reports may come from (its host, resolved)."""
    try:
        return frozenset(a[4][0] for a in socket.getaddrinfo(dest.host, dest.port))
    except OSError:
        return frozenset({dest.host})


class CommitmentListener:
    """A small SCP that takes N-EVENT-REPORTs for the transactions we started (pynetdicom's
    acceptor, one AE title and port), from the archive each was sent to: its AE title and
    address must match, the transaction must be waiting, and it is settled once. Anything
    else is answered with a failure status and changes nothing."""

    def __init__(self, ae_title: str, port: int, host: str = "127.0.0.1",
                 timeout: float = 30.0,
                 resolve: Callable[[str], tuple[Destination, set[str]] | None] | None = None,
                 on_result: Callable[[str, CommitmentResult], None] | None = None,
                 tls: tuple[str, str, str] | None = None) -> None:
        """``resolve``: the destination and asked instances of a transaction not registered
        with :meth:`expect` (the node's journal: it outlives a restart), or None; then
        ``on_result`` records its result (durably, before the report is acknowledged; it
        raises to refuse it). ``tls``: (certificate, key, CA or "") files: only TLS
        associations, with a client certificate signed by the CA when one is given."""
        from pynetdicom import AE, evt
        from pynetdicom.sop_class import StorageCommitmentPushModel

        self.ae_title = ae_title
        self._resolve, self._on_result = resolve, on_result
        self._waiting: dict[str, _Waiting] = {}
        self._lock = threading.Lock()
        ae = AE(ae_title=ae_title)
        ae.add_supported_context(StorageCommitmentPushModel, list(UNCOMPRESSED),
                                 scu_role=True, scp_role=True)
        ae.require_called_aet = True
        ae.maximum_associations = 4
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
        context = None
        if tls is not None:
            import ssl

            cert, key, ca = tls
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=ca or None)
            context.load_cert_chain(cert, key)
            context.verify_mode = ssl.CERT_REQUIRED if ca else ssl.CERT_NONE
        self._server = ae.start_server((host, port), block=False, ssl_context=context,
                                       evt_handlers=[(evt.EVT_N_EVENT_REPORT, self._on_report)])
        self.port = self._server.server_address[1]

    def expect(self, transaction_uid: str, dest: Destination, asked: set[str]) -> None:
        """Wait for ``transaction_uid``'s report from ``dest`` (before the N-ACTION goes)."""
        with self._lock:
            self._waiting[transaction_uid] = _Waiting(dest, _addresses(dest), set(asked))

    def settle(self, transaction_uid: str, result: CommitmentResult) -> None:
        """The report came on the request's own association."""
        with self._lock:
            waiting = self._waiting.get(transaction_uid)
            if waiting is not None and not waiting.done.is_set():
                waiting.result = result
                waiting.done.set()

    def wait(self, transaction_uid: str, timeout: float) -> CommitmentResult | None:
        """The transaction's result, or None when no report came within ``timeout`` s."""
        with self._lock:
            waiting = self._waiting.get(transaction_uid)
        if waiting is None:
            return None
        waiting.done.wait(timeout)
        with self._lock:
            self._waiting.pop(transaction_uid, None)
        return waiting.result

    def close(self) -> None:
        self._server.shutdown()

    def _on_report(self, event) -> tuple[int, None]:
        requestor = event.assoc.requestor
        try:
            info = event.event_information
            transaction_uid = str(info.get("TransactionUID", "")).strip()
        except Exception:  # the peer's data
            return 0x0110, None
        with self._lock:
            waiting = self._waiting.get(transaction_uid)
        if waiting is None and self._resolve is not None and transaction_uid:
            try:
                found = self._resolve(transaction_uid)
            except Exception as exc:  # the journal away: the archive may report again
                log.warning("storage commitment %s: cannot look it up (%s)", transaction_uid,
                            exc)
                return 0x0110, None
            if found is not None:
                waiting = _Waiting(found[0], _addresses(found[0]), set(found[1]))
        if waiting is None or waiting.done.is_set():
            log.warning("storage commitment: a report for no transaction we wait for, from "
                        "%s; refused", peer_text(str(requestor.ae_title), 20))
            return 0x0110, None
        if (str(requestor.ae_title).strip() != waiting.dest.ae_title
                or requestor.address not in waiting.addresses):
            log.warning("storage commitment %s: a report from %s@%s, not from %s; refused",
                        transaction_uid, peer_text(str(requestor.ae_title), 20),
                        requestor.address, waiting.dest.address)
            return 0x0110, None
        try:
            result = read_report(info, transaction_uid, waiting.asked)
        except Exception as exc:
            log.warning("storage commitment %s: an unusable report (%s)", transaction_uid,
                        peer_text(str(exc), 100))
            return 0x0110, None
        if transaction_uid not in self._waiting and self._on_result is not None:
            try:  # recorded before it is acknowledged; the job then no longer waits for it
                self._on_result(transaction_uid, result)
            except Exception as exc:
                log.warning("storage commitment %s: not recorded (%s)", transaction_uid, exc)
                return 0x0110, None
            return 0x0000, None
        with self._lock:  # settled once: a second report for it is refused
            if waiting.done.is_set():
                return 0x0110, None
            waiting.result = result
            waiting.done.set()
        return 0x0000, None
