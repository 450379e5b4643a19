"""Trust nothing from the peer: ``push`` and ``echo`` against a loopback server that answers
wrongly on purpose (tests/hostile.py). Each scenario checks the exit status, the exact count
delivered (0 wherever nothing was acknowledged), that no traceback was printed, the client's
peak RSS, and the wall time against the configured timeouts."""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.hostile import HostilePeer, Peer, command, pdv_pdu, store_rsp, trickle
from support.niftigen import AXIAL_RAS, affine_from, ramp_data, write_nifti

from node.convert.output import write_series
from node.convert.series import convert_file

TIMEOUT = 3.0  # acse and dimse timeouts of the destination, seconds
MARGIN = 12.0  # process start, conversion-free push, and a loaded 2-core machine
RSS_LIMIT_KB = 300 * 1024

#: The push in a process of its own, reporting its peak RSS: VmHWM, the high-water mark of
#: this process's memory. Not getrusage's ru_maxrss, which Linux carries over from the
#: process that forked it (exec records the old memory's peak): a pytest grown large by
#: earlier tests would be counted as the push's.
RUNNER = (
    "import json, sys\n"
    "from node.cli import main\n"
    "rc = 1\n"
    "try:\n"
    "    rc = main(sys.argv[2:])\n"
    "finally:\n"
    "    peak = next(int(line.split()[1]) for line in open('/proc/self/status')\n"
    "                if line.startswith('VmHWM:'))\n"
    "    with open(sys.argv[1], 'w') as f:\n"
    "        json.dump({'rss_kb': peak}, f)\n"
    "sys.exit(rc)\n"
)


@pytest.fixture(scope="module")
def dicom_files(tmp_path_factory) -> list[Path]:
    tmp = tmp_path_factory.mktemp("hostile-input")
    src = write_nifti(tmp / "sub-hostile_T1w.nii", ramp_data((16, 16, 3), "int16"),
                      affine_from(AXIAL_RAS))
    folder = write_series(convert_file(src), tmp / "dicom", "series")
    return sorted(folder.iterdir())


def _config(tmp_path: Path, port: int) -> Path:
    cfg = tmp_path / "node.toml"
    cfg.write_text(
        f'[node]\nstate_dir = "{tmp_path / "var"}"\ndefault_destination = "h"\n'
        f'[destinations.h]\nhost = "127.0.0.1"\nport = {port}\nae_title = "HOSTILE"\n'
        f"acse_timeout = {TIMEOUT}\ndimse_timeout = {TIMEOUT}\nconnect_timeout = 2\n"
        "network_timeout = 5\nmax_associations = 1\n")
    return cfg


def _run(tmp_path: Path, port: int, *args: str) -> tuple[subprocess.CompletedProcess, dict,
                                                           float]:
    out = tmp_path / "rss.json"
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", RUNNER, str(out), *args, "--config",
         str(_config(tmp_path, port))],
        capture_output=True, text=True, timeout=120, cwd=tmp_path)
    took = time.monotonic() - t0
    return proc, json.loads(out.read_text()), took


def _push(tmp_path: Path, scenario, files: list[Path], *extra: str):
    peer = HostilePeer(scenario)
    try:
        proc, usage, took = _run(tmp_path, peer.port, "push", *map(str, files), "--json",
                                 *extra)
    finally:
        peer.close()
    assert not peer.errors, peer.errors
    assert "Traceback" not in proc.stderr, proc.stderr
    assert usage["rss_kb"] < RSS_LIMIT_KB, usage
    report = json.loads(proc.stdout) if proc.stdout.strip().startswith("{") else {}
    return proc, report, took


# --- scenarios ----------------------------------------------------------------------------

def _serve_stores(peer: Peer, answer) -> None:
    """Accept, then answer every request with ``answer(peer, request)``."""
    peer.accept()
    while (req := peer.read_request()) is not None:
        answer(peer, req)


def well_behaved(peer: Peer) -> None:
    _serve_stores(peer, lambda p, r: p.send_command(r.context_id, store_rsp(r)))


def echo_rsp_for_store(peer: Peer) -> None:
    _serve_stores(peer, lambda p, r: p.send_command(r.context_id, store_rsp(r, field=0x8030)))


def another_instance(peer: Peer) -> None:
    _serve_stores(peer, lambda p, r: p.send_command(
        r.context_id, store_rsp(r, sop_instance="1.2.826.0.1.3680043.9.7433.99")))


def another_message(peer: Peer) -> None:
    _serve_stores(peer, lambda p, r: p.send_command(
        r.context_id, store_rsp(r, message_id=r.message_id + 1)))


def another_context(peer: Peer) -> None:
    _serve_stores(peer, lambda p, r: p.send_command(r.context_id + 2, store_rsp(r)))


def pending_for_store(peer: Peer) -> None:
    _serve_stores(peer, lambda p, r: p.send_command(r.context_id, store_rsp(r, 0xFF00)))


def endless_command(peer: Peer) -> None:
    peer.accept()
    req = peer.read_request()
    end = time.monotonic() + 20
    while time.monotonic() < end:  # command fragments that never say "last"
        peer.sock.sendall(pdv_pdu(req.context_id, 0x01, b"\0" * 16000))


def endless_data(peer: Peer) -> None:
    peer.accept()
    req = peer.read_request()
    announce = command((0x00000002, req.sop_class), (0x00000100, 0x8001),
                       (0x00000120, req.message_id), (0x00000800, 0x0001),
                       (0x00000900, 0), (0x00001000, req.sop_instance))
    peer.send_command(req.context_id, announce)
    end = time.monotonic() + 20
    while time.monotonic() < end:  # a data set that never ends
        peer.sock.sendall(pdv_pdu(req.context_id, 0x00, b"\0" * 16000))


def huge_associate_ac(peer: Peer) -> None:
    peer.read_associate_rq()
    # millions of tiny presentation context results (8 bytes each): 60 MB in all
    items = b"\x21\x00\x00\x04\x01\x00\x00\x00" * (60 * 1024**2 // 8)
    body = struct.pack(">HH", 1, 0) + b"HOSTILE".ljust(16) + b"ME".ljust(16) + bytes(32)
    peer.sock.sendall(struct.pack(">BBI", 2, 0, len(body) + len(items)) + body)
    peer.sock.sendall(items)


def slow_associate_ac(peer: Peer) -> None:
    rq = peer.read_associate_rq()
    trickle(peer.sock, peer.accept_bytes(rq), 0.2, 30)


def max_pdu_4g(peer: Peer) -> None:
    peer.accept(max_pdu=2**32 - 1)
    while (req := peer.read_request()) is not None:
        peer.send_command(req.context_id, store_rsp(req))


def huge_p_data_header(peer: Peer) -> None:
    peer.accept()
    peer.read_request()
    peer.sock.sendall(b"\x04\x00" + struct.pack(">I", 0xFFFFFFFF))
    time.sleep(2)


def slowloris_response(peer: Peer) -> None:
    peer.accept()
    req = peer.read_request()
    trickle(peer.sock, pdv_pdu(req.context_id, 0x03, store_rsp(req)), 0.5, 30)


def unproposed_context(peer: Peer) -> None:
    rq = peer.read_associate_rq()
    ac = bytearray(peer.accept_bytes(rq))
    pos = 74
    while pos < len(ac):  # renumber every context result as one we never proposed
        if ac[pos] == 0x21:
            ac[pos + 4] = 99
        pos += 4 + struct.unpack_from(">H", ac, pos + 2)[0]
    peer.sock.sendall(bytes(ac))
    time.sleep(2)


def release_instead_of_response(peer: Peer) -> None:
    peer.accept()
    peer.read_request()
    peer.sock.sendall(b"\x05\x00\x00\x00\x00\x04\x00\x00\x00\x00")
    time.sleep(2)


def reset_mid_pdu(peer: Peer) -> None:
    peer.accept()
    peer.read_request()
    peer.sock.sendall(b"\x04\x00\x00\x00\x01\x00\x00\x00")  # half of a PDU
    peer.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    peer.sock.close()


def garbage_reject(peer: Peer) -> None:
    peer.read_associate_rq()
    peer.sock.sendall(b"\x03\x00\x00\x00\x00\x04\x00\x09\x09\x09")


def injecting_comment(peer: Peer) -> None:
    comment = b"disk full\n2099-01-01 00:00:00 INFO job 1: sending -> done \x1b[2J" + b"x" * 5000
    _serve_stores(peer, lambda p, r: p.send_command(r.context_id,
                                                    store_rsp(r, 0xA700, comment=comment)))


# (scenario, exit status, delivered, longest wall time in seconds)
SCENARIOS = [
    (well_behaved, 0, 3, MARGIN),
    (echo_rsp_for_store, 1, 0, MARGIN),
    (another_instance, 1, 0, MARGIN),
    (another_message, 1, 0, MARGIN),
    (another_context, 1, 0, MARGIN),
    (pending_for_store, 1, 0, MARGIN),
    (endless_command, 1, 0, TIMEOUT + MARGIN),
    (endless_data, 1, 0, TIMEOUT + MARGIN),
    (huge_associate_ac, 1, 0, TIMEOUT + MARGIN),
    (slow_associate_ac, 1, 0, TIMEOUT + MARGIN),
    (max_pdu_4g, 0, 3, MARGIN),
    (huge_p_data_header, 1, 0, MARGIN),
    (slowloris_response, 1, 0, TIMEOUT + MARGIN),
    (unproposed_context, 1, 0, MARGIN),
    (release_instead_of_response, 1, 0, MARGIN),
    (reset_mid_pdu, 1, 0, MARGIN),
    (garbage_reject, 1, 0, MARGIN),
    (injecting_comment, 1, 0, MARGIN),
]


@pytest.mark.parametrize(("scenario", "rc", "delivered", "seconds"), SCENARIOS,
                         ids=[s[0].__name__ for s in SCENARIOS])
def test_push_against_a_hostile_peer(tmp_path, dicom_files, scenario, rc, delivered, seconds):
    proc, report, took = _push(tmp_path, scenario, dicom_files)
    assert proc.returncode == rc, proc.stderr
    assert report.get("delivered", 0) == delivered, (report, proc.stderr)
    assert took < seconds, took
    if delivered == 0:
        assert report.get("failed") == len(dicom_files)


def test_peer_text_cannot_forge_log_lines_or_drive_the_terminal(tmp_path, dicom_files):
    proc, report, _ = _push(tmp_path, injecting_comment, dicom_files)
    shown = proc.stderr + json.dumps(report)
    assert "\x1b" not in shown
    assert not any(line.startswith("2099-01-01") for line in proc.stderr.splitlines())
    messages = report["series"][0]["messages"]
    assert messages and all(len(m) < 400 for m in messages), messages
    assert "\\x1b[2J" in messages[0] and "0xA700" in messages[0]


def test_a_count_that_is_not_a_number_leaves_the_series_unverified(tmp_path, dicom_files):
    def scenario(peer: Peer) -> None:
        peer.accept()
        while (req := peer.read_request()) is not None:
            if req.command_field == 0x0001:
                peer.send_command(req.context_id, store_rsp(req))
                continue
            # C-FIND: one pending match whose count is "abc", then success
            pending = command((0x00000002, req.sop_class), (0x00000100, 0x8020),
                              (0x00000120, req.message_id), (0x00000800, 0x0001),
                              (0x00000900, 0xFF00))
            peer.send_command(req.context_id, pending)
            identifier = struct.pack("<HH2sH", 0x0020, 0x1209, b"IS", 4) + b"abc "
            peer.sock.sendall(pdv_pdu(req.context_id, 0x02, identifier))
            final = command((0x00000002, req.sop_class), (0x00000100, 0x8020),
                            (0x00000120, req.message_id), (0x00000800, 0x0101),
                            (0x00000900, 0x0000))
            peer.send_command(req.context_id, final)

    proc, report, _ = _push(tmp_path, scenario, dicom_files, "--verify")
    assert proc.returncode == 1
    assert report["delivered"] == 3 and report["verified"] is False
    assert "unreadable count" in proc.stderr


@pytest.mark.parametrize("answer", ["store_rsp_field", "other_message", "garbage"])
def test_echo_counts_only_a_c_echo_response(tmp_path, answer):
    def scenario(peer: Peer) -> None:
        peer.accept()
        req = peer.read_request()
        rsp = command((0x00000002, req.sop_class),
                      (0x00000100, 0x8001 if answer == "store_rsp_field" else 0x8030),
                      (0x00000120, req.message_id + (answer == "other_message")),
                      (0x00000800, 0x0101), (0x00000900, 0))
        if answer == "garbage":
            rsp = b"\xff" * 40
        peer.send_command(req.context_id, rsp)
        time.sleep(1)

    peer = HostilePeer(scenario)
    try:
        proc, usage, took = _run(tmp_path, peer.port, "echo")
    finally:
        peer.close()
    assert proc.returncode == 1, proc.stdout
    assert "success" not in proc.stdout
    assert "Traceback" not in proc.stderr
    assert took < MARGIN


def test_a_push_of_dicom_files_loads_no_dicom_library(tmp_path, dicom_files):
    """Start-up is the user's wait: streaming ordinary files needs neither pydicom, pynetdicom
    nor numpy (a file that must be re-encoded, or a failure, may load them)."""
    probe = ("import sys, json, contextlib, io\nfrom node.cli import main\n"
             "with contextlib.redirect_stdout(io.StringIO()):\n    rc = main(sys.argv[1:])\n"
             "print(json.dumps({'rc': rc, 'heavy': sorted({m.split('.')[0] for m in sys.modules}"
             " & {'pydicom', 'pynetdicom', 'nibabel', 'numpy'})}))\n")
    peer = HostilePeer(well_behaved)
    try:
        proc = subprocess.run(
            [sys.executable, "-c", probe, "push", *map(str, dicom_files), "--config",
             str(_config(tmp_path, peer.port))],
            capture_output=True, text=True, timeout=60, cwd=tmp_path)
    finally:
        peer.close()
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"rc": 0, "heavy": []}, (
        proc.stderr)


def test_ctrl_c_stops_a_push_within_a_second_and_says_what_arrived(tmp_path):
    """A slow PACS (0.3 s per instance) and Ctrl-C after 1.5 s: the C-STORE in flight is
    finished, the association released, and the count printed is the peer's."""
    src = write_nifti(tmp_path / "sub-int_T1w.nii", ramp_data((16, 16, 40), "int16"),
                      affine_from(AXIAL_RAS))
    files = sorted(write_series(convert_file(src), tmp_path / "dicom", "s").iterdir())
    acknowledged = []

    def slow(peer: Peer) -> None:
        peer.accept()
        while (req := peer.read_request()) is not None:
            time.sleep(0.3)
            peer.send_command(req.context_id, store_rsp(req))
            acknowledged.append(req.sop_instance)

    peer = HostilePeer(slow)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "node", "push", *map(str, files), "--json", "--config",
             str(_config(tmp_path, peer.port))],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
        time.sleep(1.5)
        proc.send_signal(signal.SIGINT)
        t0 = time.monotonic()
        out, err = proc.communicate(timeout=30)
        took = time.monotonic() - t0
    finally:
        peer.close()
    assert proc.returncode == 130, err
    assert took < 1.5, took  # about one C-STORE, not the 12 s the rest would take
    report = json.loads(out)
    assert report["interrupted"] is True
    assert 0 < report["delivered"] == len(acknowledged) < len(files)
    assert f"interrupted: {len(acknowledged)} of {len(files)}" in err
    assert "Traceback" not in err


def test_a_bids_dataset_pushes_cleanly(tmp_path):
    root = tmp_path / "bids"
    anat = root / "sub-01" / "anat"
    write_nifti(anat / "sub-01_T1w.nii.gz", ramp_data((8, 8, 3), "int16"),
                affine_from(AXIAL_RAS))
    (anat / "sub-01_T1w.json").write_text('{"RepetitionTime": 2.0}')
    (root / "dataset_description.json").write_text('{"Name": "x", "BIDSVersion": "1.9.0"}')
    (root / "participants.tsv").write_text("participant_id\nsub-01\n")
    (root / "README").write_text("a dataset")
    (root / "CHANGES").write_text("1.0")
    (root / "task-rest_bold.json").write_text("{}")  # inherited metadata
    (root / "sub-01" / "sub-01_scans.tsv").write_text("filename\n")
    peer = HostilePeer(well_behaved)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "node", "push", str(root), "--config",
             str(_config(tmp_path, peer.port))],
            capture_output=True, text=True, timeout=60, cwd=tmp_path)
    finally:
        peer.close()
    assert proc.returncode == 0, proc.stderr
    assert "3 of 3 instances delivered" in proc.stdout
    assert "6 BIDS metadata files ignored" in proc.stdout
    assert "error" not in proc.stderr


def test_an_encrypted_client_key_never_prompts(tmp_path):
    """A passphrase-protected key: check-config refuses without tls.key_password_env; echo
    fails at once with the reason (no prompt, no hang on a closed stdin); with the passphrase
    in the named variable the key loads (and the echo reaches the network)."""
    from cryptography.hazmat.primitives import serialization
    from support.pki import make_pki

    pki = make_pki(tmp_path / "pki")
    key = serialization.load_pem_private_key(pki["client_key"].read_bytes(), None)
    locked = tmp_path / "locked.key"
    locked.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"s3cret")))
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()  # nothing listens there: a connection is refused at once

    def config(extra: str) -> Path:
        cfg = tmp_path / "node.toml"
        cfg.write_text(f'[node]\nstate_dir = "{tmp_path / "var"}"\n[destinations.t]\nhost = '
                       f'"127.0.0.1"\nport = {port}\nae_title = "T"\nconnect_timeout = 2\n'
                       f'tls = {{ ca = "{pki["ca"]}", cert = "{pki["client"]}", key = '
                       f'"{locked}"{extra} }}\n')
        return cfg

    def run(*args, env=None):
        return subprocess.run([sys.executable, "-m", "node", *args], capture_output=True,
                              text=True, timeout=30, cwd=tmp_path, stdin=subprocess.DEVNULL,
                              env={**os.environ, **(env or {})})

    check = run("check-config", "--no-echo", "--config", config(""))
    assert check.returncode == 2 and "key_password_env" in check.stderr
    echo = run("echo", "t", "--config", config(""))
    assert echo.returncode == 1 and "cannot load the client certificate" in echo.stderr
    wrong = run("echo", "t", "--config", config(', key_password_env = "KEY_PW"'),
                env={"KEY_PW": "guess"})
    assert wrong.returncode == 1 and "$KEY_PW" in wrong.stderr
    right = run("echo", "t", "--config", config(', key_password_env = "KEY_PW"'),
                env={"KEY_PW": "s3cret"})
    assert right.returncode == 1 and "connection refused" in right.stderr  # the key loaded
    assert "PEM pass phrase" not in right.stderr + wrong.stderr + echo.stderr


def test_one_file_with_bad_file_meta_uids_does_not_stop_a_push(tmp_path, dicom_files):
    """A file-meta SOP Class UID over 64 characters, and one with non-ASCII bytes: each is
    skipped with the reason, the good files are delivered."""
    bad = []
    for name, uid in (("long.dcm", "1." + "2" * 70), ("latin.dcm", "1.2.3\xe9")):
        data = bytearray(dicom_files[0].read_bytes())
        old = b"1.2.840.10008.5.1.4.1.1.4\0"  # MR Image Storage in the file meta
        pos = data.index(old)
        raw = uid.encode("latin-1")
        raw += b"\0" * (len(raw) % 2)
        length_at = pos - 2
        data[length_at: pos + len(old)] = len(raw).to_bytes(2, "little") + raw
        # the file meta group length changed: fix it (PS3.10 7.1)
        meta_len = int.from_bytes(data[140:144], "little") + len(raw) - len(old)
        data[140:144] = meta_len.to_bytes(4, "little")
        (tmp_path / name).write_bytes(bytes(data))
        bad.append(tmp_path / name)
    peer = HostilePeer(well_behaved)
    try:
        proc, usage, _ = _run(tmp_path, peer.port, "push", *map(str, dicom_files),
                              *map(str, bad), "--json")
    finally:
        peer.close()
    assert "Traceback" not in proc.stderr
    report = json.loads(proc.stdout)
    assert report["delivered"] == len(dicom_files)
    reasons = " ".join(s["reason"] for s in report["skipped"])
    assert len(report["skipped"]) == 2 and "not a valid UID" in reasons
    assert proc.returncode == 2  # delivered, but inputs were skipped


def test_a_config_in_the_current_folder_is_not_taken(tmp_path):
    """A received dataset that ships config/node.toml must not decide where data goes."""
    (tmp_path / "config").mkdir()
    trap = tmp_path / "config" / "node.toml"
    trap.write_text('[node]\ndefault_destination = "evil"\n[destinations.evil]\nhost = '
                    '"127.0.0.1"\nport = 9\nae_title = "EVIL"\n')
    proc = subprocess.run([sys.executable, "-m", "node", "check-config", "--no-echo"],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path,
                          env={k: v for k, v in os.environ.items() if k != "DICOM_NODE_CONFIG"})
    assert "EVIL" not in proc.stdout and str(trap) not in proc.stdout
    assert "# config: " in proc.stdout  # it says which one it read
