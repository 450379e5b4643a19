"""An archive that answers storage commitment requests as a test asks (pynetdicom, on
loopback): properly on an association of its own, never, with another Transaction UID, for
instances it was not asked about, from another AE title, with a flood of reports, or by
refusing the N-ACTION. What the node records is compared with what the archive said."""

from __future__ import annotations

import threading
import time

from pydicom.dataset import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import StorageCommitmentPushModel, Verification

INSTANCE = "1.2.840.10008.1.20.1.1"


class CommitPeer:
    """``mode``: "report" (a proper report on a new association), "same" (on the request's
    association), "never", "wrong-uid",
    "strangers", "other-aet", "flood", "refuse"."""

    def __init__(self, node_port: int, node_aet: str = "DICOM_NODE", mode: str = "report",
                 aet: str = "ARCHIVE", tls=None, store: bool = False) -> None:
        """``tls``: an ssl.SSLContext its reports' associations to the node use."""
        self.node_port, self.node_aet, self.mode, self.aet = node_port, node_aet, mode, aet
        self.tls = tls
        self.reports_sent: list[int] = []  # the node's answer status to each report
        self.requests: list[Dataset] = []
        ae = AE(ae_title=aet)
        ae.add_supported_context(StorageCommitmentPushModel)
        ae.add_supported_context(Verification)
        if store:  # it answers every C-STORE with success (and keeps nothing)
            from pynetdicom import StoragePresentationContexts

            for context in StoragePresentationContexts[:120]:
                ae.add_supported_context(context.abstract_syntax)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 5
        self.server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[
            (evt.EVT_N_ACTION, self._on_action), (evt.EVT_C_STORE, lambda event: 0x0000)])
        self.port = self.server.server_address[1]

    def close(self) -> None:
        self.server.shutdown()

    def _on_action(self, event):
        request = event.action_information
        self.requests.append(request)
        if self.mode == "refuse":
            return 0x0123, None  # no such action
        if self.mode == "same":  # on this association, once the response has gone
            threading.Thread(target=self._report_here, args=(event.assoc, request),
                             daemon=True).start()
        elif self.mode != "never":
            threading.Thread(target=self._report, args=(request,), daemon=True).start()
        return 0x0000, None

    def _report_here(self, assoc, request: Dataset) -> None:
        time.sleep(0.2)
        report = Dataset()
        report.TransactionUID = request.TransactionUID
        report.ReferencedSOPSequence = request.ReferencedSOPSequence
        status, _ = assoc.send_n_event_report(report, 1, StorageCommitmentPushModel, INSTANCE)
        self.reports_sent.append(int(status.Status) if status else -2)

    def _report(self, request: Dataset) -> None:
        time.sleep(0.3)
        asked = [(i.ReferencedSOPClassUID, i.ReferencedSOPInstanceUID)
                 for i in request.ReferencedSOPSequence]
        report = Dataset()
        report.TransactionUID = request.TransactionUID
        if self.mode == "wrong-uid":
            report.TransactionUID = "1.2.3.999." + str(int(time.time()))
        if self.mode == "strangers":
            asked = [(asked[0][0], f"1.2.3.4.{n}") for n in range(len(asked))]
        report.ReferencedSOPSequence = []
        for sop_class, sop_instance in asked:
            item = Dataset()
            item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = sop_class, sop_instance
            report.ReferencedSOPSequence.append(item)
        aet = "EVIL" if self.mode == "other-aet" else self.aet
        for _ in range(40 if self.mode == "flood" else 1):
            flood = self.mode == "flood"
            if flood:  # reports for transactions never started, then none for the real one
                report.TransactionUID = f"1.2.3.{int(time.monotonic() * 1e6)}"
            self._send(report, aet)

    def _send(self, report: Dataset, aet: str) -> None:
        ae = AE(ae_title=aet)
        ae.add_requested_context(StorageCommitmentPushModel)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 5
        role = build_role(StorageCommitmentPushModel, scp_role=True)
        assoc = ae.associate("127.0.0.1", self.node_port, ae_title=self.node_aet,
                             ext_neg=[role],
                             tls_args=(self.tls, "127.0.0.1") if self.tls else None)
        if not assoc.is_established:
            self.reports_sent.append(-1)
            return
        status, _ = assoc.send_n_event_report(report, 1, StorageCommitmentPushModel, INSTANCE)
        self.reports_sent.append(int(status.Status) if status else -2)
        assoc.release()
