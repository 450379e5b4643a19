"""A private PostgreSQL cluster for tests: Debian's postgresql binaries, initdb and pg_ctl run
as the unprivileged ``postgres`` user when the tests run as root (PostgreSQL refuses root),
on a free loopback port, in a temporary folder. Started the way the tests start Orthanc."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
from orthanc import free_port  # noqa: E402

USER = "dicom_node"


def binaries() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return Path(found[-1]).parent if found else None


def _as_owner(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", "postgres", "--", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kw)


class Cluster:
    def __init__(self, fsync: bool = False) -> None:
        """``fsync``: as in production (benchmarks); tests run without it, for speed."""
        self.fsync = fsync
        bindir = binaries()
        if bindir is None:
            raise RuntimeError("Debian's postgresql is not installed (scripts/install --test)")
        self.bin = bindir
        # not under pytest's 0700 temporary folders: the postgres user must reach it
        self.root = Path(tempfile.mkdtemp(prefix="dicom-node-pg-"))
        os.chmod(self.root, 0o755)
        self.data = self.root / "data"
        self.port = free_port()
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        result = _as_owner([str(self.bin / "initdb"), "-D", str(self.data), "-U", USER,
                            "--auth=trust", "-E", "UTF8", "--no-sync"])  # loopback only
        if result.returncode != 0:
            raise RuntimeError(f"initdb failed: {result.stderr}")
        self.start()
        result = _as_owner([str(self.bin / "psql"), "-h", "127.0.0.1", "-p", str(self.port),
                            "-U", USER, "-d", "postgres", "-c", f"CREATE DATABASE {USER}"])
        if result.returncode != 0:
            raise RuntimeError(f"createdb failed: {result.stderr}")

    @property
    def url(self) -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{USER}"

    def fresh_database(self, name: str) -> str:
        """An empty database of its own (one per test)."""
        _as_owner([str(self.bin / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U",
                   USER, "-d", "postgres", "-c", f"CREATE DATABASE {name}"])
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{name}"

    def start(self) -> None:
        result = _as_owner([str(self.bin / "pg_ctl"), "-D", str(self.data), "-l",
                            str(self.root / "log"), "-w", "-t", "60", "-o",
                            f"-p {self.port} -c listen_addresses=127.0.0.1 "
                            f"-c unix_socket_directories={self.root} "
                            f"-c fsync={'on' if self.fsync else 'off'}", "start"])
        if result.returncode != 0:
            raise RuntimeError(f"pg_ctl start failed: {result.stderr}{result.stdout}")

    def stop(self, mode: str = "fast") -> None:
        _as_owner([str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop"])

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)
