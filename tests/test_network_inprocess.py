"""The network layer against peers in this process or on loopback that no Debian package
provides: pynetdicom SCPs answering every status class, listeners that never answer, the
status vocabulary and the presentation-context plan. No external tool (the ``unit`` marker);
the tests against Orthanc and DCMTK are in test_network.py."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from conftest import NODE_AET
from support.network import SilentPeer, _dest, _nifti, pynetdicom_scp
from support.niftigen import affine_from, ramp_data, write_nifti

from node.convert.output import write_series
from node.convert.series import convert_file
from node.net.files import DicomFile, read_dicom_file
from node.net.scu import MAX_CONTEXTS, echo, plan_contexts, store
from node.net.status import FailureKind, NetworkFailure, Outcome, classify_status


def test_silent_peer_times_out_within_the_configured_bound():
    peer = SilentPeer()
    try:
        dest = _dest(peer.port, acse_timeout=1.0, connect_timeout=1.0)
        t0 = time.monotonic()
        with pytest.raises(NetworkFailure) as err:
            echo(dest, NODE_AET)
        elapsed = time.monotonic() - t0
    finally:
        peer.close()
    assert err.value.kind == FailureKind.TIMEOUT and err.value.transient
    assert "did not answer the association request within 1 s" in err.value.message
    assert elapsed < 1.0 + 3.0  # ACSE timeout plus the diagnosis connect, never unbounded


def test_status_classes():
    assert classify_status(0x0000)[0] == Outcome.SUCCESS
    for code in (0xB000, 0xB006, 0xB007):
        assert classify_status(code)[0] == Outcome.WARNING and classify_status(code)[0].delivered
    assert classify_status(0x0111)[0] == Outcome.DUPLICATE and Outcome.DUPLICATE.delivered
    assert classify_status(0xA700)[0] == Outcome.TRANSIENT
    assert classify_status(0xA7FF)[0] == Outcome.TRANSIENT
    for code in (0xA900, 0xA9FF, 0xC000, 0xCFFF, 0x0122):
        assert classify_status(code)[0] == Outcome.PERMANENT
    outcome, text = classify_status(None)
    assert outcome == Outcome.TRANSIENT and not outcome.delivered and "no response" in text
    assert "Out of Resources" in classify_status(0xA700)[1]


def test_contexts_are_split_at_128_per_association():
    files = [DicomFile(Path(f"{i}.dcm"), f"1.2.840.10008.5.1.4.1.1.{i}", f"1.2.3.{i}",
                       "1.2.840.10008.1.2.1") for i in range(1, 100)]
    groups = plan_contexts(files)
    assert len(groups) == 2
    assert all(len(g) <= MAX_CONTEXTS for g in groups)
    classes = [c for g in groups for c, _ in g]
    assert len(set(classes)) == 99
    for g in groups:  # a SOP class never straddles two associations
        assert not ({c for c, _ in g} & ({c for h in groups if h is not g for c, _ in h}))


def test_every_status_class_from_a_pynetdicom_scp(tmp_path):
    """pynetdicom as an independent storage SCP answers each instance with a chosen status
    (no PACS lets a test choose): each lands in its class, with the peer's error comment."""
    from pydicom.dataset import Dataset

    series = convert_file(_nifti(tmp_path, "sub-net10_T1w", seed=12))
    folder = write_series(series, tmp_path / "dicom")
    files = [read_dicom_file(p) for p in sorted(folder.iterdir())]
    answers = dict(zip([f.sop_instance_uid for f in files],
                       [0x0000, 0xB007, 0x0111, 0xA700, 0xA900, 0xC123], strict=True))

    def on_store(event):
        status = Dataset()
        status.Status = answers[event.request.AffectedSOPInstanceUID]
        status.ErrorComment = f"test comment {status.Status:04X}"
        return status

    with pynetdicom_scp("PYNETDICOM", on_store) as port:
        report = store(_dest(port, "PYNETDICOM", max_associations=1), NODE_AET, files)
    got = {r.file.sop_instance_uid: r for r in report.results}
    expected = [Outcome.SUCCESS, Outcome.WARNING, Outcome.DUPLICATE, Outcome.TRANSIENT,
                Outcome.PERMANENT, Outcome.PERMANENT]
    for f, outcome in zip(files, expected, strict=True):
        result = got[f.sop_instance_uid]
        assert result.outcome == outcome and result.status == answers[f.sop_instance_uid]
        if result.status:
            assert f"test comment {result.status:04X}" in result.message
    assert report.delivered == 3 and report.failed == 3 and not report.failures


def test_refused_associations_leave_their_files_to_the_accepted_one(tmp_path):
    """A peer that takes one association at a time (pynetdicom, maximum_associations = 1)
    rejects the others as "local limit exceeded": the accepted association sends every file,
    the rejections are reported, and the push is complete."""
    src = write_nifti(tmp_path / "sub-net12_T1w.nii.gz", ramp_data((8, 8, 150), "int16", seed=16),
                      affine_from(np.eye(3)))
    folder = write_series(convert_file(src), tmp_path / "dicom")
    files = [read_dicom_file(p) for p in sorted(folder.iterdir())]
    received: list[str] = []

    def on_store(event):
        received.append(event.request.AffectedSOPInstanceUID)
        return 0x0000

    with pynetdicom_scp("ONEATATIME", on_store, maximum_associations=1) as port:
        report = store(_dest(port, "ONEATATIME", max_associations=3), NODE_AET, files)
    assert report.ok and report.delivered == 150 and len(report.results) == 150
    assert sorted(received) == sorted(f.sop_instance_uid for f in files)  # each once
    rejected = [f for f in report.failures if f.kind == FailureKind.REJECTED]
    assert rejected and all("local limit exceeded" in f.message for f in rejected)


def test_verify_reports_a_failed_query_with_its_status():
    """A C-FIND answered with a failure status (pynetdicom SCP, 0xC001 and a comment) is an
    error that says so, not a quiet "incomplete"."""
    from pydicom.dataset import Dataset

    from node.net.scu import series_instance_counts

    def on_find(event):
        status = Dataset()
        status.Status = 0xC001
        status.ErrorComment = "index offline"
        yield status, None

    with pynetdicom_scp("FINDER", on_find=on_find) as port, pytest.raises(NetworkFailure) as err:
        series_instance_counts(_dest(port, "FINDER"), NODE_AET, [("1.2.3", "1.2.3.4")])
    assert "C-FIND failed with status 0xC001 (index offline)" in err.value.message


def test_unanswering_peer_costs_one_timeout_not_one_per_association(tmp_path):
    """Three associations planned, the peer never answers: the first attempt's ACSE timeout
    stands for all (not three timeouts in a row), and every file is reported failed."""
    src = write_nifti(tmp_path / "sub-net15_T1w.nii.gz", ramp_data((4, 4, 150), "int16", seed=17),
                      affine_from(np.eye(3)))
    folder = write_series(convert_file(src), tmp_path / "dicom")
    files = [read_dicom_file(p) for p in sorted(folder.iterdir())]
    peer = SilentPeer()
    try:
        dest = _dest(peer.port, acse_timeout=1.0, connect_timeout=1.0, max_associations=3)
        t0 = time.monotonic()
        report = store(dest, NODE_AET, files)
        elapsed = time.monotonic() - t0
    finally:
        peer.close()
    assert elapsed < 1.0 + 1.5, elapsed
    assert report.delivered == 0 and len(report.results) == 150
    assert len(report.failures) == 1 and report.failures[0].kind == FailureKind.TIMEOUT
    assert all(r.outcome == Outcome.TRANSIENT for r in report.results)
