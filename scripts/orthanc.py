#!/usr/bin/env python3
"""Start and stop the bundled Orthanc (Debian's `orthanc` package) for tests and the demo.

    scripts/orthanc start [--http-port 8042] [--dicom-port 4242] [--storage var/orthanc]
                          [--node-aet DICOM_NODE] [--background] [--tls-cert C --tls-key K
                          --tls-ca CA [--tls-require-client]] [--dicomweb]
    scripts/orthanc stop [--storage var/orthanc]

The configuration is config/orthanc.json with the ports, storage and our AE title filled in,
written to STORAGE/orthanc.json. DICOM is locked down to our registered AE (Orthanc 1.10 binds
its DICOM port on all interfaces; RemoteAccessAllowed only covers HTTP). Orthanc runs with
TCP_NODELAY=1 so DCMTK disables Nagle's algorithm on its sockets. `start` returns once the REST
API answers (at most --wait seconds); the PID is in STORAGE/orthanc.pid.

The REST API (which shows PatientName to whoever asks) needs a login: user "dicom-node" with a
password generated at each start, in STORAGE/orthanc.password (mode 0600). The scripts and
tests read it from there; `start` prints where it is. Orthanc Explorer asks for the same login.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "config" / "orthanc.json"


USER = "dicom-node"


@dataclass(frozen=True)
class Orthanc:
    pid: int
    http_port: int
    dicom_port: int
    aet: str
    storage: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def password(self) -> str:
        return (self.storage / "orthanc.password").read_text().strip()

    def request(self, path: str, data: bytes | None = None, method: str | None = None,
                timeout: float = 10.0) -> bytes:
        """The REST API, logged in (HTTP basic authentication)."""
        token = base64.b64encode(f"{USER}:{self.password}".encode()).decode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Authorization": f"Basic {token}"})
        with urllib.request.urlopen(req, timeout=timeout) as rsp:
            return rsp.read()

    def get(self, path: str, timeout: float = 10.0):
        return json.loads(self.request(path, timeout=timeout))

    def running(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except OSError:
            return False
        return True


def free_port() -> int:
    """A TCP port free on loopback now (for tests, benchmarks and the demo)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def binary() -> str:
    for candidate in (shutil.which("Orthanc"), "/usr/sbin/Orthanc", "/usr/bin/Orthanc"):
        if candidate and Path(candidate).exists():
            return candidate
    raise SystemExit("orthanc: the Orthanc binary is missing: apt-get install orthanc")


#: Where Debian's orthanc-dicomweb package puts the plugin.
DICOMWEB_PLUGINS = ("/usr/share/orthanc/plugins/libOrthancDicomWeb.so",)


def dicomweb_plugin() -> str:
    for candidate in DICOMWEB_PLUGINS:
        if Path(candidate).exists():
            return candidate
    raise SystemExit("orthanc: the DICOMweb plugin is missing: apt-get install orthanc-dicomweb")


def write_config(
    storage: Path, http_port: int, dicom_port: int, node_aet: str, aet: str = "ORTHANC",
    tls: dict | None = None, overrides: dict | None = None, dicomweb: bool = False,
) -> Path:
    config = json.loads(TEMPLATE.read_text())
    config.update(
        StorageDirectory=str(storage / "db"), IndexDirectory=str(storage / "db"),
        HttpPort=http_port, DicomPort=dicom_port, DicomAet=aet,
    )
    config["DicomModalities"]["dicom-node"]["AET"] = node_aet
    storage.mkdir(parents=True, exist_ok=True)
    password = storage / "orthanc.password"
    password.touch(mode=0o600)
    password.chmod(0o600)
    password.write_text(secrets.token_urlsafe(18))
    config.update(AuthenticationEnabled=True,
                  RegisteredUsers={USER: password.read_text().strip()})
    if tls:
        config.update(
            DicomTlsEnabled=True, DicomTlsCertificate=str(tls["cert"]),
            DicomTlsPrivateKey=str(tls["key"]), DicomTlsTrustedCertificates=str(tls["ca"]),
            DicomTlsRemoteCertificateRequired=bool(tls.get("require_client", False)),
        )
    if dicomweb:  # Debian's orthanc-dicomweb: STOW-RS, QIDO-RS, WADO-RS under /dicom-web/
        plugin = dicomweb_plugin()
        config.update(Plugins=[plugin], DicomWeb={"Enable": True, "Root": "/dicom-web/",
                                                  "EnableWado": False})
    config.update(overrides or {})
    path = storage / "orthanc.json"
    path.touch(mode=0o600)
    path.chmod(0o600)  # it holds the password too
    path.write_text(json.dumps(config, indent=2))
    return path


def start(
    storage: Path, http_port: int = 8042, dicom_port: int = 4242, node_aet: str = "DICOM_NODE",
    aet: str = "ORTHANC", tls: dict | None = None, wait: float = 30.0,
    overrides: dict | None = None, verbose: bool = False, dicomweb: bool = False,
) -> Orthanc:
    """Start Orthanc in the background and wait until its REST API answers; ``dicomweb``:
    with the DICOMweb plugin, at ``Orthanc.url + "/dicom-web"``."""
    storage = storage.resolve()
    config = write_config(storage, http_port, dicom_port, node_aet, aet, tls, overrides,
                          dicomweb)
    log = open(storage / "orthanc.log", "ab")  # noqa: SIM115 - kept open by the child
    proc = subprocess.Popen(
        [binary(), *(["--verbose"] if verbose else []), str(config)],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        env={**os.environ, "TCP_NODELAY": "1"}, start_new_session=True,
    )
    (storage / "orthanc.pid").write_text(str(proc.pid))
    server = Orthanc(proc.pid, http_port, dicom_port, aet, storage)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = (storage / "orthanc.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"Orthanc exited with status {proc.returncode}:\n{tail}")
        try:
            server.get("/system", timeout=1.0)
            return server
        except OSError:
            time.sleep(0.1)
    stop(storage)
    raise RuntimeError(f"Orthanc did not answer on {server.url} within {wait:g} s")


def stop(storage: Path, wait: float = 15.0) -> bool:
    """Stop the Orthanc whose PID is in STORAGE/orthanc.pid; True if one was running."""
    pid_file = storage.resolve() / "orthanc.pid"
    if not pid_file.exists():
        return False
    pid = int(pid_file.read_text())
    pid_file.unlink()
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # not our child: poll for its end
            done = 0
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
        if done == pid:
            return True
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_start = sub.add_parser("start")
    p_start.add_argument("--http-port", type=int, default=8042)
    p_start.add_argument("--dicom-port", type=int, default=4242)
    p_start.add_argument("--storage", type=Path, default=ROOT / "var" / "orthanc")
    p_start.add_argument("--node-aet", default="DICOM_NODE")
    p_start.add_argument("--aet", default="ORTHANC")
    p_start.add_argument("--background", action="store_true", help="return once it answers")
    p_start.add_argument("--wait", type=float, default=30.0)
    p_start.add_argument("--tls-cert", type=Path)
    p_start.add_argument("--tls-key", type=Path)
    p_start.add_argument("--tls-ca", type=Path)
    p_start.add_argument("--tls-require-client", action="store_true")
    p_start.add_argument("--dicomweb", action="store_true",
                         help="with the DICOMweb plugin (Debian orthanc-dicomweb) at /dicom-web")
    p_stop = sub.add_parser("stop")
    p_stop.add_argument("--storage", type=Path, default=ROOT / "var" / "orthanc")
    args = parser.parse_args()
    if args.command == "stop":
        print("orthanc: stopped" if stop(args.storage) else "orthanc: not running")
        return 0
    tls = None
    if args.tls_cert:
        tls = {"cert": args.tls_cert.resolve(), "key": args.tls_key.resolve(),
               "ca": args.tls_ca.resolve(), "require_client": args.tls_require_client}
    try:
        server = start(args.storage, args.http_port, args.dicom_port, args.node_aet, args.aet,
                       tls, args.wait, dicomweb=args.dicomweb)
    except RuntimeError as exc:
        print(f"orthanc: {exc}", file=sys.stderr)
        return 1
    print(f"orthanc: {server.aet} on DICOM port {server.dicom_port}, REST/Explorer {server.url}"
          f" (pid {server.pid}, storage {server.storage}); login {USER} with the password in "
          f"{server.storage / 'orthanc.password'}")
    if args.dicomweb:
        print(f"orthanc: DICOMweb at {server.url}/dicom-web (the same login)")
    if args.background:
        return 0
    try:
        while server.running():
            time.sleep(0.5)
    except KeyboardInterrupt:
        stop(args.storage)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
