"""Network helpers for tests: a destination on loopback, a small oblique NIfTI with a
sidecar to send."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from conftest import free_port

from node.net.scu import STUDY_ROOT_FIND
from node.service.settings import build_destination
from support.niftigen import affine_from, ramp_data, rotation, write_nifti

SIDECAR = {"SeriesDescription": "net test T1", "RepetitionTime": 2.0, "EchoTime": 0.003}


def _dest(port: int, aet: str = "ORTHANC", **kw):
    return build_destination("t", {"host": "127.0.0.1", "port": port, "ae_title": aet, **kw})


def _nifti(tmp_path: Path, name="sub-net01_ses-1_T1w", shape=(16, 12, 6), seed=3) -> Path:
    return write_nifti(tmp_path / f"{name}.nii.gz", ramp_data(shape, "int16", seed=seed),
                       affine_from(rotation(10, 0, 5), (0.9, 1.1, 2.0)), sidecar=SIDECAR)


class SilentPeer:
    """Accepts TCP connections and never says a word: every DICOM timeout must fire."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        self.sock.settimeout(0.2)
        deadline = time.monotonic() + 60
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                conn, _ = self.sock.accept()
                self.conns.append(conn)
            except OSError:
                continue

    def close(self) -> None:
        self._stop.set()
        self.thread.join(timeout=5)
        for c in self.conns:
            c.close()
        self.sock.close()


@contextmanager
def pynetdicom_scp(aet: str, on_store=None, maximum_associations: int = 10, on_find=None):
    """pynetdicom as an independent MR storage (and Study Root find) SCP on a free loopback
    port; yields the port.

    No PACS lets a test choose its statuses or its association limit; this one does.
    """
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import MRImageStorage

    ae = AE(ae_title=aet)
    ae.maximum_associations = maximum_associations
    ae.add_supported_context(MRImageStorage, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
    ae.add_supported_context(STUDY_ROOT_FIND, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
    handlers = [(evt.EVT_C_STORE, on_store)] if on_store else []
    handlers += [(evt.EVT_C_FIND, on_find)] if on_find else []
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=handlers)
    try:
        yield server.socket.getsockname()[1]
    finally:
        server.shutdown()


@contextmanager
def storescp(folder: Path, aet: str, *options: str):
    """DCMTK's storescp on a free loopback port, writing into ``folder``; yields the port."""
    port = free_port()
    folder.mkdir()
    scp = subprocess.Popen(["storescp", *options, "-aet", aet, "-od", str(folder), str(port)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        yield port
    finally:
        scp.terminate()
        scp.wait(timeout=10)
