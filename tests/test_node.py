"""The node with real parts: watchdog on temp folders, a real Orthanc, real processes, signals."""

from __future__ import annotations

import gzip
import io
import json
import os
import signal
import sqlite3
import time
import urllib.request
from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import NODE_AET, orthanc_script, run_node, start_pacs
from support.niftigen import affine_from, ramp_data, write_nifti
from support.node import SETTLE, drop, nifti_bytes, wait_until

pytestmark = pytest.mark.peers  # Orthanc, DCMTK, dciodvfy, dcm2niix


@pytest.fixture
def own_pacs(tmp_path):
    """An Orthanc of this test's own (tests stop and restart it)."""
    storage = tmp_path / "orthanc"
    pacs = start_pacs(storage)
    yield pacs
    orthanc_script.stop(storage)


def series_count(pacs, series_uid: str) -> int:
    s = pacs.series(series_uid)
    return len(s["Instances"]) if s else 0


@pytest.mark.parametrize("observer", ["native", "polling"])
def test_slow_writer_is_sent_once_and_complete(pacs, node_factory, tmp_path, observer):
    node = node_factory(pacs.port)
    if observer == "polling":  # NFS/SMB mode: watchdog's polling observer
        node.config.write_text(node.config.read_text() + "polling = true\n")
    node.start()
    data = nifti_bytes(tmp_path, "sub-slow_T1w.nii.gz", shape=(16, 16, 8), seed=11)
    target = node.inbox / "sub-slow_T1w.nii.gz"
    with open(target, "wb") as f:  # written in place, in chunks, over ~3 s
        chunks = [data[i:i + len(data) // 6 + 1] for i in range(0, len(data), len(data) // 6 + 1)]
        for chunk in chunks:
            f.write(chunk)
            f.flush()
            time.sleep(0.5)
    wait_until(lambda: node.states() == ["done"], 60, "the job to be done")
    job = node.jobs()[0]
    assert job["instances"] == 8 and job["delivered"] == 8 and job["attempts"] == 1
    assert series_count(pacs, job["series_uid"]) == 8
    time.sleep(SETTLE * 2)
    assert len(node.jobs()) == 1, "a partially written file must never become a job"
    assert list((node.state / "done").rglob("sub-slow_T1w.nii.gz"))
    url = f"http://127.0.0.1:{node.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as rsp:
        metrics = rsp.read().decode()
    assert "dicom_node_instances_sent_total 8.0" in metrics
    assert "dicom_node_conversion_seconds_count 1.0" in metrics
    assert node.stop() == 0


def test_required_sidecar_that_never_comes_is_quarantined(pacs, node_factory, tmp_path):
    node = node_factory(pacs.port)
    node.config.write_text(node.config.read_text()
                           + "require_sidecar = true\nsidecar_grace_seconds = 2\n")
    node.start()
    drop(node.inbox, "sub-nosc_T1w.nii.gz", nifti_bytes(tmp_path, "n.nii.gz", seed=13))
    drop(node.inbox, "sub-sc_T1w.nii.gz", nifti_bytes(tmp_path, "s.nii.gz", seed=14))
    (node.inbox / "sub-sc_T1w.json").write_text('{"SeriesDescription": "with sidecar"}')
    wait_until(lambda: sorted(node.states()) == ["done", "quarantined"], 60, "both decided")
    quarantined = next(j for j in node.jobs() if j["state"] == "quarantined")
    assert "sub-nosc_T1w.nii.gz" in quarantined["source"]
    assert "no BIDS sidecar sub-nosc_T1w.json arrived within 2 s" in quarantined["last_error"]
    assert node.stop() == 0


def test_preexisting_files_and_duplicates(pacs, node_factory, tmp_path):
    node = node_factory(pacs.port, log_format='"json"')
    data = nifti_bytes(tmp_path, "sub-pre_T1w.nii.gz", seed=12)
    sidecar = json.dumps({"PatientName": "Secret^Person", "PatientBirthDate": "19700101"})
    (node.inbox / "sub-pre_T1w.json").write_text(sidecar)
    drop(node.inbox, "sub-pre_T1w.nii.gz", data)  # there before the node starts
    node.start()
    wait_until(lambda: node.states() == ["done"], 60, "the pre-existing file")
    again = node.inbox / "again"  # the same file and sidecar again, under the same name
    again.mkdir()
    (again / "sub-pre_T1w.json").write_text(sidecar)
    drop(again, "sub-pre_T1w.nii.gz", data)
    wait_until(lambda: not any(p.is_file() for p in node.inbox.rglob("*")), 30,
               "the duplicate to be moved away")
    assert node.states() == ["done"], "the same content is sent once"
    assert node.stop() == 0
    lines = [json.loads(line) for line in node.logtext().splitlines() if line.startswith("{")]
    transitions = [(r["from"], r["to"]) for r in lines if "to" in r]
    assert transitions == [("new", "queued"), ("queued", "converting"),
                           ("converting", "sending"), ("sending", "done")]
    assert any("not sent again" in r["message"] for r in lines)
    assert "Secret" not in node.logtext() and "19700101" not in node.logtext()


def test_dicom_files_are_sent_as_they_are(pacs, node_factory, tmp_path):
    """DICOM dropped into a watched folder: each file one job, its bytes stored unchanged; a
    .dcm that is not DICOM goes to quarantine with the reason."""
    from node.convert.output import write_series
    from node.convert.series import convert_file

    src = write_nifti(tmp_path / "src" / "sub-dcm_T1w.nii.gz",
                      ramp_data((8, 8, 3), "int16", seed=15), affine_from(np.eye(3)))
    series = convert_file(src)
    folder = write_series(series, tmp_path / "dicom")
    node = node_factory(pacs.port).start()
    for f in sorted(folder.iterdir()):
        drop(node.inbox, f.name, f.read_bytes())
    drop(node.inbox, "not-dicom.dcm", b"hello, PACS")
    wait_until(lambda: sorted(node.states()) == ["done"] * 3 + ["quarantined"], 60,
               "3 done and 1 quarantined")
    assert series_count(pacs, series.uids.series) == 3
    jobs = node.jobs()
    assert all(j["series_uid"] == series.uids.series for j in jobs if j["state"] == "done")
    bad = next(j for j in jobs if j["state"] == "quarantined")
    assert "not a DICOM Part 10 file" in bad["last_error"]
    oid = pacs.lookup(series.uids.instance(2))
    stored = pydicom.dcmread(io.BytesIO(pacs.get_bytes(f"/instances/{oid}/file")))
    assert stored == pydicom.dcmread(folder / "IM000002.dcm")  # every element, pixels too
    assert node.stop() == 0


def _bad_inputs(folder: Path) -> list[Path]:
    """The converter's bad-input list (tests/test_bad_input.py) plus an unmappable sidecar."""
    from support.bad_inputs import BAD

    folder.mkdir(parents=True, exist_ok=True)
    made = [make(folder) for make, _ in BAD.values()]
    extra = write_nifti(folder / "sub-badsex_T1w.nii.gz", ramp_data((6, 6, 3), "int16"),
                        affine_from(np.eye(3)), sidecar={"PatientSex": "female"})
    made.append(extra)
    return [p for p in made if p.name.endswith((".nii", ".nii.gz"))]


def test_burst_of_good_and_bad_files(pacs, node_factory, tmp_path):
    node = node_factory(pacs.port, workers=2).start()
    bad = _bad_inputs(tmp_path / "bad")
    while len(bad) < 20:  # pad to 20 with more broken files of different kinds
        p = tmp_path / "bad" / f"junk{len(bad)}.nii.gz"
        p.write_bytes(gzip.compress(os.urandom(500 + len(bad))))
        bad.append(p)
    for i in range(20):
        drop(node.inbox, f"sub-b{i:02d}_T1w.nii.gz",
             nifti_bytes(tmp_path, f"g{i}.nii.gz", shape=(8, 8, 3), seed=100 + i))
        src = bad[i]
        drop(node.inbox, f"bad{i:02d}-{src.name}", src.read_bytes())
        sidecar = src.with_name(src.name.split(".nii")[0] + ".json")
        if sidecar.exists():
            stem = f"bad{i:02d}-{src.name}".split(".nii")[0]
            (node.inbox / f"{stem}.json").write_text(sidecar.read_text())
    wait_until(lambda: sorted(node.states()).count("done") == 20
               and node.states().count("quarantined") == 20, 120, "20 done + 20 quarantined")
    assert node.proc.poll() is None and node.healthy(), "the node is still up"
    for job in node.jobs():
        if job["state"] == "done":
            assert series_count(pacs, job["series_uid"]) == 3
        else:
            folder = Path(job["quarantine_path"])
            reasons = list(folder.glob("*.reason.txt"))
            assert reasons and "dicom-node quarantine release" in reasons[0].read_text()
            assert job["last_error"]
    listing = node.cli("quarantine", "list")
    assert listing.returncode == 0 and listing.stdout.count("job-") == 20
    assert node.stop() == 0


def test_pacs_down_while_files_arrive_then_back_after_30s(own_pacs, node_factory, tmp_path):
    pacs = own_pacs
    http_port, dicom_port, storage = pacs.server.http_port, pacs.port, pacs.server.storage
    orthanc_script.stop(storage)
    node = node_factory(dicom_port).start()
    names = [f"sub-d{i}_T1w.nii.gz" for i in range(3)]
    for i, name in enumerate(names):
        drop(node.inbox, name, nifti_bytes(tmp_path, name, seed=200 + i))
    wait_until(lambda: node.states().count("retry-wait") == 3, 60, "retries while down")
    # each job is retried every 0.5-2 s (and converted again meanwhile): one snapshot of
    # `status` may catch one of them in flight, so it is asked until it shows the three
    status = wait_until(lambda: (s := node.cli("status")) and "retry-wait 3" in s.stdout and s,
                        30, "status to show the three jobs waiting", step=0.2)
    assert "retry-wait 3" in status.stdout and "connection refused" in status.stdout
    time.sleep(30)
    server = orthanc_script.start(storage, http_port=http_port, dicom_port=dicom_port,
                                  node_aet=NODE_AET)
    try:
        wait_until(lambda: node.states() == ["done"] * 3, 60, "delivery after restart")
        for job in node.jobs():
            assert job["attempts"] > 1
            oid = server.get(f"/series?expand")  # noqa: F541 - literal path
            assert any(s["MainDicomTags"]["SeriesInstanceUID"] == job["series_uid"]
                       and len(s["Instances"]) == job["instances"] for s in oid)
    finally:
        assert node.stop() == 0


@pytest.mark.parametrize("moment", ["converting", "sending"])
def test_sigkill_at_any_step_resumes_without_loss_or_duplicates(own_pacs, node_factory,
                                                                  tmp_path, moment):
    pacs = own_pacs
    node = node_factory(pacs.port, workers=1).start()
    # big enough that conversion and sending each take a noticeable time
    drop(node.inbox, "sub-kill_T1w.nii.gz",
         nifti_bytes(tmp_path, "k.nii.gz", shape=(256, 256, 200), seed=300))
    wait_until(lambda: moment in node.states(), 60, f"the job to be {moment}", step=0.01)
    if moment == "sending":
        time.sleep(0.1)  # some instances are already in the PACS (200 take ~0.8 s)
    node.stop(signal.SIGKILL)
    assert node.states() == [moment], "the journal holds the interrupted step"
    node.start()
    wait_until(lambda: node.states() == ["done"], 120, "the resumed job")
    job = node.jobs()[0]
    assert "resumed after an interruption" in node.logtext()
    series = pacs.series(job["series_uid"])
    uids = [pacs.get(f"/instances/{i}/simplified-tags")["SOPInstanceUID"]
            for i in series["Instances"]]
    assert len(uids) == 200 and len(set(uids)) == 200
    assert node.stop() == 0


def test_console_against_a_running_node(own_pacs, node_factory, tmp_path):
    pacs = own_pacs
    http_port, dicom_port, storage = pacs.server.http_port, pacs.port, pacs.server.storage
    node = node_factory(dicom_port, max_attempts=1).start()
    # quarantine, fix, release
    broken = drop(node.inbox, "sub-q_T1w.nii.gz", b"not a nifti at all" * 10)
    wait_until(lambda: node.states() == ["quarantined"], 30, "quarantine")
    job = node.jobs()[0]
    fixed = nifti_bytes(tmp_path, "fixed.nii.gz", seed=400)
    (Path(job["quarantine_path"]) / broken.name).write_bytes(fixed)
    released = node.cli("quarantine", "release", str(job["id"]))
    assert released.returncode == 0, released.stderr
    wait_until(lambda: node.states() == ["done"], 60, "the released job")
    # a job that fails (PACS down, one attempt allowed), then retry by hand
    orthanc_script.stop(storage)
    drop(node.inbox, "sub-r_T1w.nii.gz", nifti_bytes(tmp_path, "r.nii.gz", seed=401))
    wait_until(lambda: node.states() == ["done", "failed"], 60, "the failure")
    jobs = node.cli("jobs", "--state", "failed", "--json")
    failed = json.loads(jobs.stdout)
    assert len(failed) == 1 and "gave up after 1 attempts" in failed[0]["last_error"]
    orthanc_script.start(storage, http_port=http_port, dicom_port=dicom_port, node_aet=NODE_AET)
    retried = node.cli("retry", "--failed")
    assert retried.returncode == 0 and "requeued 1" in retried.stdout
    wait_until(lambda: node.states() == ["done", "done"], 60, "the retried job")
    status = json.loads(node.cli("status", "--json").stdout)
    assert status["counts"]["done"] == 2
    assert node.stop() == 0
    assert "stopped" in node.logtext()


def test_ingest_a_tree_is_resumable(pacs, tmp_path):
    tree = tmp_path / "archive" / "sub-01" / "anat"
    tree.mkdir(parents=True)
    for i in range(3):
        write_nifti(tree / f"sub-i{i}_run-{i}_T1w.nii.gz",
                    ramp_data((8, 8, 4), "int16", seed=500 + i), affine_from(np.eye(3)))
    cfg = tmp_path / "node.toml"
    pacs.config_toml(cfg)
    cfg.write_text(cfg.read_text().replace(
        "[node]\n", f'[node]\nstate_dir = "{tmp_path / "var"}"\n'))
    first = run_node("ingest", tmp_path / "archive", "--config", cfg, "--enqueue-only")
    assert first.returncode == 0 and "3 files" in first.stdout
    second = run_node("ingest", tmp_path / "archive", "--config", cfg)
    assert second.returncode == 0, second.stderr
    assert "done 3" in second.stdout
    assert len(list(tree.iterdir())) == 3, "an archive is never moved or deleted"
    again = run_node("ingest", tmp_path / "archive", "--config", cfg)
    assert again.returncode == 0 and "done 3" in again.stdout
    con = sqlite3.connect(tmp_path / "var" / "journal.sqlite")
    assert con.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] == 3
