"""The wire format of our association layer, checked against independent encoders.

pynetdicom's DIMSE message classes and PDU encoders (which we no longer use to send) and
pydicom's file reader are the references: our command sets and P-DATA-TF framing must be
byte-identical to pynetdicom's, and our file meta walk must agree with pydicom's. Behaviour on a
real network (Orthanc, DCMTK storescp) is in test_network.py.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pynetdicom.dimse_messages import C_ECHO_RQ, C_FIND_RQ, C_STORE_RQ, C_STORE_RSP
from pynetdicom.dimse_primitives import C_ECHO, C_FIND, C_STORE
from pynetdicom.dsutils import encode, split_dataset
from pynetdicom.pdu import P_DATA_TF

from node.net.dimse import ERROR_COMMENT, MESSAGE_ID_RESPONDED_TO, parse_command_set
from node.net.files import DicomFile, _file_meta, _read_header, read_dicom_file
from node.net.scu import STUDY_ROOT_FIND, VERIFICATION, _store_rq
from node.net.status import FailureKind, NetworkFailure
from node.net.upper import Association
from node.service.settings import build_destination

MR = "1.2.840.10008.5.1.4.1.1.4"


def _pynetdicom_pdus(message, context_id: int, max_pdu: int) -> bytes:
    """The P-DATA-TF PDUs pynetdicom would send for ``message``."""
    out = b""
    for primitive in message.encode_msg(context_id, max_pdu):
        pdu = P_DATA_TF()
        pdu.from_primitive(primitive)
        out += pdu.encode()
    return out


def _our_pdus(command: bytes, dataset: bytes | None, context_id: int, max_pdu: int) -> bytes:
    """What Association.send writes to its socket, read from the other end of a socket pair."""
    ours, theirs = socket.socketpair()
    chunks: list[bytes] = []

    def read() -> None:
        theirs.settimeout(10)
        while chunk := theirs.recv(1 << 20):
            chunks.append(chunk)

    reader = threading.Thread(target=read)
    reader.start()
    with ours, theirs:
        dest = build_destination("t", {"host": "127.0.0.1", "port": 1, "ae_title": "PEER",
                                       "network_timeout": 10})
        assoc = Association(ours, dest, [], max_pdu)
        assoc.send(context_id, command, None if dataset is None else BytesIO(dataset))
        ours.shutdown(socket.SHUT_WR)
        reader.join(timeout=10)
    return b"".join(chunks)


@pytest.mark.parametrize("size,max_pdu", [(2, 16384), (1000, 16384), (10_000, 4096),
                                          (8180, 4096), (8181, 4096), (300_000, 0)])
def test_c_store_request_is_byte_identical_to_pynetdicom(size, max_pdu):
    """Command set and data set fragments, P-DATA-TF headers and fragment boundaries (PS3.8
    E.2) equal pynetdicom's for data sets that fit one PDU, or need several."""
    dataset = bytes(range(256)) * (size // 256) + bytes(size % 256)
    primitive = C_STORE()
    primitive.MessageID = 7
    primitive.AffectedSOPClassUID = MR
    primitive.AffectedSOPInstanceUID = "1.2.826.0.1.3680043.2.1125.1"
    primitive.Priority = 0
    primitive.DataSet = BytesIO(dataset)
    message = C_STORE_RQ()
    message.primitive_to_message(primitive)
    f = DicomFile(Path("x.dcm"), MR, "1.2.826.0.1.3680043.2.1125.1", "1.2.840.10008.1.2.1")
    # pynetdicom fragments "no limit" (0) at its own size; we use 1 MiB: compare with that
    theirs = _pynetdicom_pdus(message, 5, max_pdu or 1024**2 + 6)
    assert _our_pdus(_store_rq(f, 7), dataset, 5, max_pdu) == theirs


def test_echo_and_find_command_sets_equal_pynetdicom():
    from node.net.dimse import (
        AFFECTED_SOP_CLASS,
        COMMAND_FIELD,
        DATA_SET_PRESENT,
        DATA_SET_TYPE,
        MESSAGE_ID,
        NO_DATA_SET,
        PRIORITY,
        command_set,
    )

    echo = C_ECHO()
    echo.MessageID = 1
    echo.AffectedSOPClassUID = VERIFICATION
    message = C_ECHO_RQ()
    message.primitive_to_message(echo)
    ours = command_set([(AFFECTED_SOP_CLASS, VERIFICATION), (COMMAND_FIELD, 0x0030),
                        (MESSAGE_ID, 1), (DATA_SET_TYPE, NO_DATA_SET)])
    assert _our_pdus(ours, None, 1, 16384) == _pynetdicom_pdus(message, 1, 16384)

    query = Dataset()
    query.QueryRetrieveLevel = "SERIES"
    find = C_FIND()
    find.MessageID = 2
    find.AffectedSOPClassUID = STUDY_ROOT_FIND
    find.Priority = 0
    find.Identifier = BytesIO(encode(query, True, True))
    message = C_FIND_RQ()
    message.primitive_to_message(find)
    ours = command_set([(AFFECTED_SOP_CLASS, STUDY_ROOT_FIND), (COMMAND_FIELD, 0x0020),
                        (MESSAGE_ID, 2), (PRIORITY, 0), (DATA_SET_TYPE, DATA_SET_PRESENT)])
    assert (_our_pdus(ours, encode(query, True, True), 3, 16384)
            == _pynetdicom_pdus(message, 3, 16384))


def test_a_response_encoded_by_pynetdicom_is_read_back():
    """A C-STORE-RSP with a warning and an error comment, split over two PDUs by pynetdicom,
    reaches our receive() whole."""
    response = C_STORE()
    response.MessageIDBeingRespondedTo = 9
    response.AffectedSOPClassUID = MR
    response.AffectedSOPInstanceUID = "1.2.3.4"
    response.Status = 0xB007
    response.ErrorComment = "coerced"
    message = C_STORE_RSP()
    message.primitive_to_message(response)
    wire = _pynetdicom_pdus(message, 1, 64)  # tiny PDUs: the command set is fragmented
    assert wire.count(b"\x04\x00") >= 2
    ours, theirs = socket.socketpair()
    with ours, theirs:
        dest = build_destination("t", {"host": "127.0.0.1", "port": 1, "ae_title": "PEER"})
        assoc = Association(ours, dest, [], 16384)
        theirs.sendall(wire)
        got = assoc.receive(2.0, "C-STORE response")
    assert got.status == 0xB007 and got.us(MESSAGE_ID_RESPONDED_TO) == 9
    assert got.text(ERROR_COMMENT) == "coerced" and got.dataset is None


def test_peer_closing_or_talking_nonsense_is_a_clean_failure():
    dest = build_destination("t", {"host": "127.0.0.1", "port": 1, "ae_title": "PEER"})
    for wire, kind, words in [
        (b"", FailureKind.ABORTED, "closed the connection"),
        (b"\x07\x00\x00\x00\x00\x04\x00\x00\x02\x00", FailureKind.ABORTED, "aborted"),
        (b"\x09\x00\x00\x00\x00\x02ab", FailureKind.NETWORK, "invalid PDU"),
        (struct.pack(">BBII", 4, 0, 6, 9) + b"\x01\x03", FailureKind.NETWORK, "malformed"),
        (struct.pack(">BBI", 4, 0, 3) + b"\x00\x00\x00", FailureKind.NETWORK, "malformed"),
    ]:
        ours, theirs = socket.socketpair()
        with ours, theirs:
            assoc = Association(ours, dest, [], 16384)
            theirs.sendall(wire)
            theirs.shutdown(socket.SHUT_WR)
            with pytest.raises(NetworkFailure) as err:
                assoc.receive(2.0, "C-STORE response")
        assert err.value.kind == kind and words in err.value.message
        assert assoc.lost


def test_command_set_parser_refuses_garbage():
    with pytest.raises(ValueError):
        parse_command_set(b"\x08\x00\x16\x00\x02\x00\x00\x001\x00")  # group 0008
    with pytest.raises(ValueError):
        parse_command_set(b"\x00\x00\x00\x09\x10\x00\x00\x00")  # length past the end


# --- the file meta walk ---------------------------------------------------------------------

def _write(path: Path, syntax: str = "1.2.840.10008.1.2.1", **meta_extra) -> Path:
    ds = Dataset()
    ds.SOPClassUID = MR
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.2.1125.7"
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.2.1125.8"
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.2.1125.9"
    ds.PatientName = "Meta^Test"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = syntax
    for key, value in meta_extra.items():
        setattr(ds.file_meta, key, value)
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize("syntax,extra", [
    ("1.2.840.10008.1.2.1", {}),
    ("1.2.840.10008.1.2", {"SourceApplicationEntityTitle": "SRC"}),
    ("1.2.840.10008.1.2.1.99", {"PrivateInformationCreatorUID": "1.2.3",
                                "PrivateInformation": b"\x01\x02\x03\x04"}),
    ("1.2.840.10008.1.2.1", {"PrivateInformationCreatorUID": "1.2.3",
                             "PrivateInformation": b"\x00" * 20_000}),  # over 16 KB: pydicom
])
def test_file_meta_walk_agrees_with_pydicom(tmp_path, syntax, extra):
    path = _write(tmp_path / "x.dcm", syntax, **extra)
    meta, offset = split_dataset(path)
    found = _file_meta(path)
    if len(extra.get("PrivateInformation", b"")) > 16384:
        assert found is None  # too long for the quick walk; pydicom reads it instead
    else:
        assert found == ({"MediaStorageSOPClassUID": MR,
                          "MediaStorageSOPInstanceUID": meta.MediaStorageSOPInstanceUID,
                          "TransferSyntaxUID": syntax}, offset)
    described = read_dicom_file(path)
    assert (described.sop_class_uid, described.sop_instance_uid, described.transfer_syntax) == (
        MR, meta.MediaStorageSOPInstanceUID, syntax)
    header = _read_header(path)
    assert header.series_uid == pydicom.dcmread(path).SeriesInstanceUID


def test_not_dicom_is_an_input_error(tmp_path):
    from node.errors import InputError

    for name, data in [("text.dcm", b"hello"), ("zeros.dcm", bytes(200)), ("empty.dcm", b"")]:
        (tmp_path / name).write_bytes(data)
        with pytest.raises(InputError) as err:
            read_dicom_file(tmp_path / name)
        assert name in err.value.message


class _ScriptedPeer:
    """Accepts one connection, reads the A-ASSOCIATE-RQ and answers with ``reply`` bytes (or
    nothing at all): the protocol corners no real peer can be asked to produce."""

    def __init__(self, reply: bytes | None) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1)
        self.port = self.sock.getsockname()[1]
        self.reply = reply
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(10)
        conn, _ = self.sock.accept()
        with conn:
            conn.settimeout(10)
            if self.reply is not None:
                conn.recv(65536)
                conn.sendall(self.reply)
            time.sleep(3)  # silent, or waiting for our next move

    def close(self) -> None:
        self.sock.close()


def _peer_dest(port: int, **keys):
    return build_destination("t", {"host": "127.0.0.1", "port": port, "ae_title": "PEER",
                                   "acse_timeout": 1, "connect_timeout": 1, **keys})


def test_rejection_with_codes_unknown_to_pynetdicom_is_still_a_rejection():
    peer = _ScriptedPeer(b"\x03\x00\x00\x00\x00\x04\x00\x01\x07\x09")  # source 7: undefined
    try:
        with pytest.raises(NetworkFailure) as err:
            Association.open(_peer_dest(peer.port), "US", [(VERIFICATION, ("1.2.840.10008.1.2",))])
    finally:
        peer.close()
    assert err.value.kind == FailureKind.REJECTED and not err.value.transient
    assert "result 1, source 7, reason 9" in err.value.message


def test_silent_peer_during_the_tls_handshake_is_a_timeout_not_a_trust_problem():
    from dataclasses import replace

    from node.net.destination import TlsSettings

    peer = _ScriptedPeer(None)
    try:
        dest = replace(_peer_dest(peer.port), tls=TlsSettings(verify=False))
        t0 = time.monotonic()
        with pytest.raises(NetworkFailure) as err:
            Association.open(dest, "US", [(VERIFICATION, ("1.2.840.10008.1.2",))])
    finally:
        peer.close()
    assert err.value.kind == FailureKind.TIMEOUT and err.value.transient
    assert "no TLS handshake" in err.value.message and time.monotonic() - t0 < 3


def test_a_data_set_that_cannot_be_read_aborts_the_association():
    """A disk error half-way through a data set: the peer gets an A-ABORT (never a message
    that looks complete), and the failure says what happened."""

    class FailingFile(BytesIO):
        def read(self, size: int = -1) -> bytes:
            if self.tell() >= 10:
                raise OSError(5, "Input/output error")
            return super().read(size)

    dest = build_destination("t", {"host": "127.0.0.1", "port": 1, "ae_title": "PEER"})
    ours, theirs = socket.socketpair()
    with ours, theirs:
        assoc = Association(ours, dest, [], 16)  # 10-byte fragments
        with pytest.raises(NetworkFailure) as err:
            assoc.send(1, b"\x00" * 8, FailingFile(bytes(100)))
        theirs.settimeout(2)
        wire = b""
        while chunk := theirs.recv(65536):
            wire += chunk
    assert assoc.lost and "cannot read the data set" in err.value.message
    # a message is written whole (up to 1 MiB at a time), so nothing of it went out: only the
    # A-ABORT did
    assert wire == b"\x07\x00\x00\x00\x00\x04\x00\x00\x00\x00"
