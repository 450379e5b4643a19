"""C-ECHO / C-STORE / C-FIND against real peers: Orthanc (REST checks) and DCMTK."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import NODE_AET, free_port, run_node
from support.network import _dest, _nifti, storescp
from support.niftigen import affine_from, ramp_data, write_nifti

from node.convert.output import write_series
from node.convert.series import convert_file
from node.net.files import read_dicom_file
from node.net.scu import echo, store
from node.net.status import FailureKind, NetworkFailure, Outcome
from node.service.settings import build_destination

pytestmark = pytest.mark.peers  # Orthanc, DCMTK, dciodvfy, dcm2niix


# --- C-ECHO -----------------------------------------------------------------------------------

def test_echo_succeeds_and_agrees_with_echoscu(pacs, tmp_path):
    cfg = pacs.config_toml(tmp_path / "node.toml")
    proc = run_node("echo", "--config", cfg)
    assert proc.returncode == 0, proc.stderr
    assert "success" in proc.stdout and "ms" in proc.stdout
    ref = subprocess.run(["echoscu", "-d", "-aet", NODE_AET, "-aec", pacs.aet, "127.0.0.1",
                          str(pacs.port)], capture_output=True, timeout=30, text=True)
    assert ref.returncode == 0
    theirs = [line.rsplit(":", 1)[1].strip() for line in (ref.stdout + ref.stderr).splitlines()
              if "Their Implementation Version Name" in line and line.rsplit(":", 1)[1].strip()]
    assert theirs and f"peer implementation {theirs[-1]}" in proc.stdout  # as echoscu saw it


def test_echo_with_unconfigured_peer_on_command_line(pacs, tmp_path):
    proc = run_node("echo", "--host", "127.0.0.1", "--port", pacs.port, "--called-aet",
                    pacs.aet, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    # as echoscu: HOST PORT positionally, -aec the called and -aet the calling AE title
    proc = run_node("echo", "127.0.0.1", pacs.port, "-aec", pacs.aet, "-aet", NODE_AET,
                    "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["ok"] is True
    # the called AE title defaults to ANY-SCP, as in echoscu: Orthanc knows no such AE
    proc = run_node("echo", "127.0.0.1", pacs.port, cwd=tmp_path)
    assert proc.returncode == 1 and "called ae title not recognised" in proc.stderr
    proc = run_node("echo", "--host", "127.0.0.1", cwd=tmp_path)
    assert proc.returncode == 2 and "go together" in proc.stderr
    # --aet (the called AE title, named against DCMTK's habit) still works, with a warning
    proc = run_node("echo", "--host", "127.0.0.1", "--port", pacs.port, "--aet", pacs.aet,
                    cwd=tmp_path)
    assert proc.returncode == 0 and "deprecated" in proc.stderr


@pytest.mark.parametrize(
    ("case", "kind", "words"),
    [
        ("called-ae", FailureKind.REJECTED, "called ae title not recognised"),
        ("calling-ae", FailureKind.REJECTED, "calling ae title not recognised"),
        ("refused", FailureKind.REFUSED, "connection refused"),
        ("dns", FailureKind.DNS, "cannot resolve host"),
    ],
)
def test_echo_failures_say_which(pacs, case, kind, words):
    calling = NODE_AET
    if case == "called-ae":
        dest = _dest(pacs.port, "NOT_ORTHANC")
    elif case == "calling-ae":
        dest, calling = _dest(pacs.port), "STRANGER"
    elif case == "refused":
        dest = _dest(free_port())
    else:
        dest = build_destination("t", {"host": "no-such-host.invalid", "port": 104,
                                       "ae_title": "X"})
    with pytest.raises(NetworkFailure) as err:
        echo(dest, calling)
    assert err.value.kind == kind
    assert words in err.value.message
    if kind == FailureKind.REJECTED:
        assert not err.value.transient  # Orthanc rejects permanently


def test_echo_failure_is_one_line_and_nonzero(pacs, tmp_path):
    proc = run_node("echo", "--host", "127.0.0.1", "--port", pacs.port, "-aec", "NOPE",
                    cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0 and "called ae title not recognised" in proc.stderr
    assert "Traceback" not in proc.stderr


# --- C-STORE ----------------------------------------------------------------------------------

def test_push_nifti_arrives_in_orthanc_complete_and_correct(pacs, tmp_path):
    src = _nifti(tmp_path)
    cfg = pacs.config_toml(tmp_path / "node.toml")
    proc = run_node("push", src, "--config", cfg, "--verify", "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["delivered"] == 6 and summary["failed"] == 0 and summary["verified"] is True
    assert summary["series"][0]["pacs_instances"] == 6

    # what we would have written, to compare with what Orthanc stored
    expected = convert_file(src)
    assert summary["series"][0]["series_uid"] == expected.uids.series
    series = pacs.series(expected.uids.series)
    assert series is not None and len(series["Instances"]) == 6
    assert series["MainDicomTags"]["SeriesDescription"] == "net test T1"
    by_number = {}
    for oid in series["Instances"]:
        tags = pacs.get(f"/instances/{oid}/simplified-tags")
        by_number[int(tags["InstanceNumber"])] = (oid, tags)
    assert set(by_number) == set(range(1, 7))
    oid, tags = by_number[4]
    assert tags["PatientID"] == "net01"
    ipp = [float(v) for v in tags["ImagePositionPatient"].split("\\")]
    assert np.allclose(ipp, expected.geometry.positions[3], atol=1e-4)
    stored = pydicom.dcmread(io.BytesIO(pacs.get_bytes(f"/instances/{oid}/file")))
    source = np.asarray(expected.stored)[:, :, 3].T
    assert np.array_equal(stored.pixel_array, source)


def test_push_dicom_folder_skips_bad_files_and_sends_the_rest(pacs, tmp_path):
    series = convert_file(_nifti(tmp_path, "sub-net02_T2w", seed=4))
    folder = write_series(series, tmp_path / "dicom")
    (folder / "notes.txt").write_text("not DICOM")
    cfg = pacs.config_toml(tmp_path / "node.toml")
    proc = run_node("push", tmp_path / "dicom", tmp_path / "missing.dcm", "--config", cfg)
    assert proc.returncode == 2, proc.stderr  # delivered, but inputs were skipped
    assert "notes.txt" in proc.stderr and "missing.dcm" in proc.stderr
    assert "6 of 6 instances delivered" in proc.stdout
    assert len(pacs.series(series.uids.series)["Instances"]) == 6


def test_push_of_several_nifti_converts_in_parallel_and_skips_the_bad_one(pacs, tmp_path):
    """Three NIfTI inputs, two conversion processes: the good two arrive whole, each as its
    own series, the broken one is named and skipped (exit 2)."""
    folder = tmp_path / "bids"
    good = [_nifti(folder, f"sub-net13_run-{i}_T1w", seed=20 + i) for i in (1, 2)]
    (folder / "sub-net13_run-3_T1w.nii.gz").write_bytes(b"\x1f\x8b broken")
    cfg = pacs.config_toml(tmp_path / "node.toml")
    proc = run_node("push", folder, "--config", cfg, "--json", "-j", "2")
    assert proc.returncode == 2, proc.stderr
    assert "sub-net13_run-3_T1w.nii.gz" in proc.stderr and "Traceback" not in proc.stderr
    summary = json.loads(proc.stdout)
    expected = {convert_file(p).uids.series for p in good}
    assert {s["series_uid"] for s in summary["series"]} == expected
    for uid in expected:
        assert len(pacs.series(uid)["Instances"]) == 6


def test_push_again_is_idempotent(pacs, tmp_path):
    src = _nifti(tmp_path, "sub-net03_T1w", seed=5)
    cfg = pacs.config_toml(tmp_path / "node.toml")
    for _ in range(2):
        proc = run_node("push", src, "--config", cfg)
        assert proc.returncode == 0, proc.stderr
    uid = convert_file(src).uids.series
    assert len(pacs.series(uid)["Instances"]) == 6


def test_push_to_dcmtk_storescp(tmp_path):
    out = tmp_path / "received"
    with storescp(out, "STORESCP") as port:
        src = _nifti(tmp_path, "sub-net04_T1w", seed=6)
        proc = run_node("push", src, "--host", "127.0.0.1", "--port", port, "--called-aet",
                        "STORESCP", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
    files = sorted(out.iterdir())
    assert len(files) == 6
    dump = subprocess.run(["dcmdump", str(files[0])], capture_output=True, text=True).stdout
    assert "net test T1" in dump and "MRImageStorage" in dump


def test_parallel_associations_deliver_everything_once(pacs, tmp_path):
    src = write_nifti(tmp_path / "sub-net05_task-x_bold.nii.gz",
                      ramp_data((8, 8, 10, 12), "int16", seed=8), affine_from(np.eye(3)))
    cfg = pacs.config_toml(tmp_path / "node.toml", "max_associations = 3")
    proc = run_node("push", src, "--config", cfg, "--json", "--verify")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["delivered"] == 120 and summary["verified"] is True
    series = pacs.series(summary["series"][0]["series_uid"])
    assert len(series["Instances"]) == 120


def test_peer_accepting_only_implicit_vr_gets_a_reencoded_file(tmp_path):
    """Our files are Explicit VR Little Endian; a storescp limited to Implicit VR must still get
    them (the uncompressed fallback context), re-encoded by pynetdicom."""
    out = tmp_path / "received"
    with storescp(out, "IMPLICIT", "+xi") as port:  # accept Implicit VR Little Endian only
        series = convert_file(_nifti(tmp_path, "sub-net06_T1w", seed=7))
        folder = write_series(series, tmp_path / "dicom")
        proc = run_node("push", folder, "--host", "127.0.0.1", "--port", port, "--called-aet",
                        "IMPLICIT", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
    files = sorted(out.iterdir())
    assert len(files) == 6
    received = pydicom.dcmread(files[0])
    assert received.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2"  # implicit VR LE
    original = pydicom.dcmread(folder / "IM000001.dcm")
    by_uid = {pydicom.dcmread(f).SOPInstanceUID: f for f in files}
    assert np.array_equal(pydicom.dcmread(by_uid[original.SOPInstanceUID]).pixel_array,
                          original.pixel_array)


def test_peer_with_small_pdus_gets_identical_data_sets(tmp_path):
    """storescp limited to 4 KB PDUs: every instance arrives fragmented and byte-identical."""
    out = tmp_path / "received"
    series = convert_file(_nifti(tmp_path, "sub-net07_T1w", seed=9))
    folder = write_series(series, tmp_path / "dicom")
    with storescp(out, "SMALLPDU", "--max-pdu", "4096") as port:
        files = [read_dicom_file(p) for p in sorted(folder.iterdir())]
        report = store(_dest(port, "SMALLPDU"), NODE_AET, files)
    assert report.ok and report.delivered == 6
    for f in files:
        received = pydicom.dcmread(out / f"MR.{f.sop_instance_uid}")
        original = pydicom.dcmread(f.path)
        assert received == original  # every data element, pixel data included
        assert received.SeriesInstanceUID == report.results[0].file.series_uid


def test_peer_aborting_each_store_is_reported_not_retried_forever(tmp_path):
    """storescp --abort-after aborts the association on every C-STORE-RQ: the instance and
    those after it fail as transient, with the abort in the words, and nothing hangs."""
    series = convert_file(_nifti(tmp_path, "sub-net08_T1w", seed=10))
    folder = write_series(series, tmp_path / "dicom")
    with storescp(tmp_path / "received", "ABORTER", "--abort-after") as port:
        files = [read_dicom_file(p) for p in sorted(folder.iterdir())]
        t0 = time.monotonic()
        report = store(_dest(port, "ABORTER", max_associations=1), NODE_AET, files)
        elapsed = time.monotonic() - t0
    assert report.delivered == 0 and report.failed == 6 and elapsed < 10
    assert all(r.outcome == Outcome.TRANSIENT for r in report.results)
    assert "abort" in report.results[0].message or "closed" in report.results[0].message
    assert report.failures and report.failures[0].kind == FailureKind.ABORTED
    assert all(r.file.series_uid == series.uids.series for r in report.results)


def test_slow_peer_hits_the_dimse_timeout(tmp_path):
    """storescp sleeping 5 s in the middle of a store: our 1 s DIMSE timeout fires, the
    association is aborted, and the push reports it instead of waiting."""
    series = convert_file(_nifti(tmp_path, "sub-net09_T1w", seed=11))
    folder = write_series(series, tmp_path / "dicom")
    with storescp(tmp_path / "received", "SLOW", "--sleep-during", "5") as port:
        files = [read_dicom_file(p) for p in sorted(folder.iterdir())][:2]
        t0 = time.monotonic()
        report = store(_dest(port, "SLOW", dimse_timeout=1.0), NODE_AET, files)
        elapsed = time.monotonic() - t0
    assert elapsed < 1.0 + 3.0
    assert report.delivered == 0 and report.failures[0].kind == FailureKind.TIMEOUT
    assert "no C-STORE response from SLOW@127.0.0.1" in report.results[0].message
    assert "within 1 s" in report.results[0].message


def test_compressed_file_is_decompressed_for_a_peer_without_its_syntax(tmp_path):
    """storescp (default options) takes no RLE Lossless: the uncompressed fallback context is
    used and the file is decompressed first; the pixels arrive unchanged."""
    from pydicom.data import get_testdata_file

    source = Path(get_testdata_file("MR_small_RLE.dcm"))
    out = tmp_path / "received"
    with storescp(out, "NORLE") as port:
        report = store(_dest(port, "NORLE"), NODE_AET, [read_dicom_file(source)])
    assert report.ok, [r.message for r in report.results]
    (received,) = out.iterdir()
    ds = pydicom.dcmread(received)
    assert ds.file_meta.TransferSyntaxUID in ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")
    original = pydicom.dcmread(source)
    assert ds.SOPInstanceUID == original.SOPInstanceUID  # the same instance, decompressed
    assert np.array_equal(ds.pixel_array, original.pixel_array)


def test_push_draws_a_progress_bar_on_a_terminal_only(pacs, tmp_path):
    """stderr on a pseudo-terminal: the bar is redrawn in place and ends complete; with
    stderr in a pipe (all other tests) there is no bar."""
    import os
    import pty

    src = _nifti(tmp_path, "sub-net11_T1w", seed=13)
    cfg = pacs.config_toml(tmp_path / "node.toml")
    primary, secondary = pty.openpty()
    try:
        proc = subprocess.run([sys.executable, "-m", "node", "push", str(src), "--config",
                               str(cfg)], stdout=subprocess.PIPE, stderr=secondary,
                              timeout=120, text=True)
        os.close(secondary)
        drawn = b""
        while True:
            try:
                chunk = os.read(primary, 4096)
            except OSError:  # EIO: everything written has been read
                break
            if not chunk:
                break
            drawn += chunk
    finally:
        os.close(primary)
    assert proc.returncode == 0
    text = drawn.decode()
    assert "\rpush [##############################] 6/6" in text and "inst/s" in text
    piped = run_node("push", src, "--config", cfg)
    assert piped.returncode == 0 and "\r" not in piped.stderr and "[#" not in piped.stderr


@pytest.mark.parametrize("name", ["MR_small_bigendian.dcm", "image_dfl.dcm"])
def test_big_endian_and_deflated_files_reach_a_peer_without_their_syntax(tmp_path, name):
    """storescp taking Implicit VR Little Endian only: a retired Explicit VR Big Endian file
    and a Deflated one are re-encoded, and every pixel value arrives unchanged (pydicom alone
    would send big endian pixel words byte-swapped)."""
    from pydicom.data import get_testdata_file

    source = Path(get_testdata_file(name))
    out = tmp_path / "received"
    with storescp(out, "IMPLICIT", "+xi") as port:
        report = store(_dest(port, "IMPLICIT"), NODE_AET, [read_dicom_file(source)])
    assert report.ok, [r.message for r in report.results]
    (received,) = out.iterdir()
    ds = pydicom.dcmread(received)
    original = pydicom.dcmread(source)
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2"
    assert ds.SOPInstanceUID == original.SOPInstanceUID
    assert np.array_equal(ds.pixel_array, original.pixel_array)


def test_verify_never_sends_an_empty_series_key(pacs, tmp_path):
    """An unknown series UID must not become a universal-match C-FIND (which would count
    some other series): it is reported as unknown."""
    from node.net.scu import series_instance_counts

    src = _nifti(tmp_path, "sub-net14_T1w", seed=30)
    cfg = pacs.config_toml(tmp_path / "node.toml")
    assert run_node("push", src, "--config", cfg).returncode == 0  # the PACS is not empty
    series = convert_file(src)
    counts = series_instance_counts(_dest(pacs.port), NODE_AET,
                                    [(series.uids.study, ""), (series.uids.study,
                                                               series.uids.series)])
    assert counts == {"": None, series.uids.series: 6}




def test_push_set_gives_a_nifti_without_bids_entities_its_patient(pacs, tmp_path):
    """As convert: --set fills what the file name cannot (no sub- entity), and --modality."""
    src = write_nifti(tmp_path / "brain.nii.gz", ramp_data((8, 8, 3), "int16", seed=5),
                      affine_from(np.eye(3)))
    cfg = pacs.config_toml(tmp_path / "node.toml")
    without = run_node("push", src, "--config", cfg)
    assert without.returncode != 0 and "give --set PatientID=" in without.stderr
    proc = run_node("push", src, "--config", cfg, "--set", "PatientID=SET-001", "--set",
                    "StudyID=S7", "--modality", "CT", "--json")
    assert proc.returncode == 0, proc.stderr
    series_uid = json.loads(proc.stdout)["series"][0]["series_uid"]
    tags = pacs.get(f"/series/{pacs.lookup(series_uid)}/shared-tags?simplify")
    assert (tags["PatientID"], tags["StudyID"], tags["Modality"]) == ("SET-001", "S7", "CT")
    bad = run_node("push", src, "--config", cfg, "--set", "PatientID")
    assert bad.returncode == 2 and "write KEYWORD=VALUE" in bad.stderr
