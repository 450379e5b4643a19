"""The node as tests run it: `python -m node watch` in its own process, files dropped into its
inbox as pipelines and rsync deliver them, and a bounded wait for what should happen."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
from conftest import NODE_AET, free_port, run_node

from support.niftigen import affine_from, ramp_data, write_nifti

SETTLE = 1.0


def wait_until(predicate, timeout: float, what: str, step: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


class NodeProcess:
    """`python -m node watch` in its own process, with its own state folder and inbox."""

    def __init__(self, tmp: Path, pacs_port: int, destination_toml: str = "",
                 destination: str | None = None, **node_keys) -> None:
        """``destination``: the whole of [destinations.pacs] (e.g. a DICOMweb url and its
        auth) instead of Orthanc's DIMSE port ``pacs_port``."""
        self.tmp = tmp
        self.inbox = tmp / "inbox"
        self.inbox.mkdir(parents=True, exist_ok=True)
        self.state = tmp / "var"
        self.metrics_port = free_port()
        keys = {"ae_title": f'"{NODE_AET}"', "default_destination": '"pacs"',
                "state_dir": f'"{self.state}"', "retry_base_seconds": 0.5,
                "retry_max_seconds": 2, "metrics_port": self.metrics_port,
                "rescan_seconds": 2, "echo_interval_seconds": 5, "shutdown_seconds": 10,
                **node_keys}
        self.config = tmp / "node.toml"
        self.config.write_text(
            "[node]\n" + "".join(f"{k} = {v}\n" for k, v in keys.items())
            + "[destinations.pacs]\n" + (destination or (
                f'host = "127.0.0.1"\nport = {pacs_port}\nae_title = "ORTHANC"\n'
                'acse_timeout = 5\ndimse_timeout = 10\nconnect_timeout = 2\n'))
            + f'{destination_toml}\n[[watch]]\npath = "{self.inbox}"\nsettle_seconds = {SETTLE}\n'
        )
        self.log = tmp / "node.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> NodeProcess:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "node", "watch", "--config", str(self.config)],
            stdout=open(self.log, "ab"), stderr=subprocess.STDOUT,  # noqa: SIM115
        )
        wait_until(self.healthy, 30, "the node's /healthz")
        return self

    def healthy(self) -> bool:
        try:
            url = f"http://127.0.0.1:{self.metrics_port}/healthz"
            with urllib.request.urlopen(url, timeout=1) as rsp:
                return json.loads(rsp.read())["ok"]
        except OSError:
            return False

    def stop(self, sig=signal.SIGTERM, timeout: float = 30) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)

    def jobs(self) -> list[dict]:
        db = self.state / "journal.sqlite"
        if not db.exists():
            return []
        con = sqlite3.connect(db, timeout=10)
        try:
            con.row_factory = sqlite3.Row
            return [dict(r) for r in con.execute("SELECT * FROM jobs ORDER BY id")]
        finally:
            con.close()

    def states(self) -> list[str]:
        return [j["state"] for j in self.jobs()]

    def cli(self, *args) -> subprocess.CompletedProcess:
        return run_node(*args, "--config", self.config)

    def logtext(self) -> str:
        return self.log.read_text(errors="replace")


def nifti_bytes(tmp: Path, name: str, shape=(12, 10, 5), seed=0) -> bytes:
    path = write_nifti(tmp / "src" / name, ramp_data(shape, "int16", seed=seed),
                       affine_from(np.eye(3)))
    return path.read_bytes()


def drop(inbox: Path, name: str, data: bytes) -> Path:
    """Write elsewhere, then rename into place: how pipelines and rsync deliver."""
    tmp = inbox / f".{name}.tmp"
    tmp.write_bytes(data)
    os.replace(tmp, inbox / name)
    return inbox / name
