"""The node in real hands (issue "The node in real hands"): ordinary operator actions and
ordinary accidents, each with real processes: the node, the bundled Orthanc, a FIFO in the
inbox, a damaged journal, a full disk (a small tmpfs)."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import run_node
from support.niftigen import affine_from, ramp_data, write_nifti
from support.node import NodeProcess, drop, nifti_bytes, wait_until

pytestmark = pytest.mark.peers  # Orthanc


def _good(tmp_path: Path, name: str, seed: int = 0) -> bytes:
    return nifti_bytes(tmp_path, name, shape=(8, 8, 3), seed=seed)


# --- 1. one node per state folder; ingest beside a node resets nothing ------------------------

def test_a_second_watch_on_the_same_state_folder_refuses(pacs, node_factory):
    node = node_factory(pacs.port).start()
    second = run_node("watch", "--config", node.config, timeout=30)
    assert second.returncode == 2
    assert f"pid {node.proc.pid}" in second.stderr and "already running" in second.stderr
    assert "Traceback" not in second.stderr
    assert node.healthy()


def test_ingest_beside_a_running_node_leaves_its_jobs_alone(pacs, node_factory, tmp_path):
    node = node_factory(pacs.port).start()
    tree = tmp_path / "archive"
    for i in range(4):
        write_nifti(tree / f"sub-ing{i}" / f"sub-ing{i}_T1w.nii.gz",
                    ramp_data((16, 16, 30), "int16", seed=40 + i), affine_from(__import__(
                        "numpy").eye(3)))
    result = run_node("ingest", tree, "--config", node.config, timeout=180)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "running node" in result.stdout  # it enqueued and let the node deliver
    jobs = node.jobs()
    assert [j["state"] for j in jobs] == ["done"] * 4
    assert all(j["attempts"] == 1 for j in jobs), "no job was reset and run twice"
    with sqlite3.connect(node.state / "journal.sqlite") as db:
        owners = {r[0] for r in db.execute(
            "SELECT DISTINCT owner FROM history WHERE to_state = 'converting'")}
    assert owners == {f"{socket.gethostname()}:{node.proc.pid}"}


# --- 2. a hostile inbox --------------------------------------------------------------------

def test_a_fifo_and_links_out_of_the_inbox_never_stop_or_fool_the_node(pacs, node_factory,
                                                                        tmp_path):
    node = node_factory(pacs.port).start()
    os.mkfifo(node.inbox / "sub-fifo_T1w.nii")
    secret = tmp_path / "elsewhere" / "secret.dcm"
    secret.parent.mkdir()
    secret.write_bytes(b"\0" * 128 + b"DICM" + b"private")
    (node.inbox / "innocent.dcm").symlink_to(secret)
    drop(node.inbox, "sub-after_T1w.nii.gz", _good(tmp_path, "sub-after_T1w.nii.gz", 3))
    wait_until(lambda: node.states() == ["done"], 60, "the good file behind the FIFO")
    assert node.healthy()
    log = node.logtext()
    assert "named pipe" in log and "outside the watched folder" in log
    assert secret.read_bytes().endswith(b"private")  # the target is left untouched
    assert len(node.jobs()) == 1  # neither the FIFO nor the link became a job


def test_a_huge_sparse_file_is_refused_without_being_read(pacs, node_factory, tmp_path):
    node = node_factory(pacs.port).start()
    big = node.inbox / "huge.dcm"
    with open(big, "wb") as f:
        f.truncate(40 * 1024**3)  # 40 GiB, sparse
    t0 = time.monotonic()
    wait_until(lambda: node.states() == ["quarantined"], 30, "the sparse file to be refused")
    assert time.monotonic() - t0 < 15
    assert "over the" in node.jobs()[0]["last_error"]
    assert node.healthy()


# --- 3. disk full ----------------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    assert done.returncode == 0, f"the disk-full test needs root to mount a tmpfs: {done.stderr}"
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_full_disk_degrades_and_recovers(pacs, node_factory, tmp_path, small_disk):
    node = node_factory(pacs.port, min_free_bytes=0)  # killed at teardown, whatever happens
    node.state = small_disk / "var"
    node.config.write_text(node.config.read_text().replace(
        str(tmp_path / "node" / "var"), str(node.state)))
    node.start()
    filler = small_disk / "filler"
    # fill the state folder's disk to the last byte; unbuffered, so that closing the file has
    # nothing left to write (a buffered close would raise the same ENOSPC again)
    try:
        with open(filler, "wb", buffering=0) as f:
            while True:
                f.write(b"\0" * 65536)
    except OSError:
        pass  # full
    for i in range(3):
        drop(node.inbox, f"sub-full{i}_T1w.nii.gz", _good(tmp_path, f"f{i}.nii.gz", 20 + i))
    time.sleep(6)
    assert node.proc.poll() is None, node.logtext()[-2000:]
    health = _healthz(node)
    assert health["ok"] is False and "degraded" in health
    filler.unlink(missing_ok=True)  # space comes back
    wait_until(lambda: node.states().count("done") == 3, 90, "delivery after space returned")
    wait_until(lambda: _healthz(node)["ok"], 20, "healthy again")
    assert "Traceback" not in node.logtext()


def _healthz(node: NodeProcess) -> dict:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{node.metrics_port}/healthz",
                                    timeout=3) as rsp:
            return json.loads(rsp.read())
    except urllib.error.HTTPError as exc:
        return json.loads(exc.read())


# --- 4. the journal --------------------------------------------------------------------------

def test_a_damaged_or_missing_journal_is_one_clear_error(tmp_path):
    state = tmp_path / "var"
    (tmp_path / "inbox").mkdir()
    cfg = tmp_path / "node.toml"
    cfg.write_text(f'[node]\nstate_dir = "{state}"\n[destinations.p]\nhost = "127.0.0.1"\n'
                   f'port = 1\nae_title = "P"\n[[watch]]\npath = "{tmp_path / "inbox"}"\n')
    missing = run_node("status", "--config", cfg)
    assert missing.returncode == 2 and "no journal here" in missing.stderr
    assert str(cfg) in missing.stderr and not (state / "journal.sqlite").exists()
    for command in (["status"], ["jobs"], ["watch"], ["journal", "check"]):
        state.mkdir(exist_ok=True)
        (state / "journal.sqlite").write_bytes(b"this is not a database" * 100)
        done = run_node(*command, "--config", cfg, timeout=30)
        assert done.returncode == 2, (command, done.stderr)
        assert "not a usable journal" in done.stderr and "Traceback" not in done.stderr
    (state / "journal.sqlite").unlink()
    (state / "journal.sqlite").mkdir()
    folder = run_node("status", "--config", cfg)
    assert folder.returncode == 2 and "is a folder" in folder.stderr


def test_journal_check_and_backup(pacs, node_factory, tmp_path):
    node = node_factory(pacs.port).start()
    drop(node.inbox, "sub-bk_T1w.nii.gz", _good(tmp_path, "sub-bk_T1w.nii.gz", 7))
    wait_until(lambda: node.states() == ["done"], 60, "one job")
    check = node.cli("journal", "check")
    assert check.returncode == 0 and "ok (1 jobs)" in check.stdout
    copy = tmp_path / "backup.sqlite"
    backup = node.cli("journal", "backup", copy)
    assert backup.returncode == 0, backup.stderr
    with sqlite3.connect(copy) as db:
        assert db.execute("SELECT state FROM jobs").fetchall() == [("done",)]
    again = node.cli("journal", "backup", copy)
    assert again.returncode == 2 and "exists already" in again.stderr


# --- 7, 8, 9: alerts, bad sidecars, patient data and control characters ----------------------

def test_a_permanent_rejection_is_an_alert_and_retried(pacs, node_factory, tmp_path):
    node = node_factory(pacs.port)
    node.config.write_text(node.config.read_text().replace('ae_title = "ORTHANC"',
                                                           'ae_title = "WRONG_AET"'))
    node.start()
    drop(node.inbox, "sub-aet_T1w.nii.gz", _good(tmp_path, "sub-aet_T1w.nii.gz", 8))
    wait_until(lambda: node.states() == ["retry-wait"], 60, "the job to wait for a retry")
    status = json.loads(node.cli("status", "--json").stdout)
    assert status["alerts"] and "rejected" in status["alerts"][0]["error"]
    assert "ALERT" in node.logtext()


@pytest.mark.parametrize("sidecar", [
    '{"RepetitionTime": Infinity}', '{"EchoTime": NaN}',
    '{"RepetitionTime": ' + "9" * 5000 + "}",
    '{"RepetitionTime": 1' + "0" * 400 + "}",  # an integer too large for a float
    "[" * 10000 + "]" * 10000,
])
def test_a_sidecar_that_is_not_usable_json_is_quarantined_at_once(pacs, node_factory, tmp_path,
                                                                   sidecar):
    node = node_factory(pacs.port).start()
    (node.inbox / "sub-js_T1w.json").write_text(sidecar)
    drop(node.inbox, "sub-js_T1w.nii.gz", _good(tmp_path, "sub-js_T1w.nii.gz", 9))
    wait_until(lambda: node.states() == ["quarantined"], 60, "quarantine")
    job = node.jobs()[0]
    assert job["attempts"] == 1 and "internal error" not in job["last_error"]


def test_patient_values_and_control_characters_never_reach_logs_or_console(pacs, node_factory,
                                                                           tmp_path):
    node = node_factory(pacs.port, log_format='"json"').start()
    (node.inbox / "sub-phi_T1w.json").write_text('{"PatientBirthDate": "1970-02-30"}')
    drop(node.inbox, "sub-phi_T1w.nii.gz", _good(tmp_path, "sub-phi_T1w.nii.gz", 10))
    evil = "evil\n2099-01-01 INFO job 9: sending -> done \x1b[2J.dcm"
    (node.inbox / evil).write_bytes(b"junk")
    wait_until(lambda: sorted(node.states()) == ["quarantined"] * 2, 60, "two quarantines")
    outputs = [node.logtext(), node.cli("status").stdout, node.cli("jobs").stdout,
               node.cli("quarantine", "list").stdout]
    outputs += [p.read_text() for p in (node.state / "quarantine").rglob("*.reason.txt")]
    for text in outputs:
        assert "1970-02-30" not in text and "19700230" not in text
        assert "\x1b" not in text
        assert not any(line.startswith("2099-01-01") for line in text.splitlines())
    assert "PatientBirthDate" in node.cli("quarantine", "list").stdout
    assert all(line.startswith("{") for line in node.logtext().splitlines() if line.strip())


# --- 10. the HTTP endpoint -------------------------------------------------------------------

def test_idle_connections_do_not_pile_up(pacs, node_factory):
    node = node_factory(pacs.port).start()
    socks = []
    for _ in range(200):
        s = socket.create_connection(("127.0.0.1", node.metrics_port), timeout=5)
        socks.append(s)
    time.sleep(7)  # past the request timeout
    threads = len(os.listdir(f"/proc/{node.proc.pid}/task"))
    for s in socks:
        s.close()
    assert threads < 60, threads
    assert node.healthy()


# --- 12. status says what runs, and where it looked -------------------------------------------

def test_status_says_which_node_runs_and_which_journal(pacs, node_factory):
    node = node_factory(pacs.port).start()
    text = node.cli("status").stdout
    assert f"pid {node.proc.pid}" in text and str(node.state / "journal.sqlite") in text
    assert str(node.config) in text
    assert node.stop() == 0
    assert "no node running" in node.cli("status").stdout


# --- 17, 18: a relabelled scan; a read-only inbox --------------------------------------------

def test_a_relabelled_scan_is_another_job(pacs, node_factory, tmp_path):
    node = node_factory(pacs.port).start()
    data = _good(tmp_path, "sub-01_T1w.nii.gz", 11)
    drop(node.inbox, "sub-01_T1w.nii.gz", data)
    wait_until(lambda: node.states() == ["done"], 60, "patient 01")
    drop(node.inbox, "sub-02_T1w.nii.gz", data)  # the same bytes, another subject
    wait_until(lambda: node.states() == ["done", "done"], 60, "patient 02")
    uids = {j["series_uid"] for j in node.jobs()}
    assert len(uids) == 2
    ids = {p["MainDicomTags"]["PatientID"] for p in
           (pacs.get(f"/patients/{i}") for i in pacs.get("/patients"))}
    assert {"01", "02"} <= ids


def test_a_failed_after_action_is_a_warning_on_a_done_job(pacs, node_factory, tmp_path):
    """The source cannot be moved away after delivery (here: done/ is not a folder, which
    stops root too): the job is done, the file stays, the node runs on."""
    node = node_factory(pacs.port).start()
    done = node.state / "done"
    done.rmdir()
    done.write_text("not a folder")
    drop(node.inbox, "sub-ro_T1w.nii.gz", _good(tmp_path, "sub-ro_T1w.nii.gz", 12))
    wait_until(lambda: node.states() == ["done"], 60, "delivery")
    time.sleep(1)
    assert node.proc.poll() is None and node.healthy()
    assert (node.inbox / "sub-ro_T1w.nii.gz").exists()
    assert "could not be moved" in node.jobs()[0]["last_error"]
    drop(node.inbox, "sub-ro2_T1w.nii.gz", _good(tmp_path, "sub-ro2_T1w.nii.gz", 13))
    wait_until(lambda: node.states() == ["done", "done"], 60, "the next delivery")


def test_check_config_refuses_a_read_only_inbox_for_move(tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    cfg = tmp_path / "node.toml"
    cfg.write_text(f'[node]\nstate_dir = "{tmp_path / "var"}"\n[destinations.p]\nhost = '
                   f'"127.0.0.1"\nport = 1\nae_title = "P"\n[[watch]]\npath = "{inbox}"\n')
    probe = ("import os, sys\nos.access = lambda p, m, **k: not (str(p).endswith('inbox') and "
             "m & os.W_OK)\nfrom node.cli import main\nsys.exit(main(sys.argv[1:]))\n")
    done = subprocess.run([sys.executable, "-c", probe, "check-config", "--no-echo",
                           "--config", str(cfg)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and 'set after = "keep"' in done.stderr


# --- 6. shutdown -----------------------------------------------------------------------------

@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_to_the_whole_group_stops_cleanly(pacs, tmp_path, sig, request):
    node = NodeProcess(tmp_path / "node", pacs.port, log_format='"json"')
    request.addfinalizer(lambda: node.proc.poll() is None and node.proc.kill())
    node.proc = subprocess.Popen(
        [sys.executable, "-m", "node", "watch", "--config", str(node.config)],
        stdout=open(node.log, "ab"), stderr=subprocess.STDOUT,  # noqa: SIM115
        start_new_session=True)
    wait_until(node.healthy, 30, "healthz")
    for i in range(3):
        drop(node.inbox, f"sub-sig{i}_T1w.nii.gz",
             nifti_bytes(tmp_path, f"s{i}.nii.gz", shape=(64, 64, 40), seed=30 + i))
    wait_until(lambda: "converting" in node.states() or "sending" in node.states(), 30,
               "work in flight")
    os.killpg(node.proc.pid, sig)  # what Ctrl-C on a terminal, or systemd, does
    assert node.proc.wait(timeout=60) == 0
    lines = [line for line in node.logtext().splitlines() if line.strip()]
    assert all(line.startswith("{") for line in lines), [x for x in lines if x[:1] != "{"][:5]
    assert "Traceback" not in node.logtext()
    assert not any(j["last_error"] and "worker process died" in j["last_error"]
                   for j in node.jobs())


# --- 14. a late sidecar ----------------------------------------------------------------------

def test_a_late_sidecar_is_waited_for_or_reported(pacs, node_factory, tmp_path):
    node = node_factory(pacs.port)
    node.config.write_text(node.config.read_text() + "sidecar_grace_seconds = 15\n")
    node.start()
    # the folder's images have sidecars, so one that comes 4 s after its image is waited for
    (node.inbox / "sub-a_T1w.json").write_text('{"RepetitionTime": 2.3}')
    drop(node.inbox, "sub-a_T1w.nii.gz", _good(tmp_path, "sub-a_T1w.nii.gz", 21))
    wait_until(lambda: node.states() == ["done"], 60, "the first image")
    drop(node.inbox, "sub-b_T1w.nii.gz", _good(tmp_path, "sub-b_T1w.nii.gz", 22))
    time.sleep(4)
    (node.inbox / "sub-b_T1w.json").write_text('{"RepetitionTime": 2.4}')
    wait_until(lambda: node.states().count("done") == 2, 60, "two images")
    late = next(j for j in node.jobs() if j["source"].endswith("sub-b_T1w.nii.gz"))
    assert late["sidecar"] and late["sidecar"].endswith("sub-b_T1w.json")
    tags = pacs.get(f"/series/{pacs.lookup(late['series_uid'])}/shared-tags?simplify")
    assert float(tags["RepetitionTime"]) == 2400
    # a sidecar after its image was delivered: reported and moved, not left for ever
    (node.inbox / "sub-a_T1w.json").write_text('{"RepetitionTime": 9.9}')
    wait_until(lambda: not (node.inbox / "sub-a_T1w.json").exists(), 30, "the late sidecar")
    assert "arrived after its image was delivered" in node.logtext()


# --- 22. memory per input is bounded as a whole -------------------------------------------

def test_a_file_that_would_need_more_than_memory_limit_is_quarantined(pacs, node_factory,
                                                                       tmp_path):
    import nibabel as nib
    import numpy as np

    node = node_factory(pacs.port, memory_limit=1024**3).start()
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((1024, 1024, 512))
    hdr.set_data_dtype(np.int32)
    tmp = node.inbox / ".sub-sparse_T1w.nii.tmp"
    with open(tmp, "wb") as f:  # 4 KiB on disk, 2 GiB declared
        f.write(hdr.binaryblock + b"\0" * 4)
        f.truncate(352 + 2 * 1024**3)
    os.replace(tmp, node.inbox / "sub-sparse_T1w.nii")
    wait_until(lambda: node.states() == ["quarantined"], 30, "quarantine")
    assert "memory_limit" in node.jobs()[0]["last_error"]
    drop(node.inbox, "sub-ok_T1w.nii.gz", _good(tmp_path, "sub-ok_T1w.nii.gz", 31))
    wait_until(lambda: sorted(node.states()) == ["done", "quarantined"], 60, "the next file")


def test_a_series_that_cannot_fit_the_spool_waits_instead_of_failing_half_way(tmp_path):
    """Its size is known before it is written: with too little room, delivery is a retry
    (a fault of the environment) and nothing half-written is left in the spool."""
    from node.convert.options import ConversionOptions
    from node.convert.profile import builtin_profile
    from node.errors import DicomNodeError
    from node.service.delivery import prepare

    src = write_nifti(tmp_path / "sub-big_T1w.nii.gz", ramp_data((256, 256, 40), "int16"),
                      affine_from(__import__("numpy").eye(3)))
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    assert done.returncode == 0, f"needs root to mount a tmpfs: {done.stderr}"
    try:
        with pytest.raises(DicomNodeError, match="needs about") as refused:
            prepare(src, builtin_profile(), mount / "spool", ConversionOptions(uid_root="2.25"))
        assert type(refused.value).__name__ == "NoSpace"
        assert not any(mount.rglob("*.dcm"))
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


# --- #14: an instance the peer never answers -------------------------------------------------

def test_an_instance_that_keeps_timing_out_fails_alone(tmp_path, node_factory):
    """A peer that stores every instance but one, and never answers for that one: after it
    timed out three times (the others stored) the job fails for good, with the reason."""
    from support.hostile import HostilePeer, command, store_rsp

    seen: list[str] = []

    def scenario(peer) -> None:
        peer.accept()
        while (req := peer.read_request()) is not None:
            if req.command_field == 0x0030:  # the node's C-ECHO
                peer.send_command(req.context_id, command(
                    (0x00000002, req.sop_class), (0x00000100, 0x8030),
                    (0x00000120, req.message_id), (0x00000800, 0x0101), (0x00000900, 0)))
                continue
            if req.sop_instance not in seen:
                seen.append(req.sop_instance)
            if len(seen) > 1 and req.sop_instance == seen[1]:  # the second one: silence
                time.sleep(30)
                return
            peer.send_command(req.context_id, store_rsp(req))

    peer = HostilePeer(scenario)
    try:
        node = node_factory(peer.port, retry_base_seconds=0.2, retry_max_seconds=0.5)
        node.config.write_text(node.config.read_text().replace("dimse_timeout = 10",
                                                               "dimse_timeout = 1"))
        node.start()
        drop(node.inbox, "sub-poison_T1w.nii.gz", _good(tmp_path, "sub-poison_T1w.nii.gz", 41))
        wait_until(lambda: node.states() == ["failed"], 90, "the job to fail")
    finally:
        peer.close()
    assert not peer.errors, peer.errors
    job = node.jobs()[0]
    # the first instance was stored; the second never answered; the third waits behind it
    assert job["attempts"] == 3 and job["delivered"] == 1
    assert "left the peer silent 3 times" in job["last_error"] and seen[1] in job["last_error"]
