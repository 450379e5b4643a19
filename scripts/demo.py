#!/usr/bin/env python3
"""The demo behind ./scripts/demo (run that, it installs what this needs)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import orthanc  # noqa: E402

DEMO = ROOT / "var" / "demo"
INBOX = ROOT / "inbox"
SIDECAR = {
    "Manufacturer": "Philips", "MagneticFieldStrength": 1.5, "RepetitionTime": 2.0,
    "EchoTime": 0.004, "FlipAngle": 8, "MRAcquisitionType": "3D", "ScanningSequence": "GR",
    "SequenceVariant": "SP", "SeriesDescription": "demo T1 (nibabel anatomical.nii)",
    "InstitutionName": "dicom-node demo",
}


def port_or_free(preferred: int) -> int:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", preferred))
            return preferred
        except OSError:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]


def sample() -> Path:
    import nibabel

    return Path(nibabel.__file__).parent / "tests" / "data" / "anatomical.nii"


def main() -> int:
    once = "--once" in sys.argv[1:]
    orthanc.stop(DEMO / "orthanc")  # a previous demo that was not stopped cleanly
    shutil.rmtree(DEMO, ignore_errors=True)
    INBOX.mkdir(exist_ok=True)
    http_port, dicom_port = port_or_free(8042), port_or_free(4242)
    server = orthanc.start(DEMO / "orthanc", http_port=http_port, dicom_port=dicom_port)
    print(f"demo: Orthanc {server.aet} on DICOM port {dicom_port}, Explorer {server.url}/app/"
          f"explorer.html (login {orthanc.USER}, password in "
          f"{server.storage / 'orthanc.password'})")
    env = {**os.environ,
           "DICOM_NODE_NODE_STATE_DIR": str(DEMO / "state"),
           "DICOM_NODE_NODE_METRICS_PORT": str(port_or_free(9464)),
           "DICOM_NODE_DESTINATIONS_PACS_PORT": str(dicom_port)}
    log = open(DEMO / "node.log", "ab")  # noqa: SIM115 - the node writes it while it runs
    node = subprocess.Popen(
        [sys.executable, "-m", "node", "watch", "--config", str(ROOT / "config" / "node.toml")],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    stop = {"now": False}
    signal.signal(signal.SIGINT, lambda *_: stop.update(now=True))
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    status = 0
    try:
        name = "sub-demo01_ses-01_T1w"
        staging = INBOX / f".{name}.nii.part"
        shutil.copy(sample(), staging)
        (INBOX / f"{name}.json").write_text(json.dumps(SIDECAR, indent=2))
        os.replace(staging, INBOX / f"{name}.nii")
        print(f"demo: dropped {INBOX / name}.nii (+ .json); waiting for the series in Orthanc")
        deadline = time.monotonic() + 120
        found = None
        while time.monotonic() < deadline and not stop["now"] and node.poll() is None:
            for series in server.get("/series?expand"):
                if series["MainDicomTags"].get("SeriesDescription") == SIDECAR[
                        "SeriesDescription"]:
                    found = series
            if found and found.get("IsStable", True) and len(found["Instances"]) >= 25:
                break
            time.sleep(0.5)
        if found is None:
            print(f"demo: the series did not arrive; see {DEMO / 'node.log'}", file=sys.stderr)
            status = 1
        else:
            study = server.get(f"/studies/{found['ParentStudy']}")
            patient = server.get(f"/patients/{study['ParentPatient']}")
            print("demo: arrived in Orthanc:")
            print(f"  patient  {patient['MainDicomTags'].get('PatientID')} "
                  f"({patient['MainDicomTags'].get('PatientName')})")
            print(f"  study    {study['MainDicomTags'].get('StudyInstanceUID')} "
                  f"(StudyID {study['MainDicomTags'].get('StudyID')})")
            print(f"  series   {found['MainDicomTags'].get('SeriesInstanceUID')} "
                  f"\"{found['MainDicomTags'].get('SeriesDescription')}\"")
            print(f"  instances {len(found['Instances'])}")
            print(f"demo: look at it in Orthanc Explorer: {server.url}/app/explorer.html")
            print(f"demo: node log {DEMO / 'node.log'}; try: .venv/bin/dicom-node status "
                  f"(with DICOM_NODE_NODE_STATE_DIR={DEMO / 'state'})")
        if not once and status == 0:
            print("demo: running; drop more NIfTI into ./inbox. Ctrl-C stops the demo.")
            while not stop["now"] and node.poll() is None:
                time.sleep(0.3)
    finally:
        if node.poll() is None:
            node.send_signal(signal.SIGTERM)
            try:
                node.wait(timeout=60)
            except subprocess.TimeoutExpired:
                node.kill()
        orthanc.stop(DEMO / "orthanc")
        print("demo: stopped the node and Orthanc")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
