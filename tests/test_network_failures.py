"""Failures with real processes: a PACS that dies mid-push, TLS trust and client certificates."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import NODE_AET, orthanc_script, start_pacs
from support.niftigen import affine_from, ramp_data, write_nifti
from support.pki import make_pki

from node.net.scu import echo
from node.net.status import FailureKind, NetworkFailure
from node.service.settings import build_destination

pytestmark = pytest.mark.peers  # Orthanc, DCMTK, dciodvfy, dcm2niix


def test_orthanc_killed_mid_push_reports_what_was_delivered(tmp_path):
    storage = tmp_path / "orthanc"
    pacs = start_pacs(storage)
    try:
        src = write_nifti(tmp_path / "sub-crash_bold.nii.gz",
                          ramp_data((96, 96, 30, 40), "int16"), affine_from(__import__(
                              "numpy").eye(3)))
        cfg = pacs.config_toml(tmp_path / "node.toml", "max_associations = 1")
        push = subprocess.Popen(
            [sys.executable, "-m", "node", "push", str(src), "--config", str(cfg), "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and pacs.count_instances() < 100:
            time.sleep(0.05)
        assert pacs.count_instances() >= 100, "the push never got going"
        os.kill(pacs.server.pid, signal.SIGKILL)  # the PACS dies without a goodbye
        out, err = push.communicate(timeout=120)
    finally:
        orthanc_script.stop(storage)
    assert push.returncode == 1, err
    assert "Traceback" not in err
    summary = json.loads(out)
    assert summary["delivered"] + summary["failed"] == 1200
    assert 100 <= summary["delivered"] < 1200 and summary["failed"] > 0
    assert summary["association_failures"], "the lost association is reported"
    # restart on the same storage: everything we called delivered really is there
    restarted = start_pacs(storage)
    try:
        assert restarted.count_instances() >= summary["delivered"]
    finally:
        orthanc_script.stop(storage)


@pytest.fixture(scope="module")
def tls_pacs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tls")
    pki = make_pki(folder / "pki", "pacs")
    tls = {"cert": pki["server"], "key": pki["server_key"], "ca": pki["ca"],
           "require_client": True}
    pacs = start_pacs(folder / "orthanc", tls=tls)
    yield pacs, pki, folder
    orthanc_script.stop(folder / "orthanc")


def _tls_dest(pacs, **tls):
    return build_destination("tls", {"host": "127.0.0.1", "port": pacs.port,
                                     "ae_title": pacs.aet, "tls": tls, "acse_timeout": 5})


def test_tls_with_client_certificate(tls_pacs, tmp_path):
    pacs, pki, _ = tls_pacs
    dest = _tls_dest(pacs, ca=str(pki["ca"]), cert=str(pki["client"]),
                     key=str(pki["client_key"]))
    assert echo(dest, NODE_AET).status == 0
    src = write_nifti(tmp_path / "sub-tls_T1w.nii.gz", ramp_data((8, 8, 3), "int16", seed=9),
                      affine_from(__import__("numpy").eye(3)))
    cfg = pacs.config_toml(
        tmp_path / "node.toml",
        f'tls = {{ ca = "{pki["ca"]}", cert = "{pki["client"]}", key = "{pki["client_key"]}" }}',
    )
    proc = subprocess.run([sys.executable, "-m", "node", "push", str(src), "--config", str(cfg)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "3 of 3 instances delivered" in proc.stdout


def test_tls_untrusted_server_certificate_is_refused(tls_pacs, tmp_path):
    pacs, pki, folder = tls_pacs
    other = make_pki(folder / "other", "someone else")
    dest = _tls_dest(pacs, ca=str(other["ca"]), cert=str(pki["client"]),
                     key=str(pki["client_key"]))
    with pytest.raises(NetworkFailure) as err:
        echo(dest, NODE_AET)
    assert err.value.kind == FailureKind.TLS and "not trusted" in err.value.message
    assert not err.value.transient


def test_tls_plain_connection_to_tls_port_fails_cleanly(tls_pacs):
    pacs, _, _ = tls_pacs
    dest = build_destination("plain", {"host": "127.0.0.1", "port": pacs.port,
                                       "ae_title": pacs.aet, "acse_timeout": 3})
    with pytest.raises(NetworkFailure) as err:
        echo(dest, NODE_AET)
    assert err.value.kind in (FailureKind.ABORTED, FailureKind.TIMEOUT)
